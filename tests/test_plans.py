"""
Which message first, when, and why it took so long, on a real PouchDB Server (or
$COUCHGW_TEST_COUCH) with real targets over sockets: priorities under a backlog, scheduled
delivery across a restart, expiry, and traces (the OpenTelemetry SDK's in-memory exporter).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from couchgw import message
from couchgw.connections import agent, connection_pool
from couchgw.gateway import Gateway, Policy
from couchgw.targets.http import HttpTarget
from couchgw.timing import Backoff, iso
from couchgw.tracing import Tracing
from tests.test_gateway import GatewayTestCase

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


@dataclass(frozen=True)
class Call:
    id: str
    at: float
    traceparent: str | None
    tracestate: str | None = None


class _Recorder(Resource):
    """An HTTP target that records each call in order; it can hold calls, or fail some."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self.holding = False
        self.held: list[Request] = []
        #: Ids answered with HTTP 500 (a transient error).
        self.failing: set[str] = set()

    def render_POST(self, request: Request) -> Any:
        body = json.loads(request.content.read())
        self.calls.append(
            Call(
                body["id"],
                time.time(),
                request.getHeader("traceparent"),
                request.getHeader("tracestate"),
            )
        )
        request.setHeader(b"Content-Type", b"application/json")
        if body["id"] in self.failing:
            request.setResponseCode(500)
            return b'{"error": "not now"}'
        if self.holding:
            self.held.append(request)
            return NOT_DONE_YET
        return b'{"ok": true}'

    def release(self) -> None:
        self.holding = False
        for request in self.held:
            if not request.finished and not request._disconnected:
                request.write(b'{"ok": true}')
                request.finish()
        self.held.clear()

    def ids(self) -> list[str]:
        return [call.id for call in self.calls]


