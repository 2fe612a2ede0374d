"""The changes-feed consumer, driven by a fake database and a fake clock."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH

from couchgw.couch.feed import ChangesFeed
from couchgw.timing import Backoff


class Transport:
    def __init__(self) -> None:
        self.paused = False
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


class Response:
    def __init__(self, code: int = 200, body: bytes = b"") -> None:
        self.code = code
        self.body = body
        self.protocol: Any = None
        self.transport = Transport()
        self.headers = None
        self.length = UNKNOWN_LENGTH

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        if self.code != 200:
            protocol.dataReceived(self.body)
            protocol.connectionLost(Failure(ResponseDone()))

    def send(self, *lines: Any) -> None:
        for line in lines:
            raw = line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n"
            self.protocol.dataReceived(raw)

    def end(self) -> None:
        self.protocol.connectionLost(Failure(ResponseDone()))


class FakeDatabase:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], Any, Deferred[Any]]] = []

    def changes(self, params: dict[str, Any], body: Any = None, path: str = "") -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.requests.append((params, body, d))
        return d


def make_feed(**kw: Any) -> tuple[ChangesFeed, FakeDatabase, Clock, list[dict[str, Any]]]:
    db, clock, seen = FakeDatabase(), Clock(), []
    backoff = Backoff(base=1.0, cap=8.0, floor=0.0, uniform=lambda low, high: high)
    feed = ChangesFeed(
        db,  # type: ignore[arg-type]
        seen.append,
        clock,
        kw.pop("params", {"filter": "couchgw/new"}),
        kw.pop("body", None),
        heartbeat=10.0,
        backoff=backoff,
        **kw,
    )
    return feed, db, clock, seen


def connect(db: FakeDatabase) -> Response:
    response = Response()
    db.requests[-1][2].callback(response)
    return response


def assert_reconnects(db: FakeDatabase, clock: Clock, requests: int = 2) -> None:
    """The next request goes out after the first backoff delay (1 s), not before."""
    clock.advance(0.99)
    assert len(db.requests) == requests - 1
    clock.advance(0.02)
    assert len(db.requests) == requests


def test_requests_a_continuous_filtered_feed_from_the_checkpoint() -> None:
    feed, db, _clock, _ = make_feed(since="12-opaque")
    feed.start()
    params, body, _ = db.requests[0]
    assert params == {
        "feed": "continuous",
        "heartbeat": 10000,
        "include_docs": "true",
        "filter": "couchgw/new",
        "since": "12-opaque",
    }
    assert body is None


def test_selector_filter_goes_in_the_body() -> None:
    selector = {"selector": {"type": "message"}}
    feed, db, _clock, _ = make_feed(params={"filter": "_selector"}, body=selector)
    feed.start()
    assert db.requests[0][0]["filter"] == "_selector"
    assert db.requests[0][1] == selector


def test_changes_split_across_chunks_and_heartbeats() -> None:
    feed, db, _clock, seen = make_feed()
    feed.start()
    response = connect(db)
    assert feed.state == "connected"
    line = json.dumps({"seq": "1-g1AAAA", "id": "a", "doc": {"_id": "a"}}).encode()
    response.send(b"\n", line[:10])
    assert seen == []
    response.send(line[10:] + b"\n\n" + json.dumps({"seq": 2, "id": "b"}).encode() + b"\n")
    assert [c["id"] for c in seen] == ["a", "b"]
    assert feed.since == 2  # sequences are kept as they came, never parsed


def test_reconnects_from_last_seq_with_backoff_after_the_end() -> None:
    feed, db, clock, _ = make_feed(since=None)
    feed.start()
    response = connect(db)
    response.send({"seq": "7-x", "id": "a"})
    response.end()
    assert feed.state == "waiting"
    assert_reconnects(db, clock)
    assert db.requests[1][0]["since"] == "7-x"


def test_backoff_grows_on_repeated_errors_and_resets_after_data() -> None:
    feed, db, clock, _ = make_feed()
    feed.start()
    delays = []
    for _ in range(5):
        db.requests[-1][2].errback(ConnectionRefusedError("refused"))
        assert feed.state == "waiting" and "refused" in (feed.last_error or "")
        before = clock.seconds()
        while len(db.requests) == len(delays) + 1:
            clock.advance(0.25)
        delays.append(clock.seconds() - before)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    response = connect(db)
    response.send({"seq": 1, "id": "a"})
    response.end()
    before = clock.seconds()
    while len(db.requests) == 6:
        clock.advance(0.25)
    assert clock.seconds() - before == 1.0


def test_error_status_reconnects() -> None:
    feed, db, clock, _ = make_feed()
    feed.start()
    db.requests[0][2].callback(Response(401, b'{"error":"unauthorized","reason":"nope"}'))
    assert feed.state == "waiting"
    assert "401" in (feed.last_error or "")
    assert_reconnects(db, clock)


def test_silence_drops_the_connection() -> None:
    feed, db, clock, _ = make_feed()
    feed.start()
    response = connect(db)
    for _ in range(5):
        clock.advance(9)
        response.send(b"\n")  # heartbeats keep it alive
    assert not response.transport.stopped
    clock.advance(19)
    assert not response.transport.stopped
    clock.advance(11)  # over 20s (twice the heartbeat) of silence, seen at the next check
    assert response.transport.stopped
    response.end()
    assert "no data" in (feed.last_error or "")
    assert_reconnects(db, clock)


def test_no_answer_to_the_request_is_retried() -> None:
    feed, db, clock, _ = make_feed()
    feed.start()
    clock.advance(21)
    assert feed.state == "waiting"
    assert "no answer" in (feed.last_error or "")
    assert_reconnects(db, clock)


def test_pause_stops_reading_and_holds_parsed_lines() -> None:
    feed, db, clock, seen = make_feed()
    feed.start()
    response = connect(db)
    response.send({"seq": 1, "id": "a"})
    feed.pause()
    assert response.transport.paused
    response.send({"seq": 2, "id": "b"}, {"seq": 3, "id": "c"})
    assert [c["id"] for c in seen] == ["a"]
    clock.advance(100)  # a paused feed is not dropped for silence
    assert not response.transport.stopped
    feed.resume()
    assert [c["id"] for c in seen] == ["a", "b", "c"]
    assert not response.transport.paused


def test_pause_from_the_callback_stops_delivery_mid_chunk() -> None:
    feed, db, _clock, seen = make_feed()
    feed._on_change = lambda change: (seen.append(change), feed.pause())
    feed.start()
    response = connect(db)
    response.send(b"".join(json.dumps({"seq": i, "id": str(i)}).encode() + b"\n" for i in range(3)))
    assert [c["id"] for c in seen] == ["0"]
    feed.resume()
    assert [c["id"] for c in seen] == ["0", "1"]


def test_stop_aborts_and_does_not_reconnect() -> None:
    feed, db, clock, _ = make_feed()
    feed.start()
    response = connect(db)
    feed.stop()
    assert response.transport.stopped
    response.end()
    clock.advance(100)
    assert len(db.requests) == 1
    assert feed.state == "stopped"
    assert clock.getDelayedCalls() == []


def test_a_sequence_couchdb_refuses_is_dropped_and_the_feed_starts_over() -> None:
    """A checkpoint a member forged (or of another database): the feed follows from the start."""
    feed, db, clock, _ = make_feed(since="garbage")
    feed.start()
    refusal = {
        "error": "bad_request",
        "reason": "Malformed sequence supplied in 'since' parameter.",
    }
    db.requests[-1][2].callback(Response(400, json.dumps(refusal).encode()))
    assert feed.state == "waiting" and feed.since is None
    assert_reconnects(db, clock)
    assert "since" not in db.requests[1][0]
    connect(db).send({"seq": "1-a", "id": "a"})
    assert feed.since == "1-a"


def test_another_bad_request_keeps_the_sequence() -> None:
    feed, db, _clock, _ = make_feed(since="5-x")
    feed.start()
    refusal = {"error": "bad_request", "reason": "invalid selector"}
    db.requests[-1][2].callback(Response(400, json.dumps(refusal).encode()))
    assert feed.state == "waiting" and feed.since == "5-x"


def test_a_feed_read_once_ends_when_its_changes_are_passed_on() -> None:
    ended: list[bool] = []
    feed, db, clock, seen = make_feed(since="3-x", once=0.2, on_end=lambda: ended.append(True))
    feed.start()
    params = db.requests[0][0]
    assert params["timeout"] == 200 and "heartbeat" not in params
    response = connect(db)
    feed.pause()
    response.send({"seq": "4-a", "id": "a"}, {"seq": "5-b", "id": "b"}, {"last_seq": "5-b"})
    response.end()  # the server ended it: no change for 0.2 s
    assert ended == [] and seen == []  # two changes still wait to be passed on
    feed.resume()
    assert [c["id"] for c in seen] == ["a", "b"] and ended == [True]
    assert feed.state == "stopped" and feed.since == "5-b"
    clock.advance(60)
    assert len(db.requests) == 1  # not read again


def test_a_feed_read_once_that_fails_is_read_again() -> None:
    feed, db, clock, _ = make_feed(since="3-x", once=0.2, on_end=lambda: None)
    feed.start()
    db.requests[-1][2].errback(ConnectionRefusedError("refused"))
    assert_reconnects(db, clock)


def test_a_database_read_in_turns_is_followed_all_along() -> None:
    """
    Between reads in turns, while a read makes its first connection, and while the feed
    followed for ever again makes its first: C{read in turns} (no problem); a feed that failed
    says so, and a new feed of a database connecting for the first time is C{connecting}.
    """
    from types import SimpleNamespace

    from couchgw.gateway.one import OneDatabase

    def state(feed: ChangesFeed | None, in_turns: bool, resumed: ChangesFeed | None = None) -> str:
        one = SimpleNamespace(
            tenant=SimpleNamespace(intake=SimpleNamespace(feed=feed)),
            in_turns=in_turns,
            _resumed=resumed,
        )
        return str(OneDatabase._feed(one)["state"])  # type: ignore[arg-type]

    read, db, clock, _ = make_feed(once=1.0)
    assert state(None, in_turns=True) == "read in turns"
    read.start()
    assert state(read, in_turns=True) == "read in turns"
    db.requests[-1][2].errback(Failure(ConnectionRefusedError("refused")))
    assert state(read, in_turns=True) == "waiting"
    clock.advance(1.01)
    assert read.state == "connecting" and state(read, in_turns=True) == "connecting"

    again, db, clock, _ = make_feed()
    again.start()
    assert state(again, in_turns=False, resumed=again) == "read in turns"
    assert state(again, in_turns=False) == "connecting"
    connect(db)
    assert state(again, in_turns=False, resumed=again) == "connected"
