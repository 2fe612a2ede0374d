"""
Many databases served by one gateway (C{--databases}): what idle databases cost, whether a
tenant's backlog holds another back, and a drain spread over many databases.

    .venv/bin/python bench/tenants.py --couch http://admin:admin@127.0.0.1:15984 idle
    .venv/bin/python bench/tenants.py --couch URL fair
    .venv/bin/python bench/tenants.py --couch URL many

- C{idle}: C{--databases} (10,000) empty databases, couchgw started and given the time to look
  at each once; then, idle for C{--seconds}: couchgw's peak resident memory, its CPU, its open
  connections (to CouchDB and the rest); then 200 messages written one by one, every 0.2 s, each
  into another database: the time from each write to its call at the target (the demo's
  C{stamp}), p50/p99/max.
- C{fair}: one database drains C{--backlog} (20,000) messages through a route of 10
  connections whose calls take 0.1 s; meanwhile one message every 2 s (50) into another
  database: the time from its write to its call, p50/p99/max; and the backlog's rate (its
  messages over the time from couchgw's start to the last one's C{completed_at}).
- C{many}: C{--databases} (1,000) databases of C{--each} (10) messages written before couchgw
  starts, against one database of as many messages in the same run: messages per second, and
  the ratio.

Real processes on localhost: the CouchDB that C{--couch} names (an admin's credentials), the
demo (its JSON operations the route C{null}) and couchgw (twistd), on free ports or on
C{--ports} and the one after it.  Every database the run
makes is deleted at the end, also when it fails or is interrupted.  A JSON line of the figures
goes to C{--json}.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import processes  # noqa: E402
from bench.backlog import cpu_seconds, rss_mb  # noqa: E402
from couchgw.message import parse_time  # noqa: E402
from tests.servers import free_port, http, wait_until  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def connections(pid: int) -> int:
    """The TCP connections a process holds open (its sockets that are established)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    established = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                established += 1
    return established


