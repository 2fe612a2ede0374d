"""
The gateway in this process against a real PouchDB Server (or $COUCHGW_TEST_COUCH) and the real
demo SOAP service, over sockets.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import Site

from couchgw import message
from couchgw.connections import connection_pool
from couchgw.couch import design
from couchgw.couch.client import Database
from couchgw.couch.errors import UNAVAILABLE, Conflict, NotFound
from couchgw.gateway import Gateway
from couchgw.gateway.checkpoint import CHECKPOINT_ID
from couchgw.targets.soap import SoapTarget
from couchgw.targets.threads import ThreadPoolService
from tests.servers import demo_wsdl, is_pouchdb, new_db_url, start_demo, stop


class GatewayTestCase(TestCase):
    timeout = 60
    #: Seconds the gateways' demo route waits for an answer.
    target_timeout = 10.0

    def setUp(self) -> None:
        pool = connection_pool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        #: The database's URL, with the credentials that CouchDB asks for.
        self.db_url = new_db_url()
        self.db = Database(self.db_url, Agent(reactor, pool=pool))
        self.threads = ThreadPoolService(reactor, 4)
        self.threads.startService()
        self.addCleanup(self.threads.stopService)
        self.gateways: list[Gateway] = []

    def gateway(
        self, wsdl: str | None = None, db: Database | None = None, **options: Any
    ) -> Gateway:
        target = SoapTarget(
            "default", wsdl or demo_wsdl(), self.threads, timeout=self.target_timeout
        )
        options.setdefault("heartbeat", 1.0)
        options.setdefault("sweep_interval", 1.0)
        options.setdefault("announce", 1.0)
        gateway = Gateway(db or self.db, {"default": target}, reactor, **options)
        gateway.startService()
        self.addCleanup(lambda: gateway.stopService() if gateway.running else None)
        return gateway

    def demo(self, port: int = 0, log: Path | None = None) -> tuple[str, Path, Any]:
        """
        A demo SOAP service of this test's own, logging its calls to C{log} (appended, so that
        a restart on the same port keeps one log); answers its WSDL URL, log and process.
        """
        log = log or Path(tempfile.mkdtemp(prefix="couchgw-demo-")) / "demo.log"
        url, process = start_demo(log, 0.1, port)
        self.addCleanup(stop, process)
        return url, log, process

    def serve_http(self, resource: Resource) -> str:
        """Serve C{resource} on a free port of this machine (no access log); answers its URL."""
        site = Site(resource)
        site.log = lambda request: None  # type: ignore[method-assign]
        port: Any = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/"

    @inlineCallbacks
    def wait_for(self, check: Any, timeout: float = 30.0, what: str = "condition") -> Any:
        """Poll C{check} (may answer a Deferred) until it answers something true."""
        deadline = reactor.seconds() + timeout
        last = None
        while reactor.seconds() < deadline:
            try:
                last = yield check()
            except (NotFound, *UNAVAILABLE) as e:
                last = e
            if last and not isinstance(last, Exception):
                return last
            yield deferLater(reactor, 0.05, lambda: None)
        self.fail(f"timed out waiting for {what} (last: {last!r})")

    @inlineCallbacks
    def terminal(self, doc_id: str, timeout: float = 30.0) -> Any:
        @inlineCallbacks
        def check() -> Any:
            doc = yield self.db.get(doc_id)
            return doc if message.is_terminal(doc) else None

        try:
            doc = yield self.wait_for(check, timeout, f"{doc_id} to finish")
        except self.failureException:
            last = yield self.db.get(doc_id, conflicts="true")
            self.fail(f"{doc_id} did not finish within {timeout}s: it is {last}")
        return doc

    @inlineCallbacks
    def ready(self, gateway: Gateway, timeout: float = 30.0) -> Any:
        deadline = reactor.seconds() + timeout
        while gateway.problems():
            if reactor.seconds() > deadline:
                self.fail(f"the gateway was not ready within {timeout}s: {gateway.problems()}")
            yield deferLater(reactor, 0.05, lambda: None)


class EndToEnd(GatewayTestCase):
    @inlineCallbacks
    def test_outcomes(self) -> Any:
        """Forwarded, failed on a fault, rejected, cancelled, and other documents left alone."""
        gateway = self.gateway()
        yield self.ready(gateway)
        docs = [
            {
                "_id": "ok",
                "type": "message",
                "operation": "activate",
                "args": {"network": "north", "count": 2},
            },
            {"_id": "text", "type": "message", "operation": "ping", "text": "hello"},
            {"_id": "fault", "type": "message", "operation": "refuse", "args": ["maintenance"]},
            {"_id": "unknown", "type": "message", "operation": "explode"},
            {
                "_id": "badargs",
                "type": "message",
                "operation": "activate",
                "args": {"network": "n", "cont": 1},
            },
            {"_id": "forged", "type": "message", "operation": "ping", "result": "fake"},
            {"_id": "noroute", "type": "message", "operation": "ping", "target": "elsewhere"},
            {"_id": "cancel", "type": "message", "operation": "ping", "cancel_requested": True},
            {"_id": "note", "type": "note", "operation": "ping"},
            {"_id": "set", "type": "message", "operation": "ping", "status": "forwarded"},
        ]
        result = yield self.db.bulk_docs(docs)
        assert all(r.get("ok") for r in result), result

        ok = yield self.terminal("ok")
        self.assertEqual(ok["status"], "forwarded")
        self.assertEqual(ok["result"]["activated"], 2)
        self.assertEqual(ok["result"]["devices"], ["north-0", "north-1"])
        self.assertEqual(ok["attempts"], 1)
        self.assertNotIn("claim", ok)
        for field in ("dispatched_at", "completed_at", "updated_at"):
            self.assertRegex(ok[field], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

        text = yield self.terminal("text")
        self.assertEqual((text["status"], text["result"]), ("forwarded", "hello"))

        fault = yield self.terminal("fault")
        self.assertEqual(fault["status"], "failed")
        self.assertEqual(fault["error"]["kind"], "fault")
        self.assertIn("maintenance", fault["error"]["message"])
        self.assertEqual(fault["attempts"], 1)

        expected = {
            "unknown": "route 'default' has no operation 'explode' (it has: activate, configure, ping, refuse)",
            "badargs": "operation 'activate' takes no argument 'cont' (it takes: network, count)",
            "forged": "fields written only by couchgw were set by the client: result",
            "noroute": "there is no route 'elsewhere' (routes: default)",
        }
        for doc_id, reason in expected.items():
            doc = yield self.terminal(doc_id)
            self.assertEqual(doc["status"], "rejected", doc_id)
            self.assertEqual(doc["error"], {"kind": "invalid", "message": reason})
            self.assertNotIn("attempts", doc)

        cancelled = yield self.terminal("cancel")
        self.assertEqual(cancelled["status"], "cancelled")
        self.assertNotIn("attempts", cancelled)

        for doc_id in ("note", "set"):
            doc = yield self.db.get(doc_id)
            self.assertTrue(doc["_rev"].startswith("1-"), doc)

    @inlineCallbacks
    def test_own_writes_on_the_feed_are_passed_over(self) -> Any:
        """
        On PouchDB Server the feed brings every message's changes (a filter passing only new
        messages would make it rescan the others on every write), so the gateway's own claims
        and outcomes come back: it passes over them without handling the messages again.
        """
        gateway = self.gateway()
        yield self.ready(gateway)
        assert gateway.intake.feed is not None
        pouchdb = is_pouchdb()
        self.assertEqual(
            gateway.intake.feed._filter_params["filter"],
            "couchgw/messages" if pouchdb else "_selector",
        )
        submitted: list[str] = []
        submit = gateway.intake.submit
        gateway.intake.submit = lambda doc: (submitted.append(doc["_id"]), submit(doc))[1]  # type: ignore[method-assign]
        brought: set[tuple[str, Any]] = set()
        on_change = gateway.intake.feed._on_change

        def record(change: dict[str, Any]) -> object:
            brought.add((change["id"], (change.get("doc") or {}).get("status")))
            return on_change(change)

        gateway.intake.feed._on_change = record
        ids = [f"own{i}" for i in range(5)]
        yield self.db.bulk_docs([{"_id": i, "type": "message", "operation": "ping"} for i in ids])
        for doc_id in ids:
            yield self.terminal(doc_id)
        if pouchdb:  # the outcomes too come through the feed
            outcomes = {(doc_id, "forwarded") for doc_id in ids}
            yield self.wait_for(lambda: outcomes <= brought, what="the feed to bring the outcomes")
        self.assertEqual(sorted(submitted), ids)

    @inlineCallbacks
    def messages(self) -> Any:
        """The revision of every message in the database, by id."""
        docs = yield self.db.json("GET", "_all_docs", params={"include_docs": "true"})
        return {
            row["id"]: row["doc"]["_rev"]
            for row in docs["rows"]
            if row["doc"].get("type") == "message"
        }

    @inlineCallbacks
    def test_backlog_written_while_stopped_and_restart(self) -> Any:
        """Messages written before any gateway ran are forwarded; a restart redoes nothing."""
        yield self.db.create()
        yield self.db.bulk_docs(
            [
                {"_id": f"m{i}", "type": "message", "operation": "ping", "text": str(i)}
                for i in range(20)
            ]
        )
        gateway = self.gateway()
        for i in range(20):
            doc = yield self.terminal(f"m{i}")
            self.assertEqual(
                (doc["status"], doc["result"], doc["attempts"]), ("forwarded", str(i), 1)
            )
        yield gateway.stopService()
        checkpoint = yield self.db.get(CHECKPOINT_ID)
        self.assertIsNotNone(checkpoint["seq"])
        by_status = yield self.db.view(design.DDOC, "by_status", group="true")
        self.assertEqual(by_status["rows"], [{"key": "forwarded", "value": 20}])
        revisions = yield self.messages()

        again = self.gateway(gateway="second")
        yield self.ready(again)
        swept = again.handling.counts.copy()
        yield again.intake.sweep()
        again_revisions = yield self.messages()
        self.assertEqual(again_revisions, revisions)
        self.assertEqual(again.handling.counts, swept)

    @inlineCallbacks
    def test_periodic_sweep_passed_over_while_full(self) -> Any:
        """
        The first periodic sweep runs whatever the load; later ones are passed over while the
        gateway is full, and run again once it has room.
        """
        wsdl, _, _ = self.demo()  # 0.1 s per device
        gateway = self.gateway(wsdl, max_inflight=2, sweep_interval=3600)
        yield self.ready(gateway)
        for i in range(2):
            yield self.db.put(
                {"_id": f"long{i}", "type": "message", "operation": "activate", "args": ["n", 30]}
            )
        yield self.wait_for(lambda: len(gateway.intake.active) == 2, what="the gateway full")
        first = gateway.intake.sweep_every()
        self.assertIsNotNone(first)
        yield first
        self.assertIsNone(gateway.intake.sweep_every())
        for i in range(2):
            yield self.terminal(f"long{i}", timeout=30)
        yield self.wait_for(lambda: not gateway.intake.active, what="room again")
        again = gateway.intake.sweep_every()
        self.assertIsNotNone(again)
        yield again

    @inlineCallbacks
    def test_write_back_keeps_a_client_edit(self) -> Any:
        """A client edit made during the call survives the write-back (merge on 409)."""
        gateway = self.gateway()
        yield self.ready(gateway)
        yield self.db.put(
            {
                "_id": "slow",
                "type": "message",
                "operation": "activate",
                "args": {"network": "w", "count": 10},
            }
        )

        @inlineCallbacks
        def claimed() -> Any:
            doc = yield self.db.get("slow")
            return doc if doc.get("status") == "dispatching" else None

        doc = yield self.wait_for(claimed, what="the claim")
        doc["client_note"] = "added during the call"
        yield self.db.put(doc)
        final = yield self.terminal("slow")
        self.assertEqual(final["status"], "forwarded")
        self.assertEqual(final["client_note"], "added during the call")
        self.assertEqual(final["attempts"], 1)

    @inlineCallbacks
    def test_two_gateways_never_dispatch_twice(self) -> Any:
        first = self.gateway(gateway="first")
        second = self.gateway(gateway="second")
        yield self.ready(first)
        yield self.ready(second)
        yield self.db.bulk_docs(
            [
                {"_id": f"p{i:02d}", "type": "message", "operation": "ping", "text": "x"}
                for i in range(40)
            ]
        )
        for i in range(40):
            doc = yield self.terminal(f"p{i:02d}")
            self.assertEqual((doc["status"], doc["attempts"]), ("forwarded", 1))
        self.assertEqual(
            first.handling.counts.get("forwarded", 0) + second.handling.counts.get("forwarded", 0),
            40,
        )


class DesignDocuments(GatewayTestCase):
    @inlineCallbacks
    def test_pushed_only_when_they_differ(self) -> Any:
        yield self.db.create()
        written = yield design.push(self.db)
        self.assertEqual(written, ["_design/couchgw", "_design/couchgw-console"])
        written = yield design.push(self.db)
        self.assertEqual(written, [])
        doc = yield self.db.get("_design/couchgw")
        doc["views"]["due"]["map"] = "function (doc) {}"
        yield self.db.put(doc)
        written = yield design.push(self.db)
        self.assertEqual(written, ["_design/couchgw"])
        current = yield self.db.get("_design/couchgw")
        self.assertEqual(current["views"], design.load()["_design/couchgw"]["views"])

    @inlineCallbacks
    def test_typed_errors(self) -> Any:
        yield self.db.create()
        yield self.assertFailure(self.db.get("missing"), NotFound)
        yield self.db.put({"_id": "d", "v": 1})
        yield self.assertFailure(self.db.put({"_id": "d", "v": 2}), Conflict)
