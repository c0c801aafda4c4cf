"""What one terminal spends taking in its peers' changes; prints JSON.

    python -m simulations.bench_intake [--terminals 20] [--orders 992] [--frame-updates 16] [--reps 5]
                                       [--profile FILE]

bench_own_core's throughput at 20 terminals is bound by the intake: a terminal that writes 992
orders takes in 19 x 992 from its peers, and its one core spends most of its time on those.
That benchmark runs two pinned processes over TLS and moves by tens of percent from one hour of
this machine to the next; this one isolates the intake so a change to it can be measured
against the code before it (`git worktree` + ``PYTHONPATH``, alternating, min of ``--reps``):

one real terminal, in this process, is handed the frames that ``--terminals - 1`` real
terminals of the same store recorded (bench_own_core's ``record_orders``: ``--orders`` each,
``--frame-updates`` merged per frame) through the entry point a link's reads use
(``DocumentHost.apply_remote``, one call per frame, origin ``peer:<writer>``) - without the
links, TLS and WebSocket framing around it.  Reported: CPU time (this process's: the event loop
and the SQLite writer thread) per update received, from the first frame to the last one durable
with its events, for each run, and the run's check that every order arrived as an
``order:created`` event with its order's view when read (``cpu_us_per_event_read``: what a
subscriber replaying them from storage then pays, views built).

``--events`` measures what the order events cost, as what-ifs besides the product: ``product``
(the default) stores a new order's event with the order map's JSON and builds the view when
the event is read (docs/documents.md, "Domain events"); ``eager`` builds each new order's full
view at the change and stores it with the event (the product before 2026-12-07); ``ids``
builds nothing and stores events that carry only the order id (the floor: no view at all).
``--profile FILE`` writes a cProfile of the last run (pstats format);
a sampling profiler sees less distortion: ``py-spy record -r 400 -f raw -o FILE -- python -m
simulations.bench_intake --reps 3``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from meshpos.config import TerminalConfig
from meshpos.documents.orders import OrdersDoc
from meshpos.terminal import Terminal
from peer.wire import decode_sync
from simulations.bench_own_core import record_orders
from simulations.benchutil import enrolled_store


def _events_what_if(kind: str) -> None:
    """Replace the orders document's event derivation for ``--events`` (this process only)."""
    if kind == "product":
        return
    full = OrdersDoc.drain_events

    def eager(self: OrdersDoc, known: Any = None, *, defer: bool = False) -> list[tuple[str, dict[str, Any]]]:
        return full(self, known)

    def ids_only(self: OrdersDoc, known: Any = None, *, defer: bool = False) -> list[tuple[str, dict[str, Any]]]:
        created, touched = self._created, self._touched
        self._created, self._touched = {}, set()
        return [("order:created" if oid in created else "order:updated", {"order_id": oid}) for oid in sorted(touched)]

    OrdersDoc.drain_events = eager if kind == "eager" else ids_only  # type: ignore[method-assign]


async def _run(root: Path, receiver: str, frames: list[tuple[str, Any]], profile: cProfile.Profile | None
               ) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshpos-intake-") as tmp:
        data_dir = Path(tmp) / receiver
        shutil.copytree(root / receiver, data_dir)  # its identity; its documents start empty
        config = TerminalConfig(data_dir=data_dir, terminal_id=receiver, api_port=0, peer_host="127.0.0.1",
                                peer_port=0, mdns=False)
        async with Terminal(config).running() as t:
            for name in {frame.doc for _, frame in frames}:
                await t.ensure_doc(name)
            cursor = t.store.last_cursor
            await anyio.sleep(0.2)  # the start-up's own writes settle outside the measurement
            if profile is not None:
                profile.enable()
            cpu, began = time.process_time(), time.perf_counter()
            last = None
            for writer, frame in frames:
                last = t.host.apply_remote(frame.doc, [frame.payload], f"peer:{writer}") or last
            assert last is not None
            await last.wait()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - began
            if profile is not None:
                profile.disable()
            # what a reader then pays: every event replayed from storage, its view built if deferred
            read_cpu, created, views, read = time.process_time(), 0, 0, 0
            async with t.events.subscribe(cursor) as stream:
                async for event in stream:
                    read += 1
                    created += event.type == "order:created"
                    views += event.type == "order:created" and isinstance(event.payload.get("order"), dict)
                    if event.cursor >= t.store.last_cursor:
                        break
            read_cpu = time.process_time() - read_cpu
    return {"cpu_s": cpu, "wall_s": wall, "orders_created": created, "views": views, "read_cpu_s": read_cpu,
            "read": read}


async def measure(terminals: int, orders: int, frame_updates: int, reps: int, profile_to: Path | None,
                  events: str = "product") -> dict[str, Any]:
    _events_what_if(events)
    with tempfile.TemporaryDirectory(prefix="meshpos-intake-") as tmp:
        root = Path(tmp)
        receiver, *writers = enrolled_store(root, terminals)
        frames = [(writer, decode_sync(f)) for writer in writers
                  for f in await record_orders(root, writer, orders, frame_updates)]
        received = orders * len(writers)
        runs = []
        for rep in range(reps):
            profile = cProfile.Profile() if profile_to is not None and rep == reps - 1 else None
            run = await _run(root, receiver, frames, profile)
            if run["orders_created"] != received or (events != "ids" and run["views"] != received):
                raise SystemExit(f"run {rep}: {run['orders_created']} order:created events ({run['views']} with "
                                 f"the order's view) for {received} orders")
            runs.append(run)
            if profile is not None:
                profile.dump_stats(str(profile_to))
    per_update = sorted(r["cpu_s"] / received * 1e6 for r in runs)
    per_read = sorted(r["read_cpu_s"] / r["read"] * 1e6 for r in runs)
    return {"terminals": terminals, "orders_received": received, "frames": len(frames),
            "frame_updates": frame_updates, "events": events,
            "cpu_us_per_update_received": {"min": round(per_update[0], 1),
                                           "median": round(statistics.median(per_update), 1),
                                           "runs": [round(x, 1) for x in per_update]},
            "wall_s": [round(r["wall_s"], 3) for r in runs],
            # a subscriber replaying the run's events from storage afterwards (views built then)
            "cpu_us_per_event_read": {"min": round(per_read[0], 1), "median": round(statistics.median(per_read), 1)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--terminals", type=int, default=20, help="the mesh's size: this one and N - 1 writers")
    parser.add_argument("--orders", type=int, default=992, help="orders each writer recorded")
    parser.add_argument("--frame-updates", type=int, default=16, help="orders merged per frame")
    parser.add_argument("--reps", type=int, default=5, help="runs on the same frames (min and median reported)")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the last run here")
    parser.add_argument("--events", choices=["product", "eager", "ids"], default="product",
                        help="what-ifs of the order events' cost (default: the product's)")
    args = parser.parse_args()
    if args.terminals < 2 or args.orders < 1 or args.frame_updates < 1 or args.reps < 1:
        parser.error("--terminals must be at least 2; --orders, --frame-updates and --reps at least 1")
    result = anyio.run(measure, args.terminals, args.orders, args.frame_updates, args.reps, args.profile,
                       args.events)
    print(json.dumps({"benchmark": "bench_intake", "result": result}, indent=2))


if __name__ == "__main__":
    main()
