"""
The demo SOAP target: a slow "device activation" system built with spyne.

It is served through spyne's WSGI server under L{twisted.web.wsgi}, on a thread pool of its own,
so the slow calls sleep in threads and never block the reactor.  C{python -m couchgw.demo}
serves it on its own (the tests and benchmarks use it as an external target).
"""

from __future__ import annotations

import argparse
import logging
import time
from datetime import UTC, datetime
from typing import Any

from spyne import (
    Application,
    Boolean,
    ComplexModel,
    DateTime,
    Double,
    Fault,
    Integer,
    Integer32,
    Iterable,
    Unicode,
    rpc,
)
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication
from spyne.service import Service as SpyneService
from twisted.application.service import Service
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.logger import Logger
from twisted.web.server import Site
from twisted.web.wsgi import WSGIResource

from couchgw.threads import ThreadPoolService

log = Logger()

NAMESPACE = "urn:couchgw:demo"


class Activation(ComplexModel):
    __namespace__ = NAMESPACE
    network = Unicode
    activated = Integer
    devices = Iterable(Unicode)
    finished_at = DateTime


def application(delay: float = 0.1) -> WsgiApplication:
    """
    The demo's WSGI application.

    @param delay: seconds that C{activate} takes per device.
    """

    class DeviceActivation(SpyneService):
        @rpc(Unicode(min_occurs=1), Integer(min_occurs=1), _returns=Activation)
        def activate(ctx: Any, network: str, count: int) -> Activation:
            """Activate C{count} devices on C{network}; takes C{count * delay} seconds."""
            log.info("activate network={network} count={count}", network=network, count=count)
            if count < 0:
                raise Fault("Client.BadCount", f"count must not be negative, got {count}")
            time.sleep(count * delay)
            log.info("activated network={network}", network=network)
            return Activation(
                network=network,
                activated=count,
                devices=[f"{network}-{i}" for i in range(count)],
                finished_at=datetime.now(UTC),
            )

        @rpc(Unicode, _returns=Unicode)
        def ping(ctx: Any, text: str | None) -> str:
            """Answer at once with C{text}."""
            return "pong" if text is None else text

        @rpc(
            Unicode(min_occurs=1),
            Integer32,
            Boolean,
            Double,
            DateTime,
            Unicode(max_occurs="unbounded"),
            _returns=Unicode,
        )
        def configure(
            ctx: Any,
            device: str,
            port: int | None,
            enabled: bool | None,
            weight: float | None,
            at: datetime | None,
            tags: list[str] | None,
        ) -> str:
            """Answer at once with what was set (typed arguments, for checking conversions)."""
            return (
                f"{device}: port={port} enabled={enabled} weight={weight} "
                f"at={at.isoformat() if at else None} tags={','.join(tags or [])}"
            )

        @rpc(Unicode, _returns=Unicode)
        def refuse(ctx: Any, reason: str | None) -> str:
            """Always answer with a SOAP Fault."""
            raise Fault("Server.ActivationRefused", reason or "activation refused")

    app = Application(
        [DeviceActivation],
        tns=NAMESPACE,
        name="DeviceActivation",
        in_protocol=Soap11(validator="lxml"),
        out_protocol=Soap11(),
    )
    app.event_manager.add_listener(
        "method_call",
        lambda ctx: log.info("call {operation}", operation=ctx.descriptor.name),
    )
    return WsgiApplication(app)


class DemoService(Service):
    """
    Serves the demo SOAP target on localhost for as long as the service runs.

    The port is bound in L{startService}, so L{wsdl_url} is known once the service has started.
    """

    def __init__(self, reactor: Any, port: int = 0, delay: float = 0.1, threads: int = 200) -> None:
        self._reactor = reactor
        self._port_number = port
        self._delay = delay
        self._threads = ThreadPoolService(reactor, threads, name="couchgw-demo")
        self._port: IListeningPort | None = None

    @property
    def wsdl_url(self) -> str:
        if self._port is None:
            raise RuntimeError("the demo service is not running")
        return f"http://127.0.0.1:{self._port.getHost().port}/?wsdl"  # type: ignore[attr-defined]

    def startService(self) -> None:
        super().startService()
        reactor: IReactorTCP = self._reactor
        resource = WSGIResource(self._reactor, self._threads.pool, application(self._delay))
        site: Any = Site(resource)
        self._port = reactor.listenTCP(self._port_number, site, interface="127.0.0.1")
        self._threads.startService()
        log.info("demo SOAP service at {url}", url=self.wsdl_url)

    def stopService(self) -> Any:
        super().stopService()
        port, self._port = self._port, None
        self._threads.stopService()
        if port is not None:
            return port.stopListening()
        return None


def main(argv: list[str] | None = None) -> None:
    """Serve the demo target in a process of its own until interrupted."""
    import sys

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    parser = argparse.ArgumentParser(description="couchgw's demo SOAP target")
    parser.add_argument("--port", type=int, default=8471, help="TCP port on 127.0.0.1 (0: any)")
    parser.add_argument("--delay", type=float, default=0.1, help="seconds per activated device")
    parser.add_argument("--threads", type=int, default=200, help="concurrent calls served")
    args = parser.parse_args(argv)
    logging.getLogger("spyne").setLevel(logging.WARNING)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    service = DemoService(reactor, args.port, args.delay, args.threads)
    service.startService()
    print(service.wsdl_url, flush=True)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
