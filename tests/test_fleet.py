"""
Many databases, one fleet of gateways: the databases of a server whose names match patterns,
each its own world, found as they come and go, worked as they change, shared fairly, split
between the gateways; a tenant that vandalises its own database harms no other.  Against the
real test server (PouchDB Server, or $COUCHGW_TEST_COUCH) and the real demo service.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall

from couchgw import message
from couchgw.couch.client import Database
from couchgw.couch.errors import NotFound
from couchgw.gateway import Gateway, Policy
from couchgw.gateway.fleet import COORDINATION, FleetSettings
from couchgw.targets.soap import SoapTarget
from couchgw.timing import iso
from tests.servers import couch_url, http, is_pouchdb
from tests.test_gateway import GatewayTestCase


class FleetTestCase(GatewayTestCase):
    timeout = 180

    def setUp(self) -> None:
        super().setUp()
        self.prefix = f"fleet{uuid.uuid4().hex[:8]}-"
        self.server = Database(f"{couch_url()}/{COORDINATION}", self.db._agent)
        self.addCleanup(self.drop_databases)

    @inlineCallbacks
    def drop_databases(self) -> Any:
        names = yield self.server.all_dbs()
        for name in names:
            if name.startswith(self.prefix):
                yield self.server.sibling(name).json("DELETE", "")

    def database(self, suffix: str) -> Database:
        return self.server.sibling(self.prefix + suffix)

    def fleet(
        self, wsdl: str | None = None, max_feeds: int = 100, concurrency: int = 4, **options: Any
    ) -> Gateway:
        target = SoapTarget("default", wsdl or self.demo_url, self.threads, timeout=10.0)
        target_threads = self.threads
        assert target_threads.size >= 1
        settings = FleetSettings(self.server, (self.prefix + "*",), max_feeds=max_feeds)
        options.setdefault("heartbeat", 1.0)
        options.setdefault("announce", 1.0)
        gateway = Gateway(
            None,
            {"default": target},
            reactor,
            fleet=settings,
            policies={"default": Policy(inflight=max(2, 2 * concurrency))},
            **options,
        )
        gateway.startService()
        self.addCleanup(lambda: gateway.stopService() if gateway.running else None)
        return gateway

    @inlineCallbacks
    def write(self, db: Database, docs: list[dict[str, Any]]) -> Any:
        yield db.create()
        yield db.bulk_docs(docs)

    @inlineCallbacks
    def finished(self, db: Database, ids: list[str], timeout: float = 60.0) -> Any:
        @inlineCallbacks
        def done() -> Any:
            found = yield db.all_docs(ids, include_docs=True)
            docs = [row.get("doc") for row in found.get("rows", [])]
            return docs if all(d and message.is_terminal(d) for d in docs) else None

        docs = yield self.wait_for(done, timeout, f"{len(ids)} messages of {db.name} to finish")
        return docs

    @property
    def demo_url(self) -> str:
        """The demo service of this test (started at the first ask)."""
        if not hasattr(self, "_demo"):
            self._demo = self.demo()
        return str(self._demo[0])

    def start_demo(self) -> None:
        """The demo, started before the gateways: their routes load at once."""
        assert self.demo_url

    def calls(self) -> Counter[str]:
        log = self._demo[1].read_text()
        return Counter(re.findall(r"activated network=(\S+)\n", log))


def activate(doc_id: str, count: int = 0) -> dict[str, Any]:
    return {"_id": doc_id, "type": "message", "operation": "activate", "args": [doc_id, count]}


class Serving(FleetTestCase):
    @inlineCallbacks
    def test_every_matching_database_served_as_it_comes_and_goes(self) -> Any:
        self.start_demo()
        before = self.database("a")
        yield self.write(before, [activate(f"a{i}") for i in range(5)])
        other = self.server.sibling(f"not{self.prefix}x")  # a name the pattern does not match
        yield self.write(other, [activate("ignored")])
        self.addCleanup(other.json, "DELETE", "")
        gateway = self.fleet()
        yield self.ready(gateway)
        docs = yield self.finished(before, [f"a{i}" for i in range(5)])
        self.assertEqual({d["status"] for d in docs}, {"forwarded"})
        # one created later is served (within seconds: its update, or the next listing)
        later = self.database("b")
        yield self.write(later, [activate("b0")])
        yield self.finished(later, ["b0"], 30)
        # a database's feed ends once read; its next update reads it again
        assert gateway.fleet is not None
        fleet = gateway.fleet
        if fleet.discovery.says_updates:
            yield self.wait_for(lambda: not fleet.feeds.awake, 30, "the idle feeds to close")
        yield before.put(activate("a-later"))
        yield self.finished(before, ["a-later"], 30)
        self.assertEqual((yield other.get("ignored")).get("status"), None)
        # a database deleted is dropped, without an error loop
        yield later.json("DELETE", "")
        yield self.wait_for(lambda: later.name not in fleet.tenants, 30, "the database dropped")
        self.assertNotIn(later.name, fleet.feeds.awake)
        self.assertEqual(fleet.problems(), [])
        calls = self.calls()
        self.assertEqual(
            {k: v for k, v in calls.items() if k.startswith(("a", "b"))},
            {**{f"a{i}": 1 for i in range(5)}, "b0": 1, "a-later": 1},
        )
        status = yield gateway.status()
        self.assertEqual(status["databases"]["patterns"], [self.prefix + "*"])
        self.assertEqual(status["finished_here"], {"forwarded": 7})
        hidden = yield gateway.status(names=False)
        self.assertNotIn(before.name, str(hidden))
        # whether the server keeps the databases' files open: read where an admin may
        yield self.wait_for(lambda: fleet.open_files.files is not None, 30, "the server's limit")
        open_files = (yield gateway.status())["databases"]["open_files"]
        if is_pouchdb():
            self.assertIsNone(open_files)
        else:
            node = http("GET", f"{couch_url()}/_membership")[1]["all_nodes"][0]
            status, limit = http("GET", f"{couch_url()}/_node/{node}/_config/couchdb/max_dbs_open")
            self.assertEqual(open_files["max_dbs_open"], int(limit) if status == 200 else 500)
            self.assertEqual(open_files["advice"], None)

    @inlineCallbacks
    def test_more_databases_than_feeds_take_turns(self) -> Any:
        """--max-feeds 2 and six databases with messages: no more feeds open, all served."""
        self.start_demo()
        dbs = [self.database(f"t{i}") for i in range(6)]
        for db in dbs:
            yield self.write(db, [activate(f"{db.name}-{j}") for j in range(2)])
        gateway = self.fleet(max_feeds=2)
        assert gateway.fleet is not None
        feeds = gateway.fleet.feeds
        most: list[int] = [0]
        watch = LoopingCall(lambda: most.append(max(most.pop(), len(feeds.awake))))
        watch.start(0.01)
        self.addCleanup(lambda: watch.stop() if watch.running else None)
        yield self.ready(gateway)
        for db in dbs:
            docs = yield self.finished(db, [f"{db.name}-{j}" for j in range(2)], 120)
            self.assertEqual({d["status"] for d in docs}, {"forwarded"})
        self.assertLessEqual(most[0], 2)
        self.assertGreaterEqual(most[0], 1)
        calls = self.calls()
        self.assertEqual({calls[f"{db.name}-{j}"] for db in dbs for j in range(2)}, {1})

    @inlineCallbacks
    def test_each_database_its_own_world(self) -> Any:
        """Design documents, checkpoint, claims and outcomes live in each message's database."""
        self.start_demo()
        dbs = [self.database(s) for s in ("x", "y")]
        for db in dbs:
            yield self.write(db, [activate(f"{db.name}-m")])
        gateway = self.fleet()
        yield self.ready(gateway)
        for db in dbs:
            docs = yield self.finished(db, [f"{db.name}-m"])
            self.assertEqual(docs[0]["status"], "forwarded")
            if is_pouchdb():  # (its feed's filter; CouchDB's selector needs none until a sweep)
                ddoc = yield db.get("_design/couchgw")
                self.assertIn("views", ddoc)
        # the gateways' own database: announcements, nothing of any tenant
        found = yield self.server.json("GET", "_all_docs")
        ids = [row["id"] for row in found["rows"]]
        self.assertTrue(ids and all(i.startswith("_design/couchgw-gateway:") for i in ids), ids)
        yield gateway.stopService()  # (a checkpoint is saved 30 s after a read, or at the stop)
        for db in dbs:
            checkpoint = yield db.get("_local/couchgw-checkpoint")
            self.assertIsNotNone(checkpoint.get("seq"))


