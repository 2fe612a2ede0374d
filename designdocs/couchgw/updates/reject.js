function (doc, req) {
  // Rejects a new message in place, for a message too big or too deep for the gateway to read
  // and write back whole: the body's fields (status, error, times) are set on the stored
  // document. With ?rev=, only that revision is changed (409 otherwise, as for a PUT).
  var statuses = ["scheduled", "dispatching", "retrying", "forwarded", "failed", "rejected",
    "cancelled", "expired"];
  if (!doc) return [null, {code: 404, json: {error: "not_found", reason: "missing"}}];
  var rev = req.query && req.query.rev;
  var fresh = doc.type === "message" && (doc.status == null || statuses.indexOf(doc.status) < 0);
  if ((rev && rev !== doc._rev) || !fresh) {
    return [null, {code: 409, json: {error: "conflict", reason: "the message changed"}}];
  }
  var fields = JSON.parse(req.body);
  for (var key in fields) doc[key] = fields[key];
  return [doc, {json: {ok: true}}];
}
