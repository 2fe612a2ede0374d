"""
What a client may write in a message, checked: a new message's fields (nothing only couchgw
writes, known types, bounded size and nesting, text XML can carry), its call (route, operation,
arguments), and its plan (priority, times, trace context).  A message that does not fit is
L{Rejected} with the precise reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from couchgw.message import DEFAULT_ROUTE, GATEWAY_FIELDS, STATUSES, Doc, parse_time

#: The priorities a message may name, as numbers (0 to 9 may be given as such; higher first).
PRIORITIES = {"high": 8, "medium": 5, "low": 2}
#: The priority of a message that names none.
DEFAULT_PRIORITY = PRIORITIES["medium"]
#: The highest priority.
TOP_PRIORITY = 9
#: A time a client writes: ISO 8601 with its zone (C{Z} or an offset), seconds optional (and a
#: day its month has, in year 1 or later).  The guard reads it with the same groups.
TIME = re.compile(
    r"([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):([0-5][0-9])"
    r"(?::([0-5][0-9])(?:\.([0-9]+))?)?(Z|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))\Z"
)
#: A W3C trace context C{traceparent}: version, trace id, parent id, flags (none all zeros),
#: and what a later version adds, in visible ASCII (it is passed on as an HTTP header).
TRACEPARENT = re.compile(
    r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(-[!-~]*)?\Z"
)
#: The longest C{tracestate} passed on.
TRACESTATE_LENGTH = 512
#: How deeply a message's arguments may nest (objects and arrays).
MAX_DEPTH = 32
#: Characters XML 1.0 (and so SOAP) cannot carry, and lone surrogates (not Unicode at all).
_UNSENDABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


class Rejected(Exception):
    """The message itself is invalid; C{str()} is the precise reason written into C{error}."""


@dataclass(frozen=True)
class Call:
    route: str
    operation: str | None
    args: list[Any] | dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """
    When and in which order a message goes, and the trace it belongs to, from the fields a
    client may write for that (L{plan_of}).
    """

    #: 0 to 9, higher first.
    priority: int = DEFAULT_PRIORITY
    #: POSIX times (None: not given).
    requested_at: float | None = None
    not_before: float | None = None
    expires_at: float | None = None
    traceparent: str | None = None
    tracestate: str | None = None

    def expired(self, now: float) -> bool:
        """Whether the message may no longer be called."""
        return self.expires_at is not None and self.expires_at <= now

    def waits(self, now: float) -> bool:
        """Whether the message may not be called yet."""
        return self.not_before is not None and self.not_before > now


def check_new(doc: Doc, max_bytes: int | None = None) -> int | None:
    """
    What a client wrote must be a well-formed message: no fields only the gateway writes, no
    unknown status, known field types, bounded size and nesting, text that XML can carry (its
    priority, times and trace context: L{plan_of}).

    @return: the document's size as compact JSON (L{encoded_size}), if measured (C{max_bytes}).
    """
    size = None if max_bytes is None else encoded_size(doc)
    if size is not None and max_bytes is not None and size > max_bytes:
        raise Rejected(too_large(max_bytes))
    if "status" in doc:  # even null: the guard refuses a client's status, whatever its value
        status = doc["status"]
        raise Rejected(
            f"status {short(status)} is not one couchgw writes "
            f"({', '.join(sorted(STATUSES))}); a new message has no status"
        )
    present = [f for f in GATEWAY_FIELDS if f in doc and f != "status"]
    if present:
        raise Rejected(
            "fields written only by couchgw were set by the client: " + ", ".join(present)
        )
    cancel = doc.get("cancel_requested")
    if cancel is not None and not isinstance(cancel, bool):
        raise Rejected(f"cancel_requested must be true or false, not {json_kind(cancel)}")
    callback = doc.get("callback_url")
    if callback is not None and not (
        isinstance(callback, str)
        and re.match(r"https?://[^/?#\s]+", callback)
        and not any(c.isspace() for c in callback)
    ):
        raise Rejected(
            f"callback_url must be an http:// or https:// URL, not {short(callback)}"
            if isinstance(callback, str)
            else f"callback_url must be an http:// or https:// URL, not {json_kind(callback)}"
        )
    for field in ("operation", "target", "args", "text"):
        if field in doc:
            _check_value(field, doc[field])
    return size


def plan_of(doc: Doc) -> Plan:
    """
    A message's priority, times and trace context, checked.

    @raise Rejected: a value that is not one of these, in one line.
    """
    priority = doc.get("priority")
    if priority is None:
        priority = DEFAULT_PRIORITY
    elif isinstance(priority, str) and priority in PRIORITIES:
        priority = PRIORITIES[priority]
    elif (
        isinstance(priority, int | float)
        and not isinstance(priority, bool)
        and 0 <= priority <= TOP_PRIORITY
        and priority == int(priority)
    ):
        priority = int(priority)  # 5.0 is 5, as JSON has it
    else:
        raise Rejected(
            f"priority must be {', '.join(json.dumps(name) for name in PRIORITIES)} or a whole "
            f"number from 0 to {TOP_PRIORITY} (higher first), not {_shown(priority)}"
        )
    times = {field: _time(doc, field) for field in ("requested_at", "not_before", "expires_at")}
    not_before, expires_at = times["not_before"], times["expires_at"]
    if not_before is not None and expires_at is not None and expires_at <= not_before:
        raise Rejected(
            f"expires_at {doc['expires_at']} is not after not_before {doc['not_before']}: "
            "the message could never be called"
        )
    traceparent = doc.get("traceparent")
    if traceparent is not None and not (
        isinstance(traceparent, str)
        and TRACEPARENT.match(traceparent)
        and (len(traceparent) == 55 or not traceparent.startswith("00-"))
    ):
        raise Rejected(
            "traceparent must be a W3C trace context (00-<32 hex digits>-<16 hex digits>-<2 hex "
            f"digits>, not all zeros), not {_shown(traceparent)}"
        )
    tracestate = doc.get("tracestate")
    if tracestate is not None and not (
        isinstance(tracestate, str) and len(tracestate) <= TRACESTATE_LENGTH
    ):
        raise Rejected(
            f"tracestate must be a string of at most {TRACESTATE_LENGTH} characters, not "
            f"{_shown(tracestate)}"
        )
    return Plan(priority, traceparent=traceparent, tracestate=tracestate, **times)


def has_expired(doc: Doc, now: float) -> bool:
    """Whether a message's C{expires_at} (a valid one) has come."""
    at = _client_time(doc.get("expires_at"))
    return at is not None and at <= now


