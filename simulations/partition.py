"""Seeded network-partition simulation of a restaurant's terminals; prints a JSON report.

    python -m simulations.partition [--scenario NAME] [--terminals N] [--seed S] [--sweep N] [--shrink]

Real terminals - the product's documents, sync, TLS links, SQLite storage and cashier - run in
this process on trio's virtual clock, joined by the in-memory network of ``peer/transport.py``:
no wall-clock sleeps, no sockets, no threads, every random choice from the seed, so one seed
is one run (``--seed S`` twice prints the same report; each run in its own process, as
``--sweep`` does too).  A scenario script splits and heals
the network, turns on a Wi-Fi access point's client isolation, gives boxes a poor radio (jitter,
lost segments), crashes and restarts terminals (the data directory survives, the process does
not), skews a clock; a restaurant workload runs meanwhile (orders through their lifecycle,
kitchen statuses, table turns, stock moves, payments - provisional ones when a POS is cut off).
After the final heal the checkers run (docs/simulations.md):

* converged within SETTLE_SECONDS (else the other checks run anyway, on what is there);
* every document identical on every terminal;
* no acknowledged write lost (orders, their stages, stock moves, payments);
* every stock counter equals the initial count plus all acknowledged adjustments;
* every order's status is the furthest stage it reached (the lifecycle rule);
* cashier: one committed ledger per drawer on every terminal, no operation twice, every
  acknowledged payment in it, every provisional payment committed or in review.

``--inject NAME`` plants a bug the checkers must catch (:data:`FAULTS`); ``--shrink`` turns a
failing run into the fewest terminals and staff actions (``--ops``) that still fail.

The same scenarios, workload and checkers run with real ``meshpos run`` processes in network
namespaces in simulations/netns.py (docs/simulations.md).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import random
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import anyio
import trio
import trio.testing

from core.errors import MeshposError
from core.yupdate import decode_state_vector
from meshpos.config import TerminalConfig
from meshpos.documents.orders import ORDER_RANK, furthest
from meshpos.terminal import Terminal
from peer.identity import Authority, save_roster
from peer.transport import MemoryNetwork, Radio
from simulations.benchutil import module_command

MENU = {"burger": 1590, "fries": 690, "salad": 1290, "soda": 450}
STOCK = 10_000  # counted at the start; the checker adds the acknowledged moves
PORT = 7000
LAN_LATENCY = 0.001  # virtual seconds per message on the simulated LAN
SETTLE_SECONDS = 120.0  # virtual: how long the final heal may take before the run fails
EPOCH = datetime(2026, 12, 2, 11, 0, tzinfo=UTC)  # the simulated service starts at 11:00 UTC


def drawer_of(pos: str) -> str:
    """Each POS has its own cash drawer (they vote on every drawer)."""
    return f"drawer-{pos}"


def kinds_for(n: int) -> list[tuple[str, str]]:
    """A restaurant of ``n`` boxes: three POS (the cashier's voters; five from 12 boxes, one below
    4), one KDS, the rest waiters' handhelds."""
    pos = 1 if n < 4 else 3 if n < 12 else 5
    out = [(f"pos-{k + 1}", "pos") for k in range(pos)]
    if n > pos:
        out.append(("kds-1", "kds"))
    out += [(f"waiter-{k + 1}", "waiter") for k in range(n - len(out))]
    return out


@dataclass
class Tally:
    """What the workload was told (acknowledged) and refused - the checkers' ground truth."""

    orders: dict[str, set[str]] = field(default_factory=dict)  # order id -> acknowledged stages
    stock: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MENU, 0))
    payments: dict[str, tuple[str, str]] = field(default_factory=dict)  # op id -> (drawer, status)
    refused: dict[str, int] = field(default_factory=dict)  # error code -> count
    done: dict[str, int] = field(default_factory=dict)  # operation kind -> count
    provisional_why: dict[str, int] = field(default_factory=dict)  # why a payment went provisional

    def ok(self, kind: str) -> None:
        self.done[kind] = self.done.get(kind, 0) + 1

    def no(self, exc: MeshposError) -> None:
        self.refused[str(exc.code)] = self.refused.get(str(exc.code), 0) + 1


