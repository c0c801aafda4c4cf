"""What the tests of real ``meshpos`` processes share: starting one (the ``launch`` fixture,
re-exported by conftest.py), the CLI, loopback HTTP helpers and a store of terminals that know
each other's peer ports.  Test modules import from here, never from each other."""

from __future__ import annotations

import hashlib
import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from peer.identity import Authority

CLI = [sys.executable, "-m", "meshpos.cli"]
READY = re.compile(r"^meshpos terminal (\S+) \((\w+)\) serving (http://\S+)$")
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
BACKENDS = ["asyncio", "trio"]
STAGES = ["sent", "preparing", "ready", "served", "paid", "closed"]
BURGER = {"sku": "burger", "name": "Burger", "qty": 1, "unit_price_cents": 1590, "station": "grill"}
FRIES = {"sku": "fries", "name": "Fries", "qty": 2, "unit_price_cents": 690, "station": "fryer"}


# -- process helpers -----------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any ``MESHPOS_*`` setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHPOS_")}
    env.update(extra)
    return env


class Proc:
    """One ``meshpos run`` process; stdout is read line by line on a thread, stderr goes to a file."""

    def __init__(self, args: list[str], stderr_path: Path, env: dict[str, str], cwd: Path) -> None:
        self.args = args
        self.stderr_path = stderr_path
        with stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                          env=env, cwd=cwd, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.url = ""
        self.terminal_id = ""
        self.type = ""
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def ready_or_exit(self, timeout: float = READY_TIMEOUT) -> int | None:
        """``None`` once the ready line appears, else the exit code of a process that gave up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.popen.kill()
                self.popen.wait()
                pytest.fail(f"no ready line within {timeout}s from {self.args}\nstderr:\n{self.stderr()}")
            if line is None:
                return self.popen.wait()
            self.stdout.append(line)
            match = READY.match(line)
            if match:
                self.terminal_id, self.type, self.url = match.groups()
                return None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Proc:
        code = self.ready_or_exit(timeout)
        if code is not None:
            pytest.fail(f"{self.args} exited ({code}) before it was ready\nstdout:\n"
                        + "\n".join(self.stdout) + f"\nstderr:\n{self.stderr()}")
        return self

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            pytest.fail(f"{self.args} did not exit within {timeout}s\nstderr:\n{self.stderr()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        os.kill(self.pid, sig)
        return self.wait()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=15)


def run_args(
    data_dir: Path | None, *, terminal_id: str | None = "pos-1", type: str | None = "pos",
    backend: str | None = None, extra: list[str] | None = None,
) -> list[str]:
    args = [*CLI, "run"]
    if data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    if terminal_id is not None:
        args += ["--terminal-id", terminal_id]
    if type is not None:
        args += ["--type", type]
    if backend is not None:
        args += ["--backend", backend]
    return args + (extra if extra is not None else ["--api-port", "0"])


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """``launch(data_dir, terminal_id="pos-1", backend="asyncio", extra=[...], env={...})``."""
    started: list[Proc] = []

    def start(
        data_dir: Path | None = None, *, terminal_id: str | None = "pos-1", type: str | None = "pos",
        backend: str | None = None, extra: list[str] | None = None, env: dict[str, str] | None = None,
        ready: bool = True,
    ) -> Proc:
        args = run_args(data_dir, terminal_id=terminal_id, type=type, backend=backend, extra=extra)
        proc = Proc(args, tmp_path / f"stderr-{len(started)}.log", env or clean_env(), tmp_path)
        started.append(proc)
        return proc.wait_ready() if ready else proc

    yield start
    for proc in started:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A one-shot ``meshpos`` command (demo, backup, a run expected to refuse), to completion."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env or clean_env(), cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=timeout, check=False)


def ok(resp: httpx.Response) -> Any:
    assert resp.is_success, f"{resp.request.method} {resp.request.url} -> {resp.status_code}: {resp.text}"
    return resp.json()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(directory: Path) -> dict[str, str]:
    """Every file's digest, except the lock file (it names whichever process started last)."""
    return {p.name: sha256(p) for p in sorted(directory.iterdir()) if p.name != "meshpos.lock"}


def put_products(c: httpx.Client) -> None:
    ok(c.put("/api/v1/catalog/burger", json={"name": "Burger", "price_cents": 1590, "station": "grill"}))
    ok(c.put("/api/v1/catalog/fries", json={"name": "Fries", "price_cents": 690, "station": "fryer"}))


def new_order(c: httpx.Client, waiter: str, n: int) -> dict[str, Any]:
    items = [BURGER] if n % 2 else [BURGER, FRIES]
    order = ok(c.post("/api/v1/orders", json={"waiter": waiter, "items": items, "notes": f"#{n}"}))
    assert order["status"] == "open"
    return order


def set_status(c: httpx.Client, order_id: str, status: str) -> dict[str, Any]:
    order = ok(c.patch(f"/api/v1/orders/{order_id}", json={"status": status}))
    assert order["status"] == status
    return order


def quantity(c: httpx.Client, sku: str) -> int:
    return ok(c.get(f"/api/v1/inventory/{sku}"))["quantity"]


def all_orders(c: httpx.Client) -> dict[str, dict[str, Any]]:
    return {o["id"]: o for o in ok(c.get("/api/v1/orders"))}


def db_meta(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT key, value FROM meta"))
    finally:
        conn.close()


# -- a store of terminals on loopback ------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Store:
    """An authority and ``n`` enrolled terminals that know each other's peer ports."""

    def __init__(self, tmp: Path, ids: list[str], kinds: list[str]) -> None:
        self.tmp = tmp
        self.authority = Authority.init(tmp / "auth", "Cantina Centro")
        self.ids = ids
        self.ports = dict(zip(ids, free_ports(len(ids)), strict=True))
        for tid, kind in zip(ids, kinds, strict=True):
            self.authority.enroll(tid, kind, tmp / tid)

    def args(self, tid: str) -> list[str]:
        peers = [a for other in self.ids if other != tid for a in ("--peer", f"127.0.0.1:{self.ports[other]}")]
        return ["--api-port", "0", "--peer-host", "127.0.0.1", "--peer-port", str(self.ports[tid]), "--no-mdns",
                *peers]


def start(launch: Callable[..., Proc], store: Store, tid: str, backend: str) -> Proc:
    return launch(store.tmp / tid, terminal_id=None, type=None, backend=backend, extra=store.args(tid))


def online(c: httpx.Client) -> set[str]:
    return {p["terminal_id"] for p in ok(c.get("/api/v1/peers"))["peers"] if p["online"]}


def wait(predicate: Callable[[], bool], within: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        time.sleep(0.05)


def state(c: httpx.Client) -> Any:
    orders = sorted((o["id"], o["status"], o["total_cents"]) for o in ok(c.get("/api/v1/orders")))
    stock = {p["sku"]: p["quantity"] for p in ok(c.get("/api/v1/inventory"))}
    return orders, stock
