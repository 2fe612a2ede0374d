"""
For operators: /metrics, the live page in headless Chromium, and couchgw as twistd runs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from couchgw.timing import iso
from tests.servers import free_port, http, new_db_url, start_demo, stop, wait_until
from tests.test_e2e import Twistd, wait_terminal

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def running(tmp_path: Path) -> Any:
    """couchgw (twistd) on a fresh database, routing to a demo service of its own."""
    wsdl, demo = start_demo(tmp_path / "demo.log")
    db = new_db_url("ops")
    gateway = Twistd(tmp_path, "--couch", db, "--target", wsdl)
    try:
        gateway.wait_ready()
        yield gateway, db
    finally:
        stop(gateway.process)
        stop(demo)


def metrics(api: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = http("GET", f"{api}/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_move_as_messages_flow(running: Any) -> None:
    gateway, db = running
    before = metrics(gateway.api)
    forwarded = ("couchgw_messages_total", (("route", "default"), ("status", "forwarded")))
    assert before.get(forwarded, 0) == 0
    assert before[("couchgw_in_flight", (("route", "default"),))] == 0
    assert before[("couchgw_route_ready", (("route", "default"),))] == 1
    assert before[("couchgw_feed_connected", ())] == 1
    docs = [{"_id": f"m{i}", "type": "message", "operation": "ping"} for i in range(3)]
    docs.append({"_id": "bad", "type": "message", "operation": "explode"})
    assert http("POST", f"{db}/_bulk_docs", {"docs": docs})[0] == 201
    wait_terminal(db, [d["_id"] for d in docs], 30)
    after = metrics(gateway.api)
    assert after[forwarded] == 3
    assert after[("couchgw_messages_total", (("route", "default"), ("status", "rejected")))] == 1
    assert after[("couchgw_dispatch_duration_seconds_count", (("route", "default"),))] == 3
    assert after[("couchgw_dispatch_duration_seconds_sum", (("route", "default"),))] > 0
    assert after[("couchgw_feed_lag_changes", ())] >= 0
    assert after[("couchgw_checkpoint_age_seconds", ())] >= 0
    assert ("couchgw_feed_reconnects_total", ()) in after
    assert ("couchgw_retries_total", (("route", "default"),)) not in after  # none yet
    assert after[("couchgw_claims_total", (("answer", "taken"),))] == 3  # alone: each at once
    assert after[("couchgw_claims_total", (("answer", "lost"),))] == 0
    assert after[("couchgw_gateways", ())] == 1


needs_chromium = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
)


def chromium(tmp_path: Path) -> Any:
    """Headless Chromium, as the machine allows it (its closed network, no sandbox as root)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1200,900",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def reader(browser: Any) -> Any:
    def text(selector: str, attribute: str = "") -> str | None:
        """An element's text (or attribute), read in one step: the page redraws rows."""
        script = (
            "var e = document.querySelector(arguments[0]);"
            "return e && (arguments[1] ? e.getAttribute(arguments[1]) : e.textContent);"
        )
        return browser.execute_script(script, selector, attribute)  # type: ignore[no-any-return]

    return text


@needs_chromium
def test_live_page_in_chromium(running: Any, tmp_path: Path) -> None:
    gateway, db = running
    browser = chromium(tmp_path)
    try:
        browser.get(f"{gateway.api}/")
        assert browser.title == "couchgw"
        text = reader(browser)
        wait_until(lambda: text("#ready") == "ready", 30, "the page to connect")
        doc = {"_id": "page-1", "type": "message", "operation": "activate", "args": ["north", 5]}
        assert http("PUT", f"{db}/page-1", doc)[0] == 201
        seen: list[str | None] = []

        def forwarded() -> bool:
            seen.append(text('tr[data-id="page-1"] td.status-cell', "data-status"))
            return seen[-1] == "forwarded"

        wait_until(forwarded, 30, "the row to reach forwarded")
        assert "dispatching" in seen  # the row changed live, not only once it was over
        wait_until(  # the counts follow from the gateway's snapshots
            lambda: text('.count[data-status="forwarded"] .n') == "1", 30, "the forwarded count"
        )
        route = text('tr[data-route="default"]') or ""
        assert "soap" in route and "ready" in route
        later = {
            "_id": "page-later",
            "type": "message",
            "operation": "ping",
            "text": "later",
            "priority": "high",
            "not_before": iso(time.time() + 3600),
        }
        assert http("PUT", f"{db}/page-later", later)[0] == 201
        wait_until(
            lambda: text('tr[data-id="page-later"] td.status-cell', "data-status") == "scheduled",
            30,
            "a scheduled row",
        )
        assert text('tr[data-id="page-later"] td.priority') == "high"
        assert "until" in (text('tr[data-id="page-later"] td.status-cell .when') or "")
        wait_until(
            lambda: text('.count[data-status="scheduled"] .n') == "1", 30, "the scheduled count"
        )
        browser.save_screenshot(str(tmp_path / "page.png"))
    finally:
        browser.quit()