class Plans(GatewayTestCase):
    timeout = 240

    def recorder(self) -> tuple[str, _Recorder]:
        resource = _Recorder()
        url = self.serve_http(resource)
        self.addCleanup(resource.release)
        return url, resource

    def http_gateway(self, url: str, inflight: int = 1, **options: Any) -> Gateway:
        """A gateway whose one route calls C{url} one message at a time."""
        pool = connection_pool(reactor, 4)
        self.addCleanup(pool.closeCachedConnections)
        target = HttpTarget("default", url, reactor, agent(reactor, pool), 1, timeout=60)
        options.setdefault("heartbeat", 1.0)
        options.setdefault("sweep_interval", 1.0)
        options.setdefault("announce", 1.0)
        gateway = Gateway(
            self.db,
            {"default": target},
            reactor,
            policies={"default": Policy(inflight=inflight)},
            **options,
        )
        gateway.startService()
        self.addCleanup(lambda: gateway.stopService() if gateway.running else None)
        return gateway

    @inlineCallbacks
    def status_of(self, doc_id: str, status: str, timeout: float = 30.0) -> Any:
        @inlineCallbacks
        def check() -> Any:
            doc = yield self.db.get(doc_id)
            return doc if doc.get("status") == status else None

        doc = yield self.wait_for(check, timeout, f"{doc_id} to be {status}")
        return doc

    # -- priority --------------------------------------------------------------------------------

    @inlineCallbacks
    def test_high_priority_overtakes_a_backlog(self) -> Any:
        """
        A high-priority message written behind 10,000 low-priority ones waits only for the call
        in flight; then medium ones by their requested_at; then the low ones.
        """
        url, target = self.recorder()
        # announced every 5 s (the default), not every second: PouchDB Server answers the
        # announcement only once it has written the 10,000 messages, seconds later, and a
        # gateway whose announcement may have lapsed claims nothing (what it passes over
        # meanwhile is left to its sweep, not queued here)
        gateway = self.http_gateway(url, sweep_interval=600.0, announce=5.0)
        yield self.ready(gateway)
        target.holding = True
        yield self.db.put({"_id": "first", "type": "message", "priority": "low"})
        yield self.wait_for(lambda: target.calls, what="the first call")
        backlog = [
            {"_id": f"low-{i:05d}", "type": "message", "priority": "low"} for i in range(10000)
        ]
        result = yield self.db.bulk_docs(backlog)
        self.assertEqual([r for r in result if not r.get("ok")], [])
        now = time.time()
        yield self.db.bulk_docs(
            [
                {"_id": "mid-newer", "type": "message", "requested_at": iso(now - 10)},
                {"_id": "mid-older", "type": "message", "requested_at": iso(now - 60)},
                {"_id": "urgent", "type": "message", "priority": "high"},
            ]
        )
        yield self.wait_for(
            lambda: gateway.backlog.waiting().get("default") == len(backlog) + 3,
            timeout=150,
            what="every message to wait for the route",
        )
        self.assertEqual(target.ids(), ["first"])  # nothing else went meanwhile
        target.release()
        yield self.wait_for(lambda: len(target.calls) >= 5, what="four more calls")
        self.assertEqual(target.ids()[:4], ["first", "urgent", "mid-older", "mid-newer"])
        self.assertTrue(target.ids()[4].startswith("low-"), target.ids())

    @inlineCallbacks
    def test_the_sweep_takes_higher_priorities_first(self) -> Any:
        """
        Retries the feed does not bring are swept for by priority: a high-priority retry due
        for a second goes before low-priority ones due for a minute.
        """
        url, target = self.recorder()
        due_long_ago, due_just_now = iso(time.time() - 60), iso(time.time() - 1)
        retrying = {"type": "message", "status": "retrying", "attempts": 1}
        yield self.db.create()
        yield self.db.bulk_docs(
            [
                {**retrying, "_id": f"low-{i:02d}", "priority": "low",
                 "next_attempt_at": due_long_ago}
                for i in range(30)
            ]
            + [{**retrying, "_id": "high", "priority": "high", "next_attempt_at": due_just_now}]
        )  # fmt: skip
        gateway = self.http_gateway(url, max_inflight=10)
        yield self.wait_for(lambda: len(target.calls) >= 2, what="two calls")
        # first, or second after the one call a feed of every change (PouchDB Server) started
        # as it read them in order (the others waited for the route, highest priority first)
        self.assertIn("high", target.ids()[:2])
        self.assertTrue(gateway.running)

    # -- scheduled delivery ----------------------------------------------------------------------

    @inlineCallbacks
    def test_not_before_across_a_restart(self) -> Any:
        """
        A scheduled message says so while it waits, survives its gateway's stop, and is called
        by the next gateway at its time: woken then, not found by a periodic sweep.
        """
        url, target = self.recorder()
        first = self.http_gateway(url)
        yield self.ready(first)
        not_before = time.time() + 4
        yield self.db.put(
            {"_id": "later", "type": "message", "operation": "ping", "not_before": iso(not_before)}
        )
        scheduled = yield self.status_of("later", "scheduled")
        self.assertEqual(scheduled["next_attempt_at"], iso(not_before))
        yield first.stopService()
        self.assertEqual(target.calls, [])
        second = self.http_gateway(url, sweep_interval=600.0)
        doc = yield self.terminal("later", timeout=60)
        self.assertEqual((doc["status"], doc["attempts"]), ("forwarded", 1))
        self.assertEqual(target.ids(), ["later"])
        self.assertGreaterEqual(target.calls[0].at, message.parse_time(iso(not_before)))
        self.assertTrue(second.running)

    @inlineCallbacks
    def test_scheduled_messages_with_two_gateways_are_called_once(self) -> Any:
        """Two gateways woken for the same scheduled messages call each one once, at its time."""
        url, target = self.recorder()
        gateways = [self.http_gateway(url, inflight=20, sweep_interval=600.0) for _ in range(2)]
        for gateway in gateways:
            yield self.ready(gateway)
        yield self.wait_for(
            lambda: all(g.members.others for g in gateways), what="each to know the other"
        )
        start = time.time() + 3
        due = {f"at-{i:02d}": iso(start + i / 20) for i in range(40)}
        yield self.db.bulk_docs(
            [{"_id": doc_id, "type": "message", "not_before": at} for doc_id, at in due.items()]
        )
        yield self.wait_for(lambda: len(target.calls) >= len(due), what="every call")
        for doc_id in due:
            doc = yield self.terminal(doc_id)
            self.assertEqual((doc["status"], doc["attempts"]), ("forwarded", 1))
        self.assertEqual(sorted(target.ids()), sorted(due))
        for call in target.calls:
            self.assertGreaterEqual(call.at, message.parse_time(due[call.id]))

    @inlineCallbacks
    def test_scheduled_message_cancelled(self) -> Any:
        """A scheduled message a client cancels ends cancelled at once, never called."""
        url, target = self.recorder()
        gateway = self.http_gateway(url, sweep_interval=600.0)
        yield self.ready(gateway)
        yield self.db.put(
            {"_id": "tomorrow", "type": "message", "not_before": iso(time.time() + 86400)}
        )
        doc = yield self.status_of("tomorrow", "scheduled")
        yield self.db.put({**doc, "cancel_requested": True})
        yield self.status_of("tomorrow", "cancelled")
        self.assertEqual(target.calls, [])

    # -- expiry ----------------------------------------------------------------------------------

    @inlineCallbacks
    def test_expires_while_it_waits_behind_a_full_route(self) -> Any:
        """A message that waits for its route past its expires_at ends expired, never called."""
        url, target = self.recorder()
        gateway = self.http_gateway(url)
        yield self.ready(gateway)
        target.holding = True
        yield self.db.put({"_id": "slow", "type": "message"})
        yield self.wait_for(lambda: target.calls, what="the first call")
        expires = iso(time.time() + 1.5)
        yield self.db.put({"_id": "short-lived", "type": "message", "expires_at": expires})
        doc = yield self.status_of("short-lived", "expired")
        self.assertEqual(doc["error"]["kind"], "expired")
        self.assertIn(f"not called by its expires_at, {expires}", doc["error"]["message"])
        self.assertNotIn("attempts", doc)
        self.assertEqual(target.ids(), ["slow"])  # still in flight: expiry needed no room
        target.release()
        yield self.terminal("slow")
        self.assertEqual(target.ids(), ["slow"])
        status = yield gateway.status()
        self.assertEqual(status["counts"].get("expired"), 1)

    @inlineCallbacks
    def test_retry_after_expiry_is_not_scheduled(self) -> Any:
        """A retry that would come after expires_at is not scheduled: the message expires."""
        url, target = self.recorder()
        target.failing.add("doomed")
        gateway = self.http_gateway(url, retry_backoff=Backoff(base=30.0, cap=30.0, floor=30.0))
        yield self.ready(gateway)
        yield self.db.put({"_id": "doomed", "type": "message", "expires_at": iso(time.time() + 20)})
        doc = yield self.terminal("doomed")
        self.assertEqual((doc["status"], doc["attempts"]), ("expired", 1))
        self.assertIn("its next attempt would come later", doc["error"]["message"])
        self.assertIn("HTTP 500", doc["error"]["message"])
        self.assertEqual(target.ids(), ["doomed"])

    # -- traces ----------------------------------------------------------------------------------

    def traced(self) -> tuple[Tracing, InMemorySpanExporter]:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.addCleanup(provider.shutdown)
        return Tracing(provider), exporter

    def spans_of(self, exporter: InMemorySpanExporter, doc_id: str) -> dict[str, ReadableSpan]:
        return {
            span.name: span
            for span in exporter.get_finished_spans()
            if (span.attributes or {}).get("couchgw.message") == doc_id
        }

    @inlineCallbacks
    def test_trace_continues_the_clients(self) -> Any:
        """
        A message's traceparent is continued: wait, claim, call and write spans in the client's
        trace, under its span; the target gets the call span's context.
        """
        url, target = self.recorder()
        tracing, exporter = self.traced()
        gateway = self.http_gateway(url, tracing=tracing)
        yield self.ready(gateway)
        requested = time.time() - 5
        yield self.db.put(
            {
                "_id": "traced",
                "type": "message",
                "operation": "ping",
                "requested_at": iso(requested),
                "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
                "tracestate": "vendor=1",
            }
        )
        doc = yield self.terminal("traced")
        self.assertEqual(doc["status"], "forwarded")
        self.assertNotIn("trace", doc)  # the client's own trace context is the message's
        yield self.wait_for(lambda: len(self.spans_of(exporter, "traced")) == 4, what="4 spans")
        spans = self.spans_of(exporter, "traced")
        self.assertEqual(
            sorted(spans), ["couchgw.call", "couchgw.claim", "couchgw.wait", "couchgw.write"]
        )
        for span in spans.values():
            self.assertEqual(f"{span.context.trace_id:032x}", CLIENT_TRACE)
            assert span.parent is not None
            self.assertEqual(f"{span.parent.span_id:016x}", CLIENT_SPAN)
            self.assertEqual(span.context.trace_state.to_header(), "vendor=1")
        wait, call = spans["couchgw.wait"], spans["couchgw.call"]
        assert wait.start_time is not None and wait.end_time is not None
        self.assertLess(abs(wait.start_time / 1e9 - requested), 0.01)  # from its requested_at
        self.assertLessEqual(wait.end_time, spans["couchgw.claim"].start_time or 0)
        self.assertEqual(
            dict(call.attributes or {}),
            {
                "couchgw.message": "traced",
                "couchgw.route": "default",
                "couchgw.operation": "ping",
                "couchgw.attempt": 1,
                "couchgw.status": "forwarded",
            },
        )
        self.assertEqual(
            target.calls[0].traceparent, f"00-{CLIENT_TRACE}-{call.context.span_id:016x}-01"
        )

    @inlineCallbacks
    def test_trace_of_its_own(self) -> Any:
        """
        A message without a traceparent gets a trace of its own, kept in its trace field: a
        retry, after the first attempt failed, joins that trace.
        """
        url, target = self.recorder()
        target.failing.add("untraced")
        tracing, exporter = self.traced()
        gateway = self.http_gateway(url, tracing=tracing, retry_backoff=Backoff(0.2, 0.2, 0.2))
        yield self.ready(gateway)
        yield self.db.put({"_id": "untraced", "type": "message", "operation": "ping"})
        yield self.wait_for(lambda: len(target.calls) >= 1, what="the first call")
        target.failing.clear()
        doc = yield self.terminal("untraced")
        self.assertEqual((doc["status"], doc["attempts"]), ("forwarded", 2))
        yield self.wait_for(
            lambda: (
                len([s for s in exporter.get_finished_spans() if s.name == "couchgw.write"]) == 2
            ),
            what="two attempts' spans",
        )
        spans = [
            s
            for s in exporter.get_finished_spans()
            if (s.attributes or {}).get("couchgw.message") == "untraced"
        ]
        self.assertEqual(len(spans), 8)
        roots = [s for s in spans if s.parent is None]
        self.assertEqual([s.name for s in roots], ["couchgw.wait"])
        root = roots[0].context
        flags = f"{root.trace_flags:02x}"
        self.assertEqual(doc["trace"], f"00-{root.trace_id:032x}-{root.span_id:016x}-{flags}")
        self.assertEqual({s.context.trace_id for s in spans}, {root.trace_id})
        self.assertEqual({s.parent.span_id for s in spans if s.parent is not None}, {root.span_id})
        calls = [s for s in spans if s.name == "couchgw.call"]
        self.assertEqual(sorted((s.attributes or {})["couchgw.attempt"] for s in calls), [1, 2])
        for call, seen in zip(
            sorted(calls, key=lambda s: s.start_time or 0), target.calls, strict=True
        ):
            self.assertEqual(
                seen.traceparent, f"00-{root.trace_id:032x}-{call.context.span_id:016x}-{flags}"
            )

    @inlineCallbacks
    def test_soap_request_carries_the_trace(self) -> Any:
        """A SOAP call's HTTP request carries the call span's traceparent to the service."""
        wsdl, log, _ = self.demo()
        tracing, exporter = self.traced()
        gateway = self.gateway(wsdl, tracing=tracing)
        yield self.ready(gateway)
        yield self.db.put(
            {
                "_id": "soap-traced",
                "type": "message",
                "operation": "ping",
                "text": "hello",
                "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
            }
        )
        doc = yield self.terminal("soap-traced")
        self.assertEqual(doc["status"], "forwarded")
        yield self.wait_for(lambda: "couchgw.call" in self.spans_of(exporter, "soap-traced"))
        call = self.spans_of(exporter, "soap-traced")["couchgw.call"]
        expected = f"call ping traceparent=00-{CLIENT_TRACE}-{call.context.span_id:016x}-01"
        yield self.wait_for(lambda: expected in log.read_text(), what="the demo's log line")

    @inlineCallbacks
    def test_trace_passed_on_with_tracing_off(self) -> Any:
        """
        Without an exporter, a message's traceparent and tracestate reach an http target as the
        client wrote them (its trace goes on past couchgw); a message without one sends none.
        """
        url, target = self.recorder()
        gateway = self.http_gateway(url)
        self.assertFalse(gateway.dispatch.tracing.on)
        yield self.ready(gateway)
        parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
        yield self.db.put(
            {
                "_id": "passed",
                "type": "message",
                "operation": "ping",
                "traceparent": parent,
                "tracestate": "vendor=1,other=x",
            }
        )
        yield self.db.put({"_id": "plain", "type": "message", "operation": "ping"})
        for doc_id in ("passed", "plain"):
            doc = yield self.terminal(doc_id)
            self.assertEqual(doc["status"], "forwarded")
            self.assertNotIn("trace", doc)
        calls = {call.id: call for call in target.calls}
        self.assertEqual(
            (calls["passed"].traceparent, calls["passed"].tracestate), (parent, "vendor=1,other=x")
        )
        self.assertEqual((calls["plain"].traceparent, calls["plain"].tracestate), (None, None))

    @inlineCallbacks
    def test_soap_request_carries_the_trace_with_tracing_off(self) -> Any:
        """Without an exporter, a SOAP call's HTTP request carries the message's own context."""
        wsdl, log, _ = self.demo()
        gateway = self.gateway(wsdl)
        yield self.ready(gateway)
        parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
        yield self.db.put(
            {
                "_id": "soap-passed",
                "type": "message",
                "operation": "ping",
                "text": "hello",
                "traceparent": parent,
                "tracestate": "vendor=1",
            }
        )
        doc = yield self.terminal("soap-passed")
        self.assertEqual(doc["status"], "forwarded")
        expected = f"call ping traceparent={parent} tracestate=vendor=1"
        yield self.wait_for(lambda: expected in log.read_text(), what="the demo's log line")


