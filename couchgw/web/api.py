"""
The HTTP API (Klein): health, readiness, status, metrics, routes, status events (SSE).

Where the gateway serves many databases, a message's events are under C{/db/<db>/}; C{/status}
names the databases only to those who may know them (a server admin, with C{--http-auth}; the
operator, on an API that listens on this machine alone).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from typing import Any

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from couchgw.couch.errors import NotFound
from couchgw.errors import describe_error
from couchgw.gateway import Gateway
from couchgw.message import TERMINAL
from couchgw.web.events import CATCH_UP_MAX, Event, Events, Hubs, Stream, event_of


def _json(request: IRequest, body: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, indent=2, sort_keys=True).encode("utf-8") + b"\n"


log = Logger()


class API:
    app = Klein()

    def __init__(
        self, gateway: Gateway, events: Events | Hubs, clock: Any = None, names: bool = True
    ) -> None:
        self.gateway = gateway
        if isinstance(events, Events):
            single = events
            events = Hubs(lambda name: single.db if name is None else None, single.clock)
            events.hubs[None] = single
        self.hubs = events
        #: Whether databases are named to whoever asks (without --http-auth: the API is the
        #: operator's, on this machine); with --http-auth, to server admins alone.
        self.names = names
        #: Streams that asked for the gateway's state (C{/events?gateway=1}), every few seconds,
        #: and whether they may be told the databases' names.
        self.watchers: dict[Stream, bool] = {}
        self._snapshots = LoopingCall(self._snapshot)
        if clock is not None:
            self._snapshots.clock = clock

    @app.route("/", methods=["GET"])
    def page(self, request: IRequest) -> bytes:
        """The live status page."""
        return _static(request, "index.html")

    @app.route("/static/<name>", methods=["GET"])
    def static(self, request: IRequest, name: str) -> bytes:
        if name not in STATIC:
            return _json(request, {"error": "not_found"}, 404)
        return _static(request, name)

    @inlineCallbacks
    def _snapshot(self) -> Any:
        """Send the gateway's state to the streams that watch it (one query for all)."""
        if not self.watchers:
            if self._snapshots.running:
                self._snapshots.stop()
            return
        states: dict[bool, Any] = {}
        for stream, names in list(self.watchers.items()):
            if names not in states:
                states[names] = yield self.gateway.status(names=names)
            stream.event("gateway", states[names])

    def _watch(self, stream: Stream, names: bool) -> None:
        self.watchers[stream] = names
        if not self._snapshots.running:
            self._snapshots.start(SNAPSHOT_INTERVAL).addErrback(
                lambda f: log.warn("snapshots stopped: {e}", e=f.getErrorMessage())
            )
        else:
            self._snapshot()

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

    @app.route("/metrics", methods=["GET"])
    @inlineCallbacks
    def metrics(self, request: IRequest) -> Any:
        """Prometheus text format."""
        metrics = self.gateway.metrics
        try:
            metrics.feed_lag = yield self.gateway.feed_lag()
        except Exception:
            metrics.feed_lag = None  # CouchDB does not answer: the other metrics still tell
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return generate_latest(metrics.registry)

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
        status = yield self.gateway.status(names=_may_name(request, self.names))
        return _json(request, status)

    @app.route("/events", methods=["GET"])
    def all_events(self, request: IRequest) -> Any:
        """
        Every message's status changes as they happen; with C{Last-Event-ID} (or C{?since=}),
        first those since that event.
        """
        last = request.getHeader(b"last-event-id")
        args = request.args  # type: ignore[attr-defined]
        if last is None:
            last = (args.get(b"since") or [None])[0]
        watch = (args.get(b"gateway") or [b""])[0] in (b"1", b"true")
        return self._subscribe(
            request, None, None, last.decode("utf-8", "replace") if last else None, watch
        )

    @app.route("/messages/<doc_id>/events", methods=["GET"])
    def message_events(self, request: IRequest, doc_id: str) -> Any:
        """One message's status now, then each change, closed after a terminal status."""
        return self._subscribe(request, None, doc_id, None)

    @app.route("/db/<db>/events", methods=["GET"])
    def database_events(self, request: IRequest, db: str) -> Any:
        """Every message's status changes in one database of those served."""
        last = request.getHeader(b"last-event-id")
        if last is None:
            last = (request.args.get(b"since") or [None])[0]  # type: ignore[attr-defined]
        return self._subscribe(request, db, None, last.decode("utf-8", "replace") if last else None)

    @app.route("/db/<db>/messages/<doc_id>/events", methods=["GET"])
    def database_message_events(self, request: IRequest, db: str, doc_id: str) -> Any:
        """One message's status now, then each change, in one database of those served."""
        return self._subscribe(request, db, doc_id, None)

    @inlineCallbacks
    def _subscribe(
        self,
        request: IRequest,
        db: str | None,
        doc_id: str | None,
        last_id: str | None,
        watch: bool = False,
    ) -> Any:
        hub = self.hubs.hub(db)
        if hub is None:
            reason = (
                f"no database {db!r} is served here"
                if db is not None
                else "this gateway serves many databases: name one, /db/<db>/..."
            )
            return _json(request, {"error": "not_found", "reason": reason}, 404)
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
            if pending is None:
                deliver(event)
            elif len(pending) < CATCH_UP_MAX:
                pending.append(event)
            elif stream is not None:
                stream.close()  # too much heard while catching up: the client comes back

        try:
            stop = yield hub.listen(heard, doc_id)
        except Exception as e:
            return _json(request, {"error": "unavailable", "reason": describe_error(e)}, 503)
        try:
            backlog: list[Event] = []
            if doc_id is not None:
                try:
                    backlog = [event_of((yield hub.db.get(doc_id)))]
                except NotFound:
                    pass
                except Exception as e:
                    return _json(
                        request, {"error": "unavailable", "reason": describe_error(e)}, 503
                    )
            stream = Stream(request, hub)
            for event in backlog:
                deliver(event)
            if doc_id is not None and not backlog:
                stream.comment(b"no such message yet: waiting for it")
            if last_id:
                kept = hub.since(last_id)
                if kept is not None:
                    for event in kept:
                        deliver(event)
                        seen.add((event.id, event.rev))
                else:
                    yield self._catch_up(hub, stream, last_id, deliver, seen)
            waiting, pending = pending or [], None
            for event in waiting:
                deliver(event)
            if watch:
                self._watch(stream, _may_name(request, self.names))
            yield stream.done
        finally:
            if stream is not None:
                stream.lost()
                self.watchers.pop(stream, None)
                if not self.watchers and self._snapshots.running:
                    self._snapshots.stop()
            stop()
        return None

    @inlineCallbacks
    def _catch_up(
        self,
        hub: Events,
        stream: Stream,
        since: str,
        deliver: Callable[[Event], None],
        seen: set[tuple[str, str]],
    ) -> Any:
        """
        The events since C{since} from CouchDB, a page at a time as the client reads them, and
        L{CATCH_UP_MAX} at most (then a C{gap} event: the client reads the documents again).
        """
        replayed = 0
        at: Any = since
        while not stream.done.called:
            try:
                events, at, more = yield hub.page(at)
            except Exception as e:
                log.warn("cannot catch up with the events: {error}", error=describe_error(e))
                stream.close()
                return
            for event in events:
                deliver(event)
                seen.add((event.id, event.rev))
            replayed += len(events)
            if not more:
                return
            if replayed >= CATCH_UP_MAX:
                stream.event(
                    "gap",
                    {
                        "since": since,
                        "replayed": replayed,
                        "reason": f"more than {CATCH_UP_MAX} changes since then: read the "
                        "documents again",
                    },
                )
                return
            yield stream.room()


def _may_name(request: IRequest, names: bool) -> bool:
    """Whether this request may be told the names of the databases served."""
    admin = getattr(request, "couchgw_admin", None)  # (set where --http-auth checked it)
    return names if admin is None else bool(admin)


#: The live page's files (in C{couchgw/web/}).
STATIC = {
    "index.html": b"text/html; charset=utf-8",
    "app.js": b"text/javascript; charset=utf-8",
    "style.css": b"text/css; charset=utf-8",
}
#: Seconds between the gateway snapshots sent to the live page.
SNAPSHOT_INTERVAL = 2.0


@cache
def _file(name: str) -> bytes:
    return files("couchgw.web").joinpath(name).read_bytes()


def _static(request: IRequest, name: str) -> bytes:
    request.setHeader(b"Content-Type", STATIC[name])
    request.setHeader(b"Cache-Control", b"no-cache")
    return _file(name)
