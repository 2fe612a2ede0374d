"""The seams between the gateway and what it calls."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from zope.interface import Attribute, Interface

from couchgw.connections import split_credentials


class Fault(Exception):
    """The target answered with a fault: final, never retried."""


class Transient(Exception):
    """The call failed in a way that may pass (connection refused or reset, timeout, HTTP 5xx)."""


class Outage(Transient):
    """
    The target, not this call, failed: the connection reset or closed without an answer, TLS
    failing, HTTP 502, 503 or 504, no answer in time.  Outages one after another are the
    route's, and cost its messages no attempts (L{couchgw.gateway.breaker}).
    """


class Unreachable(Outage):
    """
    The target could not be reached at all (connection refused, host unknown or unreachable):
    the route is down, not just this call (which was never sent).
    """


#: HTTP answers that say the target is out, not that this call failed.
OUTAGE_STATUSES = frozenset({502, 503, 504})
#: Seconds a target's probe (C{ITarget}'s optional C{probe()}) may take.
PROBE_TIMEOUT = 10.0


def error_for_status(status: int, text: str, final: type[Exception] = Fault) -> Exception:
    """
    What an HTTP error answer of a target means: an L{Outage} (502, 503, 504), L{Transient}
    (another 5xx, 408, 429), or C{final} (any other status: the call itself is refused).
    """
    if status in OUTAGE_STATUSES:
        return Outage(text)
    if status >= 500 or status in (408, 429):
        return Transient(text)
    return final(text)


class ITarget(Interface):
    """
    A system messages are forwarded to (a route's dispatcher).

    A kind may also give its targets a C{probe()}: a Deferred that fires when the target
    answers at all, cheaper than a message's call (an HTTP request to where its calls go), and
    fails with L{Outage} when it does not.  A route that is out is then probed so until it
    answers, and one message's call proves it before the others go; without one, a message's
    call is the probe.
    """

    name = Attribute("The route name.")
    kind = Attribute('The kind of target, e.g. "soap".')
    state = Attribute('"loading", "ready" or "unavailable".')
    error = Attribute("Why the target is not ready, or None.")
    concurrency = Attribute("How many calls may run at once.")
    busy = Attribute("How many calls are running now.")
    timeout = Attribute("Seconds a call may take; the gateway gives up on it a little later.")

    def load() -> Any:
        """Get ready (e.g. fetch the WSDL); a Deferred that fails if the target is unavailable."""

    def prepare(operation: str | None, args: list[Any] | dict[str, Any]) -> Any:
        """
        Check a call against what the target offers and answer an opaque prepared call.

        @raise couchgw.checks.Rejected: the operation or the arguments do not fit.
        """

    def call(prepared: Any, message_id: str, headers: Mapping[str, str] | None = None) -> Any:
        """
        Make the call, passing C{headers} (the W3C trace context of the call: C{traceparent},
        C{tracestate}; not given while tracing is off) on where the target's protocol can carry
        them; a Deferred firing with the answer as plain JSON, or failing with
        L{Fault}, L{Transient} (L{Outage}, L{Unreachable}), L{couchgw.checks.Rejected}, or
        another error (final).  It fires only once the call has really ended (its thread is
        free again).
        """

    def describe() -> dict[str, Any]:
        """Plain JSON describing the target (kind, state, operations)."""


class ITargetFactory(Interface):
    """
    A kind of route (C{kind = "..."} in a routes file).  Packages supply kinds of their own as
    Twisted plugins: a module in their C{twisted/plugins/} folder with an object that provides
    this interface (and L{twisted.plugin.IPlugin}).
    """

    kind = Attribute('The name routes files give this kind, e.g. "soap".')

    def build(config: Any, reactor: Any, parent: Any) -> ITarget:
        """
        The target of one route.

        @param config: the route's L{couchgw.routes.RouteConfig}; keys the common ones do not
            cover are in C{config.options}.
        @param reactor: the reactor.
        @param parent: an L{twisted.application.service.IServiceCollection} to add services the
            target needs (a thread pool, a connection pool to close) to; they start before the
            gateway and stop after it.
        @raise ValueError: the configuration is wrong; the message says how, in one line.
        """


class IRunner(Interface):
    """Runs blocking functions off the reactor thread."""

    busy = Attribute("Threads running a call now.")
    size = Attribute("The most threads it runs at once.")

    def run(f: Any, *args: Any, **kwargs: Any) -> Any:
        """Run C{f(*args, **kwargs)} in a thread; a Deferred with its result."""


class BaseTarget:
    """
    What every kind of target shares: its name, URL (shown without credentials), state, and
    the plain JSON that describes it.

    @param url: the target's URL, or a callable answering it once it is known.
    """

    kind = ""

    def __init__(
        self,
        name: str,
        url: str | Callable[[], str],
        timeout: float,
        default_operation: str | None,
    ) -> None:
        self.name = name
        self._url = url
        self.timeout = timeout
        self.default_operation = default_operation
        self.state = "loading"
        self.error: str | None = None

    def _full_url(self) -> str:
        """The URL, with any credentials in it (never shown)."""
        return self._url() if callable(self._url) else self._url

    @property
    def url(self) -> str | None:
        """The URL without credentials (None until known)."""
        try:
            return split_credentials(self._full_url(), {})[0]
        except RuntimeError:
            return None

    def operations_described(self) -> Any:
        """The operations the target offers as plain JSON, or None if it does not say."""
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "state": self.state,
            "error": self.error,
            "url": self.url,
            "concurrency": getattr(self, "concurrency", None),
            "default_operation": self.default_operation,
            "operations": self.operations_described(),
        }


@dataclass(frozen=True)
class RouteConfig:
    """One route as configured."""

    name: str
    kind: str = "soap"
    #: The target's URL, or a callable answering it once it is known (the demo's).
    url: str | Callable[[], str] | None = None
    concurrency: int = 10
    timeout: float = 300.0
    retries: int = 5
    backoff: float = 2.0
    operation: str | None = None
    rate: float | None = None
    #: Messages handled at once for this route; None: bounded by C{--max-inflight} alone.
    inflight: int | None = None
    #: Seconds a message keeps retrying from its first transient failure (None: C{retries}
    #: bounds it instead).
    retry_for: float | None = None
    #: The longest wait between retries, and between probes of a route that is out.
    backoff_max: float = 300.0
    #: The kind's own keys.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: A PEM file of the CAs that verify HTTPS (C{--ca}; None: the system's).
    ca: str | None = None


def target_url(
    config: RouteConfig, what: str, schemes: tuple[str, ...] = ("http", "https")
) -> str | Callable[[], str]:
    """
    A route's URL, for a kind that takes no keys of its own.

    @param what: what the URL is, for the error when it is missing.
    @raise ValueError: a key of the kind's own, or the URL missing or of another scheme.
    """
    if config.options:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, sorted(config.options)))}")
    url = config.url
    if url is None:
        raise ValueError(f"url is missing ({what})")
    if isinstance(url, str):
        parts = urlsplit(url)
        if parts.scheme not in schemes or (parts.scheme != "file" and not parts.hostname):
            names = " or ".join(f"{scheme}://" for scheme in schemes)
            shown = split_credentials(url, {})[0]
            raise ValueError(f"url must be {what}: an {names} URL, not {shown!r}")
    return url
