"""
The operator's console: what a requeue and a cancel write (pure functions), and the HTTP API that
lists messages, shows one whole and acts on them, in this process against a real PouchDB Server
(or $COUCHGW_TEST_COUCH) and the real demo service, over sockets: listings paged by status,
route, time and id; one message requeued and cancelled; every message of a selection requeued,
with those that changed meanwhile left alone; actions refused across sites; a database of many.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.web.server import Site

from couchgw import checks, console, message
from couchgw.couch import design
from couchgw.couch.errors import NotFound
from couchgw.gateway import Gateway
from couchgw.timing import iso
from couchgw.web.api import API
from couchgw.web.events import Hubs
from couchgw.web.messages import Messages
from couchgw.web.throughput import Throughput
from tests.test_fleet import FleetTestCase, activate
from tests.test_gateway import GatewayTestCase

NOW = 1_796_000_000.0


def failed_doc(doc_id: str, at: float, route: str | None = None, **fields: Any) -> dict[str, Any]:
    """A message as couchgw leaves it when its call failed."""
    doc: dict[str, Any] = {"_id": doc_id, "type": "message", "operation": "ping", "text": doc_id}
    if route is not None:
        doc["target"] = route
    doc = message.apply(doc, message.claimed(doc, "gw-1", at - 1, 60))
    return message.apply(doc, {**message.failed("fault", f"{doc_id} refused", at), **fields})


# -- what an action writes -------------------------------------------------------------------------


def test_a_requeued_message_is_new_again_and_keeps_what_it_was() -> None:
    doc = {
        **failed_doc("m1", NOW, traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01"),
        "_rev": "3-x",
    }
    doc["callback_url"] = "https://hooks.example/done"
    doc["callback"] = {"status": "delivered", "attempts": 1}
    again = message.apply(doc, message.requeued(doc, "ops", NOW + 60))
    # new for couchgw's own checks: none of its fields, no status (see couchgw.checks.check_new)
    assert checks.check_new(again) is None
    assert message.due(again, NOW + 60) == "new"
    assert not [f for f in message.GATEWAY_FIELDS if f in again]
    assert (again["requeued_by"], again["requeued_at"]) == ("ops", iso(NOW + 60))
    assert again["requeues"] == [
        {
            "status": "failed",
            "error": {"kind": "fault", "message": "m1 refused"},
            "attempts": 1,
            "dispatched_at": iso(NOW - 1),
            "completed_at": iso(NOW),
            "callback": {"status": "delivered", "attempts": 1},
            "by": "ops",
            "at": iso(NOW + 60),
        }
    ]
    assert (again["_rev"], again["traceparent"], again["callback_url"]) == (
        "3-x",
        doc["traceparent"],
        "https://hooks.example/done",
    )


def test_a_requeue_drops_what_would_end_it_again() -> None:
    """A client's cancel, and an expires_at that has passed, would end it at once: kept aside."""
    doc = {
        **message.apply({"_id": "m", "type": "message"}, message.cancelled(NOW)),
        "cancel_requested": True,
    }
    again = message.apply(doc, message.requeued(doc, "ops", NOW))
    assert "cancel_requested" not in again and again["requeues"][0]["cancel_requested"] is True
    late = {"_id": "m", "type": "message", "expires_at": iso(NOW - 1)}
    late = message.apply(late, message.expired(late, NOW))
    again = message.apply(late, message.requeued(late, "ops", NOW))
    assert "expires_at" not in again and again["requeues"][0]["expires_at"] == iso(NOW - 1)
    later = {**late, "expires_at": iso(NOW + 3600)}
    assert message.apply(later, message.requeued(later, "ops", NOW))["expires_at"] == iso(
        NOW + 3600
    )


def test_a_requeue_keeps_the_last_rounds() -> None:
    doc = failed_doc("m", NOW)
    for round_ in range(message.REQUEUES_KEPT + 3):
        doc = message.apply(doc, message.requeued(doc, f"ops{round_}", NOW + round_))
        doc = message.apply(doc, message.failed("fault", f"round {round_}", NOW + round_))
    kept = doc["requeues"]
    assert len(kept) == message.REQUEUES_KEPT
    assert kept[-1]["by"] == f"ops{message.REQUEUES_KEPT + 2}"


