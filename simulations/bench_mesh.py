"""Mesh propagation latency and sustained throughput vs a star relay; prints JSON.

    pip install -e ".[bench]"
    python -m simulations.bench_mesh [--terminals 3 5 10] [--backend asyncio|trio] [--no-star] [--processes]

For each mesh size, every terminal runs in this process (real TLS links on loopback, real SQLite
files with fsync) - the same shape as the star baseline, whose clients also share this process
while its relay gets its own (``simulations/star/``, pycrdt-websocket's WebsocketServer).
With ``--processes`` each terminal runs in its own process instead (spawned, driven over a pipe),
which is closer to real boxes: their CPU is no longer one interpreter's.

* **latency**: one order created every ``--interval`` s, round-robin over the terminals
  (in-process each write waits for the previous one to arrive everywhere; ``--processes``
  follows an open-loop schedule, like the star); a
  sample is the time from the write being acknowledged (durable on the writer) to its
  ``order:created`` event on the *last* other terminal (durable there too).  The star runs
  twice: with bare pycrdt clients, whose sample is the time from the local transaction to the
  update observed on the last other client (nothing is stored anywhere, so it does less work
  per update than the mesh); and with the same terminals as the mesh's as its clients
  (``simulations.star.terminal_client.TerminalRelayClient``), whose sample is the mesh's - only the topology differs.
* **throughput**: every terminal creates ``--updates`` orders as fast as it can (16 concurrent
  writers each); the time until every terminal has every order's event gives updates/s per
  terminal.

Targets (docs/performance.md): mesh p99 <= the p99 of the star with terminals as its clients
(the bare star is reported as the floor of a relay that stores nothing); p99 <= 10 ms at 5
terminals; >= 1,000 updates/s per terminal sustained at 5 terminals.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import tempfile
import time
from contextlib import AsyncExitStack
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio

import meshpos.events
from meshpos.config import TerminalConfig
from meshpos.terminal import Terminal
from simulations.benchutil import Children, enrolled_store, link_up, run_child, summary

#: The topology of a result whose terminals are the star relay's clients (see run_mesh).
DURABLE_STAR = "star, meshpos terminals as clients"
ITEM = {"sku": "burger", "name": "Burger", "qty": 1, "unit_price_cents": 1590, "station": "grill"}
WRITERS_PER_TERMINAL = 16


class Observer:
    """Arrival time of every ``order:created`` event on every terminal."""

    def __init__(self, terminals: list[Terminal]) -> None:
        self.terminals = terminals
        self.seen: dict[str, dict[str, float]] = {}  # order id -> terminal id -> perf_counter
        self._waiters: dict[str, anyio.Event] = {}

    async def watch(self, t: Terminal, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        tid = t.config.terminal_id
        async with t.events.subscribe(resolved=False) as stream:  # ids only: no views built
            task_status.started()
            async for event in stream:
                if getattr(event, "type", None) == "order:created":
                    oid = event.payload["order_id"]
                    arrivals = self.seen.setdefault(oid, {})
                    arrivals[tid] = time.perf_counter()
                    if len(arrivals) == len(self.terminals) and oid in self._waiters:
                        self._waiters.pop(oid).set()

    async def everywhere(self, oid: str) -> dict[str, float]:
        if len(self.seen.get(oid, {})) < len(self.terminals):
            event = self._waiters.setdefault(oid, anyio.Event())
            await event.wait()
        return self.seen[oid]


async def run_mesh(n: int, *, latency_samples: int, interval: float, updates: int,
                   relay_port: int | None = None) -> dict[str, Any]:
    """``relay_port``: the durable star instead - the same terminals, each synced through the
    relay at that port (``simulations.star.terminal_client.TerminalRelayClient``) rather than linked to the others."""
    with tempfile.TemporaryDirectory(prefix="meshpos-bench-") as tmp:
        root = Path(tmp)
        ids = enrolled_store(root, n)
        async with AsyncExitStack() as stack:
            terminals = []
            for tid in ids:
                config = TerminalConfig(data_dir=root / tid, terminal_id=tid, api_port=0,
                                        peer_host="127.0.0.1", peer_port=0, mdns=False)
                terminals.append(await stack.enter_async_context(Terminal(config).running()))
            relays = await stack.enter_async_context(anyio.create_task_group())
            if relay_port is None:
                for i, a in enumerate(terminals):
                    for b in terminals[i + 1:]:
                        a.mesh.dial(f"127.0.0.1:{b.mesh.port}")
                with anyio.fail_after(30):
                    while not all(len(t.mesh.links) == n - 1 for t in terminals):  # noqa: ASYNC110
                        await anyio.sleep(0.05)
            else:
                from simulations.star.terminal_client import TerminalRelayClient  # noqa: PLC0415 - the [bench] extra

                for t in terminals:  # one at a time (see bench_own_core.star_latency)
                    await relays.start(TerminalRelayClient(t, relay_port).run)
                stack.callback(relays.cancel_scope.cancel)
            await terminals[0].put_product("burger", name="Burger", price_cents=1590, station="grill",
                                           category=None, active=True)
            with anyio.fail_after(30):
                while not all("burger" in t.inventory.skus() for t in terminals):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            observer = Observer(terminals)
            async with anyio.create_task_group() as tg:
                for t in terminals:
                    await tg.start(observer.watch, t)
                result = {"topology": "mesh" if relay_port is None else DURABLE_STAR, "terminals": n,
                          "latency_ms": await latency(terminals, observer, latency_samples, interval),
                          "throughput": await throughput(terminals, observer, updates)}
                tg.cancel_scope.cancel()
            return result


async def latency(terminals: list[Terminal], observer: Observer, samples: int, interval: float) -> dict[str, Any]:
    delays: list[float] = []
    with anyio.fail_after(120):
        for k in range(samples + 20):
            t = terminals[k % len(terminals)]
            order = await t.create_order(table=None, waiter="bench", items=[ITEM], notes="x" * 40)
            acked = time.perf_counter()
            arrivals = await observer.everywhere(order["id"])
            if k >= 20:  # warm-up
                delays.append((max(arrivals.values()) - acked) * 1000)
            await anyio.sleep(interval)
    return summary(delays)


async def throughput(terminals: list[Terminal], observer: Observer, updates: int) -> dict[str, Any]:
    ids: list[str] = []
    per_writer = updates // WRITERS_PER_TERMINAL
    start = time.perf_counter()
    cpu = time.process_time()  # every terminal is in this process: all their threads count

    async def writer(t: Terminal) -> None:
        for _ in range(per_writer):
            ids.append((await t.create_order(table=None, waiter="bench", items=[ITEM]))["id"])

    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            for t in terminals:
                for _ in range(WRITERS_PER_TERMINAL):
                    tg.start_soon(writer, t)
        written = time.perf_counter() - start
        for oid in ids:
            await observer.everywhere(oid)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    total = per_writer * WRITERS_PER_TERMINAL
    # CPU one terminal spends per update it writes, at this mesh size: its own write plus applying
    # the other terminals' (n-1) updates per round, framing and TLS included.
    per_update = cpu / (total * len(terminals))
    return {"updates_per_s_per_terminal": round(total / seconds, 1), "total_updates": total * len(terminals),
            "seconds": round(seconds, 3), "writes_done_after_s": round(written, 3),
            "cpu_s": round(cpu, 3), "cpu_ms_per_terminal_per_update": round(per_update * 1000, 3),
            "updates_per_s_per_terminal_on_one_core": round(1 / per_update)}


# -- one process per terminal ----------------------------------------------------------------------
#
# The in-process run puts every terminal on one core (one interpreter, one GIL).  Real terminals
# are separate boxes; the closest this machine gets is one process per terminal, sharing its
# cores with each other.  The parent only coordinates over pipes: time stamps are
# ``time.perf_counter()`` (CLOCK_MONOTONIC, one clock for every process on Linux).


def _terminal_process(conn: Connection, data_dir: str, tid: str, backend: str) -> None:
    """Child: one terminal, driven by the parent's commands; every answer goes back on ``conn``."""
    run_child(conn, tid, backend, _terminal_main, Path(data_dir), tid)


