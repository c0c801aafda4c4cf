"""Star-relay baseline: the mesh benchmark's workload pushed through one central relay.

Why this exists: the mesh has no central box, and "how much does that cost or save?" only has an
answer next to the conventional design.  The conventional design for Yjs documents is a star: one
relay process (here pycrdt-websocket's ``WebsocketServer``, the Python counterpart of y-websocket)
that every terminal connects to, which applies each update to its own copy of the document and
re-broadcasts it to every other client.  ``run_star`` runs the same two phases as the mesh
benchmark against such a relay and returns comparable numbers.

How the relay is served, and why:

* The relay runs in its own subprocess (``python -m simulations.star_relay --serve PORT``), so that,
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

Clients: each terminal is a pycrdt ``Doc`` with a root ``Map`` named ``"bench"``, synchronised by
pycrdt's ``Provider`` over a real WebSocket (httpx-ws, already a meshpos test dependency).  The
small ``Channel`` adapter below replaces pycrdt-websocket's ``HttpxWebsocket`` only so that a
connection the relay drops mid-run is an error rather than a silent end of the stream.

By default the provider sends only the terminal's own updates (``_OwnUpdatesProvider``).  pycrdt's
stock ``Provider`` also sends back every update it has just received from the relay (y-websocket's
JS provider filters those by origin; pycrdt's events carry none), so with ``n`` terminals every
write costs ``n - 1`` useless echo messages on both sides.  That is a client quirk, not a cost of
the star topology, and a baseline that kept it would make the mesh look better than it is: at 10
terminals the echoes cost about a third of the throughput and nearly double the relay's CPU time
in our runs (84 vs 122 updates/s per terminal; 11.5 vs 6.3 relay CPU seconds), more when the
machine is busy.  ``stock_provider=True`` (``--stock-provider``) measures the stack as shipped.

Terminals as clients: ``TerminalRelayClient`` puts a real meshpos ``Terminal`` (SQLite with
fsync, events) on the relay instead of a bare ``Doc``, so the star can be measured doing exactly
what the mesh does; bench_mesh.py and bench_own_core.py report both.

Backend: the relay process runs on asyncio (hypercorn's asyncio worker, the path pycrdt-websocket
documents; the library itself is written against AnyIO).  The command-line entry point runs the
benchmark side on asyncio too; ``run_star`` itself only uses AnyIO APIs, pycrdt's ``Provider`` and
httpx-ws, and has also been seen to run when awaited on trio.  Asyncio-only would be fine for a
baseline: the relay is the thing being measured.

Reading the numbers: all ``n`` terminals share this one benchmark process (one core), while the
relay has the other core.  Every terminal must apply every other terminal's updates whatever the
topology, so at larger ``n`` the clients' process, not the relay, tends to be the bottleneck; the
throughput result reports both sides' CPU seconds so that is visible.  The relay also sends each
update back to its writer (``YRoom`` broadcasts to all clients), which the writer applies as a
no-op: that is pycrdt-websocket's behaviour and is part of what is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.lowlevel
from anyio.abc import Process, TaskGroup
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, aconnect_ws
from pycrdt import (
    Channel,
    Doc,
    Map,
    MapEvent,
    Provider,
    TransactionEvent,
    YMessageType,
    YSyncMessageType,
    create_sync_message,
    create_update_message,
    merge_updates,
    read_message,
    write_message,
)

from simulations.benchutil import free_port, module_command, percentile

ROOM = "/star-bench"
"""The one room every terminal joins (pycrdt-websocket names rooms by the WebSocket path)."""

YIELD_EVERY = 8
"""Throughput writers yield to the loop after this many writes so the providers can send."""

RELAY_START_TIMEOUT = 20.0
CONNECT_TIMEOUT = 20.0
SETTLE_TIMEOUT = 30.0
THROUGHPUT_TIMEOUT = 90.0
TEARDOWN_TIMEOUT = 15.0
RELAY_STOP_TIMEOUT = 10.0

BENCH_REQUIREMENT = "pycrdt-websocket>=0.16.5,<0.17"
"""What the ``bench`` extra must install: 0.16.3 is the first release that accepts pycrdt 0.14
and has ``YRoom.on_message_error``; 0.16.5 (the tested one) also fixes ``WebsocketServer.stop``."""


# --------------------------------------------------------------------------------------------
# The relay (runs in its own process)
# --------------------------------------------------------------------------------------------


async def _relay_main(port: int) -> int:
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


# --------------------------------------------------------------------------------------------
# Relay process management (benchmark side)
# --------------------------------------------------------------------------------------------


class _Relay:
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


async def _wait_for_port(relay: _Relay) -> None:
    """Wait until the relay accepts TCP connections, failing fast if it exits first."""
    with _deadline("relay start-up", RELAY_START_TIMEOUT, relay.stderr_excerpt):
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
async def _relay_process() -> AsyncIterator[_Relay]:
    """Start the relay subprocess on a free port; always stop it on the way out.

    On a clean exit the relay must also have exited cleanly (code 0): a non-zero code means it
    recorded a processing error, or did not shut down, and the run's numbers are not trusted.
    """
    port = free_port()
    command = module_command(__spec__.name, "--serve", str(port))
    with tempfile.TemporaryFile() as stderr:
        process = await anyio.open_process(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        relay = _Relay(process, port, stderr)
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


# --------------------------------------------------------------------------------------------
# Clients (terminals)
# --------------------------------------------------------------------------------------------


class _WsChannel:
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

    def __aiter__(self) -> _WsChannel:
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


class _Latencies:
    """Latency samples in flight: key -> [end of the writer's transaction, peers still to see it]."""

    def __init__(self) -> None:
        self.pending: dict[str, list[float]] = {}
        self.samples: list[float] = []
        self.drained = anyio.Event()
        self._all_written = False

    def written(self, key: str, at: float, peers: int) -> None:
        self.pending[key] = [at, float(peers)]

    def observed(self, key: str, now: float) -> None:
        entry = self.pending.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.pending[key]
            self.samples.append(now - entry[0])

    def all_written(self) -> None:
        """No more samples will be added: ``drained`` is set once the last one has been seen."""
        self._all_written = True
        self.check_drained()

    def check_drained(self) -> None:
        if self._all_written and not self.pending:
            self.drained.set()


class _Terminal:
    """One terminal: a ``Doc`` with a root ``Map`` "bench", and counters fed by ``Map.observe``."""

    def __init__(self, index: int, latencies: _Latencies, *, record_own_updates: bool) -> None:
        self.index = index
        self.doc = Doc()
        self.bench = self.doc.get("bench", type=Map)
        self.latencies = latencies
        self.seq = 0
        self.remote_seen = 0
        self._remote_target = 0
        self.reached = anyio.Event()
        self._writing = False
        self.own_updates: set[bytes] = set()
        self.bench.observe(self._on_change)
        if record_own_updates:  # only _OwnUpdatesProvider consumes (and so empties) this set
            self.doc.observe(self._on_transaction)

    def _on_transaction(self, event: TransactionEvent) -> None:
        # Remember the binary update of each of our own writes, for _OwnUpdatesProvider.
        if self._writing:
            self.own_updates.add(event.update)

    def expect_remote(self, count: int) -> None:
        """Arm ``reached`` for when ``count`` more keys written by other terminals have arrived."""
        self._remote_target = self.remote_seen + count
        self.reached = anyio.Event()
        if self.remote_seen >= self._remote_target:
            self.reached.set()

    def progress(self) -> str:
        return f"terminal {self.index}: {self.remote_seen}/{self._remote_target}"

    def _on_change(self, event: MapEvent) -> None:
        # Runs synchronously inside the transaction that applied the change: for a remote update
        # that is the provider's handle_sync_message, so `now` is the moment the key became visible.
        if self._writing:
            return  # our own write
        now = time.perf_counter()
        keys: dict[str, Any] = event.keys  # type: ignore[attr-defined]
        self.remote_seen += len(keys)
        latencies = self.latencies
        if latencies.pending:
            for key in keys:
                latencies.observed(key, now)
            latencies.check_drained()
        if self.remote_seen >= self._remote_target:
            self.reached.set()

    def write(self, value: str) -> tuple[str, float]:
        """Write one key in one transaction; returns the key and the time the transaction ended."""
        key = f"{self.index}:{self.seq}"
        self.seq += 1
        self._writing = True
        try:
            with self.doc.transaction():
                self.bench[key] = value
        finally:
            self._writing = False
        return key, time.perf_counter()


class _OwnUpdatesProvider(Provider):
    """pycrdt's ``Provider``, minus the echo: it sends only the updates this terminal wrote.

    The stock ``Provider`` forwards every document update to the relay, including each update it
    has just received from the relay, so with ``n`` terminals the relay decodes ``n - 1`` useless
    echoes per write and every terminal sends as many.  y-websocket's JS provider skips updates
    whose origin is itself; pycrdt's ``TransactionEvent`` carries no origin, so this subclass
    recognises its terminal's own writes by their update bytes (recorded by ``_Terminal`` in a doc
    observer).  It overrides the private ``_send_updates`` of pycrdt 0.14 (pinned ``<0.15``) and
    keeps the rest of the provider (sync handshake, flush on exit) as shipped.
    """

    def __init__(self, doc: Doc, channel: Channel, own_updates: set[bytes]) -> None:
        super().__init__(doc, channel)
        self._own_updates = own_updates

    async def _send_updates(self) -> None:
        assert self._events is not None
        async with self._events as events:
            try:
                await self._channel.send(create_sync_message(self._doc))
                async for event in events:
                    update = event.update
                    if update in self._own_updates:
                        self._own_updates.discard(update)
                        await self._channel.send(create_update_message(update))
            finally:
                events.unsubscribe()


def _payload(writer: int, seq: int, size: int) -> str:
    """A JSON text of about ``size`` bytes, like a serialised order record."""
    head = {"terminal": writer, "seq": seq, "pad": ""}
    pad = max(0, size - len(json.dumps(head)))
    head["pad"] = "x" * pad
    return json.dumps(head)


@contextmanager
def _deadline(what: str, seconds: float, details: Callable[[], str] | None = None) -> Iterator[None]:
    """``anyio.fail_after`` with a message that says which phase hung and how far it got."""
    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError as exc:
        extra = f"\n{details()}" if details is not None else ""
        raise TimeoutError(f"star benchmark: {what} did not finish within {seconds:g} s{extra}") from exc


class _Watchdog:
    """One cancel scope around a whole run, whose deadline moves from phase to phase.

    Why not one ``fail_after`` per phase: connecting and disconnecting enter and exit the
    providers' and sockets' task groups, and AnyIO cancel scopes must nest strictly, so a
    phase-local scope cannot wrap them.  A single outer scope with a moving deadline can.
    """

    def __init__(self, details: Callable[[], str]) -> None:
        self.scope = anyio.CancelScope()
        self._details = details
        self._what = "start"
        self._seconds = 0.0

    def phase(self, what: str, seconds: float) -> None:
        self._what = what
        self._seconds = seconds
        self.scope.deadline = anyio.current_time() + seconds

    def raise_if_expired(self) -> None:
        if self.scope.cancelled_caught:
            raise TimeoutError(
                f"star benchmark: {self._what} did not finish within {self._seconds:g} s\n{self._details()}"
            )


async def _bench(
    relay: _Relay,
    n: int,
    *,
    latency_samples: int,
    interval: float,
    throughput_updates: int,
    payload_bytes: int,
    stock_provider: bool,
) -> dict[str, Any]:
    """Connect ``n`` terminals to the relay, run the latency and throughput phases, disconnect."""
    latencies = _Latencies()
    terminals = [_Terminal(i, latencies, record_own_updates=not stock_provider) for i in range(n)]
    channels: list[_WsChannel] = []

    def everyone() -> str:
        return "; ".join(t.progress() for t in terminals)

    watchdog = _Watchdog(everyone)
    with watchdog.scope:
        async with AsyncExitStack() as stack:
            # Connect and sync.  Exit order is LIFO: the closing flag is raised first, then each
            # provider flushes and stops before its own socket closes.
            watchdog.phase("connecting the terminals", CONNECT_TIMEOUT)
            for terminal in terminals:
                websocket = await stack.enter_async_context(
                    aconnect_ws(f"http://127.0.0.1:{relay.port}{ROOM}", keepalive_ping_interval_seconds=None)
                )
                channel = _WsChannel(websocket, f"{ROOM}#{terminal.index}")
                channels.append(channel)
                provider = (
                    Provider(terminal.doc, channel)
                    if stock_provider
                    else _OwnUpdatesProvider(terminal.doc, channel, terminal.own_updates)
                )
                await stack.enter_async_context(provider)
                await provider.synced.wait()
            stack.callback(_mark_closing, channels)

            # Warm-up: one write per terminal seen everywhere proves every path (and the room's
            # update subscription) is live before anything is timed.
            watchdog.phase("warm-up", SETTLE_TIMEOUT)
            for terminal in terminals:
                terminal.expect_remote(n - 1)
            for terminal in terminals:
                terminal.write(_payload(terminal.index, -1, payload_bytes))
            for terminal in terminals:
                await terminal.reached.wait()

            # Latency phase: open-loop schedule, one write every `interval`, round-robin writers.
            watchdog.phase("latency phase", latency_samples * interval + SETTLE_TIMEOUT)
            start = time.perf_counter()
            for i in range(latency_samples):
                await anyio.sleep(max(0.0, start + i * interval - time.perf_counter()))
                writer = terminals[i % n]
                key, written_at = writer.write(_payload(writer.index, writer.seq, payload_bytes))
                latencies.written(key, written_at, n - 1)
            latencies.all_written()
            await latencies.drained.wait()

            # Throughput phase: everyone writes as fast as it can; done when all saw all.
            watchdog.phase("throughput phase", THROUGHPUT_TIMEOUT)
            for terminal in terminals:
                terminal.expect_remote((n - 1) * throughput_updates)
            payloads = [_payload(t.index, 0, payload_bytes) for t in terminals]
            relay_cpu, clients_cpu = relay.cpu_seconds(), time.process_time()
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for terminal in terminals:
                    tg.start_soon(_blast, terminal, throughput_updates, payloads[terminal.index])
            for terminal in terminals:
                await terminal.reached.wait()
            seconds = time.perf_counter() - started
            relay_cpu_end, clients_cpu = relay.cpu_seconds(), time.process_time() - clients_cpu

            # Counting observed keys could hide a duplicate or a stray write; the maps must agree.
            expected = n + latency_samples + n * throughput_updates
            sizes = [len(t.bench) for t in terminals]
            if any(size != expected for size in sizes):
                raise RuntimeError(f"terminals did not converge: map sizes {sizes}, expected {expected} each")

            watchdog.phase("disconnecting the terminals", TEARDOWN_TIMEOUT)
    watchdog.raise_if_expired()
    samples = sorted(latencies.samples)
    return {
        "latency_ms": {
            "p50": round(percentile(samples, 50) * 1000, 3),
            "p99": round(percentile(samples, 99) * 1000, 3),
            "max": round(samples[-1] * 1000, 3),
            "samples": len(samples),
        },
        "throughput": {
            "updates_per_s_per_terminal": round(throughput_updates / seconds, 1),
            "total_updates": n * throughput_updates,
            "seconds": round(seconds, 3),
            # CPU seconds spent during the throughput phase: a side near `seconds` is the bottleneck.
            "cpu_seconds": {
                "relay": None if relay_cpu is None or relay_cpu_end is None else round(relay_cpu_end - relay_cpu, 2),
                "clients": round(clients_cpu, 2),
            },
        },
    }


def _mark_closing(channels: list[_WsChannel]) -> None:
    """From here on a closed WebSocket is the expected end of the stream, not a relay failure."""
    for channel in channels:
        channel.closing = True


async def _blast(terminal: _Terminal, count: int, value: str) -> None:
    """Write ``count`` keys as fast as possible, yielding regularly so the provider gets to send."""
    for i in range(count):
        terminal.write(value)
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            await anyio.lowlevel.checkpoint()


async def run_star(
    n_clients: int,
    *,
    latency_samples: int = 300,
    interval: float = 0.005,
    throughput_updates: int = 2000,
    payload_bytes: int = 200,
    stock_provider: bool = False,
) -> dict:
    """Run the benchmark workload through a pycrdt-websocket star relay with ``n_clients`` terminals.

    Starts a fresh relay subprocess, connects the terminals, measures, disconnects and stops the
    relay.  Raises (rather than returning numbers) if the relay reports an error, dies, drops a
    connection, or any phase exceeds its time limit.  ``stock_provider`` (not part of the shared
    benchmark interface; default off) measures pycrdt's ``Provider`` with its update echo.
    """
    if n_clients < 2:
        raise ValueError("a star benchmark needs at least 2 terminals (latency is write-to-other-terminal)")
    if importlib.util.find_spec("pycrdt.websocket") is None:
        raise RuntimeError(f"the star baseline needs pycrdt-websocket: pip install '{BENCH_REQUIREMENT}'")

    result: dict[str, Any] | None = None
    try:
        async with _relay_process() as relay, anyio.create_task_group() as tg:
            tg.start_soon(relay.watch, tg.cancel_scope)
            result = await _bench(
                relay,
                n_clients,
                latency_samples=latency_samples,
                interval=interval,
                throughput_updates=throughput_updates,
                payload_bytes=payload_bytes,
                stock_provider=stock_provider,
            )
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Task groups (ours, the providers', httpx-ws's) nest one group per level; a single failure
        # is easier to read as itself.
        leaves = _leaf_exceptions(group)
        if len(leaves) == 1 and isinstance(leaves[0], Exception):
            raise leaves[0] from group
        raise
    if relay.died or result is None:
        raise RuntimeError(
            f"star relay exited with code {relay.process.returncode} during the run:\n{relay.stderr_excerpt()}"
        )
    return {
        "topology": "star",
        "terminals": n_clients,
        "relay": f"pycrdt-websocket {_version('pycrdt-websocket')} WebsocketServer via ASGIServer on "
        f"hypercorn {_version('hypercorn')} (asyncio, own process)",
        "client": "pycrdt Provider as shipped (echoes received updates back)"
        if stock_provider
        else "pycrdt Provider sending own updates only (no echo, like y-websocket)",
        **result,
    }


def _leaf_exceptions(group: BaseExceptionGroup) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaf_exceptions(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


# --------------------------------------------------------------------------------------------
# meshpos terminals as the relay's clients (the durable star)
# --------------------------------------------------------------------------------------------


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
                channels[name] = _WsChannel(ws, f"/{name}")
            host.on_update(self._on_update)  # a change before its room's outbox exists: in the step 2
            try:
                async with anyio.create_task_group() as tg:
                    for name, channel in channels.items():
                        send, receive = anyio.create_memory_object_stream[tuple[bytes, Any]](math.inf)
                        self._outboxes[name], self._synced[name] = send, anyio.Event()
                        tg.start_soon(self._read, name, channel)
                        tg.start_soon(self._write, channel, receive)
                        await self._send(channel, YSyncMessageType.SYNC_STEP1, host.state_vector(name))
                    with _deadline("joining the relay's rooms", CONNECT_TIMEOUT):
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

    async def _write(self, channel: _WsChannel, outbox: Any) -> None:
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

    async def _read(self, name: str, channel: _WsChannel) -> None:
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

    async def _send(self, channel: _WsChannel, kind: int, payload: bytes) -> None:
        await channel.send(_sync_message(kind, payload))
        self.sent += 1


def _sync_message(kind: int, payload: bytes) -> bytes:
    """A y-protocols sync message (pycrdt exports the step 1 / step 2 builders only privately)."""
    return bytes([YMessageType.SYNC, kind]) + write_message(payload)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


async def _main(args: argparse.Namespace) -> list[dict]:
    results = []
    for n in args.terminals:
        began = time.perf_counter()
        results.append(
            await run_star(
                n,
                latency_samples=args.latency_samples,
                interval=args.interval,
                throughput_updates=args.throughput_updates,
                payload_bytes=args.payload_bytes,
                stock_provider=args.stock_provider,
            )
        )
        print(f"star: {n} terminals done in {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--terminals", type=int, nargs="+", default=[3, 5, 10], help="terminal counts to run")
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between latency-phase writes")
    parser.add_argument("--throughput-updates", type=int, default=2000, help="keys written by each terminal")
    parser.add_argument("--payload-bytes", type=int, default=200)
    parser.add_argument(
        "--stock-provider",
        action="store_true",
        help="use pycrdt's Provider as shipped (echoes every received update back to the relay)",
    )
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # relay subprocess mode
    args = parser.parse_args(argv)

    if args.serve is not None:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        sys.exit(anyio.run(_relay_main, args.serve, backend="asyncio"))
    results = anyio.run(_main, args, backend="asyncio")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