def test_what_each_action_applies_to() -> None:
    for status in ("failed", "expired", "rejected", "cancelled"):
        assert message.refusal("requeue", {"status": status}) is None
        assert message.refusal("cancel", {"status": status}) is not None
    for status in (None, "scheduled", "retrying"):
        assert message.refusal("cancel", {"status": status}) is None
        assert message.refusal("requeue", {"status": status}) is not None
    assert message.refusal("requeue", {"status": "forwarded"}) == (
        "a forwarded message is not requeued (only cancelled, expired, failed, rejected ones are)"
    )
    assert message.refusal("cancel", {"status": "dispatching"}) == (
        "a dispatching message is not cancelled (only new, retrying, scheduled ones are)"
    )
    cancelled = message.cancelled_by("ops", NOW)
    assert (cancelled["status"], cancelled["cancelled_by"], cancelled["cancelled_at"]) == (
        "cancelled",
        "ops",
        iso(NOW),
    )


# -- listings: parameters, cursors, ranges ---------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"status": "done"}, "status must be one of new, cancelled, dispatching, "),
        ({"since": "yesterday"}, "since must be an ISO 8601 time with its zone"),
        ({"since": "2026-11-28T18:00:00"}, "since must be an ISO 8601 time with its zone"),
        ({"since": "12x"}, "since must be an ISO 8601 time with its zone"),
    ],
)
def test_a_bad_selection_is_one_line(params: dict[str, str], error: str) -> None:
    with pytest.raises(console.BadRequest, match=r"^" + error.replace("(", r"\(")):
        console.selection_of(params, NOW)


def test_selections() -> None:
    chosen = console.selection_of(
        {"status": "failed", "route": "billing", "since": "12h", "q": "job-"}, NOW
    )
    assert chosen == console.Selection("failed", "billing", NOW - 12 * 3600, "job-")
    since = console.selection_of({"since": "2026-11-28T18:00:00+01:00"}, NOW).since
    assert since == message.parse_time("2026-11-28T17:00:00Z")
    assert console.selection_of({"status": "", "route": None}, NOW) == console.Selection()
    assert console.limit_of(None) == console.DEFAULT_LIMIT
    for bad in ("0", "-1", "x", str(console.MOST + 1)):
        with pytest.raises(console.BadRequest, match=r"^limit must be a whole number from 1 to"):
            console.limit_of(bad)
    with pytest.raises(console.BadRequest, match=r"^name the status of the messages to requeue"):
        console.action_selection("requeue", console.Selection())
    with pytest.raises(console.BadRequest, match=r"^new messages are not requeued"):
        console.action_selection("requeue", console.Selection("new"))


def test_cursors_are_only_those_a_listing_gave() -> None:
    by_time = console.Selection("failed")
    by_id = console.Selection(q="job-")
    cursor = console.cursor_text([1_796_000_000_123, "job-7"])
    assert console.position_of(cursor, by_time) == [1_796_000_000_123, "job-7"]
    for bad in ("nonsense", console.cursor_text(["job-7"]), console.cursor_text({"a": 1})):
        with pytest.raises(console.BadRequest, match=r"^cursor is not one this listing gave"):
            console.position_of(bad, by_time)
    assert console.position_of(console.cursor_text(["job-7"]), by_id) == ["job-7"]
    with pytest.raises(console.BadRequest):
        console.position_of(cursor, by_id)


def test_a_selection_is_one_range_of_the_index() -> None:
    params = console.view_params(console.Selection("failed", "billing", NOW), None, 50)
    assert (params["startkey"], params["endkey"]) == (
        ["failed", "billing", {}],
        ["failed", "billing", int(NOW * 1000)],
    )
    assert (params["descending"], params["limit"]) == ("true", 51)
    params = console.view_params(console.Selection(), [5, "m"], 10)
    assert (params["startkey"], params["endkey"]) == ([None, None, 5, "m"], [None, None])


