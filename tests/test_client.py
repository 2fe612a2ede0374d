"""The CouchDB client's requests as they go out, and a server that never answers."""

from __future__ import annotations

import json
from base64 import b64decode
from typing import Any

import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import Request

from couchgw.couch.client import Database
from couchgw.couch.errors import Conflict, NotFound


class _Recorder(Resource):
    """Records each request; answers 404 for C{/db/missing}, 409 for C{/db/taken}."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes, dict[bytes, bytes], bytes]] = []

    def render(self, request: Request) -> bytes:
        headers = {
            name.lower(): values[0] for name, values in request.requestHeaders.getAllRawHeaders()
        }
        body = request.content.read() if request.content else b""
        self.seen.append((request.method, request.uri, headers, body))
        request.setHeader(b"content-type", b"application/json")
        if request.path == b"/db/missing":
            request.setResponseCode(404)
            return b'{"error":"not_found","reason":"missing"}'
        if request.path == b"/db/taken":
            request.setResponseCode(409)
            return b'{"error":"conflict","reason":"Document update conflict."}'
        request.setResponseCode(201 if request.method == b"PUT" else 200)
        return json.dumps({"ok": True, "method": request.method.decode()}).encode()


class Requests(SynchronousTestCase):
    def setUp(self) -> None:
        self.couch = _Recorder()
        self.agent = RequestTraversalAgent(self.couch)

    def answered(self, d: Any) -> Any:
        self.agent.flush()
        return self.successResultOf(d)

    def test_a_write_carries_its_json_and_the_credentials(self) -> None:
        db = Database("http://gw:s3cret@couch/db", self.agent)
        doc = {"_id": "m1", "type": "message", "args": {"text": "é"}}
        self.assertEqual(self.answered(db.write(doc, w=2)), (201, {"ok": True, "method": "PUT"}))
        [(method, uri, headers, body)] = self.couch.seen
        self.assertEqual((method, uri), (b"PUT", b"/db/m1?w=2"))
        self.assertEqual(json.loads(body), doc)
        self.assertEqual(headers[b"content-type"], b"application/json")
        self.assertEqual(headers[b"accept"], b"application/json")
        scheme, token = headers[b"authorization"].split(b" ")
        self.assertEqual((scheme, b64decode(token)), (b"Basic", b"gw:s3cret"))
        # nothing CouchDB's API does not need: no compression asked for, no cookies
        self.assertNotIn(b"accept-encoding", headers)
        self.assertNotIn(b"cookie", headers)

    def test_a_read_has_no_body_and_the_same_credentials_go_to_a_sibling(self) -> None:
        db = Database("http://gw:s3cret@couch/db", self.agent).sibling("other db")
        self.answered(db.get("_design/couchgw", conflicts=True))
        [(method, uri, headers, body)] = self.couch.seen
        self.assertEqual((method, uri), (b"GET", b"/other%20db/_design/couchgw?conflicts=true"))
        self.assertEqual(body, b"")
        self.assertNotIn(b"content-type", headers)
        self.assertIn(b"authorization", headers)

    def test_anonymous_requests_carry_no_credentials(self) -> None:
        db = Database("http://gw:s3cret@couch/db", self.agent).anonymous()
        self.answered(db.info())
        [(_, _, headers, _)] = self.couch.seen
        self.assertNotIn(b"authorization", headers)

    def test_errors_are_typed(self) -> None:
        db = Database("http://couch/db", self.agent)
        d = db.get("missing")
        self.agent.flush()
        self.failureResultOf(d, NotFound)
        d = db.put({"_id": "taken", "_rev": "1-a"})
        self.agent.flush()
        self.failureResultOf(d, Conflict)


class _Silent(Protocol):
    """Takes the connection and never answers."""


class Timeout(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_a_server_that_never_answers_is_given_up_on(self) -> Any:
        port = reactor.listenTCP(0, Factory.forProtocol(_Silent), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        db = Database(f"http://127.0.0.1:{port.getHost().port}/db", Agent(reactor), timeout=0.2)
        with pytest.raises(ResponseNeverReceived) as given_up:
            yield db.get("m1")
        [reason] = given_up.value.reasons
        self.assertTrue(reason.check(CancelledError))
