"""One-line descriptions of errors, for logs, documents and C{/status}: never with credentials."""

from __future__ import annotations

import http.client
import re

from twisted.internet import error as network
from twisted.internet.defer import CancelledError
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.logger import Logger
from twisted.python.failure import Failure

from couchgw.couch.errors import UNAVAILABLE, CouchError

log = Logger()

#: The user info of a URL in a text (C{scheme://user:password@}), taken out of every line.
_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")
#: Errors of the network, whose own text says what happened (no class name needed).
_NETWORK = (OSError, http.client.HTTPException, network.ConnectError, network.ConnectionLost)


def log_error(failure: Failure, what: str) -> None:
    """
    Log an expected error (CouchDB or the network) in one line, anything else in full; a
    cancellation (the gateway stopping) not at all.
    """
    if failure.check(CancelledError):
        return
    if failure.check(CouchError, *UNAVAILABLE):
        log.warn("{what}: {error}", what=what, error=describe_error(failure.value))
    else:
        log.failure(what, failure)


def describe_error(error: BaseException, timeout: float | None = None) -> str:
    """
    A one-line description of an error, without any URL's credentials.

    @param timeout: the seconds a call was given, said when it got no answer within them.
    """
    reasons = getattr(error, "reasons", None)  # twisted.web's ResponseFailed and kin
    if reasons and isinstance(reasons[0], Failure):
        error = reasons[0].value
    reason = getattr(error, "reason", None)  # urllib's URLError wraps the socket error
    if isinstance(reason, BaseException):
        error = reason
    if isinstance(error, CancelledError | DeferredTimeout):
        return "no answer in time" if timeout is None else f"no answer within {timeout:g}s"
    name = type(error).__name__
    text = str(error) or name
    if isinstance(error, TimeoutError):
        text = f"timed out: {text}"
    elif not isinstance(error, (CouchError, *_NETWORK)) and name not in text:
        text = f"{name}: {text}"
    return _USERINFO.sub(r"\1", " ".join(text.split()))


def without_credentials(text: str) -> str:
    """A text with the user info of every URL in it taken out."""
    return _USERINFO.sub(r"\1", text)
