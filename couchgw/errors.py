"""One-line descriptions of errors, for logs and for C{/status}: never with credentials."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from couchgw.couch.errors import UNAVAILABLE, CouchError

log = Logger()


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


def describe_error(error: BaseException) -> str:
    """A one-line description of an error, without the URL's credentials."""
    reasons = getattr(error, "reasons", None)  # twisted.web's ResponseFailed and kin
    if reasons and isinstance(reasons[0], Failure):
        error = reasons[0].value
    if isinstance(error, CancelledError):
        return "no answer in time"
    text = str(error) or type(error).__name__
    if isinstance(error, CouchError):
        return text
    return f"{type(error).__name__}: {text}" if type(error).__name__ not in text else text
