"""
The demo target: a slow "device activation" system built with spyne.

It is served through spyne's WSGI server under L{twisted.web.wsgi}, on a thread pool of its own,
so the slow calls sleep in threads and never block the reactor.  The same operations answer
JSON POSTs at C{/json} (the example target of C{http} routes), waiting on the reactor.
C{python -m couchgw.demo} serves it on its own (the tests and benchmarks use it as an external
target).
"""

from __future__ import annotations

import argparse
import json
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
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.wsgi import WSGIResource

from couchgw.targets.threads import ThreadPoolService

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
    app.event_manager.add_listener("method_call", _log_call)
    return WsgiApplication(app)


def _log_call(ctx: Any) -> None:
    """One line per SOAP call: its operation, and the trace context it came with, if any."""
    traceparent = ctx.transport.req_env.get("HTTP_TRACEPARENT")
    tracestate = ctx.transport.req_env.get("HTTP_TRACESTATE")
    if traceparent:
        log.info(
            "call {operation} traceparent={tp}{ts}",
            operation=ctx.descriptor.name,
            tp=traceparent,
            ts=f" tracestate={tracestate}" if tracestate else "",
        )
    else:
        log.info("call {operation}", operation=ctx.descriptor.name)


class JsonDemo(Resource):
    """
    The demo's operations over JSON: a POST of C{{"id", "operation", "args"}} answers the result
    as JSON (C{activate} waits C{count * delay} seconds on the reactor, C{wait} C{seconds} and
    answers when the call arrived too; C{stamp} answers the time the call arrived, for latency
    measurements).
    An unknown operation is a 404, C{refuse} a 422, both with C{{"error": ...}}.
    """

    isLeaf = True

    def __init__(self, reactor: Any, delay: float) -> None:
        super().__init__()
        self._reactor = reactor
        self._delay = delay

    def render_POST(self, request: IRequest) -> bytes | int:
        try:
            body = json.loads(request.content.read())  # type: ignore[attr-defined]
            operation = body.get("operation")
            args = body.get("args") or {}
            if isinstance(args, list):
                args = dict(zip(_JSON_PARAMS.get(operation, ()), args, strict=False))
        except (ValueError, AttributeError):
            return _answer(request, 400, {"error": "the body must be a JSON object"})
        log.info("call json {operation} id={id}", operation=operation, id=body.get("id"))
        if operation == "stamp":
            return _answer(request, 200, {"at": time.time()})  # when the call reached the target
        if operation == "ping":
            text = args.get("text")
            return _answer(request, 200, "pong" if text is None else text)
        if operation == "refuse":
            return _answer(request, 422, {"error": args.get("reason") or "activation refused"})
        if operation == "activate":
            network, count = args.get("network"), args.get("count")
            if not isinstance(network, str) or not isinstance(count, int) or count < 0:
                return _answer(request, 400, {"error": "activate takes network and count >= 0"})
            result = {"network": network, "activated": count}
            self._later(request, count * self._delay, result)
            return NOT_DONE_YET
        if operation == "wait":
            seconds = args.get("seconds", 1)
            if not isinstance(seconds, int | float) or not 0 <= seconds <= 3600:
                return _answer(request, 400, {"error": "wait takes seconds from 0 to 3600"})
            self._later(request, seconds, {"waited": seconds, "at": time.time()})
            return NOT_DONE_YET
        return _answer(request, 404, {"error": f"no operation {operation!r}"})

    def _later(self, request: Any, seconds: float, result: Any) -> None:
        def finish() -> None:
            request.write(_answer(request, 200, result))
            request.finish()

        call = self._reactor.callLater(seconds, finish)
        request.notifyFinish().addErrback(lambda _: call.cancel())


#: Positional arguments' names, by operation.
_JSON_PARAMS = {
    "ping": ("text",),
    "refuse": ("reason",),
    "activate": ("network", "count"),
    "wait": ("seconds",),
}


def _answer(request: IRequest, code: int, body: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body).encode()


class _Root(Resource):
    """C{/json} to the JSON operations; everything else to the SOAP service."""

    def __init__(self, soap: Any, json_demo: Resource) -> None:
        super().__init__()
        self._soap = soap
        self._json = json_demo

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        if path == b"json":
            return self._json
        request.postpath.insert(0, request.prepath.pop())
        return self._soap


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

    @property
    def json_url(self) -> str:
        """Where the same operations take JSON POSTs."""
        return self.wsdl_url.replace("/?wsdl", "/json")

    def startService(self) -> None:
        super().startService()
        reactor: IReactorTCP = self._reactor
        soap = WSGIResource(self._reactor, self._threads.pool, application(self._delay))
        site: Any = Site(_Root(soap, JsonDemo(self._reactor, self._delay)))
        # each call is logged once, by its operation: no access log line besides (a benchmark's
        # target should cost as little as it can)
        site.log = lambda request: None
        # a gateway may open a route's every connection at once (1000 for a wide http route):
        # with the default backlog of 50, the kernel would drop most of those SYNs, and they
        # would come again seconds later
        self._port = reactor.listenTCP(self._port_number, site, backlog=1024, interface="127.0.0.1")
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
