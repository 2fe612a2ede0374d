"""
One database couchgw serves, as its own world: its design documents, its guard (following its
own security object), its checkpoint, its feed and sweep (L{couchgw.gateway.intake}), the claims
on its messages and their outcomes (L{couchgw.gateway.claims}, L{couchgw.gateway.handling}).
What the databases share lives in the gateway (L{Shared}): the routes, the dispatch with its
breakers and slots, the messages waiting for their routes, the callbacks and the metrics.  A
gateway serves one database (C{--couch} names it) or many (C{--databases}, through
L{couchgw.gateway.fleet}).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from couchgw.couch import design
from couchgw.couch.batch import BulkWriter
from couchgw.couch.client import Database, Doc, supports_selector
from couchgw.couch.errors import NotFound
from couchgw.errors import describe_error
from couchgw.gateway.callbacks import Callbacks
from couchgw.gateway.checkpoint import SavedCheckpoint
from couchgw.gateway.claims import Claims, copies
from couchgw.gateway.dispatch import Dispatch
from couchgw.gateway.facts import ServerFacts
from couchgw.gateway.guards import Guards
from couchgw.gateway.handling import Handling
from couchgw.gateway.intake import Intake
from couchgw.gateway.routing import Routes
from couchgw.gateway.sweep import Owner
from couchgw.gateway.waiting import Backlog
from couchgw.metrics import Metrics
from couchgw.targets.interfaces import ITarget

log = Logger(namespace="couchgw.gateway")


@dataclass(frozen=True)
class Shared:
    """What the databases a gateway serves share."""

    targets: Mapping[str, ITarget]
    routes: Routes
    dispatch: Dispatch
    backlog: Backlog
    metrics: Metrics
    callbacks: Callbacks | None
    running: Callable[[], bool]
    #: What decides the guards of every database of the server.
    facts: ServerFacts
    #: Messages brought to a final status here, by status (all databases).
    finished: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Settings:
    """How each database is served (the gateway's options)."""

    gateway: str
    lease: float = 600.0
    settle: float = 0.5
    max_inflight: int = 100
    max_bytes: int = 1024 * 1024
    heartbeat: float = 10.0
    guards: str = "auto"
    #: Requests of gathered writes in flight at once, per database (many databases served: one
    #: each, so that a database's writes go together).
    writes: int = 2
    #: Seconds a claim or outcome waits for others of its database to go with it (None: none).
    linger: float | None = None
    #: Whether a database's design documents wait until it needs them (its first sweep, a
    #: message rejected in place, a listing of the console) where its feed does without them:
    #: many databases served, most of which never need them.
    design_when_needed: bool = False


class Tenant:
    """
    @param owner: which of its messages are this gateway's.
    @param gone: called when the database is found gone (by its feed, or by a sweep).
    """

    def __init__(
        self,
        db: Database,
        clock: IReactorTime,
        shared: Shared,
        settings: Settings,
        owner: Owner,
        *,
        gone: Callable[[Tenant], None],
    ) -> None:
        self.db = db
        self.name = db.name
        self.clock = clock
        self.shared = shared
        self._gone = gone
        self._design_when_needed = settings.design_when_needed
        #: Whether the design documents were pushed since the database was last opened.
        self._pushed = False
        #: Why the database cannot be worked now (None: it can).
        self.error: str | None = "not looked at yet"
        #: Whether it was let go (L{let_go}): nothing of it wakes again.
        self.released = False
        #: The server's welcome and the checkpoint read when the database was last opened.
        self._welcome: Doc | None = None
        self._saved: Doc | None = None
        #: The database's sequence when it was last opened, and how many documents it held
        #: besides couchgw's own.
        self.update_seq: Any = None
        self._documents = 0
        #: Claims and outcomes go out through it, gathered into C{_bulk_docs} under load.
        self.writer = BulkWriter(
            db,
            concurrency=settings.writes,
            linger=None if settings.linger is None else (clock, settings.linger),
            clock=clock,
        )
        self.checkpoint = SavedCheckpoint(db, clock, settings.gateway)
        self.guards = Guards(
            db,
            shared.targets,
            settings.guards,
            loaded=shared.routes.all_loaded,
            facts=shared.facts,
        )
        self.claims = Claims(
            db,
            clock,
            settings.gateway,
            lambda doc, fields: self.handling.transition(doc, fields),
            lease=settings.lease,
            settle=settings.settle,
        )
        self.handling = Handling(
            db,
            self.writer,
            clock,
            settings.gateway,
            owner=owner,
            claims=self.claims,
            targets=shared.targets,
            dispatch=shared.dispatch,
            place=self,
            metrics=shared.metrics,
            callbacks=shared.callbacks,
            park=lambda route, doc, plan, seen, size: self.intake.park(
                route, doc, plan, seen, size
            ),
            wake_at=lambda when: self.intake.wake_at(when),
            running=shared.running,
            max_bytes=settings.max_bytes,
            finished=shared.finished,
        )
        self.intake = Intake(
            db,
            clock,
            owner,
            self.checkpoint,
            shared.backlog,
            name=self.name,
            handle=self.handling.handle,
            reject=self._reject_unreadable,
            room_for=shared.dispatch.room,
            running=shared.running,
            working=self.working,
            designed=self.designed,
            recover=self._recover,
            gone=lambda: self._gone(self),
            max_inflight=settings.max_inflight,
            max_bytes=settings.max_bytes,
            heartbeat=settings.heartbeat,
        )

    def working(self) -> bool:
        return self.shared.running() and self.error is None and not self.released

    def wake_at(self, when: float) -> None:
        """Sweep the database at C{when} (for a retry, or a scheduled message)."""
        self.intake.wake_at(when)

    @inlineCallbacks
    def prepare(self, create: bool, welcome: Doc | None = None) -> Any:
        """
        Get the database ready to be followed: created (with C{create}), its guard as its
        security object says, its design documents pushed (unless they wait until needed), its
        checkpoint read.

        @param welcome: the server's welcome, if it was read already.
        """
        self._welcome = welcome if welcome is not None else (yield self.db.welcome())
        if create:
            created = yield self.db.create()
            if created:
                log.info("created database {db}", db=self.db.url)
        self._pushed = False
        reading = self.checkpoint.read()  # (meanwhile)
        try:
            found = yield design.read_ours(self.db)
            # the guard first: the design document may lose a validate function of before
            yield self.guards.refresh(found.docs)
            # (a server without selectors filters the feed with them)
            if not self._design_when_needed or not supports_selector(self._welcome):
                yield self.designed(found)
            nodes = yield self.shared.facts.nodes(self.db)
            # how many copies a claim must reach (on a server of one node each document is kept
            # once, whatever the database says)
            info = {} if nodes == 1 else (yield self.db.info())
        finally:
            saved = yield reading
        self.claims.copies = copies(info)
        # the count and the sequence of one read: what is written after it comes after that
        # sequence (0, the start, where the server did not say it)
        self.update_seq = found.update_seq if found.update_seq is not None else 0
        self._documents = found.others
        self._saved = saved
        self.checkpoint.resumed = False
        self.error = None

    def reads_once(self) -> bool:
        """Whether the server ends a feed read once (CouchDB; known once prepared)."""
        return self._welcome is not None and supports_selector(self._welcome)

    def followed_before(self) -> bool:
        """Whether a gateway followed the database before (its checkpoint was saved)."""
        return (self._saved or {}).get("seq") is not None

    def holds_documents(self) -> bool:
        """Whether the database held documents besides couchgw's when it was opened."""
        return self._documents > 0

    @inlineCallbacks
    def begin_checkpoint(self, at_start: bool = False) -> Any:
        """
        A database never followed begins its checkpoint at the sequence read when it was
        opened (its sweep, which comes after, finds whatever was written before), or, with
        C{at_start}, at its start (its feed brings what was written before).  Saved before
        anything of it is claimed: a gateway that takes it over knows that claims may be there
        (it sweeps it).
        """
        if self.checkpoint.resumed or (self._saved or {}).get("seq") is not None:
            return
        self.checkpoint.resume({**(self._saved or {}), "seq": 0 if at_start else self.update_seq})
        yield self.checkpoint.save(force=True)
        self._saved = {**(self._saved or {}), "seq": self.checkpoint.current.seq}

    def follow(
        self,
        plan: bool = True,
        once: float | None = None,
        read: Callable[[], None] | None = None,
    ) -> None:
        """
        Follow the database's changes from its checkpoint (with C{once}: read them, until no
        change came for C{once} seconds, then call C{read}); with C{plan}, wake for the work
        that is due (where it was not planned already).
        """
        assert self._welcome is not None and self._saved is not None
        self.claims.closed = False
        if not self.checkpoint.resumed:  # (else: on from where it was when its feed closed)
            self.checkpoint.resume(self._saved)
        self.intake.follow(self._welcome, once, read)
        if not plan:
            return
        # when the first retry or scheduled message written before comes due (at once if one
        # is due already)
        self.intake.plan_wake().addErrback(
            lambda f: log.warn(
                "{db}: cannot read when work comes due: {error}",
                db=self.name,
                error=describe_error(f.value),
            )
        )

    @inlineCallbacks
    def designed(self, found: design.Found | None = None) -> Any:
        """
        Push the design documents, once after each opening of the database (C{found}: as they
        were just read there).
        """
        if not self._pushed:
            yield design.push(self.db, found=found)
            self._pushed = True

    @inlineCallbacks
    def _reject_unreadable(self, doc_id: str, rev: str | None, why: str) -> Any:
        yield self.designed()  # (its update handler rejects it)
        yield self.handling.reject_unreadable(doc_id, rev, why)

    @inlineCallbacks
    def _recover(self) -> Any:
        """The C{due} view is missing: the database was deleted, or our design document."""
        try:
            yield self.db.info()
        except NotFound:
            self._gone(self)
            return
        log.warn("design documents missing in {db}; writing them again", db=self.db.url)
        self._pushed = False
        yield self.designed()

    @inlineCallbacks
    def stop(self, grace: float, deadline: Callable[..., Deferred[Any]]) -> Any:
        """
        Stop following; let the calls in flight end within C{grace} seconds; give the messages
        of calls still running back; save the checkpoint.
        """
        sweeping = self.intake.stop()
        if sweeping is not None:
            yield sweeping
        active, deliveries = self.intake.active, self.handling.deliveries
        if active or deliveries:
            log.info(
                "stopping: waiting up to {grace:g}s for {n} message(s) of {db} in flight",
                grace=grace,
                n=len(active) + len(deliveries),
                db=self.name,
            )
            yield deadline(DeferredList([*active.values(), *deliveries]), grace, self.clock)
        held = list(self.claims.held.values())
        if held:
            log.warn(
                "stopping: giving back {n} message(s) of {db} whose calls are still running",
                n=len(held),
                db=self.name,
            )
            yield DeferredList([claim.give_back() for claim in held])
        self.claims.stop()
        self.shared.backlog.drop(self.intake)
        if self.error is None:
            yield self.save_checkpoint()

    @inlineCallbacks
    def let_go(self, save: bool = True) -> Any:
        """
        Stop following and sweeping the database (another gateway serves it now, or it is
        gone: then, without C{save}, its checkpoint is not saved): the calls in flight end as
        they may and write their outcomes, the messages waiting here are left to its new owner.
        """
        self.released = True
        sweeping = self.intake.stop()
        self.shared.backlog.drop(self.intake)
        if sweeping is not None:
            yield sweeping
        active = list(self.intake.active.values())
        if active:
            yield DeferredList(active)
        if save and self.error is None:
            yield self.save_checkpoint()

    @inlineCallbacks
    def save_checkpoint(self) -> Any:
        """Save the checkpoint where it moved; a failure is logged (the next save tries again)."""
        try:
            yield self.checkpoint.save()
        except Exception as e:
            log.warn(
                "cannot save the checkpoint of {db}: {error}", db=self.name, error=describe_error(e)
            )

    def busy(self) -> bool:
        """Whether anything of the database is under way here."""
        return self.intake.busy() or bool(self.claims.held) or bool(self.handling.deliveries)

    def describe(self) -> dict[str, Any]:
        """The database's state as plain JSON."""
        return {
            "in_flight": len(self.intake.active),
            "waiting": self.intake.waiting(),
            "calls": len(self.claims.held),
            "checkpoint": {
                "seq": self.checkpoint.current.seq,
                "pending": len(self.checkpoint.current),
            },
            "guards": self.guards.describe(),
            "error": self.error,
        }
