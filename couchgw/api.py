"""The HTTP API (Klein): health, readiness and status."""

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

    @app.route("/status", methods=["GET"])
    @inlineCallbacks
    def status(self, request: IRequest) -> Any:
        status = yield self.gateway.status()
        return _json(request, status)
