function (doc, req) {
  // New messages (no status, or one couchgw never writes): the only changes the gateway
  // follows. Everything else is found by the sweep.
  var statuses = ["dispatching", "retrying", "forwarded", "failed", "rejected", "cancelled"];
  return doc.type === "message" && (doc.status == null || statuses.indexOf(doc.status) < 0);
}
