"""What travels on a peer link, byte for byte (docs/protocol.md is the prose version).

A link carries two kinds of WebSocket message:

* **binary** - one Yjs sync message for one document: ``varString(doc name)`` followed by the
  y-protocols sync message (``0``, sync type 0|1|2, ``varUint8Array(payload)``), the framing
  y-websocket uses, prefixed by the document name so one link multiplexes every document.  A JS
  peer encodes it with lib0's ``encoding.writeVarString`` and y-protocols' ``syncProtocol``;
* **text** - one JSON control object with a ``"type"`` (hello, docs, resync, roster, links, via, cashier, hq).

Anything else, or anything that does not parse exactly, is :class:`WireError` (close 4006).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pycrdt import Decoder, Encoder, YMessageType, YSyncMessageType

from core.codec import decode_json, encode_json
from core.errors import INVALID_MESSAGE
from core.names import ID_PATTERN, is_doc_name
from core.yupdate import UpdateRefused, check_state_vector, decode_state_vector

PROTOCOL_VERSION = 1
#: WebSocket subprotocol a meshpos peer offers and accepts; the request path of a link.
SUBPROTOCOL = "meshpos.v1"
LINK_PATH = "/meshpos/v1/link"

STEP1, STEP2, UPDATE = int(YSyncMessageType.SYNC_STEP1), int(YSyncMessageType.SYNC_STEP2), \
    int(YSyncMessageType.SYNC_UPDATE)
CONTROL_TYPES = frozenset({"hello", "docs", "resync", "roster", "links", "via", "cashier", "hq"})
#: Most terminals one ``links`` message may name.
MAX_LINKS_PER_MESSAGE = 1000


class WireError(Exception):
    """A frame a peer must not send; the link closes with :attr:`code`."""

    def __init__(self, message: str, code: int = INVALID_MESSAGE) -> None:
        super().__init__(message)
        self.code = code


def check_doc_name(name: str) -> str:
    if is_doc_name(name):
        return name
    raise WireError(f"unknown document {name[:80]!r}")


@dataclass(frozen=True, slots=True)
class SyncFrame:
    doc: str
    kind: int  # STEP1 (payload: state vector) | STEP2 | UPDATE (payload: update)
    payload: bytes


def encode_sync(doc: str, kind: int, payload: bytes) -> bytes:
    enc = Encoder()
    enc.write_var_string(doc)
    enc.write_var_uint(int(YMessageType.SYNC))
    enc.write_var_uint(kind)
    enc.write_var_uint(len(payload))
    return enc.to_bytes() + payload


def decode_sync(data: bytes) -> SyncFrame:
    try:
        dec = Decoder(bytes(data))
        n = dec.read_var_uint()
        name = bytes(dec.stream[dec.i0:dec.i0 + n]).decode()
        if len(name.encode()) != n:
            raise ValueError("truncated document name")
        dec.i0 += n
        dec.length -= n
        message_type, kind = dec.read_var_uint(), dec.read_var_uint()
        size = dec.read_var_uint()
        payload = bytes(dec.stream[dec.i0:])
    except (RuntimeError, IndexError, UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"malformed sync frame ({exc})") from None
    if message_type != YMessageType.SYNC or kind not in (STEP1, STEP2, UPDATE):
        raise WireError(f"unsupported y-protocols message {message_type}/{kind}")
    if size != len(payload):
        raise WireError(f"sync frame payload is {len(payload)} bytes, header says {size}")
    if kind == STEP1:
        try:
            check_state_vector(payload)  # Yrs decodes it next: only well-formed ones reach it
        except UpdateRefused as exc:
            raise WireError(f"sync step 1: {exc}") from None
    return SyncFrame(check_doc_name(name), kind, payload)


def peer_state_vector(state_vector: bytes) -> dict[int, int]:
    """A state vector a peer sent, decoded (:func:`core.yupdate.decode_state_vector`); a
    malformed one is :class:`WireError`."""
    try:
        return decode_state_vector(state_vector)
    except UpdateRefused as exc:
        raise WireError(str(exc)) from None


def encode_control(message: dict[str, Any]) -> str:
    return encode_json(message)


def decode_control(text: str) -> dict[str, Any]:
    try:
        message = decode_json(text)  # depth-bounded before the parser sees it
    except ValueError as exc:
        raise WireError(f"control message is not JSON ({exc})") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str) \
            or message["type"] not in CONTROL_TYPES:
        raise WireError("control message needs a known \"type\"")
    return message


def value_of(message: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """``message[name]`` if it has the expected JSON type, else :class:`WireError`."""
    value = message.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise WireError(f"{message.get('type')} message: {name!r} is missing or not {getattr(kind, '__name__', kind)}")
    return value


def links_of(message: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The terminal ids of a ``links`` message, and those of them that pass changes on (its
    ``relays``, a subset; absent: none); raises :class:`WireError` if malformed."""
    lists = []
    for key in ("peers", "relays"):
        ids = value_of(message, key, list) if key == "peers" or key in message else []
        if len(ids) > MAX_LINKS_PER_MESSAGE:
            raise WireError(f"links message: {key} names more than {MAX_LINKS_PER_MESSAGE} terminals")
        for peer in ids:
            if not isinstance(peer, str) or ID_PATTERN.match(peer) is None:
                raise WireError(f"links message: {str(peer)[:80]!r} is not a terminal id")
        lists.append(ids)
    peers, relays = lists
    if not set(relays) <= set(peers):
        raise WireError("links message: relays must be a subset of peers")
    return peers, relays
