"""
A route's circuit breaker: an outage of the target costs its messages no attempts, and the
route is back within a fraction of its outage's length.

- B{closed}: calls go.  A call that fails as an outage does (L{couchgw.targets.interfaces.Outage}:
  the connection refused, reset or closed without an answer, TLS failing, HTTP 502, 503 or 504,
  no answer in time) right after another one did, or one that could not connect at all
  (L{couchgw.targets.interfaces.Unreachable}), opens the breaker.  The first outage failure
  after a success is the message's own (a message that breaks its target must not hold the
  route for ever): it is retried as any transient error, using an attempt.
- B{open}: no call goes; the messages wait unclaimed, those whose calls failed given back as
  they were.  A timer probes the target after a fifth of the time it has been out (at least a
  second, at most the route's C{backoff_max}): so a route is found back within about a fifth
  of its outage, and a long outage costs one probe per C{backoff_max}.
- B{probing}: the target's own probe, cheaper than a message (an HTTP request to where its
  calls go), is under way; a kind without one goes straight to the trial.
- B{trial}: one message's call may go, and proves the route before its messages flood back: its
  answer closes the breaker, its outage failure opens it again.  The call that takes the trial
  (L{Breaker.take_trial}) reports its end or gives the trial back, on every path; a trial not
  reported by its deadline is freed by the breaker itself, so that no order of events holds a
  route for ever.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from couchgw.errors import describe_error
from couchgw.targets.interfaces import PROBE_TIMEOUT, Outage
from couchgw.timing import iso

log = Logger(namespace="couchgw.gateway")

#: The next probe comes after this share of the time the route has been out (drawn between).
SHARE = (0.15, 0.25)


class Trial:
    """The one call a route that was out lets through; given back unless it reported."""

    def __init__(self, breaker: Breaker, taken_at: float) -> None:
        self.breaker = breaker
        self.taken_at = taken_at

    def give_back(self) -> None:
        """The call was not made (or its end was reported already: then nothing happens)."""
        self.breaker._given_back(self)


class Breaker:
    """
    @param backoff_max: the longest wait between probes.
    @param probe: the target's own probe: a Deferred that fires when the target answers, and
        fails when it does not (None: a message's call is the probe).
    @param deadline: seconds a trial call may take from its taking to its end (its claim, its
        wait for a slot, the call) before the breaker frees the trial for another call.
    @param probe_timeout: seconds the target's own probe may take.
    @param on_change: called when the route's state changed (it opened, a trial may go, it
        closed): the messages that wait for the route look again.
    """

    def __init__(
        self,
        clock: IReactorTime,
        route: str,
        *,
        backoff_max: float = 300.0,
        probe: Callable[[], Deferred[Any]] | None = None,
        deadline: float = 300.0,
        probe_timeout: float = PROBE_TIMEOUT,
        on_change: Callable[[], None] = lambda: None,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.clock = clock
        self.route = route
        self.backoff_max = max(0.01, backoff_max)
        self.deadline = deadline
        self.probe_timeout = probe_timeout
        self.on_change = on_change
        self._probe_target = probe
        self._uniform = uniform
        #: C{closed}, C{open}, C{probing} or C{trial} (see the module).
        self.state = "closed"
        #: Why the route is out (None while closed).
        self.reason: str | None = None
        #: Outage failures in a row.
        self.failures = 0
        #: Times it opened.
        self.opened = 0
        #: When it last went out (None while closed).
        self.out_since: float | None = None
        #: The last probe: when it ended, how (a request to the target, or a message's call),
        #: and what it found.
        self.last_probe: dict[str, Any] | None = None
        #: When the next probe is due (None: none is).
        self.next_probe_at: float | None = None
        #: Probes by how and what they found: (C{request} or C{call}, C{answered}, C{failed} or
        #: C{lost}).
        self.probes: Counter[tuple[str, str]] = Counter()
        #: The trial taken and not yet reported (None: none, or it is free in C{trial}).
        self._trial: Trial | None = None
        self._timer: IDelayedCall | None = None
        self._probing: Deferred[Any] | None = None
        self._stopped = False

    # -- what calls may go -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    @property
    def open_to_calls(self) -> bool:
        """Whether a call may go now: the breaker is closed, or a trial is free."""
        return self.state == "closed" or (self.state == "trial" and self._trial is None)

    def take_trial(self) -> Trial | None:
        """The trial, for the caller's call to make (None: there is none to take)."""
        if self.state != "trial" or self._trial is not None:
            return None
        trial = self._trial = Trial(self, self.clock.seconds())
        self._arm(self.deadline, self._trial_lost)
        return trial

    # -- what calls found ----------------------------------------------------------------------

    def succeeded(self, trial: Trial | None = None) -> None:
        """A call got an answer (a fault is an answer too): the route works."""
        self.failures = 0
        if self.state == "closed":
            return
        if trial is not None and trial is self._trial:
            self._probed("call", "answered")
        log.info(
            "route {route} answers again (out for {seconds:.1f}s)",
            route=self.route,
            seconds=self._out_for(),
        )
        self.state, self.reason, self.out_since, self._trial = "closed", None, None, None
        self.next_probe_at = None
        self._cancel()
        self.on_change()

    def failed(self, reason: str, unreachable: bool = False, trial: Trial | None = None) -> bool:
        """
        A call failed as an outage does; answers whether that failure is the route's (the
        message uses no attempt, and waits for the route) rather than the message's own.
        While the route is out, only its trial's failure says something new: the calls that
        began before it went out end as they may.
        """
        self.failures += 1
        if self.state == "closed":
            if self.failures < 2 and not unreachable:
                return False
            self.opened += 1
            self.out_since = self.clock.seconds()
            log.warn("route {route} is out: {reason}", route=self.route, reason=reason)
            self._open(reason)
            return True
        if trial is not None and trial is self._trial:
            self._probed("call", f"failed: {reason}")
            self._open(reason)
        return True

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Probe again (a route out when the gateway stopped is probed once it starts)."""
        self._stopped = False
        if self.state != "closed":
            self.state, self._trial = "open", None
            self._arm(self._delay(), self._probe)

    def stop(self) -> None:
        """No more probes (the gateway stops)."""
        self._stopped = True
        self._cancel()
        self.next_probe_at = None

    def describe(self) -> dict[str, Any]:
        """The breaker as plain JSON: its state, since when it is out, its last and next probe."""
        probes: dict[str, int] = {}
        for (how, result), count in sorted(self.probes.items()):
            probes[f"{how} {result}"] = count
        return {
            "state": self.state,
            "reason": self.reason,
            "opened": self.opened,
            "out_since": None if self.out_since is None else iso(self.out_since),
            "last_probe": self.last_probe,
            "next_probe": None if self.next_probe_at is None else iso(self.next_probe_at),
            "probes": probes,
        }

    # -- the probes ----------------------------------------------------------------------------

    def _open(self, reason: str) -> None:
        self.state, self.reason, self._trial = "open", reason, None
        self._cancel()
        self._arm(self._delay(), self._probe)
        self.on_change()

    def _delay(self) -> float:
        """A share of the time the route has been out, at least a second, at most the cap."""
        drawn = self._out_for() * self._uniform(*SHARE)
        return min(self.backoff_max, max(min(1.0, self.backoff_max), drawn))

    def _out_for(self) -> float:
        return 0.0 if self.out_since is None else self.clock.seconds() - self.out_since

    def _probe(self) -> None:
        """Probe the target with its own probe, or let a message's call be the probe."""
        self._timer = None
        self.next_probe_at = None
        if self._probe_target is None:
            self._trial_free()
            return
        self.state = "probing"
        try:
            probing = self._probe_target()
        except Exception as e:
            probing = Deferred()
            probing.errback(Failure(e))
        self._probing = probing
        probing.addTimeout(self.probe_timeout, self.clock)
        probing.addCallbacks(self._probe_answered, self._probe_failed, errbackArgs=(probing,))

    def _probe_answered(self, _: Any) -> None:
        self._probing = None
        if self.state == "probing":
            self._probed("request", "answered")
            self._trial_free()

    def _probe_failed(self, failure: Failure, probing: Deferred[Any]) -> None:
        if self._probing is not probing:
            return  # cancelled: closed or stopped meanwhile
        self._probing = None
        if self.state == "probing":
            error = failure.value
            why = str(error) if isinstance(error, Outage) else describe_error(error)
            self._probed("request", f"failed: {why}")
            self.state = "open"
            self._arm(self._delay(), self._probe)

    def _trial_free(self) -> None:
        self.state, self._trial = "trial", None
        self.on_change()

    def _trial_lost(self) -> None:
        """The trial taken did not end within its deadline: another call may be it."""
        self._timer = None
        if self.state == "trial" and self._trial is not None:
            log.warn(
                "route {route}: the call that was to probe it did not end within {deadline:g}s; "
                "another may",
                route=self.route,
                deadline=self.deadline,
            )
            self._probed("call", "lost")
            self._trial_free()

    def _given_back(self, trial: Trial) -> None:
        if trial is self._trial and self.state == "trial":
            self._cancel()
            self._trial_free()

    def _probed(self, how: str, result: str) -> None:
        self.probes[(how, result.split(":", 1)[0])] += 1
        self.last_probe = {"at": iso(self.clock.seconds()), "how": how, "result": result}

    def _arm(self, delay: float, then: Callable[[], None]) -> None:
        self._cancel()
        if self._stopped:
            return
        self._timer = self.clock.callLater(delay, then)
        if then == self._probe:
            self.next_probe_at = self.clock.seconds() + delay

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._probing is not None:
            probing, self._probing = self._probing, None
            probing.cancel()
