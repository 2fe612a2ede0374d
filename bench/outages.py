"""
Outage recovery: how long a route takes to work again once its target is back.

    .venv/bin/python bench/outages.py --couch http://admin:admin@127.0.0.1:15984
    .venv/bin/python bench/outages.py --couch URL --kind soap --outage-kind drop --runs 20
    .venv/bin/python bench/outages.py --couch URL --kind all --outage-kind all --runs 5 \
        --json outages.json
    .venv/bin/python bench/outages.py --couch URL --kind http --outage-kind drop --outage 600 \
        --runs 1 --backoff-max 60

Everything runs as real processes on localhost: the Apache CouchDB that --couch names (an admin's
credentials in the URL; each run has a database of its own, deleted at the end, also when the
benchmark is interrupted), the demo service (C{python -m couchgw.demo}), and for each run one
C{twistd -n couchgw} on its defaults (only --couch, --target, --routes for an http route, and
--http).  Between couchgw and the demo runs a small TCP proxy, in a thread of this process, that
puts the target out in one of four ways:

- C{refused}: nothing listens (connections refused);
- C{drop}: connections accepted, the request read, and the connection closed without an answer;
- C{503}: every request answered C{503 Service Unavailable};
- C{silent}: connections accepted and never answered until the outage ends, then closed.

The connections open when an outage begins are closed, as a failing target's would be.  The
SOAP route (C{--kind soap}) reads its WSDL through the proxy (the demo writes the address the
WSDL was asked at as the service's, so the calls go through the proxy too); the http route
(C{--kind http}) POSTs to the demo's C{/json} through it.

Each run: the target goes out; N messages (C{activate} of one device: a 0.1 s call) are written,
evenly spread over the outage (or over its first --spread seconds; --spread 0 writes them all at
once, a burst of concurrent calls); the target comes back after --outage seconds.  The run records
the seconds from the target's return to the first call that reached it, to the route's first
success (the first message forwarded) and to the last of the messages terminal.  A run with a
message still not terminal --stall-after seconds after the return is a stall: its statuses are
printed and its couchgw log kept.  At the end a table gives, for each kind and outage, the runs,
the stalls and the p50 / p95 / max of those times (a stall counts as never), and for a kind run
with several outage kinds the same over all its runs (outage C{all}).  It exits 0 when no run
stalled.

An outage of 60 s or more (C{--outage 600 --runs 1}) also prints when each connection met the
outage (the route's probes and trial calls), the gaps between them, and the probes couchgw counted
(C{/status} and C{couchgw_route_probes_total}) 5 s before the return; C{--backoff-max} sets the
http route's C{backoff_max} (couchgw's default, 300 s, is the longest wait between probes).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import processes  # noqa: E402
from couchgw.message import TERMINAL, parse_time  # noqa: E402
from tests.servers import free_port, http, server_problem  # noqa: E402

KINDS = ("soap", "http")
OUTAGE_KINDS = ("refused", "drop", "503", "silent")
#: The route the http kind's messages name (the SOAP ones go to the default route).
HTTP_ROUTE = "json"
UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 20\r\nConnection: close\r\n\r\ndown for maintenance"
)


class OutageProxy:
    """
    A TCP proxy on 127.0.0.1 in front of a target, in a thread of its own (an asyncio loop),
    that relays every connection while the target is up and puts it out on demand (L{out}) in
    one of L{OUTAGE_KINDS} until L{back}.
    """

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        #: "up", or the outage going on.
        self.mode = "up"
        #: Connections accepted, by the mode they met.
        self.accepted: Counter[str] = Counter()
        #: When each connection that met an outage came (the probes and trial calls of a route
        #: that is out: each is a connection of its own, as the outage closes every one).
        self.met_outage_at: list[float] = []
        #: When the target last came back, and when the first connection relayed after that came.
        self.back_at: float | None = None
        self.first_call_at: float | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        #: A socket bound to the proxy's port and never listening, so that no other process's
        #: connection takes the port as its own (an ephemeral port) while nothing listens there
        #: (the C{refused} outage): the listener binds beside it (SO_REUSEPORT).
        self._reserve: socket.socket | None = None
        #: The client and target ends of the connections being relayed.
        self._open: set[asyncio.StreamWriter] = set()
        self._outage_over = asyncio.Event()

    def start(self) -> None:
        self._reserve = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._reserve.bind(("127.0.0.1", self.port))
        self._thread.start()
        self._run(self._listen())

    def out(self, mode: str) -> None:
        """Put the target out: C{mode} is one of L{OUTAGE_KINDS}."""
        if mode not in OUTAGE_KINDS:
            raise ValueError(f"no outage kind {mode!r}")
        self._run(self._out(mode))

    def back(self) -> None:
        """The target is back: connections are relayed again (those held are closed)."""
        self._run(self._back())

    def stop(self) -> None:
        if self._thread.is_alive():
            self._run(self._stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if self._reserve is not None:
            self._reserve.close()

    def _run(self, work: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result(30)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, backlog=1024, reuse_address=True, reuse_port=True
        )

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _out(self, mode: str) -> None:
        self.mode = mode
        self._outage_over = asyncio.Event()
        if mode == "refused":
            await self._close_listener()
        for writer in list(self._open):
            writer.close()

    async def _back(self) -> None:
        self.back_at, self.first_call_at = time.time(), None
        if self.mode == "refused":
            await self._listen()
        self.mode = "up"
        self._outage_over.set()

    async def _stop(self) -> None:
        await self._close_listener()
        self._outage_over.set()
        for writer in list(self._open):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode, over = self.mode, self._outage_over
        self.accepted[mode] += 1
        if mode != "up":
            self.met_outage_at.append(time.time())
        try:
            if mode == "up":
                if self.back_at is not None and self.first_call_at is None:
                    self.first_call_at = time.time()
                await self._relay(reader, writer)
                return
            # the request is read first, so that the close is a FIN, not a reset
            await _read_request(reader)
            if mode == "503":
                writer.write(UNAVAILABLE)
                await writer.drain()
            elif mode == "silent":
                await over.wait()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target_reader, target_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._open.update((writer, target_writer))
        pumps = [
            asyncio.ensure_future(_pump(reader, target_writer)),
            asyncio.ensure_future(_pump(target_reader, writer)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            self._open.difference_update((writer, target_writer))
            target_writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction of a connection until it ends (or fails)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass


async def _read_request(reader: asyncio.StreamReader) -> None:
    """Read one HTTP request: its head, and the body its Content-Length gives."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)