def _client_time(value: Any) -> float | None:
    """A time as a client must write it (L{TIME}), as POSIX seconds; None if it is not one."""
    return parse_time(value) if isinstance(value, str) and TIME.match(value) else None


def _time(doc: Doc, field: str) -> float | None:
    value = doc.get(field)
    if value is None:
        return None
    at = _client_time(value)
    if at is None:
        raise Rejected(
            f"{field} must be an ISO 8601 time with its zone, e.g. 2026-12-02T02:00:00Z, not "
            f"{_shown(value)}"
        )
    return at


def _shown(value: Any) -> str:
    """A value for an error message: itself if it is a string, number or boolean; else its kind."""
    return json_kind(value) if isinstance(value, (dict, list)) or value is None else short(value)


def encoded_size(doc: Doc) -> int:
    """The bytes of a document as compact UTF-8 JSON."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return len(text.encode("utf-8", "surrogatepass"))


def too_large(max_bytes: int) -> str:
    return f"the message is larger than {max_bytes} bytes, the most couchgw accepts"


def undecodable() -> str:
    return (
        "the message nests objects or arrays too deeply to be read "
        f"(at most {MAX_DEPTH} levels are accepted)"
    )


def _check_value(field: str, value: Any) -> None:
    """Nesting depth and characters of one field, with the path of the first problem."""
    for place, depth, item in _walk(field, value):
        if depth > MAX_DEPTH:
            raise Rejected(
                f"{field} nests objects or arrays more than {MAX_DEPTH} levels deep "
                f"(at {_path(place)})"
            )
        if isinstance(item, str):
            bad = _UNSENDABLE.search(item)
            if bad:
                char = ord(bad.group())
                what = (
                    "a lone surrogate, not Unicode"
                    if 0xD800 <= char <= 0xDFFF
                    else ("a character XML (and so SOAP) cannot carry")
                )
                raise Rejected(f"{_path(place)} contains U+{char:04X}, {what}")


#: Where a value sits in a message: (the parent's place, the key or index), or the field name.
_Place = tuple[Any, Any] | str


def _walk(field: str, value: Any) -> Iterator[tuple[_Place, int, Any]]:
    """
    Each value within C{value} and each object key, with its place and depth (iteratively; a
    place is only spelled out as a path when a problem is reported, see L{_path}).
    """
    stack: list[tuple[_Place, int, Any]] = [(field, 0, value)]
    while stack:
        place, depth, item = stack.pop()
        yield place, depth, item
        if isinstance(item, dict):
            for key, child in item.items():
                yield (place, key), depth + 1, key
                stack.append(((place, key), depth + 1, child))
        elif isinstance(item, list):
            stack.extend(((place, i), depth + 1, child) for i, child in enumerate(item))


def _path(place: _Place) -> str:
    """A place as C{args.network}, C{args[0][1]}, shortened after five steps."""
    steps: list[Any] = []
    while isinstance(place, tuple):
        place, step = place
        steps.append(step)
    steps.reverse()
    text = str(place) + "".join(
        f"[{p}]" if isinstance(p, int) else f".{short(p, 40, quote=False)}" for p in steps[:5]
    )
    return text + ("..." if len(steps) > 5 else "")


def short(value: Any, limit: int = 80, quote: bool = True) -> str:
    """A value for an error message (a string quoted, unless told not to), cut to C{limit}."""
    if isinstance(value, str):
        text = repr(value) if quote else repr(value)[1:-1]
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    if value == "":
        return "an empty string"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)
