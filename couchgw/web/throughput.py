"""
The live page's throughput: the messages the gateway brought to a final status, per ten seconds
over the last ten minutes, sampled from the count it keeps for C{/metrics}
(C{couchgw_messages_total}), so that the page shows what happened before it was opened.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from couchgw.metrics import Metrics
from couchgw.timing import iso


def finished(metrics: Metrics) -> float:
    """Every message the gateway brought to a final status since it started."""
    return sum(
        sample.value
        for family in metrics.messages.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


class Throughput(Service):
    """
    Counts of C{total()}'s growth per C{bucket} seconds, the last C{buckets} of them, read every
    C{bucket} seconds and whenever they are asked for.
    """

    def __init__(
        self,
        total: Callable[[], float],
        clock: IReactorTime,
        bucket: float = 10.0,
        buckets: int = 60,
    ) -> None:
        self.total = total
        self.clock = clock
        self.bucket = bucket
        self.buckets = buckets
        self._counts: deque[tuple[int, float]] = deque(maxlen=buckets)
        self._last: float | None = None
        self._loop = LoopingCall(self.observe)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.bucket, now=True)

    def stopService(self) -> Any:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return None

    def observe(self) -> None:
        """What finished since the last look counts in the bucket of now."""
        total = self.total()
        grown = 0.0 if self._last is None else max(0.0, total - self._last)
        self._last = total
        index = int(self.clock.seconds() // self.bucket)
        if self._counts and self._counts[-1][0] == index:
            self._counts[-1] = (index, self._counts[-1][1] + grown)
        else:
            self._counts.append((index, grown))

    def describe(self) -> dict[str, Any]:
        """C{counts}, oldest first, of the buckets of C{bucket} seconds that end at C{until}."""
        self.observe()
        now = int(self.clock.seconds() // self.bucket)
        kept = dict(self._counts)
        counts = [int(kept.get(index, 0)) for index in range(now - self.buckets + 1, now + 1)]
        return {"bucket": self.bucket, "counts": counts, "until": iso((now + 1) * self.bucket)}
