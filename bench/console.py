"""
The console's listings as the database grows: for each size, writes that many messages straight
into a fresh database (finished, in the mix a busy day leaves: most forwarded, some failed,
rejected, expired, cancelled, a few scheduled; five routes; updated over the last day), starts
couchgw on it, and times what the console asks through its API: the first listing (CouchDB
builds the console's index then), then, many times each, the recent messages, the failed ones of
one route, their next page, a page from the middle of everything, a count, a time range, an id
prefix and one message whole; then the first listing after 1,000 messages changed (the index
catches up as it is read).

    .venv/bin/python bench/console.py --messages 100,100000
    .venv/bin/python bench/console.py --couch http://admin:admin@127.0.0.1:18984
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from processes import couch, demo, gateway

from couchgw import console, message
from couchgw.timing import iso
from tests.servers import free_port, http

#: The share of each status among the messages written (the rest forwarded).
MIX = [
    ("failed", 0.10),
    ("rejected", 0.04),
    ("expired", 0.03),
    ("cancelled", 0.02),
    ("scheduled", 0.01),
]
ROUTES = 5
DAY = 86400.0


def document(i: int, n: int, now: float) -> dict[str, Any]:
    """The i-th of n messages, updated at its place in the last day (the last one newest)."""
    at = now - DAY + DAY * (i + 1) / n
    doc: dict[str, Any] = {
        "_id": f"m{i:07d}",
        "type": "message",
        "target": f"route{i % ROUTES}",
        "operation": "ping",
        "args": {"text": f"message {i}"},
    }
    doc = message.apply(doc, message.claimed(doc, "gw-bench", at - 0.2, 600))
    share, status = (i * 7919 % 1000) / 1000, "forwarded"
    for name, part in MIX:
        if share < part:
            status = name
            break
        share -= part
    fields = {
        "forwarded": lambda: message.forwarded({"echo": f"message {i}"}, at),
        "failed": lambda: message.failed("fault", f"account {i} is locked", at),
        "rejected": lambda: message.rejected("operation 'pong' is not one of the route's", at),
        "expired": lambda: message.expired({"expires_at": iso(at)}, at),
        "cancelled": lambda: message.cancelled(at),
        "scheduled": lambda: {
            **message.released({}),
            **message.scheduled(now + 30 * DAY, at),
        },
    }[status]()
    return message.apply(doc, fields)


def timed(url: str) -> tuple[float, Any]:
    start = time.perf_counter()
    status, body = http("GET", url, timeout=3600)
    took = time.perf_counter() - start
    if status != 200:
        raise SystemExit(f"GET {url} answered {status}: {body}")
    return took * 1000, body


def repeated(url: str, times: int) -> str:
    took = sorted(timed(url)[0] for _ in range(times))
    p95 = took[min(len(took) - 1, int(len(took) * 0.95))]
    return f"{statistics.median(took):.1f} / {p95:.1f}"


def measure(server: str, n: int, folder: Path, times: int) -> dict[str, str]:
    name = f"bench-console-{uuid.uuid4().hex[:8]}"
    db = f"{server}/{name}"
    assert http("PUT", db)[0] in (201, 202)
    try:
        now = time.time()
        start = time.perf_counter()
        for first in range(0, n, 5000):
            docs = [document(i, n, now) for i in range(first, min(n, first + 5000))]
            status, rows = http("POST", f"{db}/_bulk_docs", {"docs": docs}, timeout=600)
            assert status == 201 and not any("error" in row for row in rows), rows[:3]
        written = time.perf_counter() - start
        demo_port, api_port = free_port(), free_port()
        parts = [demo(folder, demo_port, 0.0), gateway(folder, db, demo_port, api_port)]
        try:
            for part in parts:
                part.start(wait=True)
            # the gateway's own index (its due view) first: it is built as the gateway starts
            status, _ = http("GET", f"{db}/_design/couchgw/_view/due?limit=1", timeout=3600)
            assert status == 200
            api = f"http://127.0.0.1:{api_port}"
            shown: dict[str, str] = {"messages": f"{n:,}", "written (s)": f"{written:.1f}"}
            first_ms, _ = timed(f"{api}/messages?limit=50")
            shown["first listing: the index built (s)"] = f"{first_ms / 1000:.1f}"
            failed = f"{api}/messages?status=failed&route=route3&limit=50"
            _, page = timed(failed)
            middle = n // 2
            at = int((now - DAY + DAY * (middle + 1) / n) * 1000)
            deep = console.cursor_text([at, f"m{middle:07d}"])
            prefix = f"m{middle:07d}"[:-2]
            queries = {
                "recent 50": f"{api}/messages?limit=50",
                "failed of one route, 50": failed,
                "their next page": failed + (f"&cursor={page['next']}" if page["next"] else ""),
                "50 from the middle of all": f"{api}/messages?limit=50&cursor={deep}",
                "count of the failed": f"{api}/messages?status=failed&count=1&limit=1",
                "failed in the last hour": f"{api}/messages?status=failed&since=1h&limit=50",
                "id prefix (100 ids)": f"{api}/messages?q={prefix}&limit=50",
                "one message whole": f"{api}/messages/{quote(f'm{middle:07d}')}",
            }
            for label, url in queries.items():
                shown[f"{label}: median / p95 (ms)"] = repeated(url, times)
            changed = []
            for i in range(0, min(n, 1000)):
                _, doc = http("GET", f"{db}/m{i:07d}")
                changed.append({**doc, "note": "changed"})
            assert http("POST", f"{db}/_bulk_docs", {"docs": changed}, timeout=600)[0] == 201
            after_ms, _ = timed(f"{api}/messages?limit=50")
            shown[f"recent 50 after {len(changed):,} changed (ms)"] = f"{after_ms:.1f}"
            _, info = http("GET", f"{db}/_design/{console.DDOC}/_info")
            sizes = (info.get("view_index") or {}).get("sizes") or {}
            if sizes:
                shown["index size on disk (MB)"] = f"{sizes.get('file', 0) / 1e6:.1f}"
            return shown
        finally:
            for part in reversed(parts):
                part.stop()
    finally:
        http("DELETE", db)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--couch", help="a CouchDB server, with an admin's credentials (default: PouchDB Server)"
    )
    parser.add_argument("--messages", default="100,100000", help="sizes, comma-separated")
    parser.add_argument("--times", type=int, default=30, help="repetitions of each listing")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="couchgw-console-"))
    server_part = None
    server = args.couch.rstrip("/") if args.couch else None
    if server is None:
        port = free_port()
        server_part = couch(folder, port, True)
        server_part.start(wait=True)
        server = f"http://127.0.0.1:{port}"
    try:
        load = os.getloadavg()
        _, welcome = http("GET", server)
        print(
            f"{welcome.get('vendor', {}).get('name', 'CouchDB')} {welcome.get('version')}, "
            f"load average at the start {load[0]:.1f}"
        )
        rows = [measure(server, int(n), folder, args.times) for n in args.messages.split(",")]
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        print("| figure | " + " | ".join(row["messages"] for row in rows) + " |")
        print("|---" * (len(rows) + 1) + "|")
        for key in rows[-1]:
            if key != "messages":
                print(f"| {key} | " + " | ".join(row.get(key, "-") for row in rows) + " |")
    finally:
        if server_part is not None:
            server_part.stop()


if __name__ == "__main__":
    main()
