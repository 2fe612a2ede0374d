"""
A gateway that serves the many databases of a server whose names match patterns
(C{--couch} names the server, C{--databases} the patterns): every tenant its own database.

The gateways serving the same patterns announce themselves in a database of their own that no
tenant can read (C{couchgw-gateways}: its members and admins are the server's admins), and split
the databases between them (L{couchgw.gateway.members}: each database has one owner among the
live gateways).  Each database is its own world (L{couchgw.gateway.tenant}).  The work is bounded
by what there is to do, not by the number of databases:

each database this gateway owns is looked at once (its design documents, its guard, its
checkpoint, a sweep of what is due), a few at a time, and then only when it changes
(C{/_db_updates}: its changes are read, L{couchgw.gateway.feeds}), when work in it comes due (one
timer each), or when a route has room for messages it left in CouchDB.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from couchgw.couch.capacity import OpenFilesWatch
from couchgw.couch.client import Database, Doc
from couchgw.couch.errors import Forbidden, NotFound, Unauthorized
from couchgw.errors import describe_error, log_error
from couchgw.gateway import census
from couchgw.gateway.discovery import Discovery
from couchgw.gateway.feeds import Feeds
from couchgw.gateway.members import Members
from couchgw.gateway.tenant import Settings, Shared, Tenant
from couchgw.timing import Backoff, deadline

log = Logger(namespace="couchgw.gateway")

#: The gateways' own database (on the server whose databases they serve).
COORDINATION = "couchgw-gateways"
#: Who may use the gateways' own database: the server's admins alone.
SECURITY = {
    "admins": {"names": [], "roles": ["_admin"]},
    "members": {"names": [], "roles": ["_admin"]},
}
#: Seconds before a database couchgw may not read is looked at again (on its next update).
REFUSED_AGAIN = 300.0
#: Seconds before a database that could not be looked at (an error) is looked at again.
FAILED_AGAIN = 30.0


@dataclass(frozen=True)
class FleetSettings:
    """
    @param coordination: the gateways' own database (on the server served).
    @param patterns: the databases served: shell globs of their names.
    @param max_feeds: changes feeds open at once, at most.
    @param visits: databases looked at at once.
    """

    coordination: Database
    patterns: tuple[str, ...]
    max_feeds: int = 100
    visits: int = 8
    checkpoint_interval: float = 5.0


class DatabaseOwner:
    """Which messages of one database of the fleet are this gateway's: all, while it owns it."""

    def __init__(self, members: Members, owned: Callable[[], bool]) -> None:
        self.members = members
        self._owned = owned

    def mine(self, doc: Doc) -> bool:
        return self._owned()

    def owns(self, doc_id: str, route: str | None) -> bool:
        return self._owned()

    def alive(self, gateway: str) -> bool:
        return self.members.alive(gateway)

    def holder_gone(self, doc: Doc) -> bool:
        return self.members.holder_gone(doc)