@dataclass(frozen=True)
class Fault:
    """A bug planted on purpose (``--inject NAME``): the ``nth`` call of a terminal's ``method``
    (a dotted path from the :class:`Terminal`), counted over the whole run, is answered as if
    done and not done - or, ``lasting``, that call and every one after it.  These are the
    failures the checkers exist to catch: tests/test_partition.py proves each is caught by the
    checks it names, and ``--shrink`` finds the shortest run that still shows it."""

    name: str
    about: str
    method: str
    nth: int
    catches: tuple[str, ...]  # the checks that must fail, and only they
    only: str | None = None  # count only the calls with this argument
    on: str | None = None  # only on terminals of this type
    lasting: bool = False
    answer: Any = None  # what the call that was not done returns


_COMMITTED = {"entry": {"status": "committed"}}  # what a payment that was not recorded answers

FAULTS = {f.name: f for f in [
    Fault("lose-stock-move", "the 25th stock move is acknowledged and not written", "adjust_stock", 25,
          ("stock_equals_acknowledged_moves",), answer={}),
    # "sent": no later step of the workload sends the order again, which would write the stage after all
    Fault("lose-order-stage", "the 10th order sent to the kitchen is acknowledged and not written",
          "set_order_status", 10, ("no_acknowledged_write_lost",), only="sent", answer={}),
    Fault("lose-payment", "the 3rd payment is acknowledged as committed and not recorded", "cashier.pay", 3,
          ("cashier",), answer=_COMMITTED),
    Fault("deaf-kitchen", "from its 100th batch on, the KDS drops what its peers send it (a sync bug)",
          "host.apply_remote", 100, ("converged", "documents_identical"), on="kds", lasting=True),
]}


class Box(Protocol):
    """One terminal as the workload and the checkers use it: in this process (:class:`TerminalBox`)
    or a real process through its local API (simulations/netns.py).  Refusals raise
    :class:`MeshposError` with the code the API would answer."""

    async def orders(self) -> list[dict[str, Any]]: ...
    async def create_order(self, *, table: str, waiter: str, items: list[dict[str, Any]]) -> dict[str, Any]: ...
    async def adjust_stock(self, sku: str, delta: int, reason: str) -> None: ...
    async def set_order_status(self, order_id: str, status: str) -> None: ...
    async def set_item_status(self, order_id: str, item_id: str, status: str) -> None: ...
    async def pay(self, drawer: str, *, order_id: str, amount_cents: int, method: str, op_id: str,
                  user: str) -> dict[str, Any]: ...
    async def observe(self, drawers: list[str]) -> dict[str, Any]:
        """Orders, tables, stock and each drawer's ledger as the local API shows them."""
        ...


