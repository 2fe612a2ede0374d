"""The seams between the gateway and what it calls."""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface


class Fault(Exception):
    """The target answered with a fault: final, never retried."""


class Transient(Exception):
    """The call failed in a way that may pass (connection refused or reset, timeout, HTTP 5xx)."""


class Unreachable(Transient):
    """
    The target could not be reached at all (connection refused, host unknown or unreachable):
    the route is down, not just this call.
    """


class ITarget(Interface):
    """A system messages are forwarded to (a route's dispatcher)."""

    name = Attribute("The route name.")
    kind = Attribute('The kind of target, e.g. "soap".')
    state = Attribute('"loading", "ready" or "unavailable".')
    error = Attribute("Why the target is not ready, or None.")
    concurrency = Attribute("How many calls may run at once.")
    busy = Attribute("How many calls are running now.")
    timeout = Attribute("Seconds a call may take; the gateway gives up on it a little later.")

    def load() -> Any:
        """Get ready (e.g. fetch the WSDL); a Deferred that fails if the target is unavailable."""

    def unavailable(reason: str) -> None:
        """The target was found unreachable: not ready until it loads again."""

    def prepare(operation: str | None, args: list[Any] | dict[str, Any]) -> Any:
        """
        Check a call against what the target offers and answer an opaque prepared call.

        @raise couchgw.message.Rejected: the operation or the arguments do not fit.
        """

    def call(prepared: Any, message_id: str) -> Any:
        """
        Make the call; a Deferred firing with the answer as plain JSON, or failing with
        L{Fault}, L{Transient} (L{Unreachable}), L{couchgw.message.Rejected}, or another error
        (final).  It fires only once the call has really ended (its thread is free again).
        """

    def describe() -> dict[str, Any]:
        """Plain JSON describing the target (kind, state, operations)."""


class IRunner(Interface):
    """Runs blocking functions off the reactor thread."""

    busy = Attribute("Threads running a call now.")
    size = Attribute("The most threads it runs at once.")

    def run(f: Any, *args: Any, **kwargs: Any) -> Any:
        """Run C{f(*args, **kwargs)} in a thread; a Deferred with its result."""
