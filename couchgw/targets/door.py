"""
The guard at the door: one design document whose C{validate_doc_update} keeps the fields couchgw
owns to couchgw, and makes CouchDB itself refuse (403) a client's new message whose route,
operation or argument names do not fit the routes (each SOAP route's operations as its WSDL
describes them).  Until the routes have loaded, it holds the first check alone.

Admins and the C{couchgw} role pass (they repair and write status); so does everyone while
CouchDB runs without authentication.  The gateway still rejects whatever gets past the door.
Whether it is installed at all is the gateway's C{--guards} (L{couchgw.gateway.guards}).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from couchgw.couch.client import Doc
from couchgw.message import GATEWAY_FIELDS
from couchgw.targets.interfaces import ITarget

DOOR_ID = "_design/couchgw-routes"
#: Marks the template of this version: a door written by another version is written again.
VERSION = 2

_TEMPLATE = """function (newDoc, oldDoc, userCtx, secObj) {
  // Written by couchgw (--guards), version %(version)d. Only couchgw (a user with the role
  // "couchgw") and admins write the fields couchgw owns; a client's new message is refused when
  // its route, its operation or its argument names do not fit what the route offers.
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
  if (before !== null || ROUTES === null) return;
  function quote(value) { return JSON.stringify(value); }
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
    function = _TEMPLATE % {"version": VERSION, "routes": routes, "owned": _compact(GATEWAY_FIELDS)}
    return {"_id": DOOR_ID, "language": "javascript", "validate_doc_update": function}


def is_current(doc: Mapping[str, Any]) -> bool:
    """Whether a door in the database was written by this version (with or without routes)."""
    function = doc.get("validate_doc_update")
    return isinstance(function, str) and f"version {VERSION}." in function


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
