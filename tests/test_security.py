"""
Security: CouchDB with authentication (the gateway a user with the couchgw role, clients users
without it), validation at the door, HTTP auth on the API, TLS, and no secret in any log.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.server import Site

from couchgw.connections import agent, connection_pool
from couchgw.targets.interfaces import Transient
from couchgw.targets.routes import RouteConfig, build, kinds
from couchgw.targets.soap import SoapTarget
from couchgw.web.api import API
from tests.servers import (
    COUCH_ENV,
    demo_wsdl,
    free_port,
    http,
    start_demo,
    start_pouchdb,
    stop,
    wait_until,
)
from tests.test_e2e import Twistd, wait_terminal
from tests.test_soap import SyncRunner, result
from tests.tls import certificate

PASSWORDS = {"admin": "admin-Pw-1", "gw": "gateway-Pw-2", "alice": "alice-Pw-3", "bob": "bob-Pw-4"}
SECRET = "callback-Secret-5"


def _put(url: str, body: Any) -> Any:
    status, answer = http("PUT", url, body)
    assert status in (200, 201), (url, status, answer)
    return answer


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """
    A CouchDB server with authentication and a database set up as the README says: answers
    the server's URL (no credentials) and the database's name.
    """
    external = os.environ.get(COUCH_ENV)
    process = None
    if external:
        admin = external.rstrip("/")
        base = admin.split("@", 1)[-1] if "@" in admin else admin
        scheme = admin.split("://", 1)[0]
        base = f"{scheme}://{base.split('://')[-1]}"
    else:
        base, process = start_pouchdb()
        _put(f"{base}/_config/admins/admin", PASSWORDS["admin"])
        admin = base.replace("://", f"://admin:{PASSWORDS['admin']}@")
    suffix = os.urandom(4).hex()
    roles = {"gw": ["couchgw"], "alice": ["client"], "bob": []}
    for user, user_roles in roles.items():
        name = f"{user}-{suffix}"
        _put(
            f"{admin}/_users/org.couchdb.user:{name}",
            {"name": name, "password": PASSWORDS[user], "roles": user_roles, "type": "user"},
        )
    db = f"secured-{suffix}"
    _put(f"{admin}/{db}", None)
    _put(
        f"{admin}/{db}/_security",
        {
            "admins": {"names": [], "roles": ["couchgw"]},
            "members": {"names": [], "roles": ["couchgw", "client"]},
        },
    )
    yield base, db
    if process is not None:
        stop(process)


def _as(base: str, user: str, suffix_of: str) -> str:
    suffix = suffix_of.rsplit("-", 1)[-1]
    return base.replace("://", f"://{user}-{suffix}:{PASSWORDS[user]}@")


class _Hooks(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, Any], bytes, str | None]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((json.loads(body), body, self.headers.get("X-Couchgw-Signature")))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_locked_down(tmp_path: Path, secured: tuple[str, str]) -> None:
    base, db = secured
    hooks = ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    wsdl, demo = start_demo(tmp_path / "demo.log")
    gateway = Twistd(
        tmp_path,
        "--couch",
        f"{_as(base, 'gw', db)}/{db}",
        "--target",
        wsdl,
        "--http-auth",
        "--callback-allow",
        f"127.0.0.1:{hooks.server_port}",
        env={"COUCHGW_CALLBACK_SECRET": SECRET},
    )
    try:
        gateway.wait_ready()
        alice = f"{_as(base, 'alice', db)}/{db}"

        def door() -> bool:  # the routes' validation is published once the WSDL loaded
            return http("GET", f"{alice}/_design/couchgw-routes")[0] == 200

        wait_until(door, 30, "the routes' validation")

        # CouchDB itself refuses what does not fit the WSDL, and a client's status
        status, body = http("POST", alice, {"type": "message", "operation": "explode"})
        assert (status, body["error"]) == (403, "forbidden")
        assert body["reason"] == (
            'route "default" has no operation "explode" (it has: activate, configure, ping, refuse)'
        )
        status, body = http(
            "POST", alice, {"type": "message", "operation": "activate", "args": {"net": "n"}}
        )
        assert status == 403
        assert body["reason"].startswith('operation "activate" takes no argument "net"')
        status, body = http(
            "POST", alice, {"type": "message", "operation": "ping", "status": "forwarded"}
        )
        assert status == 403
        assert body["reason"].startswith("only couchgw writes status")
        # and a priority, time or trace context couchgw does not take
        for field, value, reason in [
            ("priority", "urgent", 'priority must be "high", "medium", "low" or a whole number'),
            ("not_before", "tomorrow", "not_before must be an ISO 8601 time with its zone"),
            ("expires_at", "2026-12-02", "expires_at must be an ISO 8601 time with its zone"),
            ("traceparent", "00-abc", "traceparent must be a W3C trace context"),
        ]:
            status, body = http(
                "POST", alice, {"type": "message", "operation": "ping", field: value}
            )
            assert (status, body["reason"][: len(reason)]) == (403, reason), field

        # a good message goes through: the gateway's writes succeed, and so does the callback
        hook = f"http://127.0.0.1:{hooks.server_port}/done"
        doc = {
            "_id": "ok",
            "type": "message",
            "operation": "ping",
            "text": "hi",
            "callback_url": hook,
        }
        assert http("PUT", f"{alice}/ok", doc)[0] == 201
        done = wait_terminal(f"{_as(base, 'alice', db)}/{db}", ["ok"], 30)["ok"]
        assert (done["status"], done["result"]) == ("forwarded", "hi")
        wait_until(lambda: _Hooks.received, 30, "the callback")
        sent, raw, signature = _Hooks.received[0]
        assert sent["status"] == "forwarded"
        import hashlib
        import hmac

        assert signature == "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()

        # a client may set cancel_requested, not touch what couchgw wrote (read once couchgw
        # recorded the callback: an edit of an older revision is refused too)
        current = wait_until(
            lambda: (
                (doc := http("GET", f"{alice}/ok")[1]).get("callback", {}).get("status")
                == "delivered"
                and doc
            ),
            30,
            "the callback recorded",
        )
        assert http("PUT", f"{alice}/ok", {**current, "status": "failed"})[0] == 403
        assert http("PUT", f"{alice}/ok", {**current, "cancel_requested": True})[0] == 201

        # the HTTP API: open probes, everything else with CouchDB's users
        api = gateway.api
        assert http("GET", f"{api}/health")[0] == 200
        assert http("GET", f"{api}/ready")[0] == 200
        assert http("GET", f"{api}/status")[0] == 401
        assert http("GET", f"{api}/events")[0] == 401
        assert http("GET", f"{api}/messages/ok/events")[0] == 401
        wrong = api.replace("://", f"://alice-{db.rsplit('-', 1)[-1]}:wrong@")
        assert http("GET", f"{wrong}/status")[0] == 401
        assert http("GET", f"{api.replace('://', _userinfo(base, 'bob', db))}/status")[0] == 403
        alice_api = api.replace("://", _userinfo(base, "alice", db))
        status, state = http("GET", f"{alice_api}/status")
        assert status == 200
        assert PASSWORDS["gw"] not in json.dumps(state)
        assert state["database"].endswith(f"/{db}")
        status, events = http("GET", f"{alice_api}/messages/ok/events")
        assert status == 200 and '"status": "forwarded"' in events
    finally:
        gateway.terminate()
        stop(demo)
        hooks.shutdown()
    logs = "\n".join(path.read_text() for path in tmp_path.rglob("*.log"))
    assert "forwarded" in logs
    for secret in [*PASSWORDS.values(), SECRET]:
        assert secret not in logs


def _server_admin(base: str) -> str:
    """The server's URL with an admin's credentials (the external server's own, or ours)."""
    external = os.environ.get(COUCH_ENV)
    if external:
        return external.rstrip("/")
    return base.replace("://", f"://admin:{PASSWORDS['admin']}@")


def test_tenants_apart(tmp_path: Path, secured: tuple[str, str]) -> None:
    """
    One gateway serves a database per tenant (--databases, --http-auth): each tenant's user
    reads its own database's messages through the API and is refused another's; the gateway's
    own routes answer any user and name no database but to the server's admins.
    """
    base, db = secured
    suffix = db.rsplit("-", 1)[-1]
    admin = _server_admin(base)
    tenants = {"alice": f"tenant-{suffix}-a", "bob": f"tenant-{suffix}-b"}
    for user, name in tenants.items():
        _put(f"{admin}/{name}", None)
        _put(
            f"{admin}/{name}/_security",
            {"admins": {"names": [], "roles": []}, "members": {"names": [f"{user}-{suffix}"]}},
        )
        assert http("PUT", f"{admin}/{name}/m", {"type": "message", "operation": "ping"})[0] == 201
    wsdl, demo = start_demo(tmp_path / "demo.log")
    gateway = Twistd(
        tmp_path,
        "--couch",
        admin,
        "--databases",
        f"tenant-{suffix}-*",
        "--target",
        wsdl,
        "--http-auth",
    )
    try:
        gateway.wait_ready()
        for name in tenants.values():
            assert wait_terminal(f"{admin}/{name}", ["m"], 60)["m"]["status"] == "forwarded"
        api = gateway.api
        alice = api.replace("://", _userinfo(base, "alice", db))
        bob = api.replace("://", _userinfo(base, "bob", db))
        assert http("GET", f"{api}/db/{tenants['alice']}/messages/m/events")[0] == 401
        status, events = http("GET", f"{alice}/db/{tenants['alice']}/messages/m/events")
        assert status == 200 and '"status": "forwarded"' in events
        assert http("GET", f"{alice}/db/{tenants['bob']}/messages/m/events")[0] == 403
        assert http("GET", f"{bob}/db/{tenants['alice']}/events")[0] == 403
        status, events = http("GET", f"{bob}/db/{tenants['bob']}/messages/m/events")
        assert status == 200 and '"status": "forwarded"' in events
        # the gateway's own routes: totals for any user, no database named to a tenant
        for user in (alice, bob):
            status, state = http("GET", f"{user}/status")
            assert status == 200 and state["databases"]["served"] == 2, state
            assert all(name not in json.dumps(state) for name in tenants.values())
            status, metrics = http("GET", f"{user}/metrics")
            assert status == 200 and "couchgw_databases" in metrics
            assert all(name not in metrics for name in tenants.values())
        admin_api = api.replace("://", f"://{admin.split('://', 1)[1].split('@', 1)[0]}@")
        assert http("GET", f"{admin_api}/status")[0] == 200
    finally:
        gateway.terminate()
        stop(demo)
        for name in tenants.values():
            http("DELETE", f"{admin}/{name}")
    logs = "\n".join(path.read_text() for path in tmp_path.rglob("*.log"))
    for secret in PASSWORDS.values():
        assert secret not in logs


ADMIN_ONLY = {"admins": {"names": [], "roles": ["couchgw"]}, "members": {"roles": ["_admin"]}}
WITH_CLIENTS = {
    "admins": {"names": [], "roles": ["couchgw"]},
    "members": {"names": [], "roles": ["couchgw", "client"]},
}


def _guards(gateway: Twistd) -> dict[str, Any]:
    status, state = http("GET", f"{gateway.api}/status")
    assert status == 200, state
    guards: dict[str, Any] = state["guards"]
    return guards


def test_guards_follow_the_security_object(tmp_path: Path, secured: tuple[str, str]) -> None:
    """
    --guards auto: no validate function while only admins may write (it would bind no one);
    installed within --announce once clients are members, and gone again when they are not.
    """
    base, db = secured
    admin = f"{_as(base, 'gw', db)}/{db}"  # the gateway's user: an admin of this database
    _put(f"{admin}/_security", ADMIN_ONLY)
    wsdl, demo = start_demo(tmp_path / "demo.log")
    gateway = Twistd(tmp_path, "--couch", admin, "--target", wsdl, "--announce", "0.2")
    alice = f"{_as(base, 'alice', db)}/{db}"
    try:
        gateway.wait_ready()
        wait_until(lambda: _guards(gateway)["installed"] is False, 30, "the guards decided")
        assert _guards(gateway)["why"] == "only admins may write to the database"
        assert http("GET", f"{admin}/_design/couchgw-routes")[0] == 404
        assert "validate_doc_update" not in http("GET", f"{admin}/_design/couchgw")[1]
        # CouchDB itself keeps the client out
        status, _ = http("POST", alice, {"type": "message", "operation": "ping", "status": "x"})
        assert status in (401, 403)

        _put(f"{admin}/_security", WITH_CLIENTS)
        wait_until(lambda: _guards(gateway)["installed"], 30, "the guards installed")
        assert "role client" in _guards(gateway)["why"]
        status, body = http(
            "POST", alice, {"type": "message", "operation": "ping", "status": "forwarded"}
        )
        assert (status, body["reason"]) == (
            403,
            "only couchgw writes status (a client may create messages and set cancel_requested)",
        )
        status, body = http("POST", alice, {"type": "message", "operation": "explode"})
        assert status == 403 and body["reason"].startswith('route "default" has no operation')
        assert http("POST", alice, {"type": "message", "operation": "ping", "text": "hi"})[0] == 201

        _put(f"{admin}/_security", ADMIN_ONLY)
        wait_until(
            lambda: http("GET", f"{admin}/_design/couchgw-routes")[0] == 404,
            30,
            "the guards removed",
        )
        assert _guards(gateway)["installed"] is False
    finally:
        gateway.terminate()
        stop(demo)
    logs = gateway.log.read_text()
    assert "guards on: users who are not admins may write to the database (role client)" in logs
    assert PASSWORDS["gw"] not in logs


def test_guards_forced(tmp_path: Path, secured: tuple[str, str]) -> None:
    """--guards off installs none where clients write; --guards on installs it where none do."""
    base, db = secured
    admin = f"{_as(base, 'gw', db)}/{db}"
    alice = f"{_as(base, 'alice', db)}/{db}"
    wsdl, demo = start_demo(tmp_path / "demo.log")
    try:
        (tmp_path / "off").mkdir()
        off = Twistd(tmp_path / "off", "--couch", admin, "--target", wsdl, "--guards", "off")
        try:
            off.wait_ready()
            assert _guards(off)["why"] == "--guards off" and _guards(off)["language"] is None
            assert http("GET", f"{admin}/_design/couchgw-routes")[0] == 404
            # unguarded, as asked: CouchDB takes a client's status
            doc = {"type": "message", "operation": "ping", "status": "forwarded"}
            assert http("POST", alice, doc)[0] == 201
        finally:
            off.terminate()

        _put(f"{admin}/_security", ADMIN_ONLY)
        (tmp_path / "on").mkdir()
        on = Twistd(tmp_path / "on", "--couch", admin, "--target", wsdl, "--guards", "on")
        try:
            on.wait_ready()
            assert (_guards(on)["why"], _guards(on)["language"]) == ("--guards on", "javascript")
            guard = http("GET", f"{admin}/_design/couchgw-routes")[1]
            assert "only couchgw writes" in guard["validate_doc_update"]
        finally:
            on.terminate()
    finally:
        stop(demo)


def _userinfo(base: str, user: str, db: str) -> str:
    return f"://{user}-{db.rsplit('-', 1)[-1]}:{PASSWORDS[user]}@"


class _TLSProxy(BaseHTTPRequestHandler):
    """Forwards to the demo service; its WSDL names the proxy as the service's address."""

    upstream = ""
    here = ""

    def _forward(self, data: bytes | None) -> None:
        request = urllib.request.Request(self.upstream + self.path, data=data, method=self.command)
        for name in ("Content-Type", "SOAPAction"):
            if self.headers.get(name):
                request.add_header(name, self.headers[name])
        with urllib.request.urlopen(request) as answer:
            body = answer.read().replace(self.upstream.encode() + b"/", self.here.encode() + b"/")
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.headers["Content-Type"])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._forward(None)

    def do_POST(self) -> None:
        self._forward(self.rfile.read(int(self.headers["Content-Length"])))

    def log_message(self, *args: Any) -> None:
        pass


