"""Conversions between CRDT values and typed Python values (pycrdt returns JS numbers as float)."""

from __future__ import annotations

from typing import Any

from core.codec import decode_json, encode_json
from core.errors import InvalidInput
from core.names import ID_PATTERN


def as_int(value: Any) -> int:
    """A JS number holding an integer back to ``int`` (money and counts are integers on the wire)."""
    if isinstance(value, bool):
        raise TypeError("boolean is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError(f"expected an integer, got {value!r}")


def plain(value: Any) -> Any:
    """Deep-convert a value read from pycrdt (``to_py`` output) to JSON-friendly Python types."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, bytearray):
        return bytes(value)
    return value


def check_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise InvalidInput(
            f"invalid {kind} id {value!r}: 1-64 characters, letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return value


def dump(record: dict[str, Any] | list[dict[str, Any]]) -> str:
    """An immutable record as compact JSON text (one CRDT item; see orders.py for why)."""
    return encode_json(record)


def load(text: Any) -> dict[str, Any]:
    """Inverse of :func:`dump`; a value that is not JSON text of an object is a malformed record."""
    if not isinstance(text, str):
        raise TypeError(f"expected a JSON text record, got {type(text).__name__}")
    value = decode_json(text)
    if not isinstance(value, dict):
        raise TypeError("expected a JSON object record")
    return value


def load_list(text: Any) -> list[dict[str, Any]]:
    """A JSON text array of object records (a batch of order items)."""
    if not isinstance(text, str):
        raise TypeError(f"expected a JSON text record list, got {type(text).__name__}")
    value = decode_json(text)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise TypeError("expected a JSON array of object records")
    return value
