"""A real meshpos terminal as the relay's client: the star doing exactly what the mesh does."""

from __future__ import annotations

import contextlib
import math
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.abc
from httpx_ws import aconnect_ws
from pycrdt import YMessageType, YSyncMessageType, merge_updates, read_message, write_message

from simulations.star.channel import CONNECT_TIMEOUT, WsChannel, deadline


class TerminalRelayClient:
    """A real meshpos ``Terminal`` synchronised through the relay instead of the mesh.

    Why: the clients above store nothing, so a latency comparison with them also compares "durable
    on both ends" with "durable nowhere".  This client keeps what a terminal does and puts the
    relay where the links were: one WebSocket per document (pycrdt-websocket names rooms by path,
    so ``/orders/2026-12-03``); the terminal's own updates sent once durable (the mesh's rule,
    ``DocumentHost.on_update``), those queued meanwhile merged into one message as the mesh's
    link writer merges them into one frame; updates from the relay applied through the terminal's
    durable path (``apply_remote``: stored, then ``order:created`` and the rest as events).  Sync
    is y-protocols' (step 1 / step 2 / update), which is what the relay speaks.  The relay echoes
    every update to its writer too; applying an update a document already holds changes nothing,
    so the echo costs a no-op transaction, no record and no event.

    The rooms are the documents open when :meth:`run` starts: a document opened later (a new
    business day) is not synced, and the client fails rather than silently leave it out.
    """

    def __init__(self, terminal: Any, port: int) -> None:
        self.terminal = terminal
        self.port = port
        #: Messages sent: the join's step 1s and step 2s, then own updates (merged), for tests.
        self.sent = 0
        self._rooms: set[str] = set()
        self._outboxes: dict[str, Any] = {}
        self._synced: dict[str, anyio.Event] = {}
        self._unjoined: str | None = None  # a document that took a write but has no room
        self._trouble = anyio.Event()

    async def run(self, *, task_status: anyio.abc.TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED) -> None:
        """Join a room per open document; ``started`` with their names once every one is synced."""
        host = self.terminal.host
        names = host.names()
        self._rooms = set(names)
        async with AsyncExitStack() as stack:
            channels = {}
            for name in names:  # opened before our task group: httpx-ws's own must close after it
                ws = await stack.enter_async_context(
                    aconnect_ws(f"http://127.0.0.1:{self.port}/{name}", keepalive_ping_interval_seconds=None))
                channels[name] = WsChannel(ws, f"/{name}")
            host.on_update(self._on_update)  # a change before its room's outbox exists: in the step 2
            try:
                async with anyio.create_task_group() as tg:
                    for name, channel in channels.items():
                        send, receive = anyio.create_memory_object_stream[tuple[bytes, Any]](math.inf)
                        self._outboxes[name], self._synced[name] = send, anyio.Event()
                        tg.start_soon(self._read, name, channel)
                        tg.start_soon(self._write, channel, receive)
                        await self._send(channel, YSyncMessageType.SYNC_STEP1, host.state_vector(name))
                    with deadline("joining the relay's rooms", CONNECT_TIMEOUT):
                        for event in self._synced.values():
                            await event.wait()
                    task_status.started(names)
                    await self._trouble.wait()
                    raise RuntimeError(f"{self._unjoined} was opened after this terminal joined the relay: "
                                       f"only {names} are synced")
            finally:
                for outbox in self._outboxes.values():
                    outbox.close()

    def _on_update(self, name: str, update: bytes, origin: str, ticket: Any) -> None:
        if origin.startswith("peer:"):
            return
        if name not in self._rooms:
            self._unjoined = self._unjoined or name
            self._trouble.set()
            return
        outbox = self._outboxes.get(name)
        if outbox is None:  # its room is still being joined: the step 2 will carry it
            return
        with contextlib.suppress(anyio.ClosedResourceError):  # the client has stopped
            outbox.send_nowait((update, ticket))

    async def _write(self, channel: WsChannel, outbox: Any) -> None:
        async with outbox:
            async for update, ticket in outbox:
                batch = [(update, ticket)]
                with contextlib.suppress(anyio.WouldBlock):
                    while True:
                        batch.append(outbox.receive_nowait())
                durable = []
                for update, ticket in batch:
                    await ticket.done.wait()
                    if ticket.error is None:  # never durable here: never sent (the mesh's rule)
                        durable.append(update)
                if durable:
                    merged = durable[0] if len(durable) == 1 else merge_updates(*durable)
                    await self._send(channel, YSyncMessageType.SYNC_UPDATE, merged)

    async def _read(self, name: str, channel: WsChannel) -> None:
        host = self.terminal.host
        async for message in channel:
            if message[0] != YMessageType.SYNC:
                continue  # awareness: terminals publish none
            kind, payload = message[1], read_message(message[2:])
            if kind == YSyncMessageType.SYNC_STEP1:
                await host.settled(name)
                await self._send(channel, YSyncMessageType.SYNC_STEP2, host.diff(name, payload))
                continue
            if payload != b"\x00\x00":
                host.apply_remote(name, [payload], "peer:relay")  # its events come out once durable
            if kind == YSyncMessageType.SYNC_STEP2:
                self._synced[name].set()

    async def _send(self, channel: WsChannel, kind: int, payload: bytes) -> None:
        await channel.send(_sync_message(kind, payload))
        self.sent += 1


def _sync_message(kind: int, payload: bytes) -> bytes:
    """A y-protocols sync message (pycrdt exports the step 1 / step 2 builders only privately)."""
    return bytes([YMessageType.SYNC, kind]) + write_message(payload)
