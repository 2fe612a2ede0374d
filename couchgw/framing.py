"""Framing of the changes feed: a byte stream cut into lines."""

from __future__ import annotations


class LineTooLong(ValueError):
    def __str__(self) -> str:
        return f"a feed line exceeded {self.args[0]} bytes"


class LineFramer:
    """
    Cuts a byte stream into C{\\n}-terminated lines.

    A chunk may hold many lines or part of one; the part after the last newline waits for the
    next chunk (kept as a list of pieces, so a long line arriving in many chunks costs linear
    time).  A line longer than C{max_length} raises L{LineTooLong}: the stream should be dropped.
    """

    def __init__(self, max_length: int = 16 * 1024 * 1024) -> None:
        self.max_length = max_length
        self._parts: list[bytes] = []
        self.pending = 0  # bytes of an unfinished line

    def feed(self, data: bytes) -> list[bytes]:
        """Add a chunk; answer the complete lines it finished (blank ones included)."""
        if b"\n" not in data:
            if data:
                self._parts.append(data)
                self.pending += len(data)
                self._check()
            return []
        lines = data.split(b"\n")
        if self._parts:
            lines[0] = b"".join(self._parts) + lines[0]
        tail = lines.pop()
        self._parts = [tail] if tail else []
        self.pending = len(tail)
        self._check()
        return lines

    def _check(self) -> None:
        if self.pending > self.max_length:
            self._parts, self.pending = [], 0
            raise LineTooLong(self.max_length)
