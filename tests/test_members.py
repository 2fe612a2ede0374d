"""
Gateways that share a database: who owns which message (rendezvous hashing), joining, leaving,
and a gateway that cannot announce itself claiming nothing.  Announcements go to the real test
server; time is a L{Clock}, and each beat is run by hand.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from typing import Any
from unittest import SkipTest

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, LoopingCall
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent

from couchgw import message
from couchgw.connections import connection_pool
from couchgw.couch.client import Database
from couchgw.gateway import host
from couchgw.gateway.members import Members, owner
from couchgw.timing import iso
from tests.servers import free_port, is_pouchdb, new_db_url, setup_error


class Ownership(SynchronousTestCase):
    def test_owner_is_the_same_whatever_the_order(self) -> None:
        for i in range(100):
            self.assertEqual(owner(f"m{i}", ["a", "b", "c"]), owner(f"m{i}", ["c", "a", "b"]))
        self.assertIsNone(owner("m", []))

    def test_messages_spread_evenly(self) -> None:
        counts = Counter(owner(f"m{i}", ["a", "b", "c"]) for i in range(3000))
        self.assertEqual(set(counts), {"a", "b", "c"})
        self.assertTrue(all(800 < n < 1200 for n in counts.values()), counts)

    def test_a_gateway_leaving_moves_only_its_own_messages(self) -> None:
        before = {f"m{i}": owner(f"m{i}", ["a", "b", "c"]) for i in range(1000)}
        after = {doc_id: owner(doc_id, ["a", "c"]) for doc_id in before}
        moved = {doc_id for doc_id in before if before[doc_id] != after[doc_id]}
        self.assertEqual(moved, {doc_id for doc_id, was in before.items() if was == "b"})

    def test_routes(self) -> None:
        """A message goes to a gateway serving its route; any gateway for a route none serves."""
        clock = Clock()
        members = Members(None, clock, "a", ["default", "erp"], beat=1, ttl=3)  # type: ignore[arg-type]
        members._from = members._written_at = members._read_at = 0.0
        members.others = {"b": frozenset({"default"}), "c": frozenset({"crm"})}
        ids = [f"m{i}" for i in range(300)]
        self.assertTrue(all(members.owns(i, "erp") for i in ids))  # only a serves erp
        self.assertFalse(any(members.owns(i, "crm") for i in ids))  # only c serves crm
        mine = [i for i in ids if members.owns(i, "default")]
        self.assertEqual(mine, [i for i in ids if owner(i, ["a", "b"]) == "a"])
        nobody = [i for i in ids if members.owns(i, "nowhere")]
        self.assertEqual(nobody, [i for i in ids if owner(i, ["a", "b", "c"]) == "a"])


def claimed(by: str, at: float) -> dict[str, Any]:
    return {
        "type": "message",
        "status": "dispatching",
        "claim": {"by": by, "until": iso(at + 600)},
        "dispatched_at": iso(at),
    }


class Gone(SynchronousTestCase):
    def test_a_holder_unseen_a_beat_after_its_claim_is_gone(self) -> None:
        """
        A gateway announces itself before it claims: one not alive when this gateway read the
        others more than a beat after the claim is gone, and its claim due before its lease ends.
        """
        clock = Clock()
        clock.advance(10_000)
        members = Members(None, clock, "a", ["default"], beat=5, ttl=15)  # type: ignore[arg-type]
        members._from = members._written_at = members._read_at = 10_000.0
        members.others = {"b": frozenset({"default"})}
        members.leaving = {"l"}
        for holder, at, gone in [
            ("a", 9_990, False),  # itself
            ("b", 9_990, False),  # alive
            ("l", 9_990, False),  # leaving: finishing its calls
            ("c", 9_990, True),  # not seen although the others were read since
            ("c", 9_996, False),  # claimed too shortly before the read to be sure
        ]:
            doc = claimed(holder, at)
            self.assertEqual(members.holder_gone(doc), gone, (holder, at))
            self.assertEqual(
                message.due(doc, clock.seconds(), members.holder_gone), "takeover" if gone else None
            )
        members.ended = {"d"}  # a predecessor on this host whose process ended: at once
        self.assertTrue(members.holder_gone(claimed("d", 9_999.9)))

    def test_a_predecessor_on_this_host_is_ended_once_its_process_is(self) -> None:
        if host.HOME is None:
            raise SkipTest("no /proc here: processes of this host are not compared")
        child = subprocess.Popen(["true"])
        child.wait()
        self.assertTrue(host.ended(host.HOME, child.pid))
        self.assertFalse(host.ended(host.HOME, os.getppid()))  # running
        self.assertFalse(host.ended(host.HOME, os.getpid()))  # this process
        self.assertFalse(host.ended("another host", child.pid))
        self.assertFalse(host.ended(None, child.pid))


class Announcements(TestCase):
    timeout = 60

    def setUp(self) -> None:
        pool = connection_pool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        self.db = Database(new_db_url("members"), Agent(reactor, pool=pool))
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.changes: Counter[str] = Counter()

    def members(self, name: str) -> Members:
        members = Members(
            self.db,
            self.clock,
            name,
            ["default"],
            beat=5,
            ttl=15,
            on_change=lambda: self.changes.update([name]),
        )
        return members

    @inlineCallbacks
    def test_join_split_leave(self) -> Any:
        yield self.db.create()
        a = self.members("a")
        self.assertFalse(a.owns("early", "default"))  # before its first beat: nobody's yet
        yield a._beat()
        self.assertTrue(a.claiming())  # alone: at once
        self.assertTrue(all(a.owns(f"m{i}", "default") for i in range(50)))
        self.assertEqual(self.changes["a"], 1)  # it sweeps for what it passed over

        b = self.members("b")
        yield b._beat()
        self.assertEqual(set(b.others), {"a"})
        self.assertFalse(b.claiming())  # joining: a may still claim b's messages for a beat
        self.assertIn("joining 1 other gateway(s)", b.problems()[0])
        self.clock.advance(5)
        yield a._beat()  # a sees b, and stops claiming b's messages
        self.assertEqual(set(a.others), {"b"})
        yield b._beat()
        self.assertFalse(b.claiming())
        self.clock.advance(5)
        yield b._beat()
        self.assertTrue(b.claiming())
        self.assertEqual(b.problems(), [])
        ids = [f"m{i}" for i in range(200)]
        owners = [(a.owns(i, "default"), b.owns(i, "default")) for i in ids]
        self.assertEqual(set(owners), {(True, False), (False, True)})  # each has some, never both

        b._loop = LoopingCall(lambda: None)  # as if started: leave() announces at once
        b._loop.start(3600, now=False)
        yield b.leave()
        self.assertFalse(b.claiming())
        self.assertEqual(b.problems(), ["leaving the other gateways: claims nothing new"])
        before = self.changes["a"]
        yield a._beat()
        self.assertEqual((a.others, a.leaving), ({}, {"b"}))
        self.assertTrue(a.alive("b"))  # finishing its calls: its claims stand
        self.assertEqual(self.changes["a"], before + 1)  # a sweeps for what was b's
        self.assertTrue(all(a.owns(i, "default") for i in ids))
        yield b.stop()
        self.clock.advance(5)
        yield a._beat()
        self.assertFalse(a.alive("b"))

    @inlineCallbacks
    def test_what_it_passed_over_between_two_beats_is_swept_for(self) -> Any:
        """
        A beat answered late (a busy database) makes a gateway claim nothing for a while; what
        it passed over meanwhile is swept for at its next beat, though both beats saw it claim.
        """
        yield self.db.create()
        a = self.members("a")
        yield a._beat()
        self.assertTrue(a.claiming())
        swept = self.changes["a"]
        self.clock.advance(11)  # past its announcement's margin, no beat yet
        self.assertFalse(a.owns("m1", "default"))  # passed over: not surely alive
        yield a._beat()
        self.assertTrue(a.claiming())
        self.assertEqual(self.changes["a"], swept + 1)
        yield a._beat()
        self.assertEqual(self.changes["a"], swept + 1)  # once, not at every beat

    @inlineCallbacks
    def test_one_that_dies_expires(self) -> Any:
        yield self.db.create()
        a, b = self.members("a"), self.members("b")
        yield a._beat()
        yield b._beat()
        self.clock.advance(10)
        yield a._beat()
        yield b._beat()
        self.assertEqual((set(a.others), set(b.others)), ({"b"}, {"a"}))
        for _ in range(3):  # b is gone without a word: a beats on
            self.clock.advance(5)
            yield a._beat()
        self.assertEqual(a.others, {})
        self.assertTrue(a.claiming())
        # b's clock went on too, and it could not announce itself meanwhile: it claims nothing
        self.assertFalse(b.claiming())
        self.assertEqual(b.problems(), ["cannot announce this gateway to the others"])
        yield b._beat()  # it can again: but a took it for gone, so it joins again
        self.assertFalse(b.claiming())
        self.assertIn("joining 1 other gateway(s)", b.problems()[0])
        self.clock.advance(5)
        yield a._beat()
        yield b._beat()
        self.clock.advance(5)
        yield b._beat()
        self.assertTrue(b.claiming())


def test_a_bad_cluster_for_the_tests_is_one_line() -> None:
    """A node that does not answer stops the test run at once, saying so in one line."""
    port = free_port()  # nothing listens there
    named = f"http://admin:x@127.0.0.1:{port}," * 2 + f"http://a:b@127.0.0.1:{port}"
    error = setup_error(named)
    assert error.startswith(f"ERROR: COUCHGW_TEST_CLUSTER: http://127.0.0.1:{port} does not answer")
    assert "x@" not in error and ":b@" not in error  # no password shown
    error = setup_error("http://127.0.0.1:1")
    assert (
        error
        == "ERROR: COUCHGW_TEST_CLUSTER: names 1 node(s); the cluster tests need 3, comma-separated"
    )


def announcement(gateway: str, at: float, **fields: Any) -> dict[str, Any]:
    return {
        "_id": f"_design/couchgw-gateway:{gateway}",
        "type": "gateway",
        "gateway": gateway,
        "routes": ["default"],
        "beat": 5,
        "ttl": 15,
        "at": iso(at),
        **fields,
    }


def test_what_an_announcement_must_hold_to_be_believed() -> None:
    from couchgw.gateway.announcements import problem

    now = 1_800_000_000.0
    assert problem(announcement("g", now), now) is None
    assert problem(announcement("g", now + 100), now) is None  # a clock a little ahead
    for doc, why in [
        (announcement("g", now, routes=5), "routes must be a list"),
        (announcement("g", now, routes=["a", 5]), "routes must be a list"),
        (announcement("g", now, ttl=1_000_000_000), "ttl must be a number"),
        (announcement("g", now, ttl="15"), "ttl must be a number"),
        (announcement("g", now, beat=0), "beat must be a number"),
        (announcement("g", now + 3600), "ahead of this gateway's clock"),
        ({**announcement("g", now), "at": "yesterday"}, "at must be a time"),
        (announcement("g", now, leaving="yes"), "leaving must be"),
        ({**announcement("g", now), "_id": "_design/couchgw-gateway:h"}, "does not name"),
        ({**announcement("g", now), "type": "message"}, "not a gateway's"),
        ([], "not an object"),
    ]:
        found = problem(doc, now)
        assert found is not None and why in found, (doc, found)


class Forgeries(TestCase):
    """What a member of the database may write makes no gateway count a ghost."""

    timeout = 60

    def setUp(self) -> None:
        pool = connection_pool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        self.db = Database(new_db_url("forged"), Agent(reactor, pool=pool))
        self.clock = Clock()
        self.clock.advance(1_800_000_000)

    @inlineCallbacks
    def test_forged_and_malformed_announcements_are_ignored_and_named(self) -> Any:
        yield self.db.create()
        now = self.clock.seconds()
        ghost = {**announcement("ghost:1:deadbeef", now), "ttl": 1_000_000_000}
        del ghost["_id"]
        yield self.db.put({**ghost, "_id": "_local/couchgw-gateway:ghost:1:deadbeef"})
        yield self.db.put({**ghost, "_id": "couchgw-gateway:ghost:1:deadbeef"})
        # where gateways do write (an admin could), but not believable
        yield self.db.put(announcement("bad:routes", now, routes=5))
        yield self.db.put(announcement("future", now + 86400))
        members = Members(self.db, self.clock, "a", ["default"], beat=5, ttl=15)
        logged: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        yield members._beat()
        yield members._beat()  # again: each is logged once
        self.assertEqual(members.others, {})
        self.assertTrue(members.claiming())
        self.assertTrue(all(members.owns(f"m{i}", "default") for i in range(100)))
        ignored = members.describe()["ignored"]
        named = {
            "couchgw-gateway:ghost:1:deadbeef",
            "_design/couchgw-gateway:bad:routes",
            "_design/couchgw-gateway:future",
        }
        if not is_pouchdb():  # (PouchDB Server cannot list its _local/ documents)
            named.add("_local/couchgw-gateway:ghost:1:deadbeef")
        self.assertEqual(set(ignored), named)
        self.assertIn("routes must be a list", ignored["_design/couchgw-gateway:bad:routes"])
        lines = [e for e in logged if "ignored announcement" in str(e.get("log_format"))]
        self.assertEqual(len(lines), len(named))

    @inlineCallbacks
    def test_a_beat_survives_any_error_and_the_first_one_ends_all_the_same(self) -> Any:
        yield self.db.create()
        members = Members(self.db, self.clock, "a", ["default"], beat=5, ttl=15)
        real = self.db.json
        calls = {"n": 0}

        def broken(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            raise TypeError("a bug, or an answer of a shape never seen")

        self.db.json = broken  # type: ignore[method-assign]
        started = members.started()
        members.start()
        self.addCleanup(members.stop)
        self.assertTrue(started.called)  # the first beat failed, and ended
        self.assertIn("TypeError", members.error or "")
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)  # in full, once
        self.assertFalse(members.claiming())
        assert members._loop is not None
        self.assertTrue(members._loop.running)  # the loop goes on
        self.clock.advance(5)
        self.assertEqual(self.flushLoggedErrors(TypeError), [])  # the same error: logged once
        self.db.json = real  # type: ignore[method-assign]
        self.clock.advance(5)
        yield members._beating
        self.assertIsNone(members.error)
        self.assertTrue(members.claiming())