def test_passed_on_as_opentelemetry_writes_it() -> None:
    """What goes on with tracing off: the context as read, a tracestate that is not W3C's dropped."""
    from couchgw.checks import Plan
    from couchgw.tracing import passed_on

    parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    assert passed_on(Plan()) == {}
    assert passed_on(Plan(traceparent=parent)) == {"traceparent": parent}
    assert passed_on(Plan(traceparent=parent, tracestate="a=1,b=2")) == {
        "traceparent": parent,
        "tracestate": "a=1,b=2",
    }
    assert passed_on(Plan(traceparent=parent, tracestate="v\u00e9=1")) == {"traceparent": parent}
    later = f"01-{CLIENT_TRACE}-{CLIENT_SPAN}-01-what-comes-later"  # a later version's, read as 00
    assert passed_on(Plan(traceparent=later)) == {"traceparent": parent}


def test_statuses_agree_with_the_design_documents() -> None:
    """The statuses couchgw writes are the ones its design documents know."""
    from couchgw.couch import design

    listed = set()
    for doc in design.DOCS.values():
        for text in _functions(doc):
            if "var statuses = [" in text:
                start = text.index("var statuses = [") + len("var statuses = ")
                listed.add(frozenset(json.loads(text[start : text.index("]", start) + 1])))
    assert listed == {message.STATUSES}


def _functions(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _functions(item)]
    return []