class DesignWhenNeeded(FleetTestCase):
    @inlineCallbacks
    def test_design_documents_come_when_a_database_needs_them(self) -> Any:
        """
        Where the feed needs no filter of couchgw's (a server with selectors), messages drain
        without couchgw's design documents; the first scheduled message, or a console listing,
        writes them.
        """
        from couchgw.tap import _served
        from couchgw.web.api import API
        from couchgw.web.events import Hubs
        from tests.test_console import call, served

        self.start_demo()
        later, listed = self.database("later"), self.database("listed")
        for db in (later, listed):
            yield self.write(db, [activate(f"{db.name}-{i}") for i in range(5)])
        gateway = self.fleet()
        yield self.ready(gateway)
        for db in (later, listed):
            yield self.finished(db, [f"{db.name}-{i}" for i in range(5)])

        @inlineCallbacks
        def designed(db: Database) -> Any:
            try:
                yield db.get("_design/couchgw")
            except NotFound:
                return False
            return True

        present = yield designed(later)
        self.assertEqual(present, is_pouchdb())  # (PouchDB Server: the feed's filter is there)
        # saved before its messages were claimed (a gateway taking it over sweeps it for claims)
        checkpoint = yield later.get("_local/couchgw-checkpoint")
        self.assertIsNotNone(checkpoint.get("seq"))
        # due after the feed has read it (the server tells of an update within a second, and a
        # database is read again a while after couchgw wrote to it): then its sweep calls it
        at = iso(reactor.seconds() + 3.0)  # type: ignore[attr-defined]
        yield later.put({**activate("scheduled"), "not_before": at})
        docs = yield self.finished(later, ["scheduled"])
        self.assertEqual(docs[0]["status"], "forwarded")
        present = yield designed(later)
        self.assertTrue(present)
        hubs = Hubs(_served(gateway, self.server), reactor, heartbeat=1.0)
        hubs.startService()
        self.addCleanup(hubs.stopService)
        base = served(self, API(gateway, hubs, reactor))
        code, page = yield call("GET", f"{base}/db/{listed.name}/messages?status=forwarded")
        self.assertEqual(code, 200, page)
        self.assertEqual(len(page["messages"]), 5)
        present = yield designed(listed)
        self.assertTrue(present)


