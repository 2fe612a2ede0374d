"""
The gateway service: composes the parts the databases it serves share (the routes, the dispatch
with each route's breaker, the messages waiting for their routes, the callbacks, the metrics),
serves one database (L{couchgw.gateway.one}) or the many of a server that match patterns
(L{couchgw.gateway.fleet}), starts and stops them, and reports their state.

A message goes through the parts in this order (C{docs/architecture.md} walks one through):
the intake of its database (L{couchgw.gateway.intake}) brings the documents worth a look, from
the changes feed and the sweep; the handling (L{couchgw.gateway.handling}) decides from a
document's state what is due; the dispatch (L{couchgw.gateway.dispatch}) claims the message
(L{couchgw.gateway.claims}), calls its route's target and writes the outcome back.  The members
(L{couchgw.gateway.members}) say which messages (or databases) are this gateway's when several
share the work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from couchgw.couch.batch import LINGER
from couchgw.couch.client import Database
from couchgw.gateway.announcements import gateway_id
from couchgw.gateway.callbacks import Callbacks
from couchgw.gateway.dispatch import Dispatch
from couchgw.gateway.facts import ServerFacts
from couchgw.gateway.fleet import Fleet, FleetSettings
from couchgw.gateway.one import OneDatabase
from couchgw.gateway.outcomes import Policy
from couchgw.gateway.routing import Routes
from couchgw.gateway.tenant import Settings, Shared
from couchgw.gateway.waiting import Backlog
from couchgw.metrics import Gauges, Metrics, RouteGauges
from couchgw.targets.interfaces import ITarget
from couchgw.timing import Backoff
from couchgw.tracing import Tracing

log = Logger(namespace="couchgw.gateway")


class Gateway(Service):
    """
    @param db: the message database (None: C{fleet} says which databases are served).
    @param fleet: the server, the patterns of the databases served and how (L{Fleet}).
    @param targets: the routes, by name.
    @param policies: how each route's messages are treated, by route name.
    @param callbacks: delivers the callbacks of finished messages (None: none are delivered).
    @param lease: seconds a claim is valid; a running call renews it every third of that.
    @param retries: calls made to a target for one message before a transient error is final.
    @param max_inflight: messages handled at once; when full, the feed is not read.
    @param sweep_interval: seconds between sweeps over the C{due} view.
    @param heartbeat: seconds between the feed's heartbeats.
    @param grace: seconds a stop waits for calls in flight before it gives their messages back.
    @param max_bytes: the largest message (as compact JSON) accepted; larger ones are rejected.
    @param settle: seconds a claim that fewer than all copies took (on a cluster) waits before
        it is confirmed.
    @param announce: seconds between this gateway's announcements to the others that share the
        database (L{couchgw.gateway.members}); it counts as gone three times that after the last.
        The guards read the database's security object as often.
    @param guards: C{auto}, C{on} or C{off}: whether the validate function is installed
        (L{couchgw.gateway.guards}).
    @param tracing: the spans of messages (L{couchgw.tracing}); none by default.
    """

    def __init__(
        self,
        db: Database | None,
        targets: Mapping[str, ITarget],
        clock: IReactorTime,
        *,
        fleet: FleetSettings | None = None,
        policies: Mapping[str, Policy] | None = None,
        callbacks: Callbacks | None = None,
        gateway: str | None = None,
        lease: float = 600.0,
        retries: int = 5,
        retry_backoff: Backoff | None = None,
        max_inflight: int = 100,
        sweep_interval: float = 30.0,
        heartbeat: float = 10.0,
        checkpoint_interval: float = 5.0,
        grace: float = 30.0,
        max_bytes: int = 1024 * 1024,
        settle: float = 0.5,
        announce: float = 5.0,
        guards: str = "auto",
        tracing: Tracing | None = None,
    ) -> None:
        self.targets = dict(targets)
        self.clock = clock
        self.id = gateway or gateway_id()
        self.max_inflight = max_inflight
        self.max_bytes = max_bytes
        self.grace = grace
        self.metrics = Metrics()
        self.routes = Routes(
            clock,
            self.targets,
            running=self._running,
            loaded=self._guard_all,
            ready=lambda route: self.backlog.route_changed(route),
        )
        policies = dict(policies or {})
        if fleet is not None:  # many databases: every route bounded, so that they share it
            for name, target in self.targets.items():
                policy = policies.get(name, Policy())
                if policy.inflight is None:
                    bound = max(10, 2 * max(1, target.concurrency))
                    policies[name] = Policy(**{**vars(policy), "inflight": bound})
        self.dispatch = Dispatch(
            clock,
            self.targets,
            policies,
            self.metrics,
            retries=retries,
            retry_backoff=retry_backoff or Backoff(base=2.0, cap=300.0, floor=1.0),
            running=self._running,
            drained=lambda route: self.backlog.drained(route),
            route_changed=lambda route: self.backlog.route_changed(route),
            tracing=tracing,
        )
        #: The messages of every database served that wait for their routes to have room.
        self.backlog = Backlog(
            room_for=self.dispatch.room,
            bounds=self.dispatch.bounds,
            running=self._running,
            routes=len(self.targets),
        )
        self.shared = Shared(
            self.targets,
            self.routes,
            self.dispatch,
            self.backlog,
            self.metrics,
            callbacks,
            self._running,
            facts=ServerFacts(clock, ttl=60.0 if fleet is not None else 0.0),
        )
        settings = Settings(
            self.id,
            lease=lease,
            settle=settle,
            max_inflight=max_inflight,
            max_bytes=max_bytes,
            heartbeat=heartbeat,
            guards=guards,
            writes=1 if fleet is not None else 2,
            linger=LINGER if fleet is not None else None,
            design_when_needed=fleet is not None,
        )
        self.one: OneDatabase | None = None
        self.fleet: Fleet | None = None
        if fleet is not None:
            self.fleet = Fleet(
                fleet,
                clock,
                self.shared,
                settings,
                announce=announce,
            )
        else:
            assert db is not None
            self.one = OneDatabase(
                db,
                clock,
                self.shared,
                settings,
                sweep_interval=sweep_interval,
                checkpoint_interval=checkpoint_interval,
                announce=announce,
            )
        self.metrics.watch(self.gauges)

    # the parts of the one database served (with --couch naming a database)

    @property
    def db(self) -> Database:
        assert self.one is not None
        return self.one.db

    @property
    def tenant(self) -> Any:
        assert self.one is not None
        return self.one.tenant

    @property
    def intake(self) -> Any:
        return self.tenant.intake

    @property
    def claims(self) -> Any:
        return self.tenant.claims

    @property
    def handling(self) -> Any:
        return self.tenant.handling

    @property
    def checkpoint(self) -> Any:
        return self.tenant.checkpoint

    @property
    def guards(self) -> Any:
        return self.tenant.guards

    @property
    def members(self) -> Any:
        return self.one.members if self.one is not None else self.fleet.members  # type: ignore[union-attr]

    @property
    def couch_error(self) -> str | None:
        return self.one.error if self.one is not None else self.fleet.error  # type: ignore[union-attr]

    def _running(self) -> bool:
        return bool(self.running)

    def _guard_all(self) -> None:
        """Every route has loaded once more: the guards describe them (where working)."""
        if self.one is not None:
            if self.one.tenant.working():
                self.one.tenant.guards.refresh()
        elif self.fleet is not None:
            self.fleet.routes_loaded()

    # -- life cycle ------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.dispatch.start()
        served = self.one or self.fleet
        assert served is not None
        served.start()

    @inlineCallbacks
    def stopService(self) -> Any:
        """
        Stop taking work; let calls in flight end within C{grace} seconds; give the messages
        of calls still running back (C{retrying}, due at once); save the checkpoints.
        """
        super().stopService()
        self.routes.stop()
        self.dispatch.stop()  # claimed, never called: each gives its claim back
        served = self.one or self.fleet
        assert served is not None
        yield served.stop(self.grace)

    # -- state -----------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Why the gateway is not ready; empty when CouchDB, the feeds and the routes are up."""
        served = self.one or self.fleet
        assert served is not None
        return served.problems() + self.routes.problems() + self.dispatch.problems()

    def feed_lag(self, most: int = 10000) -> Deferred[int | None]:
        """Changes of the database after the last one the feed read (None without a feed)."""
        served = self.one or self.fleet
        assert served is not None
        return served.feed_lag(most)

    @inlineCallbacks
    def status(self, names: bool = True) -> Any:
        """
        The gateway's state as plain JSON (for C{/status}); C{names}: whether databases may
        be named (to server admins) where many are served.
        """
        if self.one is not None:
            part = yield self.one.status()
        else:
            assert self.fleet is not None
            part = yield self.fleet.status(names)
        problems = self.problems()
        return {
            "gateway": self.id,
            "ready": not problems,
            "problems": problems,
            **part,
            "threads_busy": sum(t.busy for t in self.targets.values()),
            "max_inflight": self.max_inflight,
            "tracing": self.dispatch.tracing.describe(),
            "waiting": self.backlog.waiting(),
            "routes": {name: self.route(name) for name in sorted(self.targets)},
        }

    def route(self, name: str, describe: bool = False) -> dict[str, Any]:
        """A route's state and policy as plain JSON; with C{describe}, what its target offers."""
        return self.dispatch.describe(self.targets[name], describe)

    def gauges(self) -> Gauges:
        """What the metrics read at each scrape."""
        served = self.one or self.fleet
        assert served is not None
        return Gauges(
            routes=[
                RouteGauges(
                    name,
                    self.dispatch.inflight[name],
                    t.busy,
                    t.state == "ready" and self.dispatch.breakers[name].closed,
                    self.dispatch.breakers[name].opened,
                    dict(self.dispatch.breakers[name].probes),
                )
                for name, t in sorted(self.targets.items())
            ],
            **served.gauges(),
        )
