"""One seeded run: the restaurant opened, a scenario played with the workload, the checks after."""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import anyio
import trio
import trio.testing

from simulations.determinism import seed_trio_scheduler, seeded_trio_scheduler
from simulations.partition import propagation
from simulations.partition.checks import check, check_hq, hq_snapshot
from simulations.partition.faults import FAULTS, Fault
from simulations.partition.restaurant import MENU, STOCK, drawer_of
from simulations.partition.scenarios import SCENARIOS, Scenario, ids_of
from simulations.partition.workload import TerminalBox
from simulations.partition.world import SETTLE_SECONDS, Simulation
from simulations.postgres import PostgresServer


async def _run(scenario: Scenario, n: int, seed: int, root: Path, fault: Fault | None,
               max_actions: int | None, hq_dsn: str | None = None) -> dict[str, Any]:
    seed_trio_scheduler(seed)  # again inside the run: what trio drew while starting up does not count
    sim = Simulation(root, n, seed, fault, max_actions, hq_dsn=hq_dsn)
    async with anyio.create_task_group() as tg:
        await sim.setup(tg)
        manager = sim.terminals[ids_of(sim, "pos")[0]]
        for sku, price in MENU.items():
            await manager.put_product(sku, name=sku, price_cents=price, station="grill", category=None, active=True)
            await manager.count_stock(sku, STOCK)
        for pos in ids_of(sim, "pos"):
            opened = await sim.terminals[pos].cashier.open_drawer(drawer_of(pos), float_cents=10_000, operator=pos)
            assert opened["entry"]["status"] == "committed"
        await sim.until(lambda: not any(sim.divergence().values()), "opening synced")
        ids = [tid for tid, _ in sim.kinds]
        tg.start_soon(sim.sample)  # until the end: the plot shows the catch-up too
        async with anyio.create_task_group() as work:
            for tid, kind in sim.kinds:
                work.start_soon(sim.work.run, tid, kind, scenario.rate, sim.box)
            await scenario.script(sim, ids)
            sim.mark("service over")
            work.cancel_scope.cancel()
        sim.heal()
        for tid, _ in sim.kinds:
            if tid not in sim.terminals:
                await sim.restart(tid)
        if hq_dsn is not None:
            sim.wan(True)  # after close: the HQ hears of the day now
        healed = sim.now()
        converged_after: float | None = None
        try:
            await sim.until(sim.settled, "converged")
            converged_after = round(sim.now() - healed, 3)
        except TimeoutError:
            sim.mark("not converged", within_s=SETTLE_SECONDS)
        observed = [await TerminalBox(t).observe(sim.drawers) for t in sim.terminals.values()]
        checks = check(sim.work.tally, observed, sim.drawers, converged=converged_after is not None,
                       missing=sim.divergence())
        checks["propagation"] = sim.propagation.check()
        checks["ok"] = checks["ok"] and checks["propagation"]["ok"]
        if hq_dsn is not None:
            checks["hq"] = check_hq(sim.work.tally, observed, sim.drawers, hq_snapshot(hq_dsn))
            checks["ok"] = checks["ok"] and checks["hq"]["ok"]
        state = json.dumps(observed[0], sort_keys=True, default=str)
        for tid in list(sim.terminals):
            await sim.stop(tid)
        tg.cancel_scope.cancel()
    marks = [e for e in sim.timeline if e["event"] != "divergence"]
    peak = max((max(e["missing"].values(), default=0) for e in sim.timeline if e["event"] == "divergence"),
               default=0)
    return {
        "scenario": scenario.name, "about": scenario.about, "seed": seed, "terminals": dict(sim.kinds),
        **({"injected": fault.name} if fault else {}), **({"ops": max_actions} if max_actions is not None else {}),
        "timeline": {"writes": sim.work.writes, "divergence": [(e["t"], e["missing"]) for e in sim.timeline
                                                               if e["event"] == "divergence"],
                     "propagation": propagation.timeline(sim.propagation.delays)},
        "propagation": sim.propagation.report(),
        "virtual_seconds": sim.now(), **sim.work.summary(),
        "peak_missing_updates": peak, "converged_after_heal_s": converged_after,
        "state_sha256": hashlib.sha256(state.encode()).hexdigest(), "checks": checks, "events": marks,
    }


def run(scenario: str, n: int, seed: int, fault: str | None = None, ops: int | None = None) -> dict[str, Any]:
    """One seeded run (its own temporary directory, its own trio run on a virtual clock), with
    the :data:`FAULTS` entry ``fault`` planted, the staff stopping after ``ops`` actions."""
    # Trio's scheduler, made a function of the seed alone (simulations/determinism.py), for this
    # run only: the tests run the simulator inside their own process.
    clock = trio.testing.MockClock(autojump_threshold=0)
    chosen = SCENARIOS[scenario]
    with contextlib.ExitStack() as stack:
        dsn = None
        if chosen.hq:  # a PostgreSQL server of the run's own, gone with it
            dsn = stack.enter_context(PostgresServer()).create_database("hq")
        stack.enter_context(seeded_trio_scheduler(seed))
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="meshpos-sim-"))
        return trio.run(_run, chosen, n, seed, Path(tmp), FAULTS.get(fault or ""), ops, dsn, clock=clock)
