"""Who a validate function would bind, read from a database's security object."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from couchgw.couch import engines
from couchgw.couch.client import Database
from couchgw.gateway.facts import ServerFacts
from couchgw.gateway.guards import Guards, unbound_writers
from couchgw.targets import door
from couchgw.targets.interfaces import ITarget


def test_admin_only_binds_no_one() -> None:
    # CouchDB 3's security object of a new database
    security = {"members": {"roles": ["_admin"]}, "admins": {"roles": ["_admin"]}}
    assert unbound_writers(security) == []


def test_members_who_are_admins_too_are_not_bound() -> None:
    security = {
        "admins": {"names": ["ops"], "roles": ["couchgw"]},
        "members": {"names": ["ops"], "roles": ["couchgw", "_admin"]},
    }
    assert unbound_writers(security) == []


def test_members_who_are_not_admins_are_bound() -> None:
    security = {
        "admins": {"names": [], "roles": ["couchgw"]},
        "members": {"names": ["alice"], "roles": ["couchgw", "client"]},
    }
    assert unbound_writers(security) == ["alice", "role client"]


def test_a_database_without_members_is_public() -> None:
    for security in ({}, {"members": {}}, {"members": {"names": [], "roles": []}}, []):
        assert unbound_writers(security) == ["everyone: the database names no members"]


def test_the_door_before_the_routes_load_checks_couchgw_fields_alone() -> None:
    assert door.facts(None)["routes"] is None
    for language, other in zip(door.ENGINES, reversed(door.ENGINES), strict=True):
        *_, early = door.design_docs(None, language)
        assert door.engine_of(early) == language
        assert door.is_current(early) and door.is_current(early, language)
        assert not door.is_current(early, other)
    assert not door.is_current({"validate_doc_update": "function () { /* before */ }"})
    with pytest.raises(ValueError, match="the guard is written in javascript or erlang, not 'lua'"):
        door.design_docs(None, "lua")


class _Offering:
    """A route offering C{count} operations of three arguments each."""

    def __init__(self, count: int) -> None:
        self.count = count

    def describe(self) -> dict[str, Any]:
        params = [{"name": f"p{i}", "required": True} for i in range(3)]
        operations = {f"operation{i}": params for i in range(self.count)}
        return {"default_operation": None, "operations": operations}


def test_the_erlang_door_stays_small_whatever_the_routes() -> None:
    """
    CouchDB hashes a validate function's whole design document at each write: the Erlang door
    holds its entry alone, the routes and checks in a document of their own, written first.
    """
    few = door.design_docs({"default": cast(ITarget, _Offering(1))}, "erlang")
    many = door.design_docs({f"r{i}": cast(ITarget, _Offering(40)) for i in range(20)}, "erlang")
    for facts, gate in (few, many):
        assert (facts["_id"], gate["_id"]) == (door.FACTS_ID, door.DOOR_ID)
        assert facts["couchgw"]["door_id"] == gate["couchgw"]["door_id"]
        assert "validate_doc_update" not in facts and "routes" not in gate["couchgw"]
        assert door.is_current(gate, "erlang")
    assert few[1]["couchgw"]["door_id"] != many[1]["couchgw"]["door_id"]
    assert len(json.dumps(many[1])) == len(json.dumps(few[1])) < 2500
    assert len(json.dumps(many[0])) > 20 * len(json.dumps(few[0]["couchgw"]["routes"]))
    for engine in door.ENGINES:
        assert tuple(doc["_id"] for doc in door.design_docs(None, engine)) == door.DOCUMENTS[engine]
    before = {**few[1], "couchgw": {**few[1]["couchgw"], "version": door.VERSION - 1}}
    assert not door.is_current(before)


def test_erlang_where_every_node_enables_it() -> None:
    on = {"enable_erlang_query_server": "true"}
    legacy = {"erlang": "{couch_native_process, start_link, []}"}
    assert engines.decide({"couchdb@a": on}, "quickjs") == engines.Engines(
        True, "quickjs", "the Erlang query server is enabled (couchdb@a)"
    )
    assert engines.decide({"a": on, "b": legacy, "c": on}).why == (
        "the Erlang query server is enabled (all 3 nodes)"
    )
    assert (
        engines.decide({"couchdb@a": {}}).why
        == "the server does not enable the Erlang query server"
    )
    assert engines.decide({"a": {"enable_erlang_query_server": "false"}, "b": {}}).why == (
        "none of its 2 nodes enable the Erlang query server"
    )
    mixed = engines.decide({"a": on, "b": {}, "c": on})
    assert not mixed.erlang
    assert mixed.why == (
        "only 2 of 3 nodes enable the Erlang query server (a, c); JavaScript runs on every node"
    )
    assert engines.decide({"a": on}, None, {"a": "25.2.3"}).erlang
    assert engines.decide({"a": on}, None, {"a": "24.3"}).why == (
        "node a runs 24.3; the Erlang guard needs Erlang/OTP 25 or later"
    )
    assert not engines.decide({"a": on}, None, {"a": None}).erlang  # CouchDB before 3.4
    unread = engines.decide({"a": on, "b": "CouchDB answered 500 to GET (nodedown)"})
    assert (unread.erlang, unread.why) == (
        False,
        "node b's configuration cannot be read (CouchDB answered 500 to GET (nodedown))",
    )


class _Couch(Resource):
    """Answers C{/_session} (401 without credentials, where every request must carry them)
    and C{/db/_security}."""

    isLeaf = True

    def __init__(self, security: dict[str, Any], anonymous_roles: list[str] | None) -> None:
        super().__init__()
        self.security = security
        #: None: an anonymous request is refused (CouchDB's require_valid_user).
        self.anonymous_roles = anonymous_roles

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        if request.path == b"/_session":
            if request.getHeader(b"authorization") is None and self.anonymous_roles is None:
                request.setResponseCode(401)
                return json.dumps({"error": "unauthorized", "reason": "login"}).encode()
            roles = self.anonymous_roles or []
            return json.dumps({"ok": True, "userCtx": {"name": None, "roles": roles}}).encode()
        assert request.path == b"/db/_security", request.path
        return json.dumps(self.security).encode()


class AutoDecision(SynchronousTestCase):
    """What --guards auto decides from CouchDB's session and the security object."""

    def wanted(self, security: dict[str, Any], anonymous_roles: list[str] | None) -> Any:
        agent = RequestTraversalAgent(_Couch(security, anonymous_roles))
        db = Database("http://admin:pw@couch/db", agent)
        facts = ServerFacts(Clock(), ttl=0.0)
        d = Guards(db, {}, "auto", loaded=lambda: False, facts=facts)._wanted()
        agent.flush()
        return self.successResultOf(d)

    def test_admin_party_protects_nothing(self) -> None:
        public: dict[str, Any] = {}
        self.assertEqual(
            self.wanted(public, ["_admin"]),
            (False, "CouchDB runs without authentication: everyone is an admin"),
        )

    def test_clients_who_may_write_are_guarded(self) -> None:
        security = {"admins": {"roles": ["couchgw"]}, "members": {"roles": ["client"]}}
        self.assertEqual(
            self.wanted(security, []),
            (True, "users who are not admins may write to the database (role client)"),
        )

    def test_every_request_asking_for_credentials_is_no_admin_party(self) -> None:
        admin_only = {"admins": {"roles": ["_admin"]}, "members": {"roles": ["_admin"]}}
        self.assertEqual(
            self.wanted(admin_only, None), (False, "only admins may write to the database")
        )
        self.assertEqual(self.wanted({}, None)[0], True)


