"""
The console as operators use it: couchgw (twistd) on a real PouchDB Server (or
$COUCHGW_TEST_COUCH), an http route to a target this test can make refuse calls, the page in
headless Chromium (what is there when it opens; a failed message found, opened, requeued and
forwarded; a selection requeued after a confirmation; a reader refused; a form of another site
refused), the API's checks with CouchDB's users, and the couchgw command.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from couchgw.connections import split_credentials
from couchgw.timing import iso
from tests.servers import COUCH_ENV, http, new_db_url, stop, wait_until
from tests.test_e2e import Twistd, wait_terminal
from tests.test_operations import chromium, cli, needs_chromium, reader
from tests.test_security import PASSWORDS, _as, _put, secured

__all__ = ["secured"]  # (the fixture, for the reader's test)

LOCKED = "account 42 is locked"

#: A folder where the flows leave screenshots of the page: those of docs/operations.md, with
#: COUCHGW_SCREENSHOTS=docs .venv/bin/pytest tests/test_console_page.py
SHOTS = os.environ.get("COUCHGW_SCREENSHOTS")


class Target(ThreadingHTTPServer):
    """An http route's target: it refuses every call (a fault: 422) while C{failing}."""

    failing = True
    calls = 0


class _Server(BaseHTTPRequestHandler):
    """A test's HTTP server: answers whole, logs nothing."""

    def answer(self, code: int, kind: str, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class _Handler(_Server):
    server: Target

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.calls += 1
        code, answer = (
            (422, {"error": LOCKED}) if self.server.failing else (200, {"ok": body["id"]})
        )
        self.answer(code, "application/json", json.dumps(answer).encode())


def serve(handler: type[BaseHTTPRequestHandler], kind: type[ThreadingHTTPServer]) -> Any:
    server = kind(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def routes_file(folder: Path, target: Target) -> Path:
    routes = folder / "routes.toml"
    url = f"http://127.0.0.1:{target.server_port}/"
    routes.write_text(f'[routes.hooks]\nkind = "http"\nurl = "{url}"\n')
    return routes


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[Twistd, str, Target]]:
    """couchgw on a fresh database, with the demo (default route) and the route hooks."""
    target = serve(_Handler, Target)
    db = new_db_url("console")
    gateway = Twistd(tmp_path, "--couch", db, "--routes", str(routes_file(tmp_path, target)))
    try:
        gateway.wait_ready()
        yield gateway, db, target
    finally:
        stop(gateway.process)
        target.shutdown()


def hook(doc_id: str, **fields: Any) -> dict[str, Any]:
    return {"_id": doc_id, "type": "message", "target": "hooks", "operation": "notify", **fields}


def write(db: str, docs: list[dict[str, Any]]) -> None:
    status, rows = http("POST", f"{db}/_bulk_docs", {"docs": docs})
    assert status == 201 and all("rev" in row for row in rows), rows


def statuses(db: str, ids: list[str]) -> dict[str, str]:
    return {doc_id: doc["status"] for doc_id, doc in wait_terminal(db, ids, 60).items()}


def until(text: Any, selector: str, wanted: Any, what: str, attribute: str = "") -> None:
    """Wait until the page shows C{wanted} (a value, or a test of the text) at C{selector}."""
    test = wanted if callable(wanted) else (lambda found: found == wanted)
    seen: list[str] = []

    def shown() -> bool:
        seen[:] = [text(selector, attribute) or ""]
        return bool(test(seen[0]))

    try:
        wait_until(shown, 30, what)
    except AssertionError:
        raise AssertionError(f"the page did not show {what}: {selector} is {seen}") from None


def opened(browser: Any, dialog: str, is_open: bool = True) -> None:
    """Wait until a dialog of the page is open (or closed)."""
    script = "return document.getElementById(arguments[0]).open"
    wait_until(
        lambda: browser.execute_script(script, dialog) is is_open,
        30,
        f"the dialog {dialog} to be {'open' if is_open else 'closed'}",
    )


def click(browser: Any, selector: str) -> None:
    browser.execute_script("document.querySelector(arguments[0]).click()", selector)


@contextmanager
def page(tmp_path: Path, url: str, user: tuple[str, str] | None = None) -> Iterator[Any]:
    """
    The page at C{url} in headless Chromium (as C{user}, as the browser does once the user
    logged in), and a reader of it.
    """
    browser = chromium(tmp_path)
    try:
        if user is not None:
            token = b64encode(":".join(user).encode()).decode()
            browser.execute_cdp_cmd("Network.enable", {})
            headers = {"Authorization": f"Basic {token}"}
            browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})
        browser.get(url)
        yield browser, reader(browser)
    finally:
        browser.quit()


