"""
The gateway service: gets the database ready, wires the gateway's parts, starts and stops them,
and reports their state.

A message goes through the parts in this order (C{docs/architecture.md} walks one through):
the intake (L{couchgw.gateway.intake}) brings the documents worth a look, from the changes feed
and the sweep; the handling (L{couchgw.gateway.handling}) decides from a document's state what
is due; the dispatch (L{couchgw.gateway.dispatch}) claims the message (L{couchgw.gateway.claims}),
calls its route's target and writes the outcome back.  The members (L{couchgw.gateway.members})
say which messages are this gateway's when several share the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from couchgw.couch import design
from couchgw.couch.batch import BulkWriter
from couchgw.couch.client import Database
from couchgw.couch.errors import NotFound
from couchgw.couch.feed import describe as describe_feed
from couchgw.errors import describe_error, log_error
from couchgw.gateway.callbacks import Callbacks
from couchgw.gateway.checkpoint import SavedCheckpoint
from couchgw.gateway.claims import Claims, copies
from couchgw.gateway.dispatch import Dispatch
from couchgw.gateway.guards import Guards
from couchgw.gateway.handling import Handling
from couchgw.gateway.intake import Intake
from couchgw.gateway.members import Members, gateway_id
from couchgw.gateway.outcomes import Policy
from couchgw.gateway.routing import Routes
from couchgw.metrics import Gauges, Metrics, RouteGauges
from couchgw.targets.interfaces import ITarget
from couchgw.timing import Backoff, deadline
from couchgw.tracing import Tracing

log = Logger(namespace="couchgw.gateway")


class Gateway(Service):
    """
    @param db: the message database.
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
        db: Database,
        targets: Mapping[str, ITarget],
        clock: IReactorTime,
        *,
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
        self.db = db
        self.targets = dict(targets)
        self.clock = clock
        self.id = gateway or gateway_id()
        self.max_inflight = max_inflight
        self.max_bytes = max_bytes
        self.sweep_interval = sweep_interval
        self.checkpoint_interval = checkpoint_interval
        self.grace = grace
        #: Why the gateway is not ready to work (empty when it is).
        self.couch_error: str | None = "not connected yet"
        self.metrics = Metrics()
        #: Claims and outcomes go out through it, gathered into C{_bulk_docs} under load.
        writer = BulkWriter(db)
        self.checkpoint = SavedCheckpoint(db, clock, self.id)
        #: The gateways sharing the database, and which messages are this one's.
        self.members = Members(
            db,
            clock,
            self.id,
            self.targets,
            beat=announce,
            ttl=3 * announce,
            on_change=lambda: self.intake.sweep_soon(),
        )
        self.announce = announce
        self.routes = Routes(
            clock,
            self.targets,
            running=self._running,
            loaded=lambda: self._guard(),
            ready=lambda route: self.intake.route_changed(route),
        )
        #: The validate function, installed where it protects something.
        self.guards = Guards(db, self.targets, guards, loaded=self.routes.all_loaded)
        #: This gateway's claims (the calls in flight), and how they are taken on a cluster.
        self.claims = Claims(
            db,
            clock,
            self.id,
            lambda doc, fields: self.handling.transition(doc, fields),
            lease=lease,
            settle=settle,
        )
        self.dispatch = Dispatch(
            clock,
            self.targets,
            policies or {},
            self.claims,
            self.metrics,
            retries=retries,
            retry_backoff=retry_backoff or Backoff(base=2.0, cap=300.0, floor=1.0),
            running=self._running,
            drained=lambda route: self.intake.drained(route),
            wake_at=lambda when: self.intake.wake_at(when),
            route_changed=lambda route: self.intake.route_changed(route),
            tracing=tracing,
        )
        self.handling = Handling(
            db,
            writer,
            clock,
            self.id,
            members=self.members,
            claims=self.claims,
            targets=self.targets,
            dispatch=self.dispatch,
            metrics=self.metrics,
            callbacks=callbacks,
            park=lambda route, doc, plan, seen, size: self.intake.park(
                route, doc, plan, seen, size
            ),
            wake_at=lambda when: self.intake.wake_at(when),
            running=self._running,
            max_bytes=max_bytes,
        )
        self.intake = Intake(
            db,
            clock,
            self.members,
            self.checkpoint,
            handle=self.handling.handle,
            reject=self.handling.reject_unreadable,
            room_for=self.dispatch.room,
            bounds=self.dispatch.bounds,
            running=self._running,
            working=self._working,
            recover=self._recover,
            gone=self._database_gone,
            max_inflight=max_inflight,
            max_bytes=max_bytes,
            heartbeat=heartbeat,
            routes=len(self.targets),
        )
        self._loops: list[LoopingCall] = []
        self._starting: Deferred[None] | None = None
        self.metrics.watch(self.gauges)

    def _running(self) -> bool:
        return bool(self.running)

    def _working(self) -> bool:
        return bool(self.running) and self.couch_error is None

    # -- life cycle ------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.claims.closed = False
        self.dispatch.start()
        self._begin(first=True)

    def _begin(self, first: bool) -> None:
        self._starting = self._open(first)
        self._starting.addErrback(log_error, "gateway start-up failed")

    @inlineCallbacks
    def _open(self, first: bool) -> Any:
        """Get the database ready (created, design documents pushed), then follow it."""
        backoff = Backoff(base=0.25, cap=10.0)
        while self.running:
            try:
                welcome = yield self.db.welcome()
                created = yield self.db.create()
                if created:
                    log.info("created database {db}", db=self.db.url)
                # the guard first: the design document may lose a validate function of before
                yield self.guards.refresh()
                yield design.push(self.db)
                info = yield self.db.info()
                saved = yield self.checkpoint.read()
                break
            except Exception as e:
                self.couch_error = f"CouchDB at {self.db.url}: {describe_error(e)}"
                delay = backoff.next()
                log.warn(
                    "{error}; trying again in {delay:.1f}s", error=self.couch_error, delay=delay
                )
                yield deferLater(self.clock, delay, lambda: None)
        if not self.running:
            return
        if first:
            # who else is there decides which messages are this gateway's: know it before the
            # feed brings any (alone, it claims them all at once)
            self.members.start()
            yield self.members.started()
            if not self.running:
                return
        self.couch_error = None
        self.claims.copies = copies(info)
        self.checkpoint.resume(saved)
        self.intake.follow(welcome)
        # when the first retry or scheduled message written before this start comes due (at
        # once if one is due already)
        self.intake.plan_wake().addErrback(log_error, "cannot read when work comes due")
        if first:
            self.routes.load()
            # the feed brings every new message; the sweep's first look, for what came due
            # while no gateway ran, comes one interval on (at once, it would make CouchDB
            # index a whole backlog while the gateway drains it)
            self._every(self.sweep_interval, self.intake.sweep_every)
            self._every(self.checkpoint_interval, self.checkpoint.save)
            self._every(self.announce, self._guard)
        else:
            self.intake.sweep_soon()

    @inlineCallbacks
    def _recover(self) -> Any:
        """The C{due} view is missing: the database was deleted, or our design document."""
        try:
            yield self.db.info()
        except NotFound:
            self._database_gone()
            return
        log.warn("design documents missing in {db}; writing them again", db=self.db.url)
        yield design.push(self.db)

    def _database_gone(self) -> None:
        """The feed found no database: create it again and follow the new one from its start."""
        if self.intake.feed is None or not self.running:
            return
        log.warn("database {db} is gone; creating it again", db=self.db.url)
        self.intake.unfollow()
        self.couch_error = f"database {self.db.url} is missing"
        self._begin(first=False)

    def _guard(self) -> Deferred[Any] | None:
        """Install or remove the guard as the mode and the security object say (when working)."""
        if not self._working():
            return None
        return self.guards.refresh()

    def _every(self, interval: float, f: Any) -> None:
        def guarded() -> Deferred[None]:
            d: Deferred[None] = maybeDeferred(f)
            return d.addErrback(log_error, f"{f.__name__} failed")

        loop = LoopingCall(guarded)
        loop.clock = self.clock
        loop.start(interval, now=False)
        self._loops.append(loop)

    @inlineCallbacks
    def stopService(self) -> Any:
        """
        Stop taking work; let calls in flight end within C{grace} seconds; give the messages
        of calls still running back (C{retrying}, due at once); save the checkpoint.
        """
        super().stopService()
        leaving = self.members.leave()  # the others take this gateway's messages over meanwhile
        if self._starting is not None:
            self._starting.cancel()
        self.routes.stop()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        sweeping = self.intake.stop()
        self.dispatch.stop()  # claimed, never called: each gives its claim back
        if sweeping is not None:
            yield sweeping
        active, deliveries = self.intake.active, self.handling.deliveries
        if active or deliveries:
            log.info(
                "stopping: waiting up to {grace:g}s for {n} message(s) in flight",
                grace=self.grace,
                n=len(active) + len(deliveries),
            )
            yield deadline(DeferredList([*active.values(), *deliveries]), self.grace, self.clock)
        held = list(self.claims.held.values())
        if held:
            log.warn(
                "stopping: giving back {n} message(s) whose calls are still running", n=len(held)
            )
            yield DeferredList([claim.give_back() for claim in held])
        yield leaving
        yield self.members.stop()
        self.claims.stop()
        if self.couch_error is None:
            try:
                yield self.checkpoint.save()
            except Exception as e:
                log.warn("cannot save the checkpoint: {error}", error=describe_error(e))

    # -- state -----------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Why the gateway is not ready; empty when CouchDB, the feed and the routes are up."""
        problems = []
        if self.couch_error:
            problems.append(self.couch_error)
        elif self.db.refused:
            problems.append(f"CouchDB at {self.db.url} refuses the credentials: {self.db.refused}")
        else:
            problems += self.members.problems()
        feed = describe_feed(self.intake.feed)
        if feed["state"] != "connected":
            error = feed["last_error"]
            problems.append(f"changes feed {feed['state']}" + (f": {error}" if error else ""))
        return problems + self.routes.problems() + self.dispatch.problems()

    def feed_lag(self, most: int = 10000) -> Deferred[int | None]:
        """Changes of the database after the last one the feed read (None without a feed)."""
        feed = self.intake.feed
        return succeed(None) if feed is None else feed.lag(most)

    @inlineCallbacks
    def status(self) -> Any:
        """The gateway's state as plain JSON (for C{/status})."""
        counts: dict[str, int] | None
        try:
            result = yield self.db.view(design.DDOC, "by_status", group="true")
            counts = {row["key"]: row["value"] for row in result.get("rows", [])}
        except Exception as e:
            counts = None
            log.warn("cannot count messages: {error}", error=describe_error(e))
        problems = self.problems()
        return {
            "gateway": self.id,
            "database": self.db.url,
            "ready": not problems,
            "problems": problems,
            "counts": counts,
            "finished_here": dict(self.handling.counts),
            "in_flight": len(self.intake.active),
            "calls": len(self.claims.held),
            "threads_busy": sum(t.busy for t in self.targets.values()),
            "max_inflight": self.max_inflight,
            "feed": describe_feed(self.intake.feed),
            "checkpoint": {
                "seq": self.checkpoint.current.seq,
                "pending": len(self.checkpoint.current),
            },
            "members": self.members.describe(),
            "guards": self.guards.describe(),
            "tracing": self.dispatch.tracing.describe(),
            "waiting": self.intake.waiting(),
            "claims": dict(self.claims.answers),
            "routes": {name: self.route(name) for name in sorted(self.targets)},
        }

    def route(self, name: str, describe: bool = False) -> dict[str, Any]:
        """A route's state and policy as plain JSON; with C{describe}, what its target offers."""
        return self.dispatch.describe(self.targets[name], describe)

    def gauges(self) -> Gauges:
        """What the metrics read at each scrape."""
        feed = self.intake.feed
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
            active=len(self.intake.active),
            feed_reconnects=feed.reconnects if feed else 0,
            feed_connected=feed is not None and feed.state == "connected",
            checkpoint_age=self.checkpoint.age(),
            claims=dict(self.claims.answers),
            gateways=len(self.members.others) + 1,
            up=not self.couch_error,
        )
