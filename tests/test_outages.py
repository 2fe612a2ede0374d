"""
Outages of a route's target, against a real HTTP target that drops connections, answers 503,
or does not answer at all for a while.  An outage costs the messages no attempts: the route's
breaker opens, probes with one call at a time, and once the target is back every message is
forwarded, answered once.  A short outage lasts a few probes, a long one thirty (its backoffs
long at their cap); a short backoff cap makes the long one take seconds.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from couchgw.connections import agent, connection_pool
from couchgw.gateway import Gateway, Policy
from couchgw.targets.http import HttpTarget
from tests.test_gateway import GatewayTestCase


class _Flaky(Resource):
    """A JSON target that answers, or (by C{mode}) drops calls, answers 503, or never answers."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.mode = "up"
        #: Calls answered, by message id.
        self.answered: Counter[str] = Counter()
        self.failed = 0
        self._hung: list[Request] = []

    def render_POST(self, request: Request) -> Any:
        message_id = json.loads(request.content.read())["id"]  # type: ignore[union-attr]
        if self.mode == "up":
            self.answered[message_id] += 1
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"id": message_id}).encode()
        self.failed += 1
        if self.mode == "drop":
            request.transport.abortConnection()  # type: ignore[attr-defined]
            return NOT_DONE_YET
        if self.mode == "silent":
            self._hung.append(request)
            return NOT_DONE_YET
        request.setResponseCode(503)
        request.setHeader(b"connection", b"close")
        return b"down for maintenance"

    def up(self) -> None:
        self.mode = "up"
        for request in self._hung:  # never answered: the gateway gave up on them
            request.transport.abortConnection()  # type: ignore[attr-defined]
        self._hung.clear()


class Outages(GatewayTestCase):
    timeout = 300

    def flaky(self) -> tuple[str, _Flaky]:
        resource = _Flaky()
        return self.serve_http(resource), resource

    def http_gateway(self, url: str) -> Gateway:
        pool = connection_pool(reactor, 20)
        self.addCleanup(pool.closeCachedConnections)
        target = HttpTarget(
            "default", url, reactor, agent(reactor, pool), concurrency=20, timeout=0.5
        )
        gateway = Gateway(
            self.db,
            {"default": target},
            reactor,
            # a short backoff cap: an outage of some seconds holds as many probes as one of
            # minutes with the default cap
            policies={"default": Policy(backoff=0.05, backoff_max=0.2)},
            heartbeat=1.0,
            sweep_interval=1.0,
            announce=1.0,
        )
        gateway.startService()
        self.addCleanup(lambda: gateway.stopService() if gateway.running else None)
        return gateway

    @inlineCallbacks
    def outage(self, mode: str, probes: int, prefix: str) -> Any:
        """200 messages; the target out (C{mode}) until the route has probed it C{probes} times."""
        url, target = self.flaky()
        gateway = self.http_gateway(url)
        yield self.ready(gateway)
        ids = [f"{prefix}{i:03d}" for i in range(200)]
        target.mode = mode
        yield self.db.bulk_docs(
            [{"_id": doc_id, "type": "message", "operation": "ping"} for doc_id in ids]
        )
        yield self.wait_for(
            lambda: any("route default out:" in p for p in gateway.problems()),
            what="the route to be reported out",
        )
        self.assertEqual(gateway.route("default")["state"], "out")
        failed_at_open = target.failed
        yield self.wait_for(
            lambda: target.failed >= failed_at_open + probes, 120, f"{probes} probes"
        )
        breaker = gateway.dispatch.breakers["default"]
        self.assertEqual(breaker.opened, 1)
        target.up()
        docs = []
        for doc_id in ids:
            doc = yield self.terminal(doc_id, 120)
            docs.append(doc)
        self.assertEqual(Counter(doc["status"] for doc in docs), {"forwarded": len(ids)})
        self.assertEqual(sorted(target.answered), ids)
        self.assertEqual(set(target.answered.values()), {1})
        # the outage cost no attempts: only the first failure of the run was a message's own
        self.assertLessEqual(sum(doc["attempts"] - 1 for doc in docs), 1)
        self.assertGreater(target.failed, 2)  # it was probed
        yield gateway.stopService()

    @inlineCallbacks
    def test_dropped_connections(self) -> Any:
        yield self.outage("drop", 3, "drop-short")
        yield self.outage("drop", 30, "drop-long")

    @inlineCallbacks
    def test_503(self) -> Any:
        yield self.outage("503", 3, "503-short")
        yield self.outage("503", 30, "503-long")

    @inlineCallbacks
    def test_no_answer(self) -> Any:
        yield self.outage("silent", 3, "silent-short")
        yield self.outage("silent", 30, "silent-long")
