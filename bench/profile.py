"""
Where a message's time goes on a CouchDB server: a backlog drained to the null http route, with
the CPU each process spent per message and what CouchDB's own counters say per message.

    .venv/bin/python bench/profile.py --couch http://admin:admin@127.0.0.1:15984
    .venv/bin/python bench/profile.py --couch URL --messages 5000 -- --guards on
    .venv/bin/python bench/profile.py --couch URL --fleet       # the database as one of many
    .venv/bin/python bench/profile.py --couch URL --databases 1000   # many databases of a few
    .venv/bin/python bench/profile.py --couch URL --requests /tmp/couchdb/node1/var/log/couchdb.log
    .venv/bin/python bench/profile.py --couch URL --cprofile /tmp/couchgw.prof

The server must run on this machine (its processes are found by the port it listens on, its
JavaScript processes as their children); the URL carries an admin's credentials.  Counters of
`/_node/_local/_stats` that moved by at least 5% of a message per message are printed, e.g.
`couchdb.query_server.calls.ddoc_vdu` (validate functions run) or `mango.evaluate_selector`
(changes the feed's selector looked at).  With `--requests LOG` (the server's log file), the
server logs each request during the drain (its log level raised to `info` meanwhile) and they
are counted by kind.  With `--cprofile FILE`, couchgw runs under cProfile (slower: its CPU
figure is then not the plain one) and the functions it spent most time in are printed.
Arguments after `--` go to couchgw.  The database it makes is deleted at the end, also when it
fails or is interrupted.  With `--databases N`, the messages are spread over N databases
(figure (8) of `bench/suite.py`), served together (couchgw `--databases PATTERN`); the requests
counted are those to all of them.
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import processes  # noqa: E402
from bench.backlog import drain, write_backlog  # noqa: E402
from bench.leftovers import Leftovers  # noqa: E402
from bench.suite import listening_pid, null_route, process_tree_cpu  # noqa: E402
from bench.tenants import in_parallel  # noqa: E402
from tests.servers import free_port, http  # noqa: E402

#: A request in CouchDB's log: method, path (without the query), status.
_REQUEST = re.compile(r" (GET|PUT|POST|DELETE|HEAD|COPY) (/[^ ?]*)\S* (\d{3}) ")


def counters(stats: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """The numeric counters of C{_stats}, by dotted name."""
    for name, value in stats.items():
        if isinstance(value, dict) and isinstance(value.get("value"), int | float):
            if value.get("type") == "counter":
                yield prefix + name, value["value"]
        elif isinstance(value, dict):
            yield from counters(value, f"{prefix}{name}.")


def own_cpu(pid: int) -> float:
    """The CPU time of a process alone (not its children's)."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(field) for field in stat[11:13]) / os.sysconf("SC_CLK_TCK")


def kind_of(method: str, path: str, db: str) -> str | None:
    """What a request to the database C{db} was for (None: another database's, or the server's)."""
    parts = path.strip("/").split("/")
    if parts[0] != db and not fnmatch(parts[0], f"{db}-*"):
        return None
    rest = "/".join(parts[1:])
    if rest == "_changes":
        return f"{method} _changes (the feed)"
    if "/_view/" in rest:
        return f"{method} view {rest.rsplit('/', 1)[-1]}"
    if rest.startswith("_local/"):
        return f"{method} _local/{rest.split('/', 1)[1].split('-', 1)[0]}... (checkpoint, members)"
    if rest.startswith(("_bulk_docs", "_design", "_security", "_all_docs", "_bulk_get")):
        return f"{method} {rest.split('/', 1)[0]}"
    return f"{method} {'a document' if rest else 'the database'}"


def request_kinds(log: Path, start: int, db: str) -> Counter[str]:
    """The requests to C{db} that the server logged after byte C{start} of its log."""
    with log.open("rb") as lines:
        lines.seek(start)
        found: Counter[str] = Counter()
        for line in lines.read().decode("utf-8", "replace").splitlines():
            match = _REQUEST.search(line)
            kind = match and kind_of(match.group(1), match.group(2), db)
            if kind:
                found[kind] += 1
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--couch", required=True, help="the server's URL, an admin's in it")
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="serve the database as one of many (couchgw --databases NAME): the feed read in "
        "turns, the design documents when needed",
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument(
        "--databases", type=int, default=None, help="spread the messages over N databases"
    )
    parser.add_argument("--requests", type=Path, help="the server's log file: count requests")
    parser.add_argument("--cprofile", type=Path, help="run couchgw under cProfile, stats here")
    parser.add_argument("gateway", nargs="*", help="couchgw's own options (after --)")
    options = parser.parse_args()
    couch = options.couch.rstrip("/")
    server = listening_pid(urlsplit(couch).port or 5984)
    if server is None:
        raise SystemExit(f"no process of this machine listens for {urlsplit(couch).netloc}")
    if options.requests is not None and not options.requests.is_file():
        raise SystemExit(f"--requests {options.requests}: no such file")
    with Leftovers() as made:
        return profile(options, couch, server, made)


def profile(options: argparse.Namespace, couch: str, server: int, made: Leftovers) -> int:
    folder = Path(tempfile.mkdtemp(prefix="couchgw-profile-"))
    demo_port = free_port()
    demo = processes.demo(folder, demo_port, delay=0.1)
    demo.start(wait=True)
    name = f"profile-{uuid.uuid4().hex[:6]}"
    gateway = None
    try:
        if options.databases:
            each = max(1, options.messages // options.databases)
            options.messages = each * options.databases
            names = [made.database(f"{couch}/{name}-{i:05d}") for i in range(options.databases)]
            in_parallel(names, lambda db: write_backlog(db, each, target="null"), threads=8)
            served: tuple[str, ...] = (couch, "--databases", f"{name}-*")
        else:
            db = made.database(f"{couch}/{name}")
            write_backlog(db, options.messages, target="null")
            served = (couch, "--databases", name) if options.fleet else (db,)
        (folder / "routes.toml").write_text(null_route(f"http://127.0.0.1:{demo_port}/json"))
        gateway = processes.gateway(
            folder, served[0], demo_port, free_port(), *served[1:],
            "--routes", str(folder / "routes.toml"), *options.gateway,
        )  # fmt: skip
        if options.cprofile is not None:
            profiled = [f"--profile={options.cprofile}", "--profiler=cprofile", "--savestats"]
            gateway.argv[1:1] = profiled
        assert demo.process is not None
        logged = options.requests.stat().st_size if options.requests else 0
        level = f"{couch}/_node/_local/_config/log/level"
        was = http("GET", level) if options.requests else (404, None)
        if options.requests:
            http("PUT", level, "info")
        before = http("GET", f"{couch}/_node/_local/_stats")[1]
        cpu = {"CouchDB": process_tree_cpu(server), "demo": process_tree_cpu(demo.process.pid)}
        own = own_cpu(server)
        try:
            drained = drain(gateway, options.messages, progress=False)
        finally:
            if options.requests:  # the level as it was (CouchDB keeps it in its ini files)
                http("PUT", level, was[1]) if was[0] == 200 else http("DELETE", level)
        after = http("GET", f"{couch}/_node/_local/_stats")[1]
        spent = {
            "CouchDB": process_tree_cpu(server) - cpu["CouchDB"],
            "CouchDB's JavaScript processes (of the above)": (
                process_tree_cpu(server) - cpu["CouchDB"] - (own_cpu(server) - own)
            ),
            "demo": process_tree_cpu(demo.process.pid) - cpu["demo"],
            "couchgw (with its start-up)": drained["cpu (s)"],
        }
    finally:
        if gateway is not None:
            gateway.stop()  # before its database is deleted: it would make it again
        demo.stop()
    n = options.messages
    print(f"drained {n} messages at {n / drained['seconds']:.0f} messages/s")
    for what, seconds in spent.items():
        print(f"  CPU per message, {what}: {seconds * 1000 / n:.2f} ms")
    old = dict(counters(before))
    for counter, value in sorted(counters(after)):
        moved = value - old.get(counter, 0)
        if abs(moved) >= 0.05 * n and ".time." not in counter:
            print(f"  {counter}: {moved / n:.2f} per message")
    if options.requests:
        print("requests to the database, per message:")
        for kind, count in request_kinds(options.requests, logged, name).most_common():
            print(f"  {kind}: {count / n:.3f} ({count})")
    if options.cprofile is not None:
        print(f"couchgw's functions by own time ({options.cprofile}):")
        stats = pstats.Stats(str(options.cprofile))
        stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
