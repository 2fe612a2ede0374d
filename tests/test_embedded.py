"""The embedded CouchDB: PouchDB Server as a supervised child process."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectError
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent

from couchgw.couch.client import Database
from couchgw.embedded import EmbeddedCouch
from tests.servers import free_port, http, start_pouchdb, stop


class EmbeddedCouchTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def answers(self, url: str) -> Any:
        try:
            response = yield treq.get(url, persistent=False, timeout=2)
            yield response.content()
        except Exception:
            return False
        return response.code == 200

    @inlineCallbacks
    def wait_for(self, check: Any, what: str, timeout: float = 30.0) -> Any:
        deadline = reactor.seconds() + timeout
        while reactor.seconds() < deadline:
            ok = yield check()
            if ok:
                return ok
            yield deferLater(reactor, 0.1, lambda: None)
        self.fail(f"timed out waiting for {what}")

    @inlineCallbacks
    def test_restarted_when_it_dies_and_stopped_with_the_service(self) -> Any:
        folder = tempfile.mkdtemp(prefix="couchgw-embedded-")
        self.addCleanup(shutil.rmtree, folder, True)
        couch = EmbeddedCouch(reactor, folder, free_port(), in_memory=True)
        couch.startService()
        yield self.wait_for(lambda: self.answers(couch.url), "PouchDB Server to answer")
        couch.kill()
        yield self.wait_for(lambda: couch.restarts == 1, "the restart")
        yield self.wait_for(lambda: self.answers(couch.url), "PouchDB Server to answer again")
        yield couch.stopService()
        up = yield self.answers(couch.url)
        self.assertFalse(up)
        self.assertEqual(couch.restarts, 1)

    def embedded(self, port: int) -> EmbeddedCouch:
        folder = tempfile.mkdtemp(prefix="couchgw-embedded-")
        self.addCleanup(shutil.rmtree, folder, True)
        couch = EmbeddedCouch(reactor, folder, port, in_memory=True)
        couch.startService()
        self.addCleanup(couch.stopService)
        return couch

    @inlineCallbacks
    def test_the_child_is_known_by_its_token(self) -> Any:
        couch = self.embedded(free_port())
        db = Database(f"{couch.url}/messages", couch.agent(Agent(reactor)))
        created = yield db.create()
        self.assertTrue(created)
        self.assertTrue(couch.verified)
        welcome = yield db.welcome()
        self.assertEqual(welcome["vendor"]["couchgw"], couch.token)

    @inlineCallbacks
    def test_a_server_it_did_not_start_is_never_used(self) -> Any:
        """
        Another server holds the port: the child cannot listen there, and no request of
        couchgw's reaches that server; the error says whose the port is and what to do.
        """
        port = free_port()
        stranger, process = start_pouchdb(port)
        self.addCleanup(stop, process)
        couch = self.embedded(port)
        # (the request fails as soon as the stranger is known: the wait only bounds it)
        db = Database(f"{couch.url}/messages", couch.agent(Agent(reactor), wait=30.0))
        error = yield self.assertFailure(db.create(), ConnectError)
        self.assertIn("a server couchgw did not start answers on 127.0.0.1", str(error))
        self.assertIn("--couch", str(error))
        self.assertFalse(couch.verified)
        self.assertNotIn("messages", http("GET", f"{stranger}/_all_dbs")[1])
