"""Regression guard for one terminal: figures that a noisy neighbour does not swing; prints JSON.

    python -m simulations.bench_quick                    # measure, compare with the baseline
    python -m simulations.bench_quick --write-baseline   # measure and record a new baseline

Wall-clock throughput and latency move with whatever else runs on the machine, so they stay in
the full benchmarks (bench_terminal.py and the others, docs/performance.md).  This script
measures what does not move much:

- **peak RSS** (``VmHWM``) of a ``meshpos run`` process: idle on an empty data directory, and
  after loading a day of ``--orders`` orders (10 updates each, uncompacted);
- **CPU-seconds per 1,000 durable writes** (every thread of the process: the event loop and the
  SQLite writer) for stock adjustments and new orders, one writer, judged in units of a fixed
  reference work measured just before (:func:`reference_work_s`);
- **bytes stored per update** (the Yjs update rows of those writes);
- **CPU-seconds of the imports** a terminal needs before it serves (beyond a bare interpreter).

Each is measured in a child process, on both backends, and compared with
``simulations/bench_quick_baseline.json``: a figure more than its tolerance above the baseline
(:data:`TOLERANCE`: +10 % for memory, +25 % for CPU per write) fails the run (exit 1), and
``.ci/run`` runs it at every landing.  A change that earns a better figure records it
deliberately, with ``--write-baseline``, in the same commit; a figure much *below* the
baseline is reported (the baseline is stale) but does not fail.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from simulations.benchutil import module_command

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "bench_quick_baseline.json"
BACKENDS = ("asyncio", "trio")
#: How far above the baseline a figure may be before the run fails (a fraction of the baseline).
#: Each is well above the spread between runs on one machine (docs/performance.md): peak RSS
#: moves by under 1 %, so +10 % (the start-up regression of 52d1b4f, +22 % idle RSS, would have
#: slipped under +25 %); CPU per write by ~10 %; bytes per update not at all; import CPU, a fifth
#: of a second measured through process start, gets the most room.
TOLERANCE = {"rss_mb": 0.10, "cpu_s_per_1000": 0.25, "bytes_per_update": 0.05, "import_cpu_s": 0.30}
#: Below this fraction of the baseline a figure is reported as an improvement to record.
IMPROVED = 0.8
ITEM = {"sku": "burger", "name": "Burger", "qty": 1, "unit_price_cents": 1590, "station": "grill"}


# -- in the child process ---------------------------------------------------------------------

def reference_work_s() -> float:
    """CPU-seconds of a fixed piece of work made of what a write is made of - a pycrdt
    transaction, a msgspec encoding, a SQLite insert and commit (in memory), Python in between -
    none of it our code: the least of five runs of 10,000 (noise only ever adds).

    CPU time per write is not wall time, but it still moves with the machine: the same commit
    measured 30-60 % more CPU per write on this 2-core VM one hour than the hour before
    (cache and frequency, other tenants).  Each CPU figure is compared with the baseline *in
    units of this reference*, measured in the same process just before, so a slower machine
    moves both and only our code's share is judged."""
    import sqlite3

    import msgspec
    import pycrdt

    runs = []
    for _ in range(5):
        doc, db = pycrdt.Doc(), sqlite3.connect(":memory:")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB)")
        orders = doc.get("orders", type=pycrdt.Map)
        start = time.process_time()
        for n in range(10_000):
            record = {"id": f"o{n}", "items": [ITEM, ITEM], "status": "sent", "n": n}
            with doc.transaction():
                orders[f"o{n % 50}"] = msgspec.json.encode(record).decode()
            db.execute("INSERT INTO t (data) VALUES (?)", (msgspec.json.encode(record),))
            db.commit()
        runs.append(time.process_time() - start)
        db.close()
    return round(min(runs), 4)


