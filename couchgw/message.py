"""
The message document: what is due, and the gateway's transitions.

Pure functions of a document and the time; the gateway decides from a document's current state
alone, so handling the same change twice is harmless.  What a client may write, and the checks
of a new message, are in L{couchgw.checks}.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from couchgw.timing import iso

#: A JSON document, as CouchDB stores it.
Doc = dict[str, Any]

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
    "callback",
    "trace",
)
#: Fields only couchgw writes that a new message may carry: the record of an operator's action
#: (a requeued message is new again, and keeps who sent it again and what it was before).
ACTION_FIELDS = ("requeued_by", "requeued_at", "requeues", "cancelled_by", "cancelled_at")
#: Every field only couchgw writes (the guard keeps them from clients).
OWNED_FIELDS = GATEWAY_FIELDS + ACTION_FIELDS
TERMINAL = frozenset({"forwarded", "failed", "rejected", "cancelled", "expired"})
#: What an operator may send again (it becomes new), and what an operator may cancel.
REQUEUEABLE = frozenset({"failed", "expired", "rejected", "cancelled"})
CANCELLABLE = frozenset({"new", "scheduled", "retrying"})
#: What each action is said to have done.
DONE = {"requeue": "requeued", "cancel": "cancelled"}
#: The earlier outcomes a requeued message keeps (the oldest are dropped).
REQUEUES_KEPT = 10
#: Every status couchgw writes; any other value a client set is invalid.
STATUSES = TERMINAL | {"scheduled", "dispatching", "retrying"}
#: The route a message without C{target} goes to.
DEFAULT_ROUTE = "default"


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


def due(doc: Any, now: float, gone: Callable[[Doc], bool] | None = None) -> str | None:
    """
    What is due for this document now: C{"new"}, C{"retry"} (a retry whose time has come),
    C{"scheduled"} (a scheduled message whose time has come, or that is cancelled),
    C{"takeover"} (a claim whose lease expired, or whose gateway C{gone} says is gone),
    C{"callback"} (a finished message's callback, to be delivered or tried again), or L{None}
    (nothing: not a message, finished, claimed, or waiting for its time).  A message whose
    C{expires_at} has passed is due, to end C{expired}.  A status couchgw
    never writes counts as new, so that the message is rejected.
    """
    if not is_message(doc):
        return None
    status = doc.get("status")
    if status is None or not isinstance(status, str) or status not in STATUSES:
        return "new"  # an unknown status is rejected as a new message
    if status in ("retrying", "scheduled"):
        at = parse_time(doc.get("next_attempt_at"))
        expires = parse_time(doc.get("expires_at"))
        due_now = (
            at is None
            or at <= now
            or (expires is not None and expires <= now)
            or (status == "scheduled" and doc.get("cancel_requested") is True)
        )
        return ("retry" if status == "retrying" else "scheduled") if due_now else None
    if status == "dispatching":
        claim = doc.get("claim")
        until = parse_time(claim.get("until")) if isinstance(claim, dict) else None
        expired = until is None or until <= now
        return "takeover" if expired or (gone is not None and gone(doc)) else None
    callback = doc.get("callback")
    if isinstance(callback, dict) and isinstance(doc.get("callback_url"), str):
        if callback.get("status") == "pending":
            at = parse_time(callback.get("until"))
        elif callback.get("status") == "retrying":
            at = parse_time(callback.get("next_attempt_at"))
        else:
            return None
        return "callback" if at is None or at <= now else None
    return None


def is_terminal(doc: Any) -> bool:
    """Whether a document has one of the final statuses."""
    status = doc.get("status")
    return isinstance(status, str) and status in TERMINAL


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


def released(before: Doc) -> dict[str, Any]:
    """
    Undo a claim whose call was never started: the message is as it was before (a new message
    new again, without any field only couchgw writes).
    """
    keys = (
        "status",
        "attempts",
        "dispatched_at",
        "error",
        "next_attempt_at",
        "updated_at",
        "trace",
    )
    fields = {key: before.get(key) for key in keys}
    return {**fields, "claim": None}


def route_out(before: Doc, reason: str, now: float) -> dict[str, Any]:
    """
    Give a claim back because its route is out: the message uses no attempt (its attempts are
    as before the claim), and is C{retrying} at once, with why it waits and since when its
    failures began (kept from before).
    """
    error = before.get("error")
    since = error.get("since") if isinstance(error, dict) else None
    return {
        **released(before),
        "status": "retrying",
        "error": {"kind": "transient", "message": reason, "since": since or iso(now)},
        "next_attempt_at": iso(now),
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


def expired(doc: Doc, now: float, why: str | None = None) -> dict[str, Any]:
    """Not called (again): its C{expires_at} came first (C{why}: what else there is to say)."""
    text = f"not called by its expires_at, {doc.get('expires_at')}" + (f"; {why}" if why else "")
    return _terminal("expired", now, error={"kind": "expired", "message": text})


def scheduled(at: float, now: float) -> dict[str, Any]:
    """Called at C{at} (its C{not_before}), not before."""
    return {"status": "scheduled", "next_attempt_at": iso(at), "updated_at": iso(now)}


def retrying(
    kind: str, text: str, now: float, delay: float, since: float | None = None
) -> dict[str, Any]:
    """Called again after C{delay}; C{since}: when the failures in a row began (now)."""
    return {
        "status": "retrying",
        "claim": None,
        "error": {"kind": kind, "message": text, "since": iso(now if since is None else since)},
        "next_attempt_at": iso(now + delay),
        "updated_at": iso(now),
    }


#: Fields CouchDB adds to a document it answers, that are not written back.
_READ_ONLY = frozenset({"_conflicts", "_deleted_conflicts", "_revs_info", "_revisions"})


def _rank(doc: Doc) -> int:
    """How far a revision got: new 0, claimed or retrying 1, terminal 2."""
    if is_terminal(doc):
        return 2
    return 1 if doc.get("status") in ("dispatching", "retrying") else 0


def resolve(winner: Doc, losers: list[Doc]) -> Doc:
    """
    One document from conflicting revisions, to be written over the winning one: couchgw's
    fields from the revision that got furthest (terminal over claimed or retrying over new; the
    winner on a tie), the winner's own fields, and the fields only a losing revision has (a
    client's edit is never lost).
    """
    source = winner
    for loser in losers:
        if _rank(loser) > _rank(source):
            source = loser
    merged = {
        key: value
        for key, value in winner.items()
        if key not in GATEWAY_FIELDS and key not in _READ_ONLY
    }
    for loser in losers:
        for key, value in loser.items():
            if key not in GATEWAY_FIELDS and not key.startswith("_"):
                merged.setdefault(key, value)
    merged.update({key: source[key] for key in GATEWAY_FIELDS if key in source})
    return merged


# -- an operator's actions ------------------------------------------------------------------------


def status_of(doc: Doc) -> str:
    """A message's status as the console names it: C{new} while it has none."""
    status = doc.get("status")
    return status if isinstance(status, str) and status else "new"


def refusal(action: str, doc: Doc) -> str | None:
    """Why an operator's C{action} (C{requeue}, C{cancel}) does not apply (None: it does)."""
    status = status_of(doc)
    allowed = REQUEUEABLE if action == "requeue" else CANCELLABLE
    if status in allowed:
        return None
    return f"a {status} message is not {DONE[action]} (only {', '.join(sorted(allowed))} ones are)"


def requeued(doc: Doc, by: str, now: float) -> dict[str, Any]:
    """
    Send a finished message again: new once more (none of couchgw's fields, so its attempts
    start again), with who did it and when, and what it was before (its status, error,
    attempts and times, the last L{REQUEUES_KEPT} kept in C{requeues}).  A cancel the client
    asked for is dropped, and an C{expires_at} that has passed too (kept in the record).
    """
    before = {key: doc[key] for key in _KEPT if doc.get(key) is not None}
    before.update(status=status_of(doc), by=by, at=iso(now))
    fields: dict[str, Any] = {key: None for key in GATEWAY_FIELDS}
    if doc.get("cancel_requested") is not None:
        before["cancel_requested"] = doc["cancel_requested"]
        fields["cancel_requested"] = None
    expires = parse_time(doc.get("expires_at"))
    if expires is not None and expires <= now:
        before["expires_at"] = doc["expires_at"]
        fields["expires_at"] = None
    earlier = doc.get("requeues")
    history = [e for e in earlier if isinstance(e, dict)] if isinstance(earlier, list) else []
    fields.update(
        requeued_by=by,
        requeued_at=iso(now),
        requeues=[*history, before][-REQUEUES_KEPT:],
    )
    return fields


def cancelled_by(by: str, now: float) -> dict[str, Any]:
    """An operator cancels a message that was not called yet (or waits for a retry)."""
    return {**cancelled(now), "cancelled_by": by, "cancelled_at": iso(now)}


#: What a requeue keeps of the message's outcome before.
_KEPT = ("error", "attempts", "dispatched_at", "completed_at", "trace", "callback")


def apply(doc: Doc, fields: dict[str, Any]) -> Doc:
    """
    A copy of C{doc} with C{fields} written (a L{None} value removes the field), without what
    CouchDB only reports on a read (C{_conflicts}), so that it can be written.
    """
    new = {key: value for key, value in doc.items() if key not in _READ_ONLY}
    for key, value in fields.items():
        if value is None:
            new.pop(key, None)
        else:
            new[key] = value
    return new
