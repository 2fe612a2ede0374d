"""Unit tests of pure logic: framing, backoff, times, checkpoint, message transitions."""

from __future__ import annotations

import random
from typing import Any

import pytest

from couchgw import checks, message
from couchgw.couch.framing import HEAD, TAIL, LineFramer, Oversize
from couchgw.gateway.checkpoint import Checkpoint
from couchgw.timing import Backoff, PrioritySlots, iso

# -- framing -----------------------------------------------------------------------------------


def test_framer_many_lines_in_one_chunk() -> None:
    framer = LineFramer()
    assert framer.feed(b'{"a":1}\n{"b":2}\n') == [b'{"a":1}', b'{"b":2}']
    assert framer.pending == 0


def test_framer_line_across_chunks() -> None:
    framer = LineFramer()
    assert framer.feed(b'{"se') == []
    assert framer.feed(b'q":1') == []
    assert framer.pending == 8
    assert framer.feed(b'}\n{"seq"') == [b'{"seq":1}']
    assert framer.feed(b":2}\n") == [b'{"seq":2}']


def test_framer_heartbeats_are_blank_lines() -> None:
    framer = LineFramer()
    assert framer.feed(b"\n\n") == [b"", b""]
    assert framer.feed(b'\n{"x":1}\n\n') == [b"", b'{"x":1}', b""]


def test_framer_any_split_gives_the_same_lines() -> None:
    stream = b"".join(b'{"seq":%d,"id":"doc-%d"}\n' % (i, i) + b"\n" * (i % 3) for i in range(200))
    expected = stream.split(b"\n")[:-1]
    rng = random.Random(7)
    for _ in range(50):
        framer, lines, at = LineFramer(), [], 0
        while at < len(stream):
            size = rng.randint(1, 40)
            lines += framer.feed(stream[at : at + size])
            at += size
        assert lines == expected


def test_framer_cuts_a_long_line_short_in_bounded_memory() -> None:
    """A line over the limit comes out as its head, tail and length; its middle is dropped."""
    line = b'{"id":"big"' + b"x" * 50_000 + b'"seq":7}'
    framer = LineFramer(max_length=20_000)
    out: list[bytes | Oversize] = []
    for at in range(0, len(line), 1000):
        out += framer.feed(line[at : at + 1000])
        assert framer.pending <= 20_000 + 1000
    out += framer.feed(b'\n{"seq":8}\n')
    assert out == [Oversize(line[:HEAD], line[-TAIL:], len(line)), b'{"seq":8}']


def test_framer_long_line_within_one_chunk() -> None:
    framer = LineFramer(max_length=10)
    assert framer.feed(b"12345678901\nok\n") == [
        Oversize(b"12345678901", b"12345678901", 11),
        b"ok",
    ]


# -- timing ------------------------------------------------------------------------------------


def test_iso_is_fixed_width_utc_with_milliseconds() -> None:
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1795845123.4567) == "2026-11-28T05:52:03.456Z"
    assert len({len(iso(t)) for t in (0, 1.5, 1e9, 1795845123.999)}) == 1


