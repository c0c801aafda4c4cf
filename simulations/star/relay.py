"""The relay: pycrdt-websocket's ``WebsocketServer`` in a process of its own, and the benchmark
side's handle on that process.

How the relay is served, and why:

* The relay runs in its own subprocess (``python -m simulations.star.relay PORT``), so that,
  like a real relay box, it has its own interpreter and its own core (the machine has two): the
  clients' CPU time must not be charged to the relay or the other way round.
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
  ``exception_handler`` for the room/server task errors.  Both record the traceback on the relay's
  stderr and shut the relay down with exit code 1; the benchmark process watches the relay and
  turns its death into an error carrying that stderr.  A benchmark must not report numbers from a
  relay that quietly dropped updates.
* Backend: asyncio (hypercorn's asyncio worker, the path pycrdt-websocket documents; the library
  itself is written against AnyIO), whatever the benchmark side runs on: the relay is the thing
  being measured.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

import anyio
from anyio.abc import Process, TaskGroup
from pycrdt import Channel

from simulations.benchutil import free_port, module_command
from simulations.star.channel import deadline

ROOM = "/star-bench"
"""The one room every terminal joins (pycrdt-websocket names rooms by the WebSocket path)."""

RELAY_START_TIMEOUT = 20.0
RELAY_STOP_TIMEOUT = 10.0

BENCH_REQUIREMENT = "pycrdt-websocket>=0.16.5,<0.17"
"""What the ``bench`` extra must install: 0.16.3 is the first release that accepts pycrdt 0.14
and has ``YRoom.on_message_error``; 0.16.5 (the tested one) also fixes ``WebsocketServer.stop``."""


async def serve_relay(port: int) -> int:
    """Serve one pycrdt-websocket relay on 127.0.0.1:``port`` until SIGTERM/SIGINT or an error.

    Returns the process exit code: 0 after a clean shutdown, 1 if any update failed to process.
    """
    # Imported here so that importing this module (for ``run_star``) works without the relay's
    # dependencies; the parent checks for pycrdt-websocket before starting the relay anyway.
    from hypercorn.asyncio import serve
    from hypercorn.config import Config
    from pycrdt.websocket import ASGIServer, WebsocketServer, YRoom

    failures: list[str] = []
    shutdown = anyio.Event()

    def fail(what: str, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(exc))
        failures.append(what)
        print(f"star relay: {what}\n{text}", file=sys.stderr, flush=True)
        shutdown.set()

    def on_message_error(exc: Exception, message: bytes, channel: Channel) -> bool:
        fail(f"error processing a {len(message)}-byte message from {channel.path}", exc)
        return True  # handled: by shutting the relay down, which fails the benchmark run

    def exception_handler(exc: Exception, log: logging.Logger) -> bool:
        fail("WebsocketServer/YRoom task error", exc)
        return True

    class StrictWebsocketServer(WebsocketServer):
        """A ``WebsocketServer`` whose rooms report message-processing errors instead of dropping them."""

        async def get_room(self, name: str) -> YRoom:
            room = await super().get_room(name)
            room.on_message_error = on_message_error
            return room

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

    async with websocket_server, anyio.create_task_group() as tg:
        tg.start_soon(_shutdown_on_signal, shutdown)
        tg.start_soon(serve_until_shutdown, tg)
    return 1 if failures else 0


async def _shutdown_on_signal(shutdown: anyio.Event) -> None:
    """Turn SIGTERM/SIGINT into a graceful hypercorn shutdown (the parent stops the relay with SIGTERM)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            shutdown.set()
            return


class Relay:
    """Handle on the relay subprocess: its port, its kept stderr, and whether it died mid-run."""

    def __init__(self, process: Process, port: int, stderr: IO[bytes]) -> None:
        self.process = process
        self.port = port
        self._stderr = stderr
        self.died = False

    def cpu_seconds(self) -> float | None:
        """The relay's user+system CPU time so far (Linux /proc), to tell a relay bottleneck from a client one."""
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # fields after "(comm)": state is [0], utime [11], stime [12]
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stderr_excerpt(self, limit: int = 6000) -> str:
        """The relay's stderr for an error message: its start (the relay's own report comes first)
        and its end (whatever happened last), cut in the middle if long."""
        self._stderr.flush()
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        if not text:
            return "(no stderr output)"
        if len(text) <= limit:
            return text
        return f"{text[: limit // 2]}\n[...]\n{text[-limit // 2 :]}"

    async def watch(self, on_death: anyio.CancelScope) -> None:
        """Cancel ``on_death`` if the relay exits while it is supposed to be serving."""
        await self.process.wait()
        self.died = True
        on_death.cancel()


async def _wait_for_port(relay: Relay) -> None:
    """Wait until the relay accepts TCP connections, failing fast if it exits first."""
    with deadline("relay start-up", RELAY_START_TIMEOUT, relay.stderr_excerpt):
        while True:
            if relay.process.returncode is not None:
                raise RuntimeError(
                    f"star relay exited with code {relay.process.returncode} during start-up:\n{relay.stderr_excerpt()}"
                )
            try:
                stream = await anyio.connect_tcp("127.0.0.1", relay.port)
            except OSError:
                await anyio.sleep(0.02)
            else:
                await stream.aclose()
                return


async def _stop_process(process: Process) -> int | None:
    """SIGTERM the relay, give it time for a graceful shutdown, then SIGKILL.  Returns its exit code."""
    if process.returncode is None:
        process.terminate()
        with anyio.move_on_after(RELAY_STOP_TIMEOUT):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
    await process.aclose()
    return process.returncode


@asynccontextmanager
async def relay_process() -> AsyncIterator[Relay]:
    """Start the relay subprocess on a free port; always stop it on the way out.

    On a clean exit the relay must also have exited cleanly (code 0): a non-zero code means it
    recorded a processing error, or did not shut down, and the run's numbers are not trusted.
    """
    port = free_port()
    command = module_command(__spec__.name, str(port))
    with tempfile.TemporaryFile() as stderr:
        process = await anyio.open_process(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        relay = Relay(process, port, stderr)
        try:
            await _wait_for_port(relay)
            yield relay
        except Exception as exc:
            # Whatever the run tripped over (typically the relay closing the sockets with 1011),
            # a relay that failed is the cause worth showing: its stderr has the traceback.
            with anyio.CancelScope(shield=True):
                code = await _stop_process(process)
            if code != 0:
                raise RuntimeError(f"star relay failed (exit code {code}):\n{relay.stderr_excerpt()}") from exc
            raise
        except BaseException:  # cancellation: just make sure the relay is gone
            with anyio.CancelScope(shield=True):
                await _stop_process(process)
            raise
        with anyio.CancelScope(shield=True):
            code = await _stop_process(process)
        if code != 0:
            when = "during the run" if relay.died else "at shutdown"
            raise RuntimeError(f"star relay exited with code {code} {when}:\n{relay.stderr_excerpt()}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(anyio.run(serve_relay, int(sys.argv[1]), backend="asyncio"))
