"""When a fleet's databases have their changes read and their checkpoints saved (fake clock)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from couchgw.gateway import feeds
from couchgw.gateway.feeds import Feeds
from couchgw.gateway.tenant import Tenant


class _Guards:
    def refresh(self) -> Deferred[None]:
        return succeed(None)


class _Writer:
    answered_at: float | None = None


class _Tenant:
    """What L{Feeds} asks of a database: its feed read once, its checkpoint saved."""

    def __init__(self, name: str, saves: list[tuple[str, Deferred[None]]]) -> None:
        self.name = name
        self.guards = _Guards()
        self.writer = _Writer()
        self._saves = saves
        self.read: Callable[[], None] | None = None
        self.reads: list[float] = []

    def busy(self) -> bool:
        return False

    def follow(
        self, plan: bool = True, once: float | None = None, read: Callable[[], None] | None = None
    ) -> None:
        self.read = read
        self.reads.append(self._clock.seconds() if self._clock else 0.0)

    _clock: Clock | None = None

    def save_checkpoint(self) -> Deferred[None]:
        saved: Deferred[None] = Deferred()
        self._saves.append((self.name, saved))
        return saved


class CheckpointSaves(SynchronousTestCase):
    def all_due(self, n: int) -> tuple[Feeds, dict[str, Any], list[tuple[str, Deferred[None]]]]:
        """C{n} databases read at once: their checkpoints all come due in the same beat."""
        clock = Clock()
        saves: list[tuple[str, Deferred[None]]] = []
        tenants: dict[str, Any] = {f"db{i}": _Tenant(f"db{i}", saves) for i in range(n)}
        fleet = Feeds(
            clock,
            max_feeds=100,
            announce=10.0,
            served=lambda name: cast(Tenant | None, tenants.get(name)),
            says_updates=lambda: True,
            beats_per_save=1,
        )
        for tenant in tenants.values():
            fleet.wake(cast(Tenant, tenant))
            assert tenant.read is not None
            tenant.read()  # (its read ended at once)
        for _ in range(int(feeds.SAVE_EVERY) + 1):
            clock.advance(1)
            fleet.beat()
        return fleet, tenants, saves

    def test_saves_that_come_due_together_go_a_few_at_a_time(self) -> None:
        _, tenants, saves = self.all_due(10)
        self.assertEqual(len(saves), feeds.SAVES)  # every checkpoint due: a few under way
        done = 0
        while done < len(saves):
            saves[done][1].callback(None)
            done += 1
            self.assertEqual(len(saves) - done, min(feeds.SAVES, len(tenants) - done))
        self.assertEqual(sorted(name for name, _ in saves), sorted(tenants))

    def test_a_database_let_go_is_not_saved_after(self) -> None:
        fleet, tenants, saves = self.all_due(6)
        gone = sorted(set(tenants) - {name for name, _ in saves})[0]
        fleet.forget(gone)
        del tenants[gone]
        done = 0
        while done < len(saves):  # (each save ended lets the next begin)
            saves[done][1].callback(None)
            done += 1
        self.assertNotIn(gone, [name for name, _ in saves])
        self.assertEqual(len(saves), 5)


class ReadsAgain(SynchronousTestCase):
    def test_the_echoes_of_its_own_writes_are_read_once_together(self) -> None:
        """
        The server tells of couchgw's own claims and outcomes a while after they are written:
        a read again waits until L{feeds.ECHO} after them, so that one read looks at them all.
        """
        clock = Clock()
        tenant = _Tenant("db", [])
        tenant._clock = clock
        fleet = Feeds(
            clock,
            max_feeds=100,
            announce=10.0,
            served=lambda name: cast(Tenant, tenant) if name == "db" else None,
            says_updates=lambda: True,
            beats_per_save=5,
        )
        fleet.wake(cast(Tenant, tenant))  # a client's messages: read at once
        assert tenant.read is not None
        clock.advance(0.05)
        tenant.read()
        for _ in range(3):  # its claims, then its outcomes, each told of a while after
            clock.advance(0.1)
            tenant.writer.answered_at = clock.seconds()
            clock.advance(0.1)
            fleet.wake(cast(Tenant, tenant))
        self.assertEqual(len(tenant.reads), 1)
        clock.pump([0.01] * int(feeds.ECHO * 100))
        self.assertEqual(len(tenant.reads), 2)
        self.assertAlmostEqual(tenant.reads[1], 0.55 + feeds.ECHO)  # (its last write at 0.55)
        tenant.read()
        clock.advance(10)
        fleet.wake(cast(Tenant, tenant))  # a client's message long after: read at once
        self.assertEqual(len(tenant.reads), 3)
