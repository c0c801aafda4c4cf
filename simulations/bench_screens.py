"""How fast the kitchen display shows what a POS took; prints JSON.

    python -m simulations.bench_screens [--orders 200] [--day 300]

Two real ``meshpos run`` processes enrolled in one store and linked over TLS on loopback: pos-1
and kds-1.  Debian's headless Chromium shows kds-1's ``/kds``.

* **order to ticket**: ``--orders`` orders are taken one at a time with ``POST /api/v1/orders`` on
  pos-1; a sample is the time from just before the POST to the moment the ticket's element is in
  kds-1's page (a MutationObserver in the page stamps it with the same wall clock): pos-1 stores
  it, ships it to kds-1, kds-1 stores it and sends it to the browser over the Yjs route, the
  page renders.  Target: p99 <= 50 ms.
* **day load**: with ``--day`` tickets open, a fresh load of ``/kds``: the time from the
  navigation's start to the first render that shows them all (the page's own ``performance.now()``).
  Target <= 1 s; three loads, each reported.

Needs Debian's chromium and chromium-driver and ``selenium`` (test extra).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from simulations.benchutil import free_port, summary
from simulations.browser import chromium_missing, headless_chromium

ITEM = {"sku": "burger", "name": "Burger", "qty": 1, "unit_price_cents": 1590, "station": "grill"}
#: Stamps each ticket the moment its element enters the page (epoch ms, as Python's time.time()).
OBSERVE = """
window.__seen = {};
new MutationObserver(() => {
  for (const t of document.querySelectorAll('article.ticket[data-order-id]')) {
    const id = t.dataset.orderId;
    if (!(id in window.__seen)) window.__seen[id] = performance.timeOrigin + performance.now();
  }
}).observe(document.getElementById('tickets'), {childList: true});
"""


def _run(root: Path, tid: str, api: int, peer: int, other: int, stack: ExitStack) -> str:
    args = [sys.executable, "-m", "meshpos.cli", "run", "--data-dir", str(root / tid), "--api-port", str(api),
            "--peer-host", "127.0.0.1", "--peer-port", str(peer), "--peer", f"127.0.0.1:{other}", "--no-mdns"]
    log = (root / f"{tid}.log").open("w")
    stack.callback(log.close)
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    stack.callback(proc.wait, 10)
    stack.callback(proc.terminate)
    return f"http://127.0.0.1:{api}"


def _up(url: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/status").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {within} s")


def _until(check: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.005)
    raise RuntimeError(f"timed out waiting for {what}")


def measure(orders: int, day: int) -> dict[str, Any]:
    from peer.identity import Authority

    with tempfile.TemporaryDirectory(prefix="meshpos-screens-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        authority = Authority.init(root / "auth", "bench")
        for tid, kind in (("pos-1", "pos"), ("kds-1", "kds")):
            authority.enroll(tid, kind, root / tid)
        ports = [free_port() for _ in range(4)]
        pos = _run(root, "pos-1", ports[0], ports[1], ports[3], stack)
        kds = _run(root, "kds-1", ports[2], ports[3], ports[1], stack)
        _up(pos)
        _up(kds)
        client = stack.enter_context(httpx.Client(base_url=pos, timeout=10))
        _until(lambda: any(p["online"] for p in client.get("/api/v1/peers").json()["peers"]), 20, "the link")
        driver = headless_chromium()
        stack.callback(driver.quit)
        driver.get(f"{kds}/kds")
        _until(lambda: driver.execute_script("return document.body.dataset.rendered") == "0", 20, "the empty kds")
        driver.execute_script(OBSERVE)
        samples = []
        for _ in range(orders):
            sent = time.time() * 1000
            oid = client.post("/api/v1/orders", json={"table": "T1", "items": [ITEM]}).json()["id"]
            seen = _until(lambda oid=oid: driver.execute_script("return window.__seen[arguments[0]]", oid), 10,
                          "the ticket")
            samples.append(seen - sent)
        for _ in range(day - orders):
            client.post("/api/v1/orders", json={"table": "T2", "items": [ITEM]})
        loads = []
        for _ in range(3):
            driver.get(f"{kds}/kds")
            loads.append(_until(lambda: driver.execute_script(
                "const r = (window.meshposKds || {}).renders_log || [];"
                "const full = r.find(e => e.tickets >= arguments[0]); return full && full.at", max(day, orders)),
                30, "the full day"))
        return {
            "benchmark": "screens", "orders": orders, "order_to_ticket_ms": summary(samples),
            "target_p99_ms": 50, "day_tickets": max(day, orders),
            "day_load_ms": [round(x, 1) for x in loads], "target_day_load_ms": 1000,
            "meets": {"order_to_ticket": summary(samples)["p99"] <= 50, "day_load": max(loads) <= 1000},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--day", type=int, default=300, help="tickets open for the load measurement")
    args = parser.parse_args()
    if (missing := chromium_missing()) is not None:
        raise SystemExit(missing)
    started = time.monotonic()
    result = measure(args.orders, args.day)
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
