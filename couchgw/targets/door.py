"""
The guard at the door: one design document whose C{validate_doc_update} keeps the fields couchgw
owns to couchgw, and makes CouchDB itself refuse (403) a client's new message whose route,
operation or argument names do not fit the routes (each SOAP route's operations as its WSDL
describes them), or whose priority, times or trace context are not ones couchgw takes.  Until
the routes have loaded, it holds the checks that do not need them.

It comes in two languages that decide alike, word for word: JavaScript (C{door.js}), which
every CouchDB runs, and Erlang (C{door.erl}), for servers whose every node enables CouchDB's
native query server: it runs inside CouchDB, without a trip to a JavaScript process for each
write.  Admins and the C{couchgw} role pass (they repair and write status); so does everyone
while CouchDB runs without authentication.  The gateway still rejects whatever gets past the
door.  Whether it is installed at all, and in which language, is the gateway's C{--guards}
(L{couchgw.gateway.guards}).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from typing import Any

from couchgw.checks import PRIORITIES, TIME, TOP_PRIORITY, TRACEPARENT, TRACESTATE_LENGTH
from couchgw.couch.client import Doc
from couchgw.message import OWNED_FIELDS
from couchgw.targets.interfaces import ITarget

DOOR_ID = "_design/couchgw-routes"
#: Marks the guard of this version: a door written by another version is written again.
VERSION = 5
#: The languages the guard is written in.
ENGINES = ("javascript", "erlang")

#: The guard's validate function in Erlang.  CouchDB's native query server reads (scans,
#: parses, lints, evaluates) a design function again for every write, so this one is a short
#: expression that answers the guard already made for this door (a persistent term, under the
#: door's id), and makes it (L{LOADER}) only the first time on each node.  A persistent term is
#: not copied by the query server's garbage collection after each write, as a process's own
#: memory is; there is one for each door (its checks and its routes) until the node restarts.
ENTRY = """%% couchgw --guards, version VERSION. See couchgw.loader
case persistent_term:get({couchgw_guard, <<"DOOR">>}, undefined) of
    undefined ->
        Loader = couch_util:get_nested_json_value(DDoc, [<<"couchgw">>, <<"loader">>]),
        {ok, Load} = erl_eval:eval_str(Loader),
        Load(DDoc);
    Guard -> Guard
