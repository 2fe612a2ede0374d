"""
The checkpoint: the feed position below which every change has been handled.

Changes are handled concurrently and finish in any order.  L{Checkpoint} remembers the sequence of
each change in the order the feed delivered them and advances only over a prefix of finished
ones, so a restart from the saved value never skips an unhandled change.  Sequence values are
opaque: they are stored and handed back, never parsed or compared.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class Checkpoint:
    def __init__(self, seq: Any = None) -> None:
        #: The feed position to resume from: every change up to it has been handled.
        self.seq: Any = seq
        self._pending: deque[list[Any]] = deque()  # [seq, done], in feed order

    def __len__(self) -> int:
        """Changes received and not yet covered by L{seq}."""
        return len(self._pending)

    def received(self, seq: Any) -> list[Any]:
        """Note a change the feed delivered; answers the token to pass to L{done}."""
        entry = [seq, False]
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
