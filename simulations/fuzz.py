"""Fuzzing every input path of a terminal, so the hardening of the decoders never quietly regresses.

    python -m simulations.fuzz --inputs N --seed S [--jobs J] [--targets T ...] [--out DIR]
    python -m simulations.fuzz --replay DIR/yupdate-s1-i1234.json      # run one saved crash input

A hostile or buggy peer, a web page or a damaged file must never stop a terminal.  Each *target*
below generates inputs for one of the paths such input takes - structure-aware (real pycrdt
documents, real frames, messages and bodies built field by field) and mutated (bit flips,
truncation, splicing, duplication, huge varints and counts, deep nesting, wrong types, unknown
keys), valid and invalid mixed so the deep code paths are reached - and feeds them to the real
decoders and to a real terminal:

* ``yupdate`` - Yjs updates (random real documents, merged updates, diffs against state vectors,
  hand-encoded structs, the killers of simulations/hostile.py, huge ones) -> ``check_update``
  against each document shape; what passes is applied with ``host.apply_remote`` to that document
  of a running terminal and read back through the typed models (and ``status``);
* ``sync`` - sync frames -> ``decode_sync``, then what the mesh does next (the step 1 state
  vector into pycrdt, the shape check of a step 2 or update);
* ``control`` - JSON text -> ``decode_control`` (deep, huge numbers, odd escapes, surrogates);
* ``link`` - byte streams -> ``LinkCore.receive``, both roles: an upgrade and a hello followed by
  mutated WebSocket frames, or garbage; it must never raise;
* ``cashier`` - quorum messages with real-looking ledger entries -> ``from_wire``,
  ``report_from_wire`` and ``Cashier.receive`` of a running POS that is its store's only voter;
* ``roster`` - mutations of a really signed roster (re-signed after a body mutation, so the
  parsing behind the signature is reached too) -> ``verify_roster``;
* ``api`` - requests built from the app's own ``/openapi.json`` (then mutated: bodies, content
  types, paths, queries, methods, headers) -> the ASGI app of a running terminal in process.

An outcome is ``refused`` (the documented refusal: ``UpdateRefused``, ``WireError``,
``BadMessage``, ``IdentityError``, a 4xx with a JSON ``{code, message}``...), ``accepted``, or a
**crash**: any other exception (pycrdt's ``PanicException`` too: a Rust panic, and a
``BaseException`` that no ``except Exception`` of the terminal stops), a 5xx or non-JSON error
answer, a storage commit that fails (the disk is fine here: an input got SQLite something it
cannot store), an input that hangs, and a child process that dies.  A SIGSEGV in pycrdt's Rust
code raises nothing - that is why the inputs run in child processes, in batches: a child dying
on a batch is re-run on ever shorter prefixes of that batch (bisection, each in a fresh child)
until the one input that kills it is found.  A crash replaces the terminal before the next
input, and after a Rust panic the rest of the batch runs in a fresh child, so nothing later is
blamed on the state a crash left.

Every input is a function of (seed, target, index) only, every batch starts from a fresh
terminal, and pycrdt's encodings are put in one order (:func:`canonical`), so a seed gives the
same counts whatever ``--jobs`` is.  Crash inputs are saved to ``--out`` (a few per kind of
crash; all are counted), each a JSON file with its target, seed, index, the error (or the dying
child's Python stack) and the input; ``--replay FILE`` runs it again in this process, after the
inputs the crashed terminal took before it when it needs them (``context_start``).

Prints one JSON object: inputs and outcomes per target, crashes grouped by kind, the saved crash
inputs, seconds and inputs per second.  docs/simulations.md ("Fuzzing") records the long run;
tests/test_fuzz.py runs a short one in CI and proves the crash detection on a planted segfault.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import queue
import random
import re
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from simulations import hostile
from simulations.benchutil import module_command

TARGETS = ("yupdate", "sync", "control", "link", "cashier", "roster", "api")
#: Inputs per batch (one child call; the terminal targets start a fresh terminal per batch, which
#: keeps memory bounded and makes a batch's outcome independent of the batches before it).
BATCH = {"yupdate": 500, "sync": 10_000, "control": 10_000, "link": 4_000, "cashier": 500, "roster": 4_000,
         "api": 500, "planted": 1_000}
#: The terminal targets' fixed clock: "today" (the orders document's name, ids that match it)
#: must not depend on when the fuzzer runs, or a seed would not give the same outcomes.
TODAY = date(2026, 6, 15)
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
DAY = TODAY.isoformat()
ISO = "2026-06-15T12:00:00.000Z"
#: An input of an async target taking longer than this is a hang, counted as a crash.
INPUT_TIMEOUT = 30.0
#: A child whose resident memory passes this is killed: an input made it allocate without bound.
CHILD_RSS_LIMIT = 3 * 1024**3
#: Hidden ``--plant`` target (tests/test_fuzz.py): these inputs segfault and raise.
MAGIC_SEGV = b"SEGV-ME!"
MAGIC_RAISE = b"RAISE-ME"
OUTCOMES = ("refused", "accepted", "crash")
#: Crash inputs saved per kind of crash (see :func:`signature`); the rest are counted only.
SAVED_PER_KIND = 5
#: Times a bisection runs a prefix that did not kill its child before it believes it.
PROBE_TRIES = 3


# -- inputs as JSON (saved crash inputs, the pipe between parent and children) ----------------------


def to_jsonable(value: Any) -> Any:
    """Bytes become ``{"$b64": ...}``; tuples lists.  Strings keep lone surrogates (``json.dumps``
    writes them as ``\\udXXX`` escapes, ``json.loads`` reads them back)."""
    if isinstance(value, bytes | bytearray):
        return {"$b64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {"$dict": [[to_jsonable(k), to_jsonable(v)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def from_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if "$b64" in value:
            return base64.b64decode(value["$b64"])
        return {from_jsonable(k): from_jsonable(v) for k, v in value["$dict"]}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


# -- lib0 encoding (what Yjs and y-protocols write) ------------------------------------------------


def varuint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def varint(n: int) -> bytes:
    """lib0 ``writeVarInt``: sign in bit 6 of the first byte, 6 bits there, then 7 per byte."""
    negative, n = n < 0, abs(n)
    out = bytearray([(0x80 if n > 0x3F else 0) | (0x40 if negative else 0) | (n & 0x3F)])
    n >>= 6
    while n > 0:
        out.append((0x80 if n > 0x7F else 0) | (n & 0x7F))
        n >>= 7
    return bytes(out)


def varstring(text: str | bytes) -> bytes:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return varuint(len(data)) + data


def huge_varuint(rng: random.Random) -> bytes:
    """Counts and lengths that lie: at or past the bounds the decoders must enforce."""
    return rng.choice([varuint(2**32), varuint(2**53 - 1), varuint(2**53), varuint(2**64), varuint(2**70),
                       b"\xff" * rng.randint(8, 12) + b"\x01", b"\xff" * rng.randint(1, 20), varuint(2**31 - 1),
                       varuint(rng.getrandbits(rng.randint(20, 63)))])


# -- random values ---------------------------------------------------------------------------------

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
B32 = "0123456789abcdefghjkmnpqrstvwxyz"
WEIRD_STRINGS = ["", " ", "\x00", "\n", "T1\n", "ü", "💥", "\ud800", "\udfff\ud800", "a" * 300, "../..", "%00",
                 "null", "0", "-1", "[", "{", '"', "\\", "\u202e", "orders/2026-06-15", "main", "pos-1", "\ufeff",
                 "résumé", "x" * 70, "\t", "😀" * 50, "resolve:1", "a~b", "\r\n"]
WEIRD_NUMBERS = [0, -1, 1, 2, 3, 7, 2**31 - 1, 2**31, 2**32, 2**53 - 1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64,
                 -2**63, 10**30, 0.5, -0.0, 1.0, 91.0, 1e308, 100_000_000, 100_000_001, 10_000_000, 10_000_001]
I64 = 2**63 - 1


def text(rng: random.Random, lo: int = 1, hi: int = 12) -> str:
    return "".join(rng.choice(ALNUM) for _ in range(rng.randint(lo, hi)))


def weird_str(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return rng.choice(WEIRD_STRINGS)
    return "".join(chr(rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0x7FF), rng.randint(0x800, 0xFFFF),
                                   rng.randint(0x10000, 0x10FFFF)])) for _ in range(rng.randint(1, 8)))


def json_scalar(rng: random.Random, *, i64: bool = False) -> Any:
    r = rng.random()
    if r < 0.3:
        n = rng.choice(WEIRD_NUMBERS)
        return max(-I64, min(I64, n)) if i64 and isinstance(n, int) else n
    if r < 0.45:
        return rng.randint(-1000, 1000)
    if r < 0.7:
        return text(rng) if rng.random() < 0.6 else weird_str(rng)
    if r < 0.8:
        return rng.choice([True, False])
    if r < 0.9:
        return None
    return rng.uniform(-1e6, 1e6)


def json_value(rng: random.Random, depth: int = 0, *, i64: bool = False, max_depth: int = 3) -> Any:
    r = rng.random()
    if depth < max_depth and r < 0.15:
        return {text(rng, 1, 6) if rng.random() < 0.8 else weird_str(rng): json_value(rng, depth + 1, i64=i64)
                for _ in range(rng.randint(0, 4))}
    if depth < max_depth and r < 0.3:
        return [json_value(rng, depth + 1, i64=i64) for _ in range(rng.randint(0, 4))]
    return json_scalar(rng, i64=i64)


def nested(depth: int, leaf: Any = None, *, objects: bool = False) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"k": value} if objects else [value]
    return value


def mutate_value(value: Any, rng: random.Random, *, i64: bool = False, max_nesting: int = 40) -> Any:
    """A structural mutation of a JSON-like value: a node replaced by a wrong type, a key dropped
    or added, a list repeated, a value nested deep.  Returns a new value (the input is shared)."""
    value = json.loads(json.dumps(value)) if not isinstance(value, bytes | float) else value
    holders: list[tuple[Any, Any]] = [(None, None)]  # (container, key): None = the root itself
    stack = [value]
    while stack and len(holders) < 400:
        node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                holders.append((node, k))
                stack.append(v)
        elif isinstance(node, list):
            for k, v in enumerate(node):
                holders.append((node, k))
                stack.append(v)
    container, key = rng.choice(holders)
    current = value if container is None else container[key]
    op = rng.randint(0, 9)
    if op <= 2:
        new = json_scalar(rng, i64=i64)
    elif op == 3:
        new = json_value(rng, i64=i64)
    elif op == 4:
        new = nested(rng.choice([2, 8, 9, 20, 31, 32, max_nesting]), current, objects=rng.random() < 0.5)
    elif op == 5 and isinstance(current, dict) and current:
        current.pop(rng.choice(sorted(current, key=str)))
        new = current
    elif op == 6 and isinstance(current, dict):
        current[rng.choice([text(rng), weird_str(rng), "type", "m", "drawer", "status", "kind"])] = \
            json_value(rng, i64=i64)
        new = current
    elif op == 7 and isinstance(current, list):
        new = current * rng.choice([2, 10, 70])
    elif op == 8:
        new = str(current) if not isinstance(current, str) else (int(current) if current.isdigit() else [current])
    else:
        new = [current] if rng.random() < 0.5 else {"value": current}
    if container is None:
        return new
    container[key] = new
    return value


def mutate_bytes(data: bytes, rng: random.Random, others: list[bytes] = (), rounds: int | None = None) -> bytes:
    """Byte-level mutations, the usual ones of a coverage-less fuzzer, including the ones that
    matter for length-prefixed formats: huge varints spliced in, spans duplicated, counts bumped."""
    buf = bytearray(data)
    for _ in range(rounds or rng.choice([1, 1, 1, 2, 2, 3, 5])):
        n = len(buf)
        op = rng.randint(0, 13)
        if n == 0:
            buf += rng.randbytes(rng.randint(1, 8))
            continue
        at = rng.randrange(n)
        if op == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[at] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, 0x3F, 0x40, 0x20, 0x08, 0x07])
        elif op == 2:
            del buf[rng.randrange(n):]  # truncate
        elif op == 3:
            end = min(n, at + rng.randint(1, 16))
            del buf[at:end]
        elif op == 4:
            buf[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 5:
            buf[at:at] = huge_varuint(rng)
        elif op == 6:
            end = min(n, at + rng.randint(1, 8))
            buf[at:end] = huge_varuint(rng)
        elif op == 7:
            end = min(n, at + rng.randint(1, 64))
            span = bytes(buf[at:end]) * rng.choice([2, 3, 50])
            buf[end:end] = span[:65536]
        elif op == 8 and others:
            other = rng.choice(others)
            cut = rng.randint(0, len(other))
            buf = buf[:at] + bytearray(other[cut:])  # splice
        elif op == 9:
            buf[at] = (buf[at] + rng.choice([1, -1, 2, 0x40])) % 256  # a count or a tag one off
        elif op == 10:
            buf += rng.randbytes(rng.randint(1, 4))  # bytes left over
        elif op == 11:
            j = rng.randrange(n)
            buf[at], buf[j] = buf[j], buf[at]
        elif op == 12:
            buf[at:at] = varuint(rng.randint(0, 300))
        else:
            buf[at] = rng.randrange(256)
    return bytes(buf[:2 * 1024 * 1024])


JSON_JUNK = ["[", "]", "{", "}", '"', ",", ":", "\\", "\\u", "\\ud800", "\\udc00", "\\u0000", "\\x41", "1e999",
             "-1e999", "NaN", "Infinity", "-Infinity", "1" * 400, "0." + "0" * 400 + "1", "true", "null", "\ufeff",
             "\u00a0", "\ud800", "\x00", "[[[[[[[[", "]]]]]]]]", '"[[[[[[["', '"\\"[[["', "/*", "\n", "9" * 5000]


def mutate_text(s: str, rng: random.Random, others: list[str] = ()) -> str:
    """Character-level mutations of JSON text: truncation, JSON tokens and escapes dropped in,
    spans duplicated, splices, lone surrogates (a Python str may hold them, UTF-8 may not)."""
    for _ in range(rng.choice([1, 1, 2, 3])):
        n = len(s)
        at = rng.randint(0, n)
        op = rng.randint(0, 7)
        if op == 0:
            s = s[:at]
        elif op == 1:
            s = s[:at] + rng.choice(JSON_JUNK) + s[at:]
        elif op == 2:
            s = s[:at] + s[at + rng.randint(1, 8):]
        elif op == 3:
            end = min(n, at + rng.randint(1, 40))
            s = s[:end] + s[at:end] * rng.choice([2, 3, 40]) + s[end:]
        elif op == 4 and others:
            other = rng.choice(others)
            s = s[:at] + other[rng.randint(0, len(other)):]
        elif op == 5:
            s = s[:at] + chr(rng.choice([0xD800, 0xDFFF, 0, 0x7F, 0xFFFF, 0x10FFFF, rng.randint(0, 0x10FFFF)])) + s[at:]
        elif op == 6 and n:
            s = s[:at] + chr(rng.randint(32, 126)) + s[at + 1:]
        else:
            s = s[:at] + rng.choice(["[" * 33, "{\"a\":" * 33, "[" * 5000]) + s[at:]
    return s[:2 * 1024 * 1024]


def dump_json(value: Any, rng: random.Random) -> str:
    """JSON text the way different writers produce it (compact, indented, escaped or not)."""
    style = rng.randint(0, 3)
    if style == 0:
        return json.dumps(value, separators=(",", ":"))
    if style == 1:
        return json.dumps(value, ensure_ascii=False)
    if style == 2:
        return json.dumps(value, indent=rng.choice([1, 2]))
    return json.dumps(value, separators=(" , ", " : "), sort_keys=True)


# -- the documents' real shapes and values ---------------------------------------------------------


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


# -- hand-encoded Yjs updates (structs a pycrdt document never writes) ------------------------------


def any_bytes(rng: random.Random, depth: int = 0, max_depth: int = 4) -> bytes:
    """One lib0 ``Any`` value, random (objects and arrays nest up to ``max_depth``)."""
    r = rng.random()
    if depth < max_depth and r < 0.12:
        n = rng.randint(0, 3)
        return b"\x76" + varuint(n) + b"".join(varstring(text(rng, 1, 5)) + any_bytes(rng, depth + 1, max_depth)
                                               for _ in range(n))
    if depth < max_depth and r < 0.24:
        n = rng.randint(0, 3)
        return b"\x75" + varuint(n) + b"".join(any_bytes(rng, depth + 1, max_depth) for _ in range(n))
    tag = rng.choice([127, 126, 125, 125, 124, 123, 122, 121, 120, 119, 119, 119, 116])
    if tag == 125:
        return b"\x7d" + varint(rng.choice([0, 1, -1, 2**31, 2**53 - 1, -(2**53 - 1), rng.randint(-99, 99)]))
    if tag == 124:
        return b"\x7c" + struct.pack(">f", rng.choice([0.5, -1.0, float("inf"), float("nan"), 3.0]))
    if tag == 123:
        return b"\x7b" + struct.pack(">d", rng.choice([0.5, -0.0, 1e308, float("-inf"), float("nan"), 2.0**60]))
    if tag == 122:
        return b"\x7a" + struct.pack(">q", rng.choice([0, -1, 2**63 - 1, -2**63, 2**53, 12]))
    if tag == 119:
        return b"\x77" + varstring(rng.choice([text(rng), json.dumps(order_record(rng, order_id(rng))),
                                               weird_str(rng), '{"status":"free"}']))
    if tag == 116:
        return b"\x74" + varstring(rng.randbytes(rng.randint(0, 8)))
    return bytes([tag])


def random_update(rng: random.Random, roots: list[str]) -> bytes:
    """A v1 update written struct by struct: items under roots or under earlier items (by id),
    map keys, left and right origins, every content kind, GC and skip structs, a delete set -
    valid often enough to pass the shape check and reach pycrdt's integration."""
    out = bytearray()
    n_clients = rng.choice([1, 1, 1, 1, 2, 2, 3, 0])
    out += varuint(n_clients)
    made: list[tuple[int, int, int, bool]] = []  # (client, clock, length, is a map)
    for _ in range(n_clients):
        client = rng.choice([rng.randint(1, 60), rng.randint(1, 60), rng.getrandbits(32), 2**53 - 1, 2**53,
                             rng.getrandbits(60)])
        first = clock = rng.choice([0, 0, 0, rng.randint(0, 30), 2**32 - 2, 2**32 - 1, 2**32])
        structs = rng.randint(1, 6)
        body = bytearray()
        for _ in range(structs):
            r = rng.random()
            if r < 0.07:
                length = rng.randint(1, 5)
                body += (b"\x00" if r < 0.04 else b"\x0a") + varuint(length)  # GC, skip
            else:
                ref = rng.choice([8] * 12 + [1] * 2 + [7] * 3 + [4, 2, 3, 5, 6, 9])
                info, tail = ref, bytearray()
                if made and rng.random() < 0.25:
                    c, k, n, _ = rng.choice(made)
                    info |= 0x80
                    tail += varuint(c) + varuint(k + rng.randint(0, max(0, n - 1)))
                if made and rng.random() < 0.1:
                    c, k, n, _ = rng.choice(made)
                    info |= 0x40
                    tail += varuint(c) + varuint(k)
                if not info & 0xC0:
                    maps = [m for m in made if m[3]]
                    if maps and rng.random() < 0.5:
                        c, k, _, _ = rng.choice(maps)
                        tail += b"\x00" + varuint(c) + varuint(k)  # parent: a map item, by id
                    elif made and rng.random() < 0.1:
                        c, k, _, _ = rng.choice(made)
                        tail += b"\x00" + varuint(c) + varuint(k)
                    else:
                        tail += b"\x01" + varstring(rng.choice(roots) if rng.random() < 0.93 else weird_str(rng))
                    if rng.random() < 0.85:
                        info |= 0x20
                        tail += varstring(rng.choice([text(rng, 1, 6), order_id(rng), "order", "stage:sent",
                                                      "T1", "burger", "burger/r1", weird_str(rng)]))
                content, length = _content(rng, ref)
                body += bytes([info]) + tail + content
                made.append((client, clock, length, ref == 7 and content[:1] == b"\x01"))
            clock += length
        out += varuint(structs) + varuint(client) + varuint(first) + body
    out += _delete_set(rng, made)
    return bytes(out)


