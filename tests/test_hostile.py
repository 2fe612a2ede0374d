"""
Hostile writers: a member of the database (a client, not an admin) forges everything it can
write and floods it (announcements under both ids, claims of a gateway that does not exist,
outcomes, the checkpoint, design documents), while `twistd couchgw` serves the database with
the guard.  Every real message is still forwarded, called once; the gateway stays ready, also
after a restart over the forged checkpoint; C{/status} names what it ignored.
"""

from __future__ import annotations

import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

from tests.servers import http, is_pouchdb, start_demo, stop, wait_until
from tests.test_e2e import Twistd, wait_terminal
from tests.test_security import _as, secured  # noqa: F401 (a fixture)

NOW = "2026-12-03T08:00:00Z"
GHOST = "ghost:1:deadbeef"
FLOOD = 100


def _forged_announcement(gateway: str) -> dict[str, Any]:
    return {
        "type": "gateway",
        "gateway": gateway,
        "routes": ["default"],
        "beat": 5,
        "ttl": 1_000_000_000,
        "at": NOW,
    }


def _messages(prefix: str, count: int) -> list[dict[str, Any]]:
    return [
        {
            "_id": f"{prefix}{i:03d}",
            "type": "message",
            "operation": "activate",
            "args": [f"{prefix}{i:03d}", 0],
        }
        for i in range(count)
    ]


def _forge(alice: str) -> Counter[str]:
    """Everything a member may try; answers the statuses CouchDB gave, by what was tried."""
    answers: Counter[str] = Counter()

    def tried(what: str, method: str, path: str, body: Any = None) -> int:
        status = http(method, f"{alice}/{path}", body)[0]
        answers[f"{what} {status}"] += 1
        return status

    # announcements, where members may write (both ids), and where they may not
    tried(
        "local announcement", "PUT", f"_local/couchgw-gateway:{GHOST}", _forged_announcement(GHOST)
    )
    tried("plain announcement", "PUT", f"couchgw-gateway:{GHOST}", _forged_announcement(GHOST))
    tried(
        "design announcement",
        "PUT",
        f"_design/couchgw-gateway:{GHOST}",
        {**_forged_announcement(GHOST), "_id": f"_design/couchgw-gateway:{GHOST}"},
    )
    # a message claimed by a gateway that does not exist, and one already "forwarded"
    tried(
        "claim",
        "PUT",
        "forged-claim",
        {
            "type": "message",
            "operation": "ping",
            "status": "dispatching",
            "claim": {"by": GHOST, "until": "2099-01-01T00:00:00.000Z"},
            "dispatched_at": NOW,
            "attempts": 1,
        },
    )
    tried(
        "outcome",
        "PUT",
        "forged-outcome",
        {"type": "message", "operation": "ping", "status": "forwarded", "result": "fake"},
    )
    # the checkpoint: a sequence of nothing
    tried("checkpoint", "PUT", "_local/couchgw-checkpoint", {"seq": "garbage-that-is-no-sequence"})
    # couchgw's design documents, and one of its own
    for ddoc in ("_design/couchgw", "_design/couchgw-routes"):
        current = http("GET", f"{alice}/{ddoc}")[1]
        tried("design document", "PUT", ddoc, {**current, "validate_doc_update": None})
    tried("design document", "PUT", "_design/vandal", {"views": {}})
    # and floods of the ones that got in
    for i in range(FLOOD):
        tried(
            "local announcement",
            "PUT",
            f"_local/couchgw-gateway:ghost-{i}",
            _forged_announcement(f"ghost-{i}"),
        )
        tried(
            "plain announcement",
            "PUT",
            f"couchgw-gateway:ghost-{i}",
            _forged_announcement(f"ghost-{i}"),
        )
        tried("checkpoint", "PUT", "_local/couchgw-checkpoint", {"seq": f"flood-{i}"})
    return answers


def _called(log: Path, prefix: str) -> Counter[str]:
    return Counter(
        i for i in re.findall(r"activated network=(\S+)\n", log.read_text()) if i.startswith(prefix)
    )


def test_no_member_can_stop_the_gateway(tmp_path: Path, secured: tuple[str, str]) -> None:  # noqa: F811
    base, db = secured
    demo_log = tmp_path / "demo.log"
    wsdl, demo = start_demo(demo_log, delay=0.0)
    args = ("--couch", f"{_as(base, 'gw', db)}/{db}", "--target", wsdl, "--announce", "1")
    gateway = Twistd(tmp_path, *args)
    second: Twistd | None = None
    try:
        gateway.wait_ready()
        alice = f"{_as(base, 'alice', db)}/{db}"
        wait_until(
            lambda: http("GET", f"{alice}/_design/couchgw-routes")[0] == 200, 60, "the guard"
        )
        answers = _forge(alice)
        # CouchDB itself refuses the design documents, the claim and the outcome
        for refused in ("design announcement", "claim", "outcome", "design document"):
            assert all(
                key.endswith(" 403") or key.endswith(" 401")
                for key in answers
                if key.startswith(refused)
            ), answers
        if not is_pouchdb():  # Apache CouchDB lets members write _local/ documents
            assert answers["local announcement 201"] == FLOOD + 1, answers
        assert answers["plain announcement 201"] == FLOOD + 1, answers

        docs = _messages("real-", 40)
        assert http("POST", f"{alice}/_bulk_docs", {"docs": docs})[0] == 201
        done = wait_terminal(alice, [d["_id"] for d in docs], 120)
        assert Counter(d["status"] for d in done.values()) == {"forwarded": 40}
        calls = _called(demo_log, "real-")
        assert sorted(calls) == [d["_id"] for d in docs] and set(calls.values()) == {1}
        assert http("GET", f"{gateway.api}/ready")[0] == 200
        state = wait_until(
            lambda: (
                (found := http("GET", f"{gateway.api}/status")[1])["members"]["ignored"] and found
            ),
            60,
            "the forgeries named (a look every 12 beats)",
        )
        assert state["members"]["gateways"] == [state["gateway"]]  # no ghost counted
        ignored = state["members"]["ignored"]
        assert f"couchgw-gateway:{GHOST}" in ignored or len(ignored) == 20, ignored
        assert all("where database members may write" in why for why in ignored.values())

        # a gateway that starts over the forged checkpoint still forwards everything
        assert gateway.terminate() == -signal.SIGTERM  # (twistd ends so on SIGTERM)
        second = Twistd(tmp_path, *args)
        second.wait_ready()
        more = _messages("after-", 10)
        assert http("POST", f"{alice}/_bulk_docs", {"docs": more})[0] == 201
        done = wait_terminal(alice, [d["_id"] for d in more], 120)
        assert Counter(d["status"] for d in done.values()) == {"forwarded": 10}
        assert set(_called(demo_log, "after-").values()) == {1}
        assert http("GET", f"{second.api}/ready")[0] == 200
    finally:
        for running in (gateway, second):
            if running is not None and running.process.poll() is None:
                running.terminate()
        stop(demo)
