"""Hostile inputs a peer, a web page or a damaged file can produce, built byte by byte.

Used by the tests (tests/test_hostile_peers.py) and by the fuzzer (simulations/fuzz/).  Each
one once stopped a terminal: deep JSON raised ``RecursionError`` out of a task group; a deep Yjs
value overflowed the stack of pycrdt's Rust decoder (SIGSEGV); a chain of nested types did the
same the first time it was read.
"""

from __future__ import annotations

from pycrdt import Encoder

#: lib0 ``Any`` tags.
ANY_ARRAY, ANY_OBJECT, ANY_STRING = 117, 118, 119
CONTENT_ANY, CONTENT_TYPE, TYPE_MAP = 8, 7, 1
HAS_PARENT_SUB = 0x20


def deep_json(depth: int, wrapper: str = '{{"type":"hello","x":{}}}') -> str:
    """JSON text nesting arrays ``depth`` deep inside ``wrapper``."""
    return wrapper.format("[" * depth + "]" * depth)


def _header(client: int, clock: int, structs: int) -> Encoder:
    enc = Encoder()
    enc.write_var_uint(1)  # one client
    enc.write_var_uint(structs)
    enc.write_var_uint(client)
    enc.write_var_uint(clock)
    return enc


def deep_value_update(depth: int, *, root: str = "catalog", key: str = "evil", client: int = 4242) -> bytes:
    """A v1 update setting ``root[key]`` to an array nested ``depth`` deep (2 bytes a level).
    100,000 levels kill an unprotected pycrdt with SIGSEGV while decoding."""
    enc = _header(client, 0, 1)
    enc.write_var_uint(CONTENT_ANY | HAS_PARENT_SUB)
    enc.write_var_uint(1)  # parent is a root, by name
    enc.write_var_string(root)
    enc.write_var_string(key)
    enc.write_var_uint(1)  # one value
    return enc.to_bytes() + bytes([ANY_ARRAY, 1]) * depth + bytes([ANY_ARRAY, 0]) + b"\x00"  # empty delete set


def map_chain_update(depth: int, *, root: str = "orders", key: str = "k", client: int = 4243) -> bytes:
    """A v1 update nesting ``depth`` ``Y.Map``s, each the value of the previous one's ``key``
    (~10 bytes a level): decoded fine, it kills pycrdt the first time the outer map is read."""
    enc = _header(client, 0, depth)
    for level in range(depth):
        enc.write_var_uint(CONTENT_TYPE | HAS_PARENT_SUB)
        if level == 0:
            enc.write_var_uint(1)
            enc.write_var_string(root)
        else:
            enc.write_var_uint(0)  # parent is the map item before
            enc.write_var_uint(client)
            enc.write_var_uint(level - 1)
        enc.write_var_string(key)
        enc.write_var_uint(TYPE_MAP)
    return enc.to_bytes() + b"\x00"
