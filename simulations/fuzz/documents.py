"""The documents' real shapes and values, and pools of real pycrdt updates in one canonical
encoding (so a seed gives the same inputs whatever pycrdt's internal order)."""

from __future__ import annotations

import json
import random
from datetime import date, timedelta
from typing import Any

from simulations.fuzz.settings import DAY, ISO, TODAY
from simulations.fuzz.values import B32, json_scalar, json_value, mutate_text, mutate_value, text, varuint, weird_str


def order_id(rng: random.Random, day: date = TODAY) -> str:
    return day.strftime("%Y%m%d") + "-" + "".join(rng.choice(B32) for _ in range(19))


def item_id(rng: random.Random) -> str:
    return "".join(rng.choice(B32) for _ in range(8))


def item_record(rng: random.Random) -> dict[str, Any]:
    return {"id": item_id(rng), "sku": rng.choice(["burger", "soda", "fries", "water"]), "name": text(rng),
            "qty": rng.randint(1, 5), "unit_price_cents": rng.randint(0, 5000),
            "modifiers": [{"name": text(rng), "price_cents": rng.randint(0, 300)} for _ in range(rng.randint(0, 2))],
            "notes": "", "station": rng.choice(["grill", "bar", ""]), "added_at": ISO, "added_by": "pos-1"}


def order_record(rng: random.Random, oid: str) -> dict[str, Any]:
    return {"id": oid, "business_day": DAY, "table": rng.choice([None, "T1", "T2", "T3"]),
            "waiter": rng.choice([None, "ana"]), "notes": rng.choice(["", "no salt"]), "created_at": ISO,
            "created_by": "pos-1", "items": [item_record(rng) for _ in range(rng.randint(0, 3))]}


def maybe_corrupt(value: Any, rng: random.Random, p: float = 0.15, *, i64: bool = True) -> Any:
    return mutate_value(value, rng, i64=i64, max_nesting=12) if rng.random() < p else value


