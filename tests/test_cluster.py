"""
Claims that hold on a CouchDB cluster.

The decision after a claim write (201: exclusive; 202: confirm; 409: lost) is tested against a
scripted CouchDB through treq's in-memory agent.  The races a cluster allows (two claims on the
same parent revision, a client edit in conflict with a write-back) are made real on PouchDB
Server with C{_bulk_docs} and C{new_edits: false}, which writes a revision the way replication
does.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from couchgw import message
from couchgw.connections import connection_pool
from couchgw.couch import design
from couchgw.couch.client import Database, Doc
from couchgw.couch.errors import NotFound
from couchgw.gateway import Gateway
from couchgw.gateway.claims import copies
from couchgw.targets.door import DOOR_ID
from couchgw.timing import iso
from tests.test_gateway import GatewayTestCase

NOW = 1795845123.0
#: What a cluster answers when a copy does not reply in time (fabric's request_timeout).
TIMEOUT = (
    500,
    {
        "error": "timeout",
        "reason": "The request could not be processed in a reasonable amount of time.",
    },
)


class ScriptedCouch(Resource):
    """Answers each request from a script of (status, body) by method and path; logs them."""

    isLeaf = True

    def __init__(self, script: dict[tuple[str, str], list[tuple[int, Any]]]) -> None:
        super().__init__()
        self.script = script
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.bodies: list[bytes] = []

    def render(self, request: Request) -> bytes:
        method, path = request.method.decode(), request.path.decode()
        args = {k.decode(): v[0].decode() for k, v in (request.args or {}).items()}
        self.requests.append((method, path, args))
        self.bodies.append(request.content.read() if request.content else b"")
        status, body = self.script[(method, path)].pop(0)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()


class ClaimDecision(SynchronousTestCase):
    """What a claim write's answer means, with stubbed answers."""

    def claim(
        self, n: int, script: dict[tuple[str, str], list[tuple[int, Any]]], seconds: float = 25
    ) -> tuple[Any, ScriptedCouch]:
        couch = ScriptedCouch(script)
        clock = Clock()
        clock.advance(NOW)
        agent = RequestTraversalAgent(couch)
        db = Database("http://couch/db", agent)
        gateway = Gateway(db, {}, clock, gateway="me", settle=0.5)
        gateway.claims.copies = n
        doc = {"_id": "m", "_rev": "1-a", "type": "message", "operation": "ping"}
        d = gateway.claims.take(doc)
        for _ in range(int(seconds * 4)):  # the answers, the delays, the answers after them
            agent.flush()
            clock.advance(0.25)
        return self.successResultOf(d), couch

    def claimed_by(self, by: str, rev: str, **fields: Any) -> Doc:
        return {
            "_id": "m",
            "_rev": rev,
            "type": "message",
            "operation": "ping",
            "status": "dispatching",
            "attempts": 1,
            "claim": {"by": by, "until": iso(NOW + 600)},
            **fields,
        }

    def test_single_copy_is_one_plain_write(self) -> None:
        claimed, couch = self.claim(
            1, {("POST", "/db/_bulk_docs"): [(201, [{"ok": True, "id": "m", "rev": "2-b"}])]}
        )
        self.assertEqual(couch.requests, [("POST", "/db/_bulk_docs", {})])
        self.assertEqual((claimed["_rev"], claimed["claim"]["by"]), ("2-b", "me"))

    def test_every_copy_took_it(self) -> None:
        claimed, couch = self.claim(3, {("PUT", "/db/m"): [(201, {"ok": True, "rev": "2-b"})]})
        self.assertEqual(couch.requests, [("PUT", "/db/m", {"w": "3"})])
        self.assertEqual(claimed["_rev"], "2-b")

    def test_fewer_copies_confirmed_by_reading_every_copy_twice(self) -> None:
        claimed, couch = self.claim(
            3,
            {
                ("PUT", "/db/m"): [(202, {"ok": True, "rev": "2-b"})],
                ("GET", "/db/m"): [
                    (200, self.claimed_by("me", "2-b")),
                    (200, self.claimed_by("me", "2-b")),
                ],
            },
        )
        self.assertEqual(
            couch.requests,
            [
                ("PUT", "/db/m", {"w": "3"}),
                ("GET", "/db/m", {"r": "3"}),  # copies that differ are repaired
                ("GET", "/db/m", {"conflicts": "true", "r": "3"}),  # then the winner is final
            ],
        )
        self.assertEqual(claimed["_rev"], "2-b")

    def test_another_claim_won(self) -> None:
        claimed, couch = self.claim(
            3,
            {
                ("PUT", "/db/m"): [(202, {"ok": True, "rev": "2-b"})],
                ("GET", "/db/m"): [
                    (200, self.claimed_by("me", "2-b")),
                    (200, self.claimed_by("other", "2-c", _conflicts=["2-b"])),
                ],
            },
        )
        self.assertIsNone(claimed)
        self.assertEqual(len(couch.requests), 3)  # backs off: no clean-up, no call

    def test_won_over_another_claim_deletes_it(self) -> None:
        claimed, couch = self.claim(
            3,
            {
                ("PUT", "/db/m"): [(202, {"ok": True, "rev": "2-b"})],
                ("GET", "/db/m"): [
                    (200, self.claimed_by("me", "2-b")),
                    (200, self.claimed_by("me", "2-b", _conflicts=["2-a"])),
                    (200, self.claimed_by("other", "2-a")),
                ],
                ("POST", "/db/_bulk_docs"): [(201, [{"ok": True, "id": "m", "rev": "3-x"}])],
            },
        )
        self.assertEqual(claimed["_rev"], "2-b")
        self.assertNotIn("_conflicts", claimed)
        self.assertEqual(couch.requests[3], ("GET", "/db/m", {"rev": "2-a"}))
        self.assertEqual(couch.requests[4][:2], ("POST", "/db/_bulk_docs"))

    def test_a_copy_late_for_a_while_is_waited_for(self) -> None:
        claimed, couch = self.claim(
            3,
            {
                ("PUT", "/db/m"): [(202, {"ok": True, "rev": "2-b"})],
                ("GET", "/db/m"): [
                    TIMEOUT,
                    (200, self.claimed_by("me", "2-b")),
                    (200, self.claimed_by("me", "2-b")),
                ],
            },
        )
        self.assertEqual(claimed["_rev"], "2-b")
        self.assertEqual([args.get("r") for _, _, args in couch.requests[1:]], ["3", "3", "3"])

    def test_every_copy_out_of_reach_means_no_call(self) -> None:
        """Never a quorum instead: two claimers could each see their own side."""
        claimed, couch = self.claim(
            3,
            {
                ("PUT", "/db/m"): [(202, {"ok": True, "rev": "2-b"})],
                ("GET", "/db/m"): [TIMEOUT] * 4,
            },
        )
        self.assertIsNone(claimed)
        self.assertEqual([args.get("r") for _, _, args in couch.requests[1:]], ["3"] * 4)

    def test_an_answer_lost_but_the_claim_got_in(self) -> None:
        """The connection dropped after the claim went in: read back, confirmed, called."""
        claimed, couch = self.claim(
            3,
            {
                ("PUT", "/db/m"): [(500, {"error": "internal_server_error"})],
                ("GET", "/db/m"): [(200, self.claimed_by("me", "2-b"))] * 3,
            },
        )
        self.assertEqual(claimed["_rev"], "2-b")
        self.assertEqual(
            [args for _, _, args in couch.requests[1:]],
            [{"conflicts": "true"}, {"r": "3"}, {"conflicts": "true", "r": "3"}],
        )

    def test_a_claim_that_lands_late_is_given_back(self) -> None:
        """Read back before it landed: not ours; once it landed, nobody would work on it."""
        first = {"_id": "m", "_rev": "1-a", "type": "message", "operation": "ping"}
        claimed, couch = self.claim(
            1,
            {
                ("POST", "/db/_bulk_docs"): [
                    (500, {"error": "internal_server_error"}),
                    (201, [{"ok": True, "id": "m", "rev": "3-c"}]),
                ],
                ("GET", "/db/m"): [(200, first), (200, self.claimed_by("me", "2-b"))],
            },
            seconds=90,
        )
        self.assertIsNone(claimed)
        method, path, _ = couch.requests[-1]
        self.assertEqual((method, path), ("POST", "/db/_bulk_docs"))
        released = json.loads(couch.bodies[-1])["docs"][0]
        self.assertEqual(released["_rev"], "2-b")
        self.assertEqual(
            {k: released.get(k) for k in ("status", "claim", "attempts")},
            {"status": None, "claim": None, "attempts": None},
        )

    def test_conflict_means_lost(self) -> None:
        claimed, couch = self.claim(
            3,
            {
                ("PUT", "/db/m"): [
                    (409, {"error": "conflict", "reason": "Document update conflict."})
                ]
            },
        )
        self.assertIsNone(claimed)
        self.assertEqual(len(couch.requests), 1)

    def test_copies_from_database_info(self) -> None:
        self.assertEqual(copies({"cluster": {"q": 2, "n": 3, "w": 2, "r": 2}}), 3)
        self.assertEqual(copies({"db_name": "pouch", "doc_count": 1}), 1)
        self.assertEqual(copies({"cluster": {"n": "bad"}}), 1)


