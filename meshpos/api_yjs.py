"""``WS /api/v1/yjs/{doc}``: the y-websocket protocol on the local API, bound to the terminal's
documents - so a stock ``WebsocketProvider`` (and the screens in meshpos/screens/) can bind a
Y.Doc to ``orders/<day>``, ``tables`` or ``inventory``.

Bound to the documents, not beside them (unlike pycrdt-websocket's rooms, which keep a Y.Doc of
their own and apply what clients send to it): what a browser sends is checked on a scratch copy
and stored through :meth:`Terminal.apply_ui_update` like every write, and what it is sent was
durable first.  A refused update closes the connection with the code of the error table and
the reason (docs/api.md, "Yjs route"); the client's copy then holds a change the terminal does
not, so it must start from a fresh Y.Doc.

Each connection is the reader and two tasks in its task group: a writer that sends the client's
queue (meshpos/ui_rooms.py) in order, waiting for each change's storage first, and a watch that
cuts the connection (4005) the moment that queue overflows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from core import errors
from core.names import ID_PATTERN, is_doc_name
from core.ymessages import (
    STEP1,
    STEP2,
    AwarenessMessage,
    MessageError,
    QueryAwareness,
    SyncMessage,
    decode_message,
    encode_sync,
)
from meshpos.api_routing import deny_websocket
from meshpos.terminal import Terminal
from meshpos.ui_rooms import QUEUE_FRAMES, Outgoing, UiClient

log = logging.getLogger(__name__)

YJS_PATH = "/api/v1/yjs/{doc:path}"
#: The name a client that does not give ``?client=`` is audited under (``ui:browser``).
DEFAULT_CLIENT = "browser"
#: WebSocket close reasons are at most 123 bytes of UTF-8.
REASON_BYTES = 123
#: How long the close frame may take to leave (a client that stopped reading never takes it).
CLOSE_SECONDS = 5.0


@dataclass(slots=True)
class _Ending:
    """How the connection ends: a table code when refused or cut off, 0 when the client left."""

    code: int = 1000
    reason: str = ""


def _reason(text: str) -> str:
    data = text.encode()[:REASON_BYTES]
    return data.decode(errors="ignore")


def yjs_route(t: Terminal) -> WebSocketRoute:
    async def yjs(ws: WebSocket) -> None:
        """A Yjs client bound to one document (sync, updates, awareness)."""
        name = ws.path_params["doc"]
        client = ws.query_params.get("client", DEFAULT_CLIENT)
        try:
            if not is_doc_name(name):
                raise errors.NotFound(f"no document {name[:80]!r}; one of tables, inventory, orders/<YYYY-MM-DD>")
            if ID_PATTERN.fullmatch(client) is None:
                raise errors.InvalidInput(f"client must match {ID_PATTERN.pattern} (it names the client in the audit)")
            await t.ui_document(name)
        except errors.MeshposError as exc:
            await deny_websocket(ws, exc)
            return
        await ws.accept()
        ui = UiClient(name, client)
        ending = _Ending()
        t.ui_rooms.join(ui)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_write, ws, ui)
                tg.start_soon(_cut_when_behind, ui, ending, tg.cancel_scope)
                try:
                    await _read(t, ws, ui, ending)
                except errors.MeshposError as exc:  # e.g. its archived day is gone from every terminal
                    ending.code, ending.reason = exc.code, exc.message
                tg.cancel_scope.cancel()
        except* (WebSocketDisconnect, OSError):
            ending.code = 0  # the client is gone: nothing to close
        finally:
            t.ui_rooms.leave(ui)
        if ending.code:
            # Bounded: a client that stopped reading would hold the close frame (and us) forever.
            with anyio.move_on_after(CLOSE_SECONDS):
                try:
                    await ws.close(code=ending.code, reason=_reason(ending.reason))
                except (WebSocketDisconnect, OSError, RuntimeError):
                    pass  # the client went first

    return WebSocketRoute(YJS_PATH, yjs)


async def _write(ws: WebSocket, ui: UiClient) -> None:
    async with ui.receive:
        async for item in ui.receive:
            if item.ticket is not None:
                await item.ticket.done.wait()
                if item.ticket.error is not None:
                    continue  # not durable, and taken back: never shown
            await ws.send_bytes(item.frame)


async def _cut_when_behind(ui: UiClient, ending: _Ending, scope: anyio.CancelScope) -> None:
    await ui.behind.wait()
    ending.code, ending.reason = errors.RATE_LIMIT, f"more than {QUEUE_FRAMES} frames behind; reconnect to sync"
    scope.cancel()


async def _durable_state(t: Terminal, name: str) -> None:
    await t.ui_document(name)  # an archived day closed by housekeeping opens again
    await t.host.durable_now(name)


async def _read(t: Terminal, ws: WebSocket, ui: UiClient, ending: _Ending) -> None:
    """Answer the client until it leaves or is refused (``ending`` then says why)."""
    name = ui.doc
    await _durable_state(t, name)
    ui.push(Outgoing(encode_sync(STEP1, t.host.state_vector(name))))
    awareness = t.ui_rooms.awareness_of(name)
    if awareness is not None:
        ui.push(Outgoing(awareness))
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            ending.code = 0  # gone: nothing to close
            return
        data = message.get("bytes")
        if data is None:
            ending.code, ending.reason = errors.INVALID_MESSAGE, "y-websocket messages are binary"
            return
        try:
            decoded = decode_message(data)
        except MessageError as exc:
            ending.code, ending.reason = errors.INVALID_MESSAGE, str(exc)
            return
        if isinstance(decoded, SyncMessage):
            if decoded.kind == STEP1:
                await _durable_state(t, name)
                try:
                    answer = t.host.diff(name, decoded.payload)
                except ValueError as exc:  # checked by decode_message; pycrdt has the last word
                    ending.code, ending.reason = errors.INVALID_MESSAGE, f"state vector does not decode ({exc})"
                    return
                ui.push(Outgoing(encode_sync(STEP2, answer)))
                continue
            try:
                await t.apply_ui_update(name, decoded.payload, f"ui:{ui.client}", ui)
            except errors.MeshposError as exc:
                log.info("refused an update of %s from ui:%s: %s", name, ui.client, exc.message)
                ending.code, ending.reason = exc.code, exc.message
                return
        elif isinstance(decoded, AwarenessMessage):
            t.ui_rooms.aware(ui, decoded.entries)
        elif isinstance(decoded, QueryAwareness):
            awareness = t.ui_rooms.awareness_of(name)
            if awareness is not None:
                ui.push(Outgoing(awareness))
