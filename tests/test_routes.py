"""
Routes: the routes file, the http kind against real sockets, and several routes side by side in
one gateway (a slow route's backlog never holds up the others).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import Site

from couchgw.connections import connection_pool
from couchgw.demo import DemoService
from couchgw.gateway import Gateway, Policy, waiting
from couchgw.tap import Options
from couchgw.targets.http import HttpTarget
from couchgw.targets.interfaces import Fault, Transient, Unreachable
from couchgw.targets.routes import RouteConfig, RoutesError, build, kinds, parse
from couchgw.timing import RateLimit
from tests.servers import free_port
from tests.test_gateway import GatewayTestCase
from tests.tls import certificate

DEFAULTS = RouteConfig("default", url="http://x/?wsdl", concurrency=7, timeout=30.0, retries=4)


def routes(**tables: Any) -> list[RouteConfig]:
    return parse({"routes": tables}, DEFAULTS, kinds())


def test_defaults_come_from_the_command_line() -> None:
    [soap, web] = routes(
        billing={"url": "http://b/?wsdl", "rate": 5, "operation": "activate"},
        hooks={"kind": "http", "url": "http://h/", "timeout": 2, "retries": 1, "inflight": 3},
    )
    assert (soap.kind, soap.concurrency, soap.timeout, soap.retries) == ("soap", 7, 30.0, 4)
    assert (soap.rate, soap.operation, soap.inflight) == (5.0, "activate", 14)
    assert (web.kind, web.concurrency, web.timeout, web.retries, web.inflight) == (
        "http",
        100,
        2.0,
        1,
        3,
    )


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, "no routes: write at least one [routes.NAME] table"),
        ({"route": {}}, "unknown top-level key(s) 'route'"),
        ({"routes": {"default": {"url": "http://x/"}}}, "route 'default' is --target's"),
        ({"routes": {"a": 3}}, "routes.a must be a table"),
        ({"routes": {"a": {"kind": "ftp"}}}, "route 'a': unknown kind 'ftp' (kinds: "),
        ({"routes": {"a": {"url": 5}}}, "route 'a': url must be a non-empty string"),
        ({"routes": {"a": {"url": "x", "timeout": 0}}}, "timeout must be a number at least 0.1"),
        ({"routes": {"a": {"concurrency": 2.5}}}, "concurrency must be a whole number"),
        ({"routes": {"a": {"retries": True}}}, "retries must be a whole number from 1 to 1000"),
        ({"routes": {"a": {"operation": ""}}}, "operation must be a non-empty string"),
    ],
)
def test_bad_routes(data: dict[str, Any], error: str) -> None:
    with pytest.raises(RoutesError) as caught:
        parse(data, DEFAULTS, kinds())
    assert error in str(caught.value)


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"kind": "soap"}, "route 'a': url is missing (the WSDL's URL)"),
        (
            {"url": "ftp://x/"},
            "route 'a': url must be the WSDL's URL: an http:// or https:// or file:// URL",
        ),
        ({"url": "http://x/", "colour": "red"}, "route 'a': unknown key(s) 'colour'"),
        ({"url": "http://x/", "headers": "x"}, "route 'a': headers must be a table"),
        (
            {"url": "http://x/", "headers": {"{urn:x": "1"}},
            "route 'a': headers: '{urn:x' is not a {namespace}name",
        ),
        (
            {"url": "http://x/", "wsse": {"username": "u"}},
            "route 'a': wsse needs password or password_env",
        ),
        (
            {"url": "http://x/", "wsse": {"password": "p"}},
            "route 'a': wsse.username must be a non-empty string",
        ),
        (
            {"url": "http://x/", "wsse": {"username": "u", "password_env": "COUCHGW_TEST_UNSET"}},
            "route 'a': wsse.password_env: the environment has no COUCHGW_TEST_UNSET",
        ),
        (
            {"url": "http://x/", "wsse": {"username": "u", "password": "p", "digest": "yes"}},
            "route 'a': wsse.digest must be true or false",
        ),
        ({"url": "http://x/", "client_key": "/k.pem"}, "route 'a': client_key needs client_cert"),
        (
            {"url": "http://x/", "client_cert": "/no/such.pem"},
            "route 'a': client_cert: cannot use /no/such.pem: No such file or directory",
        ),
        ({"kind": "http"}, "route 'a': url is missing (where to POST the messages)"),
        (
            {"kind": "http", "url": "mailto:x"},
            "route 'a': url must be where to POST the messages: an http:// or https:// URL",
        ),
    ],
)
def test_kinds_check_their_own_keys(table: dict[str, Any], error: str) -> None:
    known = kinds()
    with pytest.raises(RoutesError) as caught:
        build(parse({"routes": {"a": table}}, DEFAULTS, known), Clock(), MultiService(), known)
    assert str(caught.value).startswith(error)


def test_soap_keys_from_a_routes_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SOAP route's headers, WS-Security and client certificate, as a routes file gives them."""
    cert, key = certificate(tmp_path)
    monkeypatch.setenv("COUCHGW_TEST_WSSE", "from the environment")
    path = tmp_path / "routes.toml"
    path.write_text(
        '[routes.billing]\nurl = "https://billing.example/?wsdl"\n'
        f'client_cert = "{cert}"\nclient_key = "{key}"\n'
        '[routes.billing.headers]\nAuth = { api_key = "k1" }\n"{urn:t}Origin" = "gw"\n'
        '[routes.billing.wsse]\nusername = "gw"\npassword_env = "COUCHGW_TEST_WSSE"\n'
        "digest = true\n"
    )
    known = kinds()
    options = Options()
    options.parseOptions(["--couch", "http://127.0.0.1:1/db", "--routes", str(path)])
    [config] = [c for c in options["route-configs"] if c.name == "billing"]
    [target] = build([config], Clock(), MultiService(), known).values()
    settings = target._settings  # type: ignore[attr-defined]
    assert settings.headers == {"Auth": {"api_key": "k1"}, "{urn:t}Origin": "gw"}
    assert (settings.wsse.username, settings.wsse.digest) == ("gw", True)
    assert settings.wsse.password == "from the environment"
    assert "from the environment" not in repr(settings)
    assert target._context is not None  # type: ignore[attr-defined]


