"""Cashier quorum: drawer-lock acquisition and commit latency, commits/s per drawer; prints JSON.

    python -m simulations.bench_cashier [--voters 3 5] [--backend asyncio|trio] [--processes]

For each voter count, a store of that many POS terminals (every one a voter; each holds the final
roster before the cashier is used) is linked on loopback with real TLS links and real SQLite files
with fsync - all in this process, or with ``--processes`` each terminal in its own process (closer
to real boxes: their CPU is no longer one interpreter's).  Everything is driven from the first
terminal (the holder) except the hand-off, which alternates the drawer between the first two:

* **lock acquisition** - ``open_drawer`` on a drawer nobody ever held (fresh name; acquisition +
  first commit, what a cashier sees); ``move_cash`` on a drawer this terminal just released
  (re-acquisition: the prepare carries the known ledger length); the acquisition alone (the
  cashier's ``_hold``: a majority's durable promises, then the durable ``lock_acquired`` event);
  and the **hand-off**: the other terminal released the drawer, this one appends to it;
* **commit latency** - sequential ``move_cash`` (in, 1 cent) on a held drawer: a majority stored
  the entry, and the holder's own copy is on disk, before the call returns;
* **commits/s per drawer** - sequential appends for ``--seconds`` s, then the same with
  ``--callers`` concurrent callers on that drawer (requests on one drawer are taken one at a
  time on a terminal, by design), and ``--drawers`` drawers in parallel (one caller each) for
  the aggregate.

Targets (issue 5, docs/performance.md): commit p99 <= 20 ms at 5 voters; >= 200 commits/s per
drawer.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio

from meshpos.cashier import acquire, service
from meshpos.config import TerminalConfig
from meshpos.terminal import Terminal
from simulations.benchutil import Children, enrolled_store, link_up, run_child, summary

TARGET_COMMIT_P99_MS = 20.0
TARGET_COMMITS_PER_S = 200.0
WARMUP = 20


def config_of(root: Path, tid: str) -> TerminalConfig:
    return TerminalConfig(data_dir=root / tid, terminal_id=tid, api_port=0, peer_host="127.0.0.1", peer_port=0,
                          mdns=False)


# -- what one terminal does (the same code in this process or in a child) ----------------------------


async def _timed(call: Awaitable[Any]) -> float:
    start = time.perf_counter()
    await call
    return (time.perf_counter() - start) * 1000


async def _move(t: Terminal, drawer: str) -> Any:
    return await t.cashier.move_cash(drawer, direction="in", amount_cents=1, reason="bench")


async def op_open(t: Terminal, drawer: str) -> float:
    """Open ``drawer`` (ms); the drawer stays held here."""
    return await _timed(t.cashier.open_drawer(drawer, float_cents=10_000, operator="bench"))


async def op_release(t: Terminal, drawer: str) -> None:
    async with t.cashier.state.lock(drawer):
        await t.cashier.holding.release(drawer)


async def op_move(t: Terminal, drawer: str) -> float:
    return await _timed(_move(t, drawer))


async def op_fresh(t: Terminal, prefix: str, count: int) -> list[float]:
    """``open_drawer`` on ``count`` drawers nobody held (ms each), each released afterwards."""
    out = []
    for k in range(count):
        out.append(await op_open(t, f"{prefix}{k}"))
        await op_release(t, f"{prefix}{k}")
    return out


async def op_reacquire(t: Terminal, drawer: str, count: int, pause: float) -> dict[str, list[float]]:
    """Release the held ``drawer`` and take it again, ``count`` times each way: the acquisition alone
    (ms), and a ``move_cash`` right after the release (acquisition + commit, ms)."""
    alone, first = [], []
    for _ in range(count):
        await op_release(t, drawer)
        await anyio.sleep(pause)  # the release reaches the voters (they drop the lease)
        async with t.cashier.state.lock(drawer):
            alone.append(await _timed(t.cashier.holding.hold(drawer)))
        await op_release(t, drawer)
        await anyio.sleep(pause)
        first.append(await op_move(t, drawer))
    return {"acquire_only": alone, "first_op": first}


async def op_commits(t: Terminal, drawer: str, count: int) -> list[float]:
    """Sequential appends on the held ``drawer`` (ms each, after a warm-up)."""
    out = []
    for k in range(count + WARMUP):
        ms = await op_move(t, drawer)
        if k >= WARMUP:
            out.append(ms)
    return out


async def op_rate(t: Terminal, drawers: list[str], callers: int, seconds: float) -> dict[str, Any]:
    """``callers`` concurrent callers on each of ``drawers`` for ``seconds``: commits/s."""
    done = [0]
    deadline = time.perf_counter() + seconds
    cpu, start = time.process_time(), time.perf_counter()

    async def caller(drawer: str) -> None:
        while time.perf_counter() < deadline:
            await _move(t, drawer)
            done[0] += 1

    async with anyio.create_task_group() as tg:
        for drawer in drawers:
            for _ in range(callers):
                tg.start_soon(caller, drawer)
    elapsed = time.perf_counter() - start
    return {"commits": done[0], "seconds": round(elapsed, 3), "commits_per_s": round(done[0] / elapsed, 1),
            "commits_per_s_per_drawer": round(done[0] / elapsed / len(drawers), 1),
            "cpu_s_holder_process": round(time.process_time() - cpu, 3)}


async def op_cpu(t: Terminal) -> float:
    return time.process_time()


async def op_stats(t: Terminal) -> dict[str, Any]:
    return dict(t.cashier.stats)


OPS: dict[str, Callable[..., Awaitable[Any]]] = {
    "open": op_open, "release": op_release, "move": op_move, "fresh": op_fresh, "reacquire": op_reacquire,
    "commits": op_commits, "rate": op_rate, "cpu": op_cpu, "stats": op_stats,
}


# -- the measurement, against N terminals wherever they run --------------------------------------------

Call = Callable[..., Awaitable[Any]]  # call(terminal index, op name, *args)


async def measure(call: Call, n: int, args: argparse.Namespace, cpu_total: Callable[[], Awaitable[float]]
                  ) -> dict[str, Any]:
    main = "main"
    await call(0, "open", "warm")  # first use of the links and the store: not measured
    await call(0, "release", "warm")
    fresh = await call(0, "fresh", "f", args.acquisitions)
    await call(0, "open", main)
    re = await call(0, "reacquire", main, args.acquisitions, 0.02)
    handoff: list[float] = []
    for k in range(args.acquisitions):  # the drawer moves between terminals 0 and 1
        holder, taker = (0, 1) if k % 2 == 0 else (1, 0)
        await call(holder, "release", main)
        await anyio.sleep(0.02)
        handoff.append(await call(taker, "move", main))
    await call(0, "move", main)  # terminal 0 holds the drawer again
    cpu0 = await cpu_total()
    commits = await call(0, "commits", main, args.commits)
    cpu_per_commit = (await cpu_total() - cpu0) / (args.commits + WARMUP)
    rate_1 = await call(0, "rate", [main], 1, args.seconds)
    rate_n = await call(0, "rate", [main], args.callers, args.seconds)
    others = [f"d{k}" for k in range(args.drawers)]
    for drawer in others:
        await call(0, "open", drawer)
    rate_d = await call(0, "rate", others, 1, args.seconds)
    stats = await call(0, "stats")
    commit = summary(commits)
    out = {
        "voters": n, "majority": n // 2 + 1,
        "acquire_ms": {
            "open_fresh_drawer": summary(fresh),
            "first_op_after_own_release": summary(re["first_op"]),
            "acquire_only_after_own_release": summary(re["acquire_only"]),
            "handoff_first_op_after_other_released": summary(handoff),
        },
        "commit_ms": commit,
        "cpu_ms_per_commit_all_terminals": round(cpu_per_commit * 1000, 3),
        "commits_per_s": {"one_caller": rate_1, f"{args.callers}_callers": rate_n,
                          f"{args.drawers}_drawers_in_parallel": rate_d},
        "holder_stats": stats,
    }
    per_drawer = min(rate_1["commits_per_s"], rate_n["commits_per_s"])
    out["targets"] = {"commits_per_s_per_drawer_ge_200": per_drawer >= TARGET_COMMITS_PER_S}
    if n == 5:
        out["targets"]["commit_p99_le_20ms_at_5_voters"] = commit["p99"] <= TARGET_COMMIT_P99_MS
    return out


async def run_in_process(n: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshpos-bench-") as tmp:
        root = Path(tmp)
        ids = enrolled_store(root, n, prefix="pos")
        async with AsyncExitStack() as stack:
            terminals = [await stack.enter_async_context(Terminal(config_of(root, tid)).running()) for tid in ids]
            for i, a in enumerate(terminals):
                for b in terminals[i + 1:]:
                    a.mesh.dial(f"127.0.0.1:{b.mesh.port}")
            with anyio.fail_after(30):
                while not all(set(t.mesh.links) == set(ids) - {t.config.terminal_id}  # noqa: ASYNC110
                              for t in terminals):
                    await anyio.sleep(0.02)
            for t in terminals:
                assert len(t.cashier.voters()) == n, t.cashier.voters()

            async def call(i: int, op: str, *a: Any) -> Any:
                return await OPS[op](terminals[i], *a)

            async def cpu_total() -> float:
                return time.process_time()  # every terminal is in this process

            with anyio.fail_after(600):
                return {"mode": "one process", **await measure(call, n, args, cpu_total)}


# -- one process per terminal ------------------------------------------------------------------------


def _terminal_process(conn: Connection, root: str, tid: str, n: int, backend: str) -> None:
    run_child(conn, tid, backend, _terminal_main, Path(root), tid, n)


async def _terminal_main(conn: Connection, root: Path, tid: str, n: int) -> None:
    async with Terminal(config_of(root, tid)).running() as t:
        conn.send(("port", t.mesh.port))
        while True:
            command, *arg = await anyio.to_thread.run_sync(conn.recv)
            if command == "dial":
                await link_up(t, arg[0], n - 1)
                if len(t.cashier.voters()) != n:
                    raise RuntimeError(f"{tid} sees voters {t.cashier.voters()}, not {n}")
                conn.send(("linked",))
            elif command == "stop":
                return
            else:
                conn.send(("done", await OPS[command](t, *arg)))


async def run_processes(n: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshpos-bench-") as tmp:
        root = Path(tmp)
        ids = enrolled_store(root, n, prefix="pos")
        children = Children(_terminal_process, [(str(root), tid, len(ids), args.backend) for tid in ids])
        try:
            ports = [(await anyio.to_thread.run_sync(children.recv, i, "port"))[0] for i in range(n)]
            for i in range(n):
                children.send(i, "dial", [f"127.0.0.1:{ports[j]}" for j in range(i + 1, n)])
            for i in range(n):
                await anyio.to_thread.run_sync(children.recv, i, "linked")

            async def call(i: int, op: str, *a: Any) -> Any:
                children.send(i, op, *a)
                return (await anyio.to_thread.run_sync(children.recv, i, "done"))[0]

            async def cpu_total() -> float:
                return sum([await call(i, "cpu") for i in range(n)])

            return {"mode": "a process each", **await measure(call, n, args, cpu_total)}
        finally:
            children.close()


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    run = run_processes if args.processes else run_in_process
    return [await run(n, args) for n in args.voters]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voters", type=int, nargs="+", default=[3, 5], help="POS terminals (all vote)")
    parser.add_argument("--acquisitions", type=int, default=50, help="samples of each acquisition measure")
    parser.add_argument("--commits", type=int, default=1000, help="sequential commit-latency samples")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each commits/s run")
    parser.add_argument("--callers", type=int, default=8, help="concurrent callers on one drawer")
    parser.add_argument("--drawers", type=int, default=4, help="drawers in parallel (one caller each)")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--processes", action="store_true", help="one process per terminal")
    args = parser.parse_args()
    started = time.perf_counter()
    try:
        results = anyio.run(main, args, backend=args.backend)
    except BaseExceptionGroup as group:  # show the failure itself, not levels of task groups
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None
    at5 = next((r for r in results if r["voters"] == 5), None)
    print(json.dumps({
        "backend": args.backend, "processes": args.processes,
        "config": {k: getattr(args, k) for k in ("voters", "acquisitions", "commits", "seconds", "callers", "drawers")}
        | {"acquire_timeout_s": acquire.ACQUIRE_TIMEOUT, "idle_release_s": service.IDLE_RELEASE_SECONDS},
        "results": results,
        "targets": {
            "commit_p99_le_20ms_at_5_voters": None if at5 is None else at5["targets"]["commit_p99_le_20ms_at_5_voters"],
            "commits_per_s_per_drawer_ge_200": all(r["targets"]["commits_per_s_per_drawer_ge_200"] for r in results),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }, indent=1))
