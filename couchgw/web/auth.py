"""
HTTP basic auth for the HTTP API, checked against CouchDB (C{--http-auth}): the same users.

A request's credentials must be a CouchDB user's (C{GET /_session} names them): 401 otherwise.
What is about one database (C{/db/<db>/...}, and every route where the gateway serves one
database) needs a user who may read that database (C{GET /<db>} answers 200): 403 otherwise.
Where the gateway serves many databases, its own routes (C{/status}, C{/metrics}, the live page)
answer any user, naming the databases to the server's admins alone.  An operator's actions
(requeue, cancel) are the database's admins' (by name or role, as its security object says),
the server's admins', and, with C{--operator-role}, those of the users with that role: every
other user reads only.  Answers are kept for a short while, by user, password hash and
database.  C{/health} and C{/ready} stay open (for probes).
"""

from __future__ import annotations

import hashlib
import json
from base64 import b64decode
from binascii import Error as Base64Error
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from couchgw.couch.client import Database
from couchgw.couch.errors import Forbidden, NotFound, Unauthorized

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


def database_of(path: bytes) -> str | None:
    """The database a request is about, from its path C{/db/<db>/...} (None: none named)."""
    parts = path.split(b"/")
    if len(parts) > 2 and parts[1] == b"db" and parts[2]:
        return unquote(parts[2].decode("utf-8", "replace"))
    return None


@dataclass(frozen=True)
class Access:
    """What a request's credentials may do."""

    #: 200, 401 (not a user's credentials) or 403 (a user the database does not admit).
    code: int
    #: A server admin (the API names the databases served to them alone).
    admin: bool = False
    #: May requeue and cancel messages (of the database the request is about).
    operator: bool = False
    user: str | None = None


class CouchUsers:
    """
    Checks credentials against CouchDB.

    @param db: a database of the server (the one served, or the gateways' own).
    @param database: the database a request is about when its path names none (the one
        served), or None where many are served.
    @param ttl: seconds an answer is kept.
    @param operator_role: a role whose users may act on messages (besides admins).
    """

    def __init__(
        self,
        db: Database,
        clock: IReactorTime,
        ttl: float = 30.0,
        size: int = 1000,
        database: Callable[[], Database | None] | None = None,
        operator_role: str | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.ttl = ttl
        self.size = size
        self.operator_role = operator_role
        self._database = database or (lambda: db)
        self._known: dict[tuple[str, bytes, str | None], tuple[float, Access]] = {}

    @inlineCallbacks
    def check(self, creds: tuple[str, str] | None, name: str | None = None) -> Any:
        """
        The L{Access} of these credentials.  C{name}: the database the request is about (None:
        the one served, if one is).
        """
        if creds is None:
            return Access(401)
        user, password = creds
        key = (user, hashlib.sha256(password.encode()).digest(), name)
        now = self.clock.seconds()
        known = self._known.get(key)
        if known is not None and known[0] > now:
            return known[1]
        as_user = self.db.as_user(user, password)
        try:
            session = yield as_user.json("GET", "/_session")
            ctx = session.get("userCtx") or {}
            roles = [role for role in ctx.get("roles") or [] if isinstance(role, str)]
            admin = "_admin" in roles
            access = Access(200 if ctx.get("name") else 401, admin, admin, ctx.get("name"))
            target = self.db.sibling(name) if name is not None else self._database()
            if access.code == 200 and target is not None:
                try:
                    yield target.as_user(user, password).info()
                except (Unauthorized, Forbidden, NotFound):  # not one of the database's
                    access = Access(403, admin, False, access.user)
                else:
                    if not admin and self.operator_role in roles:
                        access = Access(200, admin, True, access.user)
                    elif not admin:
                        try:
                            security = yield target.json("GET", "_security")
                        except (Unauthorized, Forbidden, NotFound):  # couchgw may not read it
                            security = {}
                        operator = _is_admin(security, access.user, roles)
                        access = Access(200, admin, operator, access.user)
        except Unauthorized:
            access = Access(401)
        if len(self._known) >= self.size:
            self._known = {k: v for k, v in self._known.items() if v[0] > now}
            if len(self._known) >= self.size:
                self._known.clear()
        self._known[key] = (now + self.ttl, access)
        return access


def _is_admin(security: Any, user: str | None, roles: list[str]) -> bool:
    """Whether a database's security object names this user, or one of its roles, an admin."""
    admins = security.get("admins") if isinstance(security, Mapping) else None
    if not isinstance(admins, Mapping):
        return False
    names, admin_roles = admins.get("names"), admins.get("roles")
    named = isinstance(names, list) and user is not None and user in names
    return named or (isinstance(admin_roles, list) and any(role in admin_roles for role in roles))


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
        creds = credentials(request.getHeader(b"authorization"))
        d: Deferred[Access] = self.users.check(creds, database_of(request.path))

        def checked(access: Access) -> None:
            code = access.code
            if gone:
                return
            if code == 200:
                request.couchgw_admin = access.admin  # the API names databases to admins alone
                request.couchgw_operator = access.operator  # and lets operators act
                request.couchgw_user = access.user
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
