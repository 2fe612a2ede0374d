"""
The changes-feed consumer: follows a database's continuous C{_changes} feed for ever.

It reconnects with capped exponential backoff and jitter after an error, after the end of the
stream, and when nothing (not even a heartbeat) arrived for twice the heartbeat interval.  It
resumes from the last sequence it received.  L{ChangesFeed.pause} stops reading the socket
(backpressure); changes already read wait in a small queue until L{ChangesFeed.resume}.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from couchgw.couch.client import Database
from couchgw.couch.errors import error_for
from couchgw.couch.framing import HEAD, TAIL, LineFramer, Oversize
from couchgw.timing import Backoff

log = Logger()

Change = dict[str, Any]


_LOST = Failure(ConnectionError("connection lost"))


class _FeedProtocol(Protocol):
    def __init__(self, feed: ChangesFeed) -> None:
        self._feed = feed

    def dataReceived(self, data: bytes) -> None:
        self._feed._data(self, data)

    def connectionLost(self, reason: Failure = _LOST) -> None:
        self._feed._lost(self, reason)


class _Discard(Protocol):
    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


class ChangesFeed:
    """
    @param db: the database to follow.
    @param on_change: called with each change (a dict with C{seq}, C{id}, C{doc}, ...).
    @param filter_params: the filter, as C{_changes} parameters (e.g. C{{"filter": "ddoc/name"}}).
    @param filter_body: a request body (a C{_selector} filter's selector), or L{None}.
    @param since: where to start.
    @param heartbeat: seconds between the server's heartbeats.
    @param on_missing: called when the feed answers 404 (the database is gone); the feed
        keeps trying to reconnect.
    @param path: what to follow: the database's C{_changes}, or the server's C{/_db_updates}.
    @param once: read what there is, and end: the server ends the stream once no change came
        for these seconds (C{on_end} is called when every change it sent was passed on).
    @param max_line: the longest change (in bytes) decoded.  A longer one, or one nested too
        deeply to decode, is passed on without its document, as C{{"seq", "id", "changes",
        "unreadable": "too large" or "too deep"}}.
    """

    def __init__(
        self,
        db: Database,
        on_change: Callable[[Change], object],
        clock: IReactorTime,
        filter_params: dict[str, Any],
        filter_body: Any = None,
        since: Any = None,
        heartbeat: float = 10.0,
        backoff: Backoff | None = None,
        max_line: int = 16 * 1024 * 1024,
        on_missing: Callable[[], object] | None = None,
        path: str = "_changes",
        once: float | None = None,
        on_end: Callable[[], object] | None = None,
    ) -> None:
        self._db = db
        self._on_change = on_change
        self._clock = clock
        self._filter_params = filter_params
        self._filter_body = filter_body
        self.since = since
        self.heartbeat = heartbeat
        self.backoff = backoff or Backoff()
        #: C{stopped}, C{connecting}, C{connected} or C{waiting} (to reconnect).
        self.state = "stopped"
        self.last_error: str | None = None
        self.reconnects = 0
        self.last_data_at: float | None = None
        #: When it last connected (this clock).
        self.connected_at: float | None = None
        self.max_line = max_line
        self._on_missing = on_missing
        self._path = path
        self.once = once
        self._on_end = on_end
        #: Whether the server ended the stream (a feed read C{once}): it ends once drained; and
        #: whether the stream came to its end (its C{last_seq}), not broken off before.
        self._ended = False
        self._complete = False
        self._framer = LineFramer(max_line)
        self._queue: deque[bytes | Oversize] = deque()
        self._paused = False
        self._protocol: _FeedProtocol | None = None
        self._transport: IPushProducer | None = None
        self._request: Deferred[IResponse] | None = None
        self._timer: IDelayedCall | None = None

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self.state == "stopped":
            self._connect()

    def stop(self) -> None:
        self.state = "stopped"
        self._cancel_timer()
        if self._request is not None:
            self._request.cancel()
        self._drop()

    def pause(self) -> None:
        """Stop reading the socket; changes already read wait until L{resume}."""
        if not self._paused:
            self._paused = True
            if self._transport is not None:
                self._transport.pauseProducing()

    def resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        self._drain()
        if not self._paused and self._transport is not None:
            self.last_data_at = self._clock.seconds()
            self._transport.resumeProducing()

    @property
    def paused(self) -> bool:
        return self._paused

    # -- connection ------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The feed's state as plain JSON."""
        return {
            "state": self.state,
            "paused": self.paused,
            "since": self.since,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }

    @inlineCallbacks
    def lag(self, most: int = 10000) -> Any:
        """
        Changes of the database after the last one this feed read: CouchDB says how many are
        pending; elsewhere they are counted (up to C{most}).  None before the first.
        """
        if self.since is None:
            return None
        since = self.since
        result = yield self._db.json("GET", "_changes", params={"since": since, "limit": 1})
        if isinstance(result.get("pending"), int):
            return result["pending"] + len(result.get("results", []))
        result = yield self._db.json("GET", "_changes", params={"since": since, "limit": most})
        return len(result.get("results", []))

    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"feed": "continuous", "include_docs": "true"}
        if self.once is None:
            params["heartbeat"] = int(self.heartbeat * 1000)
        else:  # (a heartbeat would keep it open for ever)
            params["timeout"] = max(1, int(self.once * 1000))
        params.update(self._filter_params)
        if self.since is not None:
            params["since"] = self.since
        return params

    def _connect(self) -> None:
        self.state = "connecting"
        self._framer = LineFramer(self.max_line)
        self._queue.clear()
        self.last_data_at = self._clock.seconds()
        self._watch()
        request = self._request = self._db.changes(self._params(), self._filter_body, self._path)
        request.addCallbacks(self._connected, self._failed)

    def _connected(self, response: IResponse) -> Any:
        self._request = None
        if self.state == "stopped":
            response.deliverBody(_Discard())
            return None
        if response.code != 200:

            def failed(body: Any) -> None:
                error = error_for(response.code, _decode(body), "GET _changes")
                if response.code == 400 and self.since is not None and "since" in error.reason:
                    log.warn(
                        "changes feed: CouchDB refuses the sequence to follow from ({error}); "
                        "following from the start",
                        error=error.reason,
                    )
                    self.since = None
                if self.once is not None and response.code in (401, 403):
                    # (read again at the database's next update: no loop of its own)
                    log.warn("changes feed: {error}", error=error)
                    self.last_error = str(error)
                    self._ended, self._complete = True, True
                    self._finish()
                    return
                self._failed(Failure(error))
                if response.code == 404 and self._on_missing is not None:
                    self._on_missing()

            return treq.content(response).addBoth(failed)
        self._cancel_timer()
        self.state = "connected"
        self._complete = False
        self.connected_at = self._clock.seconds()
        self.last_error = None
        self.last_data_at = self._clock.seconds()
        protocol = self._protocol = _FeedProtocol(self)
        response.deliverBody(protocol)  # type: ignore[arg-type]
        self._transport = protocol.transport  # type: ignore[assignment]
        if self._paused and self._transport is not None:
            self._transport.pauseProducing()
        self._watch()
        if self.once is None:
            log.info("changes feed connected (since {since})", since=self.since)
        return None

    def _failed(self, failure: Failure) -> None:
        self._request = None
        if self.state == "stopped" or failure.check(CancelledError):
            return
        self._retry(failure.getErrorMessage() or failure.type.__name__)

    def _lost(self, protocol: _FeedProtocol, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = self._transport = None
        if self.state == "stopped":
            return
        if self.once is not None and self.last_error is None:
            self._ended = True
            self._finish()
            return
        self._retry("the feed ended" if self.last_error is None else self.last_error)

    def _finish(self) -> None:
        """A feed read once ended: once every change it brought is passed on, it says so."""
        if self._ended and not self._queue and self.state != "stopped":
            self._ended = False
            if not self._complete:  # broken off before its last line: read the rest
                self._retry("the feed ended before its last line")
                return
            self._cancel_timer()
            self.state = "stopped"
            if self._on_end is not None:
                self._on_end()

    def _retry(self, why: str) -> None:
        self._cancel_timer()
        self.state = "waiting"
        self.last_error = why
        self.reconnects += 1
        delay = self.backoff.next()
        log.warn("changes feed: {why}; reconnecting in {delay:.1f}s", why=why, delay=delay)
        self._timer = self._clock.callLater(delay, self._reconnect)

    def _reconnect(self) -> None:
        self._timer = None
        if self.state == "waiting":
            self._connect()

    def _drop(self, why: str | None = None) -> None:
        """Abort the current connection (L{_lost} then reconnects, unless stopped)."""
        if why is not None:
            self.last_error = why
        if self._transport is not None:
            self._transport.stopProducing()

    # -- watchdog --------------------------------------------------------------------------------

    def _watch(self) -> None:
        self._cancel_timer()
        self._timer = self._clock.callLater(self._silence(), self._check_idle)

    def _silence(self) -> float:
        """Seconds of silence after which the connection is taken for dead (half of it)."""
        return self.heartbeat if self.once is None else max(self.heartbeat, self.once)

    def _check_idle(self) -> None:
        """Drop a connection (or a connection attempt) that stayed silent too long."""
        self._timer = None
        idle = self._clock.seconds() - (self.last_data_at or 0)
        if self.state == "connecting" and idle > 2 * self._silence():
            request, self._request = self._request, None
            if request is not None:
                request.cancel()
            self._retry(f"no answer for {idle:.0f}s")
            return
        if self.state != "connected":
            return
        if not self._paused and idle > 2 * self._silence():
            self._drop(f"no data for {idle:.0f}s")
            return
        self._watch()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- data ------------------------------------------------------------------------------------

    def _data(self, protocol: _FeedProtocol, data: bytes) -> None:
        if protocol is not self._protocol:
            return
        self.last_data_at = self._clock.seconds()
        self._queue.extend(self._framer.feed(data))
        self._drain()

    def _drain(self) -> None:
        queue = self._queue
        while queue and not self._paused and self.state != "stopped":
            line = queue.popleft()
            if isinstance(line, Oversize):
                change = _unreadable(line.head, line.tail, "too large")
            elif not line.strip():
                continue  # a heartbeat
            else:
                try:
                    change = json.loads(line)
                except RecursionError:
                    change = _unreadable(line[:HEAD], line[-TAIL:], "too deep")
                except ValueError:
                    change = None
            if not isinstance(change, dict):
                self._drop("the feed sent a line that cannot be read")
                return
            if "seq" in change:
                self.backoff.reset()
                if change["seq"] is not None:
                    self.since = change["seq"]
                self._on_change(change)
            elif "last_seq" in change:
                self.since = change["last_seq"]
                self._complete = True
            elif "error" in change:
                self.last_error = f"the feed answered {change.get('error')}: {change.get('reason')}"
        if self._ended and not self._paused:
            self._finish()


_STRING = rb'"(?:[^"\\]|\\.)*"'
_ID = re.compile(rb'"id":(' + _STRING + rb")")
_REV = re.compile(rb'"changes":\[\{"rev":(' + _STRING + rb")")
#: A change's seq: CouchDB's (a string; null for most changes of a feed with seq_interval),
#: PouchDB's (a number).
_SEQ_FIRST = re.compile(rb'^\{"seq":(' + _STRING + rb"|-?\d+|null)")
_SEQ_LAST = re.compile(rb'"seq":(' + _STRING + rb"|-?\d+|null)\}\s*$")


def _unreadable(head: bytes, tail: bytes, why: str) -> Change | None:
    """
    A change whose document cannot be read, from the first and last bytes of its line: its seq,
    id and revision (CouchDB writes the seq first, PouchDB last).
    """
    seq = _SEQ_FIRST.search(head) or _SEQ_LAST.search(tail)
    doc_id, rev = _ID.search(head), _REV.search(head)
    if seq is None or doc_id is None:
        return None
    change: Change = {
        "seq": json.loads(seq.group(1)),
        "id": json.loads(doc_id.group(1)),
        "unreadable": why,
    }
    if rev is not None:
        change["changes"] = [{"rev": json.loads(rev.group(1))}]
    return change


def _decode(body: Any) -> Any:
    try:
        return json.loads(body)
    except (TypeError, ValueError):
        return None


def describe(feed: ChangesFeed | None) -> dict[str, Any]:
    """A feed's state as plain JSON (that of one not started for None)."""
    if feed is None:
        return {
            "state": "not started",
            "paused": False,
            "since": None,
            "reconnects": 0,
            "last_error": None,
        }
    return feed.describe()
