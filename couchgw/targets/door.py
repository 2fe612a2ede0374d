"""
The guard at the door: one design document whose C{validate_doc_update} keeps the fields couchgw
owns to couchgw, and makes CouchDB itself refuse (403) a client's new message whose route,
operation or argument names do not fit the routes (each SOAP route's operations as its WSDL
describes them), or whose priority, times or trace context are not ones couchgw takes.  Until
the routes have loaded, it holds the checks that do not need them.

Admins and the C{couchgw} role pass (they repair and write status); so does everyone while
CouchDB runs without authentication.  The gateway still rejects whatever gets past the door.
Whether it is installed at all is the gateway's C{--guards} (L{couchgw.gateway.guards}).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from couchgw.checks import PRIORITIES, TIME, TOP_PRIORITY, TRACEPARENT, TRACESTATE_LENGTH
from couchgw.couch.client import Doc
from couchgw.message import GATEWAY_FIELDS
from couchgw.targets.interfaces import ITarget

DOOR_ID = "_design/couchgw-routes"
#: Marks the template of this version: a door written by another version is written again.
VERSION = 3

_TEMPLATE = """function (newDoc, oldDoc, userCtx, secObj) {
  // Written by couchgw (--guards), version %(version)d. Only couchgw (a user with the role
  // "couchgw") and admins write the fields couchgw owns; a client's new message is refused when
  // its route, its operation or its argument names do not fit what the route offers, or its
  // priority, times or trace context are not ones couchgw takes.
  var ROUTES = %(routes)s;
  var OWNED = %(owned)s;
  var roles = userCtx.roles || [];
  if (roles.indexOf("_admin") >= 0 || roles.indexOf("couchgw") >= 0) return;
  var admins = (secObj && secObj.admins) || {};
  if ((admins.names || []).indexOf(userCtx.name) >= 0) return;
  if ((admins.roles || []).some(function (role) { return roles.indexOf(role) >= 0; })) return;
  function refuse(text) { throw({forbidden: text}); }
  var before = oldDoc && !oldDoc._deleted ? oldDoc : null;
  var wasMessage = before !== null && before.type === "message";
  if (newDoc._deleted || (newDoc.type !== "message" && !wasMessage)) return;
  for (var f = 0; f < OWNED.length; f++) {
    var field = OWNED[f];
    var was = before ? JSON.stringify(before[field]) : undefined;
    if (JSON.stringify(newDoc[field]) !== was) {
      refuse("only couchgw writes " + field +
        " (a client may create messages and set cancel_requested)");
    }
  }
  if (wasMessage && newDoc.type !== "message") refuse("a message's type cannot be changed");
  if (before !== null) return;
  function quote(value) { return JSON.stringify(value); }
  var PLAN = %(plan)s;
  var priority = newDoc.priority;
  var named = typeof priority === "string" && PLAN.priorities.hasOwnProperty(priority);
  var numbered = typeof priority === "number" && priority %% 1 === 0 && priority >= 0 &&
    priority <= PLAN.top;
  if (priority != null && !named && !numbered) {
    refuse("priority must be " + PLAN.names.map(quote).join(", ") +
      " or a whole number from 0 to " + PLAN.top + " (higher first), not " + quote(priority));
  }
  var time = new RegExp("^" + PLAN.time);
  ["requested_at", "not_before", "expires_at"].forEach(function (field) {
    var value = newDoc[field];
    var valid = typeof value === "string" && time.test(value) && !isNaN(Date.parse(value));
    if (value != null && !valid) {
      refuse(field + " must be an ISO 8601 time with its zone, e.g. 2026-12-02T02:00:00Z, not " +
        quote(value));
    }
  });
  if (newDoc.not_before != null && newDoc.expires_at != null &&
      Date.parse(newDoc.expires_at) <= Date.parse(newDoc.not_before)) {
    refuse("expires_at " + newDoc.expires_at + " is not after not_before " + newDoc.not_before +
      ": the message could never be called");
  }
  var parent = newDoc.traceparent;
  var traced = typeof parent === "string" && new RegExp("^" + PLAN.traceparent).test(parent) &&
    (parent.length === 55 || parent.slice(0, 3) !== "00-");
  if (parent != null && !traced) {
    refuse("traceparent must be a W3C trace context (00-<32 hex digits>-<16 hex digits>-<2 hex " +
      "digits>, not all zeros), not " + quote(parent));
  }
  if (newDoc.tracestate != null && !(typeof newDoc.tracestate === "string" &&
      newDoc.tracestate.length <= PLAN.tracestate)) {
    refuse("tracestate must be a string of at most " + PLAN.tracestate + " characters");
  }
  if (ROUTES === null) return;
  var names = Object.keys(ROUTES).sort();
  var name = newDoc.target === undefined ? "default" : newDoc.target;
  if (typeof name !== "string" || !ROUTES.hasOwnProperty(name)) {
    refuse("there is no route " + quote(name) + " (routes: " + names.join(", ") + ")");
  }
  var route = ROUTES[name];
  if (!route.operations) return;
  var operation = newDoc.operation == null ? route.operation : newDoc.operation;
  if (operation == null) {
    refuse("operation is missing, and route " + quote(name) + " names no default");
  }
  if (typeof operation !== "string" || !route.operations.hasOwnProperty(operation)) {
    refuse("route " + quote(name) + " has no operation " + quote(operation) +
      " (it has: " + Object.keys(route.operations).sort().join(", ") + ")");
  }
  var params = route.operations[operation];
  var takes = params.names.join(", ") || "no arguments";
  var args = newDoc.args;
  if (args === undefined) args = newDoc.text === undefined ? [] : [newDoc.text];
  var given = [];
  if (Array.isArray(args)) {
    if (args.length > params.names.length) {
      refuse("operation " + quote(operation) + " takes at most " + params.names.length +
        " argument(s) (" + takes + "), got " + args.length);
    }
    for (var i = 0; i < args.length; i++) if (args[i] !== null) given.push(params.names[i]);
  } else if (args !== null && typeof args === "object") {
    var unknown = Object.keys(args).filter(function (key) {
      return params.names.indexOf(key) < 0;
    });
    if (unknown.length) {
      refuse("operation " + quote(operation) + " takes no argument " +
        unknown.slice(0, 5).map(quote).join(", ") + " (it takes: " + takes + ")");
    }
    given = Object.keys(args).filter(function (key) { return args[key] !== null; });
  } else {
    refuse("args must be an object (keyword arguments) or an array (positional arguments)");
  }
  var missing = params.required.filter(function (key) { return given.indexOf(key) < 0; });
  if (missing.length) {
    refuse("operation " + quote(operation) + " needs argument(s) " + missing.map(quote).join(", "));
  }
}"""


#: What the door checks a new message's priority, times and trace context against.
_PLAN = json.dumps(
    {
        "priorities": PRIORITIES,
        "names": list(PRIORITIES),
        "top": TOP_PRIORITY,
        "time": TIME.pattern.replace("\\Z", "$"),
        "traceparent": TRACEPARENT.pattern.replace("\\Z", "$"),
        "tracestate": TRACESTATE_LENGTH,
    },
    sort_keys=True,
)


def routes_of(targets: Mapping[str, ITarget]) -> dict[str, Any]:
    """What the door knows of each route: its default operation, and its operations' names."""
    known: dict[str, Any] = {}
    for name, target in sorted(targets.items()):
        described = target.describe()
        operations = described.get("operations")
        if isinstance(operations, dict):
            operations = {
                operation: {
                    "names": [param["name"] for param in params],
                    "required": [param["name"] for param in params if param.get("required")],
                }
                for operation, params in sorted(operations.items())
            }
        else:
            operations = None  # a kind that does not say: the route alone is checked
        known[name] = {"operation": described.get("default_operation"), "operations": operations}
    return known


def design_doc(targets: Mapping[str, ITarget] | None) -> Doc:
    """The door for these routes; for None (not loaded yet), the check of couchgw's fields alone."""
    routes = "null" if targets is None else _compact(routes_of(targets))
    function = _TEMPLATE % {
        "version": VERSION,
        "routes": routes,
        "owned": _compact(GATEWAY_FIELDS),
        "plan": _PLAN,
    }
    return {"_id": DOOR_ID, "language": "javascript", "validate_doc_update": function}


def is_current(doc: Mapping[str, Any]) -> bool:
    """Whether a door in the database was written by this version (with or without routes)."""
    function = doc.get("validate_doc_update")
    return isinstance(function, str) and f"version {VERSION}." in function


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
