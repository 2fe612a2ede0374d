"""
The dispatch: claim a message, wait for one of its route's slots (and its rate), call the
target within a deadline, and turn the answer or the error into the message's outcome.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    inlineCallbacks,
    maybeDeferred,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from couchgw import message
from couchgw.couch.client import Doc
from couchgw.errors import describe_error
from couchgw.gateway.breaker import Breaker
from couchgw.gateway.claims import Claim, Claims
from couchgw.message import Rejected
from couchgw.metrics import Metrics
from couchgw.targets.interfaces import Fault, ITarget, Outage, Transient, Unreachable
from couchgw.timing import Backoff, PrioritySlots, RateLimit
from couchgw.tracing import Attempt, Tracing

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
    #: Seconds a message keeps retrying from its first transient failure (instead of counting).
    retry_for: float | None = None
    #: The longest wait between retries, and between probes of the route when it is out.
    backoff_max: float = 300.0


class Dispatch:
    """
    @param drained: called when a message of a route is done (L{Intake.drained}).
    @param wake_at: sweeps at a time, for a retry (L{Intake.wake_at}).
    @param route_back: called when a route that was out answers again (L{Routes.back}).
    @param tracing: the spans of each attempt (L{couchgw.tracing}).
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
        route_back: Callable[[str], None],
        tracing: Tracing | None = None,
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
        self._route_back = route_back
        self.tracing = tracing or Tracing()
        self.slots = {name: PrioritySlots(max(1, t.concurrency)) for name, t in targets.items()}
        self._backoffs = {
            name: Backoff(
                base=policy.backoff, cap=policy.backoff_max, floor=min(1.0, policy.backoff)
            )
            for name, policy in self.policies.items()
            if policy.backoff is not None
        }
        #: Each route's circuit breaker: an outage of its target costs no attempts.
        self.breakers = {
            name: Breaker(
                clock,
                name,
                Backoff(base=1.0, cap=max(1.0, policy.backoff_max)),
                partial(self._breaker_changed, name),
            )
            for name, policy in self.policies.items()
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

    def _breaker_changed(self, route: str) -> None:
        if not self.breakers[route].out:  # closed, or a probe may go: the waiting go on
            self._route_back(route)

    def out(self, route: str) -> bool:
        """Whether a route's target is out (its breaker open, no probe to make): no call now."""
        return self.breakers[route].out

    def turn(self, route: str) -> str | None:
        """
        Whether a call of this route may be made now: C{"call"}, C{"probe"} (the call that
        tells whether a route that was out is back: this caller makes it), or None (out).
        """
        breaker = self.breakers[route]
        if breaker.closed:
            return "call"
        return "probe" if breaker.take_probe() else None

    def problems(self) -> list[str]:
        return [
            f"route {name} out: {breaker.reason}"
            for name, breaker in sorted(self.breakers.items())
            if not breaker.closed
        ]

    def full(self, route: str) -> bool:
        """Whether a route has as many messages in flight as its C{inflight} bound allows."""
        bound = self.bounds[route]
        return bound is not None and self.inflight[route] >= bound

    def describe(self, target: ITarget, offers: bool = False) -> dict[str, Any]:
        """A route's state and policy as plain JSON; with C{offers}, what its target offers."""
        name = target.name
        policy, breaker = self.policies[name], self.breakers[name]
        out = target.state == "ready" and not breaker.closed
        about = dict(target.describe()) if offers else {}
        about.update(
            kind=target.kind,
            state="out" if out else target.state,
            error=f"out: {breaker.reason}" if out else target.error,
            breaker=breaker.describe(),
            concurrency=target.concurrency,
            busy=target.busy,
            in_flight=self.inflight[name],
            inflight=policy.inflight,
            retries=self.retries_of(name),
            rate=policy.rate,
        )
        return about

    def retries_of(self, route: str) -> int:
        return self.policies[route].retries or self.retries

    def start(self) -> None:
        for breaker in self.breakers.values():
            breaker.start()

    def stop(self) -> None:
        """Messages claimed and waiting for a slot give their claims back; no more probes."""
        for queued in list(self._queued):
            queued.cancel()
        for breaker in self.breakers.values():
            breaker.stop()

    @inlineCallbacks
    def dispatch(
        self,
        doc: Doc,
        target: ITarget,
        prepared: Any,
        plan: message.Plan,
        probe: bool = False,
        seen: float | None = None,
    ) -> Any:
        """
        Claim, wait for one of the route's slots, call, write back; answer None if the claim
        lost (the document changed).  The claim comes before the slot, so that a slot set free
        goes to a message claimed already: its call starts as the last one ends, not a CouchDB
        round trip later.  The route's C{inflight} bound limits how many wait so, claimed, and
        they get the slots highest priority first.  With C{probe}, the call is the one that
        tells whether a route that was out is back.  C{seen}: when the message was first read
        (its trace's wait begins there, or at its C{requested_at}, or when its retry came due).
        """
        name = target.name
        self.inflight[name] += 1
        spans = (
            self.tracing.attempt(doc, plan, _waiting_since(doc, plan, seen, self.clock))
            if self.tracing.on
            else None
        )
        try:
            if not self._running() or target.state != "ready":
                if probe:
                    self.breakers[name].pass_on()
                return doc  # stopping, or the route went down: leave it for later
            if spans is not None:
                spans.claiming(self.clock.seconds())
            claimed = yield self.claims.take(doc, spans.claim_fields if spans else {})
            if spans is not None:
                spans.claimed(self.clock.seconds(), claimed is not None)
            if claimed is None:
                if probe:
                    self.breakers[name].pass_on()
                return None
            claim = self.claims.hold(claimed)
            try:
                yield self._call(doc, claim, target, prepared, plan, probe, spans)
                return claimed
            finally:
                self.claims.let_go(claim)
        finally:
            if spans is not None:
                spans.end(self.clock.seconds())
            self.inflight[name] -= 1
            self._drained(name)

    @inlineCallbacks
    def _call(
        self,
        doc: Doc,
        claim: Claim,
        target: ITarget,
        prepared: Any,
        plan: message.Plan,
        probe: bool,
        spans: Attempt | None,
    ) -> Any:
        """
        Call the target for a claimed message once the route has a slot; write the outcome.  A
        failure that is the route's (L{Breaker}) is no outcome: the claim is given back.
        """
        name = target.name
        claimed = claim.claimed
        breaker = self.breakers[name]
        slots = self.slots[name]
        queued = slots.acquire(plan.priority)
        self._queued.add(queued)
        try:
            yield queued
        except CancelledError:  # stopping
            if probe:
                breaker.pass_on()
            yield claim.finish(message.released(doc))
            return
        finally:
            self._queued.discard(queued)
        slot_held = True
        try:
            rate = self._rates.get(name)
            if rate is not None:
                yield rate.wait()
            if not self._running() or target.state != "ready" or not (breaker.closed or probe):
                # stopping, or the route went down or out, while it waited: give the claim back
                if probe:
                    breaker.pass_on()
                yield claim.finish(message.released(doc))
                return
            now = self.clock.seconds()
            if plan.expired(now):  # while it waited for a slot: it is not called
                if probe:
                    breaker.pass_on()
                fields = {**message.released(doc), **message.expired(doc, now)}
                yield self._write(claim, {**fields, **_trace_of(claimed)}, spans)
                log.warn(
                    "{id} expired while it waited for route {route}", id=claimed["_id"], route=name
                )
                return
            log.info(
                "{id} dispatching on route {route} (attempt {attempt})",
                id=claimed["_id"],
                route=name,
                attempt=claimed.get("attempts"),
            )
            headers = {}
            if spans is not None:
                operation = claimed.get("operation")
                operation = operation or getattr(target, "default_operation", None)
                headers = spans.calling(now, name, operation, claimed.get("attempts"))
            started = now
            # (without headers to pass on, a kind written before them is called as it expects)
            extra = (headers,) if headers else ()
            call: Deferred[Any] = maybeDeferred(target.call, prepared, claimed["_id"], *extra)
            call.addBoth(_release, slots)  # the slot is free once the call has really ended
            slot_held = False
            try:
                answer = yield first(
                    call,
                    target.timeout + CALL_MARGIN,
                    self.clock,
                    Outage(f"no answer within {target.timeout + CALL_MARGIN:g}s"),
                )
            except Outage as e:
                route_out = breaker.failed(str(e), unreachable=isinstance(e, Unreachable))
                if route_out and not self._too_late(claimed, name):
                    log.warn(
                        "{id}: route {route} is out ({error}); it waits for the route",
                        id=claimed["_id"],
                        route=name,
                        error=str(e),
                    )
                    now = self.clock.seconds()
                    if spans is not None:
                        spans.called(now, "out", str(e))
                    fields = message.out(doc, f"route out: {e}", now)
                    yield self._write(claim, {**fields, **_trace_of(claimed)}, spans)
                    return
                fields = self.outcome_of(claimed, e, name)
            except Exception as e:
                breaker.succeeded()  # it answered
                fields = self.outcome_of(claimed, e, name)
            else:
                breaker.succeeded()
                fields = message.forwarded(answer, self.clock.seconds())
            duration = self.clock.seconds() - started
            if spans is not None:
                error = fields.get("error")
                spans.called(
                    self.clock.seconds(),
                    fields["status"],
                    error.get("message") if isinstance(error, dict) else None,
                )
            self.metrics.dispatch.labels(name).observe(duration)
            self._log_outcome(claimed, fields, name, duration)
            final = yield self._write(claim, fields, spans)
            if final is not None and final.get("status") == "retrying":
                at = message.parse_time(final.get("next_attempt_at"))
                self._wake_at(at if at is not None else self.clock.seconds())
        finally:
            if slot_held:
                slots.release()

    @inlineCallbacks
    def _write(self, claim: Claim, fields: dict[str, Any], spans: Attempt | None) -> Any:
        """Write the outcome of a claim (within a C{couchgw.write} span when tracing)."""
        if spans is not None:
            spans.writing(self.clock.seconds(), fields["status"])
        try:
            written = yield claim.finish(fields)
        except Exception as e:
            if spans is not None:
                spans.written(self.clock.seconds(), describe_error(e))
            raise
        if spans is not None:
            spans.written(self.clock.seconds(), None if written else "the claim was lost")
        return written

    def _too_late(self, doc: Doc, route: str) -> bool:
        """Whether a message's failures began C{retry_for} ago (its route's setting) or more."""
        retry_for = self.policies[route].retry_for
        since = _first_failure(doc)
        return (
            retry_for is not None
            and since is not None
            and self.clock.seconds() - since >= retry_for
        )

    def outcome_of(self, doc: Doc, error: Exception, route: str) -> dict[str, Any]:
        """The fields a failed call writes: final, or C{retrying} after a backoff."""
        now = self.clock.seconds()
        if isinstance(error, Fault):
            return message.failed("fault", str(error), now)
        if isinstance(error, Rejected):
            return message.rejected(str(error), now)
        if isinstance(error, Transient):
            attempts = int(doc.get("attempts") or 1)
            since = _first_failure(doc) or now
            retry_for = self.policies[route].retry_for
            if retry_for is None:
                again = attempts < self.retries_of(route)
            else:
                again = now - since < retry_for
            if again:
                delay = self._backoffs.get(route, self.retry_backoff).delay(attempts - 1)
                if message.has_expired(doc, now + delay):
                    return message.expired(doc, now, f"its next attempt would come later: {error}")
                return message.retrying("transient", str(error), now, delay, since)
            return message.failed(
                "transient",
                f"{error} (after {attempts} attempts in {now - since:.0f}s)",
                now,
            )
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


def _release(result: Any, slots: PrioritySlots) -> Any:
    slots.release()
    return result


def _waiting_since(doc: Doc, plan: message.Plan, seen: float | None, clock: IReactorTime) -> float:
    """
    When a message began to wait for this attempt: when its retry or its scheduled time came,
    or when it was requested (its C{requested_at}) or first read.
    """
    due = message.parse_time(doc.get("next_attempt_at"))
    if due is not None:
        return due
    if plan.requested_at is not None:
        return plan.requested_at
    return clock.seconds() if seen is None else seen


def _trace_of(claimed: Doc) -> dict[str, Any]:
    """
    The C{trace} a claim wrote, to be kept by fields that give the claim back as if it had not
    been (L{message.released}): the message's later spans join that trace.
    """
    return {"trace": claimed["trace"]} if "trace" in claimed else {}


def _first_failure(doc: Doc) -> float | None:
    """When the transient failures of a message that is being retried began."""
    error = doc.get("error")
    if not isinstance(error, dict) or error.get("kind") != "transient":
        return None
    return message.parse_time(error.get("since"))
