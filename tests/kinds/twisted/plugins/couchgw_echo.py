"""
A kind of route supplied by a package other than couchgw, as a Twisted plugin: with this folder's
parent on PYTHONPATH, routes of C{kind = "echo"} answer each message with what it asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.plugin import IPlugin
from zope.interface import implementer

from couchgw.interfaces import ITarget, ITargetFactory


@implementer(ITarget)
class EchoTarget:
    kind = "echo"
    concurrency = 10
    busy = 0
    timeout = 5.0

    def __init__(self, name: str, prefix: str) -> None:
        self.name = name
        self.prefix = prefix
        self.state = "loading"
        self.error: str | None = None

    def load(self) -> Deferred[None]:
        self.state = "ready"
        return succeed(None)

    def prepare(self, operation: str | None, args: Any) -> Any:
        return operation, args

    def call(
        self, prepared: Any, message_id: str, headers: Mapping[str, str] | None = None
    ) -> Deferred[Any]:
        operation, args = prepared
        return succeed({"echo": args, "operation": operation, "id": message_id, "by": self.prefix})

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "state": self.state, "prefix": self.prefix}


@implementer(IPlugin, ITargetFactory)
class EchoKind:
    kind = "echo"

    def build(self, config: Any, reactor: Any, parent: Any) -> EchoTarget:
        unknown = sorted(set(config.options) - {"prefix"})
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}")
        return EchoTarget(config.name, str(config.options.get("prefix", "echo")))


echo = EchoKind()
