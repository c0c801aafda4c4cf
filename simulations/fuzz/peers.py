"""What a peer sends inside a link: Yjs updates (``yupdate``), sync frames (``sync``) and control
messages (``control``)."""

from __future__ import annotations

import base64
import contextlib
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from simulations import hostile
from simulations.fuzz.cashier import cashier_message
from simulations.fuzz.documents import ROOTS, CrdtPool, canonical, order_id
from simulations.fuzz.encoding import any_bytes, random_state_vector, random_update
from simulations.fuzz.settings import DAY
from simulations.fuzz.target import Target, encoded, read_back, running_terminal
from simulations.fuzz.values import (
    dump_json,
    huge_varuint,
    json_value,
    mutate_bytes,
    mutate_text,
    mutate_value,
    text,
    varstring,
    varuint,
)

_POOLS: dict[int, CrdtPool] = {}


def crdt_pool(seed: int) -> CrdtPool:
    if seed not in _POOLS:
        _POOLS[seed] = CrdtPool(seed)
    return _POOLS[seed]


def yjs_update(rng: random.Random, pool: CrdtPool) -> bytes:
    """An update of every sort the yupdate target feeds; the sync target reuses it for payloads."""
    import pycrdt  # noqa: PLC0415

    r = rng.random()
    if r < 0.15:
        return rng.choice(pool.updates)
    if r < 0.23:
        picks = [rng.choice(pool.updates) for _ in range(rng.randint(2, 3))]
        return canonical(pycrdt.merge_updates(*picks))
    if r < 0.48:
        return random_update(rng, ROOTS[rng.choice(["tables", "inventory", "orders"])])
    if r < 0.90:
        base = rng.choice(pool.updates) if rng.random() < 0.5 else \
            random_update(rng, ROOTS[rng.choice(["tables", "inventory", "orders"])])
        return mutate_bytes(base, rng, pool.updates)
    if r < 0.97:
        return hostile_update(rng)
    return huge_update(rng)


def hostile_update(rng: random.Random) -> bytes:
    """simulations/hostile.py's killers, at depths either side of the bounds."""
    root = rng.choice(["catalog", "tables", "orders", "stock_counts", "nope"])
    key = rng.choice(["evil", "burger", order_id(rng)])
    if rng.random() < 0.55:
        return hostile.deep_value_update(rng.choice([1, 7, 8, 9, 10, 64, 1000, 20_000, 100_000]), root=root, key=key,
                                         client=rng.randint(1, 2**32))
    return hostile.map_chain_update(rng.choice([1, 1, 2, 3, 50, 1000, 20_000]), root=rng.choice(["orders", root]),
                                    key=key, client=rng.randint(1, 2**32))


def huge_update(rng: random.Random) -> bytes:
    """Large but legal-looking: thousands of keys, a 300 KB string, hundreds of clients, a
    delete set of thousands of ranges, a count that claims far more structs than there are."""
    kind = rng.randint(0, 4)
    if kind == 0:
        n = rng.choice([500, 3000])
        body = b"".join(b"\x28\x01" + varstring(rng.choice(["catalog", "stock_low", "tables"])) +
                        varstring(f"k{i}") + b"\x01" + any_bytes(rng, max_depth=1) for i in range(n))
        return varuint(1) + varuint(n) + varuint(rng.randint(1, 2**30)) + varuint(0) + body + b"\x00"
    if kind == 1:
        value = b"\x77" + varstring("x" * rng.choice([70_000, 300_000]))
        return varuint(1) + varuint(1) + varuint(77) + varuint(0) + b"\x28\x01" + varstring("catalog") + \
            varstring("big") + b"\x01" + value + b"\x00"
    if kind == 2:
        n = rng.choice([300, 2000])
        blocks = b"".join(varuint(1) + varuint(10_000 + i) + varuint(0) + b"\x28\x01" + varstring("tables") +
                          varstring(f"T{i % 7}") + b"\x01\x7e" for i in range(n))
        return varuint(n) + blocks + b"\x00"
    if kind == 3:
        n = rng.choice([1000, 20_000])
        ranges = b"".join(varuint(i * 3) + varuint(1) for i in range(n))
        return b"\x00" + varuint(1) + varuint(5) + varuint(n) + ranges
    return varuint(1) + huge_varuint(rng) + varuint(5) + varuint(0) + b"\x28\x01" + varstring("catalog") + \
        varstring("k") + b"\x01\x7e" + b"\x00"