def test_a_bad_routes_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text('[routes.a]\nkind = "soap"\nurl = "http://x/?wsdl"\nrate = -1\n')
    with pytest.raises(SystemExit) as caught:
        Options().parseOptions(["--couch", "http://127.0.0.1:1/db", "--routes", str(path)])
    assert str(caught.value) == (
        f"twistd couchgw: --routes {path}: route 'a': rate must be a number at least 0.001, "
        "not -1 (see twistd couchgw --help)"
    )
    path.write_text("[routes.a\n")
    with pytest.raises(SystemExit, match=r"is not valid TOML: .*\(at line 1, column 10\)"):
        Options().parseOptions(["--couch", "http://127.0.0.1:1/db", "--routes", str(path)])


def test_max_inflight_fits_the_routes(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text('[routes.a]\nurl = "http://x/?wsdl"\nconcurrency = 60\n')
    options = Options()
    options.parseOptions(["--couch", "http://127.0.0.1:1/db", "--routes", str(path)])
    assert options["max-inflight"] == 20 + 120
    with pytest.raises(SystemExit, match="--max-inflight 50 is less than the routes' inflight"):
        Options().parseOptions(
            ["--couch", "http://127.0.0.1:1/db", "--routes", str(path), "--max-inflight", "50"]
        )


def test_rate_limit_spaces_calls() -> None:
    clock = Clock()
    limit = RateLimit(clock, 4)
    fired: list[float] = []
    for _ in range(3):
        limit.wait().addCallback(lambda _: fired.append(clock.seconds()))
    assert fired == [0]
    clock.pump([0.25, 0.25])
    assert fired == [0, 0.25, 0.5]
    clock.advance(10)
    limit.wait().addCallback(lambda _: fired.append(clock.seconds()))
    assert fired[-1] == 10.5  # no burst saved up while idle


class _Answers(Resource):
    """Answers each POST with the next of C{answers}: (status, body)."""

    isLeaf = True

    def __init__(self, answers: list[tuple[int, bytes]]) -> None:
        super().__init__()
        self.answers = answers
        self.requests: list[Any] = []

    def render_POST(self, request: Any) -> bytes:
        self.requests.append((request.getHeader(b"idempotency-key"), request.content.read()))
        code, body = self.answers.pop(0)
        request.setResponseCode(code)
        return body


class HttpKind(GatewayTestCase):
    def target(self, url: str, timeout: float = 10) -> HttpTarget:
        pool = connection_pool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        return HttpTarget(
            "web", url, reactor, Agent(reactor, pool=pool), concurrency=5, timeout=timeout
        )

    def serve(self, answers: list[tuple[int, bytes]]) -> tuple[str, _Answers]:
        resource = _Answers(answers)
        port: Any = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/", resource

    @inlineCallbacks
    def test_answers(self) -> Any:
        """The JSON answer is the result; each status becomes the error it means."""
        url, server = self.serve(
            [
                (200, b'{"ok": [1, 2]}'),
                (202, b""),
                (503, b'{"error": "overloaded"}'),
                (429, b"slow down"),
                (422, b'{"message": "no such network"}'),
                (200, b"<html>"),
            ]
        )
        target = self.target(url)
        yield target.load()
        self.assertEqual(target.state, "ready")
        prepared = target.prepare("activate", {"network": "n"})
        self.assertEqual((yield target.call(prepared, "m1")), {"ok": [1, 2]})
        self.assertEqual(
            server.requests[0],
            (b"m1", b'{"id": "m1", "operation": "activate", "args": {"network": "n"}}'),
        )
        self.assertIsNone((yield target.call(prepared, "m2")))
        for error, text in [
            (Transient, "the target answered HTTP 503: overloaded"),
            (Transient, "the target answered HTTP 429: slow down"),
            (Fault, "the target answered HTTP 422: no such network"),
            (RuntimeError, "the target answered HTTP 200 with something that is not JSON"),
        ]:
            failure = yield self.assertFailure(target.call(prepared, "m"), error)
            self.assertIn(text, str(failure))
        self.assertEqual(target.busy, 0)

    @inlineCallbacks
    def test_unreachable(self) -> Any:
        target = self.target(f"http://127.0.0.1:{free_port()}/")
        yield self.assertFailure(target.load(), Unreachable)
        self.assertEqual(target.state, "unavailable")
        self.assertIn("does not accept connections", target.error)
        yield self.assertFailure(target.call(target.prepare(None, []), "m"), Unreachable)

    @inlineCallbacks
    def test_timeout(self) -> Any:
        demo = DemoService(reactor, 0)
        demo.startService()
        self.addCleanup(demo.stopService)
        target = self.target(demo.json_url, timeout=0.2)
        yield target.load()
        failure = yield self.assertFailure(
            target.call(target.prepare("wait", {"seconds": 30}), "m"), Transient
        )
        self.assertEqual(str(failure), "no answer in time")


class SideBySide(GatewayTestCase):
    timeout = 120

    def test_slow_route_does_not_hold_up_the_others(self) -> Any:
        """
        A backlog on a slow SOAP route, larger than the gateway's own in-flight bound, waits
        (the route's bound is small); a fast SOAP route and an http route go on meanwhile, and
        the slow backlog drains in the end.
        """
        return self.slow_route_does_not_hold_up_the_others()

    def test_slow_route_with_waiting_messages_read_again(self) -> Any:
        """The same, keeping no waiting document whole: each is read again when its turn comes."""
        self.patch(waiting, "KEPT_BYTES", 0)
        return self.slow_route_does_not_hold_up_the_others()

    @inlineCallbacks
    def test_a_waiting_message_changed_meanwhile(self) -> Any:
        """
        A message kept while its route is full, cancelled by its client meanwhile, is claimed
        on the revision kept: the claim fails, the message is read again, and it is cancelled.
        """
        wsdl, demo_log, _ = self.demo()  # 0.1 s per device
        gateway = yield self.routed(
            [RouteConfig("default", url=wsdl, concurrency=1, timeout=10, inflight=1)]
        )
        docs = [
            {"_id": f"w{i}", "type": "message", "operation": "activate", "args": [f"w{i}", 10]}
            for i in range(3)
        ]
        yield self.db.bulk_docs(docs)

        def kept() -> list[str]:
            return [w.id for w in gateway.backlog.room._all() if w.doc is not None]

        # one message is called; the other two wait for the route, kept whole (in the order
        # the feed brought them)
        yield self.wait_for(lambda: len(kept()) == 2, what="two messages kept, waiting")
        cancelled = kept()[-1]
        waiting = yield self.db.get(cancelled)
        yield self.db.put({**waiting, "cancel_requested": True})
        done = yield self.terminal(cancelled, timeout=30)
        self.assertEqual(done["status"], "cancelled")
        for doc in docs:
            if doc["_id"] != cancelled:
                done = yield self.terminal(doc["_id"], timeout=30)
                self.assertEqual(done["status"], "forwarded")
        self.assertNotIn(f"activated network={cancelled}\n", demo_log.read_text())

    @inlineCallbacks
    def routed(self, configs: list[RouteConfig], **options: Any) -> Any:
        """A gateway (started, ready) with these routes, each bounded by its C{inflight}."""
        parent = MultiService()
        targets = build(configs, reactor, parent, kinds())
        parent.startService()
        self.addCleanup(parent.stopService)
        gateway = Gateway(
            self.db,
            targets,
            reactor,
            policies={c.name: Policy(inflight=c.inflight) for c in configs},
            heartbeat=1.0,
            sweep_interval=3600,
            **options,
        )
        gateway.startService()
        self.addCleanup(lambda: gateway.stopService() if gateway.running else None)
        yield self.ready(gateway)
        return gateway

    @inlineCallbacks
    def slow_route_does_not_hold_up_the_others(self) -> Any:
        wsdl, _, _ = self.demo()  # 0.1 s per device
        configs = [
            RouteConfig("default", url=wsdl, concurrency=2, timeout=10, inflight=3),
            RouteConfig("fast", url=wsdl, concurrency=2, timeout=10, inflight=4),
            RouteConfig("web", kind="http", url=wsdl.replace("/?wsdl", "/json"), timeout=10),
        ]
        gateway = yield self.routed(configs, max_inflight=20)
        slow = [
            {"_id": f"slow{i:02}", "type": "message", "operation": "activate", "args": ["n", 5]}
            for i in range(60)
        ]
        yield self.db.bulk_docs(slow)
        yield self.wait_for(
            lambda: gateway.dispatch.inflight["default"] >= 3, what="the slow route busy"
        )
        fast = [
            {"_id": f"fast{i}", "type": "message", "target": "fast", "operation": "ping"}
            for i in range(10)
        ] + [
            {
                "_id": f"web{i}",
                "type": "message",
                "target": "web",
                "operation": "ping",
                "text": "hi",
            }
            for i in range(10)
        ]
        yield self.db.bulk_docs(fast)
        for doc in fast:
            done = yield self.terminal(doc["_id"])
            self.assertEqual(done["status"], "forwarded")
        self.assertEqual(done["result"], "hi")
        # held in the gateway, the slow backlog would have kept the feed paused until 41 of
        # its calls (0.5 s each, two at a time) had ended
        found = yield self.db.all_docs([d["_id"] for d in slow], include_docs=True)
        finished = [r["id"] for r in found["rows"] if r["doc"].get("status") == "forwarded"]
        self.assertLessEqual(len(finished), 20, "the fast routes waited for the slow one")
        for doc in slow:  # the sweep (asked for as the route drains) brings the rest
            done = yield self.terminal(doc["_id"], timeout=60)
            self.assertEqual((done["status"], done["result"]["activated"]), ("forwarded", 5))
