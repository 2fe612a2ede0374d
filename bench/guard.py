"""
What couchgw's guard costs each write, on one CouchDB server: documents per second written with
C{_bulk_docs} of 500, without a validate function, with an empty one, and with the guard.

    .venv/bin/python bench/guard.py --couch http://admin:admin@127.0.0.1:15984
    .venv/bin/python bench/guard.py --couch URL --variants none,javascript,erlang-empty,erlang

Three writes each message sees, each by the user who makes it: a client's new message (the
guard's every check), the gateway's claim of it (a user with the couchgw role: passed at once),
and a client's edit of the claimed message (C{cancel_requested}: the fields couchgw owns are
compared with the revision before).  Variants: C{none}, C{empty} (an empty JavaScript function:
what the engine itself costs), C{javascript} (the guard), and where the server enables Erlang
design functions, C{erlang-empty} and C{erlang}.  The databases and
users it makes are deleted at the end, also when it fails or is interrupted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.leftovers import Leftovers  # noqa: E402
from couchgw.connections import split_credentials  # noqa: E402
from couchgw.couch.client import Doc  # noqa: E402
from couchgw.targets import door  # noqa: E402
from tests.servers import http  # noqa: E402

EMPTY = {
    "empty": ("javascript", "function (newDoc, oldDoc, userCtx, secObj) {}"),
    "erlang-empty": ("erlang", "fun(_, _, _, _) -> 1 end."),
}


class _Described:
    """A route as the guard sees it: the demo's operations."""

    def __init__(self, operations: dict[str, list[dict[str, Any]]]) -> None:
        self.operations = operations

    def describe(self) -> dict[str, Any]:
        return {"default_operation": None, "operations": self.operations}


ROUTES: Any = {
    "default": _Described(
        {
            "activate": [
                {"name": "network", "required": True},
                {"name": "count", "required": True},
            ],
            "ping": [{"name": "text", "required": False}],
            "refuse": [{"name": "reason", "required": False}],
        }
    )
}


def guard(variant: str) -> list[Doc]:
    """The design documents of C{variant}, in the order to write them."""
    if variant == "none":
        return []
    if variant in EMPTY:
        language, function = EMPTY[variant]
        return [{"_id": door.DOOR_ID, "language": language, "validate_doc_update": function}]
    return door.design_docs(ROUTES, variant)


def bulk(url: str, docs: list[Doc]) -> list[Doc]:
    status, answer = http("POST", f"{url}/_bulk_docs", {"docs": docs}, timeout=300)
    assert status == 201, (status, answer)
    refused = [row for row in answer if "error" in row]
    assert not refused, refused[:3]
    return [
        {**doc, "_id": row["id"], "_rev": row["rev"]} for doc, row in zip(docs, answer, strict=True)
    ]


def timed(url: str, docs: list[Doc], batch: int) -> tuple[float, list[Doc]]:
    """Documents per second writing C{docs} in batches; answers them as written."""
    written: list[Doc] = []
    started = time.monotonic()
    for first in range(0, len(docs), batch):
        written.extend(bulk(url, docs[first : first + batch]))
    return len(docs) / (time.monotonic() - started), written


def measure(made: Leftovers, couch: str, variant: str, docs: int, batch: int) -> dict[str, float]:
    suffix = uuid.uuid4().hex[:6]
    db = made.database(f"{couch}/guardbench-{variant}-{suffix}")
    security = {
        "admins": {"names": [], "roles": ["couchgw"]},
        "members": {"names": [], "roles": ["couchgw", "client"]},
    }
    assert http("PUT", f"{db}/_security", security)[0] == 200
    for installed in guard(variant):
        status, answer = http("PUT", f"{db}/{installed['_id']}", installed)
        assert status == 201, (status, answer)
    clean = split_credentials(db, {})[0]
    client = clean.replace("://", f"://{CLIENT}:{PASSWORD}@", 1)
    gateway = clean.replace("://", f"://{GATEWAY}:{PASSWORD}@", 1)
    new = [
        {
            "_id": f"m{i:07d}",
            "type": "message",
            "operation": "activate",
            "args": {"network": "north", "count": i % 10 + 1},
            "priority": "high",
            "requested_at": "2026-12-02T02:00:00Z",
        }
        for i in range(docs)
    ]
    rates: dict[str, float] = {}
    rates["new messages, by a client"], written = timed(client, new, batch)
    claims = [
        {
            **doc,
            "status": "dispatching",
            "attempts": 1,
            "claim": {"by": "gw-1", "until": "2026-12-02T02:05:00Z"},
            "dispatched_at": "2026-12-02T02:00:00Z",
            "updated_at": "2026-12-02T02:00:00Z",
        }
        for doc in written
    ]
    rates["claims, by the gateway"], written = timed(gateway, claims, batch)
    edits = [{**doc, "cancel_requested": True} for doc in written]
    rates["edits of claimed messages, by a client"], _ = timed(client, edits, batch)
    http("DELETE", db, timeout=60)
    made.forget(db)
    return rates


CLIENT = f"bench-client-{uuid.uuid4().hex[:6]}"
GATEWAY = f"bench-gw-{uuid.uuid4().hex[:6]}"
PASSWORD = uuid.uuid4().hex


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--couch", required=True, help="the server's URL, an admin's in it")
    parser.add_argument("--docs", type=int, default=5000, help="documents per measurement")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant (median)")
    parser.add_argument("--variants", default="none,empty,javascript")
    options = parser.parse_args()
    couch = options.couch.rstrip("/")
    _, versions = http("GET", f"{couch}/_node/_local/_versions")
    engine = (versions or {}).get("javascript_engine", {}) if isinstance(versions, dict) else {}
    print(f"JavaScript engine: {engine.get('name', 'unknown')} {engine.get('version', '')}")
    results: dict[str, dict[str, list[float]]] = {}
    with Leftovers() as made:
        made.user(couch, CLIENT, PASSWORD, ["client"])
        made.user(couch, GATEWAY, PASSWORD, ["couchgw"])
        for _ in range(options.repeat):
            for variant in options.variants.split(","):
                rates = measure(made, couch, variant, options.docs, options.batch)
                for what, rate in rates.items():
                    results.setdefault(variant, {}).setdefault(what, []).append(rate)
    print(f"documents/s, median of {options.repeat} (lowest-highest), {options.docs} each:")
    for variant, measured in results.items():
        print(f"  {variant}")
        for what, each in measured.items():
            low, high = min(each), max(each)
            print(f"    {what:<42} {statistics.median(each):>7.0f} ({low:.0f}-{high:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
