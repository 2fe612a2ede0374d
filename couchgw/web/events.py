"""
Status events for subscribers (Server-Sent Events), all served from one changes feed.

The feed of every message's changes is opened when the first subscriber comes, and closed a
while after the last one left; subscribers themselves cost a small object and a connection each.
Each event carries the change's sequence as its SSE id, so a client that reconnects with
C{Last-Event-ID} gets what it missed: from the recent events kept in memory, or else from the
C{_changes} feed since that sequence, read a page of L{PAGE} changes at a time as the client
reads them (so that no request decodes much on the reactor; L{CATCH_UPS} pages at once for all
the clients catching up, each page's events sent in slices of the reactor's time), and
L{CATCH_UP_MAX} changes at most: beyond, a C{gap} event tells the client to read the documents
again.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import treq
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredSemaphore, inlineCallbacks, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from couchgw.couch import design
from couchgw.couch.client import Database, supports_selector
from couchgw.couch.errors import error_for
from couchgw.couch.feed import Change, ChangesFeed

log = Logger()


class Subscriber(Protocol):
    """A subscriber's open stream (L{couchgw.web.streams.Stream}), as its hub keeps it alive."""

    def comment(self, text: bytes) -> None: ...

    def close(self) -> None: ...


#: Changes a catch-up reads at once (their documents are decoded at once, on the reactor).
PAGE = 100
#: The bytes of a page read at most: a larger answer is read again in a page half as long.
PAGE_BYTES = 4 * 1024 * 1024
#: Changes a catch-up replays at most (beyond, a C{gap} event).
CATCH_UP_MAX = 10000
#: Catch-up pages of one hub read at once.
CATCH_UPS = 2

#: The fields of a message an event carries (the rest: read the document).
EVENT_FIELDS = (
    "status",
    "attempts",
    "error",
    "target",
    "operation",
    "priority",
    "not_before",
    "expires_at",
    "next_attempt_at",
    "dispatched_at",
    "completed_at",
    "updated_at",
    "callback",
)


@dataclass(frozen=True)
class Event:
    """A message's state after one change."""

    #: The change's sequence (None for a state read from the document itself).
    seq: Any
    id: str
    rev: str
    data: dict[str, Any] = field(hash=False, compare=False)

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @property
    def generation(self) -> int:
        try:
            return int(self.rev.split("-", 1)[0])
        except ValueError:
            return 0

    def encode(self) -> bytes:
        """The event as SSE: C{id:} (the sequence, when there is one), C{event:}, C{data:}."""
        head = f"id: {_seq_text(self.seq)}\n" if self.seq is not None else ""
        return f"{head}event: status\ndata: {json.dumps(self.data)}\n\n".encode()


def event_of(doc: Mapping[str, Any], seq: Any = None) -> Event:
    """The event that says where a message stands (C{"new"} while it has no status)."""
    data = {"id": doc["_id"], "rev": doc.get("_rev")}
    for name in EVENT_FIELDS:
        if doc.get(name) is not None:
            data[name] = doc[name]
    data["status"] = doc.get("status") or "new"
    if seq is not None:
        data["seq"] = seq
    return Event(seq, str(doc["_id"]), str(doc.get("_rev", "")), data)


def _seq_text(seq: Any) -> str:
    return seq if isinstance(seq, str) else json.dumps(seq)


Listener = Callable[[Event], None]


