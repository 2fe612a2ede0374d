"""
What a real CouchDB cluster answers to racing claims, and whether couchgw's claim holds there.

    python bench/claim_races.py URL1,URL2,URL3 [--rounds 150] [--load]

1. raw: three PUTs with w=3 on one revision, one through each node, released at the same instant
   by a barrier: the answers (201, 202, 409) per round, and what r=3 reads and _conflicts show
   right after and 0.5 s later.
2. claims: three L{couchgw.claims.Claims} (one per node) take the same revision at once: in how
   many rounds exactly one claimer went on (never two, never none).

With --load, a writer keeps _bulk_docs of 100 documents going through every node meanwhile
(validate functions installed), as a draining gateway does.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import http  # noqa: E402


def raw(urls: list[str], db: str, rounds: int) -> dict[str, Any]:
    answers: Counter[tuple[int, ...]] = Counter()
    conflicts_at_once: Counter[int] = Counter()
    conflicts_later: Counter[int] = Counter()
    for i in range(rounds):
        doc_id = f"raw{i}-{uuid.uuid4().hex[:6]}"
        status, body = http("PUT", f"{urls[0]}/{db}/{doc_id}?w=3", {"type": "message"})
        assert status in (201, 202), body
        rev = body["rev"]
        barrier = threading.Barrier(len(urls))
        got: list[int] = [0] * len(urls)
        threads = [
            threading.Thread(target=_put, args=(barrier, got, k, f"{url}/{db}/{doc_id}", rev))
            for k, url in enumerate(urls)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        answers[tuple(sorted(got))] += 1
        _, doc = http("GET", f"{urls[0]}/{db}/{doc_id}?r=3&conflicts=true")
        conflicts_at_once[len(doc.get("_conflicts", []))] += 1
        time.sleep(0.5)
        _, doc = http("GET", f"{urls[1]}/{db}/{doc_id}?r=3&conflicts=true")
        conflicts_later[len(doc.get("_conflicts", []))] += 1
    return {
        "answers (sorted per round)": {str(k): v for k, v in answers.most_common()},
        "_conflicts seen by an r=3 read at once": dict(conflicts_at_once),
        "_conflicts seen by an r=3 read 0.5 s later": dict(conflicts_later),
    }


def _put(barrier: threading.Barrier, got: list[int], k: int, url: str, rev: str) -> None:
    """One racing claim: written through its node once all are ready to go."""
    barrier.wait()
    got[k] = http("PUT", f"{url}?w=3", {"_rev": rev, "type": "message", "claim": {"by": f"g{k}"}})[
        0
    ]


def claims(urls: list[str], db: str, rounds: int) -> dict[str, Any]:
    from twisted.internet import reactor
    from twisted.internet.defer import gatherResults, inlineCallbacks
    from twisted.web.client import Agent

    from couchgw.connections import connection_pool
    from couchgw.couch.client import Database
    from couchgw.gateway.claims import Claims

    pool = connection_pool(reactor)
    agent = Agent(reactor, pool=pool)
    result: dict[str, Any] = {}

    def transition(doc: Any, fields: Any) -> Any:
        raise AssertionError("a cluster claim is written by Claims itself")

    claimers = []
    for k, url in enumerate(urls):
        c = Claims(Database(f"{url}/{db}", agent), reactor, f"g{k}", transition, settle=0.5)
        c.copies = 3
        claimers.append(c)

    @inlineCallbacks
    def run() -> Any:
        winners: Counter[int] = Counter()
        for i in range(rounds):
            doc_id = f"claim{i}-{uuid.uuid4().hex[:6]}"
            _, body = yield claimers[0].db.write({"_id": doc_id, "type": "message"}, w=3)
            doc = {"_id": doc_id, "_rev": body["rev"], "type": "message"}
            taken = yield gatherResults([c.take(dict(doc)) for c in claimers])
            winners[sum(1 for t in taken if t is not None)] += 1
        result["claimers that went on, per round"] = dict(winners)
        result["answers"] = dict(sum((c.answers for c in claimers), Counter()))
        yield pool.closeCachedConnections()

    def main() -> None:
        d = run()
        d.addErrback(lambda f: result.setdefault("error", f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(main)
    reactor.run()
    return result


def load(urls: list[str], db: str, stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        docs = [{"_id": f"load{i}-{k}", "type": "message", "operation": "x"} for k in range(100)]
        http("POST", f"{urls[i % len(urls)]}/{db}/_bulk_docs", {"docs": docs}, timeout=120)
        i += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("urls", help="the cluster's nodes, comma-separated, with credentials")
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--load", action="store_true", help="bulk writes through every node")
    args = parser.parse_args()
    urls = [u.rstrip("/") for u in args.urls.split(",")]
    db = f"races-{uuid.uuid4().hex[:8]}"
    assert http("PUT", f"{urls[0]}/{db}?n=3&q=2")[0] in (201, 202)
    # the validate functions a couchgw database has, so that writes cost what they cost there
    from couchgw.couch.design import load as design_docs

    for doc in design_docs().values():
        http("PUT", f"{urls[0]}/{db}/{doc['_id']}", doc)
    stop = threading.Event()
    writer = threading.Thread(target=load, args=(urls, db, stop), daemon=True)
    if args.load:
        writer.start()
    try:
        figures = {"rounds": args.rounds, "load": args.load, "raw": raw(urls, db, args.rounds)}
        figures["claims"] = claims(urls, db, args.rounds)
    finally:
        stop.set()
    print(json.dumps(figures, indent=2))
    http("DELETE", f"{urls[0]}/{db}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
