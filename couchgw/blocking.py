"""
Blocking JSON requests for the C{couchgw} command (L{couchgw.cli}, L{couchgw.console_cli}): one
base URL, its credentials kept out of every message, and failures as one line.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from couchgw.connections import basic_auth, split_credentials


class Failed(Exception):
    """A one-line reason to stop (exit status 1)."""


class Client:
    """Blocking JSON requests to one base URL, with its credentials kept out of messages."""

    def __init__(self, url: str, ca: str | None = None, timeout: float = 30.0) -> None:
        self.url, auth = split_credentials(url.rstrip("/"))
        self.auth = basic_auth(*auth) if auth else None
        self.context = ssl.create_default_context(cafile=ca) if ca else None
        self.timeout = timeout

    def open(
        self, method: str, path: str = "", body: Any = None, timeout: float | None = None
    ) -> Any:
        request = urllib.request.Request(self.url + path, method=method)
        request.add_header("Accept", "application/json")
        if self.auth:
            request.add_header("Authorization", self.auth)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            request.add_header("Content-Type", "application/json")
        try:
            return urllib.request.urlopen(
                request, data, timeout=timeout or self.timeout, context=self.context
            )
        except urllib.error.HTTPError as e:
            try:
                answer = json.loads(e.read())
                reason = answer.get("reason") or answer.get("error") or ""
            except (ValueError, AttributeError):
                reason = ""
            raise HTTPFailed(
                e.code, f"{self.url} answered {e.code}" + (f": {reason}" if reason else "")
            ) from None
        except (urllib.error.URLError, OSError) as e:
            why = getattr(e, "reason", e)
            raise Failed(f"cannot reach {self.url}: {why}") from None

    def json(self, method: str, path: str = "", body: Any = None) -> Any:
        with self.open(method, path, body) as response:
            return json.loads(response.read())


class HTTPFailed(Failed):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
