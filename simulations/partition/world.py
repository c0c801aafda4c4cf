"""The in-memory world: real terminals in one process on trio's virtual clock, joined by the
in-memory network of ``peer/transport.py``, that a scenario splits, heals and crashes."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

if TYPE_CHECKING:
    from meshpos.hq.service import Hq

from core.yupdate import decode_state_vector
from meshpos.config import TerminalConfig
from meshpos.terminal import Terminal
from peer.transport import MemoryNetwork, Radio
from simulations.partition.checks import missing_updates
from simulations.partition.faults import Fault
from simulations.partition.propagation import Propagation
from simulations.partition.restaurant import EPOCH, HQ_ID, drawer_of, enroll, kinds_for
from simulations.partition.workload import Box, TerminalBox, Workload

PORT = 7000
HQ_HOST = "hq"  # the HQ's host on the in-memory network: across the WAN
LAN_LATENCY = 0.001  # virtual seconds per message on the simulated LAN
SETTLE_SECONDS = 120.0  # virtual: how long the final heal may take before the run fails


class Simulation:
    def __init__(self, root: Path, n: int, seed: int, fault: Fault | None = None,
                 max_actions: int | None = None, hq_dsn: str | None = None) -> None:
        """``hq_dsn``: the store has an HQ landing in that PostgreSQL database (on host ``hq``
        of the in-memory network, behind the WAN: :meth:`wan`)."""
        self.root, self.seed, self.fault = root, seed, fault
        self.hq_dsn = hq_dsn
        self.hq: Hq | None = None
        self.wan_up = True
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
        self._lan_groups: list[list[str]] = [[tid for tid, _ in self.kinds]]
        self.drawers = [drawer_of(tid) for tid, kind in self.kinds if kind == "pos"]
        self.propagation = Propagation(self.now)

    def _topology_changed(self) -> None:
        clean = not any(r.jitter or r.loss for r in self.net.radios.values())
        self.propagation.topology(connected=len(self._lan_groups) == 1 and clean, up=set(self.terminals),
                                  every={tid for tid, _ in self.kinds})

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
        enroll(self.root, self.kinds, hq=self.hq_dsn is not None)
        if self.hq_dsn is not None:
            await self._start_hq()
        for tid, _ in self.kinds:
            await self.start(tid)
        await self.until(self.all_linked, "linked")

    async def start(self, tid: str) -> None:
        assert self._tg is not None
        self._stops[tid], self._stopped[tid] = anyio.Event(), anyio.Event()
        started = anyio.Event()
        peers = [f"{self.host(other)}:{PORT}" for other, _ in self.kinds if other != tid]
        config = TerminalConfig(data_dir=self.root / tid, terminal_id=tid, type=dict(self.kinds)[tid], api_port=0,
                                mdns=False, peers=peers,
                                hq=[f"{HQ_HOST}:{PORT}"] if self.hq_dsn is not None else [])
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
                    self.propagation.watch(tid, t)
                    self._topology_changed()
                    started.set()
                    await self._stops[tid].wait()
            finally:
                self.terminals.pop(tid, None)
                self._topology_changed()
                self._stopped[tid].set()

        self._tg.start_soon(life)
        await started.wait()

    async def _start_hq(self) -> None:
        """The chain's HQ on host ``hq``: PostgreSQL called inline (``threads=False``), so the
        run stays on virtual time, one run per seed."""
        from meshpos.hq.service import Hq  # noqa: PLC0415 - psycopg only in the runs that have an HQ

        assert self._tg is not None and self.hq_dsn is not None
        hq = Hq(dsn=self.hq_dsn, enrollments=[self.root / HQ_ID], clock=self.clock_of(HQ_ID), process="hq-sim",
                transport=self.net.transport(HQ_HOST, PORT), threads=False)
        started = anyio.Event()

        async def life() -> None:
            async with hq.running():
                self.hq = hq
                started.set()
                await anyio.sleep_forever()

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
            if fault.where is not None and not fault.where(args):
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
        """Cut the network into ``groups``; the terminals not named stay together (the rest).
        The HQ stays reachable from every group while the WAN is up (each side has its uplink)."""
        named = {tid for g in groups for tid in g}
        rest = [tid for tid, _ in self.kinds if tid not in named]
        parts = [list(g) for g in groups] + ([rest] if rest else [])
        self._lan_groups = parts
        self._apply_groups()
        self._topology_changed()
        self.mark("split", groups=[sorted(g) for g in parts])

    def _apply_groups(self) -> None:
        groups = [{self.host(t) for t in g} for g in self._lan_groups]
        if self.hq_dsn is not None and self.wan_up:
            groups = [g | {HQ_HOST} for g in groups]
        if len(groups) == 1 and (self.hq_dsn is None or self.wan_up):
            self.net.groups = None  # everyone reaches everyone
        else:
            self.net.split(*groups)  # a host in no group (the HQ while the WAN is down) is alone

    def wan(self, up: bool) -> None:
        """The store's internet: the HQ (when there is one) is reachable or not; the LAN is as it was."""
        self.wan_up = up
        self._apply_groups()
        self.mark("wan", up=up, hq=self.hq_dsn is not None)

    def isolate(self, tids: list[str]) -> None:
        """Client isolation on the access point: ``tids`` reach the others but not each other."""
        self.net.isolate({self.host(t) for t in tids})
        self._topology_changed()
        self.mark("isolate", terminals=sorted(tids))

    def radio(self, tids: list[str], *, jitter: float, loss: float) -> None:
        """A poor radio for ``tids``: up to ``jitter`` seconds more per message, ``loss`` of the
        segments lost (and sent again by TCP after its retransmission timeout)."""
        for t in tids:
            self.net.radios[self.host(t)] = Radio(jitter=jitter, loss=loss)
        self._topology_changed()
        self.mark("radio", terminals=sorted(tids), jitter=jitter, loss=loss)

    def heal(self) -> None:
        """The LAN whole again (the WAN stays as :meth:`wan` left it)."""
        self.net.heal()  # client isolation ends too
        self._lan_groups = [[tid for tid, _ in self.kinds]]
        self._apply_groups()
        self._topology_changed()
        self.mark("heal")

    async def sleep(self, seconds: float) -> None:
        """Scenario time (virtual here; real, optionally scaled, in simulations/netns.py)."""
        await anyio.sleep(seconds)

    def box(self, tid: str) -> Box | None:
        t = self.terminals.get(tid)
        return None if t is None else TerminalBox(t)

    def all_linked(self) -> bool:
        """Every terminal up and linked to every other (and to the HQ while the WAN is up)."""
        others = {tid for tid, _ in self.kinds}
        if len(self.terminals) != len(self.kinds):
            return False
        for tid, t in self.terminals.items():
            want = (others - {tid}) | ({HQ_ID} if self.hq_dsn is not None and self.wan_up else set())
            if set(t.mesh.links) != want:  # type: ignore[union-attr]
                return False
        return True

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
        if any(t.cashier.requests.pending(d) for t in self.terminals.values() for d in self.drawers):
            return False
        if self.hq_dsn is not None:  # the HQ says it landed everything (each terminal's view of it)
            for t in self.terminals.values():
                status = t.hq_status()
                if status["pending_updates"] or status["pending_ledger_entries"]:
                    return False
        return True
