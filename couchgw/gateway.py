"""
The gateway: follows the changes feed, claims messages, calls their targets, writes back.

The changes feed is only a doorbell: a change makes the gateway look at a document, and what it
does follows from the document's current state (L{couchgw.message.due}).  A periodic sweep over
the C{due} view finds whatever the feed did not bring (messages written while no gateway ran,
retries that are due, expired leases).  Claims go through CouchDB's MVCC: a 409 on a claim means
the document changed (another gateway claimed it, or the client edited it), and the gateway looks
again at its current state.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    inlineCallbacks,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from couchgw import design, door, message
from couchgw.batch import BulkWriter
from couchgw.callbacks import Callbacks
from couchgw.checkpoint import Checkpoint
from couchgw.claims import Claim, Claims
from couchgw.couch import (
    Conflict,
    Database,
    Doc,
    NotFound,
    rescans_filtered_feeds,
    supports_selector,
)
from couchgw.errors import describe_error, log_error
from couchgw.feed import Change, ChangesFeed
from couchgw.interfaces import Fault, ITarget, Transient, Unreachable
from couchgw.members import Members
from couchgw.message import Rejected
from couchgw.metrics import Metrics
from couchgw.timing import Backoff, RateLimit

log = Logger()

CHECKPOINT_ID = "_local/couchgw-checkpoint"
#: The C{_selector} filter equivalent to C{_design/couchgw}'s C{new} filter.
NEW_MESSAGES_SELECTOR = {
    "type": "message",
    "$or": [
        {"status": {"$exists": False}},
        {"status": None},
        {"status": {"$nin": sorted(message.STATUSES)}},
    ],
}


def gateway_id() -> str:
    """An id unique to this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def copies(info: Mapping[str, Any]) -> int:
    """How many copies of each document the database keeps (C{cluster.n}; 1 without one)."""
    cluster = info.get("cluster")
    try:
        return max(1, int(cluster["n"])) if isinstance(cluster, Mapping) else 1
    except (KeyError, TypeError, ValueError):
        return 1


#: Messages whose routes were full that the gateway keeps the ids of (there the feed pauses).
WAITING = 10000
#: Seconds the gateway waits beyond a target's own timeout before it gives up on a call.
CALL_MARGIN = 5.0
#: Seconds a sweep waits for the C{due} view (its index may have much to catch up with).
SWEEP_TIMEOUT = 600.0
#: Nesting (as the C{due} view counts it) from which a message is not read but rejected in place.
UNREADABLE_DEPTH = 100


@dataclass(frozen=True)
class Policy:
    """How the gateway treats one route's messages (None: the gateway's own setting)."""

    #: Calls made for one message before a transient error is final.
    retries: int | None = None
    #: Seconds the first retry may wait; each next one up to twice as long (capped at 300).
    backoff: float | None = None
    #: Calls per second at most.
    rate: float | None = None
    #: Messages of this route handled at once; more wait in CouchDB, submitted as it drains.
    inflight: int | None = None


