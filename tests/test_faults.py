"""
Faults reproduced against real servers: CouchDB (PouchDB Server processes of their own, killed and
started again) and SOAP targets that go away, answer slowly, fail or drop connections.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
from collections import Counter
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IListeningPort
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from couchgw.connections import connection_pool
from couchgw.couch.client import Database
from couchgw.gateway import Gateway, Policy
from couchgw.message import parse_time
from couchgw.tap import Options
from couchgw.targets.soap import SoapTarget
from couchgw.targets.threads import ThreadPoolService
from couchgw.timing import Backoff, iso
from tests.servers import (
    COUCH_ENV,
    demo_wsdl,
    free_port,
    http,
    start_pouchdb,
    stop,
)
from tests.test_gateway import GatewayTestCase

QUICK_RETRIES = Backoff(base=0.1, cap=0.2, floor=0.05)


def kill(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def activate(doc_id: str, count: int = 1) -> dict[str, Any]:
    return {
        "_id": doc_id,
        "type": "message",
        "operation": "activate",
        "args": {"network": doc_id, "count": count},
    }


@pytest.mark.skipif(
    bool(os.environ.get(COUCH_ENV)), reason="kills, starts or reconfigures PouchDB Server"
)
class CouchFaults(GatewayTestCase):
    """
    Each test runs a PouchDB Server of its own, on a port of its own: it stops, starts or
    changes the admins of the server itself, which a shared external server cannot be put to.
    """

    timeout = 120

    def use_couch(self, port: int, name: str = "faults") -> None:
        pool = connection_pool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        self.db = Database(f"http://127.0.0.1:{port}/{name}", Agent(reactor, pool=pool))

    def couch(self, port: int, folder: str | None = None, wait: bool = False) -> Any:
        _, process = start_pouchdb(port, folder, wait=wait)
        self.addCleanup(stop, process)
        return process

    @inlineCallbacks
    def test_down_at_start(self) -> Any:
        """couchgw keeps trying, says why in /ready's problems, and works once CouchDB is up."""
        port = free_port()
        self.use_couch(port)
        gateway = self.gateway()
        yield self.wait_for(
            lambda: any("refused" in p for p in gateway.problems()),
            what="the problem to be reported",
        )
        self.assertIn(f"CouchDB at http://127.0.0.1:{port}/faults", gateway.problems()[0])
        self.couch(port)
        yield self.ready(gateway)
        yield self.db.put({"_id": "m", "type": "message", "operation": "ping", "text": "up"})
        doc = yield self.terminal("m")
        self.assertEqual((doc["status"], doc["result"]), ("forwarded", "up"))

    @inlineCallbacks
    def test_restarted_mid_run(self) -> Any:
        """Killed while calls run: their outcomes are written once it is back, none is called
        twice, and the feed resumes."""
        port, folder = free_port(), tempfile.mkdtemp(prefix="couchgw-pouchdb-")
        process = self.couch(port, folder, wait=True)
        self.use_couch(port)
        wsdl, log, _ = self.demo()
        gateway = self.gateway(wsdl)
        yield self.ready(gateway)
        yield self.db.bulk_docs([activate(f"r{i}", 10) for i in range(4)])
        yield self.wait_for(lambda: len(gateway.claims.held) == 4, what="four calls in flight")
        kill(process)
        yield self.wait_for(
            lambda: gateway.intake.feed is not None and gateway.intake.feed.state != "connected",
            what="the feed to notice",
        )
        yield self.wait_for(
            lambda: sum(t.busy for t in gateway.targets.values()) == 0, what="the calls to end"
        )
        self.couch(port, folder)
        for i in range(4):
            doc = yield self.terminal(f"r{i}")
            self.assertEqual((doc["status"], doc["attempts"]), ("forwarded", 1))
        yield self.db.put(activate("after", 1))
        doc = yield self.terminal("after")
        self.assertEqual(doc["status"], "forwarded")
        activated = [line for line in log.read_text().splitlines() if "activated network=" in line]
        self.assertEqual(len(activated), 5)

    @inlineCallbacks
    def test_credentials_refused(self) -> Any:
        """At start: a one-line error.  Later: logged and retried until they work again."""
        port = free_port()
        self.couch(port, wait=True)
        root = f"http://127.0.0.1:{port}"
        status, _ = http("PUT", f"{root}/_config/admins/admin", "secret")
        self.assertEqual(status, 200)

        with self.assertRaises(SystemExit) as raised:
            Options().parseOptions(["--couch", f"http://admin:wrong@127.0.0.1:{port}/db"])
        text = str(raised.exception)
        self.assertEqual(text.count("\n"), 0)
        self.assertIn(f"CouchDB refused access to {root}/db", text)
        self.assertIn("401", text)
        self.assertNotIn("wrong", text)

        self.use_couch(port)
        self.db = Database(f"http://admin:secret@127.0.0.1:{port}/faults", self.db._agent)
        gateway = self.gateway()
        yield self.ready(gateway)
        status, _ = http(
            "PUT", f"http://admin:secret@127.0.0.1:{port}/_config/admins/admin", "other"
        )
        self.assertEqual(status, 200)
        status, _ = http(
            "PUT",
            f"http://admin:other@127.0.0.1:{port}/faults/m",
            {"type": "message", "operation": "ping", "text": "later"},
        )
        self.assertEqual(status, 201)
        yield self.wait_for(
            lambda: any("401" in p for p in gateway.problems()),
            what="the refusal to be reported",
        )
        status, _ = http(
            "PUT", f"http://admin:other@127.0.0.1:{port}/_config/admins/admin", "secret"
        )
        self.assertEqual(status, 200)
        doc = yield self.terminal("m")
        self.assertEqual((doc["status"], doc["result"]), ("forwarded", "later"))


