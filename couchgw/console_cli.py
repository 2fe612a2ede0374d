"""
The console's commands of C{couchgw}: list messages by status, route, time and id; requeue and
cancel one message, a few, or every message a selection holds (after saying how many, and
asking unless C{--yes}).

    couchgw list --status failed --route billing --since 12h
    couchgw requeue --status failed --since 2026-11-28T18:00:00Z
    couchgw cancel job-7

They read the console's index (C{_design/couchgw-console}) as the page does, and write each
action over the revision read: a message that changed meanwhile is left alone, and counted.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

from couchgw import console, message
from couchgw.blocking import Client, Failed, HTTPFailed
from couchgw.connections import split_credentials

#: Messages read from CouchDB at once.
BATCH = console.BATCH


def _selection(args: argparse.Namespace) -> console.Selection:
    given = {"status": args.status, "route": args.route, "since": args.since, "q": args.q}
    try:
        return console.selection_of(given, time.time())
    except console.BadRequest as e:
        raise Failed(f"--{e!s}") from None


def _query(params: dict[str, Any]) -> str:
    return "?" + urlencode(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    )


def _read(db: Client, selection: console.Selection, position: Any, limit: int) -> Any:
    """A page of the selection: its messages, and the cursor of the next page (or None)."""
    try:
        if selection.q is not None:
            params = console.ids_params(selection, position, console.SCANNED)
            answer = db.json("GET", "/_all_docs" + _query(params))
            return console.ids_page(answer, selection, limit, console.SCANNED)
        params = console.view_params(selection, position, limit)
        path = f"/_design/{console.DDOC}/_view/{console.VIEW}"
        return console.view_page(db.json("GET", path + _query(params)), limit)
    except HTTPFailed as e:
        if e.code == 404:
            raise Failed(
                f"{db.url} has no _design/{console.DDOC} (a gateway of this version writes it as "
                "it starts, or, serving many databases, when the database first needs it; so "
                "does couchgw designdocs push)"
            ) from None
        raise


def _all(db: Client, selection: console.Selection) -> Iterator[list[dict[str, Any]]]:
    """Every message of the selection, a batch at a time."""
    position = None
    while True:
        docs, following = _read(db, selection, position, BATCH)
        yield docs
        if following is None:
            return
        position = console.position_of(following, selection)


def _line(doc: dict[str, Any]) -> str:
    shown = console.summary(doc)
    parts = [shown.get("updated_at") or "-", shown["status"], shown["route"] or "?", shown["id"]]
    detail = []
    if shown["attempts"]:
        detail.append(f"attempt {shown['attempts']}")
    if shown["status"] == "scheduled" and shown.get("next_attempt_at"):
        detail.append(f"not before {shown['next_attempt_at']}")
    if shown.get("error"):
        detail.append(str(shown["error"]["message"]))
    return "  ".join(str(p) for p in parts) + (f"  ({' · '.join(detail)})" if detail else "")


def list_messages(args: argparse.Namespace) -> int:
    db = Client(args.couch, args.ca)
    selection = _selection(args)
    if args.limit < 1 or args.limit > console.MOST:
        raise Failed(f"--limit must be from 1 to {console.MOST}, not {args.limit}")
    position = console.position_of(args.cursor, selection) if args.cursor else None
    docs, following = _read(db, selection, position, args.limit)
    if args.json:
        shown = {"messages": [console.summary(d) for d in docs], "next": following}
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return 0
    for doc in docs:
        print(_line(doc))
    if following:
        print(f"more: --cursor {following}")
    elif not docs:
        print("no messages")
    return 0


def _by(args: argparse.Namespace) -> str:
    """Who acts: the CouchDB user of the credentials, else this machine's user."""
    auth = split_credentials(args.couch)[1]
    return auth[0] if auth else f"{getpass.getuser()}@{socket.gethostname()}"


def _fields(action: str, doc: dict[str, Any], by: str) -> dict[str, Any]:
    now = time.time()
    return message.requeued(doc, by, now) if action == "requeue" else message.cancelled_by(by, now)


