"""The partition scenarios with real terminals: ``meshpos run`` processes on separate hosts.

    sudo python -m simulations.netns [--scenario NAME] [--terminals N] [--seed S] [--speed X] [--plot FILE.png]

Each terminal is a ``meshpos run`` process in its own network namespace, plugged into a bridge
(simulations/netlab.py): the terminals find each other by real mDNS, link over real TLS, keep
real SQLite files.  The scenarios and the workload are simulations/partition/'s: a split is
the switch cut into groups (a lone box's port taken down, a larger group moved to a switch of
its own), a crash is SIGKILL, a restart is a new process on the same data directory.  Every
operation and every check goes through a terminal's local API, from inside its namespace.  A
scenario with an HQ gets ``meshpos hq run`` on a host across a WAN bridge (the WAN cut is its
port going down) and a PostgreSQL server of the run's own, reached over its unix socket.

After the final heal it waits until the terminals agree (every one linked to every other, the
same state vectors, the same drawer ledgers, nothing provisional pending), then runs the
simulator's checkers on what each API shows and prints the same JSON report (wall-clock
seconds; a seed fixes the workload's choices and the scenario, not the timing of real
processes).  Differences from the simulator: clocks are the machine's and radios are perfect (a
scenario's clock skew, jitter and loss are listed under ``not_simulated``); ``--speed 2`` runs
the scenario script twice as fast.  Client isolation is the bridge's own port isolation.

It needs root (namespaces) and removes its namespaces and processes when it ends, fails or is
interrupted (Ctrl-C, SIGTERM); a run killed with SIGKILL takes its terminals with it (they die
with their parent) and the next run, or ``--clean``, removes the namespaces and the PostgreSQL
server it left.

Why one module of ~420 lines: it is one runner - its terminal processes, the scenario's faults as
bridge and port changes, the wait for agreement and the report read one another's state; the
hosts and the bridge are simulations/netlab.py, the scenarios and checks simulations/partition/.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio

from core.errors import MeshposError
from simulations import partition
from simulations.benchutil import utc
from simulations.netlab import Agent, Host, LabUnavailable, Lan, pg_prefix, sweep_leftovers
from simulations.partition import MENU, STOCK, Scenario, Workload, check, drawer_of, kinds_for, missing_updates
from simulations.partition.checks import check_hq, hq_snapshot
from simulations.partition.propagation import BOUND_S, REAL_BOUND_S, from_arrivals, links_connected
from simulations.partition.propagation import check as propagation_check
from simulations.partition.propagation import report as propagation_report
from simulations.partition.propagation import timeline as propagation_timeline
from simulations.partition.restaurant import HQ_ID
from simulations.postgres import PostgresServer

API_PORT = 8700
PEER_PORT = 8710
HQ_PORT = 8720  # the HQ's link port, on its WAN address
HQ_API_PORT = 8730
READY_SECONDS = 30.0
SETTLE_SECONDS = 120.0  # after the final heal, before the run fails
PR_SET_PDEATHSIG = 1


class Refused(MeshposError):
    """A terminal's API said no (its ``{code, message}``), or did not answer (code 0)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ApiBox:
    """simulations/partition's :class:`~simulations.partition.Box` over one terminal's local API."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = await self.agent.request(method, path, body)
        if 200 <= status < 300:
            return answer
        if isinstance(answer, dict) and "code" in answer:
            raise Refused(answer["code"], answer.get("message", ""))
        raise Refused(status, str(answer))

    async def orders(self) -> list[dict[str, Any]]:
        return await self.call("GET", "/api/v1/orders")

    async def create_order(self, *, table: str, waiter: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.call("POST", "/api/v1/orders", {"table": table, "waiter": waiter, "items": items})

    async def adjust_stock(self, sku: str, delta: int, reason: str) -> None:
        await self.call("POST", f"/api/v1/inventory/{sku}/adjust", {"delta": delta, "reason": reason})

    async def set_order_status(self, order_id: str, status: str) -> None:
        await self.call("PATCH", f"/api/v1/orders/{order_id}", {"status": status})

    async def set_item_status(self, order_id: str, item_id: str, status: str) -> None:
        await self.call("PATCH", f"/api/v1/orders/{order_id}/items/{item_id}", {"kitchen_status": status})

    async def pay(self, drawer: str, *, order_id: str, amount_cents: int, method: str, op_id: str,
                  user: str) -> dict[str, Any]:
        return await self.call("POST", f"/api/v1/cashier/drawers/{drawer}/payments", {
            "order_id": order_id, "amount_cents": amount_cents, "method": method, "op_id": op_id, "user": user,
            "allow_provisional": True})

    async def observe(self, drawers: list[str]) -> dict[str, Any]:
        ledgers = {}
        for drawer in drawers:
            try:
                d = await self.call("GET", f"/api/v1/cashier/drawers/{drawer}?from_position=0")
            except Refused as exc:
                if exc.code != 4007:  # not found: nothing reached this terminal
                    raise
                d = {"entries": [], "provisional": []}
            ledgers[drawer] = {"entries": d["entries"], "provisional": d["provisional"]}
        return {"orders": {o["id"]: o for o in await self.orders()},
                "tables": await self.call("GET", "/api/v1/tables"),
                "stock": {v["sku"]: v["quantity"] for v in await self.call("GET", "/api/v1/inventory")},
                "drawers": ledgers}

    async def state_vectors(self) -> dict[str, dict[str, int]]:
        status = await self.call("GET", "/api/v1/status")
        return {name: doc["state_vector"] for name, doc in status["documents"].items()}

    async def online(self) -> set[str]:
        return {p["terminal_id"] for p in (await self.call("GET", "/api/v1/peers"))["peers"] if p["online"]}


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the runner dies, however it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Restaurant:
    """The boxes of one run: a lab LAN, a ``meshpos run`` per box, an API agent per box; with
    ``hq_dsn``, the chain's HQ too - ``meshpos hq run`` on a host across the WAN
    (:meth:`~simulations.netlab.Lan.add_wan`) landing in the PostgreSQL database of that DSN.

    Also what simulations/bench_heal.py builds on.  Use :func:`restaurant`, which tears it down.
    """

    def __init__(self, lan: Lan, root: Path, kinds: list[tuple[str, str]], log_level: str = "INFO",
                 hq_dsn: str | None = None, env: Callable[[Restaurant, str], dict[str, str]] | None = None) -> None:
        """``env(restaurant, terminal id)``: ``MESHPOS_*`` settings of that terminal's own (static
        peers by their hosts' addresses, say)."""
        self.lan, self.root, self.kinds, self.log_level = lan, root, kinds, log_level
        self.env = env
        self.hosts = {tid: lan.add_host(tid) for tid, _ in kinds}
        self.hq_dsn = hq_dsn
        self.hq_host: Host | None = lan.add_wan("hq") if hq_dsn is not None else None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.agents: dict[str, Agent] = {}
        self.boxes: dict[str, ApiBox] = {}
        self.up: set[str] = set()  # started and answering
        self.pg: PostgresServer | None = None  # the HQ's server (:func:`restaurant` sets it)

    async def open(self) -> None:
        partition.enroll(self.root, self.kinds, hq=self.hq_host is not None)
        if self.hq_host is not None:
            self.agents[HQ_ID] = await self.hq_host.agent(HQ_API_PORT)
            await self._spawn(HQ_ID, self.hq_host, [
                "hq", "run", "--postgres", str(self.hq_dsn), "--enrollment", str(self.root / HQ_ID),
                "--listen", f"{self.hq_host.address}:{HQ_PORT}", "--api-port", str(HQ_API_PORT),
                "--process-name", "hq-netns"], "/hq/v1/status", {})
        for tid, _ in self.kinds:
            self.agents[tid] = await self.hosts[tid].agent(API_PORT)
            self.boxes[tid] = ApiBox(self.agents[tid])
        async with anyio.create_task_group() as tg:
            for tid, _ in self.kinds:
                tg.start_soon(self.start, tid)

    async def start(self, tid: str) -> None:
        """Start ``tid``'s terminal and wait until its API answers."""
        # With an HQ: its WAN address, and mDNS kept to the LAN (eth1 is the uplink).
        env = {} if self.hq_host is None else {"MESHPOS_HQ": f"{self.hq_host.address}:{HQ_PORT}",
                                               "MESHPOS_MDNS_INTERFACES": "eth0"}
        if self.env is not None:
            env.update(self.env(self, tid))
        await self._spawn(tid, self.hosts[tid], [
            "run", "--data-dir", str(self.root / tid), "--api-port", str(API_PORT),
            "--peer-port", str(PEER_PORT)], "/api/v1/status", env)
        self.up.add(tid)

    async def _spawn(self, name: str, host: Host, command: list[str], ready: str, env: dict[str, str]) -> None:
        """``meshpos <command>`` in ``host``'s namespace, logging to ``<name>.log``; returns once
        ``GET ready`` answers 200 through ``name``'s agent."""
        log = (self.root / f"{name}.log").open("ab")
        args = [sys.executable, "-m", "meshpos.cli", *command, "--log-level", self.log_level]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("MESHPOS_")}, **env}
        self.procs[name] = subprocess.Popen(  # noqa: ASYNC220 - fork and exec; readiness is polled below
            host.exec_args(*args), stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
            preexec_fn=_die_with_parent)
        log.close()
        deadline = time.monotonic() + READY_SECONDS
        while (await self.agents[name].request("GET", ready))[0] != 200:
            if self.procs[name].poll() is not None or time.monotonic() > deadline:
                tail = (self.root / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} did not start (exit {self.procs[name].poll()}):\n{tail}")
            await anyio.sleep(0.1)

    def kill(self, tid: str, sig: int = signal.SIGKILL) -> None:
        self.up.discard(tid)
        proc = self.procs.pop(tid, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def box(self, tid: str) -> ApiBox | None:
        return self.boxes[tid] if tid in self.up else None

    async def each(self, fn: Callable[[ApiBox], Any], tids: list[str] | None = None) -> dict[str, Any]:
        """``fn`` on every running box (or ``tids``) at once."""
        out: dict[str, Any] = {}

        async def one(tid: str) -> None:
            out[tid] = await fn(self.boxes[tid])

        async with anyio.create_task_group() as tg:
            for tid in tids if tids is not None else sorted(self.up):
                tg.start_soon(one, tid)
        return out

    async def all_linked(self, tids: list[str] | None = None) -> bool:
        group = tids if tids is not None else [tid for tid, _ in self.kinds]
        online = await self.each(lambda b: b.online(), group)
        return all(online[tid] >= set(group) - {tid} for tid in group)

    async def same_state(self, tids: list[str] | None = None) -> bool:
        vectors = await self.each(lambda b: b.state_vectors(), tids)
        return not any(missing_updates(vectors).values())

    async def hq_has_everything(self) -> bool:
        """Every terminal linked to the HQ, and counting nothing it has not landed."""
        statuses = await self.each(lambda b: b.call("GET", "/api/v1/status"))
        return all(s["hq"]["linked"] and not s["hq"]["pending_updates"] and not s["hq"]["pending_ledger_entries"]
                   for s in statuses.values())

    def close(self) -> None:
        for tid in list(self.procs):
            self.kill(tid, signal.SIGTERM)


@contextlib.asynccontextmanager
async def restaurant(kinds: list[tuple[str, str]], root: Path | None = None,
                     log_level: str = "INFO", hq: bool = False,
                     env: Callable[[Restaurant, str], dict[str, str]] | None = None) -> AsyncIterator[Restaurant]:
    """A running :class:`Restaurant` (with ``hq``: its HQ and a PostgreSQL server of its own,
    as :attr:`Restaurant.pg`); processes, agents, namespaces and the server are gone when it exits."""
    lan = Lan()
    try:
        with contextlib.ExitStack() as stack:
            if root is None:
                root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meshpos-netns-")))
            pg = stack.enter_context(PostgresServer(prefix=pg_prefix())) if hq else None
            if pg is not None:
                pg.create_database("hq")
            r = Restaurant(lan, root, kinds, log_level, hq_dsn=None if pg is None else pg.socket_dsn("hq"), env=env)
            r.pg = pg
            try:
                await r.open()
                yield r
            finally:
                with anyio.CancelScope(shield=True):
                    r.close()
                    for agent in r.agents.values():
                        await agent.aclose()
    finally:
        lan.close()


async def until(done: Callable[[], Any], what: str, within: float) -> float:
    """Poll the async predicate ``done`` until true; the seconds it took."""
    start = time.monotonic()
    while not await done():
        if time.monotonic() - start > within:
            raise TimeoutError(f"not within {within:.0f} s: {what}")
        await anyio.sleep(0.2)
    return time.monotonic() - start


class NetnsRun:
    """A scenario's :class:`~partition.World` made of real processes."""

    def __init__(self, r: Restaurant, seed: int, speed: float) -> None:
        self.r, self.root, self.kinds, self.speed = r, r.root, r.kinds, speed
        self.skew: dict[str, float] = {}
        self.radios: dict[str, dict[str, float]] = {}
        self._t0 = time.monotonic()
        self._wall0 = time.time()  # the terminals' event times are wall-clock: the same machine's
        self.timeline: list[dict[str, Any]] = []
        self.work = Workload(random.Random(seed), self.now)
        self.drawers = [drawer_of(tid) for tid, kind in self.kinds if kind == "pos"]

    def now(self) -> float:
        return round(time.monotonic() - self._t0, 3)

    def mark(self, what: str, **data: Any) -> None:
        self.timeline.append({"t": self.now(), "event": what, **data})
        print(f"[{self.now():7.1f} s] {what} {json.dumps(data) if data else ''}", file=sys.stderr, flush=True)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds / self.speed)

    def split(self, *groups: list[str]) -> None:
        named = {tid for g in groups for tid in g}
        rest = [tid for tid, _ in self.kinds if tid not in named]
        self.r.lan.split([[self.r.hosts[tid] for tid in g] for g in groups])
        self.mark("split", groups=[sorted(g) for g in [*groups, rest] if g])

    def isolate(self, tids: list[str]) -> None:
        self.r.lan.isolate([self.r.hosts[tid] for tid in tids])
        self.mark("isolate", terminals=sorted(tids))

    def radio(self, tids: list[str], *, jitter: float, loss: float) -> None:
        """Not applied: real jitter and loss need the kernel's netem, which not every kernel has
        (this project's CI machine does not); the report lists it under ``not_simulated``."""
        for tid in tids:
            self.radios[tid] = {"jitter": jitter, "loss": loss}
        self.mark("radio", terminals=sorted(tids), jitter=jitter, loss=loss, applied=False)

    def heal(self) -> None:
        self.r.lan.heal()
        self.mark("heal")

    def wan(self, up: bool) -> None:
        """The store's internet line: the HQ's port on the WAN bridge down or up (the terminals'
        links to it die of silence, as they would); the LAN stays as it is."""
        if self.r.hq_host is not None:
            self.r.lan.wan(up)
        self.mark("wan", up=up, hq=self.r.hq_host is not None)

    async def crash(self, tid: str) -> None:
        self.r.kill(tid)
        self.mark("crash", terminal=tid)

    async def restart(self, tid: str) -> None:
        await self.r.start(tid)
        self.mark("restart", terminal=tid)

    async def sample(self) -> None:
        """Every second: the CRDT updates each running terminal lacks (the plot's divergence),
        and whether the terminals' links form one connected graph (propagation's steady state)."""
        while True:
            with contextlib.suppress(MeshposError):
                vectors = await self.r.each(lambda b: b.state_vectors())
                self.timeline.append({"t": self.now(), "event": "divergence", "missing": missing_updates(vectors)})
                online = await self.r.each(lambda b: b.online())
                self.timeline.append({"t": self.now(), "event": "links", "connected": len(online) == len(self.kinds)
                                      and links_connected(online)})
            await anyio.sleep(1.0)

    async def propagation(self) -> list[tuple[float, float, bool]]:
        """Every order's creation timed to each terminal: its ``order:created`` event's time
        there (stored with the change, ms), read back over each terminal's events WebSocket."""
        statuses = await self.r.each(lambda b: b.call("GET", "/api/v1/status"))
        seen: dict[str, dict[str, float]] = {}
        for tid in sorted(self.r.up):
            status, events = await self.r.agents[tid].request("EVENTS", "", statuses[tid]["last_event_cursor"])
            if status != 200:
                raise MeshposError(f"{tid}: events could not be read: {events}")
            for _, kind, at, order_id in events:
                if kind == "order:created" and order_id is not None:
                    moment = utc(at).timestamp() - self._wall0
                    seen.setdefault(order_id, {})[tid] = round(moment, 3)
        changes = []
        for arrived in seen.values():
            writer = min(arrived, key=arrived.__getitem__)  # the writer's event comes first
            changes.append((writer, arrived[writer], arrived))
        return from_arrivals(changes, self.timeline, {tid for tid, _ in self.kinds})

    async def settled(self) -> bool:
        """Every box up and linked to every other, one state, one ledger per drawer, nothing pending."""
        try:
            if len(self.r.up) < len(self.kinds) or not await self.r.all_linked() or not await self.r.same_state():
                return False
            summaries = await self.r.each(lambda b: b.call("GET", "/api/v1/cashier/drawers"))
        except MeshposError:
            return False
        seen = [{d["drawer"]: (d["ledger_length"], d["provisional_pending"]) for d in s} for s in summaries.values()]
        if not all(x == seen[0] for x in seen) or any(p for x in seen for _, p in x.values()):
            return False
        try:
            return self.r.hq_host is None or await self.r.hq_has_everything()
        except MeshposError:
            return False