def utf8(value: Any) -> Any:
    """A value pycrdt can store: it refuses strings with lone surrogates (they are not UTF-8)."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode()
    if isinstance(value, dict):
        return {utf8(k): utf8(v) for k, v in value.items()}
    if isinstance(value, list):
        return [utf8(v) for v in value]
    return value


def json_text(value: Any, rng: random.Random) -> Any:
    """A record as the JSON text the documents hold; sometimes not JSON, not an object, or deep."""
    r = rng.random()
    if r < 0.05:
        return mutate_text(json.dumps(value), rng)
    if r < 0.08:
        return json_scalar(rng, i64=True)
    return json.dumps(maybe_corrupt(value, rng, i64=False))


def tables_op(doc: Any, rng: random.Random) -> None:
    import pycrdt  # noqa: PLC0415 - the parent never needs it

    root = rng.choice(["tables", "table_status", "table_waiter", "table_guests", "table_merge"])
    tid = rng.choice(["T1", "T2", "T3", "T4", "T5"]) if rng.random() < 0.9 else utf8(weird_str(rng))
    target = doc.get(root, type=pycrdt.Map)
    if rng.random() < 0.1 and tid in target:
        del target[tid]
        return
    value = {"tables": {"name": text(rng), "seats": rng.randint(1, 12), "area": rng.choice([None, "patio"])},
             "table_status": {"status": rng.choice(["free", "occupied", "reserved", "cleaning"]), "at": ISO},
             "table_waiter": {"waiter": rng.choice(["ana", None]), "at": ISO},
             "table_guests": {"guests": rng.randint(0, 20)},
             "table_merge": {"into": rng.choice(["T1", "T2", None])}}[root]
    target[tid] = utf8(maybe_corrupt(value, rng))


def inventory_op(doc: Any, rng: random.Random) -> None:
    import pycrdt  # noqa: PLC0415

    root = rng.choice(["catalog", "catalog", "stock_counts", "stock_base", "stock_86", "stock_low"])
    sku = rng.choice(["burger", "soda", "fries", "water"]) if rng.random() < 0.9 else utf8(weird_str(rng))
    target = doc.get(root, type=pycrdt.Map)
    replica = rng.choice(["r1", "r2", "r3"])
    key = {"stock_counts": f"{sku}/{replica}" if rng.random() < 0.9 else sku}.get(root, sku)
    if rng.random() < 0.1 and key in target:
        del target[key]
        return
    value = {"catalog": {"sku": sku, "name": text(rng), "price_cents": rng.randint(0, 5000),
                         "station": rng.choice([None, "grill"]), "category": None, "active": rng.random() < 0.9,
                         "at": ISO, "by": "pos-1"},
             "stock_counts": rng.randint(-50, 500),
             "stock_base": {"quantity": rng.randint(0, 1000), "seen": {replica: rng.randint(-5, 50)},
                            "counted_at": ISO, "counted_by": "pos-1"},
             "stock_86": {"out": rng.random() < 0.5, "at": ISO, "by": "pos-1"},
             "stock_low": rng.randint(0, 100)}[root]
    target[key] = utf8(maybe_corrupt(value, rng))


def orders_op(doc: Any, rng: random.Random) -> None:
    import pycrdt  # noqa: PLC0415

    orders = doc.get("orders", type=pycrdt.Map)
    keys = sorted(orders.keys())
    if not keys or rng.random() < 0.3:
        oid = order_id(rng) if rng.random() < 0.93 else utf8(rng.choice([order_id(rng, TODAY - timedelta(days=1)),
                                                                         weird_str(rng), "20260230-" + "a" * 19]))
        r = rng.random()
        if r < 0.93:
            orders[oid] = pycrdt.Map({"order": utf8(json_text(order_record(rng, oid), rng))})
        elif r < 0.97:
            orders[oid] = utf8(json_text(order_record(rng, oid), rng))  # an order that is no Y.Map
        else:
            orders[oid] = pycrdt.Map({})  # an order map without its record
        return
    oid = rng.choice(keys)
    order = orders[oid]
    if not isinstance(order, pycrdt.Map):
        return
    if rng.random() < 0.05:
        del orders[oid]
        return
    kind = rng.randint(0, 6)
    if kind == 0:
        stage = rng.choice(["sent", "preparing", "ready", "served", "cancelled", "paid", "closed", "bogus"])
        order[f"stage:{stage}"] = utf8(json_text({"at": ISO, "by": "pos-2",
                                                  "reason": "x" if stage == "cancelled" else None}, rng))
    elif kind == 1:
        order[f"items:{item_id(rng)}"] = utf8(json_text([item_record(rng) for _ in range(rng.randint(1, 2))], rng))
    elif kind == 2:
        order[f"kitchen:{item_id(rng)}:{rng.choice(['preparing', 'ready', 'served'])}"] = ISO
    elif kind == 3:
        order[f"void:{item_id(rng)}"] = utf8(json_text({"reason": "spilled", "at": ISO, "by": "pos-1"}, rng))
    elif kind == 4:
        order[rng.choice(["table", "waiter", "notes"])] = utf8(maybe_corrupt(rng.choice(["T2", "bob", "ok"]), rng, 0.3))
    elif kind == 5 and (keys := sorted(order.keys())):
        del order[rng.choice(keys)]
    else:
        order[text(rng)] = utf8(json_value(rng, i64=True))


DOC_OPS = {"tables": tables_op, "inventory": inventory_op, "orders": orders_op}
ROOTS = {"tables": ["tables", "table_status", "table_waiter", "table_guests", "table_merge"],
         "inventory": ["catalog", "stock_counts", "stock_base", "stock_86", "stock_low"], "orders": ["orders"]}


class _Canon:
    """Walks a v1 update without judging it (any nesting, every content kind) and writes it back
    in one order: client blocks and delete-set entries by client, object keys sorted.  Yrs
    writes those in the order of hash maps seeded per process (pycrdt turns a dict into one), so
    one document encodes differently in two processes - and a seed must give the same inputs."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1]

    def uint(self) -> int:
        value, shift = 0, 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    def string(self) -> bytes:
        start = self.pos
        n = self.uint()  # not ``self.pos += self.uint()``: that reads pos before the length moves it
        self.pos += n
        return self.data[start:self.pos]

    def any(self) -> bytes:
        start = self.pos
        tag = self.byte()
        if tag == 118:
            n = self.uint()
            entries = sorted((self.string(), self.any()) for _ in range(n))
            return b"\x76" + varuint(n) + b"".join(k + v for k, v in entries)
        if tag == 117:
            n = self.uint()
            return b"\x75" + varuint(n) + b"".join(self.any() for _ in range(n))
        if tag == 125:
            while self.byte() >= 0x80:
                pass
        elif tag == 124:
            self.pos += 4
        elif tag in (123, 122):
            self.pos += 8
        elif tag in (119, 116):
            self.string()
        return self.data[start:self.pos]

    def struct(self) -> bytes:
        start = self.pos
        info = self.byte()
        ref = info & 0x1F
        if ref in (0, 10):
            self.uint()
            return self.data[start:self.pos]
        for bit in (0x80, 0x40):
            if info & bit:
                self.uint()
                self.uint()
        if not info & 0xC0:
            if self.uint() == 1:
                self.string()
            else:
                self.uint()
                self.uint()
            if info & 0x20:
                self.string()
        if ref == 8:
            n = self.uint()
            head = self.data[start:self.pos]
            return head + b"".join(self.any() for _ in range(n))
        if ref in (1, 7):
            if self.uint() in (3, 5) and ref == 7:
                self.string()
        elif ref == 2:
            for _ in range(self.uint()):
                self.string()
        elif ref in (3, 4, 5):
            self.string()
        elif ref == 6:
            self.string()
            self.string()
        elif ref == 9:
            self.string()
            self.any()
        return self.data[start:self.pos]


