"""
The reactor stays free: how long couchgw's C{/health} takes while clients ask it for work that
could hold its reactor.

    .venv/bin/python bench/reactor.py --couch http://admin:admin@127.0.0.1:15984
    .venv/bin/python bench/reactor.py --couch URL --ports 17050 --seconds 30 --json reactor.json
    .venv/bin/python bench/reactor.py --couch URL --only baseline,pattern --messages 1000

Real processes on localhost: the Apache CouchDB that --couch names (an admin's credentials in
the URL; the run's database is deleted at the end, also when it fails or is interrupted), one
C{twistd -n couchgw} on its defaults (only --couch, --target and --http), and in this process
a SOAP service (a static WSDL over HTTP, in a thread) whose one operation, C{check}, takes two
strings restricted by XML Schema patterns built to backtrack: C{nested} by C{(a+)+b} and
C{starred} by C{([a-z]+)*\\d}.  A backtracking matcher given C{"a" * n + "!"} takes time
exponential in n on either (the run first times Python's C{re} on short ones to show it).

First --messages (100,000) messages are written with C{_bulk_docs} before couchgw starts, each
naming a route no route has (C{"target": "nowhere"}): couchgw rejects them (one write each), and
the run waits for all of them to be rejected, and for a valid message written after them to be
forwarded, before it measures anything, so that the gateway is idle but for what each case
asks.  Then, one after another, for --seconds each (a pinger in a process of its own asks
C{/health} every --interval seconds, 20 ms, over one kept-alive connection, and records how
long each answer took):

- C{baseline}: nothing else;
- C{pattern}: a valid message is forwarded first, before /health is measured (the route calls
  the service), then --writers clients (1) each write messages of C{"a" * --length + "!"}
  (50,000) one after another, alternately in C{nested} and C{starred}, and wait for each to be
  C{rejected} (the pattern fails) before the next: the time from each write to its
  rejection, and the reasons;
- C{events}: --clients (10) clients ask C{/events?since=0} at once and read to the end (the
  C{gap} event couchgw sends after the 10,000 changes it replays at most, or 5 s without a byte
  once caught up), in rounds one after another until --seconds have passed: the time each
  took and the events each read.

For each case: the requests, p50 / p99 / max of C{/health} (ms), and how many took over
--bound (50 ms).  Load averages (C{/proc/loadavg}) are sampled before and after each case.
It exits 0 when every answer of C{/health}, in every case, came within --bound.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from http.client import HTTPConnection, HTTPException
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import processes  # noqa: E402
from tests.servers import free_port, http, server_problem, wait_until  # noqa: E402

CASES = ("baseline", "pattern", "events")
NAMESPACE = "urn:bench:patterns"
#: The two patterns, by the name of the argument they restrict.
PATTERNS = {"nested": "(a+)+b", "starred": r"([a-z]+)*\d"}
#: The route the idle messages name (no route has it).
NOWHERE = "nowhere"

WSDL = """<?xml version="1.0" encoding="UTF-8"?>
<definitions name="Patterns" targetNamespace="urn:bench:patterns"
             xmlns="http://schemas.xmlsoap.org/wsdl/"
             xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
             xmlns:xsd="http://www.w3.org/2001/XMLSchema"
             xmlns:tns="urn:bench:patterns">
  <types>
    <xsd:schema targetNamespace="urn:bench:patterns" elementFormDefault="qualified">
      <xsd:simpleType name="Nested">
        <xsd:restriction base="xsd:string"><xsd:pattern value="{nested}"/></xsd:restriction>
      </xsd:simpleType>
      <xsd:simpleType name="Starred">
        <xsd:restriction base="xsd:string"><xsd:pattern value="{starred}"/></xsd:restriction>
      </xsd:simpleType>
      <xsd:element name="check">
        <xsd:complexType>
          <xsd:sequence>
            <xsd:element name="nested" type="tns:Nested" minOccurs="0"/>
            <xsd:element name="starred" type="tns:Starred" minOccurs="0"/>
          </xsd:sequence>
        </xsd:complexType>
      </xsd:element>
      <xsd:element name="checkResponse">
        <xsd:complexType>
          <xsd:sequence><xsd:element name="ok" type="xsd:boolean"/></xsd:sequence>
        </xsd:complexType>
      </xsd:element>
    </xsd:schema>
  </types>
  <message name="checkRequest"><part name="parameters" element="tns:check"/></message>
  <message name="checkReply"><part name="parameters" element="tns:checkResponse"/></message>
  <portType name="PatternsPort">
    <operation name="check">
      <input message="tns:checkRequest"/>
      <output message="tns:checkReply"/>
    </operation>
  </portType>
  <binding name="PatternsBinding" type="tns:PatternsPort">
    <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <operation name="check">
      <soap:operation soapAction="urn:bench:patterns#check"/>
      <input><soap:body use="literal"/></input>
      <output><soap:body use="literal"/></output>
    </operation>
  </binding>
  <service name="Patterns">
    <port name="PatternsPort" binding="tns:PatternsBinding">
      <soap:address location="{base}service"/>
    </port>
  </service>
