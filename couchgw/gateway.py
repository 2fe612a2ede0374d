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
from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    inlineCallbacks,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from couchgw import design, message
from couchgw.checkpoint import Checkpoint
from couchgw.couch import Conflict, CouchError, Database, Doc, NotFound
from couchgw.feed import Change, ChangesFeed
from couchgw.interfaces import Fault, ITarget, Transient
from couchgw.message import Rejected
from couchgw.timing import Backoff

log = Logger()

CHECKPOINT_ID = "_local/couchgw-checkpoint"
#: The C{_selector} filter equivalent to C{_design/couchgw}'s C{new} filter.
NEW_MESSAGES_SELECTOR = {
    "type": "message",
    "$or": [{"status": {"$exists": False}}, {"status": None}],
}


def gateway_id() -> str:
    """An id unique to this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def supports_selector(welcome: Mapping[str, Any]) -> bool:
    """Whether the server is Apache CouchDB 2 or later (PouchDB Server is not: never send it)."""
    if welcome.get("couchdb") != "Welcome":
        return False
    try:
        return int(str(welcome.get("version", "0")).split(".")[0]) >= 2
    except ValueError:
        return False


class Gateway(Service):
    """
    @param db: the message database.
    @param targets: the routes, by name.
    @param lease: seconds a claim is valid.
    @param retries: calls made to a target for one message before a transient error is final.
    @param max_inflight: messages handled at once; when full, the feed is not read.
    @param sweep_interval: seconds between sweeps over the C{due} view.
    @param heartbeat: seconds between the feed's heartbeats.
    """

    def __init__(
        self,
        db: Database,
        targets: Mapping[str, ITarget],
        clock: IReactorTime,
        *,
        gateway: str | None = None,
        lease: float = 600.0,
        retries: int = 5,
        retry_backoff: Backoff | None = None,
        max_inflight: int = 100,
        sweep_interval: float = 30.0,
        heartbeat: float = 10.0,
        checkpoint_interval: float = 5.0,
    ) -> None:
        self.db = db
        self.targets = dict(targets)
        self.clock = clock
        self.id = gateway or gateway_id()
        self.lease = lease
        self.retries = retries
        self.retry_backoff = retry_backoff or Backoff(base=2.0, cap=300.0, floor=1.0)
        self.max_inflight = max_inflight
        self.sweep_interval = sweep_interval
        self.heartbeat = heartbeat
        self.checkpoint_interval = checkpoint_interval
        self.checkpoint = Checkpoint()
        self.feed: ChangesFeed | None = None
        #: Documents being handled, by id: each Deferred fires when its handling ends.
        self.active: dict[str, Deferred[None]] = {}
        #: Why the gateway is not ready to work (empty when it is).
        self.couch_error: str | None = "not connected yet"
        self.counts: dict[str, int] = {}
        self._slots = {
            name: DeferredSemaphore(max(1, t.concurrency)) for name, t in self.targets.items()
        }
        self._saved_seq: Any = None
        self._checkpoint_doc: Doc = {"_id": CHECKPOINT_ID}
        self._timers: dict[str, IDelayedCall] = {}
        self._loops: list[LoopingCall] = []
        self._starting: Deferred[None] | None = None
        self._loading: list[Deferred[None]] = []
        self._sweeping: Deferred[None] | None = None

    # -- life cycle ------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._starting = self._start()
        self._starting.addErrback(_unless_cancelled, "gateway start-up failed")

    @inlineCallbacks
    def _start(self) -> Any:
        backoff = Backoff(base=0.25, cap=10.0)
        while self.running:
            try:
                welcome = yield self.db.welcome()
                created = yield self.db.create()
                if created:
                    log.info("created database {db}", db=self.db.url)
                yield design.push(self.db)
                try:
                    saved = yield self.db.get(CHECKPOINT_ID)
                except NotFound:
                    saved = {}
                break
            except Exception as e:
                self.couch_error = f"CouchDB at {self.db.url}: {_describe(e)}"
                delay = backoff.next()
                log.warn(
                    "{error}; trying again in {delay:.1f}s", error=self.couch_error, delay=delay
                )
                yield deferLater(self.clock, delay, lambda: None)
        if not self.running:
            return
        self.couch_error = None
        self.checkpoint = Checkpoint(saved.get("seq"))
        self._saved_seq = self.checkpoint.seq
        self._checkpoint_doc = {"_id": CHECKPOINT_ID, **saved}
        if supports_selector(welcome):
            params: dict[str, Any] = {"filter": "_selector"}
            body: Any = {"selector": NEW_MESSAGES_SELECTOR}
        else:
            params, body = {"filter": f"{design.DDOC}/new"}, None
        self.feed = ChangesFeed(
            self.db,
            self._changed,
            self.clock,
            params,
            body,
            since=self.checkpoint.seq,
            heartbeat=self.heartbeat,
        )
        self.feed.start()
        self._loading = [
            self._load(target).addErrback(_unless_cancelled, "loading a route failed")
            for target in self.targets.values()
        ]
        self._every(self.sweep_interval, self.sweep)
        self._every(self.checkpoint_interval, self.save_checkpoint, now=False)

    def _every(self, interval: float, f: Any, now: bool = True) -> None:
        def guarded() -> Deferred[None]:
            d: Deferred[None] = maybeDeferred(f)
            return d.addErrback(lambda fail: log.failure("{f} failed", fail, f=f.__name__))

        loop = LoopingCall(guarded)
        loop.clock = self.clock
        loop.start(interval, now=now)
        self._loops.append(loop)

    @inlineCallbacks
    def _load(self, target: ITarget) -> Any:
        backoff = Backoff(base=1.0, cap=60.0)
        while self.running:
            try:
                yield target.load()
            except Exception as e:
                delay = backoff.next()
                log.warn(
                    "route {route} not ready: {error}; trying again in {delay:.0f}s",
                    route=target.name,
                    error=target.error or _describe(e),
                    delay=delay,
                )
                yield deferLater(self.clock, delay, lambda: None)
            else:
                self.sweep_soon()
                return

    @inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        for starting in [self._starting, *self._loading]:
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
        if self._sweeping is not None:
            yield self._sweeping
        if self.couch_error is None:
            yield self.save_checkpoint()

    # -- readiness -------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Why the gateway is not ready; empty when CouchDB, the feed and the routes are up."""
        problems = []
        if self.couch_error:
            problems.append(self.couch_error)
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
        token = self.checkpoint.received(change["seq"])
        doc = change.get("doc")
        if change.get("deleted") or not message.is_message(doc):
            self.checkpoint.done(token)
            return
        self.submit(doc).addBoth(lambda _: self.checkpoint.done(token))  # type: ignore[arg-type]

    def submit(self, doc: Doc) -> Deferred[None]:
        """
        Look at a document and do what is due; a Deferred that fires when that is done.

        A document already being handled is not handled twice at once.
        """
        doc_id = doc["_id"]
        if doc_id in self.active:
            return succeed(None)
        finished: Deferred[None] = Deferred()
        self.active[doc_id] = finished
        self._throttle()

        def end(result: Any) -> None:
            if isinstance(result, Failure):
                log.failure("handling {id} failed", result, id=doc_id)
            del self.active[doc_id]
            self._throttle()
            finished.callback(None)

        self._handle(doc).addBoth(end)
        return finished

    def _throttle(self) -> None:
        """Stop reading the feed while C{max_inflight} documents are being handled."""
        if self.feed is None:
            return
        if len(self.active) >= self.max_inflight:
            self.feed.pause()
        elif self.feed.paused:
            self.feed.resume()

    def sweep_soon(self) -> None:
        if self.running and "sweep" not in self._timers:
            self._timers["sweep"] = self.clock.callLater(0, self._sweep_now)

    def _sweep_now(self) -> None:
        del self._timers["sweep"]
        self.sweep().addErrback(lambda f: log.failure("sweep failed", f))

    @inlineCallbacks
    def sweep(self) -> Any:
        """Submit the work that is due now (as much as there is room for)."""
        if self._sweeping is not None or self.couch_error is not None:
            return
        self._sweeping = Deferred()
        try:
            now_ms = int(self.clock.seconds() * 1000)
            page = max(self.max_inflight, 10)
            params: dict[str, Any] = {"endkey": now_ms, "include_docs": "true", "limit": page}
            for _ in range(10):
                room = self.max_inflight - len(self.active)
                if room <= 0:
                    break
                result = yield self.db.view(design.DDOC, "due", **params)
                rows = result.get("rows", [])
                for row in rows:
                    doc = row.get("doc")
                    if (
                        doc
                        and doc["_id"] not in self.active
                        and len(self.active) < self.max_inflight
                    ):
                        self.submit(doc)
                if len(rows) < page:
                    break
                last = rows[-1]
                params.update(startkey=last["key"], startkey_docid=last["id"], skip=1)
        finally:
            sweeping, self._sweeping = self._sweeping, None
            sweeping.callback(None)

    # -- handling one message ----------------------------------------------------------------------

    @inlineCallbacks
    def _handle(self, doc: Doc) -> Any:
        for _ in range(20):
            now = self.clock.seconds()
            due = message.due(doc, now)
            if due is None:
                return
            if doc.get("cancel_requested") is True:
                written = yield self._transition(doc, message.cancelled(now))
            else:
                try:
                    if due == "new":
                        message.check_new(doc)
                    call = message.call_of(doc)
                    target = self.targets.get(call.route)
                    if target is None:
                        raise Rejected(
                            f"there is no route {call.route!r} "
                            f"(routes: {', '.join(sorted(self.targets))})"
                        )
                    if target.state != "ready":
                        return  # the sweep looks again once the route has loaded
                    prepared = target.prepare(call.operation, call.args)
                except Rejected as e:
                    written = yield self._transition(doc, message.rejected(str(e), now))
                else:
                    written = yield self._dispatch(doc, target, prepared)
            if written is not None:
                return
            try:
                doc = yield self.db.get(doc["_id"])  # it changed under us: look again
            except NotFound:
                return  # deleted
        log.warn("gave up on {id}: it kept changing", id=doc["_id"])

    @inlineCallbacks
    def _transition(self, doc: Doc, fields: dict[str, Any]) -> Any:
        """Write C{fields} on the revision read; answer the new document, or None on a conflict."""
        new = message.apply(doc, fields)
        try:
            result = yield self.db.put(new)
        except Conflict:
            return None
        new["_rev"] = result["rev"]
        if new.get("status") in message.TERMINAL:
            self._count(new)
        return new

    @inlineCallbacks
    def _dispatch(self, doc: Doc, target: ITarget, prepared: Any) -> Any:
        """Claim, call, write back; answer None if the claim lost (the document changed)."""
        slots = self._slots[target.name]
        yield slots.acquire()
        try:
            if not self.running:
                return doc  # stopping: leave it for the next start
            claimed = yield self._transition(
                doc, message.claimed(doc, self.id, self.clock.seconds(), self.lease)
            )
            if claimed is None:
                return None
            started = self.clock.seconds()
            try:
                answer = yield target.call(prepared, claimed["_id"])
            except Exception as e:
                fields = self._failure(claimed, e)
            else:
                fields = message.forwarded(answer, self.clock.seconds())
            log.info(
                "{id} {status} on route {route} after {duration:.3f}s",
                id=claimed["_id"],
                status=fields["status"],
                route=target.name,
                duration=self.clock.seconds() - started,
            )
            final = yield self._write_back(claimed, fields)
            if final is not None and final.get("status") == "retrying":
                self._retry_later(final)
            return claimed
        finally:
            slots.release()

    def _failure(self, doc: Doc, error: Exception) -> dict[str, Any]:
        now = self.clock.seconds()
        if isinstance(error, Fault):
            return message.failed("fault", str(error), now)
        if isinstance(error, Rejected):
            return message.rejected(str(error), now)
        if isinstance(error, Transient):
            attempts = int(doc.get("attempts") or 1)
            if attempts < self.retries:
                delay = self.retry_backoff.delay(attempts - 1)
                return message.retrying("transient", str(error), now, delay)
            return message.failed("transient", f"{error} (after {attempts} attempts)", now)
        return message.failed("error", _describe(error), now)

    @inlineCallbacks
    def _write_back(self, claimed: Doc, fields: dict[str, Any]) -> Any:
        """
        Write an outcome over our claim, merging into the current revision on a conflict (a
        client's edits are kept); give up only if the claim is no longer ours.  CouchDB being
        unreachable is waited out, so an answer is never lost while the gateway runs.
        """
        doc = claimed
        backoff = Backoff(base=0.5, cap=30.0)
        while True:
            try:
                written = yield self._transition(doc, fields)
                if written is not None:
                    return written
                doc = yield self.db.get(claimed["_id"])
                if doc.get("status") != "dispatching" or doc.get("claim") != claimed.get("claim"):
                    log.warn(
                        "{id}: the claim was lost before the answer was written; answer dropped",
                        id=claimed["_id"],
                    )
                    return None
            except (CouchError, ConnectionError, OSError) as e:
                if isinstance(e, CouchError) and e.status < 500 and e.status not in (401, 403):
                    raise
                delay = backoff.next()
                log.warn(
                    "{id}: cannot write the outcome ({error}); trying again in {delay:.1f}s",
                    id=claimed["_id"],
                    error=_describe(e),
                    delay=delay,
                )
                yield deferLater(self.clock, delay, lambda: None)

    def _retry_later(self, doc: Doc) -> None:
        at = message.parse_time(doc.get("next_attempt_at")) or self.clock.seconds()
        doc_id = doc["_id"]

        def fire() -> None:
            self._timers.pop(key, None)
            self.db.get(doc_id).addCallback(self.submit).addErrback(
                lambda f: log.failure("retry of {id} failed", f, id=doc_id)
            )

        key = f"retry:{doc_id}"
        old = self._timers.pop(key, None)
        if old is not None and old.active():
            old.cancel()
        self._timers[key] = self.clock.callLater(max(0.0, at - self.clock.seconds()), fire)

    def _count(self, doc: Doc) -> None:
        status = doc["status"]
        self.counts[status] = self.counts.get(status, 0) + 1

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
            log.warn("cannot count messages: {error}", error=_describe(e))
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
            "routes": {name: _route_status(t) for name, t in sorted(self.targets.items())},
        }


def _route_status(target: ITarget) -> dict[str, Any]:
    return {
        "kind": target.kind,
        "state": target.state,
        "error": target.error,
        "concurrency": target.concurrency,
        "busy": target.busy,
    }


def _unless_cancelled(failure: Failure, what: str) -> None:
    if not failure.check(CancelledError):
        log.failure(what, failure)


def _describe(error: BaseException) -> str:
    """A one-line description of an error, without the URL's credentials."""
    text = str(error) or type(error).__name__
    if isinstance(error, CouchError):
        return text
    return f"{type(error).__name__}: {text}" if type(error).__name__ not in text else text