async def run(scenario: Scenario, n: int, seed: int, speed: float = 1.0, root: Path | None = None) -> dict[str, Any]:
    kinds = kinds_for(n)
    async with restaurant(kinds, root, hq=scenario.hq) as r:
        world = NetnsRun(r, seed, speed)
        world.mark("started")
        await until(r.all_linked, "every terminal linked to every other by mDNS", 60)
        world.mark("linked")
        manager = r.boxes[next(tid for tid, k in kinds if k == "pos")]
        for sku, price in MENU.items():
            await manager.call("PUT", f"/api/v1/catalog/{sku}", {"name": sku, "price_cents": price,
                                                                 "station": "grill"})
            await manager.call("POST", f"/api/v1/inventory/{sku}/count", {"quantity": STOCK})
        for tid in (tid for tid, k in kinds if k == "pos"):
            opened = await r.boxes[tid].call("POST", f"/api/v1/cashier/drawers/{drawer_of(tid)}/open",
                                             {"float_cents": 10_000, "operator": tid})
            assert opened["entry"]["status"] == "committed", opened
        await until(r.same_state, "the opening synced", 60)
        world.mark("opening synced")
        ids = [tid for tid, _ in kinds]
        async with anyio.create_task_group() as tg:
            tg.start_soon(world.sample)
            async with anyio.create_task_group() as work:
                for tid, kind in kinds:
                    work.start_soon(world.work.run, tid, kind, scenario.rate * speed, r.box)
                await scenario.script(world, ids)
                world.mark("service over")
                work.cancel_scope.cancel()
            world.heal()
            for tid in ids:
                if tid not in r.up:
                    await world.restart(tid)
            if scenario.hq:
                world.wan(True)  # after close: the HQ hears of the day now
            healed = world.now()
            converged_after: float | None = None
            try:
                await until(world.settled, "converged after the final heal", SETTLE_SECONDS)
                world.mark("converged")
                converged_after = round(world.now() - healed, 3)
            except TimeoutError:
                world.mark("not converged", within_s=SETTLE_SECONDS)
            tg.cancel_scope.cancel()
        observed = [await r.boxes[tid].observe(world.drawers) for tid in ids]
        missing = missing_updates(await r.each(lambda b: b.state_vectors()))
        checks = check(world.work.tally, observed, world.drawers, converged=converged_after is not None,
                       missing=missing)
        delays = await world.propagation()
        checks["propagation"] = propagation_check(delays, 0, bound=REAL_BOUND_S, p99_bound=BOUND_S)
        checks["ok"] = checks["ok"] and checks["propagation"]["ok"]
        uplinks = None
        if r.pg is not None:
            landed = await anyio.to_thread.run_sync(hq_snapshot, r.pg.dsn("hq"))
            checks["hq"] = check_hq(world.work.tally, observed, world.drawers, landed)
            checks["ok"] = checks["ok"] and checks["hq"]["ok"]
            uplinks = {tid: log["links"] for tid, log in
                       (await r.each(lambda b: b.call("GET", "/api/v1/hq/log"))).items()}
    marks = [e for e in world.timeline if e["event"] not in ("divergence", "links")]
    samples = [(e["t"], e["missing"]) for e in world.timeline if e["event"] == "divergence"]
    return {
        "scenario": scenario.name, "about": scenario.about, "runner": "netns", "seed": seed, "speed": speed,
        "terminals": dict(kinds), "timeline": {"writes": world.work.writes, "divergence": samples,
                                               "propagation": propagation_timeline(delays)},
        "propagation": propagation_report(delays, 0),
        "seconds": world.now(), **world.work.summary(),
        "peak_missing_updates": max((max(m.values(), default=0) for _, m in samples), default=0),
        "converged_after_heal_s": converged_after,
        "not_simulated": {k: v for k, v in (("clock_skew", world.skew), ("radio", world.radios)) if v},
        "checks": checks, "events": marks,
        **({"hq_sync_log": uplinks} if uplinks is not None else {}),  # each terminal's GET /api/v1/hq/log
    }