def test_a_message_whole() -> None:
    doc = failed_doc("m", NOW, traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    doc = message.apply(doc, message.requeued(doc, "ops", NOW + 1))
    doc = message.apply(doc, message.claimed(doc, "gw-2", NOW + 2, 60))
    doc = message.apply(doc, message.failed("fault", "again", NOW + 3))
    whole = console.whole(doc, NOW + 4)
    assert [(e["round"], e["message"]) for e in whole["errors"]] == [
        (1, "m refused"),
        (2, "again"),
    ]
    assert whole["trace_id"] == "a" * 32 and whole["actions"] == ["requeue"]
    assert whole["timings"]["claimed"] == iso(NOW + 2)
    assert whole["timings"]["finished"] == iso(NOW + 3)
    assert whole["timings"]["requeued"] == iso(NOW + 1)
    assert whole["document"] is doc
    assert console.whole({"_id": "n", "trace": "00-" + "c" * 32 + "-" + "d" * 16 + "-01"}, NOW)[
        "trace_id"
    ] == ("c" * 32)


def test_the_throughput_counts_what_finished_in_each_bucket() -> None:
    clock = Clock()
    clock.advance(1000)
    total = [0.0]
    throughput = Throughput(lambda: total[0], clock, bucket=10, buckets=6)
    throughput.startService()
    total[0] = 3
    clock.advance(10)
    total[0] = 5
    for step in (10, 10, 5):  # (a Clock's advance runs what falls due at its end)
        clock.advance(step)
    shown = throughput.describe()
    assert shown["counts"] == [0, 0, 0, 3, 2, 0]
    assert (shown["bucket"], shown["until"]) == (10, iso(1040))
    clock.advance(100)
    assert throughput.describe()["counts"] == [0] * 6
    throughput.stopService()


# -- the API, on a real server ----------------------------------------------------------------------


def served(test: Any, api: API) -> str:
    port: Any = reactor.listenTCP(0, Site(api.app.resource()), interface="127.0.0.1")  # type: ignore[attr-defined]
    test.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}"


@inlineCallbacks
def call(method: str, url: str, headers: dict[str, str] | None = None) -> Any:
    """A request to the API: its status and decoded JSON answer."""
    response = yield treq.request(
        method, url, headers={k: [v] for k, v in (headers or {}).items()}, persistent=False
    )
    body = yield response.content()
    try:
        return response.code, json.loads(body)
    except ValueError:
        return response.code, body.decode("utf-8", "replace")


