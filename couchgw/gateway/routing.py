"""
The routes as the gateway sees them: loaded (and loaded again while they fail), ready or not,
and the messages that wait for a route to get ready.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from couchgw.couch.client import Database
from couchgw.errors import describe_error, log_error
from couchgw.targets.interfaces import ITarget
from couchgw.timing import Backoff

log = Logger(namespace="couchgw.gateway")


class Routes:
    """
    @param loaded: called each time a route has loaded (the guards then describe it).
    @param sweep_soon: asks for a sweep (for the messages a route turned away while down).
    """

    def __init__(
        self,
        db: Database,
        clock: IReactorTime,
        targets: Mapping[str, ITarget],
        *,
        running: Callable[[], bool],
        loaded: Callable[[], object],
        sweep_soon: Callable[[], None],
        max_inflight: int,
    ) -> None:
        self.db = db
        self.clock = clock
        self.targets = dict(targets)
        self._running = running
        self._on_loaded = loaded
        self._sweep_soon = sweep_soon
        self.max_inflight = max_inflight
        #: Routes that loaded at least once.
        self._loaded: set[str] = set()
        self._loading: dict[str, Deferred[None]] = {}
        #: Messages waiting for their route to get ready, by route (at most a share of
        #: C{max_inflight} each, so that a route that is down cannot hold every slot).
        self._waiting: dict[str, list[Deferred[None]]] = {}
        #: Routes that turned messages away while not ready (swept for once they are).
        self._turned_away: set[str] = set()

    def load(self) -> None:
        for target in self.targets.values():
            self.reload(target)

    def reload(self, target: ITarget) -> None:
        """(Re)load a route until it is ready, then sweep for its waiting messages."""
        if target.name not in self._loading:
            d = self._load(target)
            self._loading[target.name] = d
            d.addErrback(log_error, "loading a route failed")

            def loaded(_: Any) -> None:
                del self._loading[target.name]

            d.addBoth(loaded)

    @inlineCallbacks
    def _load(self, target: ITarget) -> Any:
        backoff = Backoff(base=1.0, cap=15.0)
        logged = None
        while self._running():
            try:
                yield target.load()
            except Exception as e:
                delay = backoff.next()
                error = target.error or describe_error(e)
                if error != logged:  # once for each reason, not for every try
                    log.warn(
                        "route {route} not ready: {error}; trying again in {delay:.0f}s (and "
                        "then every {cap:.0f}s at most)",
                        route=target.name,
                        error=error,
                        delay=delay,
                        cap=backoff.cap,
                    )
                    logged = error
                yield deferLater(self.clock, delay, lambda: None)
            else:
                self._ready(target.name)
                if target.name in self._turned_away:
                    self._turned_away.discard(target.name)
                    self._sweep_soon()
                self._loaded.add(target.name)
                self._on_loaded()
                return

    def all_loaded(self) -> bool:
        """Whether every route has loaded at least once."""
        return self._loaded == set(self.targets)

    def wait_for(self, target: ITarget) -> Deferred[None] | None:
        """A Deferred that fires when the route is ready, or None if too many wait already."""
        waiting = self._waiting.setdefault(target.name, [])
        if len(waiting) >= max(1, self.max_inflight // len(self.targets)):
            self._turned_away.add(target.name)
            return None
        waiter: Deferred[None] = Deferred()
        waiting.append(waiter)
        return waiter

    def _ready(self, name: str) -> None:
        """Let the messages waiting for a route go on (or, when stopping, end)."""
        for waiter in self._waiting.pop(name, []):
            waiter.callback(None)

    def back(self, name: str) -> None:
        """
        A route that was out answers again (or may be probed): the messages waiting for it go
        on, and those it gave back or turned away are swept for.
        """
        self._ready(name)
        self._turned_away.discard(name)
        self._sweep_soon()

    def stop(self) -> None:
        """Stop loading; the messages waiting for a route end."""
        for loading in list(self._loading.values()):
            loading.cancel()
        for name in list(self._waiting):
            self._ready(name)

    def problems(self) -> list[str]:
        return [
            f"route {target.name} {target.state}" + (f": {target.error}" if target.error else "")
            for target in self.targets.values()
            if target.state != "ready"
        ]
