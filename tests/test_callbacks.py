"""
Callbacks (webhooks) to a real HTTP receiver on a socket, from a gateway in this process.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import Site

from couchgw.connections import connection_pool
from couchgw.gateway import Gateway
from couchgw.gateway.callbacks import SIGNATURE_HEADER, Callbacks, signature
from couchgw.timing import Backoff, iso
from tests.test_gateway import GatewayTestCase

SECRET = b"callback-key"


def test_signature_is_hmac_sha256_of_the_body() -> None:
    body = b'{"_id": "m", "status": "forwarded"}'
    expected = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    assert signature(SECRET, body) == f"sha256={expected}"


def test_allowed_hosts() -> None:
    callbacks = Callbacks(Clock(), None, ["hooks.example.com", "*.corp.example", "127.0.0.1:8080"])  # type: ignore[arg-type]
    assert callbacks.refusal("https://hooks.example.com/x") is None
    assert callbacks.refusal("https://HOOKS.example.com:8443/x") is None
    assert callbacks.refusal("http://a.b.corp.example/") is None
    assert callbacks.refusal("http://127.0.0.1:8080/") is None
    assert callbacks.refusal("http://127.0.0.1:8081/") == (
        "host '127.0.0.1' is not one --callback-allow names"
    )
    assert callbacks.refusal("http://corp.example.evil/") is not None
    assert callbacks.refusal("http://hooks.example.com.evil/") is not None
    nobody = Callbacks(Clock(), None, "".split(","))  # type: ignore[arg-type]
    assert nobody.refusal("https://hooks.example.com/") is not None
    for other in ("file://hooks.example.com/etc/passwd", "ftp://hooks.example.com/", "gopher://x"):
        assert callbacks.refusal(other) == "only http:// and https:// URLs are called back"
    # a URL changed after the callback began is refused at its delivery too, unsent
    refused = callbacks.deliver({"_id": "m", "callback_url": "file://hooks.example.com/x"})
    assert refused.result == {  # type: ignore[attr-defined]
        "status": "refused",
        "attempts": 0,
        "error": "only http:// and https:// URLs are called back",
    }


class _Receiver(Resource):
    """Records each POST; answers with the next of C{codes} (200 once they are used up)."""

    isLeaf = True

    def __init__(self, codes: list[int]) -> None:
        super().__init__()
        self.codes = codes
        self.received: list[tuple[dict[str, Any], bytes, str | None]] = []

    def render_POST(self, request: Any) -> bytes:
        body = request.content.read()
        sig = request.getHeader(SIGNATURE_HEADER.lower())
        self.received.append((json.loads(body), body, sig))
        request.setResponseCode(self.codes.pop(0) if self.codes else 200)
        return b"{}"


class CallbackTests(GatewayTestCase):
    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        self.receiver = _Receiver([])
        port: Any = reactor.listenTCP(0, Site(self.receiver), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        pool = connection_pool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        self.callbacks = Callbacks(
            reactor,
            HTTPClient(Agent(reactor, pool=pool)),
            [f"127.0.0.1:{self.port}"],
            SECRET,
            attempts=3,
            backoff=Backoff(base=0.1, cap=0.2, floor=0.05),
        )

    def start(self) -> Gateway:
        return self.gateway(callbacks=self.callbacks)

    @inlineCallbacks
    def test_delivered_signed(self) -> Any:
        """The final document, signed; a 503 is tried again; the outcome is on the message."""
        self.receiver.codes = [503]
        gateway = self.start()
        yield self.ready(gateway)
        url = f"http://127.0.0.1:{self.port}/hook"
        yield self.db.put(
            {"_id": "m1", "type": "message", "operation": "ping", "text": "x", "callback_url": url}
        )
        doc = yield self.wait_for(self._callback("m1", "delivered"), what="the callback delivered")
        self.assertEqual((doc["callback"]["attempts"], doc["callback"]["code"]), (2, 200))
        self.assertEqual(len(self.receiver.received), 2)
        sent, body, sig = self.receiver.received[-1]
        self.assertEqual((sent["_id"], sent["status"], sent["result"]), ("m1", "forwarded", "x"))
        self.assertNotIn("callback", sent)
        self.assertEqual(sig, signature(SECRET, body))

    @inlineCallbacks
    def test_not_allowed_is_not_contacted(self) -> Any:
        gateway = self.start()
        yield self.ready(gateway)
        url = f"http://localhost:{self.port}/hook"  # the same receiver, by a name not allowed
        yield self.db.put(
            {"_id": "m2", "type": "message", "operation": "explode", "callback_url": url}
        )
        doc = yield self.terminal("m2")
        self.assertEqual(doc["status"], "rejected")
        self.assertEqual(
            doc["callback"],
            {
                "status": "refused",
                "attempts": 0,
                "error": "host 'localhost' is not one --callback-allow names",
            },
        )
        yield gateway.intake.sweep()
        self.assertEqual(self.receiver.received, [])

    @inlineCallbacks
    def test_given_up_after_every_attempt(self) -> Any:
        self.receiver.codes = [500, 500, 500, 500]
        gateway = self.start()
        yield self.ready(gateway)
        url = f"http://127.0.0.1:{self.port}/hook"
        yield self.db.put(
            {"_id": "m3", "type": "message", "operation": "ping", "callback_url": url}
        )
        doc = yield self.wait_for(self._callback("m3", "failed"), what="the callback given up")
        self.assertEqual(doc["callback"]["attempts"], 3)
        self.assertEqual(doc["callback"]["error"], "the callback URL answered HTTP 500")
        self.assertEqual(len(self.receiver.received), 3)

    @inlineCallbacks
    def test_left_pending_by_a_gateway_that_died(self) -> Any:
        """A delivery whose gateway died (pending, its time up) is made by the sweep."""
        url = f"http://127.0.0.1:{self.port}/hook"
        yield self.db.create()
        yield self.db.put(
            {
                "_id": "m4",
                "type": "message",
                "operation": "ping",
                "callback_url": url,
                "status": "forwarded",
                "result": "pong",
                "attempts": 1,
                "callback": {"status": "pending", "attempts": 0, "by": "dead", "until": iso(0)},
            }
        )
        gateway = self.start()
        doc = yield self.wait_for(self._callback("m4", "delivered"), what="the callback delivered")
        self.assertEqual(doc["callback"]["attempts"], 1)
        self.assertEqual(self.receiver.received[0][0]["result"], "pong")
        self.assertTrue(gateway.running)

    def _callback(self, doc_id: str, status: str) -> Any:
        @inlineCallbacks
        def check() -> Any:
            doc = yield self.db.get(doc_id)
            return doc if (doc.get("callback") or {}).get("status") == status else None

        return check
