"""The HTTP API (Klein): health, readiness, status and routes."""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.internet.defer import inlineCallbacks
from twisted.web.iweb import IRequest

from couchgw.gateway import Gateway


def _json(request: IRequest, body: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, indent=2, sort_keys=True).encode("utf-8") + b"\n"


class API:
    app = Klein()

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

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
