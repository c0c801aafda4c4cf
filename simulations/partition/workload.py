"""The staff at work on every box, and the tally of what they were told: the checks' ground truth."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from core.errors import MeshposError
from meshpos.documents.orders import ORDER_RANK
from meshpos.terminal import Terminal
from simulations.partition.restaurant import MENU, drawer_of


@dataclass
class Tally:
    """What the workload was told (acknowledged) and refused - the checkers' ground truth."""

    orders: dict[str, set[str]] = field(default_factory=dict)  # order id -> acknowledged stages
    stock: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MENU, 0))
    payments: dict[str, tuple[str, str]] = field(default_factory=dict)  # op id -> (drawer, status)
    refused: dict[str, int] = field(default_factory=dict)  # error code -> count
    done: dict[str, int] = field(default_factory=dict)  # operation kind -> count
    provisional_why: dict[str, int] = field(default_factory=dict)  # why a payment went provisional

    def ok(self, kind: str) -> None:
        self.done[kind] = self.done.get(kind, 0) + 1

    def no(self, exc: MeshposError) -> None:
        self.refused[str(exc.code)] = self.refused.get(str(exc.code), 0) + 1


class Box(Protocol):
    """One terminal as the workload and the checkers use it: in this process (:class:`TerminalBox`)
    or a real process through its local API (simulations/netns.py).  Refusals raise
    :class:`MeshposError` with the code the API would answer."""

    async def orders(self) -> list[dict[str, Any]]: ...
    async def create_order(self, *, table: str, waiter: str, items: list[dict[str, Any]]) -> dict[str, Any]: ...
    async def adjust_stock(self, sku: str, delta: int, reason: str) -> None: ...
    async def set_order_status(self, order_id: str, status: str) -> None: ...
    async def set_item_status(self, order_id: str, item_id: str, status: str) -> None: ...
    async def pay(self, drawer: str, *, order_id: str, amount_cents: int, method: str, op_id: str,
                  user: str) -> dict[str, Any]: ...
    async def observe(self, drawers: list[str]) -> dict[str, Any]:
        """Orders, tables, stock and each drawer's ledger as the local API shows them."""
        ...


