"""The in-memory world: real terminals in one process on trio's virtual clock, joined by the
in-memory network of ``peer/transport.py``, that a scenario splits, heals and crashes."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from core.yupdate import decode_state_vector
from meshpos.config import TerminalConfig
from meshpos.terminal import Terminal
from peer.transport import MemoryNetwork, Radio
from simulations.partition.checks import missing_updates
from simulations.partition.faults import Fault
from simulations.partition.restaurant import EPOCH, drawer_of, enroll, kinds_for
from simulations.partition.workload import Box, TerminalBox, Workload

PORT = 7000
LAN_LATENCY = 0.001  # virtual seconds per message on the simulated LAN
SETTLE_SECONDS = 120.0  # virtual: how long the final heal may take before the run fails


class Simulation:
    def __init__(self, root: Path, n: int, seed: int, fault: Fault | None = None,
                 max_actions: int | None = None) -> None:
        self.root, self.seed, self.fault = root, seed, fault
        self._fault_calls = 0
        self.rng = random.Random(seed)
        self.kinds = kinds_for(n)
        self.net = MemoryNetwork(latency=LAN_LATENCY, rng=random.Random(self.rng.getrandbits(64)))
        self.terminals: dict[str, Terminal] = {}
        self._stops: dict[str, anyio.Event] = {}
        self._stopped: dict[str, anyio.Event] = {}
        self._lives: dict[str, int] = {}  # terminal id -> how many times it was started
        self.timeline: list[dict[str, Any]] = []
        self.work = Workload(self.rng, self.now, max_actions)
        self.skew: dict[str, float] = {}  # terminal id -> clock offset (seconds)
        self._tg: anyio.abc.TaskGroup | None = None
        self._t0 = 0.0
        self.drawers = [drawer_of(tid) for tid, kind in self.kinds if kind == "pos"]

    # -- the world -------------------------------------------------------------------------------

    def now(self) -> float:
        return round(anyio.current_time() - self._t0, 3)

    def host(self, tid: str) -> str:
        return f"host-{tid}"

    def mark(self, what: str, **data: Any) -> None:
        self.timeline.append({"t": self.now(), "event": what, **data})

    def clock_of(self, tid: str) -> Callable[[], datetime]:
        return lambda: EPOCH + timedelta(seconds=anyio.current_time() - self._t0 + self.skew.get(tid, 0.0))

    async def setup(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        self._t0 = anyio.current_time()
        enroll(self.root, self.kinds)
        for tid, _ in self.kinds:
            await self.start(tid)
        await self.until(self.all_linked, "linked")

    async def start(self, tid: str) -> None:
        assert self._tg is not None
        self._stops[tid], self._stopped[tid] = anyio.Event(), anyio.Event()
        started = anyio.Event()
        peers = [f"{self.host(other)}:{PORT}" for other, _ in self.kinds if other != tid]
        config = TerminalConfig(data_dir=self.root / tid, terminal_id=tid, type=dict(self.kinds)[tid], api_port=0,
                                mdns=False, peers=peers)
        self._lives[tid] = self._lives.get(tid, 0) + 1
        # Ids from the seed, the terminal and which life of it this is (a string seeds the same
        # generator in every process), without drawing on the world's generator.
        ids = random.Random(f"{self.seed}:{tid}:{self._lives[tid]}").randbytes
        terminal = Terminal(config, clock=self.clock_of(tid), transport=self.net.transport(self.host(tid), PORT),
                            storage_threads=False, rng=random.Random(self.rng.getrandbits(64)), id_source=ids,
                            monotonic=anyio.current_time)

        async def life() -> None:
            try:
                async with terminal.running() as t:
                    self.terminals[tid] = t
                    self._plant(t)
                    started.set()
                    await self._stops[tid].wait()
            finally:
                self.terminals.pop(tid, None)
                self._stopped[tid].set()

        self._tg.start_soon(life)
        await started.wait()

    def _plant(self, t: Terminal) -> None:
        """Arm :attr:`fault` on ``t`` (again after a restart: the count goes on)."""
        fault = self.fault
        if fault is None or (fault.on is not None and t.config.type != fault.on):
            return
        *path, name = fault.method.split(".")
        owner: Any = t
        for step in path:
            owner = getattr(owner, step)
        real = getattr(owner, name)

        def hit(args: tuple[Any, ...]) -> bool:
            if fault.only is not None and fault.only not in args:
                return False
            self._fault_calls += 1
            if self._fault_calls == fault.nth:
                self.mark("fault", fault=fault.name, terminal=t.config.terminal_id)
            return self._fault_calls == fault.nth or (fault.lasting and self._fault_calls > fault.nth)

        if inspect.iscoroutinefunction(real):
            async def faulty(*args: Any, **kwargs: Any) -> Any:
                return fault.answer if hit(args) else await real(*args, **kwargs)
        else:
            def faulty(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
                return fault.answer if hit(args) else real(*args, **kwargs)

        setattr(owner, name, faulty)

    async def crash(self, tid: str) -> None:
        """Stop a terminal: its data directory stays, its memory (holds, links, leases) is gone."""
        await self.stop(tid)
        self.mark("crash", terminal=tid)

    async def stop(self, tid: str) -> None:
        self._stops[tid].set()
        await self._stopped[tid].wait()

    async def restart(self, tid: str) -> None:
        await self.start(tid)
        self.mark("restart", terminal=tid)

    def split(self, *groups: list[str]) -> None:
        """Cut the network into ``groups``; the terminals not named stay together (the rest)."""
        named = {tid for g in groups for tid in g}
        rest = [tid for tid, _ in self.kinds if tid not in named]
        parts = [list(g) for g in groups] + ([rest] if rest else [])
        self.net.split(*[{self.host(t) for t in g} for g in parts])
        self.mark("split", groups=[sorted(g) for g in parts])

    def isolate(self, tids: list[str]) -> None:
        """Client isolation on the access point: ``tids`` reach the others but not each other."""
        self.net.isolate({self.host(t) for t in tids})
        self.mark("isolate", terminals=sorted(tids))

    def radio(self, tids: list[str], *, jitter: float, loss: float) -> None:
        """A poor radio for ``tids``: up to ``jitter`` seconds more per message, ``loss`` of the
        segments lost (and sent again by TCP after its retransmission timeout)."""
        for t in tids:
            self.net.radios[self.host(t)] = Radio(jitter=jitter, loss=loss)
        self.mark("radio", terminals=sorted(tids), jitter=jitter, loss=loss)

    def heal(self) -> None:
        self.net.heal()
        self.mark("heal")

    async def sleep(self, seconds: float) -> None:
        """Scenario time (virtual here; real, optionally scaled, in simulations/netns.py)."""
        await anyio.sleep(seconds)

    def box(self, tid: str) -> Box | None:
        t = self.terminals.get(tid)
        return None if t is None else TerminalBox(t)

    def all_linked(self) -> bool:
        want = len(self.kinds) - 1
        return len(self.terminals) == len(self.kinds) and all(len(t.mesh.links) == want  # type: ignore[union-attr]
                                                              for t in self.terminals.values())

    async def until(self, done: Callable[[], bool], what: str, within: float = SETTLE_SECONDS) -> None:
        with anyio.fail_after(within):
            while not done():  # noqa: ASYNC110 - virtual time: a poll costs nothing real
                await anyio.sleep(0.05)
        self.mark(what)

    # -- after the run ---------------------------------------------------------------------------

    def divergence(self) -> dict[str, int]:
        return missing_updates({tid: {name: decode_state_vector(t.host.get(name).doc.get_state())  # type: ignore[union-attr]
                                      for name in t.host.names()} for tid, t in self.terminals.items()})

    async def sample(self) -> None:
        while True:
            missing = self.divergence()
            self.timeline.append({"t": self.now(), "event": "divergence", "missing": missing})
            await anyio.sleep(1.0)

    def settled(self) -> bool:
        if not self.all_linked() or any(self.divergence().values()):
            return False
        for drawer in self.drawers:
            lists = [t.cashier.states[drawer].committed if drawer in t.cashier.states else []
                     for t in self.terminals.values()]
            if not all(x == lists[0] for x in lists[1:]):
                return False
        return not any(t.cashier.requests.pending(d) for t in self.terminals.values() for d in self.drawers)
