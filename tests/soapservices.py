"""
Real SOAP services for the WSDL corpus, each served over a socket from a thread of this process:

- C{orders_app}: spyne's document/literal wrapped service of nested types (an order with a
  customer, an address, a list of items, decimals and a date), and an operation that reads the
  SOAP headers a route adds (a declared one, an undeclared one, a WS-Security UsernameToken).
- C{HandWritten}: the WSDLs in C{tests/wsdl/} (another style of document/literal with types
  imported from a second file, rpc/literal, rpc/encoded, SOAP 1.2 alone), answered by small
  handlers that read the request's XML; the shop's requests are validated against its XML
  Schema with lxml first, so whatever reaches it invalid answers a Fault.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from lxml import etree
from spyne import (
    Application,
    Array,
    Boolean,
    ComplexModel,
    Date,
    Enum,
    Fault,
    Integer,
    Unicode,
    rpc,
)
from spyne import Decimal as SpyneDecimal
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication
from spyne.service import Service

WSDL_FOLDER = Path(__file__).resolve().parent / "wsdl"
ORDERS = "urn:test:orders"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
TRACE = "urn:test:trace"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve(app: Any, context: ssl.SSLContext | None = None) -> Iterator[str]:
    """Serve a WSGI application on 127.0.0.1 (over TLS with a context); yield its base URL."""
    scheme = "http" if context is None else "https"

    def app_over(environ: dict[str, Any], start: Any) -> Any:
        return app({**environ, "wsgi.url_scheme": scheme}, start)

    server = make_server("127.0.0.1", 0, app_over, server_class=_Server, handler_class=_Quiet)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def basic_auth(app: Any, user: str, password: str) -> Any:
    """The application, behind HTTP basic auth."""
    wanted = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def guarded(environ: dict[str, Any], start: Any) -> Any:
        if environ.get("HTTP_AUTHORIZATION") != wanted:
            start("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="orders"')])
            return [b"who are you?"]
        return app(environ, start)

    return guarded


# -- spyne: nested types, and the headers a route adds ------------------------------------------


class Address(ComplexModel):
    __namespace__ = ORDERS
    street = Unicode
    city = Unicode(min_occurs=1, nillable=False)
    zip = Unicode(max_len=10)


class Customer(ComplexModel):
    __namespace__ = ORDERS
    name = Unicode
    vip = Boolean
    address = Address


class Item(ComplexModel):
    __namespace__ = ORDERS
    sku = Unicode
    qty = Integer
    price = SpyneDecimal


Shipping = Enum("standard", "express", type_name="Shipping")


class Order(ComplexModel):
    __namespace__ = ORDERS
    id = Unicode
    customer = Customer
    items = Array(Item)
    deliver_on = Date
    shipping = Shipping


class Receipt(ComplexModel):
    __namespace__ = ORDERS
    id = Unicode
    total = SpyneDecimal
    lines = Integer
    items = Array(Item)
    deliver_on = Date
    vip = Boolean
    shipping = Shipping


class Auth(ComplexModel):
    __namespace__ = ORDERS
    api_key = Unicode(min_occurs=1, nillable=False)
    tenant = Unicode


class Orders(Service):
    @rpc(Order, _returns=Receipt)
    def PlaceOrder(ctx: Any, order: Order) -> Receipt:
        """Total the order's items and answer them back."""
        if order.id == "refused":
            raise Fault("Client.Refused", "no such customer")
        items = order.items or []
        customer = order.customer or Customer()
        return Receipt(
            id=order.id,
            total=sum(((i.qty or 0) * (i.price or 0) for i in items), Decimal(0)),
            lines=len(items),
            items=items,
            deliver_on=order.deliver_on,
            vip=customer.vip,
            shipping=order.shipping,
        )


class Secured(Service):
    __in_header__ = Auth

    @rpc(_returns=Unicode)
    def Whoami(ctx: Any) -> str:
        """Who called: the Auth header's fields, the WS-Security user, the trace header."""
        auth = ctx.in_header
        raw = ctx.in_header_doc or []
        return "|".join(
            [
                f"key={auth.api_key if auth else None}",
                f"tenant={auth.tenant if auth else None}",
                f"wsse={_username_token(raw)}",
                f"origin={_first_text(raw, f'{{{TRACE}}}Origin')}",
            ]
        )


def _first_text(elements: list[Any], tag: str) -> str | None:
    for element in elements:
        if element.tag == tag:
            return str(element.text)
    return None


#: The password the WS-Security checks expect.
WSSE_PASSWORD = "s3cret!"


