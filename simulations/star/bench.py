"""The star benchmark: the mesh benchmark's two phases (latency, then throughput) run through the
relay with bare clients - :func:`run_star`, or ``python -m simulations.star``.

Backend: :func:`run_star` only uses AnyIO APIs, pycrdt's ``Provider`` and httpx-ws, and has also
been seen to run when awaited on trio; the command line runs it on asyncio.

Reading the numbers: all ``n`` terminals share this one benchmark process (one core), while the
relay has the other core.  Every terminal must apply every other terminal's updates whatever the
topology, so at larger ``n`` the clients' process, not the relay, tends to be the bottleneck; the
throughput result reports both sides' CPU seconds so that is visible.  The relay also sends each
update back to its writer (``YRoom`` broadcasts to all clients), which the writer applies as a
no-op: that is pycrdt-websocket's behaviour and is part of what is measured.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.lowlevel
from httpx_ws import aconnect_ws
from pycrdt import Provider

from simulations.benchutil import percentile
from simulations.star.bare import BareTerminal, Latencies, OwnUpdatesProvider, payload
from simulations.star.channel import CONNECT_TIMEOUT, WsChannel
from simulations.star.relay import BENCH_REQUIREMENT, ROOM, Relay, relay_process

YIELD_EVERY = 8
"""Throughput writers yield to the loop after this many writes so the providers can send."""

SETTLE_TIMEOUT = 30.0
THROUGHPUT_TIMEOUT = 90.0
TEARDOWN_TIMEOUT = 15.0


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
    relay: Relay,
    n: int,
    *,
    latency_samples: int,
    interval: float,
    throughput_updates: int,
    payload_bytes: int,
    stock_provider: bool,
) -> dict[str, Any]:
    """Connect ``n`` terminals to the relay, run the latency and throughput phases, disconnect."""
    latencies = Latencies()
    terminals = [BareTerminal(i, latencies, record_own_updates=not stock_provider) for i in range(n)]
    channels: list[WsChannel] = []

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
                channel = WsChannel(websocket, f"{ROOM}#{terminal.index}")
                channels.append(channel)
                provider = (
                    Provider(terminal.doc, channel)
                    if stock_provider
                    else OwnUpdatesProvider(terminal.doc, channel, terminal.own_updates)
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
                terminal.write(payload(terminal.index, -1, payload_bytes))
            for terminal in terminals:
                await terminal.reached.wait()

            # Latency phase: open-loop schedule, one write every `interval`, round-robin writers.
            watchdog.phase("latency phase", latency_samples * interval + SETTLE_TIMEOUT)
            start = time.perf_counter()
            for i in range(latency_samples):
                await anyio.sleep(max(0.0, start + i * interval - time.perf_counter()))
                writer = terminals[i % n]
                key, written_at = writer.write(payload(writer.index, writer.seq, payload_bytes))
                latencies.written(key, written_at, n - 1)
            latencies.all_written()
            await latencies.drained.wait()

            # Throughput phase: everyone writes as fast as it can; done when all saw all.
            watchdog.phase("throughput phase", THROUGHPUT_TIMEOUT)
            for terminal in terminals:
                terminal.expect_remote((n - 1) * throughput_updates)
            payloads = [payload(t.index, 0, payload_bytes) for t in terminals]
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


def _mark_closing(channels: list[WsChannel]) -> None:
    """From here on a closed WebSocket is the expected end of the stream, not a relay failure."""
    for channel in channels:
        channel.closing = True


async def _blast(terminal: BareTerminal, count: int, value: str) -> None:
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
        async with relay_process() as relay, anyio.create_task_group() as tg:
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
        raise RuntimeError("star relay exited during the run")
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
