"""
Drain a backlog: N messages written before couchgw starts, and couchgw's memory while it drains.

    .venv/bin/python bench/backlog.py                    # 100,000 messages
    .venv/bin/python bench/backlog.py --messages 10000

Real processes on localhost: PouchDB Server (in memory), the demo SOAP service and one couchgw
(twistd).  The messages are written first (ping, answered at once); then couchgw starts and the
run samples its resident memory (VmRSS) until every message is forwarded.  It prints the peak
and exits 0 if it stayed under --max-rss megabytes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import processes  # noqa: E402
from tests.servers import free_port, http  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_backlog(db: str, messages: int, **fields: Any) -> float:
    """
    Write C{messages} ping messages (with C{fields}, e.g. C{target}) with C{_bulk_docs}; answers
    the seconds it took.
    """
    started = time.monotonic()
    for first in range(0, messages, 1000):
        docs = [
            {"_id": f"b{i:07d}", "type": "message", "operation": "ping", "text": f"m{i}", **fields}
            for i in range(first, min(first + 1000, messages))
        ]
        status, _ = http("POST", f"{db}/_bulk_docs", {"docs": docs}, timeout=120)
        assert status == 201, status
    return time.monotonic() - started


def drain(
    gateway: processes.Process | list[processes.Process],
    messages: int,
    progress: bool = True,
    from_ready: bool = False,
) -> dict[str, float]:
    """
    Start couchgw (one process or several) and wait until they have forwarded C{messages},
    sampling the memory of the first; answers the seconds from their start (with
    C{from_ready}: from when the first answers C{/ready}, its routes loaded and its feed
    connected), and RSS figures.
    """
    gateways = gateway if isinstance(gateway, list) else [gateway]
    began = time.monotonic()
    for each in gateways:
        each.start()
    first = gateways[0].process
    assert first is not None
    pid = first.pid
    if from_ready:
        while not processes.up(gateways[0].ready, timeout=0.5):
            if first.poll() is not None:
                raise SystemExit(f"couchgw exited; see {gateways[0].log}")
            time.sleep(0.01)
    started = time.monotonic()
    peak, samples, forwarded, last_report = 0.0, [], 0, 0.0
    readers = [each.log.open("rb") for each in gateways]
    carries = [b""] * len(readers)
    try:
        while forwarded < messages:
            for each in gateways:
                if each.process is None or each.process.poll() is not None:
                    raise SystemExit(f"couchgw exited; see {each.log}")
            rss = rss_mb(pid)
            peak = max(peak, rss)
            samples.append(rss)
            # couchgw logs each outcome; counting those lines costs CouchDB nothing
            for n, reader in enumerate(readers):
                text = carries[n] + reader.read()
                cut = text.rfind(b"\n") + 1
                forwarded += text[:cut].count(b" forwarded on route ")
                carries[n] = text[cut:]
            now = time.monotonic() - started
            if progress and now - last_report >= 10:
                last_report = now
                print(
                    f"{now:7.1f}s forwarded {forwarded:7d}  rss {rss:6.1f} MB  peak {peak:6.1f} MB"
                )
            time.sleep(0.2)
    finally:
        for reader in readers:
            reader.close()
    return {
        "seconds": time.monotonic() - started,
        "start-up (s)": started - began,
        "cpu (s)": cpu_seconds(pid),
        "peak rss (MB)": peak,
        "rss after the first 10% of the run (MB)": samples[len(samples) // 10],
        "rss at the end (MB)": samples[-1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--max-inflight", type=int, default=100)
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--max-rss", type=float, default=200.0, help="megabytes")
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="couchgw-backlog-"))
    couch_port, demo_port, api_port = free_port(), free_port(), free_port()
    db = f"http://127.0.0.1:{couch_port}/backlog"
    pouchdb = processes.couch(folder, couch_port, on_disk=False)
    demo = processes.demo(folder, demo_port, delay=0.1)
    gateway = processes.gateway(
        folder,
        db,
        demo_port,
        api_port,
        *("--threads", str(options.threads), "--max-inflight", str(options.max_inflight)),
    )
    try:
        pouchdb.start(wait=True)
        demo.start(wait=True)
        http("PUT", db)
        took = write_backlog(db, options.messages)
        print(f"{options.messages} messages written in {took:.1f}s")
        figures = drain(gateway, options.messages)
        report: dict[str, object] = {
            "messages": options.messages,
            "messages per second": round(options.messages / figures["seconds"], 1),
            **{key: round(value, 1) for key, value in figures.items()},
        }
        _, body = http("GET", f"{db}/_design/couchgw/_view/by_status?group=true", timeout=600)
        report["by status"] = {row["key"]: row["value"] for row in body["rows"]}
        print(json.dumps(report, indent=2))
        return 0 if figures["peak rss (MB)"] < options.max_rss else 1
    finally:
        for process in (gateway, demo, pouchdb):
            process.stop()


if __name__ == "__main__":
    sys.exit(main())
