"""
The sweep of one database over its C{due} view: whatever the changes feed did not bring
(messages written while no gateway ran, retries and scheduled messages whose time has come,
expired leases, the claims of a gateway that is gone), highest priority first, as much as there
is room for; and one timer for the next that comes due.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from couchgw import checks
from couchgw.couch import design
from couchgw.couch.client import Database, Doc
from couchgw.couch.errors import NotFound
from couchgw.errors import log_error
from couchgw.gateway.waiting import Backlog, Home

log = Logger(namespace="couchgw.gateway")

#: Seconds a sweep waits for the C{due} view (its index may have much to catch up with).
SWEEP_TIMEOUT = 600.0
#: Seconds before a sweep that failed looks again.
AGAIN = 5.0
#: Seconds before a sweep that found the intake full looks again (meanwhile, the feed brings
#: work: a look at the C{due} view would have CouchDB index every change of the drain).
FULL_AGAIN = 30.0


class Owner(Protocol):
    """Which of a database's messages are this gateway's (L{couchgw.gateway.members})."""

    def mine(self, doc: Doc) -> bool: ...

    def owns(self, doc_id: str, route: str | None) -> bool: ...

    def alive(self, gateway: str) -> bool: ...

    def holder_gone(self, doc: Doc) -> bool: ...


class Swept(Home, Protocol):
    """What the sweep reads and feeds: a database's intake (L{couchgw.gateway.intake.Intake})."""

    db: Database
    clock: IReactorTime
    owner: Owner
    backlog: Backlog
    max_inflight: int
    max_bytes: int
    running: Callable[[], bool]
    reject: Callable[[str, str | None, str], Deferred[Any]]

    def track(self, doc_id: str, work: Callable[[], Deferred[Any]]) -> Deferred[None]: ...