class SharedFacts(SynchronousTestCase):
    """The server's facts that decide every database's guard: read once a minute, for all."""

    def test_one_read_of_the_session_for_many_databases(self) -> None:
        asked: list[bytes] = []

        class Counting(_Couch):
            def render_GET(self, request: Request) -> bytes:
                asked.append(request.path)
                return super().render_GET(request)

        couch = Counting({"admins": {"roles": ["_admin"]}, "members": {"roles": ["_admin"]}}, [])
        agent = RequestTraversalAgent(couch)
        db = Database("http://admin:pw@couch/db", agent)
        clock = Clock()
        facts = ServerFacts(clock, ttl=60.0)

        def decide() -> Any:
            d = Guards(db, {}, "auto", loaded=lambda: False, facts=facts)._wanted()
            agent.flush()
            return self.successResultOf(d)

        first = [Guards(db, {}, "auto", loaded=lambda: False, facts=facts)._wanted() for _ in "ab"]
        agent.flush()  # two databases at once: one read between them
        self.assertEqual({self.successResultOf(d)[0] for d in first}, {False})
        self.assertEqual(decide(), (False, "only admins may write to the database"))
        self.assertEqual(asked.count(b"/_session"), 1)
        self.assertEqual(asked.count(b"/db/_security"), 3)  # (each database's own, each time)
        clock.advance(60)
        decide()
        self.assertEqual(asked.count(b"/_session"), 2)


