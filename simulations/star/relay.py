"""The relay: pycrdt-websocket's ``WebsocketServer`` in a process of its own, and the benchmark
side's handle on that process.

How the relay is served, and why:

* The relay runs in a process of its own, started and stopped like every other child of the
  benchmarks (``benchutil.Children`` and ``run_child``), so that, like a real relay box, it has
  its own interpreter and its own core (the machine has two): the clients' CPU time must not be
  charged to the relay or the other way round.
* It is pycrdt-websocket's own ``ASGIServer`` wrapping a ``WebsocketServer``, served by hypercorn.
  That is the combination pycrdt-websocket documents and tests itself with (its docs' "server"
  example and its test fixtures use hypercorn), hypercorn is already a meshpos dependency, and the
  ``ASGIServer`` adapter ships with the package, so the relay contains no glue of ours that could
  flatter or penalise it.  The ``websockets`` library would need a hand-written ``Channel`` adapter
  (pycrdt-websocket 0.16 ships none for it) and is not a meshpos dependency.
* Errors: ``YRoom.serve`` catches every exception raised while processing a client's message and,
  unless ``on_message_error`` is set *and* acts on it, silently drops it (in 0.16.5 the ``except``
  branch only calls that callback; nothing re-raises).  ``WebsocketServer`` has no such parameter,
  so the relay subclasses it to set ``on_message_error`` on every room it creates, and passes an
  ``exception_handler`` for the room/server task errors.  Both print the traceback on the relay's
  stderr and shut the relay down, failing it with that traceback, which ``run_child`` sends to
  the benchmark process; that process watches the relay and turns its death into an error
  carrying it.  A benchmark must not report numbers from a relay that quietly dropped updates.
* Fan-out order: a room keeps its clients in a ``set``, so whom it sends an update to first
  follows the channel objects' hashes - a different place in the fan-out for the same client
  from one run to the next.  The relay's rooms keep them in the order they joined instead
  (:class:`JoinOrder`; the same cost per send), so a benchmark can place its receiver: the
  latency benchmarks join it last, as the mesh links it last - the last other terminal in
  both.
* Backend: asyncio (hypercorn's asyncio worker, the path pycrdt-websocket documents; the library
  itself is written against AnyIO), whatever the benchmark side runs on: the relay is the thing
  being measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing.connection
import os
import sys
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup
from pycrdt import Channel

from simulations.benchutil import Children, free_port, run_child

ROOM = "/star-bench"
"""The one room every terminal joins (pycrdt-websocket names rooms by the WebSocket path)."""

RELAY_START_TIMEOUT = 20.0

BENCH_REQUIREMENT = "pycrdt-websocket>=0.16.5,<0.17"
"""What the ``bench`` extra must install: 0.16.3 is the first release that accepts pycrdt 0.14
and has ``YRoom.on_message_error``; 0.16.5 (the tested one) also fixes ``WebsocketServer.stop``."""


class JoinOrder(dict[Channel, None]):
    """The set operations ``YRoom`` uses on its clients (``add``, ``remove``, iteration, truth),
    in the order the clients joined."""

    def add(self, channel: Channel) -> None:
        self[channel] = None

    def remove(self, channel: Channel) -> None:
        del self[channel]


def in_join_order(room: Any) -> Any:
    """``room`` (a ``YRoom``) sending to its clients in the order they joined."""
    if not isinstance(room.clients, JoinOrder):
        room.clients = JoinOrder.fromkeys(room.clients)
    return room


async def serve_relay(conn: Connection, port: int) -> None:
    """In the relay process (``run_child``'s main): serve one pycrdt-websocket relay on
    127.0.0.1:``port``, say ``("ready",)`` once it accepts connections, and stop gracefully when
    the parent says ``stop`` (or is gone).  Raises if any update failed to process, which
    ``run_child`` reports to the parent as the relay's error."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # Imported here so that importing this module (for ``run_star``) works without the relay's
    # dependencies; the parent checks for pycrdt-websocket before starting the relay anyway.
    from hypercorn.asyncio import serve
    from hypercorn.config import Config
    from pycrdt.websocket import ASGIServer, WebsocketServer, YRoom

    failures: list[str] = []
    shutdown = anyio.Event()

    def fail(what: str, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(exc))
        failures.append(f"{what}\n{text}")
        print(f"star relay: {what}\n{text}", file=sys.stderr, flush=True)
        shutdown.set()

    def on_message_error(exc: Exception, message: bytes, channel: Channel) -> bool:
        fail(f"error processing a {len(message)}-byte message from {channel.path}", exc)
        return True  # handled: by shutting the relay down, which fails the benchmark run

    def exception_handler(exc: Exception, log: logging.Logger) -> bool:
        fail("WebsocketServer/YRoom task error", exc)
        return True

    class StrictWebsocketServer(WebsocketServer):
        """A ``WebsocketServer`` whose rooms report message-processing errors instead of dropping
        them, and send to their clients in the order they joined."""

        async def get_room(self, name: str) -> YRoom:
            room = await super().get_room(name)
            room.on_message_error = on_message_error
            return in_join_order(room)

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # to stderr (root handler, WARNING and up)
    config.websocket_ping_interval = None
    config.graceful_timeout = 2.0

    websocket_server = StrictWebsocketServer(exception_handler=exception_handler)

    async def serve_until_shutdown(tg: TaskGroup) -> None:
        # hypercorn runs in a task of its own because it stops through an asyncio.TaskGroup that,
        # on Python 3.11, leaves its host task with a cancellation request pending (cancelling()
        # stays 1); AnyIO would then take every later cancel-scope exit in that task for an outer
        # cancellation and re-raise it.  Nothing runs in this task after serve() returns.
        await serve(ASGIServer(websocket_server), config, shutdown_trigger=shutdown.wait, mode="asgi")
        tg.cancel_scope.cancel()

    async def stop_when_told() -> None:
        await _until_readable(conn)  # "stop", or the parent is gone: stop either way
        shutdown.set()

    async with websocket_server, anyio.create_task_group() as tg:
        tg.start_soon(stop_when_told)
        tg.start_soon(serve_until_shutdown, tg)
        await _until_listening(port)
        conn.send(("ready",))
    if failures:
        raise RuntimeError("star relay: " + "\n".join(failures))


async def _until_readable(conn: Connection) -> None:
    """Wait for the parent's word on the pipe in the relay's own loop: no thread, which would
    keep the process from exiting after a failure until the parent stopped it (a blocked read
    cannot be cancelled), and no polling on the core being measured.  The relay runs on asyncio
    only (hypercorn's asyncio server), so the loop's reader does it."""
    loop = asyncio.get_running_loop()
    readable = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: readable.done() or readable.set_result(None))
    try:
        await readable
    finally:
        loop.remove_reader(conn.fileno())


