"""The benchmarks' terminal-client star (``simulations/star/terminal_client.py``): real terminals on the
pycrdt-websocket relay must do what the mesh does, or the comparison in performance.md is void."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from httpx_ws import aconnect_ws

from meshpos.terminal import Terminal
from peer.identity import Authority
from tests.meshutil import ITEM, PRODUCT, config_for, enroll, wait_for

pytest.importorskip("pycrdt.websocket", reason="the star baseline needs the [bench] extra (pycrdt-websocket)")
from simulations.star.relay import relay_process
from simulations.star.terminal_client import TerminalRelayClient

pytestmark = pytest.mark.anyio


async def test_terminals_on_the_relay_store_what_they_receive_and_emit_its_events(tmp_path: Path) -> None:
    a_dir, b_dir = enroll(Authority.init(tmp_path / "auth", "bench"), tmp_path, ["pos-a", "pos-b"])
    async with (relay_process() as relay, Terminal(config_for(a_dir, "pos-a")).running() as a,
                Terminal(config_for(b_dir, "pos-b")).running() as b, anyio.create_task_group() as tg):
        clients = [TerminalRelayClient(t, relay.port) for t in (a, b)]
        for client in clients:
            rooms = await tg.start(client.run)
        assert any(room.startswith("orders/") for room in rooms) and "inventory" in rooms
        await a.put_product("burger", **PRODUCT)
        await wait_for(lambda: "burger" in b.inventory.skus())
        async with b.events.subscribe() as events:
            joined_b = clients[1].sent
            orders = [await a.create_order(table=None, waiter="w", items=[ITEM]) for _ in range(5)]
            with anyio.fail_after(10):
                created = [e.payload["order_id"] async for e in _until(events, "order:created", 5)]
        assert created == [o["id"] for o in orders]
        # on b, through the durable path: stored as the relay's, before the events came out
        stored = await b.store.query("SELECT origin, COUNT(*) FROM updates WHERE doc LIKE 'orders/%' GROUP BY origin")
        assert [origin for origin, _ in stored] == ["peer:relay"] and stored[0][1] >= 1
        # b relays nothing back (peers' updates are not sent on) and a stores no echo of its own
        assert clients[1].sent == joined_b
        echoes = await a.store.query("SELECT COUNT(*) FROM updates WHERE origin = 'peer:relay' AND doc LIKE 'orders/%'")
        assert echoes == [(0,)]
        tg.cancel_scope.cancel()


async def test_a_document_opened_after_joining_fails_the_client(tmp_path: Path) -> None:
    (a_dir,) = enroll(Authority.init(tmp_path / "auth", "bench"), tmp_path, ["pos-a"])
    async with relay_process() as relay, Terminal(config_for(a_dir, "pos-a")).running() as a:
        client = TerminalRelayClient(a, relay.port)
        with pytest.raises(BaseExceptionGroup) as caught:
            async with anyio.create_task_group() as tg:
                await tg.start(client.run)
                # what the host tells its update listeners when tomorrow's document takes a write
                client._on_update("orders/2001-01-02", b"\x00\x00", "local", None)
                await anyio.sleep(5)
        assert caught.group_contains(RuntimeError, match="orders/2001-01-02 was opened after this terminal joined")



async def test_a_relay_that_cannot_process_an_update_fails_the_run() -> None:
    """The relay runs in a child process; an update it drops must fail the benchmark with the
    relay's own error, not let the run report numbers (simulations/star/relay.py)."""
    with pytest.raises(RuntimeError, match="star relay failed during the run: .*error processing a 9-byte message"):
        async with relay_process() as relay:
            async with aconnect_ws(f"http://127.0.0.1:{relay.port}/room", keepalive_ping_interval_seconds=None) as ws:
                await ws.send_bytes(bytes([0, 2, 6]) + b"broken")  # a sync step 2 whose update is no update
                with anyio.fail_after(20):
                    await relay.watch(anyio.CancelScope())  # returns once the relay has exited


async def _until(events, kind: str, count: int):  # noqa: ANN001, ANN202
    async for event in events:
        if getattr(event, "type", None) == kind:
            yield event
            count -= 1
            if count == 0:
                return


class _Recorder:
    """A relay client that records, in one list shared by all, when the relay sent it an update."""

    def __init__(self, path: str, sent_to: list[str]) -> None:
        self._path, self._sent_to = path, sent_to
        self._send, self._receive = anyio.create_memory_object_stream[bytes](10)

    @property
    def path(self) -> str:
        return self._path

    async def send(self, message: bytes) -> None:
        if message[:2] == bytes([0, 2]):  # a sync update, not the step 1 a joining client gets
            self._sent_to.append(self._path)

    async def recv(self) -> bytes:
        return await self._receive.receive()

    def __aiter__(self) -> _Recorder:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the relay runs on asyncio (relay.py); trio
async def test_the_relay_sends_an_update_to_its_clients_in_the_order_they_joined() -> None:  # shuffles new tasks
    """bench_own_core joins the star's receiver last, as the mesh links it last: the comparison
    holds only if pycrdt-websocket's room sends to its clients in that order (it keeps them in a
    set, and starts a task per send: asyncio runs them in the order they started)."""
    from pycrdt import Text
    from pycrdt.websocket import YRoom

    from simulations.star.relay import in_join_order

    joined = ["writer", "drain-7", "drain-2", "drain-9", "drain-4", "drain-1", "receiver"]
    sent_to: list[str] = []
    async with in_join_order(YRoom()) as room, anyio.create_task_group() as tg:
        for path in joined:
            tg.start_soon(room.serve, _Recorder(path, sent_to))
            await wait_for(lambda path=path: path in [client.path for client in room.clients])
        room.ydoc.get("text", type=Text).insert(0, "an order")
        await wait_for(lambda: len(sent_to) == len(joined))
        assert sent_to == joined
        tg.cancel_scope.cancel()
