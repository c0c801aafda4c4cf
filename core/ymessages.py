"""The y-websocket protocol's messages, as a stock Yjs client (``y-websocket``'s
``WebsocketProvider``, y-protocols' sync and awareness) sends and reads them: decoded with bounds
before anything else sees their bytes, encoded for the replies.  docs/api.md ("Yjs route") is the
prose version.

One WebSocket binary message is one y-websocket message - ``varUint(type)`` then:

* ``0`` sync: ``varUint(sync type)`` and ``varUint8Array(payload)`` - step 1 (payload: a state
  vector), step 2 or update (payload: a v1 update);
* ``1`` awareness: ``varUint8Array`` of an awareness update - ``varUint(n)``, then n times
  ``varUint(client id) varUint(clock) varString(JSON state)`` (``null``: the client left);
* ``3`` query awareness: nothing more.

Type ``2`` (auth) goes from a server to a client only.  Awareness is bounded here (entries per
message, bytes per state, JSON depth) because a terminal keeps the states in memory and hands
them to every other client of the document.
"""

from __future__ import annotations

from dataclasses import dataclass

from pycrdt import Encoder

from core.codec import decode_json
from core.yupdate import Lib0Reader, UpdateRefused, check_state_vector

MESSAGE_SYNC, MESSAGE_AWARENESS, MESSAGE_AUTH, MESSAGE_QUERY_AWARENESS = 0, 1, 2, 3
STEP1, STEP2, UPDATE = 0, 1, 2
#: Most awareness entries one message may carry (a browser sends its own one).
MAX_AWARENESS_ENTRIES = 16
#: Largest awareness state, as JSON text (a cursor, a user name, the ticket looked at).
MAX_AWARENESS_STATE_BYTES = 8 * 1024
#: Most client ids one connection may announce awareness for (one per Y.Doc it binds).
MAX_CLIENTS_PER_CONNECTION = 4
#: Most awareness states one document keeps (every screen of a big restaurant, several times over).
MAX_CLIENTS_PER_ROOM = 256


class MessageError(ValueError):
    """A message a Yjs client must not send; the connection closes with 4006 and this text."""


@dataclass(frozen=True, slots=True)
class SyncMessage:
    kind: int  # STEP1 (payload: state vector) | STEP2 | UPDATE (payload: update)
    payload: bytes


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    client: int
    clock: int
    state: str  # JSON text; "null": the client is gone


@dataclass(frozen=True, slots=True)
class AwarenessMessage:
    entries: tuple[AwarenessEntry, ...]


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    pass


Message = SyncMessage | AwarenessMessage | QueryAwareness


def decode_message(data: bytes) -> Message:
    """One client message, exactly: anything malformed, unknown or left over is :class:`MessageError`."""
    reader = Lib0Reader(bytes(data))
    try:
        message_type = reader.uint()
        if message_type == MESSAGE_SYNC:
            kind = reader.uint()
            if kind not in (STEP1, STEP2, UPDATE):
                raise MessageError(f"unknown sync message type {kind}")
            payload = reader.chunk()
            if kind == STEP1:
                check_state_vector(payload)
            message: Message = SyncMessage(kind, payload)
        elif message_type == MESSAGE_AWARENESS:
            message = AwarenessMessage(_awareness_entries(Lib0Reader(reader.chunk())))
        elif message_type == MESSAGE_QUERY_AWARENESS:
            message = QueryAwareness()
        else:
            raise MessageError(f"unknown y-websocket message type {message_type}")
        if reader.pos != reader.end:
            raise MessageError(f"{reader.end - reader.pos} bytes after the message")
    except UpdateRefused as exc:
        raise MessageError(str(exc)) from None
    return message


