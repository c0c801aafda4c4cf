"""The one JSON text codec: event payloads and audit rows on disk, records inside the documents.

msgspec rather than the stdlib for speed: a catch-up of 2,500 orders decodes 2,500 records and
stores 2,500 order views, and ``json`` cost several times as much.  Output is compact UTF-8 JSON.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def encode_json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON.  A string holding a lone surrogate (read from such an escape, below)
    cannot be UTF-8: the stdlib writes it back as the same escape instead of failing."""
    try:
        return _encode(value)
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


def encode_json(value: Any) -> str:
    return encode_json_bytes(value).decode()


def decode_json(text: str | bytes) -> Any:
    """Parse JSON text; raises ``ValueError`` if it is not JSON.

    msgspec first, the stdlib when msgspec refuses: JavaScript's ``JSON.stringify`` writes a
    string cut inside an emoji as a lone surrogate escape (``"\\ud83d"``), which msgspec rejects
    and ``json.loads`` reads - JS clients write records too, and databases written before this
    codec hold event and audit rows whose text the stdlib escaped the same way.
    """
    try:
        return _decode(text)
    except msgspec.DecodeError:
        return json.loads(text)