def _content(rng: random.Random, ref: int) -> tuple[bytes, int]:
    if ref == 8:
        n = rng.choice([1, 1, 1, 2, 3, 0])
        return varuint(n) + b"".join(any_bytes(rng, max_depth=rng.choice([2, 4, 8, 9])) for _ in range(n)), n
    if ref == 1:
        n = rng.randint(1, 4)
        return varuint(n), n
    if ref == 7:
        kind = rng.choice([1, 1, 1, 1, 0, 2, 3, 4, 5, 6, 9])
        return varuint(kind) + (varstring("p") if kind in (3, 5) else b""), 1
    if ref == 4:
        s = text(rng)
        return varstring(s), len(s)
    if ref == 2:
        n = rng.randint(1, 2)
        return varuint(n) + b"".join(varstring('{"a":1}') for _ in range(n)), n
    if ref == 3:
        return varstring(rng.randbytes(4)), 1
    if ref == 5:
        return varstring('{"e":1}'), 1
    if ref == 6:
        return varstring("bold") + varstring("true"), 1
    return varstring("guid") + b"\x76\x00", 1  # subdocument: guid and options


def _delete_set(rng: random.Random, made: list[tuple[int, int, int, bool]]) -> bytes:
    r = rng.random()
    if r < 0.7:
        return b"\x00"
    clients = rng.randint(1, 2)
    out = bytearray(varuint(clients))
    for _ in range(clients):
        if made and rng.random() < 0.8:
            client, clock, length, _ = rng.choice(made)
        else:
            client, clock, length = rng.randint(1, 60), rng.randint(0, 10), rng.randint(1, 5)
        ranges = rng.randint(1, 3)
        out += varuint(client) + varuint(ranges)
        for _ in range(ranges):
            out += varuint(rng.choice([clock, clock, rng.randint(0, 2**32 - 1)])) + \
                varuint(rng.choice([length, 1, rng.randint(1, 2**32)]))
    return bytes(out)


