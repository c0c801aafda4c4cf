"""core/ymessages.py: the y-websocket messages a browser sends, decoded with bounds, and the
awareness rules (who may change which state) - no sockets."""

from __future__ import annotations

import pycrdt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.ymessages import (
    MAX_AWARENESS_ENTRIES,
    MAX_AWARENESS_STATE_BYTES,
    MAX_CLIENTS_PER_CONNECTION,
    STEP1,
    STEP2,
    UPDATE,
    AwarenessEntry,
    AwarenessMessage,
    AwarenessTable,
    MessageError,
    QueryAwareness,
    SyncMessage,
    decode_message,
    encode_awareness,
    encode_sync,
)


def test_what_pycrdt_and_yjs_frame_decodes_to_the_same_message() -> None:
    doc = pycrdt.Doc()
    doc.get("tables", type=pycrdt.Map)["T1"] = {"name": "T1"}
    update = doc.get_update()
    # pycrdt's own y-protocols framing of the same messages (what y-websocket writes, too)
    assert decode_message(pycrdt.create_update_message(update)) == SyncMessage(UPDATE, update)
    assert decode_message(pycrdt.create_sync_message(doc)) == SyncMessage(STEP1, doc.get_state())
    for kind, payload in ((STEP1, doc.get_state()), (STEP2, update), (UPDATE, update)):
        assert decode_message(encode_sync(kind, payload)) == SyncMessage(kind, payload)
    entries = [AwarenessEntry(7, 3, '{"user":"ana"}'), AwarenessEntry(2**40, 1, "null")]
    assert decode_message(encode_awareness(entries)) == AwarenessMessage(tuple(entries))
    named = [AwarenessEntry(8, 2, '{"user":"José"}')]  # lengths are UTF-8 bytes, not characters
    assert decode_message(encode_awareness(named)) == AwarenessMessage(tuple(named))
    assert decode_message(b"\x03") == QueryAwareness()


@pytest.mark.parametrize(("data", "why"), [
    (b"", "truncated"),
    (b"\x02", "unknown y-websocket message type 2"),      # auth goes server -> client only
    (b"\x00\x03\x00", "unknown sync message type 3"),
    (b"\x00\x00\x02\x01", "runs past the end"),
    (b"\x00\x00\x01\x05", "client count 5 exceeds"),      # a step 1 whose state vector is cut
    (b"\x03\x00", "bytes after the message"),
    (b"\x00\x01" + b"\xff" * 9, "longer than 53 bits"),
    (encode_awareness([AwarenessEntry(1, 1, "[1,2]")]), "object or null"),
    (encode_awareness([AwarenessEntry(1, 1, "{")]), "not JSON"),
    (encode_awareness([AwarenessEntry(1, 1, "[" * 40 + "]" * 40)]), "not JSON"),
    (encode_awareness([AwarenessEntry(1, 1, '{"a":"' + "x" * MAX_AWARENESS_STATE_BYTES + '"}')]), "at most"),
    (encode_awareness([AwarenessEntry(n, 1, "{}") for n in range(MAX_AWARENESS_ENTRIES + 1)]), "at most"),
])
def test_malformed_messages_are_refused_with_the_reason(data: bytes, why: str) -> None:
    with pytest.raises(MessageError, match=why):
        decode_message(data)


@given(st.binary(max_size=300))
def test_no_bytes_raise_anything_but_message_error(data: bytes) -> None:
    try:
        decode_message(data)
    except MessageError:
        pass


def test_awareness_follows_the_clock_and_keeps_each_client_with_its_connection() -> None:
    table, a, b = AwarenessTable(), object(), object()
    assert table.apply(a, (AwarenessEntry(1, 1, '{"t":1}'),)) == [AwarenessEntry(1, 1, '{"t":1}')]
    assert table.apply(a, (AwarenessEntry(1, 1, '{"t":2}'),)) == []      # same clock: stale
    assert table.apply(b, (AwarenessEntry(1, 5, '{"t":"forged"}'),)) == []  # a's client
    assert table.apply(b, (AwarenessEntry(1, 5, "null"),)) == []         # b cannot remove it either
    assert table.apply(a, (AwarenessEntry(1, 2, '{"t":3}'),)) == [AwarenessEntry(1, 2, '{"t":3}')]
    assert table.apply(b, (AwarenessEntry(9, 1, "null"),)) == []         # nothing to remove
    table.apply(b, (AwarenessEntry(2, 1, "{}"),))
    assert table.snapshot() == [AwarenessEntry(1, 2, '{"t":3}'), AwarenessEntry(2, 1, "{}")]
    assert table.drop(a) == [AwarenessEntry(1, 3, "null")]
    assert table.snapshot() == [AwarenessEntry(2, 1, "{}")]
    # an equal clock that removes is taken (y-protocols' rule)
    assert table.apply(b, (AwarenessEntry(2, 1, "null"),)) == [AwarenessEntry(2, 1, "null")]


def test_one_connection_cannot_fill_the_table() -> None:
    table, a = AwarenessTable(), object()
    entries = tuple(AwarenessEntry(n, 1, "{}") for n in range(MAX_CLIENTS_PER_CONNECTION + 3))
    assert len(table.apply(a, entries)) == MAX_CLIENTS_PER_CONNECTION
    assert len(table.snapshot()) == MAX_CLIENTS_PER_CONNECTION