class DatabaseFaults(GatewayTestCase):
    """On the test server (PouchDB Server, or the CouchDB named by $COUCHGW_TEST_COUCH)."""

    timeout = 120

    @inlineCallbacks
    def test_database_deleted(self) -> Any:
        """The database is created again and followed from its start."""
        gateway = self.gateway()
        yield self.ready(gateway)
        yield self.db.put({"_id": "before", "type": "message", "operation": "ping"})
        yield self.terminal("before")
        status, _ = http("DELETE", self.db_url)
        self.assertEqual(status, 200)
        yield self.wait_for(
            lambda: http("GET", self.db_url)[0] == 200, what="the database to be created again"
        )
        yield self.ready(gateway)
        yield self.db.put({"_id": "after", "type": "message", "operation": "ping", "text": "x"})
        doc = yield self.terminal("after")
        self.assertEqual((doc["status"], doc["result"]), ("forwarded", "x"))


class _Broken(Resource):
    """A SOAP target that serves a real WSDL, then answers calls with 503 or drops them."""

    isLeaf = True

    def __init__(self, wsdl: bytes, mode: str) -> None:
        super().__init__()
        self.wsdl, self.mode, self.calls = wsdl, mode, 0

    def render_GET(self, request: Request) -> bytes:
        return self.wsdl

    def render_POST(self, request: Request) -> Any:
        self.calls += 1
        if self.mode == "drop":
            request.transport.abortConnection()  # type: ignore[attr-defined]
            return NOT_DONE_YET
        request.setResponseCode(503)
        request.setHeader(b"connection", b"close")  # leave no connection open after the test
        return b"overloaded"


