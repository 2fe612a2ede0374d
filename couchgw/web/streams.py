"""
One subscriber's event stream (Server-Sent Events) on an HTTP request, with backpressure: what
the client has not read yet waits, up to a limit.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import cooperate
from twisted.logger import Logger
from zope.interface import implementer

from couchgw.errors import describe_error
from couchgw.web.events import CATCH_UP_MAX, Event, Events, Subscriber

log = Logger()


@implementer(IPushProducer)
class Stream:
    """
    One subscriber's event stream on an HTTP request.  While the client reads slower than
    events come, they queue; past C{limit} the stream is closed (the client reconnects with
    C{Last-Event-ID} and catches up).
    """

    def __init__(self, request: Any, hub: Events | None, limit: int = 1000) -> None:
        self.request = request
        self.hub = hub
        self.limit = limit
        self.done: Deferred[None] = Deferred()
        self._paused = False
        self._queue: deque[bytes] = deque()
        self._room: list[Deferred[None]] = []
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.registerProducer(self, True)
        #: The streams of the hub (None: a stream of the gateway's state alone).
        self._streams: set[Subscriber] = hub.streams if hub is not None else set()
        self._streams.add(self)
        request.write(b"retry: 2000\n\n")  # the headers go now: the client knows it is heard

    def send(self, event: Event) -> None:
        self._write(event.encode())

    def event(self, name: str, data: Any) -> None:
        """An event of another kind than a message's status (no id: not replayed)."""
        self._write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

    def comment(self, text: bytes) -> None:
        self._write(b": " + text + b"\n\n")

    def _write(self, data: bytes) -> None:
        if self.done.called:
            return
        if self._paused:
            self._queue.append(data)
            if len(self._queue) > self.limit:
                self.close()
            return
        self.request.write(data)

    def room(self) -> Deferred[None]:
        """A Deferred that fires once the client has read most of what waits for it."""
        if self.done.called or len(self._queue) < self.limit // 4:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._room.append(waiter)
        return waiter

    def close(self) -> None:
        """End the stream (the handler's Deferred fires; Klein finishes the request)."""
        if not self.done.called:
            self._streams.discard(self)
            self.request.unregisterProducer()
            self.done.callback(None)
            self._free()

    def _free(self) -> None:
        waiting, self._room = self._room, []
        for waiter in waiting:
            waiter.callback(None)

    def lost(self) -> None:
        """The client went away."""
        self._streams.discard(self)
        self._queue.clear()
        self._free()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        while self._queue and not self._paused and not self.done.called:
            self.request.write(self._queue.popleft())
        if len(self._queue) < self.limit // 4:
            self._free()

    def stopProducing(self) -> None:
        self.lost()


@inlineCallbacks
def catch_up(
    hub: Events,
    stream: Stream,
    since: str,
    deliver: Callable[[Event], None],
    seen: set[tuple[str, str]],
    most: int = CATCH_UP_MAX,
) -> Any:
    """
    The events since C{since} from CouchDB, a page at a time as the client reads them, and
    C{most} at most (then a C{gap} event: the client reads the documents again).
    """
    replayed = 0
    at: Any = since
    while not stream.done.called:
        try:
            events, at, more = yield hub.pages.run(hub.page, at)
        except Exception as e:
            log.warn("cannot catch up with the events: {error}", error=describe_error(e))
            stream.close()
            return
        # a slice of the reactor's time at a time (the other streams and requests go between)
        yield cooperate(_delivered(events, deliver, seen)).whenDone()
        replayed += len(events)
        if not more:
            return
        if replayed >= most:
            stream.event(
                "gap",
                {
                    "since": since,
                    "replayed": replayed,
                    "reason": f"more than {most} changes since then: read the documents again",
                },
            )
            return
        yield stream.room()


def _delivered(
    events: list[Event], deliver: Callable[[Event], None], seen: set[tuple[str, str]]
) -> Iterator[None]:
    for event in events:
        deliver(event)
        seen.add((event.id, event.rev))
        yield None