async def _terminal_main(conn: Connection, data_dir: Path, tid: str) -> None:
    # The benchmark's own watcher counts every order of the run: 30 terminals x 992 is more than
    # a UI subscriber's buffer, and a watcher starved by the busy terminal must not be cut off.
    meshpos.events.SUBSCRIBER_BUFFER = max(meshpos.events.SUBSCRIBER_BUFFER, 1_000_000)
    config = TerminalConfig(data_dir=data_dir, terminal_id=tid, api_port=0, peer_host="127.0.0.1", peer_port=0,
                            mdns=False)
    arrivals: dict[str, float] = {}
    waiting: dict[str, Any] = {"count": 0, "event": None}

    async def watch(t: Terminal, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with t.events.subscribe(resolved=False) as stream:  # ids only: no views built
            task_status.started()
            async for event in stream:
                if getattr(event, "type", None) == "order:created":
                    arrivals[event.payload["order_id"]] = time.perf_counter()
                    if waiting["event"] is not None and len(arrivals) >= waiting["count"]:
                        waiting["event"].set()

    async def seen(count: int) -> None:
        if len(arrivals) < count:
            waiting["count"], waiting["event"] = count, anyio.Event()
            await waiting["event"].wait()

    # The throughput run's baseline (CPU time, frames in, bytes out), taken when a step ends: the
    # peers may start sending before this terminal reads its throughput command.
    baseline = (0.0, 0, 0)

    def mark() -> None:
        nonlocal baseline
        baseline = (time.process_time(), sum(link.session.updates_in for link in t.mesh.links.values()),
                    sum(link.core.bytes_out for link in t.mesh.links.values()))

    async with Terminal(config).running() as t, anyio.create_task_group() as tg:
        await tg.start(watch, t)
        conn.send(("port", t.mesh.port))
        while True:
            command, *arg = await anyio.to_thread.run_sync(conn.recv)
            if command == "dial":
                await link_up(t, arg[0], arg[1])
                conn.send(("linked",))
            elif command == "relay":  # the durable star: synced through the relay at this port
                from simulations.star.terminal_client import TerminalRelayClient  # noqa: PLC0415 - the [bench] extra

                conn.send(("relayed", await tg.start(TerminalRelayClient(t, arg[0]).run)))
            elif command == "product":
                if arg[0]:
                    await t.put_product("burger", name="Burger", price_cents=1590, station="grill",
                                        category=None, active=True)
                with anyio.fail_after(30):
                    while "burger" not in t.inventory.skus():  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                mark()
                conn.send(("ready",))
            elif command == "latency":  # open loop: my slots of a round-robin schedule
                start, interval, slots, expect = arg
                acked = {}
                for slot in slots:
                    await anyio.sleep(max(0.0, start + slot * interval - time.perf_counter()))
                    order = await t.create_order(table=None, waiter="bench", items=[ITEM], notes="x" * 40)
                    acked[order["id"]] = time.perf_counter()
                with anyio.fail_after(120):
                    await seen(expect)
                mark()
                conn.send(("latency", acked, dict(arrivals)))
            elif command == "throughput":
                updates, expect = arg
                began = time.perf_counter()
                cpu, frames, sent = baseline

                async def writer(count: int) -> None:
                    for _ in range(count):
                        await t.create_order(table=None, waiter="bench", items=[ITEM])

                async with anyio.create_task_group() as writers:
                    for _ in range(WRITERS_PER_TERMINAL):
                        writers.start_soon(writer, updates // WRITERS_PER_TERMINAL)
                written = time.perf_counter()
                with anyio.fail_after(600):
                    await seen(expect)
                done = time.perf_counter()
                frames = sum(link.session.updates_in for link in t.mesh.links.values()) - frames
                sent = sum(link.core.bytes_out for link in t.mesh.links.values()) - sent
                conn.send(("throughput", began, written, done, time.process_time() - cpu, frames, sent,
                           resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
            elif command == "stop":
                tg.cancel_scope.cancel()
                return


def run_mesh_processes(n: int, *, latency_samples: int, interval: float, updates: int,
                       backend: str, relay_port: int | None = None) -> dict[str, Any]:
    """``relay_port``: the durable star instead (as in :func:`run_mesh`)."""
    with tempfile.TemporaryDirectory(prefix="meshpos-bench-") as tmp:
        root = Path(tmp)
        ids = enrolled_store(root, n)
        children = Children(_terminal_process, [(str(root / tid), tid, backend) for tid in ids])
        try:
            ports = [port for (port,) in children.all("port")]
            if relay_port is None:
                for i in range(n):
                    children.send(i, "dial", [f"127.0.0.1:{ports[j]}" for j in range(i + 1, n)], n - 1)
                children.all("linked")
            else:
                for i in range(n):  # one at a time (see bench_own_core.star_latency)
                    children.send(i, "relay", relay_port)
                    children.recv(i, "relayed", 60)
            for i in range(n):
                children.send(i, "product", i == 0)
            children.all("ready")
            warm = 20
            total = warm + latency_samples
            start = time.perf_counter() + 0.5
            for i in range(n):
                children.send(i, "latency", start, interval, list(range(i, total, n)), total)
            answers = children.all("latency")
            acked = {oid: at for own, _ in answers for oid, at in own.items()}
            slots = sorted(acked, key=acked.get)[warm:]
            delays = [(max(seen[oid] for _, seen in answers) - acked[oid]) * 1000 for oid in slots]
            for i in range(n):
                children.send(i, "throughput", updates, total + n * (updates // WRITERS_PER_TERMINAL
                                                                     * WRITERS_PER_TERMINAL))
            done = children.all("throughput", 700)
        finally:
            children.close()
    written = updates // WRITERS_PER_TERMINAL * WRITERS_PER_TERMINAL
    seconds = max(d[2] for d in done) - min(d[0] for d in done)
    cpu = sum(d[3] for d in done)
    per_update = cpu / (written * n)
    return {
        "topology": "mesh" if relay_port is None else DURABLE_STAR, "processes": n, "terminals": n,
        "latency_ms": summary(delays),
        "throughput": {"updates_per_s_per_terminal": round(written / seconds, 1), "total_updates": written * n,
                       "seconds": round(seconds, 3),
                       "writes_done_after_s": round(max(d[1] for d in done) - min(d[0] for d in done), 3),
                       "cpu_s": round(cpu, 3), "cpu_ms_per_terminal_per_update": round(per_update * 1000, 3),
                       "updates_per_s_per_terminal_on_one_core": round(1 / per_update),
                       # how many of a peer's updates one received mesh frame carried, on average
                       "updates_per_frame_received": None if relay_port is not None
                       else round(written * (n - 1) * n / max(1, sum(d[4] for d in done)), 1),
                       # every mesh link's bytes out (TLS, heartbeats, step 1s included) per order written
                       "bytes_sent_per_update_written": None if relay_port is not None
                       else round(sum(d[5] for d in done) / (written * n))},
    }


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for n in args.terminals:
        if args.processes:
            results.append(await anyio.to_thread.run_sync(functools.partial(
                run_mesh_processes, n, latency_samples=args.samples, interval=args.interval, updates=args.updates,
                backend=args.backend)))
        else:
            results.append(await run_mesh(n, latency_samples=args.samples, interval=args.interval,
                                          updates=args.updates))
        if not args.no_star:
            from simulations.star.bench import run_star  # noqa: PLC0415 - needs the [bench] extra
            from simulations.star.relay import relay_process  # noqa: PLC0415

            results.append(await run_star(n, latency_samples=args.samples, interval=args.interval,
                                          throughput_updates=args.updates))
            async with relay_process() as relay:
                if args.processes:
                    results.append(await anyio.to_thread.run_sync(functools.partial(
                        run_mesh_processes, n, latency_samples=args.samples, interval=args.interval,
                        updates=args.updates, backend=args.backend, relay_port=relay.port)))
                else:
                    results.append(await run_mesh(n, latency_samples=args.samples, interval=args.interval,
                                                  updates=args.updates, relay_port=relay.port))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--terminals", type=int, nargs="+", default=[3, 5, 10])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--updates", type=int, default=2000, help="orders per terminal in the throughput phase")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--no-star", action="store_true", help="skip the star-relay baseline")
    parser.add_argument("--processes", action="store_true",
                        help="one process per mesh terminal (default: all in this process)")
    args = parser.parse_args()
    if args.backend == "trio":
        args.no_star = True  # the star baseline (pycrdt-websocket) is asyncio-only
    started = time.perf_counter()
    try:
        out = anyio.run(main, args, backend=args.backend)
    except BaseExceptionGroup as group:  # show the failure itself, not ten levels of task groups
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None
    print(json.dumps({"results": out, "backend": args.backend, "seconds": round(time.perf_counter() - started, 1)},
                     indent=1))
