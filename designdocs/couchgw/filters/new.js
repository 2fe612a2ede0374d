function (doc, req) {
  // New messages: the only changes the gateway follows. Everything else is found by the sweep.
  return doc.type === "message" && doc.status == null;
}