class TerminalBox:
    """A :class:`Box` on a terminal of this process: the calls the API handlers make."""

    def __init__(self, t: Terminal) -> None:
        self.t = t

    async def orders(self) -> list[dict[str, Any]]:
        return await self.t.list_orders()

    async def create_order(self, *, table: str, waiter: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.t.create_order(table=table, waiter=waiter, items=items)

    async def adjust_stock(self, sku: str, delta: int, reason: str) -> None:
        await self.t.adjust_stock(sku, delta, reason)

    async def set_order_status(self, order_id: str, status: str) -> None:
        await self.t.set_order_status(order_id, status)

    async def set_item_status(self, order_id: str, item_id: str, status: str) -> None:
        await self.t.set_item_status(order_id, item_id, status)

    async def pay(self, drawer: str, *, order_id: str, amount_cents: int, method: str, op_id: str,
                  user: str) -> dict[str, Any]:
        return await self.t.cashier.pay(drawer, order_id=order_id, amount_cents=amount_cents, method=method,
                                        op_id=op_id, user=user, allow_provisional=True)

    async def observe(self, drawers: list[str]) -> dict[str, Any]:
        t = self.t
        ledgers = {}
        for drawer in drawers:
            try:
                d = t.cashier.drawer(drawer, from_position=0)
            except MeshposError:
                d = {"entries": [], "provisional": []}
            ledgers[drawer] = {"entries": d["entries"], "provisional": d["provisional"]}
        return {"orders": {o["id"]: o for o in await t.list_orders()}, "tables": t.tables.list(),
                "stock": {v["sku"]: v["quantity"] for v in t.inventory.list()},
                "drawers": ledgers}


class Workload:
    """The staff of every box at work, and the tally of what they were told."""

    def __init__(self, rng: random.Random, now: Callable[[], float], max_actions: int | None = None) -> None:
        self.rng, self.now = rng, now
        self.tally = Tally()
        self.writes: list[tuple[float, str]] = []  # (time, terminal) of acknowledged work
        self.actions = 0  # staff actions begun, every box together
        self.max_actions = max_actions  # then the staff stop: a run's prefix (what --ops shrinks)

    async def run(self, tid: str, kind: str, rate: float, box_of: Callable[[str], Box | None]) -> None:
        """One box's staff: ``rate`` operations per second while the box runs (``box_of`` gives
        ``None`` while it is down)."""
        rng = random.Random(self.rng.getrandbits(64))
        while True:
            await anyio.sleep(rng.expovariate(rate))
            box = box_of(tid)
            if box is None:
                continue
            if self.max_actions is not None and self.actions >= self.max_actions:
                return
            self.actions += 1
            before = sum(self.tally.done.values())
            try:
                await self._act(box, tid, kind, rng)
            except MeshposError as exc:
                self.tally.no(exc)
            if sum(self.tally.done.values()) > before:
                self.writes.append((self.now(), tid))

    async def _act(self, box: Box, tid: str, kind: str, rng: random.Random) -> None:
        open_orders = [o for o in await box.orders() if o["status"] not in ("paid", "closed", "cancelled")]
        roll = rng.random()
        if kind == "waiter" or (kind == "pos" and roll < 0.3) or not open_orders:
            if kind == "kds":
                return
            skus = rng.sample(sorted(MENU), rng.randint(1, 3))
            items = [{"sku": s, "name": s, "qty": 1, "unit_price_cents": MENU[s], "station": "grill"} for s in skus]
            order = await box.create_order(table=f"T{rng.randint(1, 12)}", waiter=tid, items=items)
            self.tally.orders[order["id"]] = {"open"}
            self.tally.ok("order")
            for s in skus:
                await box.adjust_stock(s, -1, "sale")
                self.tally.stock[s] -= 1
                self.tally.ok("stock")
            await box.set_order_status(order["id"], "sent")
            self.tally.orders[order["id"]].add("sent")
            return
        order = rng.choice(open_orders)
        if kind == "kds":
            for item in order["items"]:
                if item["kitchen_status"] in ("queued", "preparing"):
                    stage = "preparing" if item["kitchen_status"] == "queued" else "ready"
                    await box.set_item_status(order["id"], item["id"], stage)
                    self.tally.ok("kitchen")
                    return
            if ORDER_RANK[order["status"]] < ORDER_RANK["ready"]:
                await self._stage(box, order, "ready")
            return
        if ORDER_RANK[order["status"]] < ORDER_RANK["served"]:
            await self._stage(box, order, "served")
        elif kind == "pos":
            await self._pay(box, tid, order, rng)

    async def _stage(self, box: Box, order: dict[str, Any], stage: str) -> None:
        await box.set_order_status(order["id"], stage)
        self.tally.orders.setdefault(order["id"], set()).add(stage)
        self.tally.ok("stage")

    async def _pay(self, box: Box, tid: str, order: dict[str, Any], rng: random.Random) -> None:
        op_id = f"{order['id']}@{tid}"
        if op_id in self.tally.payments:
            return  # taken here already (provisionally, the order is not marked paid yet)
        result = await box.pay(drawer_of(tid), order_id=order["id"], amount_cents=order["total_cents"],
                               method=rng.choice(("cash", "card", "pix")), op_id=op_id, user=tid)
        self.tally.payments[op_id] = (drawer_of(tid), result["entry"]["status"])
        if result["entry"]["status"] == "provisional":
            why = result["entry"]["provisional"]["reason"].split(":")[0]
            self.tally.provisional_why[why] = self.tally.provisional_why.get(why, 0) + 1
        self.tally.ok("payment")

    def summary(self) -> dict[str, Any]:
        """The report's account of the work: done, refused, how payments went."""
        t = self.tally
        return {"actions": self.actions, "operations": dict(sorted(t.done.items())),
                "refused": dict(sorted(t.refused.items())),
                "payments": {s: [st for _, st in t.payments.values()].count(s) for s in ("committed", "provisional")},
                "provisional_because": dict(sorted(t.provisional_why.items()))}
