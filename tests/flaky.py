"""
A real target put out of order at will: a TCP front on a port of its own, in this process, for
a target that runs behind it (the demo service, over SOAP or JSON).  Its modes are the outages a
route meets:

- C{up}: every byte goes through, both ways;
- C{refused}: nothing listens on its port (a connection is refused);
- C{drop}: a connection is accepted, and closed without an answer once the request came;
- C{503}: each request is answered C{503 Service Unavailable};
- C{silent}: a connection is accepted and never answered, until the outage ends (then closed).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ClientFactory, Factory, Protocol

MODES = ("up", "refused", "drop", "503", "silent")


class _Back(Protocol):
    def connectionMade(self) -> None:
        front: _Front = self.factory.front  # type: ignore[attr-defined]
        front.back = self
        if front.buffered:
            self.transport.write(b"".join(front.buffered))  # type: ignore[union-attr]
            front.buffered.clear()

    def dataReceived(self, data: bytes) -> None:
        front: _Front = self.factory.front  # type: ignore[attr-defined]
        front.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        front: _Front = self.factory.front  # type: ignore[attr-defined]
        front.transport.loseConnection()  # type: ignore[union-attr]


class _Front(Protocol):
    def __init__(self, flaky: Flaky) -> None:
        self.flaky = flaky
        self.mode = flaky.mode
        self.back: _Back | None = None
        self.buffered: list[bytes] = []
        self.received = b""

    def connectionMade(self) -> None:
        self.flaky.open.add(self)
        if self.mode == "up":
            factory = ClientFactory.forProtocol(_Back)
            factory.front = self  # type: ignore[attr-defined]
            reactor.connectTCP("127.0.0.1", self.flaky.backend, factory)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.mode == "up":
            if self.back is None:
                self.buffered.append(data)
            else:
                self.back.transport.write(data)  # type: ignore[union-attr]
            return
        self.received += data
        if b"\r\n\r\n" not in self.received:
            return  # the request's head is not all there yet
        self.flaky.failed += 1
        if self.mode == "drop":
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif self.mode == "503":
            self.transport.write(  # type: ignore[union-attr]
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n"
            )
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.flaky.open.discard(self)
        if self.back is not None:
            self.back.transport.loseConnection()  # type: ignore[union-attr]


class Flaky:
    """
    @param backend: the port of the target behind it, on 127.0.0.1.
    """

    def __init__(self, backend: int) -> None:
        self.backend = backend
        self.mode = "up"
        #: Requests that met an outage (drop, 503, silent).
        self.failed = 0
        self.open: set[_Front] = set()
        self.port = 0
        self._listening: Any = None

    def start(self) -> int:
        """Listen (on a free port the first time, then on the same one); answers the port."""
        factory = Factory()
        factory.buildProtocol = lambda addr: _Front(self)  # type: ignore[method-assign]
        self._listening = reactor.listenTCP(self.port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.port = self._listening.getHost().port
        return self.port

    def set(self, mode: str) -> Deferred[None]:
        """Put the target in C{mode}; fires once it is so."""
        assert mode in MODES, mode
        self.mode = mode
        stopped: Deferred[None] = succeed(None)
        if mode == "refused" and self._listening is not None:
            stopped = self._listening.stopListening()
            self._listening = None
        elif mode != "refused" and self._listening is None:
            self.start()
        for front in list(self.open):  # connections made before: the target went, or came back
            if front.mode != mode:
                front.transport.abortConnection()  # type: ignore[union-attr]
        return stopped

    def stop(self) -> Deferred[None] | None:
        for front in list(self.open):
            front.transport.abortConnection()  # type: ignore[union-attr]
        if self._listening is not None:
            listening, self._listening = self._listening, None
            return listening.stopListening()  # type: ignore[no-any-return]
        return None