class TargetFaults(GatewayTestCase):
    timeout = 120

    def broken(self, mode: str) -> tuple[str, _Broken]:
        port: IListeningPort
        resource = _Broken(b"", mode)
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        here = f"http://127.0.0.1:{port.getHost().port}/"  # type: ignore[attr-defined]
        _, text = http("GET", demo_wsdl())
        location = text.split('location="', 1)[1].split('"', 1)[0]
        resource.wsdl = text.replace(location, here).encode()
        return here + "?wsdl", resource

    @inlineCallbacks
    def test_wsdl_unreachable_at_start(self) -> Any:
        """The route is not ready; its messages wait (not rejected) and go once it is."""
        port = free_port()
        gateway = self.gateway(f"http://127.0.0.1:{port}/?wsdl")
        yield self.db.create()
        yield self.db.put({"_id": "wait", "type": "message", "operation": "ping"})
        yield self.wait_for(
            lambda: any("route default unavailable" in p for p in gateway.problems()),
            what="the route to be reported unavailable",
        )
        yield gateway.intake.sweep()
        doc = yield self.db.get("wait")
        self.assertNotIn("status", doc)
        self.demo(port=port)
        doc = yield self.terminal("wait")
        self.assertEqual((doc["status"], doc["attempts"]), ("forwarded", 1))

    @inlineCallbacks
    def test_down_for_a_while(self) -> Any:
        """Every message is forwarded once the target is back; the route waits meanwhile."""
        port = free_port()
        wsdl, log, process = self.demo(port=port)
        gateway = self.gateway(wsdl)
        yield self.ready(gateway)
        yield self.db.bulk_docs([activate(f"d{i}", 5) for i in range(4)])
        yield self.wait_for(lambda: len(gateway.claims.held) == 4, what="four calls in flight")
        kill(process)
        yield self.db.bulk_docs([activate(f"w{i}", 1) for i in range(6)])
        yield self.wait_for(
            lambda: any("route default out:" in p for p in gateway.problems()),
            what="the route to be reported out",
        )
        yield self.wait_for(  # a claim being written as the route went out is given back too
            lambda: not gateway.claims.held and not any(gateway.dispatch.inflight.values()),
            what="the calls in flight to end",
        )
        yield gateway.intake.sweep()
        docs = yield self.db.all_docs([f"w{i}" for i in range(6)], include_docs=True)
        for row in docs["rows"]:  # while the route is out, no message uses an attempt
            self.assertIn(row["doc"].get("status"), (None, "retrying", "dispatching"), row)
            if row["doc"].get("status") != "dispatching":  # (a probe)
                self.assertFalse(row["doc"].get("attempts"), row)
        self.demo(port=port, log=log)
        for doc_id in [f"d{i}" for i in range(4)] + [f"w{i}" for i in range(6)]:
            doc = yield self.terminal(doc_id)
            self.assertEqual(doc["status"], "forwarded", doc)
            self.assertLessEqual(doc["attempts"], 2)
        text = log.read_text()
        for i in range(6):
            self.assertEqual(text.count(f"activated network=w{i}\n"), 1)

    @inlineCallbacks
    def test_slow_target_times_out(self) -> Any:
        """
        A call that never answers in time is retried; alone, it cannot be told from an outage
        of its route, which costs no attempts: the route's C{retry_for} ends it.
        """
        target = SoapTarget("default", demo_wsdl(), self.threads, timeout=0.3)
        gateway = Gateway(
            self.db,
            {"default": target},
            reactor,
            policies={"default": Policy(retry_for=2.0, backoff_max=0.2)},
            heartbeat=1.0,
            sweep_interval=1.0,
            retries=2,
            retry_backoff=QUICK_RETRIES,
        )
        gateway.startService()
        self.addCleanup(gateway.stopService)
        yield self.ready(gateway)
        yield self.db.put(activate("slow", 10))
        doc = yield self.terminal("slow")
        self.assertEqual(doc["status"], "failed")
        self.assertEqual(doc["error"]["kind"], "transient")
        self.assertIn("timed out", doc["error"]["message"])

    @inlineCallbacks
    def test_http_errors_and_dropped_connections_are_retried(self) -> Any:
        """
        A target that answers 503, or drops every call, is out: its message is tried again
        (the route probed) until the route's C{retry_for} is up, then fails with the cause.
        """
        for mode, expected in (("503", "HTTP 503"), ("drop", "")):
            url, resource = self.broken(mode)
            gateway = self.gateway(
                url,
                retries=3,
                retry_backoff=QUICK_RETRIES,
                policies={"default": Policy(retry_for=2.0, backoff_max=0.2)},
            )
            yield self.ready(gateway)
            yield self.db.put({"_id": mode, "type": "message", "operation": "ping"})
            doc = yield self.terminal(mode)
            self.assertEqual(doc["status"], "failed", doc)
            self.assertEqual(doc["error"]["kind"], "transient")
            self.assertIn(expected, doc["error"]["message"])
            self.assertGreaterEqual(resource.calls, 3)
            yield gateway.stopService()