async def _until_signal(scenario: Scenario, n: int, seed: int, speed: float, root: Path | None) -> dict[str, Any]:
    """:func:`run`, cancelled by SIGINT or SIGTERM: the cancellation unwinds through
    :func:`restaurant`, which removes processes and namespaces, then this raises KeyboardInterrupt."""
    report: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    report["interrupted"] = signum
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        report.update(await run(scenario, n, seed, speed, root))
        tg.cancel_scope.cancel()
    if "interrupted" in report:
        raise KeyboardInterrupt(f"signal {report['interrupted']}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=sorted(partition.SCENARIOS), default="lunch-rush-kitchen-split")
    parser.add_argument("--terminals", type=int, default=6, help="3 to 16 boxes (default 6)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--speed", type=float, default=1.0, help="run the scenario script this much faster")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the run's timeline (needs matplotlib)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep data directories and logs in DIR")
    parser.add_argument("--clean", action="store_true", help="only remove namespaces killed runs left behind")
    args = parser.parse_args()
    if args.clean:
        print(json.dumps({"removed": sweep_leftovers()}))
        return
    if not 3 <= args.terminals <= 16:
        parser.error("--terminals must be 3..16")
    if args.speed <= 0:
        parser.error("--speed must be positive")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    try:
        report = anyio.run(_until_signal, partition.SCENARIOS[args.scenario], args.terminals, args.seed, args.speed,
                           args.keep)
    except LabUnavailable as exc:
        sys.exit(f"netns.py cannot run here: {exc}")
    except KeyboardInterrupt:
        sys.exit("interrupted; namespaces and processes removed")
    if args.plot is not None:
        partition.plot(report, args.plot)
    print(json.dumps(report, indent=1))
    sys.exit(0 if report["checks"]["ok"] else 1)


if __name__ == "__main__":
    main()
