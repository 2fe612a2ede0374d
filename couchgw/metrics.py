"""
Prometheus metrics (C{GET /metrics}), through C{prometheus_client}: a registry of the gateway's
own, so that several gateways in one process (the tests) do not mix.

Counters move as the gateway works; gauges are read off the gateway when scraped (it hands
them over as L{Gauges}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

#: From a millisecond ping to a call of many minutes.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass(frozen=True)
class RouteGauges:
    name: str
    in_flight: int
    busy: int
    #: Loaded and not out.
    ready: bool
    #: Times its target was found out (its circuit breaker opened).
    outages: int = 0
    #: Probes of its target while it was out, by how (a request, a message's call) and what
    #: they found (answered, failed, lost).
    probes: Mapping[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class Gauges:
    """The gateway's state at a scrape."""

    routes: list[RouteGauges]
    #: Documents being handled now (all routes).
    active: int
    feed_reconnects: int
    feed_connected: bool
    #: Seconds since the checkpoint was last written (None before that).
    checkpoint_age: float | None
    #: Claims by answer (taken, confirmed, lost, unconfirmed).
    claims: Mapping[str, int]
    #: Gateways sharing the database that this one sees alive (itself included).
    gateways: int
    #: Whether CouchDB answers.
    up: bool
    #: Where many databases are served: how many, by state (found, served, feeds, not_served).
    databases: Mapping[str, int] | None = None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter(
            "couchgw_messages",
            "Messages this gateway brought to a final status, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.dispatch = Histogram(
            "couchgw_dispatch_duration_seconds",
            "How long calls to the targets took, by route.",
            ["route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "couchgw_retries",
            "Calls that failed in a way that may pass and will be made again, by route.",
            ["route"],
            registry=self.registry,
        )
        self.callbacks = Counter(
            "couchgw_callbacks",
            "Callback deliveries tried, by outcome (delivered, retrying, failed).",
            ["outcome"],
            registry=self.registry,
        )
        #: Changes of the database the feed has not read yet (set before each scrape).
        self.feed_lag: float | None = None

    def watch(self, read: Callable[[], Gauges]) -> None:
        """Read the gauges with C{read} at each scrape."""
        self.registry.register(_GatewayState(read, self))


class _GatewayState(Collector):
    def __init__(self, read: Callable[[], Gauges], metrics: Metrics) -> None:
        self.read = read
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        gauges = self.read()
        in_flight = GaugeMetricFamily(
            "couchgw_in_flight", "Messages being handled now, by route.", labels=["route"]
        )
        busy = GaugeMetricFamily(
            "couchgw_threads_busy",
            "Calls running now (threads busy, for SOAP routes), by route.",
            labels=["route"],
        )
        ready = GaugeMetricFamily(
            "couchgw_route_ready", "1 when the route is ready, else 0.", labels=["route"]
        )
        outages = CounterMetricFamily(
            "couchgw_route_outages",
            "Times the route's target was found out (its calls failing one after another): "
            "its calls stopped, and its messages waited without using attempts.",
            labels=["route"],
        )
        probes = CounterMetricFamily(
            "couchgw_route_probes",
            "Probes of a route's target while it was out: a request to the target (how=request) "
            "or a message's call (how=call), by what they found (answered, failed, lost: a call "
            "that did not end within its deadline).",
            labels=["route", "how", "result"],
        )
        for route in gauges.routes:
            in_flight.add_metric([route.name], route.in_flight)
            busy.add_metric([route.name], route.busy)
            ready.add_metric([route.name], 1 if route.ready else 0)
            outages.add_metric([route.name], route.outages)
            for how in ("request", "call"):
                for result in ("answered", "failed", "lost"):
                    if how == "request" and result == "lost":
                        continue
                    probes.add_metric([route.name, how, result], route.probes.get((how, result), 0))
        yield in_flight
        yield busy
        yield ready
        yield outages
        yield probes
        yield GaugeMetricFamily(
            "couchgw_active", "Documents being handled now (all routes).", value=gauges.active
        )
        yield CounterMetricFamily(
            "couchgw_feed_reconnects",
            "Times the changes feed connected again.",
            value=gauges.feed_reconnects,
        )
        yield GaugeMetricFamily(
            "couchgw_feed_connected",
            "1 while the changes feed is connected.",
            value=1 if gauges.feed_connected else 0,
        )
        if self.metrics.feed_lag is not None:
            yield GaugeMetricFamily(
                "couchgw_feed_lag_changes",
                "Changes of the database after the last one the feed read.",
                value=self.metrics.feed_lag,
            )
        if gauges.checkpoint_age is not None:
            yield GaugeMetricFamily(
                "couchgw_checkpoint_age_seconds",
                "Seconds since the checkpoint was last written.",
                value=gauges.checkpoint_age,
            )
        claims = CounterMetricFamily(
            "couchgw_claims",
            "Claims by how they went: taken at once, confirmed (a cluster's copies read back), "
            "lost (to another gateway or an edit), unconfirmed (not every copy could be read).",
            labels=["answer"],
        )
        for answer in ("taken", "confirmed", "lost", "unconfirmed"):
            claims.add_metric([answer], gauges.claims.get(answer, 0))
        yield claims
        yield GaugeMetricFamily(
            "couchgw_gateways",
            "Gateways sharing the database that this one sees alive (itself included).",
            value=gauges.gateways,
        )
        if gauges.databases is not None:
            databases = GaugeMetricFamily(
                "couchgw_databases",
                "Databases of the server matching --databases, by state: found, served by this "
                "gateway, feeds open, not served (couchgw may not use them, or they failed).",
                labels=["state"],
            )
            for state, count in sorted(gauges.databases.items()):
                databases.add_metric([state], count)
            yield databases
        yield GaugeMetricFamily(
            "couchgw_up",
            "1 while CouchDB answers and the gateway works.",
            value=1 if gauges.up else 0,
        )
