"""
The C{couchgw} command: submit messages and follow them, look at them, list them, send failed
ones again or cancel them (L{couchgw.console_cli}), push the design documents, list the routes of
a running gateway.

    couchgw submit activate network=north count=5 --wait
    couchgw status job-1
    couchgw list --status failed --since 12h
    couchgw requeue --status failed --since 2026-11-28T00:00:00Z
    couchgw cancel job-7
    couchgw designdocs push
    couchgw routes

The database and its credentials come as they do for C{twistd couchgw}: C{--couch URL} (with
user info) or C{COUCHGW_COUCH_USER} / C{COUCHGW_COUCH_PASSWORD}; C{--ca} for a private CA.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any, NoReturn
from urllib.parse import quote

from couchgw import checks, message
from couchgw.blocking import Client, Failed, HTTPFailed

DEFAULT_COUCH = "http://127.0.0.1:5984/messages"
DEFAULT_API = "http://127.0.0.1:8470"
COUCH_ENV = "COUCHGW_COUCH"
API_ENV = "COUCHGW_API"


def _value(text: str) -> Any:
    """A command-line value: JSON where it reads as JSON (5, true, [1, 2]), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _args(pairs: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise Failed(f"argument {pair!r} is not key=value")
        args[key] = _value(value)
    return args


def _line(doc: dict[str, Any]) -> str:
    status = doc.get("status") or "new"
    parts = [f"{doc['_id']}: {status}"]
    if status == "scheduled" and doc.get("next_attempt_at"):
        parts.append(f"not before {doc['next_attempt_at']}")
    if doc.get("attempts"):
        parts.append(f"attempt {doc['attempts']}")
    error = doc.get("error")
    if isinstance(error, dict) and error.get("message") and status != "forwarded":
        parts.append(str(error["message"]))
    return " · ".join(parts)


def submit(args: argparse.Namespace) -> int:
    db = Client(args.couch, args.ca)
    doc: dict[str, Any] = {"_id": args.id or uuid.uuid4().hex, "type": "message"}
    doc["operation"] = args.operation
    doc["args"] = _args(args.args)
    if args.target:
        doc["target"] = args.target
    if args.callback_url:
        doc["callback_url"] = args.callback_url
    priority = args.priority
    if priority is not None:
        doc["priority"] = int(priority) if priority.isdigit() else priority
    for field in ("not_before", "expires_at"):
        if getattr(args, field):
            doc[field] = getattr(args, field)
    try:
        checks.plan_of(doc)
    except checks.Rejected as e:
        raise Failed(f"not submitted: {e}") from None
    try:
        db.json("PUT", "/" + quote(doc["_id"], safe=""), doc)
    except HTTPFailed as e:
        if e.code == 409:
            raise Failed(f"a message {doc['_id']!r} exists already") from None
        raise
    if not args.wait:
        print(doc["_id"])
        return 0
    final = _follow(db, doc["_id"], args.timeout)
    if final.get("status") == "forwarded":
        print(json.dumps(final.get("result"), indent=2, ensure_ascii=False))
        return 0
    return 1


def _follow(db: Client, doc_id: str, timeout: float) -> dict[str, Any]:
    """Show the message's status as it changes (one live line on a terminal) until it is final."""
    live = sys.stdout.isatty()
    shown = ""
    deadline = time.monotonic() + timeout
    for doc in _changes(db, doc_id, deadline):
        line = _line(doc)
        if line != shown:
            if live:
                sys.stdout.write("\r\033[K" + line)
            else:
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
            shown = line
        if message.is_terminal(doc):
            if live:
                sys.stdout.write("\n")
            return doc
    if live:
        sys.stdout.write("\n")
    raise Failed(f"{doc_id} is not final after {timeout:g}s")


def _changes(db: Client, doc_id: str, deadline: float) -> Iterator[dict[str, Any]]:
    """The message's revisions from the changes feed, from its current one on; reconnects."""
    ids = quote(json.dumps([doc_id]))
    base = f"/_changes?feed=continuous&filter=_doc_ids&doc_ids={ids}&include_docs=true"
    since: Any = 0
    while time.monotonic() < deadline:
        position = since if isinstance(since, str) else json.dumps(since)
        try:
            with db.open("GET", f"{base}&heartbeat=5000&since={quote(position)}") as response:
                for raw in response:
                    if time.monotonic() >= deadline:
                        return
                    change = json.loads(raw) if raw.strip() else {}
                    if isinstance(change.get("doc"), dict):
                        yield change["doc"]
                    since = change.get("seq", since)
        except (OSError, ValueError, Failed):
            time.sleep(1)  # CouchDB went away, or the answer broke off: ask again


def status(args: argparse.Namespace) -> int:
    db = Client(args.couch, args.ca)
    try:
        doc = db.json("GET", "/" + quote(args.id, safe=""))
    except HTTPFailed as e:
        if e.code == 404:
            raise Failed(f"no message {args.id!r} in {db.url}") from None
        raise
    shown = {
        k: doc[k]
        for k in ("_id", "status", *message.GATEWAY_FIELDS, "target", "operation")
        if k in doc
    }
    shown.setdefault("status", "new")
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0


def routes(args: argparse.Namespace) -> int:
    from couchgw.targets.described import arguments_tree

    api = Client(args.api, args.ca)
    described = api.json("GET", "/routes")
    for name, route in sorted(described.items()):
        state = route.get("state")
        url = route.get("url") or ""
        print(f"{name} ({route.get('kind')}, {state}) {url}".rstrip())
        if route.get("error"):
            print(f"  ! {route['error']}")
        default = route.get("default_operation")
        operations = route.get("operations")
        if operations is None:
            print(f"  any operation{f' (default {default})' if default else ''}")
            continue
        schemas = route.get("schemas") or {}
        for operation, params in sorted(operations.items()):
            shown = ", ".join(_param(p) for p in params)
            mark = " (default)" if operation == default else ""
            print(f"  {operation}({shown}){mark}")
            tree = arguments_tree(schemas.get(operation))
            if any(line.startswith(" ") for line in tree):  # complex arguments: their fields
                for line in tree:
                    print(f"    {line}")
    return 0


def _param(param: dict[str, Any]) -> str:
    """C{name: type}, C{?} after an optional name, C{[]} after a repeated type."""
    optional = "" if param.get("required") else "?"
    many = "[]" if param.get("many") else ""
    return f"{param['name']}{optional}: {param['type']}{many}"


def push(args: argparse.Namespace) -> int:
    from twisted.internet.defer import inlineCallbacks
    from twisted.internet.task import react
    from twisted.web.client import HTTPConnectionPool

    from couchgw.connections import agent
    from couchgw.couch import design
    from couchgw.couch.client import Database

    @inlineCallbacks
    def run(reactor: Any) -> Any:
        pool = HTTPConnectionPool(reactor, persistent=False)
        db = Database(args.couch, agent(reactor, pool, args.ca))
        try:
            yield db.create()
            written = yield design.push(db)
        except Exception as e:
            raise Failed(str(e) or type(e).__name__) from None
        print(f"pushed: {', '.join(written)}" if written else "up to date: nothing to push")

    outcome: list[int] = []

    def main(reactor: Any) -> Any:
        def failed(failure: Any) -> None:
            print(f"couchgw: {failure.getErrorMessage() or failure.type.__name__}", file=sys.stderr)
            outcome.append(1)

        return run(reactor).addErrback(failed)

    try:
        react(main)
    except SystemExit as e:
        if e.code:
            return int(e.code)
    return outcome[0] if outcome else 0


def _parser() -> argparse.ArgumentParser:
    couch = argparse.ArgumentParser(add_help=False)
    couch.add_argument(
        "--couch",
        default=os.environ.get(COUCH_ENV, DEFAULT_COUCH),
        help=f"the message database URL (default: ${COUCH_ENV} or {DEFAULT_COUCH}); credentials "
        "from its user info or COUCHGW_COUCH_USER / COUCHGW_COUCH_PASSWORD",
    )
    couch.add_argument(
        "--ca", help="a PEM file of the CAs that verify HTTPS (default: the system's)"
    )
    parser = argparse.ArgumentParser(
        prog="couchgw", description="couchgw's command line: messages, design documents, routes."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("submit", parents=[couch], help="write a message (and follow it)")
    p.add_argument("operation", metavar="OPERATION", help="the operation to call")
    p.add_argument(
        "args",
        metavar="KEY=VALUE",
        nargs="*",
        help="arguments (values read as JSON where they are: count=5)",
    )
    p.add_argument("--target", help="the route (default: the default route)")
    p.add_argument("--id", help="the message's id (default: a new one); a repeat is refused")
    p.add_argument("--callback-url", help="where couchgw POSTs the final document")
    p.add_argument(
        "--priority",
        help='"high", "medium" (the default), "low", or 0 to 9: higher goes first when there '
        "is more work than room",
    )
    p.add_argument(
        "--not-before",
        metavar="TIME",
        help="not called before this ISO 8601 time with its zone, e.g. 2026-12-02T02:00:00Z",
    )
    p.add_argument(
        "--expires-at",
        metavar="TIME",
        help="never called after this ISO 8601 time: it ends expired instead",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="show the status live until it is final; exit 0 only when forwarded",
    )
    p.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds --wait waits (default 3600)"
    )
    p.set_defaults(run=submit)

    p = commands.add_parser("status", parents=[couch], help="show a message's status")
    p.add_argument("id", metavar="ID")
    p.set_defaults(run=status)

    from couchgw.console_cli import add_commands

    add_commands(commands, couch)

    p = commands.add_parser("designdocs", help="the design documents")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser(
        "push", parents=[couch], help="write the design documents that are missing or differ"
    )
    a.set_defaults(run=push)

    p = commands.add_parser(
        "routes", help="a running gateway's routes, with each SOAP operation's parameters"
    )
    p.add_argument(
        "--api",
        default=os.environ.get(API_ENV, DEFAULT_API),
        help=f"the gateway's HTTP API (default: ${API_ENV} or {DEFAULT_API}); with --http-auth, "
        "credentials in its user info",
    )
    p.add_argument("--ca", help="a PEM file of the CAs that verify HTTPS (default: the system's)")
    p.set_defaults(run=routes)
    return parser


def main(argv: list[str] | None = None) -> NoReturn:
    args = _parser().parse_args(argv)
    try:
        code = args.run(args)
    except Failed as e:
        print(f"couchgw: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)