class YUpdateTarget(Target):
    """check_update against each shape; what passes goes into a running terminal and is read."""

    name = "yupdate"
    asynchronous = True

    def generate(self, index: int) -> bytes:
        return yjs_update(self.rng(index), crdt_pool(self.seed))

    @contextlib.asynccontextmanager
    async def session(self, workdir: Path) -> AsyncIterator[Any]:
        async with running_terminal(workdir) as terminal:
            yield YUpdateSession(terminal)


class YUpdateSession:
    def __init__(self, terminal: Any) -> None:
        from meshpos.documents import InventoryDoc, OrdersDoc, TablesDoc  # noqa: PLC0415

        self.t = terminal
        self.shapes = [("tables", TablesDoc.shape, "tables"), ("inventory", InventoryDoc.shape, "inventory"),
                       (f"orders/{DAY}", OrdersDoc.shape, "orders")]
        self.accepted = 0

    async def run(self, data: bytes) -> str:
        from core.yupdate import UpdateRefused, check_update  # noqa: PLC0415

        outcome = "refused"
        for name, shape, kind in self.shapes:
            try:
                check_update(data, shape)
            except UpdateRefused:
                continue
            try:
                ticket = self.t.host.apply_remote(name, [data], "peer:fuzz")
            except ValueError:
                # passed the shape check, refused by pycrdt: still a refusal; a document pycrdt
                # failed on is reloaded from disk at once, as the mesh's reader does
                await self.t.host.reload_stale()
                continue
            if ticket is not None:
                await ticket.wait()
            await read_back(self.t, kind)
            outcome = "accepted"
            self.accepted += 1
            if self.accepted % 25 == 0:
                encoded(await self.t.status())
        return outcome

    async def finish(self) -> None:
        for kind in ("tables", "inventory", "orders"):
            await read_back(self.t, kind)
        encoded(await self.t.status())


class SyncTarget(Target):
    name = "sync"

    DOC_NAMES = ["tables", "inventory", f"orders/{DAY}", "orders/2025-12-31", "orders/2026-02-30", "orders/26-1-1",
                 "", "Tables", f"orders/{DAY}\n", "x" * 300, "órders", "\x00", "orders/", "orders/9999-99-99",
                 "orders/2026-06-15/x", "inventory "]

    def __init__(self, seed: int, plant: int | None = None) -> None:
        super().__init__(seed, plant)
        self._doc: Any = None

    def generate(self, index: int) -> bytes:
        rng = self.rng(index)
        pool = crdt_pool(self.seed)
        name = rng.choice(self.DOC_NAMES[:3]) if rng.random() < 0.75 else rng.choice(self.DOC_NAMES)
        kind = rng.choice([0, 1, 2, 0, 1, 2, 0]) if rng.random() < 0.95 else rng.choice([3, 7, 127, 128, 2**40])
        if kind == 0:
            r = rng.random()
            payload = rng.choice(pool.state_vectors) if r < 0.5 else random_state_vector(rng) if r < 0.8 else \
                mutate_bytes(rng.choice(pool.state_vectors), rng)
        else:
            payload = yjs_update(rng, pool) if rng.random() < 0.6 else rng.choice(pool.updates)
            if len(payload) > 100_000:
                payload = rng.choice(pool.updates)
        r = rng.random()
        if r < 0.7:
            from peer.wire import encode_sync  # noqa: PLC0415

            frame = encode_sync(name, kind, payload)
        else:  # a header that lies: the name's length, the message type, the payload size
            name_bytes = name.encode("utf-8", "surrogatepass") if rng.random() < 0.8 else rng.randbytes(4)
            name_len = len(name_bytes) + rng.choice([0, 0, 1, -1, 1000])
            size = len(payload) + rng.choice([0, 1, -1, 2**32])
            frame = varuint(max(0, name_len)) + name_bytes + varuint(rng.choice([0, 0, 1, 2])) + varuint(kind) + \
                varuint(max(0, size)) + payload
        if rng.random() < 0.35:
            frame = mutate_bytes(frame, rng, pool.updates)
        return frame

    def run(self, data: bytes) -> str:
        import pycrdt  # noqa: PLC0415

        from core.yupdate import UpdateRefused, check_update  # noqa: PLC0415
        from meshpos.documents import InventoryDoc, OrdersDoc, TablesDoc  # noqa: PLC0415
        from peer.sync import AnswerStep1, SyncSession  # noqa: PLC0415
        from peer.wire import WireError  # noqa: PLC0415

        try:
            intent = SyncSession().receive(data)
        except WireError:
            return "refused"
        if isinstance(intent, AnswerStep1):
            if self._doc is None:
                self._doc = pycrdt.Doc(client_id=5)
                for update in crdt_pool(self.seed).updates[:6]:
                    self._doc.apply_update(update)
            try:
                self._doc.get_update(intent.state_vector)  # what the mesh answers a step 1 with
            except ValueError:
                return "refused"
            return "accepted"
        shape = {"tables": TablesDoc.shape, "inventory": InventoryDoc.shape}.get(intent.doc, OrdersDoc.shape)
        try:
            check_update(intent.update, shape)
        except UpdateRefused:
            return "refused"
        return "accepted"


