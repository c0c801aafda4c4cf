"""The sans-I/O cores, driven by hand: no sockets, no clock, every byte and instant chosen here."""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Doc, Map
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage
from wsproto.events import Request as WsRequest

from core.errors import INVALID_MESSAGE, INVALID_TERMINAL_ID
from core.yupdate import decode_state_vector, merge_run
from peer.link import (
    ABNORMAL,
    LINK_PATH,
    SUBPROTOCOL,
    Binary,
    Closed,
    Control,
    Heartbeat,
    Limits,
    LinkCore,
    Opened,
    Refused,
    Send,
)
from peer.sync import AnswerStep1, Apply, Outgoing, SyncSession
from peer.wire import STEP1, STEP2, UPDATE, WireError, decode_sync, encode_sync

HELLO = {"type": "hello", "terminal_id": "a"}


def pair(authorize_server=lambda h: None, limits: Limits = Limits()):  # noqa: ANN001, ANN201, B008
    client = LinkCore(client=True, hello={**HELLO, "terminal_id": "c"}, authorize=lambda h: None, now=0.0,
                      limits=limits)
    server = LinkCore(client=False, hello={**HELLO, "terminal_id": "s"}, authorize=authorize_server, now=0.0,
                      limits=limits)
    return client, server


def pump(a: LinkCore, b: LinkCore, actions: list[Any], now: float = 0.0) -> dict[str, list[Any]]:
    """Deliver ``actions`` (a's output) to b and everything that follows, both ways, until quiet."""
    seen: dict[str, list[Any]] = {"a": [], "b": []}
    queue = [("b", x) for x in actions]
    while queue:
        side, action = queue.pop(0)
        if not isinstance(action, Send):
            continue
        target, other = (b, "a") if side == "b" else (a, "b")
        for out in target.receive(action.data, now):
            seen[side].append(out)
            queue.append((other, out))
    return seen


def test_handshake_hello_and_messages() -> None:
    client, server = pair()
    seen = pump(client, server, client.start())
    assert any(isinstance(x, Opened) and x.hello["terminal_id"] == "c" for x in seen["b"])
    assert any(isinstance(x, Opened) and x.hello["terminal_id"] == "s" for x in seen["a"])
    frame = encode_sync("tables", UPDATE, b"\x00\x00")
    seen = pump(client, server, client.send_binary(frame))
    assert [x for x in seen["b"] if isinstance(x, Binary)] == [Binary(frame)]
    seen = pump(client, server, client.send_control({"type": "resync", "docs": ["tables"]}))
    assert [x.message for x in seen["b"] if isinstance(x, Control)] == [{"type": "resync", "docs": ["tables"]}]


def test_refused_hello_closes_with_its_code() -> None:
    def refuse(hello: dict[str, Any]) -> None:
        raise Refused(INVALID_TERMINAL_ID, "claims another id")

    client, server = pair(refuse)
    seen = pump(client, server, client.start())
    closed_b = [x for x in seen["b"] if isinstance(x, Closed)]
    closed_a = [x for x in seen["a"] if isinstance(x, Closed)]
    assert closed_b == [Closed(INVALID_TERMINAL_ID, "claims another id", by_peer=False)]
    assert closed_a and closed_a[0].code == INVALID_TERMINAL_ID and closed_a[0].by_peer
    assert not any(isinstance(x, Opened) for x in seen["b"])


def test_sync_before_hello_is_4006() -> None:
    """A peer that upgrades and then sends a sync frame where its hello belongs: wsproto plays
    that peer, since a LinkCore always says hello first."""
    _, server = pair()
    peer = WSConnection(ConnectionType.CLIENT)
    upgrade = peer.send(WsRequest(host="s", target=LINK_PATH, subprotocols=[SUBPROTOCOL]))
    answer = b"".join(a.data for a in server.receive(upgrade, 0.0) if isinstance(a, Send))
    peer.receive_data(answer)
    assert any(isinstance(e, AcceptConnection) for e in peer.events())  # upgraded; the server said hello
    actions = server.receive(peer.send(BytesMessage(data=encode_sync("tables", UPDATE, b"\x00\x00"))), 0.0)
    closed = [x for x in actions if isinstance(x, Closed)]
    assert [x.code for x in closed] == [INVALID_MESSAGE] and not closed[0].by_peer
    assert not any(isinstance(x, (Opened, Binary)) for x in actions)


def test_oversize_message_on_an_open_link_is_4006() -> None:
    client, server = pair(limits=Limits(max_message_bytes=100))
    pump(client, server, client.start())
    assert server.state == "open"
    seen = pump(client, server, client.send_binary(b"x" * 101))
    assert [x.code for x in seen["b"] if isinstance(x, Closed)] == [INVALID_MESSAGE]


def test_garbage_instead_of_a_handshake() -> None:
    server = LinkCore(client=False, hello=HELLO, authorize=lambda h: None, now=0.0)
    actions = server.receive(b"\x16\x03\x01garbage\r\n\r\n", 0.0)
    assert [x.code for x in actions if isinstance(x, Closed)] == [INVALID_MESSAGE]