</definitions>
"""

ANSWER = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
    b'<tns:checkResponse xmlns:tns="urn:bench:patterns"><tns:ok>true</tns:ok>'
    b"</tns:checkResponse></soap:Body></soap:Envelope>"
)


class PatternService:
    """The SOAP service with the patterns: its WSDL at C{/?wsdl}, C{check} answered C{true}."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/"
        self.wsdl = f"{self.base}?wsdl"
        self.calls = 0
        text = WSDL.replace("{base}", self.base)
        for name, pattern in PATTERNS.items():
            text = text.replace("{" + name + "}", pattern)
        wsdl = text.encode()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._answer(wsdl, "text/xml")

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                service.calls += 1
                self._answer(ANSWER, "text/xml; charset=utf-8")

            def _answer(self, body: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the pinger (a process of its own, so that this one's threads do not delay it) ----------


def ping(url: str, interval: float, stop: Any, out: Connection) -> None:
    """
    Ask C{url} every C{interval} seconds (the next at once when one took longer) until C{stop}
    is set; send back the seconds each took, and the requests that failed.
    """
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    latencies: list[float] = []
    failures = 0
    connection: HTTPConnection | None = None
    next_at = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        next_at = max(next_at + interval, time.monotonic())
        try:
            if connection is None:
                connection = HTTPConnection(host, int(port), timeout=30)
                connection.connect()
            began = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            took = time.perf_counter() - began
            if response.status != 200:
                raise OSError(f"status {response.status}")
            latencies.append(took)
        except (OSError, HTTPException):
            failures += 1
            if connection is not None:
                connection.close()
            connection = None
    out.send({"latencies": latencies, "failures": failures})
    out.close()


class Pinger:
    """The pinger's process: L{start}, then L{stop} answers what it measured."""

    def __init__(self, url: str, interval: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._mine, theirs = context.Pipe(duplex=False)
        self._process = context.Process(
            target=ping, args=(url, interval, self._stop, theirs), daemon=True
        )
        self._theirs = theirs

    def start(self) -> None:
        self._process.start()
        self._theirs.close()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        result: dict[str, Any] = self._mine.recv()
        self._process.join(30)
        return result


# -- the cases --------------------------------------------------------------------------------


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile C{p} (0 to 100) of C{values}."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(latencies: list[float], bound: float) -> dict[str, Any]:
    if not latencies:
        return {"requests": 0}
    ms = [x * 1000 for x in latencies]
    return {
        "requests": len(ms),
        "p50 (ms)": round(percentile(ms, 50), 2),
        "p99 (ms)": round(percentile(ms, 99), 2),
        "max (ms)": round(max(ms), 2),
        f"over {bound * 1000:g} ms": sum(x > bound * 1000 for x in ms),
    }


def backtracking_control(lengths: Sequence[int] = (16, 18, 20, 22)) -> dict[str, float]:
    """Seconds Python's (backtracking) C{re} takes to fail C{(a+)+b} on C{"a" * n + "!"}."""
    found = {}
    for n in lengths:
        began = time.perf_counter()
        assert re.fullmatch(PATTERNS["nested"], "a" * n + "!") is None
        found[f"a*{n}+!"] = round(time.perf_counter() - began, 3)
    return found


class Bench:
    def __init__(self, options: argparse.Namespace, folder: Path) -> None:
        self.options = options
        self.folder = folder
        self.couch = options.couch.rstrip("/")
        self.db = f"{self.couch}/reactor-{int(time.time())}"
        if options.ports is not None:
            service_port, self.api_port = options.ports, options.ports + 1
        else:
            service_port, self.api_port = free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.service = PatternService(service_port)
        self.gateway: processes.Process | None = None
        self.made = False

    def start(self) -> dict[str, Any]:
        """The service, the database and its idle messages, couchgw; once they are rejected."""
        options = self.options
        self.service.start()
        status, body = http("PUT", self.db, timeout=60)
        if status not in (201, 202):
            raise RuntimeError(f"cannot create {self.db}: {status} {body}")
        self.made = True
        began = time.monotonic()
        for first in range(0, options.messages, 1000):
            docs = [
                {
                    "_id": f"idle-{i:06d}",
                    "type": "message",
                    "target": NOWHERE,
                    "operation": "check",
                    "args": {"nested": "aab"},
                }
                for i in range(first, min(first + 1000, options.messages))
            ]
            status, body = http("POST", f"{self.db}/_bulk_docs", {"docs": docs}, timeout=120)
            if status != 201:
                raise RuntimeError(f"cannot write the messages: {status} {body}")
        written = time.monotonic() - began
        argv = [
            processes.TWISTD,
            "--nodaemon",
            "--pidfile=",
            "couchgw",
            "--couch",
            self.db,
            "--target",
            self.service.wsdl,
            "--http",
            f"tcp:{self.api_port}:interface=127.0.0.1",
        ]
        log = self.folder / "couchgw.log"
        self.gateway = processes.Process(argv, log, ready=f"{self.api}/ready")
        began = time.monotonic()
        self.gateway.start(wait=True)

        def all_rejected() -> bool:
            if self.rejected() >= options.messages:
                return True
            time.sleep(2)  # (each look reads /metrics)
            return False

        wait_until(all_rejected, 3600, f"the {options.messages} idle messages rejected")
        rejected_in = time.monotonic() - began
        # a first valid message, to see the feed past the rejections: it passes over couchgw's
        # own writes (a filtered feed), which CouchDB may scan again for the next new message
        warm_up = self.write("warm-up", {"nested": "ab"})
        self.wait_final("warm-up", 600)
        return {
            "idle messages written in (s)": round(written, 1),
            "rejected by couchgw in (s, from its start)": round(rejected_in, 1),
            "then a valid message forwarded in (s)": round(time.time() - warm_up, 2),
        }

    def rejected(self) -> int:
        """Messages couchgw rejected so far (its /metrics)."""
        return int(self.metric("couchgw_messages_total{", 'status="rejected"') or 0)

    def metric(self, name: str, label: str = "") -> float | None:
        """The sum of a metric's samples (with C{label}) in couchgw's /metrics (None: none)."""
        status, body = http("GET", f"{self.api}/metrics", timeout=60)
        if status != 200:
            return None
        found: float | None = None
        for line in str(body).splitlines():
            if line.startswith(name) and label in line:
                found = (found or 0.0) + float(line.rsplit(" ", 1)[1])
        return found

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        self.service.stop()
        if self.made:
            try:
                http("DELETE", self.db, timeout=120)
            except OSError as e:
                print(f"cannot delete {self.db}: {e}", file=sys.stderr)

    def measure(
        self,
        case: str,
        work: Callable[[float], dict[str, Any]],
        before: Callable[[], dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """
        /health every --interval while C{work(until)} runs (until: a time.monotonic()), after
        C{before()}.
        """
        options = self.options
        prepared = {} if before is None else before()
        load_before = loadavg()
        pinger = Pinger(f"{self.api}/health", options.interval)
        pinger.start()
        time.sleep(1)  # the pinger's process is up (its first answers are the case's too)
        until = time.monotonic() + options.seconds
        figures = work(until)
        if time.monotonic() < until:
            time.sleep(until - time.monotonic())
        measured = pinger.stop()
        return {
            "case": case,
            "load before": load_before,
            "load after": loadavg(),
            "/health": summary(measured["latencies"], options.bound),
            "/health failures": measured["failures"],
            **prepared,
            **figures,
        }

    # -- the work of each case ---------------------------------------------------------------

    def nothing(self, until: float) -> dict[str, Any]:
        return {}

    def valid(self) -> dict[str, Any]:
        """A valid message, forwarded (the route calls the service)."""
        at = self.write("valid", {"nested": "aaab", "starred": "abc1"})
        doc = self.wait_final("valid", 120)
        if doc.get("status") != "forwarded":
            raise RuntimeError(f"the valid message was not forwarded: {doc}")
        return {"valid message (before)": f"{doc['status']} in {time.time() - at:.2f}s"}

    def patterns(self, until: float) -> dict[str, Any]:
        options = self.options
        results: list[tuple[float, str, str]] = []
        lock = threading.Lock()

        def writer(w: int) -> None:
            i = 0
            while time.monotonic() < until:
                name = ("nested", "starred")[i % 2]
                doc_id = f"backtrack-{w}-{i}"
                at = self.write(doc_id, {name: "a" * options.length + "!"})
                doc = self.wait_final(doc_id, 120)
                took = time.time() - at
                reason = str((doc.get("error") or {}).get("message", doc.get("status")))
                with lock:
                    results.append((took, str(doc.get("status")), reason[:160]))
                i += 1

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(options.writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {
            "backtracking messages": len(results),
            "their statuses": dict(Counter(status for _, status, _ in results)),
            "written -> rejected (ms) p50 / p99 / max": [
                round(percentile([t for t, _, _ in results], p) * 1000, 1) for p in (50, 99, 100)
            ]
            if results
            else None,
            "reasons": sorted({reason for _, _, reason in results}),
            "calls the service got": self.service.calls,
        }

    def events(self, until: float) -> dict[str, Any]:
        options = self.options
        rounds: list[list[dict[str, Any]]] = []
        while time.monotonic() < until:
            ended: list[dict[str, Any]] = []

            def client(ended: list[dict[str, Any]] = ended) -> None:
                ended.append(self.read_events())

            threads = [threading.Thread(target=client) for _ in range(options.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rounds.append(ended)
        return {
            "rounds": len(rounds),
            "each round: seconds of the slowest client": [
                round(max(c["seconds"] for c in r), 2) for r in rounds
            ],
            "events each client read": sorted({c["events"] for r in rounds for c in r}),
            "how they ended": dict(Counter(c["end"] for r in rounds for c in r)),
        }

    def read_events(self) -> dict[str, Any]:
        """Ask /events?since=0 and read until its gap event (or 5 s of silence)."""
        began = time.monotonic()
        events, end, tail, silent = 0, "closed", b"", 0.0
        with socket.create_connection(("127.0.0.1", self.api_port), timeout=5) as sock:
            sock.sendall(
                b"GET /events?since=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Accept: text/event-stream\r\n\r\n"
            )
            while True:
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    end, silent = "silent 5 s", 5.0
                    break
                if not data:
                    break
                chunk = tail + data
                events += chunk.count(b"event: status\n")
                if b"event: gap\n" in chunk:
                    end = "gap event"
                    break
                tail = chunk[-20:]
                events -= tail.count(b"event: status\n")  # counted again with the next chunk
        return {"seconds": time.monotonic() - began - silent, "events": events, "end": end}

    # -- messages -----------------------------------------------------------------------------

    def write(self, doc_id: str, args: dict[str, str]) -> float:
        doc = {"_id": doc_id, "type": "message", "operation": "check", "args": args}
        at = time.time()
        status, body = http("PUT", f"{self.db}/{doc_id}", doc)
        if status != 201:
            raise RuntimeError(f"cannot write {doc_id}: {status} {body}")
        return at

    def wait_final(self, doc_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status, doc = http("GET", f"{self.db}/{doc_id}")
            if status == 200 and doc.get("status") in ("forwarded", "rejected", "failed"):
                return dict(doc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{doc_id} not final after {timeout}s: {doc}")
            time.sleep(0.02)


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so that the database is deleted and the processes end


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--couch", required=True, help="an Apache CouchDB server (admin)")
    parser.add_argument("--only", default=",".join(CASES), help="the cases, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0, help="each case's length")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between /health")
    parser.add_argument("--bound", type=float, default=0.05, help="seconds /health may take")
    parser.add_argument("--messages", type=int, default=100000, help="idle messages written")
    parser.add_argument("--length", type=int, default=50000, help="the backtracking string's")
    parser.add_argument("--writers", type=int, default=1, help="clients writing them")
    parser.add_argument("--clients", type=int, default=10, help="clients of /events?since=0")
    parser.add_argument(
        "--ports",
        type=int,
        default=None,
        help="the first of two ports on 127.0.0.1: the SOAP service, couchgw's API "
        "(default: free ones)",
    )
    parser.add_argument("--json", default=None, help="a file to append the figures to")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (the log)")
    options = parser.parse_args()
    cases = [case for case in options.only.split(",") if case]
    if not set(cases) <= set(CASES):
        parser.error(f"--only takes {', '.join(CASES)}")
    problem = server_problem(options.couch)
    if problem is not None:
        parser.error(problem)
    signal.signal(signal.SIGTERM, _interrupted)
    figures: dict[str, Any] = {"backtracking in Python's re (s)": backtracking_control()}
    print(json.dumps(figures), flush=True)
    folder = Path(tempfile.mkdtemp(prefix="couchgw-reactor-"))
    print(f"run folder: {folder}", flush=True)
    bench = Bench(options, folder)
    over = False
    try:
        figures["start"] = bench.start()
        print(json.dumps(figures["start"]), flush=True)
        work = {"baseline": bench.nothing, "pattern": bench.patterns, "events": bench.events}
        for case in cases:
            result = bench.measure(case, work[case], bench.valid if case == "pattern" else None)
            figures[case] = result
            print(json.dumps(result, indent=2), flush=True)
            health = result["/health"]
            over = over or not health.get("requests") or health["max (ms)"] > options.bound * 1000
    finally:
        bench.stop()
        if options.json:
            with open(options.json, "a") as out:
                out.write(json.dumps({"settings": _settings(options), **figures}) + "\n")
        if options.keep:
            print(f"log kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 1 if over else 0


def _settings(options: argparse.Namespace) -> dict[str, Any]:
    return {key: value for key, value in vars(options).items() if key not in ("couch", "json")}


if __name__ == "__main__":
    sys.exit(main())