end."""

#: Makes the guard of a door: the checks of C{door.erl} (the facts' C{checks}), each fun in
#: turn, evaluated with the funs before it that it names bound and nothing else (erl_eval keeps
#: every variable bound where a fun is made, and pays for each at every call), once for each
#: version of the checks; and a fun of a write alone that checks it with this door's facts.
LOADER = """fun({DDocProps}) ->
    {_, {Facts}} = lists:keyfind(<<"couchgw">>, 1, DDocProps),
    {_, ChecksId} = lists:keyfind(<<"checks_id">>, 1, Facts),
    {_, DoorId} = lists:keyfind(<<"door_id">>, 1, Facts),
    Keep = fun(Key, Made) ->
        case persistent_term:get({couchgw_guard, Key}, undefined) of
            undefined -> persistent_term:put({couchgw_guard, Key}, Made), Made;
            Kept -> Kept  % another process made it first: replacing a term costs a collection
        end
    end,
    Evaluate = fun(Text, Bindings) ->
        {ok, Tokens, _} = erl_scan:string(Text),
        {ok, [Form]} = erl_parse:parse_exprs(Tokens),
        element(2, erl_eval:expr(Form, Bindings))
    end,
    Split = fun
        Cut([], [], Done) -> lists:reverse(Done);
        Cut([{dot, _} = Dot | More], Acc, Done) ->
            Cut(More, [], [lists:reverse([Dot | Acc]) | Done]);
        Cut([Token | More], Acc, Done) -> Cut(More, [Token | Acc], Done)
    end,
    Define = fun(Expression, Funs) ->
        Named = lists:usort([Name || {var, _, Name} <- Expression]),
        Bindings = lists:foldl(fun(Used, Bound) ->
            case maps:find(Used, Funs) of
                {ok, Fun} -> erl_eval:add_binding(Used, Fun, Bound);
                error -> Bound
            end
        end, erl_eval:new_bindings(), Named),
        {ok, [{match, _, {var, _, Defined}, _} = Form]} = erl_parse:parse_exprs(Expression),
        {value, Made, _} = erl_eval:expr(Form, Bindings),
        maps:put(Defined, Made, Funs)
    end,
    Check = case persistent_term:get({couchgw_guard, ChecksId}, undefined) of
        undefined ->
            {_, Source} = lists:keyfind(<<"checks">>, 1, Facts),
            {ok, Tokens, _} = erl_scan:string(binary_to_list(Source)),
            Keep(ChecksId, maps:get('Guard', lists:foldl(Define, #{}, Split(Tokens, [], []))));
        Checks -> Checks
    end,
    Bound = erl_eval:add_binding('Check', Check, erl_eval:add_binding('Facts', Facts,
        erl_eval:new_bindings())),
    Keep(DoorId, Evaluate("fun(Doc, Old, User, Sec) -> Check(Doc, Old, User, Sec, Facts) end.",
        Bound))
end."""


def routes_of(targets: Mapping[str, ITarget]) -> dict[str, Any]:
    """
    What the door knows of each route: its default operation, its operations' parameter names
    (None: a kind that does not say, whose route alone is checked), and the lists its refusals
    name, written out once here.
    """
    known: dict[str, Any] = {}
    for name, target in sorted(targets.items()):
        described = target.describe()
        operations = described.get("operations")
        route: dict[str, Any] = {"operation": described.get("default_operation")}
        if isinstance(operations, dict):
            route["operations"] = {}
            for operation, params in sorted(operations.items()):
                names = [param["name"] for param in params]
                route["operations"][operation] = {
                    "names": names,
                    "required": [param["name"] for param in params if param.get("required")],
                    "takes": ", ".join(names) or "no arguments",
                }
            route["has"] = ", ".join(sorted(operations))
        else:
            route["operations"] = None
        known[name] = route
    return known


def facts(targets: Mapping[str, ITarget] | None) -> dict[str, Any]:
    """
    Everything the guard checks against, in either language: the fields couchgw owns, the
    priorities and the patterns of times and trace contexts, and the routes (None: not loaded
    yet, so that only what does not need them is checked).
    """
    names = ", ".join(json.dumps(name) for name in PRIORITIES)
    return {
        "version": VERSION,
        "owned": list(OWNED_FIELDS),
        "priorities": PRIORITIES,
        "top": TOP_PRIORITY,
        "priority": f"priority must be {names} or a whole number from 0 to {TOP_PRIORITY} "
        "(higher first), not ",
        "time": "^" + TIME.pattern.replace("\\Z", "$"),
        "traceparent": "^" + TRACEPARENT.pattern.replace("\\Z", "$"),
        "tracestate": TRACESTATE_LENGTH,
        "routes": None if targets is None else routes_of(targets),
        "names": "" if targets is None else ", ".join(sorted(targets)),
    }


def design_doc(targets: Mapping[str, ITarget] | None, engine: str = "javascript") -> Doc:
    """
    The door for these routes (None: not loaded yet: the check of couchgw's fields, priorities,
    times and trace contexts alone), in the language of C{engine}.
    """
    known = facts(targets)
    if engine == "javascript":
        # the facts are read once, when CouchDB compiles the function
        text = json.dumps(_compact(known))
        function = _source("door.js").replace("FACTS_JSON", text, 1)
        return {"_id": DOOR_ID, "language": "javascript", "validate_doc_update": function}
    if engine == "erlang":
        # Erlang's patterns end at the very end with \z ($ would pass a final newline)
        known["traceparent"] = "^" + TRACEPARENT.pattern.replace("\\Z", "\\z")
        checks = _source("door.erl")
        made = hashlib.sha256(f"{LOADER}\n{checks}".encode()).hexdigest()
        # (erl_eval:eval_str reads up to a full stop and a newline)
        known.update(checks=checks, loader=f"{LOADER}\n", checks_id=f"{VERSION}-{made[:16]}")
        door = hashlib.sha256(_compact(known).encode()).hexdigest()
        known["door_id"] = f"{VERSION}-{door[:16]}"
        entry = ENTRY.replace("VERSION", str(VERSION)).replace("DOOR", known["door_id"])
        return {
            "_id": DOOR_ID,
            "language": "erlang",
            "validate_doc_update": entry,
            "couchgw": known,
        }
    raise ValueError(f"the guard is written in {' or '.join(ENGINES)}, not {engine!r}")


def is_current(doc: Mapping[str, Any], engine: str | None = None) -> bool:
    """
    Whether a door in the database was written by this version (with or without routes), in
    the language of C{engine} (None: in either).
    """
    function = doc.get("validate_doc_update")
    if not isinstance(function, str) or f"version {VERSION}." not in function:
        return False
    return engine is None or engine_of(doc) == engine


def engine_of(doc: Mapping[str, Any]) -> str:
    """The language a door is written in."""
    return "erlang" if doc.get("language") == "erlang" else "javascript"


@cache
def _source(name: str) -> str:
    text = files("couchgw.targets").joinpath(name).read_text("utf-8")
    return text.replace("VERSION", str(VERSION), 1).strip()


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