def shot(browser: Any, name: str, top: str = "") -> None:
    """
    A screenshot of the page (scrolled to the element C{top}), where C{$COUCHGW_SCREENSHOTS}
    names a folder.
    """
    if SHOTS:
        if top:
            browser.execute_script("document.querySelector(arguments[0]).scrollIntoView()", top)
        browser.save_screenshot(str(Path(SHOTS) / name))


@needs_chromium
def test_the_page_shows_what_is_there_when_it_opens(
    console: tuple[Twistd, str, Target], tmp_path: Path
) -> None:
    """Two messages forwarded before the page opens: it lists them, and its chart counts them."""
    gateway, db, target = console
    target.failing = False
    write(db, [hook("before-1"), hook("before-2")])
    assert statuses(db, ["before-1", "before-2"]) == {
        "before-1": "forwarded",
        "before-2": "forwarded",
    }
    with page(tmp_path, f"{gateway.api}/") as (_, text):
        until(text, 'tr[data-id="before-1"] td.status-cell', "forwarded", "row 1", "data-status")
        until(text, 'tr[data-id="before-2"] td.status-cell', "forwarded", "row 2", "data-status")
        assert text("#list-title") == "Recent messages"
        until(text, "#throughput", lambda n: int(n or 0) >= 2, "the chart", "data-total")


@needs_chromium
def test_a_failed_message_found_opened_requeued_and_forwarded(
    console: tuple[Twistd, str, Target], tmp_path: Path
) -> None:
    gateway, db, target = console
    write(db, [hook("acct-1"), {"_id": "fine", "type": "message", "operation": "ping"}])
    assert statuses(db, ["acct-1", "fine"]) == {"acct-1": "failed", "fine": "forwarded"}
    with page(tmp_path, f"{gateway.api}/") as (browser, text):
        until(text, '.count[data-status="failed"] .n', "1", "the failed count")
        click(browser, '.count[data-status="failed"]')  # the failed ones
        until(text, "#list-title", "Failed messages", "the failed messages")
        until(text, 'tr[data-id="acct-1"] .why', lambda t: LOCKED in t, "why it failed")
        assert text('tr[data-id="fine"]') is None
        click(browser, 'tr[data-id="acct-1"]')
        until(text, "#message-id", "acct-1", "the message whole")
        until(text, "#message-errors", lambda t: LOCKED in t, "its error")
        assert text('#message-facts dd[data-fact="route"]') == "hooks"
        assert text('#message-facts dd[data-fact="attempts"]') == "1"
        assert (
            browser.execute_script("return document.getElementById('message-requeue').hidden")
            is False
        )
        assert (
            browser.execute_script("return document.getElementById('message-cancel').hidden")
            is True
        )
        shot(browser, "console-message.png")
        target.failing = False  # the account is unlocked: send it again
        click(browser, "#message-requeue")
        until(text, "#message-note", "requeued", "the requeue")
        until(text, "#message-status", "forwarded", "it forwarded, live", "data-status")
        until(
            text,
            '#message-events li[data-status="forwarded"]',
            lambda t: "forwarded" in t,
            "the event",
        )
        _, doc = http("GET", f"{db}/acct-1")
        assert (doc["status"], doc["attempts"], doc["requeued_by"]) == ("forwarded", 1, "operator")
        assert doc["requeues"][0]["error"]["message"].endswith(LOCKED)


@needs_chromium
def test_a_selection_requeued_after_a_confirmation(
    console: tuple[Twistd, str, Target], tmp_path: Path
) -> None:
    gateway, db, target = console
    ids = [f"night-{i}" for i in range(6)]
    others = ["other-1", "other-2"]
    write(db, [hook(i) for i in ids])
    write(db, [{"_id": i, "type": "message", "operation": "refuse", "args": ["x"]} for i in others])
    assert set(statuses(db, ids + others).values()) == {"failed"}
    with page(tmp_path, f"{gateway.api}/#status=failed&route=hooks") as (browser, text):
        until(text, "#list-title", "Failed messages on route hooks", "the selection")
        until(text, "#messages tbody", lambda t: all(i in t for i in ids), "its messages")
        assert "other-1" not in (text("#messages tbody") or "")
        shot(browser, "console.png", "#list-title")
        click(browser, "#bulk-requeue")
        opened(browser, "confirm")
        until(
            text,
            "#confirm-text",
            lambda t: t.startswith("Requeue 6 failed messages on route hooks?"),
            "the question",
        )
        click(browser, "#confirm-no")  # not yet
        opened(browser, "confirm", False)
        assert set(statuses(db, ids).values()) == {"failed"}
        target.failing = False
        click(browser, "#bulk-requeue")
        opened(browser, "confirm")
        until(text, "#confirm-yes", "Requeue 6", "the question again")
        click(browser, "#confirm-yes")
        until(text, "#bulk-result", "requeued 6, left alone 0", "the result")
        done = wait_until(
            lambda: (found := statuses(db, ids)) and set(found.values()) == {"forwarded"} and found,
            60,
            "the selection forwarded",
        )
        assert len(done) == 6
        assert set(statuses(db, others).values()) == {"failed"}  # not of the selection


