"""
Scheduled delivery and what priorities and traces cost, on a CouchDB server.

    .venv/bin/python bench/plans.py --couch http://admin:admin@127.0.0.1:15984
    .venv/bin/python bench/plans.py --couch URL --scheduled 500 --messages 5000

Real processes on localhost: the demo (its JSON operations, answered at once) and couchgw
(twistd).  Three figures:

- scheduled: C{--scheduled} messages with C{not_before} spread over ten seconds, written while a
  gateway runs; once all are C{scheduled}, that gateway is stopped and another started (the
  periodic sweep set to ten minutes, so that only its wake-up timer can call them).  Each call
  is C{stamp}, which answers when it reached the target: the lateness is that time minus
  C{not_before}.
- priorities: C{--messages} written before couchgw starts, a third each high, medium and low,
  drained; the rate, beside the same drain without priorities.
- traces: the same drain with tracing on (OTLP over HTTP to a local collector that answers 200
  and keeps nothing): the rate, and the spans it received.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import processes  # noqa: E402
from bench.backlog import drain  # noqa: E402
from bench.suite import null_route  # noqa: E402
from couchgw.timing import iso  # noqa: E402
from tests.servers import free_port, http, wait_until  # noqa: E402


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector that counts what it is sent, and keeps nothing."""

    requests = 0
    bytes = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        type(self).requests += 1
        type(self).bytes += length
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _docs(db: str, docs: list[dict[str, Any]]) -> None:
    for first in range(0, len(docs), 1000):
        status, _ = http("POST", f"{db}/_bulk_docs", {"docs": docs[first : first + 1000]}, 120)
        assert status == 201, status


def _rows(db: str, status: str) -> list[dict[str, Any]]:
    key = json.dumps(status)
    _, body = http(
        "GET",
        f"{db}/_design/couchgw/_view/by_status?key={key}&reduce=false&include_docs=true",
        timeout=600,
    )
    return [row["doc"] for row in body["rows"]]


def scheduled(couch: str, folder: Path, demo_port: int, count: int) -> dict[str, Any]:
    db = f"{couch}/plans-{uuid.uuid4().hex[:6]}"
    assert http("PUT", db)[0] in (201, 202)
    routes = folder / "routes.toml"
    first = processes.gateway(folder, db, demo_port, free_port(), "--routes", str(routes))
    first.start(wait=True)
    start = time.time() + 10
    due = {f"s{i:05d}": start + 10 * i / count for i in range(count)}
    _docs(
        db,
        [
            {"_id": doc_id, "type": "message", "target": "null", "operation": "stamp",
             "not_before": iso(at)}
            for doc_id, at in due.items()
        ],
    )  # fmt: skip
    wait_until(lambda: len(_rows(db, "scheduled")) == count, 60, "every message scheduled")
    first.stop()
    second = processes.gateway(
        folder, db, demo_port, free_port(), "--routes", str(routes), "--sweep", "600"
    )
    second.start(wait=True)
    try:
        wait_until(lambda: len(_rows(db, "forwarded")) == count, 120, "every message called")
        docs = _rows(db, "forwarded")
    finally:
        second.stop()
    late = sorted(doc["result"]["at"] - due[doc["_id"]] for doc in docs)
    return {
        "messages": count,
        "called before their time": sum(1 for seconds in late if seconds < -0.001),
        "lateness p50 (ms)": round(1000 * late[len(late) // 2], 1),
        "lateness p99 (ms)": round(1000 * late[int(len(late) * 0.99)], 1),
        "lateness max (ms)": round(1000 * late[-1], 1),
    }


def drained(
    couch: str,
    folder: Path,
    demo_port: int,
    messages: int,
    priorities: bool,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    db = f"{couch}/plans-{uuid.uuid4().hex[:6]}"
    assert http("PUT", db)[0] in (201, 202)
    own = folder / db.rsplit("/", 1)[1]  # a log of its own: the drain counts its lines
    own.mkdir()
    names = ["high", "medium", "low"]
    _docs(
        db,
        [
            {"_id": f"d{i:07d}", "type": "message", "target": "null", "operation": "ping",
             **({"priority": names[i % 3]} if priorities else {})}
            for i in range(messages)
        ],
    )  # fmt: skip
    gateway = processes.gateway(
        own, db, demo_port, free_port(), "--routes", str(folder / "routes.toml"), env=env
    )
    try:
        figures = drain(gateway, messages, progress=False)
    finally:
        gateway.stop()
    return {
        "messages per second": round(messages / figures["seconds"], 1),
        "couchgw CPU per message (ms)": round(1000 * figures["cpu (s)"] / messages, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--couch", required=True, help="the server's URL, an admin's in it")
    parser.add_argument("--scheduled", type=int, default=500)
    parser.add_argument("--messages", type=int, default=5000)
    options = parser.parse_args()
    couch = options.couch.rstrip("/")
    folder = Path(tempfile.mkdtemp(prefix="couchgw-plans-"))
    demo_port = free_port()
    demo = processes.demo(folder, demo_port, delay=0.1)
    demo.start(wait=True)
    (folder / "routes.toml").write_text(null_route(f"http://127.0.0.1:{demo_port}/json"))
    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    report: dict[str, Any] = {}
    try:
        report["scheduled, across a restart"] = scheduled(
            couch, folder, demo_port, options.scheduled
        )
        report["drain"] = drained(couch, folder, demo_port, options.messages, False)
        report["drain, a third each high, medium, low"] = drained(
            couch, folder, demo_port, options.messages, True
        )
        endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
        report["drain, tracing on"] = drained(
            couch, folder, demo_port, options.messages, False,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint},
        )  # fmt: skip
        report["drain, tracing on"]["OTLP requests"] = _Collector.requests
        report["drain, tracing on"]["OTLP bytes per message"] = round(
            _Collector.bytes / options.messages, 1
        )
    finally:
        demo.stop()
        collector.shutdown()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
