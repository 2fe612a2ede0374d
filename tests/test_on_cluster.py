"""
couchgw on a real Apache CouchDB cluster: three nodes holding every document (C{n = 3}), named by
C{$COUCHGW_TEST_CLUSTER=url1,url2,url3} (skipped without).  Gateways talk to different nodes, as
they do when each runs next to its own node:

- claims racing through different nodes on one revision: exactly one call;
- a client's edits through one node racing the write-back through another: nothing lost;
- a node stopped mid-run and started again (with C{$COUCHGW_TEST_CLUSTER_CONTROL}, a command
  that takes C{stop N} and C{start N}): every message forwarded, none called twice;
- three C{twistd couchgw}, one per node, 1,000 messages: none called twice, every one
  C{forwarded}, no conflicting revision left.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher, textFileLogObserver
from twisted.web.client import Agent

from couchgw.connections import connection_pool
from couchgw.couch.client import Database
from couchgw.couch.errors import Conflict, ServerError
from couchgw.gateway import Gateway
from tests.servers import (
    CLUSTER_CONTROL_ENV,
    cluster_urls,
    http,
    setup_error,
    start_demo,
    stop,
    wait_until,
)
from tests.test_e2e import TERMINAL, Twistd, wait_terminal
from tests.test_gateway import GatewayTestCase

pytestmark = pytest.mark.skipif(
    not cluster_urls(), reason="no cluster named ($COUCHGW_TEST_CLUSTER=url1,url2,url3)"
)


def new_cluster_db(prefix: str) -> str:
    """A new database on the cluster, every document on every node; answers its name."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    status, body = http("PUT", f"{cluster_urls()[0]}/{name}?n=3&q=2")
    assert status in (201, 202), body
    return name


def conflicted(urls: list[str], name: str) -> list[str]:
    """Ids of the messages with conflicting revisions, as each node sees them (all of them)."""
    found: set[str] = set()
    for url in urls:
        _, body = http(
            "GET", f"{url}/{name}/_all_docs?include_docs=true&conflicts=true", timeout=120
        )
        found.update(
            row["id"]
            for row in body["rows"]
            if row["doc"].get("type") == "message" and row["doc"].get("_conflicts")
        )
    return sorted(found)


def activate(doc_id: str, count: int) -> dict[str, Any]:
    """A message whose call the demo logs as C{activated network=<doc_id>}."""
    return {
        "_id": doc_id,
        "type": "message",
        "operation": "activate",
        "args": {"network": doc_id, "count": count},
    }