class _Evil(_Server):
    """Another site's page: a form that POSTs to the console's API as soon as it loads."""

    def do_GET(self) -> None:
        action = self.server.action  # type: ignore[attr-defined]
        page = (
            f'<form id="f" method="POST" action="{action}"></form>'
            '<script>document.getElementById("f").submit()</script>'
        ).encode()
        self.answer(200, "text/html", page)


@needs_chromium
def test_a_form_of_another_site_does_not_act(
    console: tuple[Twistd, str, Target], tmp_path: Path
) -> None:
    gateway, db, _ = console
    write(db, [hook("victim")])
    assert statuses(db, ["victim"]) == {"victim": "failed"}
    evil = serve(_Evil, ThreadingHTTPServer)
    evil.action = f"{gateway.api}/messages/requeue?status=failed"  # type: ignore[attr-defined]
    try:
        with page(tmp_path, f"http://localhost:{evil.server_port}/") as (browser, _):
            wait_until(lambda: "does not act here" in browser.page_source, 30, "the refusal")
        _, doc = http("GET", f"{db}/victim")
        assert doc["status"] == "failed" and "requeued_by" not in doc
    finally:
        evil.shutdown()


# -- with CouchDB's users ---------------------------------------------------------------------------


def _admin_url(base: str) -> str:
    external = os.environ.get(COUCH_ENV)
    return (
        external.rstrip("/") if external else base.replace("://", f"://admin:{PASSWORDS['admin']}@")
    )


@needs_chromium
def test_operators_act_and_readers_read(tmp_path: Path, secured: tuple[str, str]) -> None:
    """
    --http-auth --operator-role ops: the database's admins and the role ops act; a member reads
    and is refused every action (on the page too); a request from another site is refused.
    """
    base, db = secured
    suffix = db.rsplit("-", 1)[-1]
    carol = f"carol-{suffix}"
    _put(
        f"{_admin_url(base)}/_users/org.couchdb.user:{carol}",
        {"name": carol, "password": "carol-Pw-6", "roles": ["client", "ops"], "type": "user"},
    )
    target = serve(_Handler, Target)
    gateway = Twistd(
        tmp_path,
        "--couch", f"{_as(base, 'gw', db)}/{db}",
        "--routes", str(routes_file(tmp_path, target)),
        "--http-auth", "--operator-role", "ops",
    )  # fmt: skip
    try:
        gateway.wait_ready()
        alice_db = f"{_as(base, 'alice', db)}/{db}"
        assert http("PUT", f"{alice_db}/locked", hook("locked"))[0] == 201
        assert (
            http("PUT", f"{alice_db}/later", hook("later", not_before=iso(time.time() + 3600)))[0]
            == 201
        )
        assert statuses(alice_db, ["locked"]) == {"locked": "failed"}
        api = gateway.api

        def as_user(user: str, password: str) -> str:
            return api.replace("://", f"://{user}:{password}@")

        alice = as_user(f"alice-{suffix}", PASSWORDS["alice"])
        _, listing = wait_until(
            lambda: (answer := http("GET", f"{alice}/messages?status=failed"))[0] == 200 and answer,
            30,
            "the console's index",
        )
        assert [m["id"] for m in listing["messages"]] == ["locked"]
        status, answer = http("POST", f"{alice}/messages/locked/requeue")
        assert (status, answer["error"]) == (403, "forbidden")
        assert answer["reason"].startswith(
            "only the database's admins, or users with the operator role"
        )
        assert http("POST", f"{alice}/messages/requeue?status=failed")[0] == 403
        assert http("GET", f"{alice}/me")[1]["may_act"] is False
        bob = as_user(f"bob-{suffix}", PASSWORDS["bob"])
        assert http("GET", f"{bob}/messages")[0] == 403  # not one of the database's
        assert http("POST", f"{api}/messages/locked/requeue")[0] == 401
        gw = as_user(f"gw-{suffix}", PASSWORDS["gw"])
        assert http("GET", f"{gw}/me")[1] == {"user": f"gw-{suffix}", "may_act": True, "why": None}

        # the page, as alice: read only
        as_alice = (f"alice-{suffix}", PASSWORDS["alice"])
        with page(tmp_path, f"{api}/#status=failed", as_alice) as (browser, text):
            until(text, "#who", lambda t: "read only" in t, "the page to say read only")
            until(text, 'tr[data-id="locked"]', lambda t: "locked" in t, "the failed message")
            click(browser, 'tr[data-id="locked"]')
            until(text, "#message-id", "locked", "the message whole")
            disabled = "return document.getElementById('message-requeue').disabled"
            assert browser.execute_script(disabled)
            outcome = browser.execute_async_script(
                "var done = arguments[arguments.length - 1];"
                "fetch('/messages/locked/requeue', {method: 'POST'}).then(function (r) {"
                " return r.json().then(function (b) { done([r.status, b.reason]); }); });"
            )
            assert outcome[0] == 403 and outcome[1].startswith("only the database's admins")

        # carol has the operator role: she acts, from no other site
        carol_api = as_user(carol, "carol-Pw-6")
        status, answer = http("POST", f"{carol_api}/messages/later/cancel")
        assert (status, answer["status"], answer["cancelled_by"]) == (200, "cancelled", carol)
        target.failing = False
        evil = {"Origin": "http://evil.example"}
        status, answer = _post(f"{carol_api}/messages/locked/requeue", evil)
        assert status == 403 and "does not act here" in answer["reason"]
        status, answer = http("POST", f"{carol_api}/messages/locked/requeue")
        assert (status, answer["requeued_by"]) == (200, carol)
        assert statuses(alice_db, ["locked"]) == {"locked": "forwarded"}
    finally:
        gateway.terminate()
        target.shutdown()


