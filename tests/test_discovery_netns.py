"""mDNS between separate hosts: ``meshpos run`` processes in network namespaces on one bridge.

No address is typed anywhere: every terminal finds the others by multicast on its own LAN
interface.  Root is required (the test skips, saying so, otherwise).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from peer.identity import Authority
from simulations.netlab import Host, LabUnavailable, Lan
from tests.procutil import BURGER, CLI, Proc, clean_env, run_args

pytestmark = pytest.mark.slow

API = "http://127.0.0.1:8700"


@pytest.fixture
def lan() -> Iterator[Lan]:
    try:
        lab = Lan()
    except LabUnavailable as exc:
        pytest.skip(f"no network namespaces here: {exc}")
    try:
        yield lab
    finally:
        lab.close()


class Terminal:
    """A ``meshpos run`` inside a lab host, reached through its local API."""

    def __init__(self, host: Host, data_dir: Path, log: Path, backend: str = "asyncio") -> None:
        self.host, self.data_dir, self.log, self.backend = host, data_dir, log, backend
        self.proc: Proc | None = None

    def start(self) -> Terminal:
        args = run_args(self.data_dir, terminal_id=None, type=None, backend=self.backend,
                        extra=["--api-port", "8700", "--peer-port", "8710", "--log-level", "DEBUG"])
        self.proc = Proc(self.host.exec_args(*args), self.log, clean_env(), self.data_dir.parent).wait_ready()
        return self

    def get(self, path: str) -> Any:
        code, body = self.host.http("GET", API + path)
        assert code == 200, (path, code, body)
        return body

    def post(self, path: str, body: Any, method: str = "POST") -> Any:
        code, answer = self.host.http(method, API + path, body)
        assert 200 <= code < 300, (path, code, answer)
        return answer

    def online(self) -> set[str]:
        return {p["terminal_id"] for p in self.get("/api/v1/peers")["peers"] if p["online"]}

    def order_ids(self) -> set[str]:
        return {o["id"] for o in self.get("/api/v1/orders")}


def wait(predicate: Callable[[], bool], within: float, what: str) -> float:
    """Poll until ``predicate``; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.1)
    return time.monotonic() - start