class Gateway(Service):
    """
    @param db: the message database.
    @param targets: the routes, by name.
    @param policies: how each route's messages are treated, by route name.
    @param callbacks: delivers the callbacks of finished messages (None: none are delivered).
    @param lease: seconds a claim is valid; a running call renews it every third of that.
    @param retries: calls made to a target for one message before a transient error is final.
    @param max_inflight: messages handled at once; when full, the feed is not read.
    @param sweep_interval: seconds between sweeps over the C{due} view.
    @param heartbeat: seconds between the feed's heartbeats.
    @param grace: seconds a stop waits for calls in flight before it gives their messages back.
    @param max_bytes: the largest message (as compact JSON) accepted; larger ones are rejected.
    @param settle: seconds a claim that fewer than all copies took (on a cluster) waits before
        it is confirmed.
    @param announce: seconds between this gateway's announcements to the others that share the
        database (L{couchgw.members}); it counts as gone three times that after the last.
    """

    def __init__(
        self,
        db: Database,
        targets: Mapping[str, ITarget],
        clock: IReactorTime,
        *,
        policies: Mapping[str, Policy] | None = None,
        callbacks: Callbacks | None = None,
        gateway: str | None = None,
        lease: float = 600.0,
        retries: int = 5,
        retry_backoff: Backoff | None = None,
        max_inflight: int = 100,
        sweep_interval: float = 30.0,
        heartbeat: float = 10.0,
        checkpoint_interval: float = 5.0,
        grace: float = 30.0,
        max_bytes: int = 1024 * 1024,
        settle: float = 0.5,
        announce: float = 5.0,
    ) -> None:
        self.db = db
        #: Claims and outcomes go out through it, gathered into C{_bulk_docs} under load.
        self.writer = BulkWriter(db)
        self.targets = dict(targets)
        self.clock = clock
        self.id = gateway or gateway_id()
        self.retries = retries
        self.retry_backoff = retry_backoff or Backoff(base=2.0, cap=300.0, floor=1.0)
        self.max_inflight = max_inflight
        self.sweep_interval = sweep_interval
        self.heartbeat = heartbeat
        self.checkpoint_interval = checkpoint_interval
        self.grace = grace
        self.max_bytes = max_bytes
        #: This gateway's claims (the calls in flight), and how they are taken on a cluster.
        self.claims = Claims(db, clock, self.id, self._transition, lease=lease, settle=settle)
        self.checkpoint = Checkpoint()
        #: The gateways sharing the database, and which messages are this one's.
        self.members = Members(
            db,
            clock,
            self.id,
            self.targets,
            beat=announce,
            ttl=3 * announce,
            on_change=self.sweep_soon,
        )
        self.feed: ChangesFeed | None = None
        #: Documents being handled, by id: each Deferred fires when its handling ends.
        self.active: dict[str, Deferred[None]] = {}
        #: Why the gateway is not ready to work (empty when it is).
        self.couch_error: str | None = "not connected yet"
        self.counts: dict[str, int] = {}
        self._slots = {
            name: DeferredSemaphore(max(1, t.concurrency)) for name, t in self.targets.items()
        }
        self.policies = {name: (policies or {}).get(name, Policy()) for name in self.targets}
        self.callbacks = callbacks
        #: Callbacks being delivered (the stop waits for them within its grace).
        self._deliveries: set[Deferred[None]] = set()
        self._backoffs = {
            name: Backoff(base=policy.backoff, cap=300.0, floor=min(1.0, policy.backoff))
            for name, policy in self.policies.items()
            if policy.backoff is not None
        }
        self._rates = {
            name: RateLimit(clock, policy.rate)
            for name, policy in self.policies.items()
            if policy.rate is not None
        }
        #: Messages being dispatched, by route.
        self.inflight: Counter[str] = Counter()
        #: Routes that left messages in CouchDB because they were full; swept once they drain.
        self._full: set[str] = set()
        #: Ids of messages the feed brought for routes that were full, by route: they are
        #: submitted again as their route drains (the feed pauses at L{WAITING} in all).
        self._waiting_ids: dict[str, deque[str]] = {}
        #: Of those, how many are being read to be submitted, by route.
        self._refilling: Counter[str] = Counter()
        self._sweep_again = False
        self._publishing: Deferred[Any] | None = None
        self._saved_at: float | None = None
        self.metrics = Metrics()
        self.metrics.watch(self)
        #: Routes that loaded at least once.
        self._loaded: set[str] = set()
        self._publish_again = False
        self._saved_seq: Any = None
        self._checkpoint_doc: Doc = {"_id": CHECKPOINT_ID}
        self._timers: dict[str, IDelayedCall] = {}
        self._loops: list[LoopingCall] = []
        self._starting: Deferred[None] | None = None
        self._loading: dict[str, Deferred[None]] = {}
        self._sweeping: Deferred[None] | None = None
        self._query: Deferred[Doc] | None = None
        self._closed = False
        #: Messages waiting for their route to get ready, by route (at most a share of
        #: C{max_inflight} each, so that a route that is down cannot hold every slot).
        self._waiting: dict[str, list[Deferred[None]]] = {}
        #: Claimed messages waiting for a slot of their route (cancelled at stop).
        self._queued: set[Deferred[Any]] = set()
        #: Routes that turned messages away while not ready (swept for once they are).
        self._turned_away: set[str] = set()

    # -- life cycle ------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._closed = self.claims.closed = False
        self._begin(first=True)

    def _begin(self, first: bool) -> None:
        self._starting = self._open(first)
        self._starting.addErrback(log_error, "gateway start-up failed")

    @inlineCallbacks
    def _open(self, first: bool) -> Any:
        """Get the database ready (created, design documents pushed), then follow it."""
        backoff = Backoff(base=0.25, cap=10.0)
        while self.running:
            try:
                welcome = yield self.db.welcome()
                created = yield self.db.create()
                if created:
                    log.info("created database {db}", db=self.db.url)
                yield design.push(self.db)
                info = yield self.db.info()
                try:
                    saved = yield self.db.get(CHECKPOINT_ID)
                except NotFound:
                    saved = {}
                break
            except Exception as e:
                self.couch_error = f"CouchDB at {self.db.url}: {describe_error(e)}"
                delay = backoff.next()
                log.warn(
                    "{error}; trying again in {delay:.1f}s", error=self.couch_error, delay=delay
                )
                yield deferLater(self.clock, delay, lambda: None)
        if not self.running:
            return
        if first:
            # who else is there decides which messages are this gateway's: know it before the
            # feed brings any (alone, it claims them all at once)
            self.members.start(local=supports_selector(welcome))
            yield self.members.started()
            if not self.running:
                return
        self.couch_error = None
        self.claims.copies = copies(info)
        self.checkpoint = Checkpoint(saved.get("seq"))
        self._saved_seq = self.checkpoint.seq
        self._saved_at = self.clock.seconds()
        self._checkpoint_doc = {"_id": CHECKPOINT_ID, **saved}
        params: dict[str, Any] = {"conflicts": "true"}
        body: Any = None
        if supports_selector(welcome):
            # a seq for every change costs a cluster work on a large database: every so often
            # is enough for the checkpoint (a reconnect replays the rest, which is harmless)
            params.update(filter="_selector", seq_interval=max(1, self.max_inflight // 2))
            body = {"selector": NEW_MESSAGES_SELECTOR}
        elif rescans_filtered_feeds(welcome):
            # the "new" filter passes one write in three (a message's claim and outcome are
            # passed over), and this server would scan those again on every write: follow every
            # message's changes, and pass over at once those with nothing due
            params["filter"] = f"{design.DDOC}/messages"
        else:
            params["filter"] = f"{design.DDOC}/new"
        self.feed = ChangesFeed(
            self.db,
            self._changed,
            self.clock,
            params,
            body,
            since=self.checkpoint.seq,
            heartbeat=self.heartbeat,
            max_line=self.max_bytes + 64 * 1024,
            on_missing=self._database_gone,
        )
        self.feed.start()
        self._publish_door()
        if first:
            for target in self.targets.values():
                self._reload(target)
            # the feed brings every new message; the sweep's first look, for what came due
            # while no gateway ran, comes one interval on (at once, it would make CouchDB
            # index a whole backlog while the gateway drains it)
            self._every(self.sweep_interval, self.sweep, now=False)
            self._every(self.checkpoint_interval, self.save_checkpoint, now=False)
        else:
            self.sweep_soon()

    @inlineCallbacks
    def _recover(self) -> Any:
        """The C{due} view is missing: the database was deleted, or our design document."""
        try:
            yield self.db.info()
        except NotFound:
            self._database_gone()
            return
        log.warn("design documents missing in {db}; writing them again", db=self.db.url)
        yield design.push(self.db)

    def _database_gone(self) -> None:
        """The feed found no database: create it again and follow the new one from its start."""
        if self.feed is None or not self.running:
            return
        log.warn("database {db} is gone; creating it again", db=self.db.url)
        self.feed.stop()
        self.feed = None
        self.couch_error = f"database {self.db.url} is missing"
        self._begin(first=False)

    def _every(self, interval: float, f: Any, now: bool = True) -> None:
        def guarded() -> Deferred[None]:
            d: Deferred[None] = maybeDeferred(f)
            return d.addErrback(log_error, f"{f.__name__} failed")

        loop = LoopingCall(guarded)
        loop.clock = self.clock
        loop.start(interval, now=now)
        self._loops.append(loop)

    def _reload(self, target: ITarget) -> None:
        """(Re)load a route until it is ready, then sweep for its waiting messages."""
        if target.name not in self._loading:
            d = self._load(target)
            self._loading[target.name] = d
            d.addErrback(log_error, "loading a route failed")

            def loaded(_: Any) -> None:
                del self._loading[target.name]

            d.addBoth(loaded)

    @inlineCallbacks
    def _load(self, target: ITarget) -> Any:
        backoff = Backoff(base=1.0, cap=15.0)
        while self.running:
            try:
                yield target.load()
            except Exception as e:
                delay = backoff.next()
                log.warn(
                    "route {route} not ready: {error}; trying again in {delay:.0f}s",
                    route=target.name,
                    error=target.error or describe_error(e),
                    delay=delay,
                )
                yield deferLater(self.clock, delay, lambda: None)
            else:
                self._route_ready(target.name)
                if target.name in self._turned_away:
                    self._turned_away.discard(target.name)
                    self.sweep_soon()
                self._loaded.add(target.name)
                self._publish_door()
                return

    def _publish_door(self) -> None:
        """
        Write the routes' validation design document (L{couchgw.door}) if it changed, once
        every route has loaded (so that it never says less than it did).
        """
        if self.couch_error is not None or not self.running or self._loaded != set(self.targets):
            return
        if self._publishing is not None:
            self._publish_again = True
            return
        self._publish_again = False
        self._publishing = design.push(self.db, {door.DOOR_ID: door.design_doc(self.targets)})

        def done(result: Any) -> None:
            self._publishing = None
            if isinstance(result, Failure):
                if result.check(Conflict):
                    self._publish_again = True  # another gateway wrote it meanwhile
                else:
                    log_error(result, "cannot publish the routes' validation")
            if self._publish_again:
                self._publish_door()

        self._publishing.addBoth(done)

    def _wait_for_route(self, target: ITarget) -> Deferred[None] | None:
        """A Deferred that fires when the route is ready, or None if too many wait already."""
        waiting = self._waiting.setdefault(target.name, [])
        if len(waiting) >= max(1, self.max_inflight // len(self.targets)):
            self._turned_away.add(target.name)
            return None
        waiter: Deferred[None] = Deferred()
        waiting.append(waiter)
        return waiter

    def _route_ready(self, name: str) -> None:
        """Let the messages waiting for a route go on (or, when stopping, end)."""
        for waiter in self._waiting.pop(name, []):
            waiter.callback(None)

    def _route_down(self, target: ITarget, reason: str) -> None:
        if target.state == "ready":
            log.warn("route {route} is unreachable: {reason}", route=target.name, reason=reason)
            target.unavailable(f"unreachable: {reason}")
        self._reload(target)

    @inlineCallbacks
    def stopService(self) -> Any:
        """
        Stop taking work; let calls in flight end within C{grace} seconds; give the messages
        of calls still running back (C{retrying}, due at once); save the checkpoint.
        """
        super().stopService()
        leaving = self.members.leave()  # the others take this gateway's messages over meanwhile
        for starting in [self._starting, *self._loading.values()]:
            if starting is not None:
                starting.cancel()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if self.feed is not None:
            self.feed.stop()
        for name in list(self._waiting):
            self._route_ready(name)
        for queued in list(self._queued):
            queued.cancel()  # claimed, never called: each gives its claim back
        if self._query is not None:
            self._query.cancel()  # a sweep may wait minutes for its view
        if self._sweeping is not None:
            yield self._sweeping
        if self.active or self._deliveries:
            log.info(
                "stopping: waiting up to {grace:g}s for {n} message(s) in flight",
                grace=self.grace,
                n=len(self.active) + len(self._deliveries),
            )
            work = [*self.active.values(), *self._deliveries]
            yield _first(DeferredList(work), self.grace, self.clock)
        held = list(self.claims.held.values())
        if held:
            log.warn(
                "stopping: giving back {n} message(s) whose calls are still running", n=len(held)
            )
            yield DeferredList([claim.give_back() for claim in held])
        yield leaving
        yield self.members.stop()
        self._closed = True
        self.claims.stop()
        if self.couch_error is None:
            try:
                yield self.save_checkpoint()
            except Exception as e:
                log.warn("cannot save the checkpoint: {error}", error=describe_error(e))

    # -- readiness -------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Why the gateway is not ready; empty when CouchDB, the feed and the routes are up."""
        problems = []
        if self.couch_error:
            problems.append(self.couch_error)
        elif self.db.refused:
            problems.append(f"CouchDB at {self.db.url} refuses the credentials: {self.db.refused}")
        else:
            problems += self.members.problems()
        if self.feed is None or self.feed.state != "connected":
            state = self.feed.state if self.feed else "not started"
            error = self.feed.last_error if self.feed else None
            problems.append(f"changes feed {state}" + (f": {error}" if error else ""))
        for target in self.targets.values():
            if target.state != "ready":
                problems.append(
                    f"route {target.name} {target.state}"
                    + (f": {target.error}" if target.error else "")
                )
        return problems

    # -- the doorbell ----------------------------------------------------------------------------

    def _changed(self, change: Change) -> None:
        checkpoint = self.checkpoint
        token = checkpoint.received(change["seq"])
        doc: Doc = change.get("doc") or {}
        if "unreadable" in change:
            if not self.members.owns(change["id"], None):
                checkpoint.done(token)
                return
            rev = (change.get("changes") or [{}])[0].get("rev")
            handled = self._track(
                change["id"],
                lambda: self._reject_unreadable(change["id"], rev, change["unreadable"]),
            )
        elif (
            change.get("deleted")
            or not message.is_message(doc)
            or (not doc.get("_conflicts") and message.due(doc, self.clock.seconds()) is None)
            or not self.mine(doc)
        ):
            checkpoint.done(token)
            return
        else:
            handled = self.submit(doc)
        handled.addBoth(lambda _: checkpoint.done(token))

    def mine(self, doc: Doc) -> bool:
        """Whether a message is this gateway's to handle (L{Members.owns}) now."""
        target = doc.get("target", message.DEFAULT_ROUTE)
        return self.members.owns(doc["_id"], target if isinstance(target, str) else None)

    def submit(self, doc: Doc) -> Deferred[None]:
        """
        Look at a document and do what is due; a Deferred that fires when that is done.

        A document already being handled is not handled twice at once.
        """
        return self._track(doc["_id"], lambda: self._handle(doc))

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

    def _throttle(self) -> None:
        """
        Stop reading the feed while C{max_inflight} documents are being handled, or while
        L{WAITING} messages wait for their routes to have room.
        """
        if self.feed is None:
            return
        waiting = sum(len(ids) for ids in self._waiting_ids.values())
        if len(self.active) >= self.max_inflight or waiting >= WAITING:
            self.feed.pause()
        elif self.feed.paused and waiting < WAITING // 2:
            self.feed.resume()

    def _wait_for_room(self, route: str, doc_id: str) -> None:
        """
        Keep the id of a message whose route is full, to submit it once there is room.  The
        feed pauses at L{WAITING} ids, so only the few changes read before it did go beyond:
        none is left to the sweep (whose view may take long to bring up to date).
        """
        self._waiting_ids.setdefault(route, deque()).append(doc_id)
        self._throttle()

    def sweep_soon(self) -> None:
        if self.running and "sweep" not in self._timers:
            self._timers["sweep"] = self.clock.callLater(0, self._sweep_now)

    def _sweep_now(self) -> None:
        del self._timers["sweep"]
        self.sweep().addErrback(log_error, "sweep failed")

    def _wake_at(self, when: float) -> None:
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

    def _room(self) -> bool:
        return bool(self.running) and len(self.active) < self.max_inflight

    @inlineCallbacks
    def sweep(self) -> Any:
        """Submit the work that is due now (as much as there is room for)."""
        if self._sweeping is not None:
            self._sweep_again = True  # what woke it may have come after this sweep's query
            return
        if self.couch_error is not None:
            return
        self._sweep_again = False
        self._sweeping = Deferred()
        try:
            now_ms = int(self.clock.seconds() * 1000)
            page = max(self.max_inflight, 10)
            params: dict[str, Any] = {"endkey": now_ms, "limit": page}
            taken: Counter[str] = Counter()
            for _ in range(10):
                if not self._room():
                    break
                try:
                    result = yield self.db.view(design.DDOC, "due", timeout=SWEEP_TIMEOUT, **params)
                except NotFound:
                    yield self._recover()
                    return
                rows = result.get("rows", [])
                readable = []
                for row in rows:
                    if row["id"] in self.active:
                        continue
                    why = self._unreadable(row)
                    if why is not None:
                        if self._room() and self.members.owns(row["id"], None):
                            self._track(
                                row["id"], partial(self._reject_unreadable, row["id"], None, why)
                            )
                        continue
                    route = _route_of(row)  # None: read it, and its target says whose it is
                    if route is not None and not self.members.owns(row["id"], route):
                        continue
                    if not self._waits_for_room(row, taken):
                        readable.append(row["id"])
                yield self._submit_ids(readable)
                if len(rows) < page:
                    break
                last = rows[-1]
                params.update(startkey=last["key"], startkey_docid=last["id"], skip=1)
        finally:
            self._query = None
            sweeping, self._sweeping = self._sweeping, None
            sweeping.callback(None)
            if self._sweep_again:
                self.sweep_soon()

    @inlineCallbacks
    def _submit_ids(self, ids: list[str]) -> Any:
        """
        Read these messages (with their conflicts) and submit them, as room allows; answers
        the ids of those there was no room for.
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
            if self._room():
                self.submit(doc)
            else:
                left.append(doc["_id"])
        return left

    @inlineCallbacks
    def _refill(self, route: str, ids: list[str]) -> Any:
        """Submit messages that waited for their route; those there is no room for wait on."""
        try:
            left = yield self._submit_ids(ids)
        except BaseException:
            self._full.add(route)  # they are in CouchDB still: the sweep finds them
            raise
        finally:
            self._refilling[route] -= len(ids)
        self._waiting_ids.setdefault(route, deque()).extend(left)
        self._throttle()

    def _waits_for_room(self, row: Mapping[str, Any], taken: Counter[str]) -> bool:
        """
        Whether a row of the C{due} view is for a route that is full, counting the rows this
        sweep C{taken} already.
        """
        route = _route_of(row)
        if route is None:
            return False
        policy = self.policies.get(route)
        if policy is None or policy.inflight is None:
            return False
        if self.inflight[route] + taken[route] >= policy.inflight:
            self._full.add(route)
            return True
        taken[route] += 1
        return False

    def _unreadable(self, row: Mapping[str, Any]) -> str | None:
        """Why a new message in the C{due} view is not to be read, or None: too large, too deep."""
        value = row.get("value")
        if row.get("key") != 0 or not isinstance(value, list) or len(value) < 2:
            return None
        size, depth = value[:2]
        if isinstance(size, int) and size > self.max_bytes:
            return "too large"
        if isinstance(depth, int) and depth >= UNREADABLE_DEPTH:
            return "too deep"
        return None

    # -- handling one message ----------------------------------------------------------------------

    @inlineCallbacks
    def _reject_unreadable(self, doc_id: str, rev: str | None, why: str) -> Any:
        """Reject a new message in place, without reading it (too large or too deep)."""
        reason = message.too_large(self.max_bytes) if why == "too large" else message.undecodable()
        fields = {
            k: v for k, v in message.rejected(reason, self.clock.seconds()).items() if v is not None
        }
        try:
            yield self.db.update(design.DDOC, "reject", doc_id, fields, rev=rev)
        except (Conflict, NotFound):
            return  # it changed or went: what is due now comes through the feed or the sweep
        self._count(fields, "(none)")
        log.warn("{id} rejected: {reason}", id=doc_id, reason=reason)

    @inlineCallbacks
    def _handle(self, doc: Doc) -> Any:
        for _ in range(20):
            if not self.running or not self.mine(doc):
                return
            if doc.get("_conflicts"):
                resolved = yield self.claims.resolve(doc)
                doc = resolved or (yield self.db.get(doc["_id"], conflicts="true"))
                continue
            now = self.clock.seconds()
            due = message.due(doc, now)
            if due is None:
                return
            if due == "callback":
                if self.callbacks is None:
                    return  # not this gateway's to deliver
                record = self.callbacks.pending(doc["callback"], self.id, now)
                written = yield self._transition(doc, {"callback": record})
                if written is not None:
                    yield self._deliver(written)
            elif doc.get("cancel_requested") is True:
                written = yield self._transition(doc, message.cancelled(now))
            else:
                try:
                    if due == "new":
                        message.check_new(doc, self.max_bytes)
                    call = message.call_of(doc)
                    target = self.targets.get(call.route)
                    if target is None:
                        raise Rejected(
                            f"there is no route {message.short(call.route)} "
                            f"(routes: {', '.join(sorted(self.targets))})"
                        )
                    if target.state != "ready":
                        waiter = self._wait_for_route(target)
                        if waiter is None:
                            return  # no room to wait: the sweep looks again once it is up
                        yield waiter
                        continue
                    prepared = target.prepare(call.operation, call.args)
                except Rejected as e:
                    written = yield self._transition(doc, message.rejected(str(e), now))
                    if written is not None:
                        log.warn("{id} rejected: {reason}", id=doc["_id"], reason=str(e))
                else:
                    bound = self.policies[target.name].inflight
                    if bound is not None and self.inflight[target.name] >= bound:
                        self._wait_for_room(target.name, doc["_id"])
                        return  # it waits in CouchDB until its route has room
                    written = yield self._dispatch(doc, target, prepared)
            if written is not None:
                return
            try:
                doc = yield self.db.get(doc["_id"], conflicts="true")  # it changed: look again
            except NotFound:
                return  # deleted
        log.warn("gave up on {id}: it kept changing", id=doc["_id"])

    @inlineCallbacks
    def _transition(self, doc: Doc, fields: dict[str, Any]) -> Any:
        """
        Write C{fields} on the revision read; answer the new document, or None on a conflict.
        A message that becomes final with a C{callback_url} gets its callback on the way.
        """
        finishing = (
            message.is_terminal(fields)
            and not message.is_terminal(doc)
            and self.callbacks is not None
        )
        if finishing:
            assert self.callbacks is not None
            record = self.callbacks.begin(doc, self.id, self.clock.seconds())
            if record is not None:
                fields = {**fields, "callback": record}
        new = message.apply(doc, fields)
        try:
            result = yield self.writer.write(new)
        except Conflict:
            return None
        new["_rev"] = result["rev"]
        if message.is_terminal(fields):
            self._count(new)
        if finishing and (new.get("callback") or {}).get("status") == "pending":
            delivery = self._deliver(new)
            delivery.addErrback(log_error, f"cannot deliver the callback of {new['_id']}")
            self._deliveries.add(delivery)
            delivery.addBoth(lambda _: self._deliveries.discard(delivery))
        return new

    @inlineCallbacks
    def _deliver(self, doc: Doc) -> Any:
        """Deliver a finished message's callback and record the outcome on it."""
        assert self.callbacks is not None
        record = yield self.callbacks.deliver(doc)
        claimed = doc["callback"]
        for _ in range(10):
            try:
                written = yield self.writer.write(message.apply(doc, {"callback": record}))
            except Conflict:
                doc = yield self.db.get(doc["_id"])
                if doc.get("callback") != claimed:
                    return  # another gateway took the delivery over
                continue
            except Exception as e:
                log_error(Failure(e), f"cannot record the callback of {doc['_id']}")
                return  # it stays pending: delivered again once its time is up
            break
        else:
            return
        self.metrics.callbacks.labels(record["status"]).inc()
        log.info(
            "{id}: callback {status} (attempt {n})",
            id=doc["_id"],
            status=record["status"],
            n=record["attempts"],
        )
        if record["status"] == "retrying":
            at = message.parse_time(record["next_attempt_at"])
            self._wake_at(at if at is not None else self.clock.seconds())
        return written

    @inlineCallbacks
    def _dispatch(self, doc: Doc, target: ITarget, prepared: Any) -> Any:
        """
        Claim, wait for one of the route's slots, call, write back; answer None if the claim
        lost (the document changed).  The claim comes before the slot, so that a slot set free
        goes to a message claimed already: its call starts as the last one ends, not a CouchDB
        round trip later.  The route's C{inflight} bound limits how many wait so, claimed.
        """
        name = target.name
        self.inflight[name] += 1
        try:
            if not self.running or target.state != "ready":
                return doc  # stopping, or the route went down: leave it for later
            claimed = yield self.claims.take(doc)
            if claimed is None:
                return None
            claim = self.claims.hold(claimed)
            try:
                yield self._call(doc, claim, target, prepared)
                return claimed
            finally:
                self.claims.let_go(claim)
        finally:
            self._drained(name)

    @inlineCallbacks
    def _call(self, doc: Doc, claim: Claim, target: ITarget, prepared: Any) -> Any:
        """Call the target for a claimed message once the route has a slot; write the outcome."""
        name = target.name
        claimed = claim.claimed
        slots = self._slots[name]
        queued = slots.acquire()
        self._queued.add(queued)
        try:
            yield queued
        except CancelledError:  # stopping
            yield claim.finish(message.released(doc))
            return
        finally:
            self._queued.discard(queued)
        slot_held = True
        try:
            rate = self._rates.get(name)
            if rate is not None:
                yield rate.wait()
            if not self.running or target.state != "ready":
                # stopping, or the route went down, while it waited: give the claim back
                yield claim.finish(message.released(doc))
                return
            log.info(
                "{id} dispatching on route {route} (attempt {attempt})",
                id=claimed["_id"],
                route=name,
                attempt=claimed.get("attempts"),
            )
            started = self.clock.seconds()
            call: Deferred[Any] = maybeDeferred(target.call, prepared, claimed["_id"])
            call.addBoth(_release, slots)  # the slot is free once the call has really ended
            slot_held = False
            try:
                answer = yield _first(
                    call,
                    target.timeout + CALL_MARGIN,
                    self.clock,
                    Transient(f"no answer within {target.timeout + CALL_MARGIN:g}s"),
                )
            except Exception as e:
                if isinstance(e, Unreachable):
                    self._route_down(target, str(e))
                fields = self._failure(claimed, e, name)
            else:
                fields = message.forwarded(answer, self.clock.seconds())
            duration = self.clock.seconds() - started
            self.metrics.dispatch.labels(name).observe(duration)
            self._log_outcome(claimed, fields, name, duration)
            final = yield claim.finish(fields)
            if final is not None and final.get("status") == "retrying":
                at = message.parse_time(final.get("next_attempt_at"))
                self._wake_at(at if at is not None else self.clock.seconds())
        finally:
            if slot_held:
                slots.release()

    def _log_outcome(self, doc: Doc, fields: dict[str, Any], route: str, duration: float) -> None:
        """One line per outcome: info when forwarded, a warning with the cause otherwise."""
        status = fields["status"]
        common = {"id": doc["_id"], "status": status, "route": route, "duration": duration}
        if status == "forwarded":
            log.info("{id} {status} on route {route} after {duration:.3f}s", **common)
            return
        error = fields.get("error") or {}
        if status == "retrying":
            self.metrics.retries.labels(route).inc()
            log.warn(
                "{id} {status} on route {route} after {duration:.3f}s (attempt {attempt} of "
                "{retries}, again from {at}): {error}",
                attempt=doc.get("attempts"),
                retries=self.policies[route].retries or self.retries,
                at=fields.get("next_attempt_at"),
                error=error.get("message"),
                **common,
            )
        else:
            log.error(
                "{id} {status} on route {route} after {duration:.3f}s ({kind}): {error}",
                kind=error.get("kind"),
                error=error.get("message"),
                **common,
            )

    def _drained(self, name: str) -> None:
        """
        A message of this route is done: once a full route is half empty, submit the messages
        that wait for it (and sweep, if some were left to the sweep).
        """
        self.inflight[name] -= 1
        bound = self.policies[name].inflight
        busy = self.inflight[name] + self._refilling[name]
        if bound is None or busy > bound // 2 or not self.running:
            return
        waiting = self._waiting_ids.get(name)
        if waiting:
            ids = [waiting.popleft() for _ in range(min(len(waiting), bound - busy))]
            self._refilling[name] += len(ids)
            refill = self._refill(name, ids)
            refill.addErrback(log_error, "cannot read messages that waited")
            self._throttle()
        elif name in self._full:
            self._full.discard(name)
            self.sweep_soon()

    def _failure(self, doc: Doc, error: Exception, route: str) -> dict[str, Any]:
        now = self.clock.seconds()
        if isinstance(error, Fault):
            return message.failed("fault", str(error), now)
        if isinstance(error, Rejected):
            return message.rejected(str(error), now)
        if isinstance(error, Transient):
            attempts = int(doc.get("attempts") or 1)
            retries = self.policies[route].retries or self.retries
            if attempts < retries:
                delay = self._backoffs.get(route, self.retry_backoff).delay(attempts - 1)
                return message.retrying("transient", str(error), now, delay)
            return message.failed("transient", f"{error} (after {attempts} attempts)", now)
        return message.failed("error", describe_error(error), now)

    def _count(self, doc: Mapping[str, Any], route: str | None = None) -> None:
        status = doc["status"]
        self.counts[status] = self.counts.get(status, 0) + 1
        if route is None:
            target = doc.get("target", message.DEFAULT_ROUTE)
            route = target if isinstance(target, str) and target in self.targets else "(none)"
        self.metrics.messages.labels(route, status).inc()

    # -- checkpoint ------------------------------------------------------------------------------

    @inlineCallbacks
    def save_checkpoint(self) -> Any:
        """Write the checkpoint if it moved since it was last written."""
        seq = self.checkpoint.seq
        if seq is None or seq == self._saved_seq:
            return
        doc = {**self._checkpoint_doc, "seq": seq, "gateway": self.id}
        try:
            result = yield self.db.put(doc)
        except Conflict:  # another gateway sharing the checkpoint wrote it: write over its revision
            current = yield self.db.get(CHECKPOINT_ID)
            doc["_rev"] = current["_rev"]
            result = yield self.db.put(doc)
        self._checkpoint_doc = {**doc, "_rev": result["rev"]}
        self._saved_seq = seq
        self._saved_at = self.clock.seconds()

    def checkpoint_age(self) -> float | None:
        """Seconds since the checkpoint was last read or written (None before that)."""
        return None if self._saved_at is None else self.clock.seconds() - self._saved_at

    @inlineCallbacks
    def feed_lag(self, most: int = 10000) -> Any:
        """
        Changes of the database after the last one the feed read: CouchDB says how many are
        pending; elsewhere they are counted (up to C{most}).  None while there is no feed.
        """
        if self.feed is None or self.feed.since is None:
            return None
        since = self.feed.since
        result = yield self.db.json("GET", "_changes", params={"since": since, "limit": 1})
        if isinstance(result.get("pending"), int):
            return result["pending"] + len(result.get("results", []))
        result = yield self.db.json("GET", "_changes", params={"since": since, "limit": most})
        return len(result.get("results", []))

    # -- status ----------------------------------------------------------------------------------

    @inlineCallbacks
    def status(self) -> Any:
        """The gateway's state as plain JSON (for C{/status})."""
        counts: dict[str, int] | None
        try:
            result = yield self.db.view(design.DDOC, "by_status", group="true")
            counts = {row["key"]: row["value"] for row in result.get("rows", [])}
        except Exception as e:
            counts = None
            log.warn("cannot count messages: {error}", error=describe_error(e))
        feed = self.feed
        problems = self.problems()
        return {
            "gateway": self.id,
            "database": self.db.url,
            "ready": not problems,
            "problems": problems,
            "counts": counts,
            "finished_here": dict(self.counts),
            "in_flight": len(self.active),
            "calls": len(self.claims.held),
            "threads_busy": sum(t.busy for t in self.targets.values()),
            "max_inflight": self.max_inflight,
            "feed": {
                "state": feed.state if feed else "not started",
                "paused": feed.paused if feed else False,
                "since": feed.since if feed else None,
                "reconnects": feed.reconnects if feed else 0,
                "last_error": feed.last_error if feed else None,
            },
            "checkpoint": {"seq": self.checkpoint.seq, "pending": len(self.checkpoint)},
            "members": self.members.describe(),
            "claims": dict(self.claims.answers),
            "routes": {name: self.route(name) for name in sorted(self.targets)},
        }

    def route(self, name: str, describe: bool = False) -> dict[str, Any]:
        """A route's state and policy as plain JSON; with C{describe}, what its target offers."""
        target = self.targets[name]
        policy = self.policies[name]
        about = dict(target.describe()) if describe else {}
        about.update(
            kind=target.kind,
            state=target.state,
            error=target.error,
            concurrency=target.concurrency,
            busy=target.busy,
            in_flight=self.inflight[name],
            inflight=policy.inflight,
            retries=policy.retries or self.retries,
            rate=policy.rate,
        )
        return about


def _route_of(row: Mapping[str, Any]) -> str | None:
    """The route a row of the C{due} view names (None: a target that is not a string)."""
    value = row.get("value")
    named = value[2] if isinstance(value, list) and len(value) > 2 else False
    if named is None:
        return message.DEFAULT_ROUTE
    return named if isinstance(named, str) else None


def _first(
    d: Deferred[Any], seconds: float, clock: IReactorTime, error: Exception | None = None
) -> Deferred[Any]:
    """
    A Deferred with C{d}'s result, or, after C{seconds}, C{error} (or None if no error is
    given).  C{d} itself is not cancelled: a call in a thread cannot be stopped.
    """
    out: Deferred[Any] = Deferred()

    def late() -> None:
        if error is None:
            out.callback(None)
        else:
            out.errback(error)

    timer = clock.callLater(seconds, late)

    def done(result: Any) -> None:
        if timer.active():
            timer.cancel()
        if not out.called:
            if isinstance(result, Failure):
                out.errback(result)
            else:
                out.callback(result)

    d.addBoth(done)
    return out


def _release(result: Any, slots: DeferredSemaphore) -> Any:
    slots.release()
    return result
