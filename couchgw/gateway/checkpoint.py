"""
The checkpoint: the feed position below which every change has been handled, and where it is
saved (C{_local/couchgw-checkpoint}, shared by the gateways of a database).

Changes are handled concurrently and finish in any order.  L{Checkpoint} remembers the sequence of
each change in the order the feed delivered them and advances only over a prefix of finished
ones, so a restart from the saved value never skips an unhandled change.  Sequence values are
opaque: they are stored and handed back, never parsed or compared.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from couchgw.couch.client import Database, Doc
from couchgw.couch.errors import Conflict, NotFound

log = Logger(namespace="couchgw.gateway")

CHECKPOINT_ID = "_local/couchgw-checkpoint"
#: The longest sequence believed (a cluster's are long strings, one part per shard).
MAX_SEQ = 64 * 1024


def believable(seq: Any) -> bool:
    """
    Whether a saved sequence may be one of this database's: a string (CouchDB) or a number
    (PouchDB), of a bounded size.  A member of the database may write the checkpoint: a
    sequence that is not one is ignored (and one CouchDB refuses is, by the feed); one that
    skips changes only delays them until the sweep finds their messages.
    """
    if isinstance(seq, bool):
        return False
    return (isinstance(seq, str) and 0 < len(seq) <= MAX_SEQ) or (isinstance(seq, int) and seq >= 0)


class Checkpoint:
    def __init__(self, seq: Any = None) -> None:
        #: The feed position to resume from: every change up to it has been handled.
        self.seq: Any = seq
        #: [seq, done], in feed order (made with the first: most of many databases are idle).
        self._pending: deque[list[Any]] | None = None

    def __len__(self) -> int:
        """Changes received and not yet covered by L{seq}."""
        return len(self._pending) if self._pending is not None else 0

    def received(self, seq: Any) -> list[Any]:
        """Note a change the feed delivered; answers the token to pass to L{done}."""
        entry = [seq, False]
        if self._pending is None:
            self._pending = deque()
        self._pending.append(entry)
        return entry

    def done(self, token: list[Any]) -> None:
        """Note that the change behind C{token} has been handled; advance over finished ones."""
        token[1] = True
        pending = self._pending
        while pending and pending[0][1]:
            seq = pending.popleft()[0]
            if seq is not None:  # with seq_interval, CouchDB gives most changes no seq
                self.seq = seq


class SavedCheckpoint:
    """The checkpoint of the feed being followed, read from CouchDB and written back to it."""

    def __init__(self, db: Database, clock: IReactorTime, gateway: str) -> None:
        self.db = db
        self.clock = clock
        self.gateway = gateway
        self.current = Checkpoint()
        self._saved_seq: Any = None
        self._saved_at: float | None = None
        self._doc: Doc = {"_id": CHECKPOINT_ID}
        #: Whether the current checkpoint was resumed from a saved one (or begun) since the
        #: database was last opened.
        self.resumed = False

    @inlineCallbacks
    def read(self) -> Any:
        """Read the saved checkpoint (the database's start if there is none): answers it."""
        try:
            saved = yield self.db.get(CHECKPOINT_ID)
        except NotFound:
            saved = {}
        return saved

    def resume(self, saved: Doc) -> None:
        """Start counting from a checkpoint L{read} (from the start, if it is no sequence)."""
        seq = saved.get("seq") if isinstance(saved, dict) else None
        if seq is not None and not believable(seq):
            log.warn(
                "ignored the saved checkpoint {id}: its seq is no sequence of this database; "
                "following the changes from the start",
                id=CHECKPOINT_ID,
            )
            seq = None
        self.current = Checkpoint(seq)
        self.resumed = True
        self._saved_seq = self.current.seq
        self._saved_at = self.clock.seconds()
        self._doc = {"_id": CHECKPOINT_ID, **({"_rev": saved["_rev"]} if "_rev" in saved else {})}

    @inlineCallbacks
    def save(self, force: bool = False) -> Any:
        """Write the checkpoint if it moved since it was last written (or C{force})."""
        seq = self.current.seq
        if seq is None or (seq == self._saved_seq and not force):
            return
        doc = {**self._doc, "seq": seq, "gateway": self.gateway}
        try:
            result = yield self.db.put(doc)
        except Conflict:  # another gateway sharing the checkpoint wrote it: write over its revision
            current = yield self.db.get(CHECKPOINT_ID)
            doc["_rev"] = current["_rev"]
            result = yield self.db.put(doc)
        self._doc = {**doc, "_rev": result["rev"]}
        self._saved_seq = seq
        self._saved_at = self.clock.seconds()

    def age(self) -> float | None:
        """Seconds since the checkpoint was last read or written (None before that)."""
        return None if self._saved_at is None else self.clock.seconds() - self._saved_at
