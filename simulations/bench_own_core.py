"""What one terminal with a core of its own does in a mesh of N; prints JSON.

    python -m simulations.bench_own_core [--terminals 5] [--updates 1000] [--frame-updates 16]

``bench_mesh.py --processes`` runs N terminals on this machine's two cores: at N = 5 each gets
0.4 of a core, so its figures are the machine's, not a terminal's.  A restaurant's terminals are
separate boxes, each with its own CPU.  This benchmark gives one real terminal a core to itself
and stands in for its N - 1 peers with *replay peers* on the other core: real enrolled
identities on real TLS links, speaking the real link protocol, that send orders recorded
beforehand by real terminals and only drain what the terminal sends them.  A replay peer costs
a fraction of a terminal, and runs under ``SCHED_IDLE`` (only when its core has nothing else to
do), so the terminal under test is the only thing that can fall behind.

* **throughput**: the terminal writes ``--updates`` orders (rounded down to a multiple of its
  16 concurrent writers, as in bench_mesh) while each of its N - 1 peers sends as many orders,
  recorded by a real terminal and sent ``--frame-updates`` creates merged per frame (what a
  terminal's link writer ships after a group commit of 16 writers; ``--frame-updates 1`` is the
  worst case, one frame per order).  Updates/s per terminal = orders written / time until the
  terminal has all N x that many orders durable with their events.  In a symmetric mesh every
  terminal does this same work at the same time on its own box, so that is the mesh's rate per
  terminal.
* **latency**: a writer terminal (first core) creates one order every ``--interval`` s; its links
  are to N - 2 replay peers and, dialled last so its frame leaves last, one receiver terminal
  (second core) - the "last other terminal" of a mesh of N.  A sample is the time from the write
  acknowledged (durable on the writer) to its ``order:created`` event on the receiver (durable
  there too), the quantity bench_mesh measures.
* **star**, arranged the same way (``--no-star`` skips it; needs the ``[bench]`` extra): the
  writer client on the first core, the receiver client and n - 2 draining WebSocket clients
  (``SCHED_IDLE``) on the second, the receiver joining last (the relay sends to its clients in
  the order they joined: the last other terminal, as in the mesh); pycrdt-websocket's relay next
  to the writer, then next to the receiver - both placements are reported.  Twice: with bare
  pycrdt clients that store nothing (``star_latency_ms_*``), and with real terminals as the
  relay's clients (``durable_star_*``, ``simulations.star.terminal_client.TerminalRelayClient``:
  the same write, storage and event as the mesh's sample, only the topology differs).

Needs at least two CPUs (``os.sched_setaffinity``).

One module of ~460 lines on purpose: the mesh and the two stars are one measurement, arranged on
the same two cores by the same pinning, and the durable star reuses the mesh's pinned terminals
and its sample; the star's own pieces (relay, clients) are in simulations/star/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from core.names import HQ_TYPE
from core.yupdate import merge_run
from meshpos.config import TerminalConfig
from meshpos.documents import host as document_host
from meshpos.terminal import Terminal
from peer.admission import hello_of
from peer.identity import load_identity
from peer.link import Binary, Closed, LinkCore, Opened, Send
from peer.tls import client_context
from peer.wire import STEP1, STEP2, UPDATE, decode_sync, encode_sync
from simulations.bench_mesh import ITEM, WRITERS_PER_TERMINAL, _terminal_process
from simulations.benchutil import Children, enrolled_store, run_child, summary

#: An empty Yjs update (no structs, empty delete set): a replay peer's answer to a step 1.
EMPTY_UPDATE = b"\x00\x00"


def _pinned(core: int, target: Any, *args: Any, idle: bool = False) -> None:
    """Run ``target`` on ``core``; ``idle``: only when nothing else there wants the CPU
    (SCHED_IDLE) - a stand-in for another box must not take the measured terminal's turn."""
    os.sched_setaffinity(0, {core})
    if idle:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    target(*args)


def _pin_process(pid: int, core: int) -> None:
    for thread in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(thread), {core})


def pinned_terminal(conn: Connection, core: int, data_dir: str, tid: str, backend: str) -> None:
    """Child: bench_mesh's terminal process, on one core."""
    _pinned(core, _terminal_process, conn, data_dir, tid, backend)


def pinned_replay_peers(conn: Connection, core: int, root: str, frames: dict[str, list[bytes]], backend: str) -> None:
    """Child: one replay peer per entry of ``frames`` (terminal id -> the frames it sends)."""
    _pinned(core, run_child, conn, "replay peers", backend, _replay_main, Path(root), frames, idle=True)


