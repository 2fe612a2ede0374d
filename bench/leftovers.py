"""
What a benchmark makes on a CouchDB server (databases, users), deleted when it ends: when it
finishes, fails, or is interrupted (Ctrl-C, SIGTERM).

    with Leftovers() as made:         # within it, SIGTERM ends the run as Ctrl-C does
        db = made.database(f"{couch}/drain-{suffix}")   # created, and deleted at the end
        made.user(couch, "bench-client-1234", "pw", ["client"])
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from couchgw.connections import split_credentials  # noqa: E402
from tests.servers import http  # noqa: E402


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


class Leftovers:
    """
    Databases and users to delete, newest first (L{remove}); as a context manager, deleted on
    leaving the block however it is left, and SIGTERM within it ends the run through every
    C{finally}, as Ctrl-C does.
    """

    def __init__(self) -> None:
        #: URLs (with credentials) to delete, in the order they were made.
        self._made: list[str] = []
        self._previous: Any = None

    def __enter__(self) -> Leftovers:
        self._previous = signal.signal(signal.SIGTERM, _terminated)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            self.remove()
        finally:
            signal.signal(signal.SIGTERM, self._previous)

    def database(self, url: str) -> str:
        """Create the database at C{url} (one that exists is an error); answers C{url}."""
        self._made.append(url)
        status, answer = http("PUT", url)
        assert status in (201, 202), (split_credentials(url)[0], status, answer)
        return url

    def user(self, server: str, name: str, password: str, roles: list[str]) -> None:
        """A user in C{server}'s C{_users} database."""
        url = f"{server}/_users/{quote('org.couchdb.user:' + name, safe=':')}"
        self._made.append(url)
        body = {"name": name, "password": password, "roles": roles, "type": "user"}
        status, answer = http("PUT", url, body)
        assert status in (201, 202), (name, status, answer)

    def forget(self, url: str) -> None:
        """A database that is gone already (deleted by the benchmark itself)."""
        self._made = [made for made in self._made if made != url]

    def remove(self) -> None:
        """
        Delete what was made, newest first; a second Ctrl-C or SIGTERM meanwhile is held off
        (it would leave the rest behind).  What cannot be deleted is named.
        """
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        terminate = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            while self._made:
                self._delete(self._made.pop())
        finally:
            signal.signal(signal.SIGINT, interrupt)
            signal.signal(signal.SIGTERM, terminate)

    def _delete(self, url: str) -> None:
        clean = split_credentials(url)[0]
        try:
            if "/_users/" in url:
                status, doc = http("GET", url, timeout=10)
                if status == 200:
                    status, _ = http("DELETE", f"{url}?rev={doc['_rev']}", timeout=10)
            else:
                status, _ = http("DELETE", url, timeout=30)
        except OSError as e:
            print(f"left behind: {clean} ({e})", file=sys.stderr, flush=True)
            return
        if status not in (200, 202, 404):
            print(f"left behind: {clean} (DELETE answered {status})", file=sys.stderr, flush=True)
