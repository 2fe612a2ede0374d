"""
The HTTP API (Klein): health, readiness, status, metrics, routes, status events (SSE), and the
console: messages listed, one whole, requeued and cancelled (L{couchgw.web.messages}).

Where the gateway serves many databases, what is about messages is under C{/db/<db>/}; C{/status}
names the databases only to those who may know them (a server admin, with C{--http-auth}; the
operator, on an API that listens on this machine alone).  Only operators act on messages (the
database's admins or C{--operator-role}, with C{--http-auth}; without it, whoever reaches an API
that listens on this machine alone), with a POST from no other site.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from couchgw import console
from couchgw.couch.errors import CouchError, NotFound
from couchgw.errors import describe_error
from couchgw.gateway import Gateway
from couchgw.message import TERMINAL
from couchgw.web.events import CATCH_UP_MAX, Event, Events, Hubs, event_of
from couchgw.web.messages import Messages
from couchgw.web.requests import (
    answer,
    cross_site,
    may_name,
    params,
    refused,
    unavailable,
    who,
)
from couchgw.web.streams import Stream, catch_up
from couchgw.web.throughput import Throughput

log = Logger()


class API:
    app = Klein()

    def __init__(
        self,
        gateway: Gateway,
        events: Events | Hubs,
        clock: Any = None,
        names: bool = True,
        throughput: Throughput | None = None,
    ) -> None:
        self.gateway = gateway
        if clock is None:
            from twisted.internet import reactor as clock
        #: The time of actions, and of the gateway's snapshots.
        self.clock: Any = clock
        self.throughput = throughput
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
        self._snapshots.clock = clock

    @app.route("/", methods=["GET"])
    @app.route("/db/<db>/", methods=["GET"], endpoint="database_page")
    def page(self, request: IRequest, db: str | None = None) -> bytes:
        """The live page and console (of one database of many, under C{/db/<db>/})."""
        return _static(request, "index.html")

    @app.route("/static/<name>", methods=["GET"])
    def static(self, request: IRequest, name: str) -> bytes:
        if name not in STATIC:
            return answer(request, {"error": "not_found"}, 404)
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
                states[names] = yield self._state(names)
            stream.event("gateway", states[names])

    @inlineCallbacks
    def _state(self, names: bool) -> Any:
        """The gateway's state, and the throughput it measured."""
        state = yield self.gateway.status(names=names)
        if self.throughput is not None:
            state = {**state, "throughput": self.throughput.describe()}
        return state

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
        return answer(request, {"status": "ok"})

    @app.route("/ready", methods=["GET"])
    def ready(self, request: IRequest) -> bytes:
        """Readiness: CouchDB answers, the feed is connected, the routes are loaded."""
        problems = self.gateway.problems()
        if problems:
            return answer(request, {"ready": False, "problems": problems}, 503)
        return answer(request, {"ready": True, "problems": []})

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
        return answer(
            request, {name: gateway.route(name, True) for name in sorted(gateway.targets)}
        )

    @app.route("/routes/<name>", methods=["GET"])
    def route(self, request: IRequest, name: str) -> bytes:
        if name not in self.gateway.targets:
            return answer(request, {"error": "not_found", "reason": f"no route {name!r}"}, 404)
        return answer(request, self.gateway.route(name, True))

    @app.route("/status", methods=["GET"])
    @inlineCallbacks
    def status(self, request: IRequest) -> Any:
        status = yield self._state(may_name(request, self.names))
        return answer(request, status)

    @app.route("/events", methods=["GET"])
    def all_events(self, request: IRequest) -> Any:
        """
        Every message's status changes as they happen; with C{Last-Event-ID} (or C{?since=}),
        first those since that event.
        """
        return self._subscribe(request, None, None, *_since(request))

    @app.route("/messages/<doc_id>/events", methods=["GET"])
    def message_events(self, request: IRequest, doc_id: str) -> Any:
        """One message's status now, then each change, closed after a terminal status."""
        return self._subscribe(request, None, doc_id, None)

    @app.route("/db/<db>/events", methods=["GET"])
    def database_events(self, request: IRequest, db: str) -> Any:
        """Every message's status changes in one database of those served."""
        return self._subscribe(request, db, None, *_since(request))

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
        if hub is None and watch and db is None:  # many databases served: the gateway's alone
            return self._gateway_only(request)
        if hub is None:
            reason = (
                f"no database {db!r} is served here"
                if db is not None
                else "this gateway serves many databases: name one, /db/<db>/..."
            )
            return answer(request, {"error": "not_found", "reason": reason}, 404)
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
            return answer(request, {"error": "unavailable", "reason": describe_error(e)}, 503)
        try:
            backlog: list[Event] = []
            if doc_id is not None:
                try:
                    backlog = [event_of((yield hub.db.get(doc_id)))]
                except NotFound:
                    pass
                except Exception as e:
                    return answer(
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
                    yield catch_up(hub, stream, last_id, deliver, seen, CATCH_UP_MAX)
            waiting, pending = pending or [], None
            for event in waiting:
                deliver(event)
            if watch:
                self._watch(stream, may_name(request, self.names))
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
    def _gateway_only(self, request: IRequest) -> Any:
        """A stream of the gateway's state alone (where many databases are served)."""
        stream = Stream(request, None)
        try:
            self._watch(stream, may_name(request, self.names))
            yield stream.done
        finally:
            stream.lost()
            self.watchers.pop(stream, None)
            if not self.watchers and self._snapshots.running:
                self._snapshots.stop()

    # -- the console: messages listed, one whole, requeued and cancelled ----------------------

    @app.route("/messages", methods=["GET"])
    @app.route("/db/<db>/messages", methods=["GET"], endpoint="database_messages")
    @inlineCallbacks
    def messages(self, request: IRequest, db: str | None = None) -> Any:
        """
        A page of messages, newest first: C{?status=S&route=R&since=T&q=PREFIX&limit=N&cursor=C}
        (C{count=1}: and how many the selection holds).
        """
        found = self._database(request, db)
        if isinstance(found, bytes):
            return found
        given = params(request)
        try:
            selection = console.selection_of(given, self.clock.seconds())
            limit = console.limit_of(given.get("limit"))
            page = yield found.page(
                selection, limit, given.get("cursor"), given.get("count") in ("1", "true")
            )
        except console.BadRequest as e:
            return answer(request, {"error": "bad_request", "reason": str(e)}, 400)
        except CouchError as e:
            return unavailable(request, e)
        return answer(request, page)

    @app.route("/messages/<doc_id>", methods=["GET"])
    @app.route("/db/<db>/messages/<doc_id>", methods=["GET"], endpoint="database_message")
    @inlineCallbacks
    def message(self, request: IRequest, doc_id: str, db: str | None = None) -> Any:
        """One message whole (L{console.whole})."""
        found = self._database(request, db)
        if isinstance(found, bytes):
            return found
        try:
            whole = yield found.one(doc_id)
        except CouchError as e:
            return unavailable(request, e)
        if whole is None:
            return answer(request, {"error": "not_found", "reason": f"no message {doc_id!r}"}, 404)
        return answer(request, whole)

    @app.route("/messages/<doc_id>/<action>", methods=["POST"])
    @app.route("/db/<db>/messages/<doc_id>/<action>", methods=["POST"], endpoint="database_act")
    @inlineCallbacks
    def act(self, request: IRequest, doc_id: str, action: str, db: str | None = None) -> Any:
        """C{POST .../requeue} or C{.../cancel}: one message."""
        found = self._acting(request, db, action)
        if isinstance(found, bytes):
            return found
        try:
            code, body = yield found.act(doc_id, action, who(request))
        except CouchError as e:
            return unavailable(request, e)
        return answer(request, body, code)

    @app.route("/messages/<action>", methods=["POST"])
    @app.route("/db/<db>/messages/<action>", methods=["POST"], endpoint="database_act_all")
    @inlineCallbacks
    def act_all(self, request: IRequest, action: str, db: str | None = None) -> Any:
        """C{POST /messages/requeue?status=failed&route=R&since=T}: every message selected."""
        found = self._acting(request, db, action)
        if isinstance(found, bytes):
            return found
        try:
            selection = console.selection_of(params(request), self.clock.seconds())
            console.action_selection(action, selection)
            done = yield found.act_all(selection, action, who(request))
        except console.BadRequest as e:
            return answer(request, {"error": "bad_request", "reason": str(e)}, 400)
        except CouchError as e:
            return unavailable(request, e)
        return answer(request, done)

    @app.route("/me", methods=["GET"])
    @app.route("/db/<db>/me", methods=["GET"], endpoint="database_me")
    def me(self, request: IRequest, db: str | None = None) -> bytes:
        """Who asks, and whether they may act on messages (and why not)."""
        why = refused(request, self.names)
        return answer(request, {"user": who(request), "may_act": why is None, "why": why})

    def _database(self, request: IRequest, db: str | None) -> Messages | bytes:
        database = self.hubs.database(db)
        if database is None:
            reason = (
                f"no database {db!r} is served here"
                if db is not None
                else "this gateway serves many databases: name one, /db/<db>/..."
            )
            return answer(request, {"error": "not_found", "reason": reason}, 404)
        return Messages(database, self.clock)

    def _acting(self, request: IRequest, db: str | None, action: str) -> Messages | bytes:
        if action not in console.ACTIONS:
            return answer(request, {"error": "not_found", "reason": f"no action {action!r}"}, 404)
        why = refused(request, self.names) or cross_site(request)
        if why is not None:
            return answer(request, {"error": "forbidden", "reason": why}, 403)
        return self._database(request, db)


#: The live page's files (in C{couchgw/web/}).
STATIC = {
    "index.html": b"text/html; charset=utf-8",
    "app.js": b"text/javascript; charset=utf-8",
    "console.js": b"text/javascript; charset=utf-8",
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


def _since(request: IRequest) -> tuple[str | None, bool]:
    """
    Where a stream of every message's changes begins (C{Last-Event-ID}, or C{?since=}; None:
    from now), and whether it brings the gateway's state too (C{?gateway=1}).
    """
    last = request.getHeader(b"last-event-id")
    args = request.args  # type: ignore[attr-defined]
    if last is None:
        last = (args.get(b"since") or [None])[0]
    watch = (args.get(b"gateway") or [b""])[0] in (b"1", b"true")
    return (last.decode("utf-8", "replace") if last else None), watch
