"""Peers that try to stop a terminal: deep JSON, deep Yjs values and types, a revoked terminal,
connection floods and descriptor exhaustion.  Each gets a close code (or is hung up on) and the
terminal keeps serving its API and its other peers - in process on both backends, and as real
``meshpos run`` processes where the failure used to be the process dying (SIGSEGV, EMFILE)."""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import anyio
import pycrdt
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request, TextMessage

from core.errors import AUTHENTICATION_FAILED, INVALID_MESSAGE
from core.yupdate import UpdateRefused, check_update
from meshpos.documents.inventory import InventoryDoc
from meshpos.documents.orders import OrdersDoc
from meshpos.terminal import Terminal
from peer.identity import Authority
from peer.wire import LINK_PATH, SUBPROTOCOL, UPDATE, encode_control, encode_sync
from simulations.hostile import deep_json, deep_value_update, map_chain_update
from tests.meshutil import address, config_for, converged, enroll, hello_of, linked, running_mesh, tls_context
from tests.procutil import Proc, Store, clean_env, ok, run_args, start, wait

PRODUCT = {"name": "Burger", "price_cents": 1590, "station": "grill", "category": "mains", "active": True}


def ctx_of(data_dir: Path) -> ssl.SSLContext:
    return tls_context(data_dir / "terminal.crt", data_dir / "terminal.key", data_dir / "store-ca.crt")


async def raw_link(target: str, ctx: ssl.SSLContext, messages: list[Any], *, hello: dict[str, Any] | None = None,
                   within: float = 15.0) -> tuple[int | None, str]:
    """Dial ``target`` with WebSocket frames built by hand: the upgrade, ``hello`` (if given) as
    our first text message, then ``messages`` exactly as they are.  Returns the close code and
    reason the target sent (``None``: it hung up without one)."""
    host, port = target.rsplit(":", 1)
    ws = WSConnection(ConnectionType.CLIENT)
    with anyio.fail_after(within):
        async with await anyio.connect_tcp(host, int(port), ssl_context=ctx, tls_standard_compatible=False) as s:
            await s.send(ws.send(Request(host="meshpos", target=LINK_PATH, subprotocols=[SUBPROTOCOL])))
            sent = False
            while True:
                try:
                    data = await s.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError, OSError):
                    return None, "hung up"
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, AcceptConnection) and not sent:
                        sent = True
                        out = [TextMessage(data=encode_control(hello))] if hello is not None else []
                        try:
                            for message in [*out, *messages]:
                                await s.send(ws.send(message))
                        except (anyio.BrokenResourceError, OSError):
                            pass  # hung up mid-way: its close frame may still be readable
                    elif isinstance(event, CloseConnection):
                        return event.code, event.reason


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "auth", "Cantina Centro")


@pytest.fixture
async def target(authority: Authority, tmp_path: Path):  # noqa: ANN201
    """Two linked terminals with the default message limit, and an enrolled identity ``pos-9``."""
    cfgs = [config_for(d, t) for d, t in zip(enroll(authority, tmp_path, ["pos-1", "pos-2"]), ["pos-1", "pos-2"],
                                             strict=True)]
    enroll(authority, tmp_path, ["pos-9"])
    async with running_mesh(cfgs) as terminals:
        yield terminals


async def still_serving(a: Terminal, b: Terminal) -> None:
    await a.put_product("burger", **PRODUCT)
    await converged([a, b])
    assert linked(a) == {"pos-2"}


# -- the checks themselves -------------------------------------------------------------------------


