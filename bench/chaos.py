"""
Chaos run: push messages through couchgw while killing it, CouchDB and the target.

    .venv/bin/python bench/chaos.py     # 2000 messages, 10 kills, 2 restarts, a 15 s outage
    .venv/bin/python bench/chaos.py --messages 300 --kills 3 --outage 5
    .venv/bin/python bench/chaos.py --couch http://admin:admin@127.0.0.1:15984 \
        --couch-control "bench/couchdb-node /tmp/couchdb 15984"     # on Apache CouchDB

Everything runs as real processes on localhost: CouchDB (PouchDB Server with its data on disk,
so that it survives its restarts; or the Apache CouchDB that --couch names, killed and started
again with --couch-control's C{kill} and C{start}), the demo SOAP service (its log records each
activation it starts and finishes) and one couchgw (twistd, on its default --lease and
--announce).  While the messages are written, couchgw is killed with SIGKILL and started again at
random moments, CouchDB is killed and restarted, and the target is taken away for a while.  Then
the run waits until every message is terminal and prints what happened, with the seconds from
each kill until the messages the killed gateway held moved again.  It exits 0 when every message
is terminal, none failed, and the duplicate calls are no more than the calls that were in flight
when something was killed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import processes  # noqa: E402
from tests.servers import free_port, http, wait_until  # noqa: E402

ACTIVATED = re.compile(r"activated network=(\S+)")
STARTED = re.compile(r"activate network=(\S+)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=10, help="couchgw SIGKILLs")
    parser.add_argument("--couch-restarts", type=int, default=2)
    parser.add_argument("--outage", type=float, default=15.0, help="seconds the target is away")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of chaos")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs)")
    parser.add_argument(
        "--couch", default=None, help="an Apache CouchDB server's URL, an admin's credentials in it"
    )
    parser.add_argument(
        "--couch-control", default=None, help="with --couch: a command taking kill, or start"
    )
    options = parser.parse_args()
    rng = random.Random(options.seed)
    folder = Path(tempfile.mkdtemp(prefix="couchgw-chaos-"))
    print(f"run folder: {folder}")

    if options.couch and not options.couch_control and options.couch_restarts:
        parser.error("--couch needs --couch-control to restart CouchDB (or --couch-restarts 0)")
    couch_port, demo_port, api_port = free_port(), free_port(), free_port()
    pouchdb = None
    if options.couch:
        couch = options.couch.rstrip("/")
        db = f"{couch}/chaos-{int(time.time())}"
    else:
        couch = f"http://127.0.0.1:{couch_port}"
        db = f"{couch}/chaos"
        pouchdb = processes.couch(folder, couch_port, on_disk=True)
    demo = processes.demo(folder, demo_port, delay=0.05)
    gateway = processes.gateway(
        folder,
        db,
        demo_port,
        api_port,
        *("--threads", "20", "--timeout", "3", "--sweep", "1", "--heartbeat", "1"),
    )
    children = [gateway, demo, *([pouchdb] if pouchdb else [])]
    try:
        for process in (*([pouchdb] if pouchdb else []), demo, gateway):
            process.start(wait=True)

        def control(action: str) -> None:
            command = [*shlex.split(options.couch_control), action]
            subprocess.run(command, check=True, timeout=300, capture_output=True)

        #: Kills whose messages have not moved yet (when, the killed gateway), and how long
        #: those that moved took.
        moving: list[tuple[float, str]] = []
        took_over: list[float] = []
        checked_at = 0.0

        def gateway_id() -> str | None:
            try:
                return http("GET", f"http://127.0.0.1:{api_port}/status", timeout=5)[1]["gateway"]
            except (OSError, TypeError, KeyError):
                return None

        def check_moving() -> None:
            """Note the kills after which no message is held by the killed gateway any more."""
            for killed_at, killed in list(moving):
                try:
                    status, body = http(
                        "GET",
                        f"{db}/_design/couchgw/_view/due?limit=1&key="
                        + quote(json.dumps(["claim", killed])),
                        timeout=5,
                    )
                except OSError:
                    return
                if status == 200 and not body["rows"]:
                    took_over.append(time.monotonic() - killed_at)
                    moving.remove((killed_at, killed))

        in_flight_at_kills = 0

        def calls_in_flight() -> int:
            """Messages claimed and not finished: the calls a kill may leave to be made again."""
            try:
                _, body = http(
                    "GET", f"{db}/_design/couchgw/_view/by_status?group=true", timeout=10
                )
                rows = {row["key"]: row["value"] for row in body["rows"]}
            except (OSError, TypeError, KeyError):
                return 0
            return int(rows.get("dispatching", 0))

        def kill_gateway() -> None:
            nonlocal in_flight_at_kills
            in_flight_at_kills += calls_in_flight()
            killed = gateway_id()
            gateway.kill()
            if killed is not None:
                moving.append((time.monotonic(), killed))
            time.sleep(rng.uniform(0.2, 2.0))
            gateway.start()

        def restart_couch() -> None:
            if pouchdb is not None:
                pouchdb.kill()
                time.sleep(2.0)
                pouchdb.start()
            else:
                control("kill")
                time.sleep(2.0)
                control("start")

        target_back_at: float | None = None

        def take_target_away() -> None:
            nonlocal in_flight_at_kills, target_back_at
            in_flight_at_kills += calls_in_flight()
            demo.kill()
            target_back_at = time.monotonic() + options.outage

        start = time.monotonic()
        events = sorted(
            [(rng.uniform(2, options.duration), "kill", kill_gateway) for _ in range(options.kills)]
            + [
                (rng.uniform(5, options.duration), "couch", restart_couch)
                for _ in range(options.couch_restarts)
            ]
            + (
                [(rng.uniform(5, options.duration / 2), "target", take_target_away)]
                if options.outage > 0
                else []
            ),
            key=lambda e: e[0],
        )
        ids = [f"c{i:05d}" for i in range(options.messages)]
        batches = [ids[i : i + 25] for i in range(0, len(ids), 25)]
        interval = options.duration * 0.8 / max(1, len(batches))
        written = 0
        while batches or events or target_back_at is not None:
            now = time.monotonic() - start
            if target_back_at is not None and time.monotonic() >= target_back_at:
                demo.start()
                target_back_at = None
                print(f"{now:6.1f}s target back")
            if events and events[0][0] <= now:
                _, what, action = events.pop(0)
                print(f"{now:6.1f}s {what}")
                action()
                continue
            if batches and written * interval <= now:
                batch = batches.pop(0)
                docs = [
                    {
                        "_id": i,
                        "type": "message",
                        "operation": "activate",
                        "args": {"network": i, "count": rng.randint(1, 6)},
                    }
                    for i in batch
                ]
                try:
                    status, _ = http("POST", f"{db}/_bulk_docs", {"docs": docs}, timeout=10)
                except OSError:
                    status = 0
                if status in (200, 201):
                    written += 1
                else:
                    batches.insert(0, batch)  # CouchDB is down: write it again soon
                continue
            if moving and time.monotonic() - checked_at > 0.5:
                checked_at = time.monotonic()
                check_moving()
                continue
            time.sleep(0.05)

        print(f"{time.monotonic() - start:6.1f}s all written; waiting for every message to end")

        def counts() -> dict[str, int]:
            _, body = http("GET", f"{db}/_design/couchgw/_view/by_status?group=true", timeout=30)
            return {row["key"]: row["value"] for row in body["rows"]}

        def all_terminal() -> bool:
            done = counts()
            return sum(
                done.get(s, 0) for s in ("forwarded", "failed", "rejected", "cancelled")
            ) >= len(ids)

        def ended() -> bool:
            if moving:
                check_moving()
            return not moving and all_terminal()

        try:
            wait_until(ended, 600, "every message to end")
        except (AssertionError, OSError) as e:
            print(e)
        took = time.monotonic() - start
        by_status = counts()
        gateway.stop()
        demo.stop()

        log = (folder / "demo.log").read_text(errors="replace")
        started = Counter(STARTED.findall(log))
        finished = Counter(ACTIVATED.findall(log))
        duplicates = sum(n - 1 for n in finished.values() if n > 1)
        terminal = sum(
            by_status.get(s, 0) for s in ("forwarded", "failed", "rejected", "cancelled")
        )
        report = {
            "messages": len(ids),
            "terminal": terminal,
            "stuck": len(ids) - terminal,
            "by_status": by_status,
            "calls at the target": sum(started.values()),
            "calls finished at the target": sum(finished.values()),
            "duplicate calls": duplicates,
            "calls in flight at kills": in_flight_at_kills,
            "couchgw kills": options.kills,
            "CouchDB restarts": options.couch_restarts,
            "target outage (s)": options.outage,
            "server": "Apache CouchDB" if options.couch else "PouchDB Server",
            "seconds from a kill until its messages moved": {
                "each": [round(t, 1) for t in sorted(took_over)],
                "most": round(max(took_over), 1) if took_over else None,
                "not moved": len(moving),
            },
            "seconds": round(took, 1),
        }
        print(json.dumps(report, indent=2))
        ok = (
            terminal == len(ids)
            and not by_status.get("failed")
            and duplicates <= in_flight_at_kills
            and not moving
        )
        print("OK" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        for process in children:
            process.stop()
        if not options.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
