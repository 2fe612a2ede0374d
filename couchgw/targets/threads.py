"""A dedicated thread pool, started and stopped as a service."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from couchgw.targets.interfaces import IRunner

T = TypeVar("T")
log = Logger()


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    return threading.Thread(*args, daemon=True, **kwargs)


@implementer(IRunner)
class ThreadPoolService(Service):
    """
    A L{ThreadPool} of its own (the reactor's default pool also resolves host names), so that
    slow calls never starve anything else.

    A thread cannot be killed: a call may outlive its timeout.  So the threads are daemons, and
    a stop with calls still running does not wait for them (the process may exit under them).
    """

    def __init__(self, reactor: Any, size: int, name: str = "couchgw") -> None:
        self._reactor = reactor
        self.size = size
        self.pool = ThreadPool(minthreads=0, maxthreads=size, name=name)
        self.pool.threadFactory = _daemon_thread  # type: ignore[assignment]

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
        if self.busy:
            log.warn("{n} call(s) still running are abandoned", n=self.busy)
            threading.Thread(target=self.pool.stop, daemon=True).start()
        else:
            self.pool.stop()
        return succeed(None)
