"""
The WSDL corpus: natural JSON checked whole, sent in the WSDL's shape and answered back, and the
JSON Schema of each operation agreeing with the gateway's check, against real services over
sockets (spyne's document/literal, hand-written document/literal with imported types,
rpc/literal, rpc/encoded, SOAP 1.2 alone, headers, WS-Security, basic auth, mutual TLS).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from couchgw.checks import Rejected
from couchgw.gateway import Gateway
from couchgw.targets.described import arguments_tree
from couchgw.targets.interfaces import Fault
from couchgw.targets.soap import SoapTarget
from couchgw.targets.soapoptions import SoapOptions, Wsse
from tests.soapservices import (
    WSSE_PASSWORD,
    HandWritten,
    basic_auth,
    orders_app,
    serve,
)
from tests.test_gateway import GatewayTestCase
from tests.test_soap import SyncRunner, result
from tests.tls import certificate


@pytest.fixture(scope="module")
def orders_url() -> Iterator[str]:
    with serve(orders_app()) as base:
        yield f"{base}?wsdl"


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    with serve(HandWritten()) as base:
        yield base


def loaded(url: str, **options: Any) -> SoapTarget:
    target = SoapTarget("corpus", url, SyncRunner(), timeout=10, **options)
    result(target.load())
    return target


@pytest.fixture(scope="module")
def orders(orders_url: str) -> SoapTarget:
    return loaded(orders_url)


@pytest.fixture(scope="module")
def shop(files: str) -> SoapTarget:
    return loaded(f"{files}shop.wsdl")


def order(items: Any, **changes: Any) -> dict[str, Any]:
    placed = {
        "id": "o-1",
        "customer": {
            "name": "Ann",
            "vip": True,
            "address": {"street": "Storgata 1", "city": "Oslo", "zip": "0150"},
        },
        "items": items,
        "deliver_on": "2026-12-24",
        "shipping": "express",
    }
    return {"order": {**placed, **changes}}


ITEMS = [{"sku": "a", "qty": 2, "price": 1.25}, {"sku": "b", "qty": 1, "price": "0.10"}]
RECEIPT = {
    "id": "o-1",
    "total": 2.6,
    "lines": 2,
    "items": [{"sku": "a", "qty": 2, "price": 1.25}, {"sku": "b", "qty": 1, "price": 0.1}],
    "deliver_on": "2026-12-24",
    "vip": True,
    "shipping": "express",
}


@pytest.mark.parametrize(
    "items", [{"Item": ITEMS}, ITEMS], ids=["suds' wrapper form", "a JSON list"]
)
def test_nested_order_is_forwarded(orders: SoapTarget, items: Any) -> None:
    answer = result(orders.call(orders.prepare("PlaceOrder", order(items)), "m"))
    assert answer == RECEIPT


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (
            order([{"sku": "a", "qty": "many", "price": 1}]),
            "order.items[0].qty must be an integer, not a string",
        ),
        (
            {"order": {"id": "o-1", "custmer": {"name": "Ann"}}},
            "order has no field 'custmer' (it has: id, customer, items, deliver_on, shipping)",
        ),
        (
            order([], customer={"name": "Ann", "address": {"street": "Storgata 1"}}),
            "order.customer.address.city is required (a string)",
        ),
        (
            order([], customer="just a string"),
            "order.customer must be an object (Customer), not a string",
        ),
        (
            order([], shipping="overnight"),
            "order.shipping must be one of 'standard', 'express' (Shipping), not 'overnight'",
        ),
        (order([], deliver_on="2026-02-30"), "order.deliver_on must be an ISO 8601 date"),
        (order({"Items": []}), "order.items must be a list of Item, not an object"),
        (order([None]), None),  # an array's items are nillable: sent as nil
    ],
)
def test_invalid_orders_are_rejected_before_sending(
    orders: SoapTarget, args: dict[str, Any], reason: str | None
) -> None:
    if reason is None:
        orders.prepare("PlaceOrder", args)
        return
    with pytest.raises(Rejected) as caught:
        orders.prepare("PlaceOrder", args)
    assert str(caught.value).startswith(reason)


def test_a_fault_stays_a_fault(orders: SoapTarget) -> None:
    with pytest.raises(Fault, match="no such customer"):
        result(orders.call(orders.prepare("PlaceOrder", order([], id="refused")), "m"))


# -- the shop: another style of schema, its types imported from another file -------------------


def line(**changes: Any) -> dict[str, Any]:
    return {
        "sku": "ABC-1234",
        "quantity": 2,
        "price": {"value": "9.50", "currency": "EUR"},
        **changes,
    }


def basket(**changes: Any) -> dict[str, Any]:
    return {"basket": {"channel": "web", "line": [line()], "email": "ann@example.com", **changes}}


#: Messages for the shop, and whether each fits its schema.
SHOP_CORPUS: list[tuple[str, Any, bool]] = [
    ("minimal", basket(), True),
    (
        "everything",
        basket(
            line=[line(gift=True, sizes=[38, 40]), line(sku="XYZ-0001", quantity=99)],
            colour="green",
            note="leave at the door",
            at="2026-12-24T18:00:00+01:00",
            reference="REF-0001",
        ),
        True,
    ),
    ("phone instead of email", basket(email=None, phone="+47 22 00 00 00"), True),
    ("positional", [basket()["basket"]], True),
    ("price as a number", basket(line=[line(price={"value": 9.5, "currency": "NOK"})]), True),
    ("unknown field", basket(colour="red", size="XL"), False),
    ("no lines", basket(line=[]), False),
    ("line not a list", basket(line=line()), False),
    ("missing channel attribute", {"basket": {"line": [line()], "email": "a@b.c"}}, False),
    ("channel out of its enumeration", basket(channel="phone"), False),
    ("sku against its pattern", basket(line=[line(sku="abc-1234")]), False),
    ("quantity above its range", basket(line=[line(quantity=100)]), False),
    ("quantity below its range", basket(line=[line(quantity=0)]), False),
    (
        "currency out of the imported enumeration",
        basket(line=[line(price={"value": 1, "currency": "GBP"})]),
        False,
    ),
    ("price without its value", basket(line=[line(price={"currency": "EUR"})]), False),
    ("price without its currency", basket(line=[line(price={"value": 1})]), False),
    ("email against its pattern", basket(email="nobody"), False),
    ("email and phone both", basket(phone="+47 22 00 00 00"), False),
    ("neither email nor phone", basket(email=None), False),
    ("note too long", basket(note="x" * 21), False),
    ("reference of the wrong length", basket(reference="REF"), False),
    ("sizes not integers", basket(line=[line(sizes=["M"])]), False),
    ("gift not a boolean", basket(line=[line(gift="yes")]), False),
    ("time not ISO 8601", basket(at="tomorrow"), False),
    ("basket missing", {}, False),
    ("basket null", {"basket": None}, False),
    ("too many positional", [basket()["basket"], 1], False),
]


@pytest.mark.parametrize(
    ("args", "fits"), [(a, f) for _, a, f in SHOP_CORPUS], ids=[n for n, _, _ in SHOP_CORPUS]
)
def test_the_gateway_and_the_json_schema_agree(shop: SoapTarget, args: Any, fits: bool) -> None:
    """
    Each message of the corpus is accepted by the gateway exactly when the operation's JSON
    Schema (from /routes) accepts it, and what is accepted passes the service's own XML Schema
    validation (it answers a Fault otherwise).
    """
    schema = shop.describe()["schemas"]["Submit"]
    jsonschema.Draft202012Validator.check_schema(schema)
    assert jsonschema.Draft202012Validator(schema).is_valid(args) is fits
    if not fits:
        with pytest.raises(Rejected):
            shop.prepare("Submit", args)
        return
    answer = result(shop.call(shop.prepare("Submit", args), "m"))
    assert answer["lines"] == len(
        args["basket"]["line"] if isinstance(args, dict) else args[0]["line"]
    )


def test_the_shop_answers_in_natural_json(shop: SoapTarget) -> None:
    """Lists for repeated elements, numbers and booleans where the schema says so, attributes."""
    sent = SHOP_CORPUS[1][1]
    answer = result(shop.call(shop.prepare("Submit", sent), "m"))
    assert answer == {
        "basket": {
            "channel": "web",
            "line": [
                {
                    "gift": True,
                    "sku": "ABC-1234",
                    "quantity": 2,
                    "price": {"value": 9.5, "currency": "EUR"},
                    "sizes": [38, 40],
                },
                {
                    "sku": "XYZ-0001",
                    "quantity": 99,
                    "price": {"value": 9.5, "currency": "EUR"},
                },
            ],
            "email": "ann@example.com",
            "colour": "green",
            "note": "leave at the door",
            "at": "2026-12-24T18:00:00+01:00",
            "reference": "REF-0001",
        },
        "lines": 2,
    }


def test_shop_rejections_name_the_path(shop: SoapTarget) -> None:
    for args, reason in [
        (
            basket(line=[line(), line(quantity=100)]),
            "basket.line[1].quantity must be an integer from 1 to 99 (Quantity), not 100",
        ),
        (
            basket(line=[line(price={"value": 1, "currency": "GBP"})]),
            "basket.line[0].price.currency must be one of 'EUR', 'USD', 'NOK' (Currency), not 'GBP'",
        ),
        (basket(phone="1"), "basket takes only one of email, phone (given: email, phone)"),
        (basket(email=None), "basket needs one of email, phone"),
        (basket(line=[]), "basket.line must hold at least 1 item(s), not 0"),
        (
            basket(line=[line(sku="abc")]),
            "basket.line[0].sku must be a string matching [A-Z]{3}-[0-9]{4} (Sku), not 'abc'",
        ),
        (
            {"basket": {"line": [line()], "email": "a@b.c"}},
            "basket.channel is required (one of 'web', 'store')",
        ),
    ]:
        with pytest.raises(Rejected) as caught:
            shop.prepare("Submit", args)
        assert str(caught.value) == reason


def test_couchgw_routes_shows_the_fields(shop: SoapTarget) -> None:
    """C{couchgw routes} shows each field of a complex argument, from the JSON Schema."""
    tree = arguments_tree(shop.describe()["schemas"]["Submit"])
    assert tree[:5] == [
        "basket: Basket",
        "  line: object[]",
        "    sku: a string matching [A-Z]{3}-[0-9]{4} (Sku)",
        "    quantity: an integer from 1 to 99 (Quantity)",
        "    price: Money",
    ]
    assert "  email?: a string of at most 40 characters matching [^@ ]+@[^@ ]+ (Email)" in tree
    assert tree[-1] == "  channel: one of 'web', 'store'"


# -- rpc/literal, rpc/encoded, SOAP 1.2 ---------------------------------------------------------


def test_rpc_literal(files: str) -> None:
    calc = loaded(f"{files}rpc-literal.wsdl")
    answer = result(
        calc.call(
            calc.prepare("Add", {"a": 2, "b": 40, "term": {"label": "x", "weight": 0.5}}), "m"
        )
    )
    assert answer == {"sum": 42, "label": "x*0.5"}  # two parts answered: an object of both
    with pytest.raises(Rejected, match=r"^term must be an object \(Term\), not a number$"):
        calc.prepare("Add", [1, 2, 3])
    with pytest.raises(Rejected, match=r"^term.label is required \(a string\)$"):
        calc.prepare("Add", [1, 2, {"weight": 1}])


def test_rpc_encoded(files: str) -> None:
    words = loaded(f"{files}rpc-encoded.wsdl")
    args = {"words": ["soap", "in", "json"], "style": {"separator": "-", "upper": True}}
    assert result(words.call(words.prepare("Join", args), "m")) == "SOAP-IN-JSON"
    with pytest.raises(Rejected, match=r"^words\[1\] must be a string, not a number$"):
        words.prepare("Join", {"words": ["a", 2]})
    schema = words.describe()["schemas"]["Join"]
    assert jsonschema.Draft202012Validator(schema).is_valid(args)
    assert not jsonschema.Draft202012Validator(schema).is_valid({"words": ["a", 2]})


def test_soap12_only_fails_the_route_in_one_line(files: str) -> None:
    modern = SoapTarget("modern", f"{files}soap12.wsdl", SyncRunner(), timeout=10)
    with pytest.raises(ValueError):
        result(modern.load())
    assert modern.state == "unavailable"
    assert modern.error == (
        "cannot load the WSDL: the WSDL offers only SOAP 1.2 bindings (port ModernPort); "
        "couchgw calls services over SOAP 1.1"
    )


# -- what real services ask of a client --------------------------------------------------------


def whoami(target: SoapTarget) -> str:
    return str(result(target.call(target.prepare("Whoami", {}), "m")))


def test_headers_and_ws_security(orders_url: str) -> None:
    """A header the WSDL declares, one it does not, and a UsernameToken, on every call."""
    headers = {"Auth": {"api_key": "k1", "tenant": "north"}, "{urn:test:trace}Origin": "couchgw"}
    for digest, kind in ((False, "PasswordText"), (True, "PasswordDigest")):
        target = loaded(
            orders_url,
            options=SoapOptions(headers=headers, wsse=Wsse("gateway", WSSE_PASSWORD, digest)),
        )
        assert whoami(target) == f"key=k1|tenant=north|wsse=gateway:{kind}|origin=couchgw"
        assert whoami(target) == f"key=k1|tenant=north|wsse=gateway:{kind}|origin=couchgw"
    wrong = loaded(orders_url, options=SoapOptions(wsse=Wsse("gateway", "guess", True)))
    assert whoami(wrong) == "key=None|tenant=None|wsse=gateway:wrong password|origin=None"
    assert "guess" not in repr(wrong._settings)


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        (
            {"Authx": {"api_key": "k"}},
            "headers: the WSDL declares no header 'Authx' (it declares: Auth); "
            "name others as {namespace}name",
        ),
        ({"Auth": {"tenant": "north"}}, "headers.Auth.api_key is required (a string)"),
        ({"Auth": {"api_key": 5}}, "headers.Auth.api_key must be a string"),
    ],
)
def test_bad_headers_fail_the_route(orders_url: str, headers: Any, error: str) -> None:
    target = SoapTarget("h", orders_url, SyncRunner(), timeout=10, options=SoapOptions(headers))
    with pytest.raises(ValueError):
        result(target.load())
    assert target.error == f"cannot load the WSDL: {error}"


def test_basic_auth_from_the_url(orders_url: str) -> None:
    with serve(basic_auth(orders_app(), "gw", "pa:ss")) as base:
        guarded = loaded(base.replace("://", "://gw:pa%3Ass@") + "?wsdl")
        assert guarded.url == f"{base}?wsdl"  # shown without the credentials
        assert whoami(guarded).startswith("key=None")
        refused = SoapTarget(
            "r", base.replace("://", "://gw:wrong@") + "?wsdl", SyncRunner(), timeout=10
        )
        with pytest.raises(Exception, match="Unauthorized"):
            result(refused.load())


def test_client_certificate(tmp_path: Path) -> None:
    """Mutual TLS: the service takes calls only from the client certificate it knows."""
    (tmp_path / "server").mkdir()
    (tmp_path / "client").mkdir()
    server_cert, server_key = certificate(tmp_path / "server")
    client_cert, client_key = certificate(tmp_path / "client")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_cert, server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(client_cert)
    with serve(orders_app(), context) as base:
        url = f"{base}?wsdl"
        options = SoapOptions(client_cert=str(client_cert), client_key=str(client_key))
        target = loaded(url, ca=str(server_cert), options=options)
        assert whoami(target).startswith("key=None")
        stranger = SoapTarget("s", url, SyncRunner(), timeout=10, ca=str(server_cert))
        with pytest.raises(Exception):  # noqa: B017 (the TLS error varies by OpenSSL version)
            result(stranger.load())
        assert stranger.state == "unavailable"


# -- the table, through a gateway on CouchDB ----------------------------------------------------


class OrdersThroughTheGateway(GatewayTestCase):
    @inlineCallbacks
    def test_each_order_ends_as_a_user_expects(self) -> Any:
        """
        Nested objects and either form of a list are forwarded with the right total; a value of
        the wrong kind, a misspelt field, a missing required field anywhere in the tree is
        rejected with its path, never sent; a Fault is failed.  The route's JSON Schema (as
        /routes gives it) accepts exactly the messages the gateway forwards.
        """
        stack = ExitStack()
        self.addCleanup(stack.close)
        base = stack.enter_context(serve(orders_app()))
        gateway = self.gateway(f"{base}?wsdl")
        yield self.ready(gateway)
        rows = {
            "wrapper": (order({"Item": ITEMS}), "forwarded", None),
            "list": (order(ITEMS), "forwarded", None),
            "qty": (
                order([{"sku": "a", "qty": "many", "price": 1}]),
                "rejected",
                "order.items[0].qty must be an integer, not a string",
            ),
            "misspelt": (
                {"order": {"id": "o-1", "custmer": {"name": "Ann"}}},
                "rejected",
                "order has no field 'custmer' (it has: id, customer, items, deliver_on, shipping)",
            ),
            "city": (
                order(ITEMS, customer={"name": "Ann", "address": {"street": "Storgata 1"}}),
                "rejected",
                "order.customer.address.city is required (a string)",
            ),
            "customer": (
                order(ITEMS, customer="just a string"),
                "rejected",
                "order.customer must be an object (Customer), not a string",
            ),
            "fault": (order(ITEMS, id="refused"), "failed", "no such customer"),
        }
        docs = [
            {"_id": name, "type": "message", "operation": "PlaceOrder", "args": args}
            for name, (args, _, _) in rows.items()
        ]
        yield self.db.bulk_docs(docs)
        schema = gateway.route("default", True)["schemas"]["PlaceOrder"]
        validator = jsonschema.Draft202012Validator(schema)
        for name, (args, status, reason) in rows.items():
            done = yield self.terminal(name)
            self.assertEqual(done["status"], status, done)
            if status == "forwarded":
                self.assertEqual(done["result"], RECEIPT)
            else:
                self.assertIn(reason, done["error"]["message"])
            self.assertEqual(validator.is_valid(args), status != "rejected", name)
            self.assertEqual(done.get("attempts"), None if status == "rejected" else 1)

    @inlineCallbacks
    def test_a_soap12_route_is_one_line_in_ready_and_status(self) -> Any:
        stack = ExitStack()
        self.addCleanup(stack.close)
        base = stack.enter_context(serve(HandWritten()))
        modern = SoapTarget("modern", f"{base}soap12.wsdl", self.threads, timeout=10)
        gateway = Gateway(self.db, {"modern": modern}, reactor, heartbeat=1.0, announce=1.0)
        gateway.startService()
        self.addCleanup(gateway.stopService)
        line = (
            "route modern unavailable: cannot load the WSDL: the WSDL offers only SOAP 1.2 "
            "bindings (port ModernPort); couchgw calls services over SOAP 1.1"
        )
        yield self.wait_for(lambda: line in gateway.problems(), what="the route's problem")
        status = yield gateway.status()
        self.assertIn(line, status["problems"])
        self.assertFalse(status["ready"])