class Resolve(SynchronousTestCase):
    def test_outcome_kept_with_a_client_edit_from_the_losing_side(self) -> None:
        claim = {"_id": "m", "type": "message", "status": "dispatching", "attempts": 1}
        written = {**claim, "_rev": "3-a", "status": "forwarded", "result": 42}
        edited = {**claim, "_rev": "3-b", "note": "client", "claim": {"by": "g"}}
        for winner, loser in ((written, edited), (edited, written)):
            merged = message.resolve({**winner, "_conflicts": [loser["_rev"]]}, [loser])
            self.assertEqual(merged["_rev"], winner["_rev"])
            self.assertEqual((merged["status"], merged["result"]), ("forwarded", 42))
            self.assertEqual(merged["note"], "client")
            self.assertNotIn("claim", merged)
            self.assertNotIn("_conflicts", merged)

    def test_tie_keeps_the_winner(self) -> None:
        a = {"_id": "m", "_rev": "2-a", "status": "dispatching", "claim": {"by": "A"}}
        b = {"_id": "m", "_rev": "2-b", "status": "dispatching", "claim": {"by": "B"}}
        self.assertEqual(message.resolve(b, [a])["claim"], {"by": "B"})


@implementer(IAgent)
class CountingAgent:
    """An agent that notes each request's method and path."""

    def __init__(self, agent: IAgent) -> None:
        self.agent = agent
        self.requests: list[tuple[str, str]] = []

    def request(self, method: bytes, uri: bytes, headers: Any = None, body: Any = None) -> Any:
        self.requests.append((method.decode(), uri.decode().split("?")[0]))
        return self.agent.request(method, uri, headers, body)


