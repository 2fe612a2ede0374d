"""
The operator's console, as plain functions shared by the HTTP API (L{couchgw.web.messages}) and
the C{couchgw} command: which messages a listing selects, how a page of them is read from the
console's index (C{_design/couchgw-console}, view C{messages}: every message keyed by status,
route and time, newest first) or, for an id prefix, from C{_all_docs}; and what a message shows,
listed and whole.  The actions themselves (requeue, cancel) are L{couchgw.message}'s.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from couchgw.message import (
    CANCELLABLE,
    DEFAULT_ROUTE,
    DONE,
    REQUEUEABLE,
    STATUSES,
    Doc,
    parse_time,
    refusal,
    status_of,
)
from couchgw.timing import iso

#: The console's design document and its view.
DDOC = "couchgw-console"
VIEW = "messages"
#: Every status a listing may name.
LISTED = ("new", *sorted(STATUSES))
#: Messages on a page unless told otherwise, and at most.
DEFAULT_LIMIT = 50
MOST = 500
#: Documents an id-prefix search (C{q}) reads at most for one page.
SCANNED = 1000
#: Messages a bulk action reads and writes at once.
BATCH = 200
#: The actions an operator may take, and the statuses each applies to.
ACTIONS = {"requeue": REQUEUEABLE, "cancel": CANCELLABLE}
#: The longest error message a listed message shows (the whole one is in the document).
ERROR_SHOWN = 300

_AGO = re.compile(r"([0-9]+)([smhd])\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class BadRequest(ValueError):
    """A listing's parameter that does not fit, in one line."""


@dataclass(frozen=True)
class Selection:
    """Which messages: of a status, of a route, updated since, whose id begins so (None: any)."""

    status: str | None = None
    route: str | None = None
    #: POSIX seconds.
    since: float | None = None
    q: str | None = None

    def matches(self, doc: Doc) -> bool:
        """Whether a message fits (the id prefix and the type aside)."""
        if self.status is not None and status_of(doc) != self.status:
            return False
        if self.route is not None and route_of(doc) != self.route:
            return False
        return self.since is None or _time_of(doc) >= int(self.since * 1000)


def selection_of(params: Mapping[str, str | None], now: float) -> Selection:
    """
    A selection from a request's or the command line's parameters: C{status}, C{route},
    C{since} (an ISO 8601 time with its zone, or a time ago: C{90m}, C{12h}, C{2d}), C{q}.

    @raise BadRequest: a value that does not fit, in one line.
    """
    status = params.get("status") or None
    if status is not None and status not in LISTED:
        raise BadRequest(f"status must be one of {', '.join(LISTED)}, not {status!r}")
    since_text = params.get("since") or None
    since = None
    if since_text is not None:
        ago = _AGO.match(since_text)
        since = now - int(ago.group(1)) * _UNITS[ago.group(2)] if ago else parse_time(since_text)
        if since is None or (
            not ago and not re.search(r"(Z|[+-][0-9]{2}:?[0-9]{2})\Z", since_text)
        ):
            raise BadRequest(
                "since must be an ISO 8601 time with its zone (2026-11-28T18:00:00Z) or a time "
                f"ago (90m, 12h, 2d), not {since_text!r}"
            )
    return Selection(status, params.get("route") or None, since, params.get("q") or None)


def limit_of(text: str | None) -> int:
    """A page's length: C{DEFAULT_LIMIT} when not given, 1 to L{MOST}."""
    if text is None or text == "":
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MOST:
        raise BadRequest(f"limit must be a whole number from 1 to {MOST}, not {text!r}")
    return int(text)


def action_selection(action: str, selection: Selection) -> None:
    """
    A bulk action names the status of the messages it acts on, one it applies to.

    @raise BadRequest: it does not.
    """
    allowed = ", ".join(sorted(ACTIONS[action]))
    if selection.status is None:
        raise BadRequest(f"name the status of the messages to {action} (status={allowed})")
    if selection.status not in ACTIONS[action]:
        raise BadRequest(
            f"{selection.status} messages are not {DONE[action]}: status must be one of {allowed}"
        )


# -- reading a page -------------------------------------------------------------------------------


