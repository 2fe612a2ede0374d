"""
Handling one message: from its current state, decide what is due and do it.

A message with conflicts is merged first (L{couchgw.gateway.claims}); a new one is checked,
and rejected in place when it is malformed; a cancelled one is marked so; one whose route may
take a call now is handed to the dispatch (L{couchgw.gateway.dispatch}), which claims and calls
it, and one whose route is full, loading or out waits for it in the intake (its change
handled); a finished one with a callback gets it delivered.  Every write is on the revision read: a
conflict means the document changed, and it is read and looked at again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from couchgw import checks, message
from couchgw.checks import Rejected
from couchgw.couch import design
from couchgw.couch.batch import BulkWriter
from couchgw.couch.client import Database, Doc
from couchgw.couch.errors import Conflict, NotFound
from couchgw.errors import log_error
from couchgw.gateway.breaker import Trial
from couchgw.gateway.callbacks import Callbacks
from couchgw.gateway.claims import Claims
from couchgw.gateway.dispatch import Dispatch, Place
from couchgw.gateway.sweep import Owner
from couchgw.metrics import Metrics
from couchgw.targets.interfaces import ITarget

log = Logger(namespace="couchgw.gateway")


class Handling:
    """
    @param park: keeps a message whose route has no room for it now (full, loading, out), in
        the order of its plan and when it was first read, with its size if measured
        (L{Intake.park}).
    @param wake_at: sweeps at a time (L{Intake.wake_at}).
    @param finished: where to count the messages brought to a final status, by status.
    """

    def __init__(
        self,
        db: Database,
        writer: BulkWriter,
        clock: IReactorTime,
        gateway: str,
        *,
        owner: Owner,
        claims: Claims,
        targets: Mapping[str, ITarget],
        dispatch: Dispatch,
        place: Place,
        metrics: Metrics,
        callbacks: Callbacks | None,
        park: Callable[[str, Doc, checks.Plan, float, int | None], None],
        wake_at: Callable[[float], None],
        running: Callable[[], bool],
        max_bytes: int,
        finished: Counter[str] | None = None,
    ) -> None:
        self.db = db
        self.writer = writer
        self.clock = clock
        self.id = gateway
        self.owner = owner
        self.place = place
        self.claims = claims
        self.targets = targets
        self.dispatch = dispatch
        self.metrics = metrics
        self.callbacks = callbacks
        self._park = park
        self._wake_at = wake_at
        self._running = running
        self.max_bytes = max_bytes
        #: Messages this gateway brought to a final status, by status.
        self.counts: Counter[str] = Counter() if finished is None else finished
        #: Callbacks being delivered (the stop waits for them within its grace).
        self.deliveries: set[Deferred[None]] = set()

    @inlineCallbacks
    def handle(self, doc: Doc, seen: float | None = None) -> Any:
        """
        Do what is due for a message, looking again as long as it changes under the writes.

        @param seen: when the gateway first read it (now, if not given).
        """
        seen = self.clock.seconds() if seen is None else seen
        targets = self.targets
        for _ in range(20):  # looks at the document as it changes
            if not self._running() or not self.owner.mine(doc):
                return
            if doc.get("_conflicts"):
                resolved = yield self.claims.resolve(doc)
                doc = resolved or (yield self.db.get(doc["_id"], conflicts="true"))
                continue
            now = self.clock.seconds()
            due = message.due(doc, now, self.owner.holder_gone)
            if due is None:
                return
            if due == "takeover":
                # its gateway is gone, or its lease expired: free it at once (whatever room
                # there is for it), its outcome unknown; it is claimed anew as a retry
                holder = (doc.get("claim") or {}).get("by")
                why = f"taken over from gateway {holder}: the outcome of its call is unknown"
                written = yield self.transition(doc, message.retrying("interrupted", why, now, 0))
                if written is not None:
                    log.warn("{id} {why}", id=doc["_id"], why=why)
                    doc = written
                    continue
            elif due == "callback":
                if self.callbacks is None:
                    return  # not this gateway's to deliver
                record = self.callbacks.pending(doc["callback"], self.id, now)
                written = yield self.transition(doc, {"callback": record})
                if written is not None:
                    yield self._deliver(written)
            elif doc.get("cancel_requested") is True:
                written = yield self.transition(doc, message.cancelled(now))
            elif checks.has_expired(doc, now):  # (whatever its route)
                written = yield self.transition(doc, message.expired(doc, now))
                if written is not None:
                    log.warn("{id} expired: {why}", id=doc["_id"], why=written["error"]["message"])
            else:
                try:
                    size = checks.check_new(doc, self.max_bytes) if due == "new" else None
                    plan = checks.plan_of(doc)
                    call = checks.call_of(doc)
                    target = targets.get(call.route)
                    if target is None:
                        raise Rejected(
                            f"there is no route {checks.short(call.route)} "
                            f"(routes: {', '.join(sorted(targets))})"
                        )
                    if target.state != "ready":
                        self._park(target.name, doc, plan, seen, size)
                        return  # it waits for its route to load
                    prepared = target.prepare(call.operation, call.args)
                except Rejected as e:
                    written = yield self.transition(doc, message.rejected(str(e), now))
                    if written is not None:
                        log.warn("{id} rejected: {reason}", id=doc["_id"], reason=str(e))
                else:
                    if due in ("new", "scheduled") and plan.waits(now):
                        assert plan.not_before is not None
                        written = yield self._schedule(doc, plan.not_before, now)
                    else:
                        turn = self.dispatch.turn(target.name)
                        if turn is None:
                            self._park(target.name, doc, plan, seen, size)
                            return  # its route is full or out: it waits for room
                        trial = turn if isinstance(turn, Trial) else None
                        written = yield self.dispatch.dispatch(
                            self.place, doc, target, prepared, plan, trial=trial, seen=seen
                        )
            if written is not None:
                return
            try:
                doc = yield self.db.get(doc["_id"], conflicts="true")  # it changed: look again
            except NotFound:
                return  # deleted
        log.warn("gave up on {id}: it kept changing", id=doc["_id"])

    @inlineCallbacks
    def _schedule(self, doc: Doc, at: float, now: float) -> Any:
        """A message not to be called before C{at}: C{scheduled}, and a sweep then."""
        fields = message.scheduled(at, now)
        written = doc
        if any(doc.get(key) != value for key, value in fields.items() if key != "updated_at"):
            written = yield self.transition(doc, fields)
            if written is not None:
                log.info("{id} scheduled for {at}", id=doc["_id"], at=fields["next_attempt_at"])
        if written is not None:
            self._wake_at(at)
        return written

    @inlineCallbacks
    def reject_unreadable(self, doc_id: str, rev: str | None, why: str) -> Any:
        """Reject a new message in place, without reading it (too large or too deep)."""
        reason = checks.too_large(self.max_bytes) if why == "too large" else checks.undecodable()
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
    def transition(self, doc: Doc, fields: dict[str, Any]) -> Any:
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
            self.deliveries.add(delivery)
            delivery.addBoth(lambda _: self.deliveries.discard(delivery))
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

    def _count(self, doc: Mapping[str, Any], route: str | None = None) -> None:
        status = doc["status"]
        self.counts[status] += 1
        if route is None:
            target = doc.get("target", message.DEFAULT_ROUTE)
            known = isinstance(target, str) and target in self.targets
            route = target if known else "(none)"
        self.metrics.messages.labels(route, status).inc()