@dataclass
class Run:
    """One outage and what followed it (seconds from the target's return; None: never)."""

    kind: str
    outage_kind: str
    index: int
    first_call: float | None = None
    first_success: float | None = None
    last_terminal: float | None = None
    stalled: bool = False
    #: The messages' statuses at the end of the run.
    statuses: dict[str, int] = field(default_factory=dict)
    #: Connections that met the outage (calls, and kept-alive connections retried).
    connections_in_outage: int = 0
    #: When each of them came, in seconds from the outage's start.
    connections_at: list[float] = field(default_factory=list)
    #: The route's breaker as couchgw's /status described it just before the target came back.
    breaker_at_return: dict[str, Any] | None = None
    #: couchgw's C{couchgw_route_probes_total} samples (/metrics) just before the target came back.
    probes_at_return: dict[str, float] | None = None
    #: The route's breaker as couchgw's /status described it at the end.
    breaker: dict[str, Any] | None = None
    #: The couchgw log, kept for a stall (or with --keep).
    log: str | None = None
    #: The machine's load averages (1, 5, 15 minutes: /proc/loadavg) before and after the run.
    load_before: str = ""
    load_after: str = ""


class Bench:
    """The demo, the proxy in front of it, and a couchgw and a database for each run."""

    def __init__(self, options: argparse.Namespace, folder: Path) -> None:
        self.options = options
        self.folder = folder
        self.couch = options.couch.rstrip("/")
        if options.ports is not None:
            self.proxy_port, demo_port, self.api_port = (options.ports + i for i in range(3))
        else:
            self.proxy_port, demo_port, self.api_port = free_port(), free_port(), free_port()
        self.demo = processes.demo(folder, demo_port, delay=options.delay)
        # ready once the WSDL is read through the proxy: the demo then writes the proxy's address
        # as the service's (it keeps the address the WSDL was first asked at)
        self.wsdl = f"http://127.0.0.1:{self.proxy_port}/?wsdl"
        self.demo.ready = self.wsdl
        self.proxy = OutageProxy(self.proxy_port, demo_port)
        self.routes = folder / "routes.toml"
        self.routes.write_text(
            f'[routes.{HTTP_ROUTE}]\nkind = "http"\n'
            f'url = "http://127.0.0.1:{self.proxy_port}/json"\n'
            + ("" if options.backoff_max is None else f"backoff_max = {options.backoff_max}\n")
        )

    def start(self) -> None:
        self.proxy.start()
        self.demo.start(wait=True)
        status, wsdl = http("GET", self.wsdl)
        if status != 200 or f"127.0.0.1:{self.proxy_port}" not in str(wsdl):
            raise RuntimeError("the demo's WSDL does not name the proxy as the service's address")

    def stop(self) -> None:
        self.proxy.stop()
        self.demo.stop()

    def run(self, kind: str, outage_kind: str, index: int) -> Run:
        """One outage of C{outage_kind} for a C{kind} route, with a fresh couchgw and database."""
        options = self.options
        label = f"{kind}-{outage_kind}-{index}"
        db = f"{self.couch}/outages-{label}-{int(time.time())}"
        extra = ("--routes", str(self.routes)) if kind == "http" else ()
        gateway = processes.gateway(self.folder, db, self.proxy_port, self.api_port, *extra)
        gateway.log = self.folder / f"couchgw-{label}.log"
        run = Run(kind, outage_kind, index, load_before=loadavg())
        ids = [f"outage-{i:04d}" for i in range(options.messages)]
        try:
            gateway.start(wait=True)
            self.proxy.accepted.clear()
            self.proxy.met_outage_at.clear()
            out_at = time.time()
            self.proxy.out(outage_kind)
            self._write(db, kind, ids, out_at)
            if options.outage >= 60:  # a long outage: its probes so far (couchgw's /status)
                _sleep_until(out_at + options.outage - 5)
                run.breaker_at_return = self._breaker(kind)
                run.probes_at_return = self._probes()
            _sleep_until(out_at + options.outage)
            self.proxy.back()
            back_at = self.proxy.back_at
            assert back_at is not None
            run.connections_in_outage = sum(
                n for mode, n in self.proxy.accepted.items() if mode != "up"
            )
            run.connections_at = [round(at - out_at, 3) for at in self.proxy.met_outage_at]
            docs = self._wait_for_terminal(db, ids, back_at + options.stall_after)
            run.statuses = dict(Counter(str(doc.get("status") or "new") for doc in docs))
            if self.proxy.first_call_at is not None:
                run.first_call = self.proxy.first_call_at - back_at
            forwarded = [_completed(doc) for doc in docs if doc.get("status") == "forwarded"]
            if forwarded:
                run.first_success = min(forwarded) - back_at
            terminal = [_completed(doc) for doc in docs if doc.get("status") in TERMINAL]
            run.stalled = len(terminal) < len(ids)
            if not run.stalled:
                run.last_terminal = max(terminal) - back_at
            run.breaker = self._breaker(kind)
        finally:
            run.load_after = loadavg()
            gateway.stop()
            try:
                http("DELETE", db, timeout=60)
            except OSError as e:
                print(f"cannot delete {db}: {e}", file=sys.stderr)
        if run.stalled or options.keep:
            run.log = str(gateway.log)
        else:
            gateway.log.unlink(missing_ok=True)
        return run

    def _write(self, db: str, kind: str, ids: list[str], out_at: float) -> None:
        """
        Write the messages evenly spread over the first --spread seconds of the outage (all at
        once, in one C{_bulk_docs}, with --spread 0).
        """
        spread = self.options.spread
        docs = []
        for doc_id in ids:
            doc: dict[str, Any] = {
                "_id": doc_id,
                "type": "message",
                "operation": "activate",
                "args": {"network": doc_id, "count": 1},
            }
            if kind == "http":
                doc["target"] = HTTP_ROUTE
            docs.append(doc)
        if spread == 0:
            status, body = http("POST", f"{db}/_bulk_docs", {"docs": docs})
            if status != 201 or any("error" in row for row in body):
                raise RuntimeError(f"cannot write the messages: {status} {body}")
            return
        for i, doc in enumerate(docs):
            _sleep_until(out_at + spread * (i + 0.5) / len(docs))
            status, body = http("PUT", f"{db}/{doc['_id']}", doc)
            if status != 201:
                raise RuntimeError(f"cannot write {doc['_id']}: {status} {body}")

    def _wait_for_terminal(self, db: str, ids: list[str], deadline: float) -> list[dict[str, Any]]:
        """The messages once all are terminal, or as they are at the deadline."""
        while True:
            status, body = http("POST", f"{db}/_all_docs?include_docs=true", {"keys": ids})
            if status != 200:
                raise RuntimeError(f"cannot read the messages: {status} {body}")
            docs = [row.get("doc") or {} for row in body["rows"]]
            if all(doc.get("status") in TERMINAL for doc in docs) or time.time() >= deadline:
                return docs
            time.sleep(0.25)

    def _probes(self) -> dict[str, float] | None:
        """couchgw's C{couchgw_route_probes_total} samples, by their labels (/metrics)."""
        try:
            status, body = http("GET", f"http://127.0.0.1:{self.api_port}/metrics", timeout=10)
        except OSError:
            return None
        if status != 200:
            return None
        found = {}
        for line in str(body).splitlines():
            if line.startswith("couchgw_route_probes_total"):
                name, _, value = line.rpartition(" ")
                found[name.removeprefix("couchgw_route_probes_total")] = float(value)
        return found

    def _breaker(self, kind: str) -> dict[str, Any] | None:
        route = HTTP_ROUTE if kind == "http" else "default"
        try:
            status, body = http("GET", f"http://127.0.0.1:{self.api_port}/status", timeout=10)
            return dict(body["routes"][route]["breaker"]) if status == 200 else None
        except (OSError, KeyError, TypeError):
            return None