def hello(rng: random.Random) -> dict[str, Any]:
    return {"type": "hello", "protocol": 1, "terminal_id": "peer-1", "terminal_type": "pos",
            "store_id": "0123456789abcdef", "boot_id": text(rng), "roster": '{"body":"{}","signature":""}'}


def control_message(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(["hello", "docs", "resync", "roster", "cashier", "cashier", "cashier", "other"])
    if kind == "hello":
        return hello(rng)
    if kind == "docs":
        archived = {f"orders/2026-06-{rng.randint(1, 14):02d}": base64.b64encode(random_state_vector(rng)).decode()
                    for _ in range(rng.randint(0, 3))}
        return {"type": "docs", "archived": archived}
    if kind == "resync":
        return {"type": "resync", "docs": rng.sample(["tables", "inventory", f"orders/{DAY}"], rng.randint(0, 3))}
    if kind == "roster":
        return {"type": "roster", "roster": json.dumps({"body": "{}", "signature": "AAAA"})}
    if kind == "cashier":
        return cashier_message(rng)
    return {"type": rng.choice(["ping", "HELLO", "", "cashierx"]), "x": json_value(rng)}


class ControlTarget(Target):
    name = "control"

    FIELDS = {"hello": ("terminal_id", str), "docs": ("archived", dict), "resync": ("docs", list),
              "roster": ("roster", str), "cashier": ("m", str)}

    def generate(self, index: int) -> str:
        rng = self.rng(index)
        r = rng.random()
        message = control_message(rng)
        if r < 0.3:
            return dump_json(message, rng)
        if r < 0.55:
            return dump_json(mutate_value(message, rng), rng)
        if r < 0.85:
            return mutate_text(dump_json(message, rng), rng)
        if r < 0.92:
            depth = rng.choice([30, 31, 32, 33, 100, 10_000, 300_000])
            wrapper = rng.choice(['{{"type":"hello","x":{}}}', '{{"type":"cashier","m":"commit","entries":{}}}',
                                  "{}", '{{"type":"resync","docs":{}}}'])
            return hostile.deep_json(depth, wrapper) if rng.random() < 0.8 else \
                wrapper.format("{\"a\":" * depth + "1" + "}" * depth)
        if r < 0.97:  # numbers and escapes no writer of ours produces
            junk = rng.choice(["1e99999", "-1e99999", "1" * rng.choice([30, 5000]), "NaN", "-0", "0e-400",
                               '"\\ud800"', '"\\udc00\\ud800"', '"\\u0000"', '"\ud800"', '"\\uDEAD\\uBEEF"',
                               '"' + "\\\\" * 100 + '"', '"\\"[[[["', "[" * 32 + "]" * 32])
            return '{"type":"' + rng.choice(["hello", "cashier", "docs"]) + '","x":' + junk + "}"
        return rng.choice(["", " ", "null", "[]", "\ufeff{}", '{"type":"hello"}{"type":"hello"}',
                           '{"type":"hello","type":"cashier"}', '{"type":["hello"]}', '"hello"', "{" * 40])

    def run(self, textual: str) -> str:
        from peer.wire import WireError, decode_control, value_of  # noqa: PLC0415

        try:
            message = decode_control(textual)
            field, kind = self.FIELDS[message["type"]]
            value_of(message, field, kind)  # what the mesh reads next, refusing a wrong type the same way
        except WireError:
            return "refused"
        return "accepted"
