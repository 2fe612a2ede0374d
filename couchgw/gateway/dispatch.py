"""
The dispatch: claim a message, wait for one of its route's slots (and its rate), call the
target within a deadline, and write what the answer or the error makes of the message
(L{couchgw.gateway.outcomes}).  Each route's circuit breaker (L{couchgw.gateway.breaker}) says
whether a call may go.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Literal, Protocol

from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from couchgw import checks, message
from couchgw.couch.client import Doc
from couchgw.errors import describe_error
from couchgw.gateway.breaker import Breaker, Trial
from couchgw.gateway.claims import Claim, Claims
from couchgw.gateway.outcomes import Outcomes, Policy
from couchgw.metrics import Metrics
from couchgw.targets.interfaces import PROBE_TIMEOUT, ITarget, Outage, Unreachable
from couchgw.timing import Backoff, PrioritySlots, RateLimit, deadline
from couchgw.tracing import Attempt, Tracing, passed_on

log = Logger(namespace="couchgw.gateway")

#: Seconds the gateway waits beyond a target's own timeout before it gives up on a call.
CALL_MARGIN = 5.0
#: Seconds a route's trial call may take beyond its call's own deadline (its claim, its wait
#: for a slot) before the breaker lets another call be the trial.
TRIAL_MARGIN = 60.0

#: What C{Dispatch.turn} answers: a call may go, this call is the route's trial, or none may.
Turn = Literal["call"] | Trial | None


class Place(Protocol):
    """The database of a message (L{couchgw.gateway.tenant.Tenant}): its claims, its sweep."""

    name: str
    claims: Claims

    def wake_at(self, when: float) -> None: ...


class Dispatch:
    """
    @param drained: called when a message of a route is done (L{Backlog.drained}).
    @param route_changed: called when a route's breaker changed: it went out, a trial may go,
        it is back (the messages waiting for it look again).
    @param tracing: the spans of each attempt (L{couchgw.tracing}).
    """

    def __init__(
        self,
        clock: IReactorTime,
        targets: Mapping[str, ITarget],
        policies: Mapping[str, Policy],
        metrics: Metrics,
        *,
        retries: int,
        retry_backoff: Backoff,
        running: Callable[[], bool],
        drained: Callable[[str], None],
        route_changed: Callable[[str], None],
        tracing: Tracing | None = None,
    ) -> None:
        self.clock = clock
        self.targets = targets
        self.metrics = metrics
        self.policies = {name: policies.get(name, Policy()) for name in targets}
        self.outcomes = Outcomes(
            clock, self.policies, metrics, retries=retries, retry_backoff=retry_backoff
        )
        self._running = running
        self._drained = drained
        self.tracing = tracing or Tracing()
        self.slots = {name: PrioritySlots(max(1, t.concurrency)) for name, t in targets.items()}
        #: Each route's circuit breaker: an outage of its target costs no attempts.
        self.breakers = {
            name: Breaker(
                clock,
                name,
                backoff_max=policy.backoff_max,
                probe=getattr(targets[name], "probe", None),
                deadline=targets[name].timeout + CALL_MARGIN + TRIAL_MARGIN,
                probe_timeout=min(PROBE_TIMEOUT, targets[name].timeout),
                on_change=partial(route_changed, name),
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

    def room(self, route: str) -> int | None:
        """
        How many more messages of a route may go now: none while it is not ready or out, one
        for its trial, as many as its C{inflight} bound leaves room for (None: no bound).
        """
        target, breaker = self.targets.get(route), self.breakers.get(route)
        if target is None or breaker is None:
            return None  # no such route: its messages are rejected
        if target.state != "ready" or not breaker.open_to_calls:
            return 0
        if not breaker.closed:
            return 1
        bound = self.bounds[route]
        return None if bound is None else max(0, bound - self.inflight[route])

    def turn(self, route: str) -> Turn:
        """
        Whether a call of this route may be made now: C{"call"}, a L{Trial} (the call that
        tells whether a route that was out is back: this caller makes it, and ends it or
        gives it back), or None (the route is out, or full).
        """
        breaker = self.breakers[route]
        if breaker.closed:
            bound = self.bounds[route]
            return None if bound is not None and self.inflight[route] >= bound else "call"
        return breaker.take_trial()

    def problems(self) -> list[str]:
        return [
            f"route {name} out: {breaker.reason}"
            for name, breaker in sorted(self.breakers.items())
            if not breaker.closed
        ]

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
            retries=self.outcomes.retries_of(name),
            rate=policy.rate,
        )
        return about

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
        place: Place,
        doc: Doc,
        target: ITarget,
        prepared: Any,
        plan: checks.Plan,
        trial: Trial | None = None,
        seen: float | None = None,
    ) -> Any:
        """
        Claim, wait for one of the route's slots, call, write back; answer None if the claim
        lost (the document changed).  The claim comes before the slot, so that a slot set free
        goes to a message claimed already: its call starts as the last one ends, not a CouchDB
        round trip later.  The route's C{inflight} bound limits how many wait so, claimed, and
        they get the slots highest priority first.  A C{trial} (the call that tells whether a
        route that was out is back) is given back on every path that does not end its call.
        C{seen}: when the message was first read (its trace's wait begins there, or at its
        C{requested_at}, or when its retry came due).
        """
        name = target.name
        self.inflight[name] += 1
        spans: Attempt | None = None
        try:
            if self.tracing.on:
                spans = self.tracing.attempt(doc, plan, _waiting_since(doc, plan, seen, self.clock))
            if not self._running() or target.state != "ready":
                return doc  # stopping, or the route went down: leave it for later
            if spans is not None:
                spans.claiming(self.clock.seconds())
            claimed = yield place.claims.take(doc, spans.claim_fields if spans else {})
            if spans is not None:
                spans.claimed(self.clock.seconds(), claimed is not None)
            if claimed is None:
                return None
            claim = place.claims.hold(claimed)
            try:
                yield self._call(place, doc, claim, target, prepared, plan, trial, spans)
                return claimed
            finally:
                place.claims.let_go(claim)
        finally:
            if trial is not None:
                trial.give_back()  # (nothing happens when its call reported its end)
            if spans is not None:
                spans.end(self.clock.seconds())
            self.inflight[name] -= 1
            self._drained(name)

    @inlineCallbacks
    def _call(
        self,
        place: Place,
        doc: Doc,
        claim: Claim,
        target: ITarget,
        prepared: Any,
        plan: checks.Plan,
        trial: Trial | None,
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
        queued = slots.acquire(plan.priority, place.name)
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
            if not self._running() or target.state != "ready" or not (breaker.closed or trial):
                # stopping, or the route went down or out, while it waited: give the claim back
                yield claim.finish(message.released(doc))
                place.wake_at(self.clock.seconds())  # (found by its sweep, kept for the route)
                return
            now = self.clock.seconds()
            if plan.expired(now):  # while it waited for a slot: it is not called
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
            headers = passed_on(plan)  # the message's own trace context, where no span records
            if spans is not None:
                operation = claimed.get("operation")
                operation = operation or getattr(target, "default_operation", None)
                headers = spans.calling(now, name, operation, claimed.get("attempts"))
            # (without headers to pass on, a kind written before them is called as it expects)
            extra = (headers,) if headers else ()
            call: Deferred[Any] = maybeDeferred(target.call, prepared, claimed["_id"], *extra)
            call.addBoth(_release, slots)  # the slot is free once the call has really ended
            slot_held = False
            limit = target.timeout + CALL_MARGIN
            try:
                answer = yield deadline(
                    call, limit, self.clock, Outage(f"no answer within {limit:g}s")
                )
            except Outage as e:
                out = breaker.failed(str(e), isinstance(e, Unreachable), trial)
                if out and not self.outcomes.too_late(claimed, name):
                    yield self._give_back_out(claim, doc, str(e), spans)
                    # (its database's sweep finds it due now, and keeps it for the route)
                    place.wake_at(self.clock.seconds())
                    return
                fields = self.outcomes.of_error(claimed, e, name)
            except Exception as e:
                breaker.succeeded(trial)  # it answered
                fields = self.outcomes.of_error(claimed, e, name)
            else:
                breaker.succeeded(trial)
                fields = message.forwarded(answer, self.clock.seconds())
            duration = self.clock.seconds() - now
            if spans is not None:
                error = fields.get("error")
                spans.called(
                    self.clock.seconds(),
                    fields["status"],
                    error.get("message") if isinstance(error, dict) else None,
                )
            self.metrics.dispatch.labels(name).observe(duration)
            self.outcomes.log(claimed, fields, name, duration)
            final = yield self._write(claim, fields, spans)
            if final is not None and final.get("status") == "retrying":
                at = message.parse_time(final.get("next_attempt_at"))
                place.wake_at(at if at is not None else self.clock.seconds())
        finally:
            if slot_held:
                slots.release()

    @inlineCallbacks
    def _give_back_out(self, claim: Claim, doc: Doc, error: str, spans: Attempt | None) -> Any:
        """The route is out: the message waits for it, its attempt not used."""
        claimed = claim.claimed
        log.warn(
            "{id}: route {route} is out ({error}); it waits for the route",
            id=claimed["_id"],
            route=claimed.get("target", message.DEFAULT_ROUTE),
            error=error,
        )
        now = self.clock.seconds()
        if spans is not None:
            spans.called(now, "out", error)
        fields = message.route_out(doc, f"route out: {error}", now)
        yield self._write(claim, {**fields, **_trace_of(claimed)}, spans)

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


def _release(result: Any, slots: PrioritySlots) -> Any:
    slots.release()
    return result


def _waiting_since(doc: Doc, plan: checks.Plan, seen: float | None, clock: IReactorTime) -> float:
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
