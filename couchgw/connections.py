"""
HTTP connections out of couchgw (to CouchDB, HTTP targets, callbacks): kept-alive pools, agents
that verify HTTPS, request bodies sent at once, and credentials taken out of URLs so that they
never reach a log.
"""

from __future__ import annotations

import os
from base64 import b64encode
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from twisted.application.service import Service
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IConsumer, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

USER_ENV = "COUCHGW_COUCH_USER"
PASSWORD_ENV = "COUCHGW_COUCH_PASSWORD"


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" line for every new connection


def tls_policy(ca: str | None) -> IPolicyForHTTPS:
    """
    How HTTPS servers are verified: against the system's CAs, or only the CAs of the PEM file
    C{ca} (a private CA).
    """
    if ca is None:
        return BrowserLikePolicyForHTTPS()
    with open(ca, "rb") as f:
        pem = f.read()
    certificates = [
        Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + block)
        for block in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]
    ]
    if not certificates:
        raise ValueError(f"{ca} holds no PEM certificate")
    return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(certificates))


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """
    Where an agent connects: as Twisted's own agent does, but to a host given as an IP address
    straight over TCP.  A L{HostnameEndpoint} resolves even an IP address, in a thread, and
    costs the reactor about a millisecond a connection: too much for a route that opens a
    thousand connections at once.
    """

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS) -> None:
        self._reactor = reactor
        self._policy = policy

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        endpoint: IStreamClientEndpoint
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self._reactor, host, uri.port)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self._reactor, host, uri.port)
        else:
            endpoint = HostnameEndpoint(self._reactor, host, uri.port)
        if uri.scheme == b"http":
            return endpoint
        if uri.scheme == b"https":
            return wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), endpoint)
        raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")


def agent(reactor: Any, pool: HTTPConnectionPool, ca: str | None = None) -> Agent:
    """An agent over C{pool} that verifies HTTPS servers (see L{tls_policy})."""
    return Agent.usingEndpointFactory(reactor, _Endpoints(reactor, tls_policy(ca)), pool=pool)


def connection_pool(reactor: Any, size: int = 20) -> HTTPConnectionPool:
    """A pool of kept-alive connections for a L{Database}'s agent."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = size
    pool._factory = _QuietFactory  # type: ignore[attr-defined]
    return pool


@implementer(IBodyProducer)
class Body:
    """A request body that is all there at once (written as the request goes out)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class PoolCloser(Service):
    """Closes an HTTP connection pool's idle connections at stop."""

    def __init__(self, pool: HTTPConnectionPool) -> None:
        self.pool = pool

    def stopService(self) -> Any:
        super().stopService()
        return self.pool.closeCachedConnections()


def split_credentials(
    url: str, environ: Mapping[str, str] | None = None
) -> tuple[str, tuple[str, str] | None]:
    """
    Take the credentials out of a database URL.

    @return: the URL without user info, and C{(user, password)} from the URL's user info or from
        C{COUCHGW_COUCH_USER} / C{COUCHGW_COUCH_PASSWORD}, or L{None}.
    """
    environ = os.environ if environ is None else environ
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    if parts.username is not None:
        return clean, (unquote(parts.username), unquote(parts.password or ""))
    if environ.get(USER_ENV):
        return clean, (environ[USER_ENV], environ.get(PASSWORD_ENV, ""))
    return clean, None


def basic_auth(user: str, password: str) -> str:
    """The C{Authorization} header's value for HTTP basic auth."""
    return "Basic " + b64encode(f"{user}:{password}".encode()).decode("ascii")