def test_the_shape_check_refuses_what_kills_pycrdt_and_passes_what_terminals_write() -> None:
    with pytest.raises(UpdateRefused, match="nested deeper than 8"):
        check_update(deep_value_update(100_000), InventoryDoc.shape)
    with pytest.raises(UpdateRefused, match="only directly under a root"):
        check_update(map_chain_update(1000), OrdersDoc.shape)
    with pytest.raises(UpdateRefused, match="not one of this document's"):
        check_update(deep_value_update(1, root="secrets"), InventoryDoc.shape)
    check_update(deep_value_update(7), InventoryDoc.shape)  # shallow plain values are fine
    check_update(map_chain_update(1), OrdersDoc.shape)  # one order map under the root
    doc = pycrdt.Doc()
    orders = doc.get("orders", type=pycrdt.Map)
    orders["o1"] = pycrdt.Map({"order": '{"id":"o1"}'})
    orders["o1"]["stage:sent"] = '{"at":"now"}'
    del orders["o1"]["stage:sent"]
    check_update(doc.get_update(), OrdersDoc.shape)
    for cut in range(1, 12):  # truncated anywhere: refused, never a crash
        with pytest.raises(UpdateRefused):
            check_update(doc.get_update()[:-cut], OrdersDoc.shape)


# -- in process, both backends ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["hello", "control"])
async def test_deep_json_closes_the_link_with_4006(target, tmp_path: Path, where: str, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.INFO)
    a, b = target
    deep = TextMessage(data=deep_json(200_000))
    if where == "hello":
        code, reason = await raw_link(address(a), ctx_of(tmp_path / "pos-9"), [deep])
    else:
        deep_control = TextMessage(data=deep_json(200_000, '{{"type":"docs","archived":{}}}'))
        code, reason = await raw_link(address(a), ctx_of(tmp_path / "pos-9"), [deep_control],
                                      hello=hello_of(tmp_path / "pos-9"))
    assert code == INVALID_MESSAGE and "nested deeper" in reason, (code, reason)
    await still_serving(a, b)


@pytest.mark.anyio
async def test_a_revoked_terminal_is_refused_before_anything_it_sends_is_parsed(target, authority: Authority,  # noqa: ANN001
                                                                                tmp_path: Path) -> None:
    a, b = target
    await a.adopt_roster(authority.revoke("pos-9").signed)
    code, reason = await raw_link(address(a), ctx_of(tmp_path / "pos-9"), [TextMessage(data=deep_json(200_000))])
    assert code == AUTHENTICATION_FAILED and "revoked" in reason, (code, reason)  # not 4006: never parsed
    await still_serving(a, b)


@pytest.mark.anyio
@pytest.mark.parametrize("update", ["deep value", "map chain"])
async def test_deep_yjs_updates_close_the_link_with_4006_and_apply_nothing(target, tmp_path: Path,  # noqa: ANN001
                                                                          update: str) -> None:
    a, b = target
    frame = (encode_sync("inventory", UPDATE, deep_value_update(100_000)) if update == "deep value"
             else encode_sync(f"orders/{a.today().isoformat()}", UPDATE, map_chain_update(30_000)))
    code, reason = await raw_link(address(a), ctx_of(tmp_path / "pos-9"), [BytesMessage(data=frame)],
                                  hello=hello_of(tmp_path / "pos-9"))
    assert code == INVALID_MESSAGE and "refused" in reason, (code, reason)
    assert "evil" not in a.inventory.catalog and not a.host.get(f"orders/{a.today().isoformat()}").ids()
    await still_serving(a, b)


@pytest.mark.anyio
async def test_a_connection_flood_is_capped_and_the_terminal_serves_on(target, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                                                       caplog) -> None:
    caplog.set_level(logging.INFO)
    a, b = target
    a.mesh.gate.most = 8
    host, port = address(a).rsplit(":", 1)
    held = [await anyio.connect_tcp(host, int(port)) for _ in range(40)]  # no TLS: they just sit there
    try:
        await anyio.sleep(0.5)
        assert a.mesh.gate.pending == 8
        refusals = [r for r in a.mesh.refusals if "waiting to authenticate" in r["reason"]]
        assert len(refusals) >= 30
        logged = [r for r in caplog.records if "waiting to authenticate" in r.getMessage()]
        assert len(logged) <= 6, "refusals must be logged a few per second per address, not each"
        await still_serving(a, b)
    finally:
        for stream in held:
            await stream.aclose()


# -- real processes --------------------------------------------------------------------------------


def _peer_store(tmp_path: Path) -> Store:
    store = Store(tmp_path, ["pos-1", "pos-2"], ["pos", "pos"])
    store.authority.enroll("pos-9", "pos", tmp_path / "pos-9")
    return store


