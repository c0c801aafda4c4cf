"""Where a terminal's peer links come from: TCP sockets, or an in-memory network.

The mesh speaks TLS and WebSocket over whatever byte stream a transport hands it; the transport
only listens and connects.  :class:`TcpTransport` is the product's (a bound socket).
:class:`MemoryNetwork` joins terminals running in one process - the same TLS, framing, sync and
cashier code - with links that can be cut and healed (a Wi-Fi split: nothing crosses, nobody is
told, heartbeats notice), a Wi-Fi access point's client isolation, and per-message latency,
jitter and loss.  It makes no system calls, so under a virtual clock a run depends only on its
seed (the partition simulator's network).
"""

from __future__ import annotations

import errno
import logging
import math
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from core.ratelog import RateLimitedLog

Handler = Callable[[ByteStream, str], Awaitable[None]]
log = logging.getLogger(__name__)
_accept_log = RateLimitedLog(log)


class Transport(Protocol):
    host: str
    port: int

    async def serve(self, handler: Handler) -> None:
        """Accept connections for good, each handed to ``handler(stream, remote address)`` in a task."""

    async def connect(self, host: str, port: int) -> ByteStream:
        """A raw stream to ``host:port`` (raises ``OSError`` when nobody answers)."""

    def close(self) -> None:
        """Give the listening address back (a transport whose ``serve`` never ran)."""


#: ``accept()`` failed for want of descriptors or memory: the listener is fine, the process is
#: full - wait (doubling up to 1 s) and accept again; the connections being served free some.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: The connection died between the SYN and our accept(): nothing to do but take the next one.
TRANSIENT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN,
                              errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT})
ACCEPT_BACKOFF_MAX = 1.0


class TcpTransport:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.host, self.port = sock.getsockname()[:2]

    async def serve(self, handler: Handler) -> None:
        """Accept for good.  Not anyio's ``Listener.serve``: it ends on the first failed
        ``accept()``, so a peer holding a few hundred connections open (``EMFILE``) would stop
        the terminal.  Here such failures back off and serving goes on."""
        listener = await anyio.abc.SocketListener.from_socket(self._sock)
        backoff = 0.0
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    try:
                        raw = await listener.accept()
                    except OSError as exc:
                        if exc.errno in TRANSIENT_ERRNOS:
                            continue
                        if exc.errno not in RESOURCE_ERRNOS:
                            raise
                        backoff = min(ACCEPT_BACKOFF_MAX, max(0.01, backoff * 2))
                        _accept_log.log("accept", logging.ERROR, "peer port %s:%s cannot accept (%s); "
                                        "retrying in %.2f s", self.host, self.port, exc.strerror, backoff)
                        await anyio.sleep(backoff)
                        continue
                    backoff = 0.0
                    tg.start_soon(handler, raw, _remote(raw))
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


#: Linux's minimum TCP retransmission timeout: what a lost segment costs before it is sent again.
RTO_SECONDS = 0.2


class _Pipe(ByteStream):
    """One side of an in-memory connection between two hosts of a :class:`MemoryNetwork`.

    A message is stamped with the time it arrives and the receiver waits for that time, so the
    sender never waits (messages are in flight together, as on a wire) and the stream stays in
    order (a message never arrives before the one sent ahead of it, as TCP delivers).  Nothing
    crosses a cut, not even the close of a connection: it arrives once the two hosts reach each
    other again, as TCP's retransmissions would bring it - unless a side gave up on the
    connection meanwhile (the links' heartbeats do, after 3.5 s of silence).
    """

    def __init__(self, network: MemoryNetwork, me: str, peer: str,
                 send: MemoryObjectSendStream[tuple[float, bytes]],
                 receive: MemoryObjectReceiveStream[tuple[float, bytes]]) -> None:
        self._network, self._me, self._peer = network, me, peer
        self._send, self._receive = send, receive
        self._last_arrival = 0.0
        self._next: tuple[float, bytes] | None = None  # taken off the stream, not yet arrived

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        now = anyio.current_time()
        self._last_arrival = max(self._last_arrival, now + self._network.delay(self._me, self._peer))
        try:
            self._send.send_nowait((self._last_arrival, bytes(item)))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            if self._network.connected(self._me, self._peer):
                raise anyio.BrokenResourceError from None
            # The peer closed, but across a cut no reset reaches this side: like a box on a dead
            # Wi-Fi link, it learns from its own heartbeats.

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._next is None:
            try:
                self._next = await self._receive.receive()
            except anyio.EndOfStream:
                await self._until_connected()  # the peer's close crosses a cut no sooner than its data
                raise
        arrives, data = self._next
        if arrives > anyio.current_time():
            await anyio.sleep_until(arrives)  # a reader cancelled here finds the message on its next call
        await self._until_connected()
        self._next = None
        return data

    async def _until_connected(self) -> None:
        # A poll on purpose: TCP retries on its timer, it is not told of the heal.
        while not self._network.connected(self._peer, self._me):  # noqa: ASYNC110
            await anyio.sleep(RTO_SECONDS)

    async def send_eof(self) -> None:
        self._send.close()

    async def aclose(self) -> None:
        self._send.close()
        self._receive.close()


