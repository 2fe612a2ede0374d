"""Framing of the changes feed: a byte stream cut into lines, long ones cut short."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Oversize:
    """
    A line longer than the framer keeps: its first and last bytes, and its length.

    The framer never holds more of it than C{head} and C{tail}, whatever its length.
    """

    head: bytes
    tail: bytes
    size: int


HEAD = 8192
TAIL = 512


class LineFramer:
    """
    Cuts a byte stream into C{\\n}-terminated lines.

    A chunk may hold many lines or part of one; the part after the last newline waits for the
    next chunk (kept as a list of pieces, so a long line arriving in many chunks costs linear
    time).  A line longer than C{max_length} comes out as an L{Oversize}, and its middle is
    dropped as it arrives: memory stays bounded by C{max_length}.
    """

    def __init__(self, max_length: int = 16 * 1024 * 1024) -> None:
        self.max_length = max_length
        self._parts: list[bytes] = []
        self.pending = 0  # bytes of an unfinished line
        self._oversize: Oversize | None = None

    def feed(self, data: bytes) -> list[bytes | Oversize]:
        """Add a chunk; answer the complete lines it finished (blank ones included)."""
        lines: list[bytes | Oversize] = []
        if self._oversize is not None:
            end = data.find(b"\n")
            self._skip(data if end < 0 else data[:end])
            if end < 0:
                return lines
            lines.append(self._oversize)
            self._oversize = None
            data = data[end + 1 :]
        if b"\n" not in data:
            if data:
                self._parts.append(data)
                self.pending += len(data)
                self._check()
            return lines
        cut = data.split(b"\n")
        if self._parts:
            cut[0] = b"".join(self._parts) + cut[0]
        tail = cut.pop()
        for line in cut:
            if len(line) > self.max_length:
                lines.append(Oversize(line[:HEAD], line[-TAIL:], len(line)))
            else:
                lines.append(line)
        self._parts = [tail] if tail else []
        self.pending = len(tail)
        self._check()
        return lines

    def _check(self) -> None:
        if self.pending > self.max_length:
            line = b"".join(self._parts)
            self._parts, self.pending = [], 0
            self._oversize = Oversize(line[:HEAD], line[-TAIL:], len(line))

    def _skip(self, data: bytes) -> None:
        big = self._oversize
        assert big is not None
        big.size += len(data)
        big.tail = (big.tail + data)[-TAIL:]
