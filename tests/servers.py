"""
Real servers for the tests, started once per test run and stopped at exit.

- CouchDB: PouchDB Server (in memory, on a free port) from the project's node_modules, or an
  external Apache CouchDB named by C{COUCHGW_TEST_COUCH}, e.g.
  C{COUCHGW_TEST_COUCH=http://admin:secret@127.0.0.1:5984}.
- The demo SOAP service in a process of its own (C{python -m couchgw.demo}).

Each test that writes uses a database of its own (L{new_db_url}).
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from base64 import b64encode
from collections.abc import Callable
from pathlib import Path
from typing import Any

from couchgw.connections import split_credentials
from couchgw.embedded import find_executable

ROOT = Path(__file__).resolve().parent.parent
COUCH_ENV = "COUCHGW_TEST_COUCH"
#: Three (or more) nodes of one Apache CouchDB cluster, comma-separated, for tests/test_on_cluster.py.
CLUSTER_ENV = "COUCHGW_TEST_CLUSTER"
#: A command that stops or starts one of those nodes: C{$COMMAND stop 3}, C{$COMMAND start 3}.
CLUSTER_CONTROL_ENV = "COUCHGW_TEST_CLUSTER_CONTROL"
_started: dict[str, Any] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Call C{check} until it answers something true; fail after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, urllib.error.URLError, ValueError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def http(method: str, url: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    """A blocking JSON request; answers (status, decoded body)."""
    clean, auth = split_credentials(url, {})
    request = urllib.request.Request(clean, method=method)
    request.add_header("Accept", "application/json")
    if auth is not None:
        token = b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, data, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_pouchdb(
    port: int | None = None, folder: str | None = None, wait: bool = True
) -> tuple[str, subprocess.Popen[bytes]]:
    """
    A new PouchDB Server, in memory, or with its data in C{folder} (so that it survives being
    killed and started again there); answers its URL and process (the caller stops it).
    """
    port = port or free_port()
    storage = ["--dir", folder] if folder else ["--in-memory"]
    folder = folder or tempfile.mkdtemp(prefix="couchgw-pouchdb-")
    process = subprocess.Popen(
        [find_executable(), "--port", str(port), "--host", "127.0.0.1", *storage, "-n"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    if wait:
        wait_until(lambda: http("GET", url, timeout=2)[0] == 200, 60, f"PouchDB Server at {url}")
    return url, process


def couch_url() -> str:
    """The CouchDB server the tests use (with credentials in it where it needs them)."""
    if "couch" not in _started:
        external = os.environ.get(COUCH_ENV)
        if external:
            _started["couch"] = external.rstrip("/")
        else:
            url, process = start_pouchdb()
            atexit.register(stop, process)
            _started["couch"] = url
    return str(_started["couch"])


def cluster_urls() -> list[str]:
    """The nodes of the cluster named by C{COUCHGW_TEST_CLUSTER} (none: no cluster tests)."""
    named = os.environ.get(CLUSTER_ENV, "")
    return [url.strip().rstrip("/") for url in named.split(",") if url.strip()]


def server_problem(url: str, timeout: float = 5.0) -> str | None:
    """Why a CouchDB server named for the tests cannot be used (None: it can)."""
    clean, auth = split_credentials(url, {})
    try:
        status, welcome = http("GET", url, timeout=timeout)
        if status == 401:
            status, body = 401, welcome
        elif status != 200 or not isinstance(welcome, dict) or "couchdb" not in welcome:
            return f"{clean} is not a CouchDB server (it answered {status} to GET /)"
        else:
            status, body = http("GET", f"{url}/_all_dbs", timeout=timeout)
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        return f"{clean} does not answer ({reason})"
    if status == 401:
        who = f"user {auth[0]!r}" if auth else "no credentials"
        return f"{clean} refuses {who} (401); give an admin's in the URL, http://USER:PASSWORD@host:port"
    if status != 200:
        return f"{clean} answered {status} to GET /_all_dbs: {body}"
    return None


def cluster_problem(urls: list[str]) -> str | None:
    """Why the nodes named for the cluster tests are not a cluster to test on (None: they are)."""
    if len(urls) < 3:
        return f"names {len(urls)} node(s); the cluster tests need 3, comma-separated"
    for url in urls:
        problem = server_problem(url)
        if problem is not None:
            return problem
    status, membership = http("GET", f"{urls[0]}/_membership", timeout=5.0)
    nodes = membership.get("cluster_nodes", []) if isinstance(membership, dict) else []
    if status != 200 or len(nodes) < 3:
        clean = split_credentials(urls[0], {})[0]
        return f"{clean} is not a node of a cluster of 3 (its cluster_nodes: {nodes})"
    return None


def setup_error(cluster: str) -> str:
    """The one line a test run gives when C{COUCHGW_TEST_CLUSTER} names C{cluster}: its error."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--co",
            "tests/test_units.py",
        ],
        cwd=ROOT,
        env={**os.environ, CLUSTER_ENV: cluster},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode != 0 and len(lines) == 1, run.stderr
    return lines[0]


