"""
The options of C{twistd couchgw}: every one checked when parsed, a bad one ending the program
with one line that says what is wrong.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from couchgw.connections import split_credentials, tls_policy
from couchgw.couch.client import check_access
from couchgw.couch.errors import CouchError
from couchgw.embedded import NotInstalled, find_executable
from couchgw.message import DEFAULT_ROUTE
from couchgw.targets.routes import RouteConfig, RoutesError, kinds, load
from couchgw.tracing import exporter_kind

DEFAULT_HTTP = "tcp:8470:interface=127.0.0.1"
SECRET_ENV = "COUCHGW_CALLBACK_SECRET"


def _number(
    option: str, kind: Callable[[str], Any], low: float, high: float | None = None
) -> Callable[[str], Any]:
    """A coercer for a numeric option, with an error that names the option and its range."""

    def show(value: float) -> str:
        return str(int(value)) if kind is int else f"{value:g}"

    bound = f"from {show(low)} to {show(high)}" if high is not None else f"at least {show(low)}"
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise ValueError(f"--{option} must be {noun} {bound}, not {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _choice(option: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    """A coercer for an option that takes one of a few words."""

    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"--{option} must be one of {', '.join(choices)}, not {text!r}")
        return text

    parse.__name__ = "str"
    return parse


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "couchgw follows a CouchDB database's changes feed, forwards each message document to "
        "the SOAP service it names (in a thread pool), and writes the outcome back into the "
        "document. Without --couch it runs an embedded CouchDB (PouchDB Server); with "
        "--target=demo, a demo SOAP service in the same process. Traces of messages go out "
        "through OpenTelemetry when the standard OTEL_* environment variables name an exporter "
        "(OTEL_EXPORTER_OTLP_ENDPOINT, or OTEL_TRACES_EXPORTER=otlp or console)."
    )

    optParameters: list[list[Any]] = [
        [
            "couch",
            None,
            None,
            "The message database URL, e.g. http://127.0.0.1:5984/messages. Credentials from its "
            "user info or COUCHGW_COUCH_USER / COUCHGW_COUCH_PASSWORD. Omitted: the embedded "
            "CouchDB, database 'messages'.",
        ],
        [
            "target",
            None,
            "demo",
            "The default route: a WSDL URL, or 'demo' for the bundled demo SOAP service.",
        ],
        ["http", None, DEFAULT_HTTP, "strports endpoint of the HTTP API."],
        [
            "threads",
            None,
            10,
            "Threads of the default route's blocking SOAP calls (calls at once); also the "
            "concurrency of SOAP routes that set none.",
            _number("threads", int, 1, 1000),
        ],
        [
            "max-inflight",
            None,
            None,
            "Messages handled at once; when full, the feed is not read. Default: 100, or the "
            "routes' inflight bounds together if that is more.",
            _number("max-inflight", int, 1, 100000),
        ],
        [
            "routes",
            None,
            None,
            "A TOML file of further routes ([routes.NAME] tables: kind, url, concurrency, "
            "timeout, retries, backoff, backoff_max, retry_for, operation, rate, inflight); "
            "the route 'default' is the one --target names.",
        ],
        [
            "timeout",
            None,
            300.0,
            "Seconds a call may wait on the target (routes that set no timeout too).",
            _number("timeout", float, 0.1),
        ],
        [
            "lease",
            None,
            600.0,
            "Seconds a claim is valid; a running call renews it every third of that. A claim "
            "left by a gateway that died may be taken over once it expired.",
            _number("lease", float, 1),
        ],
        [
            "retries",
            None,
            5,
            "Calls made for one message before a transient error is final (routes that set no "
            "retries too).",
            _number("retries", int, 1, 1000),
        ],
        [
            "sweep",
            None,
            30.0,
            "Seconds between sweeps for work the feed did not bring (passed over while the "
            "gateway is full).",
            _number("sweep", float, 0.1),
        ],
        [
            "heartbeat",
            None,
            10.0,
            "Seconds between the changes feed's heartbeats.",
            _number("heartbeat", float, 0.1, 3600),
        ],
        [
            "grace",
            None,
            30.0,
            "Seconds a stop waits for calls in flight; then their messages are given back "
            "(retrying, due at once).",
            _number("grace", float, 0),
        ],
        [
            "max-message-bytes",
            None,
            1024 * 1024,
            "The largest message accepted (as JSON); larger ones are rejected unread.",
            _number("max-message-bytes", int, 1024, 64 * 1024 * 1024),
        ],
        [
            "callback-allow",
            None,
            None,
            "Hosts callback_url may name, comma-separated: patterns such as hooks.example.com, "
            "*.corp.example or 127.0.0.1:8080 (none by default: no callback is sent).",
        ],
        [
            "callback-secret",
            None,
            None,
            f"Key of the HMAC-SHA256 signature of callbacks (default: ${SECRET_ENV}; none: "
            "unsigned).",
        ],
        [
            "ca",
            None,
            None,
            "A PEM file of the CAs that verify HTTPS (CouchDB, targets, callbacks); default: "
            "the system's.",
        ],
        [
            "announce",
            None,
            5.0,
            "Seconds between this gateway's announcements to the others sharing the database "
            "(they split the messages between them); it counts as gone 3 times that after the "
            "last.",
            _number("announce", float, 0.1, 3600),
        ],
        [
            "guards",
            None,
            "auto",
            "Whether CouchDB checks each write with couchgw's validate function (only couchgw "
            "writes couchgw's fields; a new message must fit its route): auto (while users who "
            "are not admins may write to the database), on, or off. It binds no admin. It is "
            "written in Erlang where every node of the server enables CouchDB's Erlang query "
            "server (read from their configuration: couchgw's user must be a server admin), "
            "else in JavaScript, which costs every write a trip to a JavaScript process.",
            _choice("guards", ("auto", "on", "off")),
        ],
        ["gateway-id", None, None, "This gateway's id in claims (default: host:pid:random)."],
        ["data", None, "couchgw-data", "Folder of the embedded CouchDB's data."],
        [
            "embedded-port",
            None,
            5984,
            "TCP port of the embedded CouchDB on 127.0.0.1.",
            _number("embedded-port", int, 1, 65535),
        ],
        [
            "demo-port",
            None,
            8471,
            "TCP port of the demo SOAP service on 127.0.0.1 (0: any free port).",
            _number("demo-port", int, 0, 65535),
        ],
        [
            "demo-delay",
            None,
            0.1,
            "Seconds the demo's activate takes per device.",
            _number("demo-delay", float, 0),
        ],
    ]
    optFlags: list[list[str | None]] = [
        ["in-memory", None, "Keep the embedded CouchDB's data in memory only."],
        [
            "http-auth",
            None,
            "Ask for HTTP basic auth on every route of the HTTP API but /health and /ready: "
            "the credentials of a CouchDB user who may read the database.",
        ],
    ]

    def postOptions(self) -> None:
        ca = self["ca"]
        if ca is not None:
            try:
                tls_policy(ca)
            except (OSError, ValueError) as e:
                raise usage.UsageError(f"--ca {ca!r} cannot be used: {e}") from None
        couch = self["couch"]
        if couch is not None:
            parts = urlsplit(couch)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise usage.UsageError("--couch must be an http:// or https:// URL")
            if not parts.path.strip("/"):
                raise usage.UsageError(
                    "--couch must name the database, e.g. http://127.0.0.1:5984/messages"
                )
            try:
                check_access(couch, ca=ca)
            except CouchError as e:
                raise usage.UsageError(
                    f"CouchDB refused access to {split_credentials(couch)[0]}: {e}"
                ) from None
        target = self["target"]
        if target != "demo" and not target.startswith(("http://", "https://", "file://")):
            raise usage.UsageError(f"--target must be a WSDL URL or 'demo', not {target!r}")
        self._routes()
        try:
            exporter_kind(os.environ)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self["callback-secret"] is None and os.environ.get(SECRET_ENV):
            self["callback-secret"] = os.environ[SECRET_ENV]
        try:
            serverFromString(None, self["http"])
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise usage.UsageError(
                f"--http {self['http']!r} is not a valid endpoint: {e}"
            ) from None
        if couch is None:
            try:
                self["pouchdb-server"] = find_executable()
            except NotInstalled as e:
                raise usage.UsageError(str(e)) from None
            port = self["embedded-port"]
            if _taken(port):
                raise usage.UsageError(
                    f"--embedded-port {port} is taken on 127.0.0.1 (another CouchDB?): to use "
                    f"that server, pass --couch=http://127.0.0.1:{port}/messages; for the "
                    "embedded one, --embedded-port with a free port"
                )
        demo = self["demo-port"]
        if any(c.url == "demo" for c in self["route-configs"]) and demo and _taken(demo):
            raise usage.UsageError(
                f"--demo-port {demo} is taken on 127.0.0.1: pass --demo-port with a free port "
                "(0: any)"
            )

    def _routes(self) -> None:
        """Read the routes file, and size the in-flight bound to fit the routes' own."""
        default = RouteConfig(
            DEFAULT_ROUTE,
            url=self["target"],
            concurrency=self["threads"],
            timeout=self["timeout"],
            retries=self["retries"],
            ca=self["ca"],
        )
        known = kinds()
        configs = []
        if self["routes"] is not None:
            try:
                configs = load(self["routes"], default, known)
            except RoutesError as e:
                raise usage.UsageError(f"--routes {e}") from None
            default = replace(default, inflight=max(10, 2 * default.concurrency))
        self["route-configs"] = [default, *configs]
        self["kinds"] = known
        bounds = sum(config.inflight or 0 for config in self["route-configs"])
        if self["max-inflight"] is None:
            self["max-inflight"] = max(100, bounds)
        elif self["max-inflight"] < bounds:
            raise usage.UsageError(
                f"--max-inflight {self['max-inflight']} is less than the routes' inflight "
                f"bounds together ({bounds}): raise it, or lower the routes' inflight"
            )

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse; a bad option ends the program with one line saying what is wrong."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            text = str(e).removeprefix("Parameter type enforcement failed: ")
            raise SystemExit(f"twistd couchgw: {text} (see twistd couchgw --help)") from None


def _taken(port: int) -> bool:
    """Whether a server listens on 127.0.0.1:C{port} (so that no child of ours could)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
