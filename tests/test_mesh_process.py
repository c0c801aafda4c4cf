"""Real ``meshpos run`` processes linked by static ``--peer`` addresses on loopback.

Each terminal is its own process with its own enrolled data directory; the tests talk to them
only through their local APIs and the CLI, and crash them with SIGKILL.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from tests.procutil import BACKENDS, Store, ok, online, put_products, run_cli, start, state, wait

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_processes_converge_survive_kill_9_and_restart(launch, tmp_path: Path, backend: str) -> None:  # noqa: ANN001
    store = Store(tmp_path, ["pos-1", "kds-1", "waiter-1"], ["pos", "kds", "waiter"])
    procs = {tid: start(launch, store, tid, backend) for tid in store.ids}
    assert any("links on 127.0.0.1" in line for line in procs["pos-1"].stdout)
    clients = {tid: p.client() for tid, p in procs.items()}
    for tid, c in clients.items():
        wait(lambda c=c, tid=tid: online(c) == set(store.ids) - {tid}, what=f"{tid} linked to all")

    put_products(clients["pos-1"])
    for n, c in enumerate(clients.values()):
        ok(c.post("/api/v1/orders", json={"waiter": f"w{n}", "items": [
            {"sku": "burger", "name": "Burger", "qty": 1, "unit_price_cents": 1590}]}))
        ok(c.post("/api/v1/inventory/burger/adjust", json={"delta": 10 + n, "reason": "delivery"}))
    wait(lambda: len({json.dumps(state(c)) for c in clients.values()}) == 1, what="convergence")
    assert len(state(clients["pos-1"])[0]) == 3 and state(clients["pos-1"])[1]["burger"] == 33

    # kill -9 the KDS; both sides write; it comes back on the same data dir and catches up
    procs["kds-1"].stop(signal.SIGKILL)
    wait(lambda: "kds-1" not in online(clients["pos-1"]), within=10, what="kds-1 marked offline")
    ok(clients["pos-1"].post("/api/v1/inventory/burger/adjust", json={"delta": -3, "reason": "sale"}))
    ok(clients["waiter-1"].post("/api/v1/orders", json={"waiter": "late", "items": [
        {"sku": "burger", "name": "Burger", "qty": 2, "unit_price_cents": 1590}]}))
    procs["kds-1"] = start(launch, store, "kds-1", backend)
    clients["kds-1"] = procs["kds-1"].client()
    ok(clients["kds-1"].post("/api/v1/inventory/burger/adjust", json={"delta": -1, "reason": "waste"}))
    wait(lambda: len({json.dumps(state(c)) for c in clients.values()}) == 1, what="convergence after restart")
    orders, stock = state(clients["kds-1"])
    assert len(orders) == 4 and stock["burger"] == 29

    peers = {p["terminal_id"]: p for p in ok(clients["pos-1"].get("/api/v1/peers"))["peers"]}
    assert peers["kds-1"]["online"] and peers["kds-1"]["type"] == "kds"
    status = ok(clients["pos-1"].get("/api/v1/status"))["mesh"]
    assert status["listen"] == f"127.0.0.1:{store.ports['pos-1']}"


def test_revoke_and_push_roster_with_the_cli(launch, tmp_path: Path) -> None:  # noqa: ANN001
    store = Store(tmp_path, ["pos-1", "pos-2", "pos-3"], ["pos", "pos", "pos"])
    procs = {tid: start(launch, store, tid, "asyncio") for tid in store.ids}
    clients = {tid: p.client() for tid, p in procs.items()}
    for tid, c in clients.items():
        wait(lambda c=c, tid=tid: online(c) == set(store.ids) - {tid}, what=f"{tid} linked to all")
    done = run_cli("store", "revoke", "--dir", str(tmp_path / "auth"), "--terminal-id", "pos-3")
    assert done.returncode == 0, done.stderr
    pushed = run_cli("roster", "push", str(tmp_path / "auth" / "roster.json"), "--api", procs["pos-1"].url)
    assert pushed.returncode == 0 and "adopted roster v5" in pushed.stdout, pushed.stdout + pushed.stderr
    wait(lambda: online(clients["pos-1"]) == {"pos-2"} and online(clients["pos-2"]) == {"pos-1"},
         what="pos-3 cut off everywhere")
    again = run_cli("roster", "push", str(tmp_path / "auth" / "roster.json"), "--api", procs["pos-2"].url)
    assert again.returncode == 0 and "already holds roster v5" in again.stdout
    peers = run_cli("peers", "--json", "--api", procs["pos-1"].url)
    listed = {p["terminal_id"]: p for p in json.loads(peers.stdout)["peers"]}
    assert listed["pos-3"]["revoked"] and not listed["pos-3"]["online"]
    report = run_cli("peers", "--api", procs["pos-1"].url).stdout
    assert "mDNS: off" in report and re.search(r"^  pos-2 .* since ", report, re.M), report
    assert re.search(r"^not linked:\n  pos-3 +pos +\S+ +revoked$", report, re.M), report
    assert "refused: 4003" in procs["pos-1"].stderr() + procs["pos-2"].stderr()
    # pos-3 keeps running, alone
    assert ok(clients["pos-3"].get("/api/v1/status"))["terminal_id"] == "pos-3"


def test_sigstopped_peer_is_marked_offline_by_heartbeat(launch, tmp_path: Path) -> None:  # noqa: ANN001
    store = Store(tmp_path, ["pos-1", "pos-2"], ["pos", "pos"])
    procs = {tid: start(launch, store, tid, "asyncio") for tid in store.ids}
    c = procs["pos-1"].client()
    wait(lambda: online(c) == {"pos-2"}, what="linked")
    procs["pos-2"].popen.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        wait(lambda: online(c) == set(), within=10, what="heartbeat timeout")
        assert time.monotonic() - started < 6.0  # dead_after 3.5 s, plus a tick
    finally:
        procs["pos-2"].popen.send_signal(signal.SIGCONT)
    wait(lambda: online(c) == {"pos-2"}, what="relinked after SIGCONT")
