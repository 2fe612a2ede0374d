"""
The messages that wait in the gateway for their route, from every database it serves: the route
is full (its C{inflight} bound reached), loading, or out.  Their changes are handled (each
database's checkpoint moves on), and they are submitted again as their route has room
(L{Backlog.route_changed}, L{Backlog.drained}): highest priority first and, within a priority,
the databases in turn, each its oldest first.  So a database with a backlog of thousands cannot
hold back another's message: the next room goes to the other database.

The documents themselves are kept while they take less than L{KEPT_BYTES} (they may change
meanwhile: then their claim fails, and they are read again); beyond that, only their ids.  A
route keeps at most its share of L{WAITING}, and a database its share of what the databases
that wait keep: what is beyond is left in CouchDB, for the sweep of its database once the route
has room.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.python.failure import Failure

from couchgw import checks
from couchgw.couch.client import Doc
from couchgw.errors import log_error

#: Messages the gateway keeps waiting for their routes: a message of higher priority overtakes
#: as many of lower priority as this, written before it.
WAITING = 20000
#: Of those, the bytes of documents kept whole (as JSON), so as not to read them again.
KEPT_BYTES = 16 * 1024 * 1024
#: The least a database may keep waiting, however many others wait.
LEAST_SHARE = 100


class Home(Protocol):
    """Where a waiting message lives: the intake of its database (L{couchgw.gateway.intake})."""

    name: str
    active: dict[str, Deferred[None]]

    def submit(self, doc: Doc, seen: float | None = None) -> Deferred[None]: ...

    def resubmit(self, ids: list[str], always: bool = False) -> Deferred[list[str]]: ...

    def has_room(self) -> bool: ...

    def sweep_soon(self) -> None: ...

    def throttle(self) -> None: ...


@dataclass(frozen=True, order=True)
class Waiting:
    """
    A message waiting for its route: its place in the queue (higher priority first, then older
    C{requested_at}, or first read), its id, its database, its document if kept, and when it
    expires.
    """

    rank: tuple[int, float, int]
    id: str = field(compare=False)
    home: Any = field(compare=False)
    doc: Doc | None = field(default=None, compare=False)
    size: int = field(default=0, compare=False)
    expires: float | None = field(default=None, compare=False)

    @property
    def priority(self) -> int:
        return -self.rank[0]

    @property
    def seen(self) -> float:
        """When it was requested or first read (its place in the queue)."""
        return self.rank[1]

    def forgotten(self) -> Waiting:
        """The same place in the queue, with the id alone."""
        return Waiting(self.rank, self.id, self.home, expires=self.expires)


class WaitingRoom:
    """
    The waiting messages: for each route, for each priority, a heap per database, the
    databases taken in turn.

    @param share: the most one route keeps (the others may need the rest).
    """

    def __init__(self, share: int = WAITING) -> None:
        self.share = share
        #: route -> priority -> database name -> heap
        self._queues: dict[str, dict[int, OrderedDict[str, list[Waiting]]]] = {}
        self._by_route: Counter[str] = Counter()
        self._by_home: Counter[str] = Counter()
        #: The ids that wait, by database.
        self._ids: dict[str, set[str]] = {}
        self._count = 0
        self._kept_bytes = 0
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        return self._count

    def of(self, home: str) -> int:
        """How many of a database's messages wait."""
        return self._by_home[home]

    def home_share(self) -> int:
        """How many one database may keep now: its share of what the waiting ones keep."""
        return max(LEAST_SHARE, WAITING // max(1, len(self._by_home)))

    def add(
        self, home: Home, route: str, doc: Doc, plan: checks.Plan, seen: float, size: int | None
    ) -> bool:
        """
        Keep a message in the order of its C{plan}; answers False if its route, or its
        database, keeps its share already (the message is left in CouchDB).

        @param seen: when the gateway first read it (its place, without a C{requested_at}).
        @param size: the document's size as compact JSON, if measured already.
        """
        if self.waits(home, doc["_id"]):
            return True  # (kept already)
        if self._by_route[route] >= self.share or self._by_home[home.name] >= self.home_share():
            return False
        since = seen if plan.requested_at is None else plan.requested_at
        rank = (-plan.priority, since, next(self._arrivals))
        waiting = Waiting(rank, doc["_id"], home, expires=plan.expires_at)
        if self._kept_bytes < KEPT_BYTES:
            measured = checks.encoded_size(doc) if size is None else size
            waiting = Waiting(rank, doc["_id"], home, doc, measured, plan.expires_at)
        self._push(route, waiting)
        return True

    def add_id(
        self, home: Home, route: str, doc_id: str, priority: int | None, seen: float
    ) -> bool:
        """Keep a message by its id alone (the sweep found it due); as L{add} answers."""
        if self.waits(home, doc_id):
            return True  # (kept already)
        if self._by_route[route] >= self.share or self._by_home[home.name] >= self.home_share():
            return False
        priority = checks.DEFAULT_PRIORITY if priority is None else priority
        self._push(route, Waiting((-priority, seen, next(self._arrivals)), doc_id, home))
        return True

    def waits(self, home: Home, doc_id: str) -> bool:
        """Whether a message of a database waits here already."""
        return doc_id in self._ids.get(home.name, ())

    def take(self, route: str, most: int | None = None) -> list[Waiting]:
        """
        The first C{most} (all, for None) of a route's waiting messages, taken out: highest
        priority first, and within a priority one of each database in turn.
        """
        bands = self._queues.get(route) or {}
        taken: list[Waiting] = []
        for priority in sorted(bands, reverse=True):
            queues = bands[priority]
            while queues and (most is None or len(taken) < most):
                name, heap = next(iter(queues.items()))
                taken.append(heapq.heappop(heap))
                if heap:
                    queues.move_to_end(name)
                else:
                    del queues[name]
            if not queues:
                del bands[priority]
            if most is not None and len(taken) >= most:
                break
        self._forget(route, taken)
        return taken

    def put_back(self, route: str, waiting: Waiting) -> None:
        """Keep again, in its place, a message taken out (by its id alone)."""
        self._push(route, waiting.forgotten())

    def expired(self, now: float) -> list[Waiting]:
        """The messages whose C{expires_at} has come, taken out."""
        return self._take_where(lambda w: w.expires is not None and w.expires <= now)

    def drop(self, home: Home) -> list[Waiting]:
        """A database's messages, taken out (it is no longer served here)."""
        return self._take_where(lambda w: w.home is home)

    def next_expiry(self) -> float | None:
        expiries = [w.expires for w in self._all() if w.expires is not None]
        return min(expiries) if expiries else None

    def has(self, route: str) -> bool:
        return self._by_route[route] > 0

    def by_route(self) -> dict[str, int]:
        """How many wait, by route."""
        return {route: n for route, n in sorted(self._by_route.items()) if n}

    def _all(self) -> list[Waiting]:
        return [
            w
            for bands in self._queues.values()
            for queues in bands.values()
            for heap in queues.values()
            for w in heap
        ]

    def _take_where(self, found: Callable[[Waiting], bool]) -> list[Waiting]:
        taken: list[Waiting] = []
        for route, bands in self._queues.items():
            out: list[Waiting] = []
            for queues in bands.values():
                for name in list(queues):
                    heap = queues[name]
                    if any(found(w) for w in heap):
                        out.extend(w for w in heap if found(w))
                        kept = [w for w in heap if not found(w)]
                        heapq.heapify(kept)
                        if kept:
                            queues[name] = kept
                        else:
                            del queues[name]
            for priority in [p for p, queues in bands.items() if not queues]:
                del bands[priority]
            self._forget(route, out)
            taken.extend(out)
        return taken

    def _push(self, route: str, waiting: Waiting) -> None:
        bands = self._queues.setdefault(route, {})
        queues = bands.setdefault(waiting.priority, OrderedDict())
        heapq.heappush(queues.setdefault(waiting.home.name, []), waiting)
        self._ids.setdefault(waiting.home.name, set()).add(waiting.id)
        self._by_route[route] += 1
        self._by_home[waiting.home.name] += 1
        self._kept_bytes += waiting.size
        self._count += 1

    def _forget(self, route: str, taken: list[Waiting]) -> None:
        for waiting in taken:
            name = waiting.home.name
            self._by_route[route] -= 1
            self._by_home[name] -= 1
            self._ids[name].discard(waiting.id)
            if not self._by_home[name]:
                del self._by_home[name]
                del self._ids[name]
            self._kept_bytes -= waiting.size
        self._count -= len(taken)


class Backlog:
    """
    The waiting room of a gateway, and the release of its messages as routes have room.

    @param room_for: how many more messages of a route may go now (None: no bound; see
        L{couchgw.gateway.dispatch.Dispatch.room}).
    @param bounds: each route's C{inflight} bound (None: none).
    @param running: whether the gateway runs.
    @param routes: how many routes share the waiting room.
    """

    def __init__(
        self,
        *,
        room_for: Callable[[str], int | None],
        bounds: dict[str, int | None],
        running: Callable[[], bool],
        routes: int = 1,
    ) -> None:
        self._room_for = room_for
        self.bounds = bounds
        self._running = running
        self.room = WaitingRoom(share=max(1, WAITING // max(1, routes)))
        #: Of those, how many are being submitted, by route.
        self._refilling: Counter[str] = Counter()
        #: The databases that left messages of a route in CouchDB (there was no room for them
        #: here): swept once the route has room.
        self._left: dict[str, dict[str, Home]] = {}

    def park(
        self, home: Home, route: str, doc: Doc, plan: checks.Plan, seen: float, size: int | None
    ) -> None:
        """Keep a message whose route has no room for it now (or leave it in CouchDB)."""
        if not self.room.add(home, route, doc, plan, seen, size):
            self.left(home, route)

    def park_id(
        self, home: Home, route: str, doc_id: str, priority: int | None, seen: float
    ) -> None:
        """Keep a message the sweep found due, by its id, whose route has no room for it now."""
        if not self.room.add_id(home, route, doc_id, priority, seen):
            self.left(home, route)

    def left(self, home: Home, route: str) -> None:
        """A database left messages of C{route} in CouchDB: it sweeps once the route has room."""
        self._left.setdefault(route, {})[home.name] = home

    def drained(self, route: str) -> None:
        """
        A message of C{route} is done: once a full route is half empty, submit the messages
        that wait for it (and sweep where some were left in CouchDB).
        """
        bound, room = self.bounds.get(route), self._room_for(route)
        if bound is not None and room is not None:
            if room - self._refilling[route] < bound - bound // 2:
                return  # not half empty yet (or out: it says when it is back)
        self.route_changed(route)

    def route_changed(self, route: str) -> None:
        """
        A route may take messages again (it has room, loaded, is back from an outage, or may
        make its trial call): submit as many of those that wait for it as it has room for.
        """
        room = self._room_for(route)
        if room is not None:
            room -= self._refilling[route]
        if not self._running() or (room is not None and room <= 0):
            return
        if self.room.has(route):
            taken = self.room.take(route, room)
            self._refilling[route] += len(taken)
            self._refill(route, taken).addErrback(log_error, "cannot read messages that waited")
        else:
            for home in self._left.pop(route, {}).values():
                home.sweep_soon()

    @inlineCallbacks
    def _refill(self, route: str, taken: list[Waiting]) -> Any:
        """Submit messages that waited for their route; those there is no room for wait on."""
        left: list[Waiting] = []
        unread: dict[Any, dict[str, Waiting]] = {}
        homes: set[Any] = set()
        for waiting in taken:
            home = waiting.home
            homes.add(home)
            if waiting.id in home.active:
                continue
            if waiting.doc is None:
                unread.setdefault(home, {})[waiting.id] = waiting
            elif home.has_room():
                home.submit(waiting.doc, waiting.seen)
            else:
                left.append(waiting)
        try:
            for home, ids in unread.items():
                try:
                    no_room = yield home.resubmit(list(ids))
                except Exception as e:
                    self.left(home, route)  # they are in CouchDB still: its sweep finds them
                    log_error(Failure(e), f"cannot read the messages of {home.name} that waited")
                    continue
                left.extend(ids[doc_id] for doc_id in no_room)
        finally:
            self._refilling[route] -= len(taken)
        for waiting in left:
            self.room.put_back(route, waiting)
        for home in homes:
            home.throttle()

    def expire(self, now: float) -> float | None:
        """
        Submit the waiting messages that expired: they end C{expired} without room.  Answers
        when the next one expires (None: none waits with an expiry).
        """
        found = self.room.expired(now)
        unread: dict[Any, list[str]] = {}
        for waiting in found:
            if waiting.doc is not None:
                waiting.home.submit(waiting.doc, waiting.seen)
            else:
                unread.setdefault(waiting.home, []).append(waiting.id)
        for home, ids in unread.items():
            home.resubmit(ids, always=True).addErrback(
                log_error, "cannot read messages that expired while they waited"
            )
        for home in {w.home for w in found}:
            home.throttle()
        return self.room.next_expiry()

    def drop(self, home: Home) -> None:
        """Forget a database's waiting messages (it is no longer served here)."""
        self.room.drop(home)
        for homes in self._left.values():
            homes.pop(home.name, None)

    def waiting(self) -> dict[str, int]:
        return self.room.by_route()