@needs_chromium
def test_a_route_out_and_back(tmp_path: Path) -> None:
    """
    The target goes away: the route is out, /status and the page say since when, the last probe
    and the next, /metrics counts the probes; the target comes back: the route closes, and the
    message that waited is forwarded.
    """
    port = free_port()
    wsdl, demo = start_demo(tmp_path / "demo.log", port=port)
    db = new_db_url("out")
    gateway = Twistd(tmp_path, "--couch", db, "--target", wsdl, "--timeout", "5")
    browser = chromium(tmp_path)
    try:
        gateway.wait_ready()
        assert http("PUT", f"{db}/before", {"type": "message", "operation": "ping"})[0] == 201
        wait_terminal(db, ["before"], 30)
        stop(demo)  # connections refused from now on
        assert http("PUT", f"{db}/during", {"type": "message", "operation": "ping"})[0] == 201

        def route() -> dict[str, Any]:
            return http("GET", f"{gateway.api}/status")[1]["routes"]["default"]

        out = wait_until(
            lambda: (r := route())["breaker"]["last_probe"] and r, 60, "a probe of the route out"
        )
        assert out["state"] == "out"
        assert out["breaker"]["out_since"] and out["breaker"]["opened"] == 1
        assert out["breaker"]["last_probe"]["result"].startswith("failed")
        found = metrics(gateway.api)
        key = (
            "couchgw_route_probes_total",
            (("how", "request"), ("result", "failed"), ("route", "default")),
        )
        assert found[key] >= 1
        assert found[("couchgw_route_ready", (("route", "default"),))] == 0
        browser.get(f"{gateway.api}/")
        text = reader(browser)
        wait_until(
            lambda: "out since" in (text('tr[data-route="default"] td.outage') or ""),
            30,
            "the page to show the outage",
        )
        cell = text('tr[data-route="default"] td.outage') or ""
        assert "last probe" in cell and ("next probe" in cell or "now" in cell), cell
        browser.save_screenshot(str(tmp_path / "out.png"))
        _, demo = start_demo(tmp_path / "demo.log", port=port)  # back, where it was
        done = wait_terminal(db, ["during"], 120)
        assert done["during"]["status"] == "forwarded"
        assert done["during"]["attempts"] == 1  # the outage cost it no attempt
        wait_until(lambda: route()["breaker"]["state"] == "closed", 30, "the route to close")
        wait_until(
            lambda: text('tr[data-route="default"] td.outage') == "outages since start: 1",
            30,
            "the page to show the route back",
        )
    finally:
        browser.quit()
        stop(gateway.process)
        stop(demo)


@needs_chromium
def test_the_page_of_many_databases(tmp_path: Path) -> None:
    """--databases: the page counts the databases served and what finished in any of them."""
    wsdl, demo = start_demo(tmp_path / "demo.log")
    first = new_db_url("pagefleet")
    server, name = first.rsplit("/", 1)
    prefix = name + "-"
    dbs = [f"{server}/{prefix}{i}" for i in range(2)]
    for db in dbs:
        assert http("PUT", db)[0] in (201, 202)
    gateway = Twistd(tmp_path, "--couch", server, "--databases", prefix + "*", "--target", wsdl)
    browser = chromium(tmp_path)
    try:
        gateway.wait_ready()
        for i, db in enumerate(dbs):
            doc = {"type": "message", "operation": "ping", "text": "hi"}
            assert http("PUT", f"{db}/m{i}", doc)[0] == 201
        for i, db in enumerate(dbs):
            wait_terminal(db, [f"m{i}"], 60)
        browser.get(f"{gateway.api}/")
        text = reader(browser)
        wait_until(
            lambda: (text("#fleet-totals") or "").startswith("2 of 2 databases served"),
            30,
            "the page to count the databases",
        )
        assert prefix + "*" in (text("#fleet-totals") or "")
        assert text("#fleet", "hidden") is None
        wait_until(
            lambda: text('.count[data-status="forwarded"] .n') == "2", 30, "the forwarded count"
        )
    finally:
        browser.quit()
        stop(gateway.process)
        stop(demo)
        for db in dbs:
            http("DELETE", db)


COMMAND = str(Path(sys.executable).parent / "couchgw")


def cli(*args: str, db: str | None = None, answer: str = "") -> subprocess.CompletedProcess[str]:
    """The couchgw command; C{answer}: what it reads (its questions' answers)."""
    couch = ["--couch", db] if db else []
    if args and args[0] == "routes":
        couch = []
    return subprocess.run(
        [COMMAND, *args, *couch], capture_output=True, text=True, timeout=120, input=answer
    )


