"""Mesh propagation latency and sustained throughput vs a star relay; prints JSON.

    pip install -e ".[bench]"
    python simulations/bench_mesh.py [--terminals 3 5 10] [--backend asyncio|trio] [--no-star]

For each mesh size, every terminal runs in this process (real TLS links on loopback, real SQLite
files with fsync) - the same shape as the star baseline, whose clients also share this process
while its relay gets its own (``simulations/star_relay.py``, pycrdt-websocket's WebsocketServer).

* **latency**: one order created every ``--interval`` s, round-robin over the terminals; a
  sample is the time from the write being acknowledged (durable on the writer) to its
  ``order:created`` event on the *last* other terminal (durable there too).  The star's sample
  is the time from the local transaction to the update observed on the last other client (its
  relay stores nothing, so the star does less work per update than the mesh).
* **throughput**: every terminal creates ``--updates`` orders as fast as it can (16 concurrent
  writers each); the time until every terminal has every order's event gives updates/s per
  terminal.

Targets (docs/performance.md): mesh p99 <= star p99; p99 <= 10 ms at 5 terminals; >= 1,000
updates/s per terminal sustained at 5 terminals.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

from meshpos.config import TerminalConfig
from meshpos.terminal import Terminal
from peer.identity import Authority

ITEM = {"sku": "burger", "name": "Burger", "qty": 1, "unit_price_cents": 1590, "station": "grill"}
WRITERS_PER_TERMINAL = 16


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Observer:
    """Arrival time of every ``order:created`` event on every terminal."""

    def __init__(self, terminals: list[Terminal]) -> None:
        self.terminals = terminals
        self.seen: dict[str, dict[str, float]] = {}  # order id -> terminal id -> perf_counter
        self._waiters: dict[str, anyio.Event] = {}

    async def watch(self, t: Terminal, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        tid = t.config.terminal_id
        async with t.events.subscribe() as stream:
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


async def run_mesh(n: int, *, latency_samples: int, interval: float, updates: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshpos-bench-") as tmp:
        root = Path(tmp)
        authority = Authority.init(root / "auth", "bench")
        ids = [f"t{k:02d}" for k in range(n)]
        for tid in ids:
            authority.enroll(tid, "pos", root / tid)
        async with AsyncExitStack() as stack:
            terminals = []
            for tid in ids:
                config = TerminalConfig(data_dir=root / tid, terminal_id=tid, api_port=0,
                                        peer_host="127.0.0.1", peer_port=0, mdns=False)
                terminals.append(await stack.enter_async_context(Terminal(config).running()))
            for i, a in enumerate(terminals):
                for b in terminals[i + 1:]:
                    a.mesh.dial(f"127.0.0.1:{b.mesh.port}")
            with anyio.fail_after(30):
                while not all(len(t.mesh.links) == n - 1 for t in terminals):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            await terminals[0].put_product("burger", name="Burger", price_cents=1590, station="grill",
                                           category=None, active=True)
            observer = Observer(terminals)
            async with anyio.create_task_group() as tg:
                for t in terminals:
                    await tg.start(observer.watch, t)
                result = {"topology": "mesh", "terminals": n,
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
    return {"p50": round(statistics.median(delays), 3), "p99": round(percentile(delays, 99), 3),
            "max": round(max(delays), 3), "samples": len(delays)}


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


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for n in args.terminals:
        results.append(await run_mesh(n, latency_samples=args.samples, interval=args.interval,
                                      updates=args.updates))
        if not args.no_star:
            from star_relay import run_star  # noqa: PLC0415 - needs the [bench] extra

            results.append(await run_star(n, latency_samples=args.samples, interval=args.interval,
                                          throughput_updates=args.updates))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--terminals", type=int, nargs="+", default=[3, 5, 10])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--updates", type=int, default=2000, help="orders per terminal in the throughput phase")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--no-star", action="store_true", help="skip the star-relay baseline")
    args = parser.parse_args()
    if args.backend == "trio":
        args.no_star = True  # the star baseline (pycrdt-websocket) is asyncio-only
    sys.path.insert(0, str(Path(__file__).parent))
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
