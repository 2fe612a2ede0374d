"""
The end-to-end cluster case, run again and again: three `twistd couchgw` processes, one per node
of a CouchDB cluster, drain N messages to the demo's JSON target, which logs every call by
message id.  Each run prints one JSON line: duplicate calls, statuses, conflicts left, seconds,
and how the gateways' claims went (taken at once, confirmed, lost).

    .venv/bin/python bench/cluster_runs.py URL1,URL2,URL3 [--runs 5] [--messages 1000]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import http, stop  # noqa: E402
from tests.test_e2e import wait_terminal  # noqa: E402
from tests.test_on_cluster import conflicted, gateways_per_node  # noqa: E402


def run(urls: list[str], messages: int, folder: Path) -> dict[str, Any]:
    name = f"runs-{uuid.uuid4().hex[:8]}"
    assert http("PUT", f"{urls[0]}/{name}?n=3&q=2")[0] in (201, 202)
    log = folder / "target.log"
    gateways, demo = gateways_per_node(folder, urls, name, log)
    try:
        ids = [f"m{i:05d}" for i in range(messages)]
        began = time.monotonic()
        for first in range(0, messages, 250):
            docs = [
                {"_id": i, "type": "message", "target": "null", "operation": "ping"}
                for i in ids[first : first + 250]
            ]
            url = urls[first // 250 % len(urls)]
            assert http("POST", f"{url}/{name}/_bulk_docs", {"docs": docs}, 120)[0] in (201, 202)
        docs = wait_terminal(f"{urls[0]}/{name}", ids, 3600)
        seconds = time.monotonic() - began
        answers: Counter[str] = Counter()
        for gateway in gateways:
            _, status = http("GET", f"{gateway.api}/status", timeout=30)
            answers.update(status.get("claims", {}))
        deadline = time.monotonic() + 120
        left = conflicted(urls, name)
        while left and time.monotonic() < deadline:
            time.sleep(1)
            left = conflicted(urls, name)
        calls = Counter(re.findall(r"call json ping id=(m\d+)", log.read_text()))
        return {
            "messages": messages,
            "seconds": round(seconds, 1),
            "duplicate calls": sum(n - 1 for n in calls.values()),
            "never called": len(set(ids) - set(calls)),
            "statuses": dict(Counter(doc["status"] for doc in docs.values())),
            "conflicts left": len(left),
            "claims": dict(answers),
        }
    finally:
        for gateway in gateways:
            stop(gateway.process)
        stop(demo)
        http("DELETE", f"{urls[0]}/{name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("urls", help="the cluster's nodes, comma-separated, with credentials")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    urls = [u.rstrip("/") for u in args.urls.split(",")]
    for n in range(args.runs):
        folder = Path(tempfile.mkdtemp(prefix=f"couchgw-cluster-run{n + 1}-"))
        print(json.dumps({"run": n + 1, **run(urls, args.messages, folder)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
