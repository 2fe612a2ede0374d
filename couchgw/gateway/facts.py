"""
What couchgw reads of a server once for all the databases it serves there (L{ServerFacts}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from couchgw.couch import engines
from couchgw.couch.client import Database, Doc
from couchgw.couch.errors import Unauthorized


class ServerFacts:
    """
    What couchgw reads of a server once for all the databases it serves there: what decides
    their guards (whether it runs without authentication, which engines its nodes run) and how
    many nodes it has (how many copies a claim must reach).  Read at most every
    C{ttl} seconds, whatever the number of databases (a read under way is shared); with a
    C{ttl} of 0, at each ask (one database served: its guard follows the server at each look).
    """

    def __init__(self, clock: IReactorTime, ttl: float = 60.0) -> None:
        self.clock = clock
        self.ttl = ttl
        self._known: dict[str, tuple[float, Any]] = {}
        self._reading: dict[str, list[Deferred[Any]]] = {}

    def session(self, db: Database) -> Deferred[Doc]:
        """The server's answer to C{GET /_session} without credentials."""
        return self._read("session", lambda: _anonymous_session(db))

    def engines(self, db: Database) -> Deferred[engines.Engines]:
        return self._read("engines", lambda: engines.read(db))

    def nodes(self, db: Database) -> Deferred[int | None]:
        """How many nodes the server has (None: unknown, as to all but a server admin)."""
        return self._read("nodes", lambda: _nodes(db))

    def _read(self, what: str, read: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        known = self._known.get(what)
        if known is not None and self.clock.seconds() < known[0]:
            return succeed(known[1])
        waiting: Deferred[Any] = Deferred()
        reading = self._reading.get(what)
        if reading is not None:
            reading.append(waiting)
        else:
            self._reading[what] = [waiting]
            read().addBoth(self._answered, what)  # (it may answer at once)
        return waiting

    def _answered(self, answer: Any, what: str) -> None:
        if not isinstance(answer, Failure):
            self._known[what] = (self.clock.seconds() + self.ttl, answer)
        for waiting in self._reading.pop(what):
            waiting.callback(answer)  # (a failure is each one's own)


@inlineCallbacks
def _anonymous_session(db: Database) -> Any:
    try:
        session = yield db.anonymous().json("GET", "/_session")
    except Unauthorized:
        session = {}  # CouchDB asks every request for credentials (require_valid_user)
    return session


@inlineCallbacks
def _nodes(db: Database) -> Any:
    try:
        membership = yield db.probe().json("GET", "/_membership")
    except Exception:
        return None  # (of Apache CouchDB, only a server admin may read it)
    return len(engines.node_names(membership)) or None
