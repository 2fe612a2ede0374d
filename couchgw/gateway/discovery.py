"""
The databases of a server whose names match the patterns (C{--databases}): those there are,
those created and deleted since, and those updated.  Apache CouchDB says so on its
C{/_db_updates} feed, within a fraction of a second; a server without it (PouchDB Server) is
asked for C{/_all_dbs} every few seconds, and says nothing of updates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from couchgw.couch.client import Database, supports_selector
from couchgw.couch.errors import CouchError
from couchgw.couch.feed import Change, ChangesFeed
from couchgw.errors import describe_error

log = Logger(namespace="couchgw.gateway")

#: Seconds between two looks at C{/_all_dbs} on a server without C{/_db_updates}.
POLL = 2.0


def parse_patterns(text: str) -> tuple[str, ...]:
    """
    The patterns of C{--databases}: shell globs, comma-separated.

    @raise ValueError: none, or one that can match no database name, in one line.
    """
    patterns = tuple(p.strip() for p in text.split(",") if p.strip())
    if not patterns:
        raise ValueError("--databases needs at least one pattern, e.g. 'userdb-*'")
    for pattern in patterns:
        if pattern.startswith("_"):
            raise ValueError(
                f"--databases {pattern!r}: CouchDB's own databases (_users, _replicator, ...) "
                "are never served"
            )
    return patterns


class Discovery:
    """
    @param server: a database of the server (its own requests go to the server's root).
    @param exclude: a database never served (the gateways' own).
    @param found: called with the name of each matching database found (or created).
    @param gone: called with the name of each matching database deleted.
    @param updated: called with the name of each matching database written to.
    """

    def __init__(
        self,
        server: Database,
        clock: IReactorTime,
        patterns: Iterable[str],
        *,
        exclude: str,
        found: Callable[[str], None],
        gone: Callable[[str], None],
        updated: Callable[[str], None],
        heartbeat: float = 10.0,
    ) -> None:
        self.server = server
        self.clock = clock
        self.patterns = tuple(patterns)
        self.exclude = exclude
        self._found = found
        self._gone = gone
        self._updated = updated
        self.heartbeat = heartbeat
        #: The matching databases there are, as last seen.
        self.names: set[str] = set()
        #: Whether the server says which databases are updated (C{/_db_updates}).
        self.says_updates = False
        self._probed = False
        self.feed: ChangesFeed | None = None
        self._poll: LoopingCall | None = None
        #: Why the databases cannot be listed (None: they can).
        self.error: str | None = None

    def matches(self, name: str) -> bool:
        """Whether a database is one to serve."""
        return (
            not name.startswith("_")
            and name != self.exclude
            and any(fnmatchcase(name, pattern) for pattern in self.patterns)
        )

    @inlineCallbacks
    def start(self, welcome: dict[str, Any]) -> Any:
        """
        Whether the server says which databases change, first (each database found is read as
        it allows); then follow what changes, and list the databases there are (one created
        meanwhile is found either way); or list them, and look again and again.
        """
        if supports_selector(welcome) and not self._probed:  # Apache CouchDB 2 and later
            self._probed = True
            try:  # (if it lets this user)
                yield self.server.json(
                    "GET", "/_db_updates", params={"feed": "normal", "limit": 0, "timeout": 1}
                )
                self.says_updates = True
            except CouchError as e:
                log.warn(
                    "cannot follow the server's /_db_updates ({error}): looking at its "
                    "/_all_dbs every {poll:g}s instead",
                    error=describe_error(e),
                    poll=POLL,
                )
        if self.says_updates and self.feed is None:
            self.feed = ChangesFeed(
                self.server,
                self._update,
                self.clock,
                {"include_docs": None},
                since="now",
                heartbeat=self.heartbeat,
                path="/_db_updates",
            )
            self.feed.start()
        yield self.look()
        if not self.says_updates:
            self._poll = LoopingCall(self._look_again)
            self._poll.clock = self.clock
            self._poll.start(POLL, now=False)

    @inlineCallbacks
    def look(self) -> Any:
        """Ask for C{/_all_dbs}: each new match is found, each missing one gone."""
        try:
            names = yield self.server.all_dbs()
        except Exception as e:
            error = f"cannot list the databases of the server: {describe_error(e)}"
            if error != self.error:
                log.warn("{error}", error=error)
            self.error = error
            raise
        self.error = None
        now = {name for name in names if self.matches(name)}
        for name in sorted(now - self.names):
            self.names.add(name)
            self._tell(self._found, name)
        for name in sorted(self.names - now):
            self.names.discard(name)
            self._tell(self._gone, name)

    def _look_again(self) -> Any:
        return self.look().addErrback(lambda _: None)  # (said once, in look)

    def _update(self, change: Change) -> None:
        name, kind = change.get("db_name"), change.get("type")
        if not isinstance(name, str) or not self.matches(name):
            return
        if kind == "deleted":
            if name in self.names:
                self.names.discard(name)
                self._tell(self._gone, name)
        elif name not in self.names:
            self.names.add(name)
            self._tell(self._found, name)
        elif kind == "updated":
            self._tell(self._updated, name)

    @staticmethod
    def _tell(callback: Callable[[str], None], name: str) -> None:
        """Tell of a database; what goes wrong there is logged, and ends nothing here."""
        try:
            callback(name)
        except Exception:
            log.failure("database {db}: cannot take up what changed", db=name)

    def stop(self) -> None:
        if self.feed is not None:
            self.feed.stop()
            self.feed = None
        if self._poll is not None and self._poll.running:
            self._poll.stop()