def random_state_vector(rng: random.Random) -> bytes:
    n = rng.choice([0, 1, 1, 2, 3])
    out = bytearray(varuint(n))
    for _ in range(n):
        out += varuint(rng.choice([rng.randint(1, 80), rng.getrandbits(53), 2**53 - 1])) + \
            varuint(rng.choice([0, rng.randint(0, 40), 2**32 - 1, 2**32, 2**40]))
    return bytes(out)


# -- targets -------------------------------------------------------------------------------------


class Target:
    """One input path: ``generate(index)`` is a pure function of (seed, index); ``run(input)``
    returns ``"refused"`` or ``"accepted"`` and raises on a crash."""

    name = ""
    asynchronous = False

    def __init__(self, seed: int, plant: int | None = None) -> None:
        self.seed = seed
        self.plant = plant

    def rng(self, index: int) -> random.Random:
        return random.Random(f"{self.seed}:{self.name}:{index}")

    def prepare(self) -> None:
        """Once per process, outside any event loop, before the first input is generated."""

    def generate(self, index: int) -> Any:
        raise NotImplementedError

    def run(self, inp: Any) -> str:
        raise NotImplementedError


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


def encoded(value: Any) -> Any:
    """What the API would send: a value that does not encode as JSON would be a 500 there."""
    from core.codec import encode_json_bytes  # noqa: PLC0415

    encode_json_bytes(value)
    return value


async def read_back(terminal: Any, kind: str) -> None:
    """Read a document the ways the API and the events do (every one must work whatever it holds)."""
    if kind == "tables":
        encoded(terminal.tables.list())
    elif kind == "inventory":
        inv = terminal.inventory
        encoded([inv.view(sku) for sku in inv.skus()])
        encoded(inv.products())
    else:
        encoded(await terminal.list_orders())


@contextlib.asynccontextmanager
async def running_terminal(data_dir: Path, *, template: Path | None = None) -> AsyncIterator[Any]:
    """A real terminal in ``data_dir`` (fresh), on the fixed clock; enrolled if ``template`` holds
    an enrolled data directory (copied first)."""
    from meshpos.config import TerminalConfig  # noqa: PLC0415
    from meshpos.terminal import Terminal  # noqa: PLC0415

    if template is not None:
        shutil.copytree(template, data_dir)
    config = TerminalConfig(data_dir=data_dir, terminal_id="pos-1", api_port=0, mdns=False,
                            peer_host="127.0.0.1", peer_port=0)
    try:
        async with Terminal(config, clock=lambda: NOW).running() as terminal:
            yield terminal
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


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


