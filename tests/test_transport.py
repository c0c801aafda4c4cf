"""Terminals joined by the in-memory network (peer/transport.py) on trio's virtual clock.

The same TLS, framing, sync, storage and cashier code as over TCP, with SQLite inline: a Wi-Fi
split heals into one state, and the same seed gives the same timeline - the footing of the
partition simulator (issue 6).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing

import peer.syncing
from meshpos.config import TerminalConfig
from meshpos.terminal import Terminal
from peer.dialling import EAGER_CAP
from peer.identity import Authority, save_roster
from peer.transport import RTO_SECONDS, MemoryNetwork, Radio
from simulations.determinism import seeded_trio_scheduler
from tests.meshutil import ITEM, enroll, fingerprint, wait_for

IDS = ["pos-1", "pos-2", "kds-1"]
KINDS = ["pos", "pos", "kds"]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return "trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}


@asynccontextmanager
async def _terminals(tmp: Path, seed: int, net: MemoryNetwork) -> AsyncIterator[list[Terminal]]:
    """The :data:`IDS` terminals on ``net`` as ``host-0``, ``host-1``, ..., each dialling all the others."""
    authority = Authority.init(tmp / "auth", "Cantina")
    dirs = enroll(authority, tmp, IDS, KINDS)
    for d in dirs:
        save_roster(d, authority.roster)
    async with AsyncExitStack() as stack:
        stack.enter_context(seeded_trio_scheduler(seed))  # trio's own scheduling choices, from the seed
        ts = []
        for n, (tid, d) in enumerate(zip(IDS, dirs, strict=True)):
            config = TerminalConfig(data_dir=d, terminal_id=tid, type=KINDS[n], api_port=0, mdns=False,
                                    peers=[f"host-{k}:7000" for k in range(len(IDS)) if k != n])
            t = Terminal(config, transport=net.transport(f"host-{n}", 7000), storage_threads=False,
                         rng=random.Random(seed * 100 + n))
            ts.append(await stack.enter_async_context(t.running()))
        yield ts


async def _run(tmp: Path, seed: int, timeline: list[tuple[float, str]]) -> dict[str, Any]:
    net = MemoryNetwork(latency=2**-9)  # binary fractions: the second run, later on the clock, adds up exactly alike
    start = anyio.current_time()

    def mark(what: str) -> None:
        timeline.append((round(anyio.current_time() - start, 3), what))

    async with _terminals(tmp, seed, net) as ts:

        async def until(done: Any, what: str) -> None:
            with anyio.fail_after(60):
                while not done():  # noqa: ASYNC110 - virtual time: polling costs nothing real
                    await anyio.sleep(2**-7)
            mark(what)

        def same() -> bool:
            prints = [fingerprint(t) for t in ts]
            return all(p == prints[0] for p in prints[1:])

        await until(lambda: all(len(t.mesh.links) == 2 for t in ts), "linked")
        await ts[0].put_product("burger", name="Burger", price_cents=1590, station="grill", category=None,
                                active=True)
        await until(same, "catalog everywhere")
        net.split({"host-0", "host-1"}, {"host-2"})  # the kitchen cut from the front
        await until(lambda: not ts[2].mesh.links, "kitchen sees the split")
        for k in range(3):
            await ts[k % 2].create_order(table=None, waiter="ana", items=[ITEM])
        await ts[2].adjust_stock("burger", -2, "waste")
        assert not same()
        net.heal()
        await until(lambda: all(len(t.mesh.links) == 2 for t in ts), "linked again")
        await until(same, "converged")
        orders = [len(await t.list_orders()) for t in ts]
        stock = [t.inventory.quantity("burger") for t in ts]
    return {"orders": orders, "stock": stock}


@pytest.mark.anyio
async def test_a_split_heals_into_one_state_on_virtual_time(tmp_path: Path) -> None:
    # Tasks woken at the same virtual instant run in an order drawn from the seed (_terminals seeds
    # trio's scheduler), not in the order their timers tie in - as the partition simulator runs trio.
    timeline: list[tuple[float, str]] = []
    result = await _run(tmp_path / "a", 7, timeline)
    assert result == {"orders": [3, 3, 3], "stock": [-2, -2, -2]}
    when = dict((what, at) for at, what in timeline)
    # the heartbeat (dead after 3.5 s of silence) is what notices the split, in virtual seconds
    assert 3.0 <= when["kitchen sees the split"] - when["catalog everywhere"] <= 6.0
    # a second run with the same seed goes through the same virtual timeline
    again: list[tuple[float, str]] = []
    assert await _run(tmp_path / "b", 7, again) == result
    assert again == timeline, (again, timeline)


async def _heal_after_long_split(tmp: Path, seed: int) -> tuple[float, float]:
    """Cut ``host-2`` off for a minute (every dial loop's backoff reaches its cap), heal; return
    when its first link came back and when its last did, in virtual seconds after the heal."""
    net = MemoryNetwork(latency=0.002)
    async with _terminals(tmp, seed, net) as ts:
        isolated = ts[2].mesh
        assert isolated is not None
        with anyio.fail_after(60):
            while not all(len(t.mesh.links) == 2 for t in ts):  # noqa: ASYNC110 - virtual time
                await anyio.sleep(0.01)
        net.split({"host-0", "host-1"}, {"host-2"})
        await anyio.sleep(60)
        assert not isolated.links
        net.heal()
        healed = anyio.current_time()
        first = None
        with anyio.fail_after(30):
            while len(isolated.links) < 2:  # noqa: ASYNC110 - virtual time: polling costs nothing real
                if first is None and isolated.links:
                    first = anyio.current_time() - healed
                await anyio.sleep(0.001)
        last = anyio.current_time() - healed
    return (last if first is None else first), last


@pytest.mark.anyio
async def test_the_first_link_after_a_heal_wakes_the_other_dial_loops(tmp_path: Path) -> None:
    # Peers lost a minute ago are redialled with full jitter up to EAGER_CAP, so each of host-2's
    # links would come back at its own random moment within 1 s of the heal; the first link
    # opening wakes the other loops instead.
    runs = [await _heal_after_long_split(tmp_path / str(seed), seed) for seed in range(5)]
    assert all(first <= EAGER_CAP + 0.1 for first, _ in runs), runs
    # four diallers each drawing up to 1 s: about 0.2 s on average (it was ~1 s with the 5 s cap)
    assert sum(first for first, _ in runs) / len(runs) < 0.5, runs
    assert all(last - first <= 0.5 for first, last in runs), runs


async def _catch_up_bytes(tmp: Path, seed: int) -> list[int]:
    """``kds-1`` starts with an empty disk after the other two took 60 orders: it dials both at
    once; the bytes it received from each of them (largest first)."""
    with seeded_trio_scheduler(seed):
        return await _catch_up_bytes_seeded(tmp, seed)


async def _catch_up_bytes_seeded(tmp: Path, seed: int) -> list[int]:
    net = MemoryNetwork(latency=0.002)
    authority = Authority.init(tmp / "auth", "Cantina")
    dirs = enroll(authority, tmp, IDS, KINDS)
    for d in dirs:
        save_roster(d, authority.roster)

    def terminal(n: int) -> Terminal:
        config = TerminalConfig(data_dir=dirs[n], terminal_id=IDS[n], type=KINDS[n], api_port=0, mdns=False,
                                peers=[f"host-{k}:7000" for k in range(len(IDS)) if k != n])
        return Terminal(config, transport=net.transport(f"host-{n}", 7000), storage_threads=False,
                        rng=random.Random(seed * 100 + n))

    async with terminal(0).running() as a, terminal(1).running() as b:
        with anyio.fail_after(60):
            while not (a.mesh.links and b.mesh.links):  # noqa: ASYNC110 - virtual time
                await anyio.sleep(0.01)
        for k in range(60):
            await (a, b)[k % 2].create_order(table=None, waiter="ana", items=[ITEM])
        async with terminal(2).running() as kitchen:
            with anyio.fail_after(60):
                while len(await kitchen.list_orders()) < 60 or len(kitchen.mesh.links) < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            await anyio.sleep(5)  # anything still under way lands
            return sorted((p["bytes_in"] for p in kitchen.peers()["peers"]), reverse=True)


@pytest.mark.anyio
async def test_a_new_terminal_catches_up_once_not_once_per_peer(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Both peers hold the 60 orders; the newcomer asks one of them first and the other only for
    what the first did not bring - so the orders cross the network once, not once per peer."""
    once = await _catch_up_bytes(tmp_path / "once", 3)
    assert once[1] < once[0] / 4, once
    monkeypatch.setattr(peer.syncing, "CATCH_UP_WAIT", 0.0)  # every link asks at once, as before
    twice = await _catch_up_bytes(tmp_path / "twice", 3)
    assert twice[1] > twice[0] / 2, twice  # the control: without it both peers send everything


# -- the network itself ------------------------------------------------------------------------------


async def _pair(net: MemoryNetwork, a: str, b: str) -> tuple[Any, Any]:
    """A connection from ``a`` to ``b``: (a's end, b's end)."""
    accepted: list[Any] = []

    async def handler(stream: Any, remote: str) -> None:
        accepted.append(stream)
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(net.transport(b, 7000).serve, handler)
        await anyio.lowlevel.checkpoint()
        mine = await net.transport(a, 7000).connect(b, 7000)
        await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    return mine, accepted[0]


async def _arrivals(net: MemoryNetwork, count: int, spacing: float = 0.0) -> list[tuple[float, bytes]]:
    """Send ``count`` messages from ``wifi`` to ``wired``, ``spacing`` seconds apart; how long
    each took (from its sending to its arrival) and what arrived, in order."""
    mine, theirs = await _pair(net, "wifi", "wired")
    start = anyio.current_time()

    async def send() -> None:
        for k in range(count):
            if spacing:
                await anyio.sleep_until(start + k * spacing)
            await mine.send(b"%d" % k)
        if not spacing:
            assert anyio.current_time() - start < 0.001  # the sender does not wait for the wire

    got = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        for k in range(count):
            message = await theirs.receive()
            got.append((round(anyio.current_time() - start - k * spacing, 9), message))  # clock-offset noise off
    return got


@pytest.mark.anyio
async def test_messages_are_in_flight_together_and_arrive_in_order() -> None:
    got = await _arrivals(MemoryNetwork(latency=0.01), 50)
    assert [m for _, m in got] == [b"%d" % k for k in range(50)]
    assert all(abs(t - 0.01) < 1e-6 for t, _ in got), got[:3]  # 50 messages, one latency


@pytest.mark.anyio
async def test_a_lossy_radio_delays_what_follows_a_lost_segment_and_keeps_the_order() -> None:
    def lossy(seed: int) -> MemoryNetwork:
        return MemoryNetwork(latency=0.001, radios={"wifi": Radio(jitter=0.02, loss=0.05)}, rng=random.Random(seed))

    got = await _arrivals(lossy(5), 200, spacing=0.05)
    assert [m for _, m in got] == [b"%d" % k for k in range(200)]  # TCP delivers in order
    took = [t for t, _ in got]
    assert max(took) >= 0.001 + RTO_SECONDS  # some segment was lost and sent again ...
    arrived = [t + k * 0.05 for k, t in enumerate(took)]
    late = [k for k, t in enumerate(took) if t > 0.021]  # later than latency + jitter
    held = [k for k in late if took[k] < RTO_SECONDS]  # not lost itself: stuck behind a lost one
    assert held and all(abs(arrived[k] - arrived[k - 1]) < 1e-9 for k in held)
    assert len(late) < len(took) / 2, late
    assert len({round(t, 4) for t in took if t <= 0.021}) > 50  # jitter: each its own delay
    assert await _arrivals(lossy(5), 200, spacing=0.05) == got  # the same seed, the same arrivals
    assert await _arrivals(lossy(6), 200, spacing=0.05) != got


@pytest.mark.anyio
async def test_a_receiver_cancelled_while_a_message_is_in_flight_gets_it_on_its_next_call() -> None:
    mine, theirs = await _pair(MemoryNetwork(latency=1.0), "a", "b")
    await mine.send(b"first")
    await mine.send(b"second")
    with anyio.move_on_after(0.5):
        await theirs.receive()
        pytest.fail("arrived before its latency")
    assert await theirs.receive() == b"first"
    assert await theirs.receive() == b"second"


@pytest.mark.anyio
async def test_nothing_crosses_a_cut_and_what_was_sent_into_it_arrives_after_the_heal() -> None:
    net = MemoryNetwork(latency=0.001)
    mine, theirs = await _pair(net, "a", "b")
    net.split({"a"}, {"b"})
    await mine.send(b"during the cut")
    with anyio.move_on_after(2.0):
        await theirs.receive()
        pytest.fail("crossed the cut")
    net.heal()
    healed = anyio.current_time()
    assert await theirs.receive() == b"during the cut"  # TCP's next retransmission brings it
    assert anyio.current_time() - healed <= RTO_SECONDS + 1e-9
    # A side that gives up during a cut: the other is not told until the hosts reach each other.
    net.split({"a"}, {"b"})
    await theirs.aclose()
    await mine.send(b"into the void")  # no error: no reset crosses the cut
    net.heal()
    with pytest.raises(anyio.BrokenResourceError):
        await mine.send(b"after the heal")


@pytest.mark.anyio
async def test_client_isolation_cuts_isolated_hosts_from_each_other_only() -> None:
    net = MemoryNetwork()
    net.isolate({"w1", "w2"})
    assert not net.connected("w1", "w2") and net.connected("w1", "pos") and net.connected("pos", "w2")

    async def serve(stream: Any, remote: str) -> None:
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(net.transport("w2", 7000).serve, serve)
        await anyio.lowlevel.checkpoint()
        with pytest.raises(OSError, match="does not answer"):
            await net.transport("w1", 7000).connect("w2", 7000)
        await net.transport("pos", 7000).connect("w2", 7000)
        net.heal()
        await net.transport("w1", 7000).connect("w2", 7000)
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_isolated_handhelds_get_each_others_writes_through_a_wired_terminal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """host-1 and host-2 cannot reach each other, both reach host-0: what host-1 writes reaches
    host-2 as host-0 passes it on (no anti-entropy round runs in this test), without a link
    between the two."""
    monkeypatch.setattr(peer.syncing, "ANTI_ENTROPY_SECONDS", 3600.0)
    net = MemoryNetwork(latency=0.002)
    net.isolate({"host-1", "host-2"})
    async with _terminals(tmp_path, 4, net) as ts:
        await wait_for(lambda: len(ts[0].mesh.links) == 2 and bool(ts[1].mesh.links and ts[2].mesh.links), 60)
        order = await ts[1].create_order(table=None, waiter="ana", items=[ITEM])
        with anyio.fail_after(5):
            while not any(o["id"] == order["id"] for o in await ts[2].list_orders()):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert len(ts[1].mesh.links) == len(ts[2].mesh.links) == 1