async def _writes(data_dir: Path) -> dict[str, Any]:
    """CPU per 1,000 writes and bytes per update, one writer."""

    from meshpos.config import TerminalConfig
    from meshpos.terminal import Terminal

    async def per_1000(op: Any, count: int) -> float:
        """One writer, each write awaiting its own commit: the CPU a write costs, whatever the
        disk's fsync time (with concurrent writers it decides how many writes share a commit,
        and CPU per write moved by a third between runs with it).  The least of three rounds: noise
        only ever adds CPU, a regression adds it to every round."""
        rounds = []
        for _ in range(3):
            start = time.process_time()
            for _ in range(count):
                await op()
            rounds.append((time.process_time() - start) / count * 1000)
        return min(rounds)

    out: dict[str, Any] = {"reference_work_s": reference_work_s()}
    config = TerminalConfig(data_dir=data_dir, terminal_id="quick", api_port=0)
    # A fixed Yjs client id: its varint is part of every update, and a random one made bytes
    # per update differ by 3 between runs.
    async with Terminal(config, rng=random.Random(1)).running() as t:
        await t.put_product("burger", name="Burger", price_cents=1590, station="grill", category=None, active=True)
        for _ in range(100):  # warm up: first-use costs are not per-write costs
            await t.adjust_stock("burger", -1, "sale")
        first = t.store._last_update_id
        out["adjust"] = {"cpu_s_per_1000": await per_1000(lambda: t.adjust_stock("burger", -1, "sale"), 1000)}
        out["adjust"]["bytes_per_update"] = await _bytes_per_update(t.store, first)
        first = t.store._last_update_id
        order = lambda: t.create_order(table="T1", waiter="ana", items=[ITEM])  # noqa: E731
        out["create_order"] = {"cpu_s_per_1000": await per_1000(order, 500)}
        out["create_order"]["bytes_per_update"] = await _bytes_per_update(t.store, first)
    return out


async def _bytes_per_update(store: Any, after: int) -> float:
    await store.flush()
    (row,) = await store._read("SELECT AVG(LENGTH(data)) FROM updates WHERE id > ?", (after,))
    return round(row[0], 1)


