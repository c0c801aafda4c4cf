"""Where a terminal's peer links come from: TCP sockets, or an in-memory network.

The mesh speaks TLS and WebSocket over whatever byte stream a transport hands it; the transport
only listens and connects.  :class:`TcpTransport` is the product's (a bound socket).
:class:`MemoryNetwork` joins terminals running in one process - the same TLS, framing, sync and
cashier code - with links that can be cut and healed (a Wi-Fi split: bytes vanish, nobody is
told, heartbeats notice) and a per-message delay.  It makes no system calls, so under a virtual
clock a run depends only on its seed (the partition simulator's network).
"""

from __future__ import annotations

import errno
import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

Handler = Callable[[ByteStream, str], Awaitable[None]]


class Transport(Protocol):
    host: str
    port: int

    async def serve(self, handler: Handler) -> None:
        """Accept connections for good, each handed to ``handler(stream, remote address)`` in a task."""

    async def connect(self, host: str, port: int) -> ByteStream:
        """A raw stream to ``host:port`` (raises ``OSError`` when nobody answers)."""

    def close(self) -> None:
        """Give the listening address back (a transport whose ``serve`` never ran)."""


class TcpTransport:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.host, self.port = sock.getsockname()[:2]

    async def serve(self, handler: Handler) -> None:
        listener = await anyio.abc.SocketListener.from_socket(self._sock)
        try:
            await listener.serve(lambda raw: handler(raw, _remote(raw)))
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    async def connect(self, host: str, port: int) -> ByteStream:
        return await anyio.connect_tcp(host, port)

    def close(self) -> None:
        self._sock.close()


def _remote(stream: anyio.abc.SocketStream) -> str:
    try:
        host, port = stream.extra(SocketAttribute.remote_address)[:2]  # type: ignore[misc]
        return f"{host}:{port}"
    except Exception:  # noqa: BLE001
        return "?"


# -- in memory -------------------------------------------------------------------------------------


class _Pipe(ByteStream):
    """One side of an in-memory connection between two hosts of a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, me: str, peer: str, send: MemoryObjectSendStream[bytes],
                 receive: MemoryObjectReceiveStream[bytes]) -> None:
        self._network, self._me, self._peer = network, me, peer
        self._send, self._receive = send, receive

    async def send(self, item: bytes) -> None:
        if self._network.latency:
            await anyio.sleep(self._network.latency)
        if not self._network.connected(self._me, self._peer):
            return  # cut: the bytes vanish without an error, as on a dead Wi-Fi link
        try:
            self._send.send_nowait(bytes(item))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise anyio.BrokenResourceError from None

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self._receive.receive()  # EndOfStream once the peer closed its side

    async def send_eof(self) -> None:
        self._send.close()

    async def aclose(self) -> None:
        self._send.close()
        self._receive.close()


@dataclass
class MemoryNetwork:
    """Hosts (by address) joined in memory; ``groups`` says who reaches whom (``None``: everyone)."""

    listeners: dict[tuple[str, int], tuple[str, Handler]] = field(default_factory=dict)
    groups: list[set[str]] | None = None
    latency: float = 0.0  # seconds each message takes (virtual time under a mock clock)

    def transport(self, host: str, port: int) -> MemoryTransport:
        return MemoryTransport(self, host, port)

    def connected(self, a: str, b: str) -> bool:
        return self.groups is None or any(a in g and b in g for g in self.groups)

    def split(self, *groups: set[str]) -> None:
        """Partition the hosts (every host not named is alone); ``heal()`` joins them again."""
        self.groups = [set(g) for g in groups]

    def heal(self) -> None:
        self.groups = None


class MemoryTransport:
    def __init__(self, network: MemoryNetwork, host: str, port: int) -> None:
        self.network, self.host, self.port = network, host, port
        self._connections = 0

    async def serve(self, handler: Handler) -> None:
        async with anyio.create_task_group() as tg:
            self.network.listeners[(self.host, self.port)] = (self.host, _in(tg, handler))
            try:
                await anyio.sleep_forever()
            finally:
                self.network.listeners.pop((self.host, self.port), None)

    async def connect(self, host: str, port: int) -> ByteStream:
        await anyio.lowlevel.checkpoint()
        target = self.network.listeners.get((host, port))
        if target is None or not self.network.connected(self.host, host):
            raise OSError(errno.ECONNREFUSED if target is None else errno.EHOSTUNREACH,
                          f"{host}:{port} does not answer")
        there, accept = target
        up_send, up_receive = anyio.create_memory_object_stream[bytes](math.inf)
        down_send, down_receive = anyio.create_memory_object_stream[bytes](math.inf)
        self._connections += 1
        mine = _Pipe(self.network, self.host, there, up_send, down_receive)
        theirs = _Pipe(self.network, there, self.host, down_send, up_receive)
        accept(theirs, f"{self.host}:{50000 + self._connections}")
        return mine

    def close(self) -> None:
        self.network.listeners.pop((self.host, self.port), None)


def _in(tg: anyio.abc.TaskGroup, handler: Handler) -> Callable[[ByteStream, str], None]:
    return lambda stream, remote: tg.start_soon(handler, stream, remote)
