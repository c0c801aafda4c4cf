"""``meshpos demo``: three terminals (POS, KDS, waiter handheld) of one store on this machine.

They are enrolled by a throw-away store authority in a temporary directory, find each other over
mDNS on the loopback interface (no address given to any of them), link over mutual TLS, and run
a scripted lunch service in which each terminal does its own job: the POS sets up and takes
payment, the waiter seats guests and takes orders, the kitchen display bumps items.
"""

from __future__ import annotations

import functools
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

import anyio

from meshpos.config import TerminalConfig
from meshpos.events import Reset
from meshpos.server import serve_api
from meshpos.terminal import Terminal
from peer.identity import Authority, save_roster

TERMINALS = [("pos-1", "pos"), ("kds-1", "kds"), ("waiter-1", "waiter")]
LINK_TIMEOUT = 15.0
SYNC_TIMEOUT = 10.0

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


class _Floor:
    """The three terminals of the demo, and how long the mesh takes to carry each step."""

    def __init__(self, pos: Terminal, kds: Terminal, waiter: Terminal) -> None:
        self.pos, self.kds, self.waiter = pos, kds, waiter
        self.all = [pos, kds, waiter]

    @staticmethod
    def versions(t: Terminal) -> dict[str, dict[int, int]]:
        return {name: t.host.versions(name) for name in t.host.names()}

    async def synced(self) -> float:
        """Wait until every terminal holds the same documents; the milliseconds it took."""
        started = anyio.current_time()
        with anyio.fail_after(SYNC_TIMEOUT):
            while True:
                first = self.versions(self.all[0])
                if all(self.versions(t) == first for t in self.all[1:]):
                    return (anyio.current_time() - started) * 1000
                await anyio.sleep(0.002)


async def _lunch(floor: _Floor) -> None:
    pos, kds, waiter = floor.pos, floor.kds, floor.waiter
    prices = {sku: price for sku, _, price, *_ in MENU}
    names = {sku: name for sku, name, *_ in MENU}
    stations = {sku: station for sku, _, _, station, *_ in MENU}
    _say("\n-- opening (pos-1): catalog, stock count, floor plan")
    for sku, name, price, station, category, stock in MENU:
        await pos.put_product(sku, name=name, price_cents=price, station=station, category=category, active=True)
        await pos.count_stock(sku, stock, user="manager")
        await pos.set_stock_flags(sku, low_threshold=2)
    for n in range(1, 5):
        await pos.put_table(f"T{n}", name=f"Table {n}", seats=4, area="patio" if n > 2 else "inside")
    _say(f"   {len(MENU)} products, 4 tables; on kds-1 and waiter-1 {await floor.synced():.1f} ms later")
    await pos.cashier.open_drawer("main", float_cents=10_000, operator="carla")
    _say("   drawer 'main' opened with 100.00 (pos-1 is the store's one POS: the whole cashier quorum)")

    _say("\n-- lunch rush (waiter-1): guests seated, orders in")
    orders = {}
    for table, who, guests, skus in PARTIES:
        await waiter.update_table(table, status="occupied", waiter=who, guests=guests, set_waiter=True)
        items = [{"sku": s, "name": names[s], "qty": 1, "unit_price_cents": prices[s], "station": stations[s]}
                 for s in skus]
        try:
            order = await waiter.create_order(table=table, waiter=who, items=items)
        except Exception as exc:  # noqa: BLE001 - the demo shows refusals instead of crashing
            _say(f"   {table}: refused: {exc}")
            continue
        orders[table] = order
        await waiter.set_order_status(order["id"], "sent", user=who)
        for sku in skus:
            item = await waiter.adjust_stock(sku, -1, "sale", user=who)
            if item["quantity"] <= 0 and not item["out_of_stock"]:
                await waiter.set_stock_flags(sku, out_of_stock=True, user=who)
                _say(f"   86: {names[sku]} is out of stock")
        _say(f"   {table} ({who}, {guests} guests): {', '.join(skus)} = {order['total_cents'] / 100:.2f}; "
             f"on the kitchen screen {await floor.synced():.1f} ms later")

    _say("\n-- kitchen (kds-1): items bumped through their stations")
    for table, order in orders.items():
        for item in order["items"]:
            await kds.set_item_status(order["id"], item["id"], "preparing", user="kds")
            await kds.set_item_status(order["id"], item["id"], "ready", user="kds")
        await kds.set_order_status(order["id"], "ready", user="kds")
        _say(f"   {table}: ready; the waiter's handheld knows {await floor.synced():.1f} ms later")
    late = await waiter.add_items(orders["T1"]["id"], [{"sku": "soda", "name": "Soda", "qty": 1,
                                                         "unit_price_cents": prices["soda"], "station": "bar"}])
    await waiter.adjust_stock("soda", -1, "sale", user="ana")
    extra = late["items"][-1]
    await waiter.void_item(late["id"], extra["id"], "guest changed their mind", user="ana")
    await waiter.adjust_stock("soda", 1, "void", user="ana")
    await floor.synced()
    _say("   T1 added a soda on waiter-1, then voided it (stock given back)")

    _say("\n-- service (waiter-1), payment (pos-1's drawer), table turns")
    for n, (table, order) in enumerate(orders.items()):
        await waiter.set_order_status(order["id"], "served", user="ana")
        await floor.synced()
        # Half the tables pay cash at the counter, half by card on the waiter's handheld: both go
        # through the drawer's quorum lock (held by whoever takes the payment), never the CRDT.
        payer, method = (pos, "cash") if n % 2 == 0 else (waiter, "card")
        total = (await payer.get_order(order["id"]))["total_cents"]
        await payer.cashier.pay("main", order_id=order["id"], amount_cents=total, method=method,
                                tip_cents=200, op_id=f"{table}-pay", user=payer.config.terminal_id)
        await floor.synced()  # the covering payment marked the order paid; pos-1 closes it
        await pos.set_order_status(order["id"], "closed", user="cashier")
        await pos.update_table(table, status="cleaning", waiter=None, guests=0, set_waiter=True)
        await pos.update_table(table, status="free")
        _say(f"   {table}: paid {total / 100:.2f} + 2.00 tip by {method} on {payer.config.terminal_id}, "
             "cleaned, free again")
    await floor.synced()
    drawer = pos.cashier.summary("main")
    closed = await pos.cashier.close_drawer("main", counted_cents=drawer["expected_cash_cents"], user="carla")
    _say(f"   drawer closed: expected {closed['entry']['expected_cents'] / 100:.2f} in cash, counted "
         f"{closed['entry']['counted_cents'] / 100:.2f}; card {drawer['totals_by_method']['card'] / 100:.2f}")