def _attack(target: str, ctx: ssl.SSLContext, messages: list[Any], hello: dict[str, Any] | None) -> tuple:
    return anyio.run(lambda: raw_link(target, ctx, messages, hello=hello, within=30))


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["deep json hello", "deep yjs value", "map chain"])
def test_a_real_terminal_survives_what_used_to_kill_it(launch, tmp_path: Path, attack: str) -> None:  # noqa: ANN001
    store = _peer_store(tmp_path)
    procs = {tid: start(launch, store, tid, "asyncio") for tid in ("pos-1", "pos-2")}
    with procs["pos-1"].client() as c1, procs["pos-2"].client() as c2:
        wait(lambda: any(p["online"] for p in ok(c1.get("/api/v1/peers"))["peers"]), what="pos-1 linked")
        ctx, hello = ctx_of(tmp_path / "pos-9"), hello_of(tmp_path / "pos-9")
        target = f"127.0.0.1:{store.ports['pos-1']}"
        if attack == "deep json hello":
            code, reason = _attack(target, ctx, [TextMessage(data=deep_json(200_000))], None)
        elif attack == "deep yjs value":
            frame = encode_sync("inventory", UPDATE, deep_value_update(100_000))
            code, reason = _attack(target, ctx, [BytesMessage(data=frame)], hello)
        else:
            day = ok(c1.get("/api/v1/status"))["business_day"]
            frame = encode_sync(f"orders/{day}", UPDATE, map_chain_update(100_000))
            code, reason = _attack(target, ctx, [BytesMessage(data=frame)], hello)
        assert code == INVALID_MESSAGE, (code, reason)
        assert procs["pos-1"].popen.poll() is None, procs["pos-1"].stderr()
        ok(c1.put("/api/v1/catalog/burger", json=PRODUCT))  # still serving its API, and its peer
        wait(lambda: any(p["sku"] == "burger" for p in ok(c2.get("/api/v1/catalog"))), what="pos-2 synced")
        assert ok(c1.get("/api/v1/orders")) == []  # nothing of the attack was applied


@pytest.mark.slow
@pytest.mark.parametrize("nofile", [256, 60])
def test_descriptor_exhaustion_does_not_end_the_terminal(tmp_path: Path, nofile: int) -> None:
    """``ulimit -n 256`` and 300 plain TCP connections held for 5 s: the cap on connections not
    yet authenticated closes most at once.  With 60 descriptors even those the cap admits run the
    process out of descriptors: accept() fails with EMFILE, backs off and goes on.  Either way the
    terminal keeps serving, and links once they are gone."""
    store = _peer_store(tmp_path)
    args = ["prlimit", f"--nofile={nofile}:{nofile}", *run_args(store.tmp / "pos-1", terminal_id=None, type=None,
                                                                 extra=store.args("pos-1"))]
    proc = Proc(args, tmp_path / "stderr-limited.log", clean_env(), tmp_path).wait_ready()
    held: list[socket.socket] = []
    try:
        for _ in range(300):
            s = socket.socket()
            s.connect(("127.0.0.1", store.ports["pos-1"]))
            held.append(s)
        with proc.client() as c:
            ok(c.get("/api/v1/status"))
            time.sleep(5)
            assert proc.popen.poll() is None, proc.stderr()
            ok(c.put("/api/v1/catalog/burger", json=PRODUCT))
        if nofile < 100:
            assert "cannot accept" in proc.stderr(), "the descriptor limit was never reached"
        for s in held:
            s.close()
        held.clear()
        other = Proc(run_args(store.tmp / "pos-2", terminal_id=None, type=None, extra=store.args("pos-2")),
                     tmp_path / "stderr-other.log", clean_env(), tmp_path).wait_ready()
        try:
            with other.client() as c2:
                wait(lambda: any(p["sku"] == "burger" for p in ok(c2.get("/api/v1/catalog"))), what="linked")
        finally:
            other.stop()
        assert proc.popen.poll() is None, proc.stderr()
    finally:
        for s in held:
            s.close()
        code = proc.stop(signal.SIGTERM)
    assert code == 0, proc.stderr()  # a clean stop, after all that
    if nofile > 100:  # (asyncio itself logs each EMFILE of the API's listener with a traceback)
        assert "Traceback" not in proc.stderr()