class ConsoleAPI(GatewayTestCase):
    timeout = 120

    def api(self, gateway: Gateway, names: bool = True) -> str:
        hubs = Hubs(lambda name: self.db if name is None else None, reactor, heartbeat=1.0)
        hubs.startService()
        self.addCleanup(hubs.stopService)
        return served(self, API(gateway, hubs, reactor, names=names))

    def idle_gateway(self) -> Gateway:
        """A gateway that is not started: the listings need only its database."""
        from couchgw.targets.soap import SoapTarget

        target = SoapTarget("default", "http://127.0.0.1:9/?wsdl", self.threads)
        return Gateway(self.db, {"default": target}, reactor)

    @inlineCallbacks
    def fill(self) -> Any:
        """130 messages: failed on routes a and b, forwarded on a, ten of them at the same ms."""
        yield self.db.create()
        yield design.push(self.db)
        docs = [failed_doc(f"fa-{i:03d}", NOW + i, "a") for i in range(50)]
        docs += [failed_doc(f"fb-{i:03d}", NOW + 30.5 + i, "b") for i in range(20)]
        docs += [
            message.apply(
                {"_id": f"ok-{i:03d}", "type": "message", "target": "a"},
                message.forwarded({"n": i}, NOW + 100 + (i if i < 30 else 30)),
            )
            for i in range(40)
        ]
        docs += [{"_id": f"new-{i:03d}", "type": "message", "target": "b"} for i in range(20)]
        docs.append({"_id": "note", "type": "note"})
        yield self.db.bulk_docs(docs)

    @inlineCallbacks
    def pages(self, url: str) -> Any:
        """Every page of a listing, followed by its cursors: the ids, in order."""
        ids: list[str] = []
        cursor = None
        for _ in range(100):
            code, page = yield call("GET", url + (f"&cursor={cursor}" if cursor else ""))
            self.assertEqual(code, 200, page)
            ids += [m["id"] for m in page["messages"]]
            cursor = page["next"]
            if cursor is None:
                return ids
        self.fail("the listing never ended")

    @inlineCallbacks
    def test_listings_by_status_route_time_and_id(self) -> Any:
        yield self.fill()
        base = self.api(self.idle_gateway())
        code, page = yield call("GET", f"{base}/messages")
        self.assertEqual(code, 200, page)
        self.assertEqual(len(page["messages"]), console.DEFAULT_LIMIT)
        # newest first: the forwarded ones (ten at the same ms, by id among them)
        self.assertEqual(page["messages"][0]["id"], "ok-039")
        self.assertEqual(page["messages"][0]["status"], "forwarded")
        every = yield self.pages(f"{base}/messages?limit=17")
        self.assertEqual(len(every), 130)
        self.assertEqual(len(set(every)), 130)  # none twice, none missed across pages
        self.assertEqual(every[-20:], [f"new-{i:03d}" for i in range(19, -1, -1)])  # no time
        failed_a = yield self.pages(f"{base}/messages?status=failed&route=a&limit=20")
        self.assertEqual(failed_a, [f"fa-{i:03d}" for i in range(49, -1, -1)])
        code, page = yield call("GET", f"{base}/messages?status=failed&count=1&limit=3")
        self.assertEqual((page["total"], len(page["messages"])), (70, 3))
        first = page["messages"][0]
        self.assertEqual((first["id"], first["route"]), ("fb-019", "b"))
        self.assertEqual(first["error"], {"kind": "fault", "message": "fb-019 refused"})
        since = iso(NOW + 45)
        recent = yield self.pages(f"{base}/messages?status=failed&since={since}")
        self.assertEqual(
            sorted(recent),
            [f"fa-{i:03d}" for i in range(45, 50)] + [f"fb-{i:03d}" for i in range(15, 20)],
        )
        code, page = yield call("GET", f"{base}/messages?route=b&status=new&count=1")
        self.assertEqual(page["total"], 20)
        by_id = yield self.pages(f"{base}/messages?q=fb-01&limit=4")
        self.assertEqual(by_id, [f"fb-{i:03d}" for i in range(10, 20)])
        failed_b = yield self.pages(f"{base}/messages?q=f&status=failed&route=b&limit=7")
        self.assertEqual(failed_b, [f"fb-{i:03d}" for i in range(20)])
        for query, reason in [
            ("status=done", "status must be one of"),
            ("limit=0", "limit must be a whole number"),
            ("cursor=xyz", "cursor is not one this listing gave"),
            ("since=soon", "since must be an ISO 8601 time"),
        ]:
            code, answer = yield call("GET", f"{base}/messages?{query}")
            self.assertEqual((code, answer["error"]), (400, "bad_request"), query)
            self.assertTrue(answer["reason"].startswith(reason), answer)
        code, whole = yield call("GET", f"{base}/messages/fa-003")
        self.assertEqual((code, whole["status"], whole["actions"]), (200, "failed", ["requeue"]))
        self.assertEqual(whole["document"]["text"], "fa-003")
        for missing in ("nothing", "note"):
            code, answer = yield call("GET", f"{base}/messages/{missing}")
            self.assertEqual(code, 404, missing)

    @inlineCallbacks
    def test_requeue_and_cancel_one_message(self) -> Any:
        gateway = self.gateway()
        yield self.ready(gateway)
        base = self.api(gateway)
        yield self.db.put({"_id": "no", "type": "message", "operation": "refuse", "args": ["x"]})
        later = iso(reactor.seconds() + 3600)
        yield self.db.put(
            {"_id": "later", "type": "message", "operation": "ping", "not_before": later}
        )
        done = yield self.terminal("no")
        self.assertEqual(done["status"], "failed")
        code, answer = yield call("POST", f"{base}/messages/no/requeue")
        self.assertEqual((code, answer["status"], answer["requeued_by"]), (200, "new", "operator"))
        again = yield self.wait_for(
            lambda: self.db.get("no").addCallback(
                lambda d: d if d.get("status") == "failed" and d.get("requeues") else None
            ),
            what="the requeued message to fail again",
        )
        self.assertEqual(again["attempts"], 1)  # its attempts began again
        self.assertEqual(again["requeues"][0]["status"], "failed")
        code, whole = yield call("GET", f"{base}/messages/no")
        self.assertEqual([e["round"] for e in whole["errors"]], [1, 2])
        yield self.wait_for(
            lambda: self.db.get("later").addCallback(lambda d: d.get("status") == "scheduled"),
            what="the scheduled message",
        )
        code, answer = yield call("POST", f"{base}/messages/later/cancel")
        self.assertEqual((code, answer["status"]), (200, "cancelled"), answer)
        cancelled = yield self.db.get("later")
        self.assertEqual(
            (cancelled["status"], cancelled["cancelled_by"]), ("cancelled", "operator")
        )
        code, answer = yield call("POST", f"{base}/messages/later/cancel")
        self.assertEqual((code, answer["error"]), (409, "not_applicable"))
        self.assertEqual(
            answer["reason"],
            "a cancelled message is not cancelled (only new, retrying, scheduled ones are)",
        )
        code, answer = yield call("POST", f"{base}/messages/nothing/requeue")
        self.assertEqual(code, 404)
        code, answer = yield call("POST", f"{base}/messages/no/explode")
        self.assertEqual((code, answer["reason"]), (404, "no action 'explode'"))
        code, _ = yield call("GET", f"{base}/messages/no/requeue")
        self.assertEqual(code, 405)  # no action on GET

    @inlineCallbacks
    def test_a_selection_requeued_leaves_alone_what_changed(self) -> Any:
        gateway = self.gateway()
        yield self.ready(gateway)
        yield self.db.bulk_docs(
            [failed_doc(f"f{i:02d}", reactor.seconds() - 60 + i) for i in range(30)]
            + [failed_doc(f"other{i}", reactor.seconds() - 60, "elsewhere") for i in range(3)]
        )
        db = self.db

        class Meanwhile(Messages):
            """A client edits one message of the first batch after it was read."""

            edited = False

            @inlineCallbacks
            def _read(self, *args: Any) -> Any:
                docs, following = yield super()._read(*args)
                if not self.edited and docs:
                    self.edited = True
                    yield db.put({**docs[5], "note": "edited meanwhile"})
                return docs, following

        done = yield Meanwhile(db, reactor).act_all(
            console.Selection("failed", "default"), "requeue", "ops"
        )
        self.assertEqual((done["done"], done["left_alone"]), (29, 1))
        self.assertEqual(done["left"], [{"id": "f24", "reason": "it changed meanwhile"}])
        ids = [f"f{i:02d}" for i in range(30) if i != 24]
        for doc_id in ids:
            doc = yield self.terminal(doc_id)
            self.assertEqual((doc["status"], doc["requeued_by"]), ("forwarded", "ops"))
        left = yield db.get("f24")
        self.assertEqual((left["status"], left["note"]), ("failed", "edited meanwhile"))
        other = yield db.get("other0")
        self.assertEqual(other["status"], "failed")  # not of the selection
        base = self.api(gateway)
        code, done = yield call("POST", f"{base}/messages/requeue?status=failed&route=default")
        self.assertEqual((code, done["done"], done["left_alone"]), (200, 1, 0))
        code, answer = yield call("POST", f"{base}/messages/requeue")
        self.assertEqual(code, 400)
        self.assertIn("name the status of the messages to requeue", answer["reason"])
        code, answer = yield call("POST", f"{base}/messages/cancel?status=failed")
        self.assertEqual(code, 400)

    @inlineCallbacks
    def test_actions_come_from_this_api_alone(self) -> Any:
        yield self.db.create()
        yield self.db.bulk_docs([failed_doc(f"x{i}", NOW) for i in range(3)])
        gateway = self.idle_gateway()
        base = self.api(gateway)
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Origin": base.replace("127.0.0.1", "localhost")},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site", "Origin": "http://other.127.0.0.1.nip.io"},
        ):
            code, answer = yield call("POST", f"{base}/messages/x0/requeue", headers)
            self.assertEqual((code, answer["error"]), (403, "forbidden"), headers)
            self.assertIn("does not act here", answer["reason"])
            code, _ = yield call("POST", f"{base}/messages/requeue?status=failed", headers)
            self.assertEqual(code, 403)
        doc = yield self.db.get("x0")
        self.assertEqual(doc["status"], "failed")
        code, _ = yield call(
            "POST", f"{base}/messages/x0/requeue", {"Origin": base, "Sec-Fetch-Site": "same-origin"}
        )
        self.assertEqual(code, 200)
        code, _ = yield call("POST", f"{base}/messages/x1/requeue")  # no browser: no Origin
        self.assertEqual(code, 200)
        code, _ = yield call("GET", f"{base}/messages/x2/requeue")  # a link acts on nothing
        self.assertEqual(code, 405)
        code, me = yield call("GET", f"{base}/me")
        self.assertEqual(me, {"user": "operator", "may_act": True, "why": None})
        # an API that listens beyond this machine without --http-auth: everyone reads, nobody acts
        public = self.api(gateway, names=False)
        code, answer = yield call("POST", f"{public}/messages/x2/requeue")
        self.assertEqual(code, 403)
        self.assertIn("actions need --http-auth", answer["reason"])
        code, me = yield call("GET", f"{public}/me")
        self.assertFalse(me["may_act"])
        with self.assertRaises(NotFound):  # no gateway of this version has written the index
            yield self.db.get(f"_design/{console.DDOC}")
        code, page = yield call("GET", f"{public}/messages?status=failed")
        self.assertEqual(code, 200, page)  # the listing wrote it
        self.assertEqual([m["id"] for m in page["messages"]], ["x2"])
        ddoc = yield self.db.get(f"_design/{console.DDOC}")
        self.assertEqual(ddoc["views"], design.DOCS[f"_design/{console.DDOC}"]["views"])