class Fair(FleetTestCase):
    @inlineCallbacks
    def test_a_backlog_holds_back_no_other_database(self) -> Any:
        """A database with hundreds waiting: another's message goes next, not after them."""
        self._demo = self.demo()  # activate takes 0.1 s a device
        wsdl = self._demo[0]
        busy, quiet = self.database("busy"), self.database("quiet")
        yield self.write(busy, [activate(f"busy{i:03d}", 1) for i in range(200)])
        yield quiet.create()
        gateway = self.fleet(wsdl)
        yield self.ready(gateway)
        yield self.wait_for(lambda: len(self.calls()) >= 10, 60, "the backlog to be under way")
        yield quiet.put(activate("quiet0", 1))
        yield self.finished(quiet, ["quiet0"], 60)
        done = [name for name in self.calls() if name.startswith("busy")]
        # with 4 threads and 0.1 s calls, the quiet one came long before the backlog ended
        self.assertLess(len(done), 120, len(done))
        yield self.finished(busy, [f"busy{i:03d}" for i in range(200)], 120)


class Split(FleetTestCase):
    @inlineCallbacks
    def test_two_gateways_split_the_databases_and_one_takes_over(self) -> Any:
        self.start_demo()
        dbs = [self.database(f"s{i}") for i in range(12)]
        for db in dbs:
            yield self.write(db, [activate(f"{db.name}-0")])
        first, second = self.fleet(), self.fleet()
        yield self.ready(first)
        yield self.ready(second)
        for db in dbs:
            yield self.finished(db, [f"{db.name}-0"])
        assert first.fleet is not None and second.fleet is not None
        a, b = first.fleet, second.fleet
        names = {db.name for db in dbs}

        def split() -> bool:
            one, two = set(a.tenants), set(b.tenants)
            return bool(one and two and not one & two and one | two == names)

        yield self.wait_for(split, 30, "the databases split, none served by both")
        self.assertFalse(set(a.feeds.awake) & set(b.feeds.awake))
        yield second.stopService()
        for db in dbs:
            yield db.put(activate(f"{db.name}-1"))
        for db in dbs:
            docs = yield self.finished(db, [f"{db.name}-1"], 60)
            self.assertEqual(docs[0]["status"], "forwarded")
        calls = self.calls()
        self.assertTrue(all(calls[f"{db.name}-{i}"] == 1 for db in dbs for i in (0, 1)), calls)