# -- what the fuzzer found (simulations/fuzz/; docs/simulations.md, "Fuzzing") ------------------


@pytest.mark.parametrize(("hex_update", "why"), [
    ("020105002801066f7264657273016b0178010500000300", "appears twice"),  # Yrs: divide by zero
    ("010126feffffff0f2801066f7264657273016b01780126015101", r"beyond 2\^31"),  # index out of bounds
    ("010111feffffff0f2801066f7264657273096275726765722f7231017c7f80000000", r"beyond 2\^31"),  # SIGSEGV
    ("01010500880500017800", "refers to itself"),  # an item whose origin is itself (5:0 -> 5:0)
    ("01010500080106" + b"orders".hex() + "0000", "length 0"),  # an item holding no value
    ("010105002801" + "06" + b"orders".hex() + "016b0178" + "0105020201" + "0001", "out of order"),  # deletes
])
def test_updates_that_crashed_yrs_are_refused_by_the_shape_check(hex_update: str, why: str) -> None:
    with pytest.raises(UpdateRefused, match=why):
        check_update(bytes.fromhex(hex_update), OrdersDoc.shape)


def test_the_fast_state_vector_decoder_agrees_with_the_bounded_reader_on_every_input() -> None:
    """decode_state_vector splits numbers with a regular expression and falls back to the
    byte-by-byte reader on anything unusual: on real state vectors and thousands of damaged ones
    both must give the same result or the same refusal, word for word."""
    import random

    from core.yupdate import MAX_CLIENT, decode_state_vector
    from core.yupdate import _read_state_vector as bounded

    rng = random.Random(7)
    doc = pycrdt.Doc()
    for _ in range(20):
        writer = pycrdt.Doc()
        values = writer.get("m", type=pycrdt.Map)
        for j in range(rng.randint(1, 300)):
            values[str(j)] = j
        doc.apply_update(writer.get_update())
    real = doc.get_state()
    assert len(decode_state_vector(real)) == 20
    inputs = [real, pycrdt.Doc().get_state(), b"", b"\x00", b"\x01\x05", b"\x02\x01\x01\x01\x02",
              b"\x01" + b"\x80" * 8 + b"\x01\x01",  # a number longer than 53 bits
              b"\x01" + (MAX_CLIENT + 1).to_bytes(8, "little") + b"\x01",  # not lib0, but 9 bytes
              b"\x01\x01" + b"\xff\xff\xff\xff\x0f"]  # a clock beyond 2^31
    for _ in range(5000):
        damaged = bytearray(real)
        for _ in range(rng.randint(1, 4)):
            where = rng.randrange(len(damaged) + 1)
            if rng.random() < 0.5 and where < len(damaged):
                damaged[where] = rng.randrange(256)
            elif rng.random() < 0.5:
                damaged.insert(where, rng.randrange(256))
            elif where < len(damaged):
                del damaged[where]
        inputs.append(bytes(damaged))
    refused = 0
    for data in inputs:
        outcomes = []
        for decode in (decode_state_vector, bounded):
            try:
                outcomes.append(decode(data))
            except UpdateRefused as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1], data.hex()
        refused += isinstance(outcomes[0], str)
    assert 1000 < refused < len(inputs) - 500  # both kinds were exercised


def test_an_update_that_builds_on_what_the_document_lacks_is_a_gap_not_pending() -> None:
    """Yrs keeps such an update "pending" - where its panics and the SIGSEGV were - so it is
    never applied: the mesh asks the peer for what is missing instead."""
    from core.yupdate import UpdateGap

    writer = pycrdt.Doc()
    orders = writer.get("orders", type=pycrdt.Map)
    first = []
    writer.observe(lambda e: first.append(bytes(e.update)))
    orders["o1"] = pycrdt.Map({"order": "{}"})
    orders["o1"]["stage:sent"] = "{}"
    with pytest.raises(UpdateGap, match="starts at clock"):
        check_update(first[1], OrdersDoc.shape, {})  # the second update without the first
    state = check_update(first[0], OrdersDoc.shape, {})
    assert check_update(first[1], OrdersDoc.shape, state) == {writer.client_id: 3}
    assert check_update(first[1], OrdersDoc.shape) is None  # without a state: shape only


