"""
What a request to CouchDB costs couchgw's own process: the CPU of this process per request of
couchgw's CouchDB client (L{couchgw.couch.client.Database}), eight at a time over a kept-alive
pool, for a read of a missing document and a C{_bulk_docs} of ten new ones.

    .venv/bin/python bench/client.py --couch http://admin:admin@127.0.0.1:15984
    .venv/bin/python bench/client.py --couch URL --tree ../other-checkout   # to compare

With C{--tree}, the couchgw package of that checkout is measured instead of this one's.  The
database it makes is deleted at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--couch", required=True, help="the server, with admin credentials")
    parser.add_argument("--requests", type=int, default=3000, help="of each kind, per round")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to measure")
    options = parser.parse_args()
    sys.path.insert(0, str(options.tree.resolve()))

    from twisted.internet import defer, reactor

    from couchgw.connections import agent, connection_pool
    from couchgw.couch.client import Database
    from couchgw.couch.errors import NotFound

    pool = connection_pool(reactor, 20)
    db = Database(
        f"{options.couch.rstrip('/')}/client-{uuid.uuid4().hex[:8]}", agent(reactor, pool)
    )

    def missing(n: int) -> Any:
        return db.get("missing").addErrback(lambda f: f.trap(NotFound))

    def bulk(n: int) -> Any:
        return db.bulk_docs([{"_id": f"d{n}-{j}-{uuid.uuid4().hex}"} for j in range(10)])

    @defer.inlineCallbacks
    def run() -> Any:
        try:
            yield db.json("PUT", "")
            print(f"couchgw from {options.tree.resolve()}")
            for label, work in (("GET a missing document", missing), ("_bulk_docs of 10", bulk)):
                for _ in range(2):  # (the first round warms the pool and the code)
                    slots = defer.DeferredSemaphore(8)
                    cpu, began = time.process_time(), time.monotonic()
                    yield defer.gatherResults(
                        [slots.run(work, n) for n in range(options.requests)], consumeErrors=True
                    )
                    per = (time.process_time() - cpu) / options.requests * 1000
                    wall = (time.monotonic() - began) / options.requests * 1000
                print(f"{label:25} {per:6.3f} ms of couchgw's CPU per request ({wall:.3f} wall)")
        finally:
            yield db.json("DELETE", "")
            yield pool.closeCachedConnections()
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()


if __name__ == "__main__":
    main()
