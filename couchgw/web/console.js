// The console: messages listed by status, route, time and id (GET messages), one message whole
// with its status live (GET messages/<id>, messages/<id>/events), and the actions an operator
// takes: requeue and cancel one message, or every message a selection holds (after a
// confirmation). With no selection, the list is the most recent messages, kept live.
(function () {
  "use strict";
  var cg = window.couchgw, el = cg.el, BASE = cg.BASE;
  var KEEP = 50;
  var ACTIONS = {requeue: ["failed", "expired", "rejected", "cancelled"],
    cancel: ["new", "scheduled", "retrying"]};
  var FIELDS = ["status", "route", "since", "q"];
  var DONE = {requeue: "requeued", cancel: "cancelled"};
  var filter = {}, next = null, rows = {}, may = {act: false, why: ""}, opened = null;
  var stream = null, seen = {};
  var form = document.getElementById("filters");

  function $(id) { return document.getElementById(id); }
  function query(f, extra) {
    var parts = [];
    FIELDS.concat(Object.keys(extra || {})).forEach(function (k) {
      var v = k in (extra || {}) ? extra[k] : f[k];
      if (v) parts.push(k + "=" + encodeURIComponent(v));
    });
    return parts.length ? "?" + parts.join("&") : "";
  }
  function api(method, path) {
    return fetch(BASE + path, {method: method, headers: {"Accept": "application/json"},
      credentials: "same-origin"}).then(function (r) {
      return r.json().then(function (body) { return {code: r.status, body: body}; },
        function () { return {code: r.status, body: {reason: r.statusText}}; });
    });
  }
  function live() { return !FIELDS.some(function (k) { return filter[k]; }); }
  function routeOf(data) { return data.route || data.target || "default"; }
  function matches(data) {
    return (!filter.status || data.status === filter.status) &&
      (!filter.route || routeOf(data) === filter.route) &&
      (!filter.q || data.id.indexOf(filter.q) === 0);
  }

  function row(data, atTop) {
    var body = document.querySelector("#messages tbody");
    var tr = rows[data.id];
    if (!tr) {
      tr = rows[data.id] = el("tr", {"data-id": data.id, "tabindex": "0"});
      tr.addEventListener("click", function () { open(data.id); });
      if (atTop) body.insertBefore(tr, body.firstChild); else body.appendChild(tr);
      if (atTop && live()) {
        var extra = body.querySelectorAll("tr");
        for (var i = KEEP; i < extra.length; i++) {
          delete rows[extra[i].getAttribute("data-id")];
          body.removeChild(extra[i]);
        }
      }
    }
    tr.textContent = "";
    tr.appendChild(el("td", {"class": "id"}, data.id));
    tr.appendChild(el("td", {}, routeOf(data)));
    tr.appendChild(el("td", {}, data.operation || ""));
    tr.appendChild(el("td", {"class": "priority"}, data.priority == null ? "" : String(data.priority)));
    var cell = el("td", {"class": "status-cell", "data-status": data.status});
    cell.appendChild(cg.badge(data.status));
    if (data.status === "scheduled" && data.next_attempt_at) {
      cell.appendChild(el("span", {"class": "when"}, " until " + cg.when(data.next_attempt_at)));
      cell.title = "not before " + data.next_attempt_at;
    }
    if (data.error && data.error.message && data.status !== "forwarded") {
      cell.appendChild(el("div", {"class": "why"}, data.error.message));
      cell.title = data.error.message;
    }
    tr.appendChild(cell);
    tr.appendChild(el("td", {}, data.attempts ? String(data.attempts) : ""));
    tr.appendChild(el("td", {}, cg.when(data.updated_at)));
    if (atTop) {
      tr.classList.remove("fresh");
      void tr.offsetWidth;
      tr.classList.add("fresh");
    }
  }

  function describe(f) {
    if (live()) return "Recent messages";
    var text = (f.status ? f.status + " messages" : "Messages");
    if (f.route) text += " on route " + f.route;
    if (f.since) text += " since " + f.since;
    if (f.q) text += " whose id begins with " + f.q;
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function list(more) {
    if (!more) {
      document.querySelector("#messages tbody").textContent = "";
      rows = {};
      next = null;
      $("bulk-result").textContent = "";
    }
    $("list-title").textContent = describe(filter);
    var extra = {limit: String(KEEP)};
    if (more && next) extra.cursor = next;
    return api("GET", "/messages" + query(filter, extra)).then(function (answer) {
      if (answer.code !== 200) {
        $("list-note").textContent = answer.body.reason || answer.body.error || "";
        return;
      }
      $("list-note").textContent = answer.body.messages.length || more ? "" : "No messages.";
      answer.body.messages.forEach(function (m) { row(m, false); });
      next = answer.body.next;
      $("more").hidden = !next;
      ["requeue", "cancel"].forEach(function (action) {
        $("bulk-" + action).hidden = ACTIONS[action].indexOf(filter.status) < 0;
      });
      $("bulk").hidden = !filter.status || !(ACTIONS.requeue.concat(ACTIONS.cancel)
        .indexOf(filter.status) >= 0);
      enable();
    });
  }

  function find(f) {
    filter = {};
    FIELDS.forEach(function (k) { if (f[k]) filter[k] = f[k]; form.elements[k].value = f[k] || ""; });
    var hash = query(filter).slice(1);
    if (location.hash.slice(1) !== hash) {
      history.replaceState(null, "", location.pathname + location.search + (hash ? "#" + hash : ""));
    }
    return list(false);
  }
  cg.find = find;

  function enable() {
    var buttons = document.querySelectorAll("button[data-action]");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].disabled = !may.act;
      buttons[i].title = may.act ? "" : may.why;
    }
  }

  // -- one message whole ------------------------------------------------------------------------

  function fact(name, value) {
    var box = $("message-facts");
    box.appendChild(el("dt", {}, name));
    box.appendChild(el("dd", {"data-fact": name}, value == null || value === "" ? "—" : String(value)));
  }

  function show(m) {
    $("message-id").textContent = m.id;
    $("message-status").textContent = "";
    $("message-status").appendChild(cg.badge(m.status));
    $("message-status").setAttribute("data-status", m.status);
    $("message-facts").textContent = "";
    fact("route", m.route);
    fact("operation", m.operation);
    fact("priority", m.priority);
    fact("attempts", m.attempts);
    fact("trace id", m.trace_id);
    var t = m.timings;
    fact("written", cg.when(t.written) || "not said (no requested_at)");
    if (t.requeued) fact("requeued", cg.when(t.requeued) + " by " + m.requeued_by);
    fact("claimed", cg.when(t.claimed));
    fact("called", "not kept (right after the claim, once the route has room)");
    fact("finished", cg.when(t.finished));
    if (t.next_attempt) fact("next attempt", cg.when(t.next_attempt));
    if (m.cancelled_by) fact("cancelled", cg.when(m.cancelled_at) + " by " + m.cancelled_by);
    var errors = $("message-errors");
    errors.textContent = "";
    m.errors.forEach(function (e) {
      errors.appendChild(el("li", {"data-round": String(e.round)}, "round " + e.round + " (" +
        e.status + "): " + (e.kind ? e.kind + ": " : "") + e.message));
    });
    if (!m.errors.length) errors.appendChild(el("li", {"class": "muted"}, "none"));
    $("message-document").textContent = JSON.stringify(m.document, null, 2);
    ["requeue", "cancel"].forEach(function (action) {
      $("message-" + action).hidden = m.actions.indexOf(action) < 0;
    });
    enable();
  }

  function follow(id) {
    if (stream) stream.close();
    stream = new EventSource(BASE + "/messages/" + encodeURIComponent(id) + "/events");
    stream.addEventListener("status", function (e) {
      var data = JSON.parse(e.data);
      if (seen[data.rev]) return;
      seen[data.rev] = true;
      var line = cg.when(data.updated_at) + " " + data.status +
        (data.attempts ? " · attempt " + data.attempts : "") +
        (data.error && data.status !== "forwarded" ? " · " + data.error.message : "");
      var item = el("li", {"data-status": data.status}, line);
      $("message-events").appendChild(item);
      if (cg.TERMINAL.indexOf(data.status) >= 0) {
        stream.close();
        stream = null;
      }
      if (opened === id) refresh(id);
    });
  }

  function refresh(id) {
    return api("GET", "/messages/" + encodeURIComponent(id)).then(function (answer) {
      if (opened !== id) return;
      if (answer.code === 200) show(answer.body);
      else $("message-note").textContent = answer.body.reason || "";
    });
  }

  function open(id) {
    opened = id;
    seen = {};
    $("message-note").textContent = "";
    $("message-events").textContent = "";
    $("message-facts").textContent = "";
    $("message-errors").textContent = "";
    $("message-id").textContent = id;
    if (!$("message").open) $("message").showModal();
    return refresh(id).then(function () { follow(id); });
  }

  function close() {
    opened = null;
    if (stream) stream.close();
    stream = null;
    $("message").close();
  }

  function act(action) {
    var id = opened;
    $("message-note").textContent = action + "…";
    api("POST", "/messages/" + encodeURIComponent(id) + "/" + action).then(function (answer) {
      $("message-note").textContent = answer.code === 200 ? DONE[action] :
        "not " + DONE[action] + ": " + (answer.body.reason || answer.code);
      $("message-note").setAttribute("data-code", String(answer.code));
      if (answer.code === 200) {
        row(answer.body, false);
        refresh(id).then(function () { follow(id); });
      }
    });
  }

  // -- every message a selection holds ----------------------------------------------------------

  var pending = null;
  function bulk(action) {
    var f = filter;
    api("GET", "/messages" + query(f, {count: "1", limit: "1"})).then(function (answer) {
      if (answer.code !== 200) {
        $("bulk-result").textContent = answer.body.reason || "";
        return;
      }
      var n = answer.body.total;
      pending = {action: action, filter: f};
      $("confirm-text").textContent = action.charAt(0).toUpperCase() + action.slice(1) + " " +
        n + " " + describe(f).toLowerCase() + "?" +
        " A message that changed meanwhile is left alone.";
      $("confirm-yes").textContent = action.charAt(0).toUpperCase() + action.slice(1) + " " + n;
      $("confirm").showModal();
    });
  }

  function unasked() {
    pending = null;
    $("confirm-text").textContent = "";
    $("confirm-yes").textContent = "Yes";
    $("confirm").close();
  }

  function confirmed() {
    var job = pending;
    unasked();
    if (!job) return;
    $("bulk-result").textContent = job.action + "…";
    api("POST", "/messages/" + job.action + query(job.filter)).then(function (answer) {
      var b = answer.body;
      $("bulk-result").setAttribute("data-code", String(answer.code));
      $("bulk-result").textContent = answer.code === 200 ?
        DONE[job.action] + " " + b.done + ", left alone " + b.left_alone +
        (b.left.length ? " (" + b.left.map(function (l) { return l.id + ": " + l.reason; })
          .join("; ") + ")" : "") :
        "not " + DONE[job.action] + ": " + (b.reason || answer.code);
      var note = $("bulk-result").textContent;
      list(false).then(function () { $("bulk-result").textContent = note; });
    });
  }

  // -- wiring -----------------------------------------------------------------------------------

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var f = {};
    FIELDS.forEach(function (k) { f[k] = form.elements[k].value.trim(); });
    find(f);
  });
  $("clear").addEventListener("click", function () { find({}); });
  $("more").addEventListener("click", function () { list(true); });
  $("message-close").addEventListener("click", close);
  $("message").addEventListener("close", function () { if (opened) close(); });
  $("message-requeue").addEventListener("click", function () { act("requeue"); });
  $("message-cancel").addEventListener("click", function () { act("cancel"); });
  $("bulk-requeue").addEventListener("click", function () { bulk("requeue"); });
  $("bulk-cancel").addEventListener("click", function () { bulk("cancel"); });
  $("confirm-yes").addEventListener("click", confirmed);
  $("confirm-no").addEventListener("click", unasked);
  $("database-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var name = e.target.elements.db.value.trim();
    if (name) location.href = "/db/" + encodeURIComponent(name) + "/";
  });
  var select = form.elements.status;
  cg.STATUSES.forEach(function (s) { select.appendChild(el("option", {"value": s}, s)); });

  cg.listeners.status.push(function (data) {
    if (rows[data.id]) row(data, live());
    else if (matches(data)) row(data, true);
  });
  cg.listeners.gateway.push(function (data) {
    var fleet = !BASE && !!data.server;
    $("databases").hidden = !fleet;
    form.hidden = fleet;
    $("messages").hidden = fleet;
    var routes = form.elements.route, have = {};
    for (var i = 0; i < routes.options.length; i++) have[routes.options[i].value] = true;
    Object.keys(data.routes || {}).sort().forEach(function (name) {
      if (!have[name]) routes.appendChild(el("option", {"value": name}, name));
    });
    if (filter.route) routes.value = filter.route;
  });

  api("GET", "/me").then(function (answer) {
    may = {act: answer.code === 200 && answer.body.may_act, why: (answer.body || {}).why || ""};
    $("who").textContent = (answer.body.user || "") + (may.act ? "" : " · read only");
    $("who").title = may.why;
    enable();
  });
  var start = {};
  location.hash.slice(1).split("&").forEach(function (pair) {
    var kv = pair.split("=");
    if (FIELDS.indexOf(kv[0]) >= 0) start[kv[0]] = decodeURIComponent(kv[1] || "");
  });
  if (start.route) form.elements.route.appendChild(el("option", {"value": start.route}, start.route));
  find(start);
})();