def loadavg() -> str:
    """The machine's load averages over 1, 5 and 15 minutes."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _completed(doc: dict[str, Any]) -> float:
    at = parse_time(doc.get("completed_at"))
    if at is None:
        raise RuntimeError(f"{doc.get('_id')} is {doc.get('status')} without completed_at")
    return at


def _sleep_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        time.sleep(delay)


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile C{p} (0 to 100) of C{values}."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(runs: list[Run]) -> list[dict[str, Any]]:
    """
    For each kind and outage kind: the runs, the stalls, and p50 / p95 / max of the times; and
    for each kind run with several outage kinds, the same over all its runs (outage C{all}).
    """
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.kind, run.outage_kind), []).append(run)
    for kind in dict.fromkeys(run.kind for run in runs):
        mine = [run for run in runs if run.kind == kind]
        if len({run.outage_kind for run in mine}) > 1:
            groups[(kind, "all")] = mine
    rows = []
    for (kind, outage_kind), group in groups.items():
        loads = [float(load.split()[0]) for r in group for load in (r.load_before, r.load_after)]
        row: dict[str, Any] = {
            "kind": kind,
            "outage": outage_kind,
            "runs": len(group),
            "stalls": sum(run.stalled for run in group),
            "load (1 min) from, to": [min(loads), max(loads)],
        }
        for name in ("first_call", "first_success", "last_terminal"):
            values = [math.inf if getattr(r, name) is None else getattr(r, name) for r in group]
            for label, p in (("p50", 50.0), ("p95", 95.0), ("max", 100.0)):
                value = percentile(values, p)
                row[f"{name} {label}"] = None if math.isinf(value) else round(value, 2)
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = ("first_call", "first_success", "last_terminal")
    print(
        f"\n{'kind':<5} {'outage':<8} {'runs':>4} {'stalls':>6}"
        + "".join(f"  {name + ' p50/p95/max (s)':>38}" for name in columns)
    )
    for row in rows:
        cells = ""
        for name in columns:
            values = [row[f"{name} {label}"] for label in ("p50", "p95", "max")]
            text = " / ".join("never" if v is None else f"{v:.1f}" for v in values)
            cells += f"  {text:>38}"
        low, high = row["load (1 min) from, to"]
        print(
            f"{row['kind']:<5} {row['outage']:<8} {row['runs']:>4} {row['stalls']:>6}{cells}"
            f"  load {low:.1f}-{high:.1f}"
        )


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so that the databases are deleted and the processes end


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--couch",
        required=True,
        help="an Apache CouchDB server's URL, an admin's credentials in it",
    )
    parser.add_argument("--kind", choices=(*KINDS, "all"), default="soap", help="the route's kind")
    parser.add_argument(
        "--outage-kind", choices=(*OUTAGE_KINDS, "all"), default="all", help="how the target is out"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs of each kind and outage kind")
    parser.add_argument("--outage", type=float, default=15.0, help="seconds the target is out")
    parser.add_argument("--messages", type=int, default=50, help="messages written in an outage")
    parser.add_argument(
        "--spread",
        type=float,
        default=None,
        help="seconds from the outage's start over which the messages are written, evenly "
        "(default: the whole outage; 0: all at once, in one _bulk_docs)",
    )
    parser.add_argument("--delay", type=float, default=0.1, help="seconds a call takes")
    parser.add_argument(
        "--stall-after",
        type=float,
        default=120.0,
        help="seconds after the return a message may take to be terminal before the run stalls",
    )
    parser.add_argument(
        "--ports",
        type=int,
        default=None,
        help="the first of three ports on 127.0.0.1 for the proxy, the demo and couchgw's API "
        "(default: free ones)",
    )
    parser.add_argument(
        "--backoff-max",
        type=float,
        default=None,
        help="the http route's backoff_max (seconds: the longest wait between its probes; "
        "default: couchgw's, 300)",
    )
    parser.add_argument("--json", default=None, help="a file to write every run and the table to")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (every log)")
    options = parser.parse_args()
    if options.spread is None:
        options.spread = options.outage
    if not 0 <= options.spread <= options.outage:
        parser.error("--spread must be from 0 to --outage")
    problem = server_problem(options.couch)
    if problem is not None:
        parser.error(problem)
    kinds = KINDS if options.kind == "all" else (options.kind,)
    outage_kinds = OUTAGE_KINDS if options.outage_kind == "all" else (options.outage_kind,)
    signal.signal(signal.SIGTERM, _interrupted)
    folder = Path(tempfile.mkdtemp(prefix="couchgw-outages-"))
    print(f"run folder: {folder}")
    bench = Bench(options, folder)
    runs: list[Run] = []
    try:
        bench.start()
        for kind in kinds:
            for outage_kind in outage_kinds:
                for index in range(1, options.runs + 1):
                    run = bench.run(kind, outage_kind, index)
                    runs.append(run)
                    _print_run(run, options.runs, options.outage >= 60)
    finally:
        bench.stop()
        rows = summary(runs)
        if rows:
            print_table(rows)
        if options.json:
            settings = {
                key: value for key, value in vars(options).items() if key not in ("couch", "json")
            }
            Path(options.json).write_text(
                json.dumps(
                    {"settings": settings, "summary": rows, "runs": [asdict(r) for r in runs]},
                    indent=2,
                )
                + "\n"
            )
            print(f"written to {options.json}")
        stalled = any(run.stalled for run in runs)
        if options.keep or stalled:
            print(f"logs kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 1 if any(run.stalled for run in runs) else 0


def _print_run(run: Run, runs: int, long_outage: bool = False) -> None:
    def seconds(value: float | None) -> str:
        return "never" if value is None else f"{value:5.1f}s"

    print(
        f"{run.kind} {run.outage_kind:<7} {run.index:>3}/{runs}: "
        f"first call {seconds(run.first_call)}, first success {seconds(run.first_success)}, "
        f"last {seconds(run.last_terminal)} ({run.connections_in_outage} connections in outage; "
        f"load {run.load_before} -> {run.load_after})",
        flush=True,
    )
    if run.stalled:
        print(
            f"    STALL: statuses {run.statuses}, breaker {run.breaker}; log {run.log}", flush=True
        )
    if long_outage:
        at = run.connections_at
        gaps = [round(b - a, 1) for a, b in itertools.pairwise(at)]
        probes = (run.breaker_at_return or {}).get("probes")
        print(f"    connections that met the outage at (s): {at}", flush=True)
        print(f"    gaps between them (s): {gaps}", flush=True)
        print(f"    the breaker's probes before the return: {probes}", flush=True)
        print(
            f"    couchgw_route_probes_total before the return: {run.probes_at_return}", flush=True
        )


if __name__ == "__main__":
    sys.exit(main())