# -- link: WebSocket byte streams ---------------------------------------------------------------------

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(rng: random.Random, opcode: int, payload: bytes, *, masked: bool, fin: bool = True,
             odd: bool = False) -> bytes:
    """One WebSocket frame by hand (RFC 6455); ``odd``: reserved bits, non-minimal or lying
    lengths, a mask where none belongs - what wsproto must refuse."""
    rsv = rng.choice([1, 2, 4, 7]) if odd and rng.random() < 0.3 else 0
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | (opcode & 0x0F)])
    n = len(payload)
    if odd and rng.random() < 0.3:
        masked = not masked
    form = rng.choice(["min", "16", "64", "lie"]) if odd and rng.random() < 0.5 else "min"
    mask_bit = 0x80 if masked else 0
    if form == "lie":
        n = rng.choice([n + 1, max(0, n - 1), 2**63 - 1, 2**62, 70_000])
        form = "min"
    if form == "min" and n < 126:
        head.append(mask_bit | n)
    elif (form == "min" and n < 65536) or form == "16":
        head.append(mask_bit | 126)
        head += (n & 0xFFFF).to_bytes(2, "big")
    else:
        head.append(mask_bit | 127)
        head += n.to_bytes(8, "big")
    if masked:
        key = rng.randbytes(4)
        head += key
        n = len(payload)
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes((key * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
    return bytes(head) + payload


class LinkTarget(Target):
    name = "link"

    def generate(self, index: int) -> dict[str, Any]:
        rng = self.rng(index)
        client = rng.random() < 0.5  # the side under test is the link's client (the peer is a server)
        masked = not client  # what the peer sends: a client masks, a server does not
        if rng.random() < 0.05:
            stream = rng.randbytes(rng.randint(0, 300))
        else:
            stream = self._head(rng, client) + self._frames(rng, masked, crdt_pool(self.seed))
            if rng.random() < 0.3:
                stream = mutate_bytes(stream, rng)
        cuts = sorted(rng.randint(0, len(stream)) for _ in range(rng.choice([0, 1, 2, 5, 20])))
        return {"client": client, "stream": stream, "cuts": cuts, "eof": rng.random() < 0.3,
                "tiny": rng.random() < 0.2, "refuse": rng.random() < 0.05,
                "gaps": [rng.choice([0.001, 0.001, 0.5, 4.0, 10.0]) for _ in range(len(cuts) + 1)]}

    @staticmethod
    def _head(rng: random.Random, client: bool) -> bytes:
        if client:  # the server's answer to our upgrade; {ACCEPT} becomes the right key at run time
            lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
                     "Sec-WebSocket-Accept: {ACCEPT}", "Sec-WebSocket-Protocol: meshpos.v1"]
            r = rng.random()
            if r < 0.05:
                lines[0] = rng.choice(["HTTP/1.1 400 Bad Request", "HTTP/1.1 200 OK", "HTTP/1.0 101 x", "HTTP/2 101"])
            elif r < 0.1:
                lines[4] = rng.choice(["Sec-WebSocket-Protocol: other", "X-Nothing: 1"])
            elif r < 0.13:
                lines[3] = "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA="
            elif r < 0.16:
                lines.append("Sec-WebSocket-Extensions: permessage-deflate")
            elif r < 0.18:
                lines.append("Content-Length: 5")
        else:  # a peer's upgrade request
            key = base64.b64encode(rng.randbytes(16)).decode()
            lines = ["GET /meshpos/v1/link HTTP/1.1", "Host: meshpos", "Upgrade: websocket", "Connection: Upgrade",
                     f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Protocol: meshpos.v1"]
            r = rng.random()
            if r < 0.05:
                lines[0] = rng.choice(["GET / HTTP/1.1", "POST /meshpos/v1/link HTTP/1.1", "GET /meshpos/v1/link",
                                       "GET /meshpos/v1/link HTTP/1.0"])
            elif r < 0.1:
                lines[6] = rng.choice(["Sec-WebSocket-Protocol: chat", "Sec-WebSocket-Protocol: meshpos.v1, chat"])
            elif r < 0.13:
                lines[5] = "Sec-WebSocket-Version: 8"
            elif r < 0.15:
                lines.append("X-Big: " + "a" * rng.choice([10_000, 100_000]))
            elif r < 0.17:
                lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
            elif r < 0.19:
                del lines[rng.randrange(1, len(lines))]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    @staticmethod
    def _frames(rng: random.Random, masked: bool, pool: CrdtPool) -> bytes:
        out = bytearray()
        r = rng.random()
        first = hello(rng)
        if r < 0.1:
            first = mutate_value(first, rng)
        elif r < 0.13:
            first = control_message(rng)
        if rng.random() < 0.95:
            out += ws_frame(rng, 1, json.dumps(first).encode(), masked=masked)
        for _ in range(rng.choice([0, 1, 2, 3, 5, 10, 40])):
            odd = rng.random() < 0.1
            kind = rng.randint(0, 11)
            if kind <= 3:  # a sync frame
                from peer.wire import encode_sync  # noqa: PLC0415

                payload = rng.choice(pool.updates)
                frame = encode_sync(rng.choice(["tables", "inventory", f"orders/{DAY}", "nope"]), rng.choice([0, 1, 2]),
                                    payload if rng.random() < 0.7 else mutate_bytes(payload, rng))
                out += ws_frame(rng, 2, frame, masked=masked, odd=odd)
            elif kind <= 5:
                body = json.dumps(control_message(rng)).encode()
                out += ws_frame(rng, 1, body if rng.random() < 0.8 else mutate_bytes(body, rng), masked=masked,
                                odd=odd)
            elif kind == 6:
                out += ws_frame(rng, rng.choice([9, 10]), rng.randbytes(rng.choice([0, 8, 125, 126, 300])),
                                masked=masked, odd=odd)
            elif kind == 7:
                code = rng.choice([1000, 1001, 1005, 1006, 999, 4006, 5000, 65535])
                reason = rng.choice([b"", b"bye", b"\xff\xfe", "x" * 200]) if isinstance(code, int) else b""
                reason = reason.encode() if isinstance(reason, str) else reason
                payload = code.to_bytes(2, "big") + reason if rng.random() < 0.9 else b"\x03"
                out += ws_frame(rng, 8, payload, masked=masked, odd=odd)
            elif kind == 8:  # a fragmented message, perhaps with a ping between the fragments
                opcode = rng.choice([1, 2])
                body = json.dumps(control_message(rng)).encode() if opcode == 1 else rng.choice(pool.updates)
                cut = rng.randint(0, len(body))
                out += ws_frame(rng, opcode, body[:cut], masked=masked, fin=False)
                if rng.random() < 0.3:
                    out += ws_frame(rng, 9, b"p", masked=masked)
                out += ws_frame(rng, rng.choice([0, 0, 0, 1]), body[cut:], masked=masked, fin=rng.random() < 0.9)
            elif kind == 9:
                out += ws_frame(rng, rng.choice([0, 3, 7, 11, 15]), rng.randbytes(rng.randint(0, 20)), masked=masked,
                                fin=rng.random() < 0.8)
            elif kind == 10:
                out += ws_frame(rng, 1, rng.choice([b"\xff\xfe", b'{"type":"hello"\xc3', b"\xed\xa0\x80"]),
                                masked=masked)
            else:
                out += ws_frame(rng, 2, rng.randbytes(rng.choice([0, 10, 2000, 70_000])), masked=masked, odd=odd)
        return bytes(out)

    def run(self, inp: dict[str, Any]) -> str:
        from peer.link import Binary, Closed, Limits, LinkCore, Opened, Refused, Send  # noqa: PLC0415
        from peer.wire import WireError, decode_sync  # noqa: PLC0415

        def authorize(message: dict[str, Any]) -> None:
            if message.get("terminal_id") != "peer-1" or message.get("protocol") != 1:
                raise Refused(4003, "not the peer this test expects")

        limits = Limits(max_message_bytes=4096, max_control_bytes=512, heartbeat_interval=0.5, dead_after=2.0,
                        hello_timeout=1.0, messages_per_second=5.0, message_burst=4.0) if inp["tiny"] else Limits()
        core = LinkCore(client=inp["client"], hello={"type": "hello", "protocol": 1, "terminal_id": "me"},
                        authorize=authorize, now=0.0, limits=limits,
                        refuse=Refused(4003, "revoked") if inp["refuse"] else None)
        stream = inp["stream"]
        actions = core.start()
        if inp["client"]:
            request = actions[0].data if actions and isinstance(actions[0], Send) else b""
            key = re.search(rb"Sec-WebSocket-Key: ([A-Za-z0-9+/=]+)", request, re.IGNORECASE)
            accept = base64.b64encode(hashlib.sha1(key.group(1) + WS_GUID).digest()) if key else b""
            stream = stream.replace(b"{ACCEPT}", accept)
        opened = closed = False
        now, at = 0.0, 0
        cuts = [c for c in inp["cuts"] if c <= len(stream)] + [len(stream)]
        for cut, gap in zip(cuts, inp["gaps"], strict=False):
            now += gap
            chunk, at = stream[at:cut], max(at, cut)
            # Never b"": anyio streams do not return it (wsproto would take it for the end).
            actions = (core.receive(chunk, now) if chunk else []) + core.tick(now)
            closed_before = closed
            for action in actions:
                if closed_before:
                    raise AssertionError(f"an action after the link closed: {action!r}")
                if isinstance(action, Opened):
                    opened = True
                elif isinstance(action, Closed):
                    closed = True
                elif isinstance(action, Binary):
                    with contextlib.suppress(WireError):
                        decode_sync(action.data)
                elif isinstance(action, Send) and not isinstance(action.data, bytes):
                    raise AssertionError(f"Send of {type(action.data).__name__}")
        if inp["eof"]:
            core.receive(None, now + 0.01)
        if core.state == "closed" and core.receive(b"\x81\x00", now + 1) != []:
            raise AssertionError("a closed link produced actions")
        return "accepted" if opened else "refused"


# -- cashier -------------------------------------------------------------------------------------

TERMINALS = ["pos-1", "pos-2", "pos-3", "kds-1", ""]


def ballot(rng: random.Random) -> Any:
    if rng.random() < 0.85:
        return [rng.choice([0, 1, 2, 3, rng.randint(0, 50)]), rng.choice(TERMINALS[:3])]
    return rng.choice([[-1, "pos-2"], [1.0, "pos-2"], [True, "pos-2"], [2**64, "pos-2"], ["1", "pos-2"], [1], [],
                       [1, "a", "b"], "1,pos-2", None, [2**63, ""], [1, None], {"round": 1}])


def position(rng: random.Random) -> Any:
    if rng.random() < 0.85:
        return rng.choice([0, 1, 2, 2, 3, rng.randint(0, 10)])
    return rng.choice([99_999, 100_000, 100_001, 100_002, 2**31, 2**63, 10**30, -1, 1.5, True, "3", None])


def drawer_name(rng: random.Random, *, key: bool = False) -> Any:
    """A drawer name; ``key``: as a JSON object's key (always a string)."""
    if rng.random() < 0.85:
        return rng.choice(["main", "main", "bar", "d2"])
    return rng.choice(["", "x" * 33, "bad name", "ümlaut", "main\n", "a/b"] + ([] if key else [7, None, ["main"]]))


def ledger_entry(rng: random.Random, drawer: Any = "main") -> Any:
    """An entry of the kinds and fields of meshpos/cashier/ledger.py; a quarter of them then
    mutated (a field dropped, added, of the wrong type, negative, huge)."""
    from meshpos.cashier.ledger import FIELDS, KINDS  # noqa: PLC0415

    kind = rng.choice(KINDS)
    if kind == "noop":
        entry: dict[str, Any] = {"kind": "noop"}
    else:
        entry = {"kind": kind, "op_id": text(rng, 4, 10), "drawer": drawer if isinstance(drawer, str) else "main",
                 "terminal_id": rng.choice(["pos-1", "pos-2"]), "user_id": rng.choice([None, "ana"]), "at": ISO,
                 "status": rng.choice(["committed", "committed", "committed", "in_review"])}
        for name, wanted in FIELDS[kind].items():
            if name == "method":
                entry[name] = rng.choice(["cash", "card", "pix", "voucher"])
            elif name == "direction":
                entry[name] = rng.choice(["in", "out"])
            elif name == "decision":
                entry[name] = rng.choice(["accept", "reject", "adjust"])
            elif name == "of":
                entry[name] = rng.choice([0, 1, 2, 3, 5])
            elif wanted is str:
                entry[name] = rng.choice(["fuzz-pay-1", text(rng)]) if name.endswith("op_id") else text(rng)
            elif name == "difference_cents":
                entry[name] = rng.randint(-500, 500)
            else:
                entry[name] = rng.choice([0, 1, 100, 1590, rng.randint(0, 100_000)])
        if kind == "review_resolution":
            entry["amount_cents"] = rng.randint(0, 1000) if entry["decision"] == "adjust" else None
        if rng.random() < 0.1:
            entry["review"] = {"reason": "fuzz", "conflicts_with": [rng.randint(0, 3)]}
        if rng.random() < 0.05:
            entry["provisional"] = {"terminal_id": "pos-2", "created_at": ISO}
    if rng.random() < 0.25:
        return mutate_value(entry, rng, max_nesting=28)
    return entry


def cashier_message(rng: random.Random) -> dict[str, Any]:
    m = rng.choice(["prepare", "promise", "reject", "accept", "accept", "accepted", "commit", "commit", "release",
                    "heads", "ledger", "ledger", "recovery_query", "recovery_report"])
    d = drawer_name(rng)
    msg: dict[str, Any] = {"type": "cashier", "m": m}

    def entries(n: int) -> list[Any]:
        return [ledger_entry(rng, d) for _ in range(n)]

    if m == "prepare":
        msg.update(drawer=d, ballot=ballot(rng), known=position(rng))
    elif m == "promise":
        msg.update(drawer=d, ballot=ballot(rng), voter=rng.choice(TERMINALS), committed=position(rng),
                   accepted=[[position(rng), ballot(rng), ledger_entry(rng, d)] for _ in range(rng.randint(0, 3))])
    elif m == "reject":
        msg.update(drawer=d, ballot=ballot(rng), voter=rng.choice(TERMINALS), promised=ballot(rng),
                   locked_by=rng.choice(TERMINALS), lease_left=rng.choice([None, 0, 1.5, 10, -1, "x", True, 1e308]))
    elif m == "accept":
        msg.update(drawer=d, ballot=ballot(rng), position=position(rng), entry=ledger_entry(rng, d),
                   commit_upto=position(rng))
    elif m == "accepted":
        msg.update(drawer=d, ballot=ballot(rng), position=position(rng), voter=rng.choice(TERMINALS),
                   committed=position(rng))
    elif m == "commit":
        msg.update(drawer=d, ballot=ballot(rng), start=position(rng), entries=entries(rng.choice([0, 1, 2, 3, 70])))
    elif m == "release":
        msg.update(drawer=d, ballot=ballot(rng))
    elif m == "heads":
        msg.update(drawers={drawer_name(rng, key=True): position(rng)
                            for _ in range(rng.randint(0, 3))}, all=rng.choice([True, False, True, 1, None]))
    elif m == "ledger":
        msg.update(drawer=d, start=position(rng), entries=entries(rng.choice([0, 1, 2, 3, 64, 65])))
    elif m == "recovery_query":
        msg.update(known={drawer_name(rng, key=True): position(rng)
                          for _ in range(rng.randint(0, 3))})
    else:
        msg.update(last=rng.choice([True, False, True, 1]), drawers={
            drawer_name(rng, key=True): {
                "promised": ballot(rng), "committed": position(rng),
                "accepted": [[position(rng), ballot(rng), ledger_entry(rng, d)] for _ in range(rng.randint(0, 2))]}
            for _ in range(rng.randint(0, 2))})
    if rng.random() < 0.3:
        msg = mutate_value(msg, rng, max_nesting=28)
    return msg


class CashierTarget(Target):
    """Quorum messages to the parsers and to the cashier of a running POS, its store's only voter
    (enrolled, so ``heads``, ``ledger`` and recovery queries find the peer links they answer on)."""

    name = "cashier"
    asynchronous = True
    _template: Path | None = None

    def generate(self, index: int) -> dict[str, Any]:
        rng = self.rng(index)
        message = cashier_message(rng)
        if not isinstance(message, dict):  # a mutation replaced the whole message
            message = {"type": "cashier", "m": "commit", "x": message}
        return {"sender": rng.choice(["pos-2", "pos-2", "pos-3", "pos-1", "kds-1"]), "message": message}

    def template(self, workdir: Path) -> Path:
        """An enrolled data directory (made once per process): a copy starts each session."""
        if self._template is None:
            from peer.identity import Authority  # noqa: PLC0415

            root = workdir / "cashier-template"
            authority = Authority.init(root / "auth", "fuzz")
            authority.enroll("pos-1", "pos", root / "pos-1")
            type(self)._template = root / "pos-1"
        return self._template

    @contextlib.asynccontextmanager
    async def session(self, workdir: Path) -> AsyncIterator[Any]:
        template = self.template(workdir.parent)
        async with running_terminal(workdir, template=template) as terminal:
            session = CashierSession(terminal)
            await session.setup()
            yield session


class CashierSession:
    def __init__(self, terminal: Any) -> None:
        self.t = terminal

    async def setup(self) -> None:
        """Drawer ``main`` opened with a payment in it: the messages meet a ledger, not nothing."""
        order = await self.t.create_order(table=None, waiter=None, items=[
            {"sku": "burger", "name": "Burger", "qty": 2, "unit_price_cents": 1590, "station": "grill"}])
        await self.t.cashier.open_drawer("main", float_cents=10_000, operator="fuzz", op_id="fuzz-open-1")
        await self.t.cashier.pay("main", order_id=order["id"], amount_cents=1000, method="cash", op_id="fuzz-pay-1")

    async def run(self, inp: dict[str, Any]) -> str:
        import anyio  # noqa: PLC0415

        from meshpos.cashier.ledger import check_entry  # noqa: PLC0415
        from meshpos.cashier.quorum import BadMessage, from_wire, report_from_wire  # noqa: PLC0415

        message = inp["message"]
        if message.get("m") == "recovery_report":
            with contextlib.suppress(BadMessage):
                report_from_wire(message, check_entry)
        else:
            with contextlib.suppress(BadMessage):
                from_wire(message, 0.0, check_entry)
        try:
            await self.t.cashier.receive(inp["sender"], message)
        except BadMessage:
            return "refused"
        await anyio.lowlevel.checkpoint()
        return "accepted"

    async def finish(self) -> None:
        encoded([self.t.cashier.summary(d) for d in self.t.cashier.drawer_names()])
        encoded([self.t.cashier.drawer(d) for d in self.t.cashier.drawer_names()])
        encoded(self.t.cashier.reviews("all"))


# -- roster --------------------------------------------------------------------------------------


class RosterTarget(Target):
    """A store authority made from the seed (its key and the signatures are deterministic), so a
    saved input verifies the same in any process."""

    name = "roster"

    def __init__(self, seed: int, plant: int | None = None) -> None:
        super().__init__(seed, plant)
        from cryptography import x509  # noqa: PLC0415
        from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
        from cryptography.x509.oid import NameOID  # noqa: PLC0415

        from peer.identity import store_id_of  # noqa: PLC0415

        secret = int.from_bytes(hashlib.sha256(f"{seed}:authority".encode()).digest(), "big")
        self.key = ec.derive_private_key(secret % (2**255) + 1, ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshpos store authority: fuzz")])
        moment = datetime(2026, 1, 1, tzinfo=UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(1).not_valid_before(moment).not_valid_after(moment + timedelta(days=3650))
                     .sign(self.key, hashes.SHA256(), ecdsa_deterministic=True))
        self.store_id = store_id_of(self.cert)
        self._hashes, self._ec = hashes, ec

    def sign(self, body: str) -> bytes:
        signature = self.key.sign(body.encode("utf-8", "surrogatepass"),
                                  self._ec.ECDSA(self._hashes.SHA256(), deterministic_signing=True))
        return json.dumps({"body": body, "signature": base64.b64encode(signature).decode()}, indent=1).encode()

    def body(self, rng: random.Random) -> dict[str, Any]:
        terminals = {f"pos-{k}": {"type": rng.choice(["pos", "pos", "kds", "waiter"]),
                                  "fingerprint": hashlib.sha256(f"{k}".encode()).hexdigest()}
                     for k in range(rng.randint(0, 5))}
        revoked = {tid: {"fingerprint": e["fingerprint"]} for tid, e in terminals.items() if rng.random() < 0.2}
        return {"store_id": self.store_id, "store_name": "fuzz", "version": rng.randint(1, 9), "issued_at": ISO,
                "terminals": terminals, "revoked": revoked}

    def generate(self, index: int) -> bytes:
        rng = self.rng(index)
        body = self.body(rng)
        r = rng.random()
        if r < 0.15:
            return self.sign(json.dumps(body, sort_keys=True, separators=(",", ":")))
        if r < 0.5:  # a body mutation behind a valid signature: the parsing after the check runs
            return self.sign(dump_json(mutate_value(body, rng, max_nesting=40), rng))
        if r < 0.6:
            return self.sign(mutate_text(json.dumps(body), rng))
        if r < 0.65:
            depth = rng.choice([31, 32, 33, 1000, 100_000])
            return self.sign(hostile.deep_json(depth, '{{"store_id":"x","terminals":{}}}'))
        signed = self.sign(json.dumps(body, sort_keys=True, separators=(",", ":")))
        if r < 0.85:
            return mutate_bytes(signed, rng)
        outer = json.loads(signed)
        if r < 0.95:
            return dump_json(mutate_value(outer, rng), rng).encode("utf-8", "surrogatepass")
        return rng.choice([b"", b"{}", b"[]", b"null", hostile.deep_json(100_000, "{}").encode(),
                           b'{"body":"{}","signature":"' + b"A" * 600_000 + b'"}', b"\xff\xfe", signed[:-1],
                           signed.replace(b'"body"', b'"body":"x","body"', 1)])

    def run(self, data: bytes) -> str:
        from peer.identity import IdentityError, newer_roster, verify_roster  # noqa: PLC0415

        try:
            roster = verify_roster(data, self.cert)
        except IdentityError:
            return "refused"
        roster.voters()  # what the cashier and the mesh ask of an adopted roster
        for tid in list(roster.terminals)[:5] + ["pos-1", "nobody"]:
            roster.admits(tid, "00" * 32)
            roster.is_revoked(tid)
        newer_roster(roster, data, self.cert)
        encoded({"terminals": roster.terminals, "revoked": roster.revoked, "version": roster.version})
        return "accepted"


# -- api -----------------------------------------------------------------------------------------

ID_RULE = "[A-Za-z0-9][A-Za-z0-9._:-]{0,63}"
#: Body fields and path parameters that name things the terminal holds: mostly a known one
#: (``@@kind#n@@``, resolved at run time from what the session created), so requests reach the
#: handlers' state checks instead of stopping at 404.
KNOWN_FIELDS = {"order_id": "order", "table": "table", "into": "table", "sku": "sku", "payment_op_id": "payment",
                "table_id": "table", "item_id": "item", "drawer": "drawer", "review_id": "review"}
PLACEHOLDER = re.compile(r"@@([a-z]+)#([0-9]+)@@")
PLACEHOLDER_BYTES = re.compile(rb"@@([a-z]+)#([0-9]+)@@")
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "text/plain", "",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx",
                 "application/json;", " application/json ", "text/json"]


class SchemaValues:
    """Values for a JSON Schema as msgspec publishes it in /openapi.json: in range most of the
    time, on the bounds or past them otherwise."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.components = spec["components"]["schemas"]

    def value(self, schema: dict[str, Any], rng: random.Random, name: str = "", depth: int = 0) -> Any:
        if "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[1]]
        if name in KNOWN_FIELDS and rng.random() < 0.7:
            return f"@@{KNOWN_FIELDS[name]}#{rng.randint(0, 9)}@@"
        if "anyOf" in schema and "type" not in schema and "properties" not in schema:
            return self.value(rng.choice(schema["anyOf"]), rng, name, depth)
        if "enum" in schema:
            return rng.choice(schema["enum"])
        if "const" in schema:
            return schema["const"]
        kind = schema.get("type")
        if kind == "object":
            return self._object(schema, rng, depth)
        if kind == "integer":
            lo, hi = schema.get("minimum", -(2**31)), schema.get("maximum", 2**31)
            r = rng.random()
            value = rng.randint(lo, hi) if r < 0.5 else rng.randint(lo, min(hi, lo + 10)) if r < 0.8 else \
                rng.choice([lo, hi, lo - 1, hi + 1])
            return 1 if value == 0 and "not" in schema and rng.random() < 0.9 else value
        if kind == "string":
            if ID_RULE in schema.get("pattern", ""):
                return rng.choice(["T1", "burger", text(rng, 1, 10)]) if rng.random() < 0.9 else weird_str(rng)
            lo, hi = schema.get("minLength", 0), min(schema.get("maxLength", 30), 60)
            r = rng.random()
            if r < 0.85:
                return text(rng, max(1, lo), max(1, min(hi, 12))) if hi else ""
            return rng.choice(["", "x" * (hi + 1), weird_str(rng), "x" * hi])
        if kind == "array":
            items = schema.get("items", {})
            n = rng.randint(schema.get("minItems", 0), min(schema.get("maxItems", 3), 3))
            return [self.value(items, rng, "", depth + 1) for _ in range(n)]
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "null":
            return None
        return json_value(rng)

    def _object(self, schema: dict[str, Any], rng: random.Random, depth: int) -> dict[str, Any]:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        for group in schema.get("anyOf", []):  # TablePatch, StockFlagsIn: one of these is required
            if "required" in group and rng.random() < 0.6:
                required |= set(group["required"])
        out = {}
        for key, sub in props.items():
            if key in required or rng.random() < 0.4:
                out[key] = self.value(sub, rng, key, depth + 1)
        return out


class ApiTarget(Target):
    name = "api"
    asynchronous = True
    _spec: dict[str, Any] | None = None

    def prepare(self) -> None:
        """The schema the requests are built from: the app's own /openapi.json (fetched once per
        process, before any event loop runs: generation happens inside the batch's loop)."""
        if ApiTarget._spec is None:
            import anyio  # noqa: PLC0415

            async def fetch(workdir: Path) -> dict[str, Any]:
                async with running_terminal(workdir / "t") as terminal, api_client(terminal) as client:
                    return (await client.get("/openapi.json")).json()

            workdir = Path(tempfile.mkdtemp(prefix="fuzz-spec-", dir=scratch()))
            try:
                ApiTarget._spec = anyio.run(fetch, workdir)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)

    def spec(self) -> dict[str, Any]:
        if ApiTarget._spec is None:
            raise RuntimeError("ApiTarget.prepare() fetches the schema first")
        return ApiTarget._spec

    def generate(self, index: int) -> dict[str, Any]:
        rng = self.rng(index)
        spec = self.spec()
        values = SchemaValues(spec)
        operations = sorted((path, method) for path, methods in spec["paths"].items() for method in methods)
        path, method = rng.choice(operations)
        op = spec["paths"][path][method]
        method = method.upper()
        params: dict[str, str] = {}
        query: list[tuple[str, str]] = []
        for p in op.get("parameters", []):
            name = p["name"]
            if p["in"] == "path":
                if rng.random() < 0.88:
                    params[name] = f"@@{KNOWN_FIELDS.get(name, name)}#{rng.randint(0, 9)}@@"
                else:
                    params[name] = rng.choice([weird_str(rng), text(rng, 1, 40), "main.0", "20260615-" + "0" * 19,
                                               "a" * 9000, "%2e%2e", "T1%0A"])
            elif rng.random() < 0.5:
                value = values.value(p["schema"], rng, name)
                if rng.random() < 0.2:
                    value = rng.choice(["", "abc", "-1", "99999999999999999999", "2026-02-30", "2026-06-15",
                                        "1e3", "true", weird_str(rng)])
                query.append((name, json.dumps(value) if isinstance(value, dict | list) else
                              str(value).lower() if isinstance(value, bool) else str(value)))
        if rng.random() < 0.05:
            query.append((text(rng), weird_str(rng)))
        body: bytes | None = None
        headers = {"content-type": "application/json"} if method != "GET" else {}
        schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        if schema is not None or rng.random() < 0.03:
            value = values.value(schema, rng) if schema is not None else json_value(rng)
            r = rng.random()
            if r < 0.25:
                value = mutate_value(value, rng, max_nesting=40)
            body = dump_json(value, rng).encode("utf-8", "surrogatepass")
            if r > 0.9:
                body = mutate_bytes(body, rng) if r < 0.96 else rng.choice(
                    [b"", b"null", b"[]", b"{", b"\xff\xfe", hostile.deep_json(rng.choice([33, 100_000]),
                                                                               '{{"items":{}}}').encode(),
                     b'{"name":"' + b"x" * 300_000 + b'","price_cents":1}'])
        if method != "GET" and rng.random() < 0.08:
            ctype = rng.choice(CONTENT_TYPES)
            if ctype:
                headers["content-type"] = ctype
            else:
                headers.pop("content-type", None)
        if rng.random() < 0.05:
            method = rng.choice(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "BREW"])
        if rng.random() < 0.02:
            path = rng.choice(["/", "/api", "/api/v1", "/api/v1/orders/", "/api/v2/orders", "/openapi.json",
                               "/api/v1/events", "/api/v1/../v1/tables", "//api/v1/tables", "/api/v1/tables?x"])
        if rng.random() < 0.06:
            header = rng.choice(["host", "origin", "origin", "authorization", "x-forwarded-for", "cookie",
                                 "access-control-request-method", "transfer-encoding"])
            headers[header] = rng.choice(["evil.example", "http://evil.example", "null", "http://127.0.0.1:0",
                                          "localhost", "127.0.0.1:0", "Bearer x", "[::1]", "POST", "a" * 70_000,
                                          "http://localhost:0", "chunked", ""])
        return {"method": method, "path": path, "params": params, "query": query, "headers": headers, "body": body}

    @contextlib.asynccontextmanager
    async def session(self, workdir: Path) -> AsyncIterator[Any]:
        async with running_terminal(workdir) as terminal:
            async with api_client(terminal) as client:
                session = ApiSession(terminal, client)
                await session.setup()
                yield session


