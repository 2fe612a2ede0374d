"""
The gateway's intake: which documents are worth a look, and when.

The changes feed is only a doorbell: a change makes the gateway look at a document, and what it
does follows from the document's current state (L{couchgw.message.due}).  A periodic sweep over
the C{due} view finds whatever the feed did not bring (messages written while no gateway ran,
retries that are due, expired leases).  Backpressure lives here too: the feed pauses while
C{max_inflight} documents are being handled, and the messages whose route is full, loading or
out wait here (L{couchgw.gateway.waiting}) until it has room again (L{Intake.drained},
L{Intake.route_changed}).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from couchgw import checks, message
from couchgw.couch import design
from couchgw.couch.client import Database, Doc
from couchgw.couch.errors import NotFound
from couchgw.couch.feed import Change, ChangesFeed
from couchgw.errors import log_error
from couchgw.gateway.checkpoint import SavedCheckpoint
from couchgw.gateway.members import Members
from couchgw.gateway.waiting import WAITING, Waiting, WaitingRoom

log = Logger(namespace="couchgw.gateway")

#: Seconds a sweep waits for the C{due} view (its index may have much to catch up with).
SWEEP_TIMEOUT = 600.0


class Intake:
    """
    @param handle: looks at a document and does what is due (L{couchgw.gateway.handling}).
    @param reject: rejects a new message in place without reading it: C{(id, rev, why)}.
    @param room_for: how many more messages of a route may go now (None: no bound; see
        L{couchgw.gateway.dispatch.Dispatch.room}).
    @param bounds: each route's C{inflight} bound (None: none).
    @param running: whether the gateway runs.
    @param working: whether the gateway runs and CouchDB answers (no sweep otherwise).
    @param recover: called when the C{due} view is missing.
    @param gone: called when the feed finds no database.
    @param routes: how many routes share the waiting room.
    """

    def __init__(
        self,
        db: Database,
        clock: IReactorTime,
        members: Members,
        checkpoint: SavedCheckpoint,
        *,
        handle: Callable[[Doc, float | None], Deferred[Any]],
        reject: Callable[[str, str | None, str], Deferred[Any]],
        room_for: Callable[[str], int | None],
        bounds: Mapping[str, int | None],
        running: Callable[[], bool],
        working: Callable[[], bool],
        recover: Callable[[], Deferred[Any]],
        gone: Callable[[], None],
        max_inflight: int,
        max_bytes: int,
        heartbeat: float,
        routes: int = 1,
    ) -> None:
        self.db = db
        self.clock = clock
        self.members = members
        self.checkpoint = checkpoint
        self._handle = handle
        self._reject = reject
        self._room_for = room_for
        self.bounds = bounds
        self._running = running
        self._working = working
        self._recover = recover
        self._gone = gone
        self.max_inflight = max_inflight
        self.max_bytes = max_bytes
        self.heartbeat = heartbeat
        self.feed: ChangesFeed | None = None
        #: Documents being handled, by id: each Deferred fires when its handling ends.
        self.active: dict[str, Deferred[None]] = {}
        #: Routes that left messages in CouchDB (no room for them here); swept once they have.
        self._left: set[str] = set()
        #: The messages waiting for their routes to have room (the feed pauses at L{WAITING};
        #: a route keeps its share of them, so that one out for long holds up no other).
        self.waiting_room = WaitingRoom(share=max(1, WAITING // max(1, routes)))
        #: Of those, how many are being submitted, by route.
        self._refilling: Counter[str] = Counter()
        self._sweep_again = False
        #: Whether a periodic sweep ran (L{sweep_every}).
        self._swept = False
        self._sweeping: Deferred[None] | None = None
        self._query: Deferred[Doc] | None = None
        self._timers: dict[str, IDelayedCall] = {}

    # -- the doorbell ----------------------------------------------------------------------------

    def follow(self, welcome: Mapping[str, Any]) -> None:
        """Follow the database's changes from the checkpoint, filtered as this server allows."""
        params, body = design.new_messages(welcome, seq_interval=max(1, self.max_inflight // 2))
        self.feed = ChangesFeed(
            self.db,
            self._changed,
            self.clock,
            params,
            body,
            since=self.checkpoint.current.seq,
            heartbeat=self.heartbeat,
            max_line=self.max_bytes + 64 * 1024,
            on_missing=self._gone,
        )
        self.feed.start()

    def unfollow(self) -> None:
        if self.feed is not None:
            self.feed.stop()
            self.feed = None

    def _changed(self, change: Change) -> None:
        checkpoint = self.checkpoint.current
        token = checkpoint.received(change["seq"])
        doc: Doc = change.get("doc") or {}
        if "unreadable" in change:
            if not self.members.owns(change["id"], None):
                checkpoint.done(token)
                return
            rev = (change.get("changes") or [{}])[0].get("rev")
            handled = self._track(
                change["id"], lambda: self._reject(change["id"], rev, change["unreadable"])
            )
        elif (
            change.get("deleted")
            or not message.is_message(doc)
            or (not doc.get("_conflicts") and self._nothing_due(doc))
            or not self.members.mine(doc)
        ):
            checkpoint.done(token)
            return
        else:
            handled = self.submit(doc)
        handled.addBoth(lambda _: checkpoint.done(token))

    def _nothing_due(self, doc: Doc) -> bool:
        return message.due(doc, self.clock.seconds(), self.members.holder_gone) is None

    def submit(self, doc: Doc, seen: float | None = None) -> Deferred[None]:
        """
        Look at a document and do what is due; a Deferred that fires when that is done.

        A document already being handled is not handled twice at once.

        @param seen: when it was first read (now, if not given).
        """
        return self._track(doc["_id"], lambda: self._handle(doc, seen))

    def _track(self, doc_id: str, work: Callable[[], Deferred[Any]]) -> Deferred[None]:
        if doc_id in self.active:
            return succeed(None)
        finished: Deferred[None] = Deferred()
        self.active[doc_id] = finished
        self._throttle()

        def end(result: Any) -> None:
            if isinstance(result, Failure):
                log_error(result, f"cannot handle {doc_id} now (the sweep tries again)")
            del self.active[doc_id]
            self._throttle()
            finished.callback(None)

        maybeDeferred(work).addBoth(end)
        return finished

    # -- backpressure ----------------------------------------------------------------------------

    def _throttle(self) -> None:
        """
        Stop reading the feed while C{max_inflight} documents are being handled, or while
        L{WAITING} messages wait for their routes to have room.
        """
        if self.feed is None:
            return
        waiting = len(self.waiting_room)
        if len(self.active) >= self.max_inflight or waiting >= WAITING:
            self.feed.pause()
        elif self.feed.paused and waiting < WAITING // 2:
            self.feed.resume()

    def park(
        self, route: str, doc: Doc, plan: checks.Plan, seen: float, size: int | None = None
    ) -> None:
        """
        Keep a message whose route has no room for it now (full, loading, out), to submit it
        once it has, in the order of its C{plan}.  The feed pauses at L{WAITING} messages, so
        only the few changes read before it did go beyond: those, and those beyond a route's
        share, are left to the sweep once the route has room.  One that expires while it waits
        is looked at then, to end C{expired}.

        @param seen: when the gateway first read it (its place, without a C{requested_at}).
        @param size: the document's size as compact JSON, if the handling measured it already.
        """
        if not self.waiting_room.add(route, doc, plan, seen, size):
            self._left.add(route)
        elif plan.expires_at is not None:
            self.wake_at(plan.expires_at)
        self._throttle()

    def _expire_waiting(self) -> None:
        """Submit the waiting messages that expired: they end C{expired} without room."""
        ids = []
        for entry in self.waiting_room.expired(self.clock.seconds()):
            if entry.doc is not None:
                self.submit(entry.doc, entry.seen)
            else:
                ids.append(entry.id)
        if ids:
            self._submit_ids(ids, always=True).addErrback(
                log_error, "cannot read messages that expired while they waited"
            )
        expiry = self.waiting_room.next_expiry()
        if expiry is not None:
            self.wake_at(expiry)
        self._throttle()

    def drained(self, route: str) -> None:
        """
        A message of C{route} is done: once a full route is half empty, submit the messages
        that wait for it (and sweep, if some were left in CouchDB).
        """
        bound, room = self.bounds.get(route), self._room_for(route)
        if bound is not None and room is not None:
            if room - self._refilling[route] < bound - bound // 2:
                return  # not half empty yet (or out: it says when it is back)
        self.route_changed(route)

    def route_changed(self, route: str) -> None:
        """
        A route may take messages again (it has room, loaded, is back from an outage, or may
        make its trial call): submit as many of those that wait for it as it has room for.
        """
        room = self._room_for(route)
        if room is not None:
            room -= self._refilling[route]
        if not self._running() or (room is not None and room <= 0):
            return
        if self.waiting_room.has(route):
            taken = self.waiting_room.take(route, room)
            self._refilling[route] += len(taken)
            self._refill(route, taken).addErrback(log_error, "cannot read messages that waited")
            self._throttle()
        elif route in self._left:
            self._left.discard(route)
            self.sweep_soon()

    @inlineCallbacks
    def _refill(self, route: str, taken: list[Waiting]) -> Any:
        """Submit messages that waited for their route; those there is no room for wait on."""
        left: list[Waiting] = []
        unread: dict[str, Waiting] = {}
        for waiting in taken:
            if waiting.doc is None:
                unread[waiting.id] = waiting
            elif waiting.id in self.active:
                continue
            elif self._room():
                self.submit(waiting.doc, waiting.seen)
            else:
                left.append(waiting)
        try:
            no_room = yield self._submit_ids(list(unread))
        except BaseException:
            self._left.add(route)  # they are in CouchDB still: the sweep finds them
            raise
        finally:
            self._refilling[route] -= len(taken)
        left.extend(unread[doc_id] for doc_id in no_room)
        for waiting in left:
            self.waiting_room.put_back(route, waiting)
        self._throttle()

    def _room(self) -> bool:
        return self._running() and len(self.active) < self.max_inflight

    # -- the sweep -------------------------------------------------------------------------------

    def sweep_soon(self) -> None:
        if self._running() and "sweep" not in self._timers:
            self._timers["sweep"] = self.clock.callLater(0, self._sweep_now)

    def _sweep_now(self) -> None:
        del self._timers["sweep"]
        self.sweep().addErrback(log_error, "sweep failed")

    def wake_at(self, when: float) -> None:
        """Sweep at C{when} (one timer, for the earliest retry that is due)."""
        timer = self._timers.get("wake")
        if timer is not None and timer.active():
            if timer.getTime() <= when:
                return
            timer.cancel()

        def wake() -> None:
            self._timers.pop("wake", None)
            self.sweep_soon()

        self._timers["wake"] = self.clock.callLater(max(0.0, when - self.clock.seconds()), wake)

    def sweep_every(self) -> Deferred[None] | None:
        """
        The periodic sweep, passed over while the gateway is full: it could take on nothing
        that is due, and its query would have CouchDB bring the view's index up to date over
        every message a drain changed, in its JavaScript process, while the drain goes on.  The
        first one runs (it takes over the claims of gateways gone before this one started), and
        so does every sweep asked for: a gateway gone, a route back, a retry due.
        """
        if self._swept and not self._room():
            return None
        self._swept = True
        return self.sweep()

    @inlineCallbacks
    def sweep(self) -> Any:
        """Submit the work that is due now (as much as there is room for)."""
        if self._sweeping is not None:
            self._sweep_again = True  # what woke it may have come after this sweep's query
            return
        if not self._working():
            return
        self._sweep_again = False
        self._sweeping = Deferred()
        try:
            self._expire_waiting()
            yield self._take_over()
            yield self._sweep_due()
        except NotFound:
            yield self._recover()
        finally:
            self._query = None
            sweeping, self._sweeping = self._sweeping, None
            sweeping.callback(None)
            if self._sweep_again:
                self.sweep_soon()

    @inlineCallbacks
    def _sweep_due(self) -> Any:
        """
        Submit what the C{due} view says is due now, highest priority first, a page at a time
        while there is room (at most ten pages a sweep); then wake for the next that comes due.
        """
        now_ms = int(self.clock.seconds() * 1000)
        page = max(self.max_inflight, 10)
        taken: Counter[str] = Counter()
        pages = 10
        for band in range(checks.TOP_PRIORITY + 1):  # 9 - priority, as the view keys it
            params: dict[str, Any] = {"startkey": [band], "endkey": [band, now_ms], "limit": page}
            while pages > 0 and self._room():
                pages -= 1
                self._query = self.db.view(design.DDOC, "due", timeout=SWEEP_TIMEOUT, **params)
                result = yield self._query
                rows = result.get("rows", [])
                yield self._submit_ids(self._worth_reading(rows, taken))
                if len(rows) < page:
                    break
                last = rows[-1]
                params.update(startkey=last["key"], startkey_docid=last["id"], skip=1)
        yield self.plan_wake(now_ms)

    @inlineCallbacks
    def plan_wake(self, after_ms: int = -1) -> Any:
        """
        Wake when the first retry, scheduled message or callback due after C{after_ms} (a time
        in milliseconds; by default any time: one due already wakes it at once) is due.  One
        timer, for the earliest.
        """
        self._query = self.db.view(
            design.DDOC,
            "due",
            timeout=SWEEP_TIMEOUT,
            startkey=["at", after_ms + 1],
            endkey=["at", {}],
            limit=1,
        )
        result = yield self._query
        rows = result.get("rows", [])
        if rows:
            self.wake_at(rows[0]["key"][1] / 1000)

    @inlineCallbacks
    def _take_over(self) -> Any:
        """
        Submit the claimed messages of gateways not seen alive that are this gateway's: those
        whose gateway is gone are due at once (L{Members.holder_gone}), not when their lease
        ends.
        """
        self._query = self.db.view(
            design.DDOC, "due", timeout=SWEEP_TIMEOUT, startkey=["claim"], endkey=["claim", {}]
        )
        result = yield self._query
        ids = [
            row["id"]
            for row in result.get("rows", [])
            if not self.members.alive(design.claim_holder(row))
            and self.members.owns(row["id"], design.route_of(row))
        ]
        # beyond max_inflight if need be: they are few (what gone gateways held), and they
        # are freed at once
        yield self._submit_ids(ids, always=True)

    def _worth_reading(self, rows: list[Mapping[str, Any]], taken: Counter[str]) -> list[str]:
        """
        The ids of the rows of the C{due} view that are this gateway's to read now; those too
        large or too deep to read are rejected in place.
        """
        readable = []
        for row in rows:
            if row["id"] in self.active:
                continue
            why = design.unreadable(row, self.max_bytes)
            if why is not None:
                if self._room() and self.members.owns(row["id"], None):
                    self._track(row["id"], partial(self._reject, row["id"], None, why))
                continue
            route = design.route_of(row)  # None: read it, and its target says whose it is
            if route is not None and not self.members.owns(row["id"], route):
                continue
            if not self._waits_for_room(route, taken):
                readable.append(row["id"])
        return readable

    @inlineCallbacks
    def _submit_ids(self, ids: list[str], always: bool = False) -> Any:
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
            if self._room() or (always and self._running()):
                self.submit(doc)
            else:
                left.append(doc["_id"])
        return left

    def _waits_for_room(self, route: str | None, taken: Counter[str]) -> bool:
        """
        Whether a row of the C{due} view is for a route that has no room for it now (full,
        loading, out), counting the rows this sweep C{taken} already.
        """
        room = None if route is None else self._room_for(route)
        if route is None or room is None:
            return False
        if taken[route] >= room:
            self._left.add(route)
            return True
        taken[route] += 1
        return False

    # -- life cycle and state --------------------------------------------------------------------

    def waiting(self) -> dict[str, int]:
        """How many messages wait for their route to have room, by route."""
        return self.waiting_room.by_route()

    def stop(self) -> Deferred[None] | None:
        """Stop the timers, the feed and a sweep's query; answers the sweep to wait for."""
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if self.feed is not None:
            self.feed.stop()
        if self._query is not None:
            self._query.cancel()  # a sweep may wait minutes for its view
        return self._sweeping
