"""
The message document: what is due, what a client may write, and the gateway's transitions.

Pure functions of a document and the time; the gateway decides from a document's current state
alone, so handling the same change twice is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from couchgw.couch import Doc
from couchgw.timing import iso

#: Fields only couchgw writes.
GATEWAY_FIELDS = (
    "status",
    "result",
    "error",
    "attempts",
    "claim",
    "next_attempt_at",
    "dispatched_at",
    "completed_at",
    "updated_at",
)
TERMINAL = frozenset({"forwarded", "failed", "rejected", "cancelled"})

#: The route a message without C{target} goes to.
DEFAULT_ROUTE = "default"


class Rejected(Exception):
    """The message itself is invalid; C{str()} is the precise reason written into C{error}."""


@dataclass(frozen=True)
class Call:
    route: str
    operation: str | None
    args: list[Any] | dict[str, Any]


def is_message(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and doc.get("type") == "message"
        and not doc.get("_deleted")
        and not str(doc.get("_id", "")).startswith(("_design/", "_local/"))
    )


def parse_time(value: Any) -> float | None:
    """A time couchgw wrote (ISO-8601) as POSIX seconds, or None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def due(doc: Any, now: float) -> str | None:
    """
    What is due for this document now: C{"new"}, C{"retry"} (a retry whose time has come),
    C{"takeover"} (a claim whose lease expired), or L{None} (nothing: not a message, finished,
    claimed, waiting for its retry, or a status a client set).
    """
    if not is_message(doc):
        return None
    status = doc.get("status")
    if status is None:
        return "new"
    if status == "retrying":
        at = parse_time(doc.get("next_attempt_at"))
        return "retry" if at is None or at <= now else None
    if status == "dispatching":
        claim = doc.get("claim")
        until = parse_time(claim.get("until")) if isinstance(claim, dict) else None
        return "takeover" if until is None or until <= now else None
    return None


def check_new(doc: Doc) -> None:
    """A new message must not carry fields only the gateway writes."""
    present = [f for f in GATEWAY_FIELDS if f in doc and f != "status"]
    if present:
        raise Rejected(
            "fields written only by couchgw were set by the client: " + ", ".join(present)
        )


def call_of(doc: Doc) -> Call:
    """The call a message asks for, checked for shape (not yet against the target)."""
    route = doc.get("target", DEFAULT_ROUTE)
    if not isinstance(route, str) or not route:
        raise Rejected(f"target must be a route name (a non-empty string), not {json_kind(route)}")
    operation = doc.get("operation")
    if operation is not None and (not isinstance(operation, str) or not operation):
        raise Rejected(f"operation must be a non-empty string, not {json_kind(operation)}")
    if "args" in doc:
        args = doc["args"]
        if not isinstance(args, (dict, list)):
            raise Rejected(
                f"args must be an object (keyword arguments) or an array (positional arguments), "
                f"not {json_kind(args)}"
            )
    elif "text" in doc:
        args = [doc["text"]]
    else:
        args = []
    return Call(route, operation, args)


def json_kind(value: Any) -> str:
    """What kind of JSON value this is, for error messages: "a string", "an array", ..."""
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


# -- transitions: the fields each one writes (None removes a field) ----------------------------


def claimed(doc: Doc, by: str, now: float, lease: float) -> dict[str, Any]:
    return {
        "status": "dispatching",
        "claim": {"by": by, "until": iso(now + lease)},
        "attempts": int(doc.get("attempts") or 0) + 1,
        "dispatched_at": iso(now),
        "next_attempt_at": None,
        "updated_at": iso(now),
    }


def _terminal(status: str, now: float, **fields: Any) -> dict[str, Any]:
    return {
        "status": status,
        "claim": None,
        "next_attempt_at": None,
        "completed_at": iso(now),
        "updated_at": iso(now),
        **fields,
    }


def forwarded(result: Any, now: float) -> dict[str, Any]:
    return _terminal("forwarded", now, result=result, error=None)


def failed(kind: str, text: str, now: float) -> dict[str, Any]:
    return _terminal("failed", now, error={"kind": kind, "message": text})


def rejected(text: str, now: float) -> dict[str, Any]:
    return _terminal("rejected", now, error={"kind": "invalid", "message": text})


def cancelled(now: float) -> dict[str, Any]:
    return _terminal("cancelled", now)


def retrying(kind: str, text: str, now: float, delay: float) -> dict[str, Any]:
    return {
        "status": "retrying",
        "claim": None,
        "error": {"kind": kind, "message": text},
        "next_attempt_at": iso(now + delay),
        "updated_at": iso(now),
    }


def apply(doc: Doc, fields: dict[str, Any]) -> Doc:
    """A copy of C{doc} with C{fields} written (a L{None} value removes the field)."""
    new = dict(doc)
    for key, value in fields.items():
        if value is None:
            new.pop(key, None)
        else:
            new[key] = value
    return new
