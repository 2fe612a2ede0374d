"""
SOAP targets, called through suds-community in a thread pool.

The WSDL is loaded once per target.  suds clients are not thread-safe, so each thread calls
through its own clone of the loaded client (L{clone}), made the first time that thread calls.
"""

from __future__ import annotations

import base64
import errno
import gzip
import http.client
import io
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from suds import WebFault
from suds.cache import NoCache
from suds.client import Client, ServiceSelector
from suds.options import Options
from suds.transport import Reply, TransportError
from suds.transport.https import HttpAuthenticated
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from couchgw.checks import Rejected, short
from couchgw.connections import split_credentials
from couchgw.errors import describe_error
from couchgw.targets.described import arguments_schema
from couchgw.targets.interfaces import (
    OUTAGE_STATUSES,
    PROBE_TIMEOUT,
    BaseTarget,
    Fault,
    IRunner,
    ITarget,
    ITargetFactory,
    Outage,
    Unreachable,
    error_for_status,
    target_url,
)
from couchgw.targets.soapoptions import SoapOptions, header_elements, tls_context
from couchgw.targets.soapoptions import parse as parse_options
from couchgw.targets.threads import ThreadPoolService
from couchgw.targets.wsdl import (
    Operation,
    answer_json,
    check_arguments,
    operations_of,
    soap11_port,
)

log = Logger()


class KeepAliveTransport(HttpAuthenticated):
    """
    suds' transport, with each SOAP call sent over a kept-alive connection to its host.

    suds opens a new connection (and builds a new urllib opener) for every call, which costs
    about a third of a call's time.  Each thread has a client, and so a transport, of its own:
    its connections are never shared between threads.  A connection the server closed while
    idle is opened again once; anything else is raised as suds would.  WSDL loading and
    proxies go through suds' own transport.

    @param context: the TLS context of HTTPS connections (None: the system's CAs verify).
    """

    def __init__(self, context: ssl.SSLContext | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._context = context
        self._connections: dict[tuple[str, str, int], http.client.HTTPConnection] = {}

    def u2handlers(self) -> list[Any]:
        handlers: list[Any] = super().u2handlers()
        if self._context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self._context))
        return handlers

    def send(self, request: Any) -> Any:
        url = urlsplit(request.url)
        if url.scheme not in ("http", "https") or not url.hostname or self.options.proxy:
            return super().send(request)
        headers = dict(request.headers)
        if self.options.username is not None:
            token = f"{self.options.username}:{self.options.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        key = (url.scheme, url.hostname, url.port or (443 if url.scheme == "https" else 80))
        for attempt in (1, 2):
            connection = self._connections.get(key)
            reused = connection is not None
            if connection is None:
                timeout = request.timeout or self.options.timeout
                if key[0] == "https":
                    connection = http.client.HTTPSConnection(
                        key[1], key[2], timeout=timeout, context=self._context
                    )
                else:
                    connection = http.client.HTTPConnection(key[1], key[2], timeout=timeout)
                self._connections[key] = connection
            try:
                connection.request("POST", path, request.message, headers)
                response = connection.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._drop(key)
                if reused and attempt == 1:
                    continue  # the server had closed the idle connection: open a new one
                raise
            except BaseException:
                self._drop(key)
                raise
            if response.will_close:
                self._drop(key)
            break
        if response.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if response.status == 200:
            return Reply(200, response.headers, body)
        if response.status in (202, 204):
            return None
        raise TransportError(response.reason, response.status, io.BytesIO(body))

    def _drop(self, key: tuple[str, str, int]) -> None:
        connection = self._connections.pop(key, None)
        if connection is not None:
            connection.close()


def clone(client: Client, **options: Any) -> Client:
    """
    A client sharing C{client}'s loaded WSDL, with options and a transport of its own.

    suds' own C{Client.clone()} deep-copies the options, which recurses until C{RecursionError}
    on Python 3.11 (C{suds.properties} answers every attribute probe, C{__setstate__} included,
    by looking itself up again).  This builds the clone the way C{Client.__init__} builds a
    client, without reading the WSDL again.
    """
    new = Client.__new__(Client)
    new.options = Options()
    new.options.transport = KeepAliveTransport()
    new.set_options(**options)
    new.wsdl = client.wsdl
    new.factory = client.factory
    new.service = ServiceSelector(new, client.wsdl.services)
    new.sd = client.sd
    new.messages = {"tx": None, "rx": None}
    return new


def _fault_text(error: WebFault) -> str:
    fault = error.fault
    code = getattr(fault, "faultcode", None)
    text = getattr(fault, "faultstring", None) or str(error)
    return f"{code}: {text}" if code else str(text)


