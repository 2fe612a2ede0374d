"""
What each kind of request a served database costs CouchDB: the CPU of the server's process and
its children (read from /proc: run it on the server's machine) per database, over many small
databases, each request made once in each, eight at a time.

    .venv/bin/python bench/requests.py --couch http://admin:admin@127.0.0.1:15984
    .venv/bin/python bench/requests.py --couch URL --databases 300 --q 1
    .venv/bin/python bench/requests.py --couch URL --databases 1000 --least   # only the least

Then the least a gateway must ask of CouchDB to forward a message, and what that costs per
message in databases of 10 and in one database of them all: one read of the new messages (the
feed), one write of their claims, one write of their outcomes, over kept-alive connections.  The
ratio of the two bounds how close a gateway serving many small databases can come to its drain
of one database, whatever it does besides.

The databases it makes are deleted at the end, also when it fails or is interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.leftovers import Leftovers  # noqa: E402
from bench.suite import addressed, listening_pid, process_tree_cpu  # noqa: E402
from bench.tenants import in_parallel  # noqa: E402
from couchgw.couch.design import NEW_SELECTOR  # noqa: E402
from tests.servers import http  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--couch", required=True, help="the server, with admin credentials")
    parser.add_argument("--databases", type=int, default=300)
    parser.add_argument("--q", type=int, default=None, help="shards of each database")
    parser.add_argument("--least", action="store_true", help="only the least a gateway asks")
    parser.add_argument("--page", type=int, default=100, help="its page in one database")
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
        if options.least:
            least(couch, server, names, made, shards, options.page)
            return
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
        least(couch, server, names, made, shards, options.page)
    finally:
        made.remove()


class KeptAlive:
    """Blocking JSON requests over one kept-alive connection per thread."""

    def __init__(self, couch: str) -> None:
        self.host, self.port, self.headers = addressed(couch)
        self.headers["Accept"] = "application/json"
        self.local = threading.local()

    def __call__(self, method: str, path: str, body: Any = None, missing: bool = False) -> Any:
        """The decoded answer (with C{missing}, a 404 is one too)."""
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = HTTPConnection(self.host, self.port, timeout=60)
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, data, self.headers)
        response = connection.getresponse()
        answer = json.loads(response.read())
        if response.status >= 400 and not (missing and response.status == 404):
            raise RuntimeError(f"{method} {path}: {response.status} {answer}")
        return answer


def forward(request: KeptAlive, path: str, page: int, required: bool = False) -> int:
    """
    What a gateway asks at least to forward the new messages of one database, C{page} at a
    time: their feed, their claims, their outcomes; with C{required}, what couchgw must ask of
    each database besides: its security object (its guard follows it), its checkpoint, read
    before and saved before its messages are claimed.  Answers how many it forwarded.
    """
    if required:
        request("GET", f"{path}/_security")
        request("GET", f"{path}/_local/least", missing=True)
    selector = {"selector": NEW_SELECTOR}
    since: Any = 0
    forwarded = 0
    while True:
        feed = request(
            "POST",
            f"{path}/_changes?filter=_selector&include_docs=true&since={since}&limit={page}",
            selector,
        )
        docs = [row["doc"] for row in feed["results"]]
        if not docs:
            return forwarded
        if required and since == 0:
            request("PUT", f"{path}/_local/least", {"seq": feed["last_seq"]})
        since = feed["last_seq"]
        for status in ("calling", "forwarded"):
            for doc in docs:
                doc["status"] = status
            answers = request("POST", f"{path}/_bulk_docs", {"docs": docs})
            for doc, answer in zip(docs, answers, strict=True):
                doc["_rev"] = answer["rev"]
        forwarded += len(docs)


def least(
    couch: str, server: int, names: list[str], made: Leftovers, shards: str, page: int = 100
) -> None:
    """
    The least a gateway asks per message: one database of them all, many databases of 10, and
    those with what couchgw must ask of each database besides.
    """
    request = KeptAlive(couch)
    one = f"{couch}/requests-one-{uuid.uuid4().hex[:8]}"
    made.database(one + shards)
    total = 10 * len(names)
    for start in range(0, total, 500):
        docs = [
            {"_id": f"m{j:06d}", "type": "message", "operation": "ping", "route": "null"}
            for j in range(start, min(total, start + 500))
        ]
        http("POST", f"{one}/_bulk_docs", {"docs": docs})
    messages = [
        {"_id": f"m{j}", "type": "message", "operation": "ping", "route": "null"} for j in range(10)
    ]
    sets = [[f"{db}-{kind}" for db in names] for kind in ("least", "required")]
    for fresh in sets:
        in_parallel(fresh, lambda db: made.database(db + shards), threads=8)
        in_parallel(fresh, lambda db: http("POST", f"{db}/_bulk_docs", {"docs": messages}), 8)

    def path_of(url: str) -> str:
        return urlsplit(url).path

    def many(fresh: list[str], required: bool) -> Callable[[], None]:
        paths = [path_of(db) for db in fresh]
        return lambda: in_parallel(paths, lambda path: forward(request, path, 10, required), 8)

    print("the least a gateway asks: a feed read, a write of claims, a write of outcomes")
    figures = {}
    for label, work in (
        (f"one database of {total}, pages of {page}", lambda: forward(request, path_of(one), page)),
        (f"{len(names)} databases of 10", many(sets[0], False)),
        ("the same, and their security, checkpoints", many(sets[1], True)),
    ):
        before = process_tree_cpu(server)
        work()
        figures[label] = (process_tree_cpu(server) - before) / total * 1000
        print(f"{label:45} {figures[label]:6.2f} ms of CPU per message")
    single, *others = figures.values()
    ratios = " and ".join(f"{other / single:.2f}" for other in others)
    print(f"CouchDB's CPU per message, many databases / one: {ratios}")


if __name__ == "__main__":
    main()
