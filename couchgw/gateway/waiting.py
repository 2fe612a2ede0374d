"""
The messages that wait in the gateway for their route: full (its C{inflight} bound reached),
loading, or out.  Their changes are handled (the checkpoint moves on), and they are submitted
again as their route has room, highest priority first, then oldest.  The documents themselves
are kept while they take less than L{KEPT_BYTES} (they may change meanwhile: then their claim
fails, and they are read again); beyond that, only their ids.  A route keeps at most its share
of L{WAITING}: what is beyond is left in CouchDB, for the sweep once the route has room.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from couchgw import checks
from couchgw.couch.client import Doc

#: Messages the gateway keeps waiting for their routes (there the feed pauses): a message of
#: higher priority overtakes as many of lower priority as this, written before it.
WAITING = 20000
#: Of those, the bytes of documents kept whole (as JSON), so as not to read them again.
KEPT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, order=True)
class Waiting:
    """
    A message waiting for its route: its place in the queue (higher priority first, then older
    C{requested_at}, or first read), its id, its document if kept, and when it expires.
    """

    rank: tuple[int, float, int]
    id: str = field(compare=False)
    doc: Doc | None = field(default=None, compare=False)
    size: int = field(default=0, compare=False)
    expires: float | None = field(default=None, compare=False)

    @property
    def seen(self) -> float:
        """When it was requested or first read (its place in the queue)."""
        return self.rank[1]


class WaitingRoom:
    """
    The waiting messages, a heap per route.

    @param share: the most one route keeps (the others may need the rest).
    """

    def __init__(self, share: int = WAITING) -> None:
        self.share = share
        self._queues: dict[str, list[Waiting]] = {}
        self._count = 0
        self._kept_bytes = 0
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        return self._count

    def add(
        self, route: str, doc: Doc, plan: checks.Plan, seen: float, size: int | None = None
    ) -> bool:
        """
        Keep a message in the order of its C{plan}; answers False if its route keeps its share
        already (the message is left in CouchDB).

        @param seen: when the gateway first read it (its place, without a C{requested_at}).
        @param size: the document's size as compact JSON, if measured already.
        """
        queue = self._queues.setdefault(route, [])
        if len(queue) >= self.share:
            return False
        since = seen if plan.requested_at is None else plan.requested_at
        rank = (-plan.priority, since, next(self._arrivals))
        waiting = Waiting(rank, doc["_id"], expires=plan.expires_at)
        if self._kept_bytes < KEPT_BYTES:
            measured = checks.encoded_size(doc) if size is None else size
            waiting = Waiting(rank, doc["_id"], doc, measured, plan.expires_at)
            self._kept_bytes += measured
        self._push(route, waiting)
        return True

    def take(self, route: str, most: int | None = None) -> list[Waiting]:
        """The first C{most} (all, for None) of a route's waiting messages, taken out."""
        queue = self._queues.get(route) or []
        count = len(queue) if most is None else min(most, len(queue))
        taken = [heapq.heappop(queue) for _ in range(count)]
        self._count -= len(taken)
        self._kept_bytes -= sum(w.size for w in taken)
        return taken

    def put_back(self, route: str, waiting: Waiting) -> None:
        """Keep again, in its place, a message taken out (by its id alone)."""
        self._push(route, Waiting(waiting.rank, waiting.id, expires=waiting.expires))

    def expired(self, now: float) -> list[Waiting]:
        """The messages whose C{expires_at} has come, taken out."""
        found: list[Waiting] = []
        for route, queue in self._queues.items():
            if any(w.expires is not None and w.expires <= now for w in queue):
                keep = [w for w in queue if w.expires is None or w.expires > now]
                found.extend(w for w in queue if w.expires is not None and w.expires <= now)
                heapq.heapify(keep)
                self._queues[route] = keep
        self._count -= len(found)
        self._kept_bytes -= sum(w.size for w in found)
        return found

    def next_expiry(self) -> float | None:
        expiries = [w.expires for queue in self._queues.values() for w in queue if w.expires]
        return min(expiries) if expiries else None

    def has(self, route: str) -> bool:
        return bool(self._queues.get(route))

    def by_route(self) -> dict[str, int]:
        """How many wait, by route."""
        return {route: len(queue) for route, queue in sorted(self._queues.items()) if queue}

    def _push(self, route: str, waiting: Waiting) -> None:
        heapq.heappush(self._queues.setdefault(route, []), waiting)
        self._count += 1
