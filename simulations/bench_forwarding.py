"""Propagation where the mesh is not full, with real terminals; prints JSON.  Needs root.

    sudo python -m simulations.bench_forwarding [--topology isolation line] [--samples 200]

With simulations/netns.py's lab (one ``meshpos run`` per network namespace, real mDNS, TLS and
SQLite):

* ``isolation``: three wired boxes (``pos-1``, ``pos-2``, ``kds-1``) and three handhelds
  (``waiter-1..3``) on one LAN, mDNS on; then the access point's client isolation goes on (the
  bridge ports of the handhelds isolated: they reach the boxes, not each other) and the run
  waits until each handheld's link to the others is gone.  A sample: an order created on a
  handheld (round robin), from its acknowledgement to its being readable through each other
  handheld's API.
* ``line``: five terminals, mDNS off, each told only its neighbours' addresses:
  ``pos-1 - pos-2 - pos-3 - pos-4 - pos-5``.  A sample: an order created at one end (the ends
  alternate), from its acknowledgement to its being readable at the other end, four hops away.

Each sample waits for the one before it (closed loop); the receivers' APIs are polled every
millisecond from inside their namespaces (simulations/netlab.py's agents), so a figure is the
time a person at the other screen would wait, give or take a millisecond.  Also reported, over
the sampling: document frames and bytes every terminal received per change per terminal that
had to get it (``GET /api/v1/peers``' counters: copies, heartbeats and anti-entropy rounds
included).  Targets (docs/performance.md): p99 <= 50 ms for both.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import anyio

from simulations.benchutil import percentile
from simulations.netns import PEER_PORT, ApiBox, Restaurant, restaurant, until
from simulations.partition import MENU, STOCK

TARGET_P99_MS = 50.0
POLL_SECONDS = 0.001
#: A handheld's link to another is found dead within the heartbeat's 3.5 s; margin for the redials.
SETTLE_AFTER_ISOLATION = 6.0

ISOLATION = [("pos-1", "pos"), ("pos-2", "pos"), ("kds-1", "kds"),
             ("waiter-1", "waiter"), ("waiter-2", "waiter"), ("waiter-3", "waiter")]
LINE = [(f"pos-{k}", "pos") for k in range(1, 6)]


def _neighbours(ids: list[str], tid: str) -> set[str]:
    k = ids.index(tid)
    return {ids[j] for j in (k - 1, k + 1) if 0 <= j < len(ids)}


def _line_env(r: Restaurant, tid: str) -> dict[str, str]:
    """mDNS off and the neighbours' addresses only: the terminals of a line know no others."""
    ids = [t for t, _ in LINE]
    return {"MESHPOS_MDNS": "false",
            "MESHPOS_PEERS": ",".join(f"{r.hosts[n].address}:{PEER_PORT}" for n in sorted(_neighbours(ids, tid)))}


async def _counters(r: Restaurant) -> tuple[int, int]:
    peers = await r.each(lambda b: b.call("GET", "/api/v1/peers"))
    frames = sum(p["updates_in"] for answer in peers.values() for p in answer["peers"] if p["online"])
    data = sum(p["bytes_in"] for answer in peers.values() for p in answer["peers"] if p["online"])
    return frames, data


async def _arrival(box: ApiBox, order_id: str, since: float) -> float:
    while True:
        status, _ = await box.agent.request("GET", f"/api/v1/orders/{order_id}")
        if status == 200:
            return time.monotonic() - since
        await anyio.sleep(POLL_SECONDS)


async def _sample(r: Restaurant, writers: list[str], receivers: dict[str, list[str]], samples: int) -> dict[str, Any]:
    sku = sorted(MENU)[0]
    item = {"sku": sku, "name": sku, "qty": 1, "unit_price_cents": MENU[sku], "station": "grill"}
    delays: list[float] = []
    frames0, bytes0 = await _counters(r)
    arrivals = 0
    for k in range(samples):
        writer = writers[k % len(writers)]
        order = await r.boxes[writer].create_order(table=f"T{k % 12 + 1}", waiter=writer, items=[item])
        acked = time.monotonic()
        got: list[float] = []

        async def one(tid: str, order_id: str = order["id"], since: float = acked, into: list[float] = got) -> None:
            into.append(await _arrival(r.boxes[tid], order_id, since))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for tid in receivers[writer]:
                    tg.start_soon(one, tid)
        delays.extend(got)
    everyone = len(r.kinds) - 1
    frames1, bytes1 = await _counters(r)
    arrivals = samples * everyone
    p50, p99 = (round(percentile(delays, p) * 1000, 1) for p in (50, 99))
    return {"samples": samples, "arrivals_timed": len(delays), "p50_ms": p50, "p99_ms": p99,
            "max_ms": round(max(delays) * 1000, 1), "target_p99_ms": TARGET_P99_MS, "met": p99 <= TARGET_P99_MS,
            "frames_in_per_arrival": round((frames1 - frames0) / arrivals, 2),
            "bytes_in_per_arrival": round((bytes1 - bytes0) / arrivals)}


async def _opening(r: Restaurant) -> None:
    manager = r.boxes[r.kinds[0][0]]
    sku = sorted(MENU)[0]
    await manager.call("PUT", f"/api/v1/catalog/{sku}", {"name": sku, "price_cents": MENU[sku], "station": "grill",
                                                        "category": None, "active": True})
    await manager.call("POST", f"/api/v1/inventory/{sku}/count", {"quantity": STOCK})


async def isolation(samples: int) -> dict[str, Any]:
    handhelds = [tid for tid, kind in ISOLATION if kind == "waiter"]
    async with restaurant(ISOLATION) as r:
        await until(r.all_linked, "linked", 60)
        await _opening(r)
        r.lan.isolate([r.hosts[tid] for tid in handhelds])
        wired = {tid for tid, kind in ISOLATION if kind != "waiter"}

        async def isolated() -> bool:
            online = await r.each(lambda b: b.online(), handhelds)
            return all(online[tid] == wired for tid in handhelds)

        await until(isolated, "handhelds unlinked from each other", 30)
        await anyio.sleep(SETTLE_AFTER_ISOLATION)
        result = await _sample(r, handhelds, {h: [o for o in handhelds if o != h] for h in handhelds}, samples)
        return {"topology": "isolation", "terminals": len(ISOLATION),
                "about": "handheld to each other handheld, through the wired boxes", **result}


async def line(samples: int) -> dict[str, Any]:
    ids = [tid for tid, _ in LINE]
    async with restaurant(LINE, env=_line_env) as r:

        async def linked() -> bool:
            online = await r.each(lambda b: b.online())
            return all(online[tid] == _neighbours(ids, tid) for tid in ids)

        await until(linked, "line linked", 60)
        await _opening(r)
        await until(lambda: r.same_state(), "opening synced", 30)
        result = await _sample(r, [ids[0], ids[-1]], {ids[0]: [ids[-1]], ids[-1]: [ids[0]]}, samples)
        return {"topology": "line", "terminals": len(LINE), "about": "one end to the other, four hops", **result}


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = {"isolation": isolation, "line": line}
    return [await runs[name](args.samples) for name in args.topology]


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m simulations.bench_forwarding", description=__doc__.split("\n")[0])
    parser.add_argument("--topology", nargs="+", choices=["isolation", "line"], default=["isolation", "line"])
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(anyio.run(main, args), indent=1))


if __name__ == "__main__":
    cli()
