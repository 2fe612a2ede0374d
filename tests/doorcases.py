"""
The guard's corpus: writes, who makes them, over what revision, and what the guard must decide
(None: the write passes; else the reason of CouchDB's 403, word for word): here the fields
couchgw owns, who passes, priorities, times and trace contexts; routes, operations and
arguments in tests/doorroutes.py.  tests/test_door.py runs every case against the guard in
each language, and the new messages of clients against couchgw's own checks (couchgw.message
and the route's target) too.

The routes: C{default}, the demo's SOAP service (activate, configure, ping, refuse); C{named},
the same with C{ping} as its default operation; C{null}, an http route, which does not say what
operations it has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from couchgw.message import ACTION_FIELDS, GATEWAY_FIELDS

#: Users: a client (role "client"), the gateway (role "couchgw"), a server admin, an admin of
#: the database by name and one by role ("ops").
USERS = ("client", "gateway", "admin", "named-admin", "ops")

#: couchgw's own checks refuse it too (the default for a new message of a client), accept it,
#: or do not apply (a write that is not a client's new message).
SAME = "same"
STRICTER = "stricter"
#: couchgw's own checks accept what the guard refuses: the record of an operator's action,
#: which a requeued message (new again) carries, and which only couchgw may write.
LAXER = "laxer"


@dataclass(frozen=True)
class Case:
    what: str
    doc: dict[str, Any]
    #: None: the guard lets the write pass; else its reason.
    refused: str | None = None
    user: str = "client"
    #: The revision written before (by an admin), or None: a new document.
    old: dict[str, Any] | None = None
    #: The revision before was deleted.
    deleted: bool = False
    #: The guard before the routes have loaded.
    loaded: bool = True
    #: What couchgw's own checks decide: SAME, STRICTER (they refuse what the guard, which
    #: checks names and not types, lets pass), or LAXER.
    python: str = SAME

    @property
    def new_message(self) -> bool:
        return (
            self.user == "client"
            and self.old is None
            and not self.deleted
            and self.doc.get("type") == "message"
        )


def message(**fields: Any) -> dict[str, Any]:
    return {"type": "message", "operation": "ping", "text": "hi", **fields}


OWNS = " (a client may create messages and set cancel_requested)"
CLAIMED = message(
    status="dispatching",
    attempts=1,
    claim={"by": "gw-1", "until": "2026-12-02T02:05:00Z"},
    dispatched_at="2026-12-02T02:00:00Z",
    updated_at="2026-12-02T02:00:00Z",
)
REQUEUED = message(
    requeued_by="ops",
    requeued_at="2026-12-02T03:00:00.000Z",
    requeues=[{"status": "failed", "error": {"kind": "fault", "message": "no"}, "attempts": 1}],
)
PRIORITY = (
    'priority must be "high", "medium", "low" or a whole number from 0 to 9 (higher first), not '
)
TRACEPARENT = (
    "traceparent must be a W3C trace context (00-<32 hex digits>-<16 hex digits>-<2 hex digits>, "
    "not all zeros), not "
)
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
ROUTES = "(routes: default, named, null)"
HAS = "(it has: activate, configure, ping, refuse)"


def _time(field_name: str, value: Any) -> str:
    return f"{field_name} must be an ISO 8601 time with its zone, e.g. 2026-12-02T02:00:00Z, not {value}"


def _owned() -> list[Case]:
    cases = [
        Case(
            f"a new message with {name}",
            message(**{name: "x"}),
            f"only couchgw writes {name}{OWNS}",
        )
        for name in GATEWAY_FIELDS
    ]
    cases.extend(
        Case(
            f"a new message with {name}",
            message(**{name: "x"}),
            f"only couchgw writes {name}{OWNS}",
            python=LAXER,
        )
        for name in ACTION_FIELDS
    )
    cases.append(
        Case(
            "a new message with status null",
            message(status=None),
            f"only couchgw writes status{OWNS}",
        )
    )
    return cases


def _updates() -> list[Case]:
    note = {"type": "note", "text": "n"}
    return [
        Case(
            "a client cancels a claimed message", {**CLAIMED, "cancel_requested": True}, old=CLAIMED
        ),
        Case("a client edits its own field", {**CLAIMED, "text": "other"}, old=CLAIMED),
        Case(
            "a client sets status",
            {**CLAIMED, "status": "forwarded"},
            f"only couchgw writes status{OWNS}",
            old=CLAIMED,
        ),
        Case(
            "a client removes status",
            {k: v for k, v in CLAIMED.items() if k != "status"},
            f"only couchgw writes status{OWNS}",
            old=CLAIMED,
        ),
        Case(
            "a client writes the claim in another order",
            {**CLAIMED, "claim": {"until": "2026-12-02T02:05:00Z", "by": "gw-1"}},
            f"only couchgw writes claim{OWNS}",
            old=CLAIMED,
        ),
        Case("attempts 1 written as 1.0", {**CLAIMED, "attempts": 1.0}, old=CLAIMED),
        Case(
            "a client sets a result",
            {**CLAIMED, "result": {"ok": True}},
            f"only couchgw writes result{OWNS}",
            old=CLAIMED,
        ),
        Case(
            "a client says who requeued it",
            {**CLAIMED, "requeued_by": "ops"},
            f"only couchgw writes requeued_by{OWNS}",
            old=CLAIMED,
        ),
        Case(
            "a client rewrites a requeue's record",
            {**REQUEUED, "requeues": []},
            f"only couchgw writes requeues{OWNS}",
            old=REQUEUED,
        ),
        Case("a client edits a requeued message", {**REQUEUED, "text": "again"}, old=REQUEUED),
        Case(
            "a message becomes a note",
            {**CLAIMED, "type": "note"},
            "a message's type cannot be changed",
            old=CLAIMED,
        ),
        Case(
            "a message loses its type",
            {k: v for k, v in message().items() if k != "type"},
            "a message's type cannot be changed",
            old=message(),
        ),
        Case("a note gets a status", {**note, "status": "x"}, old=note),
        Case(
            "a note becomes a message with a status",
            {**note, "type": "message", "status": "x"},
            f"only couchgw writes status{OWNS}",
            old=note,
        ),
        Case(
            "a note becomes a message",
            {**note, "type": "message", "operation": "explode"},
            old=note,
        ),
        Case("a client deletes a message", {"_deleted": True}, old=CLAIMED),
        Case(
            "a deleted message written again with a status",
            message(status="forwarded"),
            f"only couchgw writes status{OWNS}",
            old=message(),
            deleted=True,
        ),
        Case(
            "a deleted message written again, of no route",
            message(operation="explode"),
            f'route "default" has no operation "explode" {HAS}',
            old=message(),
            deleted=True,
        ),
        Case("a client's note with a status", {"type": "note", "status": "x"}),
        Case("a document without a type, with a result", {"result": 1}),
    ]


def _passing() -> list[Case]:
    doc = message(status="forwarded", operation="explode", priority="urgent", result=1)
    return [
        Case("the gateway writes status", doc, user="gateway"),
        Case("a server admin writes status", doc, user="admin"),
        Case("a database admin by name writes status", doc, user="named-admin"),
        Case("a database admin by role writes status", doc, user="ops"),
        Case(
            "the gateway updates a claim",
            {**CLAIMED, "status": "forwarded"},
            user="gateway",
            old=CLAIMED,
        ),
    ]


def _priorities() -> list[Case]:
    good: list[Any] = ["high", "medium", "low", 0, 9, 5.0, None]
    bad: list[tuple[Any, str]] = [
        (10, "10"),
        (-1, "-1"),
        (1.5, "1.5"),
        (9.5, "9.5"),
        (1e21, "1e+21"),
        (0.000001, "0.000001"),
        (1e-7, "1e-7"),
        (12345678901234567890, "12345678901234567000"),
        ("urgent", '"urgent"'),
        ("HIGH", '"HIGH"'),
        ("", '""'),
        ('say "hi"\\\n\t\x01\x7f/é', _json('say "hi"\\\n\t\x01\x7f/é')),
        (True, "true"),
        ({}, "an object"),
        ([], "an array"),
    ]
    return [Case(f"priority {value!r}", message(priority=value)) for value in good] + [
        Case(f"priority {value!r}", message(priority=value), PRIORITY + shown)
        for value, shown in bad
    ]


def _times() -> list[Case]:
    good = [
        "2026-12-02T02:00:00Z",
        "2026-12-02T02:00Z",
        "2026-12-02T02:00:00.123456789+05:30",
        "2026-12-02T02:00:00-00:00",
        "2024-02-29T00:00Z",
        "2000-02-29T23:59:59Z",
        "0001-01-01T00:00Z",
        "9999-12-31T23:59:59+23:59",
    ]
    bad = [
        "2026-02-29T00:00Z",
        "1900-02-29T00:00Z",
        "2026-04-31T00:00Z",
        "2026-13-01T00:00Z",
        "2026-00-10T00:00Z",
        "2026-12-00T00:00Z",
        "2026-12-02T24:00Z",
        "2026-12-02T23:60Z",
        "2026-12-02T23:59:60Z",
        "2026-12-02T02:00:00+05:75",
        "2026-12-02T02:00:00+24:00",
        "0000-01-01T00:00Z",
        "2026-12-02T02:00:00.Z",
        "2026-12-02T02:00.5Z",
        "2026-12-02T02:00:00",
        "2026-12-02T02:00:00z",
        "2026-12-02t02:00Z",
        "2026-12-02",
        " 2026-12-02T02:00Z",
        "2026-12-02T02:00Z\n",
        "2026-12-02T02:00:0Z",
        "\uff12\uff10\uff12\uff16-12-02T02:00Z",  # fullwidth digits
        "tomorrow",
    ]
    cases = [Case(f"requested_at {value!r}", message(requested_at=value)) for value in good]
    for name in ("requested_at", "not_before", "expires_at"):
        cases += [
            Case(f"{name} {value!r}", message(**{name: value}), _time(name, _json(value)))
            for value in bad
        ]
    cases += [
        Case("expires_at 5", message(expires_at=5), _time("expires_at", "5")),
        Case("not_before an object", message(not_before={}), _time("not_before", "an object")),
        Case("requested_at false", message(requested_at=False), _time("requested_at", "false")),
        Case("requested_at null", message(requested_at=None)),
    ]
    never = ": the message could never be called"
    for before, until, refused in [
        ("2026-12-02T02:00Z", "2026-12-02T02:00:00.000001Z", False),
        ("2026-12-02T02:00Z", "2026-12-02T02:00Z", True),
        ("2026-12-02T02:00Z", "2026-12-02T03:00+01:00", True),
        ("2026-12-02T02:00Z", "2026-12-02T03:00:01+01:00", False),
        ("2026-12-02T02:00:00.0000001Z", "2026-12-02T02:00:00.0000002Z", True),
        ("2026-12-03T00:30+01:00", "2026-12-02T23:15Z", True),
        ("2026-12-03T00:30+01:00", "2026-12-02T23:45Z", False),
        ("2026-12-02T02:00Z", "2026-12-01T02:00Z", True),
    ]:
        reason = f"expires_at {until} is not after not_before {before}{never}" if refused else None
        cases.append(
            Case(
                f"not_before {before}, expires_at {until}",
                message(not_before=before, expires_at=until),
                reason,
            )
        )
    return cases


def _traces() -> list[Case]:
    good = [PARENT, "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"]
    bad = [
        "00-abc",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-two words",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-é",
        PARENT + "\n",
    ]
    cases = [Case(f"traceparent {value!r}", message(traceparent=value)) for value in good]
    cases += [
        Case(f"traceparent {value!r}", message(traceparent=value), TRACEPARENT + _json(value))
        for value in bad
    ]
    cases.append(Case("traceparent 5", message(traceparent=5), TRACEPARENT + "5"))
    state = "tracestate must be a string of at most 512 characters"
    astral = "\U0001f600"
    cases += [
        Case("tracestate of 512", message(tracestate="a" * 512)),
        Case("tracestate of 513", message(tracestate="a" * 513), state),
        Case("tracestate of 512 astral characters", message(tracestate=astral * 512)),
        Case("tracestate of 513 astral characters", message(tracestate=astral * 513), state),
        Case("tracestate 5", message(tracestate=5), state),
    ]
    return cases


def _json(value: Any) -> str:
    """A string as JSON writes it (JSON.stringify: non-ASCII as it is)."""
    return json.dumps(value, ensure_ascii=False)


CASES: list[Case] = [
    *_owned(),
    *_updates(),
    *_passing(),
    *_priorities(),
    *_times(),
    *_traces(),
]
