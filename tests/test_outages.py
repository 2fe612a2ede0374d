"""
Outages of a route's target, of every kind (refused, dropped, 503, no answer), against the real
demo service behind a front that puts it out of order (L{tests.flaky}), over SOAP and over HTTP,
many times in a row.  An outage costs the messages no attempts: the route's breaker opens,
probes the target, lets one message's call prove it, and once the target is back every message
is forwarded, called once.  No order of events may leave a message waiting: each run waits for
every message with a deadline.

C{COUCHGW_OUTAGE_RUNS} sets how many outages of each kind each target meets (3 by default).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from couchgw.connections import agent, connection_pool
from couchgw.gateway import Gateway, Policy
from couchgw.targets.http import HttpTarget
from couchgw.targets.interfaces import ITarget
from couchgw.targets.soap import SoapTarget
from tests.flaky import Flaky
from tests.servers import start_demo, stop
from tests.test_gateway import GatewayTestCase

RUNS = int(os.environ.get("COUCHGW_OUTAGE_RUNS", "3"))
#: Messages written while the target is out, in each run.
MESSAGES = 20


class Outages(GatewayTestCase):
    timeout = 900

    def setUp(self) -> None:
        super().setUp()
        log = Path(tempfile.mkdtemp(prefix="couchgw-outages-")) / "demo.log"
        wsdl, process = start_demo(log, delay=0.0)
        self.addCleanup(stop, process)
        self.demo_log = log
        self.backend = urlsplit(wsdl).port or 80
        self.flaky = Flaky(self.backend)
        port = self.flaky.start()
        self.addCleanup(self.flaky.stop)
        front = urlsplit(wsdl)._replace(netloc=f"127.0.0.1:{port}")
        self.wsdl = urlunsplit(front)
        self.json = urlunsplit(front._replace(path="/json", query=""))

    def target(self, kind: str) -> ITarget:
        if kind == "soap":
            return SoapTarget("default", self.wsdl, self.threads, timeout=1.0)
        pool = connection_pool(reactor, 20)
        self.addCleanup(pool.closeCachedConnections)
        return HttpTarget(
            "default", self.json, reactor, agent(reactor, pool), concurrency=4, timeout=1.0
        )

    @staticmethod
    def clock_seconds() -> float:
        return float(reactor.seconds())  # type: ignore[attr-defined]

    def calls(self, kind: str, prefix: str) -> Counter[str]:
        """The calls the target answered for the messages of a run, by message id."""
        text = self.demo_log.read_text()
        pattern = r"activated network=(\S+)\n" if kind == "soap" else r"json activate id=(\S+)\n"
        return Counter(i for i in re.findall(pattern, text) if i.startswith(prefix))

    @inlineCallbacks
    def outages(self, kind: str) -> Any:
        target = self.target(kind)
        gateway = Gateway(
            self.db,
            {"default": target},
            reactor,
            # a short cap: the probes come every half second, a long outage's as a short one's
            policies={"default": Policy(backoff=0.05, backoff_max=0.5)},
            heartbeat=1.0,
            # no periodic sweep to fall back on: every message waiting for the route must go
            # as the route comes back, not at the next sweep
            sweep_interval=3600.0,
            announce=1.0,
        )
        gateway.startService()
        self.addCleanup(lambda: gateway.stopService() if gateway.running else None)
        yield self.ready(gateway)
        breaker = gateway.dispatch.breakers["default"]
        for run in range(RUNS):
            for mode in ("refused", "drop", "503", "silent"):
                prefix = f"{kind}-{mode}-{run}-"
                ids = [f"{prefix}{i:02d}" for i in range(MESSAGES)]
                opened = breaker.opened
                yield self.flaky.set(mode)
                yield self.db.bulk_docs(
                    [
                        {"_id": i, "type": "message", "operation": "activate", "args": [i, 0]}
                        for i in ids
                    ]
                )
                yield self.wait_for(
                    lambda opened=opened: breaker.opened > opened,
                    60,
                    f"the route to go out ({mode}, run {run})",
                )
                probes = sum(breaker.probes.values())
                yield self.wait_for(
                    lambda probes=probes: sum(breaker.probes.values()) >= probes + 2,
                    60,
                    f"two probes ({mode}, run {run})",
                )
                yield self.flaky.set("up")
                back = self.clock_seconds()
                docs = []
                for doc_id in ids:
                    doc = yield self.terminal(doc_id, max(1.0, back + 20 - self.clock_seconds()))
                    docs.append(doc)
                self.assertEqual(
                    Counter(doc["status"] for doc in docs), {"forwarded": MESSAGES}, (mode, run)
                )
                calls = self.calls(kind, prefix)
                self.assertEqual(sorted(calls), ids, (mode, run))
                self.assertEqual(set(calls.values()), {1}, (mode, run))
                # the outage cost no attempts: only a first failure after a success may be a
                # message's own
                self.assertLessEqual(sum(doc["attempts"] - 1 for doc in docs), 1, (mode, run))
                yield self.wait_for(lambda: breaker.closed, 30, "the route to close")
        self.assertGreaterEqual(breaker.opened, 4 * RUNS)
        yield gateway.stopService()

    def test_soap(self) -> Any:
        return self.outages("soap")

    def test_http(self) -> Any:
        return self.outages("http")