@pytest.mark.parametrize("after", ["nothing", "request", "open"])
def test_end_of_stream_always_ends_the_link(after: str) -> None:
    """A peer hanging up at any point (here: before its upgrade request, after it, or on an open
    link) ends the link once; a core that ignored it would be fed the end again and again."""
    client, server = pair()
    if after == "request":
        server.receive(b"".join(a.data for a in client.start() if isinstance(a, Send)), 0.0)
    elif after == "open":
        pump(client, server, client.start())
        assert server.state == "open"
    actions = server.receive(None, 1.0)
    assert [x.code for x in actions if isinstance(x, Closed)] == [ABNORMAL]
    assert server.state == "closed" and server.receive(None, 1.0) == []


def test_heartbeat_measures_rtt_and_detects_a_dead_peer() -> None:
    limits = Limits(heartbeat_interval=1.0, dead_after=3.0)
    client, server = pair(limits=limits)
    pump(client, server, client.start())
    ping = client.tick(1.0)
    assert ping and isinstance(ping[0], Send)
    pong = server.receive(ping[0].data, 1.0)
    beats = client.receive(pong[0].data, 1.25)
    assert beats == [Heartbeat(0.25)]
    assert client.next_deadline() == pytest.approx(2.0)
    # from now on the server is silent: the client gives up dead_after seconds after it last heard
    client.tick(2.0)
    client.tick(3.0)
    assert all(isinstance(x, Send) for x in client.tick(4.0))  # still pinging, not yet dead
    closed = client.tick(4.3)
    assert len(closed) == 1 and closed[0].code == ABNORMAL and "no heartbeat" in closed[0].reason


def test_hello_timeout() -> None:
    server = LinkCore(client=False, hello=HELLO, authorize=lambda h: None, now=0.0, limits=Limits(hello_timeout=5,
                                                                                             dead_after=10))
    assert server.tick(4.9) == []
    server.receive(b"GET", 4.9)  # a trickle of bytes does not extend the hello deadline
    assert [x.code for x in server.tick(5.1) if isinstance(x, Closed)] == [INVALID_MESSAGE]


def test_sync_frames_round_trip_and_reject_malformed() -> None:
    frame = decode_sync(encode_sync("orders/2026-11-23", STEP1, b"\x01\x02\x03"))
    assert (frame.doc, frame.kind, frame.payload) == ("orders/2026-11-23", STEP1, b"\x01\x02\x03")
    for bad in (b"", b"\x06tables", encode_sync("tables", UPDATE, b"abc")[:-1],
                encode_sync("orders/2026-13-45", UPDATE, b""), encode_sync("../etc", UPDATE, b"")):
        with pytest.raises(WireError):
            decode_sync(bad)
    assert decode_state_vector(b"\x02\x05\x07\x01\x03") == {5: 7, 1: 3}


def test_outbox_is_bounded_and_overflow_asks_for_a_resync() -> None:
    session = SyncSession(max_queue_bytes=1000)
    session.queue_step1("tables", b"\x00")
    for _ in range(50):
        session.queue_shared(Outgoing(ticket=None, update_of="inventory", update=bytes(100)))
        assert session.queued_bytes <= 1000
    assert session.resyncs == 1
    items = session.take()
    assert items[0].data is not None and decode_sync(items[0].data).kind == STEP1  # non-updates are kept
    assert items[-1].control == {"type": "resync", "docs": ["inventory"]}
    assert session.queued_bytes == 0 and not session.resync_needed
    session.queue_shared(Outgoing(ticket=None, update_of="inventory", update=b"\x00"))
    assert len(session.take()) == 1  # queueing resumes normally after the resync request


def test_session_decodes_intents() -> None:
    session = SyncSession()
    assert session.receive(encode_sync("tables", STEP1, b"\x00")) == AnswerStep1("tables", b"\x00")
    assert session.receive(encode_sync("tables", UPDATE, b"\x00\x00")) == Apply("tables", b"\x00\x00", step2=False)
    assert session.updates_in == 1
    assert session.receive(encode_sync("tables", STEP2, b"\x00\x00")) == Apply("tables", b"\x00\x00", step2=True)
    session.queue_step2("tables", b"\x00\x00")
    session.queue_shared(Outgoing(ticket=None, update_of="tables", update=b"\x00\x00"))
    session.queue_step1("tables", b"\x00")
    session.take()
    assert (session.updates_in, session.updates_out) == (2, 2)  # a catch-up counts both ways; a step 1 does not


def test_a_run_of_updates_leaves_as_one_frame_that_holds_them_all() -> None:
    """What the writer ships for consecutive updates of one document (and the host stores for
    one transaction's updates): one merged update; a run of one is passed through untouched."""
    source = Doc()
    source["catalog"] = catalog = Map()
    updates: list[bytes] = []
    source.observe(lambda event: updates.append(event.update))
    catalog["a"], catalog["b"] = 1, 2
    assert len(updates) == 2
    assert merge_run(updates[:1]) == updates[0]
    frame = decode_sync(SyncSession().encode_updates("inventory", updates))
    assert frame.kind == UPDATE and frame.payload != updates[0]
    target = Doc()
    target.apply_update(frame.payload)
    assert target.get("catalog", type=Map).to_py() == {"a": 1, "b": 2}
    # the run goes to every link: merged once, the same frame for each session; another run, its own
    once, again = SyncSession().encode_updates("inventory", updates), SyncSession().encode_updates(
        "inventory", [bytearray(u) for u in updates])  # what some pycrdt calls return: the same run
    assert once is again and once == encode_sync("inventory", UPDATE, merge_run(updates))
    assert SyncSession().encode_updates("tables", updates) != once
    assert SyncSession().encode_updates("inventory", updates[1:]) == encode_sync("inventory", UPDATE, updates[1])
