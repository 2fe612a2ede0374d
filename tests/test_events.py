"""
Status events (SSE) over real sockets: the gateway, its HTTP API and the events hub in this
process, against the real PouchDB Server (or $COUCHGW_TEST_COUCH) and the demo SOAP service.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.web.server import Site

from couchgw.gateway import Gateway
from couchgw.web import api as api_module
from couchgw.web import events as events_module
from couchgw.web.api import API
from couchgw.web.events import Events
from tests.test_gateway import GatewayTestCase

ORDER = ["new", "dispatching", "retrying", "forwarded"]


class Subscription(Protocol):
    """
    An SSE client over a plain HTTP/1.0 connection: the events (their data, with the SSE id as
    C{event_id}) and comments read so far; C{ended} fires when the connection closes.
    """

    def __init__(self, path: str, headers: dict[str, str]) -> None:
        self.path = path
        self.headers = headers
        self.events: list[dict[str, Any]] = []
        self.comments: list[str] = []
        #: Events of other kinds than a message's status: (name, data).
        self.others: list[tuple[str | None, Any]] = []
        self.ended: Deferred[None] = Deferred()
        self.code: int | None = None
        self._buffer = b""

    def connectionMade(self) -> None:
        lines = [f"GET {self.path} HTTP/1.0", "Host: 127.0.0.1"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if self.code is None:
            if b"\r\n\r\n" not in self._buffer:
                return
            head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
            self.code = int(head.split(b" ", 2)[1])
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            fields: dict[str, str] = {}
            for line in block.decode().splitlines():
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(": ")
                    fields[name] = value
            if "data" in fields:
                data = json.loads(fields["data"])
                if fields.get("event") == "status":
                    self.events.append({**data, "event_id": fields.get("id")})
                else:
                    self.others.append((fields.get("event"), data))

    def connectionLost(self, reason: Any = None) -> None:
        self.ended.callback(None)

    def close(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    @property
    def statuses(self) -> list[str]:
        return [event["status"] for event in self.events]


class EventsTestCase(GatewayTestCase):
    timeout = 60

    def serve(self, gateway: Gateway) -> tuple[str, Events]:
        hub = Events(self.db, reactor, heartbeat=1.0, linger=0.5)
        hub.startService()
        self.addCleanup(hub.stopService)
        port: Any = reactor.listenTCP(  # type: ignore[attr-defined]
            0, Site(API(gateway, hub).app.resource()), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}", hub

    def subscribe(self, url: str, headers: dict[str, str] | None = None) -> Subscription:
        """Open a stream on a connection of its own (closed when the test ends)."""
        parts = urlsplit(url)
        sub = Subscription(parts.path + (f"?{parts.query}" if parts.query else ""), headers or {})
        connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", parts.port), sub)

        @inlineCallbacks
        def close() -> Any:
            if not sub.ended.called:
                if sub.transport is not None:
                    sub.close()
                yield sub.ended

        self.addCleanup(close)
        return sub

    @inlineCallbacks
    def test_subscribe_before_the_message_exists(self) -> Any:
        """The status sequence through forwarded, then the stream closes."""
        gateway = self.gateway()
        api, _ = self.serve(gateway)
        yield self.ready(gateway)
        sub = self.subscribe(f"{api}/messages/job-1/events")
        yield self.wait_for(lambda: sub.comments, what="the stream to open")
        self.assertEqual(sub.code, 200)
        self.assertIn("no such message yet: waiting for it", sub.comments)
        yield self.db.put(
            {"_id": "job-1", "type": "message", "operation": "activate", "args": ["n", 3]}
        )
        yield sub.ended
        self.assertEqual(sub.statuses[-1], "forwarded")
        self.assertIn("dispatching", sub.statuses)
        self.assertEqual(sub.statuses, sorted(set(sub.statuses), key=ORDER.index))
        self.assertEqual(sub.events[-1]["attempts"], 1)
        # a stream opened once the message is final says so and closes at once
        again = self.subscribe(f"{api}/messages/job-1/events")
        yield again.ended
        self.assertEqual(again.statuses, ["forwarded"])
        self.assertIsNone(again.events[0]["event_id"])  # read from the document: no sequence

    @inlineCallbacks
    def test_all_events_and_last_event_id(self) -> Any:
        """A client that reconnects with Last-Event-ID misses nothing and sees nothing twice."""
        gateway = self.gateway()
        api, hub = self.serve(gateway)
        yield self.ready(gateway)
        sub = self.subscribe(f"{api}/events")
        yield self.wait_for(lambda: sub.code == 200 and hub.feed is not None, what="subscribed")
        first = [{"_id": f"a{i}", "type": "message", "operation": "ping"} for i in range(3)]
        yield self.db.bulk_docs(first)
        yield self.wait_for(
            lambda: (
                {e["id"] for e in sub.events if e["status"] == "forwarded"} == {"a0", "a1", "a2"}
            ),
            what="three forwarded events",
        )
        sub.close()  # the client goes away
        yield sub.ended
        last = sub.events[-1]["event_id"]
        self.assertIsNotNone(last)
        second = [{"_id": f"b{i}", "type": "message", "operation": "ping"} for i in range(2)]
        yield self.db.bulk_docs(second)
        for doc in second:
            yield self.terminal(doc["_id"])
        yield self.wait_for(
            lambda: sum(e.status == "forwarded" and e.id[0] == "b" for e in hub.recent) == 2,
            what="the hub to hear the rest",
        )
        back = self.subscribe(f"{api}/events", {"Last-Event-ID": last})
        yield self.wait_for(
            lambda: {e["id"] for e in back.events if e["status"] == "forwarded"} == {"b0", "b1"},
            what=f"the missed events ({back.code}, {back.events}, {back.comments})",
        )
        self.assertEqual({e["id"][0] for e in back.events}, {"b"})
        pairs = [(e["id"], e["rev"]) for e in sub.events + back.events]
        self.assertEqual(len(pairs), len(set(pairs)))
        # a hub that no longer keeps them (here: a new one) reads them from CouchDB
        fresh = Events(self.db, reactor, heartbeat=1.0)
        self.addCleanup(fresh.stopService)
        caught, _, more = yield fresh.page(last)
        self.assertFalse(more)
        self.assertEqual(
            {(e.id, e.status) for e in caught if e.status == "forwarded"},
            {("b0", "forwarded"), ("b1", "forwarded")},
        )
        self.assertEqual({e.id[0] for e in caught}, {"b"})

    @inlineCallbacks
    def test_many_idle_subscribers_share_one_feed(self) -> Any:
        """Subscribers cost no CouchDB feed and no timer each; the feed closes when they go."""
        gateway = self.gateway()
        api, hub = self.serve(gateway)
        yield self.ready(gateway)
        timers = len(reactor.getDelayedCalls())
        subs = [self.subscribe(f"{api}/messages/idle-{i}/events") for i in range(100)]
        yield self.wait_for(lambda: all(s.comments for s in subs), what="100 streams open")
        self.assertEqual((hub.listeners, len(hub.streams)), (100, 100))
        feed = hub.feed
        self.assertIsNotNone(feed)
        # not one timer per subscriber (the few new ones: idle kept-alive CouchDB connections)
        self.assertLess(len(reactor.getDelayedCalls()) - timers, 50)
        for sub in subs:
            sub.close()
        yield self.wait_for(lambda: hub.listeners == 0, what="the subscribers to go")
        yield self.wait_for(lambda: hub.feed is None, what="the feed to close")
        self.assertEqual(feed.state, "stopped")


class CatchUp(EventsTestCase):
    @inlineCallbacks
    def test_a_long_catch_up_is_paged_and_capped(self) -> Any:
        """
        A client far behind gets what it missed a page at a time, and a bounded number of
        changes: then a gap event, and the live events.
        """
        self.patch(events_module, "PAGE", 4)
        self.patch(api_module, "CATCH_UP_MAX", 10)
        gateway = self.gateway()
        api, hub = self.serve(gateway)
        yield self.ready(gateway)
        docs = [{"_id": f"c{i:02d}", "type": "message", "operation": "ping"} for i in range(30)]
        yield self.db.bulk_docs(docs)
        for doc in docs:
            yield self.terminal(doc["_id"])
        pages: list[Any] = []
        real = hub.page

        def page(since: Any, limit: int | None = None) -> Any:
            pages.append(since)
            return real(since, limit)

        self.patch(hub, "page", page)
        sub = self.subscribe(f"{api}/events?since=0")
        yield self.wait_for(lambda: sub.others, what="the gap event")
        name, gap = sub.others[0]
        self.assertEqual((name, gap["since"]), ("gap", "0"))
        self.assertEqual(len(sub.events), 12)  # three pages of four, the cap of ten passed
        self.assertEqual(len(pages), 3)
        ids = [event["id"] for event in sub.events]
        self.assertEqual(len(ids), len(set(ids)))
        yield self.db.put({"_id": "live", "type": "message", "operation": "ping"})
        yield self.wait_for(
            lambda: any(e["id"] == "live" and e["status"] == "forwarded" for e in sub.events),
            what="the live events after the gap",
        )
