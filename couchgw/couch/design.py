"""
The design documents, kept as plain files in C{designdocs/} and pushed when they differ.

Each folder under C{designdocs/} is one design document, C{_design/<folder>}.  Inside it, a file
becomes a field named after the file without its extension and a sub-folder an object: so
C{couchgw/views/due/map.js} is the C{views.due.map} function of C{_design/couchgw}.  C{.json}
files are parsed; C{.js} and C{.txt} files are taken as text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from couchgw.couch.client import Database, Doc, rescans_filtered_feeds, supports_selector
from couchgw.couch.errors import BULK_STATUS, error_for
from couchgw.message import DEFAULT_ROUTE, STATUSES

log = Logger()

#: The gateway's own design document.
DDOC = "couchgw"
#: Where the ids of couchgw's design documents begin: C{_design/couchgw}, C{_design/couchgw-*}.
PREFIX = f"_design/{DDOC}"
#: A Mango selector of new messages and cancelled scheduled ones (the equivalent of
#: C{_design/couchgw}'s C{new} filter).
NEW_SELECTOR = {
    "type": "message",
    "$or": [
        {"status": {"$exists": False}},
        {"status": None},
        {"status": {"$nin": sorted(STATUSES)}},
        {"status": "scheduled", "cancel_requested": True},
    ],
}
#: Nesting (as the C{due} view counts it) from which a message is not read but rejected in place.
UNREADABLE_DEPTH = 100


def new_messages(welcome: Mapping[str, Any], seq_interval: int) -> tuple[dict[str, Any], Any]:
    """
    The parameters and body of a changes feed of new messages (with their conflicts), filtered
    as the server whose C{welcome} this is does best.
    """
    params: dict[str, Any] = {"conflicts": "true"}
    if supports_selector(welcome):
        # a seq for every change costs a cluster work on a large database: every so often
        # is enough for the checkpoint (a reconnect replays the rest, which is harmless)
        params.update(filter="_selector", seq_interval=seq_interval)
        return params, {"selector": NEW_SELECTOR}
    if rescans_filtered_feeds(welcome):
        # the "new" filter passes one write in three (a message's claim and outcome are
        # passed over), and this server would scan those again on every write: follow every
        # message's changes, and pass over at once those with nothing due
        params["filter"] = f"{DDOC}/messages"
    else:
        params["filter"] = f"{DDOC}/new"
    return params, None


def _read(node: Traversable) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        name, _, ext = child.name.rpartition(".")
        if child.is_dir():
            fields[child.name] = _read(child)
        elif ext == "json":
            fields[name] = json.loads(child.read_text("utf-8"))
        elif ext in ("js", "txt"):
            fields[name] = child.read_text("utf-8").strip()
    return fields


def _root() -> Traversable:
    """C{designdocs/}: packaged as C{couchgw.designdocs}, or beside C{couchgw/} in a source tree."""
    try:
        return files("couchgw.designdocs")
    except ModuleNotFoundError:
        return files("couchgw").joinpath("..", "designdocs")


def load() -> dict[str, Doc]:
    """The design documents, by id."""
    root = _root()
    return {
        f"_design/{folder.name}": {"_id": f"_design/{folder.name}", **_read(folder)}
        for folder in sorted(root.iterdir(), key=lambda c: c.name)
        if folder.is_dir() and not folder.name.startswith(("_", "."))
    }


def ours(doc_id: str) -> bool:
    """Whether a document is one of couchgw's design documents (its own or its guard's)."""
    return doc_id == PREFIX or doc_id.startswith(PREFIX + "-")


@dataclass(frozen=True)
class Found:
    """What L{read_ours} found in a database."""

    #: couchgw's design documents there, by id.
    docs: dict[str, Doc]
    #: How many documents it holds besides them (others' design documents count; deleted
    #: documents do not).
    others: int
    #: Its sequence (None where the server does not say).
    update_seq: Any


@inlineCallbacks
def read_ours(db: Database) -> Any:
    """
    couchgw's design documents in a database, how many documents it holds besides them and its
    sequence: one request (C{_all_docs} over the ids couchgw's design documents begin with).

    @return: a L{Deferred} firing with a L{Found}.
    """
    answer = yield db.json(
        "GET",
        "_all_docs",
        params={
            "startkey": PREFIX,
            "endkey": PREFIX + "-\ufff0",
            "include_docs": True,
            "update_seq": True,
        },
    )
    docs = {
        str(row["id"]): row["doc"]
        for row in answer.get("rows") or []
        if ours(str(row.get("id"))) and isinstance(row.get("doc"), dict)
    }
    total = int(answer.get("total_rows") or 0)
    return Found(docs, max(0, total - len(docs)), answer.get("update_seq"))


@inlineCallbacks
def push(db: Database, docs: dict[str, Doc] | None = None, found: Found | None = None) -> Any:
    """
    Write each design document that is missing or differs from the database's copy: one read
    of them all (none where they were just read: C{found}), one write of those that changed
    (one that another gateway wrote meanwhile is left as it wrote it).

    @return: a L{Deferred} firing with the ids written.
    """
    wanted = DOCS if docs is None else docs
    if found is not None and all(ours(doc_id) for doc_id in wanted):
        current = found.docs
    else:
        listed = yield db.all_docs(list(wanted), include_docs=True)
        current = {row["key"]: row.get("doc") for row in listed.get("rows", []) if "key" in row}
    changed = []
    for doc_id, doc in wanted.items():
        copy = current.get(doc_id)
        if copy is None:
            changed.append(doc)
        elif {k: v for k, v in copy.items() if k != "_rev"} != doc:
            changed.append({**doc, "_rev": copy["_rev"]})
    if not changed:
        return []
    results = yield db.bulk_docs(changed)
    written = []
    for result in results:
        if result.get("ok"):
            written.append(result["id"])
            log.info("design document {id} updated", id=result["id"])
        elif result.get("error") != "conflict":  # (another gateway wrote it meanwhile)
            status = BULK_STATUS.get(str(result.get("error")), 500)
            raise error_for(status, result, f"PUT {result.get('id')}")
    return written


@inlineCallbacks
def write_changed(db: Database, doc: Doc, current: Doc | None) -> Any:
    """
    Write a design document over the database's copy C{current} (None: there is none) unless
    they are the same; a L{Deferred} firing with whether it was written.
    """
    if current is not None:
        rev = current["_rev"]
        if {k: v for k, v in current.items() if k != "_rev"} == doc:
            return False
        doc = {**doc, "_rev": rev}
    yield db.put(doc)
    log.info("design document {id} updated", id=doc["_id"])
    return True


#: The design documents as this version of couchgw ships them.
DOCS = load()


# -- rows of the due view (views/due/map.js) ---------------------------------------------------


def route_of(row: Mapping[str, Any]) -> str | None:
    """The route a row of the C{due} view names (None: a target that is not a string)."""
    value = row.get("value")
    named = value[2] if isinstance(value, list) and len(value) > 2 else value
    if named is None:
        return DEFAULT_ROUTE
    return named if isinstance(named, str) else None


def claim_holder(row: Mapping[str, Any]) -> str:
    """The gateway holding the claim of a C{["claim", gateway]} row of the C{due} view."""
    key = row.get("key")
    return str(key[1]) if isinstance(key, list) and len(key) == 2 else ""


def unreadable(row: Mapping[str, Any], max_bytes: int) -> str | None:
    """Why a new message in the C{due} view is not to be read, or None: too large, too deep."""
    value, key = row.get("value"), row.get("key")
    new = isinstance(key, list) and len(key) == 2 and key[1] == 0
    if not new or not isinstance(value, list) or len(value) < 2:
        return None
    size, depth = value[:2]
    if isinstance(size, int) and size > max_bytes:
        return "too large"
    if isinstance(depth, int) and depth >= UNREADABLE_DEPTH:
        return "too deep"
    return None
