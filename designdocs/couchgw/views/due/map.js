function (doc) {
  // Work that is due, keyed [band, when it is due]: the band is 9 - the message's priority (so
  // that higher priorities come first), the time is in milliseconds since the epoch (0 for new
  // messages). The value is [size, depth, route]: the document's JSON length and how deeply it
  // nests (counted up to 100; 100 also when it is too deep to write out), so that the gateway
  // can reject a message too big or too deep to read without reading it; and its target (null
  // when it names none, false when it is not a string), so that the gateway can pass over the
  // messages of a route that is full. A message with conflicting revisions (written through
  // different cluster nodes, or replicated) is due at once: the gateway merges them. A retry,
  // a scheduled message, a callback and a claim's lease are also keyed ["at", time], so that
  // the gateway knows when to look next; a claimed message is also keyed ["claim", the gateway
  // holding it] (arrays whose first item is text sort after those whose first item is a
  // number).
  if (doc.type !== "message") return;
  var statuses = ["scheduled", "dispatching", "retrying", "forwarded", "failed", "rejected",
    "cancelled", "expired"];
  var route = doc.target === undefined ? null : typeof doc.target === "string" ? doc.target : false;
  var names = {high: 8, medium: 5, low: 2};
  var priority = names.hasOwnProperty(doc.priority) ? names[doc.priority] : doc.priority;
  var band = typeof priority === "number" && priority >= 0 && priority <= 9 ? 9 - Math.floor(priority) : 4;
  var at = null;
  if (doc.status == null || statuses.indexOf(doc.status) < 0) at = 0;
  else if (doc._conflicts) return emit([band, 0], [null, 0, route]);
  else if (doc.status === "retrying" || doc.status === "scheduled") {
    at = Date.parse(doc.next_attempt_at) || 0;
    var expires = Date.parse(doc.expires_at);
    if (expires < at) at = expires;
    if (doc.status === "scheduled" && doc.cancel_requested === true) at = 0;
    if (at > 0) emit(["at", at], null);
  }
  else if (doc.status === "dispatching") {
    at = Date.parse(doc.claim && doc.claim.until) || 0;
    if (at > 0) emit(["at", at], null);
    // and under the gateway that holds it, so that the others can take over a gone one's claims
    if (doc.claim && typeof doc.claim.by === "string") emit(["claim", doc.claim.by], route);
  }
  else if (doc.callback && typeof doc.callback_url === "string") {
    // a finished message whose callback is being delivered (until a time) or waits to be tried again
    if (doc.callback.status === "pending") at = Date.parse(doc.callback.until) || 0;
    else if (doc.callback.status === "retrying") at = Date.parse(doc.callback.next_attempt_at) || 0;
    if (at !== null) {
      if (at > 0) emit(["at", at], null);
      return emit([band, at], [null, 0, false]);
    }
  }
  if (at === null) return;
  var depth = 0, level = [doc];
  while (level.length && depth < 100) {
    var next = [];
    for (var i = 0; i < level.length; i++) {
      for (var key in level[i]) {
        var value = level[i][key];
        if (value !== null && typeof value === "object") next.push(value);
      }
    }
    if (next.length) depth++;
    level = next;
  }
  var size = null;
  try {
    size = JSON.stringify(doc).length;
  } catch (e) {
    depth = 100; // too deep even for the view server to write out
  }
  emit([band, at], [size, depth, route]);
}
