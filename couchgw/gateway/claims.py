"""
Claims on messages: taking one, renewing its lease, writing over it, giving it back; and
merging a message's conflicting revisions.  The one place that knows about CouchDB clusters.

On one copy (a single node, PouchDB Server) a claim is one write on the revision read: CouchDB's
MVCC lets exactly one claim on a revision in, and a 409 means another won.

On a cluster (C{n} copies of every document) each copy takes the first write on a revision, so
racing claims through different nodes can each get into some copies.  A claim is therefore
written with C{w = n}:

- 201: every copy took it, so no copy can take another child of that revision: exclusive.
- 409: every copy had another child: lost.
- 202: some copies took it (a race, or a copy slow or out of reach).  It is confirmed by two
  reads of every copy (C{r = n}).  The first makes CouchDB repair the copies that differ before
  it answers, so that afterwards every copy holds a child of the revision claimed and takes no
  new claim on it.  The second then sees every claim that got in anywhere, and answers the
  winner CouchDB picks among them (the same on every node: highest generation, then revision
  id).  The claimer whose claim is that winner goes on and deletes the losers; the others back
  off without calling.  If every copy cannot be read, the claim is not used: it waits out its
  lease rather than risk a second call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from couchgw import message
from couchgw.couch.client import Database, Doc
from couchgw.couch.errors import (
    UNAVAILABLE,
    Conflict,
    CouchError,
    Forbidden,
    NotFound,
    ServerError,
    Unauthorized,
)
from couchgw.errors import describe_error, log_error
from couchgw.timing import Backoff, iso

log = Logger()

#: Writes a message's fields on the revision read; answers the document written, or None on a
#: conflict (the gateway's C{_transition}: it counts outcomes and starts callbacks).
Transition = Callable[[Doc, dict[str, Any]], "Deferred[Doc | None]"]

#: What looking once more at a claim, or merging the losing claims, may meet.
_COUCH_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE, CouchError)
#: What a write-back waits out: CouchDB down, or refusing the credentials for a while.
_WAIT_OUT: tuple[type[BaseException], ...] = (*UNAVAILABLE, Unauthorized, Forbidden)

#: How often a confirmation tries to read every copy before it gives the claim up.
CONFIRM_TRIES = 4
#: Seconds after which a claim whose write got no answer is looked at once more.
RECHECK = 60.0


def copies(info: Mapping[str, Any]) -> int:
    """How many copies of each document the database keeps (C{cluster.n}; 1 without one)."""
    cluster = info.get("cluster")
    try:
        return max(1, int(cluster["n"])) if isinstance(cluster, Mapping) else 1
    except (KeyError, TypeError, ValueError):
        return 1


class Claims:
    """
    This gateway's claims.

    @param gateway: this gateway's id, written in its claims.
    @param transition: writes fields on a message (see L{Transition}).
    @param lease: seconds a claim is valid; a running call renews it every third of that.
    @param settle: seconds a claim that fewer than all copies took waits before it is confirmed
        (racing claims land meanwhile, and fewer reads find copies that differ).
    """

    def __init__(
        self,
        db: Database,
        clock: IReactorTime,
        gateway: str,
        transition: Transition,
        *,
        lease: float = 600.0,
        settle: float = 0.5,
    ) -> None:
        self.db = db
        self.clock = clock
        self.id = gateway
        self.transition = transition
        self.lease = lease
        self.settle = settle
        #: Copies of each document (C{cluster.n}); 1 on a single node or PouchDB Server.
        self.copies = 1
        #: The claims of calls in flight, by message id.
        self.held: dict[str, Claim] = {}
        #: Set once the gateway stopped: write-backs no longer wait CouchDB out.
        self.closed = False
        #: How claims went: C{taken} at once, C{confirmed} after reading the copies back,
        #: C{lost} to another claim or an edit, C{unconfirmed} (not every copy could be read).
        self.answers: Counter[str] = Counter()
        #: Claims whose write got no answer, to be looked at once more.
        self._rechecks: set[IDelayedCall] = set()

    @inlineCallbacks
    def take(self, doc: Doc, also: Mapping[str, Any] | None = None) -> Any:
        """
        Claim a message: answer the claimed document if the claim is this gateway's alone.

        @param also: further fields the claim writes.
        """
        fields = {**message.claimed(doc, self.id, self.clock.seconds(), self.lease), **(also or {})}
        new = message.apply(doc, fields)
        try:
            if self.copies <= 1:
                claimed = yield self.transition(doc, fields)
                self.answers["taken" if claimed is not None else "lost"] += 1
                return claimed
            status, result = yield self.db.write(new, w=self.copies)
        except Conflict:
            self.answers["lost"] += 1
            return None
        except UNAVAILABLE as e:
            # the claim may have got in all the same: a claim nobody knows it holds would wait
            # out its whole lease
            found = yield self._read_back(doc, new, e)
            if found is None or self.copies <= 1:
                self.answers["taken" if found is not None else "lost"] += 1
                return found
            confirmed = yield self._confirm(found)
            return confirmed
        new["_rev"] = result["rev"]
        if status == 201:
            self.answers["taken"] += 1
            return new
        confirmed = yield self._confirm(new)
        return confirmed

    @inlineCallbacks
    def _read_back(self, before: Doc, claimed: Doc, error: BaseException) -> Any:
        """
        After a claim write that failed without an answer: wait until the message can be read,
        and answer it if it holds this claim (None if it does not).  A write still queued in
        CouchDB may land later: the message is looked at once more, C{RECHECK} seconds on, and
        a claim of this gateway's found then (which nobody works on) is given back.
        """
        doc_id = claimed["_id"]
        log.warn(
            "{id}: no answer to the claim ({error}); reading it back",
            id=doc_id,
            error=describe_error(error),
        )
        backoff = Backoff(base=0.5, cap=10.0)
        while not self.closed:
            yield deferLater(self.clock, backoff.next(), lambda: None)
            try:
                current = yield self.db.get(doc_id, conflicts="true")
            except NotFound:
                return None
            except UNAVAILABLE:
                continue
            if self.holds(current, claimed):
                return current
            self._rechecks.add(self.clock.callLater(RECHECK, self._recheck, before, claimed))
            return None
        return None

    @inlineCallbacks
    def _recheck(self, before: Doc, claimed: Doc) -> Any:
        """Give back a claim that landed after this gateway had read that it did not."""
        self._rechecks = {call for call in self._rechecks if call.active()}
        try:
            current = yield self.db.get(claimed["_id"])
            if self.holds(current, claimed) and claimed["_id"] not in self.held:
                log.warn("{id}: a claim that landed late is given back", id=claimed["_id"])
                yield self.transition(current, message.released(before))
        except _COUCH_ERRORS as e:
            log.warn(
                "{id}: cannot look at a claim that may have landed late: {error}",
                id=claimed["_id"],
                error=describe_error(e),
            )

    def stop(self) -> None:
        """The gateway stops: no more looking back at claims."""
        self.closed = True
        for call in self._rechecks:
            if call.active():
                call.cancel()
        self._rechecks.clear()

    @inlineCallbacks
    def _confirm(self, claimed: Doc) -> Any:
        """A claim some copies took: answer it if it won on every copy (see the module's doc)."""
        doc_id = claimed["_id"]
        yield deferLater(self.clock, self.settle, lambda: None)
        backoff = Backoff(base=0.5, cap=5.0)
        tries = 0
        while True:
            try:
                yield self.db.get(doc_id, r=self.copies)  # copies that differ are repaired
                current = yield self.db.get(doc_id, conflicts="true", r=self.copies)
                break
            except NotFound:
                return None  # deleted
            except UNAVAILABLE as e:
                # CouchDB answering that not every copy replied counts; its node out of reach
                # is waited out (the claim is confirmed once it is back)
                tries += isinstance(e, ServerError)
                if tries >= CONFIRM_TRIES or self.closed:
                    self.answers["unconfirmed"] += 1
                    log.warn(
                        "{id}: cannot read every copy to confirm the claim ({error}); not "
                        "calling (the claim waits out its lease)",
                        id=doc_id,
                        error=describe_error(e),
                    )
                    return None
                yield deferLater(self.clock, backoff.next(), lambda: None)
        if not self.holds(current, claimed):
            self.answers["lost"] += 1
            log.info("{id}: another claim won; not calling", id=doc_id)
            return None
        self.answers["confirmed"] += 1
        if current.get("_conflicts"):
            try:
                resolved = yield self.resolve(current)
            except _COUCH_ERRORS as e:  # the claim won all the same: the sweep merges later
                log.warn(
                    "{id}: cannot merge the losing claims: {error}",
                    id=doc_id,
                    error=describe_error(e),
                )
                resolved = None
            current = resolved or message.apply(current, {})
        return current

    @inlineCallbacks
    def resolve(self, doc: Doc) -> Any:
        """
        Merge a message's conflicting revisions into the winning one and delete the losers
        (L{message.resolve}); answer the document written, or None if it changed meanwhile.
        """
        losers = []
        for rev in doc.get("_conflicts", []):
            try:
                losers.append((yield self.db.get(doc["_id"], rev=rev)))
            except NotFound:
                pass
        merged = message.resolve(doc, losers)
        if merged != message.apply(doc, {}):  # the losers add something: write that first
            try:
                result = yield self.db.put(merged)
            except Conflict:
                return None  # the winner changed: look again
            merged["_rev"] = result["rev"]
        if losers:  # only then delete them, so that nothing they held is ever lost
            yield self.db.bulk_docs(
                [{"_id": doc["_id"], "_rev": loser["_rev"], "_deleted": True} for loser in losers]
            )
        log.info(
            "{id}: {n} conflicting revision(s) merged and deleted", id=doc["_id"], n=len(losers)
        )
        return merged

    def holds(self, doc: Doc, claimed: Doc) -> bool:
        """Whether C{doc} is still under the claim this gateway wrote as C{claimed}."""
        claim = doc.get("claim")
        return (
            doc.get("status") == "dispatching"
            and isinstance(claim, dict)
            and claim.get("by") == self.id
            and doc.get("attempts") == claimed.get("attempts")
        )

    def hold(self, claimed: Doc) -> Claim:
        """Keep a claim while its call runs: its lease is renewed until it is finished."""
        claim = self.held[claimed["_id"]] = Claim(self, claimed)
        return claim

    def let_go(self, claim: Claim) -> None:
        """The claim's call ended (its outcome written, or given up)."""
        claim.stop()
        if self.held.get(claim.claimed["_id"]) is claim:
            del self.held[claim.claimed["_id"]]


class Claim:
    """
    A claim on a message whose call is in flight: renews the lease every third of it, and
    writes the outcome over the claim without clobbering a client's edits.
    """

    def __init__(self, claims: Claims, doc: Doc) -> None:
        self.claims = claims
        self.claimed = doc
        #: The latest revision this claim wrote.
        self.doc = doc
        self._renewing: Deferred[Any] | None = None
        self._loop = LoopingCall(self._renew)
        self._loop.clock = claims.clock
        self._loop.start(claims.lease / 3, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    @inlineCallbacks
    def _renew(self) -> Any:
        claims = self.claims
        now = claims.clock.seconds()
        fields = {
            "claim": {"by": claims.id, "until": iso(now + claims.lease)},
            "updated_at": iso(now),
        }
        self._renewing = self._write(fields, retry=False)
        try:
            yield self._renewing
        except Exception as e:
            log.warn(
                "{id}: cannot renew the lease ({error}); trying again later",
                id=self.doc["_id"],
                error=describe_error(e),
            )
        finally:
            self._renewing = None

    @inlineCallbacks
    def finish(self, fields: dict[str, Any]) -> Any:
        """Write the outcome; answer the document written, or None if the claim was lost."""
        self.stop()
        if self._renewing is not None:
            try:
                yield self._renewing
            except Exception:
                pass
        written = yield self._write(fields, retry=True)
        return written

    def give_back(self) -> Deferred[Any]:
        """At stop, with the call still running: make the message due again at once."""
        self.stop()
        now = self.claims.clock.seconds()
        fields = message.retrying(
            "interrupted", "couchgw stopped before the call ended; its outcome is unknown", now, 0
        )
        return self._write(fields, retry=False).addErrback(
            log_error, f"cannot give {self.doc['_id']} back"
        )

    @inlineCallbacks
    def _write(self, fields: dict[str, Any], retry: bool) -> Any:
        """
        Write C{fields} over the claim, merging into the current revision on a conflict; give
        up if the claim is no longer ours.  With C{retry}, CouchDB errors are waited out for as
        long as the gateway runs (an answer is never dropped while it could be written).
        """
        claims = self.claims
        doc_id = self.claimed["_id"]
        doc = self.doc
        backoff = Backoff(base=0.5, cap=30.0)
        while True:
            try:
                written = yield claims.transition(doc, fields)
                if written is not None:
                    self.doc = written
                    return written
                doc = yield claims.db.get(doc_id)
                if _wrote(doc, fields):  # an earlier try got in, but its answer was lost
                    self.doc = doc
                    return doc
                if not claims.holds(doc, self.claimed):
                    log.warn("{id}: the claim was lost; its outcome is dropped", id=doc_id)
                    return None
            except _WAIT_OUT as e:
                if not retry or claims.closed:
                    raise
                delay = backoff.next()
                log.warn(
                    "{id}: cannot write the outcome ({error}); trying again in {delay:.1f}s",
                    id=doc_id,
                    error=describe_error(e),
                    delay=delay,
                )
                yield deferLater(claims.clock, delay, lambda: None)


def _wrote(doc: Doc, fields: dict[str, Any]) -> bool:
    """Whether C{doc} already has C{fields} written (each to its value, or removed if None)."""
    return all(doc.get(key) == value for key, value in fields.items())
