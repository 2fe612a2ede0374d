"""
The couchgw twistd plugin: its options (L{couchgw.options}), and L{makeService}, which composes
the whole service.

    twistd -n couchgw --couch=http://127.0.0.1:5984/messages --target=http://host/Service?wsdl
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from treq.client import HTTPClient
from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger
from twisted.web.iweb import IAgent
from twisted.web.server import Site

from couchgw.coercers import loopback
from couchgw.connections import PoolCloser, agent, connection_pool
from couchgw.couch.client import Database
from couchgw.demo import DemoService
from couchgw.embedded import EmbeddedCouch
from couchgw.gateway import Gateway, Policy
from couchgw.gateway.callbacks import Callbacks
from couchgw.gateway.fleet import COORDINATION, FleetSettings
from couchgw.options import Options
from couchgw.targets.routes import RouteConfig, RoutesError, build
from couchgw.tracing import Tracing, TracingService
from couchgw.web.api import API
from couchgw.web.auth import CouchUsers, Guarded
from couchgw.web.events import Hubs
from couchgw.web.throughput import Throughput, finished

log = Logger()


class Stack(MultiService):
    """A L{MultiService} that stops its children one at a time, last started first."""

    @inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        for service in reversed(list(self)):
            yield service.stopService()


def makeService(options: Options | dict[str, Any], reactor: Any = None) -> IService:
    """Build couchgw: the services below start in this order and stop in the reverse one."""
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    top = Stack()

    couch = options["couch"]
    patterns = options.get("patterns")
    embedded: EmbeddedCouch | None = None
    if couch is None:
        embedded = EmbeddedCouch(
            reactor,
            options["data"],
            options["embedded-port"],
            executable=options.get("pouchdb-server"),
            in_memory=options["in-memory"],
        )
        embedded.setServiceParent(top)
        couch = embedded.url if patterns else f"{embedded.url}/messages"

    # many databases: a feed each (at most --max-feeds), and their looks and writes beside
    pool = connection_pool(reactor, 20 + (options["max-feeds"] if patterns else 0))
    PoolCloser(pool).setServiceParent(top)
    to_couch: IAgent = agent(reactor, pool, options.get("ca"))
    if embedded is not None:  # only once the server on its port is the child it started
        to_couch = embedded.agent(to_couch)
    credentials = options.get("couch-credentials")
    fleet: FleetSettings | None = None
    if patterns:  # the databases of a server: the gateways coordinate in a database of their own
        server = couch.rstrip("/")
        db = Database(f"{server}/{COORDINATION}", to_couch, credentials)
        fleet = FleetSettings(db, tuple(patterns), max_feeds=options["max-feeds"])
    else:
        db = Database(couch, to_couch, credentials)

    configs: list[RouteConfig] = options["route-configs"]
    if any(config.url == "demo" for config in configs):
        demo = DemoService(reactor, options["demo-port"], options["demo-delay"])
        demo.setServiceParent(top)
        # known once the demo listens
        urls = {"soap": lambda: demo.wsdl_url, "http": lambda: demo.json_url}
        configs = [
            replace(c, url=urls[c.kind]) if c.url == "demo" and c.kind in urls else c
            for c in configs
        ]
    try:
        targets = build(configs, reactor, top, options["kinds"])
    except RoutesError as e:
        raise SystemExit(f"twistd couchgw: --routes {e}") from None

    callback_pool = connection_pool(reactor)
    PoolCloser(callback_pool).setServiceParent(top)
    secret = options.get("callback-secret")
    callbacks = Callbacks(
        reactor,
        HTTPClient(agent(reactor, callback_pool, options.get("ca"))),
        (options.get("callback-allow") or "").split(","),
        secret.encode("utf-8") if secret else None,
        attempts=options["retries"],
    )

    tracing = Tracing.from_environment()
    TracingService(tracing, reactor).setServiceParent(top)  # stops after the gateway
    gateway = Gateway(
        None if fleet is not None else db,
        targets,
        reactor,
        fleet=fleet,
        callbacks=callbacks,
        tracing=tracing,
        policies={
            c.name: Policy(
                retries=c.retries,
                backoff=c.backoff,
                rate=c.rate,
                inflight=c.inflight,
                retry_for=c.retry_for,
                backoff_max=c.backoff_max,
            )
            for c in configs
        },
        gateway=options["gateway-id"],
        lease=options["lease"],
        retries=options["retries"],
        max_inflight=options["max-inflight"],
        sweep_interval=options["sweep"],
        heartbeat=options["heartbeat"],
        announce=options["announce"],
        guards=options["guards"],
        grace=options["grace"],
        max_bytes=options["max-message-bytes"],
    )
    gateway.setServiceParent(top)
    hubs = Hubs(
        _served(gateway, db),
        reactor,
        heartbeat=options["heartbeat"],
        max_line=gateway.max_bytes + 65536,
    )
    hubs.setServiceParent(top)

    throughput = Throughput(lambda: finished(gateway.metrics), reactor)
    throughput.setServiceParent(top)
    names = not options.get("http-auth") and loopback(options["http"])
    resource: Any = API(gateway, hubs, reactor, names=names, throughput=throughput).app.resource()
    if options.get("http-auth"):
        one = None if fleet is not None else db
        users = CouchUsers(
            db, reactor, database=lambda: one, operator_role=options.get("operator-role")
        )
        resource = Guarded(resource, users)
    elif not loopback(options["http"]):
        log.warn(
            "the HTTP API listens beyond this machine ({endpoint}) without --http-auth "
            "(--http-public): anyone who reaches it reads every message's status",
            endpoint=options["http"],
        )
    for warning in options.get("warnings") or []:
        log.warn("{warning}", warning=warning)
    site = Site(resource)
    site.displayTracebacks = False
    strports.service(options["http"], site, reactor=reactor).setServiceParent(top)
    return top


def _served(gateway: Gateway, db: Database) -> Callable[[str | None], Database | None]:
    """The database of a name, if it is one the gateway serves (None: its one database)."""

    def database(name: str | None) -> Database | None:
        if gateway.fleet is None:
            return db if name is None else None
        if name is None or name not in gateway.fleet.discovery.names:
            return None
        return db.sibling(name)

    return database
