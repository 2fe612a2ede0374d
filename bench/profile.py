"""
Where a message's time goes on a CouchDB server: a backlog drained to the null http route, with
the CPU each process spent per message and what CouchDB's own counters say per message.

    .venv/bin/python bench/profile.py --couch http://admin:admin@127.0.0.1:15984
    .venv/bin/python bench/profile.py --couch URL --messages 5000 -- --guards on

The server must run on this machine (its processes are found by the port it listens on, its
JavaScript processes as their children); the URL carries an admin's credentials.  Counters of
`/_node/_local/_stats` that moved by at least 5% of a message per message are printed, e.g.
`couchdb.query_server.calls.ddoc_vdu` (validate functions run) or `mango.evaluate_selector`
(changes the feed's selector looked at).  Arguments after `--` go to couchgw.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import processes  # noqa: E402
from bench.backlog import drain, write_backlog  # noqa: E402
from bench.suite import listening_pid, null_route, process_tree_cpu  # noqa: E402
from tests.servers import free_port, http  # noqa: E402


def counters(stats: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """The numeric counters of C{_stats}, by dotted name."""
    for name, value in stats.items():
        if isinstance(value, dict) and isinstance(value.get("value"), int | float):
            if value.get("type") == "counter":
                yield prefix + name, value["value"]
        elif isinstance(value, dict):
            yield from counters(value, f"{prefix}{name}.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--couch", required=True, help="the server's URL, an admin's in it")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("gateway", nargs="*", help="couchgw's own options (after --)")
    options = parser.parse_args()
    couch = options.couch.rstrip("/")
    server = listening_pid(urlsplit(couch).port or 5984)
    if server is None:
        raise SystemExit(f"no process of this machine listens for {urlsplit(couch).netloc}")
    folder = Path(tempfile.mkdtemp(prefix="couchgw-profile-"))
    demo_port = free_port()
    demo = processes.demo(folder, demo_port, delay=0.1)
    demo.start(wait=True)
    try:
        db = f"{couch}/profile-{uuid.uuid4().hex[:6]}"
        assert http("PUT", db)[0] in (201, 202)
        write_backlog(db, options.messages, target="null")
        (folder / "routes.toml").write_text(null_route(f"http://127.0.0.1:{demo_port}/json"))
        gateway = processes.gateway(
            folder, db, demo_port, free_port(), "--routes", str(folder / "routes.toml"),
            *options.gateway,
        )  # fmt: skip
        assert demo.process is not None
        before = http("GET", f"{couch}/_node/_local/_stats")[1]
        cpu = {"CouchDB": process_tree_cpu(server), "demo": process_tree_cpu(demo.process.pid)}
        drained = drain(gateway, options.messages, progress=False)
        after = http("GET", f"{couch}/_node/_local/_stats")[1]
        spent = {
            "CouchDB": process_tree_cpu(server) - cpu["CouchDB"],
            "demo": process_tree_cpu(demo.process.pid) - cpu["demo"],
            "couchgw (with its start-up)": drained["cpu (s)"],
        }
        gateway.stop()
    finally:
        demo.stop()
    n = options.messages
    print(f"drained {n} messages at {n / drained['seconds']:.0f} messages/s")
    for name, seconds in spent.items():
        print(f"  CPU per message, {name}: {seconds * 1000 / n:.2f} ms")
    old = dict(counters(before))
    for name, value in sorted(counters(after)):
        moved = value - old.get(name, 0)
        if abs(moved) >= 0.05 * n and ".time." not in name:
            print(f"  {name}: {moved / n:.2f} per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
