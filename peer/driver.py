"""The link driver: one TLS stream run as reader, writer, ticker and closer around a LinkCore.

Each link is one task group: the reader feeds the core what the stream brings, the writer ships
what the sync session queued (once durable) and the core's frames, the ticker keeps the core's
deadlines (heartbeats, the hello timeout), the closer ends the group once the close frame is
flushed.  What the actions *mean* - a hello that opened, a sync frame, a control message - is
the mesh's (the callables :class:`LinkDriver` is given); this module only moves bytes and keeps the link's life.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import ByteStream

from core.errors import AUTHENTICATION_FAILED
from peer.link import ABNORMAL, Closed, LinkCore, Send
from peer.replication import ReadWindow
from peer.status import PeerBook
from peer.sync import SyncSession

INTERNAL_ERROR = 1011
GOING_AWAY = 1001
#: What reading or writing a TLS stream raises when the other side is gone or misbehaves.
TRANSPORT_ERRORS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ssl.SSLError, OSError)


#: What one read of a link takes in before acting on it, at most (see :func:`_buffered`).
READ_AHEAD_BYTES = 1024 * 1024


async def _buffered(stream: ByteStream) -> bytes | None:
    """What ``stream`` yields without waiting for the network, or ``None``.

    A TLS stream hands over one record per receive (16 KB at most: one or two frames).  A
    terminal that falls behind - its peers' frames queue in its socket - would act on each on
    its own: one transaction, one storage record, one wait for durability per frame.  What is
    buffered already is taken in with it and acted on as one read instead (one record per
    document), so the busier the terminal, the more each read carries; an idle one reads
    frame by frame as before.  A receive cancelled before it has data loses nothing (anyio's
    TLS and socket streams, and the simulator's, keep what they have not returned).  Only a
    record whose reading makes TLS answer at once (a TLS 1.3 key update the peer asks an answer
    to - Python's ssl never asks one) could be cut short here: anyio then marks the stream
    broken and that one link closes and redials, as for any transport failure."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        return await stream.receive()
    return None


def failure_of(exc: BaseException, *, dialling: bool = False) -> tuple[int, str]:
    """The close code and reason a transport failure is reported with (TLS refusals are 4003).

    ``dialling``: a connection closed during the TLS handshake is then no refusal of this
    terminal's certificate (that comes as an alert) - a peer at its cap of connections waiting
    to authenticate hangs up before any TLS byte - and is retried with the usual backoff, not
    after the 60 s an authentication refusal waits."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    cause = exc.__cause__ or exc.__context__
    for e in (exc, cause):
        if isinstance(e, ssl.SSLCertVerificationError):
            return AUTHENTICATION_FAILED, f"TLS handshake failed: {e.verify_message or e.reason}"
        if dialling and isinstance(e, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return ABNORMAL, "connection closed during the TLS handshake"
        if isinstance(e, ssl.SSLError):
            if "UNRECOGNIZED_NAME" in str(e.reason or e).upper():
                return AUTHENTICATION_FAILED, ("TLS handshake failed: the peer does not serve this store "
                                               "(an HQ that holds no enrollment of it: UNRECOGNIZED_NAME)")
            return AUTHENTICATION_FAILED, f"TLS handshake failed: {e.reason or e}"
    if isinstance(exc, TimeoutError):
        return ABNORMAL, "timed out"
    return ABNORMAL, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass(eq=False)
class Link:
    core: LinkCore
    stream: ByteStream
    address: str
    client: bool
    session: SyncSession = field(default_factory=SyncSession)
    out: list[bytes] = field(default_factory=list)
    wake: anyio.Event = field(default_factory=anyio.Event)
    peer_id: str | None = None
    cert_id: str | None = None  # the terminal id the TLS certificate names (before the hello proves it)
    peer_type: str | None = None
    peer_boot: str | None = None
    registered: bool = False
    closed: Closed | None = None
    ended: anyio.Event = field(default_factory=anyio.Event)
    writer_done: anyio.Event = field(default_factory=anyio.Event)
    drained: anyio.Event = field(default_factory=anyio.Event)
    #: Called once its hello is authorized (an inbound link's admission slot is given back).
    authenticated: Callable[[], None] | None = None
    #: What its reads applied, not yet known durable.
    reads: ReadWindow = field(default_factory=ReadWindow)
    #: Set when the other links' catch-ups this link's deferred step 1s wait for are over.
    catch_up_done: anyio.Event = field(default_factory=anyio.Event)
    #: The link's own task group: what is started for one link ends with it.
    tasks: anyio.abc.TaskGroup | None = None

    def push(self, actions: list[Any]) -> list[Any]:
        """Queue the bytes among ``actions`` for the writer; return the rest."""
        rest = []
        for action in actions:
            if isinstance(action, Send):
                self.out.append(action.data)
            else:
                rest.append(action)
        self.wake.set()
        return rest

    @property
    def dialer(self) -> str | None:
        return None if self.peer_id is None else ("self" if self.client else self.peer_id)

    def traffic(self) -> tuple[int, int, int, int]:
        return self.core.bytes_in, self.core.bytes_out, self.session.updates_in, self.session.updates_out


#: Carry out the core's actions other than bytes to send (those are queued already).
Act = Callable[[Link, list[Any]], Awaitable[None]]


class LinkDriver:
    """Runs links; what their actions mean is the mesh's: ``act`` (what the core reported),
    ``closing(link)`` (``link.closed`` was just set, by either side), ``ended(link)`` (the
    stream is gone; ``link.closed`` says how it ended)."""

    def __init__(self, *, act: Act, closing: Callable[[Link], None], ended: Callable[[Link], None],
                 book: PeerBook) -> None:
        self._act = act
        self._closing = closing
        self._ended = ended
        self.book = book

    async def run(self, link: Link) -> None:
        """Drive ``link`` until it closes; every task it started ends with it."""
        core, stream = link.core, link.stream
        try:
            async with anyio.create_task_group() as tg:
                link.tasks = tg
                tg.start_soon(self._writer, link)
                tg.start_soon(self._ticker, link)
                tg.start_soon(self._closer, link, tg.cancel_scope)
                await self._act(link, link.push(core.start()))
                failed: BaseException | None = None  # what a read-ahead met, raised after acting
                while True:
                    try:
                        if failed is not None:
                            failure, failed = failed, None
                            raise failure
                        data: bytes | None = await stream.receive()
                    except TRANSPORT_ERRORS as exc:
                        if link.closed is None and core.state != "open" and not isinstance(exc, anyio.EndOfStream):
                            code, reason = failure_of(exc)
                            self.mark_closed(link, Closed(code, reason, by_peer=True))
                        data = None
                    if link.closed is not None:
                        # Closing: drain until the peer hangs up, so our close frame is not lost to
                        # a TCP reset (closing a socket with unread data resets the connection).
                        if data is None:
                            break
                        continue
                    try:
                        actions = link.push(core.receive(data, anyio.current_time()))
                        taken = 0 if data is None else len(data)
                        while data is not None and taken < READ_AHEAD_BYTES and core.state == "open":
                            try:
                                more = await _buffered(stream)
                            except TRANSPORT_ERRORS as exc:
                                failed = exc  # after what came before it is acted on
                                break
                            if more is None:
                                break
                            taken += len(more)
                            actions += link.push(core.receive(more, anyio.current_time()))
                        await self._act(link, actions)
                    except Exception as exc:  # noqa: BLE001 - one peer's input never stops the terminal
                        self.internal_error(link, exc)
                link.drained.set()
                await anyio.sleep_forever()  # the closer ends the link once the writer flushed
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish(link)

    def internal_error(self, link: Link, exc: Exception) -> None:
        """Something this terminal did not foresee went wrong handling ``link``'s input: close that
        link (1011) and go on serving everyone else - never let it end the terminal."""
        self.book.internal_error(link.peer_id or link.address,
                                 "link %s (%s): closing after an internal error handling its input",
                                 link.address, link.peer_id or link.cert_id or "?", exc=exc)
        self.close(link, INTERNAL_ERROR, f"internal error: {type(exc).__name__}")

    def close(self, link: Link, code: int, reason: str) -> None:
        for action in link.push(link.core.close(code, reason)):
            if isinstance(action, Closed):
                self.mark_closed(link, action)

    def mark_closed(self, link: Link, closed: Closed) -> None:
        if link.closed is not None:
            return
        link.closed = closed
        self._closing(link)
        link.ended.set()
        link.wake.set()

    async def _closer(self, link: Link, scope: anyio.CancelScope) -> None:
        await link.ended.wait()
        if link.closed is None or link.closed.code != ABNORMAL:  # a dead peer reads no close frame
            with anyio.move_on_after(1.0):
                await link.writer_done.wait()
                await link.drained.wait()
        scope.cancel()

    async def _writer(self, link: Link) -> None:
        try:
            await self._write_loop(link)
        finally:
            link.writer_done.set()

    async def _write_loop(self, link: Link) -> None:
        while True:
            await link.wake.wait()
            link.wake = anyio.Event()
            run_doc: str | None = None
            run: list[bytes] = []
            for item in [*link.session.take(), None]:
                if item is not None and item.ticket is not None:
                    if not item.ticket.done.is_set():  # anyio's wait checkpoints even when set:
                        await item.ticket.done.wait()  # ~5 us for each of 19 links per update
                    if item.ticket.error is not None:
                        continue  # never durable here: never shipped
                if item is not None and item.update_of is not None and item.update_of == run_doc:
                    run.append(item.update)
                    continue
                if run:  # consecutive updates of one document leave as one frame
                    frame = link.session.encode_updates(run_doc, run)  # type: ignore[arg-type]
                    link.out.extend(s.data for s in link.core.send_binary(frame))
                run_doc, run = None, []
                if item is None:
                    break
                if item.update_of is not None:
                    run_doc, run = item.update_of, [item.update]
                elif item.data is not None:
                    link.out.extend(s.data for s in link.core.send_binary(item.data))
                else:
                    link.out.extend(s.data for s in link.core.send_control(item.control))
            if link.out:
                data = b"".join(link.out)
                link.out.clear()
                try:
                    await link.stream.send(data)
                except TRANSPORT_ERRORS as exc:
                    self.mark_closed(link, Closed(ABNORMAL, f"send failed: {failure_of(exc)[1]}", by_peer=False))
                    return
            if link.core.state == "closed":
                link.ended.set()
                return

    async def _ticker(self, link: Link) -> None:
        while True:
            await anyio.sleep(max(0.0, link.core.next_deadline() - anyio.current_time()) + 0.001)
            try:
                await self._act(link, link.push(link.core.tick(anyio.current_time())))
            except Exception as exc:  # noqa: BLE001 - as in the reader: this link ends, not the terminal
                self.internal_error(link, exc)
            if link.closed is not None:
                return

    async def _finish(self, link: Link) -> None:
        """Flush the close frame (briefly), drop the transport, tell the mesh."""
        if link.closed is None:  # cancelled: this terminal is stopping
            self.close(link, GOING_AWAY, "terminal stopping")
        if link.out:
            with anyio.move_on_after(1.0), contextlib.suppress(Exception):
                await link.stream.send(b"".join(link.out))
        await anyio.aclose_forcefully(link.stream)
        if link.closed is None:
            link.closed = Closed(ABNORMAL, "link ended", by_peer=False)
        self._ended(link)
