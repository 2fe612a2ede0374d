"""
What a fleet of databases (L{couchgw.gateway.fleet}) tells of itself: C{/status} and the gauges
of C{/metrics}, totals over every database served (the busiest named only where allowed).
"""

from __future__ import annotations

from typing import Any, Protocol

from couchgw.couch.capacity import OpenFilesWatch
from couchgw.couch.client import Database
from couchgw.couch.feed import describe as describe_feed
from couchgw.gateway.discovery import Discovery
from couchgw.gateway.feeds import Feeds
from couchgw.gateway.members import Members
from couchgw.gateway.tenant import Shared, Tenant

#: The busiest databases in C{/status}.
BUSIEST = 10


class Fleet(Protocol):
    """What is counted of a fleet (L{couchgw.gateway.fleet.Fleet})."""

    tenants: dict[str, Tenant]
    coordination: Database
    discovery: Discovery
    open_files: OpenFilesWatch
    feeds: Feeds
    members: Members
    shared: Shared
    held_off: dict[str, tuple[float, str]]
    error: str | None

    @property
    def patterns(self) -> tuple[str, ...]: ...

    @property
    def max_feeds(self) -> int: ...

    def to_look_at(self) -> int: ...


def status(fleet: Fleet, names: bool) -> dict[str, Any]:
    """C{/status} of a fleet; with C{names}, the busiest databases named."""
    tenants = list(fleet.tenants.values())
    busiest = sorted(tenants, key=_load, reverse=True)[:BUSIEST]
    return {
        "server": fleet.coordination.server_url,
        "databases": {
            "patterns": list(fleet.patterns),
            "found": len(fleet.discovery.names),
            "served": len(tenants),
            "feeds": len(fleet.feeds.awake),
            "max_feeds": fleet.max_feeds,
            "waiting_for_a_feed": len(fleet.feeds.waiting),
            "to_look_at": fleet.to_look_at(),
            "not_served": len(fleet.held_off),
            "open_files": fleet.open_files.describe(),
        },
        "busiest": [
            {**({"database": t.name} if names else {}), **t.describe()} for t in busiest if t.busy()
        ],
        "counts": None,
        "finished_here": dict(fleet.shared.finished),
        "in_flight": sum(len(t.intake.active) for t in tenants),
        "calls": sum(len(t.claims.held) for t in tenants),
        "feed": describe_feed(fleet.discovery.feed),
        "members": fleet.members.describe(),
        "claims": claims(tenants),
    }


def gauges(fleet: Fleet) -> dict[str, Any]:
    """The gauges of a fleet (L{couchgw.metrics.Gauges}): no series per database."""
    tenants = list(fleet.tenants.values())
    feed = fleet.discovery.feed
    return {
        "active": sum(len(t.intake.active) for t in tenants),
        "feed_reconnects": feed.reconnects if feed else 0,
        "feed_connected": feed is None or feed.state == "connected",
        "checkpoint_age": None,
        "claims": claims(tenants),
        "gateways": len(fleet.members.others) + 1,
        "up": fleet.error is None,
        "databases": {
            "found": len(fleet.discovery.names),
            "served": len(tenants),
            "feeds": len(fleet.feeds.awake),
            "not_served": len(fleet.held_off),
        },
    }


def claims(tenants: list[Tenant]) -> dict[str, int]:
    """How CouchDB answered the claims, in every database served."""
    found: dict[str, int] = {}
    for tenant in tenants:
        for answer, n in tenant.claims.answers.items():
            found[answer] = found.get(answer, 0) + n
    return found


def _load(tenant: Tenant) -> int:
    return len(tenant.intake.active) + tenant.intake.waiting() + len(tenant.claims.held)
