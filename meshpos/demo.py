"""``meshpos demo``: one terminal, a temporary data dir, a short scripted lunch service."""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio

from meshpos.config import TerminalConfig
from meshpos.events import Reset
from meshpos.server import serve_api
from meshpos.terminal import Terminal

MENU = [
    ("burger", "Burger", 1590, "grill", "mains", 20),
    ("fries", "Fries", 690, "fryer", "sides", 30),
    ("salad", "Caesar salad", 1290, "cold", "mains", 3),
    ("soda", "Soda", 450, "bar", "drinks", 48),
]
PARTIES = [("T1", "ana", 2, ["burger", "fries", "soda"]), ("T2", "bruno", 4, ["salad", "burger", "soda"]),
           ("T3", "ana", 3, ["salad", "salad", "fries"]), ("T4", "bruno", 2, ["burger", "soda"])]


def _say(text: str) -> None:
    print(text, flush=True)


async def _lunch(t: Terminal) -> None:
    prices = {sku: price for sku, _, price, *_ in MENU}
    names = {sku: name for sku, name, *_ in MENU}
    stations = {sku: station for sku, _, _, station, *_ in MENU}
    _say("\n-- opening: catalog, stock count, floor plan")
    for sku, name, price, station, category, stock in MENU:
        await t.put_product(sku, name=name, price_cents=price, station=station, category=category, active=True)
        await t.count_stock(sku, stock, user="manager")
        await t.set_stock_flags(sku, low_threshold=2)
    for n in range(1, 5):
        await t.put_table(f"T{n}", name=f"Table {n}", seats=4, area="patio" if n > 2 else "inside")
    _say(f"   {len(MENU)} products, {4} tables")

    _say("\n-- lunch rush: guests seated, orders in")
    orders = {}
    for table, waiter, guests, skus in PARTIES:
        await t.update_table(table, status="occupied", waiter=waiter, guests=guests, set_waiter=True)
        items = [{"sku": s, "name": names[s], "qty": 1, "unit_price_cents": prices[s], "station": stations[s]}
                 for s in skus]
        try:
            order = await t.create_order(table=table, waiter=waiter, items=items)
        except Exception as exc:  # noqa: BLE001 - the demo shows refusals instead of crashing
            _say(f"   {table}: refused: {exc}")
            continue
        orders[table] = order
        await t.set_order_status(order["id"], "sent", user=waiter)
        _say(f"   {table} ({waiter}, {guests} guests): {', '.join(skus)} = {order['total_cents'] / 100:.2f}")
        for sku in skus:
            item = await t.adjust_stock(sku, -1, "sale", user=waiter)
            if item["quantity"] <= 0 and not item["out_of_stock"]:
                await t.set_stock_flags(sku, out_of_stock=True, user="kitchen")
                _say(f"   86: {names[sku]} is out of stock")

    _say("\n-- kitchen: the KDS bumps items through its stations")
    for table, order in orders.items():
        for item in order["items"]:
            await t.set_item_status(order["id"], item["id"], "preparing", user="kds")
            await t.set_item_status(order["id"], item["id"], "ready", user="kds")
        await t.set_order_status(order["id"], "ready", user="kds")
        _say(f"   {table}: ready")
    late = await t.add_items(orders["T1"]["id"], [{"sku": "soda", "name": "Soda", "qty": 1,
                                                    "unit_price_cents": prices["soda"], "station": "bar"}])
    await t.adjust_stock("soda", -1, "sale", user="ana")
    extra = late["items"][-1]
    await t.void_item(late["id"], extra["id"], "guest changed their mind", user="ana")
    await t.adjust_stock("soda", 1, "void", user="ana")
    _say("   T1 added a soda, then voided it (stock given back)")

    _say("\n-- service, payment, table turns")
    for table, order in orders.items():
        await t.set_order_status(order["id"], "served")
        done = await t.set_order_status(order["id"], "paid", user="cashier")
        await t.set_order_status(order["id"], "closed", user="cashier")
        await t.update_table(table, status="cleaning", waiter=None, guests=0, set_waiter=True)
        await t.update_table(table, status="free")
        _say(f"   {table}: paid {done['total_cents'] / 100:.2f}, cleaned, free again")


async def run_demo(api_port: int = 0, keep_running: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="meshpos-demo-") as tmp:
        config = TerminalConfig(data_dir=Path(tmp), terminal_id="pos-1", type="pos", api_port=api_port)
        async with Terminal(config).running() as t, anyio.create_task_group() as tg:
            shutdown = anyio.Event()
            ready = anyio.Event()
            url = ""

            def on_ready(u: str) -> None:
                nonlocal url
                url = u
                ready.set()

            tg.start_soon(lambda: serve_api(t, shutdown=shutdown, on_ready=on_ready))
            await ready.wait()
            _say(f"meshpos demo: terminal pos-1 in {tmp}, API at {url} (OpenAPI: {url}/openapi.json)")
            counts: dict[str, int] = {}
            async with t.events.subscribe(0) as stream:
                await _lunch(t)
                last = t.store.last_cursor
                async for event in stream:
                    if not isinstance(event, Reset):
                        counts[event.type] = counts.get(event.type, 0) + 1
                        if event.cursor >= last:
                            break
            orders = await t.list_orders()
            inv = {i: t.inventory.view(i) for i in t.inventory.skus()}
            _say("\n-- what happened")
            _say(f"   orders: {len(orders)}, revenue {sum(o['total_cents'] for o in orders) / 100:.2f}")
            _say("   stock:  " + ", ".join(
                f"{v['name']} {v['quantity']}{' (86)' if v['out_of_stock'] else ''}" for v in inv.values()))
            _say("   events: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
            st = await t.status()
            _say(f"   durable: {st['storage']['updates']} updates, {st['storage']['audit']} audit rows "
                 f"in {tmp}/meshpos.db")
            _say(f"\nAPI: {url}/api/v1/orders  {url}/api/v1/inventory  {url}/api/v1/status  "
                 f"ws://{url.removeprefix('http://')}/api/v1/events?cursor=0")
            if keep_running:
                _say("serving; press Ctrl-C to stop (the data directory is removed on exit)")
                with anyio.open_signal_receiver(2, 15) as signals:
                    async for _ in signals:
                        break
            shutdown.set()
