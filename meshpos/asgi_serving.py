"""Serving an ASGI app with hypercorn on whichever AnyIO backend is running (asyncio or trio) -
the terminal's local API and the HQ API alike.  uvicorn would tie us to asyncio."""

from __future__ import annotations

import logging
import socket

import anyio
import sniffio
from hypercorn.config import Config
from starlette.types import ASGIApp

from meshpos.api_guard import MAX_REQUEST_HEAD_BYTES


async def serve_asgi(app: ASGIApp, sock: socket.socket, *, shutdown: anyio.Event,
                     max_message_bytes: int = 16 * 1024 * 1024) -> None:
    """Serve ``app`` on ``sock`` (hypercorn owns and closes it from here) until ``shutdown``.
    ``max_message_bytes``: the largest WebSocket message a client may send (hypercorn closes the
    connection with 1009 above it, before anything parses it)."""
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 3.0
    # hypercorn answers a request head over this size itself, with an empty 431; above the guard's
    # own URL and header limits, so those get a JSON answer (docs/api.md, "Who may call the API").
    config.h11_max_incomplete_size = MAX_REQUEST_HEAD_BYTES
    config.websocket_max_message_size = max_message_bytes
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve
    else:
        from hypercorn.asyncio import serve
    await serve(app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