def api_client(terminal: Any) -> Any:
    """The app in process: every request goes through the guard, routing, decoding and handlers."""
    import httpx  # noqa: PLC0415

    from meshpos.api import create_app  # noqa: PLC0415

    app = create_app(terminal)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1:0", timeout=60)


class ApiSession:
    def __init__(self, terminal: Any, client: Any) -> None:
        self.t = terminal
        self.client = client
        self.known: dict[str, list[str]] = {
            "table": ["T1", "T2", "T3"], "sku": ["burger", "soda"], "order": [], "orderitem": [], "item": [],
            "payment": ["fuzz-pay-1"], "drawer": ["main", "bar"], "review": ["main.0", "main.1", "main.2", "bar.0"]}

    async def setup(self) -> None:
        """What a morning leaves: tables, a menu, an order with items, drawer ``main`` opened and
        paid into.  Every later request can name these (see :data:`KNOWN_FIELDS`)."""
        calls = [("PUT", f"/api/v1/tables/{t}", {"name": t, "seats": 4}) for t in ("T1", "T2", "T3")]
        calls += [("PUT", f"/api/v1/catalog/{s}", {"name": s, "price_cents": 500}) for s in ("burger", "soda")]
        calls += [("POST", "/api/v1/orders", {"table": "T1", "items": [
            {"sku": "burger", "name": "Burger", "qty": 2, "unit_price_cents": 1590},
            {"sku": "soda", "name": "Soda", "qty": 1, "unit_price_cents": 500}]})]
        calls += [("POST", "/api/v1/cashier/drawers/main/open", {"float_cents": 10_000, "operator": "fuzz"})]
        for method, path, body in calls:
            answer = await self.client.request(method, path, json=body)
            if answer.status_code >= 300:
                raise RuntimeError(f"setup {method} {path}: {answer.status_code} {answer.text}")
            self.learn(method, path, answer)
        order = self.known["order"][0]
        answer = await self.client.post("/api/v1/cashier/drawers/main/payments", json={
            "order_id": order, "amount_cents": 1000, "method": "cash", "op_id": "fuzz-pay-1"})
        if answer.status_code >= 300:
            raise RuntimeError(f"setup payment: {answer.status_code} {answer.text}")

    def learn(self, method: str, path: str, answer: Any) -> None:
        """Remember the orders and items a request created, in an order that does not depend on
        their random ids (on the fixed clock every item has the same ``added_at``, and a view
        lists items by time, then id): ``@@item#3@@`` must name the same item in every run."""
        if not 200 <= answer.status_code < 300 or method != "POST":
            return
        if path == "/api/v1/orders" or path.endswith("/items"):
            view = answer.json()
            if isinstance(view, dict) and "id" in view:
                if view["id"] not in self.known["order"]:
                    self.known["order"].append(view["id"])
                new = [item for item in view.get("items", []) if item["id"] not in self.known["item"]]
                for item in sorted(new, key=lambda i: json.dumps({k: v for k, v in i.items() if k != "id"},
                                                                 sort_keys=True)):
                    self.known["item"].append(item["id"])
                    self.known["orderitem"].append(view["id"])

    def resolve(self, textual: str, pair: int | None = None) -> str:
        def one(match: re.Match[str]) -> str:
            kind, n = match.group(1), int(match.group(2))
            if kind == "order" and pair is not None:
                kind = "orderitem"
            values = self.known.get(kind) or ["none"]
            return values[(pair if pair is not None else n) % len(values)]

        return PLACEHOLDER.sub(one, textual)

    async def run(self, inp: dict[str, Any]) -> str:
        from urllib.parse import quote  # noqa: PLC0415

        def escaped(value: str) -> str:  # a lone surrogate travels as the bytes a client would send
            return quote(value.encode("utf-8", "surrogatepass"), safe="")

        params = inp["params"]
        item = PLACEHOLDER.fullmatch(params.get("item_id", ""))
        pair = int(item.group(2)) if item else None  # an item and its own order, not another's
        path = inp["path"]
        for name, value in params.items():
            resolved = self.resolve(value, pair if name == "order_id" else None)
            path = path.replace("{" + name + "}", resolved if len(resolved) > 2000 and resolved.isascii()
                                else escaped(resolved))
        query = "&".join(f"{escaped(k)}={escaped(self.resolve(v))}" for k, v in inp["query"])
        if query:
            path += ("&" if "?" in path else "?") + query
        body = inp["body"]
        if body is not None and b"@@" in body:
            body = PLACEHOLDER_BYTES.sub(lambda m: self.resolve(m.group(0).decode()).encode(), body)
        method = inp["method"]
        answer = await self.client.request(method, path, content=body, headers=inp["headers"])
        status = answer.status_code
        if status >= 500:
            raise AssertionError(f"{method} {path}: HTTP {status}: {answer.text[:500]}")
        if 300 <= status < 400:  # Starlette's redirect of a trailing slash: no error, no body
            if "location" not in answer.headers:
                raise AssertionError(f"{method} {path}: HTTP {status} without a Location")
            return "refused"
        if method != "HEAD" and not (method == "OPTIONS" and status < 400 and not answer.content):
            try:
                payload = answer.json()
            except ValueError:
                raise AssertionError(f"{method} {path}: HTTP {status} answered no JSON: "
                                     f"{answer.text[:300]!r}") from None
            if status >= 400 and not (isinstance(payload, dict) and type(payload.get("code")) is int
                                      and isinstance(payload.get("message"), str)):
                raise AssertionError(f"{method} {path}: HTTP {status} error is not {{code, message}}: {payload!r:.300}")
        self.learn(method, inp["path"], answer)
        return "accepted" if status < 400 else "refused"

    async def finish(self) -> None:
        for path in ("/api/v1/orders", "/api/v1/tables", "/api/v1/inventory", "/api/v1/catalog", "/api/v1/status",
                     "/api/v1/cashier/drawers", "/api/v1/review?status=all", "/api/v1/audit"):
            answer = await self.client.get(path)
            if answer.status_code != 200:
                raise AssertionError(f"GET {path} after the batch: HTTP {answer.status_code}: {answer.text[:300]}")


