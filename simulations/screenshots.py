"""Screenshots of the screens for docs/screens.md, from real terminals in headless Chromium.

    python -m simulations.screenshots [--out docs/screens]

Three enrolled terminals linked over TLS on loopback (pos-1, pos-2, kds-1), a short service on
pos-1 (tables, orders, kitchen stages, a void, a cancellation, a drawer with two payments), then
kds-1 stopped so a peer shows offline; pos-1's ``/monitor`` and ``/kds`` are shot at 1280x800 (a
kitchen screen) and 390x844 (a phone), ``/tables`` at 1280x800.  Needs Debian's chromium and
chromium-driver and the ``selenium`` package (test extra).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from meshpos.config import TerminalConfig
from meshpos.server import serve_api
from meshpos.terminal import Terminal
from peer.identity import Authority
from simulations.browser import headless_chromium

#: name -> (page, window size)
SHOTS = {"monitor": ("/monitor", (1280, 800)), "monitor-phone": ("/monitor", (390, 844)),
         "kds": ("/kds", (1280, 800)), "kds-phone": ("/kds", (390, 844)), "tables": ("/tables", (1280, 800))}
BURGER = {"sku": "burger", "name": "Burger", "qty": 2, "unit_price_cents": 1590, "station": "grill"}
FRIES = {"sku": "fries", "name": "Fries", "qty": 1, "unit_price_cents": 690, "station": "fryer"}


def shoot(base: str, out: Path) -> list[Path]:
    driver = headless_chromium()
    shots = []
    try:
        for name, (page, (width, height)) in SHOTS.items():
            driver.set_window_size(width, height)
            driver.get(base + page)
            time.sleep(2.5)  # the first polls, the day's figures and the event log's replay
            path = out / f"{name}.png"
            driver.save_screenshot(str(path))
            shots.append(path)
    finally:
        driver.quit()
    return shots


async def service(pos1: Terminal, pos2: Terminal) -> None:
    for sku, item in (("burger", BURGER), ("fries", FRIES)):
        await pos1.put_product(sku, name=item["name"], price_cents=item["unit_price_cents"], station=item["station"],
                               category=None, active=True)
    for n in range(1, 10):
        await pos1.put_table(f"T{n}", name=f"T{n}", seats=2 if n > 6 else 4, area="patio" if n > 6 else "hall")
    orders = [await pos1.create_order(table=f"T{n}", waiter="ana", items=[BURGER, FRIES]) for n in range(1, 6)]
    orders.append(await pos2.create_order(table="T9", waiter="bia", items=[FRIES]))
    await pos1.void_item(orders[1]["id"], orders[1]["items"][1]["id"], reason="sent twice", user="ana")
    await pos1.cancel_order(orders[2]["id"], reason="guest left", user="ana")
    await pos1.set_item_status(orders[4]["id"], orders[4]["items"][0]["id"], "preparing")
    await pos1.set_item_status(orders[3]["id"], orders[3]["items"][0]["id"], "ready")
    for n, status, guests in ((1, "occupied", 2), (2, "occupied", 3), (4, "occupied", 4), (5, "cleaning", 0),
                              (7, "reserved", 0)):
        await pos1.update_table(f"T{n}", status=status, guests=guests, waiter="ana", set_waiter=True)
    await pos1.merge_tables("T8", "T7")
    await pos1.cashier.open_drawer("main", float_cents=20_000, operator="carla")
    for order, method in ((orders[0], "cash"), (orders[3], "card")):
        await pos1.cashier.pay("main", order_id=order["id"], amount_cents=order["total_cents"], method=method,
                               user="carla")


async def main(out: Path) -> list[Path]:
    with tempfile.TemporaryDirectory(prefix="meshpos-shots-") as tmp:
        root = Path(tmp)
        authority = Authority.init(root / "auth", "Cantina Centro")
        ids = [("pos-1", "pos"), ("pos-2", "pos"), ("kds-1", "kds")]
        for tid, kind in ids:
            authority.enroll(tid, kind, root / tid)
        configs = [TerminalConfig(data_dir=root / tid, terminal_id=tid, type=kind, api_port=0,
                                  peer_host="127.0.0.1", peer_port=0, mdns=False) for tid, kind in ids]
        async with Terminal(configs[0]).running() as pos1, Terminal(configs[1]).running() as pos2, \
                anyio.create_task_group() as tg:
            shutdown, ready = anyio.Event(), anyio.Event()
            urls: list[str] = []
            tg.start_soon(lambda: serve_api(pos1, shutdown=shutdown, on_ready=lambda u: (urls.append(u), ready.set())))
            await ready.wait()
            async with Terminal(configs[2]).running() as kds:
                terminals: list[Any] = [pos1, pos2, kds]
                for t in terminals:
                    for other in terminals:
                        if other is not t:
                            t.mesh.dial(f"127.0.0.1:{other.mesh.port}")
                with anyio.fail_after(20):
                    while any(len(t.mesh.links) < 2 for t in terminals):  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                await service(pos1, pos2)
                await anyio.sleep(1.5)  # a heartbeat round trip on every link
            with anyio.fail_after(10):
                while "kds-1" in pos1.mesh.links:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            shots = await anyio.to_thread.run_sync(shoot, urls[0], out)
            shutdown.set()
    return shots


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screens"))
    folder = parser.parse_args().out
    folder.mkdir(parents=True, exist_ok=True)
    for shot in anyio.run(main, folder):
        print(shot)
