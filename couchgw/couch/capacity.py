"""
Whether a CouchDB server keeps open the files of the databases a fleet serves.

Each node of Apache CouchDB keeps at most C{[couchdb] max_dbs_open} database files open (500
unless set); a database has C{q} shards (2 unless set), each a file on C{n} nodes.  A node that
holds more shard files than that closes the least recently written one for each it opens, so
a request to a database whose files were closed opens them again first, which costs CouchDB more
than the request itself: draining 1,000 databases of 2 shards each, CouchDB spent a fifth to a
half more CPU per message with the default than with the limit above them (docs/BENCHMARKS.md).

Read from each node's configuration (C{GET /_membership}, then C{GET
/_node/<name>/_config/...}), which only a server admin may read.  A fleet that uses more
databases in a minute than fit says so in its log and its C{/status}, with the setting that
would fit them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from couchgw.couch.client import Database, supports_selector
from couchgw.couch.engines import node_names, node_path
from couchgw.couch.errors import NotFound
from couchgw.errors import describe_error, log_error

log = Logger(namespace="couchgw.couch")

#: CouchDB's defaults: database files kept open by each node, shards of a database, copies.
MAX_DBS_OPEN, Q, N = 500, 2, 3
#: Seconds over which the databases used are counted.
WINDOW = 60.0
#: Windows between two reads of the configuration (an admin may raise the limit meanwhile).
READ_EVERY = 5


@dataclass(frozen=True)
class OpenFiles:
    """
    @ivar most: database files the node that keeps the fewest keeps open.
    @ivar node: that node.
    @ivar q: shards of a new database.
    @ivar n: copies of each shard.
    @ivar nodes: the server's nodes.
    """

    most: int
    node: str
    q: int = Q
    n: int = N
    nodes: int = 1

    def needed(self, databases: int) -> int:
        """The shard files of C{databases} databases on each node (their copies spread evenly)."""
        return math.ceil(databases * self.q * min(self.n, self.nodes) / self.nodes)

    def describe(self, databases: int) -> dict[str, Any]:
        needed = self.needed(databases)
        return {"max_dbs_open": self.most, "shard_files": needed, "advice": self.advice(databases)}

    def enough(self, databases: int) -> int:
        """
        A limit that keeps the files of C{databases} databases open, with room (each of
        CouchDB's schedulers keeps its own share of it, and the server has databases of its own).
        """
        return math.ceil((self.needed(databases) * 1.25 + 100) / 100) * 100

    def advice(self, databases: int) -> str | None:
        """What to set, where the databases' shard files do not all fit (None: they do)."""
        needed, enough = self.needed(databases), self.enough(databases)
        if enough <= self.most:
            return None
        return (
            f"the {databases} databases used in a minute have {needed} shard files on each node, "
            f"but node {self.node} keeps at most {self.most} open ([couchdb] max_dbs_open): "
            f"CouchDB keeps closing and opening them again; set it to {enough} or more"
        )


def _int(value: Any, default: int) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        return default


def decide(limits: Mapping[str, Any], cluster: Mapping[str, Any]) -> OpenFiles:
    """
    The L{OpenFiles} of a server from each node's C{max_dbs_open} (None where not set) and its
    C{[cluster]} section.
    """
    most = {name: _int(value, MAX_DBS_OPEN) for name, value in limits.items()}
    node = min(most, key=lambda name: (most[name], name))
    return OpenFiles(
        most[node],
        node,
        q=_int(cluster.get("q"), Q),
        n=_int(cluster.get("n"), N),
        nodes=len(most),
    )


@inlineCallbacks
def read(db: Database) -> Any:
    """
    The L{OpenFiles} of C{db}'s server (a L{Deferred}), or why they cannot be read (a
    C{str}: not a server admin, or not Apache CouchDB).
    """
    db = db.probe()
    try:
        welcome = yield db.welcome()
        if not supports_selector(welcome):
            return "this server does not say how many database files it keeps open"
        names = node_names((yield db.json("GET", "/_membership")))
        if not names:
            return "the server names no nodes (GET /_membership)"
        cluster = yield db.json("GET", f"{node_path(names[0])}/_config/cluster")
        limits: dict[str, Any] = {}
        for name in names:
            try:
                limits[name] = yield db.json(
                    "GET", f"{node_path(name)}/_config/couchdb/max_dbs_open"
                )
            except NotFound:  # (not set: the default)
                limits[name] = None
    except Exception as e:
        return f"the server's configuration cannot be read ({describe_error(e)})"
    return decide(limits, cluster)


class OpenFilesWatch:
    """
    Counts the databases used (their changes read) in each L{WINDOW} (this gateway's, times the
    C{gateways} that split them), reads the server's limit every L{READ_EVERY} windows, and says
    when the databases used stop fitting in it, and when they fit again.  (CouchDB closes a
    database idle for about a minute anyway: the files of databases that stay idle need no
    room.)
    """

    def __init__(
        self, db: Database, clock: IReactorTime, gateways: Callable[[], int] = lambda: 1
    ) -> None:
        self._db = db
        self._gateways = gateways
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        #: The last reading (None before the first; a C{str}: why it could not be read).
        self.files: OpenFiles | str | None = None
        #: The databases used in the last window, by the gateways that split them (this one's,
        #: times their number).
        self.used_lately = 0
        self._used: set[str] = set()
        self._ticks = 0
        self._advised: str | None = None

    def start(self) -> None:
        self._loop.start(WINDOW, now=True).addErrback(log_error, "open files")

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def used(self, name: str) -> None:
        """A database's changes are read."""
        self._used.add(name)

    @inlineCallbacks
    def _tick(self) -> Any:
        self.used_lately, self._used = len(self._used) * max(1, self._gateways()), set()
        if self._ticks % READ_EVERY == 0:
            files = yield read(self._db)
            if isinstance(files, str) and not isinstance(self.files, str):
                log.info("cannot tell whether CouchDB keeps the databases open: {why}", why=files)
            self.files = files
        self._ticks += 1
        self.check()

    def check(self) -> None:
        """Say so when the databases stop fitting in the server's limit (once), or fit again."""
        files, used = self.files, self.used_lately
        advice = files.advice(used) if isinstance(files, OpenFiles) else None
        if advice is not None and self._advised is None:
            log.warn("{advice} (docs/operations.md)", advice=advice)
        elif advice is None and self._advised is not None and isinstance(files, OpenFiles):
            log.info(
                "the databases used fit in the database files CouchDB keeps open ({most})",
                most=files.most,
            )
        self._advised = advice

    def describe(self) -> dict[str, Any] | None:
        """For C{/status}: the limit, the shard files on each node, and what to set (or None)."""
        if not isinstance(self.files, OpenFiles):
            return None
        return {"used_lately": self.used_lately, **self.files.describe(self.used_lately)}
