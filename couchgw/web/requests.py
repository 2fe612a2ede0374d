"""
What the HTTP API reads of a request and how it answers: JSON answers, query parameters, who
asks, whether they may learn the databases' names, act on messages, and whether a request comes
from another site.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from twisted.web.iweb import IRequest

from couchgw import console
from couchgw.couch.errors import CouchError, NotFound
from couchgw.errors import describe_error


def answer(request: IRequest, body: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, indent=2, sort_keys=True).encode("utf-8") + b"\n"


def params(request: IRequest) -> dict[str, str]:
    """A request's query parameters (the first value of each), as text."""
    args = request.args or {}  # type: ignore[attr-defined]
    return {
        key.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
        for key, values in args.items()
        if values
    }


def who(request: IRequest) -> str:
    """Who acts: the user the credentials name, or the operator of an API without them."""
    return getattr(request, "couchgw_user", None) or "operator"


def cross_site(request: IRequest) -> str | None:
    """
    Why a request that acts comes from another site (None: it does not): its C{Origin} is not
    this API's, or the browser says it is another site's (C{Sec-Fetch-Site}).
    """
    site = request.getHeader(b"sec-fetch-site")
    origin = request.getHeader(b"origin")
    shown = origin.decode("latin-1") if origin is not None else "another site"
    refusal = f"a request from {shown} does not act here: actions come from this API's own page"
    if site is not None and site not in (b"same-origin", b"none"):
        return refusal
    if origin is None:
        return None
    host = (request.getHeader(b"host") or b"").decode("latin-1").lower()
    netloc = urlsplit(origin.decode("latin-1")).netloc.lower() if origin != b"null" else None
    return None if host and netloc == host else refusal


def unavailable(request: IRequest, error: CouchError) -> bytes:
    if isinstance(error, NotFound) and console.DDOC in str(error):
        reason = (
            f"the database has no _design/{console.DDOC} (the gateway writes it as it starts, "
            "or when a listing first needs it; couchgw designdocs push writes it too)"
        )
    else:
        reason = describe_error(error)
    return answer(request, {"error": "unavailable", "reason": reason}, 503)


def may_name(request: IRequest, names: bool) -> bool:
    """Whether this request may be told the names of the databases served."""
    admin = getattr(request, "couchgw_admin", None)  # (set where --http-auth checked it)
    return names if admin is None else bool(admin)


def refused(request: IRequest, names: bool) -> str | None:
    """Why this request's user may not act on messages (None: they may)."""
    operator = getattr(request, "couchgw_operator", None)  # (set where --http-auth checked it)
    if operator is None and not names:
        return "actions need --http-auth where the API listens beyond this machine"
    if operator is False:
        return (
            "only the database's admins, or users with the operator role, requeue or "
            "cancel messages: you may read them"
        )
    return None
