"""The embedded CouchDB: PouchDB Server as a supervised child process."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from couchgw.embedded import EmbeddedCouch
from tests.servers import free_port


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