async def _linked(terminals: list[Terminal]) -> float:
    """Seconds until every terminal is linked to the other two, found by mDNS alone."""
    started = anyio.current_time()
    ids = {t.config.terminal_id for t in terminals}
    try:
        with anyio.fail_after(LINK_TIMEOUT):
            while not all(set(t.mesh.links) == ids - {t.config.terminal_id}  # type: ignore[union-attr]  # noqa: ASYNC110
                          for t in terminals):
                await anyio.sleep(0.02)
    except TimeoutError:
        seen = {t.config.terminal_id: sorted(t.mesh.links) for t in terminals}  # type: ignore[union-attr]
        raise RuntimeError(f"the terminals did not find each other over mDNS on 127.0.0.1 within {LINK_TIMEOUT:.0f} s "
                           f"(links: {seen}); is multicast on the loopback interface blocked?") from None
    return anyio.current_time() - started


async def run_demo(api_port: int = 0, keep_running: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="meshpos-demo-") as tmp:
        root = Path(tmp)
        authority = Authority.init(root / "authority", "meshpos demo")
        configs = []
        for n, (tid, kind) in enumerate(TERMINALS):
            authority.enroll(tid, kind, root / tid)
            configs.append(TerminalConfig(data_dir=root / tid, terminal_id=tid, type=kind,
                                          api_port=api_port + n if api_port else 0, peer_host="127.0.0.1",
                                          peer_port=0, mdns_interfaces=["127.0.0.1"]))
        for tid, _ in TERMINALS:  # every box starts with the final roster (no "adopted roster" noise)
            save_roster(root / tid, authority.roster)
        _say(f"meshpos demo: store authority and three enrolled terminals in {tmp}")
        async with AsyncExitStack() as stack:
            terminals = [await stack.enter_async_context(Terminal(c).running()) for c in configs]
            tg = await stack.enter_async_context(anyio.create_task_group())
            shutdown = anyio.Event()
            urls: dict[str, str] = {}
            for t in terminals:
                ready = anyio.Event()

                def on_ready(url: str, t: Terminal = t, ready: anyio.Event = ready) -> None:
                    urls[t.config.terminal_id] = url
                    ready.set()

                tg.start_soon(functools.partial(serve_api, t, shutdown=shutdown, on_ready=on_ready))
                await ready.wait()
            for t in terminals:
                url = urls[t.config.terminal_id]
                _say(f"   {t.config.terminal_id} ({t.config.type}): API at {url}, peer links on "
                     f"127.0.0.1:{t.mesh.port}")  # type: ignore[union-attr]
            took = await _linked(terminals)
            _say(f"   found each other by mDNS and linked (mutual TLS) in {took:.1f} s - no address typed")
            pos = terminals[0]
            counts: dict[str, int] = {}
            async with pos.events.subscribe(0) as stream:
                await _lunch(_Floor(*terminals))
                last = pos.store.last_cursor
                async for event in stream:
                    if not isinstance(event, Reset):
                        counts[event.type] = counts.get(event.type, 0) + 1
                        if event.cursor >= last:
                            break
            _say("\n-- what happened (every terminal holds the same documents)")
            for t in terminals:
                orders = await t.list_orders()
                inv = {v["sku"]: v for v in t.inventory.list()}
                st = await t.status()
                ledger = t.cashier.drawer("main", from_position=0)["entries"]
                _say(f"   {t.config.terminal_id}: {len(orders)} orders, revenue "
                     f"{sum(o['total_cents'] for o in orders) / 100:.2f}; stock " + ", ".join(
                         f"{v['name']} {v['quantity']}{' (86)' if v['out_of_stock'] else ''}" for v in inv.values())
                     + f"; {st['storage']['updates']} durable updates; drawer ledger {len(ledger)} entries")
            _say("   events on pos-1: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
            _say("\nAPIs (each terminal's own; try GET /api/v1/orders, /api/v1/peers, /api/v1/status, "
                 "/api/v1/cashier/drawers/main):")
            for tid, url in urls.items():
                _say(f"   {tid}: {url}  (OpenAPI: {url}/openapi.json, events: "
                     f"ws://{url.removeprefix('http://')}/api/v1/events?cursor=0, kitchen: {url}/kds, "
                     f"floor: {url}/tables, monitor: {url}/monitor)")
            if keep_running:
                _say("serving; press Ctrl-C to stop (the data directories are removed on exit)")
                with anyio.open_signal_receiver(2, 15) as signals:
                    async for _ in signals:
                        break
            shutdown.set()
