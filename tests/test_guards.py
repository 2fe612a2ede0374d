"""Who a validate function would bind, read from a database's security object."""

from __future__ import annotations

from couchgw.gateway.guards import unbound_writers
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
