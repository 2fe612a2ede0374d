function (doc, req) {
  // New messages (no status, or one couchgw never writes), and scheduled ones a client
  // cancelled: the only changes the gateway follows. Everything else is found by the sweep.
  var statuses = ["scheduled", "dispatching", "retrying", "forwarded", "failed", "rejected",
    "cancelled", "expired"];
  return doc.type === "message" && (doc.status == null || statuses.indexOf(doc.status) < 0 ||
    (doc.status === "scheduled" && doc.cancel_requested === true));
}
