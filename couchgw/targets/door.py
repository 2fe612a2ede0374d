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
VERSION = 6
#: The languages the guard is written in.
ENGINES = ("javascript", "erlang")

#: Where the Erlang guard's checks and facts are kept: a design document of their own, which no
#: validate function reads at each write.
FACTS_ID = "_design/couchgw-guard"
#: The design documents of the guard in each language, in the order they are written.
DOCUMENTS = {"javascript": (DOOR_ID,), "erlang": (FACTS_ID, DOOR_ID)}

#: The guard's validate function in Erlang.  CouchDB's native query server reads (scans, parses,
#: evaluates) a design function again for every write, and hashes its whole design document, so
#: the door holds only this short expression (no comment: it is read at every write too), which
#: answers the guard already made for this door (a persistent term, under the door's id), and
#: the few lines (L{BOOT}) that make it the first time on each node.
ENTRY = """case persistent_term:get(<<"couchgw-guard-DOOR">>, 0) of
    0 ->
        Boot = couch_util:get_nested_json_value(DDoc, [<<"couchgw">>, <<"boot">>]),
        {ok, Made} = erl_eval:eval_str(Boot),
        Made(DDoc);
    Guard -> Guard
end."""

#: Makes the guard of a door from the database's L{FACTS_ID} (named by the writer's context),
#: with its loader.  Where that cannot be done (the document deleted, say), the write is refused
#: with the reason, unless couchgw or a server admin makes it; nothing is kept, so that the next
#: write tries again.
BOOT = """fun(Door) ->
    DoorId = couch_util:get_nested_json_value(Door, [<<"couchgw">>, <<"door_id">>]),
    fun(Doc, Old, {UserProps} = User, Sec) ->
        Guard = try
            Db = couch_util:get_value(<<"db">>, UserProps),
            {ok, FactsDoc} = ddoc_cache:open_doc(Db, <<"_design/couchgw-guard">>),
            Facts = couch_doc:to_json_obj(FactsDoc, []),
            Loader = couch_util:get_nested_json_value(Facts, [<<"couchgw">>, <<"loader">>]),
            {ok, Load} = erl_eval:eval_str(Loader),
            Load(Facts, DoorId)
        catch Class:Reason ->
            couch_log:error("couchgw's guard cannot be made: ~p:~p", [Class, Reason]),
            Roles = couch_util:get_value(<<"roles">>, UserProps, []),
            fun(_, _, _, _) ->
                lists:member(<<"_admin">>, Roles) orelse lists:member(<<"couchgw">>, Roles)
                    orelse throw({[{<<"forbidden">>, <<"couchgw's guard cannot be made from ",
                        "_design/couchgw-guard in this database (see CouchDB's log); couchgw ",
                        "writes it again">>}]}),
                1
            end
        end,
        Guard(Doc, Old, User, Sec)
    end
end.
"""

#: Makes the guard of a door from its facts: the checks of C{door.erl} (the facts' C{checks})
#: compiled once on each node into a module of their own, named after their version; and a
#: fun of a write alone that checks it with the door's facts, kept as a persistent term (one for
#: each door: its checks and its routes, until the node restarts).  A persistent term is not
#: copied by the query server's garbage collection after each write, as a process's own memory
#: is.  Facts written for another door (the door being written anew) are used, not kept.
LOADER = """fun({FactsDocProps}, DoorId) ->
    {_, {Facts}} = lists:keyfind(<<"couchgw">>, 1, FactsDocProps),
    {_, ChecksId} = lists:keyfind(<<"checks_id">>, 1, Facts),
    Module = binary_to_atom(<<"couchgw_guard_", ChecksId/binary>>),
    Compile = fun() ->
        {_, Source} = lists:keyfind(<<"checks">>, 1, Facts),
        {ok, Tokens, _} = erl_scan:string(binary_to_list(Source)),
        {ok, Head, _} = erl_scan:string("door(CouchgwFacts) -> "),
        {ok, Tail, _} = erl_scan:string("fun(CouchgwDoc, CouchgwOld, CouchgwUser, CouchgwSec) -> "
            "Guard(CouchgwDoc, CouchgwOld, CouchgwUser, CouchgwSec, CouchgwFacts) end."),
        Body = [case Token of {dot, At} -> {',', At}; _ -> Token end || Token <- Tokens],
        {ok, Door} = erl_parse:parse_form(Head ++ Body ++ Tail),
        Forms = [{attribute, 1, module, Module}, {attribute, 1, export, [{door, 1}]}, Door],
        {ok, Module, Binary} = compile:forms(Forms, [binary, return_errors]),
        {module, Module} = code:load_binary(Module, "couchgw_guard", Binary)
    end,
    code:is_loaded(Module) =:= false andalso global:trans({{couchgw_guard, Module}, self()},
        fun() -> code:is_loaded(Module) =:= false andalso Compile() end, [node()]),
    Guard = Module:door(Facts),
    Key = <<"couchgw-guard-", DoorId/binary>>,
    case lists:keyfind(<<"door_id">>, 1, Facts) of
        {_, DoorId} ->
            case persistent_term:get(Key, undefined) of
                undefined -> persistent_term:put(Key, Guard), Guard;
                Kept -> Kept  % another process made it first: replacing a term costs a collection
            end;
        _ -> Guard
    end
end.
"""


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


def design_docs(targets: Mapping[str, ITarget] | None, engine: str = "javascript") -> list[Doc]:
    """
    The guard for these routes (None: not loaded yet: the check of couchgw's fields, priorities,
    times and trace contexts alone), in the language of C{engine}: the documents to write, in
    order, the door (L{DOOR_ID}) last.  In Erlang, the door's checks and facts come first, in a
    design document of their own (L{FACTS_ID}).
    """
    known = facts(targets)
    if engine == "javascript":
        # the facts are read once, when CouchDB compiles the function
        text = json.dumps(_compact(known))
        function = _source("door.js").replace("FACTS_JSON", text, 1)
        return [{"_id": DOOR_ID, "language": "javascript", "validate_doc_update": function}]
    if engine == "erlang":
        # Erlang's patterns end at the very end with \z ($ would pass a final newline)
        known["traceparent"] = "^" + TRACEPARENT.pattern.replace("\\Z", "\\z")
        checks = _source("door.erl")
        made = hashlib.sha256(f"{LOADER}\n{checks}".encode()).hexdigest()
        # (erl_eval:eval_str reads up to a full stop and a newline)
        known.update(checks=checks, loader=LOADER, checks_id=f"{VERSION}-{made[:16]}")
        door_id = f"{VERSION}-{hashlib.sha256(_compact(known).encode()).hexdigest()[:16]}"
        known["door_id"] = door_id
        entry = ENTRY.replace("DOOR", door_id)
        return [
            {"_id": FACTS_ID, "couchgw": known},
            {
                "_id": DOOR_ID,
                "language": "erlang",
                "validate_doc_update": entry,
                "couchgw": {"version": VERSION, "door_id": door_id, "boot": BOOT},
            },
        ]
    raise ValueError(f"the guard is written in {' or '.join(ENGINES)}, not {engine!r}")


def is_current(doc: Mapping[str, Any], engine: str | None = None) -> bool:
    """
    Whether a door in the database was written by this version (with or without routes), in
    the language of C{engine} (None: in either).
    """
    function = doc.get("validate_doc_update")
    if not isinstance(function, str):
        return False
    if engine_of(doc) == "erlang":
        written = doc.get("couchgw")
        if not isinstance(written, Mapping) or written.get("version") != VERSION:
            return False
    elif f"version {VERSION}." not in function:
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