class OnCluster(GatewayTestCase):
    """Gateways in this process, each talking to its own node."""

    timeout = 240
    #: A call that times out is made again (its outcome is unknown): never on a busy machine.
    target_timeout = 120.0

    def setUp(self) -> None:
        super().setUp()
        pool = connection_pool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)
        self.urls = cluster_urls()
        self.name = new_cluster_db("cluster")
        self.nodes = [Database(f"{url}/{self.name}", self.agent) for url in self.urls]
        self.db = self.nodes[0]
        self.wsdl, self.demo_log, _ = self.demo()
        # the gateways' log, for a test that fails: its path is in the failure
        self.log_path = self.demo_log.with_name("gateways.log")
        out = self.log_path.open("a")
        observer = textFileLogObserver(out)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(out.close)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def activated(self, network: str) -> int:
        return self.demo_log.read_text().count(f"activated network={network}\n")

    def on_each_node(self, **options: Any) -> list[Gateway]:
        return [
            self.gateway(self.wsdl, node, gateway=f"node{i + 1}", **options)
            for i, node in enumerate(self.nodes)
        ]

    @inlineCallbacks
    def no_conflicts(self, doc_id: str) -> Any:
        """Wait until no node shows the message with conflicting revisions."""

        @inlineCallbacks
        def clean() -> Any:
            for node in self.nodes:
                doc = yield node.get(doc_id, conflicts="true")
                if doc.get("_conflicts"):
                    return False
            return True

        yield self.wait_for(clean, 60, f"{doc_id} to have no conflicts")

    @inlineCallbacks
    def test_racing_claims_through_different_nodes(self) -> Any:
        """
        Three gateways that each take themselves for the only one (as while one joins) claim
        the same revision at once, each through its own node: one call, every time.
        """
        gateways = self.on_each_node(settle=0.2)
        for gateway in gateways:
            yield self.ready(gateway)
            self.assertEqual(gateway.claims.copies, 3)
        for i in range(20):
            doc_id = f"race{i}"
            yield self.db.write(activate(doc_id, 1), w=3)
            docs = yield gatherResults([node.get(doc_id, r=3) for node in self.nodes])
            for gateway in gateways:
                gateway.members.others.clear()
            yield gatherResults(
                [gateway.intake.submit(doc) for gateway, doc in zip(gateways, docs, strict=True)]
            )
            final = yield self.terminal(doc_id, 60)
            self.assertEqual((final["status"], final["attempts"]), ("forwarded", 1), doc_id)
            self.assertEqual(self.activated(doc_id), 1, doc_id)
            yield self.no_conflicts(doc_id)
        answers = sum((g.claims.answers for g in gateways), Counter())
        self.assertGreater(answers["lost"], 0, answers)  # they did race

    @inlineCallbacks
    def test_client_edits_racing_the_write_back(self) -> Any:
        """
        A client edits a message through another node while its call runs and as its outcome
        is written: every edit CouchDB accepted is kept, with the outcome; no conflict stays.
        """
        gateway = self.gateway(self.wsdl, self.nodes[0], sweep_interval=0.5)
        yield self.ready(gateway)
        client = self.nodes[1]
        for round_ in range(5):
            doc_id = f"edit{round_}"
            yield self.db.write(activate(doc_id, 3), w=3)
            accepted = []
            for k in range(1000):
                try:
                    doc = yield client.get(doc_id)
                except ServerError:
                    continue
                if doc.get("status") in TERMINAL:
                    break
                if doc.get("status") != "dispatching":
                    yield deferLater(reactor, 0.01, lambda: None)
                    continue
                doc[f"edit{k}"] = k
                try:
                    yield client.put(doc)
                except Conflict:
                    continue
                accepted.append(f"edit{k}")
            self.assertTrue(accepted, "no edit got in while the call ran")
            yield self.no_conflicts(doc_id)
            final = yield self.db.get(doc_id, r=3)
            self.assertEqual(final["status"], "forwarded")
            self.assertEqual(final["result"]["activated"], 3)
            self.assertEqual([key for key in accepted if key not in final], [])
            self.assertEqual(self.activated(doc_id), 1)

    @inlineCallbacks
    def test_a_node_stopped_mid_run(self) -> Any:
        """
        Node 3 stops while three gateways drain 300 messages, then starts again within 3 x
        --announce (here 45 s): the gateway on it is not taken for gone, and holds the outcomes
        of its calls until it can write them; none is called twice.
        """
        control = os.environ.get(CLUSTER_CONTROL_ENV)
        if not control:
            pytest.skip(f"${CLUSTER_CONTROL_ENV} names no command to stop and start a node")
        gateways = self.on_each_node(announce=15.0, settle=0.2)
        for gateway in gateways:
            yield self.ready(gateway, 120)
        ids = [f"n{i:03d}" for i in range(300)]
        yield self.db.bulk_docs([activate(doc_id, 1) for doc_id in ids])
        yield self.wait_for(lambda: self.activated_any() >= 50, 60, "50 calls")
        try:
            yield deferToThread(_run, f"{control} stop 3")
            yield self.wait_for(lambda: self.activated_any() >= 200, 120, "200 calls")
        finally:
            yield deferToThread(_run, f"{control} start 3")
        for doc_id in ids:
            doc = yield self.terminal(doc_id, 120)
            self.assertEqual(doc["status"], "forwarded", doc_id)
        calls = Counter(re.findall(r"activated network=(\S+)\n", self.demo_log.read_text()))
        self.assertEqual(sorted(calls), ids)
        answers = [dict(gateway.claims.answers) for gateway in gateways]
        self.assertEqual(
            {n: c for n, c in calls.items() if c > 1}, {}, f"{answers}; see {self.log_path}"
        )

        @inlineCallbacks
        def settled() -> Any:
            left = yield deferToThread(conflicted, self.urls, self.name)
            return not left

        yield self.wait_for(settled, 120, "no conflicts on any node")

    def activated_any(self) -> int:
        return self.demo_log.read_text().count("activated network=")


