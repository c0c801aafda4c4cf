"""Benchmark one terminal; prints JSON.  Targets (docs/performance.md): >= 2,000 durable writes/s
through the Python API, cold start <= 1 s with a busy day loaded, RSS <= 80 MB.

    python -m simulations.bench_terminal [--orders 5000] [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

from meshpos.config import TerminalConfig
from meshpos.documents import host as host_module
from meshpos.terminal import Terminal

ITEM = {"sku": "burger", "name": "Burger", "qty": 1, "unit_price_cents": 1590, "station": "grill"}


async def _parallel(n_tasks: int, per_task: int, op) -> float:  # noqa: ANN001
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n_tasks):
            async def run() -> None:
                for _ in range(per_task):
                    await op()
            tg.start_soon(run)
    return n_tasks * per_task / (time.perf_counter() - start)


async def python_api(data_dir: Path) -> dict:
    config = TerminalConfig(data_dir=data_dir, terminal_id="bench", api_port=0)
    out = {}
    async with Terminal(config).running() as t:
        await t.put_product("burger", name="Burger", price_cents=1590, station="grill", category=None, active=True)
        adjust = lambda: t.adjust_stock("burger", -1, "sale")  # noqa: E731
        out["adjust_1_writer_per_s"] = round(await _parallel(1, 2000, adjust))
        out["adjust_32_writers_per_s"] = round(await _parallel(32, 200, adjust))
        order = lambda: t.create_order(table="T1", waiter="ana", items=[ITEM])  # noqa: E731
        out["create_order_1_writer_per_s"] = round(await _parallel(1, 1000, order))
        out["create_order_32_writers_per_s"] = round(await _parallel(32, 100, order))
    return out


async def http_api(data_dir: Path) -> dict:
    from meshpos.server import serve_api

    config = TerminalConfig(data_dir=data_dir, terminal_id="bench-http", api_port=0)
    async with Terminal(config).running() as t, anyio.create_task_group() as tg:
        shutdown, ready, url = anyio.Event(), anyio.Event(), []
        tg.start_soon(lambda: serve_api(t, shutdown=shutdown, on_ready=lambda u: (url.append(u), ready.set())))
        await ready.wait()
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=url[0], limits=limits) as client:
            await client.put("/api/v1/catalog/burger", json={"name": "Burger", "price_cents": 1590})
            async def adjust() -> None:
                r = await client.post("/api/v1/inventory/burger/adjust", json={"delta": -1, "reason": "sale"})
                r.raise_for_status()
            rate_1 = await _parallel(1, 500, adjust)
            rate_16 = await _parallel(16, 100, adjust)
        shutdown.set()
    return {"http_adjust_1_client_per_s": round(rate_1), "http_adjust_16_clients_per_s": round(rate_16)}


async def busy_day(data_dir: Path, orders: int) -> dict:
    """5,000 orders x 4 items through their lifecycle: 10 updates per order."""
    old = host_module.COMPACT_EVERY
    host_module.COMPACT_EVERY = 10**9  # build the worst case: an uncompacted log
    config = TerminalConfig(data_dir=data_dir, terminal_id="busy", api_port=0)
    try:
        async with Terminal(config).running() as t:
            async def one() -> None:
                o = await t.create_order(table="T1", waiter="ana", items=[ITEM])
                o = await t.add_items(o["id"], [ITEM, ITEM, ITEM])
                for stage in ("preparing", "ready"):
                    await t.set_item_status(o["id"], o["items"][0]["id"], stage)
                for status in ("sent", "preparing", "ready", "served", "paid", "closed"):
                    await t.set_order_status(o["id"], status)
            start = time.perf_counter()
            await _parallel(50, orders // 50, one)
            build_s = time.perf_counter() - start
            size = await t.store.size()
    finally:
        host_module.COMPACT_EVERY = old
    return {"orders": orders, "updates": size["updates"], "build_seconds": round(build_s, 1),
            "db_bytes_uncompacted": size["bytes"]}


def cold_start(data_dir: Path, backend: str) -> dict:
    """Process start -> first successful API response, and RSS after loading."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshpos.cli", "run", "--data-dir", str(data_dir), "--terminal-id", "busy",
         "--api-port", "0", "--backend", backend, "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        url = re.search(r"(http://\S+)", line).group(1)
        while True:
            try:
                status = httpx.get(f"{url}/api/v1/status", timeout=5).json()
                break
            except httpx.HTTPError:
                time.sleep(0.005)
        elapsed = time.perf_counter() - start
        rss_kb = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_text()).group(1))
        return {"seconds": round(elapsed, 3), "rss_mb": round(rss_kb / 1024, 1),
                "orders_loaded": len(httpx.get(f"{url}/api/v1/orders", timeout=30).json()),
                "storage": status["storage"]}
    finally:
        proc.terminate()
        proc.wait(10)


async def compact(data_dir: Path) -> dict:
    config = TerminalConfig(data_dir=data_dir, terminal_id="busy", api_port=0)
    async with Terminal(config).running() as t:
        for name in t.host.names():
            await t.host.compact(name).wait()
        await t.store.flush()
        # what the running terminal's housekeeping does every 30 s: keep event_retention events
        pruned = await t.store.prune_events(config.event_retention)
    conn_path = data_dir / "meshpos.db"
    import sqlite3

    conn = sqlite3.connect(conn_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("VACUUM")
    conn.close()
    return {"db_bytes_compacted": conn_path.stat().st_size, "events_pruned_to_retention": pruned}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        result = {"backend": args.backend, "cpu_count": os.cpu_count()}
        result["python_api"] = anyio.run(python_api, tmp / "api", backend=args.backend)
        result["http_api"] = anyio.run(http_api, tmp / "http", backend=args.backend)
        result["busy_day"] = anyio.run(busy_day, tmp / "busy", args.orders, backend=args.backend)
        result["cold_start_uncompacted"] = cold_start(tmp / "busy", args.backend)
        result["busy_day"].update(anyio.run(compact, tmp / "busy", backend=args.backend))
        result["cold_start_compacted"] = cold_start(tmp / "busy", args.backend)
        pa = result["python_api"]
        starts = ("cold_start_uncompacted", "cold_start_compacted")
        result["targets"] = {
            "durable_writes_per_s>=2000": max(pa["adjust_1_writer_per_s"], pa["adjust_32_writers_per_s"]) >= 2000,
            "cold_start<=1s": max(result[k]["seconds"] for k in starts) <= 1.0,
            "rss<=80MB": max(result[k]["rss_mb"] for k in starts) <= 80,
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
