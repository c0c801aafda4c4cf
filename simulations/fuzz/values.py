"""Random and mutated values - lib0 encoding, JSON values and text, byte and value mutations:
the raw material of every target's inputs; and inputs as JSON (saved crash inputs, the pipe)."""

from __future__ import annotations

import base64
import json
import random
from typing import Any


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
