"""
What a SOAP route adds to every call, from its keys in the routes file::

    [routes.billing]
    url = "https://user:secret@billing.example/Service?wsdl"   # user info: HTTP basic auth
    client_cert = "/etc/couchgw/billing.pem"   # a client certificate for mutual TLS
    client_key = "/etc/couchgw/billing.key"    # its key, if not in the same file

    [routes.billing.headers]          # SOAP headers, sent with every call
    AuthHeader = { api_key = "k1", tenant = "north" }   # a header the WSDL declares, by name
    "{urn:example:trace}Origin" = "couchgw"             # any other: {namespace}name

    [routes.billing.wsse]             # a WS-Security UsernameToken
    username = "gateway"
    password_env = "BILLING_WSSE_PASSWORD"   # or password = "..."
    digest = true                            # PasswordDigest with a nonce (default: PasswordText)
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from suds.sax.date import DateTime
from suds.sax.element import Element
from suds.wsse import Security, Token, UsernameToken

from couchgw.checks import Rejected
from couchgw.targets.wsdl import field_value
from couchgw.targets.xsd import Reader

#: The keys of a SOAP route besides the common ones.
KEYS = ("headers", "wsse", "client_cert", "client_key")
_CLARK = re.compile(r"\{([^{}]*)\}([A-Za-z_][\w.-]*)\Z")


@dataclass(frozen=True)
class Wsse:
    """A WS-Security UsernameToken; a new one (nonce, time) is made for each call."""

    username: str
    password: str = field(repr=False)
    digest: bool = False

    def security(self) -> Security:
        """What suds is given: its header is made anew for each message (in any thread)."""
        return _Fresh(self)

    def token(self) -> UsernameToken:
        token = UsernameToken(self.username, self.password)
        if self.digest:
            nonce = os.urandom(16)
            token.setnonce(base64.b64encode(nonce).decode("ascii"))
            token.setnonceencoding(True)
            token.setcreated(Token.utc())
            created = str(DateTime(token.created)).encode("ascii")
            digest = hashlib.sha1(nonce + created + self.password.encode()).digest()
            token.setpassworddigest(base64.b64encode(digest).decode("ascii"))
        return token


class _Fresh(Security):
    """A WS-Security header with a new UsernameToken each time suds writes it."""

    def __init__(self, wsse: Wsse) -> None:
        super().__init__()
        self._wsse = wsse

    def xml(self) -> Element:
        once = Security()
        once.tokens.append(self._wsse.token())
        return once.xml()


@dataclass(frozen=True)
class SoapOptions:
    """A SOAP route's own keys, checked."""

    headers: Mapping[str, Any] = field(default_factory=dict)
    wsse: Wsse | None = None
    client_cert: str | None = None
    client_key: str | None = None


def parse(options: Mapping[str, Any]) -> SoapOptions:
    """
    A SOAP route's own keys.

    @raise ValueError: an unknown key, or a bad value; the message says which, in one line.
    """
    unknown = sorted(set(options) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}")
    headers = options.get("headers", {})
    if not isinstance(headers, dict):
        raise ValueError("headers must be a table: a header's name = its value")
    for name in headers:
        if name.startswith("{") and not _CLARK.match(name):
            raise ValueError(f"headers: {name!r} is not a {{namespace}}name")
    cert, key = options.get("client_cert"), options.get("client_key")
    for which, path in (("client_cert", cert), ("client_key", key)):
        if path is not None and (not isinstance(path, str) or not path):
            raise ValueError(f"{which} must be the path of a PEM file")
    if key is not None and cert is None:
        raise ValueError("client_key needs client_cert")
    if cert is not None:
        tls_context(None, cert, key)  # fails now, in one line, if they cannot be used
    return SoapOptions(headers, _wsse(options.get("wsse")), cert, key)


def _wsse(table: Any) -> Wsse | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ValueError("wsse must be a table (username, password or password_env, digest)")
    unknown = sorted(set(table) - {"username", "password", "password_env", "digest"})
    if unknown:
        raise ValueError(f"wsse: unknown key(s) {', '.join(map(repr, unknown))}")
    username = table.get("username")
    if not isinstance(username, str) or not username:
        raise ValueError("wsse.username must be a non-empty string")
    if ("password" in table) == ("password_env" in table):
        raise ValueError("wsse needs password or password_env (the name of a variable), not both")
    password = table.get("password")
    if "password_env" in table:
        variable = table["password_env"]
        if not isinstance(variable, str) or not variable:
            raise ValueError("wsse.password_env must name an environment variable")
        password = os.environ.get(variable)
        if password is None:
            raise ValueError(f"wsse.password_env: the environment has no {variable}")
    if not isinstance(password, str):
        raise ValueError("wsse.password must be a string")
    digest = table.get("digest", False)
    if not isinstance(digest, bool):
        raise ValueError("wsse.digest must be true or false")
    return Wsse(username, password, digest)


def tls_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """
    The TLS context of a route's HTTPS connections (None: the system's defaults).

    @raise ValueError: a file that cannot be used.
    """
    if ca is None and cert is None:
        return None
    try:
        context = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"cannot use the CA file {ca}: {e.strerror or e}") from None
    if cert is not None:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(
                f"client_cert: cannot use {cert}{f' with {key}' if key else ''}: "
                f"{getattr(e, 'strerror', None) or e}"
            ) from None
    return context


def header_elements(headers: Mapping[str, Any], port: Any) -> list[Element]:
    """
    The SOAP header elements of a route: those the WSDL declares checked and built as their
    schema says, the others (C{{namespace}}name) as given.

    @raise ValueError: a header the WSDL does not declare, or a value that does not fit.
    """
    declared: dict[str, tuple[Any, Any]] = {}
    for method in port.methods.values():
        binding = method.binding.input
        for name, element in binding.headpart_types(method):
            declared.setdefault(str(name), (binding, element))
    reader = Reader()
    elements = []
    for name, value in headers.items():
        clark = _CLARK.match(name)
        if clark:
            elements.append(_raw(clark.group(2), clark.group(1), value))
            continue
        if name not in declared:
            names = ", ".join(sorted(declared)) or "none"
            raise ValueError(
                f"headers: the WSDL declares no header {name!r} (it declares: {names}); "
                "name others as {namespace}name"
            )
        binding, element = declared[name]
        try:
            shaped = field_value(reader.field(element), value, f"headers.{name}")
        except Rejected as e:
            # what was expected, not the value given (a header may carry a secret)
            raise ValueError(str(e).rsplit(", not ", 1)[0]) from None
        made = binding.mkheader(None, (name, element), shaped)
        prefix, uri = element.namespace("ns0")
        made.setPrefix(prefix, uri)
        elements.append(made)
    return elements


def _raw(name: str, namespace: str, value: Any) -> Element:
    made = Element(name, ns=("h", namespace) if namespace else None)
    if isinstance(value, dict):
        for key, item in value.items():
            for one in item if isinstance(item, list) else [item]:
                made.append(_raw(str(key), namespace, one))
    elif isinstance(value, bool):
        made.setText("true" if value else "false")
    elif value is not None:
        made.setText(str(value))
    return made
