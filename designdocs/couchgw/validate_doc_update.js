function (newDoc, oldDoc, userCtx, secObj) {
  // Only couchgw (a user with the role "couchgw") and admins write the fields couchgw owns.
  // Clients may create messages and set cancel_requested; they may not write status, result,
  // error, attempts, claim, callback or couchgw's times, nor change them on a later write.
  // Without authentication (CouchDB's "admin party") everyone is an admin, and this allows all.
  var roles = userCtx.roles || [];
  if (roles.indexOf("_admin") >= 0 || roles.indexOf("couchgw") >= 0) return;
  var isAdmin = secObj && secObj.admins && ((secObj.admins.names || []).indexOf(userCtx.name) >= 0 ||
    (secObj.admins.roles || []).some(function (role) { return roles.indexOf(role) >= 0; }));
  if (isAdmin) return;
  var wasMessage = oldDoc && !oldDoc._deleted && oldDoc.type === "message";
  if (newDoc.type !== "message" && !wasMessage) return;
  if (newDoc._deleted) return;
  var owned = ["status", "result", "error", "attempts", "claim", "callback", "next_attempt_at",
    "dispatched_at", "completed_at", "updated_at"];
  for (var i = 0; i < owned.length; i++) {
    var field = owned[i];
    var before = oldDoc && !oldDoc._deleted ? JSON.stringify(oldDoc[field]) : undefined;
    if (JSON.stringify(newDoc[field]) !== before) {
      throw({forbidden: "only couchgw writes " + field + " (a client may create messages and set cancel_requested)"});
    }
  }
  if (wasMessage && newDoc.type !== "message") {
    throw({forbidden: "a message's type cannot be changed"});
  }
}
