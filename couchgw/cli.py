"""
The C{couchgw} command.

    couchgw designdocs push --couch URL     push the design documents now
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import react


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="couchgw", description="couchgw's command line")
    commands = parser.add_subparsers(dest="command", required=True)
    designdocs = commands.add_parser("designdocs", help="the design documents")
    actions = designdocs.add_subparsers(dest="action", required=True)
    push = actions.add_parser(
        "push", help="write the design documents that are missing or differ from designdocs/"
    )
    push.add_argument(
        "--couch",
        required=True,
        help="the message database URL (credentials from its user info or "
        "COUCHGW_COUCH_USER / COUCHGW_COUCH_PASSWORD)",
    )
    return parser


@inlineCallbacks
def _push(reactor: Any, url: str) -> Any:
    from twisted.web.client import Agent, HTTPConnectionPool

    from couchgw import design
    from couchgw.couch import Database

    db = Database(url, Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    yield db.create()
    written = yield design.push(db)
    print(f"pushed: {', '.join(written)}" if written else "up to date: nothing to push")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)

    def run(reactor: Any) -> Any:
        return _push(reactor, args.couch).addErrback(_fail)

    react(run)


def _fail(failure: Any) -> None:
    print(f"couchgw: {failure.getErrorMessage() or failure.type.__name__}", file=sys.stderr)
    raise SystemExit(1)