def canonical(update: bytes) -> bytes:
    """``update`` written in one order whatever process encoded it (see :class:`_Canon`)."""
    r = _Canon(update)
    blocks, deletes = [], []
    for _ in range(r.uint()):
        structs, client, clock = r.uint(), r.uint(), r.uint()
        body = b"".join(r.struct() for _ in range(structs))
        blocks.append((client, varuint(structs) + varuint(client) + varuint(clock) + body))
    for _ in range(r.uint()):
        client = r.uint()
        ranges = sorted((r.uint(), r.uint()) for _ in range(r.uint()))
        deletes.append((client, varuint(client) + varuint(len(ranges)) +
                        b"".join(varuint(c) + varuint(n) for c, n in ranges)))
    assert r.pos == len(update), "not a whole update"
    return varuint(len(blocks)) + b"".join(b for _, b in sorted(blocks, reverse=True)) + \
        varuint(len(deletes)) + b"".join(d for _, d in sorted(deletes, reverse=True))


class CrdtPool:
    """Real pycrdt documents of the three kinds, built from the seed: full updates, the
    incremental update of each transaction (applied alone they lack what they build on), diffs
    against earlier state vectors, and state vectors.  Inputs mutate and splice these."""

    def __init__(self, seed: int, docs: int = 36) -> None:
        import pycrdt  # noqa: PLC0415

        rng = random.Random(f"{seed}:crdt-pool")
        self.updates: list[bytes] = []
        self.state_vectors: list[bytes] = []
        self.kind_of: list[str] = []
        for k in range(docs):
            kind = ("tables", "inventory", "orders")[k % 3]
            clients = rng.sample(range(1, 80), rng.randint(1, 3))
            replicas = [pycrdt.Doc(client_id=c) for c in clients]
            captured: list[bytes] = []
            for replica in replicas:
                replica.observe(lambda event, captured=captured: captured.append(bytes(event.update)))
            checkpoint = None
            for _ in range(rng.randint(1, 10)):
                replica = rng.choice(replicas)
                with replica.transaction():
                    for _ in range(rng.randint(1, 3)):
                        DOC_OPS[kind](replica, rng)
                if len(replicas) > 1 and rng.random() < 0.4:
                    a, b = rng.sample(replicas, 2)
                    b.apply_update(a.get_update(b.get_state()))
                if checkpoint is None and rng.random() < 0.4:
                    checkpoint = replicas[0].get_state()
            for replica in replicas[1:]:
                replicas[0].apply_update(replica.get_update())
            main = replicas[0]
            self._add(kind, main.get_update())
            for update in captured[:6]:
                self._add(kind, update)
            if checkpoint is not None:
                self._add(kind, main.get_update(checkpoint))
                self.state_vectors.append(checkpoint)
            self.state_vectors.append(main.get_state())

    def _add(self, kind: str, update: bytes) -> None:
        self.updates.append(canonical(update))
        self.kind_of.append(kind)
