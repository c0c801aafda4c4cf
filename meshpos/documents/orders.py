"""Orders of one business day: ``orders/<YYYY-MM-DD>``.

Lifecycle rule (why it converges): an order's status is not a register that writers overwrite -
it is *derived* from the set of stages the order has reached.  Each stage is its own key in the
order's ``stages`` map, written once by whoever reaches it; concurrent changes on different
terminals therefore union, and the status every replica computes is the highest-ranked stage
present.  "Furthest stage wins" follows from the CRDT merge, not from clocks or writer order.

Layout (why flat): every fact about an order is one key of the order's ``Y.Map`` and immutable
records are JSON text.  Yrs spends ~450 bytes of memory per CRDT item and several times more on a
nested map or a plain object, so a busy day (5,000 orders) must cost about one item per update.

Ranks: open < sent < preparing < ready < served < cancelled < paid < closed.
- A local change may only move to a higher rank (skipping is fine; going back is refused).
- ``cancelled`` is reachable from open..served only, and nothing follows it locally.
- Concurrent cancel vs paid: ``paid`` outranks ``cancelled`` - money was taken, so the order is
  paid and the cancellation stays visible (``cancellation.overridden_by``) for a refund.
- Concurrent cancel vs served/ready/...: ``cancelled`` wins - the deliberate act with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

import pycrdt

from meshpos.clock import random_id, time_id
from meshpos.documents.host import Model
from meshpos.documents.values import as_int, check_id, dump, load, load_list
from meshpos.errors import InvalidInput, InvalidTransition, NotFound, PermissionDenied

ORDER_STAGES = ("open", "sent", "preparing", "ready", "served", "cancelled", "paid", "closed")
ORDER_RANK = {stage: rank for rank, stage in enumerate(ORDER_STAGES)}
KITCHEN_STAGES = ("queued", "preparing", "ready", "served")
KITCHEN_RANK = {stage: rank for rank, stage in enumerate(KITCHEN_STAGES)}
_FIELDS = ("table", "waiter", "notes")
MAX_QTY = 10_000
MAX_PRICE_CENTS = 100_000_000


def doc_name(day: date) -> str:
    return f"orders/{day.isoformat()}"


def furthest(stages: Iterable[str], rank: dict[str, int]) -> str:
    """The highest-ranked stage reached (names this version does not know are ignored)."""
    return max(stages, key=lambda s: rank.get(s, -1))


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


def _added(entry: tuple[str, dict[str, Any]]) -> tuple[str, str]:
    """Items in the order they were added (id breaks ties): the same list on every replica."""
    return entry[1]["added_at"], entry[0]


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
        #: Orders added in this transaction -> their map as the observer handed it over (reused by
        #: the view: looking each of a catch-up's 2,500 new orders up again cost a third of it).
        self._created: dict[str, Any] = {}
        self._touched: set[str] = set()
        self.orders.observe_deep(self._observe)

    def _observe(self, events: list[Any]) -> None:
        for event in events:
            path = list(event.path)
            if not path:
                for key, change in event.keys.items():
                    if change["action"] == "add":
                        self._created[key] = change.get("newValue")
                    self._touched.add(key)
            else:
                self._touched.add(path[0])

    def drain_events(self, known: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, dict[str, Any]]]:
        created, touched = self._created, self._touched
        self._created, self._touched = {}, set()
        known = known or {}
        out = []
        for oid in sorted(touched):
            fresh = created.get(oid)
            if not isinstance(fresh, pycrdt.Map):  # not added just now: is it still there?
                fresh = None
                if oid not in self.orders:
                    continue
            order = known.get(oid) or self.view(oid, fresh)
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

    @staticmethod
    def _facts(order: pycrdt.Map) -> dict[str, Any]:
        """The order map's entries grouped by kind, from one JSON read of the map (``str`` of a
        pycrdt map is its JSON: one call, where reading it entry by entry cost a call per key)."""
        if not isinstance(order, pycrdt.Map):  # a peer wrote something else under an order id
            raise TypeError(f"expected an order map, got {type(order).__name__}")
        items: dict[str, Any] = {}
        stages: dict[str, Any] = {}
        kitchen: dict[str, dict[str, Any]] = {}
        void: dict[str, Any] = {}
        fields: dict[str, Any] = {}
        facts: dict[str, Any] = {"stages": stages, "items": items, "kitchen": kitchen, "void": void,
                                 "fields": fields}
        for key, value in load(str(order)).items():
            kind, _, rest = key.partition(":")
            if kind == "order":
                facts["record"] = record = load(value)
                for item in record.get("items", ()):
                    items[item["id"]] = item
            elif kind == "items":
                for item in load_list(value):
                    items[item["id"]] = item
            elif kind == "stage":
                stages[rest] = load(value)
            elif kind == "kitchen":
                item_id, _, stage = rest.rpartition(":")
                kitchen.setdefault(item_id, {})[stage] = value
            elif kind == "void":
                void[rest] = load(value)
            elif kind in _FIELDS:
                fields[kind] = value
        return facts

    def _item_ids(self, order: pycrdt.Map) -> set[str]:
        return set(self._facts(order)["items"])

    def _status(self, order: pycrdt.Map) -> str:
        """Furthest stage, without decoding anything but the keys (the write paths' check)."""
        stages = ["open"] + [k[6:] for k in order.keys() if k.startswith("stage:")]
        return furthest(stages, ORDER_RANK)

    def view(self, order_id: str, order: pycrdt.Map | None = None) -> dict[str, Any]:
        """``order``: the order's map when the caller holds it already (else looked up by id).

        Hot: a catch-up builds one view per order it brings (2,500 for a busy half-day) for the
        events, so this is written for speed over brevity.
        """
        facts = self._facts(self._get(order_id) if order is None else order)
        record, kitchen, voids, fields = facts["record"], facts["kitchen"], facts["void"], facts["fields"]
        stages = {"open": {"at": record["created_at"], "by": record["created_by"]}, **facts["stages"]}
        status = furthest(stages, ORDER_RANK) if len(stages) > 1 else "open"
        items = []
        total = 0
        for item_id, item in sorted(facts["items"].items(), key=_added):
            reached = kitchen.get(item_id)
            void = voids.get(item_id)
            modifiers = [{"name": m["name"], "price_cents": as_int(m["price_cents"])} for m in item["modifiers"]]
            qty, unit = as_int(item["qty"]), as_int(item["unit_price_cents"])
            line = 0 if void is not None else qty * (unit + sum(m["price_cents"] for m in modifiers))
            total += line
            items.append({
                "id": item_id, "sku": item["sku"], "name": item["name"], "qty": qty,
                "unit_price_cents": unit, "modifiers": modifiers,
                "notes": item.get("notes", ""), "station": item.get("station", ""),
                "kitchen_status": furthest({"queued": None, **reached}, KITCHEN_RANK) if reached else "queued",
                "voided": void is not None, "void": void,
                "added_at": item["added_at"], "added_by": item.get("added_by"), "total_cents": line,
            })
        cancellation = stages.get("cancelled")
        if cancellation is not None and status != "cancelled":
            cancellation = {**cancellation, "overridden_by": status}
        field = fields.get
        return {
            "id": order_id, "business_day": record["business_day"], "table": field("table", record.get("table")),
            "waiter": field("waiter", record.get("waiter")), "notes": field("notes", record.get("notes")) or "",
            "status": status, "stages": {s: v["at"] for s, v in stages.items()}, "cancellation": cancellation,
            "items": items, "total_cents": total,
            "created_at": record["created_at"], "created_by": record["created_by"],
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

    def _item_records(self, taken: set[str], items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Records for validated items; ids are fresh within the order (``taken``)."""
        now = self.now()
        out = []
        for item in items:
            item_id = random_id(8)
            while item_id in taken:
                item_id = random_id(8)
            taken.add(item_id)
            out.append({"id": item_id, **item, "added_at": now, "added_by": self.terminal_id})
        return out

    def create(
        self, *, day: date, table: str | None, waiter: str | None, items: list[dict[str, Any]],
        notes: str = "",
    ) -> str:
        self._writable()
        if table is not None:
            check_id("table", table)
        clean = [validate_item(i) for i in items]
        order_id = f"{day.strftime('%Y%m%d')}-{time_id(self.clock())}"
        record = {
            "id": order_id, "business_day": day.isoformat(), "table": table, "waiter": waiter,
            "notes": notes, "created_at": self.now(), "created_by": self.terminal_id,
            "items": self._item_records(set(), clean),
        }
        self.orders[order_id] = pycrdt.Map({"order": dump(record)})
        return order_id

    def _open_for_items(self, order_id: str) -> pycrdt.Map:
        self._writable()
        order = self._get(order_id)
        status = self._status(order)
        if ORDER_RANK[status] >= ORDER_RANK["cancelled"]:
            raise InvalidTransition(f"order is {status}; it can no longer change")
        return order

    def add_items(self, order_id: str, items: list[dict[str, Any]]) -> list[str]:
        order = self._open_for_items(order_id)
        clean = [validate_item(i) for i in items]
        taken = self._item_ids(order)
        records = self._item_records(taken, clean)
        batch = random_id(8)
        while f"items:{batch}" in order:
            batch = random_id(8)
        order[f"items:{batch}"] = dump(records)
        return [r["id"] for r in records]

    def _item(self, order: pycrdt.Map, item_id: str) -> None:
        if not isinstance(item_id, str) or item_id not in self._item_ids(order):
            raise NotFound(f"item {item_id!r} not found in order {load(order['order'])['id']!r}")

    def void_item(self, order_id: str, item_id: str, reason: str) -> None:
        order = self._open_for_items(order_id)
        self._item(order, item_id)
        if f"void:{item_id}" in order:
            raise InvalidTransition(f"item {item_id!r} is already voided")
        if not reason:
            raise InvalidInput("a void needs a reason")
        order[f"void:{item_id}"] = dump({"reason": reason, "at": self.now(), "by": self.terminal_id})

    def set_kitchen_status(self, order_id: str, item_id: str, stage: str) -> None:
        order = self._open_for_items(order_id)
        self._item(order, item_id)
        if stage not in KITCHEN_RANK:
            raise InvalidInput(f"unknown kitchen status {stage!r}; one of {', '.join(KITCHEN_STAGES)}")
        if f"void:{item_id}" in order:
            raise InvalidTransition(f"item {item_id!r} is voided")
        prefix = f"kitchen:{item_id}:"
        current = furthest(["queued"] + [k[len(prefix):] for k in order.keys() if k.startswith(prefix)],
                           KITCHEN_RANK)
        if KITCHEN_RANK[stage] <= KITCHEN_RANK[current]:
            raise InvalidTransition(f"item is {current}; kitchen status moves forward only, not to {stage}")
        order[prefix + stage] = self.now()

    def set_status(self, order_id: str, status: str, *, reason: str | None = None) -> None:
        self._writable()
        order = self._get(order_id)
        check_transition(self._status(order), status)
        entry: dict[str, Any] = {"at": self.now(), "by": self.terminal_id}
        if status == "cancelled":
            if not reason:
                raise InvalidInput("cancelling an order needs a reason")
            entry["reason"] = reason
        order[f"stage:{status}"] = dump(entry)

    def _field(self, order: pycrdt.Map, name: str) -> Any:
        return order[name] if name in order else load(order["order"]).get(name)

    def transfer(self, order_id: str, table: str) -> None:
        self._writable()
        check_id("table", table)
        order = self._get(order_id)
        status = self._status(order)
        if ORDER_RANK[status] >= ORDER_RANK["cancelled"]:
            raise InvalidTransition(f"order is {status}; it cannot move to another table")
        if self._field(order, "table") == table:
            raise InvalidTransition(f"order is already on table {table!r}")
        order["table"] = table

    def update_fields(self, order_id: str, *, waiter: str | None = None, notes: str | None = None) -> None:
        order = self._open_for_items(order_id)
        if waiter is not None and self._field(order, "waiter") != waiter:
            order["waiter"] = waiter
        if notes is not None and self._field(order, "notes") != notes:
            order["notes"] = notes
