"""Hand-encoded Yjs updates: structs, contents and delete sets a pycrdt document never writes."""

from __future__ import annotations

import json
import random
import struct

from simulations.fuzz.documents import order_id, order_record
from simulations.fuzz.values import text, varint, varstring, varuint, weird_str


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