@implementer(ITarget)
class SoapTarget(BaseTarget):
    """
    A SOAP route.

    @param url: the WSDL URL (credentials in its user info are sent as HTTP basic auth), or a
        callable answering it when the target loads.
    @param runner: runs the blocking suds calls in threads.
    @param timeout: seconds suds waits on the socket for each call.
    @param default_operation: the operation of a message that names none.
    @param ca: a PEM file of the CAs that verify HTTPS (None: the system's).
    @param options: the route's own keys (headers, WS-Security, client certificate).
    @param prober: runs the probes of the route while it is out (by default, C{runner}).
    """

    kind = "soap"

    def __init__(
        self,
        name: str,
        url: str | Callable[[], str],
        runner: IRunner,
        timeout: float = 300.0,
        default_operation: str | None = None,
        ca: str | None = None,
        options: SoapOptions | None = None,
        prober: IRunner | None = None,
    ) -> None:
        super().__init__(name, url, timeout, default_operation)
        self._runner = runner
        self._prober = prober or runner
        self._settings = options or SoapOptions()
        self._context = tls_context(ca, self._settings.client_cert, self._settings.client_key)
        self.operations: dict[str, Operation] = {}
        self._loaded: _Loaded | None = None
        self._auth: tuple[str, str] | None = None
        self._generation = 0
        self._local = threading.local()

    @property
    def concurrency(self) -> int:
        return int(self._runner.size)

    @property
    def busy(self) -> int:
        return int(self._runner.busy)

    def load(self) -> Deferred[None]:
        url, self._auth = split_credentials(self._full_url(), {})
        d: Deferred[_Loaded] = self._runner.run(self._build, url)

        def loaded(built: _Loaded) -> None:
            self._loaded, self.operations = built, built.operations
            self._generation += 1
            self.state, self.error = "ready", None
            log.info(
                "route {route}: WSDL loaded, operations {ops}",
                route=self.name,
                ops=", ".join(sorted(self.operations)),
            )

        def failed(failure: Any) -> Any:
            self.state = "unavailable"
            self.error = (
                f"cannot load the WSDL: {failure.getErrorMessage() or failure.type.__name__}"
            )
            return failure

        return d.addCallbacks(loaded, failed)

    def _options(self) -> dict[str, Any]:
        # the transport keeps options of its own (the timeout among them): give them to it
        auth = {}
        if self._auth is not None:
            auth = {"username": self._auth[0], "password": self._auth[1]}
        return {
            "transport": KeepAliveTransport(self._context, timeout=self.timeout, **auth),
            "timeout": self.timeout,
            "cache": NoCache(),
        }

    def _build(self, url: str) -> _Loaded:
        """Load the WSDL, and check that the service it names accepts connections."""
        client = Client(url, **self._options())
        port = soap11_port(client)
        location = urlsplit(port.location)
        number = location.port or (443 if location.scheme == "https" else 80)
        try:
            socket.create_connection((location.hostname, number), min(self.timeout, 10)).close()
        except OSError as e:
            raise Unreachable(
                f"the service at {location.hostname}:{number} does not accept connections: "
                f"{describe_error(e)}"
            ) from None
        # what suds writes into every message comes from the options the clients share
        # (those of the WSDL's client): the headers, and a token made anew for each message
        client.set_options(soapheaders=header_elements(self._settings.headers, port))
        if self._settings.wsse is not None:
            client.set_options(wsse=self._settings.wsse.security())
        operations = operations_of(client, port)
        schemas = {name: arguments_schema(op) for name, op in sorted(operations.items())}
        return _Loaded(client, port.name, port.location, operations, schemas)

    def prepare(self, operation: str | None, args: list[Any] | dict[str, Any]) -> Any:
        operation = operation or self.default_operation
        if operation is None:
            raise Rejected(f"operation is missing, and route {self.name!r} names no default")
        found = self.operations.get(operation)
        if found is None:
            raise Rejected(
                f"route {self.name!r} has no operation {short(operation)} "
                f"(it has: {', '.join(sorted(self.operations))})"
            )
        return found, check_arguments(found, args)

    def call(
        self, prepared: Any, message_id: str, headers: Mapping[str, str] | None = None
    ) -> Deferred[Any]:
        operation, kwargs = prepared
        return self._runner.run(self._call, operation, kwargs, dict(headers or {}))

    def probe(self) -> Deferred[None]:
        """
        Whether the service answers at all (any HTTP answer but 502, 503 or 504), with a GET
        of where its calls go, in a thread of the route's prober (its call threads may all be
        waiting on a target that does not answer).
        """
        return self._prober.run(self._probe)

    def _probe(self) -> None:
        loaded = self._loaded
        if loaded is None:
            raise Outage("the WSDL is not loaded")
        url = urlsplit(loaded.location)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        timeout = min(PROBE_TIMEOUT, self.timeout)
        connection: http.client.HTTPConnection
        if url.scheme == "https":
            connection = http.client.HTTPSConnection(
                url.hostname or "", url.port, timeout=timeout, context=self._context
            )
        else:
            connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=timeout)
        headers = {}
        if self._auth is not None:
            token = f"{self._auth[0]}:{self._auth[1]}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read(64 * 1024)
        except (OSError, http.client.HTTPException) as e:
            if _unreachable(e):
                raise Unreachable(describe_error(e)) from None
            raise Outage(describe_error(e)) from None
        finally:
            connection.close()
        if response.status in OUTAGE_STATUSES:
            raise Outage(f"the service answered HTTP {response.status}")

    def _thread_client(self) -> Client:
        local = self._local
        if getattr(local, "generation", None) != self._generation:
            loaded = self._loaded
            assert loaded is not None
            local.client = clone(loaded.client, port=loaded.port, **self._options())
            local.generation = self._generation
        return local.client

    def _call(self, operation: Operation, kwargs: dict[str, Any], headers: dict[str, str]) -> Any:
        client = self._thread_client()
        client.options.headers = headers  # HTTP headers of this call (its trace context)
        try:
            answer = getattr(client.service, operation.name)(**kwargs)
        except WebFault as e:
            raise Fault(_fault_text(e)) from None
        except TransportError as e:
            if e.httpcode is None:
                raise Outage(f"no HTTP answer: {e}") from None
            text = f"the target answered HTTP {e.httpcode}: {e}"
            raise error_for_status(e.httpcode, text, RuntimeError) from None
        except (OSError, http.client.HTTPException) as e:
            if _unreachable(e):
                raise Unreachable(describe_error(e)) from None
            raise Outage(describe_error(e)) from None
        except Exception as e:
            status = _http_status(e)
            if status is None:
                raise
            text = f"the target answered HTTP {status[0]} ({status[1]})"
            raise error_for_status(status[0], text, RuntimeError) from None
        return answer_json(operation, answer)

    def operations_described(self) -> dict[str, Any]:
        return {name: op.describe() for name, op in sorted(self.operations.items())}

    def describe(self) -> dict[str, Any]:
        """As every target, with the JSON Schema of each operation's arguments."""
        described = super().describe()
        described["schemas"] = self._loaded.schemas if self._loaded is not None else {}
        return described


