"""SOAP targets: suds against the real demo service over a socket, with a synchronous runner."""

from __future__ import annotations

import socket
import threading
import urllib.request
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from suds import WebFault
from suds.cache import NoCache
from suds.client import Client
from suds.sudsobject import Factory
from twisted.internet.defer import Deferred, maybeDeferred
from zope.interface import implementer
from zope.interface.verify import verifyObject

from couchgw.checks import Rejected
from couchgw.targets.interfaces import Fault, IRunner, ITarget, Unreachable
from couchgw.targets.soap import SoapTarget, clone
from couchgw.targets.wsdl import to_json
from tests.servers import demo_wsdl, free_port


@implementer(IRunner)
class SyncRunner:
    """Runs the 'blocking' call at once, in the calling thread."""

    size = 1
    busy = 0

    def run(self, f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return maybeDeferred(f, *args, **kwargs)


def result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred did not fire"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


@pytest.fixture(scope="module")
def target() -> SoapTarget:
    target = SoapTarget("default", demo_wsdl(), SyncRunner(), timeout=10)
    result(target.load())
    return target


def test_to_json_converts_suds_objects_and_values() -> None:
    inner = Factory.object("Inner", {"when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)})
    outer = Factory.object(
        "Outer",
        {
            "price": Decimal("12.30"),
            "day": date(2026, 1, 2),
            "items": [inner, "x"],
            "raw": b"\x00\x01",
        },
    )
    assert to_json(outer) == {
        "price": "12.30",
        "day": "2026-01-02",
        "items": [{"when": "2026-01-02T03:04:05+00:00"}, "x"],
        "raw": "AAE=",
    }
    assert to_json(float("nan")) == "nan"
    assert to_json((1, True, None)) == [1, True, None]


def test_clone_shares_the_wsdl_not_the_options() -> None:
    """suds' Client.clone() recurses without end on Python 3.11; couchgw's clone does not."""
    fresh = Client(demo_wsdl(), cache=NoCache())
    copied = clone(fresh, timeout=3)
    assert copied.wsdl is fresh.wsdl
    assert copied.options.timeout == 3
    assert fresh.options.timeout != 3
    assert copied.options.transport is not fresh.options.transport
    assert copied.service.ping("through the clone") == "through the clone"


def test_calls_reuse_one_kept_alive_connection() -> None:
    """A client's calls go over one connection; one the server closed is opened again."""
    client = clone(Client(demo_wsdl(), cache=NoCache()), timeout=5)
    transport = client.options.transport
    assert client.service.ping("one") == "one"
    (connection,) = transport._connections.values()
    sock = connection.sock
    assert client.service.ping("two") == "two"
    assert connection.sock is sock  # the same socket: no new connection
    sock.shutdown(socket.SHUT_RDWR)  # as a server closing an idle connection leaves it
    assert client.service.ping("three") == "three"
    with pytest.raises(WebFault):  # faults still come through as suds raises them
        client.service.refuse("no")


def test_each_thread_calls_through_its_own_client(target: SoapTarget) -> None:
    clients: list[Any] = []

    def grab() -> None:
        clients.append(target._thread_client())
        clients.append(target._thread_client())

    threads = [threading.Thread(target=grab) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(clients) == 6
    assert len({id(c) for c in clients}) == 3  # one per thread, kept for that thread


def test_target_interface(target: SoapTarget) -> None:
    assert verifyObject(ITarget, target)
    assert target.state == "ready"
    described = target.describe()
    assert described["operations"]["activate"] == [
        {"name": "network", "type": "string", "required": True, "many": False},
        {"name": "count", "type": "integer", "required": True, "many": False},
    ]


def test_call_forwards_and_converts_the_answer(target: SoapTarget) -> None:
    answer = result(target.call(target.prepare("activate", {"network": "n", "count": 2}), "m1"))
    assert answer["network"] == "n"
    assert answer["activated"] == 2
    assert answer["devices"] == ["n-0", "n-1"]  # an array type: a JSON list
    assert datetime.fromisoformat(answer["finished_at"]).tzinfo is not None
    assert result(target.call(target.prepare("ping", ["hello"]), "m2")) == "hello"


def test_fault_is_final(target: SoapTarget) -> None:
    with pytest.raises(Fault, match="ActivationRefused: not today"):
        result(target.call(target.prepare("refuse", {"reason": "not today"}), "m"))


def test_unreachable_service_is_not_ready(tmp_path: Path) -> None:
    """A WSDL whose service address has no server behind it: the route does not get ready."""
    wsdl = urllib.request.urlopen(demo_wsdl()).read().decode()
    live = wsdl.split('location="', 1)[1].split('"', 1)[0]
    dead_wsdl = tmp_path / "dead.wsdl"
    dead_wsdl.write_text(wsdl.replace(live, f"http://127.0.0.1:{free_port()}/"))
    dead = SoapTarget("dead", dead_wsdl.as_uri(), SyncRunner(), timeout=5)
    with pytest.raises(Unreachable, match="does not accept connections"):
        result(dead.load())
    assert dead.state == "unavailable"


def test_target_gone_after_loading_is_unreachable() -> None:
    """Connection refused on a call: L{Unreachable} (the route is down, not just this call)."""

    class Gone(SoapTarget):
        def _options(self) -> dict[str, Any]:
            return {**super()._options(), "location": f"http://127.0.0.1:{free_port()}/"}

    gone = Gone("gone", demo_wsdl(), SyncRunner(), timeout=5)
    result(gone.load())
    with pytest.raises(Unreachable, match="refused"):
        result(gone.call(gone.prepare("ping", []), "m"))


def test_missing_wsdl_leaves_target_unavailable() -> None:
    missing = SoapTarget("gone", f"http://127.0.0.1:{free_port()}/?wsdl", SyncRunner(), timeout=5)
    with pytest.raises(Exception, match="refused"):
        result(missing.load())
    assert missing.state == "unavailable"
    assert "cannot load the WSDL" in (missing.error or "")


@pytest.mark.parametrize(
    ("operation", "args", "reason"),
    [
        (
            "nosuch",
            {},
            "route 'default' has no operation 'nosuch' \\(it has: activate, configure, ping, refuse\\)",
        ),
        (None, {}, "operation is missing, and route 'default' names no default"),
        (
            "activate",
            {"network": "n", "cont": 2},
            "takes no argument 'cont' \\(it takes: network, count\\)",
        ),
        ("activate", {"network": "n"}, "needs argument\\(s\\) 'count'"),
        ("activate", ["n", 1, 2], "takes at most 2 argument\\(s\\) \\(network, count\\), got 3"),
        ("activate", {"network": "n", "count": "many"}, "^count must be an integer, not a string$"),
        ("activate", {"network": "n", "count": "3"}, "^count must be an integer, not a string$"),
        ("activate", {"network": "n", "count": 1.5}, "^count must be an integer, not 1.5$"),
        ("activate", {"network": "n", "count": True}, "^count must be an integer, not a boolean$"),
        (
            "activate",
            {"network": {"a": 1}, "count": 1},
            "^network must be a string, not an object$",
        ),
        ("ping", [["x"]], "^text must be a string, not an array$"),
        (
            "configure",
            {"device": "d", "tags": "x"},
            "^tags must be a list of string, not a string$",
        ),
    ],
)
def test_prepare_rejects(target: SoapTarget, operation: str | None, args: Any, reason: str) -> None:
    with pytest.raises(Rejected, match=reason):
        target.prepare(operation, args)


def test_prepare_gives_suds_the_values_as_text(target: SoapTarget) -> None:
    """What suds sends: each value's XML Schema text (a float that is whole is an integer)."""
    assert target.prepare("activate", ["n", 3.0])[1] == {"network": "n", "count": "3"}
    assert target.prepare("configure", {"device": "d", "enabled": False, "weight": 0.5})[1] == {
        "device": "d",
        "enabled": "false",
        "weight": "0.5",
    }
    assert target.prepare("ping", [])[1] == {}
