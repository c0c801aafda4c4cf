"""Serving the local API with hypercorn on whichever AnyIO backend is running (asyncio or trio)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import anyio
import sniffio
from hypercorn.config import Config

from core.net import bind_socket
from meshpos.api import create_app
from meshpos.api_guard import MAX_REQUEST_HEAD_BYTES
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
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns (and closes) the descriptor from here
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 3.0
    # hypercorn answers a request head over this size itself, with an empty 431; above the guard's
    # own URL and header limits, so those get a JSON answer (docs/api.md, "Who may call the API").
    config.h11_max_incomplete_size = MAX_REQUEST_HEAD_BYTES
    url = f"http://{host}:{port}"
    if on_ready is not None:
        on_ready(url)
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve
    else:
        from hypercorn.asyncio import serve
    await serve(app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