@dataclass(frozen=True)
class _Loaded:
    """A loaded WSDL: the client, its SOAP 1.1 port, the operations and their JSON Schemas."""

    client: Client
    port: str
    #: Where the calls go.
    location: str
    operations: dict[str, Operation]
    schemas: dict[str, Any]


@implementer(ITargetFactory)
class SoapKind:
    """Routes of C{kind = "soap"}: C{url} is the WSDL's; C{concurrency} threads of their own."""

    kind = "soap"

    def build(self, config: Any, reactor: Any, parent: Any) -> SoapTarget:
        settings = parse_options(config.options)
        url = target_url(replace(config, options={}), "the WSDL's URL", ("http", "https", "file"))
        threads = ThreadPoolService(reactor, config.concurrency, name=f"couchgw-{config.name}")
        threads.setServiceParent(parent)
        prober = ThreadPoolService(reactor, 1, name=f"couchgw-{config.name}-probe")
        prober.setServiceParent(parent)
        return SoapTarget(
            config.name,
            url,
            threads,
            timeout=config.timeout,
            default_operation=config.operation,
            ca=config.ca,
            options=settings,
            prober=prober,
        )


def _http_status(error: Exception) -> tuple[int, str] | None:
    """The HTTP status of a reply suds refused (it raises a bare C{Exception((status, text))})."""
    if type(error) is Exception and len(error.args) == 1:
        status = error.args[0]
        if isinstance(status, tuple) and len(status) == 2 and isinstance(status[0], int):
            return status[0], str(status[1])
    return None


def _unreachable(error: Exception) -> bool:
    """Whether the connection could not be made at all (so the call was never sent)."""
    reason = getattr(error, "reason", error)
    return isinstance(reason, (ConnectionRefusedError, socket.gaierror)) or (
        isinstance(reason, OSError)
        and reason.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN)
    )