async def _build_day(data_dir: Path, orders: int) -> None:
    """``orders`` orders x 4 items through their lifecycle (10 updates each), uncompacted."""
    import anyio

    from meshpos.config import TerminalConfig
    from meshpos.documents import host as host_module
    from meshpos.terminal import Terminal

    host_module.COMPACT_EVERY = 10**9
    async with Terminal(TerminalConfig(data_dir=data_dir, terminal_id="quick", api_port=0)).running() as t:
        async def one() -> None:
            o = await t.create_order(table="T1", waiter="ana", items=[ITEM])
            o = await t.add_items(o["id"], [ITEM, ITEM, ITEM])
            for stage in ("preparing", "ready"):
                await t.set_item_status(o["id"], o["items"][0]["id"], stage)
            for status in ("sent", "preparing", "ready", "served", "paid", "closed"):
                await t.set_order_status(o["id"], status)

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                async def run() -> None:
                    for _ in range(orders // 50):
                        await one()
                tg.start_soon(run)


def child(task: str, backend: str, data_dir: str, orders: int) -> None:
    import anyio

    if task == "writes":
        print(json.dumps(anyio.run(_writes, Path(data_dir), backend=backend)))
    elif task == "reference":
        print(json.dumps(reference_work_s()))
    else:
        anyio.run(_build_day, Path(data_dir), orders, backend=backend)


# -- in the parent ------------------------------------------------------------------------------

def _in_child(task: str, backend: str, data_dir: Path, orders: int = 0) -> Any:
    out = subprocess.run(module_command(__spec__.name, "--child", task, backend, str(data_dir), str(orders)),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout) if out.stdout.strip() else None


def _peak_rss_mb(data_dir: Path, backend: str) -> float:
    """``meshpos run`` on ``data_dir``: its peak RSS once it has answered its first status call."""
    import httpx

    proc = subprocess.Popen(
        [sys.executable, "-m", "meshpos.cli", "run", "--data-dir", str(data_dir), "--terminal-id", "quick",
         "--api-port", "0", "--backend", backend, "--log-level", "ERROR"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        url = re.search(r"(http://\S+)", proc.stdout.readline())
        if url is None:
            raise RuntimeError(f"meshpos run did not start (exit {proc.wait(10)})")
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url[1]}/api/v1/status", timeout=10).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return round(int(re.search(r"VmHWM:\s+(\d+)", status)[1]) / 1024, 1)  # type: ignore[index]
    finally:
        proc.terminate()
        proc.wait(10)


def _child_cpu_s(code: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _import_cpu_s() -> float:
    """What importing a serving terminal costs beyond the interpreter's own start: the least of
    seven of each, as for the writes - interference only ever adds CPU (the median of five read
    0.42 s once in CI right after the test suite, against 0.25-0.26 s in runs minutes later)."""
    bare = min(_child_cpu_s("pass") for _ in range(7))
    full = min(_child_cpu_s("import meshpos.terminal, meshpos.server, meshpos.cli") for _ in range(7))
    return round(max(full - bare, 0.0), 3)


def measure(orders: int) -> dict[str, Any]:
    result: dict[str, Any] = {"orders": orders, "import_cpu_s": _import_cpu_s(),
                              "reference_work_s": _in_child("reference", "-", Path("-"))}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _in_child("build", "asyncio", root / "day", orders)
        for backend in BACKENDS:
            writes = _in_child("writes", backend, root / f"writes-{backend}")
            reference = writes.pop("reference_work_s")
            result[backend] = {
                "idle_rss_mb": _peak_rss_mb(root / f"idle-{backend}", backend),
                "day_rss_mb": _peak_rss_mb(root / "day", backend),
                **{f"{op}_{key}": round(value, 3) for op, figures in writes.items() for key, value in figures.items()},
                "reference_work_s": reference,
            }
    return result


def _kind(key: str) -> str | None:
    return next((kind for kind in TOLERANCE if key.endswith(kind)), None)


def compare(result: dict[str, Any], baseline: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(regressions, improvements), each a line naming the figure, its value and the baseline's.

    CPU figures are judged against the baseline's scaled by how much more (or less) the
    reference work cost here than when the baseline was recorded (``reference_work_s``, in the
    same block of the result); memory and bytes as they are."""
    worse, better = [], []

    def walk(now: dict[str, Any], then: dict[str, Any], path: str) -> None:
        ref_now, ref_then = now.get("reference_work_s"), then.get("reference_work_s")
        scale = ref_now / ref_then if isinstance(ref_now, int | float) and isinstance(ref_then, int | float) \
            and ref_now > 0 and ref_then > 0 else 1.0
        for key, value in now.items():
            old = then.get(key)
            if isinstance(value, dict) and isinstance(old, dict):
                walk(value, old, f"{path}{key}.")
                continue
            kind = _kind(key)
            if kind is None or not isinstance(old, int | float) or old <= 0:
                continue
            if kind != "rss_mb" and kind != "bytes_per_update":
                old = round(old * scale, 4)  # the baseline's CPU on a machine as fast as this one is now
            line = f"{path}{key}: {value} (baseline {old}, {100 * (value / old - 1):+.0f} %)"
            if value > old * (1 + TOLERANCE[kind]):
                worse.append(line)
            elif value < old * IMPROVED:
                better.append(line)

    walk(result, baseline, "")
    return worse, better


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(*sys.argv[2:5], int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=1000, help="orders in the loaded day (default 1000)")
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--write-baseline", action="store_true", help="record this run as the new baseline")
    args = parser.parse_args()
    baseline = None if args.write_baseline else json.loads(args.baseline.read_text())
    if baseline is not None and baseline.get("orders") != args.orders:
        sys.exit(f"the baseline was measured with --orders {baseline.get('orders')}, not {args.orders}")
    result = measure(args.orders)
    result["cpu_count"] = os.cpu_count()
    if baseline is None:
        commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
        result["recorded"] = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "on_top_of": commit}
        args.baseline.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    worse, better = compare(result, baseline)
    result["regressions"], result["improvements"] = worse, better
    print(json.dumps(result, indent=2))
    if better:
        print("better than the baseline (record it with --write-baseline):\n  " + "\n  ".join(better), file=sys.stderr)
    if worse:
        sys.exit("regression against " + str(args.baseline) + ":\n  " + "\n  ".join(worse))


if __name__ == "__main__":
    main()