class _Server(Resource):
    """A server's welcome, its nodes and their configuration, as CouchDB answers them."""

    isLeaf = True

    def __init__(
        self,
        welcome: dict[str, Any],
        nodes: dict[str, dict[str, str]] | None,
        javascript: str | None = "quickjs",
    ) -> None:
        super().__init__()
        self.welcome, self.nodes, self.javascript = welcome, nodes, javascript

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        path = request.path.decode()
        if path == "/":
            return json.dumps(self.welcome).encode()
        if self.nodes is None:  # not a server admin
            request.setResponseCode(401)
            return b'{"error": "unauthorized", "reason": "You are not a server admin."}'
        if path == "/_membership":
            names = sorted(self.nodes)
            return json.dumps({"all_nodes": names, "cluster_nodes": names}).encode()
        _, _, node, what = path.split("/", 3)
        if what == "_versions" and self.javascript is not None:
            engines = {"javascript_engine": {"name": self.javascript}}
            return json.dumps({**engines, "erlang": {"version": "25.2.3"}}).encode()
        if what == "_config/native_query_servers" and node in self.nodes:
            return json.dumps(self.nodes[node]).encode()
        request.setResponseCode(404)
        return b'{"error": "not_found", "reason": "missing"}'


COUCHDB = {"couchdb": "Welcome", "version": "3.5.0"}


class EngineReading(SynchronousTestCase):
    """What couchgw reads of a server to choose the guard's language."""

    def read(self, server: _Server) -> engines.Engines:
        agent = RequestTraversalAgent(server)
        db = Database("http://admin:pw@couch/db", agent)
        d = engines.read(db)
        agent.flush()
        found: engines.Engines = self.successResultOf(d)
        self.assertIsNone(db.refused)  # a 401 of these does not make /ready say so
        return found

    def test_every_node_enables_erlang(self) -> None:
        on = {"enable_erlang_query_server": "true"}
        found = self.read(_Server(COUCHDB, {"couchdb@a": on, "couchdb@b": on}))
        self.assertEqual(
            found,
            engines.Engines(True, "quickjs", "the Erlang query server is enabled (all 2 nodes)"),
        )

    def test_one_node_does_not(self) -> None:
        on = {"enable_erlang_query_server": "true"}
        found = self.read(_Server(COUCHDB, {"couchdb@a": on, "couchdb@b": {}}, None))
        self.assertEqual((found.erlang, found.javascript), (False, None))
        self.assertIn("only 1 of 2 nodes", found.why)

    def test_a_user_who_is_not_a_server_admin_gets_javascript(self) -> None:
        found = self.read(_Server(COUCHDB, None))
        self.assertEqual(
            found,
            engines.Engines(
                False,
                None,
                "couchgw may not read the server's configuration (it is not a server admin)",
            ),
        )

    def test_pouchdb_server_runs_javascript_alone(self) -> None:
        pouchdb = {"express-pouchdb": "Welcome", "version": "4.2.0"}
        found = self.read(_Server(pouchdb, {}))
        self.assertEqual(found.why, "PouchDB Server runs design functions in JavaScript alone")
