(function () {
  // Written by couchgw (--guards), version VERSION. Only couchgw (a user with the role
  // "couchgw") and admins write the fields couchgw owns; a client's new message is refused when
  // its route, its operation or its argument names do not fit what the route offers, or its
  // priority, times or trace context are not ones couchgw takes. The same checks as the
  // guard in Erlang (door.erl), decision for decision and word for word.
  var FACTS = JSON.parse(FACTS_JSON);
  var OWNED = FACTS.owned;
  var ROUTES = FACTS.routes;
  var own = Object.prototype.hasOwnProperty;
  var TIME = new RegExp(FACTS.time);
  var TRACEPARENT = new RegExp(FACTS.traceparent);
  var TIMES = ["requested_at", "not_before", "expires_at"];
  var DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

  function refuse(text) { throw({forbidden: text}); }

  // A value in a refusal: a string quoted, a number or a constant as JSON writes it, an
  // object or an array by its kind.
  function shown(value) {
    if (value === null || typeof value !== "object") return JSON.stringify(value);
    return Array.isArray(value) ? "an array" : "an object";
  }

  // A time as a client writes it (FACTS.time, a day its month has, year 1 or later) as
  // [seconds since 1970, microseconds]; null if it is not one.
  function instant(value) {
    var m = typeof value === "string" ? TIME.exec(value) : null;
    if (m === null) return null;
    var year = +m[1], month = +m[2], day = +m[3];
    var leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
    if (year < 1 || day > (month === 2 && leap ? 29 : DAYS[month - 1])) return null;
    var y = month <= 2 ? year - 1 : year;  // days from 1970-01-01 (H. Hinnant's days_from_civil)
    var era = Math.floor(y / 400), yoe = y - era * 400;
    var doy = Math.floor((153 * (month + (month > 2 ? -3 : 9)) + 2) / 5) + day - 1;
    var days = era * 146097 + yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy - 719468;
    var offset = m[9] === undefined ? 0 : (+m[10] * 60 + +m[11]) * 60 * (m[9] === "-" ? -1 : 1);
    var seconds = days * 86400 + +m[4] * 3600 + +m[5] * 60 + (m[6] === undefined ? 0 : +m[6]);
    return [seconds - offset, m[7] === undefined ? 0 : +(m[7] + "00000").slice(0, 6)];
  }

  function codePoints(text) {
    return text.length - (text.match(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g) || []).length;
  }

  function checkPlan(doc) {
    var priority = doc.priority;
    if (priority != null && !(typeof priority === "string" ? own.call(FACTS.priorities, priority)
        : typeof priority === "number" && priority % 1 === 0 && priority >= 0 &&
          priority <= FACTS.top)) {
      refuse(FACTS.priority + shown(priority));
    }
    var at = {};
    for (var t = 0; t < TIMES.length; t++) {
      var value = doc[TIMES[t]];
      if (value == null) continue;
      at[TIMES[t]] = instant(value);
      if (at[TIMES[t]] === null) {
        refuse(TIMES[t] + " must be an ISO 8601 time with its zone, e.g. 2026-12-02T02:00:00Z, " +
          "not " + shown(value));
      }
    }
    var from = at.not_before, until = at.expires_at;
    if (from && until && (until[0] < from[0] || (until[0] === from[0] && until[1] <= from[1]))) {
      refuse("expires_at " + doc.expires_at + " is not after not_before " + doc.not_before +
        ": the message could never be called");
    }
    var parent = doc.traceparent;
    if (parent != null && !(typeof parent === "string" && TRACEPARENT.test(parent) &&
        (parent.length === 55 || parent.slice(0, 3) !== "00-"))) {
      refuse("traceparent must be a W3C trace context (00-<32 hex digits>-<16 hex digits>-" +
        "<2 hex digits>, not all zeros), not " + shown(parent));
    }
    var state = doc.tracestate;
    if (state != null && !(typeof state === "string" &&
        (state.length <= FACTS.tracestate || codePoints(state) <= FACTS.tracestate))) {
      refuse("tracestate must be a string of at most " + FACTS.tracestate + " characters");
    }
  }

  function checkCall(doc) {
    var name = doc.target === undefined ? "default" : doc.target;
    if (typeof name !== "string" || !own.call(ROUTES, name)) {
      refuse("there is no route " + shown(name) + " (routes: " + FACTS.names + ")");
    }
    var route = ROUTES[name];
    if (route.operations === null) return;
    var operation = doc.operation == null ? route.operation : doc.operation;
    if (operation == null) {
      refuse("operation is missing, and route " + shown(name) + " names no default");
    }
    if (typeof operation !== "string" || !own.call(route.operations, operation)) {
      refuse("route " + shown(name) + " has no operation " + shown(operation) + " (it has: " +
        route.has + ")");
    }
    var params = route.operations[operation];
    var args = doc.args;
    if (args === undefined) args = doc.text === undefined ? [] : [doc.text];
    var given = [], i;
    if (Array.isArray(args)) {
      if (args.length > params.names.length) {
        refuse("operation " + shown(operation) + " takes at most " + params.names.length +
          " argument(s) (" + params.takes + "), got " + args.length);
      }
      for (i = 0; i < args.length; i++) if (args[i] !== null) given.push(params.names[i]);
    } else if (args !== null && typeof args === "object") {
      var unknown = [];
      for (var key in args) {
        if (!own.call(args, key)) continue;
        if (params.names.indexOf(key) < 0) unknown.push(key);
        else if (args[key] !== null) given.push(key);
      }
      if (unknown.length) {
        refuse("operation " + shown(operation) + " takes no argument " +
          unknown.sort().slice(0, 5).map(shown).join(", ") + " (it takes: " + params.takes + ")");
      }
    } else {
      refuse("args must be an object (keyword arguments) or an array (positional arguments)");
    }
    var missing = [];
    for (i = 0; i < params.required.length; i++) {
      if (given.indexOf(params.required[i]) < 0) missing.push(shown(params.required[i]));
    }
    if (missing.length) {
      refuse("operation " + shown(operation) + " needs argument(s) " + missing.join(", "));
    }
  }

  return function (newDoc, oldDoc, userCtx, secObj) {
    var roles = userCtx.roles || [];
    if (roles.indexOf("_admin") >= 0 || roles.indexOf("couchgw") >= 0) return;
    var admins = (secObj && secObj.admins) || {};
    if ((admins.names || []).indexOf(userCtx.name) >= 0) return;
    var adminRoles = admins.roles || [];
    for (var r = 0; r < adminRoles.length; r++) if (roles.indexOf(adminRoles[r]) >= 0) return;
    if (newDoc._deleted) return;
    var before = oldDoc && !oldDoc._deleted ? oldDoc : null;
    var wasMessage = before !== null && before.type === "message";
    if (newDoc.type !== "message" && !wasMessage) return;
    for (var f = 0; f < OWNED.length; f++) {
      var field = OWNED[f];
      var now = newDoc[field], was = before === null ? undefined : before[field];
      if (now !== was && (now === null || was === null || typeof now !== "object" ||
          typeof was !== "object" || JSON.stringify(now) !== JSON.stringify(was))) {
        refuse("only couchgw writes " + field +
          " (a client may create messages and set cancel_requested)");
      }
    }
    if (wasMessage && newDoc.type !== "message") refuse("a message's type cannot be changed");
    if (before !== null) return;
    checkPlan(newDoc);
    if (ROUTES !== null) checkCall(newDoc);
  };
})()