@dataclass
class Radio:
    """How a host's link to the network behaves: extra delay in ``[0, jitter)`` seconds per
    message, and the chance a segment is lost (TCP sends it again after :data:`RTO_SECONDS`,
    doubling while the copies are lost too; what follows it waits - head-of-line blocking)."""

    jitter: float = 0.0
    loss: float = 0.0


@dataclass
class MemoryNetwork:
    """Hosts (by address) joined in memory.

    ``groups`` says who reaches whom (``None``: everyone); hosts in ``isolated`` reach only hosts
    outside it, as Wi-Fi clients behind an access point with client isolation on reach the wired
    boxes but not each other.  Each message takes ``latency`` plus what the two ends' radios add;
    the random draws come from ``rng`` (seed it for a repeatable run).
    """

    listeners: dict[tuple[str, int], tuple[str, Handler]] = field(default_factory=dict)
    groups: list[set[str]] | None = None
    isolated: set[str] = field(default_factory=set)
    latency: float = 0.0  # seconds each message takes (virtual time under a mock clock)
    radios: dict[str, Radio] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def transport(self, host: str, port: int) -> MemoryTransport:
        return MemoryTransport(self, host, port)

    def connected(self, a: str, b: str) -> bool:
        if a in self.isolated and b in self.isolated:
            return False
        return self.groups is None or any(a in g and b in g for g in self.groups)

    def split(self, *groups: set[str]) -> None:
        """Partition the hosts (every host not named is alone); ``heal()`` joins them again."""
        self.groups = [set(g) for g in groups]

    def isolate(self, hosts: set[str]) -> None:
        """Client isolation for ``hosts``: they stop reaching each other (``heal()`` ends it)."""
        self.isolated = set(hosts)

    def heal(self) -> None:
        """Everyone reaches everyone again (radios keep their quality: see :attr:`radios`)."""
        self.groups = None
        self.isolated = set()

    def delay(self, a: str, b: str) -> float:
        """One message's time from ``a`` to ``b``: the latency, both radios' jitter, and the
        retransmission timeouts of its lost copies."""
        delay = self.latency
        for radio in (self.radios.get(a), self.radios.get(b)):
            if radio is None:
                continue
            if radio.jitter:
                delay += self.rng.uniform(0.0, radio.jitter)
            rto = RTO_SECONDS
            while radio.loss and self.rng.random() < radio.loss and rto <= 60.0:
                delay += rto
                rto *= 2
        return delay


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
        up_send, up_receive = anyio.create_memory_object_stream[tuple[float, bytes]](math.inf)
        down_send, down_receive = anyio.create_memory_object_stream[tuple[float, bytes]](math.inf)
        self._connections += 1
        mine = _Pipe(self.network, self.host, there, up_send, down_receive)
        theirs = _Pipe(self.network, there, self.host, down_send, up_receive)
        accept(theirs, f"{self.host}:{50000 + self._connections}")
        return mine

    def close(self) -> None:
        self.network.listeners.pop((self.host, self.port), None)


def _in(tg: anyio.abc.TaskGroup, handler: Handler) -> Callable[[ByteStream, str], None]:
    return lambda stream, remote: tg.start_soon(handler, stream, remote)