class Leases(GatewayTestCase):
    timeout = 60

    @inlineCallbacks
    def test_renewed_while_the_call_runs(self) -> Any:
        """A call longer than the lease keeps its claim: no other gateway takes it over."""
        first = self.gateway(gateway="first", lease=1.0)
        second = self.gateway(gateway="second", lease=1.0, sweep_interval=0.2)
        yield self.ready(first)
        yield self.ready(second)
        yield self.db.put(activate("long", 25))
        seen = set()

        @inlineCallbacks
        def renewed() -> Any:
            doc = yield self.db.get("long")
            if doc.get("status") == "dispatching":
                seen.add(doc["claim"]["until"])
            return len(seen) >= 3

        yield self.wait_for(renewed, what="the lease to be renewed")
        doc = yield self.terminal("long")
        self.assertEqual((doc["status"], doc["attempts"]), ("forwarded", 1))
        self.assertEqual(
            first.handling.counts.get("forwarded", 0) + second.handling.counts.get("forwarded", 0),
            1,
        )

    @inlineCallbacks
    def test_claims_of_a_gateway_gone_silent_are_taken_over(self) -> Any:
        """
        A gateway stops announcing itself and renewing its claims while its calls hang (as a
        killed one, or one cut off): once its announcement expires (3 x --announce, 5 s by
        default) another gateway takes its claims over, long before their 600 s leases end,
        and calls those messages (and only those) again.
        """
        threads = ThreadPoolService(reactor, 4)
        threads.startService()
        self.addCleanup(threads.stopService)
        hung_wsdl, hung_log, hung = self.demo()  # stopped below: its calls never answer
        wsdl, log, _ = self.demo()
        doomed = Gateway(
            self.db,
            {"default": SoapTarget("default", hung_wsdl, threads, timeout=120)},
            reactor,
            announce=5.0,
            sweep_interval=1.0,
            grace=0.5,
        )
        doomed.startService()
        self.addCleanup(lambda: doomed.stopService() if doomed.running else None)
        other = self.gateway(wsdl, announce=5.0)
        for gateway in (doomed, other):
            yield self.ready(gateway, 60)
        os.kill(hung.pid, signal.SIGSTOP)
        ids = [f"silent{i:02d}" for i in range(20)]
        yield self.db.bulk_docs([activate(doc_id, 2) for doc_id in ids])
        yield self.wait_for(lambda: len(doomed.claims.held) >= 3, 30, "the doomed gateway's calls")
        held = set(doomed.claims.held)
        # it falls silent: no announcement, no lease renewed, no sweep
        assert doomed.members._loop is not None
        doomed.members._loop.stop()
        for claim in doomed.claims.held.values():
            claim.stop()
        doomed.intake.stop()
        silent = reactor.seconds()
        for doc_id in ids:
            doc = yield self.terminal(doc_id, 60)
            self.assertEqual(doc["status"], "forwarded", doc_id)
        took = reactor.seconds() - silent
        self.assertLess(took, 30)
        calls = Counter(re.findall(r"activated network=(silent\d+)", log.read_text()))
        self.assertEqual(sorted(calls), ids)
        self.assertEqual(max(calls.values()), 1)
        self.assertNotIn("activated", hung_log.read_text())
        again = yield self.db.all_docs(sorted(held), include_docs=True)
        self.assertEqual({row["doc"]["attempts"] for row in again["rows"]}, {2})
        kill(hung)  # the silent gateway's calls end; their claims were lost, nothing is written
        hung.wait()
        yield self.wait_for(lambda: not doomed.claims.held, 30, "its calls to end")
        yield doomed.stopService()

    @inlineCallbacks
    def test_expired_claim_is_taken_over(self) -> Any:
        yield self.db.create()
        now = reactor.seconds()
        yield self.db.put(
            {
                "_id": "orphan",
                "type": "message",
                "operation": "ping",
                "text": "again",
                "status": "dispatching",
                "attempts": 1,
                "claim": {"by": "a-gateway-that-died", "until": iso(now - 1)},
            }
        )
        self.gateway()
        doc = yield self.terminal("orphan")
        self.assertEqual((doc["status"], doc["attempts"]), ("forwarded", 2))

    @inlineCallbacks
    def test_stop_gives_back_calls_still_running(self) -> Any:
        """After --grace, a call still running is given back (due at once) and the next
        start finishes it; a call that ends within the grace period is written."""
        gateway = self.gateway(grace=1.0)
        yield self.ready(gateway)
        yield self.db.bulk_docs([activate("long", 40), activate("short", 5)])
        yield self.wait_for(lambda: len(gateway.claims.held) == 2, what="both calls in flight")
        stopped_at = reactor.seconds()
        yield gateway.stopService()
        short = yield self.db.get("short")
        self.assertEqual(short["status"], "forwarded")
        long = yield self.db.get("long")
        self.assertEqual((long["status"], long["error"]["kind"]), ("retrying", "interrupted"))
        self.assertLessEqual(parse_time(long["next_attempt_at"]), stopped_at + 2)
        self.assertNotIn("claim", long)
        self.gateway(gateway="next")
        doc = yield self.terminal("long")
        self.assertEqual((doc["status"], doc["attempts"]), ("forwarded", 2))

    @inlineCallbacks
    def test_stop_releases_claims_that_wait_for_a_slot(self) -> Any:
        """
        Messages are claimed before they wait for one of the route's slots.  At stop, those
        still waiting were never called: they are released as they were, not given back as
        interrupted, and the next start calls them once.
        """
        gateway = self.gateway(grace=0.5)
        yield self.ready(gateway)
        slots = gateway.dispatch.slots["default"].limit
        ids = [f"w{i}" for i in range(slots + 2)]
        yield self.db.bulk_docs([activate(doc_id, 40) for doc_id in ids])
        yield self.wait_for(
            lambda: len(gateway.claims.held) == len(ids), what="every message claimed"
        )
        yield gateway.stopService()
        found = yield self.db.all_docs(ids, include_docs=True)
        docs = [row["doc"] for row in found["rows"]]
        interrupted = [d for d in docs if (d.get("error") or {}).get("kind") == "interrupted"]
        released = [d for d in docs if d.get("status") is None]
        self.assertEqual((len(interrupted), len(released)), (slots, 2))
        for doc in released:
            self.assertEqual([doc.get(k) for k in ("claim", "attempts")], [None, None])
        self.gateway(gateway="next")
        for doc in released:
            done = yield self.terminal(doc["_id"])
            self.assertEqual((done["status"], done["attempts"]), ("forwarded", 1))


class Backpressure(GatewayTestCase):
    @inlineCallbacks
    def test_feed_paused_when_full(self) -> Any:
        gateway = self.gateway(max_inflight=3)
        yield self.ready(gateway)
        peak, paused = [0], [False]
        track = gateway.intake.track

        def tracked(doc_id: str, work: Any) -> Any:
            d = track(doc_id, work)
            peak[0] = max(peak[0], len(gateway.intake.active))
            paused[0] = paused[0] or bool(gateway.intake.feed and gateway.intake.feed.paused)
            return d

        gateway.intake.track = tracked  # type: ignore[method-assign]
        yield self.db.bulk_docs([activate(f"b{i:02d}", 2) for i in range(20)])
        for i in range(20):
            doc = yield self.terminal(f"b{i:02d}")
            self.assertEqual(doc["status"], "forwarded")
        self.assertEqual(peak[0], 3)
        self.assertTrue(paused[0])

        def followed() -> bool:  # (on CouchDB, once the backlog's turns have ended)
            feed = gateway.intake.feed
            return feed is not None and feed.once is None and not feed.paused

        yield self.wait_for(followed, what="the feed followed, not paused")
