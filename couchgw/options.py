"""
The options of C{twistd couchgw}: every one checked when parsed, a bad one ending the program
with one line that says what is wrong.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from couchgw.coercers import choice, first_line, loopback, number, taken
from couchgw.connections import split_credentials, tls_policy
from couchgw.couch.client import check_access
from couchgw.couch.errors import CouchError
from couchgw.embedded import NotInstalled, find_executable
from couchgw.gateway.discovery import parse_patterns
from couchgw.message import DEFAULT_ROUTE
from couchgw.targets.routes import RouteConfig, RoutesError, kinds, load
from couchgw.tracing import exporter_kind

DEFAULT_HTTP = "tcp:8470:interface=127.0.0.1"
SECRET_ENV = "COUCHGW_CALLBACK_SECRET"


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "couchgw follows a CouchDB database's changes feed, forwards each message document to "
        "the route it names (SOAP, in a thread pool; HTTP; or a kind of a plugin), and writes "
        "the outcome back into the document. Without --couch it runs an embedded CouchDB "
        "(PouchDB Server); with --target=demo, a demo SOAP service in the same process. "
        "Secrets come from the environment or files (COUCHGW_COUCH_PASSWORD, "
        "--couch-password-file, COUCHGW_CALLBACK_SECRET, --callback-secret-file). Traces of "
        "messages go out through OpenTelemetry when the standard OTEL_* environment variables "
        "name an exporter (OTEL_EXPORTER_OTLP_ENDPOINT, or OTEL_TRACES_EXPORTER=otlp or "
        "console)."
    )

    optParameters: list[list[Any]] = [
        [
            "couch",
            None,
            None,
            "The message database URL, e.g. http://127.0.0.1:5984/messages; or, with "
            "--databases, the server's, e.g. http://127.0.0.1:5984. Credentials from "
            "COUCHGW_COUCH_USER / COUCHGW_COUCH_PASSWORD, --couch-password-file, or the URL's user "
            "info (a password there shows in the process list: a warning). Omitted: the embedded "
            "CouchDB, database 'messages'.",
        ],
        [
            "databases",
            None,
            None,
            "Serve every database of the --couch server whose name matches: shell globs, "
            "comma-separated, e.g. 'userdb-*' (couch_peruser's) or 'tenant-*'. Each is its own "
            "world; the gateways serving the same patterns split the databases between them.",
        ],
        [
            "max-feeds",
            None,
            100,
            "With --databases: changes feeds open at once, at most (the databases that change; "
            "an idle one's feed is closed, and opened again at its next update).",
            number("max-feeds", int, 1, 100000),
        ],
        [
            "couch-password-file",
            None,
            None,
            "A file holding the CouchDB password (its first line), for the user the --couch URL "
            "or COUCHGW_COUCH_USER names.",
        ],
        [
            "target",
            None,
            "demo",
            "The default route: a WSDL URL, or 'demo' for the bundled demo SOAP service.",
        ],
        [
            "http",
            None,
            DEFAULT_HTTP,
            "strports endpoint of the HTTP API. Beyond this machine's loopback interface it "
            "needs --http-auth (or --http-public).",
        ],
        [
            "operator-role",
            None,
            None,
            "With --http-auth: a CouchDB role whose users may requeue and cancel messages from "
            "the console (besides the database's admins and the server's); every other user "
            "reads only. Without --http-auth, whoever reaches an API that listens on this "
            "machine alone may act, and nobody where it listens beyond.",
        ],
        [
            "threads",
            None,
            10,
            "Threads of the default route's blocking SOAP calls (calls at once); also the "
            "concurrency of SOAP routes that set none.",
            number("threads", int, 1, 1000),
        ],
        [
            "max-inflight",
            None,
            None,
            "Messages handled at once; when full, the feed is not read. Default: 100, or the "
            "routes' inflight bounds together if that is more.",
            number("max-inflight", int, 1, 100000),
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
            number("timeout", float, 0.1),
        ],
        [
            "lease",
            None,
            600.0,
            "Seconds a claim is valid; a running call renews it every third of that. A claim "
            "left by a gateway that died may be taken over once it expired.",
            number("lease", float, 1),
        ],
        [
            "retries",
            None,
            5,
            "Calls made for one message before a transient error is final (routes that set no "
            "retries too).",
            number("retries", int, 1, 1000),
        ],
        [
            "sweep",
            None,
            30.0,
            "Seconds between sweeps for work the feed did not bring (passed over while the "
            "gateway is full).",
            number("sweep", float, 0.1),
        ],
        [
            "heartbeat",
            None,
            10.0,
            "Seconds between the changes feed's heartbeats.",
            number("heartbeat", float, 0.1, 3600),
        ],
        [
            "grace",
            None,
            30.0,
            "Seconds a stop waits for calls in flight; then their messages are given back "
            "(retrying, due at once).",
            number("grace", float, 0),
        ],
        [
            "max-message-bytes",
            None,
            1024 * 1024,
            "The largest message accepted (as JSON); larger ones are rejected unread.",
            number("max-message-bytes", int, 1024, 64 * 1024 * 1024),
        ],
        [
            "callback-allow",
            None,
            None,
            "Hosts callback_url may name, comma-separated: patterns such as hooks.example.com, "
            "*.corp.example or 127.0.0.1:8080 (none by default: no callback is sent).",
        ],
        [
            "callback-secret-file",
            None,
            None,
            f"A file holding the key of the HMAC-SHA256 signature of callbacks (its first line); "
            f"or ${SECRET_ENV}; none: unsigned.",
        ],
        [
            "callback-secret",
            None,
            None,
            "The key itself (it shows in the process list: a warning; prefer the file or "
            f"${SECRET_ENV}).",
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
            number("announce", float, 0.1, 3600),
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
            choice("guards", ("auto", "on", "off")),
        ],
        ["gateway-id", None, None, "This gateway's id in claims (default: host:pid:random)."],
        ["data", None, "couchgw-data", "Folder of the embedded CouchDB's data."],
        [
            "embedded-port",
            None,
            5984,
            "TCP port of the embedded CouchDB on 127.0.0.1.",
            number("embedded-port", int, 1, 65535),
        ],
        [
            "demo-port",
            None,
            8471,
            "TCP port of the demo SOAP service on 127.0.0.1 (0: any free port).",
            number("demo-port", int, 0, 65535),
        ],
        [
            "demo-delay",
            None,
            0.1,
            "Seconds the demo's activate takes per device.",
            number("demo-delay", float, 0),
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
        [
            "http-public",
            None,
            "Let the HTTP API listen beyond this machine without --http-auth: anyone who reaches "
            "it reads every message's status and error.",
        ],
    ]

    def postOptions(self) -> None:
        ca = self["ca"]
        if ca is not None:
            try:
                tls_policy(ca)
            except (OSError, ValueError) as e:
                raise usage.UsageError(f"--ca {ca!r} cannot be used: {e}") from None
        self._secrets()
        couch = self["couch"]
        self["patterns"] = None
        if self["databases"] is not None:
            try:
                self["patterns"] = parse_patterns(self["databases"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        if couch is not None:
            parts = urlsplit(couch)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise usage.UsageError("--couch must be an http:// or https:// URL")
            if not parts.path.strip("/") and self["patterns"] is None:
                raise usage.UsageError(
                    "--couch names a server: name the database too, e.g. "
                    "http://127.0.0.1:5984/messages, or the databases to serve with --databases"
                )
            if parts.path.strip("/") and self["patterns"] is not None:
                raise usage.UsageError(
                    "--databases needs --couch to name the server, e.g. http://127.0.0.1:5984, "
                    f"not the database {parts.path.strip('/')!r}"
                )
            try:
                check_access(couch, ca=ca, credentials=self["couch-credentials"])
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
        try:
            serverFromString(None, self["http"])
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise usage.UsageError(
                f"--http {self['http']!r} is not a valid endpoint: {e}"
            ) from None
        role = self["operator-role"]
        if role is not None and (not role.strip() or role != role.strip()):
            raise usage.UsageError(f"--operator-role must be a CouchDB role's name, not {role!r}")
        if role is not None and not self["http-auth"]:
            raise usage.UsageError(
                "--operator-role needs --http-auth (without it, no user is known to have a role)"
            )
        if not loopback(self["http"]) and not (self["http-auth"] or self["http-public"]):
            raise usage.UsageError(
                f"--http {self['http']!r} listens beyond this machine: add --http-auth (the API "
                "then asks for a CouchDB user's credentials), or --http-public to let anyone "
                "who reaches it read every message's status"
            )
        if couch is None:
            try:
                self["pouchdb-server"] = find_executable()
            except NotInstalled as e:
                raise usage.UsageError(str(e)) from None
            port = self["embedded-port"]
            if taken(port):
                raise usage.UsageError(
                    f"--embedded-port {port} is taken on 127.0.0.1 (another CouchDB?): to use "
                    f"that server, pass --couch=http://127.0.0.1:{port}/messages; for the "
                    "embedded one, --embedded-port with a free port"
                )
        demo = self["demo-port"]
        if any(c.url == "demo" for c in self["route-configs"]) and demo and taken(demo):
            raise usage.UsageError(
                f"--demo-port {demo} is taken on 127.0.0.1: pass --demo-port with a free port "
                "(0: any)"
            )

    def _secrets(self) -> None:
        """Secrets from files or the environment; those given on the command line noted."""
        self["warnings"] = []
        secret_file = self["callback-secret-file"]
        if secret_file is not None:
            if self["callback-secret"] is not None:
                raise usage.UsageError("give --callback-secret-file or --callback-secret, not both")
            self["callback-secret"] = first_line(secret_file, "--callback-secret-file")
        elif self["callback-secret"] is not None:
            self["warnings"].append(
                f"--callback-secret shows in the process list: prefer --callback-secret-file or "
                f"${SECRET_ENV}"
            )
        elif os.environ.get(SECRET_ENV):
            self["callback-secret"] = os.environ[SECRET_ENV]
        couch = self["couch"]
        password_file = self["couch-password-file"]
        self["couch-credentials"] = None
        if password_file is not None:
            if couch is None:
                raise usage.UsageError("--couch-password-file needs --couch")
            _, found = split_credentials(couch)
            user = found[0] if found else None
            if not user:
                raise usage.UsageError(
                    "--couch-password-file: name the user in the --couch URL (http://USER@host/db) "
                    "or in COUCHGW_COUCH_USER"
                )
            self["couch-credentials"] = (user, first_line(password_file, "--couch-password-file"))
        elif couch is not None and urlsplit(couch).password:
            self["warnings"].append(
                "the CouchDB password in --couch shows in the process list: prefer "
                "COUCHGW_COUCH_PASSWORD or --couch-password-file"
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
