"""
What each kind of request a served database costs CouchDB: the CPU of the server's process and
its children (read from /proc: run it on the server's machine) per database, over many small
databases, each request made once in each, eight at a time.

    .venv/bin/python bench/requests.py --couch http://admin:admin@127.0.0.1:15984
    .venv/bin/python bench/requests.py --couch URL --databases 300 --q 1

The databases it makes are deleted at the end, also when it fails or is interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.leftovers import Leftovers  # noqa: E402
from bench.suite import listening_pid, process_tree_cpu  # noqa: E402
from bench.tenants import in_parallel  # noqa: E402
from couchgw.couch.design import NEW_SELECTOR  # noqa: E402
from tests.servers import http  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--couch", required=True, help="the server, with admin credentials")
    parser.add_argument("--databases", type=int, default=300)
    parser.add_argument("--q", type=int, default=None, help="shards of each database")
    options = parser.parse_args()
    couch = options.couch.rstrip("/")
    server = listening_pid(urlsplit(couch).port or 5984)
    if server is None:
        parser.error("the server must run on this machine (its CPU is read from /proc)")
    made = Leftovers()
    suffix = uuid.uuid4().hex[:8]
    names = [f"{couch}/requests{i:04d}-{suffix}" for i in range(options.databases)]
    shards = f"?q={options.q}" if options.q else ""
    try:
        in_parallel(names, lambda db: made.database(db + shards), threads=8)
        messages = [{"_id": f"m{j}", "type": "message", "operation": "ping"} for j in range(10)]
        in_parallel(names, lambda db: http("POST", f"{db}/_bulk_docs", {"docs": messages}), 8)
        selector = {"selector": NEW_SELECTOR}
        feed = "_changes?filter=_selector&include_docs=true&since=0"
        kinds: list[tuple[str, Callable[[str, int], Any]]] = [
            ("GET the database (its information)", lambda db, n: http("GET", db)),
            ("GET _security", lambda db, n: http("GET", f"{db}/_security")),
            ("GET a design document (missing)", lambda db, n: http("GET", f"{db}/_design/x")),
            ("GET a _local document (missing)", lambda db, n: http("GET", f"{db}/_local/x")),
            ("PUT a _local document", lambda db, n: http("PUT", f"{db}/_local/c{n}", {"a": 1})),
            (
                "a feed of 10 messages, read once",
                lambda db, n: http("POST", f"{db}/{feed}", selector),
            ),
            (
                "the same, continuous with timeout=50",
                lambda db, n: http("POST", f"{db}/{feed}&feed=continuous&timeout=50", selector),
            ),
            (
                "the same, continuous with timeout=10",
                lambda db, n: http("POST", f"{db}/{feed}&feed=continuous&timeout=10", selector),
            ),
            (
                "_bulk_docs of 10 new documents",
                lambda db, n: http(
                    "POST", f"{db}/_bulk_docs", {"docs": [{"_id": f"n{n}-{j}"} for j in range(10)]}
                ),
            ),
        ]
        print(f"{options.databases} databases, q = {options.q or 'the server default'}")
        for round_ in range(2):
            for label, request in kinds:
                before, started = process_tree_cpu(server), time.monotonic()
                in_parallel(names, lambda db, r=request, n=round_: r(db, n), threads=8)
                cpu = (process_tree_cpu(server) - before) / len(names) * 1000
                wall = (time.monotonic() - started) / len(names) * 1000
                print(f"{label:45} {cpu:6.2f} ms of CPU per database  ({wall:5.2f} ms wall)")
    finally:
        made.remove()


if __name__ == "__main__":
    main()
