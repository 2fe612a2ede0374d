// The live page: everything comes from the gateway's event stream (/events?gateway=1):
// "status" events for messages, "gateway" snapshots for counts, routes and readiness.
(function () {
  "use strict";
  var STATUSES = ["new", "scheduled", "dispatching", "retrying", "forwarded", "failed", "rejected",
    "cancelled", "expired"];
  var TERMINAL = ["forwarded", "failed", "rejected", "cancelled", "expired"];
  var KEEP = 50, BUCKET = 10000, BUCKETS = 60;
  var rows = {};
  var finished = [];

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function color(status) { return "var(--" + (STATUSES.indexOf(status) >= 0 ? status : "new") + ")"; }
  function badge(status) {
    var b = el("span", {"class": "badge status"}, status);
    b.style.setProperty("--c", color(status));
    return b;
  }
  function time(iso) { return iso ? new Date(iso).toLocaleTimeString() : ""; }

  function counts(byStatus) {
    var box = document.getElementById("counts");
    box.textContent = "";
    STATUSES.forEach(function (status) {
      var card = el("div", {"class": "count", "data-status": status});
      card.style.setProperty("--c", color(status));
      card.appendChild(el("div", {"class": "n"}, String((byStatus || {})[status] || 0)));
      card.appendChild(el("div", {"class": "label"}, status));
      box.appendChild(card);
    });
  }

  function routes(all) {
    var body = document.querySelector("#routes tbody");
    body.textContent = "";
    Object.keys(all || {}).sort().forEach(function (name) {
      var r = all[name], tr = el("tr", {"data-route": name});
      tr.appendChild(el("td", {}, name));
      tr.appendChild(el("td", {}, r.kind));
      var state = el("td");
      var b = badge(r.state);
      b.style.setProperty("--c", r.state === "ready" ? "var(--forwarded)" : "var(--failed)");
      b.title = r.error || "";
      state.appendChild(b);
      tr.appendChild(state);
      tr.appendChild(el("td", {}, String(r.in_flight)));
      tr.appendChild(el("td", {}, String(r.busy)));
      tr.appendChild(el("td", {}, String(r.concurrency)));
      tr.appendChild(el("td", {"class": "outage"}, outage(r.breaker || {})));
      body.appendChild(tr);
    });
  }

  function clock(iso) {
    return iso ? new Date(iso).toLocaleTimeString() : "";
  }

  // When a route went out, its last probe (when, how, what it found) and the next one.
  function outage(b) {
    if (!b.state || b.state === "closed") {
      return b.opened ? "outages since start: " + b.opened : "";
    }
    var parts = ["out since " + clock(b.out_since)];
    if (b.last_probe) {
      parts.push("last probe " + clock(b.last_probe.at) + " (" + b.last_probe.how + ", " +
        b.last_probe.result + ")");
    }
    if (b.state === "trial") parts.push("a call may go now");
    else if (b.state === "probing") parts.push("probing now");
    else if (b.next_probe) parts.push("next probe " + clock(b.next_probe));
    return parts.join(" · ");
  }

  function message(data) {
    var body = document.querySelector("#messages tbody");
    var tr = rows[data.id];
    if (!tr) {
      tr = rows[data.id] = el("tr", {"data-id": data.id});
      body.insertBefore(tr, body.firstChild);
      var extra = body.querySelectorAll("tr");
      for (var i = KEEP; i < extra.length; i++) {
        delete rows[extra[i].getAttribute("data-id")];
        body.removeChild(extra[i]);
      }
    }
    tr.textContent = "";
    tr.appendChild(el("td", {"class": "id"}, data.id));
    tr.appendChild(el("td", {}, data.target || "default"));
    tr.appendChild(el("td", {}, data.operation || ""));
    tr.appendChild(el("td", {"class": "priority"}, data.priority == null ? "" : String(data.priority)));
    var cell = el("td", {"class": "status-cell", "data-status": data.status});
    cell.appendChild(badge(data.status));
    if (data.status === "scheduled" && data.next_attempt_at) {
      cell.appendChild(el("span", {"class": "when"}, " until " + time(data.next_attempt_at)));
      cell.title = "not before " + data.next_attempt_at;
    }
    if (data.expires_at && TERMINAL.indexOf(data.status) < 0) {
      cell.title = (cell.title ? cell.title + "; " : "") + "expires at " + data.expires_at;
    }
    if (data.error && data.error.message) cell.title = data.error.message;
    tr.appendChild(cell);
    tr.appendChild(el("td", {}, data.attempts ? String(data.attempts) : ""));
    tr.appendChild(el("td", {}, time(data.updated_at)));
    tr.classList.remove("fresh");
    void tr.offsetWidth;
    tr.classList.add("fresh");
    if (TERMINAL.indexOf(data.status) >= 0) finished.push(Date.now());
  }

  function chart() {
    var canvas = document.getElementById("throughput"), ctx = canvas.getContext("2d");
    var now = Date.now(), counts = new Array(BUCKETS).fill(0);
    finished = finished.filter(function (t) { return now - t < BUCKET * BUCKETS; });
    finished.forEach(function (t) { counts[BUCKETS - 1 - Math.floor((now - t) / BUCKET)] += 1; });
    var top = Math.max(1, Math.max.apply(null, counts));
    var w = canvas.width / BUCKETS, h = canvas.height - 14;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "#1f9d55";
    counts.forEach(function (n, i) {
      var bar = Math.round((n / top) * h);
      ctx.fillRect(i * w + 1, canvas.height - bar, w - 2, bar);
    });
    ctx.fillStyle = "#6b7385";
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillText("max " + top + " per 10 s", 4, 11);
  }

  function snapshot(data) {
    document.getElementById("gateway").textContent = data.gateway + " · " + data.database;
    var ready = document.getElementById("ready");
    ready.textContent = data.ready ? "ready" : "not ready";
    ready.className = "badge " + (data.ready ? "ok" : "bad");
    ready.title = (data.problems || []).join("\n");
    if (data.counts) counts(data.counts);
    routes(data.routes);
  }

  counts({});
  setInterval(chart, 1000);
  var source = new EventSource("/events?gateway=1");
  source.addEventListener("status", function (e) { message(JSON.parse(e.data)); });
  source.addEventListener("gateway", function (e) { snapshot(JSON.parse(e.data)); });
  source.onerror = function () {
    var ready = document.getElementById("ready");
    ready.textContent = "reconnecting…";
    ready.className = "badge bad";
  };
})();
