"""Serving the local API with hypercorn on whichever AnyIO backend is running (asyncio or trio)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import anyio

from core.net import bind_socket
from meshpos.api import create_app
from meshpos.asgi_serving import serve_asgi
from meshpos.terminal import Terminal

log = logging.getLogger(__name__)


async def serve_api(
    terminal: Terminal,
    *,
    shutdown: anyio.Event,
    on_ready: Callable[[str], None] | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve until ``shutdown`` is set; ``on_ready(url)`` is called once the socket accepts.

    Pass ``sock`` (from :func:`bind_socket`) to learn about a port in use before anything starts.
    """
    terminal.config.validate_api_access()  # ConfigError before anything listens (e.g. no token off loopback)
    if sock is None:
        sock = bind_socket(terminal.config.api_host, terminal.config.api_port)
    host, port = sock.getsockname()[:2]
    app = create_app(terminal, port=port)  # the real port: the terminal's own UI origin names it
    if on_ready is not None:
        on_ready(f"http://{host}:{port}")
    # A browser's Yjs message (an edit, or the offline edits of its step 2) is a request body too.
    await serve_asgi(app, sock, shutdown=shutdown, max_message_bytes=terminal.config.max_body_bytes)
