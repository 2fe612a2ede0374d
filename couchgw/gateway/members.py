"""
The gateways that share a database, and which of them handles each message.

Every gateway announces itself in a design document of the database,
C{_design/couchgw-gateway:<its id>} (C{type: "gateway"}), written again every C{beat} seconds
with the time of writing; a gateway is alive while that time is less than C{ttl} seconds old.
Design documents, because CouchDB lets only the database's admins write them (couchgw is one:
it writes its other design documents too): a member of the database, who may write any other
document, C{_local/} ones included, cannot announce a gateway that does not exist, and so
cannot make the others give it their messages.  Each announcement is checked all the same (its
shape, a time no later than now and a bounded C{ttl}); one that fails is logged once and
ignored.  Announcements found where gateways do not write them (C{_local/} or plain ids) are
named in C{/status} as ignored.  A gateway that stops says at once that it is leaving (it
claims nothing new, the others take its messages over, its calls in flight end), then deletes
its document; one that dies leaves it to expire.

Each message has one owner: of the live gateways that serve its route, the one whose hash of
(gateway id, message id) is highest (rendezvous hashing).  Every gateway computes the same owner
from the same members, and a gateway that leaves moves only its own messages to the others,
each to one of them.  A gateway claims only the messages it owns, so gateways that share a
database do not contend for a message while they agree on who is alive:

- a gateway that joins others waits two beats before it claims anything (by then each of them
  has read the members again, seen it, and stopped claiming its messages);
- a gateway claims nothing while its own announcement may have expired for the others (it could
  not write it, or not read the members, for C{ttl - beat} seconds): they may be taking its
  messages over.  Once it can again, it joins them as a new one does.

The claim itself (L{couchgw.claims}) still settles the moments when two gateways disagree.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from couchgw.couch.client import Database, Doc, doc_path
from couchgw.couch.errors import UNAVAILABLE, Conflict, CouchError, NotFound
from couchgw.errors import describe_error
from couchgw.gateway import announcements, host
from couchgw.message import DEFAULT_ROUTE, parse_time
from couchgw.timing import iso

log = Logger()

#: What an announcement or a read of the others may meet: CouchDB's errors, or none reached.
_EXPECTED: tuple[type[BaseException], ...] = (CouchError, *UNAVAILABLE)
#: Beats between two looks for announcements where gateways do not write them (forgeries).
FORGERIES_EVERY = 12
#: The most announcements named as ignored.
MAX_IGNORED = 20


def rank(gateway: str, doc_id: str) -> int:
    """A gateway's score for a message: the highest score among the candidates owns it."""
    digest = hashlib.blake2b(f"{gateway}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(doc_id: str, candidates: Iterable[str]) -> str | None:
    """The candidate that owns C{doc_id} (rendezvous hashing), or None without candidates."""
    return max(candidates, key=lambda gateway: rank(gateway, doc_id), default=None)


class Members:
    """
    This gateway's announcement, and the live gateways it reads every C{beat} seconds.

    @param on_change: called when gateways came or left, or this one may claim again: messages
        it passed over may be its own now (the gateway sweeps for them), and what was its own
        may be another's.
    @param scope: what the gateways that share the work serve, where several kinds of gateway
        announce themselves in one database (the patterns of the databases they serve).
    """

    def __init__(
        self,
        db: Database,
        clock: IReactorTime,
        gateway: str,
        routes: Iterable[str],
        *,
        beat: float = 5.0,
        ttl: float = 15.0,
        on_change: Callable[[], None] = lambda: None,
        scope: str | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.id = gateway
        self.routes = sorted(routes)
        self.beat = beat
        self.ttl = max(ttl, 2 * beat)
        self.on_change = on_change
        #: What the gateways that share the work serve (the patterns of the databases, where
        #: many are served): announcements of another scope are not counted.
        self.scope = scope
        #: The other live gateways: their routes, by id.
        self.others: dict[str, frozenset[str]] = {}
        self._doc: Doc = {"_id": announcements.doc_id(gateway)}
        self._leaving = False
        #: The gateways that are leaving: alive, finishing their calls, claiming nothing new.
        self.leaving: set[str] = set()
        #: When (this clock) this gateway last wrote its announcement and read the others'.
        self._written_at: float | None = None
        self._read_at: float | None = None
        #: From when this gateway may claim (None: not before its first beat).
        self._from: float | None = None
        self._loop: LoopingCall | None = None
        self._beating: Deferred[Any] | None = None
        #: Whether it passed over messages while it could not claim (it sweeps once it can).
        self._passed_over = False
        #: Whether the first announcement and read of the others ended (well or not), and who
        #: waits for that.
        self._first_done = False
        self._first_waiting: list[Deferred[None]] = []
        #: Why the last announcement or read failed (None when it worked).
        self.error: str | None = None
        #: Gateways of this host whose process ended (a predecessor that was killed).
        self.ended: set[str] = set()
        #: Announcements not believed, by document id: why (each logged once).
        self.ignored: dict[str, str] = {}
        self._logged: set[tuple[str, str]] = set()
        self._beats = 0
        #: Errors other than CouchDB's met by a beat, each logged in full once.
        self._unexpected: set[str] = set()

    # -- who owns what ---------------------------------------------------------------------------

    def claiming(self) -> bool:
        """Whether this gateway may claim now: joined, and its announcement surely alive."""
        now = self.clock.seconds()
        if self._from is None or now < self._from:
            return False
        if self._written_at is None or self._read_at is None:
            return False
        return now - min(self._written_at, self._read_at) < self.ttl - self.beat

    def mine(self, doc: Doc) -> bool:
        """Whether a message is this gateway's to handle (L{owns}) now."""
        target = doc.get("target", DEFAULT_ROUTE)
        return self.owns(doc["_id"], target if isinstance(target, str) else None)

    def owns(self, doc_id: str, route: str | None) -> bool:
        """Whether this gateway is the one to handle this message now."""
        if not self.claiming():
            self._passed_over = True
            return False
        if not self.others:
            return True
        candidates = [self.id]
        if route is not None and route in self.routes:
            candidates += [g for g, routes in self.others.items() if route in routes]
        else:  # a route this gateway lacks: whoever has it (or, if none has, any of them)
            serving = [g for g, routes in self.others.items() if route in routes]
            candidates = serving or [self.id, *self.others]
        return owner(doc_id, candidates) == self.id

    def problems(self) -> list[str]:
        """Why this gateway claims nothing now (empty when it claims its messages)."""
        error = f": {self.error}" if self.error else ""
        if self._leaving:
            return ["leaving the other gateways: claims nothing new"]
        if self._from is None:
            return [f"not announced to the other gateways yet{error}"]
        if self.clock.seconds() < self._from:
            return [f"joining {len(self.others)} other gateway(s): claims from {iso(self._from)}"]
        if not self.claiming():
            return [f"cannot announce this gateway to the others{error}"]
        return []

    def holder_gone(self, doc: Doc) -> bool:
        """
        Whether the gateway holding a claimed message is gone, so that its claim need not wait
        out its lease: a predecessor on this host whose process ended, or a gateway not alive
        when this one read the others a beat after the claim (a gateway announces itself before
        it claims anything, so one alive then would have been seen).
        """
        claim = doc.get("claim")
        holder = claim.get("by") if isinstance(claim, Mapping) else None
        if not isinstance(holder, str) or self.alive(holder):
            return False
        if holder in self.ended:
            return True
        if self._read_at is None:
            return False
        since = parse_time(doc.get("dispatched_at"))
        if since is None or since > self.clock.seconds() + announcements.MAX_SKEW:
            return True  # no gateway wrote that claim: it writes the time of its claim
        return self._read_at > since + self.beat

    def alive(self, gateway: str) -> bool:
        """Whether a gateway is known to be alive (this one always is), leaving or not."""
        return gateway == self.id or gateway in self.others or gateway in self.leaving

    # -- life cycle ------------------------------------------------------------------------------

    def started(self) -> Deferred[None]:
        """A Deferred that fires once the first beat (announcement, read) ended, well or not."""
        waiter: Deferred[None] = Deferred()
        if self._first_done:
            waiter.callback(None)
        else:
            self._first_waiting.append(waiter)
        return waiter

    def start(self) -> None:
        """Announce this gateway every beat."""
        self._first_done = self._leaving = False
        self._read_at = self._written_at = None
        self._doc = {"_id": announcements.doc_id(self.id)}
        self._loop = LoopingCall(self._beat)
        self._loop.clock = self.clock
        self._loop.start(self.beat, now=True).addErrback(
            lambda f: log.failure("announcing this gateway failed", f)
        )

    @inlineCallbacks
    def leave(self) -> Any:
        """
        Claim nothing more, and say so at once: the others take this gateway's messages over
        while it finishes its calls in flight (it stays alive, announcing itself, till L{stop}).
        """
        self._from = None
        self._leaving = True
        if self._loop is None or not self._loop.running:
            return
        if self._beating is not None:
            try:
                yield self._beating
            except Exception:
                pass
        try:
            yield self._announce()
        except _EXPECTED as e:
            log.warn("cannot say this gateway is leaving: {error}", error=describe_error(e))

    @inlineCallbacks
    def stop(self) -> Any:
        """Stop announcing; delete the announcement (the others see this gateway gone)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._from = None
        if self._beating is not None:
            try:
                yield self._beating
            except Exception:
                pass
        if "_rev" in self._doc:
            try:
                yield self.db.json(
                    "DELETE", doc_path(self._doc["_id"]), params={"rev": self._doc["_rev"]}
                )
            except _EXPECTED as e:
                log.warn(
                    "cannot withdraw this gateway's announcement: {error}", error=describe_error(e)
                )

    @inlineCallbacks
    def _beat(self) -> Any:
        """Announce this gateway and read the others; whatever fails, the next beat comes."""
        self._beating = Deferred()
        fenced = (
            self._from is not None and self._from <= self.clock.seconds() and not self.claiming()
        )
        try:
            yield self._announce()
            yield self._read()
            self.error = None
            if fenced and self.others:
                # the others may have taken this gateway for gone: it joins them again
                self._from = self.clock.seconds() + 2 * self.beat
            if self._beats % FORGERIES_EVERY == 0:
                yield self._look_for_forgeries()
        except _EXPECTED as e:
            self.error = describe_error(e)
            log.warn("cannot announce this gateway or read the others: {error}", error=self.error)
        except Exception as e:
            self.error = describe_error(e)
            if self.error not in self._unexpected:
                self._unexpected.add(self.error)
                log.failure("announcing this gateway or reading the others failed")
        finally:
            self._beats += 1
            beating, self._beating = self._beating, None
            beating.callback(None)
            if self.claiming() and self._passed_over:
                # what it passed over while it could not claim may be its own (a lapse between
                # two beats, a late answer to one, counts as much as one a beat saw)
                self._passed_over = False
                self._changed()
            if not self._first_done:
                self._first_done = True
                waiting, self._first_waiting = self._first_waiting, []
                for waiter in waiting:
                    waiter.callback(None)

    def _changed(self) -> None:
        """Tell the gateway that the members changed (whatever it does then, the beat goes on)."""
        try:
            self.on_change()
        except Exception:
            log.failure("acting on a change of the gateways failed")

    @inlineCallbacks
    def _announce(self) -> Any:
        started = self.clock.seconds()
        doc = {
            **self._doc,
            "type": announcements.TYPE,
            "gateway": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "home": host.HOME,
            "routes": self.routes,
            "beat": self.beat,
            "ttl": self.ttl,
            "at": iso(started),
            "leaving": self._leaving,
            **({"scope": self.scope} if self.scope is not None else {}),
        }
        try:
            result = yield self.db.put(doc)
        except Conflict:  # written before under this id, or the database is a new one
            try:
                current = yield self.db.get(doc["_id"])
            except NotFound:
                doc.pop("_rev", None)
            else:
                doc["_rev"] = current["_rev"]
            result = yield self.db.put(doc)
        self._doc = {**doc, "_rev": result["rev"]}
        self._written_at = started

    @inlineCallbacks
    def _read(self) -> Any:
        started = self.clock.seconds()
        first = announcements.PREFIX
        result = yield self.db.json(
            "GET",
            "_all_docs",
            params={"startkey": first, "endkey": first + "\ufff0", "include_docs": "true"},
        )
        now = self.clock.seconds()
        docs = []
        for row in result.get("rows", []):
            doc = row.get("doc")
            if not isinstance(doc, Mapping) or doc.get("_deleted"):
                continue
            why = announcements.problem(doc, now)
            if why is None:
                self.ignored.pop(str(doc["_id"]), None)
                docs.append(doc)
            else:
                self._ignore(str(doc.get("_id")), why)
        ended = {doc["gateway"] for doc in docs if host.ended(doc.get("home"), doc.get("pid"))}
        alive = [
            doc
            for doc in docs
            if announcements.alive(doc, now)
            and doc["gateway"] != self.id
            and doc["gateway"] not in ended
            and doc.get("scope") == self.scope
        ]
        others = {
            doc["gateway"]: frozenset(doc["routes"])
            for doc in alive
            if doc.get("leaving") is not True
        }
        self.leaving = {doc["gateway"] for doc in alive if doc.get("leaving") is True}
        left = set(self.others) - set(others)
        joined = set(others) - set(self.others)
        if joined or left:
            log.info(
                "gateways: {n} alive{joined}{left}",
                n=len(others) + 1,
                joined=f"; joined: {', '.join(sorted(joined))}" if joined else "",
                left=f"; left: {', '.join(sorted(left))}" if left else "",
            )
        if ended - self.ended:
            log.info("gateways ended on this host: {ended}", ended=", ".join(sorted(ended)))
        joining = self._read_at is None
        gone = bool(left or ended - self.ended)
        changed = bool(joined) and not joining
        self.others = others
        self.ended = ended
        self._read_at = started
        if joining:
            # alone: claim at once; with others: once each has read the members again
            self._from = started + (2 * self.beat if others else 0.0)
        if gone:
            # their claims are due now: sweep for them (once this gateway may claim)
            if self.claiming():
                self._changed()
            else:
                self._passed_over = True
        elif changed:
            self._changed()  # what was this gateway's may be a newcomer's now

    @inlineCallbacks
    def _look_for_forgeries(self) -> Any:
        """Name the announcements found where gateways do not write them (never believed)."""
        for doc_id in [i for i in self.ignored if i.startswith(announcements.FORGEABLE)]:
            del self.ignored[doc_id]
        for prefix in announcements.FORGEABLE:
            path = "_local_docs" if prefix.startswith("_local/") else "_all_docs"
            try:
                result = yield self.db.json(
                    "GET",
                    path,
                    params={"startkey": prefix, "endkey": prefix + "\ufff0", "limit": MAX_IGNORED},
                )
            except _EXPECTED:
                continue  # (a server without _local_docs)
            for row in result.get("rows", []):
                self._ignore(
                    str(row.get("id")),
                    "written where database members may write: gateways announce themselves in "
                    f"{announcements.PREFIX}<id>",
                )

    def _ignore(self, doc_id: str, why: str) -> None:
        if (doc_id, why) not in self._logged:
            if len(self._logged) > 1000:
                self._logged.clear()
            self._logged.add((doc_id, why))
            log.warn("ignored announcement {id}: {why}", id=doc_id, why=why)
        if doc_id in self.ignored or len(self.ignored) < MAX_IGNORED:
            self.ignored[doc_id] = why

    def describe(self) -> dict[str, Any]:
        """The members as plain JSON (for C{/status})."""
        return {
            "gateways": sorted([self.id, *self.others]),
            "claiming": self.claiming(),
            "beat": self.beat,
            "ttl": self.ttl,
            "ignored": dict(sorted(self.ignored.items())),
        }