async def _until_listening(port: int) -> None:
    """Until the relay accepts connections (hypercorn says nothing once it has bound)."""
    while True:
        try:
            stream = await anyio.connect_tcp("127.0.0.1", port)
        except OSError:
            await anyio.sleep(0.02)
        else:
            await stream.aclose()
            return


class Relay:
    """The benchmark side's handle on the relay process: its port, its CPU time, and whether it
    died while it was supposed to be serving."""

    def __init__(self, children: Children, port: int) -> None:
        self._children = children
        self.port = port
        self.died = False

    @property
    def pid(self) -> int:
        return int(self._children.procs[0].pid)  # type: ignore[arg-type]

    def cpu_seconds(self) -> float | None:
        """The relay's user+system CPU time so far (Linux /proc), to tell a relay bottleneck from a client one."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # fields after "(comm)": state is [0], utime [11], stime [12]
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def watch(self, on_death: anyio.CancelScope) -> None:
        """Cancel ``on_death`` if the relay exits while it is supposed to be serving."""
        sentinel = self._children.procs[0].sentinel
        await anyio.to_thread.run_sync(multiprocessing.connection.wait, [sentinel], abandon_on_cancel=True)
        self.died = True
        on_death.cancel()

    def stop(self) -> str | None:
        """Stop the relay (gracefully, then killed: :meth:`Children.close`); what went wrong in it,
        or ``None`` if it served and stopped cleanly."""
        self._children.close()
        error = None
        conn = self._children.conns[0]
        with contextlib.suppress(EOFError, OSError):
            while conn.poll():
                kind, *rest = conn.recv()
                if kind == "error":
                    error = rest[0]
        code = self._children.procs[0].exitcode
        return error or (None if code == 0 else f"exit code {code}")


@asynccontextmanager
async def relay_process() -> AsyncIterator[Relay]:
    """Start the relay in a process of its own on a free port; always stop it on the way out.

    A relay that failed - at start-up, during the run, or at shutdown - fails the run with its
    error, whatever else the run tripped over (typically the relay closing the sockets with
    1011): the run's numbers are not trusted.
    """
    port = free_port()
    children = await anyio.to_thread.run_sync(Children, run_child, [("relay", "asyncio", serve_relay, port)])
    relay = Relay(children, port)
    try:
        await anyio.to_thread.run_sync(children.recv, 0, "ready", RELAY_START_TIMEOUT)
        yield relay
    except Exception as exc:
        with anyio.CancelScope(shield=True):
            failure = await anyio.to_thread.run_sync(relay.stop)
        if failure is not None:
            raise RuntimeError(f"star relay failed: {failure}") from exc
        raise
    except BaseException:  # cancellation: just make sure the relay is gone
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(relay.stop)
        raise
    with anyio.CancelScope(shield=True):
        failure = await anyio.to_thread.run_sync(relay.stop)
    if failure is not None:
        raise RuntimeError(f"star relay failed {'during the run' if relay.died else 'at shutdown'}: {failure}")
