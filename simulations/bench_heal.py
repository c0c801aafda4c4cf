"""Heal to converged with real terminals: after a split with thousands of writes on each side,
how long until every terminal holds the same state?  Prints JSON.  Needs root.

    sudo python -m simulations.bench_heal [--terminals 5 10] [--updates 5000]

With simulations/netns.py's lab (one ``meshpos run`` per network namespace, real mDNS, TLS and
SQLite): the boxes link, the switch is cut in two halves, each half takes ``--updates``
acknowledged writes through its terminals' local APIs (new orders and stock moves, spread over
the half's terminals) until both halves are settled apart - then the switch is healed and each
terminal's state vectors are polled (``GET /api/v1/status``, each terminal on its own, every
``--poll`` seconds) until it holds both halves' updates; its moment of convergence is its own
record of the last peer update that changed a document there (``last_peer_update_at``, same
machine clock), so the polls only need to find that it happened.  Reported per size: how long
the writes took, the first and the last link across the halves back after the heal (from the
terminals' own ``connected_since``), converged-after-heal - the last terminal's (target: <= 1 s),
when the polls saw it - and the
CPU time the terminals spent from the heal to convergence (per terminal at most, mean, total,
and the machine's cores: with more terminals than cores they queue for the CPU, where in a
store every box has its own).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from simulations.benchutil import utc
from simulations.netns import ApiBox, Restaurant, restaurant, until
from simulations.partition import MENU, STOCK, kinds_for, missing_updates, union_state

TARGET_SECONDS = 1.0


async def _write(box: ApiBox, tid: str, count: int) -> None:
    """``count`` acknowledged writes, alternating a new order and a stock move."""
    skus = sorted(MENU)
    for k in range(count):
        sku = skus[k % len(skus)]
        if k % 2 == 0:
            await box.create_order(table=f"T{k % 12 + 1}", waiter=tid, items=[
                {"sku": sku, "name": sku, "qty": 1, "unit_price_cents": MENU[sku], "station": "grill"}])
        else:
            await box.adjust_stock(sku, -1, "sale")


def _cpu_seconds(r: Restaurant) -> dict[str, float]:
    """CPU time (user + system) each terminal process has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid, proc in r.procs.items():
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        out[tid] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
    return out


async def _offline(r: Restaurant, side: list[str], other: list[str]) -> bool:
    online = await r.each(lambda b: b.online(), side)
    return not any(online[tid] & set(other) for tid in side)


async def one(n: int, updates: int, poll: float, keep: Path | None = None) -> dict[str, Any]:
    kinds = kinds_for(n)
    ids = [tid for tid, _ in kinds]
    a, b = ids[: n // 2], ids[n // 2:]
    root = None
    if keep is not None:
        root = keep / f"n{n}"
        root.mkdir(parents=True)
    async with restaurant(kinds, root, "DEBUG" if keep is not None else "INFO") as r:
        await until(r.all_linked, "every terminal linked", 60)
        manager = r.boxes[ids[0]]
        for sku, price in MENU.items():
            await manager.call("PUT", f"/api/v1/catalog/{sku}", {"name": sku, "price_cents": price,
                                                                 "station": "grill"})
            await manager.call("POST", f"/api/v1/inventory/{sku}/count", {"quantity": STOCK})
        await until(r.same_state, "the catalog everywhere", 30)
        r.lan.split([[r.hosts[tid] for tid in a]])
        await until(lambda: _offline(r, a, b), "each half sees the other offline", 30)
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for side in (a, b):
                for k, tid in enumerate(side):
                    share = updates // len(side) + (1 if k < updates % len(side) else 0)
                    tg.start_soon(_write, r.boxes[tid], tid, share)
        wrote = time.monotonic() - started
        await until(lambda: r.same_state(a), "half A settled", 60)
        await until(lambda: r.same_state(b), "half B settled", 60)
        vectors = await r.each(lambda box: box.state_vectors())
        apart = missing_updates(vectors)

        cpu_before = _cpu_seconds(r)
        target = {"target": union_state(vectors)}  # what each terminal must reach
        reached: dict[str, float] = {}

        seen: dict[str, float] = {}

        async def watch(tid: str) -> None:
            """This terminal's own moment of convergence: once a poll finds its state vectors
            holding the union, the time the last peer update that changed a document there was
            applied, by its own clock (``last_peer_update_at``): exact to the millisecond however
            rarely it is polled, so the polls can be sparse and cost the terminals little."""
            while True:
                status = await r.boxes[tid].call("GET", "/api/v1/status")
                now = time.monotonic() - healed
                sv = {name: doc["state_vector"] for name, doc in status["documents"].items()}
                if not missing_updates({tid: sv, **target})[tid]:
                    heard = max(doc["last_peer_update_at"] or "" for doc in status["documents"].values())
                    reached[tid] = (utc(heard) - healed_at).total_seconds()
                    seen[tid] = now
                    return
                if now > 120:
                    raise TimeoutError(f"{tid} not converged 120 s after the heal")
                await anyio.sleep(poll)

        healed = time.monotonic()
        healed_at = datetime.now(UTC)
        r.lan.heal()
        async with anyio.create_task_group() as tg:
            for tid in ids:
                tg.start_soon(watch, tid)
        cpu = {tid: round(spent - cpu_before[tid], 2) for tid, spent in _cpu_seconds(r).items()}
        converged = max(reached.values())
        # When each link across the halves came back, by the terminals' own clocks (the same machine's);
        # a terminal can hold everything before its last link is up (it caught up through another).
        await until(r.all_linked, "every link back", 30)
        peers = await r.each(lambda box: box.call("GET", "/api/v1/peers"), a)
        back = [(utc(p["connected_since"]) - healed_at).total_seconds()
                for tid in a for p in peers[tid]["peers"] if p["terminal_id"] in b and p["online"]]
        assert len(back) == len(a) * len(b), back
    return {
        "terminals": n, "halves": [a, b], "healed_at": healed_at.isoformat(), "updates_per_half": updates,
        "write_seconds": round(wrote, 2),
        "missing_per_terminal_before_heal": apart,
        "first_link_back_s": round(min(back), 3), "all_links_back_s": round(max(back), 3),
        "converged_after_heal_s": round(converged, 3), "target_s": TARGET_SECONDS,
        "converged_per_terminal_s": {tid: round(t, 3) for tid, t in sorted(reached.items())},
        "seen_by_poll_s": round(max(seen.values()), 3),
        "cpu_s_heal_to_converged": {"max": max(cpu.values()), "mean": round(sum(cpu.values()) / n, 2),
                                    "total": round(sum(cpu.values()), 2), "cores": os.cpu_count()},
        "met": converged <= TARGET_SECONDS,
    }


async def main_async(sizes: list[int], updates: int, poll: float, keep: Path | None) -> dict[str, Any]:
    return {"benchmark": "heal_to_converged", "poll_s": poll,
            "results": [await one(n, updates, poll, keep) for n in sizes]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terminals", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--updates", type=int, default=5000, help="acknowledged writes per half (default 5000)")
    parser.add_argument("--poll", type=float, default=0.25,
                        help="seconds between a terminal's convergence polls (default 0.25; the time itself is "
                             "the terminal's own record)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep data dirs and DEBUG logs in DIR/n<size>")
    args = parser.parse_args()
    print(json.dumps(anyio.run(main_async, args.terminals, args.updates, args.poll, args.keep), indent=1))


if __name__ == "__main__":
    main()
