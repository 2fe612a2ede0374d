"""
The intake of one database: which of its documents are worth a look, and when.

The changes feed is only a doorbell: a change makes the gateway look at a document, and what it
does follows from the document's current state (L{couchgw.message.due}).  The sweep
(L{couchgw.gateway.sweep}) finds whatever the feed did not bring.  Backpressure lives here too:
the feed pauses while C{max_inflight} of the database's documents are being handled, or while
it keeps its share of the messages waiting for their routes (L{couchgw.gateway.waiting}).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from couchgw import checks, message
from couchgw.couch import design
from couchgw.couch.client import Database, Doc
from couchgw.couch.feed import Change, ChangesFeed
from couchgw.errors import log_error
from couchgw.gateway.checkpoint import SavedCheckpoint
from couchgw.gateway.sweep import Owner, Sweep
from couchgw.gateway.waiting import Backlog

log = Logger(namespace="couchgw.gateway")


class Intake:
    """
    @param name: the database's name (the waiting room takes the databases in turn by it).
    @param owner: which messages are this gateway's.
    @param backlog: where messages wait for their routes (shared by the databases served).
    @param handle: looks at a document and does what is due (L{couchgw.gateway.handling}).
    @param reject: rejects a new message in place without reading it: C{(id, rev, why)}.
    @param room_for: how many more messages of a route may go now (None: no bound).
    @param running: whether the gateway runs.
    @param working: whether the gateway runs and CouchDB answers (no sweep otherwise).
    @param designed: the design documents written where they were not yet.
    @param recover: called when the C{due} view is missing.
    @param gone: called when the feed finds no database.
    """

    def __init__(
        self,
        db: Database,
        clock: IReactorTime,
        owner: Owner,
        checkpoint: SavedCheckpoint,
        backlog: Backlog,
        *,
        name: str,
        handle: Callable[[Doc, float | None], Deferred[Any]],
        reject: Callable[[str, str | None, str], Deferred[Any]],
        room_for: Callable[[str], int | None],
        running: Callable[[], bool],
        working: Callable[[], bool],
        designed: Callable[[], Deferred[Any]],
        recover: Callable[[], Deferred[Any]],
        gone: Callable[[], None],
        max_inflight: int,
        max_bytes: int,
        heartbeat: float,
    ) -> None:
        self.db = db
        self.clock = clock
        self.owner = owner
        self.checkpoint = checkpoint
        self.backlog = backlog
        self.name = name
        self._handle = handle
        self.reject = reject
        self.running = running
        self._gone = gone
        self.max_inflight = max_inflight
        self.max_bytes = max_bytes
        self.heartbeat = heartbeat
        self.feed: ChangesFeed | None = None
        #: Called when messages of the database wait for their routes, or C{max_inflight} are
        #: being handled, while its feed is followed for ever (None: the feed goes on).
        self.on_backlog: Callable[[], None] | None = None
        #: Where the last feed of the database ended (None: none was read yet).
        self._read_to: Any = None
        #: Documents being handled, by id: each Deferred fires when its handling ends.
        self.active: dict[str, Deferred[None]] = {}
        #: When a change last came (this clock), or the database was last looked at.
        self.last_seen = clock.seconds()
        self.sweeper = Sweep(
            self,
            room_for=room_for,
            working=working,
            designed=designed,
            recover=recover,
        )

    # -- the doorbell ----------------------------------------------------------------------------

    def follow(
        self,
        welcome: Mapping[str, Any],
        once: float | None = None,
        read: Callable[[], None] | None = None,
    ) -> None:
        """
        Follow the database's changes from the checkpoint, filtered as this server allows; or,
        with C{once}, read what changed since, until no change came for C{once} seconds (then
        C{read} is called).
        """
        params, body = design.new_messages(welcome, seq_interval=max(1, self.max_inflight // 2))
        feed = self.feed = ChangesFeed(
            self.db,
            self._changed,
            self.clock,
            params,
            body,
            # (from where the last read ended: what it brought is handled, or waits, already)
            since=self._read_to if self._read_to is not None else self.checkpoint.current.seq,
            heartbeat=self.heartbeat,
            max_line=self.max_bytes + 64 * 1024,
            on_missing=self._gone,
            once=once,
            on_end=lambda: self._read(feed, read),
        )
        feed.start()
        self.throttle()

    def _read(self, feed: ChangesFeed, read: Callable[[], None] | None) -> None:
        """A feed read once ended: the checkpoint may move up to where it ended."""
        if self.feed is feed:
            self.feed = None
        self._read_to = feed.since
        if feed.since is not None:
            checkpoint = self.checkpoint.current
            checkpoint.done(checkpoint.received(feed.since))
        if read is not None:
            read()

    def unfollow(self) -> None:
        if self.feed is not None:
            self._read_to = self.feed.since
            self.feed.stop()
            self.feed = None

    def _changed(self, change: Change) -> None:
        self.last_seen = self.clock.seconds()
        checkpoint = self.checkpoint.current
        token = checkpoint.received(change["seq"])
        doc: Doc = change.get("doc") or {}
        if "unreadable" in change:
            if not self.owner.owns(change["id"], None):
                checkpoint.done(token)
                return
            rev = (change.get("changes") or [{}])[0].get("rev")
            handled = self.track(
                change["id"], lambda: self.reject(change["id"], rev, change["unreadable"])
            )
        elif (
            change.get("deleted")
            or not message.is_message(doc)
            or (not doc.get("_conflicts") and self._nothing_due(doc))
            or not self.owner.mine(doc)
        ):
            checkpoint.done(token)
            return
        else:
            handled = self.submit(doc)
        handled.addBoth(lambda _: checkpoint.done(token))

    def _nothing_due(self, doc: Doc) -> bool:
        return message.due(doc, self.clock.seconds(), self.owner.holder_gone) is None

    def submit(self, doc: Doc, seen: float | None = None) -> Deferred[None]:
        """
        Look at a document and do what is due; a Deferred that fires when that is done.

        A document already being handled is not handled twice at once.

        @param seen: when it was first read (now, if not given).
        """
        return self.track(doc["_id"], lambda: self._handle(doc, seen))

    def track(self, doc_id: str, work: Callable[[], Deferred[Any]]) -> Deferred[None]:
        """Do C{work} for a document, counted as being handled until it ends."""
        if doc_id in self.active:
            return succeed(None)
        finished: Deferred[None] = Deferred()
        self.active[doc_id] = finished
        self.throttle()

        def end(result: Any) -> None:
            if isinstance(result, Failure):
                log_error(result, f"cannot handle {doc_id} now (the sweep tries again)")
            del self.active[doc_id]
            self.last_seen = self.clock.seconds()
            self.throttle()
            finished.callback(None)

        maybeDeferred(work).addBoth(end)
        return finished

    @inlineCallbacks
    def resubmit(self, ids: list[str], always: bool = False) -> Any:
        """
        Read these messages (with their conflicts) and submit them, as room allows (or
        C{always}); answers the ids of those there was no room for.
        """
        ids = [doc_id for doc_id in ids if doc_id not in self.active]
        if not ids:
            return []
        found = yield self.db.all_docs(ids, include_docs=True, conflicts=True)
        left = []
        for row in found.get("rows", []):
            doc = row.get("doc")
            if not doc or doc["_id"] in self.active:
                continue
            if self.has_room() or (always and self.running()):
                self.submit(doc)
            else:
                left.append(doc["_id"])
        return left

    # -- backpressure ----------------------------------------------------------------------------

    def throttle(self) -> None:
        """
        Stop reading the feed while C{max_inflight} documents are being handled, or while this
        database keeps its share of the messages waiting for their routes.
        """
        if self.feed is None:
            return
        room = self.backlog.room
        waiting, share = room.of(self.name), room.home_share()
        full = len(self.active) >= self.max_inflight
        if full or waiting >= share:
            self.feed.pause()
        elif self.feed.paused and len(self.active) < self.max_inflight and waiting < share // 2:
            self.feed.resume()
        if (full or waiting) and self.feed.once is None and self.on_backlog is not None:
            self.on_backlog()

    def backlogged(self) -> bool:
        """
        Whether messages wait for their routes, or at least half of C{max_inflight} are
        being handled.
        """
        return self.waiting() > 0 or len(self.active) >= max(1, self.max_inflight // 2)

    def has_room(self) -> bool:
        return self.running() and len(self.active) < self.max_inflight

    def park(
        self, route: str, doc: Doc, plan: checks.Plan, seen: float, size: int | None = None
    ) -> None:
        """
        Keep a message whose route has no room for it now (full, loading, out), to submit it
        once it has, in the order of its C{plan} (L{couchgw.gateway.waiting}).  One that
        expires while it waits is looked at then, to end C{expired}.

        @param seen: when the gateway first read it (its place, without a C{requested_at}).
        @param size: the document's size as compact JSON, if the handling measured it already.
        """
        self.backlog.park(self, route, doc, plan, seen, size)
        if plan.expires_at is not None:
            self.wake_at(plan.expires_at)
        self.throttle()

    # -- the sweep, and state ----------------------------------------------------------------------

    def sweep_soon(self) -> None:
        self.sweeper.soon()

    def wake_at(self, when: float) -> None:
        self.sweeper.wake_at(when)

    def sweep(self) -> Deferred[None]:
        return self.sweeper.sweep()

    def plan_wake(self, after_ms: int = -1) -> Deferred[None]:
        return self.sweeper.plan_wake(after_ms)

    def sweep_every(self) -> Deferred[None] | None:
        return self.sweeper.every()

    def waiting(self) -> int:
        """How many of this database's messages wait for their routes to have room."""
        return self.backlog.room.of(self.name)

    def busy(self) -> bool:
        """Whether anything of this database is under way here (so its feed stays open)."""
        return bool(self.active) or self.waiting() > 0 or self.sweeper.sweeping is not None

    def stop(self) -> Deferred[None] | None:
        """Stop the timers, the feed and a sweep's query; answers the sweep to wait for."""
        self.unfollow()
        return self.sweeper.stop()
