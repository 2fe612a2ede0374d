"""
What a look at a database reads in one request (its couchgw design documents, how many others
it holds, its sequence), and how many nodes the server has: on the real test server; and a look
on a (fake) cluster whose database changes between two of its reads.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import quote

from treq.testing import RequestTraversalAgent
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import Request

from couchgw.couch import design
from couchgw.couch.client import Database
from couchgw.gateway.dispatch import Dispatch
from couchgw.gateway.facts import ServerFacts
from couchgw.gateway.routing import Routes
from couchgw.gateway.sweep import Owner
from couchgw.gateway.tenant import Settings, Shared, Tenant
from couchgw.gateway.waiting import Backlog
from couchgw.metrics import Metrics
from couchgw.targets import door
from tests.servers import couch_url, http, is_pouchdb, new_db_url


def updates(seq: Any) -> int:
    """How many updates a sequence counts (PouchDB's are numbers, CouchDB's C{N-opaque})."""
    return seq if isinstance(seq, int) else int(str(seq).split("-", 1)[0])


class OursRead(TestCase):
    def setUp(self) -> None:
        self.url = new_db_url("facts")
        assert http("PUT", self.url)[0] in (201, 202)
        self.addCleanup(http, "DELETE", self.url)
        self.db = Database(self.url, Agent(reactor))

    @inlineCallbacks
    def read(self, docs: int) -> Any:
        """
        L{design.read_ours} once it sees C{docs} documents (a cluster's C{_all_docs} reads one
        copy of each range: the others take a write a moment later).
        """
        deadline = reactor.seconds() + 10  # type: ignore[attr-defined]
        found = yield design.read_ours(self.db)
        while len(found.docs) + found.others != docs and reactor.seconds() < deadline:  # type: ignore[attr-defined]
            yield deferLater(reactor, 0.05, lambda: None)
            found = yield design.read_ours(self.db)
        return found

    def test_every_id_of_couchgw_is_its_own(self) -> None:
        for doc_id in [*design.DOCS, door.DOOR_ID, door.FACTS_ID]:
            self.assertTrue(design.ours(doc_id), doc_id)
        for doc_id in ["_design/couchgwx", "_design/couchgw_", "_design/other", "m1", "_local/x"]:
            self.assertFalse(design.ours(doc_id), doc_id)

    @inlineCallbacks
    def test_an_empty_database(self) -> Any:
        found = yield design.read_ours(self.db)
        info = http("GET", self.url)[1]
        self.assertEqual((found.docs, found.others), ({}, 0))
        self.assertEqual(updates(found.update_seq), updates(info["update_seq"]))

    @inlineCallbacks
    def test_couchgws_design_documents_apart_from_the_others(self) -> Any:
        docs = [
            {"_id": "_design/couchgw", "language": "javascript"},
            {"_id": door.DOOR_ID, "validate_doc_update": "function () {}"},
            {"_id": "_design/couchgwx"},  # (another's, whose id begins alike)
            {"_id": "_design/other"},
            {"_id": "m1", "type": "message"},
            {"_id": "gone"},
        ]
        written = http("POST", f"{self.url}/_bulk_docs", {"docs": docs})[1]
        gone = next(row for row in written if row["id"] == "gone")
        assert http("DELETE", f"{self.url}/gone?rev={gone['rev']}")[0] in (200, 202)
        found = yield self.read(len(docs) - 1)
        info = http("GET", self.url)[1]
        self.assertEqual(sorted(found.docs), ["_design/couchgw", door.DOOR_ID])
        self.assertEqual(found.docs[door.DOOR_ID]["validate_doc_update"], "function () {}")
        self.assertEqual(found.others, 3)  # the other design documents and the message
        self.assertEqual(updates(found.update_seq), updates(info["update_seq"]))
        # a feed from it has nothing to tell; a feed from the start, everything
        since = http("GET", f"{self.url}/_changes?since={quote(str(found.update_seq))}")[1]
        self.assertEqual(since["results"], [])
        self.assertEqual(len(http("GET", f"{self.url}/_changes")[1]["results"]), len(docs))

    @inlineCallbacks
    def test_what_was_found_is_not_read_again_by_the_push(self) -> Any:
        found = yield design.read_ours(self.db)
        written = yield design.push(self.db, found=found)
        self.assertEqual(sorted(written), sorted(design.DOCS))
        again = yield self.read(len(design.DOCS))
        self.assertEqual(sorted(again.docs), sorted(design.DOCS))
        self.assertEqual((yield design.push(self.db, found=again)), [])


class Nodes(TestCase):
    @inlineCallbacks
    def test_the_nodes_of_the_server_as_it_tells_them(self) -> Any:
        """
        How many nodes the server has, where it tells (Apache CouchDB: a server admin alone;
        PouchDB Server: one, to anyone), else None.
        """
        db = Database(f"{couch_url()}/anything", Agent(reactor))
        facts = ServerFacts(Clock(), ttl=0.0)
        for asked, url in ((db, couch_url()), (db.anonymous(), db.server_url)):
            nodes = yield facts.nodes(asked)
            status, membership = http("GET", f"{url}/_membership")
            told = len(membership["all_nodes"]) if status == 200 else None
            self.assertEqual(nodes, told)
        self.assertEqual(nodes is None, not is_pouchdb())  # (anyone: CouchDB tells no one)
        self.assertIsNone(db.refused)


class _Racing(Resource):
    """
    A cluster of three nodes where ten messages are written into a new database between a
    look's read of it (C{_all_docs}: empty) and its information (ten documents).
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        answers: dict[bytes, Any] = {
            b"/_membership": {"all_nodes": ["a", "b", "c"], "cluster_nodes": ["a", "b", "c"]},
            b"/_session": {"ok": True, "userCtx": {"name": None, "roles": []}},
            b"/db/_security": {"admins": {"roles": ["_admin"]}, "members": {"roles": ["_admin"]}},
            b"/db/_all_docs": {"total_rows": 0, "rows": [], "update_seq": "0-empty"},
            b"/db": {"doc_count": 10, "update_seq": "10-ten", "cluster": {"n": 3}},
        }
        if request.path not in answers:
            request.setResponseCode(404)
            return b'{"error": "not_found", "reason": "missing"}'
        return json.dumps(answers[request.path]).encode()


class LookOnACluster(SynchronousTestCase):
    def test_the_sequence_and_the_count_come_from_one_read(self) -> None:
        """
        What the database held and where it was are read together: messages written after the
        read come after its sequence, and the feed from there brings them (read apart, the
        later sequence skipped them).
        """
        agent = RequestTraversalAgent(_Racing())
        db = Database("http://admin:pw@couch/db", agent)
        clock = Clock()
        routes = SimpleNamespace(all_loaded=lambda: True)
        dispatch = SimpleNamespace(room=lambda *args: True)
        shared = Shared(
            {},
            cast(Routes, routes),
            cast(Dispatch, dispatch),
            cast(Backlog, None),
            cast(Metrics, None),
            None,
            lambda: True,
            facts=ServerFacts(clock, ttl=0.0),
        )
        settings = Settings("gw", design_when_needed=True)
        tenant = Tenant(db, clock, shared, settings, cast(Owner, None), gone=lambda t: None)
        d = tenant.prepare(create=False, welcome={"couchdb": "Welcome", "version": "3.5.0"})
        agent.flush()
        self.successResultOf(d)
        self.assertEqual(tenant.claims.copies, 3)
        self.assertEqual(tenant.update_seq, "0-empty")
        self.assertFalse(tenant.holds_documents())
