"""The one JSON text codec: event payloads and audit rows on disk, records inside the documents,
control messages on peer links, rosters, API bodies.

msgspec rather than the stdlib for speed: a catch-up of 2,500 orders decodes 2,500 records and
stores 2,500 order views, and ``json`` cost several times as much.  Output is compact UTF-8 JSON.

Every decode is **bounded before a parser sees the text**: nesting deeper than
:data:`MAX_JSON_DEPTH` is refused with ``ValueError``.  A peer, a web page or a damaged file can
otherwise send ``[[[[...`` 200,000 deep, and both msgspec and the stdlib answer that with
``RecursionError`` - not a ``ValueError`` any caller expects, so it escaped task groups and
stopped the terminal.  Nothing meshpos writes nests more than 6 deep.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

#: Deepest nesting of arrays and objects accepted anywhere (ours nest at most 6 deep).
MAX_JSON_DEPTH = 32

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
#: A JSON string (skipped whole: brackets inside it are text) or one bracket.
_TOKENS_STR = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_TOKENS_BYTES = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_OPEN_STR, _CLOSE_STR = frozenset("[{"), frozenset("]}")
_OPEN_BYTES, _CLOSE_BYTES = frozenset(b"[{"), frozenset(b"]}")


def encode_json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON.  A string holding a lone surrogate (read from such an escape, below)
    cannot be UTF-8: the stdlib writes it back as the same escape instead of failing."""
    try:
        return _encode(value)
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"), default=_embedded_value).encode()


def embed_json(text: str) -> Any:
    """A value that encodes as ``text`` itself - a JSON value in place - not as a string holding
    it: for JSON a serializer that always writes valid JSON wrote (Yrs's ``to_json`` of an order
    map).  Stored inside an event as a string, it was escaped a second time: a fifth more bytes,
    and the escaping cost as much as the rest of the payload's encoding.  :func:`embedded_text`
    reads it back before it is stored; once stored and read, it is a plain decoded value."""
    return msgspec.Raw(text)


def embedded_text(value: Any) -> Any:
    """The JSON text of an :func:`embed_json` value; anything else as it is."""
    return bytes(value).decode() if isinstance(value, msgspec.Raw) else value


def _embedded_value(value: Any) -> Any:
    if isinstance(value, msgspec.Raw):
        return decode_json(bytes(value))
    raise TypeError(f"{type(value).__name__} is not JSON")


def encode_json(value: Any) -> str:
    return encode_json_bytes(value).decode()


def format_json(value: Any) -> str:
    """Indented JSON for a person to read (the CLI's ``--json``); same encoder, same bounds."""
    return msgspec.json.format(encode_json_bytes(value), indent=2).decode()


def json_too_deep(text: str | bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``text`` nests arrays and objects deeper than ``limit``; linear, not recursive.

    Brackets inside strings do not count.  On malformed text the count can only come out higher
    than a parser would go, never lower (the parser fails before it gets that deep).
    """
    if isinstance(text, str):
        if text.count("[") + text.count("{") <= limit:
            return False
        tokens, opening, closing = _TOKENS_STR, _OPEN_STR, _CLOSE_STR
    else:
        if text.count(b"[") + text.count(b"{") <= limit:
            return False
        tokens, opening, closing = _TOKENS_BYTES, _OPEN_BYTES, _CLOSE_BYTES
    depth = 0
    for match in tokens.finditer(text):
        char = text[match.start()]
        if char in opening:
            depth += 1
            if depth > limit:
                return True
        elif char in closing:
            depth -= 1
    return False


def check_json_depth(text: str | bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """``ValueError`` if ``text`` nests deeper than ``limit`` (see :func:`json_too_deep`)."""
    if json_too_deep(text, limit):
        raise ValueError(f"JSON nested deeper than {limit} levels")


def decode_json(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON text; raises ``ValueError`` if it is not JSON or nests deeper than ``max_depth``.

    msgspec first, the stdlib when msgspec refuses: JavaScript's ``JSON.stringify`` writes a
    string cut inside an emoji as a lone surrogate escape (``"\\ud83d"``), which msgspec rejects
    and ``json.loads`` reads - JS clients write records too, and databases written before this
    codec hold event and audit rows whose text the stdlib escaped the same way.
    """
    check_json_depth(text, max_depth)
    try:
        try:
            return _decode(text)
        except msgspec.DecodeError:
            return json.loads(text)
    except RecursionError:  # unreachable after the depth check; kept so it can never escape
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None
