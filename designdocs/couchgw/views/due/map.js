function (doc) {
  // Work that is due, keyed by when it is due (milliseconds since the epoch; 0 for new messages).
  if (doc.type !== "message") return;
  var at = null;
  if (doc.status == null) at = 0;
  else if (doc.status === "retrying") at = Date.parse(doc.next_attempt_at) || 0;
  else if (doc.status === "dispatching") at = Date.parse(doc.claim && doc.claim.until) || 0;
  if (at !== null) emit(at, null);
}