def test_cli_against_a_running_gateway(running: Any) -> None:
    gateway, db = running
    done = cli("submit", "activate", "network=north", "count=2", "--id", "cli-1", "--wait", db=db)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] in ("cli-1: new", "cli-1: dispatching · attempt 1")
    assert "cli-1: forwarded · attempt 1" in lines
    assert (
        json.loads("\n".join(lines[lines.index("cli-1: forwarded · attempt 1") + 1 :]))["activated"]
        == 2
    )

    failed = cli("submit", "refuse", "reason=maintenance", "--id", "cli-f", "--wait", db=db)
    assert failed.returncode == 1
    assert failed.stdout.splitlines()[-1] == (
        "cli-f: failed · attempt 1 · soap11env:Server.ActivationRefused: maintenance"
    )
    rejected = cli("submit", "explode", "--wait", db=db)
    assert rejected.returncode == 1
    assert "rejected · route 'default' has no operation 'explode'" in rejected.stdout

    quiet = cli("submit", "ping", "text=hi", "--id", "cli-2", db=db)
    assert (quiet.returncode, quiet.stdout) == (0, "cli-2\n")
    wait_terminal(db, ["cli-2"], 30)
    shown = cli("status", "cli-1", db=db)
    assert shown.returncode == 0
    state = json.loads(shown.stdout)
    assert (state["status"], state["attempts"], state["result"]["network"]) == (
        "forwarded",
        1,
        "north",
    )

    listed = cli("requeue", "--status", "failed", "--dry-run", db=db)
    assert listed.stdout.splitlines() == ["cli-f", "would requeue 1 failed message(s)"]
    sent = cli("requeue", "--status", "failed", "--since", "2000-01-01T00:00:00Z", "--yes", db=db)
    assert (sent.returncode, sent.stdout) == (
        0,
        "requeued 1 failed message(s) updated since 2000-01-01T00:00:00Z\n",
    )
    again = wait_until(
        lambda: (
            (doc := http("GET", f"{db}/cli-f")[1]).get("status") == "failed"
            and doc["_rev"].startswith(("5-", "6-"))
            and doc
        ),
        30,
        "the requeued message to fail again",
    )
    assert again["attempts"] == 1

    described = cli("routes", "--api", gateway.api)
    assert described.returncode == 0, described.stderr
    assert described.stdout.splitlines()[0].startswith("default (soap, ready) http://")
    assert "  activate(network: string, count: integer)" in described.stdout
    assert "  configure(device: string, port?: int, enabled?: boolean, weight?: double, " in (
        described.stdout
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["submit", "ping", "nokey"], "couchgw: argument 'nokey' is not key=value"),
        (["status", "nothing-here"], "couchgw: no message 'nothing-here' in "),
        (["requeue", "--since", "yesterday"], "couchgw: --since must be an ISO 8601 time"),
        (["list", "--status", "done"], "couchgw: --status must be one of new, cancelled, "),
        (["requeue", "--status", "new"], "couchgw: new messages are not requeued: status must"),
        (["cancel"], "couchgw: name the messages to cancel, or select them with --status"),
        (["list", "--limit", "0"], "couchgw: --limit must be from 1 to 500, not 0"),
        (["routes", "--api", "http://127.0.0.1:9/"], "couchgw: cannot reach http://127.0.0.1:9"),
    ],
)
def test_cli_bad_input_is_one_line(args: list[str], error: str) -> None:
    db = new_db_url("cli")
    http("PUT", db)
    done = cli(*args, db=db)
    assert done.returncode == 1
    assert done.stderr.startswith(error), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_cli_help_everywhere() -> None:
    for args in (
        [],
        ["submit"],
        ["status"],
        ["requeue"],
        ["list"],
        ["cancel"],
        ["designdocs"],
        ["designdocs", "push"],
        ["routes"],
    ):
        done = subprocess.run([COMMAND, *args, "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.startswith("usage: couchgw"), args


def test_cli_submit_is_idempotent_by_id() -> None:
    db = new_db_url("cli")
    http("PUT", db)
    assert cli("submit", "ping", "--id", "twice", db=db).returncode == 0
    again = cli("submit", "ping", "--id", "twice", db=db)
    assert (again.returncode, again.stderr) == (1, "couchgw: a message 'twice' exists already\n")


def test_cli_submit_with_a_priority_and_times() -> None:
    db = new_db_url("cli")
    http("PUT", db)
    later, end = iso(time.time() + 3600), iso(time.time() + 7200)
    done = cli(
        "submit", "ping", "--id", "planned", "--priority", "7", "--not-before", later,
        "--expires-at", end, db=db,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    _, doc = http("GET", f"{db}/planned")
    assert (doc["priority"], doc["not_before"], doc["expires_at"]) == (7, later, end)
    refused = cli("submit", "ping", "--priority", "urgent", db=db)
    assert (refused.returncode, refused.stderr) == (
        1,
        'couchgw: not submitted: priority must be "high", "medium", "low" or a whole number '
        "from 0 to 9 (higher first), not 'urgent'\n",
    )
    backwards = cli("submit", "ping", "--not-before", end, "--expires-at", later, db=db)
    assert backwards.returncode == 1
    assert "is not after not_before" in backwards.stderr
