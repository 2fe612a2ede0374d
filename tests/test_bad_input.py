"""
Bad input of every kind, against a real PouchDB Server (or $COUCHGW_TEST_COUCH) and the demo:
each malformed message ends C{rejected} with a precise reason and is never sent; other documents
are left alone; a good message written after them all is forwarded as usual.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.defer import inlineCallbacks

from couchgw import checks
from couchgw.couch.client import doc_path
from tests.test_gateway import GatewayTestCase

LIMIT = 64 * 1024  # --max-message-bytes for these tests
OPS = "activate, configure, ping, refuse"


def msg(**fields: Any) -> dict[str, Any]:
    return {"type": "message", **fields}


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


#: Messages that Apache CouchDB itself refuses to store (its JSON parser takes a lone surrogate
#: escape for invalid UTF-8): written one by one, and rejected by couchgw where they are stored.
SERVER_MAY_REFUSE = {"lone-surrogate"}

#: id -> (document, the exact reason it is rejected)
CORPUS: dict[str, tuple[dict[str, Any], str]] = {
    "no-operation": (msg(text="x"), "operation is missing, and route 'default' names no default"),
    "operation-number": (msg(operation=42), "operation must be a non-empty string, not a number"),
    "operation-empty": (
        msg(operation=""),
        "operation must be a non-empty string, not an empty string",
    ),
    "operation-array": (
        msg(operation=["ping"]),
        "operation must be a non-empty string, not an array",
    ),
    "operation-unknown": (
        msg(operation="explode"),
        f"route 'default' has no operation 'explode' (it has: {OPS})",
    ),
    "operation-dunder": (
        msg(operation="__class__"),
        f"route 'default' has no operation '__class__' (it has: {OPS})",
    ),
    "operation-huge": (
        msg(operation="x" * 20_000),
        f"route 'default' has no operation '{'x' * 76}... (it has: {OPS})",
    ),
    "route-unknown": (
        msg(operation="ping", target="elsewhere"),
        "there is no route 'elsewhere' (routes: default)",
    ),
    "route-number": (
        msg(operation="ping", target=7),
        "target must be a route name (a non-empty string), not a number",
    ),
    "route-empty": (
        msg(operation="ping", target=""),
        "target must be a route name (a non-empty string), not an empty string",
    ),
    "args-string": (
        msg(operation="ping", args="hello"),
        "args must be an object (keyword arguments) or an array (positional arguments), "
        "not a string",
    ),
    "args-number": (
        msg(operation="ping", args=3),
        "args must be an object (keyword arguments) or an array (positional arguments), "
        "not a number",
    ),
    "args-null": (
        msg(operation="ping", args=None),
        "args must be an object (keyword arguments) or an array (positional arguments), not null",
    ),
    "args-too-many": (
        msg(operation="ping", args=["a", "b"]),
        "operation 'ping' takes at most 1 argument(s) (text), got 2",
    ),
    "args-unknown-name": (
        msg(operation="activate", args={"network": "n", "cont": 1}),
        "operation 'activate' takes no argument 'cont' (it takes: network, count)",
    ),
    "args-many-unknown": (
        msg(operation="ping", args={f"k{i}": i for i in range(5000)}),
        "operation 'ping' takes no argument 'k0', 'k1', 'k2', 'k3', 'k4' and 4995 more "
        "(it takes: text)",
    ),
    "args-missing": (
        msg(operation="activate", args={"network": "n"}),
        "operation 'activate' needs argument(s) 'count'",
    ),
    "integer-text": (
        msg(operation="activate", args={"network": "n", "count": "three"}),
        "count must be an integer, not a string",
    ),
    "integer-fraction": (
        msg(operation="activate", args={"network": "n", "count": 1.5}),
        "count must be an integer, not 1.5",
    ),
    "integer-boolean": (
        msg(operation="activate", args={"network": "n", "count": True}),
        "count must be an integer, not a boolean",
    ),
    "integer-object": (
        msg(operation="activate", args={"network": "n", "count": {"n": 1}}),
        "count must be an integer, not an object",
    ),
    "int-out-of-range": (
        msg(operation="configure", args={"device": "d", "port": 2**40}),
        "port must be an integer from -2147483648 to 2147483647 (int), not 1099511627776",
    ),
    "boolean-word": (
        msg(operation="configure", args={"device": "d", "enabled": "yes"}),
        "enabled must be true or false, not a string",
    ),
    "double-text": (
        msg(operation="configure", args={"device": "d", "weight": "heavy"}),
        "weight must be a number (double), not a string",
    ),
    "datetime-text": (
        msg(operation="configure", args={"device": "d", "at": "next tuesday"}),
        "at must be an ISO 8601 date and time (YYYY-MM-DDThh:mm:ss), not 'next tuesday'",
    ),
    "datetime-number": (
        msg(operation="configure", args={"device": "d", "at": 1795845123}),
        "at must be an ISO 8601 date and time (YYYY-MM-DDThh:mm:ss), not a number",
    ),
    "string-object": (
        msg(operation="configure", args={"device": {"name": "d"}}),
        "device must be a string, not an object",
    ),
    "list-bad-item": (
        msg(operation="configure", args={"device": "d", "tags": ["a", {"b": 1}]}),
        "tags[1] must be a string, not an object",
    ),
    "text-object": (
        msg(operation="ping", text={"a": 1}),
        "text must be a string, not an object",
    ),
    "forged-result": (
        msg(operation="ping", result="fake"),
        "fields written only by couchgw were set by the client: result",
    ),
    "forged-fields": (
        msg(operation="ping", attempts=0, claim={"by": "me"}, error=None),
        "fields written only by couchgw were set by the client: error, attempts, claim",
    ),
    "forged-status": (
        msg(operation="ping", status="done"),
        "status 'done' is not one couchgw writes (cancelled, dispatching, expired, failed, "
        "forwarded, rejected, retrying, scheduled); a new message has no status",
    ),
    "status-object": (
        msg(operation="ping", status={"s": 1}),
        'status {"s": 1} is not one couchgw writes (cancelled, dispatching, expired, failed, '
        "forwarded, rejected, retrying, scheduled); a new message has no status",
    ),
    "forged-trace": (
        msg(operation="ping", trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        "fields written only by couchgw were set by the client: trace",
    ),
    "priority-word": (
        msg(operation="ping", priority="urgent"),
        'priority must be "high", "medium", "low" or a whole number from 0 to 9 (higher first), '
        "not 'urgent'",
    ),
    "priority-range": (
        msg(operation="ping", priority=10),
        'priority must be "high", "medium", "low" or a whole number from 0 to 9 (higher first), '
        "not 10",
    ),
    "priority-fraction": (
        msg(operation="ping", priority=2.5),
        'priority must be "high", "medium", "low" or a whole number from 0 to 9 (higher first), '
        "not 2.5",
    ),
    "not-before-date": (
        msg(operation="ping", not_before="2026-12-02"),
        "not_before must be an ISO 8601 time with its zone, e.g. 2026-12-02T02:00:00Z, not "
        "'2026-12-02'",
    ),
    "not-before-no-zone": (
        msg(operation="ping", not_before="2026-12-02T02:00:00"),
        "not_before must be an ISO 8601 time with its zone, e.g. 2026-12-02T02:00:00Z, not "
        "'2026-12-02T02:00:00'",
    ),
    "expires-number": (
        msg(operation="ping", expires_at=1796176800),
        "expires_at must be an ISO 8601 time with its zone, e.g. 2026-12-02T02:00:00Z, not "
        "1796176800",
    ),
    "expires-before-not-before": (
        msg(operation="ping", not_before="2030-01-02T00:00:00Z", expires_at="2030-01-01T00:00:00Z"),
        "expires_at 2030-01-01T00:00:00Z is not after not_before 2030-01-02T00:00:00Z: the "
        "message could never be called",
    ),
    "requested-at-word": (
        msg(operation="ping", requested_at="now"),
        "requested_at must be an ISO 8601 time with its zone, e.g. 2026-12-02T02:00:00Z, not 'now'",
    ),
    "traceparent-zeros": (
        msg(operation="ping", traceparent="00-" + "0" * 32 + "-b7ad6b7169203331-01"),
        "traceparent must be a W3C trace context (00-<32 hex digits>-<16 hex digits>-<2 hex "
        "digits>, not all zeros), not '00-" + "0" * 32 + "-b7ad6b7169203331-01'",
    ),
    "tracestate-object": (
        msg(operation="ping", tracestate={"a": 1}),
        "tracestate must be a string of at most 512 characters, not an object",
    ),
    "cancel-word": (
        msg(operation="ping", cancel_requested="yes"),
        "cancel_requested must be true or false, not a string",
    ),
    "callback-not-url": (
        msg(operation="ping", callback_url="ftp://example.com/x"),
        "callback_url must be an http:// or https:// URL, not 'ftp://example.com/x'",
    ),
    "callback-number": (
        msg(operation="ping", callback_url=5),
        "callback_url must be an http:// or https:// URL, not a number",
    ),
    "lone-surrogate": (
        msg(operation="ping", args={"text": "a\ud800b"}),
        "args.text contains U+D800, a lone surrogate, not Unicode",
    ),
    "nul-character": (
        msg(operation="ping", text="a\x00b"),
        "text contains U+0000, a character XML (and so SOAP) cannot carry",
    ),
    "noncharacter": (
        msg(operation="activate", args={"network": "n\uffff", "count": 1}),
        "args.network contains U+FFFF, a character XML (and so SOAP) cannot carry",
    ),
    "control-in-key": (
        msg(operation="ping", args={"te\x1bxt": "x"}),
        "args.te\\x1bxt contains U+001B, a character XML (and so SOAP) cannot carry",
    ),
    "nested-deep": (
        msg(operation="ping", args=[nested(40)]),
        "args nests objects or arrays more than 32 levels deep (at args[0][0][0][0][0]...)",
    ),
    "large": (msg(operation="ping", text="x" * (LIMIT + 100)), checks.too_large(LIMIT)),
    "enormous": (msg(operation="ping", text="x" * (4 * LIMIT)), checks.too_large(LIMIT)),
}

#: Documents that are not messages, or not new: left as they are.
IGNORED: dict[str, dict[str, Any]] = {
    "note": {"type": "note", "operation": "ping"},
    "no-type": {"operation": "ping"},
    "type-case": {"type": "Message", "operation": "ping"},
    "type-number": {"type": 1, "operation": "ping"},
    "done-by-client": msg(operation="ping", status="forwarded"),
    "_design/client": msg(operation="ping", views={}),
}


def deep_json(doc_id: str, depth: int) -> bytes:
    """A message nested deeper than Python's json module can read or write."""
    args = "[" * depth + '"bottom"' + "]" * depth
    return f'{{"_id": "{doc_id}", "type": "message", "operation": "ping", "args": {args}}}'.encode()


