"""
The guard decides every case of its corpus (tests/doorcases.py, tests/doorroutes.py) as written, in each
language it is written in, on a real server: JavaScript on PouchDB Server or $COUCHGW_TEST_COUCH,
and Erlang where that server enables the Erlang query server (Apache CouchDB started with
COUCHDB_ERLANG_QUERY_SERVER=true; skipped elsewhere).  couchgw's own checks (couchgw.message
and the route's target) decide each new message of a client alike.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import pytest

from couchgw import checks
from couchgw.checks import Rejected
from couchgw.connections import agent, connection_pool
from couchgw.targets import door
from couchgw.targets.http import HttpTarget
from couchgw.targets.interfaces import ITarget
from couchgw.targets.soap import SoapTarget
from tests.doorcases import CASES as FIELD_CASES
from tests.doorcases import HAS, LAXER, STRICTER, Case
from tests.doorroutes import ROUTE_CASES
from tests.servers import (
    COUCH_ENV,
    demo_wsdl,
    engines_of,
    http,
    start_pouchdb,
    stop,
    wait_until,
)
from tests.test_e2e import Twistd
from tests.test_soap import SyncRunner, result

CASES = FIELD_CASES + ROUTE_CASES
PASSWORD = "door-Pw-" + uuid.uuid4().hex[:8]
ADMIN_PASSWORD = "door-admin-Pw-1"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, dict[str, str]]]:
    """
    A server with authentication, and the URL prefix of each user of the corpus
    (C{scheme://user:password@host:port}): users made for this run, deleted at its end.
    """
    external = os.environ.get(COUCH_ENV)
    process = None
    if external:
        admin = external.rstrip("/")
    else:
        base, process = start_pouchdb()
        assert http("PUT", f"{base}/_config/admins/admin", ADMIN_PASSWORD)[0] == 200
        admin = base.replace("://", f"://admin:{ADMIN_PASSWORD}@")
    scheme, rest = admin.split("://", 1)
    host = rest.rsplit("@", 1)[-1]
    suffix = uuid.uuid4().hex[:6]
    roles = {"client": ["client"], "gateway": ["couchgw"], "named-admin": [], "ops": ["ops"]}
    users = {"admin": admin}
    made = []
    for user, user_roles in roles.items():
        name = f"door-{user}-{suffix}"
        url = f"{admin}/_users/{quote('org.couchdb.user:' + name, safe=':')}"
        body = {"name": name, "password": PASSWORD, "roles": user_roles, "type": "user"}
        assert http("PUT", url, body)[0] in (201, 202)
        made.append(url)
        users[user] = f"{scheme}://{name}:{PASSWORD}@{host}"
    try:
        yield admin, users
    finally:
        for url in made:
            status, doc = http("GET", url)
            if status == 200:
                http("DELETE", f"{url}?rev={doc['_rev']}")
        if process is not None:
            stop(process)


@pytest.fixture(scope="module")
def targets() -> dict[str, ITarget]:
    """The corpus's routes, loaded: the demo's SOAP service, with and without a default
    operation, and an http route."""
    default = SoapTarget("default", demo_wsdl(), SyncRunner(), timeout=10)
    named = SoapTarget("named", demo_wsdl(), SyncRunner(), timeout=10, default_operation="ping")
    for target in (default, named):
        result(target.load())
    from twisted.internet import reactor

    pool = connection_pool(reactor)
    null = HttpTarget("null", "http://127.0.0.1:9/json", reactor, agent(reactor, pool))
    return {"default": default, "named": named, "null": null}


def decisions(
    admin: str, users: dict[str, str], guard: list[dict[str, Any]], cases: list[tuple[int, Case]]
) -> dict[int, str | None]:
    """
    Each case written by its user into a database guarded by C{guard} (its design documents):
    None where the write passed, else the reason of CouchDB's 403.
    """
    name = f"door-{guard[-1]['language']}-{uuid.uuid4().hex[:8]}"
    db = f"{admin}/{name}"
    assert http("PUT", db)[0] in (201, 202)
    try:
        ops = users["ops"].split("://", 1)[1].split(":", 1)[0]
        named = users["named-admin"].split("://", 1)[1].split(":", 1)[0]
        security = {
            "admins": {"names": [named], "roles": ["couchgw", "ops"]},
            "members": {"names": [named, ops], "roles": ["client", "couchgw"]},
        }
        assert http("PUT", f"{db}/_security", security)[0] == 200
        for ddoc in guard:
            assert http("PUT", f"{db}/{ddoc['_id']}", ddoc)[0] == 201
        revs = _before(db, cases)
        found: dict[int, str | None] = {}
        for i, case in cases:  # one at a time: PouchDB Server hands the validate function of a
            # _bulk_docs an empty security object
            doc = {**case.doc, **revs.get(i, {})}
            status, answer = http("PUT", f"{users[case.user]}/{name}/c{i:03d}", doc)
            assert status in (200, 201, 202, 403), (case.what, status, answer)
            found[i] = answer["reason"] if status == 403 else None
        return found
    finally:
        http("DELETE", db)


def _before(db: str, cases: list[tuple[int, Case]]) -> dict[int, dict[str, Any]]:
    """The revisions written before (by the server's admin), deleted where the case says."""
    old = [(i, case) for i, case in cases if case.old is not None]
    if not old:
        return {}
    docs = [{**case.old, "_id": f"c{i:03d}"} for i, case in old]
    status, rows = http("POST", f"{db}/_bulk_docs", {"docs": docs})
    assert status == 201 and all("rev" in row for row in rows), rows
    revs = {i: row["rev"] for (i, _), row in zip(old, rows, strict=True)}
    gone = [{"_id": f"c{i:03d}", "_rev": revs[i], "_deleted": True} for i, c in old if c.deleted]
    if gone:
        status, rows = http("POST", f"{db}/_bulk_docs", {"docs": gone})
        assert status == 201, rows
        for row in rows:
            revs[int(row["id"][1:])] = row["rev"]
    return {i: {"_rev": rev} for i, rev in revs.items()}


def _languages(admin: str) -> list[str]:
    """JavaScript, and Erlang where every node of the server enables it."""
    return ["javascript", "erlang"] if engines_of(admin).erlang else ["javascript"]


@pytest.mark.parametrize("language", ["javascript", "erlang"])
def test_the_guard_decides_every_case(
    language: str, server: tuple[str, dict[str, str]], targets: dict[str, ITarget]
) -> None:
    admin, users = server
    if language not in _languages(admin):
        pytest.skip(
            "the server does not enable the Erlang query server (COUCHDB_ERLANG_QUERY_SERVER=true)"
        )
    numbered = list(enumerate(CASES))
    found: dict[int, str | None] = {}
    for loaded in (True, False):
        guard = door.design_docs(targets if loaded else None, language)
        found.update(
            decisions(admin, users, guard, [(i, c) for i, c in numbered if c.loaded == loaded])
        )
    wrong = [
        f"{case.what}: {found[i]!r}, not {case.refused!r}"
        for i, case in numbered
        if found[i] != case.refused
    ]
    assert not wrong, f"{len(wrong)} of {len(CASES)} cases decided otherwise:\n" + "\n".join(wrong)


class _Pinged:
    """A route with one operation, C{ping}."""

    def describe(self) -> dict[str, Any]:
        return {"default_operation": None, "operations": {"ping": [{"name": "text"}]}}


def test_the_erlang_guard_is_made_from_its_facts(server: tuple[str, dict[str, str]]) -> None:
    """
    Without its facts (_design/couchgw-guard: deleted, say) the Erlang guard refuses a client's
    write with the reason, passes couchgw's, and keeps nothing: once they are back, it decides.
    """
    admin, users = server
    if "erlang" not in _languages(admin):
        pytest.skip("the server does not enable the Erlang query server")
    route = f"route-{uuid.uuid4().hex[:8]}"  # a door no node has made a guard of yet
    facts, gate = door.design_docs({route: cast(ITarget, _Pinged())}, "erlang")
    name = f"door-facts-{uuid.uuid4().hex[:8]}"
    db = f"{admin}/{name}"
    assert http("PUT", db)[0] in (201, 202)
    try:
        security = {"admins": {"roles": ["couchgw"]}, "members": {"roles": ["client"]}}
        assert http("PUT", f"{db}/_security", security)[0] == 200
        assert http("PUT", f"{db}/{gate['_id']}", gate)[0] == 201
        message = {"type": "message", "target": route, "operation": "ping"}
        client = f"{users['client']}/{name}"
        status, body = http("POST", client, message)
        assert (status, body.get("reason")) == (
            403,
            "couchgw's guard cannot be made from _design/couchgw-guard in this database (see "
            "CouchDB's log); couchgw writes it again",
        )
        outcome = {**message, "status": "done", "result": "pong"}
        assert http("PUT", f"{users['gateway']}/{name}/m1", outcome)[0] == 201
        assert http("PUT", f"{db}/{facts['_id']}", facts)[0] == 201
        assert http("POST", client, message)[0] == 201
        status, body = http("POST", client, {**message, "operation": "explode"})
        assert (status, body.get("reason")) == (
            403,
            f'route "{route}" has no operation "explode" (it has: ping)',
        )
    finally:
        http("DELETE", db)


def python_refuses(doc: dict[str, Any], targets: dict[str, ITarget]) -> str | None:
    """What couchgw's own checks say of a client's new message: None, or why they reject it."""
    try:
        checks.check_new(doc)
        checks.plan_of(doc)
        call = checks.call_of(doc)
        target = targets.get(call.route)
        if target is None:
            raise Rejected(f"there is no route {call.route!r}")
        target.prepare(call.operation, call.args)
    except Rejected as e:
        return str(e)
    return None


def test_couchgw_decides_new_messages_as_the_guard(targets: dict[str, ITarget]) -> None:
    checked = [case for case in CASES if case.new_message]
    assert len(checked) > 100
    wrong = []
    for case in checked:
        refused = python_refuses(case.doc, targets)
        expected = {STRICTER: True, LAXER: False}.get(case.python, case.refused is not None)
        if (refused is not None) != expected:
            wrong.append(f"{case.what}: couchgw says {refused!r}, the guard {case.refused!r}")
    assert not wrong, "\n".join(wrong)


def test_a_gateway_installs_the_guard_its_server_runs(
    tmp_path: Path, server: tuple[str, dict[str, str]]
) -> None:
    """
    --guards on: the guard in Erlang where the server enables it and couchgw may read its
    configuration (a server admin), in JavaScript elsewhere; /status and the log say which.
    """
    admin = server[0]
    erlang = "erlang" in _languages(admin)
    state, log = _guarded_by(tmp_path, server, "admin")
    assert state["language"] == ("erlang" if erlang else "javascript"), state
    if erlang:
        node = http("GET", f"{admin}/_membership")[1]["all_nodes"][0]
        why = f"the Erlang query server is enabled ({node})"
        assert (state["engine"], state["engine_why"]) == ("erlang", why)
        assert f"guards on: --guards on; the guard in Erlang: {why}" in log
    state, log = _guarded_by(tmp_path, server, "gateway")
    assert state["language"] == "javascript", state
    if erlang:
        why = "couchgw may not read the server's configuration (it is not a server admin)"
        assert state["engine_why"] == why
        assert f"guards on: --guards on; the guard in JavaScript: {why}" in log


def _guarded_by(
    tmp_path: Path, server: tuple[str, dict[str, str]], user: str
) -> tuple[dict[str, Any], str]:
    """
    A gateway (twistd) run by C{user} with --guards on, on a database clients write to: the
    guards' state once the guard with the routes is in the database (in the language it says,
    and refusing what it should), and the gateway's log.
    """
    admin, users = server
    name = f"door-gateway-{uuid.uuid4().hex[:8]}"
    db = f"{admin}/{name}"
    assert http("PUT", db)[0] in (201, 202)
    security = {"admins": {"roles": ["couchgw"]}, "members": {"roles": ["client", "couchgw"]}}
    assert http("PUT", f"{db}/_security", security)[0] == 200
    (tmp_path / user).mkdir()
    couch = f"{users[user]}/{name}"
    gateway = Twistd(
        tmp_path / user,
        *("--couch", couch, "--target", demo_wsdl(), "--guards", "on", "--announce", "1"),
    )
    try:
        gateway.wait_ready()

        def guarded() -> Any:
            state = http("GET", f"{gateway.api}/status")[1]["guards"]
            installed = http("GET", f"{db}/{door.DOOR_ID}")[1]
            erlang = door.engine_of(installed) == "erlang"
            said = http("GET", f"{db}/{door.FACTS_ID}")[1] if erlang else installed
            with_routes = "activate" in json.dumps(said)
            return with_routes and state["installed"] and (state, installed)

        def refused() -> None:
            status, body = http(
                "POST", f"{users['client']}/{name}", {"type": "message", "operation": "explode"}
            )
            assert (status, body["reason"]) == (
                403,
                f'route "default" has no operation "explode" {HAS}',
            )

        state, installed = wait_until(guarded, 30, "the guard with the routes")
        assert door.engine_of(installed) == state["language"]
        refused()
        if state["language"] == "erlang":  # a database admin deletes what the guard is made of
            facts = http("GET", f"{db}/{door.FACTS_ID}")[1]
            deleted = http("DELETE", f"{db}/{door.FACTS_ID}?rev={facts['_rev']}")
            assert deleted[0] == 200, deleted
            wait_until(lambda: guarded() and True, 30, "the guard's facts written again")
            refused()
    finally:
        gateway.terminate()
        http("DELETE", db)
    return state, gateway.log.read_text()