def test_backoff_grows_exponentially_to_the_cap() -> None:
    backoff = Backoff(base=1.0, cap=8.0, floor=0.0, uniform=lambda low, high: high)
    assert [backoff.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next() == 1.0


def test_backoff_jitter_stays_within_bounds() -> None:
    backoff = Backoff(base=0.5, cap=30.0, floor=0.05)
    for attempt in range(40):
        delay = backoff.next()
        assert 0.05 <= delay <= min(30.0, 0.5 * 2**attempt)
    assert len({round(backoff.delay(10), 6) for _ in range(20)}) > 1  # jittered


# -- checkpoint --------------------------------------------------------------------------------


def test_checkpoint_advances_only_over_finished_prefix() -> None:
    checkpoint = Checkpoint("start")
    a, b, c = (checkpoint.received(seq) for seq in ("1-x", "2-y", "3-z"))
    checkpoint.done(c)
    assert checkpoint.seq == "start"
    checkpoint.done(a)
    assert checkpoint.seq == "1-x"
    checkpoint.done(b)
    assert checkpoint.seq == "3-z"
    assert len(checkpoint) == 0


def test_checkpoint_keeps_the_last_seq_given() -> None:
    """With seq_interval, most changes carry no seq: the checkpoint never goes back to None."""
    checkpoint = Checkpoint("start")
    a, b, c = (checkpoint.received(seq) for seq in (None, "2-y", None))
    for token in (a, b, c):
        checkpoint.done(token)
    assert checkpoint.seq == "2-y"
    assert len(checkpoint) == 0


def test_checkpoint_random_completion_order() -> None:
    rng = random.Random(3)
    checkpoint = Checkpoint()
    tokens = [checkpoint.received(i) for i in range(500)]
    finished: set[int] = set()
    for index in rng.sample(range(500), 500):
        checkpoint.done(tokens[index])
        finished.add(index)
        prefix = 0
        while prefix in finished:
            prefix += 1
        assert checkpoint.seq == (prefix - 1 if prefix else None)


# -- the message document ------------------------------------------------------------------------

NOW = 1795845123.0


def test_due_states() -> None:
    new = {"_id": "m", "type": "message"}
    assert message.due(new, NOW) == "new"
    assert message.due({**new, "status": None}, NOW) == "new"
    assert message.due({**new, "type": "note"}, NOW) is None
    assert message.due({**new, "_deleted": True}, NOW) is None
    assert message.due({"_id": "_design/x", "type": "message"}, NOW) is None
    for status in sorted(message.TERMINAL):
        assert message.due({**new, "status": status}, NOW) is None
    for status in ["something-a-client-wrote", 7, ["forwarded"]]:
        assert message.due({**new, "status": status}, NOW) == "new"  # to be rejected
    retrying = {**new, "status": "retrying"}
    assert message.due({**retrying, "next_attempt_at": iso(NOW + 5)}, NOW) is None
    assert message.due({**retrying, "next_attempt_at": iso(NOW - 5)}, NOW) == "retry"
    assert message.due({**retrying, "next_attempt_at": iso(NOW + 5), "expires_at": iso(NOW)}, NOW)
    scheduled = {**new, "status": "scheduled", "next_attempt_at": iso(NOW + 5)}
    assert message.due(scheduled, NOW) is None
    assert message.due(scheduled, NOW + 5) == "scheduled"
    assert message.due({**scheduled, "cancel_requested": True}, NOW) == "scheduled"
    assert message.due({**scheduled, "expires_at": iso(NOW - 1)}, NOW) == "scheduled"
    claimed = {**new, "status": "dispatching"}
    assert message.due({**claimed, "claim": {"by": "g", "until": iso(NOW + 5)}}, NOW) is None
    assert message.due({**claimed, "claim": {"by": "g", "until": iso(NOW - 5)}}, NOW) == "takeover"
    assert message.due({**claimed, "claim": "garbage"}, NOW) == "takeover"


def test_new_message_must_not_carry_gateway_fields() -> None:
    checks.check_new({"_id": "m", "type": "message", "operation": "ping"})
    with pytest.raises(checks.Rejected, match="result, attempts"):
        checks.check_new({"_id": "m", "type": "message", "result": 1, "attempts": 3})


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"operation": "ping"}, checks.Call("default", "ping", [])),
        ({"operation": "ping", "text": "hi"}, checks.Call("default", "ping", ["hi"])),
        ({"operation": "a", "args": {"x": 1}, "text": "t"}, checks.Call("default", "a", {"x": 1})),
        ({"target": "r", "args": [1, 2]}, checks.Call("r", None, [1, 2])),
    ],
)
def test_call_of(doc: dict, expected: checks.Call) -> None:
    assert checks.call_of({"_id": "m", "type": "message", **doc}) == expected


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"operation": 5}, "operation must be a non-empty string, not a number"),
        ({"operation": ""}, "operation must be a non-empty string, not an empty string"),
        ({"operation": "a", "args": "x=1"}, "args must be an object .* not a string"),
        ({"operation": "a", "args": None}, "args must be an object .* not null"),
        ({"operation": "a", "target": ["r"]}, "target must be a route name .* not an array"),
    ],
)
def test_call_of_rejects(doc: dict, reason: str) -> None:
    with pytest.raises(checks.Rejected, match=reason):
        checks.call_of({"_id": "m", "type": "message", **doc})