def engines_of(server: str) -> Any:
    """
    What the server at C{server} (an admin's credentials in the URL) runs design functions in
    (L{couchgw.couch.engines.Engines}), read as couchgw reads it, with blocking requests.
    """
    from couchgw.couch import engines
    from couchgw.couch.client import supports_selector

    status, welcome = http("GET", server)
    if status != 200 or not supports_selector(welcome):
        return engines.Engines(False, None, "the server runs design functions in JavaScript alone")
    status, membership = http("GET", f"{server}/_membership")
    if status != 200:
        return engines.Engines(False, None, f"GET /_membership answered {status}")
    nodes: dict[str, Any] = {}
    otp: dict[str, Any] = {}
    javascript = set()
    for node in membership.get("all_nodes", []):
        status, section = http("GET", f"{server}/_node/{node}/_config/native_query_servers")
        nodes[node] = section if status == 200 else f"answered {status}"
        _, versions = http("GET", f"{server}/_node/{node}/_versions")
        versions = versions if isinstance(versions, dict) else {}
        javascript.add((versions.get("javascript_engine") or {}).get("name"))
        otp[node] = (versions.get("erlang") or {}).get("version")
    return engines.decide(nodes, javascript.pop() if len(javascript) == 1 else None, otp)


def is_pouchdb() -> bool:
    return "express-pouchdb" in (http("GET", couch_url())[1] or {})


def new_db_url(prefix: str = "test") -> str:
    """A fresh database on the test server (created by whoever uses it first)."""
    return f"{couch_url()}/{prefix}-{uuid.uuid4().hex[:12]}"


def start_demo(log: Path, delay: float = 0.1, port: int = 0) -> tuple[str, subprocess.Popen[bytes]]:
    """
    The demo SOAP service in its own process, logging each call to C{log} (appended); answers
    its WSDL URL and process (the caller stops it).
    """
    seen = len(_urls(log)) if log.exists() else 0
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-u",
                "-m",
                "couchgw.demo",
                "--port",
                str(port),
                "--delay",
                str(delay),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def url() -> str | None:
        urls = _urls(log)
        if len(urls) > seen:
            return urls[-1].strip()
        if process.poll() is not None:
            raise AssertionError(f"the demo service exited: {log.read_text()}")
        return None

    return wait_until(url, 30, "the demo service"), process


def _urls(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("http://")]


def demo_wsdl() -> str:
    """A demo SOAP service shared by the tests that only read from it."""
    if "demo" not in _started:
        folder = Path(tempfile.mkdtemp(prefix="couchgw-demo-"))
        url, process = start_demo(folder / "demo.log")
        atexit.register(stop, process)
        _started["demo"] = url
    return str(_started["demo"])
