"""
HTTP targets: a JSON POST per message, made with treq on the reactor (no thread).

The request body is C{{"id": message id, "operation": ..., "args": ...}}, with the message id in
an C{Idempotency-Key} header as well.  A 2xx answer's JSON is the result; 408, 429 and 5xx are
transient; any other status is a fault (final), described by the answer's C{error} or
C{message} when it has one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import treq
from twisted.internet import error as network
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    inlineCallbacks,
)
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.web.client import (
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from couchgw.connections import (
    Body,
    PoolCloser,
    agent,
    basic_auth,
    connection_pool,
    split_credentials,
)
from couchgw.errors import describe_error
from couchgw.targets.interfaces import (
    OUTAGE_STATUSES,
    BaseTarget,
    ITarget,
    ITargetFactory,
    Outage,
    Unreachable,
    error_for_status,
    target_url,
)

log = Logger()

#: The largest answer taken (its JSON becomes the result, inside the message document).
MAX_ANSWER = 8 * 1024 * 1024

#: The connection could not be made at all: the route is down, not just this call.
_UNREACHABLE = (network.ConnectionRefusedError, network.DNSLookupError, network.NoRouteError)
_TRANSIENT = (
    network.ConnectError,
    network.ConnectionClosed,
    ResponseFailed,
    ResponseNeverReceived,
    RequestTransmissionFailed,
    TimeoutError,
    CancelledError,
    OSError,
)


class _TooLarge(Exception):
    pass


@implementer(ITarget)
class HttpTarget(BaseTarget):
    """
    A route that POSTs each message as JSON.

    @param url: the URL to POST to (credentials in its user info are sent as basic auth), or a
        callable answering it when the target loads.
    @param concurrency: requests at once.
    """

    kind = "http"

    def __init__(
        self,
        name: str,
        url: Any,
        reactor: Any,
        agent: IAgent,
        concurrency: int = 100,
        timeout: float = 300.0,
        default_operation: str | None = None,
    ) -> None:
        super().__init__(name, url, timeout, default_operation)
        self._reactor = reactor
        self._agent = agent
        self.concurrency = concurrency
        self.busy = 0
        #: Where the POSTs go, and their headers (from the URL as the route last loaded it).
        self._request: tuple[bytes, Headers] | None = None

    def _target(self) -> tuple[bytes, Headers]:
        if self._request is None:
            clean, auth = split_credentials(self._full_url(), {})
            headers = Headers(
                {b"Content-Type": [b"application/json"], b"Accept": [b"application/json"]}
            )
            if auth is not None:
                headers.setRawHeaders(b"Authorization", [basic_auth(*auth).encode("ascii")])
            self._request = (clean.encode("utf-8"), headers)
        return self._request

    @inlineCallbacks
    def load(self) -> Any:
        """Ready once the URL's host accepts a TCP connection."""
        self._request = None  # the URL may have changed
        url = urlsplit(self._target()[0].decode("utf-8"))
        port = url.port or (443 if url.scheme == "https" else 80)
        endpoint = HostnameEndpoint(
            self._reactor, url.hostname or "", port, timeout=min(self.timeout, 10)
        )
        factory = Factory.forProtocol(Protocol)
        factory.noisy = False  # (no "Starting factory" line at each try)
        try:
            protocol = yield endpoint.connect(factory)
        except Exception as e:
            self.state = "unavailable"
            self.error = f"{url.hostname}:{port} does not accept connections: {describe_error(e)}"
            raise Unreachable(self.error) from None
        protocol.transport.loseConnection()
        self.state, self.error = "ready", None
        log.info("route {route}: {url} accepts connections", route=self.name, url=self.url)

    def prepare(self, operation: str | None, args: list[Any] | dict[str, Any]) -> Any:
        return operation or self.default_operation, args

    @inlineCallbacks
    def probe(self) -> Any:
        """
        Whether the target answers at all (any HTTP answer but 502, 503 or 504), with a GET of
        its URL: cheaper than a message's call, for a route that is out.
        """
        url, headers = self._target()
        try:
            response = yield self._agent.request(b"GET", url, headers.copy(), None)
            yield treq.collect(response, _discard)
        except _UNREACHABLE as e:
            raise Unreachable(describe_error(e)) from None
        except _TRANSIENT as e:
            raise Outage(describe_error(e)) from None
        if response.code in OUTAGE_STATUSES:
            raise Outage(f"the target answered HTTP {response.code}")

    def call(
        self, prepared: Any, message_id: str, headers: Mapping[str, str] | None = None
    ) -> Deferred[Any]:
        self.busy += 1
        d = self._call(prepared, message_id, headers or {})
        d.addTimeout(self.timeout, self._reactor)

        def done(result: Any) -> Any:
            self.busy -= 1
            return result

        return d.addBoth(done)

    @inlineCallbacks
    def _call(self, prepared: Any, message_id: str, trace: Mapping[str, str]) -> Any:
        operation, args = prepared
        url, headers = self._target()
        headers = headers.copy()
        headers.setRawHeaders(b"Idempotency-Key", [message_id.encode("utf-8")])
        for name, value in trace.items():
            headers.setRawHeaders(name.encode("ascii"), [value.encode("ascii")])
        body = json.dumps({"id": message_id, "operation": operation, "args": args}).encode()
        try:
            # straight through the agent: a target's redirect is its answer (a POST is not sent
            # again elsewhere), and its body is read once, by collect below
            response = yield self._agent.request(b"POST", url, headers, Body(body))
            chunks: list[bytes] = []

            def collect(data: bytes) -> None:
                chunks.append(data)
                if sum(map(len, chunks)) > MAX_ANSWER:
                    raise _TooLarge()

            yield treq.collect(response, collect)
        except _TooLarge:
            raise RuntimeError(f"the answer is larger than {MAX_ANSWER} bytes") from None
        except _UNREACHABLE as e:
            raise Unreachable(describe_error(e)) from None
        except _TRANSIENT as e:
            raise Outage(describe_error(e)) from None
        raw = b"".join(chunks)
        code = response.code
        if 200 <= code < 300:
            if not raw.strip():
                return None
            try:
                return json.loads(raw)
            except ValueError:
                raise RuntimeError(
                    f"the target answered HTTP {code} with something that is not JSON: {raw[:80]!r}"
                ) from None
        raise error_for_status(code, f"the target answered HTTP {code}" + _detail(raw))


def _discard(data: bytes) -> None:
    pass


def _detail(raw: bytes) -> str:
    """What an error answer says, in a few words: its C{error} or C{message}, or its text."""
    try:
        body = json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", "replace").strip()
    else:
        text = ""
        if isinstance(body, dict):
            found = body.get("error") or body.get("message") or body.get("reason")
            text = found if isinstance(found, str) else ""
    text = " ".join(text.split())
    return f": {text[:200]}" if text else ""


@implementer(ITargetFactory)
class HttpKind:
    """Routes of C{kind = "http"}: C{url} takes a JSON POST per message."""

    kind = "http"
    default_concurrency = 100

    def build(self, config: Any, reactor: Any, parent: Any) -> HttpTarget:
        url = target_url(config, "where to POST the messages")
        pool = connection_pool(reactor, config.concurrency)
        PoolCloser(pool).setServiceParent(parent)
        return HttpTarget(
            config.name,
            url,
            reactor,
            agent(reactor, pool, config.ca),
            concurrency=config.concurrency,
            timeout=config.timeout,
            default_operation=config.operation,
        )