def test_transitions() -> None:
    doc = {"_id": "m", "_rev": "1-a", "type": "message", "operation": "ping", "keep": "me"}
    claimed = message.apply(doc, message.claimed(doc, "gw-1", NOW, 60))
    assert claimed["status"] == "dispatching"
    assert claimed["claim"] == {"by": "gw-1", "until": iso(NOW + 60)}
    assert claimed["attempts"] == 1
    assert claimed["keep"] == "me"
    retry = message.apply(claimed, message.retrying("transient", "refused", NOW, 10))
    assert "claim" not in retry and retry["next_attempt_at"] == iso(NOW + 10)
    assert message.due(retry, NOW + 11) == "retry"
    again = message.apply(retry, message.claimed(retry, "gw-2", NOW + 11, 60))
    assert again["attempts"] == 2 and "next_attempt_at" not in again
    done = message.apply(again, message.forwarded({"answer": 42}, NOW + 12))
    assert done["status"] == "forwarded" and done["result"] == {"answer": 42}
    assert "claim" not in done and "error" not in done
    assert done["completed_at"] == iso(NOW + 12)
    assert message.due(done, NOW + 1000) is None
    failed = message.apply(again, message.failed("fault", "no", NOW))
    assert failed["error"] == {"kind": "fault", "message": "no"}


def test_a_claim_given_back_before_its_call_restores_the_message() -> None:
    new = {"_id": "m", "_rev": "1-a", "type": "message", "operation": "ping"}
    claimed = message.apply(new, message.claimed(new, "gw", NOW, 60))
    undone = message.apply(claimed, message.released(new))
    assert undone == new  # no field only couchgw writes is left on a new message
    assert message.due(undone, NOW + 1) == "new"
    checks.check_new(undone, 1024 * 1024)
    retry = message.apply(claimed, message.retrying("transient", "reset", NOW, 5))
    claimed = message.apply(retry, message.claimed(retry, "gw", NOW + 6, 60))
    undone = message.apply(claimed, message.released(retry))
    assert undone == retry


# -- unreadable changes ------------------------------------------------------------------------


def test_unreadable_change_from_couchdb_and_pouchdb_lines() -> None:
    """The seq, id and revision of a change too large or deep to decode, from either layout."""
    from couchgw.couch.feed import _unreadable

    couch = b'{"seq":"12-g1AAA\\"x","id":"a\\"b","changes":[{"rev":"1-abc"}],"doc":{"x":[[['
    assert _unreadable(couch, b"]]]}}", "too deep") == {
        "seq": '12-g1AAA"x',
        "id": 'a"b',
        "changes": [{"rev": "1-abc"}],
        "unreadable": "too deep",
    }
    pouch_head = b'{"id":"big","changes":[{"rev":"2-def"}],"doc":{"text":"xxxx'
    assert _unreadable(pouch_head, b'xxx","_id":"big","_rev":"2-def"},"seq":41}', "too large") == {
        "seq": 41,
        "id": "big",
        "changes": [{"rev": "2-def"}],
        "unreadable": "too large",
    }
    # most changes of a feed with seq_interval (Apache CouchDB) carry no seq
    sampled = b'{"seq":null,"id":"deep","changes":[{"rev":"1-abc"}],"doc":{"x":[[['
    assert _unreadable(sampled, b"]]]}}", "too deep") == {
        "seq": None,
        "id": "deep",
        "changes": [{"rev": "1-abc"}],
        "unreadable": "too deep",
    }
    assert _unreadable(b'{"doc":{}}', b"}", "too deep") is None


def test_suds_http_status_errors() -> None:
    from couchgw.targets.soap import _http_status

    assert _http_status(Exception((503, "Service Unavailable"))) == (503, "Service Unavailable")
    assert _http_status(Exception("other")) is None
    assert _http_status(ValueError((503, "x"))) is None


