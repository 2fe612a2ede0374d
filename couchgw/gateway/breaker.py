"""
A route's circuit breaker: an outage of the target costs its messages no attempts.

A call that fails as an outage does (L{couchgw.targets.interfaces.Outage}: the connection
refused, reset or closed without an answer, TLS failing, HTTP 502, 503 or 504, no answer in
time) right after another one did, or one that could not connect at all, is the route's failure,
not the message's: the breaker opens.  While it is open the route makes no call: the messages
whose calls failed are given back as they were (no attempt used), and every message of the
route waits for it unclaimed.  After a backoff one call goes through as a probe; its success
closes the breaker and the messages go on, its failure opens it again for a longer backoff.
The first outage failure after a success is the message's own (a message that breaks its
target must not hold the route for ever): it is retried as any transient error, using an
attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from couchgw.timing import Backoff

log = Logger(namespace="couchgw.gateway")


class Breaker:
    """
    @param on_change: called when the route's readiness changed: it opened, a probe may go,
        it closed.
    """

    def __init__(
        self,
        clock: IReactorTime,
        route: str,
        backoff: Backoff,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.clock = clock
        self.route = route
        self.backoff = backoff
        self.on_change = on_change
        #: "closed" (calls go through), "open" (none does), "probing" (one does).
        self.state = "closed"
        #: Why the route is out (None while closed).
        self.reason: str | None = None
        #: Outage failures in a row.
        self.failures = 0
        #: Times it opened.
        self.opened = 0
        #: Whether a probe may go, and whether one went and has not ended yet.
        self._probe_free = False
        self._probe_out = False
        self._timer: IDelayedCall | None = None
        self._stopped = False

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    @property
    def out(self) -> bool:
        """Whether the route makes no call now (not even a probe)."""
        return self.state != "closed" and not self._probe_free

    def take_probe(self) -> bool:
        """Whether the caller's call is the probe (there is one to make, and it takes it)."""
        if not self._probe_free:
            return False
        self._probe_free, self._probe_out = False, True
        return True

    def pass_on(self) -> None:
        """The probe taken was not made: another call may be it."""
        if self._probe_out:
            self._probe_out = False
            self._probe_free = True
            self.on_change()

    def succeeded(self) -> None:
        """A call got an answer (a fault is an answer too): the route works."""
        self.failures = 0
        self._probe_out = False
        if self.state == "closed":
            return
        log.info("route {route} answers again", route=self.route)
        self.state, self.reason, self._probe_free = "closed", None, False
        self.backoff.reset()
        self._cancel_timer()
        self.on_change()

    def failed(self, reason: str, unreachable: bool = False) -> bool:
        """
        A call failed as an outage does; answers whether that failure is the route's (the
        message uses no attempt, and waits for the route) rather than the message's own.
        """
        self.failures += 1
        self._probe_out = False
        if self.state == "closed" and self.failures < 2 and not unreachable:
            return False
        if self.state == "closed":
            self.opened += 1
            log.warn("route {route} is out: {reason}", route=self.route, reason=reason)
        self.state, self.reason, self._probe_free = "open", reason, False
        self._cancel_timer()
        if not self._stopped:
            self._timer = self.clock.callLater(self.backoff.next(), self._probe)
            self.on_change()
        return True

    def start(self) -> None:
        self._stopped = False

    def stop(self) -> None:
        """No more probes (the gateway stops)."""
        self._stopped = True
        self._cancel_timer()

    def describe(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, "opened": self.opened}

    def _probe(self) -> None:
        self._timer = None
        self.state, self._probe_free = "probing", True
        self.on_change()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