class Sweep:
    """
    @param intake: the database's intake (what the sweep finds is submitted there).
    @param room_for: how many more messages of a route may go now (None: no bound).
    @param working: whether the gateway runs and CouchDB answers (no sweep otherwise).
    @param designed: the design documents written where they were not yet (before the
        C{due} view is read).
    @param recover: called when the C{due} view is missing.
    """

    def __init__(
        self,
        intake: Swept,
        *,
        room_for: Callable[[str], int | None],
        working: Callable[[], bool],
        designed: Callable[[], Deferred[Any]],
        recover: Callable[[], Deferred[Any]],
    ) -> None:
        self.intake = intake
        self.db = intake.db
        self.clock = intake.clock
        self._room_for = room_for
        self._working = working
        self._designed = designed
        self._recover = recover
        self._again = False
        #: Whether a periodic sweep ran (L{every}).
        self._swept = False
        #: The sweep under way (None: none is).
        self.sweeping: Deferred[None] | None = None
        self._query: Deferred[Any] | None = None
        self._timers: dict[str, IDelayedCall] = {}

    def soon(self) -> None:
        if self.intake.running() and "sweep" not in self._timers:
            self._timers["sweep"] = self.clock.callLater(0, self._now)

    def _now(self) -> None:
        del self._timers["sweep"]
        self.sweep().addErrback(log_error, f"sweep of {self.intake.name} failed")

    def wake_at(self, when: float) -> None:
        """Sweep at C{when} (one timer, for the earliest retry that is due)."""
        if not self._working():
            return  # (stopping, or let go)
        timer = self._timers.get("wake")
        if timer is not None and timer.active():
            if timer.getTime() <= when:
                return
            timer.cancel()

        def wake() -> None:
            self._timers.pop("wake", None)
            self.soon()

        self._timers["wake"] = self.clock.callLater(max(0.0, when - self.clock.seconds()), wake)

    def next_wake(self) -> float | None:
        """When the sweep wakes next for work that comes due (None: no time is known)."""
        timer = self._timers.get("wake")
        return timer.getTime() if timer is not None and timer.active() else None

    def every(self) -> Deferred[None] | None:
        """
        The periodic sweep, passed over while the database's intake is full: it could take on
        nothing that is due, and its query would have CouchDB bring the view's index up to date
        over every message a drain changed, in its JavaScript process, while the drain goes on.
        The first one runs (it takes over the claims of gateways gone before this one started),
        and so does every sweep asked for: a gateway gone, a route back, a retry due.
        """
        if self._swept and not self.intake.has_room():
            return None
        self._swept = True
        return self.sweep()

    @inlineCallbacks
    def sweep(self) -> Any:
        """Submit the work that is due now (as much as there is room for)."""
        if self.sweeping is not None:
            self._again = True  # what woke it may have come after this sweep's query
            return
        if not self._working():
            return
        self._again = False
        self.sweeping = Deferred()
        done = False
        try:
            expiry = self.intake.backlog.expire(self.clock.seconds())
            if expiry is not None:
                self.wake_at(expiry)
            yield self._designed()
            yield self._take_over()
            yield self._due()
            done = True
        except NotFound:
            yield self._recover()
        finally:
            if not done and self._working():  # (what it would have found waits for the next)
                self.wake_at(self.clock.seconds() + AGAIN)
            self._query = None
            sweeping, self.sweeping = self.sweeping, None
            sweeping.callback(None)
            if self._again:
                self.soon()

    @inlineCallbacks
    def _due(self) -> Any:
        """
        Submit what the C{due} view says is due now, highest priority first, a page at a time
        while there is room (at most ten pages a sweep); then wake for the next that comes due.
        """
        if not self.intake.has_room():
            self.wake_at(self.clock.seconds() + FULL_AGAIN)
            return
        now_ms = int(self.clock.seconds() * 1000)
        page = max(self.intake.max_inflight, 10)
        taken: Counter[str] = Counter()
        pages = 10
        self._query = self.db.view(
            design.DDOC,
            "due",
            timeout=SWEEP_TIMEOUT,
            startkey=[0],
            endkey=[checks.TOP_PRIORITY, {}],
            limit=1,
        )
        anything = yield self._query
        bands = range(checks.TOP_PRIORITY + 1) if anything.get("rows") else range(0)
        parked: set[str] = set()
        unread = False
        for band in bands:  # 9 - priority, as the view keys it
            params: dict[str, Any] = {"startkey": [band], "endkey": [band, now_ms], "limit": page}
            while True:
                if pages == 0 or not self.intake.has_room():
                    unread = True
                    break
                pages -= 1
                self._query = self.db.view(design.DDOC, "due", timeout=SWEEP_TIMEOUT, **params)
                result = yield self._query
                rows = result.get("rows", [])
                yield self.intake.resubmit(self._worth_reading(rows, taken, parked))
                if len(rows) < page:
                    break
                last = rows[-1]
                params.update(startkey=last["key"], startkey_docid=last["id"], skip=1)
            if unread:
                break
        if unread:  # more is due than this sweep read: once what it kept waiting drains
            for route in parked:
                self.intake.backlog.left(self.intake, route)
            if not parked:  # (the intake was full)
                self.wake_at(self.clock.seconds() + FULL_AGAIN)
        yield self.plan_wake(now_ms)

    @inlineCallbacks
    def plan_wake(self, after_ms: int = -1) -> Any:
        """
        Wake when the first retry, scheduled message or callback due after C{after_ms} (a time
        in milliseconds; by default any time: one due already wakes it at once) is due.  One
        timer, for the earliest.
        """
        yield self._designed()
        self._query = self.db.view(
            design.DDOC,
            "due",
            timeout=SWEEP_TIMEOUT,
            startkey=["at", after_ms + 1],
            endkey=["at", {}],
            limit=1,
        )
        result = yield self._query
        rows = result.get("rows", [])
        if rows:
            self.wake_at(rows[0]["key"][1] / 1000)

    @inlineCallbacks
    def _take_over(self) -> Any:
        """
        Submit the claimed messages of gateways not seen alive that are this gateway's: those
        whose gateway is gone are due at once (L{couchgw.gateway.members.Members.holder_gone}),
        not when their lease ends.
        """
        self._query = self.db.view(
            design.DDOC, "due", timeout=SWEEP_TIMEOUT, startkey=["claim"], endkey=["claim", {}]
        )
        result = yield self._query
        owner = self.intake.owner
        ids = [
            row["id"]
            for row in result.get("rows", [])
            if not owner.alive(design.claim_holder(row))
            and owner.owns(row["id"], design.route_of(row))
        ]
        # beyond max_inflight if need be: they are few (what gone gateways held), and they
        # are freed at once
        yield self.intake.resubmit(ids, always=True)

    def _worth_reading(
        self, rows: list[Mapping[str, Any]], taken: Counter[str], parked: set[str]
    ) -> list[str]:
        """
        The ids of the rows of the C{due} view that are this gateway's to read now; those too
        large or too deep to read are rejected in place, and those whose route has no room for
        them now wait for it here, by their ids (L{couchgw.gateway.waiting}).
        """
        intake, owner = self.intake, self.intake.owner
        readable = []
        now = self.clock.seconds()
        for row in rows:
            if row["id"] in intake.active:
                continue
            why = design.unreadable(row, intake.max_bytes)
            if why is not None:
                if intake.has_room() and owner.owns(row["id"], None):
                    intake.track(row["id"], partial(intake.reject, row["id"], None, why))
                continue
            route = design.route_of(row)  # None: read it, and its target says whose it is
            if route is not None and not owner.owns(row["id"], route):
                continue
            if not self._waits_for_room(route, taken):
                readable.append(row["id"])
            elif route is not None:
                band = row["key"][0] if isinstance(row.get("key"), list) else None
                priority = checks.TOP_PRIORITY - band if isinstance(band, int) else None
                intake.backlog.park_id(intake, route, row["id"], priority, now)
                parked.add(route)
        return readable

    def _waits_for_room(self, route: str | None, taken: Counter[str]) -> bool:
        """
        Whether a row of the C{due} view is for a route that has no room for it now (full,
        loading, out), counting the rows this sweep C{taken} already.
        """
        room = None if route is None else self._room_for(route)
        if route is None or room is None:
            return False
        if taken[route] >= room:
            return True
        taken[route] += 1
        return False

    def stop(self) -> Deferred[None] | None:
        """Stop the timers and a sweep's query; answers the sweep to wait for."""
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if self._query is not None:
            self._query.cancel()  # a sweep may wait minutes for its view
        return self.sweeping