#: A view a vandal writes in place of couchgw's C{due}: every document due at once, as nothing.
VANDAL_MAP = "function (doc) { emit(['new', 0], null); }"


class Vandals(FleetTestCase):
    @inlineCallbacks
    def test_a_tenant_that_vandalises_its_database_harms_no_other(self) -> Any:
        self.start_demo()
        vandal, victim = self.database("vandal"), self.database("victim")
        yield self.write(vandal, [activate("v0")])
        yield self.write(victim, [activate("w0")])
        gateway = self.fleet()
        yield self.ready(gateway)
        yield self.finished(vandal, ["v0"])
        yield self.finished(victim, ["w0"])
        # the vandal (an admin of its own database) puts its own design document where
        # couchgw's is (deleting couchgw's where it is there: PouchDB Server's feed filters with
        # it; on CouchDB it comes when the database first needs it), forges a claim of a gateway
        # that does not exist and an outcome, and floods its database
        try:
            ddoc = yield vandal.get("_design/couchgw")
            yield vandal.json("DELETE", "_design/couchgw", params={"rev": ddoc["_rev"]})
        except NotFound:
            yield vandal.put({"_id": "_design/couchgw", "views": {"due": {"map": VANDAL_MAP}}})
        yield vandal.bulk_docs(
            [
                {
                    **activate("forged-claim"),
                    "status": "dispatching",
                    "claim": {"by": "ghost:1:dead", "until": "2099-01-01T00:00:00.000Z"},
                    "dispatched_at": "2099-01-01T00:00:00.000Z",
                    "attempts": 1,
                },
                {**activate("forged-outcome"), "status": "forwarded", "result": "fake"},
                *[activate(f"flood{i:03d}", 0) for i in range(300)],
            ]
        )
        yield victim.bulk_docs([activate(f"w{i}") for i in range(1, 6)])
        docs = yield self.finished(victim, [f"w{i}" for i in range(1, 6)], 60)
        self.assertEqual({d["status"] for d in docs}, {"forwarded"})
        self.assertTrue(gateway.running)
        # the vandal's own messages still go (the flood drained beside the victim's)
        yield self.finished(vandal, ["flood000", "flood299"], 120)
        calls = self.calls()
        self.assertEqual(calls["forged-outcome"], 0)
        self.assertEqual(calls["w1"], 1)


class ApiPerDatabase(FleetTestCase):
    @inlineCallbacks
    def test_a_message_of_any_served_database_streams(self) -> Any:
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.web.server import Site

        from couchgw.tap import _served
        from couchgw.web.api import API
        from couchgw.web.events import Hubs
        from tests.test_events import Subscription

        self.start_demo()
        db = self.database("api")
        yield db.create()
        gateway = self.fleet()
        yield self.ready(gateway)
        hubs = Hubs(_served(gateway, self.server), reactor, heartbeat=1.0)
        hubs.startService()
        self.addCleanup(hubs.stopService)
        port: Any = reactor.listenTCP(  # type: ignore[attr-defined]
            0, Site(API(gateway, hubs, names=False).app.resource()), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        yield self.wait_for(lambda: db.name in gateway.fleet.discovery.names, 30, "the database")  # type: ignore[union-attr]
        sub = Subscription(f"/db/{db.name}/messages/m1/events", {})
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        yield connectProtocol(endpoint, sub)
        self.addCleanup(lambda: None if sub.ended.called else sub.close())
        yield self.wait_for(lambda: sub.comments, what="the stream to open")
        yield db.put(activate("m1"))
        yield sub.ended
        self.assertEqual(sub.statuses[-1], "forwarded")
        status = yield gateway.status(names=False)
        self.assertNotIn(db.name, str(status))
        if not is_pouchdb():
            self.assertTrue(gateway.fleet.discovery.says_updates)  # type: ignore[union-attr]
