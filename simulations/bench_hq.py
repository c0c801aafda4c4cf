"""The HQ landing stores in a real PostgreSQL server; prints JSON.

    python -m simulations.bench_hq [--orders 5000] [--stores 20] [--store-orders 250]
                                   [--live-seconds 20] [--live-rate 4] [--backend asyncio|trio]

A PostgreSQL server of its own (``simulations.postgres``, fsync on), HQ processes as real
``meshpos hq run`` children, terminals in this process on loopback mutual TLS.

* **backlog**: one store's busy day written with the WAN down - ``--orders`` orders, each
  created with two items, both items bumped three times in the kitchen, the order sent, ready
  and served, paid through the drawer (which marks it paid): 11 document updates and one ledger
  entry per order.  Then the HQ comes up and the terminal links: the time until every order, item and
  payment is landed and projected in PostgreSQL and the terminal counts nothing pending.
  Target: <= 15 s for 5,000 orders (>= 50,000 updates).
* **arrival**: ``--stores`` stores (one terminal each) wrote ``--store-orders`` orders each
  (5 updates per order) with the WAN down; two HQ processes against the one database, each
  store linking to one of them, all at once: updates landed per second until every order of
  every store is in PostgreSQL.  Target: >= 5,000/s.
* **live**: then every store writes ``--live-rate`` orders a second for ``--live-seconds`` while
  linked: the time from each order's write (its ``created_at``) to its row in PostgreSQL
  (``orders.first_landed_at``), p50/p99/max.  Target: p99 <= 1 s.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import psycopg

from meshpos.config import TerminalConfig
from meshpos.terminal import Terminal
from peer.identity import Authority
from simulations.benchutil import module_command, summary
from simulations.postgres import PostgresServer

ITEMS = [{"sku": "burger", "name": "Burger", "qty": 1, "unit_price_cents": 1590, "station": "grill"},
         {"sku": "fries", "name": "Fries", "qty": 1, "unit_price_cents": 650, "station": "fryer"}]


def _store(root: Path, name: str) -> tuple[Path, Path]:
    """A store with one POS and an HQ enrollment: (the POS's data dir, the HQ's)."""
    authority = Authority.init(root / f"{name}-auth", name)
    authority.enroll("pos-1", "pos", root / name / "pos-1")
    authority.enroll("hq-1", "hq", root / name / "hq-1")
    return root / name / "pos-1", root / name / "hq-1"


@asynccontextmanager
async def _terminal(data_dir: Path) -> AsyncIterator[Terminal]:
    config = TerminalConfig(data_dir=data_dir, terminal_id="pos-1", type="pos", api_port=0, mdns=False,
                            peer_host="127.0.0.1", peer_port=0)
    async with Terminal(config).running() as t:
        yield t


class HqProcess:
    """``meshpos hq run`` as a child process; :attr:`address` is where it links."""

    def __init__(self, dsn: str, enrollments: list[Path], name: str) -> None:
        args = ["hq", "run", "--postgres", dsn, "--listen", "127.0.0.1:0", "--api-port", "0",
                "--process-name", name, "--log-level", "WARNING"]
        for e in enrollments:
            args += ["--enrollment", str(e)]
        self.proc = subprocess.Popen(module_command("meshpos.cli", *args), stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"links on ([0-9.]+:[0-9]+)", line)
        if match is None:
            self.proc.kill()
            raise RuntimeError(f"meshpos hq run did not start: {line!r}")
        self.address = match.group(1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _count(dsn: str, sql: str, *args: Any) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return int(conn.execute(sql, args).fetchone()[0])


async def _until(predicate: Any, within: float, what: str) -> None:
    with anyio.fail_after(within):
        while not await anyio.to_thread.run_sync(predicate):  # noqa: ASYNC110 - PostgreSQL has no event for it
            await anyio.sleep(0.05)


async def _write_day(t: Terminal, orders: int) -> int:
    """A busy day of ``orders`` orders on ``t``; returns the document updates it made."""
    for sku in ITEMS:
        await t.put_product(sku["sku"], name=sku["name"], price_cents=sku["unit_price_cents"],
                            station=sku["station"], category=None, active=True)
    await t.cashier.open_drawer("d1", float_cents=10_000, operator="bench")
    updates = 2
    for _ in range(orders):
        order = await t.create_order(table=None, waiter=None, items=ITEMS)
        oid = order["id"]
        for item in order["items"]:
            for stage in ("preparing", "ready", "served"):
                await t.set_item_status(oid, item["id"], stage)
        for status in ("sent", "ready", "served"):
            await t.set_order_status(oid, status)
        await t.cashier.pay("d1", order_id=oid, amount_cents=order["total_cents"], method="card")
        updates += 11  # create, six item bumps, three statuses, "paid" (marked by the payment)
    return updates


async def backlog(dsn: str, root: Path, orders: int) -> dict[str, Any]:
    pos, enrollment = _store(root, "backlog")
    async with _terminal(pos) as t:
        started = time.perf_counter()
        updates = await _write_day(t, orders)
        await anyio.sleep(2.0)  # the last "paid" marks land before the clock starts
        written_s = time.perf_counter() - started
        hq = HqProcess(dsn, [enrollment], "hq-a")
        try:
            t0 = time.perf_counter()
            t.mesh.dial(hq.address)
            paid = "SELECT count(*) FROM orders WHERE status = 'paid'"

            def landed() -> bool:
                return _count(dsn, paid) == orders and _count(dsn, "SELECT count(*) FROM payments") == orders

            await _until(landed, 600, "backlog landed")
            projected_s = time.perf_counter() - t0
            with anyio.fail_after(120):
                while (s := t.hq_status())["pending_updates"] or s["pending_ledger_entries"]:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            confirmed_s = time.perf_counter() - t0
        finally:
            hq.stop()
    return {"orders": orders, "document_updates": updates, "ledger_entries": orders + 1,
            "written_offline_s": round(written_s, 1), "landed_and_projected_s": round(projected_s, 2),
            "terminal_pending_zero_s": round(confirmed_s, 2),
            "updates_per_s": round(updates / projected_s), "target_s": 15}


async def arrival_and_live(dsn: str, root: Path, stores: int, store_orders: int, live_seconds: float,
                           live_rate: float) -> dict[str, Any]:
    dirs = [_store(root, f"s{k:02d}") for k in range(stores)]
    async with AsyncExitStack() as stack:
        terminals = [await stack.enter_async_context(_terminal(pos)) for pos, _ in dirs]
        updates = 0

        async def offline(t: Terminal) -> None:
            nonlocal updates
            for _ in range(store_orders):
                order = await t.create_order(table=None, waiter=None, items=ITEMS)
                for status in ("sent", "ready", "served", "cancelled"):
                    await t.set_order_status(order["id"], status, reason="bench" if status == "cancelled" else None)
                updates += 5

        async with anyio.create_task_group() as tg:
            for t in terminals:
                tg.start_soon(offline, t)
        hqs = [HqProcess(dsn, [e for _, e in dirs], name) for name in ("hq-a", "hq-b")]
        try:
            total = stores * store_orders
            done = "SELECT count(*) FROM orders WHERE status = 'cancelled'"
            t0 = time.perf_counter()
            for k, t in enumerate(terminals):
                t.mesh.dial(hqs[k % 2].address)
            await _until(lambda: _count(dsn, done) == total, 600, "arrival landed")
            arrival_s = time.perf_counter() - t0
            processes = _count(dsn, "SELECT count(DISTINCT hq_process) FROM doc_updates")
            # live: writes while linked, timed to their rows
            before = _count(dsn, "SELECT count(*) FROM orders")

            async def live(t: Terminal) -> None:
                end = time.perf_counter() + live_seconds
                while time.perf_counter() < end:
                    await t.create_order(table=None, waiter=None, items=ITEMS)
                    await anyio.sleep(1 / live_rate)

            async with anyio.create_task_group() as tg:
                for t in terminals:
                    tg.start_soon(live, t)
            await anyio.sleep(1.0)
            with psycopg.connect(dsn, autocommit=True) as conn:
                rows = conn.execute("SELECT extract(epoch FROM first_landed_at - created_at::timestamptz) "
                                    "FROM orders WHERE status = 'open'").fetchall()
            latencies = [float(r[0]) * 1000 for r in rows]
            live_orders = _count(dsn, "SELECT count(*) FROM orders") - before
        finally:
            for hq in hqs:
                hq.stop()
    return {"stores": stores, "orders_per_store": store_orders, "document_updates": updates,
            "hq_processes": 2, "processes_that_landed": processes, "landed_s": round(arrival_s, 2),
            "updates_per_s": round(updates / arrival_s), "target_updates_per_s": 5000,
            "live": {"orders": live_orders, "rate_per_store": live_rate, "seconds": live_seconds,
                     "write_to_row_ms": summary(latencies) if latencies else None, "target_p99_ms": 1000}}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with PostgresServer(durable=True) as server, tempfile.TemporaryDirectory(prefix="meshpos-bench-hq-") as tmp:
        root = Path(tmp)
        out: dict[str, Any] = {"benchmark": "hq", "backend": args.backend}
        if args.orders:
            out["backlog"] = await backlog(server.create_database("backlog"), root / "a", args.orders)
        if args.stores:
            out["arrival"] = await arrival_and_live(server.create_database("arrival"), root / "b", args.stores,
                                                    args.store_orders, args.live_seconds, args.live_rate)
        return out


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--stores", type=int, default=20)
    parser.add_argument("--store-orders", type=int, default=250)
    parser.add_argument("--live-seconds", type=float, default=20.0)
    parser.add_argument("--live-rate", type=float, default=4.0)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    print(json.dumps(anyio.run(main, args, backend=args.backend), indent=1))


if __name__ == "__main__":
    cli()