@pytest.mark.anyio
async def test_a_gap_is_asked_for_and_a_pycrdt_panic_reloads_the_document(make_config,  # noqa: ANN001
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from core.yupdate import UpdateGap

    async with Terminal(make_config()).running() as t:
        writer = pycrdt.Doc()
        updates: list[bytes] = []
        writer.observe(lambda e: updates.append(bytes(e.update)))
        catalog = writer.get("catalog", type=pycrdt.Map)
        catalog["a"] = {"name": "A"}
        catalog["b"] = {"name": "B"}
        with pytest.raises(UpdateGap) as gap:
            t.host.apply_remote("inventory", [updates[1]], "peer:x")
        assert gap.value.ticket is None and "b" not in t.inventory.catalog  # nothing pending in Yrs
        with pytest.raises(UpdateGap) as gap:  # the prefix of a batch is applied, durably
            t.host.apply_remote("inventory", [updates[0], b"\x01\x01\x07\x05\x28\x01\x07catalog\x01c\x01\x78\x00"],
                                "peer:x")
        await gap.value.ticket.wait()
        assert "a" in t.inventory.catalog
        panic = type("PanicException", (BaseException,), {"__module__": "pyo3_runtime"})

        def explode(self, update: bytes) -> None:  # noqa: ANN001
            raise panic("called `Option::unwrap()` on a `None` value")

        monkeypatch.setattr(pycrdt.Doc, "apply_update", explode)
        with pytest.raises(UpdateRefused, match="pycrdt could not apply it"):
            t.host.apply_remote("inventory", [updates[1]], "peer:x")
        monkeypatch.undo()
        assert "inventory" in t.store.stale_docs  # what Yrs did to memory is unknown: back to disk
        await t.host.reload_stale()
        assert "a" in t.inventory.catalog and "b" not in t.inventory.catalog
        t.host.apply_remote("inventory", [updates[1]], "peer:x")
        assert "b" in t.inventory.catalog


def test_decoders_refuse_what_used_to_raise_something_else() -> None:
    from meshpos.cashier.ledger import check_entry
    from meshpos.cashier.messages import BadMessage, from_wire
    from peer.identity import IdentityError, verify_roster
    from peer.link import Closed, LinkCore
    from peer.wire import WireError, decode_control

    with pytest.raises(WireError):
        decode_control('{"type":["hello"]}')  # TypeError: unhashable list
    core = LinkCore(client=False, hello={}, authorize=lambda h: None, now=0.0)
    actions = core.receive(b"GET /meshpos/v1/link HTTP/1.1\r\nHost: \x80\r\n\r\n", 0.0)  # UnicodeDecodeError
    assert [a.code for a in actions if isinstance(a, Closed)] == [INVALID_MESSAGE]
    authority_cert = Authority.init(Path(__import__("tempfile").mkdtemp()) / "a", "X").cert
    with pytest.raises(IdentityError):
        verify_roster(b'{"body":"\\ud800","signature":""}', authority_cert)  # UnicodeEncodeError
    with pytest.raises(IdentityError):
        verify_roster('{"body":"x","signature":"\ud800"}', authority_cert)
    for ballot in ([2**64, "pos-2"], [1, "pos-\ud800"]):  # once failed a voter's whole group commit
        with pytest.raises(BadMessage):
            from_wire({"type": "cashier", "m": "accept", "drawer": "main", "ballot": ballot, "position": 0,
                       "entry": {"kind": "noop"}, "commit_upto": 0}, 0.0)
    with pytest.raises(ValueError, match="lacks amount_cents"):  # was KeyError
        check_entry({"kind": "review_resolution", "op_id": "resolve:1", "drawer": "main", "terminal_id": "pos-1",
                     "user_id": None, "at": "x", "status": "committed", "of": 1, "decision": "accept",
                     "note": "n", "operator": "o"})
