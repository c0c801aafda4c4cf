"""Heal to converged with real terminals: after a split with thousands of writes on each side,
how long until every terminal holds the same state?  Prints JSON.  Needs root.

    sudo python simulations/bench_heal.py [--terminals 5 10] [--updates 5000]

With simulations/netns.py's lab (one ``meshpos run`` per network namespace, real mDNS, TLS and
SQLite): the boxes link, the switch is cut in two halves, each half takes ``--updates``
acknowledged writes through its terminals' local APIs (new orders and stock moves, spread over
the half's terminals) until both halves are settled apart - then the switch is healed and every
terminal's state vectors are polled (``GET /api/v1/status``, all at once, every
``--poll`` seconds) until none lacks anything.  Reported per size: how long the writes took,
the first and the last link back after the heal, and converged-after-heal (target: <= 1 s).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netns import ApiBox, Restaurant, restaurant, until  # noqa: E402
from partition import MENU, STOCK, kinds_for, missing_updates  # noqa: E402

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


async def _offline(r: Restaurant, side: list[str], other: list[str]) -> bool:
    online = await r.each(lambda b: b.online(), side)
    return not any(online[tid] & set(other) for tid in side)


async def one(n: int, updates: int, poll: float) -> dict[str, Any]:
    kinds = kinds_for(n)
    ids = [tid for tid, _ in kinds]
    a, b = ids[: n // 2], ids[n // 2:]
    async with restaurant(kinds) as r:
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

        healed = time.monotonic()
        r.lan.heal()
        first_link = all_links = converged = None
        while converged is None or all_links is None:
            vectors, online = await r.each(lambda box: box.state_vectors()), await r.each(lambda box: box.online())
            now = time.monotonic() - healed
            linked = sum(len(online[tid] & set(b)) for tid in a)
            if first_link is None and linked:
                first_link = now
            if all_links is None and all(online[tid] >= set(ids) - {tid} for tid in ids):
                all_links = now
            if converged is None and not any(missing_updates(vectors).values()):
                converged = now
            if now > 120:
                raise TimeoutError("not converged 120 s after the heal")
            await anyio.sleep(poll)
    return {
        "terminals": n, "halves": [a, b], "updates_per_half": updates, "write_seconds": round(wrote, 2),
        "missing_per_terminal_before_heal": apart,
        "first_link_back_s": round(first_link or 0.0, 3), "all_links_back_s": round(all_links, 3),
        "converged_after_heal_s": round(converged, 3), "target_s": TARGET_SECONDS,
        "met": converged <= TARGET_SECONDS,
    }


async def main_async(sizes: list[int], updates: int, poll: float) -> dict[str, Any]:
    return {"benchmark": "heal_to_converged", "poll_s": poll,
            "results": [await one(n, updates, poll) for n in sizes]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terminals", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--updates", type=int, default=5000, help="acknowledged writes per half (default 5000)")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between convergence polls")
    args = parser.parse_args()
    print(json.dumps(anyio.run(main_async, args.terminals, args.updates, args.poll), indent=1))


if __name__ == "__main__":
    main()