class ClusterLike(Database):
    """
    A database that behaves as a 3-copy cluster racing through other nodes: it reports three
    nodes and C{cluster.n = 3}, and a claim write (C{w}) goes in as a replicated revision
    (C{new_edits: false}), so that two claims on the same parent both get in, as on a cluster
    whose nodes each took one; it answers 202.
    """

    def info(self) -> Deferred[Doc]:
        return super().info().addCallback(lambda info: {**info, "cluster": {"n": 3}})

    def probe(self) -> Database:
        return self

    def json(self, method: str, path: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        if (method, path) == ("GET", "/_membership"):
            nodes = [f"couchdb@node{i}" for i in range(3)]
            return succeed({"all_nodes": nodes, "cluster_nodes": nodes})
        return super().json(method, path, *args, **kwargs)

    @inlineCallbacks
    def write(self, doc: Doc, **params: Any) -> Any:
        generation, parent = doc["_rev"].split("-", 1)
        rev = uuid.uuid4().hex
        replicated = {
            **doc,
            "_rev": f"{int(generation) + 1}-{rev}",
            "_revisions": {"start": int(generation) + 1, "ids": [rev, parent]},
        }
        yield self.bulk_docs([replicated], new_edits=False)
        return 202, {"ok": True, "id": doc["_id"], "rev": replicated["_rev"]}


def activate(doc_id: str) -> Doc:
    return {
        "_id": doc_id,
        "type": "message",
        "operation": "activate",
        "args": {"network": doc_id, "count": 1},
    }


class Races(GatewayTestCase):
    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        pool = connection_pool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)
        self.wsdl, self.demo_log, _ = self.demo()

    def activated(self, doc_id: str) -> int:
        return self.demo_log.read_text().count(f"activated network={doc_id}\n")

    @inlineCallbacks
    def replicable(self, gateway: Gateway) -> Any:
        """
        These tests make conflicts by writing revisions as replication does (C{new_edits:
        false}), which PouchDB Server silently drops for an existing document while the database
        has a validate function: the database is admin-only, so the gateways install none.
        """
        self.assertEqual(gateway.guards.describe()["installed"], False)
        with self.assertRaises(NotFound):
            yield self.db.get(DOOR_ID)
        ddoc = yield self.db.get(f"_design/{design.DDOC}")
        self.assertNotIn("validate_doc_update", ddoc)

    @inlineCallbacks
    def conflicts(self, doc_id: str) -> Any:
        doc = yield self.db.get(doc_id, conflicts="true")
        return doc.get("_conflicts", [])

    @inlineCallbacks
    def test_racing_claims_call_once(self) -> Any:
        """Two claims on the same parent both get in; exactly one gateway calls."""
        url = self.db_url
        gateways = [
            self.gateway(self.wsdl, ClusterLike(url, self.agent), gateway=name, settle=0.3)
            for name in ("first", "second")
        ]
        for gateway in gateways:
            yield self.ready(gateway)
            self.assertEqual(gateway.claims.copies, 3)
            yield self.replicable(gateway)
        for i in range(5):
            doc_id = f"race{i}"
            yield self.db.put(activate(doc_id))
            doc = yield self.db.get(doc_id)
            for gateway in gateways:  # each takes itself for the only one, as while one joins
                gateway.members.others.clear()
            yield gatherResults([gateway.intake.submit(dict(doc)) for gateway in gateways])
            final = yield self.terminal(doc_id)
            self.assertEqual((final["status"], final["attempts"]), ("forwarded", 1))
            self.assertEqual(self.activated(doc_id), 1)
            remaining = yield self.conflicts(doc_id)
            self.assertEqual(remaining, [])
            leaves = yield self.db.get(doc_id, open_revs="all")
            deleted = [leaf for leaf in leaves if leaf["ok"].get("_deleted")]
            self.assertEqual(len(deleted), 1)  # the losing claim, deleted

    @inlineCallbacks
    def test_client_edit_in_conflict_with_the_write_back(self) -> Any:
        """The sweep merges it: the outcome and the client's field both stay; no conflict."""
        gateway = self.gateway(self.wsdl)
        yield self.ready(gateway)
        yield self.replicable(gateway)
        yield self.db.put(activate("edit"))
        yield self.terminal("edit")
        history = yield self.db.get("edit", revs="true")
        revisions = history["_revisions"]  # the outcome, the claim, the message as written
        claim_rev = f"{revisions['start'] - 1}-{revisions['ids'][1]}"
        claimed = yield self.db.get("edit", rev=claim_rev)
        self.assertEqual(claimed["status"], "dispatching")
        edit = uuid.uuid4().hex
        yield self.db.bulk_docs(
            [
                {
                    **{k: v for k, v in claimed.items() if k != "_rev"},
                    "note": "edited elsewhere",
                    "_rev": f"3-{edit}",
                    "_revisions": {"start": 3, "ids": [edit, revisions["ids"][1]]},
                }
            ],
            new_edits=False,
        )
        self.assertEqual(len((yield self.conflicts("edit"))), 1)

        @inlineCallbacks
        def clean() -> Any:
            remaining = yield self.conflicts("edit")
            return not remaining

        yield self.wait_for(clean, what="the conflict to be resolved")
        doc = yield self.db.get("edit")
        self.assertEqual((doc["status"], doc["note"]), ("forwarded", "edited elsewhere"))
        self.assertEqual(doc["result"]["activated"], 1)
        self.assertEqual(self.activated("edit"), 1)
        leaves = yield self.db.get("edit", open_revs="all")
        self.assertEqual(sorted(bool(leaf["ok"].get("_deleted")) for leaf in leaves), [False, True])

    @inlineCallbacks
    def test_single_node_claim_is_one_request(self) -> Any:
        """On one copy a message costs the gateway two requests (claim, outcome), no read."""
        counting = CountingAgent(self.agent)
        gateway = self.gateway(self.wsdl, Database(self.db_url, counting), sweep_interval=3600)
        yield self.ready(gateway)
        self.assertEqual(gateway.claims.copies, 1)
        ready = len(counting.requests)  # (its design documents were written before)
        yield self.db.put({"_id": "one", "type": "message", "operation": "ping", "text": "x"})
        yield self.terminal("one")
        since = counting.requests[ready:]
        on_doc = [method for method, uri in since if uri.endswith("/one")]
        writes = [method for method, uri in since if uri.endswith("/_bulk_docs")]
        self.assertEqual(on_doc, [])  # no read
        self.assertEqual(writes, ["POST", "POST"])  # the claim, the outcome: one request each