def test_a_call_within_its_deadline() -> None:
    from twisted.internet.defer import Deferred, succeed
    from twisted.internet.task import Clock

    from couchgw.targets.interfaces import Transient
    from couchgw.timing import deadline

    clock = Clock()
    call: Deferred[str] = Deferred()
    out = deadline(call, 5, clock, Transient("no answer within 5s"))
    failures: list[Any] = []
    out.addErrback(failures.append)
    clock.advance(5)
    assert failures and failures[0].check(Transient)
    call.errback(RuntimeError("late"))  # consumed: no unhandled error
    assert clock.getDelayedCalls() == []
    answered = deadline(succeed("ok"), 5, clock)
    results: list[Any] = []
    answered.addCallback(results.append)
    assert results == ["ok"] and clock.getDelayedCalls() == []


def test_plan_of_a_message() -> None:
    plan = checks.plan_of(
        {
            "priority": "high",
            "requested_at": "2026-12-02T01:00:00Z",
            "not_before": "2026-12-02T02:00+01:00",
            "expires_at": "2026-12-02T03:00:00.5Z",
        }
    )
    assert plan.priority == 8
    assert plan.requested_at == message.parse_time("2026-12-02T01:00:00Z")
    assert plan.not_before == plan.requested_at  # 02:00 at +01:00
    assert plan.waits(plan.requested_at - 1) and not plan.waits(plan.requested_at)
    assert plan.expires_at is not None and not plan.expired(plan.expires_at - 0.001)
    assert plan.expired(plan.expires_at)
    assert checks.plan_of({}).priority == checks.DEFAULT_PRIORITY == 5
    assert checks.plan_of({"priority": 0}).priority == 0
    assert checks.plan_of({"priority": None}).priority == 5


@pytest.mark.parametrize(
    "traceparent",
    [
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future",  # a later version
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",  # not sampled
    ],
)
def test_traceparent_accepted(traceparent: str) -> None:
    assert checks.plan_of({"traceparent": traceparent}).traceparent == traceparent


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",  # version 00 ends there
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # the invalid version
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
    ],
)
def test_traceparent_refused(traceparent: str) -> None:
    with pytest.raises(checks.Rejected, match="traceparent must be a W3C trace context"):
        checks.plan_of({"traceparent": traceparent})


def test_expired_instead_of_called() -> None:
    doc = {"_id": "m", "type": "message", "expires_at": "2026-12-02T03:00:00Z"}
    fields = message.expired(doc, NOW, "its next attempt would come later: HTTP 500")
    assert fields["status"] == "expired" and message.is_terminal(fields)
    assert fields["error"] == {
        "kind": "expired",
        "message": "not called by its expires_at, 2026-12-02T03:00:00Z; its next attempt would "
        "come later: HTTP 500",
    }
    assert checks.has_expired(doc, message.parse_time(doc["expires_at"]) or 0)
    assert not checks.has_expired({**doc, "expires_at": "soon"}, NOW)


def test_priority_slots_go_highest_first_then_in_order() -> None:
    slots = PrioritySlots(1)
    order: list[str] = []
    first = slots.acquire(0)
    assert first.called  # a free token at once
    for name, priority in [("low-1", 2), ("high", 8), ("low-2", 2), ("gone", 9), ("mid", 5)]:
        slots.acquire(priority).addCallback(lambda _, name=name: order.append(name))
    gone = slots._waiting[9][""][0]
    gone.cancel()  # a waiter that stopped waiting gets no token
    gone.addErrback(lambda _: None)
    for _ in range(4):
        slots.release()
    assert order == ["high", "mid", "low-1", "low-2"]
    slots.release()
    assert slots.tokens == 1


def test_priority_slots_take_the_databases_in_turn_within_a_priority() -> None:
    slots = PrioritySlots(1)
    slots.acquire(5, "a")
    order: list[str] = []
    for name, key in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("c1", "c")]:
        slots.acquire(5, key).addCallback(lambda _, name=name: order.append(name))
    slots.acquire(8, "a").addCallback(lambda _: order.append("a-high"))
    for _ in range(6):
        slots.release()
    assert order == ["a-high", "a1", "b1", "c1", "a2", "a3"]
    assert slots.waiting() == 0


