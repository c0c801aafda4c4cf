"""A client's WebSocket to the relay, and the deadline every phase of talking to it runs under."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect

CONNECT_TIMEOUT = 20.0


class WsChannel:
    """pycrdt ``Channel`` over an httpx-ws session.

    Same as pycrdt-websocket's ``HttpxWebsocket`` except that an unexpected close is raised, not
    turned into a silent end of stream: a terminal the relay disconnected must fail the run.
    """

    def __init__(self, websocket: AsyncWebSocketSession, path: str) -> None:
        self._websocket = websocket
        self._path = path
        self._send_lock = anyio.Lock()
        self.closing = False

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> WsChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except WebSocketDisconnect as exc:
            if self.closing:
                raise StopAsyncIteration from exc
            raise ConnectionError(f"relay closed the WebSocket {self._path}: {exc.code} {exc.reason}") from exc

    async def send(self, message: bytes) -> None:
        # The provider sends from two tasks (updates and sync replies): frames must not interleave.
        async with self._send_lock:
            await self._websocket.send_bytes(message)

    async def recv(self) -> bytes:
        return bytes(await self._websocket.receive_bytes())


@contextmanager
def deadline(what: str, seconds: float, details: Callable[[], str] | None = None) -> Iterator[None]:
    """``anyio.fail_after`` with a message that says which phase hung and how far it got."""
    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError as exc:
        extra = f"\n{details()}" if details is not None else ""
        raise TimeoutError(f"star benchmark: {what} did not finish within {seconds:g} s{extra}") from exc