def _post(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    """A POST with these headers (C{http} sends none of a browser's)."""
    clean, auth = split_credentials(url, {})
    request = urllib.request.Request(clean, method="POST", headers=headers)
    if auth is not None:
        token = b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, b"", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# -- the command ------------------------------------------------------------------------------------


def test_the_command_lists_requeues_and_cancels(console: tuple[Twistd, str, Target]) -> None:
    _, db, target = console
    ids = [f"cli-{i}" for i in range(3)]
    write(db, [hook(i) for i in ids])
    write(db, [hook("cli-later", not_before=iso(time.time() + 3600))])
    assert set(statuses(db, ids).values()) == {"failed"}
    listed = wait_until(
        lambda: (
            (done := cli("list", "--status", "failed", "--route", "hooks", db=db)).returncode == 0
            and done
        ),
        30,
        "the listing",
    )
    lines = listed.stdout.splitlines()
    assert sorted(line.split()[3] for line in lines) == ids
    times = [line.split()[0] for line in lines]
    assert times == sorted(times, reverse=True)  # newest first
    assert all(" failed  hooks  " in line and LOCKED in line for line in lines), lines
    page = json.loads(cli("list", "--status", "failed", "--limit", "2", "--json", db=db).stdout)
    first = [m["id"] for m in page["messages"]]
    assert first == [line.split()[3] for line in lines[:2]]
    rest = cli("list", "--status", "failed", "--limit", "2", "--cursor", page["next"], db=db)
    assert rest.stdout.splitlines() == lines[2:]

    asked = cli("requeue", "--status", "failed", "--route", "hooks", db=db, answer="n\n")
    assert asked.returncode == 1
    assert asked.stdout == "requeue 3 failed message(s) on route hooks? [y/N] \nnothing requeued\n"
    assert set(statuses(db, ids).values()) == {"failed"}
    target.failing = False
    sent = cli("requeue", "--status", "failed", "--route", "hooks", db=db, answer="y\n")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.endswith("\nrequeued 3 failed message(s) on route hooks\n")
    wait_until(
        lambda: set(statuses(db, ids).values()) == {"forwarded"}, 60, "the requeued ones forwarded"
    )

    cancelled = cli("cancel", "cli-later", db=db)
    assert (cancelled.returncode, cancelled.stdout) == (0, "cli-later: cancelled\n")
    _, doc = http("GET", f"{db}/cli-later")
    auth = split_credentials(db)[1]  # the CouchDB user who acts, else this machine's
    by = auth[0] if auth else f"{getpass.getuser()}@{socket.gethostname()}"
    assert (doc["status"], doc["cancelled_by"]) == ("cancelled", by)
    again = cli("cancel", "cli-later", "nothing-here", db=db)
    assert again.returncode == 1
    assert again.stderr.splitlines() == [
        "cli-later: not cancelled: a cancelled message is not cancelled (only new, retrying, "
        "scheduled ones are)",
        "nothing-here: not cancelled: no such message",
    ]
    none = cli("requeue", "--status", "expired", "--yes", db=db)
    assert (none.returncode, none.stdout) == (0, "no expired message(s)\n")
