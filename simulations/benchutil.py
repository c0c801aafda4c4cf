"""What the benchmark scripts share: percentiles, a free port, an enrolled store, terminals in child processes.

Imported by the scripts next to it as ``simulations.benchutil``; spawned children re-import
their script by module name (:func:`module_command`, or multiprocessing's spawn, which imports the
target's module by its name).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import socket
import sys
from collections.abc import Callable
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from peer.identity import Authority, save_roster


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile, the one every benchmark reports: no interpolation, so every
    figure is a sample that was measured, and the mesh and the star are ranked the same way."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def utc(text: str) -> datetime:
    """A terminal's UTC ISO-8601 time (``...Z``, as ``core.clock.iso`` writes it) as a datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def module_command(module: str, *args: str) -> list[str]:
    """The command that runs ``module`` (``simulations.partition``, ...) in a child process.

    By module name, never by file: the child inherits the parent's working directory and
    environment, so it imports the same ``simulations`` package (and the same product) the
    parent did; a script run by its path would sit outside the package and not find its
    neighbours."""
    return [sys.executable, "-m", module, *args]


def free_port() -> int:
    """A loopback port free right now (the kernel picks it; the tiny race until it is used is
    accepted: a benchmark that loses it fails loudly at bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def summary(ms: list[float]) -> dict[str, Any]:
    """p50, p99 and max of latency samples in ms."""
    return {"p50": round(percentile(ms, 50), 3), "p99": round(percentile(ms, 99), 3),
            "max": round(max(ms), 3), "samples": len(ms)}


def enrolled_store(root: Path, n: int, prefix: str = "t") -> list[str]:
    """A store authority in ``root`` and ``n`` POS terminals enrolled next to it; their ids.

    Every data directory gets the final roster: the first one enrolled would otherwise know only
    itself until the links bring the newer roster (and count itself the cashier's only voter).
    """
    authority = Authority.init(root / "auth", "bench")
    ids = [f"{prefix}{k:02d}" for k in range(n)]
    for tid in ids:
        authority.enroll(tid, "pos", root / tid)
    for tid in ids:
        save_roster(root / tid, authority.roster)
    return ids


class Children:
    """Child processes (spawned: terminals, replay peers, the star's relay and clients) and their
    pipes: ``target(conn, *args)`` runs in each child, which answers ``(kind, *payload)`` tuples,
    or ``("error", text)`` when it fails."""

    def __init__(self, target: Callable[..., None], args: list[tuple[Any, ...]]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs = []
        for child_args in args:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=target, args=(child, *child_args), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def recv(self, i: int, expect: str, timeout: float = 300) -> tuple[Any, ...]:
        if not self.conns[i].poll(timeout):
            raise TimeoutError(f"child {i} sent nothing within {timeout} s (waiting for {expect!r})")
        kind, *rest = self.conns[i].recv()
        if kind == "error":
            raise RuntimeError(rest[0])
        if kind != expect:
            raise RuntimeError(f"child {i} answered {kind!r}, not {expect!r}")
        return tuple(rest)

    def all(self, expect: str, timeout: float = 300) -> list[tuple[Any, ...]]:
        return [self.recv(i, expect, timeout) for i in range(len(self.conns))]

    def send(self, i: int, *message: Any) -> None:
        self.conns[i].send(message)

    def close(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.is_alive():
                with contextlib.suppress(OSError):
                    self.send(i, "stop")
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def run_child(conn: Connection, tid: str, backend: str, main: Callable[..., Any], *args: Any) -> None:
    """In a child: ``anyio.run(main, conn, *args)``; a failure goes back to the parent as
    ``("error", text)`` (the parent shows the child's own failure, not a broken pipe)."""
    import anyio  # noqa: PLC0415 - the parent never needs it here

    try:
        anyio.run(main, conn, *args, backend=backend)
    except BaseException as exc:
        leaf: BaseException = exc
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        conn.send(("error", f"{tid}: {type(leaf).__name__}: {leaf}"))
        raise


async def link_up(terminal: Any, addresses: list[str], count: int, within: float = 30.0) -> None:
    """Dial ``addresses`` and wait until ``terminal`` has ``count`` links."""
    import anyio  # noqa: PLC0415

    for address in addresses:
        terminal.mesh.dial(address)
    with anyio.fail_after(within):
        while len(terminal.mesh.links) < count:  # noqa: ASYNC110
            await anyio.sleep(0.01)