class Events(Service):
    """
    The hub: one changes feed of all messages, fanned out to listeners.

    @param keep: recent events kept for clients that reconnect.
    @param linger: seconds the feed stays open after the last listener left.
    """

    def __init__(
        self,
        db: Database,
        clock: IReactorTime,
        heartbeat: float = 10.0,
        keep: int = 10000,
        linger: float = 60.0,
        max_line: int = 2 * 1024 * 1024,
    ) -> None:
        self.db = db
        self.clock = clock
        self.heartbeat = heartbeat
        self.linger = linger
        self.max_line = max_line
        self.recent: deque[Event] = deque(maxlen=keep)
        #: Catch-up pages read and decoded at once (the others wait their turn: the reactor
        #: decodes one page at a time, whatever the number of clients catching up).
        self.pages = DeferredSemaphore(CATCH_UPS)
        self.feed: ChangesFeed | None = None
        self._listeners: dict[str | None, set[Listener]] = {}
        self._opening: Deferred[None] | None = None
        self._waiters: list[Deferred[None]] = []
        self._idle: IDelayedCall | None = None
        self._params: tuple[dict[str, Any], Any] | None = None
        self.streams: set[Subscriber] = set()  # (the streams of its subscribers)
        self._keepalive = LoopingCall(self._ping)
        self._keepalive.clock = clock

    @property
    def listeners(self) -> int:
        return sum(len(found) for found in self._listeners.values())

    @inlineCallbacks
    def listen(self, listener: Listener, doc_id: str | None = None) -> Any:
        """
        Call C{listener} with each event (of C{doc_id} only, when given).  Fires once every
        change from now on will be heard; answers a function that stops listening.
        """
        self._listeners.setdefault(doc_id, set()).add(listener)
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

        def stop() -> None:
            found = self._listeners.get(doc_id)
            if found is not None:
                found.discard(listener)
                if not found:
                    del self._listeners[doc_id]
            if not self._listeners and self.feed is not None and self._idle is None:
                self._idle = self.clock.callLater(self.linger, self._close)

        try:
            yield self._open()
        except BaseException:
            stop()
            raise
        return stop

    def _open(self) -> Deferred[None]:
        """Fires once the feed is open (each caller waits on a Deferred of its own)."""
        if self.feed is not None:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self._waiters.append(waiting)
        if self._opening is None:
            self._opening = self._start()
            self._opening.addBoth(self._opened)
        return waiting

    def _opened(self, result: Any) -> None:
        self._opening = None
        waiters, self._waiters = self._waiters, []
        for waiting in waiters:
            if waiting.called:
                continue  # its caller gave up
            if isinstance(result, Failure):
                waiting.errback(result)
            else:
                waiting.callback(None)

    @inlineCallbacks
    def _start(self) -> Any:
        """Open the feed from the database's current sequence."""
        if self._params is None:
            welcome = yield self.db.welcome()
            if supports_selector(welcome):
                self._params = ({"filter": "_selector"}, {"selector": {"type": "message"}})
            else:
                self._params = ({"filter": f"{design.DDOC}/messages"}, None)
        info = yield self.db.info()
        params, body = self._params
        self.feed = ChangesFeed(
            self.db,
            self._changed,
            self.clock,
            {**params, "include_docs": "true"},
            body,
            since=info.get("update_seq"),
            heartbeat=self.heartbeat,
            max_line=self.max_line,
        )
        self.feed.start()
        if not self._keepalive.running:
            self._keepalive.start(15, now=False)

    def _close(self) -> None:
        self._idle = None
        if self.feed is not None and not self._listeners:
            self.feed.stop()
            self.feed = None
            self.recent.clear()  # it would have a gap: reconnecting clients catch up from CouchDB

    def _changed(self, change: Change) -> None:
        doc = change.get("doc")
        if not isinstance(doc, dict) or "_id" not in doc:
            return  # deleted, or too large to read: nothing to say about its status
        event = event_of(doc, change.get("seq"))
        self.recent.append(event)
        for key in (None, event.id):
            for listener in list(self._listeners.get(key, ())):
                listener(event)

    def since(self, last_id: str) -> list[Event] | None:
        """The events after the one whose SSE id is C{last_id}, if it is still kept."""
        found = None
        for index, event in enumerate(self.recent):
            if event.seq is not None and _seq_text(event.seq) == last_id:
                found = index
        if found is None:
            return None
        return list(self.recent)[found + 1 :]

    @inlineCallbacks
    def page(self, since: Any, limit: int | None = None) -> Any:
        """
        The events of the changes after C{since}, a page of at most C{limit} read from the
        C{_changes} feed (shorter when the documents are large): answers C{(events, the
        sequence to read on from, whether there may be more)}.
        """
        yield self._open()
        assert self._params is not None
        params, body = self._params
        limit = limit or PAGE
        while True:
            query = {**params, "include_docs": "true", "since": since, "limit": limit}
            method = "GET" if body is None else "POST"
            response = yield self.db.request(method, "_changes", body, query)
            chunks: list[bytes] = []
            read = {"bytes": 0}

            def collect(data: bytes, chunks: list[bytes] = chunks, read: Any = read) -> None:
                chunks.append(data)
                read["bytes"] += len(data)
                if read["bytes"] > PAGE_BYTES:
                    raise _TooLarge()

            try:
                yield treq.collect(response, collect)
            except _TooLarge:
                if limit > 1:
                    limit = max(1, limit // 2)
                    continue
                return [], since, False  # one change larger than a page: no more to say
            raw = b"".join(chunks)
            decoded = json.loads(raw) if raw else {}
            if response.code >= 400:
                raise error_for(response.code, decoded, f"{method} _changes")
            rows = decoded.get("results", [])
            events = [
                event_of(row["doc"], row.get("seq"))
                for row in rows
                if isinstance(row.get("doc"), dict) and "_id" in row["doc"]
            ]
            return events, decoded.get("last_seq", since), len(rows) >= limit

    def _ping(self) -> None:
        for stream in list(self.streams):
            stream.comment(b"keep-alive")

    def stopService(self) -> Any:
        super().stopService()
        if self._keepalive.running:
            self._keepalive.stop()
        for stream in list(self.streams):
            stream.close()
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        if self._opening is not None:
            self._opening.cancel()
        if self.feed is not None:
            self.feed.stop()
            self.feed = None
        return None


class _TooLarge(Exception):
    pass


class Hubs(Service):
    """
    The hubs of the databases served: the one of a gateway that serves one database; in a
    fleet, one for each database that has subscribers, made when the first comes (each closes
    its feed a while after its last subscriber left).

    @param database: the database of a name (None: the one database served), or None when it
        is not one served.
    """

    def __init__(
        self,
        database: Callable[[str | None], Database | None],
        clock: IReactorTime,
        heartbeat: float = 10.0,
        max_line: int = 2 * 1024 * 1024,
        most: int = 1000,
    ) -> None:
        self._database = database
        self.clock = clock
        self.heartbeat = heartbeat
        self.max_line = max_line
        self.most = most
        self.hubs: dict[str | None, Events] = {}

    def database(self, name: str | None = None) -> Database | None:
        """The database of a name, if it is one served (None: the one database served)."""
        return self._database(name)

    def hub(self, name: str | None = None) -> Events | None:
        """The hub of a database served (None: it is not one)."""
        found = self.hubs.get(name)
        if found is not None:
            return found
        db = self._database(name)
        if db is None:
            return None
        if len(self.hubs) >= self.most:  # forget those nobody listens to
            for key, hub in list(self.hubs.items()):
                if not hub.listeners and hub.feed is None:
                    hub.stopService()
                    del self.hubs[key]
        hub = Events(db, self.clock, heartbeat=self.heartbeat, max_line=self.max_line)
        if self.running:
            hub.startService()
        self.hubs[name] = hub
        return hub

    def startService(self) -> None:
        super().startService()
        for hub in self.hubs.values():
            hub.startService()

    def stopService(self) -> Any:
        super().stopService()
        for hub in self.hubs.values():
            hub.stopService()
        return None

    @property
    def streams(self) -> int:
        return sum(len(hub.streams) for hub in self.hubs.values())