class TerminalBox:
    """A :class:`Box` on a terminal of this process: the calls the API handlers make."""

    def __init__(self, t: Terminal) -> None:
        self.t = t

    async def orders(self) -> list[dict[str, Any]]:
        return await self.t.list_orders()

    async def create_order(self, *, table: str, waiter: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.t.create_order(table=table, waiter=waiter, items=items)

    async def adjust_stock(self, sku: str, delta: int, reason: str) -> None:
        await self.t.adjust_stock(sku, delta, reason)

    async def set_order_status(self, order_id: str, status: str) -> None:
        await self.t.set_order_status(order_id, status)

    async def set_item_status(self, order_id: str, item_id: str, status: str) -> None:
        await self.t.set_item_status(order_id, item_id, status)

    async def pay(self, drawer: str, *, order_id: str, amount_cents: int, method: str, op_id: str,
                  user: str) -> dict[str, Any]:
        return await self.t.cashier.pay(drawer, order_id=order_id, amount_cents=amount_cents, method=method,
                                        op_id=op_id, user=user, allow_provisional=True)

    async def observe(self, drawers: list[str]) -> dict[str, Any]:
        t = self.t
        ledgers = {}
        for drawer in drawers:
            try:
                d = t.cashier.drawer(drawer, from_position=0)
            except MeshposError:
                d = {"entries": [], "provisional": []}
            ledgers[drawer] = {"entries": d["entries"], "provisional": d["provisional"]}
        return {"orders": {o["id"]: o for o in await t.list_orders()}, "tables": t.tables.list(),
                "stock": {v["sku"]: v["quantity"] for v in t.inventory.list()},
                "drawers": ledgers}


class Workload:
    """The staff of every box at work, and the tally of what they were told."""

    def __init__(self, rng: random.Random, now: Callable[[], float], max_actions: int | None = None) -> None:
        self.rng, self.now = rng, now
        self.tally = Tally()
        self.writes: list[tuple[float, str]] = []  # (time, terminal) of acknowledged work
        self.actions = 0  # staff actions begun, every box together
        self.max_actions = max_actions  # then the staff stop: a run's prefix (what --ops shrinks)

    async def run(self, tid: str, kind: str, rate: float, box_of: Callable[[str], Box | None]) -> None:
        """One box's staff: ``rate`` operations per second while the box runs (``box_of`` gives
        ``None`` while it is down)."""
        rng = random.Random(self.rng.getrandbits(64))
        while True:
            await anyio.sleep(rng.expovariate(rate))
            box = box_of(tid)
            if box is None:
                continue
            if self.max_actions is not None and self.actions >= self.max_actions:
                return
            self.actions += 1
            before = sum(self.tally.done.values())
            try:
                await self._act(box, tid, kind, rng)
            except MeshposError as exc:
                self.tally.no(exc)
            if sum(self.tally.done.values()) > before:
                self.writes.append((self.now(), tid))

    async def _act(self, box: Box, tid: str, kind: str, rng: random.Random) -> None:
        open_orders = [o for o in await box.orders() if o["status"] not in ("paid", "closed", "cancelled")]
        roll = rng.random()
        if kind == "waiter" or (kind == "pos" and roll < 0.3) or not open_orders:
            if kind == "kds":
                return
            skus = rng.sample(sorted(MENU), rng.randint(1, 3))
            items = [{"sku": s, "name": s, "qty": 1, "unit_price_cents": MENU[s], "station": "grill"} for s in skus]
            order = await box.create_order(table=f"T{rng.randint(1, 12)}", waiter=tid, items=items)
            self.tally.orders[order["id"]] = {"open"}
            self.tally.ok("order")
            for s in skus:
                await box.adjust_stock(s, -1, "sale")
                self.tally.stock[s] -= 1
                self.tally.ok("stock")
            await box.set_order_status(order["id"], "sent")
            self.tally.orders[order["id"]].add("sent")
            return
        order = rng.choice(open_orders)
        if kind == "kds":
            for item in order["items"]:
                if item["kitchen_status"] in ("queued", "preparing"):
                    stage = "preparing" if item["kitchen_status"] == "queued" else "ready"
                    await box.set_item_status(order["id"], item["id"], stage)
                    self.tally.ok("kitchen")
                    return
            if ORDER_RANK[order["status"]] < ORDER_RANK["ready"]:
                await self._stage(box, order, "ready")
            return
        if ORDER_RANK[order["status"]] < ORDER_RANK["served"]:
            await self._stage(box, order, "served")
        elif kind == "pos":
            await self._pay(box, tid, order, rng)

    async def _stage(self, box: Box, order: dict[str, Any], stage: str) -> None:
        await box.set_order_status(order["id"], stage)
        self.tally.orders.setdefault(order["id"], set()).add(stage)
        self.tally.ok("stage")

    async def _pay(self, box: Box, tid: str, order: dict[str, Any], rng: random.Random) -> None:
        op_id = f"{order['id']}@{tid}"
        if op_id in self.tally.payments:
            return  # taken here already (provisionally, the order is not marked paid yet)
        result = await box.pay(drawer_of(tid), order_id=order["id"], amount_cents=order["total_cents"],
                               method=rng.choice(("cash", "card", "pix")), op_id=op_id, user=tid)
        self.tally.payments[op_id] = (drawer_of(tid), result["entry"]["status"])
        if result["entry"]["status"] == "provisional":
            why = result["entry"]["provisional"]["reason"].split(":")[0]
            self.tally.provisional_why[why] = self.tally.provisional_why.get(why, 0) + 1
        self.tally.ok("payment")

    def summary(self) -> dict[str, Any]:
        """The report's account of the work: done, refused, how payments went."""
        t = self.tally
        return {"actions": self.actions, "operations": dict(sorted(t.done.items())),
                "refused": dict(sorted(t.refused.items())),
                "payments": {s: [st for _, st in t.payments.values()].count(s) for s in ("committed", "provisional")},
                "provisional_because": dict(sorted(t.provisional_why.items()))}


def check(tally: Tally, observed: list[dict[str, Any]], drawers: list[str], *, converged: bool,
          missing: dict[str, int]) -> dict[str, Any]:
    """The checkers, on every terminal's :meth:`Box.observe` after the final heal - or after
    :data:`SETTLE_SECONDS` without convergence (``converged`` false; ``missing``: the CRDT
    updates each terminal still lacks), so such a run reports what is wrong instead of only
    timing out."""
    lacking = {tid: m for tid, m in missing.items() if m}
    checks: dict[str, Any] = {"converged": {"ok": converged, "missing_updates": lacking}}
    first = observed[0]
    checks["documents_identical"] = all({k: o[k] for k in ("orders", "tables", "stock")}
                                        == {k: first[k] for k in ("orders", "tables", "stock")} for o in observed)
    orders = first["orders"]
    lost = [oid for oid, stages in tally.orders.items()
            if oid not in orders or not stages <= set(orders[oid]["stages"])]
    checks["no_acknowledged_write_lost"] = {"ok": not lost, "lost": lost[:10]}
    stock = {sku: STOCK + delta for sku, delta in tally.stock.items()}
    checks["stock_equals_acknowledged_moves"] = {"ok": first["stock"] == stock,
                                                 "expected": stock, "found": first["stock"]}
    wrong = [oid for oid, o in orders.items() if o["status"] != furthest(o["stages"], ORDER_RANK)]
    checks["order_lifecycle_rule"] = {"ok": not wrong, "orders": wrong[:10]}
    checks["cashier"] = {drawer: _check_drawer(tally, [o["drawers"][drawer] for o in observed], drawer)
                         for drawer in drawers}
    checks["cashier"]["ok"] = all(c["ok"] for c in checks["cashier"].values())
    checks["ok"] = all(_passed(c) for c in checks.values())
    return checks


def _check_drawer(tally: Tally, seen: list[dict[str, Any]], drawer: str) -> dict[str, Any]:
    """One committed ledger everywhere, no operation twice, every acknowledged payment in it
    (a provisional one under its own op id or the reconciler's ``op~terminal``), every entry
    appended for review with its reason, no provisional entry left unsettled."""
    ledgers = [s["entries"] for s in seen]
    same = all(x == ledgers[0] for x in ledgers[1:])
    final = ledgers[0]
    ops = [e["op_id"] for e in final]
    have = set(ops)
    missing = [op for op, (paid_in, _) in tally.payments.items() if paid_in == drawer
               and op not in have and f"{op}~{op.split('@')[-1]}" not in have]
    in_review = [e for e in final if "review" in e]
    unexplained = [e["position"] for e in in_review if not (e["review"] or {}).get("reason")]
    pending = [p["op_id"] for s in seen for p in s["provisional"] if p["status"] not in ("committed", "in_review")]
    return {"ok": same and len(ops) == len(have) and not missing and not unexplained and not pending,
            "ledgers_identical": same, "entries": len(final), "duplicates": len(ops) - len(have),
            "acknowledged_payments_missing": missing[:10], "in_review": len(in_review),
            "provisional_unsettled": pending[:10]}


def enroll(root: Path, kinds: list[tuple[str, str]]) -> None:
    """A store authority in ``root/auth`` and every box enrolled under ``root/<id>``, each holding
    the final roster (the first-enrolled would otherwise know only itself as a voter)."""
    authority = Authority.init(root / "auth", "Simulated Cantina")
    for tid, kind in kinds:
        authority.enroll(tid, kind, root / tid)
    for tid, _ in kinds:
        save_roster(root / tid, authority.roster)


def union_state(vectors: dict[str, dict[str, dict[Any, int]]]) -> dict[str, dict[Any, int]]:
    """Per document, the state vector holding everything any terminal has
    (``terminal -> document -> client -> clock`` in)."""
    best: dict[str, dict[Any, int]] = {}
    for docs in vectors.values():
        for name, sv in docs.items():
            top = best.setdefault(name, {})
            for client, clock in sv.items():
                top[client] = max(top.get(client, 0), clock)
    return best


def missing_updates(vectors: dict[str, dict[str, dict[Any, int]]]) -> dict[str, int]:
    """Per terminal: CRDT updates it lacks that some other terminal has, summed over documents,
    from every terminal's state vectors (``terminal -> document -> client -> clock``)."""
    best = union_state(vectors)
    return {tid: sum(clock - docs.get(name, {}).get(client, 0)
                     for name, top in best.items() for client, clock in top.items())
            for tid, docs in vectors.items()}


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
        return not any(t.cashier._pending(d) for t in self.terminals.values() for d in self.drawers)  # noqa: SLF001

# -- scenarios ---------------------------------------------------------------------------------------


class World(Protocol):
    """What a scenario script acts on: this simulator, or simulations/netns.py's real processes."""

    root: Path
    kinds: list[tuple[str, str]]
    skew: dict[str, float]

    async def sleep(self, seconds: float) -> None: ...
    def split(self, *groups: list[str]) -> None: ...
    def isolate(self, tids: list[str]) -> None: ...
    def radio(self, tids: list[str], *, jitter: float, loss: float) -> None: ...
    def heal(self) -> None: ...
    async def crash(self, tid: str) -> None: ...
    async def restart(self, tid: str) -> None: ...
    def mark(self, what: str, **data: Any) -> None: ...


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    script: Callable[[World, list[str]], Awaitable[None]]
    rate: float = 0.5  # operations per virtual second per box


def _ids(sim: World, kind: str) -> list[str]:
    return [tid for tid, k in sim.kinds if k == kind]


async def lunch_rush_kitchen_split(sim: World, ids: list[str]) -> None:
    await sim.sleep(20)
    sim.split([t for t in ids if t.startswith("kds")])  # the kitchen's Wi-Fi drops
    await sim.sleep(60)
    sim.heal()


async def cashier_isolated(sim: World, ids: list[str]) -> None:
    await sim.sleep(15)
    cashier = _ids(sim, "pos")[0]
    sim.split([cashier])  # one POS alone: it takes payments provisionally
    await sim.sleep(60)
    sim.heal()


async def flapping_wifi(sim: World, ids: list[str]) -> None:
    front = [t for t in ids if t.startswith("waiter")]
    sim.radio(front, jitter=0.03, loss=0.02)  # a poor signal all along: delay varies, segments are lost
    for _ in range(8):
        await sim.sleep(6)
        sim.split(front)
        await sim.sleep(4)
        sim.heal()


async def wifi_client_isolation(sim: World, ids: list[str]) -> None:
    # Someone applies the guest network's settings to the staff SSID: the access point's client
    # isolation. The handhelds still reach the wired boxes (POS, KDS) but no longer each other;
    # what one handheld writes reaches the others through the wired boxes' state-vector exchange.
    await sim.sleep(15)
    sim.isolate(_ids(sim, "waiter"))
    await sim.sleep(60)
    sim.heal()


async def terminal_replaced_mid_service(sim: World, ids: list[str]) -> None:
    # A waiter's handheld dies; 30 s later a spare takes its place: same enrollment, an empty
    # database - everything comes back from the peers.  (A POS is a voter: replacing one with an
    # empty disk is a roster change, done with its drawers closed - docs/cashier.md.)
    await sim.sleep(20)
    victim = (_ids(sim, "waiter") or _ids(sim, "kds"))[-1]
    await sim.crash(victim)
    for path in (sim.root / victim).glob("meshpos.db*"):
        path.unlink()
    sim.mark("replaced", terminal=victim)
    await sim.sleep(30)
    await sim.restart(victim)
    await sim.sleep(20)  # the spare at work


async def wan_down_all_day(sim: World, ids: list[str]) -> None:
    # The internet is gone all day; the LAN is fine: service runs without a break, one box's clock
    # drifts two minutes (nothing may depend on it), and the kitchen reboots once.
    sim.skew[ids[-1]] = 120.0
    await sim.sleep(40)
    kds = _ids(sim, "kds")
    if kds:
        await sim.crash(kds[0])
        await sim.sleep(5)
        await sim.restart(kds[0])
    await sim.sleep(40)


SCENARIOS = {s.name: s for s in [
    Scenario("lunch-rush-kitchen-split", "the KDS is cut off from the front for a minute of the rush",
             lunch_rush_kitchen_split, rate=0.8),
    Scenario("cashier-isolated", "one POS alone for a minute: provisional payments, reconciled after",
             cashier_isolated),
    Scenario("flapping-wifi", "the handhelds' Wi-Fi drops 4 s of every 10, eight times, and loses 2% of segments",
             flapping_wifi),
    Scenario("wifi-client-isolation", "for a minute the handhelds reach the wired boxes but not each other",
             wifi_client_isolation),
    Scenario("terminal-replaced-mid-service", "a handheld dies; a spare with an empty disk replaces it 30 s later",
             terminal_replaced_mid_service),
    Scenario("wan-down-all-day", "no internet at all; one clock skewed 2 min; the kitchen reboots once",
             wan_down_all_day),
]}


async def _run(scenario: Scenario, n: int, seed: int, root: Path, fault: Fault | None,
               max_actions: int | None) -> dict[str, Any]:
    trio._core._run._r.seed(seed)  # trio's scheduling choices, from the seed  # noqa: SLF001
    sim = Simulation(root, n, seed, fault, max_actions)
    async with anyio.create_task_group() as tg:
        await sim.setup(tg)
        manager = sim.terminals[_ids(sim, "pos")[0]]
        for sku, price in MENU.items():
            await manager.put_product(sku, name=sku, price_cents=price, station="grill", category=None, active=True)
            await manager.count_stock(sku, STOCK)
        for pos in _ids(sim, "pos"):
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
                                                               if e["event"] == "divergence"]},
        "virtual_seconds": sim.now(), **sim.work.summary(),
        "peak_missing_updates": peak, "converged_after_heal_s": converged_after,
        "state_sha256": hashlib.sha256(state.encode()).hexdigest(), "checks": checks, "events": marks,
    }