# -- recording ---------------------------------------------------------------------------------


async def record_orders(root: Path, tid: str, count: int, frame_updates: int) -> list[bytes]:
    """``count`` orders created by the real terminal ``tid`` (16 concurrent writers), as the
    sync frames its link writer would send: runs of ``frame_updates`` consecutive updates of one
    document merged into one frame.

    The recording terminal does not compact: a snapshot would fold the update rows read here
    (from 2,000 writes on, ``COMPACT_EVERY``), and the replay would silently lack those orders."""
    config = TerminalConfig(data_dir=root / tid, terminal_id=tid, api_port=0, peer_host="127.0.0.1", peer_port=0,
                            mdns=False)
    compact_every, document_host.COMPACT_EVERY = document_host.COMPACT_EVERY, count + 2
    try:
        return await _record(config, count, frame_updates)
    finally:
        document_host.COMPACT_EVERY = compact_every


async def _record(config: TerminalConfig, count: int, frame_updates: int) -> list[bytes]:
    async with Terminal(config).running() as t:
        await t.put_product("burger", name="Burger", price_cents=1590, station="grill", category=None, active=True)

        async def writer(n: int) -> None:
            for _ in range(n):
                await t.create_order(table=None, waiter="bench", items=[ITEM])

        async with anyio.create_task_group() as tg:
            for k in range(WRITERS_PER_TERMINAL):
                tg.start_soon(writer, count // WRITERS_PER_TERMINAL + (k < count % WRITERS_PER_TERMINAL))
        rows = await t.store.query("SELECT doc, data FROM updates WHERE origin = 'local' AND doc LIKE 'orders/%' "
                                   "ORDER BY id")
    runs: list[tuple[str, list[bytes]]] = []
    for doc, data in rows:
        if not runs or runs[-1][0] != doc or len(runs[-1][1]) == frame_updates:
            runs.append((doc, []))
        runs[-1][1].append(bytes(data))
    return [encode_sync(doc, UPDATE, merge_run(run)) for doc, run in runs]


# -- replay peers ------------------------------------------------------------------------------


class ReplayPeer:
    """One stand-in peer: the link protocol's client side over real TLS, nothing applied."""

    def __init__(self, root: Path, tid: str, frames: list[bytes]) -> None:
        self.identity = load_identity(root / tid)
        self.frames = frames
        self.opened = anyio.Event()
        self.stream: TLSStream | None = None
        self.core: LinkCore | None = None
        self._sending = anyio.Lock()  # the drain loop's pongs and the replay share the stream

    async def run(self, address: str, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        host, port = address.rsplit(":", 1)
        raw = await anyio.connect_tcp(host, int(port))
        self.stream = await TLSStream.wrap(raw, server_side=False, ssl_context=client_context(self.identity),
                                           standard_compatible=False)
        hello = hello_of(self.identity, self.identity.roster, uuid.uuid4().hex, relays=True)
        self.core = LinkCore(client=True, hello=hello, authorize=lambda _: None, now=anyio.current_time())
        await self._send(self.core.start())
        started = False
        while True:
            try:
                data = await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            for action in self.core.receive(data, anyio.current_time()):
                if isinstance(action, Opened) and not started:
                    started = True
                    # as a terminal of a full mesh: linked to every other terminal of the store
                    # (the terminal passes on nothing a replay peer sends: its writer reached all)
                    roster = self.identity.roster
                    everyone = sorted(t for t, e in roster.terminals.items()
                                      if e["type"] != HQ_TYPE and t != self.identity.terminal_id)
                    await self._send(self.core.send_control({"type": "links", "peers": everyone,
                                                             "relays": everyone}))
                    self.opened.set()
                    task_status.started()
                elif isinstance(action, Binary):
                    frame = decode_sync(action.data)
                    if frame.kind == STEP1:  # the terminal asks what it lacks: nothing yet
                        try:
                            await self._send(self.core.send_binary(encode_sync(frame.doc, STEP2, EMPTY_UPDATE)))
                        except (anyio.BrokenResourceError, OSError):
                            return  # the terminal is gone (the end of a measurement)
                elif isinstance(action, Send):
                    await self._send([action])
                elif isinstance(action, Closed):
                    raise RuntimeError(f"{self.identity.terminal_id}: link closed {action.code} {action.reason}")

    async def _send(self, actions: list[Any]) -> None:
        data = b"".join(a.data for a in actions if isinstance(a, Send))
        if data:
            async with self._sending:
                await self.stream.send(data)  # type: ignore[union-attr]

    async def replay(self) -> None:
        for frame in self.frames:
            await self._send(self.core.send_binary(frame))  # type: ignore[union-attr]


async def _replay_main(conn: Connection, root: Path, frames: dict[str, list[bytes]]) -> None:
    peers = [ReplayPeer(root, tid, f) for tid, f in frames.items()]
    async with anyio.create_task_group() as tg:
        while True:
            command, *arg = await anyio.to_thread.run_sync(conn.recv)
            if command == "dial":
                for peer in peers:
                    await tg.start(peer.run, arg[0])
                conn.send(("linked",))
            elif command == "go":
                began = time.perf_counter()
                async with anyio.create_task_group() as senders:
                    for peer in peers:
                        senders.start_soon(peer.replay)
                conn.send(("sent", began, time.perf_counter()))
            elif command == "stop":
                tg.cancel_scope.cancel()
                return


# -- the two measurements ----------------------------------------------------------------------


def _wait_links(children: Children, i: int, count: int) -> None:
    children.send(i, "dial", [], count)
    children.recv(i, "linked")


def throughput(n: int, updates: int, frame_updates: int, backend: str, cores: tuple[int, int]) -> dict[str, Any]:
    per_writer = updates // WRITERS_PER_TERMINAL
    written = per_writer * WRITERS_PER_TERMINAL
    with tempfile.TemporaryDirectory(prefix="meshpos-bench-") as tmp:
        root = Path(tmp)
        ids = enrolled_store(root, n)
        frames = {tid: anyio.run(record_orders, root, tid, written, frame_updates) for tid in ids[1:]}
        term = Children(pinned_terminal, [(cores[0], str(root / ids[0]), ids[0], backend)])
        peers = Children(pinned_replay_peers, [(cores[1], str(root), frames, backend)])
        try:
            (port,) = term.recv(0, "port")
            peers.send(0, "dial", f"127.0.0.1:{port}")
            peers.recv(0, "linked")
            _wait_links(term, 0, n - 1)
            term.send(0, "product", True)
            term.recv(0, "ready")
            term.send(0, "throughput", updates, written * n)
            peers.send(0, "go")
            began, wrote, done, cpu, frames_in, bytes_out, peak_kb = term.recv(0, "throughput", 700)
            sent_began, sent_done = peers.recv(0, "sent", 700)
        finally:
            peers.close()
            term.close()
    seconds = done - min(began, sent_began)
    return {"updates_per_s_per_terminal": round(written / seconds, 1), "updates_written": written,
            "updates_received": written * (n - 1), "frames_sent": sum(len(f) for f in frames.values()),
            "frames_received": frames_in,  # since "ready": the sent ones, and any anti-entropy step 2s
            "seconds": round(seconds, 3), "own_writes_done_after_s": round(wrote - began, 3),
            "peers_done_sending_after_s": round(sent_done - min(began, sent_began), 3),
            "cpu_s": round(cpu, 3), "cpu_ms_per_update_written": round(cpu / written * 1000, 3),
            # every link's bytes (TLS records, heartbeats, step 1s included) per order it wrote
            "bytes_sent_per_update_written": round(bytes_out / written),
            "terminal_peak_rss_mb": round(peak_kb / 1024, 1)}  # with its N - 1 links


def latency(n: int, samples: int, interval: float, backend: str, cores: tuple[int, int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshpos-bench-") as tmp:
        root = Path(tmp)
        ids = enrolled_store(root, n)
        writer_id, receiver_id, standins = ids[0], ids[1], ids[2:]
        terms = Children(pinned_terminal, [(cores[0], str(root / writer_id), writer_id, backend),
                                           (cores[1], str(root / receiver_id), receiver_id, backend)])
        peers = Children(pinned_replay_peers, [(cores[1], str(root), {tid: [] for tid in standins}, backend)])
        try:
            port, _ = (p for (p,) in terms.all("port"))
            if standins:
                peers.send(0, "dial", f"127.0.0.1:{port}")
                peers.recv(0, "linked")
                _wait_links(terms, 0, len(standins))
            terms.send(1, "dial", [f"127.0.0.1:{port}"], 1)  # last: its frame leaves last
            terms.recv(1, "linked")
            _wait_links(terms, 0, len(standins) + 1)
            return _writer_to_receiver(terms, samples, interval)
        finally:
            peers.close()
            terms.close()


def _writer_to_receiver(terms: Children, samples: int, interval: float) -> dict[str, Any]:
    """Terminal 0 creates an order every ``interval`` s; each sample is its acknowledgement to
    the ``order:created`` event on terminal 1 (after 20 unmeasured warm-up writes)."""
    for i in range(2):
        terms.send(i, "product", i == 0)
    terms.all("ready")
    warm = 20
    total = warm + samples
    start = time.perf_counter() + 0.5
    terms.send(0, "latency", start, interval, list(range(total)), total)
    terms.send(1, "latency", start, interval, [], total)
    (acked, _), (_, seen) = terms.all("latency")
    order = sorted(acked, key=acked.get)[warm:]
    return summary([(seen[oid] - acked[oid]) * 1000 for oid in order])


# -- the star baseline, arranged the same way -----------------------------------------------------


def pinned_star_client(conn: Connection, core: int, port: int, role: str, index: int, payload_bytes: int,
                       rooms: list[str] | None = None) -> None:
    """Child: one pycrdt client of the star relay (``writer`` or ``receiver``), or ``drains``
    stand-ins (``index`` of them in each of ``rooms``) that read what the relay sends and apply
    nothing."""
    if role == "drains":
        _pinned(core, run_child, conn, "star drains", "asyncio", _star_drains, port, index, rooms, idle=True)
    else:
        _pinned(core, run_child, conn, f"star {role}", "asyncio", _star_client, port, role, index, payload_bytes)


async def _star_client(conn: Connection, port: int, role: str, index: int, payload_bytes: int) -> None:
    from httpx_ws import aconnect_ws  # noqa: PLC0415 - the [bench] extra

    from simulations.star.bare import BareTerminal, Latencies, OwnUpdatesProvider, payload  # noqa: PLC0415
    from simulations.star.channel import WsChannel  # noqa: PLC0415
    from simulations.star.relay import ROOM  # noqa: PLC0415

    terminal = BareTerminal(index, Latencies(), record_own_updates=True)
    arrivals: dict[str, float] = {}
    enough = anyio.Event()
    expect = [0]

    def seen(event: Any) -> None:
        now = time.perf_counter()
        for key in event.keys:
            arrivals[key] = now
        if expect[0] and len(arrivals) >= expect[0]:
            enough.set()

    terminal.bench.observe(seen)
    async with aconnect_ws(f"http://127.0.0.1:{port}{ROOM}", keepalive_ping_interval_seconds=None) as ws:
        channel = WsChannel(ws, f"{ROOM}#{index}")
        async with OwnUpdatesProvider(terminal.doc, channel, terminal.own_updates) as provider:
            with anyio.fail_after(20):
                await provider.synced.wait()
            conn.send(("ready",))
            command, start, interval, total = await anyio.to_thread.run_sync(conn.recv)
            if role == "writer":
                acked = {}
                for slot in range(total):
                    await anyio.sleep(max(0.0, start + slot * interval - time.perf_counter()))
                    key, at = terminal.write(payload(index, slot, payload_bytes))
                    acked[key] = at
                conn.send(("latency", acked))
            else:
                expect[0] = total
                if len(arrivals) < total:
                    with anyio.fail_after(60):
                        await enough.wait()
                conn.send(("latency", arrivals))
            await anyio.to_thread.run_sync(conn.recv)  # stop
            channel.closing = True


async def _star_drains(conn: Connection, port: int, count: int, rooms: list[str] | None) -> None:
    from httpx_ws import aconnect_ws  # noqa: PLC0415

    from simulations.star.relay import ROOM  # noqa: PLC0415

    async def drain(ws: Any) -> None:
        while True:
            await ws.receive_bytes()

    async with AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(
            aconnect_ws(f"http://127.0.0.1:{port}{room}", keepalive_ping_interval_seconds=None))
            for _ in range(count) for room in rooms or [ROOM]]
        async with anyio.create_task_group() as tg:
            for ws in sockets:
                tg.start_soon(drain, ws)
            conn.send(("ready",))
            await anyio.to_thread.run_sync(conn.recv)  # stop
            tg.cancel_scope.cancel()


async def star_latency(n: int, samples: int, interval: float, payload_bytes: int, cores: tuple[int, int],
                       relay_core: int) -> dict[str, Any]:
    """The star's writer client on the first core; the receiver and n - 2 drains on the second;
    the relay on ``relay_core``."""
    from simulations.star.relay import relay_process  # noqa: PLC0415

    async with relay_process() as relay:
        _pin_process(relay.pid, relay_core)

        def run() -> dict[str, Any]:
            # One connection at a time, as the star's own benchmark (simulations/star/bare.py) connects:
            # clients joining a room pycrdt-websocket is still creating were seen to hang in their sync.
            started: list[Children] = []
            try:
                # The receiver joins last: the relay sends to its clients in the order they joined
                # (simulations.star.relay.JoinOrder), so it is the last other terminal, as in the mesh.
                for role, core, index in (("writer", cores[0], 0), ("drains", cores[1], n - 2),
                                          ("receiver", cores[1], 1)):
                    started.append(Children(pinned_star_client, [(core, relay.port, role, index, payload_bytes)]))
                    started[-1].recv(0, "ready", 60)
                writer, receiver = started[0], started[-1]
                warm = 20
                total = warm + samples
                start = time.perf_counter() + 0.5
                for side in (writer, receiver):
                    side.send(0, "latency", start, interval, total)
                (acked,), (seen,) = writer.recv(0, "latency"), receiver.recv(0, "latency")
            finally:
                for children in reversed(started):
                    children.close()
            order = sorted(acked, key=acked.get)[warm:]
            return summary([(seen[key] - acked[key]) * 1000 for key in order])

        return await anyio.to_thread.run_sync(run)


async def durable_star_latency(n: int, samples: int, interval: float, backend: str, cores: tuple[int, int],
                               relay_core: int) -> dict[str, Any]:
    """The star with real terminals as its clients (``simulations.star.terminal_client.TerminalRelayClient``): the
    writer terminal on the first core, the receiver terminal and n - 2 drains (in every room) on
    the second, the relay on ``relay_core``; the sample is the mesh's (write acknowledged on the
    writer to ``order:created`` on the receiver, both durable)."""
    from simulations.star.relay import relay_process  # noqa: PLC0415

    async with relay_process() as relay:
        _pin_process(relay.pid, relay_core)

        def run() -> dict[str, Any]:
            with tempfile.TemporaryDirectory(prefix="meshpos-bench-") as tmp:
                root = Path(tmp)
                writer_id, receiver_id = enrolled_store(root, 2)
                terms = Children(pinned_terminal, [(cores[0], str(root / writer_id), writer_id, backend),
                                                   (cores[1], str(root / receiver_id), receiver_id, backend)])
                drains = None
                try:
                    terms.all("port")
                    # One at a time (see star_latency), the receiver last: the last other terminal.
                    terms.send(0, "relay", relay.port)
                    (rooms,) = terms.recv(0, "relayed", 60)
                    if n > 2:
                        drains = Children(pinned_star_client, [(cores[1], relay.port, "drains", n - 2, 0,
                                                                [f"/{room}" for room in rooms])])
                        drains.recv(0, "ready", 60)
                    terms.send(1, "relay", relay.port)
                    terms.recv(1, "relayed", 60)
                    return _writer_to_receiver(terms, samples, interval)
                finally:
                    if drains is not None:
                        drains.close()
                    terms.close()

        return await anyio.to_thread.run_sync(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--terminals", type=int, nargs="+", default=[3, 5, 10])
    parser.add_argument("--updates", type=int, default=1000, help="orders each terminal writes (throughput)")
    parser.add_argument("--frame-updates", type=int, default=WRITERS_PER_TERMINAL,
                        help="orders merged per frame a replay peer sends (1: one frame per order)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--no-star", action="store_true", help="skip the star-relay baseline")
    parser.add_argument("--payload-bytes", type=int, default=200, help="star: bytes per write (as bench_mesh's)")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("bench_own_core.py needs two CPUs: one for the terminal under test, one for its peers")
    if min(args.terminals) < 2:
        sys.exit("--terminals: a mesh has at least 2")
    first, second = sorted(os.sched_getaffinity(0))[:2]
    os.sched_setaffinity(0, {second})  # the coordinator stays off the measured terminal's core
    started = time.perf_counter()
    results = []
    for n in args.terminals:
        results.append({"terminals": n, "frame_updates": args.frame_updates,
                        "throughput": throughput(n, args.updates, args.frame_updates, args.backend, (first, second)),
                        "latency_ms": latency(n, args.samples, args.interval, args.backend, (first, second))})
        if not args.no_star:  # the relay next to the writer, then next to the receiver
            for name, core in (("writer", first), ("receiver", second)):
                results[-1][f"star_latency_ms_relay_with_{name}"] = anyio.run(
                    star_latency, n, args.samples, args.interval, args.payload_bytes, (first, second), core)
            for name, core in (("writer", first), ("receiver", second)):
                results[-1][f"durable_star_latency_ms_relay_with_{name}"] = anyio.run(
                    durable_star_latency, n, args.samples, args.interval, args.backend, (first, second), core)
    print(json.dumps({"results": results, "backend": args.backend, "seconds": round(time.perf_counter() - started, 1)},
                     indent=1))


if __name__ == "__main__":
    main()
