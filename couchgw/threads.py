"""A dedicated thread pool, started and stopped as a service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from couchgw.interfaces import IRunner

T = TypeVar("T")


@implementer(IRunner)
class ThreadPoolService(Service):
    """
    A L{ThreadPool} of its own (the reactor's default pool also resolves host names), so that
    slow calls never starve anything else.
    """

    def __init__(self, reactor: Any, size: int, name: str = "couchgw") -> None:
        self._reactor = reactor
        self.size = size
        self.pool = ThreadPool(minthreads=0, maxthreads=size, name=name)

    @property
    def busy(self) -> int:
        return len(self.pool.working)

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        return deferToThreadPool(self._reactor, self.pool, f, *args, **kwargs)

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Any:
        super().stopService()
        self.pool.stop()
        return succeed(None)
