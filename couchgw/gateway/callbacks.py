"""
Webhooks: when a message with a C{callback_url} reaches a terminal status, couchgw POSTs the
document there as JSON.

With a secret, the body is signed: C{X-Couchgw-Signature: sha256=<hex HMAC-SHA256 of the body>}.
Only hosts matching C{--callback-allow} are contacted (none by default).  The delivery is
recorded on the message as C{callback}: C{pending} (being delivered, by a gateway, until a
time), C{retrying} (with C{next_attempt_at}), C{delivered}, C{failed} (every attempt used), or
C{refused} (the host is not allowed: nothing was sent).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

import treq
from treq.client import HTTPClient
from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from couchgw.couch.client import Doc
from couchgw.errors import describe_error
from couchgw.timing import Backoff, iso

log = Logger()

#: Seconds a delivery may take.
TIMEOUT = 30.0
SIGNATURE_HEADER = "X-Couchgw-Signature"


def signature(secret: bytes, body: bytes) -> str:
    """The signature header's value for C{body}."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class Callbacks:
    """
    @param allow: host patterns (C{fnmatch}, case-insensitive), each optionally with C{:port},
        e.g. C{hooks.example.com}, C{*.corp.example}, C{127.0.0.1:8080}.
    @param secret: the HMAC key, or None for unsigned deliveries.
    @param attempts: deliveries tried before the callback is C{failed}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        client: HTTPClient,
        allow: Iterable[str],
        secret: bytes | None = None,
        attempts: int = 5,
        backoff: Backoff | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self.clock = clock
        self.client = client
        self.allow = [pattern.strip().lower() for pattern in allow if pattern.strip()]
        self.secret = secret
        self.attempts = attempts
        self.backoff = backoff or Backoff(base=2.0, cap=300.0, floor=1.0)
        self.timeout = timeout

    def refusal(self, url: str) -> str | None:
        """Why C{url} may not be called, or None if its host is allowed."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return "only http:// and https:// URLs are called back"
        host = (parts.hostname or "").lower()
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return "its port is not a number"
        for pattern in self.allow:
            target = f"{host}:{port}" if ":" in pattern.strip("[]") else host
            if fnmatchcase(target, pattern):
                return None
        return f"host {host!r} is not one --callback-allow names"

    def begin(self, doc: Doc, gateway: str, now: float) -> dict[str, Any] | None:
        """
        The C{callback} field to write with a terminal status: C{pending} (this gateway delivers
        it now), C{refused}, or None when the message asks for no callback.
        """
        url = doc.get("callback_url")
        if not isinstance(url, str):
            return None
        refused = self.refusal(url)
        if refused is not None:
            return {"status": "refused", "attempts": 0, "error": refused}
        return self.pending(doc.get("callback") or {}, gateway, now)

    def pending(self, record: dict[str, Any], gateway: str, now: float) -> dict[str, Any]:
        """The record of a delivery this gateway is about to make."""
        return {
            "status": "pending",
            "attempts": int(record.get("attempts") or 0),
            "by": gateway,
            "until": iso(now + 2 * self.timeout),
        }

    @inlineCallbacks
    def deliver(self, doc: Doc) -> Any:
        """POST the document; answers the C{callback} record of the outcome (never fails)."""
        record = doc.get("callback") or {}
        attempts = int(record.get("attempts") or 0) + 1
        refused = self.refusal(str(doc.get("callback_url")))
        if refused is not None:  # (the URL changed since the callback began)
            return {"status": "refused", "attempts": attempts - 1, "error": refused}
        body = json.dumps(
            {k: v for k, v in doc.items() if k != "callback"}, ensure_ascii=False
        ).encode("utf-8")
        headers = {"Content-Type": "application/json", "X-Couchgw-Message": doc["_id"]}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        try:
            response = yield self.client.post(
                doc["callback_url"],
                data=body,
                headers=headers,  # type: ignore[arg-type]
                timeout=self.timeout,
                allow_redirects=False,
            )
            yield treq.content(response)
            code = response.code
            error = None if 200 <= code < 300 else f"the callback URL answered HTTP {code}"
        except Exception as e:
            code, error = None, _URL.sub("the callback URL", describe_error(e, self.timeout))
        now = self.clock.seconds()
        if error is None:
            return {"status": "delivered", "attempts": attempts, "code": code, "at": iso(now)}
        if attempts < self.attempts:
            return {
                "status": "retrying",
                "attempts": attempts,
                "error": error,
                "next_attempt_at": iso(now + self.backoff.delay(attempts - 1)),
            }
        return {"status": "failed", "attempts": attempts, "error": error, "at": iso(now)}


_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
