"""
What a gateway announces of itself, where, and which announcements the others take as true.

An announcement is a design document, C{_design/couchgw-gateway:<gateway id>}: only the
database's admins may write design documents, and couchgw's user is one (it writes its other
design documents too), while a member of the database may write any other document, C{_local/}
ones included.  An announcement must also hold up on its own: its shape, a time no later than
now and L{MAX_SKEW}, a C{ttl} of at most L{MAX_TTL}.  Documents of that shape found elsewhere
(C{_local/couchgw-gateway:...}, C{couchgw-gateway:...}) are forgeries, or left by an older
couchgw: never taken as true, only named.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from typing import Any

from couchgw.message import parse_time

#: Where gateways announce themselves: the design documents whose ids begin so.
PREFIX = "_design/couchgw-gateway:"
#: Where they do not (members may write there): a document found there is never believed.
FORGEABLE = ("_local/couchgw-gateway:", "couchgw-gateway:")
TYPE = "gateway"
#: Seconds an announcement's time may be ahead of this gateway's clock.
MAX_SKEW = 120.0
#: The longest C{ttl} believed: three beats of an hour (C{--announce} is at most 3600).
MAX_TTL = 3 * 3600.0
#: The most routes one gateway may name.
MAX_ROUTES = 1000


def doc_id(gateway: str) -> str:
    return PREFIX + gateway


def problem(doc: Any, now: float) -> str | None:
    """Why an announcement found under L{PREFIX} is not believed (None: it is)."""
    if not isinstance(doc, Mapping):
        return "not an object"
    gateway = doc.get("gateway")
    if doc.get("type") != TYPE or not isinstance(gateway, str) or not gateway:
        return "not a gateway's announcement (type, gateway)"
    if doc.get("_id") != doc_id(gateway):
        return f"its id does not name its gateway {gateway!r}"
    routes = doc.get("routes")
    if not (
        isinstance(routes, list)
        and len(routes) <= MAX_ROUTES
        and all(isinstance(r, str) for r in routes)
    ):
        return f"routes must be a list of at most {MAX_ROUTES} route names"
    at = parse_time(doc.get("at"))
    if at is None:
        return "at must be a time"
    if at > now + MAX_SKEW:
        return (
            f"at is {at - now:.0f}s ahead of this gateway's clock (more than {MAX_SKEW:g}s: "
            "a clock that is wrong, or a forgery)"
        )
    for key, high in (("ttl", MAX_TTL), ("beat", MAX_TTL / 3)):
        value: Any = doc.get(key)
        if not (_number(value) and 0 < value <= high):
            return f"{key} must be a number of seconds from 0 to {high:g}"
    if not isinstance(doc.get("leaving", False), bool):
        return "leaving must be true or false"
    if not isinstance(doc.get("scope", ""), str):
        return "scope must be a text"
    if not isinstance(doc.get("pid", 0), int) or not isinstance(doc.get("home", ""), str | None):
        return "pid must be a number and home a text"
    return None


def alive(doc: Mapping[str, Any], now: float) -> bool:
    """Whether a believed announcement is recent enough to say its gateway is alive."""
    at = parse_time(doc.get("at"))
    return at is not None and now < at + float(doc["ttl"])


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def gateway_id() -> str:
    """An id unique to this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
