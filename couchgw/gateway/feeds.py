"""
Which databases of a fleet have their changes read, and when (L{couchgw.gateway.fleet}).

Where the server says which databases change (C{/_db_updates}), a database that changes has its
feed read once: until it is silent a moment (L{ONCE}); a database written to without a pause
keeps it open.  Two reads of one database are L{REREAD} seconds apart at least (longer while its
messages are handled, and until L{ECHO} after couchgw's own writes to it: those are most of what
the server tells of), so the updates told of meanwhile are read together.  Elsewhere (PouchDB
Server) up to C{--max-feeds} feeds stay open and the databases beyond take turns (L{TURN}).
Never more than C{--max-feeds} feeds at once: the others wait for one.  While a database's feed
is open its guard is read again every C{--announce} seconds; its checkpoint is saved every
L{SAVE_EVERY} seconds at most, L{SAVES} at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from couchgw.errors import log_error
from couchgw.gateway.tenant import Tenant

#: Seconds without a change after which a database's feed read once ends.
ONCE = 0.05
#: Seconds between two reads of a database's changes, at least; while its messages are handled.
REREAD = 0.3
REREAD_BUSY = 2.0
#: Seconds after couchgw's own writes to a database within which the server tells of them
#: (C{/_db_updates} gathers the updates of half a second): a read again waits that long after
#: them, so that one read looks at all they changed.
ECHO = 0.6
#: Seconds between two saves of a database's checkpoint, at least, and from its first read to
#: its first save (a gateway that dies reads the changes since again: each is looked at,
#: harmlessly; one that stops or lets a database go saves its checkpoint then).
SAVE_EVERY = 30.0
#: Beats between two turns of the feeds, on a server that does not say which databases change.
TURN = 5
#: Checkpoint saves under way at once, at most: the databases read in the same moment come due
#: together, and wait their turn (a connection each, else).
SAVES = 4

log = Logger(namespace="couchgw.gateway")


class Feeds:
    """
    @param served: the database of this name, while this gateway serves it and can.
    @param says_updates: whether the server says which databases change.
    @param beats_per_save: beats (L{beat}) between two looks at the checkpoints to save.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        max_feeds: int,
        announce: float,
        served: Callable[[str], Tenant | None],
        says_updates: Callable[[], bool],
        beats_per_save: int,
    ) -> None:
        self.clock = clock
        self.max_feeds = max_feeds
        self.announce = announce
        self._served = served
        self._says_updates = says_updates
        self._beats_per_save = max(1, beats_per_save)
        #: The databases whose feeds are open, the least recently active first.
        self.awake: OrderedDict[str, Tenant] = OrderedDict()
        #: The databases waiting for a feed.
        self.waiting: OrderedDict[str, None] = OrderedDict()
        #: Databases written to while their feed was read: read once more after it.
        self._again: set[str] = set()
        #: Databases read lately whose checkpoints are to be saved, and when each was saved.
        self._unsaved: dict[str, Tenant] = {}
        self._saved_at: dict[str, float] = {}
        #: The checkpoints to save, in turn, and how many saves are under way.
        self._to_save: OrderedDict[str, Tenant] = OrderedDict()
        self._saving = 0
        #: When each database's changes were last read, and the reads put off.
        self._read_at: dict[str, float] = {}
        self._later: dict[str, IDelayedCall] = {}
        #: When each database's guard was last read.
        self._guarded: dict[str, float] = {}
        self._beats = 0

    def wake(self, tenant: Tenant) -> None:
        """Read what changed in a database now, or as soon as it may be."""
        name = tenant.name
        if self._served(name) is not tenant:
            return
        if name in self.awake:
            self._again.add(name)  # what changed after its feed began: read once more
            return
        read_at = self._read_at.get(name)
        now = self.clock.seconds()
        if read_at is not None:
            due = read_at + (REREAD_BUSY if tenant.busy() else REREAD)
            wrote = tenant.writer.answered_at
            if wrote is not None:
                due = max(due, wrote + ECHO)
            if now < due:
                if name not in self._later:
                    self._later[name] = self.clock.callLater(due - now, self._wake_later, name)
                return
        if len(self.awake) >= self.max_feeds:
            self.waiting[name] = None
            return
        if now - self._guarded.get(name, now) >= self.announce:
            self.guard(tenant)  # (its security object may have changed meanwhile)
        self.awake[name] = tenant
        self._saved_at.setdefault(name, now)  # (the first save too comes SAVE_EVERY on)
        if self._says_updates():
            tenant.follow(plan=False, once=ONCE, read=lambda: self._read(tenant))
        else:
            tenant.follow(plan=False)  # (its timer for what comes due is kept while it sleeps)

    def _wake_later(self, name: str) -> None:
        self._later.pop(name, None)
        tenant = self._served(name)
        if tenant is not None:
            self.wake(tenant)

    def _read(self, tenant: Tenant) -> None:
        """A database's feed read once ended: the next waiting for a feed may read."""
        name = tenant.name
        if self.awake.get(name) is tenant:
            del self.awake[name]
        self._read_at[name] = self.clock.seconds()
        self._unsaved[name] = tenant
        if name in self._again:
            self._again.discard(name)
            self.wake(tenant)
        self._promote()

    def _promote(self) -> None:
        """The databases waiting for a feed take those free."""
        while self.waiting and len(self.awake) < self.max_feeds:
            waiting, _ = self.waiting.popitem(last=False)
            other = self._served(waiting)
            if other is not None:
                self.wake(other)

    def beat(self) -> None:
        """
        Every second: the guards of the databases with a feed open are read every --announce
        seconds; the checkpoints of those open or read lately are saved; feeds take turns.
        """
        try:
            self._beat()
        except Exception:  # (the next beat comes all the same)
            log.failure("the feeds' beat failed")

    def _beat(self) -> None:
        self._beats += 1
        now = self.clock.seconds()
        for tenant in list(self.awake.values()):
            if now - self._guarded.get(tenant.name, now) >= self.announce:
                self.guard(tenant)
        if self._beats % self._beats_per_save == 0:
            for name, tenant in [*self._unsaved.items(), *self.awake.items()]:
                if now - self._saved_at.get(name, 0.0) >= SAVE_EVERY:
                    if not tenant.busy() and name not in self.awake:
                        self._unsaved.pop(name, None)
                    self._save(tenant)
        if not self._says_updates() and self.waiting and self._beats % TURN == 0:
            self._take_turns()

    def _take_turns(self) -> None:
        """
        (No C{/_db_updates}.) The open feeds with nothing under way, the longest open first,
        are closed for the databases that wait (as many as wait); their turn comes again.
        """
        turns = len(self.waiting)
        for name, tenant in list(self.awake.items()):
            if turns == 0:
                return
            if not tenant.busy():
                turns -= 1
                del self.awake[name]
                tenant.intake.unfollow()
                self._save(tenant)
                self.waiting[name] = None
                self._read(tenant)

    def _save(self, tenant: Tenant) -> None:
        """Save a database's checkpoint: now, or once fewer than L{SAVES} are under way."""
        self._saved_at[tenant.name] = self.clock.seconds()
        self._to_save[tenant.name] = tenant
        self._save_next()

    def _save_next(self) -> None:
        while self._to_save and self._saving < SAVES:
            name, tenant = self._to_save.popitem(last=False)
            if self._served(name) is tenant:
                self._saving += 1
                tenant.save_checkpoint().addBoth(self._saved)

    def _saved(self, result: object) -> None:
        self._saving -= 1
        self._save_next()

    def guard(self, tenant: Tenant) -> None:
        """Read a database's security object again, and install or remove its guard."""
        self._guarded[tenant.name] = self.clock.seconds()
        tenant.guards.refresh().addErrback(log_error, f"cannot guard {tenant.name}")

    def guarded(self, name: str) -> None:
        """A database's security object was just read (its guard follows it)."""
        self._guarded[name] = self.clock.seconds()

    def forget(self, name: str) -> None:
        """A database no longer served here."""
        self._guarded.pop(name, None)
        self._unsaved.pop(name, None)
        self._saved_at.pop(name, None)
        self._to_save.pop(name, None)
        self._read_at.pop(name, None)
        self._again.discard(name)
        later = self._later.pop(name, None)
        if later is not None and later.active():
            later.cancel()
        self.waiting.pop(name, None)
        if self.awake.pop(name, None) is not None:
            self._promote()

    def stop(self) -> None:
        for later in self._later.values():
            if later.active():
                later.cancel()
        self._later.clear()
        self.awake.clear()
        self.waiting.clear()
        self._to_save.clear()