# -- planted (tests/test_fuzz.py: the crash detection must find what it is shown) --------------------


class PlantedTarget(Target):
    """Hidden: input ``plant`` segfaults the process (``ctypes.string_at(0)``), input ``plant + 7``
    raises; everything else is refused or accepted by its first byte."""

    name = "planted"

    def generate(self, index: int) -> bytes:
        if index == self.plant:
            return MAGIC_SEGV
        if self.plant is not None and index == self.plant + 7:
            return MAGIC_RAISE
        return self.rng(index).randbytes(8)

    def run(self, data: bytes) -> str:
        if data == MAGIC_SEGV:
            ctypes.string_at(0)
        if data == MAGIC_RAISE:
            raise RuntimeError("the planted exception")
        return "refused" if data[0] % 2 else "accepted"


TARGET_CLASSES: dict[str, type[Target]] = {
    "yupdate": YUpdateTarget, "sync": SyncTarget, "control": ControlTarget, "link": LinkTarget,
    "cashier": CashierTarget, "roster": RosterTarget, "api": ApiTarget, "planted": PlantedTarget}
_TARGETS: dict[tuple[str, int, int | None], Target] = {}


def target_of(name: str, seed: int, plant: int | None) -> Target:
    key = (name, seed, plant)
    if key not in _TARGETS:
        _TARGETS[key] = TARGET_CLASSES[name](seed, plant)
    return _TARGETS[key]


def scratch() -> str | None:
    """Terminals' data directories go to memory when the box has a tmpfs: fsync is not what is tested."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


# -- a child: runs batches, reports counts and the crashes that raised --------------------------------


class ErrorLog(logging.Handler):
    """Counts what the product logs at ERROR and above while fuzzed (a swallowed exception shows
    here, not as a crash) and keeps a few distinct messages; nothing is printed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.samples: list[str] = []
        #: Failed storage commits: the disk is fine here, so one means an input reached SQLite
        #: with something it cannot store - and a group commit fails every record with it.
        self.commit_failures: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if record.name == "storage.store" and "commit failed" in record.getMessage():
            self.commit_failures.append(record.getMessage()[:500])
        if len(self.samples) < 3:
            message = f"{record.name}: {record.getMessage()[:300]}"
            if record.exc_info and record.exc_info[1] is not None:
                message += f" ({type(record.exc_info[1]).__name__}: {str(record.exc_info[1])[:200]})"
            if message not in self.samples:
                self.samples.append(message)


class Poisoned(Exception):
    """A Rust panic unwound through pycrdt: the process's native state is no longer to be trusted,
    so the batch stops there and the rest of it runs in a fresh child."""


def poisons(exc: BaseException) -> bool:
    return type(exc).__name__ == "PanicException"


def crash_record(index: int, inp: Any, exc: BaseException, kind: str = "exception",
                 first: int | None = None) -> dict[str, Any]:
    """``first``: the first input the crashed terminal took (a replay runs those before it)."""
    return {"index": index, "kind": kind, "error": "".join(traceback.format_exception(exc))[-6000:],
            "input": to_jsonable(inp), "context_start": index if first is None else first}


def generated(target: Target, index: int, counts: dict[str, int], crashes: list[dict[str, Any]]) -> Any:
    """The input, or ``None`` when generating it failed: a bug of the fuzzer, not of the product,
    counted apart (``harness_errors``) and saved like a crash so it gets fixed."""
    try:
        return target.generate(index)
    except Exception as exc:  # noqa: BLE001
        counts["harness_error"] += 1
        crashes.append(crash_record(index, None, exc, kind="harness error"))
        return None


