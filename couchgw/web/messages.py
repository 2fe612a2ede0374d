"""
The console's messages in one database: a page of a listing, one message whole, and an
operator's actions (requeue, cancel) on one message or on every message a selection holds.

Listings read the console's index (L{couchgw.console}); an action is written over the revision
read, so that a message that changed meanwhile (a 409) is left alone and counted so.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from couchgw import console, message
from couchgw.couch import design
from couchgw.couch.client import Database
from couchgw.couch.errors import Conflict, NotFound
from couchgw.message import Doc

log = Logger()

#: Messages left alone that a bulk action's answer names (with why), at most.
NAMED = 100


class Messages:
    """The console's view of one database, through the gateway's credentials."""

    def __init__(self, db: Database, clock: IReactorTime) -> None:
        self.db = db
        self.clock = clock

    @inlineCallbacks
    def page(
        self,
        selection: console.Selection,
        limit: int = console.DEFAULT_LIMIT,
        cursor: str | None = None,
        count: bool = False,
    ) -> Any:
        """
        A page of the messages C{selection} holds, newest first (by id with C{q}): C{messages},
        C{next} (the cursor of the next page, or None) and, with C{count}, C{total}.
        """
        docs, following = yield self._read(selection, console.position_of(cursor, selection), limit)
        answer: dict[str, Any] = {
            "messages": [console.summary(doc) for doc in docs],
            "next": following,
        }
        if count and selection.q is None:
            counts = yield self._view(console.count_params(selection))
            answer["total"] = console.counted(counts)
        return answer

    @inlineCallbacks
    def _read(self, selection: console.Selection, position: Any, limit: int) -> Any:
        if selection.q is not None:
            params = console.ids_params(selection, position, console.SCANNED)
            answer = yield self.db.json("GET", "_all_docs", params=params)
            return console.ids_page(answer, selection, limit, console.SCANNED)
        # the index is brought up to date as it is read: a while, the first time on a large one
        answer = yield self._view(console.view_params(selection, position, limit))
        return console.view_page(answer, limit)

    @inlineCallbacks
    def _view(self, params: dict[str, Any]) -> Any:
        """
        The console's index; where it is missing (a gateway serving many databases writes the
        design documents of one when it first needs them), written first.
        """
        try:
            answer = yield self.db.view(console.DDOC, console.VIEW, timeout=600, **params)
        except NotFound as e:
            if console.DDOC not in str(e):
                raise
            yield design.push(self.db)
            answer = yield self.db.view(console.DDOC, console.VIEW, timeout=600, **params)
        return answer

    @inlineCallbacks
    def one(self, doc_id: str) -> Any:
        """A message whole (L{console.whole}); None when there is no such message."""
        try:
            doc = yield self.db.get(doc_id)
        except NotFound:
            return None
        if not message.is_message(doc):
            return None
        return console.whole(doc, self.clock.seconds())

    @inlineCallbacks
    def act(self, doc_id: str, action: str, by: str) -> Any:
        """
        Requeue or cancel one message: C{(200, what it is now)}, C{(404, ...)}, or C{(409, why
        not)} when the action does not apply to it or it changed meanwhile.
        """
        try:
            doc = yield self.db.get(doc_id)
        except NotFound:
            doc = None
        if doc is None or not message.is_message(doc):
            return 404, {"error": "not_found", "reason": f"no message {doc_id!r}"}
        why = message.refusal(action, doc)
        if why is not None:
            return 409, {"error": "not_applicable", "reason": why}
        written = message.apply(doc, self._fields(action, doc, by))
        try:
            answer = yield self.db.put(written)
        except Conflict:
            return 409, {"error": "conflict", "reason": "the message changed meanwhile: look again"}
        log.info("{id} {done} by {by}", id=doc_id, done=message.DONE[action], by=by)
        return 200, console.summary({**written, "_rev": answer["rev"]})

    @inlineCallbacks
    def act_all(self, selection: console.Selection, action: str, by: str) -> Any:
        """
        Requeue or cancel every message C{selection} holds, a batch at a time: C{done}, the
        count left alone (C{left_alone}: changed meanwhile, or the action no longer applies),
        and the first L{NAMED} of those with why (C{left}).
        """
        done, left_alone = 0, 0
        left: list[dict[str, str]] = []
        position = None
        while True:
            docs, following = yield self._read(selection, position, console.BATCH)
            writes, ids = [], []
            for doc in docs:
                why = message.refusal(action, doc)
                if why is not None:
                    left_alone += 1
                    if len(left) < NAMED:
                        left.append({"id": doc["_id"], "reason": why})
                    continue
                writes.append(message.apply(doc, self._fields(action, doc, by)))
                ids.append(doc["_id"])
            results = (yield self.db.bulk_docs(writes)) if writes else []
            for doc_id, result in zip(ids, results, strict=True):
                if result.get("error"):
                    left_alone += 1
                    if len(left) < NAMED:
                        reason = (
                            "it changed meanwhile"
                            if result["error"] == "conflict"
                            else f"{result['error']}: {result.get('reason', '')}"
                        )
                        left.append({"id": doc_id, "reason": reason})
                else:
                    done += 1
            if following is None:
                break
            position = console.position_of(following, selection)
        log.info(
            "{action} {done} {status} message(s) by {by} ({left} left alone)",
            action=message.DONE[action],
            done=done,
            status=selection.status,
            by=by,
            left=left_alone,
        )
        return {"action": action, "done": done, "left_alone": left_alone, "left": left}

    def _fields(self, action: str, doc: Doc, by: str) -> dict[str, Any]:
        now = self.clock.seconds()
        return (
            message.requeued(doc, by, now) if action == "requeue" else message.cancelled_by(by, now)
        )
