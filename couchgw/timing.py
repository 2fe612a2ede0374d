"""Times as couchgw writes them, capped exponential backoff with jitter, rates and slots."""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure


def iso(seconds: float) -> str:
    """
    A POSIX time as ISO-8601 UTC with milliseconds, e.g. C{2026-11-28T05:48:43.123Z}.

    Always the same width, so that these strings sort as the times do (the views rely on it).
    """
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Backoff:
    """
    Capped exponential backoff with full jitter.

    The n-th delay (from 0) is drawn uniformly from C{[0, min(cap, base * 2**n)]}, but never below
    C{floor}.  L{reset} starts over after a success.
    """

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 30.0,
        floor: float = 0.05,
        uniform: Callable[[float, float], float] | None = None,
    ) -> None:
        self.base = base
        self.cap = cap
        self.floor = floor
        self.attempts = 0
        self._uniform = uniform or random.uniform

    def ceiling(self, attempt: int) -> float:
        """The largest delay the given attempt may wait."""
        return float(min(self.cap, self.base * 2 ** min(attempt, 62)))

    def delay(self, attempt: int) -> float:
        """A delay drawn for the given attempt (from 0)."""
        return max(self.floor, self._uniform(0, self.ceiling(attempt)))

    def next(self) -> float:
        """The delay before the next attempt."""
        delay = self.delay(self.attempts)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0


class RateLimit:
    """Spaces events at least C{1 / rate} seconds apart, in the order they ask."""

    def __init__(self, clock: IReactorTime, rate: float) -> None:
        self._clock = clock
        self.interval = 1.0 / rate
        self._next = 0.0

    def wait(self) -> Deferred[None]:
        """A Deferred that fires when the next event may happen."""
        now = self._clock.seconds()
        at = max(now, self._next)
        self._next = at + self.interval
        if at <= now:
            return succeed(None)
        return deferLater(self._clock, at - now, lambda: None)


class PrioritySlots:
    """
    A semaphore whose waiters get the tokens highest priority first and, within a priority, the
    callers of each key (a database) in turn, each in the order it asked.  Cancelling a
    waiter's Deferred takes it out of the queue.
    """

    def __init__(self, tokens: int) -> None:
        self.limit = tokens
        self.tokens = tokens
        #: priority -> key -> waiters, the keys in the order they get their turn
        self._waiting: dict[int, OrderedDict[str, deque[Deferred[None]]]] = {}

    def acquire(self, priority: int = 0, key: str = "") -> Deferred[None]:
        """A Deferred that fires once a token is the caller's."""
        if self.tokens > 0:
            self.tokens -= 1
            return succeed(None)
        waiter: Deferred[None] = Deferred(canceller=self._cancel)
        self._waiting.setdefault(priority, OrderedDict()).setdefault(key, deque()).append(waiter)
        return waiter

    def waiting(self) -> int:
        return sum(len(q) for queues in self._waiting.values() for q in queues.values())

    def _cancel(self, waiter: Deferred[None]) -> None:
        for priority, queues in list(self._waiting.items()):
            for key, queue in list(queues.items()):
                if waiter in queue:
                    queue.remove(waiter)
                    if not queue:
                        del queues[key]
                    if not queues:
                        del self._waiting[priority]
                    return

    def release(self) -> None:
        """Give a token back: to the first waiter, if there is one."""
        if not self._waiting:
            self.tokens += 1
            return
        priority = max(self._waiting)
        queues = self._waiting[priority]
        key, queue = next(iter(queues.items()))
        waiter = queue.popleft()
        if queue:
            queues.move_to_end(key)
        else:
            del queues[key]
        if not queues:
            del self._waiting[priority]
        waiter.callback(None)


def deadline(
    d: Deferred[Any], seconds: float, clock: IReactorTime, error: Exception | None = None
) -> Deferred[Any]:
    """
    A Deferred with C{d}'s result if it comes within C{seconds}; else, then, C{error} (or None
    if no error is given).  C{d} itself is not cancelled: a call in a thread cannot be stopped.
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