def test_soap_over_https_with_a_private_ca(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path)
    upstream = demo_wsdl().rsplit("/?wsdl", 1)[0]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TLSProxy)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    here = f"https://localhost:{server.server_port}"
    _TLSProxy.upstream, _TLSProxy.here = upstream, here
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        trusted = SoapTarget("tls", f"{here}/?wsdl", SyncRunner(), timeout=5, ca=str(cert))
        result(trusted.load())
        assert result(trusted.call(trusted.prepare("ping", ["over tls"]), "m")) == "over tls"
        untrusted = SoapTarget("tls", f"{here}/?wsdl", SyncRunner(), timeout=5)
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
            result(untrusted.load())
    finally:
        server.shutdown()


class TLS(TestCase):
    timeout = 30

    def setUp(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="couchgw-tls-"))
        self.addCleanup(shutil.rmtree, folder, True)
        self.cert, self.key = certificate(folder)

    def serve(self, resource: Any) -> Any:
        endpoint = serverFromString(
            reactor, f"ssl:0:privateKey={self.key}:certKey={self.cert}:interface=127.0.0.1"
        )
        d = endpoint.listen(Site(resource))

        def listening(port: Any) -> int:
            self.addCleanup(port.stopListening)
            return int(port.getHost().port)

        return d.addCallback(listening)

    def client(self, ca: str | None) -> Any:
        from treq.client import HTTPClient

        pool = connection_pool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        return HTTPClient(agent(reactor, pool, ca))

    @inlineCallbacks
    def test_api_over_an_ssl_endpoint(self) -> Any:
        """--http ssl:...: the API over TLS; a client that does not trust the CA is refused."""
        port = yield self.serve(API(None, None).app.resource())  # type: ignore[arg-type]
        response = yield self.client(str(self.cert)).get(f"https://localhost:{port}/health")
        self.assertEqual(response.code, 200)
        self.assertEqual((yield response.json()), {"status": "ok"})
        yield self.assertFailure(
            self.client(None).get(f"https://localhost:{port}/health"), ResponseNeverReceived
        )

    @inlineCallbacks
    def test_http_route_with_a_private_ca(self) -> Any:
        from tests.test_routes import _Answers

        port = yield self.serve(_Answers([(200, b'{"ok": true}')]))
        url = f"https://localhost:{port}/"
        parent = MultiService()
        configs = [
            RouteConfig("trusted", kind="http", url=url, ca=str(self.cert), timeout=5),
            RouteConfig("untrusted", kind="http", url=url, timeout=5),
        ]
        targets = build(configs, reactor, parent, kinds())
        parent.startService()
        self.addCleanup(parent.stopService)
        trusted, untrusted = targets["trusted"], targets["untrusted"]
        self.assertEqual((yield trusted.call(trusted.prepare("x", {}), "m")), {"ok": True})
        failure = yield self.assertFailure(
            untrusted.call(untrusted.prepare("x", {}), "m"), Transient
        )
        self.assertIn("certificate verify failed", str(failure))


def test_bad_ca_is_one_line(tmp_path: Path) -> None:
    from couchgw.tap import Options

    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here\n")
    with pytest.raises(SystemExit) as caught:
        Options().parseOptions(
            ["--couch", f"http://127.0.0.1:{free_port()}/db", "--ca", str(empty)]
        )
    assert str(caught.value) == (
        f"twistd couchgw: --ca '{empty}' cannot be used: {empty} holds no PEM certificate "
        "(see twistd couchgw --help)"
    )