def run_batch(job: dict[str, Any], workdir: Path, target: Target | None = None) -> dict[str, Any]:
    """Inputs ``start .. start + count - 1`` of one target, in order; a fresh terminal for the
    async targets (another after one failed)."""
    target = target or target_of(job["target"], job["seed"], job.get("plant"))
    target.prepare()
    counts = dict.fromkeys((*OUTCOMES, "harness_error"), 0)
    crashes: list[dict[str, Any]] = []
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    started = time.perf_counter()
    stopped: int | None = None
    try:
        if target.asynchronous:
            import anyio  # noqa: PLC0415

            try:
                anyio.run(_async_batch, target, job, workdir, counts, crashes, errors,
                          backend=job.get("backend", "asyncio"))
            except BaseExceptionGroup as group:  # Poisoned from inside a task group
                poisoned, rest = group.split(Poisoned)
                if poisoned is None or rest is not None:
                    raise
                leaf: BaseException = poisoned
                while isinstance(leaf, BaseExceptionGroup):
                    leaf = leaf.exceptions[0]
                raise leaf from None
        else:
            for index in range(job["start"], job["start"] + job["count"]):
                inp = generated(target, index, counts, crashes)
                if inp is None:
                    continue
                try:
                    counts[target.run(inp)] += 1
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # noqa: BLE001 - pycrdt's PanicException is a BaseException
                    counts["crash"] += 1
                    crashes.append(crash_record(index, inp, exc))
                    if poisons(exc):
                        raise Poisoned(index + 1) from None
    except Poisoned as poisoned:
        stopped = poisoned.args[0]
    finally:
        logging.getLogger().removeHandler(errors)
    seen: dict[str, int] = {}
    for crash in crashes:  # one bug hit a thousand times: a few inputs travel back, all are counted
        crash["signature"] = signature(crash)
        seen[crash["signature"]] = seen.get(crash["signature"], 0) + 1
        if seen[crash["signature"]] > SAVED_PER_KIND:
            crash["input"] = crash["error"] = None
    return {"counts": counts, "crashes": crashes, "seconds": time.perf_counter() - started,
            "logged_errors": errors.count, "log_samples": errors.samples, "stopped": stopped}


async def _async_batch(target: Target, job: dict[str, Any], workdir: Path, counts: dict[str, int],
                       crashes: list[dict[str, Any]], errors: ErrorLog) -> None:
    """The inputs through one terminal after another: a terminal an input crashed is replaced
    before the next input, so nothing later is blamed on the state the crash left."""
    import anyio  # noqa: PLC0415

    cancelled = anyio.get_cancelled_exc_class()
    index, end = job["start"], job["start"] + job["count"]
    sessions = 0
    while index < end:
        sessions += 1
        phase, inp, crashed, first = "setup", None, False, index
        try:
            async with target.session(workdir / f"s{os.getpid()}-{job['start']}-{sessions}") as session:
                phase = "input"
                while index < end:
                    inp = generated(target, index, counts, crashes)
                    if inp is None:
                        index += 1
                        continue
                    failures = len(errors.commit_failures)
                    try:
                        with anyio.fail_after(INPUT_TIMEOUT):
                            outcome = await session.run(inp)
                        if len(errors.commit_failures) > failures:
                            raise AssertionError(f"a storage commit failed: {errors.commit_failures[-1]}")
                    except cancelled:
                        raise  # the terminal's task group is failing: handled below
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except BaseException as exc:  # noqa: BLE001 - any other exception is a crash
                        counts["crash"] += 1
                        crashes.append(crash_record(index, inp, exc, first=first))
                        index += 1
                        crashed = True
                        if poisons(exc):
                            raise Poisoned(index) from None
                        break
                    counts[outcome] += 1
                    index += 1
                if not crashed:
                    phase = "finish"
                    with anyio.fail_after(INPUT_TIMEOUT * 4):
                        await session.finish()
        except (KeyboardInterrupt, SystemExit, Poisoned):
            raise
        except BaseException as exc:  # noqa: BLE001 - the terminal itself failed
            if crashed:
                continue  # a terminal an input crashed failing to stop: the same crash
            counts["crash"] += 1
            if phase == "finish":
                # After the last input (the final reads, the shutdown): blamed on the last input,
                # a crash on top of its outcome.
                crashes.append(crash_record(end - 1, generated(target, end - 1, counts, crashes), exc, first=first))
                break
            # While an input ran (its task group died under it), or while a terminal started:
            # the input is the crash, and the batch goes on with a new terminal.
            crashes.append(crash_record(index, inp if inp is not None else generated(target, index, counts, crashes),
                                        exc, first=first))
            index += 1
            if "PanicException" in crashes[-1]["error"]:
                raise Poisoned(index) from None


def quiet() -> None:
    """What a child runs with (a replay too, so that it runs the same way): the product's logging
    counted, not printed, and a bound on address space."""
    logging.basicConfig(level=logging.CRITICAL + 1)
    logging.getLogger().setLevel(logging.ERROR)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.CRITICAL + 1)
    with contextlib.suppress(ValueError, OSError):  # a runaway allocation fails instead of eating the box
        resource.setrlimit(resource.RLIMIT_AS, (16 * 1024**3, resource.RLIM_INFINITY))


