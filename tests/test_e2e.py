"""
couchgw as users run it: C{twistd -n couchgw} in a process of its own, messages posted with plain
HTTP, against real servers.  Uses the installed package (C{make test} installs the wheel).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from couchgw.embedded import find_executable
from tests.servers import (
    COUCH_ENV,
    ROOT,
    free_port,
    http,
    new_db_url,
    start_demo,
    stop,
    wait_until,
)

TWISTD = str(Path(sys.executable).parent / "twistd")
TERMINAL = {"forwarded", "failed", "rejected", "cancelled"}


class Twistd:
    def __init__(self, folder: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.http_port = free_port()
        self.log = folder / "couchgw.log"
        env = {**os.environ, "COUCHGW_POUCHDB_SERVER": find_executable(), **(env or {})}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    TWISTD,
                    "--nodaemon",
                    "--pidfile=",
                    "couchgw",
                    *args,
                    "--http",
                    f"tcp:{self.http_port}:interface=127.0.0.1",
                ],
                cwd=folder,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"couchgw exited:\n{self.log.read_text()}")
            return http("GET", f"{self.api}/ready", timeout=2)[0] == 200

        wait_until(ready, timeout, "couchgw to be ready")

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Any]:
    started: list[Twistd] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Twistd:
        started.append(Twistd(tmp_path, *args, env=env))
        return started[-1]

    yield start
    for gateway in started:
        stop(gateway.process)


def wait_terminal(db: str, ids: list[str], timeout: float) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        _, body = http("POST", f"{db}/_all_docs?include_docs=true", {"keys": ids})
        docs = {row["id"]: row["doc"] for row in body["rows"] if row.get("doc")}
        done = [d for d in docs.values() if d.get("status") in TERMINAL]
        return docs if len(done) == len(ids) else None

    return dict(wait_until(finished, timeout, f"{len(ids)} messages to finish"))


def test_embedded_defaults(tmp_path: Path, gateways: Any) -> None:
    """What `make run` does: embedded CouchDB and demo target; a curl-style POST is forwarded."""
    couch_port = free_port()
    gateway = gateways(
        "--data",
        str(tmp_path / "data"),
        "--in-memory",
        "--embedded-port",
        str(couch_port),
        "--demo-port",
        "0",
    )
    gateway.wait_ready()
    db = f"http://127.0.0.1:{couch_port}/messages"
    status, body = http(
        "POST",
        db,
        {"type": "message", "operation": "activate", "args": {"network": "north", "count": 3}},
    )
    assert status == 201, body
    doc = wait_terminal(db, [body["id"]], 30)[body["id"]]
    assert doc["status"] == "forwarded"
    assert doc["result"]["activated"] == 3
    status, state = http("GET", f"{gateway.api}/status")
    assert status == 200
    assert state["counts"] == {"forwarded": 1}
    assert state["routes"]["default"]["state"] == "ready"
    assert state["feed"]["state"] == "connected"
    # twistd stops cleanly, then exits by the signal it was sent (as twistd does since 21.2).
    assert gateway.terminate() == -signal.SIGTERM
    assert "Server Shut Down." in gateway.log.read_text()
    # The embedded CouchDB stopped with it.
    with pytest.raises(OSError):
        http("GET", f"http://127.0.0.1:{couch_port}/", timeout=2)


def test_burst_of_slow_calls(tmp_path: Path, gateways: Any) -> None:
    """200 one-second calls with 20 threads take about ten seconds, and none is made twice."""
    wsdl, demo = start_demo(tmp_path / "demo.log", delay=0.1)
    try:
        db = new_db_url("burst")
        gateway = gateways(
            "--couch", db, "--target", wsdl, "--threads", "20", "--max-inflight", "40"
        )
        gateway.wait_ready()
        ids = [f"burst-{i:03d}" for i in range(200)]
        started = time.monotonic()
        docs = [
            {
                "_id": i,
                "type": "message",
                "operation": "activate",
                "args": {"network": i, "count": 10},
            }
            for i in ids
        ]
        status, _ = http("POST", f"{db}/_bulk_docs", {"docs": docs})
        assert status == 201
        finished = wait_terminal(db, ids, 90)
        elapsed = time.monotonic() - started
        print(f"\n200 x 1 s calls with 20 threads: {elapsed:.1f} s (ideal 10 s)")
        assert {d["status"] for d in finished.values()} == {"forwarded"}
        assert {d["attempts"] for d in finished.values()} == {1}
        calls = Counter(
            line.split("network=")[1].split()[0]
            for line in (tmp_path / "demo.log").read_text().splitlines()
            if "activate network=burst-" in line
        )
        assert set(calls) == set(ids)
        assert max(calls.values()) == 1
    finally:
        stop(demo)


def test_a_backlog_is_read_in_turns(tmp_path: Path, gateways: Any) -> None:
    """
    While messages wait for their route, the feed of a CouchDB database is read in turns (its
    state says so), then followed for ever again once none waits; each message is called once,
    one written meanwhile too.  PouchDB Server's is followed for ever throughout.
    """
    wsdl, demo = start_demo(tmp_path / "demo.log", delay=0.1)
    try:
        db = new_db_url("turns")
        gateway = gateways("--couch", db, "--target", wsdl, "--threads", "5")
        gateway.wait_ready()
        ids = [f"turn-{i:03d}" for i in range(100)]
        docs = [
            {"_id": i, "type": "message", "operation": "activate", "args": {"network": i}}
            for i in ids
        ]
        docs = [{**doc, "args": {**doc["args"], "count": 1}} for doc in docs]
        assert http("POST", f"{db}/_bulk_docs", {"docs": docs})[0] == 201
        states: list[str] = []

        def state() -> str:
            states.append(http("GET", f"{gateway.api}/status")[1]["feed"]["state"])
            return states[-1]

        wait_until(lambda: state() != "connected" or len(states) > 40, 30, "the backlog read")
        late = {**docs[0], "_id": "turn-late", "args": {"network": "turn-late", "count": 1}}
        assert http("POST", db, late)[0] == 201
        ids.append("turn-late")

        def drained() -> bool:
            state()
            _, body = http("POST", f"{db}/_all_docs?include_docs=true", {"keys": ids})
            return all((row.get("doc") or {}).get("status") in TERMINAL for row in body["rows"])

        wait_until(drained, 60, f"{len(ids)} messages to finish")
        wait_until(lambda: state() == "connected", 30, "the feed followed for ever again")
        turns = "read in turns" in states
        assert turns == bool(os.environ.get(COUCH_ENV)), sorted(set(states))
        assert set(states) <= {"connected", "read in turns"}, sorted(set(states))
        calls = Counter(
            line.split("network=")[1].split()[0]
            for line in (tmp_path / "demo.log").read_text().splitlines()
            if "activate network=turn-" in line
        )
        assert set(calls) == set(ids) and max(calls.values()) == 1, calls
    finally:
        stop(demo)


def test_routes_file_with_a_plugin_kind(tmp_path: Path, gateways: Any) -> None:
    """
    A routes file names an http route (the demo's JSON operations) and a route of a kind that
    a plugin from another package supplies (tests/kinds); GET /routes describes them all.
    """
    wsdl, demo = start_demo(tmp_path / "demo.log")
    try:
        routes = tmp_path / "routes.toml"
        routes.write_text(
            f'[routes.web]\nkind = "http"\nurl = "{wsdl.replace("/?wsdl", "/json")}"\n'
            'operation = "ping"\n\n'
            '[routes.echo]\nkind = "echo"\nprefix = "plugged"\nrate = 50\n'
        )
        db = new_db_url("routes")
        kinds = str(ROOT / "tests" / "kinds")
        gateway = gateways(
            "--couch", db, "--target", wsdl, "--routes", str(routes), env={"PYTHONPATH": kinds}
        )
        gateway.wait_ready()
        docs = [
            {"_id": "soap", "type": "message", "operation": "ping", "text": "s"},
            {"_id": "web", "type": "message", "target": "web", "text": "w"},
            {"_id": "echo", "type": "message", "target": "echo", "args": {"a": 1}},
            {"_id": "nowhere", "type": "message", "target": "nowhere"},
        ]
        status, _ = http("POST", f"{db}/_bulk_docs", {"docs": docs})
        assert status == 201
        done = wait_terminal(db, [d["_id"] for d in docs], 30)
        assert (done["soap"]["status"], done["soap"]["result"]) == ("forwarded", "s")
        assert (done["web"]["status"], done["web"]["result"]) == ("forwarded", "w")
        assert done["echo"]["status"] == "forwarded"
        assert done["echo"]["result"] == {
            "echo": {"a": 1},
            "operation": None,
            "id": "echo",
            "by": "plugged",
        }
        assert done["nowhere"]["status"] == "rejected"
        assert done["nowhere"]["error"]["message"] == (
            "there is no route 'nowhere' (routes: default, echo, web)"
        )
        status, described = http("GET", f"{gateway.api}/routes")
        assert status == 200
        assert {name: r["kind"] for name, r in described.items()} == {
            "default": "soap",
            "web": "http",
            "echo": "echo",
        }
        assert described["echo"]["prefix"] == "plugged"
        assert described["echo"]["rate"] == 50
        assert described["web"]["default_operation"] == "ping"
        activate = described["default"]["operations"]["activate"]
        assert [(p["name"], p["type"], p["required"]) for p in activate] == [
            ("network", "string", True),
            ("count", "integer", True),
        ]
        schema = described["default"]["schemas"]["activate"]  # the JSON Schema of its args
        jsonschema.Draft202012Validator.check_schema(schema)
        validator = jsonschema.Draft202012Validator(schema)
        assert validator.is_valid({"network": "north", "count": 2})
        assert validator.is_valid(["north", 2])
        assert not validator.is_valid({"network": "north"})
        assert not validator.is_valid({"network": "north", "count": "two"})
        status, one = http("GET", f"{gateway.api}/routes/web")
        assert (status, one["url"]) == (200, wsdl.replace("/?wsdl", "/json"))
        assert http("GET", f"{gateway.api}/routes/nowhere")[0] == 404
    finally:
        stop(demo)


def test_bad_option_exits_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [TWISTD, "--nodaemon", "--pidfile=", "couchgw", "--threads", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "twistd couchgw: --threads must be a whole number from 1 to 1000, not '0' (see twistd couchgw --help)"
    ]


def test_help_documents_every_option(tmp_path: Path) -> None:
    from couchgw.tap import Options

    done = subprocess.run(
        [TWISTD, "couchgw", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    for name, *_ in Options.optParameters + Options.optFlags:
        assert f"--{name}" in done.stdout


def test_configuration_reference_agrees_with_help(tmp_path: Path) -> None:
    """docs/configuration.md is what couchgw.reference writes, and says what --help says."""
    from couchgw.reference import reference, rows

    assert (ROOT / "docs" / "configuration.md").read_text() == reference(), (
        "docs/configuration.md is stale: python -m couchgw.reference > docs/configuration.md"
    )
    done = subprocess.run(
        [TWISTD, "couchgw", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    helped: dict[str, str] = {}
    current = None
    for line in done.stdout.splitlines():
        found = re.match(r" {1,8}(?:-\w, )?--([\w-]+)=?\s+(.*)", line)
        if found:
            current = found[1]
            helped[current] = found[2]
        elif current and line.startswith(" " * 20):
            helped[current] += " " + line.strip()
    documented = {}
    for option, default, meaning in rows():
        name = option.strip("`").removeprefix("--")
        text = " ".join(helped[name].split())
        shown = re.search(r" ?\[default: (.*)\]$", text)
        documented[name] = (meaning, None if default in ("none", "off") else default.strip("`"))
        assert (re.sub(r" ?\[default: .*\]$", "", text), shown[1] if shown else None) == (
            documented[name]
        ), name
    assert set(helped) - {"help", "version"} == set(documented)


def test_json_logs(tmp_path: Path) -> None:
    """twistd --logger couchgw.logs.json: one JSON object per line."""
    db = new_db_url("json-logs")
    wsdl, demo = start_demo(tmp_path / "demo.log")
    api = free_port()
    process = subprocess.Popen(
        [
            TWISTD,
            "--nodaemon",
            "--pidfile=",
            "--logger",
            "couchgw.logs.json",
            "couchgw",
            "--couch",
            db,
            "--target",
            wsdl,
            "--http",
            f"tcp:{api}:interface=127.0.0.1",
        ],
        cwd=tmp_path,
        stdout=(tmp_path / "couchgw.json").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: http("GET", f"http://127.0.0.1:{api}/ready", timeout=2)[0] == 200, 60)
        http("PUT", f"{db}/j1", {"type": "message", "operation": "ping"})
        wait_terminal(db, ["j1"], 30)
    finally:
        stop(demo)
        process.terminate()
        process.wait(30)
    output = (tmp_path / "couchgw.json").read_text()
    events = [json.loads(line) for line in output.splitlines() if line.strip()]
    forwarded = [
        e
        for e in events
        if e.get("log_namespace") == "couchgw.gateway" and e.get("status") == "forwarded"
    ]
    assert [(e["id"], e["route"], e["log_level"]["name"]) for e in forwarded] == [
        ("j1", "default", "info")
    ]
    assert forwarded[0]["duration"] >= 0


def test_designdocs_push_command(tmp_path: Path) -> None:
    command = str(Path(sys.executable).parent / "couchgw")
    db = new_db_url("push")
    args = [command, "designdocs", "push", "--couch", db]
    first = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert (first.returncode, first.stdout) == (
        0,
        "pushed: _design/couchgw, _design/couchgw-console\n",
    )
    again = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert (again.returncode, again.stdout) == (0, "up to date: nothing to push\n")
    dead = subprocess.run(
        [command, "designdocs", "push", "--couch", f"http://127.0.0.1:{free_port()}/x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dead.returncode == 1
    assert dead.stderr.startswith("couchgw: ") and len(dead.stderr.strip().splitlines()) == 1


def activations(log: Path, prefix: str) -> Counter[str]:
    """How many times the demo finished activating each network (a message id)."""
    return Counter(
        line.split("activated network=")[1].split()[0]
        for line in log.read_text().splitlines()
        if f"activated network={prefix}" in line
    )


def activation_docs(ids: list[str], count: int) -> list[dict[str, Any]]:
    return [
        {
            "_id": i,
            "type": "message",
            "operation": "activate",
            "args": {"network": i, "count": count},
        }
        for i in ids
    ]


def test_three_gateways_share_a_database(tmp_path: Path, gateways: Any) -> None:
    """Three processes on one database forward 1000 messages, none of them twice."""
    wsdl, demo = start_demo(tmp_path / "demo.log", delay=0.01)
    try:
        db = new_db_url("three")
        started = [
            gateways("--couch", db, "--target", wsdl, "--threads", "10", "--sweep", "2")
            for _ in range(3)
        ]
        for gateway in started:
            gateway.wait_ready()
        ids = [f"three-{i:04d}" for i in range(1000)]
        status, _ = http("POST", f"{db}/_bulk_docs", {"docs": activation_docs(ids, 1)})
        assert status == 201
        finished = wait_terminal(db, ids, 240)
        assert {d["status"] for d in finished.values()} == {"forwarded"}
        assert {d["attempts"] for d in finished.values()} == {1}
        calls = activations(tmp_path / "demo.log", "three-")
        assert set(calls) == set(ids)
        assert max(calls.values()) == 1
        shares = [
            http("GET", f"{g.api}/status")[1]["finished_here"].get("forwarded", 0) for g in started
        ]
        assert sum(shares) == 1000
    finally:
        stop(demo)


def test_sigterm_mid_run_loses_nothing(tmp_path: Path, gateways: Any) -> None:
    """SIGTERM: calls end or are given back within --grace; the next start finishes the rest."""
    wsdl, demo = start_demo(tmp_path / "demo.log", delay=0.1)
    try:
        db = new_db_url("sigterm")
        first = gateways("--couch", db, "--target", wsdl, "--threads", "4", "--grace", "1")
        first.wait_ready()
        ids = [f"term-{i:02d}" for i in range(20)]
        status, _ = http("POST", f"{db}/_bulk_docs", {"docs": activation_docs(ids, 15)})
        assert status == 201

        def some_forwarded() -> bool:
            _, body = http("POST", f"{db}/_all_docs?include_docs=true", {"keys": ids})
            return any(row["doc"].get("status") == "forwarded" for row in body["rows"])

        wait_until(some_forwarded, 60, "the first messages to be forwarded")
        stopping = time.monotonic()
        assert first.terminate() == -signal.SIGTERM
        assert time.monotonic() - stopping < 10
        _, body = http("POST", f"{db}/_all_docs?include_docs=true", {"keys": ids})
        statuses = Counter(row["doc"].get("status") for row in body["rows"])
        assert "dispatching" not in statuses, statuses  # nothing left claimed
        assert statuses["forwarded"] < len(ids)

        second = gateways("--couch", db, "--target", wsdl, "--threads", "10")
        finished = wait_terminal(db, ids, 90)
        assert {d["status"] for d in finished.values()} == {"forwarded"}
        calls = activations(tmp_path / "demo.log", "term-")
        assert set(calls) == set(ids)
        given_back = [i for i in ids if finished[i]["attempts"] == 2]
        assert len(given_back) <= 4  # at most the calls in flight at the stop
        assert all(calls[i] == 1 for i in ids if i not in given_back)
        second.terminate()
    finally:
        stop(demo)


def _held_by(db: str, ids: list[str], gateway: str) -> set[str]:
    """The messages the gateway C{gateway} holds claims on."""
    _, body = http("POST", f"{db}/_all_docs?include_docs=true", {"keys": ids})
    return {
        row["id"]
        for row in body["rows"]
        if row["doc"].get("status") == "dispatching"
        and (row["doc"].get("claim") or {}).get("by") == gateway
    }


def _killed_mid_call(
    tmp_path: Path,
    gateways: Any,
    prefix: str,
    options: list[str],
    before: list[list[str]],
    after: list[list[str]],
) -> tuple[float, set[str]]:
    """
    A gateway (C{options}) is SIGKILLed while it calls; gateways with the options C{before}
    run beside it, and with those C{after} are started just after the kill.  Answers the
    seconds from the kill until no message was held by the dead gateway, and the messages it
    held; checks that every message is forwarded and that only those held were called twice.
    """
    wsdl, demo = start_demo(tmp_path / "demo.log", delay=0.1)
    try:
        db = new_db_url(prefix)
        doomed = gateways("--couch", db, "--target", wsdl, *options)
        others = [gateways("--couch", db, "--target", wsdl, *args) for args in before]
        for gateway in [doomed, *others]:
            gateway.wait_ready()
        doomed_id = http("GET", f"{doomed.api}/status")[1]["gateway"]
        ids = [f"{prefix}-{i:02d}" for i in range(40)]
        status, _ = http("POST", f"{db}/_bulk_docs", {"docs": activation_docs(ids, 10)})
        assert status == 201
        wait_until(lambda: len(_held_by(db, ids, doomed_id)) >= 3, 60, "calls in flight")
        os.kill(doomed.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        doomed.process.wait(10)
        held = _held_by(db, ids, doomed_id)
        others += [gateways("--couch", db, "--target", wsdl, *args) for args in after]
        wait_until(lambda: not _held_by(db, ids, doomed_id), 120, "the dead gateway's claims")
        took = time.monotonic() - killed
        finished = wait_terminal(db, ids, 120)
        assert {d["status"] for d in finished.values()} == {"forwarded"}
        calls = activations(tmp_path / "demo.log", f"{prefix}-")
        assert set(calls) == set(ids)
        assert {i for i, n in calls.items() if n > 1} <= held, (calls, held)
        return took, held
    finally:
        stop(demo)


def test_a_killed_gateways_messages_are_taken_over_within_seconds(
    tmp_path: Path, gateways: Any
) -> None:
    """
    SIGKILL mid-call, the default --lease of 600 s and --announce of 5 s: another gateway
    takes the dead one's claims over once its announcement expires, not its leases.
    """
    took, held = _killed_mid_call(
        tmp_path, gateways, "kill", ["--threads", "5"], [["--threads", "5"]], []
    )
    assert held
    print(f"taken over {took:.1f}s after the kill ({len(held)} claims)")
    assert took < 30, took


def test_a_restarted_gateway_takes_its_dead_predecessors_claims_at_once(
    tmp_path: Path, gateways: Any
) -> None:
    """
    A gateway SIGKILLed and started again on the same host: the new process sees the old one's
    process gone and takes its claims at once, long before its announcement (--announce 30:
    alive for 90 s) would expire.
    """
    options = ["--threads", "5", "--announce", "30"]
    took, held = _killed_mid_call(tmp_path, gateways, "restart", options, [], [options])
    assert held
    print(f"taken over {took:.1f}s after the kill ({len(held)} claims)")
    assert took < 60, took