class _BulkCouch:
    """A database whose C{_bulk_docs} requests are kept, each answered by the test."""

    def __init__(self) -> None:
        self.sent: list[tuple[list[Doc], Deferred[list[Doc]]]] = []

    def bulk_docs(self, docs: list[Doc]) -> Deferred[list[Doc]]:
        self.sent.append((docs, Deferred()))
        return self.sent[-1][1]


class Batches(SynchronousTestCase):
    """Writes gathered into _bulk_docs while a request is in flight."""

    def test_waiting_writes_go_together_with_their_own_outcomes(self) -> None:
        from couchgw.couch.batch import BulkWriter
        from couchgw.couch.errors import Conflict, ServerError

        couch = _BulkCouch()
        sent = couch.sent
        writer = BulkWriter(couch, concurrency=1)  # type: ignore[arg-type]
        a, b, c = (writer.write({"_id": i, "_rev": f"1-{i}"}) for i in "abc")
        self.assertEqual([[d["_id"] for d in docs] for docs, _ in sent], [["a"]])  # a at once
        sent[0][1].callback([{"ok": True, "id": "a", "rev": "2-a"}])
        self.assertEqual(self.successResultOf(a)["rev"], "2-a")
        self.assertEqual([d["_id"] for d in sent[1][0]], ["b", "c"])  # b and c waited: together
        sent[1][1].callback(
            [
                {"id": "b", "error": "conflict", "reason": "Document update conflict."},
                {"ok": True, "id": "c", "rev": "2-c"},
            ]
        )
        self.failureResultOf(b, Conflict)
        self.assertEqual(self.successResultOf(c)["rev"], "2-c")
        self.assertEqual((writer.requests, writer.written, writer.in_flight), (2, 3, 0))
        d = writer.write({"_id": "d", "_rev": "1-d"})
        sent[2][1].callback([])  # not one result per document: an error, never a hang
        self.failureResultOf(d, ServerError)

    def test_a_lingering_write_waits_for_others_of_its_turn(self) -> None:
        from twisted.internet.task import Clock

        from couchgw.couch.batch import BulkWriter

        couch = _BulkCouch()
        sent = couch.sent
        clock = Clock()
        writer = BulkWriter(couch, concurrency=1, linger=(clock, 0.01))  # type: ignore[arg-type]
        a, b = (writer.write({"_id": i, "_rev": f"1-{i}"}) for i in "ab")
        self.assertEqual(sent, [])  # nothing in flight, yet a waits
        clock.advance(0.005)
        c = writer.write({"_id": "c", "_rev": "1-c"})
        clock.advance(0.005)
        self.assertEqual([[d["_id"] for d in docs] for docs, _ in sent], [["a", "b", "c"]])
        d = writer.write({"_id": "d", "_rev": "1-d"})  # one in flight: d goes when it ends
        clock.advance(1)
        self.assertEqual(len(sent), 1)
        sent[0][1].callback([{"ok": True, "id": i, "rev": f"2-{i}"} for i in "abc"])
        self.assertEqual([self.successResultOf(x)["rev"] for x in (a, b, c)], ["2-a", "2-b", "2-c"])
        self.assertEqual([d["_id"] for d in sent[1][0]], ["d"])
        sent[1][1].callback([{"ok": True, "id": "d", "rev": "2-d"}])
        self.assertEqual(self.successResultOf(d)["rev"], "2-d")
        self.assertEqual(clock.getDelayedCalls(), [])