def _username_token(elements: list[Any]) -> str | None:
    """The user of a valid UsernameToken (PasswordText or PasswordDigest), else why not."""
    for element in elements:
        if element.tag != f"{{{WSSE}}}Security":
            continue
        token = element.find(f"{{{WSSE}}}UsernameToken")
        if token is None:
            return "no token"
        user = token.findtext(f"{{{WSSE}}}Username")
        password = token.find(f"{{{WSSE}}}Password")
        kind = (password.get("Type") or "").rsplit("#", 1)[-1]
        if kind == "PasswordDigest":
            nonce = base64.b64decode(token.findtext(f"{{{WSSE}}}Nonce") or "")
            created = (token.findtext(f"{{{WSU}}}Created") or "").encode()
            digest = hashlib.sha1(nonce + created + WSSE_PASSWORD.encode()).digest()
            ok = base64.b64encode(digest).decode() == password.text
        else:
            ok = password.text == WSSE_PASSWORD
        return f"{user}:{kind}" if ok else f"{user}:wrong password"
    return None


def orders_app() -> WsgiApplication:
    app = Application(
        [Orders, Secured],
        tns=ORDERS,
        name="Orders",
        in_protocol=Soap11(validator="lxml"),
        out_protocol=Soap11(),
    )
    return WsgiApplication(app)


# -- hand-written WSDLs -----------------------------------------------------------------------

Handler = Callable[[Any], str]


class HandWritten:
    """
    A WSGI application serving C{tests/wsdl/}: C{GET /NAME} answers the file (its
    C{{base}} replaced by this server's URL), C{POST /SERVICE} the handler of the operation
    the body names.
    """

    def __init__(self) -> None:
        self.base = ""
        self.shop_schema = _shop_schema()
        self.handlers: dict[str, Handler] = {
            "Submit": self._submit,
            "Add": _add,
            "Join": _join,
        }

    def __call__(self, environ: dict[str, Any], start: Any) -> list[bytes]:
        if not self.base:
            self.base = f"http://127.0.0.1:{environ['SERVER_PORT']}/"
        path = environ["PATH_INFO"].lstrip("/")
        if environ["REQUEST_METHOD"] == "GET":
            file = WSDL_FOLDER / path
            if not path or not file.is_file():
                start("404 Not Found", [("Content-Type", "text/plain")])
                return [b"no such file"]
            start("200 OK", [("Content-Type", "text/xml")])
            return [file.read_text().replace("{base}", self.base).encode()]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        envelope = etree.fromstring(environ["wsgi.input"].read(length))
        body = envelope.find(f"{{{SOAP_ENV}}}Body")
        call = body[0]
        handler = self.handlers.get(etree.QName(call).localname)
        try:
            if handler is None:
                raise ValueError(f"no operation {call.tag}")
            answer, status = handler(call), "200 OK"
        except ValueError as e:
            answer, status = _fault(str(e)), "500 Internal Server Error"
        start(status, [("Content-Type", "text/xml; charset=utf-8")])
        return [_envelope(answer).encode()]

    def _submit(self, call: Any) -> str:
        """The shop: the request checked against its schema, then its basket echoed back."""
        if not self.shop_schema.validate(call):
            raise ValueError(f"schema: {self.shop_schema.error_log.last_error}")
        basket = call.find("basket")
        lines = len(basket.findall("line"))
        inner = etree.tostring(basket, encoding="unicode")
        return (
            f'<s:SubmitResponse xmlns:s="urn:test:shop">{inner}<lines>{lines}</lines>'
            "</s:SubmitResponse>"
        )


def _shop_schema() -> etree.XMLSchema:
    wsdl = etree.parse(str(WSDL_FOLDER / "shop.wsdl"))
    schema = wsdl.find(".//{http://www.w3.org/2001/XMLSchema}schema")
    return etree.XMLSchema(schema)


def _add(call: Any) -> str:
    """rpc/literal: a + b, and the term's label (with its weight)."""
    a, b = int(call.findtext("a")), int(call.findtext("b"))
    term = call.find("term")
    label = "none" if term is None else f"{term.findtext('label')}*{term.findtext('weight')}"
    return (
        f'<c:AddResponse xmlns:c="urn:test:calc"><sum>{a + b}</sum><label>{label}</label>'
        "</c:AddResponse>"
    )


def _join(call: Any) -> str:
    """rpc/encoded: the words joined by the style's separator (upper-cased if asked)."""
    words = [item.text or "" for item in call.find("words")]
    style = call.find("style")
    separator = style.findtext("separator") if style is not None else " "
    joined = (separator or "").join(words)
    if style is not None and style.findtext("upper") == "true":
        joined = joined.upper()
    return (
        '<w:JoinResponse xmlns:w="urn:test:words" '
        f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><joined xsi:type="xsd:string" '
        f'xmlns:xsd="http://www.w3.org/2001/XMLSchema">{joined}</joined></w:JoinResponse>'
    )


def _fault(text: str) -> str:
    escaped = text.replace("&", "&amp;").replace("<", "&lt;")
    return (
        f"<s:Fault xmlns:s='{SOAP_ENV}'><faultcode>s:Client</faultcode>"
        f"<faultstring>{escaped}</faultstring></s:Fault>"
    )


def _envelope(body: str) -> str:
    return f"<s:Envelope xmlns:s='{SOAP_ENV}'><s:Body>{body}</s:Body></s:Envelope>"
