"""Who a validate function would bind, read from a database's security object."""

from __future__ import annotations

import json
from typing import Any

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from couchgw.couch.client import Database
from couchgw.gateway.guards import Guards, unbound_writers
from couchgw.targets import door


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
    early = door.design_doc(None)
    assert "var ROUTES = null;" in early["validate_doc_update"]
    assert door.is_current(early)
    assert not door.is_current({"validate_doc_update": "function () { /* before */ }"})


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
        db = Database("http://admin:pw@couch/db", agent, client=HTTPClient(agent))
        d = Guards(db, {}, "auto", loaded=lambda: False)._wanted()
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
