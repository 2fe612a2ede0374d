"""
couchgw measured against the limits of its own parts, side by side in one run.

    .venv/bin/python bench/suite.py                      # prints a table, writes bench-results.json
    .venv/bin/python bench/suite.py --messages 2000 --out /tmp/results.json

It starts PouchDB Server (in memory) and the demo SOAP service, then measures:

1. raw CouchDB: single-document POSTs over 1 and 8 kept-alive connections, and `_bulk_docs` of
   500: documents per second (the physical limit the gateway works against);
2. backlog drain: N messages written first, then couchgw (`--threads P`) started: messages per
   second from its start to the last `forwarded`, and that rate over the raw single-document rate;
3. SOAP path: the bare suds-community call rate against the demo's `ping` in a plain loop with P
   threads, and the drain rate of (2), which goes through the same operation: their ratio.

Each figure is a ratio measured in the same run, so that it holds on a noisy machine; the
absolute numbers are printed beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import processes  # noqa: E402
from bench.backlog import drain, write_backlog  # noqa: E402
from tests.servers import free_port, http  # noqa: E402


def in_threads(threads: int, work: Any) -> float:
    """Run C{work(index)} in C{threads} threads at once; answers the seconds they took."""
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            work(index)
        except BaseException as e:  # reported below, in the main thread
            errors.append(e)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return time.monotonic() - started


def single_posts(port: int, db: str, docs: int, connections: int) -> float:
    """Documents per second written one POST at a time over kept-alive connections."""
    per = docs // connections

    def post(index: int) -> None:
        connection = HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(per):
            body = json.dumps({"_id": f"raw-{connections}-{index}-{i}", "n": i})
            connection.request("POST", f"/{db}", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            assert response.status == 201, response.status
        connection.close()

    return per * connections / in_threads(connections, post)


def bulk_posts(url: str, docs: int, batch: int = 500) -> float:
    """Documents per second written with C{_bulk_docs} of C{batch}."""
    started = time.monotonic()
    for _ in range(0, docs, batch):
        chunk = [{"_id": f"bulk-{uuid.uuid4().hex}", "n": i} for i in range(batch)]
        status, _ = http("POST", f"{url}/_bulk_docs", {"docs": chunk}, timeout=120)
        assert status == 201, status
    return docs / (time.monotonic() - started)


def bare_suds(wsdl: str, calls: int, threads: int) -> float:
    """Calls per second of a plain suds loop on the demo's C{ping}, one client per thread."""
    from suds.client import Client

    from couchgw.soap import clone

    loaded = Client(wsdl)
    per = calls // threads

    def loop(index: int) -> None:
        client = clone(loaded)
        for i in range(per):
            client.service.ping(f"{index}-{i}")

    return per * threads / in_threads(threads, loop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="backlog of (2)")
    parser.add_argument("--threads", type=int, default=20, help="P: SOAP threads")
    parser.add_argument("--out", default="bench-results.json", help="where the JSON goes")
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="couchgw-suite-"))
    couch_port, demo_port, api_port = free_port(), free_port(), free_port()
    couch = f"http://127.0.0.1:{couch_port}"
    pouchdb = processes.couch(folder, couch_port, on_disk=False)
    demo = processes.demo(folder, demo_port, delay=0.1)
    db = f"{couch}/backlog"
    gateway = processes.gateway(folder, db, demo_port, api_port, "--threads", str(options.threads))
    wsdl = f"http://127.0.0.1:{demo_port}/?wsdl"
    figures: dict[str, Any] = {}
    try:
        pouchdb.start(wait=True)
        demo.start(wait=True)
        http("PUT", f"{couch}/raw")
        print("1. raw CouchDB ...", flush=True)
        figures["raw: single POSTs, 1 connection (docs/s)"] = single_posts(
            couch_port, "raw", 2000, 1
        )
        figures["raw: single POSTs, 8 connections (docs/s)"] = single_posts(
            couch_port, "raw", 4000, 8
        )
        figures["raw: _bulk_docs of 500 (docs/s)"] = bulk_posts(f"{couch}/raw", 10_000)

        print(f"2. backlog drain of {options.messages} ...", flush=True)
        http("PUT", db)
        write_backlog(db, options.messages)
        drained = drain(gateway, options.messages, progress=False)
        gateway.stop()
        drain_rate = options.messages / drained["seconds"]
        figures["drain (messages/s)"] = drain_rate
        figures["drain: peak RSS (MB)"] = drained["peak rss (MB)"]
        single = figures["raw: single POSTs, 1 connection (docs/s)"]
        figures["drain / raw single-document rate"] = drain_rate / single

        print(f"3. bare suds loop, {options.threads} threads ...", flush=True)
        suds_rate = bare_suds(wsdl, 4000, options.threads)
        figures[f"bare suds loop, {options.threads} threads (calls/s)"] = suds_rate
        figures["gateway SOAP rate / bare suds rate"] = drain_rate / suds_rate
    finally:
        for process in (gateway, demo, pouchdb):
            process.stop()

    targets = {
        "drain / raw single-document rate": 2.0,
        "gateway SOAP rate / bare suds rate": 0.8,
    }
    width = max(len(name) for name in figures)
    print(f"\n{'figure':<{width}}  {'measured':>10}  target")
    for name, value in figures.items():
        target = targets.get(name)
        mark = "" if target is None else f"≥ {target}  {'met' if value >= target else 'NOT met'}"
        print(f"{name:<{width}}  {value:>10.2f}  {mark}")
    Path(options.out).write_text(
        json.dumps({name: round(value, 3) for name, value in figures.items()}, indent=2) + "\n"
    )
    print(f"\nwritten to {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
