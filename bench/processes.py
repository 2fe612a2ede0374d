"""The processes a benchmark runs: PouchDB Server, the demo SOAP service and couchgw."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from couchgw.embedded import find_executable  # noqa: E402
from tests.servers import http, wait_until  # noqa: E402

TWISTD = str(Path(sys.executable).with_name("twistd"))


class Process:
    """A child process that can be killed and started again with the same command."""

    def __init__(
        self,
        argv: list[str],
        log: Path,
        cwd: Path = ROOT,
        ready: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv, self.log, self.cwd, self.ready = argv, log, cwd, ready
        #: Environment variables it gets beside this process's own.
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = False) -> None:
        """Start it; with C{wait}, until its C{ready} URL answers 200."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env={**os.environ, **self.env},
            )
        if wait:
            wait_until(lambda: up(self.ready), 60, self.ready)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def up(url: str, timeout: float = 2) -> bool:
    try:
        return http("GET", url, timeout=timeout)[0] == 200
    except OSError:
        return False


def couch(folder: Path, port: int, on_disk: bool) -> Process:
    """PouchDB Server on 127.0.0.1: in memory, or with its data in C{folder}/couch."""
    data = folder / "couch"
    data.mkdir(exist_ok=True)
    storage = ["--dir", str(data)] if on_disk else ["--in-memory"]
    argv = [find_executable(), "--port", str(port), "--host", "127.0.0.1", "--no-stdout-logs"]
    return Process(
        argv + storage, folder / "pouchdb.log", cwd=data, ready=f"http://127.0.0.1:{port}/"
    )


def demo(folder: Path, port: int, delay: float) -> Process:
    """The demo SOAP service; its log records each activation it starts and finishes."""
    argv = [sys.executable, "-u", "-m", "couchgw.demo", "--port", str(port), "--delay", str(delay)]
    return Process(argv, folder / "demo.log", ready=f"http://127.0.0.1:{port}/?wsdl")


def gateway(
    folder: Path,
    db: str,
    demo_port: int,
    api_port: int,
    *options: str,
    env: dict[str, str] | None = None,
) -> Process:
    """
    couchgw (twistd) on C{db}, routing to the demo, its API on C{api_port} (C{env}: environment
    variables beside this process's own).
    """
    argv = [
        TWISTD,
        "--nodaemon",
        "--pidfile=",
        "couchgw",
        "--couch",
        db,
        "--target",
        f"http://127.0.0.1:{demo_port}/?wsdl",
        "--http",
        f"tcp:{api_port}:interface=127.0.0.1",
        *options,
    ]
    return Process(
        argv, folder / "couchgw.log", ready=f"http://127.0.0.1:{api_port}/ready", env=env
    )
