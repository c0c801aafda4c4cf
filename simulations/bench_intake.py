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
``order:created`` event.

``--events`` measures what the order events cost, as a what-if - not the product's behaviour:
``views`` (the default) is the product, each event carrying the order's full view, built and
stored with it; ``built-not-stored`` builds the views and stores events that carry only the
order id; ``ids`` builds no view and stores events that carry only the order id.
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
    if kind == "views":
        return
    full = OrdersDoc.drain_events

    def ids_after_building(self: OrdersDoc, known: Any = None) -> list[tuple[str, dict[str, Any]]]:
        return [(kind, {"order_id": payload["order_id"]}) for kind, payload in full(self, known)]

    def ids_only(self: OrdersDoc, known: Any = None) -> list[tuple[str, dict[str, Any]]]:
        created, touched = self._created, self._touched
        self._created, self._touched = {}, set()
        return [("order:created" if oid in created else "order:updated", {"order_id": oid}) for oid in sorted(touched)]

    OrdersDoc.drain_events = ids_after_building if kind == "built-not-stored" else ids_only  # type: ignore[method-assign]


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
            created = (await t.store.query("SELECT COUNT(*) FROM events WHERE cursor > ? AND type = ?",
                                           (cursor, "order:created")))[0][0]
    return {"cpu_s": cpu, "wall_s": wall, "orders_created": created}


async def measure(terminals: int, orders: int, frame_updates: int, reps: int, profile_to: Path | None,
                  events: str = "views") -> dict[str, Any]:
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
            if run["orders_created"] != received:
                raise SystemExit(f"run {rep}: {run['orders_created']} order:created events for {received} orders")
            runs.append(run)
            if profile is not None:
                profile.dump_stats(str(profile_to))
    per_update = sorted(r["cpu_s"] / received * 1e6 for r in runs)
    return {"terminals": terminals, "orders_received": received, "frames": len(frames),
            "frame_updates": frame_updates, "events": events,
            "cpu_us_per_update_received": {"min": round(per_update[0], 1),
                                           "median": round(statistics.median(per_update), 1),
                                           "runs": [round(x, 1) for x in per_update]},
            "wall_s": [round(r["wall_s"], 3) for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--terminals", type=int, default=20, help="the mesh's size: this one and N - 1 writers")
    parser.add_argument("--orders", type=int, default=992, help="orders each writer recorded")
    parser.add_argument("--frame-updates", type=int, default=16, help="orders merged per frame")
    parser.add_argument("--reps", type=int, default=5, help="runs on the same frames (min and median reported)")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the last run here")
    parser.add_argument("--events", choices=["views", "built-not-stored", "ids"], default="views",
                        help="what-ifs of the order events' cost (default: the product's, full views)")
    args = parser.parse_args()
    if args.terminals < 2 or args.orders < 1 or args.frame_updates < 1 or args.reps < 1:
        parser.error("--terminals must be at least 2; --orders, --frame-updates and --reps at least 1")
    result = anyio.run(measure, args.terminals, args.orders, args.frame_updates, args.reps, args.profile,
                       args.events)
    print(json.dumps({"benchmark": "bench_intake", "result": result}, indent=2))


if __name__ == "__main__":
    main()
