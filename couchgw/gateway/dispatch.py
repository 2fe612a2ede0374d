"""
The dispatch: claim a message, wait for one of its route's slots (and its rate), call the
target within a deadline, and turn the answer or the error into the message's outcome.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    inlineCallbacks,
    maybeDeferred,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from couchgw import message
from couchgw.couch.client import Doc
from couchgw.errors import describe_error
from couchgw.gateway.claims import Claim, Claims
from couchgw.message import Rejected
from couchgw.metrics import Metrics
from couchgw.targets.interfaces import Fault, ITarget, Transient, Unreachable
from couchgw.timing import Backoff, RateLimit

log = Logger(namespace="couchgw.gateway")

#: Seconds the gateway waits beyond a target's own timeout before it gives up on a call.
CALL_MARGIN = 5.0


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


class Dispatch:
    """
    @param drained: called when a message of a route is done (L{Intake.drained}).
    @param wake_at: sweeps at a time, for a retry (L{Intake.wake_at}).
    @param route_down: called when a target is unreachable (L{Routes.down}).
    """

    def __init__(
        self,
        clock: IReactorTime,
        targets: Mapping[str, ITarget],
        policies: Mapping[str, Policy],
        claims: Claims,
        metrics: Metrics,
        *,
        retries: int,
        retry_backoff: Backoff,
        running: Callable[[], bool],
        drained: Callable[[str], None],
        wake_at: Callable[[float], None],
        route_down: Callable[[ITarget, str], None],
    ) -> None:
        self.clock = clock
        self.claims = claims
        self.metrics = metrics
        self.policies = {name: policies.get(name, Policy()) for name in targets}
        self.retries = retries
        self.retry_backoff = retry_backoff
        self._running = running
        self._drained = drained
        self._wake_at = wake_at
        self._route_down = route_down
        self.slots = {name: DeferredSemaphore(max(1, t.concurrency)) for name, t in targets.items()}
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
        #: Each route's C{inflight} bound (None: none).
        self.bounds = {name: policy.inflight for name, policy in self.policies.items()}
        #: Claimed messages waiting for a slot of their route (cancelled at stop).
        self._queued: set[Deferred[Any]] = set()

    def full(self, route: str) -> bool:
        """Whether a route has as many messages in flight as its C{inflight} bound allows."""
        bound = self.bounds[route]
        return bound is not None and self.inflight[route] >= bound

    def retries_of(self, route: str) -> int:
        return self.policies[route].retries or self.retries

    def stop(self) -> None:
        """Messages claimed and waiting for a slot give their claims back."""
        for queued in list(self._queued):
            queued.cancel()

    @inlineCallbacks
    def dispatch(self, doc: Doc, target: ITarget, prepared: Any) -> Any:
        """
        Claim, wait for one of the route's slots, call, write back; answer None if the claim
        lost (the document changed).  The claim comes before the slot, so that a slot set free
        goes to a message claimed already: its call starts as the last one ends, not a CouchDB
        round trip later.  The route's C{inflight} bound limits how many wait so, claimed.
        """
        name = target.name
        self.inflight[name] += 1
        try:
            if not self._running() or target.state != "ready":
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
            self.inflight[name] -= 1
            self._drained(name)

    @inlineCallbacks
    def _call(self, doc: Doc, claim: Claim, target: ITarget, prepared: Any) -> Any:
        """Call the target for a claimed message once the route has a slot; write the outcome."""
        name = target.name
        claimed = claim.claimed
        slots = self.slots[name]
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
            if not self._running() or target.state != "ready":
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
                answer = yield first(
                    call,
                    target.timeout + CALL_MARGIN,
                    self.clock,
                    Transient(f"no answer within {target.timeout + CALL_MARGIN:g}s"),
                )
            except Exception as e:
                if isinstance(e, Unreachable):
                    self._route_down(target, str(e))
                fields = self.outcome_of(claimed, e, name)
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

    def outcome_of(self, doc: Doc, error: Exception, route: str) -> dict[str, Any]:
        """The fields a failed call writes: final, or C{retrying} after a backoff."""
        now = self.clock.seconds()
        if isinstance(error, Fault):
            return message.failed("fault", str(error), now)
        if isinstance(error, Rejected):
            return message.rejected(str(error), now)
        if isinstance(error, Transient):
            attempts = int(doc.get("attempts") or 1)
            retries = self.retries_of(route)
            if attempts < retries:
                delay = self._backoffs.get(route, self.retry_backoff).delay(attempts - 1)
                return message.retrying("transient", str(error), now, delay)
            return message.failed("transient", f"{error} (after {attempts} attempts)", now)
        return message.failed("error", describe_error(error), now)

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
                retries=self.retries_of(route),
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


def first(
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