def loadavg() -> str:
    """The machine's load averages over 1, 5 and 15 minutes."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3)

    return {"p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 3)}


def in_parallel(work: list[Any], each: Any, threads: int = 16) -> None:
    """Do C{each(item)} for every item, on C{threads} threads."""
    items = list(work)
    lock = threading.Lock()

    def run() -> None:
        while True:
            with lock:
                if not items:
                    return
                item = items.pop()
            each(item)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


class Bench:
    def __init__(self, couch: str, folder: Path, ports: int | None = None) -> None:
        self.couch = couch.rstrip("/")
        self.folder = folder
        self.prefix = f"bt{uuid.uuid4().hex[:6]}-"
        self.made: list[str] = []
        self.ports = ports
        self.demo_port = free_port() if ports is None else ports
        self.demo = processes.demo(folder, self.demo_port, 0.0)
        self.gateway: processes.Process | None = None
        self.api = ""

    def create(self, names: list[str]) -> None:
        def put(name: str) -> None:
            status, body = http("PUT", f"{self.couch}/{name}", timeout=120)
            assert status in (201, 202), (name, status, body)

        self.made.extend(names)
        in_parallel(names, put)

    def start(self, pattern: str, *options: str, concurrency: int = 100) -> processes.Process:
        routes = self.folder / "routes.toml"
        routes.write_text(
            f'[routes.null]\nkind = "http"\nurl = "http://127.0.0.1:{self.demo_port}/json"\n'
            f"concurrency = {concurrency}\ntimeout = 60\n"
        )
        port = free_port() if self.ports is None else self.ports + 1
        self.api = f"http://127.0.0.1:{port}"
        argv = [
            processes.TWISTD,
            "--nodaemon",
            "--pidfile=",
            "couchgw",
            "--couch",
            self.couch,
            "--databases",
            pattern,
            "--target",
            f"http://127.0.0.1:{self.demo_port}/?wsdl",
            "--routes",
            str(routes),
            "--http",
            f"tcp:{port}:interface=127.0.0.1",
            *options,
        ]
        log = self.folder / f"couchgw-{len(self.made)}.log"
        self.gateway = processes.Process(argv, log, ready=f"{self.api}/ready")
        self.gateway.start(wait=True)
        return self.gateway

    def status(self) -> dict[str, Any]:
        return http("GET", f"{self.api}/status", timeout=60)[1]  # type: ignore[no-any-return]

    def looked_at_all(self, count: int) -> None:
        def done() -> bool:
            databases = self.status()["databases"]
            return databases["found"] >= count and databases["to_look_at"] == 0

        wait_until(done, 3600, f"couchgw to look at the {count} databases")

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None

    def clean(self) -> None:
        self.stop()
        self.demo.stop()
        in_parallel(list(self.made), lambda name: http("DELETE", f"{self.couch}/{name}"))
        http("DELETE", f"{self.couch}/couchgw-gateways")


def stamped(bench: Bench, db: str, doc_id: str) -> float:
    """Write a C{stamp} message now; answers the time of the write."""
    doc = {"_id": doc_id, "type": "message", "target": "null", "operation": "stamp"}
    at = time.time()
    status, _ = http("PUT", f"{bench.couch}/{db}/{doc_id}", doc)
    assert status in (201, 202), status
    return at


def called_after(bench: Bench, db: str, writes: dict[str, float], timeout: float) -> list[float]:
    """The seconds from each write to its call at the target (the result of C{stamp})."""
    latencies = []
    for doc_id, at in writes.items():

        def forwarded(doc_id: str = doc_id) -> Any:
            doc = http("GET", f"{bench.couch}/{db}/{doc_id}")[1]
            return doc if doc.get("status") == "forwarded" else None

        doc = wait_until(forwarded, timeout, f"{doc_id} forwarded")
        latencies.append(doc["result"]["at"] - at)
    return latencies


def idle(bench: Bench, options: argparse.Namespace) -> dict[str, Any]:
    names = [f"{bench.prefix}{i:05d}" for i in range(options.databases)]
    began = time.monotonic()
    bench.create(names)
    created = time.monotonic() - began
    gateway = bench.start(f"{bench.prefix}*")
    assert gateway.process is not None
    pid = gateway.process.pid
    began = time.monotonic()
    bench.looked_at_all(len(names))
    looked = time.monotonic() - began
    time.sleep(15)  # the feeds of the visits close
    load_idle = [loadavg()]
    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    most_connections = 0
    while time.monotonic() - wall_before < options.seconds:
        most_connections = max(most_connections, connections(pid))
        time.sleep(1)
    idle_cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before)
    load_idle.append(loadavg())
    status = bench.status()
    chosen = random.Random(7).sample(names, 200)
    latencies = []
    for i, db in enumerate(chosen):
        at = stamped(bench, db, f"idle-{i}")
        latencies += called_after(bench, db, {f"idle-{i}": at}, 60)
        most_connections = max(most_connections, connections(pid))
        time.sleep(0.2)
    return {
        "databases": len(names),
        "created in (s)": round(created, 1),
        "all looked at in (s)": round(looked, 1),
        "idle: CPU (share of a core)": round(idle_cpu, 4),
        "peak RSS (MB)": round(peak_rss_mb(pid), 1),
        "RSS now (MB)": round(rss_mb(pid), 1),
        "open connections, most": most_connections,
        "feeds open when idle": status["databases"]["feeds"],
        "max feeds": status["databases"]["max_feeds"],
        "written -> called (s), 200 messages in 200 databases": percentiles(latencies),
        "load while idle (before, after)": load_idle,
        "load after the 200 messages": loadavg(),
    }


def fair(bench: Bench, options: argparse.Namespace) -> dict[str, Any]:
    busy, quiet = f"{bench.prefix}busy", f"{bench.prefix}quiet"
    bench.create([busy, quiet])
    for first in range(0, options.backlog, 1000):
        docs = [
            {
                "_id": f"w{i:06d}",
                "type": "message",
                "target": "null",
                "operation": "wait",
                "args": {"seconds": 0.1},
            }
            for i in range(first, min(first + 1000, options.backlog))
        ]
        status, _ = http("POST", f"{bench.couch}/{busy}/_bulk_docs", {"docs": docs}, timeout=120)
        assert status == 201, status
    bench.start(f"{bench.prefix}*", concurrency=10)
    began = time.time()
    time.sleep(5)
    writes = {}
    for i in range(50):
        writes[f"quiet-{i}"] = stamped(bench, quiet, f"quiet-{i}")
        time.sleep(2)
    latencies = called_after(bench, quiet, writes, 120)

    def drained() -> bool:
        rows = http("GET", f"{bench.couch}/{busy}/_design/couchgw/_view/by_status?group=true")[1]
        done = {row["key"]: row["value"] for row in rows.get("rows", [])}
        if done.get("forwarded", 0) >= options.backlog:
            return True
        time.sleep(1)  # (each look brings the view up to date)
        return False

    backlog_left = options.backlog - (
        {
            row["key"]: row["value"]
            for row in http(
                "GET", f"{bench.couch}/{busy}/_design/couchgw/_view/by_status?group=true"
            )[1].get("rows", [])
        }.get("forwarded", 0)
    )
    wait_until(drained, 3600, "the backlog drained")
    # the backlog's rate from couchgw's start (ready) to its last message's completed_at: the
    # drain may end long before the quiet messages' last is written (then the time from the
    # start to the waits above would understate it)
    finished = completed_times(bench, busy)
    seconds = max(finished) - began
    return {
        "backlog": options.backlog,
        "backlog left when the last quiet message was called": backlog_left,
        "backlog drained in (s, from couchgw ready to the last completed_at)": round(seconds, 1),
        "backlog rate (messages/s)": round(options.backlog / seconds, 1),
        "quiet database: written -> called (s), 50 messages": percentiles(latencies),
    }


def completed_times(bench: Bench, db: str) -> list[float]:
    """The C{completed_at} of every message of C{db} that has one (seconds since the epoch)."""
    times: list[float] = []
    start: str | None = None
    while True:
        query = "include_docs=true&limit=5001"
        if start is not None:
            query += "&startkey=" + urllib.parse.quote(json.dumps(start))
        status, body = http("GET", f"{bench.couch}/{db}/_all_docs?{query}", timeout=120)
        assert status == 200, (status, body)
        rows = body["rows"]
        for row in rows[:5000]:
            at = parse_time((row.get("doc") or {}).get("completed_at"))
            if at is not None:
                times.append(at)
        if len(rows) <= 5000:
            return times
        start = rows[5000]["id"]


def many(bench: Bench, options: argparse.Namespace) -> dict[str, Any]:
    total = options.databases * options.each
    single = f"{bench.prefix}single"
    names = [f"{bench.prefix}m{i:05d}" for i in range(options.databases)]
    bench.create([single, *names])

    def write(db: str, count: int) -> None:
        for first in range(0, count, 1000):
            docs = [
                {"_id": f"d{i:06d}", "type": "message", "target": "null", "operation": "ping"}
                for i in range(first, min(first + 1000, count))
            ]
            status, _ = http("POST", f"{bench.couch}/{db}/_bulk_docs", {"docs": docs}, timeout=120)
            assert status == 201, status

    write(single, total)
    in_parallel(names, lambda db: write(db, options.each))
    rates = {}
    for label, pattern, count in (("one", single, 1), ("many", f"{bench.prefix}m*", len(names))):
        began = time.monotonic()
        bench.start(pattern)

        def done(count: int = count) -> bool:
            return bench.status()["finished_here"].get("forwarded", 0) >= total

        wait_until(done, 3600, f"{total} messages forwarded ({label})")
        rates[label] = total / (time.monotonic() - began)
        bench.stop()
    return {
        "messages": total,
        "one database (messages/s)": round(rates["one"], 1),
        f"{options.databases} databases (messages/s)": round(rates["many"], 1),
        "many / one": round(rates["many"] / rates["one"], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("idle", "fair", "many"))
    parser.add_argument("--couch", required=True, help="an Apache CouchDB server (admin)")
    parser.add_argument("--databases", type=int, default=None)
    parser.add_argument("--each", type=int, default=10, help="messages per database (many)")
    parser.add_argument("--backlog", type=int, default=20000, help="the busy database's (fair)")
    parser.add_argument("--seconds", type=float, default=60.0, help="idle time measured (idle)")
    parser.add_argument(
        "--ports",
        type=int,
        default=None,
        help="the first of two ports on 127.0.0.1: the demo, couchgw's API (default: free ones)",
    )
    parser.add_argument("--json", default=None)
    options = parser.parse_args()
    if options.databases is None:
        options.databases = 10000 if options.what == "idle" else 1000
    folder = Path(tempfile.mkdtemp(prefix="couchgw-tenants-"))
    bench = Bench(options.couch, folder, options.ports)

    def on_signal(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    kept = False
    try:
        bench.demo.start(wait=True)
        load_before = loadavg()
        figures = {"idle": idle, "fair": fair, "many": many}[options.what](bench, options)
        figures["load (1, 5, 15 min) before, after"] = [load_before, loadavg()]
        print(json.dumps(figures, indent=2))
        if options.json:
            with open(options.json, "a") as out:
                out.write(json.dumps({options.what: figures}) + "\n")
        return 0
    except KeyboardInterrupt:
        return 1
    except Exception:
        kept = True  # (the logs of a run that failed)
        print(f"the logs of couchgw and the demo are kept in {folder}", file=sys.stderr)
        raise
    finally:
        bench.clean()
        if not kept:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