class ConsoleOfMany(FleetTestCase):
    @inlineCallbacks
    def test_the_console_of_one_database_of_many(self) -> Any:
        from couchgw.tap import _served

        self.start_demo()
        db = self.database("console")
        yield db.create()
        gateway = self.fleet()
        yield self.ready(gateway)
        hubs = Hubs(_served(gateway, self.server), reactor, heartbeat=1.0)
        hubs.startService()
        self.addCleanup(hubs.stopService)
        base = served(self, API(gateway, hubs, reactor))
        yield self.wait_for(lambda: db.name in gateway.fleet.discovery.names, 30, "the database")  # type: ignore[union-attr]
        yield db.put({"_id": "no", "type": "message", "operation": "refuse", "args": ["x"]})
        yield db.put(activate("yes"))
        yield self.finished(db, ["no", "yes"])
        code, page = yield self.wait_for(
            lambda: call("GET", f"{base}/db/{db.name}/messages?status=failed").addCallback(
                lambda answer: answer if answer[0] == 200 else None
            ),
            what="the console's index in the database",
        )
        self.assertEqual([m["id"] for m in page["messages"]], ["no"])
        code, answer = yield call("POST", f"{base}/db/{db.name}/messages/no/requeue")
        self.assertEqual((code, answer["status"]), (200, "new"))
        again = yield self.wait_for(
            lambda: db.get("no").addCallback(lambda d: d.get("status") == "failed" and d),
            what="the requeued message to fail again",
        )
        self.assertEqual(again["requeued_by"], "operator")
        code, whole = yield call("GET", f"{base}/db/{db.name}/messages/yes")
        self.assertEqual((code, whole["status"]), (200, "forwarded"))
        code, answer = yield call("GET", f"{base}/messages")
        self.assertEqual(code, 404)
        self.assertIn("name one, /db/<db>/", answer["reason"])
        other = f"{self.prefix}absent-{uuid.uuid4().hex[:4]}"
        code, answer = yield call("GET", f"{base}/db/{other}/messages")
        self.assertEqual((code, answer["reason"]), (404, f"no database {other!r} is served here"))
