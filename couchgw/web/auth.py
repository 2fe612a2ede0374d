"""
HTTP basic auth for the HTTP API, checked against CouchDB (C{--http-auth}): the same users.

A request's credentials must be a CouchDB user's (C{GET /_session} names them) who may read the
message database (C{GET /db} answers 200): 401 otherwise, 403 for a user the database refuses.
Answers are kept for a short while, by user and a hash of the password.  C{/health} and
C{/ready} stay open (for probes).
"""

from __future__ import annotations

import hashlib
import json
from base64 import b64decode
from binascii import Error as Base64Error
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from couchgw.couch.client import Database
from couchgw.couch.errors import Forbidden, Unauthorized

log = Logger()

OPEN = frozenset({b"/health", b"/ready"})


def credentials(header: bytes | None) -> tuple[str, str] | None:
    """The user and password of a basic C{Authorization} header, or None."""
    if not header or not header.lower().startswith(b"basic "):
        return None
    try:
        user, sep, password = b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (Base64Error, UnicodeDecodeError):
        return None
    return (user, password) if sep and user else None


class CouchUsers:
    """
    Checks credentials against CouchDB.

    @param ttl: seconds an answer is kept.
    """

    def __init__(self, db: Database, clock: IReactorTime, ttl: float = 30.0, size: int = 1000):
        self.db = db
        self.clock = clock
        self.ttl = ttl
        self.size = size
        self._known: dict[tuple[str, bytes], tuple[float, int]] = {}

    @inlineCallbacks
    def check(self, creds: tuple[str, str] | None) -> Any:
        """200, 401 or 403 for these credentials."""
        if creds is None:
            return 401
        user, password = creds
        key = (user, hashlib.sha256(password.encode()).digest())
        now = self.clock.seconds()
        known = self._known.get(key)
        if known is not None and known[0] > now:
            return known[1]
        as_user = self.db.as_user(user, password)
        try:
            session = yield as_user.json("GET", "/_session")
            if not (session.get("userCtx") or {}).get("name"):
                code = 401
            else:
                code = 200
                try:
                    yield as_user.info()
                except (Unauthorized, Forbidden):  # a user, but not one of the database's
                    code = 403
        except Unauthorized:
            code = 401
        if len(self._known) >= self.size:
            self._known = {k: v for k, v in self._known.items() if v[0] > now}
            if len(self._known) >= self.size:
                self._known.clear()
        self._known[key] = (now + self.ttl, code)
        return code


class Guarded(Resource):
    """A resource that answers only requests with credentials C{users} accept."""

    isLeaf = True

    def __init__(self, inner: Resource, users: CouchUsers) -> None:
        super().__init__()
        self.inner = inner
        self.users = users

    def render(self, request: Any) -> Any:
        if request.path in OPEN:
            return self.inner.render(request)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d: Deferred[int] = self.users.check(credentials(request.getHeader(b"authorization")))

        def checked(code: int) -> None:
            if gone:
                return
            if code == 200:
                result = self.inner.render(request)
                if result is not NOT_DONE_YET:
                    request.write(result)
                    request.finish()
                return
            _deny(request, code, "credentials required" if code == 401 else "not allowed")

        def failed(failure: Any) -> None:
            log.warn("cannot check credentials: {error}", error=failure.getErrorMessage())
            if not gone:
                _deny(request, 503, "cannot check the credentials now")

        d.addCallbacks(checked, failed)
        return NOT_DONE_YET


def _deny(request: Any, code: int, reason: str) -> None:
    request.setResponseCode(code)
    if code == 401:
        request.setHeader(b"WWW-Authenticate", b'Basic realm="couchgw"')
    request.setHeader(b"Content-Type", b"application/json")
    request.write(json.dumps({"error": reason}).encode() + b"\n")
    request.finish()
