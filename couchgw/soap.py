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
import math
import re
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from suds import WebFault
from suds.cache import NoCache
from suds.client import Client, ServiceSelector
from suds.options import Options
from suds.sudsobject import Object as SudsObject
from suds.transport import Reply, TransportError
from suds.transport.https import HttpAuthenticated
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from couchgw.interfaces import (
    BaseTarget,
    Fault,
    IRunner,
    ITarget,
    ITargetFactory,
    Transient,
    Unreachable,
)
from couchgw.message import Rejected, json_kind, short
from couchgw.routes import target_url
from couchgw.threads import ThreadPoolService

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


def to_json(value: Any) -> Any:
    """A SOAP answer (suds objects, text, dates, decimals, lists, binary) as plain JSON."""
    if isinstance(value, SudsObject):
        return {str(key): to_json(item) for key, item in value}
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return str(value)  # suds' Text is a str subclass
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return str(value)


_INTEGER = re.compile(r"[+-]?\d+\Z")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")
#: The XSD integer types and their ranges (None: unbounded).
_INTEGER_TYPES: dict[str, tuple[int | None, int | None]] = {
    "integer": (None, None),
    "long": (-(2**63), 2**63 - 1),
    "int": (-(2**31), 2**31 - 1),
    "short": (-(2**15), 2**15 - 1),
    "byte": (-(2**7), 2**7 - 1),
    "nonNegativeInteger": (0, None),
    "positiveInteger": (1, None),
    "nonPositiveInteger": (None, 0),
    "negativeInteger": (None, -1),
    "unsignedLong": (0, 2**64 - 1),
    "unsignedInt": (0, 2**32 - 1),
    "unsignedShort": (0, 2**16 - 1),
    "unsignedByte": (0, 2**8 - 1),
}
_NUMBER_TYPES = {"float", "double", "decimal"}
_SPECIAL_NUMBERS = {"NaN", "INF", "-INF", "+INF"}
#: The XSD date and time types and how to read their text.
_TIME_TYPES: dict[str, Callable[[str], Any]] = {
    "dateTime": lambda text: datetime.fromisoformat(text.replace("Z", "+00:00")),
    "date": lambda text: date.fromisoformat(text.removesuffix("Z")),
    "time": lambda text: time.fromisoformat(text.replace("Z", "+00:00")),
}


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    builtin: bool
    required: bool
    many: bool

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "required": self.required, "many": self.many}

    def check(self, value: Any) -> str | None:
        """Why C{value} cannot be sent as this parameter, or L{None} if it can."""
        if self.many and isinstance(value, list):
            for item in value:
                problem = self._check_one(item)
                if problem:
                    return f"{problem} (in the array)"
            return None
        return self._check_one(value)

    def _check_one(self, value: Any) -> str | None:
        if value is None:
            return None
        if not self.builtin or self.type == "anyType":
            return None if isinstance(value, (dict, list, str, int, float)) else "a value"
        if self.type in _INTEGER_TYPES:
            return _check_integer(value, self.type)
        if self.type in _NUMBER_TYPES:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
                isinstance(value, str)
                and (bool(_NUMBER.match(value.strip())) or value.strip() in _SPECIAL_NUMBERS)
            )
            return None if ok else f"a number ({self.type})"
        if self.type == "boolean":
            ok = isinstance(value, bool) or value in ("true", "false", "1", "0")
            return None if ok else "a boolean"
        if self.type in _TIME_TYPES:
            try:
                _TIME_TYPES[self.type](value if isinstance(value, str) else "")
            except ValueError:
                return f"an ISO-8601 {self.type} text"
            return None
        ok = isinstance(value, str) or (
            isinstance(value, (int, float)) and not isinstance(value, bool)
        )
        return None if ok else f"a string ({self.type})"


def _check_integer(value: Any, kind: str) -> str | None:
    if isinstance(value, str) and _INTEGER.match(value.strip()):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        return f"an integer ({kind})"
    low, high = _INTEGER_TYPES[kind]
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = (
            f"from {low} to {high}"
            if low is not None and high is not None
            else (f"at least {low}" if low is not None else f"at most {high}")
        )
        return f"an integer {bounds} ({kind})"
    return None


def _operations(client: Client) -> dict[str, list[Param]]:
    """Each operation of the client's default port, with its parameters."""
    _port, methods = client.sd[0].ports[0]
    operations = {}
    for method in methods:
        name, params = method[0], method[1]
        described = []
        for param in params:
            element = param[1]
            resolved = element.resolve()
            maximum = element.max
            many = maximum is not None and (maximum == "unbounded" or int(maximum) > 1)
            described.append(
                Param(
                    name=str(param[0]),
                    type=str(resolved.name),
                    builtin=bool(resolved.builtin()),
                    required=bool(element.required()),
                    many=many,
                )
            )
        operations[str(name)] = described
    return operations


def _fault_text(error: WebFault) -> str:
    fault = error.fault
    code = getattr(fault, "faultcode", None)
    text = getattr(fault, "faultstring", None) or str(error)
    return f"{code}: {text}" if code else str(text)