def _run(command: str) -> None:
    subprocess.run(shlex.split(command), check=True, timeout=180, capture_output=True)


def test_a_wrong_password_for_the_cluster_is_one_line() -> None:
    nodes = cluster_urls()
    wrong = re.sub(r"//([^:@/]+):[^@/]*@", r"//\1:wrong@", nodes[0])
    if "@" not in wrong:
        wrong = wrong.replace("//", "//admin:wrong@", 1)
    error = setup_error(",".join([wrong, *nodes[1:]]))
    clean = re.sub(r"//[^@/]*@", "//", nodes[0])
    assert error.startswith(f"ERROR: COUCHGW_TEST_CLUSTER: {clean} refuses user "), error
    assert "wrong" not in error


def write_all(db_url: str, docs: list[dict[str, Any]]) -> None:
    """
    Write new documents as a client would: those CouchDB answered an error for (a node that
    has just started may, for a moment) are written again, until every one is in.
    """
    left = {doc["_id"]: doc for doc in docs}
    failed: list[Any] = []

    def written() -> bool:
        status, body = http("POST", f"{db_url}/_bulk_docs", {"docs": list(left.values())}, 120)
        assert status in (201, 202, 500), body
        failed[:] = [row for row in body if row.get("error") not in (None, "conflict")]
        for doc_id in {row["id"] for row in body} - {row["id"] for row in failed}:
            del left[doc_id]
        return not left

    try:
        wait_until(written, 120, "every message written")
    except AssertionError as e:
        raise AssertionError(f"{e}; CouchDB answered {failed[:3]}") from None


def gateways_per_node(
    folder: Path, urls: list[str], name: str, target_log: Path, *options: str
) -> tuple[list[Twistd], Any]:
    """
    The demo (its JSON operations as the route C{null}, each call logged by message id to
    C{target_log}) and one C{twistd couchgw} per node on database C{name}; answers the gateways,
    ready, and the demo's process.  The caller stops them all.
    """
    wsdl, demo = start_demo(target_log, 0.0)
    routes = folder / "routes.toml"
    json_url = wsdl.replace("/?wsdl", "/json")
    routes.write_text(f'[routes.null]\nkind = "http"\nurl = "{json_url}"\nconcurrency = 50\n')
    gateways: list[Twistd] = []
    try:
        for i, url in enumerate(urls):
            own = folder / f"gateway{i + 1}"
            own.mkdir()
            gateways.append(
                Twistd(
                    own,
                    "--couch",
                    f"{url}/{name}",
                    "--target",
                    wsdl,
                    "--routes",
                    str(routes),
                    *options,
                )
            )
        for gateway in gateways:
            gateway.wait_ready(120)
    except BaseException:
        for gateway in gateways:
            stop(gateway.process)
        stop(demo)
        raise
    return gateways, demo


