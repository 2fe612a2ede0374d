"""
couchgw measured against the limits of its own parts, side by side in one run.

    .venv/bin/python bench/suite.py                      # prints a table, writes bench-results.json
    .venv/bin/python bench/suite.py --couch http://admin:admin@127.0.0.1:15984   # both servers
    .venv/bin/python bench/suite.py --messages 2000 --backlog 20000 --seconds 20   # a quick look
    .venv/bin/python bench/suite.py --only 2,4          # raw CouchDB (always), then (2) and (4)

It starts PouchDB Server (in memory) and the demo service (SOAP, and JSON at /json: the null http
target); with `--couch URL` (an admin's credentials in the URL) it measures that Apache CouchDB
too, each figure on one server after the other, in the same run. On each server it measures:

1. raw CouchDB: single-document POSTs over 1 and 8 kept-alive connections, `_bulk_docs` of 500,
   and `_bulk_docs` of 500 new messages with couchgw's validate function installed: documents
   per second (the physical limits the gateway works against);
2. backlog drain: N messages to the null http route written first, then couchgw started:
   messages per second to the last `forwarded`, and that over the raw single-document rate (8
   connections); the same with `--guards on`, over what two validated writes per message
   allow; and the CPU each process spent per message;
3. SOAP path: the gateway draining N messages through the demo's `ping` with `--threads P`,
   against a bare suds-community loop on the same operation with P threads (measured once);
4. slow targets: 500 one-second SOAP calls with 50 threads, and 2000 one-second http calls with
   1000 in flight: ideal time over actual time, timed from when couchgw answers /ready (its
   routes loaded, its feed connected; the start-up before that is printed beside it); and a
   bare suds loop making the same 500 calls with 50 threads (measured once);
5. latency at a steady rate: written → call started at the target (the demo's `stamp`), and
   written → `forwarded` seen on couchgw's own /events stream: p50, p95, p99;
6. memory: peak RSS of couchgw while it drains a large backlog, and its rate over (2)'s;
7. scale-out: the drain rate with 1, 2 and 3 gateways on one database (and, with `--cluster`,
   on a cluster, gateway i talking to node i), duplicate calls and claims lost to another gateway;
8. many databases: `--databases` (1,000) databases of N / that many messages each, written
   first, then one couchgw serving them all (`--databases PATTERN`): messages per second, and
   that over (2)'s drain of N in one database; and the CPU each process spent per message.

Each figure that has a target is a ratio or a distribution measured in the same run, so that it
holds on a noisy machine; the absolute numbers are printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import processes  # noqa: E402
from bench.backlog import drain, write_backlog  # noqa: E402
from bench.leftovers import Leftovers  # noqa: E402
from bench.tenants import in_parallel  # noqa: E402
from couchgw.connections import basic_auth, split_credentials  # noqa: E402
from couchgw.couch import capacity, design  # noqa: E402
from couchgw.couch.client import Doc  # noqa: E402
from couchgw.couch.engines import node_names, node_path  # noqa: E402
from couchgw.targets import door  # noqa: E402
from tests.servers import engines_of, free_port, http  # noqa: E402

POUCHDB = "PouchDB Server"
COUCHDB = "Apache CouchDB"


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


def addressed(couch: str) -> tuple[str, int, dict[str, str]]:
    """A server's host and port, and the headers of a JSON request with its URL's credentials."""
    clean, auth = split_credentials(couch)
    parts = urlsplit(clean)
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = basic_auth(*auth)
    return parts.hostname or "127.0.0.1", parts.port or 5984, headers


def single_posts(run: Run, db: str, docs: int, connections: int) -> float:
    """Documents per second written one POST at a time over kept-alive connections."""
    per = docs // connections

    def post(index: int) -> None:
        connection = run.connection()
        for i in range(per):
            body = json.dumps({"_id": f"raw-{connections}-{index}-{i}", "n": i})
            connection.request("POST", run.path(db), body, run.headers)
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


def guarded_bulk_posts(run: Run, docs: int, batch: int = 500) -> tuple[float, float]:
    """
    Documents per second written with C{_bulk_docs} of C{batch} new messages, into a database
    with couchgw's design documents and its validate function (as C{--guards on} installs it
    here: in Erlang where the server enables it); and then of the same messages updated as a
    claim updates them (CouchDB hands the validate function the revision before too).
    """
    db = run.database("guarded")
    language = "erlang" if run.engines().erlang else "javascript"
    for ddoc in [*design.load().values(), *door.design_docs(None, language)]:
        assert http("PUT", f"{db}/{ddoc['_id']}", ddoc)[0] == 201
    written: list[Doc] = []
    started = time.monotonic()
    for first in range(0, docs, batch):
        chunk: list[Doc] = [
            {"_id": f"g{i:07d}", "type": "message", "target": "null", "operation": "ping"}
            for i in range(first, first + batch)
        ]
        status, answer = http("POST", f"{db}/_bulk_docs", {"docs": chunk}, timeout=300)
        assert status == 201, status
        written.extend({**doc, "_rev": row["rev"]} for doc, row in zip(chunk, answer, strict=True))
    new = docs / (time.monotonic() - started)
    started = time.monotonic()
    for first in range(0, docs, batch):
        chunk = [
            {**doc, "status": "dispatching", "attempts": 1, "claim": {"by": "bench", "until": 0}}
            for doc in written[first : first + batch]
        ]
        status, _ = http("POST", f"{db}/_bulk_docs", {"docs": chunk}, timeout=300)
        assert status == 201, status
    return new, docs / (time.monotonic() - started)


def bare_suds(wsdl: str, calls: int, threads: int, slow: bool = False) -> float:
    """
    A plain suds loop on the demo, one client per thread: calls per second of C{ping}; with
    C{slow}, the seconds C{calls} one-second C{activate} calls take.
    """
    from suds.client import Client

    from couchgw.targets.soap import clone

    loaded = Client(wsdl)
    per = calls // threads

    def loop(index: int) -> None:
        client = clone(loaded)
        for i in range(per):
            if slow:
                client.service.activate(f"bare-{index}-{i}", 10)
            else:
                client.service.ping(f"{index}-{i}")

    took = in_threads(threads, loop)
    return took if slow else per * threads / took


def process_tree_cpu(pid: int) -> float:
    """
    The CPU time of a process and its children, those that ended too (a server's JavaScript
    processes: Apache CouchDB starts and ends them as it needs).
    """
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = sum(int(field) for field in stat[11:15]) / os.sysconf("SC_CLK_TCK")
    for child in Path("/proc").iterdir():
        if not child.name.isdigit():
            continue
        try:
            fields = (child / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += process_tree_cpu(int(child.name))
    return total


def listening_pid(port: int) -> int | None:
    """The process listening on a local TCP port (None: not found, e.g. another machine's)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def null_route(url: str, concurrency: int = 100, inflight: int | None = None) -> str:
    """A routes file with the C{null} route: the demo's JSON operations (at C{url}), answered
    at once."""
    bound = f"inflight = {inflight}\n" if inflight else ""
    return (
        f'[routes.null]\nkind = "http"\nurl = "{url}"\n'
        f"concurrency = {concurrency}\ntimeout = 60\n{bound}"
    )


class Run:
    """The servers of one suite run, and gateways started against them as each figure needs."""

    def __init__(
        self,
        folder: Path,
        threads: int,
        demo: processes.Process,
        demo_port: int,
        couch: str | None = None,
    ) -> None:
        self.folder = folder
        self.threads = threads
        self.demo_port = demo_port
        self.pouchdb: processes.Process | None = None
        self.server = COUCHDB if couch else POUCHDB
        #: Marks this server's message ids in the demo's log, which both servers' runs share.
        self.tag = "c" if couch else "p"
        if couch is None:
            port = free_port()
            couch = f"http://127.0.0.1:{port}"
            self.pouchdb = processes.couch(folder, port, on_disk=False)
        #: The server's URL, with its credentials (requests take them from it).
        self.couch = couch.rstrip("/")
        self.host, self.port, self.headers = addressed(self.couch)
        self.suffix = uuid.uuid4().hex[:6]
        self.demo = demo
        self.wsdl = f"http://127.0.0.1:{self.demo_port}/?wsdl"
        self.json = f"http://127.0.0.1:{self.demo_port}/json"
        self.started: list[processes.Process] = []
        self._runs = 0
        self._server_pid: int | None = None
        #: The databases made, deleted when the run stops (L{stop}).
        self.made = Leftovers()
        self._engines: Any = None
        #: Each node's C{max_dbs_open} before L{keep_open} raised it (None: not set).
        self._limits: dict[str, Any] = {}

    def database(self, name: str, server: str | None = None) -> str:
        """A new database (named for this run, so that an external server keeps others apart)."""
        return self.made.database(f"{server or self.couch}/{name}-{self.suffix}")

    def engines(self) -> Any:
        """What the server runs design functions in (L{couchgw.couch.engines.Engines})."""
        if self._engines is None:
            self._engines = engines_of(self.couch)
        return self._engines

    def guard_engine(self) -> str:
        """What runs the guard here: C{erlang}, C{spidermonkey}, C{quickjs} or C{javascript}."""
        server = self.engines()
        return "erlang" if server.erlang else server.javascript or "javascript"

    def keep_open(self, databases: int) -> int | None:
        """
        Raise each node's C{[couchdb] max_dbs_open} where the files of C{databases} databases
        would not all stay open (L{couchgw.couch.capacity}; operations.md advises it), until the
        run stops.  The limit the run has (None: not Apache CouchDB).
        """
        if self.pouchdb is not None:
            return None
        nodes = node_names(http("GET", f"{self.couch}/_membership")[1])
        _, cluster = http("GET", f"{self.couch}{node_path(nodes[0])}/_config/cluster")
        limits = {}
        for node in nodes:
            status, value = http("GET", self._limit_url(node))
            limits[node] = value if status == 200 else None
        files = capacity.decide(limits, cluster)
        enough = files.enough(databases)
        if enough <= files.most:
            return files.most
        for node, before in limits.items():
            self._limits.setdefault(node, before)
            http("PUT", self._limit_url(node), str(enough))
        return enough

    def _limit_url(self, node: str) -> str:
        return f"{self.couch}{node_path(node)}/_config/couchdb/max_dbs_open"

    def path(self, db: str) -> str:
        return urlsplit(db).path

    def connection(self) -> HTTPConnection:
        return HTTPConnection(self.host, self.port, timeout=60)

    def gateway(self, db: str, *options: str, routes: str = "") -> processes.Process:
        """A couchgw (not started) with a folder of its own, so that its log is its own."""
        self._runs += 1
        folder = self.folder / f"{self.tag}-gateway-{self._runs}"
        folder.mkdir()
        if routes:
            (folder / "routes.toml").write_text(routes)
            options = (*options, "--routes", str(folder / "routes.toml"))
        gateway = processes.gateway(folder, db, self.demo_port, free_port(), *options)
        self.started.append(gateway)
        return gateway

    def null_route(self, concurrency: int = 100, inflight: int | None = None) -> str:
        return null_route(self.json, concurrency, inflight)

    def calls(self, prefix: str) -> Counter[str]:
        """How often the demo's JSON operations were called for each message id with C{prefix}."""
        text = (self.folder / "demo.log").read_text()
        return Counter(re.findall(rf"call json \w+ id=({re.escape(prefix)}\S*)", text))

    def stop_gateways(self) -> None:
        """
        Stop the gateways started so far: one left running would sweep, and make CouchDB index
        its database, while the next figure is measured.
        """
        for process in reversed(self.started):
            process.stop()
        self.started.clear()

    def server_pid(self) -> int | None:
        """The server's process (its JavaScript processes are its children), if on this machine."""
        if self.pouchdb is not None:
            return self.pouchdb.process.pid if self.pouchdb.process else None
        if self._server_pid is None and self.host in ("127.0.0.1", "localhost"):
            self._server_pid = listening_pid(self.port)  # found once: it scans every process
        return self._server_pid

    def cpu(self) -> dict[str, float]:
        """The CPU seconds the demo and the server (with its children) have used so far."""
        pids = {"the demo": self.demo.process.pid if self.demo.process else None}
        pids[self.server] = self.server_pid()
        return {name: process_tree_cpu(pid) for name, pid in pids.items() if pid}

    def cpu_per_message(
        self,
        figures: dict[str, Any],
        what: str,
        before: dict[str, float],
        drained: dict[str, float],
        messages: int,
    ) -> None:
        """Record the CPU milliseconds each process spent per message since C{before}."""
        figures[f"{what}: CPU per message, couchgw (ms)"] = drained["cpu (s)"] * 1000 / messages
        for name, spent in self.cpu().items():
            figures[f"{what}: CPU per message, {name} (ms)"] = (
                (spent - before[name]) * 1000 / messages
            )

    def stop(self) -> None:
        """Stop the gateways (one would make its database again), delete the databases."""
        self.stop_gateways()
        if self.pouchdb is None:  # (PouchDB Server's are in its memory, gone as it stops)
            self.made.remove()
        for node, before in self._limits.items():  # (as it was before L{keep_open})
            http("DELETE" if before is None else "PUT", self._limit_url(node), before)
        self._limits.clear()
        if self.pouchdb is not None:
            self.pouchdb.stop()


def backlog_drain(run: Run, figures: dict[str, Any], messages: int) -> None:
    """
    (2) N messages to the null http route, then couchgw started: messages per second, and the
    CPU each process spent per message; then the same with C{--guards on}.
    """
    db = run.database("drain")
    write_backlog(db, messages, target="null")
    before = run.cpu()
    drained = drain(run.gateway(db, routes=run.null_route()), messages, progress=False)
    figures["drain (messages/s)"] = messages / drained["seconds"]
    run.cpu_per_message(figures, "drain", before, drained, messages)
    figures["drain / raw single-document rate (8 connections)"] = (
        figures["drain (messages/s)"] / figures["raw: single POSTs, 8 connections (docs/s)"]
    )
    run.stop_gateways()

    db = run.database("drain-guarded")
    write_backlog(db, messages, target="null")
    gateway = run.gateway(db, "--guards", "on", routes=run.null_route())
    before = run.cpu()
    drained = drain(gateway, messages, progress=False)
    run.cpu_per_message(figures, "drain, --guards on", before, drained, messages)
    _, status = http("GET", gateway.ready.replace("/ready", "/status"), timeout=30)
    guards = status.get("guards") or {}
    figures["drain, --guards on: guard engine"] = guards.get("engine") or "none"
    figures["drain, --guards on (messages/s)"] = messages / drained["seconds"]
    figures["drain, --guards on / drain"] = (
        figures["drain, --guards on (messages/s)"] / figures["drain (messages/s)"]
    )
    figures["two validated writes per message allow (messages/s)"] = (
        figures["raw: _bulk_docs of 500 messages, validate function installed (docs/s)"] / 2
    )
    figures["drain, --guards on / what two validated writes allow"] = (
        figures["drain, --guards on (messages/s)"]
        / figures["two validated writes per message allow (messages/s)"]
    )
    figures["drain, --guards on / what two validated claims allow"] = figures[
        "drain, --guards on (messages/s)"
    ] / (figures["raw: the same, 500 claims of those messages (docs/s)"] / 2)


def soap_path(run: Run, figures: dict[str, Any], messages: int) -> None:
    """(3) The bare suds loop with P threads, and the gateway through the same operation."""
    db = run.database("soap")
    write_backlog(db, messages)
    before = run.cpu()
    drained = drain(run.gateway(db, "--threads", str(run.threads)), messages, progress=False)
    run.cpu_per_message(figures, "SOAP drain", before, drained, messages)
    gateway_rate = messages / drained["seconds"]
    figures[f"gateway SOAP drain, {run.threads} threads (messages/s)"] = gateway_rate
    suds_rate = figures[f"bare suds loop, {run.threads} threads (calls/s)"]
    figures["gateway SOAP rate / bare suds rate"] = gateway_rate / suds_rate


def slow_targets(run: Run, figures: dict[str, Any]) -> None:
    """
    (4) 500 one-second SOAP calls with 50 threads; 2000 one-second http calls, 1000 at once (the
    route's C{inflight} as its default has it: twice its concurrency).
    """
    db = run.database("slow-soap")
    docs = [
        {"_id": f"s{i:04d}", "type": "message", "operation": "activate", "args": [f"s{i}", 10]}
        for i in range(500)
    ]
    assert http("POST", f"{db}/_bulk_docs", {"docs": docs}, timeout=120)[0] == 201
    drained = drain(run.gateway(db, "--threads", "50"), 500, progress=False, from_ready=True)
    figures["slow SOAP: 500 x 1 s, 50 threads, from ready (s)"] = drained["seconds"]
    figures["slow SOAP: start-up to ready, WSDL loaded (s)"] = drained["start-up (s)"]
    figures["slow SOAP: ideal / actual"] = 10.0 / drained["seconds"]
    figures["slow SOAP: bare suds loop / gateway"] = (
        figures["bare suds loop: 500 x 1 s, 50 threads (s)"] / drained["seconds"]
    )

    db = run.database("slow-http")
    write_backlog(db, 2000, target="null", operation="wait", args={"seconds": 1})
    gateway = run.gateway(db, routes=run.null_route(concurrency=1000))
    before = run.cpu()
    drained = drain(gateway, 2000, progress=False, from_ready=True)
    run.cpu_per_message(figures, "slow http", before, drained, 2000)
    figures["slow http: 2000 x 1 s, 1000 at once, from ready (s)"] = drained["seconds"]
    figures["slow http: ideal / actual"] = 2.0 / drained["seconds"]


def latency(run: Run, figures: dict[str, Any], rate: float, seconds: float) -> None:
    """(5) A steady RATE messages/s for SECONDS: written → call started, written → forwarded."""
    db = run.database("latency")
    api = free_port()
    gateway = run.gateway(db, routes=run.null_route())
    gateway.argv[gateway.argv.index("--http") + 1] = f"tcp:{api}:interface=127.0.0.1"
    gateway.ready = f"http://127.0.0.1:{api}/ready"
    gateway.start(wait=True)
    seen: dict[str, float] = {}
    stream = socket.create_connection(("127.0.0.1", api))
    stream.sendall(b"GET /events HTTP/1.0\r\n\r\n")

    def listen() -> None:
        buffer = b""
        while True:
            try:
                data = stream.recv(65536)
            except OSError:
                return
            if not data:
                return
            now = time.time()
            buffer += data
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                for line in block.split(b"\n"):
                    if line.startswith(b"data: "):
                        event = json.loads(line[6:])
                        if event.get("status") == "forwarded":
                            seen.setdefault(event["id"], now)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    written: dict[str, float] = {}
    connection = run.connection()
    count = int(rate * seconds)
    begin = time.monotonic()
    for i in range(count):
        pause = begin + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        doc = {"_id": f"l{i:05d}", "type": "message", "target": "null", "operation": "stamp"}
        connection.request("POST", run.path(db), json.dumps(doc), run.headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 201, response.status
        written[doc["_id"]] = time.time()
    deadline = time.monotonic() + 60
    while len(seen) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    stream.close()
    _, found = http(
        "POST", f"{db}/_all_docs?include_docs=true", {"keys": list(written)}, timeout=120
    )
    started = {
        row["id"]: row["doc"]["result"]["at"] - written[row["id"]]
        for row in found["rows"]
        if (row.get("doc") or {}).get("status") == "forwarded"
    }
    visible = {doc_id: seen[doc_id] - written[doc_id] for doc_id in written if doc_id in seen}
    for name, values in (("call started", started), ("forwarded visible", visible)):
        ordered = sorted(values.values())
        if len(ordered) < count:
            figures[f"latency, written → {name}: missing"] = count - len(ordered)
        for p in (50, 95, 99):
            at = ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]
            figures[f"latency, written → {name}: p{p} (ms)"] = at * 1000


def memory(run: Run, figures: dict[str, Any], messages: int) -> None:
    """(6) Peak RSS of couchgw while it drains a large backlog (the null route)."""
    db = run.database("memory")
    write_backlog(db, messages, target="null")
    drained = drain(run.gateway(db, routes=run.null_route()), messages, progress=False)
    figures["large backlog: peak RSS (MB)"] = drained["peak rss (MB)"]
    figures["large backlog: drain (messages/s)"] = messages / drained["seconds"]
    if "drain (messages/s)" in figures:
        figures["large backlog: drain / drain of (2)"] = (
            figures["large backlog: drain (messages/s)"] / figures["drain (messages/s)"]
        )


def scale_out(run: Run, figures: dict[str, Any], messages: int, nodes: list[str]) -> None:
    """
    (7) The same backlog drained by 1, 2 and 3 gateways on one database (gateway i talking to
    node i of a cluster when C{nodes} names one); duplicate calls, and claims lost to another
    gateway (each a wasted write and read).
    """
    where = "cluster" if nodes else "one server"
    rates = {}
    for n in (1, 2, 3):
        db = run.database(f"scale-{n}", nodes[0] if nodes else None)
        prefix = f"x{n}-{run.tag}{where[0]}"
        docs_written = write_scaled(db, messages, prefix)
        gateways = [
            run.gateway(
                db.replace(nodes[0], nodes[i % len(nodes)]) if nodes else db,
                routes=run.null_route(),
            )
            for i in range(n)
        ]
        drained = drain(gateways, docs_written, progress=False)
        lost = 0
        for gateway in gateways:
            _, status = http("GET", gateway.ready.replace("/ready", "/status"), timeout=30)
            answers = status.get("claims", {}) if isinstance(status, dict) else {}
            lost += answers.get("lost", 0) + answers.get("unconfirmed", 0)
        for gateway in gateways:
            gateway.stop()
        rates[n] = messages / drained["seconds"]
        calls = run.calls(prefix)
        figures[f"scale-out ({where}): {n} gateway(s) (messages/s)"] = rates[n]
        figures[f"scale-out ({where}): {n} gateway(s), duplicate calls"] = sum(
            c - 1 for c in calls.values()
        )
        figures[f"scale-out ({where}): {n} gateway(s), claims lost"] = lost
    figures[f"scale-out ({where}): 2 gateways / 1"] = rates[2] / rates[1]
    figures[f"scale-out ({where}): 3 gateways / 1"] = rates[3] / rates[1]


def write_scaled(db: str, messages: int, prefix: str) -> int:
    for first in range(0, messages, 1000):
        docs = [
            {"_id": f"{prefix}{i:06d}", "type": "message", "target": "null", "operation": "ping"}
            for i in range(first, min(first + 1000, messages))
        ]
        assert http("POST", f"{db}/_bulk_docs", {"docs": docs}, timeout=120)[0] == 201
    return messages


TARGETS = {
    "drain / raw single-document rate (8 connections)": (1.5, "≥"),
    "drain, --guards on / what two validated writes allow": (0.8, "≥"),
    "gateway SOAP rate / bare suds rate": (0.8, "≥"),
    "slow SOAP: ideal / actual": (0.9, "≥"),
    "slow http: ideal / actual": (0.6, "≥"),
    "latency, written → call started: p99 (ms)": (100.0, "≤"),
    "large backlog: drain / drain of (2)": (0.8, "≥"),
    "large backlog: peak RSS (MB)": (200.0, "≤"),
    "scale-out (one server): 2 gateways / 1": (1.0, "≥"),
    "scale-out (one server): 3 gateways / 1": (1.0, "≥"),
    "scale-out (cluster): 2 gateways / 1": (1.0, "≥"),
    "scale-out (cluster): 3 gateways / 1": (1.0, "≥"),
    "many databases: drain / drain of one database (2)": (0.7, "≥"),
}
#: Targets that depend on what runs the guard (the figure named by the second item).
GUARD_TARGETS = {
    "drain, --guards on / drain": (
        "drain, --guards on: guard engine",
        {"erlang": (0.8, "≥"), "quickjs": (0.5, "≥")},
    )
}


def many_databases(run: Run, figures: dict[str, Any], messages: int, databases: int) -> None:
    """(8) N messages spread over many databases, drained by one couchgw serving them all."""
    each = max(1, messages // databases)
    names = [run.database(f"many{i:05d}") for i in range(databases)]
    in_parallel(names, lambda db: write_backlog(db, each, target="null"), threads=8)
    pattern = f"many*-{run.suffix}"
    gateway = run.gateway(run.couch, "--databases", pattern, routes=run.null_route())
    before = run.cpu()
    drained = drain(gateway, each * databases, progress=False)
    rate = each * databases / drained["seconds"]
    figures[f"many databases: {databases} x {each} (messages/s)"] = rate
    run.cpu_per_message(figures, "many databases", before, drained, each * databases)
    if "drain (messages/s)" in figures:
        figures["many databases: drain / drain of one database (2)"] = (
            rate / figures["drain (messages/s)"]
        )


def target_of(name: str, figures: dict[str, Any]) -> tuple[float, str] | None:
    """The target of a figure (None: it has none), as measured on one server."""
    if name in GUARD_TARGETS:
        engine, targets = GUARD_TARGETS[name]
        return targets.get(figures.get(engine, ""))
    return TARGETS.get(name)


def report(results: dict[str, dict[str, Any]], duration: float, out: str) -> None:
    """The table of figures (a column for each server, and the targets), and the JSON file."""
    servers = list(results)
    names = list(dict.fromkeys(name for figures in results.values() for name in figures))
    width = max(len(name) for name in names)
    print(f"\n{'figure':<{width}}" + "".join(f"  {server:>15}" for server in servers) + "  target")
    for name in names:
        cells = ""
        marks = []
        for server in servers:
            value = results[server].get(name)
            if isinstance(value, str):
                cells += f"  {value:>15}"
            else:
                cells += f"  {value:>15.2f}" if value is not None else f"  {'':>15}"
            target = target_of(name, results[server])
            if target is not None and isinstance(value, int | float):
                bound, sense = target
                met = value >= bound if sense == "≥" else value <= bound
                marks.append(f"{sense} {bound:g} {'met' if met else 'NOT met'}")
            else:
                marks.append("-")
        shown = f"  {' / '.join(marks)}" if set(marks) != {"-"} else ""
        print(f"{name:<{width}}{cells}{shown}")
    print(f"\nthe whole suite: {duration:.0f} s")
    rounded = {
        server: {
            name: value if isinstance(value, str) else round(value, 3)
            for name, value in figures.items()
        }
        for server, figures in results.items()
    }
    Path(out).write_text(
        json.dumps({**rounded, "suite duration (s)": round(duration)}, indent=2) + "\n"
    )
    print(f"written to {out}")


def measure(run: Run, figures: dict[str, Any], options: argparse.Namespace, began: float) -> None:
    """The figures of one server."""
    if run.pouchdb is not None:
        run.pouchdb.start(wait=True)
    raw = run.database("raw")
    print(f"{run.server}: 1. raw CouchDB ...", flush=True)
    figures["raw: single POSTs, 1 connection (docs/s)"] = single_posts(run, raw, 2000, 1)
    figures["raw: single POSTs, 8 connections (docs/s)"] = single_posts(run, raw, 4000, 8)
    figures["raw: _bulk_docs of 500 (docs/s)"] = bulk_posts(raw, 10_000)
    new, updated = guarded_bulk_posts(run, 5000)
    figures["raw: guard engine"] = run.guard_engine()
    figures["raw: _bulk_docs of 500 messages, validate function installed (docs/s)"] = new
    figures["raw: the same, 500 claims of those messages (docs/s)"] = updated
    steps: list[tuple[str, Any, tuple[Any, ...]]] = [
        (f"2. backlog drain of {options.messages}", backlog_drain, (options.messages,)),
        (f"3. SOAP path, {options.threads} threads", soap_path, (options.messages,)),
        ("4. slow targets", slow_targets, ()),
        (
            f"5. latency at {options.rate:g}/s for {options.seconds:g}s",
            latency,
            (options.rate, options.seconds),
        ),
        (f"6. memory, backlog of {options.backlog}", memory, (options.backlog,)),
        (f"7. scale-out, {options.messages} each", scale_out, (options.messages, [])),
    ]
    if options.cluster and run.server == COUCHDB:
        nodes = [url.rstrip("/") for url in options.cluster.split(",")]
        steps.append(
            (
                f"7. scale-out on the cluster, {options.messages} each",
                scale_out,
                (options.messages, nodes),
            )
        )
    steps.append(
        (
            f"8. many databases, {options.databases} of {options.messages // options.databases}",
            many_databases,
            (options.messages, options.databases),
        )
    )
    if 8 in options.only and not options.as_configured:  # (the whole run: (8) against (2))
        limit = run.keep_open(options.databases)
        if limit is not None:
            figures["the server's max_dbs_open (set for the run)"] = limit
    for title, step, args in steps:
        if int(title.split(".")[0]) not in options.only:
            continue
        print(f"{run.server}: {title} ... ({time.monotonic() - began:.0f}s)", flush=True)
        step(run, figures, *args)
        run.stop_gateways()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="backlog of (2), (3), (7)")
    parser.add_argument("--backlog", type=int, default=100_000, help="backlog of (6)")
    parser.add_argument("--threads", type=int, default=20, help="P: SOAP threads")
    parser.add_argument("--rate", type=float, default=50.0, help="messages/s of (5)")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of (5)")
    parser.add_argument("--databases", type=int, default=1000, help="databases of (8)")
    parser.add_argument("--out", default="bench-results.json", help="where the JSON goes")
    parser.add_argument(
        "--only",
        type=lambda text: {int(n) for n in text.split(",")},
        default=set(range(2, 9)),
        help="the figures to measure besides (1), e.g. 2,4 (default: all)",
    )
    parser.add_argument(
        "--couch",
        help="an Apache CouchDB server's URL, with an admin's credentials in it: every figure is "
        "measured there too, after PouchDB Server (in memory, started here)",
    )
    parser.add_argument(
        "--cluster",
        help="the nodes of a CouchDB cluster, comma-separated URLs with an admin's credentials: "
        "(7) is measured there too (with --couch), gateway i talking to node i",
    )
    parser.add_argument(
        "--as-configured",
        action="store_true",
        help="leave the server's max_dbs_open as it is (else raised for the run where the "
        "databases of (8) would not stay open, as operations.md advises)",
    )
    options = parser.parse_args()
    with Leftovers():  # SIGTERM ends the run as Ctrl-C does: each run's databases are deleted
        return run_suite(options)


def run_suite(options: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="couchgw-suite-"))
    demo_port = free_port()
    demo = processes.demo(folder, demo_port, delay=0.1)
    results: dict[str, dict[str, Any]] = {}
    began = time.monotonic()
    try:
        demo.start(wait=True)
        wsdl = f"http://127.0.0.1:{demo_port}/?wsdl"
        shared: dict[str, Any] = {}
        if options.only & {3, 4}:
            print("bare suds loops ...", flush=True)
        assert demo.process is not None
        if 3 in options.only:
            demo_cpu, own_cpu = process_tree_cpu(demo.process.pid), time.process_time()
            shared[f"bare suds loop, {options.threads} threads (calls/s)"] = bare_suds(
                wsdl, 4000, options.threads
            )
            shared["bare suds loop: CPU per call, the loop (ms)"] = (
                (time.process_time() - own_cpu) * 1000 / 4000
            )
            shared["bare suds loop: CPU per call, the demo (ms)"] = (
                (process_tree_cpu(demo.process.pid) - demo_cpu) * 1000 / 4000
            )
        if 4 in options.only:
            shared["bare suds loop: 500 x 1 s, 50 threads (s)"] = bare_suds(wsdl, 500, 50, True)
        for couch in [None, options.couch] if options.couch else [None]:
            run = Run(folder, options.threads, demo, demo_port, couch)
            figures = results[run.server] = dict(shared)
            try:
                measure(run, figures, options, began)
            finally:
                run.stop()
    finally:
        demo.stop()
    duration = time.monotonic() - began

    report(results, duration, options.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