def act(args: argparse.Namespace) -> int:
    """C{couchgw requeue} and C{couchgw cancel}: the messages named, or a selection."""
    action = args.action
    db = Client(args.couch, args.ca)
    by = _by(args)
    if args.ids:
        if args.status or args.route or args.since or args.q:
            raise Failed("name messages, or select them with --status and the rest, not both")
        return _each(db, action, args.ids, by, args.dry_run)
    if args.status is None:
        if action == "cancel":
            raise Failed("name the messages to cancel, or select them with --status")
        args.status = "failed"
    selection = _selection(args)
    try:
        console.action_selection(action, selection)
    except console.BadRequest as e:
        raise Failed(str(e).replace("status=", "--status ")) from None
    what = _described(selection)
    if args.dry_run:
        n = 0
        for docs in _all(db, selection):
            for doc in docs:
                print(doc["_id"])
            n += len(docs)
        print(f"would {action} {n} {what}")
        return 0
    if selection.q is None:
        path = f"/_design/{console.DDOC}/_view/{console.VIEW}"
        n = console.counted(db.json("GET", path + _query(console.count_params(selection))))
    else:
        n = sum(len(docs) for docs in _all(db, selection))
    if n == 0:
        print(f"no {what}")
        return 0
    if not args.yes and not _asked(f"{action} {n} {what}? [y/N] "):
        print(f"nothing {message.DONE[action]}")
        return 1
    done, left = 0, []
    for docs in _all(db, selection):
        writes, ids = [], []
        for doc in docs:
            why = message.refusal(action, doc)
            if why is not None:
                left.append(f"{doc['_id']}: {why}")
                continue
            writes.append(message.apply(doc, _fields(action, doc, by)))
            ids.append(doc["_id"])
        results = db.json("POST", "/_bulk_docs", {"docs": writes}) if writes else []
        for doc_id, result in zip(ids, results, strict=True):
            if result.get("error") == "conflict":
                left.append(f"{doc_id}: it changed meanwhile")
            elif result.get("error"):
                left.append(f"{doc_id}: {result['error']}: {result.get('reason', '')}")
            else:
                done += 1
    for line in left:
        print(f"left alone {line}", file=sys.stderr)
    tail = f", left alone {len(left)}" if left else ""
    print(f"{message.DONE[action]} {done} {what}{tail}")
    return 1 if left else 0


def _each(db: Client, action: str, ids: list[str], by: str, dry_run: bool) -> int:
    failed = 0
    for doc_id in ids:
        path = "/" + quote(doc_id, safe="")
        try:
            doc = db.json("GET", path)
        except HTTPFailed as e:
            if e.code != 404:
                raise
            doc = None
        if doc is None or not message.is_message(doc):
            why: str | None = "no such message"
        else:
            why = message.refusal(action, doc)
            if why is None and not dry_run:
                try:
                    db.json("PUT", path, message.apply(doc, _fields(action, doc, by)))
                except HTTPFailed as e:
                    if e.code != 409:
                        raise
                    why = "it changed meanwhile: look again"
        if why is not None:
            print(f"{doc_id}: not {message.DONE[action]}: {why}", file=sys.stderr)
            failed += 1
        else:
            print(f"{doc_id}: {'would be ' if dry_run else ''}{message.DONE[action]}")
    return 1 if failed else 0


def _asked(question: str) -> bool:
    sys.stdout.write(question)
    sys.stdout.flush()
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        return False
    if not sys.stdin.isatty():
        sys.stdout.write("\n")
    return answer.strip().lower() in ("y", "yes")


def _described(selection: console.Selection) -> str:
    text = f"{selection.status} message(s)"
    if selection.route:
        text += f" on route {selection.route}"
    if selection.since is not None:
        text += (
            f" updated since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(selection.since))}"
        )
    if selection.q:
        text += f" whose id begins with {selection.q}"
    return text


def add_commands(commands: Any, couch: argparse.ArgumentParser) -> None:
    """The parsers of C{list}, C{requeue} and C{cancel}."""

    def selecting(p: argparse.ArgumentParser, status_help: str) -> None:
        p.add_argument("--status", help=status_help)
        p.add_argument("--route", metavar="R", help="only those of this route")
        p.add_argument(
            "--since",
            metavar="TIME",
            help="only those updated at or after this ISO 8601 time (2026-11-28T18:00:00Z), or "
            "this long ago (90m, 12h, 2d)",
        )
        p.add_argument("--q", metavar="PREFIX", help="only those whose id begins with this")

    p = commands.add_parser("list", parents=[couch], help="list messages, newest first")
    selecting(p, f"only those of this status ({', '.join(console.LISTED)})")
    p.add_argument("--limit", type=int, default=console.DEFAULT_LIMIT, help="at most this many")
    p.add_argument("--cursor", help="the next page, as the last listing said")
    p.add_argument("--json", action="store_true", help="as JSON, as GET /messages answers")
    p.set_defaults(run=list_messages)

    for action, statuses, default in (
        ("requeue", message.REQUEUEABLE, " (default: failed)"),
        ("cancel", message.CANCELLABLE, ""),
    ):
        p = commands.add_parser(
            action,
            parents=[couch],
            help="send finished messages again (new, attempts reset)"
            if action == "requeue"
            else "cancel messages not called yet, or waiting for a retry",
        )
        p.add_argument("ids", metavar="ID", nargs="*", help="the messages (or select them)")
        selecting(p, f"every message of this status: {', '.join(sorted(statuses))}{default}")
        p.add_argument("--dry-run", action="store_true", help="list them, change nothing")
        p.add_argument("--yes", action="store_true", help="do not ask first")
        p.set_defaults(run=act, action=action)