def worker(plant: int | None, workdir: Path) -> None:
    """``--worker``: batches as JSON lines on stdin, results as JSON lines on the real stdout
    (anything else printing to stdout goes to stderr, so the pipe stays clean)."""
    import faulthandler  # noqa: PLC0415

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    faulthandler.enable()  # a SIGSEGV prints the Python stack to stderr: kept with the crash
    quiet()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for line in sys.stdin:
            job = json.loads(line)
            if job.get("dump"):
                target = target_of(job["target"], job["seed"], job.get("plant", plant))
                target.prepare()
                result: dict[str, Any] = {"input": to_jsonable(target.generate(job["index"]))}
            else:
                job.setdefault("plant", plant)
                result = run_batch(job, workdir)
            proto.write(json.dumps(result) + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # the parent removes it too: a dead child cannot


# -- the parent: children, batches, bisection -------------------------------------------------------


class Died(Exception):
    """A child ended without answering: killed by a signal, out of memory, or hung."""

    def __init__(self, how: str, log_tail: str) -> None:
        super().__init__(how)
        self.how = how
        self.log_tail = log_tail


class Child:
    """One ``--worker`` process; its stderr goes to a log file (the faulthandler's stack of a crash)."""

    def __init__(self, plant: int | None, logdir: Path) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix="child-", suffix=".log", dir=logdir)[1])
        self.log = self.log_path.open("wb")
        #: Its terminals' data directories (in memory when the box has a tmpfs).
        self.workdir = Path(tempfile.mkdtemp(prefix="fuzz-worker-", dir=scratch()))
        argv = module_command(__spec__.name, "--worker", str(self.workdir))
        if plant is not None:
            argv += ["--plant", str(plant)]
        env = {**os.environ, "PYTHONHASHSEED": "0", "RUST_BACKTRACE": "0"}
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env)

    def call(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died already: reading says how
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if line:
                    return json.loads(line)
                self.proc.wait()
                raise Died(describe_exit(self.proc.returncode), self.tail())
            if rss_of(self.proc.pid) > CHILD_RSS_LIMIT:
                self.kill()
                raise Died(f"memory: over {CHILD_RSS_LIMIT // 1024**2} MB resident", self.tail())
            if time.monotonic() > deadline:
                self.kill()
                raise Died(f"hang: no answer within {timeout:.0f} s", self.tail())

    def tail(self) -> str:
        self.log.flush()
        data = self.log_path.read_bytes()
        return data[-4000:].decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()  # type: ignore[union-attr]
        self.log.close()
        self.log_path.unlink(missing_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def rss_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def batch_timeout(target: str, count: int) -> float:
    per_input = 0.2 if target in ("yupdate", "cashier", "api") else 0.02
    return 120 + count * per_input


class Fuzzer:
    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args = args
        self.out = out
        self.logdir = Path(tempfile.mkdtemp(prefix="fuzz-logs-"))
        self.lock = threading.Lock()
        #: Per target: inputs, their outcomes, what the product logged at ERROR, the fuzzer's own
        #: errors, and children that died once on a batch that then ran through (a crash that is
        #: counted, on top of the batch's outcomes, but could not be pinned on an input).
        self.totals = {t: {"inputs": 0, **dict.fromkeys(OUTCOMES, 0), "logged_errors": 0, "harness_errors": 0,
                           "unreproduced_deaths": 0} for t in args.targets}
        self.log_samples: dict[str, list[str]] = {t: [] for t in args.targets}
        self.saved: list[str] = []
        #: What went wrong, grouped: "target: exception: message" (numbers and quoted text
        #: blanked) -> count and one saved input.  Many crashes are often one bug.
        self.kinds: dict[str, dict[str, Any]] = {}
        self.bisections = 0
        self.done_inputs = 0
        self.jobs: queue.Queue[dict[str, Any]] = queue.Queue()
        self.pending = 0  # jobs queued or running; a bisection adds the rest of its batch as a job
        self.failure: BaseException | None = None

    def plan(self) -> list[dict[str, Any]]:
        """Batches of every target, interleaved so the slow targets spread over the children."""
        names = self.args.targets
        share = {t: self.args.inputs // len(names) + (1 if k < self.args.inputs % len(names) else 0)
                 for k, t in enumerate(names)}
        per_target = {t: [{"target": t, "seed": self.args.seed, "start": s, "count": min(BATCH[t], share[t] - s),
                           # the terminal targets run on asyncio and trio, batch by batch
                           "backend": ("trio" if (s // BATCH[t]) % 2 else "asyncio")
                           if TARGET_CLASSES[t].asynchronous else None}
                          for s in range(0, share[t], BATCH[t])] for t in names}
        jobs = []
        while any(per_target.values()):
            for t in names:
                if per_target[t]:
                    jobs.append(per_target[t].pop(0))
        return jobs

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        jobs = self.plan()
        self.pending = len(jobs)
        for job in jobs:
            self.jobs.put(job)
        threads = [threading.Thread(target=self._slot, daemon=True) for _ in range(max(1, self.args.jobs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        shutil.rmtree(self.logdir, ignore_errors=True)
        if self.failure is not None:
            raise self.failure
        seconds = time.perf_counter() - started
        inputs = sum(t["inputs"] for t in self.totals.values())
        return {
            "command": "python -m simulations.fuzz " + " ".join(self.args.argv),
            "seed": self.args.seed, "jobs": self.args.jobs, "inputs": inputs,
            "targets": self.totals,
            "crashes": sum(t["crash"] for t in self.totals.values()),
            "crash_kinds": dict(sorted(self.kinds.items(), key=lambda kv: -kv[1]["count"])),
            "crash_inputs": sorted(self.saved),
            "bisections": self.bisections,
            "seconds": round(seconds, 1), "inputs_per_second": round(inputs / seconds, 1),
            "out": str(self.out),
            "log_samples": {t: s for t, s in self.log_samples.items() if s},
        }

    def _slot(self) -> None:
        child: Child | None = None
        try:
            while True:
                with self.lock:
                    if self.pending == 0 or self.failure is not None:
                        return
                try:
                    job = self.jobs.get(timeout=0.2)
                except queue.Empty:
                    continue  # another slot is bisecting: it may queue the rest of its batch
                if child is None:
                    child = Child(self.args.plant, self.logdir)
                try:
                    result = child.call(job, batch_timeout(job["target"], job["count"]))
                except Died as death:
                    child.close()
                    child = None
                    self._bisect(job, death)
                else:
                    self._record_partial(job, result)
                    if result["stopped"] is not None:
                        child.close()  # a Rust panic unwound in it: the rest runs in a fresh one
                        child = None
                with self.lock:
                    self.pending -= 1
        except BaseException as exc:  # noqa: BLE001 - the parent's own failure: reported, not swallowed
            with self.lock:
                self.failure = exc
        finally:
            if child is not None:
                child.close()

    def _record(self, job: dict[str, Any], result: dict[str, Any]) -> None:
        with self.lock:
            totals = self.totals[job["target"]]
            totals["inputs"] += job["count"]
            for outcome in OUTCOMES:
                totals[outcome] += result["counts"][outcome]
            totals["harness_errors"] += result["counts"]["harness_error"]
            totals["logged_errors"] += result["logged_errors"]
            samples = self.log_samples[job["target"]]
            samples.extend(s for s in result["log_samples"] if s not in samples and len(samples) < 5)
            self.done_inputs += job["count"]
            self._progress()
        for crash in result["crashes"]:
            self._save(job, crash)

    def _record_partial(self, job: dict[str, Any], result: dict[str, Any]) -> None:
        """A batch that stopped after a Rust panic: count what ran, queue the rest."""
        stopped = result["stopped"]
        if stopped is None:
            self._record(job, result)
            return
        self._record({**job, "count": stopped - job["start"]}, result)
        if stopped < job["start"] + job["count"]:
            with self.lock:
                self.pending += 1
            self.jobs.put({**job, "start": stopped, "count": job["start"] + job["count"] - stopped})

    def _progress(self) -> None:
        if self.args.progress:
            print(f"fuzz: {self.done_inputs} / {self.args.inputs} inputs, "
                  f"{sum(t['crash'] for t in self.totals.values())} crashes", file=sys.stderr, flush=True)

    def _probe(self, job: dict[str, Any], start: int, count: int,
               tries: int = PROBE_TRIES) -> tuple[dict[str, Any] | None, Died | None]:
        """Run a part of a batch in a fresh child: its result, or how the child died.  A run that
        lives is tried again (``tries`` in all): memory corruption does not strike every time,
        and a bisection misled once points at the wrong input."""
        result: dict[str, Any] | None = None
        for _ in range(tries):
            child = Child(self.args.plant, self.logdir)
            try:
                result = child.call({**job, "start": start, "count": count}, batch_timeout(job["target"], count))
            except Died as death:
                return None, death
            finally:
                child.close()
        return result, None

    def _bisect(self, job: dict[str, Any], death: Died) -> None:
        """The batch killed its child.  Find the shortest prefix that still does - its last input
        is the killer - then count the inputs before it from that run and go on after it."""
        with self.lock:
            self.bisections += 1
        start, end = job["start"], job["start"] + job["count"]
        again, death_again = self._probe(job, start, job["count"])
        if again is not None:  # did not die again: counted, and recorded as a crash that did not repeat
            self._record_partial(job, again)
            with self.lock:
                self.totals[job["target"]]["crash"] += 1
                self.totals[job["target"]]["unreproduced_deaths"] += 1
            self._save_death(job, start, start, end - 1, death, standalone=False, repeated=False)
            return
        death = death_again or death
        lo, hi = start, end  # [start, lo) runs through; [start, hi) dies
        good: dict[str, Any] | None = None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            result, died = self._probe(job, start, mid - start)
            if died is None:
                lo, good = mid, result
            else:
                hi, death = mid, died
        killer = hi - 1
        if good is not None and lo > start:
            self._record_partial({**job, "count": lo - start}, good)
        alone, alone_death = self._probe(job, killer, 1)
        standalone = alone is None
        if alone_death is not None:
            death = alone_death
        with self.lock:
            totals = self.totals[job["target"]]
            totals["inputs"] += 1
            totals["crash"] += 1
            self.done_inputs += 1
        self._save_death(job, start, killer, killer, death, standalone=standalone, repeated=True)
        if killer + 1 < end:
            with self.lock:
                self.pending += 1
            self.jobs.put({**job, "start": killer + 1, "count": end - killer - 1})

    def _save_death(self, job: dict[str, Any], context_start: int, index: int, last: int, death: Died, *,
                    standalone: bool, repeated: bool) -> None:
        dump = Child(self.args.plant, self.logdir)
        try:
            inp = dump.call({"dump": True, "target": job["target"], "seed": job["seed"], "index": index,
                             "plant": self.args.plant}, 300)["input"]
        except Died as failed:  # generating it fails (a fuzzer bug): the record says so
            inp = None
            death = Died(f"{death.how}; generating the input failed too ({failed.how})",
                         death.log_tail + "\n--- generating it:\n" + failed.log_tail)
        finally:
            dump.close()
        record = {"target": job["target"], "seed": job["seed"], "index": index, "kind": death.how,
                  "backend": job.get("backend"), "plant": self.args.plant, "input": inp,
                  "error": death.log_tail}
        if not repeated:
            record["note"] = (f"the child died on inputs {context_start}..{last} once and not in "
                              f"{PROBE_TRIES} more runs: not reproduced; 'input' is the batch's first")
        if not standalone:
            record["context_start"] = context_start  # replay runs inputs context_start..index-1 first
        self._write(record, counted=False)

    def _save(self, job: dict[str, Any], crash: dict[str, Any]) -> None:
        kind = f"{job['target']}: {crash['signature']}"
        with self.lock:
            entry = self.kinds.setdefault(kind, {"count": 0, "saved": 0, "example": None})
            entry["count"] += 1
            if crash["error"] is None or entry["saved"] >= SAVED_PER_KIND:  # counted only
                return
            entry["saved"] += 1
        record = {"target": job["target"], "seed": job["seed"], "index": crash["index"], "kind": crash["kind"],
                  "backend": job.get("backend"), "plant": self.args.plant, "input": crash["input"],
                  "error": crash["error"]}
        if crash["context_start"] < crash["index"]:
            record["context_start"] = crash["context_start"]  # the inputs the crashed terminal took first
        self._write(record)

    def _write(self, record: dict[str, Any], counted: bool = True) -> None:
        path = self.out / f"{record['target']}-s{record['seed']}-i{record['index']}.json"
        record["replay"] = f"python -m simulations.fuzz --replay {path}"
        path.write_text(json.dumps(record, indent=1))
        kind = f"{record['target']}: {signature(record)}"
        with self.lock:
            self.saved.append(str(path))
            entry = self.kinds.setdefault(kind, {"count": 0, "saved": 0, "example": None})
            entry["example"] = entry["example"] or str(path)
            if not counted:  # a death found by bisection: counted here (exceptions are, in _save)
                entry["count"] += 1
                entry["saved"] += 1


def signature(record: dict[str, Any]) -> str:
    """One line naming a crash's kind: a signal, or the exception's last line with the numbers
    and quoted text blanked (the same bug hit with other bytes reads the same)."""
    if not record["kind"].startswith(("exception", "harness")):
        return record["kind"].split(";")[0]
    lines = [line for line in record["error"].strip().splitlines() if line and not line.startswith(" ")]
    last = lines[-1] if lines else record["kind"]
    last = re.sub(r"'[^' ]*'|\"[^\" ]*\"|<[^>]*>|0x[0-9a-fA-F]+|\\[ux][0-9a-fA-F]+|\b\d+\b", "_", last)
    return (record["kind"] + ": " if record["kind"] != "exception" else "") + last[:160]


# -- replay --------------------------------------------------------------------------------------


class Saved(Target):
    """A target whose input ``index`` is a saved one (the rest generated as in the fuzz run)."""

    def __init__(self, inner: Target, index: int, inp: Any) -> None:
        super().__init__(inner.seed, inner.plant)
        self.inner, self.index, self.inp = inner, index, inp
        self.name, self.asynchronous = inner.name, inner.asynchronous

    def prepare(self) -> None:
        self.inner.prepare()

    def generate(self, index: int) -> Any:
        return self.inp if index == self.index else self.inner.generate(index)

    def run(self, inp: Any) -> str:
        return self.inner.run(inp)

    def session(self, workdir: Path) -> Any:
        return self.inner.session(workdir)  # type: ignore[attr-defined]


def replay(path: Path) -> dict[str, Any]:
    """Run a saved input again, in this process (a segfault kills it: that is the reproduction),
    exactly as the fuzz run did: after the inputs before it on the same terminal
    (``context_start``), a crash among those replacing the terminal as it did then."""
    record = json.loads(path.read_text())
    inner = target_of(record["target"], record["seed"], record.get("plant"))
    first = record.get("context_start", record["index"])
    job = {"target": record["target"], "seed": record["seed"], "start": first,
           "count": record["index"] - first + 1, "backend": record.get("backend") or "asyncio"}
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-replay-"))  # not /dev/shm: a segfault leaves it behind
    try:
        result = run_batch(job, workdir, Saved(inner, record["index"], from_jsonable(record["input"])))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    crashed = [c for c in result["crashes"] if c["index"] == record["index"]]
    for crash in crashed:
        print(crash["error"], file=sys.stderr)
    return {"target": record["target"], "index": record["index"], "inputs_run": job["count"],
            "crash": bool(crashed), "earlier_crashes": [c["index"] for c in result["crashes"]
                                                        if c["index"] != record["index"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=10_000, help="inputs in all, shared evenly by the targets")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), help="child processes at a time")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=[*TARGETS, "planted"])
    parser.add_argument("--out", type=Path, help="where crash inputs are saved (default: a new temporary directory)")
    parser.add_argument("--progress", action="store_true", help="a progress line on stderr after every batch")
    parser.add_argument("--replay", type=Path, help="run one saved crash input (a JSON file from --out)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # a child, with its work directory
    parser.add_argument("--plant", type=int, help=argparse.SUPPRESS)  # the planted target's killer input
    argv = sys.argv[1:]
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.plant, args.worker)
        return
    if args.replay is not None:
        import faulthandler  # noqa: PLC0415

        faulthandler.enable()
        quiet()
        print(json.dumps(replay(args.replay), indent=1))
        return
    if "planted" in args.targets and args.plant is None:
        parser.error("the planted target needs --plant")
    args.argv = argv
    out = args.out or Path(tempfile.mkdtemp(prefix="meshpos-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    result = Fuzzer(args, out.resolve()).run()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
