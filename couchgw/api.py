"""The HTTP API (Klein): health, readiness, status, routes, and status events (SSE)."""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.internet.defer import inlineCallbacks
from twisted.web.iweb import IRequest

from couchgw.couch import NotFound
from couchgw.events import Event, Events, Stream, event_of
from couchgw.gateway import Gateway, describe_error
from couchgw.message import TERMINAL


def _json(request: IRequest, body: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, indent=2, sort_keys=True).encode("utf-8") + b"\n"


class API:
    app = Klein()

    def __init__(self, gateway: Gateway, events: Events) -> None:
        self.gateway = gateway
        self.events = events

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """Liveness: the process runs and its reactor answers."""
        return _json(request, {"status": "ok"})

    @app.route("/ready", methods=["GET"])
    def ready(self, request: IRequest) -> bytes:
        """Readiness: CouchDB answers, the feed is connected, the routes are loaded."""
        problems = self.gateway.problems()
        if problems:
            return _json(request, {"ready": False, "problems": problems}, 503)
        return _json(request, {"ready": True, "problems": []})

    @app.route("/routes", methods=["GET"])
    def routes(self, request: IRequest) -> bytes:
        """Every route: kind, state, policy, and what its target offers (SOAP operations)."""
        gateway = self.gateway
        return _json(request, {name: gateway.route(name, True) for name in sorted(gateway.targets)})

    @app.route("/routes/<name>", methods=["GET"])
    def route(self, request: IRequest, name: str) -> bytes:
        if name not in self.gateway.targets:
            return _json(request, {"error": "not_found", "reason": f"no route {name!r}"}, 404)
        return _json(request, self.gateway.route(name, True))

    @app.route("/status", methods=["GET"])
    @inlineCallbacks
    def status(self, request: IRequest) -> Any:
        status = yield self.gateway.status()
        return _json(request, status)

    @app.route("/events", methods=["GET"])
    def all_events(self, request: IRequest) -> Any:
        """
        Every message's status changes as they happen; with C{Last-Event-ID} (or C{?since=}),
        first those since that event.
        """
        last = request.getHeader(b"last-event-id")
        if last is None:
            last = (request.args.get(b"since") or [None])[0]  # type: ignore[attr-defined]
        return self._subscribe(request, None, last.decode("utf-8", "replace") if last else None)

    @app.route("/messages/<doc_id>/events", methods=["GET"])
    def message_events(self, request: IRequest, doc_id: str) -> Any:
        """One message's status now, then each change, closed after a terminal status."""
        return self._subscribe(request, doc_id, None)

    @inlineCallbacks
    def _subscribe(self, request: IRequest, doc_id: str | None, last_id: str | None) -> Any:
        hub = self.events
        pending: list[Event] | None = []
        stream: Stream | None = None
        seen: set[tuple[str, str]] = set()
        newest = 0

        def deliver(event: Event) -> None:
            nonlocal newest
            assert stream is not None
            if doc_id is not None:
                if event.generation <= newest:
                    return  # already sent (read from the document before the feed brought it)
                newest = event.generation
            elif (event.id, event.rev) in seen:
                return
            stream.send(event)
            if doc_id is not None and event.status in TERMINAL:
                stream.close()

        def heard(event: Event) -> None:
            if pending is not None:
                pending.append(event)
            else:
                deliver(event)

        try:
            stop = yield hub.listen(heard, doc_id)
        except Exception as e:
            return _json(request, {"error": "unavailable", "reason": describe_error(e)}, 503)
        try:
            backlog: list[Event] = []
            if doc_id is not None:
                try:
                    backlog = [event_of((yield self.gateway.db.get(doc_id)))]
                except NotFound:
                    pass
            elif last_id:
                kept = hub.since(last_id)
                backlog = kept if kept is not None else (yield hub.catch_up(last_id))
            stream = Stream(request, hub)
            for event in backlog:
                deliver(event)
                seen.add((event.id, event.rev))
            if doc_id is not None and not backlog:
                stream.comment(b"no such message yet: waiting for it")
            waiting, pending = pending or [], None
            for event in waiting:
                deliver(event)
            yield stream.done
        finally:
            if stream is not None:
                stream.lost()
            stop()
        return None
