"""
What a look at a database reads in one request (its couchgw design documents, how many others
it holds, its sequence), and how many nodes the server has: on the real test server.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent

from couchgw.couch import design
from couchgw.couch.client import Database
from couchgw.gateway.facts import ServerFacts
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
        found = yield design.read_ours(self.db)
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
        again = yield design.read_ours(self.db)
        self.assertEqual(sorted(again.docs), sorted(design.DOCS))
        self.assertEqual((yield design.push(self.db, found=again)), [])


class Nodes(TestCase):
    @inlineCallbacks
    def test_the_nodes_of_the_server_to_an_admin_alone(self) -> Any:
        db = Database(f"{couch_url()}/anything", Agent(reactor))
        facts = ServerFacts(Clock(), ttl=0.0)
        nodes = yield facts.nodes(db)
        if is_pouchdb():
            self.assertIsNone(nodes)
        else:
            self.assertEqual(nodes, len(http("GET", f"{couch_url()}/_membership")[1]["all_nodes"]))
        anyone = yield facts.nodes(db.anonymous())
        self.assertIsNone(anyone)
        self.assertIsNone(db.refused)
