// The live page: the gateway's event stream (/events?gateway=1) brings "gateway" snapshots
// (counts, routes, readiness, the throughput the gateway measured) and "status" events of
// messages, which the console (console.js) follows. Under /db/<db>/, one database of many.
(function () {
  "use strict";
  var STATUSES = ["new", "scheduled", "dispatching", "retrying", "forwarded", "failed", "rejected",
    "cancelled", "expired"];
  var TERMINAL = ["forwarded", "failed", "rejected", "cancelled", "expired"];
  var BASE = (location.pathname.match(/^\/db\/[^/]+/) || [""])[0];
  var listeners = {status: [], gateway: []};

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
  // A time as people read it: the time alone today, with its day otherwise.
  function when(iso) {
    if (!iso) return "";
    var at = new Date(iso);
    if (isNaN(at)) return String(iso);
    var today = at.toDateString() === new Date().toDateString();
    return today ? at.toLocaleTimeString() : at.toLocaleString();
  }

  function counts(byStatus) {
    var box = document.getElementById("counts");
    box.textContent = "";
    STATUSES.forEach(function (status) {
      var card = el("button", {"class": "count", "data-status": status, "type": "button",
        "title": "list the " + status + " messages"});
      card.style.setProperty("--c", color(status));
      card.appendChild(el("div", {"class": "n"}, String((byStatus || {})[status] || 0)));
      card.appendChild(el("div", {"class": "label"}, status));
      card.addEventListener("click", function () {
        if (window.couchgw.find) window.couchgw.find({status: status});
      });
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

  // The throughput the gateway measured: messages finished per bucket, oldest first.
  function chart(throughput) {
    var canvas = document.getElementById("throughput"), ctx = canvas.getContext("2d");
    var counts = (throughput && throughput.counts) || [];
    var top = Math.max(1, Math.max.apply(null, counts.concat([0])));
    var w = canvas.width / Math.max(1, counts.length), h = canvas.height - 14;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "#1f9d55";
    counts.forEach(function (n, i) {
      var bar = Math.round((n / top) * h);
      ctx.fillRect(i * w + 1, canvas.height - bar, w - 2, bar);
    });
    canvas.setAttribute("data-total", String(counts.reduce(function (a, b) { return a + b; }, 0)));
    ctx.fillStyle = "#6b7385";
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillText("max " + top + " per " + ((throughput && throughput.bucket) || 10) + " s", 4, 11);
  }

  // many databases served: totals, what finished here by status, and the busiest (named to
  // server admins alone)
  function fleet(data) {
    var d = data.databases;
    document.getElementById("fleet").hidden = !d;
    if (!d) return;
    document.getElementById("fleet-totals").textContent =
      d.served + " of " + d.found + " databases served (" + (d.patterns || []).join(", ") +
      "), " + d.feeds + " of " + d.max_feeds + " feeds open, " + d.waiting_for_a_feed +
      " waiting for one, " + d.to_look_at + " to look at, " + d.not_served + " not served";
    var body = document.querySelector("#busiest tbody");
    body.textContent = "";
    (data.busiest || []).forEach(function (t, i) {
      var row = el("tr");
      row.appendChild(el("td", {}, t.database || "database " + (i + 1)));
      [t.in_flight, t.waiting, t.calls].forEach(function (n) { row.appendChild(el("td", {}, String(n))); });
      row.appendChild(el("td", {}, t.guards && t.guards.installed ? (t.guards.engine || "on") : "off"));
      body.appendChild(row);
    });
    counts(data.finished_here || {});
  }

  function snapshot(data) {
    var where = data.database || data.server || "";
    document.getElementById("gateway").textContent = data.gateway + (where ? " · " + where : "");
    var ready = document.getElementById("ready");
    ready.textContent = data.ready ? "ready" : "not ready";
    ready.className = "badge " + (data.ready ? "ok" : "bad");
    ready.title = (data.problems || []).join("\n");
    if (data.counts) counts(data.counts);
    fleet(data);
    routes(data.routes);
    chart(data.throughput);
    listeners.gateway.forEach(function (f) { f(data); });
  }

  window.couchgw = {
    STATUSES: STATUSES, TERMINAL: TERMINAL, BASE: BASE, el: el, badge: badge, color: color,
    when: when, listeners: listeners, find: null
  };
  counts({});
  chart(null);
  var source = new EventSource(BASE + "/events?gateway=1");
  source.addEventListener("status", function (e) {
    var data = JSON.parse(e.data);
    listeners.status.forEach(function (f) { f(data); });
  });
  source.addEventListener("gateway", function (e) { snapshot(JSON.parse(e.data)); });
  source.onerror = function () {
    var ready = document.getElementById("ready");
    ready.textContent = "reconnecting…";
    ready.className = "badge bad";
  };
})();
