function (doc) {
  // The console's index of messages, newest first by descending key: each message four times,
  // keyed [status, route, time, id], [status, null, time, id], [null, route, time, id] and
  // [null, null, time, id], so that a listing by status, by route, by both or of all is one
  // range of it. The time is the message's updated_at (else its requested_at, else 0) in
  // milliseconds; the id in the key makes every key unique, so that a page begins exactly
  // where the one before ended. Not kept up to date as the database is written
  // (autoupdate false): CouchDB brings it up to date when the console reads it.
  if (doc.type !== "message") return;
  var status = typeof doc.status === "string" && doc.status ? doc.status : "new";
  var route = doc.target === undefined ? "default" : typeof doc.target === "string" ? doc.target : false;
  var at = Date.parse(doc.updated_at) || Date.parse(doc.requested_at) || 0;
  emit([status, route, at, doc._id], null);
  emit([status, null, at, doc._id], null);
  emit([null, route, at, doc._id], null);
  emit([null, null, at, doc._id], null);
}
