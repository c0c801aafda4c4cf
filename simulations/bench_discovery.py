"""Joining and leaving a mesh found by mDNS: real ``meshpos run`` processes on loopback; prints JSON.

    python -m simulations.bench_discovery [--existing 5] [--runs 5] [--orders 200] [--backend asyncio|trio]

An existing mesh of ``--existing`` terminals (mDNS on 127.0.0.1, no addresses given) holds a
catalog and ``--orders`` orders written on all of them.  Then, ``--runs`` times, a new terminal
(a fresh enrolled data directory: a box just plugged in) is started and timed:

* **join**: from spawning ``meshpos run`` to the new terminal being linked to every existing one
  and holding every document exactly as they do (equal Yjs state vectors in ``GET /api/v1/status``);
* **offline**: from killing that terminal to every existing terminal showing it offline in
  ``GET /api/v1/peers``.  Odd runs use ``SIGKILL`` (a crash: no goodbye, but the kernel closes
  its sockets), even runs ``SIGSTOP`` (a box losing power or its cable: nothing at all is sent,
  only the heartbeat can tell).

Targets (docs/performance.md): join <= 2 s, offline <= 5 s (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peer.identity import Authority
from simulations.benchutil import free_port

CLI = [sys.executable, "-m", "meshpos.cli"]
ITEM = {"sku": "burger", "name": "Burger", "qty": 1, "unit_price_cents": 1590, "station": "grill"}
POLL = 0.01


def call(port: int, path: str, body: Any = None, method: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)


def until(predicate: Callable[[], bool], within: float, what: str) -> float:
    start = time.perf_counter()
    while True:
        try:
            if predicate():
                return time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, OSError):
            pass  # not serving yet
        if time.perf_counter() - start > within:
            raise TimeoutError(f"not within {within} s: {what}")
        time.sleep(POLL)


class Box:
    def __init__(self, data_dir: Path, backend: str, log: Path) -> None:
        self.api = free_port()
        args = [*CLI, "run", "--data-dir", str(data_dir), "--api-port", str(self.api), "--peer-host", "127.0.0.1",
                "--peer-port", "0", "--mdns-interface", "127.0.0.1", "--backend", backend]
        with log.open("ab") as err:
            self.popen = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                                          env={k: v for k, v in os.environ.items() if not k.startswith("MESHPOS_")})

    def online(self) -> set[str]:
        return {p["terminal_id"] for p in call(self.api, "/api/v1/peers")["peers"] if p["online"]}

    def vectors(self) -> dict[str, Any]:
        return {name: d["state_vector"] for name, d in call(self.api, "/api/v1/status")["documents"].items()}

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()


def _summary(values: list[float], target: float) -> dict[str, Any] | None:
    if not values:
        return None
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3),
            "runs": [round(x, 3) for x in values], "target": target}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshpos-bench-join-") as tmp:
        root = Path(tmp)
        authority = Authority.init(root / "auth", "bench")
        ids = [f"pos-{k}" for k in range(1, args.existing + 1)]
        for tid in ids:
            authority.enroll(tid, "pos", root / tid)
        boxes = {tid: Box(root / tid, args.backend, root / f"{tid}.log") for tid in ids}
        try:
            formed = until(lambda: all(b.online() == set(ids) - {tid} for tid, b in boxes.items()), 60,
                           "the existing mesh forms over mDNS")
            first = boxes[ids[0]]
            call(first.api, "/api/v1/catalog/burger", {"name": "Burger", "price_cents": 1590, "station": "grill"},
                 "PUT")
            until(lambda: all("burger" in {p["sku"] for p in call(b.api, "/api/v1/catalog")} for b in boxes.values()),
                  30, "catalog everywhere")
            for n in range(args.orders):
                box = boxes[ids[n % len(ids)]]
                call(box.api, "/api/v1/orders", {"waiter": f"w{n}", "items": [ITEM]})
            until(lambda: all(b.vectors() == first.vectors() for b in boxes.values()), 60, "existing mesh converged")
            joins, offline, frozen = [], [], []
            for run in range(args.runs):
                tid = f"new-{run + 1}"
                authority.enroll(tid, "waiter", root / tid)
                spawned = time.perf_counter()
                box = Box(root / tid, args.backend, root / f"{tid}.log")
                try:
                    until(lambda box=box: box.online() == set(ids) and box.vectors() == first.vectors(), 60,
                          f"{tid} joined and synced")
                    joins.append(time.perf_counter() - spawned)

                    def gone(tid: str = tid) -> bool:
                        return all(tid not in b.online() for b in boxes.values())

                    stopped = time.perf_counter()
                    if run % 2 == 0:  # a crash: the kernel closes its sockets
                        box.popen.send_signal(signal.SIGKILL)
                        until(gone, 30, f"{tid} offline everywhere after SIGKILL")
                        offline.append(time.perf_counter() - stopped)
                    else:  # a box that loses power: no FIN, no goodbye - only the heartbeat can tell
                        box.popen.send_signal(signal.SIGSTOP)
                        until(gone, 30, f"{tid} offline everywhere after SIGSTOP")
                        frozen.append(time.perf_counter() - stopped)
                finally:
                    box.kill()
        finally:
            for b in boxes.values():
                b.kill()
    return {
        "existing_terminals": args.existing, "orders": args.orders, "backend": args.backend,
        "mesh_formed_s": round(formed, 3),
        "join_s": _summary(joins, 2.0),
        "offline_after_sigkill_s": _summary(offline, 5.0),
        "offline_after_sigstop_s": _summary(frozen, 5.0),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--existing", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    print(json.dumps(bench(parser.parse_args()), indent=1))
