"""
A route out for a long time while its messages keep coming: what it costs the gateway.

    .venv/bin/python bench/parked.py --couch http://admin:admin@127.0.0.1:15984
    .venv/bin/python bench/parked.py --minutes 5 --rate 20     # shorter, on PouchDB Server

couchgw (twistd, its defaults) serves a database whose one route (an http route to the demo's
JSON endpoint) goes out: the demo is stopped after the first message, and started again on the
same port after C{--minutes}.  Meanwhile messages are written at C{--rate} per second.  Every
30 s the run samples couchgw's resident memory, the changes its checkpoint has not passed yet,
the messages waiting in it, and whether its feed is paused.  Then it waits for every message to
be forwarded and says how long that took.  The database is deleted at the end (also when the
run fails or is interrupted).  A JSON line of the figures goes to C{--json}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import processes  # noqa: E402
from tests.servers import free_port, http, start_pouchdb, stop, wait_until  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--couch", default=None, help="a CouchDB server URL (admin credentials)")
    parser.add_argument("--minutes", type=float, default=60.0, help="how long the route is out")
    parser.add_argument("--rate", type=float, default=10.0, help="messages written per second")
    parser.add_argument("--json", default=None, help="append the figures to this file")
    options = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="couchgw-parked-"))
    pouchdb = None
    server = options.couch
    if server is None:
        server, pouchdb = start_pouchdb()
    server = server.rstrip("/")
    db = f"{server}/parked-{uuid.uuid4().hex[:8]}"
    demo_port, api_port = free_port(), free_port()
    demo = processes.demo(folder, demo_port, 0.0)
    routes = folder / "routes.toml"
    routes.write_text(
        f'[routes.json]\nkind = "http"\nurl = "http://127.0.0.1:{demo_port}/json"\n'
        "concurrency = 20\ntimeout = 5\n"
    )
    gateway = processes.gateway(folder, db, demo_port, api_port, "--routes", str(routes))
    api = f"http://127.0.0.1:{api_port}"
    samples: list[dict[str, Any]] = []
    interrupted = False

    def on_signal(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        demo.start(wait=True)
        gateway.start(wait=True)
        assert gateway.process is not None
        written = 0

        def write(count: int) -> None:
            nonlocal written
            docs = [
                {
                    "_id": f"p{written + i:07d}",
                    "type": "message",
                    "target": "json",
                    "operation": "ping",
                    "text": "x" * 200,
                }
                for i in range(count)
            ]
            status, _ = http("POST", f"{db}/_bulk_docs", {"docs": docs}, timeout=60)
            assert status in (200, 201), status
            written += count

        write(1)
        wait_until(
            lambda: http("GET", f"{db}/p0000000")[1].get("status") == "forwarded", 60, "a first"
        )
        demo.stop()  # out from now on
        began = time.monotonic()
        next_sample = began
        while time.monotonic() - began < options.minutes * 60:
            due = int((time.monotonic() - began) * options.rate) + 1 - (written - 1)
            if due > 0:
                write(due)
            if time.monotonic() >= next_sample:
                status = http("GET", f"{api}/status")[1]
                sample = {
                    "minute": round((time.monotonic() - began) / 60, 1),
                    "written": written,
                    "rss_mb": round(rss_mb(gateway.process.pid), 1),
                    "checkpoint_pending": status["checkpoint"]["pending"],
                    "waiting": sum(status["waiting"].values()),
                    "feed_paused": status["feed"]["paused"],
                    "route": status["routes"]["json"]["state"],
                }
                samples.append(sample)
                print(json.dumps(sample), flush=True)
                next_sample += 30
            time.sleep(0.2)
        demo.start(wait=True)
        back = time.monotonic()

        def counted() -> bool:
            rows = http("GET", f"{db}/_design/couchgw/_view/by_status?group=true", timeout=60)[1]
            done = {row["key"]: row["value"] for row in rows.get("rows", [])}
            return done.get("forwarded", 0) >= written

        wait_until(counted, 1800, "every message forwarded")
        drained = time.monotonic() - back
        figures = {
            "route out (minutes)": options.minutes,
            "messages written": written,
            "rate (messages/s)": options.rate,
            "peak RSS (MB)": max(s["rss_mb"] for s in samples),
            "RSS at the first and last sample (MB)": [samples[0]["rss_mb"], samples[-1]["rss_mb"]],
            "checkpoint pending, most": max(s["checkpoint_pending"] for s in samples),
            "waiting in the gateway, most": max(s["waiting"] for s in samples),
            "all forwarded after the route came back (s)": round(drained, 1),
        }
        print(json.dumps(figures, indent=2))
        if options.json:
            with open(options.json, "a") as out:
                out.write(json.dumps({"figures": figures, "samples": samples}) + "\n")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        gateway.stop()
        demo.stop()
        http("DELETE", db)
        if pouchdb is not None:
            stop(pouchdb)
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
