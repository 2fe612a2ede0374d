"""
Document writes gathered into C{_bulk_docs} requests.

A write goes out at once when fewer than C{concurrency} requests are in flight; otherwise it
waits for one of them to end and goes with every other write that waited meanwhile.  So a lone
write costs no delay, and under load the batch grows with what is waiting: fewer, larger
requests.  With a C{linger}, a write waits that long (0: the end of the reactor's turn) for
others to go with it, even when no request is in flight: where writes come a few at a time
(many databases, each with little to do), each database's come together.

Each document gets its own outcome (a conflict on one does not fail the others), raised as the
same typed errors a single PUT would raise.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from couchgw.couch.client import Database, Doc
from couchgw.couch.errors import BULK_STATUS, ServerError, error_for

#: Seconds a write waits for others where it lingers: a database's claims and outcomes, while
#: they come a few at a time (one of many databases) or while its feed is read in turns.
LINGER = 0.01


class BulkWriter:
    """
    @param linger: seconds a write waits for others (None: none), on C{clock}.
    @param clock: what tells when the last request was answered (L{answered_at}).
    """

    def __init__(
        self,
        db: Database,
        concurrency: int = 2,
        max_batch: int = 500,
        linger: tuple[IReactorTime, float] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self.db = db
        self._clock = clock
        #: When the server last answered a request of these writes (None: not yet, or no clock).
        self.answered_at: float | None = None
        self.concurrency = concurrency
        self.max_batch = max_batch
        self.linger = linger
        self._lingering: IDelayedCall | None = None
        self.in_flight = 0
        #: Requests sent and documents they carried (for status and tests).
        self.requests = 0
        self.written = 0
        self._waiting: list[tuple[Doc, Deferred[Doc]]] = []

    def write(self, doc: Doc) -> Deferred[Doc]:
        """Write C{doc} (on its C{_rev}); a Deferred with C{{"ok", "id", "rev"}}."""
        done: Deferred[Doc] = Deferred()
        self._waiting.append((doc, done))
        if self.linger is None:
            self._send()
        elif self._lingering is None and self.in_flight < self.concurrency:
            clock, seconds = self.linger
            self._lingering = clock.callLater(seconds, self._lingered)
        return done

    def _lingered(self) -> None:
        self._lingering = None
        self._send()

    def _send(self) -> None:
        while self._waiting and self.in_flight < self.concurrency:
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            self.in_flight += 1
            self.requests += 1
            self.written += len(batch)
            sent = self.db.bulk_docs([doc for doc, _ in batch])
            sent.addBoth(self._answered, batch)

    def _answered(self, answer: Any, batch: list[tuple[Doc, Deferred[Doc]]]) -> None:
        self.in_flight -= 1
        if self._clock is not None:
            self.answered_at = self._clock.seconds()
        if not isinstance(answer, list) or len(answer) != len(batch):
            failure = (
                answer
                if isinstance(answer, Failure)
                else Failure(ServerError(500, "bad_answer", "not one result per document"))
            )
            for _, done in batch:
                done.errback(failure)
        else:
            for (doc, done), result in zip(batch, answer, strict=True):
                if "rev" in result and not result.get("error"):
                    done.callback(result)
                else:
                    error = str(result.get("error", ""))
                    status = BULK_STATUS.get(error, 500)
                    done.errback(error_for(status, result, f"write {doc['_id']}"))
        self._send()
