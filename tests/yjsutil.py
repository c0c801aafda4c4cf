"""A y-websocket client for the tests: pycrdt's Y.Doc on httpx-ws, speaking the messages
core/ymessages.py decodes - what a stock WebsocketProvider does, in Python (the Node tests use
the real npm packages).  Test modules import from here, never from each other."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pycrdt
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, aconnect_ws

from core.ymessages import (
    STEP1,
    STEP2,
    UPDATE,
    AwarenessEntry,
    AwarenessMessage,
    SyncMessage,
    decode_message,
    encode_awareness,
    encode_sync,
)


class YClient:
    """One bound Y.Doc.  :meth:`pump` applies what the terminal sends until a condition holds."""

    def __init__(self, ws: AsyncWebSocketSession) -> None:
        self.ws = ws
        self.doc = pycrdt.Doc()
        self.awareness: dict[int, str] = {}
        self.synced = False

    async def handle(self, data: bytes) -> None:
        message = decode_message(data)  # the terminal's messages are framed as a client's
        if isinstance(message, SyncMessage):
            if message.kind == STEP1:
                await self.ws.send_bytes(encode_sync(STEP2, self.doc.get_update(message.payload)))
            else:
                self.doc.apply_update(message.payload)
                self.synced = self.synced or message.kind == STEP2
        elif isinstance(message, AwarenessMessage):
            for entry in message.entries:
                if entry.state == "null":
                    self.awareness.pop(entry.client, None)
                else:
                    self.awareness[entry.client] = entry.state

    async def pump(self, until: Any, within: float = 10.0) -> None:
        with anyio.fail_after(within):
            while not until():
                await self.handle(await self.ws.receive_bytes())

    async def write(self, change: Any) -> bytes:
        """Run ``change(doc)`` in one transaction and send its update, as a provider does."""
        before = self.doc.get_state()
        with self.doc.transaction():
            change(self.doc)
        update = self.doc.get_update(before)
        await self.ws.send_bytes(encode_sync(UPDATE, update))
        return update

    async def closed(self, within: float = 10.0) -> tuple[int, str]:
        """Read until the terminal closes the connection; its close code and reason."""
        with anyio.fail_after(within):
            while True:
                try:
                    await self.handle(await self.ws.receive_bytes())
                except WebSocketDisconnect as exc:
                    return exc.code, exc.reason or ""

    async def aware(self, client: int, clock: int, state: str) -> None:
        await self.ws.send_bytes(encode_awareness([AwarenessEntry(client, clock, state)]))


@asynccontextmanager
async def bound(http: httpx.AsyncClient, doc: str, client: str = "screen-1",
                **params: str) -> AsyncIterator[YClient]:
    """A client bound to ``doc`` and synced (sent its step 1, applied the terminal's step 2)."""
    query = "&".join(f"{k}={v}" for k, v in {"client": client, **params}.items())
    async with aconnect_ws(f"/api/v1/yjs/{doc}?{query}", http) as ws:
        y = YClient(ws)
        await ws.send_bytes(encode_sync(STEP1, y.doc.get_state()))
        await y.pump(lambda: y.synced)
        yield y
