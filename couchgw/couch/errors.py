"""
The errors of the CouchDB client: each error status as an exception of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet import error as network
from twisted.internet.defer import CancelledError
from twisted.web.client import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived


class CouchError(Exception):
    """CouchDB answered with an error status."""

    def __init__(self, status: int, error: str = "", reason: str = "", what: str = "") -> None:
        super().__init__(status, error, reason, what)
        self.status = status
        self.error = error
        self.reason = reason
        self.what = what

    def __str__(self) -> str:
        detail = ": ".join(part for part in (self.error, self.reason) if part)
        return f"CouchDB answered {self.status} to {self.what}" + (f" ({detail})" if detail else "")


class BadRequest(CouchError):
    """400."""


class Unauthorized(CouchError):
    """401: missing or wrong credentials."""


class Forbidden(CouchError):
    """403: the credentials are not allowed to do this, or a validate function refused."""


class NotFound(CouchError):
    """404."""


class Conflict(CouchError):
    """409: the revision given is not the current one."""


class PreconditionFailed(CouchError):
    """412: for instance, the database exists already."""


class ServerError(CouchError):
    """5xx."""


class Undecodable(CouchError):
    """The answer is not JSON Python can read (for instance, nested too deeply)."""


#: What a request fails with while CouchDB, or the way to it, is down (worth trying again).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    ServerError,
    network.ConnectError,
    network.ConnectionClosed,
    network.TimeoutError,
    ResponseFailed,
    ResponseNeverReceived,
    RequestTransmissionFailed,
    CancelledError,  # a request that timed out
    OSError,
)

_ERRORS: dict[int, type[CouchError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
}


#: The HTTP status a single-document write would have answered, by C{_bulk_docs} error.
BULK_STATUS = {"conflict": 409, "forbidden": 403, "unauthorized": 401, "not_found": 404}


def error_for(status: int, body: Any, what: str) -> CouchError:
    """The typed exception for an error answer."""
    error = reason = ""
    if isinstance(body, Mapping):
        error, reason = str(body.get("error", "")), str(body.get("reason", ""))
    kind = _ERRORS.get(status, ServerError if status >= 500 else CouchError)
    return kind(status, error, reason, what)
