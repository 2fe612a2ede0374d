"""
Prometheus metrics (C{GET /metrics}), through C{prometheus_client}: a registry of the gateway's
own, so that several gateways in one process (the tests) do not mix.

Counters move as the gateway works; gauges are read off the gateway when scraped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from couchgw.gateway import Gateway

#: From a millisecond ping to a call of many minutes.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


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

    def watch(self, gateway: Gateway) -> None:
        """Read the gauges off C{gateway} at each scrape."""
        self.registry.register(_GatewayState(gateway, self))


class _GatewayState(Collector):
    def __init__(self, gateway: Gateway, metrics: Metrics) -> None:
        self.gateway = gateway
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        gateway = self.gateway
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
        for name, target in sorted(gateway.targets.items()):
            in_flight.add_metric([name], gateway.inflight[name])
            busy.add_metric([name], target.busy)
            ready.add_metric([name], 1 if target.state == "ready" else 0)
        yield in_flight
        yield busy
        yield ready
        yield GaugeMetricFamily(
            "couchgw_active", "Documents being handled now (all routes).", value=len(gateway.active)
        )
        feed = gateway.feed
        yield CounterMetricFamily(
            "couchgw_feed_reconnects",
            "Times the changes feed connected again.",
            value=feed.reconnects if feed else 0,
        )
        yield GaugeMetricFamily(
            "couchgw_feed_connected",
            "1 while the changes feed is connected.",
            value=1 if feed is not None and feed.state == "connected" else 0,
        )
        if self.metrics.feed_lag is not None:
            yield GaugeMetricFamily(
                "couchgw_feed_lag_changes",
                "Changes of the database after the last one the feed read.",
                value=self.metrics.feed_lag,
            )
        age = gateway.checkpoint_age()
        if age is not None:
            yield GaugeMetricFamily(
                "couchgw_checkpoint_age_seconds",
                "Seconds since the checkpoint was last written.",
                value=age,
            )
        claims = CounterMetricFamily(
            "couchgw_claims",
            "Claims by how they went: taken at once, confirmed (a cluster's copies read back), "
            "lost (to another gateway or an edit), unconfirmed (not every copy could be read).",
            labels=["answer"],
        )
        for answer in ("taken", "confirmed", "lost", "unconfirmed"):
            claims.add_metric([answer], gateway.claims.answers[answer])
        yield claims
        yield GaugeMetricFamily(
            "couchgw_gateways",
            "Gateways sharing the database that this one sees alive (itself included).",
            value=len(gateway.members.others) + 1,
        )
        yield GaugeMetricFamily(
            "couchgw_up",
            "1 while CouchDB answers and the gateway works.",
            value=0 if gateway.couch_error else 1,
        )
