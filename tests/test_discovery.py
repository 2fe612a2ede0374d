"""How a fleet comes to know the databases of a server: what it asks, in which order."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from couchgw.couch.client import Database
from couchgw.gateway.discovery import Discovery


class _Server(Resource):
    """Two matching databases; C{/_db_updates} answered at once when read once, else held open."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def render_GET(self, request: Request) -> Any:
        self.asked.append(request.path.decode())
        request.setHeader(b"content-type", b"application/json")
        if request.path == b"/_all_dbs":
            return json.dumps(["tenant-a", "tenant-b", "other"]).encode()
        if b"feed=continuous" in request.uri:
            return NOT_DONE_YET
        return b'{"results": [], "last_seq": "0"}'


class Discovering(SynchronousTestCase):
    def test_a_database_found_is_read_as_the_server_allows(self) -> None:
        """
        Whether the server says which databases change is known before any database is told of
        (each is then read once, not followed for ever), and its updates are followed before
        the databases are listed (one created meanwhile is not missed).
        """
        server = _Server()
        agent = RequestTraversalAgent(server)
        told: list[tuple[str, bool]] = []
        discovery = Discovery(
            Database("http://admin:pw@couch/couchgw-gateways", agent),
            Clock(),
            ["tenant-*"],
            exclude="couchgw-gateways",
            found=lambda name: told.append((name, discovery.says_updates)),
            gone=lambda name: None,
            updated=lambda name: None,
        )
        d = discovery.start({"couchdb": "Welcome", "version": "3.5.0"})
        agent.flush()
        self.successResultOf(d)
        self.assertEqual(told, [("tenant-a", True), ("tenant-b", True)])
        self.assertEqual(server.asked, ["/_db_updates", "/_db_updates", "/_all_dbs"])
        discovery.stop()