@implementer(ITarget)
class SoapTarget(BaseTarget):
    """
    A SOAP route.

    @param url: the WSDL URL, or a callable answering it when the target loads.
    @param runner: runs the blocking suds calls in threads.
    @param timeout: seconds suds waits on the socket for each call.
    @param default_operation: the operation of a message that names none.
    @param ca: a PEM file of the CAs that verify HTTPS (None: the system's).
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
    ) -> None:
        super().__init__(name, url, timeout, default_operation)
        self._runner = runner
        self._context = ssl.create_default_context(cafile=ca) if ca else None
        self.operations: dict[str, list[Param]] = {}
        self._client: Client | None = None
        self._generation = 0
        self._local = threading.local()

    @property
    def concurrency(self) -> int:
        return int(self._runner.size)

    @property
    def busy(self) -> int:
        return int(self._runner.busy)

    def load(self) -> Deferred[None]:
        url = self._full_url()
        d: Deferred[tuple[Client, dict[str, list[Param]]]] = self._runner.run(self._build, url)

        def loaded(built: tuple[Client, dict[str, list[Param]]]) -> None:
            self._client, self.operations = built
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
        return {
            "transport": KeepAliveTransport(self._context, timeout=self.timeout),
            "timeout": self.timeout,
            "cache": NoCache(),
        }

    def _build(self, url: str) -> tuple[Client, dict[str, list[Param]]]:
        """Load the WSDL, and check that the service it names accepts connections."""
        client = Client(url, **self._options())
        location = urlsplit(client.wsdl.services[0].ports[0].location)
        port = location.port or (443 if location.scheme == "https" else 80)
        try:
            socket.create_connection((location.hostname, port), min(self.timeout, 10)).close()
        except OSError as e:
            raise Unreachable(
                f"the service at {location.hostname}:{port} does not accept connections: "
                f"{_oserror_text(e)}"
            ) from None
        return client, _operations(client)

    def prepare(self, operation: str | None, args: list[Any] | dict[str, Any]) -> Any:
        operation = operation or self.default_operation
        if operation is None:
            raise Rejected(f"operation is missing, and route {self.name!r} names no default")
        params = self.operations.get(operation)
        if params is None:
            raise Rejected(
                f"route {self.name!r} has no operation {short(operation)} "
                f"(it has: {', '.join(sorted(self.operations))})"
            )
        names = [p.name for p in params]
        takes = ", ".join(names) or "no arguments"
        if isinstance(args, list):
            if len(args) > len(params):
                raise Rejected(
                    f"operation {operation!r} takes at most {len(params)} argument(s) "
                    f"({takes}), got {len(args)}"
                )
            named = dict(zip(names, args, strict=False))
        else:
            unknown = [key for key in args if key not in names]
            if unknown:
                listed = ", ".join(short(k, 40) for k in unknown[:5])
                more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
                raise Rejected(
                    f"operation {operation!r} takes no argument {listed}{more} (it takes: {takes})"
                )
            named = dict(args)
        missing = [p.name for p in params if p.required and named.get(p.name) is None]
        if missing:
            raise Rejected(
                f"operation {operation!r} needs argument(s) {', '.join(repr(m) for m in missing)}"
            )
        for param in params:
            if param.name in named:
                problem = param.check(named[param.name])
                if problem:
                    raise Rejected(
                        f"argument {param.name!r} of operation {operation!r} must be {problem}, "
                        f"not {json_kind(named[param.name])}"
                    )
        return operation, named

    def call(self, prepared: Any, message_id: str) -> Deferred[Any]:
        operation, kwargs = prepared
        return self._runner.run(self._call, operation, kwargs)

    def _thread_client(self) -> Client:
        local = self._local
        if getattr(local, "generation", None) != self._generation:
            assert self._client is not None
            local.client = clone(self._client, **self._options())
            local.generation = self._generation
        return local.client

    def _call(self, operation: str, kwargs: dict[str, Any]) -> Any:
        client = self._thread_client()
        try:
            answer = getattr(client.service, operation)(**kwargs)
        except WebFault as e:
            raise Fault(_fault_text(e)) from None
        except TransportError as e:
            if e.httpcode is None or e.httpcode >= 500:
                raise Transient(f"HTTP {e.httpcode}: {e}") from None
            raise RuntimeError(f"the target answered HTTP {e.httpcode}: {e}") from None
        except (OSError, http.client.HTTPException) as e:
            if _unreachable(e):
                raise Unreachable(_oserror_text(e)) from None
            raise Transient(_oserror_text(e)) from None
        except Exception as e:
            status = _http_status(e)
            if status is None:
                raise
            text = f"the target answered HTTP {status[0]} ({status[1]})"
            if status[0] >= 500 or status[0] in (408, 429):
                raise Transient(text) from None
            raise RuntimeError(text) from None
        return to_json(answer)

    def operations_described(self) -> dict[str, Any]:
        return {
            name: [p.describe() for p in params] for name, params in sorted(self.operations.items())
        }


@implementer(ITargetFactory)
class SoapKind:
    """Routes of C{kind = "soap"}: C{url} is the WSDL's; C{concurrency} threads of their own."""

    kind = "soap"

    def build(self, config: Any, reactor: Any, parent: Any) -> SoapTarget:
        url = target_url(config, "the WSDL's URL", ("http", "https", "file"))
        threads = ThreadPoolService(reactor, config.concurrency, name=f"couchgw-{config.name}")
        threads.setServiceParent(parent)
        return SoapTarget(
            config.name,
            url,
            threads,
            timeout=config.timeout,
            default_operation=config.operation,
            ca=config.ca,
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


def _oserror_text(error: Exception) -> str:
    reason = getattr(error, "reason", None)  # urllib's URLError wraps the socket error
    if isinstance(reason, Exception):
        error = reason
    text = str(error) or type(error).__name__
    if isinstance(error, TimeoutError):
        return f"timed out: {text}"
    return text