class Fleet:
    def __init__(
        self,
        settings: FleetSettings,
        clock: IReactorTime,
        shared: Shared,
        tenant_settings: Settings,
        *,
        announce: float,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.shared = shared
        self.tenant_settings = tenant_settings
        self.announce = announce
        self.coordination = settings.coordination
        #: The gateways serving these patterns, and which databases are this one's.
        self.members = Members(
            self.coordination,
            clock,
            tenant_settings.gateway,
            shared.targets,
            beat=announce,
            ttl=3 * announce,
            on_change=self._members_changed,
            scope=",".join(sorted(settings.patterns)),
        )
        self.discovery = Discovery(
            self.coordination,
            clock,
            settings.patterns,
            exclude=self.coordination.name,
            found=self._found,
            gone=self._gone,
            updated=self._updated,
            heartbeat=tenant_settings.heartbeat,
        )
        #: Whether the server keeps the files of the databases used open.
        self.open_files = OpenFilesWatch(
            self.coordination, clock, lambda: len(self.members.others) + 1
        )
        #: The databases this gateway serves (owned, and looked at or being looked at).
        self.tenants: dict[str, Tenant] = {}
        #: Which of them have their changes read, and when.
        self.feeds = Feeds(
            clock,
            max_feeds=settings.max_feeds,
            announce=announce,
            served=self._served,
            says_updates=lambda: self.discovery.says_updates,
            beats_per_save=round(settings.checkpoint_interval),
        )
        self._to_visit: OrderedDict[str, None] = OrderedDict()
        self._revisit: set[str] = set()
        #: Looks again at databases that failed (a few seconds on).
        self._later: dict[str, IDelayedCall] = {}
        self._visiting: set[str] = set()
        #: Databases not to be looked at before a time (couchgw may not read them, or they
        #: failed): (when, why).
        self.held_off: dict[str, tuple[float, str]] = {}
        #: Why the fleet cannot work (None: it can).
        self.error: str | None = "not connected yet"
        self._starting: Deferred[None] | None = None
        self._welcome: Doc | None = None
        self._loop: LoopingCall | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._starting = self._open()
        self._starting.addErrback(log_error, "gateway start-up failed")

    @inlineCallbacks
    def _open(self) -> Any:
        backoff = Backoff(base=0.25, cap=10.0)
        running = self.shared.running
        while running():
            try:
                welcome = yield self.coordination.welcome()
                self._welcome = welcome
                yield self._coordination()
                break
            except Exception as e:
                self.error = f"CouchDB at {self.coordination.server_url}: {describe_error(e)}"
                delay = backoff.next()
                log.warn("{error}; trying again in {delay:.1f}s", error=self.error, delay=delay)
                yield deferLater(self.clock, delay, lambda: None)
        if not running():
            return
        self.members.start()
        yield self.members.started()
        while running():
            try:
                yield self.discovery.start(welcome)
                break
            except Exception as e:
                self.error = describe_error(e)
                yield deferLater(self.clock, backoff.next(), lambda: None)
        if not running():
            return
        self.error = None
        self.open_files.start()
        log.info(
            "serving the databases {patterns} of {server}: {n} found",
            patterns=", ".join(self.settings.patterns),
            server=self.coordination.server_url,
            n=len(self.discovery.names),
        )
        self.shared.routes.load()
        self._loop = LoopingCall(self.feeds.beat)
        self._loop.clock = self.clock
        self._loop.start(1.0, now=False)

    @inlineCallbacks
    def _coordination(self) -> Any:
        """The gateways' own database, created where missing; only server admins use it."""
        created = yield self.coordination.create()
        if created:
            log.info("created database {db}", db=self.coordination.url)
        security = yield self.coordination.get("_security")
        if {k: v for k, v in security.items() if k in SECURITY} != SECURITY:
            yield self.coordination.json("PUT", "_security", SECURITY)

    @inlineCallbacks
    def stop(self, grace: float) -> Any:
        leaving = self.members.leave()
        if self._starting is not None:
            self._starting.cancel()
        self.discovery.stop()
        self.open_files.stop()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.feeds.stop()
        for later in self._later.values():
            if later.active():
                later.cancel()
        tenants = list(self.tenants.values())
        self.tenants.clear()
        yield DeferredList([tenant.stop(grace, deadline) for tenant in tenants])
        yield leaving
        yield self.members.stop()

    # -- which databases, and when ---------------------------------------------------------------

    def owns(self, name: str) -> bool:
        """
        Whether a database is this gateway's to serve now (while it may not claim, none is;
        the members then say when it may again).
        """
        return self.members.owns(name, None)

    def _found(self, name: str) -> None:
        if self.owns(name):
            self._visit(name)

    def _gone(self, name: str) -> None:
        tenant = self.tenants.get(name)
        if tenant is not None:
            log.info("database {db} is gone: no longer served", db=name)
            self._release(tenant, save=False)
        self.held_off.pop(name, None)
        self.discovery.names.discard(name)  # (made again, it is found again)

    def _updated(self, name: str) -> None:
        if not self.owns(name):
            return
        tenant = self.tenants.get(name)
        if tenant is None or tenant.error is not None:
            held = self.held_off.get(name)
            if held is None or held[0] <= self.clock.seconds():
                self._visit(name)
        else:
            self.wake(tenant)

    def _members_changed(self) -> None:
        """Gateways came or went, or this one may claim again: take up and give up databases."""
        for name in sorted(self.discovery.names):
            owned = self.owns(name)
            tenant = self.tenants.get(name)
            if owned and tenant is None:
                self._visit(name)
            elif owned and tenant is not None and tenant.error is None:
                tenant.intake.sweep_soon()  # the claims of a gateway gone
            elif not owned and tenant is not None:
                self._release(tenant)

    def _tenant(self, name: str) -> Tenant:
        tenant = self.tenants.get(name)
        if tenant is None:
            db = self.coordination.sibling(name)
            owner = DatabaseOwner(self.members, lambda: self.owns(name))
            tenant = Tenant(
                db,
                self.clock,
                self.shared,
                self.tenant_settings,
                owner,
                gone=lambda t: self._gone(t.name) if self.tenants.get(t.name) is t else None,
            )
            self.tenants[name] = tenant
        return tenant

    def _release(self, tenant: Tenant, save: bool = True) -> None:
        """Stop serving a database: its calls in flight end, its waiting messages stay there."""
        self.tenants.pop(tenant.name, None)
        self.feeds.forget(tenant.name)
        self._to_visit.pop(tenant.name, None)
        tenant.let_go(save).addErrback(log_error, f"cannot let go of {tenant.name}")

    # -- looking at a database ---------------------------------------------------------------------

    def _visit(self, name: str) -> None:
        if name in self._visiting:
            self._revisit.add(name)  # (what the visit under way found may be out of date)
        else:
            self._to_visit[name] = None
            self._visit_next()

    def _visit_next(self) -> None:
        while self._to_visit and len(self._visiting) < self.settings.visits:
            name, _ = self._to_visit.popitem(last=False)
            if not self.owns(name) or not self.shared.running():
                continue
            self._visiting.add(name)
            self._look(self._tenant(name)).addBoth(self._visited, name)

    def _visited(self, result: Any, name: str) -> None:
        self._visiting.discard(name)
        if name in self._revisit:
            self._revisit.discard(name)
            self._to_visit[name] = None
        self._visit_next()

    @inlineCallbacks
    def _look(self, tenant: Tenant) -> Any:
        """Get a database ready, and sweep it for what is due (its feed opens when it changes)."""
        try:
            yield tenant.prepare(create=False, welcome=self._welcome)
        except (Unauthorized, Forbidden) as e:
            self._hold_off(tenant, REFUSED_AGAIN, f"couchgw may not use it ({describe_error(e)})")
            return
        except NotFound:
            self._gone(tenant.name)
            return
        except Exception as e:
            self._hold_off(tenant, FAILED_AGAIN, describe_error(e))
            return
        self.held_off.pop(tenant.name, None)
        self.feeds.guarded(tenant.name)  # (prepare read its security object)
        try:
            if tenant.followed_before():
                yield tenant.intake.sweep()
            elif tenant.holds_documents():
                # never followed: its feed from its start brings its messages (no view to
                # build, no sweep); its checkpoint is saved first, so that a gateway that takes
                # it over sweeps it for the claims of this one
                try:
                    yield tenant.begin_checkpoint(at_start=True)
                except Exception as e:
                    why = f"its checkpoint cannot be saved ({describe_error(e)})"
                    self._hold_off(tenant, FAILED_AGAIN, why)
                    return
                self.wake(tenant)
                return
            else:
                yield tenant.begin_checkpoint()
        except Exception as e:
            log.warn("cannot look at {db}: {error}", db=tenant.name, error=describe_error(e))
        if self.tenants.get(tenant.name) is not tenant:
            return  # let go of meanwhile
        if not self.discovery.says_updates or tenant.busy():
            self.wake(tenant)

    def _hold_off(self, tenant: Tenant, seconds: float, why: str) -> None:
        """A database that cannot be served now: said once, looked at again on a later update."""
        before = self.held_off.get(tenant.name)
        if before is None or before[1] != why:
            log.warn("database {db} is not served: {why}", db=tenant.name, why=why)
        self.held_off[tenant.name] = (self.clock.seconds() + seconds, why)
        tenant.error = why
        self.tenants.pop(tenant.name, None)
        self.shared.backlog.drop(tenant.intake)
        if seconds == FAILED_AGAIN and tenant.name not in self._later:  # (not only on an update)
            self._later[tenant.name] = self.clock.callLater(seconds, self._look_again, tenant.name)

    def _look_again(self, name: str) -> None:
        self._later.pop(name, None)
        if name in self.discovery.names and self.owns(name) and name not in self.tenants:
            self._visit(name)

    # -- the feeds ---------------------------------------------------------------------------------

    def _served(self, name: str) -> Tenant | None:
        """The database of this name, while this gateway serves it and can."""
        tenant = self.tenants.get(name)
        return tenant if tenant is not None and tenant.error is None else None

    def wake(self, tenant: Tenant) -> None:
        """Read what changed in a database (L{Feeds.wake})."""
        self.open_files.used(tenant.name)
        self.feeds.wake(tenant)

    def routes_loaded(self) -> None:
        """Every route loaded once more: the guards of the databases served describe them."""
        for tenant in self.tenants.values():
            if tenant.error is None and tenant.guards.installed:
                self.feeds.guard(tenant)

    # -- state ---------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        problems = [self.error] if self.error else []
        if self.coordination.refused:
            problems.append(f"CouchDB refuses the credentials: {self.coordination.refused}")
        if self.discovery.error:
            problems.append(self.discovery.error)
        problems += self.members.problems()
        feed = self.discovery.feed
        if feed is not None and feed.state != "connected":
            error = f": {feed.last_error}" if feed.last_error else ""
            problems.append(f"database updates feed {feed.state}{error}")
        return problems

    def feed_lag(self, most: int = 10000) -> Deferred[int | None]:
        return succeed(None)  # (a lag of each database's feed is no figure of the whole)

    @property
    def patterns(self) -> tuple[str, ...]:
        return self.settings.patterns

    @property
    def max_feeds(self) -> int:
        return self.settings.max_feeds

    def to_look_at(self) -> int:
        """Databases to look at, or being looked at."""
        return len(self._to_visit) + len(self._visiting)

    def status(self, names: bool) -> Deferred[dict[str, Any]]:
        return succeed(census.status(self, names))

    def gauges(self) -> dict[str, Any]:
        return census.gauges(self)
