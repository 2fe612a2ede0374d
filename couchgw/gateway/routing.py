"""
The routes as the gateway sees them: loaded (and loaded again while they fail), ready or not.
The messages of a route that is not ready wait for it in the intake; they are submitted again
once it is (L{couchgw.gateway.intake.Intake.route_changed}).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from couchgw.errors import describe_error, log_error
from couchgw.targets.interfaces import ITarget
from couchgw.timing import Backoff

log = Logger(namespace="couchgw.gateway")


class Routes:
    """
    @param loaded: called each time a route has loaded (the guards then describe it).
    @param ready: called with a route's name once it is ready (its waiting messages go on).
    """

    def __init__(
        self,
        clock: IReactorTime,
        targets: Mapping[str, ITarget],
        *,
        running: Callable[[], bool],
        loaded: Callable[[], object],
        ready: Callable[[str], None],
    ) -> None:
        self.clock = clock
        self.targets = dict(targets)
        self._running = running
        self._on_loaded = loaded
        self._ready = ready
        #: Routes that loaded at least once.
        self._loaded: set[str] = set()
        self._loading: dict[str, Deferred[None]] = {}

    def load(self) -> None:
        """Load every route (each again and again until it is ready)."""
        for target in self.targets.values():
            if target.name in self._loading:
                continue
            d = self._load(target)
            self._loading[target.name] = d
            d.addErrback(log_error, "loading a route failed")
            d.addBoth(self._done_loading, target.name)

    def _done_loading(self, _: Any, name: str) -> None:
        self._loading.pop(name, None)

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
                self._loaded.add(target.name)
                self._ready(target.name)
                self._on_loaded()
                return

    def all_loaded(self) -> bool:
        """Whether every route has loaded at least once."""
        return self._loaded == set(self.targets)

    def stop(self) -> None:
        """Stop loading."""
        for loading in list(self._loading.values()):
            loading.cancel()

    def problems(self) -> list[str]:
        return [
            f"route {target.name} {target.state}" + (f": {target.error}" if target.error else "")
            for target in self.targets.values()
            if target.state != "ready"
        ]