def test_three_gateways_one_per_node(tmp_path: Path) -> None:
    """
    Three C{twistd couchgw}, each on its own node, 1,000 messages to a target that logs every
    call by message id: every message forwarded, none called twice, no conflict left.  A ghost
    gateway announced where a database member may write (C{_local/} and a plain id, through
    another node) is believed by none of them: it would own a quarter of the messages.
    """
    urls = cluster_urls()
    name = new_cluster_db("e2e")
    ghost = {
        "type": "gateway",
        "gateway": "ghost:1:deadbeef",
        "routes": ["null", "default"],
        "beat": 5,
        "ttl": 1_000_000_000,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for doc_id in ("_local/couchgw-gateway:ghost:1:deadbeef", "couchgw-gateway:ghost:1:deadbeef"):
        status, body = http("PUT", f"{urls[1]}/{name}/{doc_id}", ghost)
        assert status in (201, 202), body
    log = tmp_path / "target.log"
    started, demo = gateways_per_node(tmp_path, urls[:3], name, log, "--sweep", "5")
    try:
        ids = [f"m{i:04d}" for i in range(1000)]
        for first in range(0, len(ids), 250):
            docs = [
                {"_id": doc_id, "type": "message", "target": "null", "operation": "ping"}
                for doc_id in ids[first : first + 250]
            ]
            write_all(f"{urls[first // 250 % 3]}/{name}", docs)
        docs = wait_terminal(f"{urls[0]}/{name}", ids, 600)
        statuses = Counter(doc["status"] for doc in docs.values())
        assert statuses == {"forwarded": len(ids)}, statuses
        calls = Counter(re.findall(r"call json ping id=(m\d+)", log.read_text()))
        twice = {doc_id: n for doc_id, n in calls.items() if n > 1}
        assert twice == {}, f"{len(twice)} message(s) called more than once: {twice}"
        assert sorted(calls) == ids
        finished = Counter()
        for gateway in started:
            text = gateway.log.read_text()
            finished[gateway.log.parent.name] = len(re.findall(r" forwarded on route null", text))
        assert sum(finished.values()) == len(ids), finished
        assert all(finished.values()), f"a gateway did no work: {finished}"
        wait_until(lambda: not conflicted(urls, name), 120, "no conflicts on any node")
    finally:
        for gateway in started:
            stop(gateway.process)
        stop(demo)


def test_three_gateways_share_two_hundred_databases(tmp_path: Path) -> None:
    """
    Three C{twistd couchgw --databases}, one per node, 200 databases of 10 messages each: every
    message forwarded, called once, no conflict left; the gateways split the databases, none
    followed by two once they settled.
    """
    urls = cluster_urls()
    prefix = f"many{uuid.uuid4().hex[:8]}-"
    names = [f"{prefix}{i:03d}" for i in range(200)]
    log = tmp_path / "target.log"
    wsdl, demo = start_demo(log, 0.0)
    routes = tmp_path / "routes.toml"
    routes.write_text(
        f'[routes.null]\nkind = "http"\nurl = "{wsdl.replace("/?wsdl", "/json")}"\n'
        "concurrency = 50\n"
    )
    started: list[Twistd] = []
    try:
        for name in names:
            status, body = http("PUT", f"{urls[0]}/{name}?n=3&q=1")
            assert status in (201, 202), body
        for i, url in enumerate(urls[:3]):
            own = tmp_path / f"gateway{i + 1}"
            own.mkdir()
            started.append(
                Twistd(
                    own,
                    "--couch",
                    url,
                    "--databases",
                    f"{prefix}*",
                    "--target",
                    wsdl,
                    "--routes",
                    str(routes),
                )
            )
        for gateway in started:
            gateway.wait_ready(180)
        for i, name in enumerate(names):
            docs = [
                {"_id": f"{name}-{j}", "type": "message", "target": "null", "operation": "ping"}
                for j in range(10)
            ]
            write_all(f"{urls[i % 3]}/{name}", docs)
        for name in names:
            ids = [f"{name}-{j}" for j in range(10)]
            docs = wait_terminal(f"{urls[0]}/{name}", ids, 600)
            assert Counter(doc["status"] for doc in docs.values()) == {"forwarded": 10}, name
        calls = Counter(re.findall(r"call json ping id=(\S+)\n", log.read_text()))
        twice = {doc_id: n for doc_id, n in calls.items() if n > 1}
        assert twice == {}, f"{len(twice)} message(s) called more than once: {twice}"
        assert len(calls) == 2000
        served = [http("GET", f"{g.api}/status")[1]["databases"]["served"] for g in started]
        assert all(served), f"a gateway serves no database: {served}"
        wait_until(
            lambda: (
                sum(http("GET", f"{g.api}/status")[1]["databases"]["served"] for g in started)
                == len(names)
            ),
            60,
            "each database served by one gateway",
        )
        left = {name: found for name in names if (found := conflicted(urls, name))}
        assert left == {}, left
    finally:
        for gateway in started:
            stop(gateway.process)
        stop(demo)
        for name in names:
            http("DELETE", f"{urls[0]}/{name}")
        http("DELETE", f"{urls[0]}/couchgw-gateways")
