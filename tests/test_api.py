"""The HTTP API, driven through StubTreq: no sockets, no reactor."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from couchgw.web.api import API
from couchgw.web.events import Hubs


class FakeGateway:
    def __init__(self, problems: list[str]) -> None:
        self._problems = problems

    def problems(self) -> list[str]:
        return list(self._problems)

    def status(self, names: bool = True) -> Any:
        return succeed({"counts": {"forwarded": 3}, "in_flight": 1, "names": names})


class APITests(SynchronousTestCase):
    def get(self, gateway: FakeGateway, path: str, names: bool = True) -> tuple[int, str, Any]:
        hubs = Hubs(lambda name: None, Clock())
        stub = StubTreq(API(gateway, hubs, names=names).app.resource())  # type: ignore[arg-type]
        response = self.successResultOf(stub.get(f"http://localhost{path}"))
        body = self.successResultOf(response.content())
        content_type = response.headers.getRawHeaders(b"content-type")[0].decode()
        return response.code, content_type, json.loads(body)

    def test_health(self) -> None:
        self.assertEqual(
            self.get(FakeGateway(["feed down"]), "/health"),
            (200, "application/json", {"status": "ok"}),
        )

    def test_ready_lists_the_reasons(self) -> None:
        code, _, body = self.get(FakeGateway(["changes feed waiting: refused"]), "/ready")
        self.assertEqual(code, 503)
        self.assertEqual(body, {"ready": False, "problems": ["changes feed waiting: refused"]})
        code, _, body = self.get(FakeGateway([]), "/ready")
        self.assertEqual((code, body), (200, {"ready": True, "problems": []}))

    def test_status(self) -> None:
        code, content_type, body = self.get(FakeGateway([]), "/status")
        self.assertEqual((code, content_type), (200, "application/json"))
        self.assertEqual(body, {"counts": {"forwarded": 3}, "in_flight": 1, "names": True})
        # databases named only where the API may: on this machine alone, or to server admins
        self.assertFalse(self.get(FakeGateway([]), "/status", names=False)[2]["names"])

    def test_a_database_not_served(self) -> None:
        code, _, body = self.get(FakeGateway([]), "/db/other/messages/m1/events")
        self.assertEqual(code, 404)
        self.assertEqual(body["reason"], "no database 'other' is served here")
        code, _, body = self.get(FakeGateway([]), "/messages/m1/events")
        self.assertEqual(code, 404)
        self.assertIn("name one, /db/<db>/", body["reason"])
