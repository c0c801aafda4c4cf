"""Orders of one business day: ``orders/<YYYY-MM-DD>``.

Lifecycle rule (why it converges): an order's status is not a register that writers overwrite -
it is *derived* from the set of stages the order has reached.  Each stage is its own key in the
order's ``stages`` map, written once by whoever reaches it; concurrent changes on different
terminals therefore union, and the status every replica computes is the highest-ranked stage
present.  "Furthest stage wins" follows from the CRDT merge, not from clocks or writer order.

Ranks: open < sent < preparing < ready < served < cancelled < paid < closed.
- A local change may only move to a higher rank (skipping is fine; going back is refused).
- ``cancelled`` is reachable from open..served only, and nothing follows it locally.
- Concurrent cancel vs paid: ``paid`` outranks ``cancelled`` - money was taken, so the order is
  paid and the cancellation stays visible (``cancellation.overridden_by``) for a refund.
- Concurrent cancel vs served/ready/...: ``cancelled`` wins - the deliberate act with a reason.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pycrdt

from meshpos.clock import time_id
from meshpos.documents.host import Model
from meshpos.documents.values import as_int, check_id, plain
from meshpos.errors import InvalidInput, InvalidTransition, NotFound, PermissionDenied

ORDER_STAGES = ("open", "sent", "preparing", "ready", "served", "cancelled", "paid", "closed")
ORDER_RANK = {stage: rank for rank, stage in enumerate(ORDER_STAGES)}
KITCHEN_STAGES = ("queued", "preparing", "ready", "served")
KITCHEN_RANK = {stage: rank for rank, stage in enumerate(KITCHEN_STAGES)}
MAX_QTY = 10_000
MAX_PRICE_CENTS = 100_000_000


def doc_name(day: date) -> str:
    return f"orders/{day.isoformat()}"


def furthest(stages: dict[str, Any], rank: dict[str, int]) -> str:
    known = [s for s in stages if s in rank]
    return max(known, key=rank.__getitem__)


def check_transition(current: str, target: str) -> None:
    """The local lifecycle rule; raises :class:`InvalidTransition` with the reason."""
    if target not in ORDER_RANK:
        raise InvalidInput(f"unknown status {target!r}; one of {', '.join(ORDER_STAGES)}")
    if current == "cancelled":
        raise InvalidTransition(f"order is cancelled; it cannot become {target}")
    if target == "cancelled" and ORDER_RANK[current] > ORDER_RANK["served"]:
        raise InvalidTransition(f"order is {current}; a {current} order cannot be cancelled (refund it)")
    if ORDER_RANK[target] <= ORDER_RANK[current]:
        raise InvalidTransition(
            f"order is {current}; status moves forward only "
            f"({' -> '.join(s for s in ORDER_STAGES if s != 'cancelled')}), not to {target}"
        )


def _item_total(item: dict[str, Any]) -> int:
    unit = item["unit_price_cents"] + sum(m["price_cents"] for m in item["modifiers"])
    return item["qty"] * unit


def validate_item(raw: dict[str, Any]) -> dict[str, Any]:
    """Normalise one new item; raises :class:`InvalidInput` naming the bad field."""
    def need_str(key: str, required: bool = True, max_len: int = 200) -> str | None:
        value = raw.get(key)
        if (value is None or value == "") and not required:
            return None
        if not isinstance(value, str) or not value or len(value) > max_len:
            raise InvalidInput(f"item.{key} must be a non-empty string of at most {max_len} characters")
        return value

    def need_int(key: str, lo: int, hi: int, default: int | None = None) -> int:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise InvalidInput(f"item.{key} must be an integer in {lo}..{hi}, got {value!r}")
        return value

    modifiers = []
    for m in raw.get("modifiers") or []:
        if isinstance(m, str):
            m = {"name": m, "price_cents": 0}
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not m["name"]:
            raise InvalidInput("item.modifiers entries are strings or {name, price_cents}")
        price = m.get("price_cents", 0)
        if isinstance(price, bool) or not isinstance(price, int) or not 0 <= price <= MAX_PRICE_CENTS:
            raise InvalidInput("item.modifiers[].price_cents must be a non-negative integer")
        modifiers.append({"name": m["name"], "price_cents": price})
    return {
        "sku": check_id("sku", raw.get("sku")),
        "name": need_str("name"),
        "qty": need_int("qty", 1, MAX_QTY),
        "unit_price_cents": need_int("unit_price_cents", 0, MAX_PRICE_CENTS),
        "modifiers": modifiers,
        "notes": need_str("notes", required=False, max_len=500) or "",
        "station": need_str("station", required=False, max_len=64) or "",
    }


class OrdersDoc(Model):
    kind = "orders"

    def attach(self) -> None:
        self.orders = self.doc.get("orders", type=pycrdt.Map)
        self._created: set[str] = set()
        self._touched: set[str] = set()
        self.orders.observe_deep(self._observe)

    def _observe(self, events: list[Any]) -> None:
        for event in events:
            path = list(event.path)
            if not path:
                for key, change in event.keys.items():
                    if change["action"] == "add":
                        self._created.add(key)
                    self._touched.add(key)
            else:
                self._touched.add(path[0])

    def drain_events(self) -> list[tuple[str, dict[str, Any]]]:
        created, touched = self._created, self._touched
        self._created, self._touched = set(), set()
        out = []
        for oid in sorted(touched):
            if oid not in self.orders:
                continue
            order = self.view(oid)
            if oid in created:
                out.append(("order:created", {"order_id": oid, "order": order}))
            elif order["status"] == "cancelled":
                out.append(("order:cancelled", {"order_id": oid, "order": order}))
            else:
                out.append(("order:updated", {"order_id": oid, "order": order}))
        return out

    # -- reads ---------------------------------------------------------------------------------

    def ids(self) -> list[str]:
        return sorted(self.orders.keys())

    def _get(self, order_id: str) -> pycrdt.Map:
        try:
            return self.orders[order_id]
        except KeyError:
            raise NotFound(f"order {order_id!r} not found") from None

    def view(self, order_id: str) -> dict[str, Any]:
        raw = plain(self._get(order_id).to_py())
        stages = raw.get("stages", {})
        status = furthest(stages, ORDER_RANK)
        items = []
        for item in sorted(raw.get("items", {}).values(), key=lambda i: (i["added_at"], i["id"])):
            kitchen = item.get("kitchen", {})
            void = item.get("void")
            items.append({
                "id": item["id"], "sku": item["sku"], "name": item["name"], "qty": as_int(item["qty"]),
                "unit_price_cents": as_int(item["unit_price_cents"]),
                "modifiers": [
                    {"name": m["name"], "price_cents": as_int(m["price_cents"])}
                    for m in item.get("modifiers", [])
                ],
                "notes": item.get("notes", ""), "station": item.get("station", ""),
                "kitchen_status": furthest(kitchen, KITCHEN_RANK) if kitchen else "queued",
                "voided": void is not None, "void": void,
                "added_at": item["added_at"], "added_by": item.get("added_by"),
            })
        for item in items:
            item["total_cents"] = 0 if item["voided"] else _item_total(item)
        cancellation = stages.get("cancelled")
        if cancellation is not None and status != "cancelled":
            cancellation = {**cancellation, "overridden_by": status}
        return {
            "id": raw["id"], "business_day": raw["business_day"], "table": raw.get("table"),
            "waiter": raw.get("waiter"), "notes": raw.get("notes", ""), "status": status,
            "stages": {s: v["at"] for s, v in stages.items()}, "cancellation": cancellation,
            "items": items, "total_cents": sum(i["total_cents"] for i in items),
            "created_at": raw["created_at"], "created_by": raw["created_by"],
        }

    def list(self, *, status: str | None = None, table: str | None = None) -> list[dict[str, Any]]:
        out = []
        for oid in self.ids():
            order = self.view(oid)
            if status is not None and order["status"] != status:
                continue
            if table is not None and order["table"] != table:
                continue
            out.append(order)
        return out

    # -- writes (each runs inside the host's transaction) -----------------------------------------

    def _writable(self) -> None:
        if self.read_only:
            raise PermissionDenied("this business day is archived; its orders are read-only")

    def _new_item(self, item: dict[str, Any], order_id: str) -> tuple[str, pycrdt.Map]:
        now = self.now()
        item_id = f"{order_id}.{time_id(self.clock())[-8:]}"
        return item_id, pycrdt.Map({
            **item, "id": item_id, "added_at": now, "added_by": self.terminal_id,
            "kitchen": pycrdt.Map({"queued": now}),
        })

    def create(
        self, *, day: date, table: str | None, waiter: str | None, items: list[dict[str, Any]],
        notes: str = "",
    ) -> str:
        self._writable()
        if table is not None:
            check_id("table", table)
        clean = [validate_item(i) for i in items]
        order_id = f"{day.strftime('%Y%m%d')}-{time_id(self.clock())}"
        now = self.now()
        item_maps = {}
        for item in clean:
            item_id, m = self._new_item(item, order_id)
            while item_id in item_maps:
                item_id, m = self._new_item(item, order_id)
            item_maps[item_id] = m
        self.orders[order_id] = pycrdt.Map({
            "id": order_id, "business_day": day.isoformat(), "table": table, "waiter": waiter,
            "notes": notes, "created_at": now, "created_by": self.terminal_id,
            "items": pycrdt.Map(item_maps),
            "stages": pycrdt.Map({"open": {"at": now, "by": self.terminal_id}}),
        })
        return order_id

    def _open_for_items(self, order_id: str) -> pycrdt.Map:
        self._writable()
        order = self._get(order_id)
        status = furthest(order["stages"].to_py(), ORDER_RANK)
        if ORDER_RANK[status] >= ORDER_RANK["cancelled"]:
            raise InvalidTransition(f"order is {status}; it can no longer change")
        return order

    def add_items(self, order_id: str, items: list[dict[str, Any]]) -> list[str]:
        order = self._open_for_items(order_id)
        clean = [validate_item(i) for i in items]
        ids = []
        for item in clean:
            item_id, m = self._new_item(item, order_id)
            order["items"][item_id] = m
            ids.append(item_id)
        return ids

    def _item(self, order: pycrdt.Map, item_id: str) -> pycrdt.Map:
        try:
            return order["items"][item_id]
        except KeyError:
            raise NotFound(f"item {item_id!r} not found in order {order['id']!r}") from None

    def void_item(self, order_id: str, item_id: str, reason: str) -> None:
        order = self._open_for_items(order_id)
        item = self._item(order, item_id)
        if "void" in item:
            raise InvalidTransition(f"item {item_id!r} is already voided")
        if not reason:
            raise InvalidInput("a void needs a reason")
        item["void"] = {"reason": reason, "at": self.now(), "by": self.terminal_id}

    def set_kitchen_status(self, order_id: str, item_id: str, stage: str) -> None:
        order = self._open_for_items(order_id)
        item = self._item(order, item_id)
        if stage not in KITCHEN_RANK:
            raise InvalidInput(f"unknown kitchen status {stage!r}; one of {', '.join(KITCHEN_STAGES)}")
        if "void" in item:
            raise InvalidTransition(f"item {item_id!r} is voided")
        current = furthest(item["kitchen"].to_py(), KITCHEN_RANK)
        if KITCHEN_RANK[stage] <= KITCHEN_RANK[current]:
            raise InvalidTransition(f"item is {current}; kitchen status moves forward only, not to {stage}")
        item["kitchen"][stage] = self.now()

    def set_status(self, order_id: str, status: str, *, reason: str | None = None) -> None:
        self._writable()
        order = self._get(order_id)
        current = furthest(order["stages"].to_py(), ORDER_RANK)
        check_transition(current, status)
        entry: dict[str, Any] = {"at": self.now(), "by": self.terminal_id}
        if status == "cancelled":
            if not reason:
                raise InvalidInput("cancelling an order needs a reason")
            entry["reason"] = reason
        order["stages"][status] = entry

    def transfer(self, order_id: str, table: str) -> None:
        self._writable()
        check_id("table", table)
        order = self._get(order_id)
        status = furthest(order["stages"].to_py(), ORDER_RANK)
        if ORDER_RANK[status] >= ORDER_RANK["cancelled"]:
            raise InvalidTransition(f"order is {status}; it cannot move to another table")
        if order["table"] == table:
            raise InvalidTransition(f"order is already on table {table!r}")
        order["table"] = table

    def update_fields(self, order_id: str, *, waiter: str | None = None, notes: str | None = None) -> None:
        order = self._open_for_items(order_id)
        if waiter is not None:
            order["waiter"] = waiter
        if notes is not None:
            order["notes"] = notes