def _awareness_entries(reader: Lib0Reader) -> tuple[AwarenessEntry, ...]:
    n = reader.count("awareness entry", 3)
    if n > MAX_AWARENESS_ENTRIES:
        raise MessageError(f"an awareness update may carry at most {MAX_AWARENESS_ENTRIES} entries, not {n}")
    entries = []
    for _ in range(n):
        client, clock = reader.uint(), reader.uint()
        state = reader.string()
        if len(state.encode()) > MAX_AWARENESS_STATE_BYTES:
            raise MessageError(f"an awareness state may be at most {MAX_AWARENESS_STATE_BYTES} bytes of JSON")
        try:
            value = decode_json(state)  # depth-bounded
        except ValueError as exc:
            raise MessageError(f"awareness state of client {client} is not JSON ({exc})") from None
        if value is not None and not isinstance(value, dict):
            raise MessageError(f"awareness state of client {client} must be an object or null")
        entries.append(AwarenessEntry(client, clock, state))
    if reader.pos != reader.end:
        raise MessageError("bytes after the awareness update")
    return tuple(entries)


def _chunk(data: bytes) -> bytes:
    """lib0's varUint8Array.  Not pycrdt's ``write_var_string``: it writes the length in
    characters, not UTF-8 bytes, so a state naming "José" would not decode."""
    enc = Encoder()
    enc.write_var_uint(len(data))
    return enc.to_bytes() + data


def encode_sync(kind: int, payload: bytes) -> bytes:
    """y-protocols' framing, written as peer/wire.py writes it (pycrdt's encoder, then the payload)."""
    enc = Encoder()
    enc.write_var_uint(MESSAGE_SYNC)
    enc.write_var_uint(kind)
    return enc.to_bytes() + _chunk(payload)


def encode_awareness(entries: list[AwarenessEntry]) -> bytes:
    body = Encoder()
    body.write_var_uint(len(entries))
    parts = [body.to_bytes()]
    for entry in entries:
        head = Encoder()
        head.write_var_uint(entry.client)
        head.write_var_uint(entry.clock)
        parts += [head.to_bytes(), _chunk(entry.state.encode())]
    enc = Encoder()
    enc.write_var_uint(MESSAGE_AWARENESS)
    return enc.to_bytes() + _chunk(b"".join(parts))


class AwarenessTable:
    """The awareness states of one document's clients, with y-protocols' rules for which update
    wins (a higher clock; an equal clock that removes) plus ours: a client id belongs to the
    connection that announced it first, so one browser cannot rewrite or remove another's.

    Owners are opaque (a connection object); nothing here does I/O.
    """

    def __init__(self) -> None:
        self.states: dict[int, tuple[int, str, object]] = {}  # client -> (clock, state, owner)

    def apply(self, owner: object, entries: tuple[AwarenessEntry, ...]) -> list[AwarenessEntry]:
        """Take what ``owner`` sent; returns the entries that changed something (to pass on)."""
        changed = []
        for entry in entries:
            known = self.states.get(entry.client)
            if known is not None:
                if known[2] is not owner:
                    continue  # another connection's client
                if entry.clock < known[0] or (entry.clock == known[0] and entry.state != "null"):
                    continue  # stale
            elif entry.state == "null":
                continue  # nothing to remove
            elif len(self.states) >= MAX_CLIENTS_PER_ROOM or \
                    sum(1 for s in self.states.values() if s[2] is owner) >= MAX_CLIENTS_PER_CONNECTION:
                continue  # bounded: the newcomer is not shown, nobody else is harmed
            if entry.state == "null":
                del self.states[entry.client]
            else:
                self.states[entry.client] = (entry.clock, entry.state, owner)
            changed.append(entry)
        return changed

    def drop(self, owner: object) -> list[AwarenessEntry]:
        """``owner`` left: the removals to pass on for each of its clients."""
        gone = [client for client, state in self.states.items() if state[2] is owner]
        removals = [AwarenessEntry(client, self.states.pop(client)[0] + 1, "null") for client in gone]
        return removals

    def snapshot(self) -> list[AwarenessEntry]:
        return [AwarenessEntry(client, clock, state) for client, (clock, state, _) in self.states.items()]