def run(scenario: str, n: int, seed: int, fault: str | None = None, ops: int | None = None) -> dict[str, Any]:
    """One seeded run (its own temporary directory, its own trio run on a virtual clock), with
    the :data:`FAULTS` entry ``fault`` planted, the staff stopping after ``ops`` actions."""
    # Trio's scheduler, made a function of the seed alone: tasks woken together run in an order
    # shuffled from the seed (trio's own mode for Hypothesis), not in the order their timers
    # happened to be tied in (by object address); the mock clock's offset comes from the seed too.
    trio._core._run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]  # noqa: SLF001
    trio._core._run._r.seed(seed)  # noqa: SLF001
    clock = trio.testing.MockClock(autojump_threshold=0)
    with tempfile.TemporaryDirectory(prefix="meshpos-sim-") as tmp:
        return trio.run(_run, SCENARIOS[scenario], n, seed, Path(tmp), FAULTS.get(fault or ""), ops, clock=clock)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="lunch-rush-kitchen-split")
    parser.add_argument("--terminals", type=int, default=6, help="3 to 50 boxes (default 6)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sweep", type=int, metavar="N", help="run seeds seed..seed+N-1, report failures")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once in a sweep (default 1)")
    parser.add_argument("--shrink", action="store_true",
                        help="shrink a failing run to the fewest terminals and staff actions that still fail")
    parser.add_argument("--ops", type=int, metavar="K", help="the staff stop after K actions (a run's prefix)")
    parser.add_argument("--inject", choices=sorted(FAULTS), help="plant a bug the checks must catch")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the run's timeline (needs matplotlib)")
    args = parser.parse_args()
    if not 3 <= args.terminals <= 50:
        parser.error("--terminals must be 3..50")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.ops is not None and args.ops < 0:
        parser.error("--ops must be 0 or more")
    if args.sweep is None:
        report = run(args.scenario, args.terminals, args.seed, args.inject, args.ops)
        if args.plot is not None:
            plot(report, args.plot)
        if args.shrink and not report["checks"]["ok"]:
            report["shrunk"] = shrink(Attempt(args.scenario, args.terminals, args.seed, args.inject, args.ops),
                                      _failed(report["checks"]), report["actions"])
        print(json.dumps(report, indent=1))
        sys.exit(0 if report["checks"]["ok"] else 1)
    failures = []
    finished = 0

    def one(seed: int) -> dict[str, Any] | None:
        attempt = Attempt(args.scenario, args.terminals, seed, args.inject, args.ops)
        failed, actions = attempt.run()
        return None if failed is None else {"seed": seed, "repro": attempt.command(), "failed": failed,
                                            "actions": actions}

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for failure in pool.map(one, range(args.seed, args.seed + args.sweep)):
            finished += 1
            if failure is not None:
                failures.append(failure)
            bar = "#" * finished + "." * (args.sweep - finished)
            print(f"\r[{bar}] {finished}/{args.sweep} failed {len(failures)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if args.shrink:
        for failure in failures:
            attempt = Attempt(args.scenario, args.terminals, failure["seed"], args.inject, args.ops)
            failure["shrunk"] = shrink(attempt, failure["failed"], failure["actions"])
    print(json.dumps({"scenario": args.scenario, "terminals": args.terminals, "seeds": args.sweep,
                      "first_seed": args.seed, **({"injected": args.inject} if args.inject else {}),
                      "failed": failures}, indent=1))
    sys.exit(1 if failures else 0)


@dataclass(frozen=True)
class Attempt:
    """One run as its own command (a fresh process, exactly as its repro command runs it)."""

    scenario: str
    terminals: int
    seed: int
    inject: str | None = None
    ops: int | None = None

    def command(self) -> str:
        return "python -m simulations.partition " + " ".join(self._args())

    def _args(self) -> list[str]:
        args = ["--scenario", self.scenario, "--terminals", str(self.terminals), "--seed", str(self.seed)]
        if self.inject:
            args += ["--inject", self.inject]
        if self.ops is not None:
            args += ["--ops", str(self.ops)]
        return args

    def run(self) -> tuple[list[str] | None, int]:
        """``(failed checks, staff actions)``: ``None`` when it passed; a crash's last stderr line
        stands for its failed checks."""
        done = subprocess.run(module_command(__spec__.name, *self._args()), capture_output=True, text=True,
                              check=False)
        try:
            report = json.loads(done.stdout)
        except ValueError:
            return done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"], 0
        return (None if done.returncode == 0 else _failed(report["checks"])), report["actions"]


def shrink(failing: Attempt, failed: list[str], actions: int | None = None) -> dict[str, Any]:
    """The smallest run that fails the same way (a check among ``failed`` fails again): the
    fewest terminals, tried from 3 up with the same seed; then the shortest prefix of its staff's
    actions, bisected with ``--ops``.  Each try is its own process; the answer is a repro command."""
    tries = 0

    def fails(attempt: Attempt) -> tuple[bool, int]:
        nonlocal tries
        tries += 1
        print(f"\rshrinking seed {attempt.seed}: {attempt.terminals} terminals, ops {attempt.ops} ...",
              end=" " * 10, file=sys.stderr, flush=True)
        got, done = attempt.run()
        return got is not None and bool(set(got) & set(failed)), done

    best = failing
    for n in range(3, failing.terminals):
        candidate = Attempt(failing.scenario, n, failing.seed, failing.inject, failing.ops)
        failed_too, done = fails(candidate)
        if failed_too:
            best, actions = candidate, done
            break
    if actions is None:
        _, actions = fails(best)
    if not actions:  # it crashed before reporting: no action count to bisect
        print(file=sys.stderr)
        return {"terminals": best.terminals, "ops": best.ops, "tries": tries, "repro": best.command()}
    low, high = -1, actions if best.ops is None else min(actions, best.ops)  # high fails; low = -1 stands for "passes"
    while high - low > 1:
        middle = (low + high) // 2
        if fails(Attempt(best.scenario, best.terminals, best.seed, best.inject, middle))[0]:
            high = middle
        else:
            low = middle
    best = Attempt(best.scenario, best.terminals, best.seed, best.inject, high)
    print(file=sys.stderr)
    return {"terminals": best.terminals, "ops": high, "tries": tries, "repro": best.command()}


def plot(report: dict[str, Any], path: Path) -> None:
    """The timeline: splits and heals shaded, each terminal's acknowledged work as ticks, the
    CRDT updates each terminal lacked over time, and the moment everything converged."""
    try:
        import matplotlib  # noqa: PLC0415 - only for --plot
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        sys.exit("--plot needs matplotlib: pip install matplotlib")
    terminals = list(report["terminals"])
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(11, 6.5), height_ratios=(1, 1.3))
    events = report["events"]
    cut_at = None
    for e in events:
        if e["event"] == "split" and cut_at is None:
            cut_at = e["t"]
        elif e["event"] == "heal" and cut_at is not None:
            for ax in (top, bottom):
                ax.axvspan(cut_at, e["t"], color="tab:red", alpha=0.12, lw=0)
            cut_at = None
        elif e["event"] in ("crash", "restart", "replaced"):
            top.annotate(e["event"], (e["t"], terminals.index(e["terminal"])), fontsize=7, color="tab:purple")
        elif e["event"] == "converged":
            for ax in (top, bottom):
                ax.axvline(e["t"], color="tab:green", lw=1.5)
            bottom.annotate("converged", (e["t"], 0), fontsize=8, color="tab:green")
    rows = {tid: k for k, tid in enumerate(terminals)}
    top.scatter([t for t, _ in report["timeline"]["writes"]], [rows[tid] for _, tid in report["timeline"]["writes"]],
                marker="|", s=60, color="tab:blue")
    top.set_yticks(range(len(terminals)), terminals, fontsize=7)
    top.set_title(f"{report['scenario']} - seed {report['seed']}: acknowledged work per terminal "
                  "(shaded: network split)", fontsize=9)
    samples = report["timeline"]["divergence"]
    for tid in terminals:
        bottom.plot([t for t, _ in samples], [m.get(tid, 0) for _, m in samples], lw=1, label=tid)
    bottom.set_ylabel("CRDT updates missing")
    bottom.set_xlabel("virtual seconds")
    bottom.legend(fontsize=6, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _failed(checks: dict[str, Any]) -> list[str]:
    return [name for name, c in checks.items() if name != "ok" and not _passed(c)]


def _passed(check: Any) -> bool:
    return check is True or (isinstance(check, dict) and bool(check.get("ok")))


if __name__ == "__main__":
    main()