class BadInput(GatewayTestCase):
    timeout = 120

    def setUp(self) -> None:
        super().setUp()
        self.wsdl, self.demo_log, _ = self.demo()

    @inlineCallbacks
    def put_raw(self, doc_id: str, body: bytes) -> Any:
        """PUT bytes as they are (the server decides what it keeps); answers the status."""
        response = yield HTTPClient(self.db._agent).put(
            f"{self.db.url}/{doc_path(doc_id)}",
            data=body,
            headers={"Content-Type": "application/json"},
            auth=self.db._auth,
        )
        yield response.content()
        return response.code

    @inlineCallbacks
    def raw(self, doc_id: str) -> Any:
        """A document's JSON text, for one too deep to decode."""
        response = yield self.db.request("GET", doc_path(doc_id))
        body = yield treq.content(response)
        return body

    @inlineCallbacks
    def rejected_in_place(self, doc_id: str, reason: str) -> Any:
        """Wait until the text of an undecodable document says it was rejected for C{reason}."""
        expected = json.dumps({"kind": "invalid", "message": reason}, separators=(",", ":"))

        @inlineCallbacks
        def check() -> Any:
            body = yield self.raw(doc_id)
            return b'"status":"rejected"' in body and expected.encode() in body

        yield self.wait_for(check, what=f"{doc_id} to be rejected")

    def calls(self) -> list[str]:
        return [
            line.split("call ", 1)[1]
            for line in self.demo_log.read_text().splitlines()
            if "] call " in line
        ]

    @inlineCallbacks
    def test_corpus(self) -> Any:
        """Every kind of bad message is rejected with its reason and never sent."""
        self.assertGreaterEqual(len(CORPUS) + 1, 30)  # and the one too deep to decode
        gateway = self.gateway(self.wsdl, max_bytes=LIMIT)
        yield self.ready(gateway)
        docs = [
            {"_id": doc_id, **doc}
            for doc_id, (doc, _) in CORPUS.items()
            if doc_id not in SERVER_MAY_REFUSE
        ]
        docs += [{"_id": doc_id, **doc} for doc_id, doc in IGNORED.items()]
        yield self.db.put({"_id": "deleted", **msg(operation="ping", status="forwarded")})
        deleted = yield self.db.get("deleted")
        docs.append({**deleted, "_deleted": True})
        result = yield self.db.bulk_docs(docs)
        self.assertEqual([r for r in result if not r.get("ok")], [])
        refused = set()
        for doc_id in SERVER_MAY_REFUSE:  # Apache CouchDB refuses these itself (400)
            status = yield self.put_raw(doc_id, json.dumps(CORPUS[doc_id][0]).encode())
            self.assertIn(status, (201, 400), doc_id)
            if status == 400:
                refused.add(doc_id)
        undecodable_utf8 = yield self.put_raw(
            "bad-utf8", b'{"type": "message", "operation": "pin\xff\xfeg"}'
        )
        status = yield self.put_raw("nested-undecodable", deep_json("nested-undecodable", 2500))
        self.assertEqual(status, 201)
        yield self.db.put(
            {"_id": "good", **msg(operation="ping", text="zażółć 🚀 \u200d\u05d0 end")}
        )

        good = yield self.terminal("good")
        self.assertEqual(good["status"], "forwarded")
        self.assertEqual(good["result"], "zażółć 🚀 \u200d\u05d0 end")
        for doc_id, (written, reason) in CORPUS.items():
            if doc_id in refused:
                continue
            raw = yield self.terminal(doc_id)
            doc = {k: raw[k] for k in ("status", "error") if k in raw}
            self.assertEqual(
                doc, {"status": "rejected", "error": {"kind": "invalid", "message": reason}}, doc_id
            )
            self.assertEqual(raw.get("attempts"), written.get("attempts"), doc_id)  # no call
        yield self.rejected_in_place("nested-undecodable", checks.undecodable())
        if undecodable_utf8 in (200, 201):  # PouchDB keeps U+FFFD in place of the bad bytes
            doc = yield self.terminal("bad-utf8")
            self.assertEqual(doc["status"], "rejected")
            self.assertIn("has no operation 'pin\ufffd\ufffdg'", doc["error"]["message"])
        else:  # Apache CouchDB refuses the write itself
            self.assertEqual(undecodable_utf8, 400)
        for doc_id in IGNORED:
            doc = yield self.db.get(doc_id)
            self.assertTrue(doc["_rev"].startswith("1-"), doc_id)
        self.assertEqual(self.calls(), ["ping"])
        # none of it broke the gateway (a beat of 1 s may lapse a moment on a loaded server)
        yield self.wait_for(lambda: gateway.problems() == [], 30, "the gateway without problems")
        counted = gateway.handling.counts.get("rejected", 0)
        self.assertEqual(
            counted,
            len(CORPUS) - len(refused) + 1 + (1 if undecodable_utf8 in (200, 201) else 0),
        )

    @inlineCallbacks
    def test_unreadable_messages_found_by_the_sweep(self) -> Any:
        """Too large or too deep to read, written while the feed was not followed: the sweep
        rejects them in place, and they keep what the client wrote."""
        gateway = self.gateway(self.wsdl, max_bytes=LIMIT, sweep_interval=3600)
        yield self.ready(gateway)
        assert gateway.intake.feed is not None
        gateway.intake.feed.stop()
        big = msg(operation="ping", text="y" * (2 * LIMIT))
        yield self.db.put({"_id": "big", **big})
        yield self.put_raw("deep", deep_json("deep", 1200))  # PouchDB indexes up to ~2000
        yield gateway.intake.sweep()
        yield self.rejected_in_place("deep", checks.undecodable())
        doc = yield self.terminal("big")
        self.assertEqual(doc["status"], "rejected")
        self.assertEqual(doc["error"]["message"], checks.too_large(LIMIT))
        self.assertEqual(doc["text"], big["text"])
        self.assertEqual(self.calls(), [])