def test_three_hosts_discover_each_other_and_heal(lan: Lan, tmp_path: Path) -> None:
    ours = Authority.init(tmp_path / "auth", "Cantina Centro")
    theirs = Authority.init(tmp_path / "auth-2", "Pizzaria ao lado")
    names = [("pos-1", "pos", "asyncio"), ("kds-1", "kds", "trio"), ("waiter-1", "waiter", "asyncio")]
    terminals: dict[str, Terminal] = {}
    for tid, kind, backend in names:
        ours.enroll(tid, kind, tmp_path / tid)
        terminals[tid] = Terminal(lan.add_host(tid), tmp_path / tid, tmp_path / f"{tid}.log", backend)
    theirs.enroll("pos-1", "pos", tmp_path / "neighbour")  # same terminal id, another store
    neighbour = Terminal(lan.add_host("neighbour"), tmp_path / "neighbour", tmp_path / "neighbour.log")
    everyone = [*terminals.values(), neighbour]
    try:
        for t in everyone:
            t.start()
        pos, kds, waiter = terminals.values()
        ids = set(terminals)
        wait(lambda: all(t.online() == ids - {tid} for tid, t in terminals.items()), 15, "three linked by mDNS")

        # The neighbour's pos-1 is seen, never dialled, and explained.
        def neighbour_seen() -> list[dict[str, Any]]:
            return [s for s in pos.get("/api/v1/peers")["discovery"]["seen"] if s["store_id"] == theirs.store_id]

        wait(lambda: bool(neighbour_seen()), 10, "pos-1 sees the neighbour's advert")
        (seen,) = neighbour_seen()
        assert seen["addresses"] == [neighbour.host.address] and not seen["linked"]
        assert seen["why_not_linked"] == f"other store ({theirs.store_id})"
        assert neighbour.online() == set() and neighbour.get("/api/v1/peers")["refusals"] == []
        table = _cli(pos, "peers", "--api", API)  # the operator's view, run inside pos-1's namespace
        assert f"other store ({theirs.store_id})" in table and "kds-1" in table, table

        # Writes anywhere converge everywhere.
        pos.post("/api/v1/catalog/burger", {"name": "Burger", "price_cents": 1590, "station": "grill"}, "PUT")
        wait(lambda: all(t.get("/api/v1/inventory") for t in terminals.values()), 10, "catalog everywhere")
        first = waiter.post("/api/v1/orders", {"waiter": "ana", "items": [BURGER]})["id"]
        wait(lambda: all(first in t.order_ids() for t in terminals.values()), 10, "order everywhere")

        # The kitchen's Wi-Fi drops: the others mark it offline within 5 s; both sides keep writing.
        kds.host.cut()
        took = wait(lambda: "kds-1" not in pos.online() and "kds-1" not in waiter.online(), 8, "kds-1 offline")
        assert took <= 5.0, f"offline after {took:.1f} s"
        front = pos.post("/api/v1/orders", {"waiter": "bruno", "items": [BURGER]})["id"]
        kds.post(f"/api/v1/orders/{first}", {"status": "sent"}, "PATCH")
        kitchen_view = kds.order_ids()
        assert front not in kitchen_view
        kds.host.plug()
        wait(lambda: all(t.online() == ids - {tid} for tid, t in terminals.items()), 15, "healed")
        wait(lambda: all(front in t.order_ids() for t in terminals.values()), 10, "front order reaches kds-1")
        wait(lambda: all(t.get(f"/api/v1/orders/{first}")["status"] == "sent" for t in terminals.values()),
             10, "kitchen status reaches the front")

        # A box restarts on a new address (killed, new DHCP lease): found again, no address typed.
        assert waiter.proc is not None
        waiter.proc.popen.send_signal(signal.SIGKILL)
        waiter.proc.popen.wait()
        waiter.host.readdress(99)
        waiter.start()
        wait(lambda: all(t.online() == ids - {tid} for tid, t in terminals.items()), 15, "waiter-1 back")
        peers = {p["terminal_id"]: p for p in pos.get("/api/v1/peers")["peers"]}
        assert peers["waiter-1"]["address"].startswith(f"{waiter.host.address}:")

        def dialling(t: Terminal, tid: str) -> list[str]:
            """Where ``t`` would dial ``tid`` (the old address may linger in mDNS caches until its
            TTL; the mesh tries each in turn and drops one that answers as another terminal)."""
            seen = t.get("/api/v1/peers")["discovery"]["seen"]
            return next(s["dialling"] for s in seen if s["terminal_id"] == tid)

        wait(lambda: all(f"{waiter.host.address}:8710" in dialling(t, "waiter-1") for t in (pos, kds)), 10,
             "the others dial waiter-1's new address")

        # A new lease while running (no restart): the box re-advertises, the others follow.
        kds.host.readdress(98)
        wait(lambda: all(f"{kds.host.address}:8710" in dialling(t, "kds-1") for t in (pos, waiter)), 20,
             "the others dial kds-1's new address")
        wait(lambda: all(t.online() == ids - {tid} for tid, t in terminals.items()), 20, "kds-1 relinked")
        late = pos.post("/api/v1/orders", {"waiter": "carla", "items": [BURGER]})["id"]
        wait(lambda: late in kds.order_ids(), 10, "writes reach kds-1 at its new address")
        assert neighbour.online() == set()
    finally:
        for t in everyone:
            if t.proc is not None and t.proc.popen.poll() is None:
                t.proc.popen.kill()
                t.proc.popen.wait()


def _cli(t: Terminal, *args: str) -> str:
    done = subprocess.run(t.host.exec_args(*CLI, *args), capture_output=True, text=True, env=clean_env(),
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout
