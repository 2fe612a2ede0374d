"""
A gateway that serves one database (C{--couch} names it): the database created if it is
missing, followed for ever, swept every C{--sweep} seconds, its guard read again every
C{--announce} seconds; the gateways that share it announce themselves in it and split its
messages between them (L{couchgw.gateway.members}).

Under a backlog (messages wait for room on their routes, or C{--max-inflight} are being
handled) the gateway has work at hand, and what the feed brings is mostly its own claims and
outcomes, each of which CouchDB reads and looks at: then (on CouchDB) the feed is read in turns,
L{TURN} seconds apart, so that the writes of a message made meanwhile are looked at once,
together, and the claims and outcomes wait L{LINGER} for others to go in the same
C{_bulk_docs}.  Once none waits and fewer than half of C{--max-inflight} are being handled, the
feed is followed for ever again, and each write goes at once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from couchgw.couch import design
from couchgw.couch.batch import LINGER
from couchgw.couch.client import Database
from couchgw.couch.feed import ChangesFeed
from couchgw.couch.feed import describe as describe_feed
from couchgw.errors import describe_error, log_error
from couchgw.gateway.members import Members
from couchgw.gateway.tenant import Settings, Shared, Tenant
from couchgw.timing import Backoff, deadline

log = Logger(namespace="couchgw.gateway")

#: Seconds between two reads of the changes under a backlog.
TURN = 2.0
#: Seconds without a change after which a read in turns ends.
ONCE = 0.05
#: The states of a feed that follows the database as it should.
FOLLOWED = ("connected", "read in turns")


class OneDatabase:
    """
    @param sweep_interval: seconds between sweeps over the C{due} view.
    @param checkpoint_interval: seconds between saves of the checkpoint.
    @param announce: seconds between this gateway's announcements to the others sharing the
        database; the guard reads the security object as often.
    """

    def __init__(
        self,
        db: Database,
        clock: IReactorTime,
        shared: Shared,
        settings: Settings,
        *,
        sweep_interval: float,
        checkpoint_interval: float,
        announce: float,
    ) -> None:
        self.db = db
        self.clock = clock
        self.shared = shared
        self.sweep_interval = sweep_interval
        self.checkpoint_interval = checkpoint_interval
        self.announce = announce
        #: The gateways sharing the database, and which messages are this one's.
        self.members = Members(
            db,
            clock,
            settings.gateway,
            shared.targets,
            beat=announce,
            ttl=3 * announce,
            on_change=lambda: self.tenant.intake.sweep_soon(),
        )
        self.tenant = Tenant(db, clock, shared, settings, self.members, gone=self._gone)
        self._loops: list[LoopingCall] = []
        self._starting: Deferred[None] | None = None
        self._following = False
        #: The next read in turns (None: the feed is followed for ever, or a read is under way).
        self._turn: IDelayedCall | None = None
        #: Whether the changes are read in turns.
        self.in_turns = False
        #: The feed followed for ever again after reads in turns (until it is replaced).
        self._resumed: ChangesFeed | None = None

    @property
    def error(self) -> str | None:
        """Why the database cannot be worked (None: it can)."""
        return self.tenant.error

    def start(self) -> None:
        self._begin(first=True)

    def _begin(self, first: bool) -> None:
        self._starting = self._open(first)
        self._starting.addErrback(log_error, "gateway start-up failed")

    @inlineCallbacks
    def _open(self, first: bool) -> Any:
        """Get the database ready (created, design documents pushed), then follow it."""
        backoff = Backoff(base=0.25, cap=10.0)
        running = self.shared.running
        while running():
            try:
                yield self.tenant.prepare(create=True)
                break
            except Exception as e:
                self.tenant.error = f"CouchDB at {self.db.url}: {describe_error(e)}"
                delay = backoff.next()
                log.warn(
                    "{error}; trying again in {delay:.1f}s", error=self.tenant.error, delay=delay
                )
                yield deferLater(self.clock, delay, lambda: None)
        if not running():
            return
        if first:
            # who else is there decides which messages are this gateway's: know it before the
            # feed brings any (alone, it claims them all at once)
            self.tenant.error = "not announced to the other gateways yet"
            self.members.start()
            yield self.members.started()
            if not running():
                return
            self.tenant.error = None
        # when the first retry or scheduled message comes due: none is where no gateway followed
        # the database before (its first sweep, one interval on, looks all the same), and
        # asking would make CouchDB index a whole backlog while the gateway drains it
        self.tenant.follow(plan=self.tenant.followed_before())
        self._following = True
        if self.tenant.reads_once():
            self.tenant.intake.on_backlog = self._take_turns
        if first:
            self.shared.routes.load()
            # the feed brings every new message; the sweep's first look, for what came due
            # while no gateway ran, comes one interval on (at once, it would make CouchDB
            # index a whole backlog while the gateway drains it)
            self._every(self.sweep_interval, self.tenant.intake.sweep_every)
            self._every(self.checkpoint_interval, self.tenant.checkpoint.save)
            self._every(self.announce, self._guard)
        else:
            self.tenant.intake.sweep_soon()

    def _gone(self, tenant: Tenant) -> None:
        """The feed found no database: create it again and follow the new one from its start."""
        if not self._following or not self.shared.running():
            return
        log.warn("database {db} is gone; creating it again", db=self.db.url)
        self._following = False
        self._follow_for_ever(follow=False)
        tenant.intake.unfollow()
        tenant.error = f"database {self.db.url} is missing"
        self._begin(first=False)

    # -- reading in turns ----------------------------------------------------------------------

    def _take_turns(self) -> None:
        """A backlog: the feed followed for ever is read in turns."""
        if not self._following or self.in_turns:
            return
        self.in_turns = True
        self.tenant.writer.linger = (self.clock, LINGER)
        self.tenant.intake.unfollow()
        self._read()

    def _read(self) -> None:
        """Read what changed since, once."""
        self._turn = None
        if self._following and self.in_turns and self.shared.running():
            self.tenant.follow(plan=False, once=ONCE, read=self._read_ended)

    def _read_ended(self) -> None:
        """A read in turns ended: the next in a turn while the backlog lasts, else for ever."""
        if not self._following or not self.in_turns or not self.shared.running():
            return
        if self.tenant.intake.backlogged():
            self._turn = self.clock.callLater(TURN, self._read)
        else:
            self._follow_for_ever()

    def _follow_for_ever(self, follow: bool = True) -> None:
        if self._turn is not None and self._turn.active():
            self._turn.cancel()
        self._turn = None
        if self.in_turns:
            self.in_turns = False
            self.tenant.writer.linger = None
            if follow:
                self.tenant.follow(plan=False)
                self._resumed = self.tenant.intake.feed

    def _guard(self) -> Deferred[Any] | None:
        """Install or remove the guard as the mode and the security object say (when working)."""
        if not self.tenant.working():
            return None
        return self.tenant.guards.refresh()

    def _every(self, interval: float, f: Any) -> None:
        def guarded() -> Deferred[None]:
            d: Deferred[None] = maybeDeferred(f)
            return d.addErrback(log_error, f"{f.__name__} failed")

        loop = LoopingCall(guarded)
        loop.clock = self.clock
        loop.start(interval, now=False)
        self._loops.append(loop)

    @inlineCallbacks
    def stop(self, grace: float) -> Any:
        """Leave the others, stop taking work, let calls end within C{grace} seconds."""
        leaving = self.members.leave()  # the others take this gateway's messages over meanwhile
        if self._starting is not None:
            self._starting.cancel()
        self._follow_for_ever(follow=False)
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        yield self.tenant.stop(grace, deadline)
        yield leaving
        yield self.members.stop()

    # -- state ---------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        problems = []
        if self.tenant.error:
            problems.append(self.tenant.error)
        elif self.db.refused:
            problems.append(f"CouchDB at {self.db.url} refuses the credentials: {self.db.refused}")
        else:
            problems += self.members.problems()
        feed = self._feed()
        if feed["state"] not in FOLLOWED:
            error = feed["last_error"]
            problems.append(f"changes feed {feed['state']}" + (f": {error}" if error else ""))
        return problems

    def _feed(self) -> dict[str, Any]:
        """
        The feed's state: C{read in turns} between two reads in turns, and while a read in turns
        or the feed followed for ever again after them makes its first connection (no problem:
        the database was followed all along; a read that fails says so).
        """
        feed = self.tenant.intake.feed
        described = describe_feed(feed)
        first = feed is not None and feed.state == "connecting" and not feed.reconnects
        if (self.in_turns and (feed is None or first)) or (first and feed is self._resumed):
            described["state"] = "read in turns"
        return described

    def feed_lag(self, most: int = 10000) -> Deferred[int | None]:
        """Changes of the database after the last one the feed read (None without a feed)."""
        feed = self.tenant.intake.feed
        return succeed(None) if feed is None else feed.lag(most)

    @inlineCallbacks
    def status(self) -> Any:
        """The database's part of C{/status}."""
        counts: dict[str, int] | None
        try:
            result = yield self.db.view(design.DDOC, "by_status", group="true")
            counts = {row["key"]: row["value"] for row in result.get("rows", [])}
        except Exception as e:
            counts = None
            log.warn("cannot count messages: {error}", error=describe_error(e))
        tenant = self.tenant
        return {
            "database": self.db.url,
            "counts": counts,
            "finished_here": dict(tenant.handling.counts),
            "in_flight": len(tenant.intake.active),
            "calls": len(tenant.claims.held),
            "feed": self._feed(),
            "checkpoint": tenant.describe()["checkpoint"],
            "members": self.members.describe(),
            "guards": tenant.guards.describe(),
            "claims": dict(tenant.claims.answers),
        }

    def gauges(self) -> dict[str, Any]:
        tenant = self.tenant
        feed = tenant.intake.feed
        return {
            "active": len(tenant.intake.active),
            "feed_reconnects": feed.reconnects if feed else 0,
            "feed_connected": self._feed()["state"] in FOLLOWED,
            "checkpoint_age": tenant.checkpoint.age(),
            "claims": dict(tenant.claims.answers),
            "gateways": len(self.members.others) + 1,
            "up": not tenant.error,
        }
