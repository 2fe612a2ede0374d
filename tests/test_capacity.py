"""
Whether the server keeps open the files of the databases served: the arithmetic, what is said
when they stop fitting, and the limit read from the real test server.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import Request

from couchgw.couch import capacity
from couchgw.couch.capacity import READ_EVERY, WINDOW, OpenFiles, OpenFilesWatch
from couchgw.couch.client import Database
from tests.servers import couch_url, http, is_pouchdb


class Arithmetic(SynchronousTestCase):
    def test_the_shard_files_each_node_holds(self) -> None:
        one = OpenFiles(500, "a", q=2, n=1, nodes=1)
        self.assertEqual(one.needed(1000), 2000)
        cluster = OpenFiles(500, "a", q=2, n=3, nodes=3)  # every node a copy of every shard
        self.assertEqual(cluster.needed(1000), 2000)
        wide = OpenFiles(500, "a", q=2, n=3, nodes=5)  # the copies spread over five
        self.assertEqual(wide.needed(1000), 1200)
        self.assertEqual(OpenFiles(500, "a", q=1, n=1).needed(7), 7)

    def test_advice_only_where_the_files_do_not_fit_with_room(self) -> None:
        files = OpenFiles(500, "couchdb@a", q=2, n=1, nodes=1)
        self.assertIsNone(files.advice(150))  # 300 files: room to spare
        self.assertEqual(files.enough(150), 500)
        self.assertEqual(files.enough(1000), 2600)
        self.assertEqual(
            files.advice(1000),
            "the 1000 databases used in a minute have 2000 shard files on each node, but node "
            "couchdb@a keeps at most 500 open ([couchdb] max_dbs_open): CouchDB keeps closing "
            "and opening them again; set it to 2600 or more",
        )
        self.assertIsNone(OpenFiles(2600, "couchdb@a", q=2, n=1).advice(1000))
        self.assertEqual(
            files.describe(1000),
            {"max_dbs_open": 500, "shard_files": 2000, "advice": files.advice(1000)},
        )


class _Server(Resource):
    """Answers as one Apache CouchDB node with a C{max_dbs_open} of C{limit} (None: unset)."""

    isLeaf = True

    def __init__(self, limit: int | None) -> None:
        super().__init__()
        self.limit = limit

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        answers: dict[bytes, Any] = {
            b"/": {"couchdb": "Welcome", "version": "3.5.0"},
            b"/_membership": {"all_nodes": ["couchdb@a"], "cluster_nodes": ["couchdb@a"]},
            b"/_node/couchdb@a/_config/cluster": {"q": "2", "n": "1"},
        }
        if self.limit is not None:
            answers[b"/_node/couchdb@a/_config/couchdb/max_dbs_open"] = str(self.limit)
        if request.path not in answers:
            request.setResponseCode(404)
            return b'{"error": "not_found", "reason": "unknown_config_value"}'
        return json.dumps(answers[request.path]).encode()


class Watch(SynchronousTestCase):
    def test_said_once_when_they_stop_fitting_and_once_when_they_fit_again(self) -> None:
        server, clock = _Server(None), Clock()
        agent = RequestTraversalAgent(server)
        watch = OpenFilesWatch(Database("http://admin:pw@couch/db", agent), clock)
        self.assertIsNone(watch.describe())  # (not read yet)
        with capturedLogs() as events:
            watch.start()
            agent.flush()
            self.assertEqual(watch.files, OpenFiles(500, "couchdb@a", q=2, n=1, nodes=1))
            for i in range(1000):  # a minute's use: 2,000 shard files
                watch.used(f"db{i % 100}" if i < 500 else f"other{i}")
            clock.advance(WINDOW)
            self.assertEqual(watch.used_lately, 600)
            for i in range(1000):
                watch.used(f"db{i}")
            clock.advance(WINDOW)
            watch.used("db0")
            server.limit = 3000  # raised by an admin: read with the fifth window
            for _ in range(READ_EVERY - 3):
                clock.advance(WINDOW)
                agent.flush()
            self.assertEqual(watch.files.most, 500)  # type: ignore[union-attr]
            for i in range(1000):
                watch.used(f"db{i}")
            clock.advance(WINDOW)
            agent.flush()
        said = [event["log_format"] for event in events]
        self.assertEqual(said, ["{advice} (docs/operations.md)", said[1]], said)
        self.assertIn("the 600 databases used in a minute have 1200 shard", events[0]["advice"])
        self.assertIn("set it to 1600 or more", events[0]["advice"])
        self.assertIn("fit in the database files CouchDB keeps open", said[1])
        self.assertEqual(
            watch.describe(),
            {"used_lately": 1000, "max_dbs_open": 3000, "shard_files": 2000, "advice": None},
        )
        watch.stop()

    def test_the_databases_of_every_gateway_count(self) -> None:
        agent, clock = RequestTraversalAgent(_Server(2000)), Clock()
        watch = OpenFilesWatch(Database("http://couch/db", agent), clock, lambda: 3)
        watch.start()
        agent.flush()
        for i in range(400):
            watch.used(f"db{i}")
        clock.advance(WINDOW)
        self.assertEqual(watch.used_lately, 1200)  # (each of the 3 gateways uses as many)
        described = watch.describe()
        assert described is not None
        self.assertEqual(described["shard_files"], 2400)
        self.assertIn("set it to 3100 or more", described["advice"])
        watch.stop()

    def test_unread_the_limit_is_not_described(self) -> None:
        agent = RequestTraversalAgent(_Server(None))
        watch = OpenFilesWatch(Database("http://couch/db", agent), Clock())
        watch.files = "the server's configuration cannot be read (401)"
        self.assertIsNone(watch.describe())


class Reading(TestCase):
    """The limit read from the real test server, as a server admin and as anyone."""

    @inlineCallbacks
    def test_read_from_each_node(self) -> Any:
        db = Database(f"{couch_url()}/anything", Agent(reactor))
        files = yield capacity.read(db)
        if is_pouchdb():
            self.assertEqual(
                files, "this server does not say how many database files it keeps open"
            )
            return
        assert isinstance(files, OpenFiles), files
        nodes = http("GET", f"{couch_url()}/_membership")[1]["all_nodes"]
        limits = []
        for node in nodes:
            status, value = http("GET", f"{couch_url()}/_node/{node}/_config/couchdb/max_dbs_open")
            limits.append(int(value) if status == 200 else 500)
        cluster = http("GET", f"{couch_url()}/_node/{nodes[0]}/_config/cluster")[1]
        self.assertEqual(
            (files.most, files.q, files.n, files.nodes),
            (min(limits), int(cluster["q"]), int(cluster["n"]), len(nodes)),
        )
        self.assertIn(files.node, nodes)
        anyone = yield capacity.read(db.anonymous())
        self.assertIsInstance(anyone, str)
        self.assertTrue(anyone.startswith("the server's configuration cannot be read ("), anyone)