def cursor_text(position: list[Any]) -> str:
    """The opaque cursor of the next page, from where it begins."""
    raw = json.dumps(position, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def position_of(cursor: str | None, selection: Selection) -> list[Any] | None:
    """
    Where a page begins, from its cursor: C{[time, id]} in the index, or C{[id]} among ids
    (with C{q}); None: at the start.

    @raise BadRequest: a cursor this listing did not give.
    """
    if not cursor:
        return None
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        position = None
    if selection.q is not None:
        good = isinstance(position, list) and len(position) == 1 and isinstance(position[0], str)
    else:
        good = (
            isinstance(position, list)
            and len(position) == 2
            and isinstance(position[0], int)
            and isinstance(position[1], str)
        )
    if not good:
        raise BadRequest("cursor is not one this listing gave (ask for the first page again)")
    return position  # type: ignore[no-any-return]


def view_params(selection: Selection, position: list[Any] | None, limit: int) -> dict[str, Any]:
    """
    The query of the console's view for a page of C{limit} messages from C{position}, newest
    first, with the documents (one row more than the page: where the next one begins).
    """
    prefix = [selection.status, selection.route]
    start = prefix + (position if position is not None else [{}])
    end = prefix + ([int(selection.since * 1000)] if selection.since is not None else [])
    return {
        "startkey": start,
        "endkey": end,
        "descending": "true",
        "reduce": "false",
        "include_docs": "true",
        "limit": limit + 1,
    }


def count_params(selection: Selection) -> dict[str, Any]:
    """The query of the console's view that counts the messages a selection (without C{q}) holds."""
    prefix = [selection.status, selection.route]
    end = prefix + ([int(selection.since * 1000)] if selection.since is not None else [])
    return {"startkey": [*prefix, {}], "endkey": end, "descending": "true", "reduce": "true"}


def counted(answer: Mapping[str, Any]) -> int:
    rows = answer.get("rows") or []
    return int(rows[0]["value"]) if rows else 0


def view_page(answer: Mapping[str, Any], limit: int) -> tuple[list[Doc], str | None]:
    """The messages of a page read with L{view_params}, and the cursor of the next (or None)."""
    rows = [row for row in answer.get("rows") or [] if isinstance(row.get("doc"), dict)]
    following = None
    if len(rows) > limit:
        key = rows[limit]["key"]
        following = cursor_text([key[2], key[3]])
    return [row["doc"] for row in rows[:limit]], following


def ids_params(selection: Selection, position: list[Any] | None, scanned: int) -> dict[str, Any]:
    """The query of C{_all_docs} that reads the ids beginning with C{q}, from C{position}."""
    assert selection.q is not None
    start = position[0] if position is not None else selection.q
    return {
        "startkey": start,
        "endkey": selection.q + "\ufff0",
        "include_docs": "true",
        "limit": scanned + 1,
    }


def ids_page(
    answer: Mapping[str, Any], selection: Selection, limit: int, scanned: int
) -> tuple[list[Doc], str | None]:
    """
    The messages of an id-prefix page read with L{ids_params} (by id), and the cursor of the
    next page: after C{limit} found, or after C{scanned} read (a page may then hold fewer).
    """
    rows = answer.get("rows") or []
    found: list[Doc] = []
    for index, row in enumerate(rows):
        if index >= scanned or len(found) >= limit:
            return found, cursor_text([row["id"]])
        doc = row.get("doc")
        if isinstance(doc, dict) and doc.get("type") == "message" and selection.matches(doc):
            found.append(doc)
    return found, None


# -- what a message shows --------------------------------------------------------------------------


def route_of(doc: Doc) -> str | None:
    """The route a message names (None: a target that is not a string)."""
    target = doc.get("target", DEFAULT_ROUTE)
    return target if isinstance(target, str) else None


def _time_of(doc: Doc) -> int:
    """A message's time in the console's index: its updated_at, else its requested_at (ms)."""
    for field in ("updated_at", "requested_at"):
        at = parse_time(doc.get(field))
        if at is not None:
            return int(at * 1000)
    return 0


def summary(doc: Doc) -> dict[str, Any]:
    """A message as a listing shows it: where it stands, and why where that is not forwarded."""
    shown: dict[str, Any] = {
        "id": doc["_id"],
        "rev": doc.get("_rev"),
        "status": status_of(doc),
        "route": route_of(doc),
        "attempts": doc.get("attempts") or 0,
    }
    for field in (
        "operation",
        "priority",
        "updated_at",
        "requested_at",
        "next_attempt_at",
        "not_before",
        "expires_at",
        "completed_at",
        "requeued_by",
        "requeued_at",
        "cancelled_by",
        "cancelled_at",
    ):
        if doc.get(field) is not None:
            shown[field] = doc[field]
    error = doc.get("error")
    if isinstance(error, dict) and shown["status"] != "forwarded":
        text = str(error.get("message", ""))
        cut = text if len(text) <= ERROR_SHOWN else text[: ERROR_SHOWN - 3] + "..."
        shown["error"] = {"kind": error.get("kind"), "message": cut}
    if isinstance(doc.get("requeues"), list):
        shown["requeues"] = len(doc["requeues"])
    return shown


def trace_id(doc: Doc) -> str | None:
    """The trace a message belongs to: its client's (C{traceparent}) or couchgw's (C{trace})."""
    for field in ("traceparent", "trace"):
        value = doc.get(field)
        if isinstance(value, str) and value.count("-") >= 3:
            return value.split("-")[1]
    return None


def whole(doc: Doc, now: float) -> dict[str, Any]:
    """
    A message whole: its document, where it stands, its attempts, the errors it keeps (of each
    round before a requeue, then its own), its times, its trace and what an operator may do.
    """
    history = doc.get("requeues")
    rounds = (
        [before for before in history if isinstance(before, dict)]
        if isinstance(history, list)
        else []
    )
    errors = [
        {**before["error"], "round": number, "status": before.get("status")}
        for number, before in enumerate(rounds, 1)
        if isinstance(before.get("error"), dict)
    ]
    error = doc.get("error")
    if isinstance(error, dict) and status_of(doc) != "forwarded":
        errors.append({**error, "round": len(rounds) + 1, "status": status_of(doc)})
    return {
        **summary(doc),
        "document": doc,
        "errors": errors,
        "timings": {
            "written": doc.get("requested_at"),
            "requeued": doc.get("requeued_at"),
            "claimed": doc.get("dispatched_at"),
            "called": None,  # (not kept in the document: the claim is written just before)
            "finished": doc.get("completed_at"),
            "updated": doc.get("updated_at"),
            "next_attempt": doc.get("next_attempt_at"),
        },
        "trace_id": trace_id(doc),
        "actions": [action for action in ACTIONS if refusal(action, doc) is None],
        "read_at": iso(now),
    }
