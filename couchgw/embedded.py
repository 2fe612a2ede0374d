"""
The embedded CouchDB: PouchDB Server as a supervised child process.

It is for trying couchgw and for tests; production points C{--couch} at Apache CouchDB.  PouchDB
Server comes from the npm registry, pinned by couchgw's C{package.json} and C{package-lock.json}
(C{npm ci} in the source folder installs it).

Each start of the child gets a token of its own, written into its configuration (the C{couchgw}
key of its C{vendor} section, which its welcome document shows).  Requests reach the server
only through L{EmbeddedCouch.agent}, which lets them through once the server on the port
answered with that token: a server couchgw did not start, holding the port, is never used.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import treq
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, inlineCallbacks, succeed
from twisted.internet.error import ConnectError, ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent
from zope.interface import implementer

from couchgw.timing import Backoff

log = Logger()

EXECUTABLE_ENV = "COUCHGW_POUCHDB_SERVER"


class NotInstalled(Exception):
    pass


def find_executable(environ: dict[str, str] | None = None) -> str:
    """
    Where PouchDB Server is: C{$COUCHGW_POUCHDB_SERVER}, else C{node_modules/.bin/pouchdb-server}
    in the current folder or in couchgw's source folder.

    @raise NotInstalled: it is nowhere, or Node.js is missing.
    """
    environ = dict(os.environ) if environ is None else environ
    if shutil.which("node", path=environ.get("PATH")) is None:
        raise NotInstalled("the embedded CouchDB needs Node.js (node) on the PATH; or pass --couch")
    candidates = [environ[EXECUTABLE_ENV]] if environ.get(EXECUTABLE_ENV) else []
    source = Path(__file__).resolve().parent.parent
    candidates += [
        str(Path.cwd() / "node_modules/.bin/pouchdb-server"),
        str(source / "node_modules/.bin/pouchdb-server"),
    ]
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    raise NotInstalled(
        "the embedded CouchDB (PouchDB Server) is not installed: run `npm ci` in couchgw's "
        "source folder, set COUCHGW_POUCHDB_SERVER, or pass --couch URL"
    )


class _Child(ProcessProtocol):
    def __init__(self, owner: EmbeddedCouch) -> None:
        self.owner = owner
        self.ended: Deferred[None] = Deferred()
        self._tail = b""

    def errReceived(self, data: bytes) -> None:
        self._tail = (self._tail + data)[-2000:]

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.owner._ended(self, reason, self._tail.decode("utf-8", "replace").strip())


class EmbeddedCouch(Service):
    """
    Runs PouchDB Server on C{127.0.0.1:port} with its data in C{data_dir}, restarts it when it
    dies, and stops it (SIGTERM, then SIGKILL after C{kill_after} seconds) when the service stops.
    """

    def __init__(
        self,
        reactor: Any,
        data_dir: str,
        port: int = 5984,
        executable: str | None = None,
        in_memory: bool = False,
        kill_after: float = 10.0,
    ) -> None:
        self._reactor = reactor
        self.data_dir = Path(data_dir)
        self.port = port
        self.executable = executable
        self.in_memory = in_memory
        self.kill_after = kill_after
        self.restarts = 0
        self._child: _Child | None = None
        self._process: Any = None
        self._backoff = Backoff(base=0.5, cap=30.0)
        self._respawn: IDelayedCall | None = None
        #: The token of the child now running; whether the server on the port answered with
        #: it; why not, when something else answers there.
        self.token: str | None = None
        self.verified = False
        self.stranger: str | None = None
        self._verified: list[Deferred[None]] = []
        self._checking: Deferred[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def startService(self) -> None:
        super().startService()
        self._spawn()

    def _spawn(self) -> None:
        self._respawn = None
        executable = self.executable or find_executable()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [executable, "--port", str(self.port), "--host", "127.0.0.1", "--no-stdout-logs"]
        if self.in_memory:
            args.append("--in-memory")
        else:
            args += ["--dir", str(self.data_dir.resolve())]
        self.token, self.verified, self.stranger = uuid.uuid4().hex, False, None
        self._write_token(self.token)
        self._child = _Child(self)
        # PouchDB Server writes config.json and log.txt into its working folder.
        self._process = self._reactor.spawnProcess(
            self._child, executable, args, env=dict(os.environ), path=str(self.data_dir)
        )
        log.info(
            "embedded CouchDB (PouchDB Server) starting at {url}, data in {dir}",
            url=self.url,
            dir=self.data_dir,
        )
        if self._checking is not None:
            self._checking.cancel()  # the check of the child before this one (it may wait)
        self._checking = self._verify(self._child)
        self._checking.addErrback(_unless_cancelled, "cannot check the embedded CouchDB")

    def _write_token(self, token: str) -> None:
        config = self.data_dir / "config.json"
        try:
            settings = json.loads(config.read_text("utf-8"))
        except (OSError, ValueError):
            settings = {}
        if not isinstance(settings, dict):
            settings = {}
        vendor = settings.get("vendor")
        settings["vendor"] = {**(vendor if isinstance(vendor, dict) else {}), "couchgw": token}
        config.write_text(json.dumps(settings, indent=2), "utf-8")

    @inlineCallbacks
    def _verify(self, child: _Child) -> Any:
        """Ask the port until the child answers with its token (for as long as it runs)."""
        while child is self._child and self.running:
            try:
                response = yield treq.get(
                    self.url + "/", timeout=2, persistent=False, reactor=self._reactor
                )
                welcome = yield response.json()
            except CancelledError:
                raise  # (the service stops, or a new child is checked)
            except Exception:
                welcome = None
            if child is not self._child or not self.running:
                return
            vendor = welcome.get("vendor") if isinstance(welcome, dict) else None
            if isinstance(vendor, dict) and vendor.get("couchgw") == self.token:
                self.verified, self.stranger = True, None
                waiting, self._verified = self._verified, []
                for waiter in waiting:
                    waiter.callback(None)
                return
            if welcome is not None and self.stranger is None:
                self.stranger = (
                    f"a server couchgw did not start answers on 127.0.0.1:{self.port}; the "
                    "embedded CouchDB does not use it (pass --couch to use that server, or "
                    "--embedded-port for another port)"
                )
                log.error("{why}", why=self.stranger)
                waiting, self._verified = self._verified, []
                for waiter in waiting:  # (they would wait in vain while it holds the port)
                    waiter.errback(ConnectError(string=self.stranger))
                if child is not self._child or not self.running:
                    return  # (what they went on to do stopped the service)
            yield deferLater(self._reactor, 0.2, lambda: None)

    def agent(self, agent: IAgent, wait: float = 5.0) -> IAgent:
        """C{agent}, letting requests through once the server on the port is the child."""
        return _OwnServer(self, agent, wait)

    def _when_verified(self, wait: float) -> Deferred[None]:
        if self.verified:
            return succeed(None)
        if self.stranger is not None:
            return fail(ConnectError(string=self.stranger))
        waiter: Deferred[None] = Deferred()
        self._verified.append(waiter)
        waiter.addTimeout(wait, self._reactor)

        def late(failure: Failure) -> Failure:
            if waiter in self._verified:
                self._verified.remove(waiter)
            why = self.stranger or f"the embedded CouchDB is not up on 127.0.0.1:{self.port}"
            return Failure(ConnectError(string=why))

        return waiter.addErrback(late)

    def _ended(self, child: _Child, reason: Failure, stderr: str) -> None:
        if child is not self._child:
            return
        self._child = self._process = None
        self.verified = False
        if not self.running:
            return
        self.restarts += 1
        delay = self._backoff.next()
        why = "exited" if reason.check(ProcessDone) else reason.getErrorMessage()
        log.error(
            "embedded CouchDB {why}{detail}; restarting in {delay:.1f}s",
            why=why,
            detail=f" ({stderr.splitlines()[-1]})" if stderr else "",
            delay=delay,
        )
        self._respawn = self._reactor.callLater(delay, self._spawn)

    def kill(self) -> None:
        """Kill the child at once (as a crash would); the supervisor restarts it."""
        if self._process is not None:
            self._process.signalProcess("KILL")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._respawn is not None and self._respawn.active():
            self._respawn.cancel()
        if self._checking is not None:
            self._checking.cancel()
        child, process = self._child, self._process
        if child is None or process is None:
            return succeed(None)
        try:
            process.signalProcess("TERM")
        except ProcessExitedAlready:
            return succeed(None)

        def kill() -> None:
            try:
                process.signalProcess("KILL")
            except ProcessExitedAlready:
                pass

        killer = self._reactor.callLater(self.kill_after, kill)

        def ended(result: None) -> None:
            if killer.active():
                killer.cancel()

        return child.ended.addCallback(ended)


def _unless_cancelled(failure: Failure, what: str) -> None:
    if not failure.check(CancelledError):
        log.failure(what, failure)


@implementer(IAgent)
class _OwnServer:
    """An agent whose requests wait (up to C{wait} seconds) for the embedded server's check."""

    def __init__(self, couch: EmbeddedCouch, agent: IAgent, wait: float) -> None:
        self._couch = couch
        self._agent = agent
        self._wait = wait

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
    ) -> Deferred[Any]:
        if self._couch.verified:
            return self._agent.request(method, uri, headers, bodyProducer)
        if not self._couch.running:
            return fail(ConnectError(string="the embedded CouchDB is stopped"))
        checked = self._couch._when_verified(self._wait)
        return checked.addCallback(
            lambda _: self._agent.request(method, uri, headers, bodyProducer)
        )