class _Home:
    def __init__(self, name: str) -> None:
        self.name = name


def test_the_waiting_room_keeps_each_route_its_share_in_order() -> None:
    from couchgw.gateway.waiting import WaitingRoom

    room = WaitingRoom(share=3)
    low, high = checks.Plan(priority=2), checks.Plan(priority=8)
    db = _Home("db")
    assert room.add(db, "erp", {"_id": "a"}, low, 1.0, None)  # type: ignore[arg-type]
    assert room.add(db, "erp", {"_id": "b"}, high, 2.0, None)  # type: ignore[arg-type]
    assert room.add(db, "erp", {"_id": "c"}, low, 0.5, None)  # type: ignore[arg-type]
    assert not room.add(db, "erp", {"_id": "d"}, high, 3.0, None)  # type: ignore[arg-type]
    assert room.add(db, "crm", {"_id": "e"}, low, 1.0, None)  # type: ignore[arg-type]
    assert (len(room), room.by_route(), room.of("db")) == (4, {"crm": 1, "erp": 3}, 4)
    taken = room.take("erp", 2)
    assert [w.id for w in taken] == ["b", "c"]  # higher first, then older
    room.put_back("erp", taken[1])
    assert [w.id for w in room.take("erp")] == ["c", "a"]
    assert room.take("erp") == [] and len(room) == 1
    expiring = checks.Plan(expires_at=10.0)
    room.add(db, "erp", {"_id": "x"}, expiring, 0.0, None)  # type: ignore[arg-type]
    assert room.next_expiry() == 10.0
    assert [w.id for w in room.expired(9.0)] == []
    assert [w.id for w in room.expired(10.0)] == ["x"] and room.next_expiry() is None


def test_the_waiting_room_takes_the_databases_in_turn() -> None:
    """A database with a backlog holds back no other: each priority takes them in turn."""
    from couchgw.gateway.waiting import WaitingRoom

    room = WaitingRoom()
    busy, quiet, other = _Home("busy"), _Home("quiet"), _Home("other")
    plan = checks.Plan()
    for i in range(50):
        room.add(busy, "r", {"_id": f"busy-{i}"}, plan, float(i), None)  # type: ignore[arg-type]
    room.add(quiet, "r", {"_id": "quiet-0"}, plan, 100.0, None)  # type: ignore[arg-type]
    room.add(other, "r", {"_id": "other-0"}, checks.Plan(priority=2), 0.0, None)  # type: ignore[arg-type]
    first = [w.id for w in room.take("r", 3)]
    assert first == ["busy-0", "quiet-0", "busy-1"]  # written last, but next in turn
    assert [w.id for w in room.take("r")][-1] == "other-0"  # lower priority: last
    assert room.drop(busy) == [] and len(room) == 0


def test_a_checkpoint_that_holds_no_sequence_is_not_believed() -> None:
    from couchgw.gateway.checkpoint import believable

    assert believable("12-g1AAAAB") and believable(42) and believable(0)
    for forged in ("", "x" * 100_000, -1, True, None, {"seq": 1}, [1], 1.5):
        assert not believable(forged), forged


def test_no_credentials_in_an_error_line() -> None:
    from couchgw.errors import describe_error

    text = describe_error(
        ValueError("cannot reach http://gw:s3cret@couch:5984/db and https://a@b/")
    )
    assert "s3cret" not in text and "gw:" not in text and "a@" not in text
    assert "http://couch:5984/db" in text and "https://b/" in text
    assert describe_error(ConnectionRefusedError(111, "Connection refused")) == (
        "[Errno 111] Connection refused"
    )


def test_a_pattern_built_to_backtrack_matches_in_linear_time() -> None:
    from couchgw.targets.xsd import compiled, matches

    assert matches(r"[A-Z]{2}\d{4}", "AB1234") and not matches(r"[A-Z]{2}\d{4}", "AB12345")
    # catastrophic for a backtracking engine; RE2 answers at once
    assert not matches(r"(a+)+b", "a" * 100_000 + "c")
    assert compiled(r"a{2000}") is None  # beyond RE2: left to the service
    assert matches(r"a{2000}", "anything")
