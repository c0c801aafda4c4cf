"""The drawer quorum core under seeded chaos: partitions, crashes, loss, duplication, reordering.

A deterministic simulator drives the real sans-I/O cores - :mod:`meshpos.cashier.quorum` (voters,
holders, a far-behind voter's ledger answer, the MAX_AHEAD check, what a voter must store),
:mod:`meshpos.cashier.learner` (relays, gaps, heads) and :mod:`meshpos.cashier.acquire` (when a
failed acquisition retries, waits or gives up) - without sockets, in virtual time.  A voter's
disk is only what its :class:`~meshpos.cashier.quorum.Persist` actions wrote, and a crash
restarts it from that.  It checks after every run, per drawer:

* agreement - every committed ledger anyone ever reported (voters' durable prefixes, holders'
  completed ledgers, a non-voting learner's copy) is a prefix of one sequence: no position
  committed with two entries;
* durability - after the network heals, a fresh holder's completed ledger holds every entry a
  holder ever acknowledged as committed, at its position, and no operation twice; the learner,
  linked to it, ends with the same ledger.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from core.errors import MeshposError
from meshpos.cashier import ledger as ledger_rules
from meshpos.cashier.acquire import Acquisition, Retry
from meshpos.cashier.learner import Heads, Learner
from meshpos.cashier.ledger import check_entry
from meshpos.cashier.messages import (
    Accept,
    Accepted,
    BadMessage,
    Commit,
    Ledger,
    Prepare,
    Promise,
    Reject,
    Release,
    check_positions,
    from_wire,
    to_wire,
)
from meshpos.cashier.quorum import (
    LEASE_SECONDS,
    NOOP,
    Acquired,
    Committed,
    Deposed,
    Holder,
    Persist,
    Send,
    Voter,
    VoterState,
    learn,
)
from meshpos.cashier.recovery import RECOVERY_QUARANTINE, Recovery, report

DRAWER = "drawer-1"
STEP = 0.01  # virtual seconds per simulation step
LEARNER = "till-1"  # a terminal that does not vote: it learns the ledger from relays only


def write(disk: dict[str, VoterState], persist: Persist | None) -> None:
    """What the shell's rows do on disk, applied to a voter's durable state."""
    if persist is None:
        return
    st = disk.setdefault(persist.drawer, VoterState())
    if persist.promised is not None:
        st.promised = persist.promised
    for pos, ballot, entry in persist.accepted:
        st.accepted[pos] = (ballot, entry)
    for offset, entry in enumerate(persist.committed):
        st.accepted.pop(persist.start + offset, None)
        if persist.start + offset == len(st.committed):
            st.committed.append(entry)


class Sim:
    def __init__(self, seed: int, n: int, *, lease: float = LEASE_SECONDS, delay: float = 0.05) -> None:
        self.rng = random.Random(seed)
        self.ids = [f"pos-{k}" for k in range(1, n + 1)]
        self.lease, self.delay = lease, delay
        self.voters = {v: Voter(v, lease=lease) for v in [*self.ids, LEARNER]}
        self.disk: dict[str, dict[str, VoterState]] = {v: {} for v in self.voters}
        self.learners = {v: Learner(voter) for v, voter in self.voters.items()}
        self.holders: dict[str, Holder | None] = dict.fromkeys(self.ids)
        self.max_round = dict.fromkeys(self.ids, 0)
        self.wire: list[tuple[float, str, str, Any]] = []  # (deliver at, from, to, message)
        self.now = 0.0
        self.groups: list[set[str]] = [set(self.ids)]
        self.down: dict[str, float] = {}  # crashed terminal -> when it is back
        self.loss = self.dup = 0.0
        self.ledgers: list[list[Any]] = []  # every committed ledger anyone reported
        self.acknowledged: dict[int, Any] = {}
        self.counter = 0
        self.eagerness = 0.02  # chance per step that an idle terminal tries to take the drawer
        #: Disk losses: the victim runs the recovery protocol (recovery.Recovery) before it votes
        #: or holds again, as the shell does after ``meshpos recover``.
        self.amnesia = False
        self.recovering: dict[str, Recovery] = {}
        self.losses, self.last_loss = 0, float("-inf")
        #: Taking the drawer as the shell does (meshpos.cashier.acquire): per terminal, its
        #: acquisition, the current attempt's deadline, its ledger length when the attempt
        #: started, the refusal that ended it; and when a retry it was told to wait for is due.
        self.acquiring: dict[str, Acquisition] = {}
        self.attempt: dict[str, tuple[float, int]] = {}
        self.deposed: dict[str, Deposed] = {}
        self.retry_at: dict[str, float] = {}
        #: How often the far-behind answer, the catch-up, the lease wait and the gap ask ran.
        self.ledger_answers = self.catch_ups = self.lease_waits = self.gap_asks = 0

    def connected(self, a: str, b: str) -> bool:
        if LEARNER in (a, b):  # on its own link to everyone (what reaches it is still lossy)
            return a not in self.down and b not in self.down
        return a not in self.down and b not in self.down and any(a in g and b in g for g in self.groups)

    def post(self, sender: str, sends: list[Send]) -> None:
        for s in sends:
            copies = 2 if self.rng.random() < self.dup else 1
            for _ in range(copies):
                if self.rng.random() >= self.loss:
                    self.wire.append((self.now + self.rng.uniform(0.0, self.delay), sender, s.to, s.message))

    def store(self, tid: str, persist: Persist | None) -> None:
        write(self.disk[tid], persist)

    def deliver_due(self) -> None:
        due = [m for m in self.wire if m[0] <= self.now]
        self.wire = [m for m in self.wire if m[0] > self.now]
        self.rng.shuffle(due)  # reordering
        for _, sender, to, msg in due:
            if not self.connected(sender, to):
                continue
            if isinstance(msg, tuple):  # recovery: ("query",) or ("report", its state, its ledger)
                if msg[0] == "query" and to not in self.recovering:
                    st = self.voters[to].state(DRAWER)
                    self.wire.append((self.now + self.rng.uniform(0.0, self.delay), to, sender,
                                      ("report", report(self.voters[to].states), list(st.committed))))
                elif msg[0] == "report" and to in self.recovering:
                    self.store(to, self.voters[to].learn(DRAWER, 0, msg[2]))  # the shell relays the ledger first
                    self.recovering[to].take(sender, msg[1])
                continue
            if isinstance(msg, Heads):
                self.post(to, self.learners[to].on_heads(sender, msg))
                continue
            check_positions(msg, len(self.voters[to].state(msg.drawer).committed))  # never refuses the honest
            if isinstance(msg, Ledger):
                relayed = self.learners[to].on_relay(sender, msg, self.now)
                assert relayed.diverged is None, f"committed ledgers diverge: {relayed.diverged}"
                if relayed.ask is not None:
                    self.gap_asks += 1
                    self.post(to, [Send(sender, relayed.ask)])  # type: ignore[arg-type]
                if relayed.learn:
                    self.store(to, self.voters[to].learn(msg.drawer, msg.start, msg.entries))
                continue
            if to in self.recovering and isinstance(msg, Prepare | Accept):
                continue  # neither votes until it has rebuilt what it forgot
            if isinstance(msg, Prepare | Accept | Commit | Release):
                if to == LEARNER:
                    continue
                sends, persist = self.voters[to].step(sender, msg, self.now)
                self.ledger_answers += any(isinstance(s.message, Ledger) for s in sends)
                self.store(to, persist)  # durable before the answers leave
                self.post(to, sends)
            else:
                holder = self.holders[to]
                if isinstance(msg, Reject):
                    self.max_round[to] = max(self.max_round[to], msg.promised[0])
                if holder is not None:
                    sends, events = holder.handle(sender, msg)
                    self.post(to, sends)
                    self.on_events(to, holder, events)

    def on_events(self, tid: str, holder: Holder, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, Acquired):
                self.ledgers.append(list(event.ledger))
                self.store(tid, self.voters[tid].learn(DRAWER, 0, event.ledger))  # its own copy, as the shell
            elif isinstance(event, Committed):
                assert event.position not in self.acknowledged or self.acknowledged[event.position] == event.entry
                self.acknowledged[event.position] = event.entry
                self.ledgers.append(list(holder.ledger))
                self.store(tid, self.voters[tid].learn(DRAWER, event.position, [event.entry]))
                self.post(tid, [Send(LEARNER, Ledger(DRAWER, event.position, (event.entry,)))])  # the relay
            elif isinstance(event, Deposed):
                if tid in self.acquiring:
                    self.deposed[tid] = event
                else:
                    self.holders[tid] = None

    def chaos(self) -> None:
        r = self.rng.random() * 8  # a fault every ~1.5 virtual seconds on average
        if r < 0.004:  # a new partition (kitchen cut from the front, ...)
            ids = self.ids[:]
            self.rng.shuffle(ids)
            cut = self.rng.randint(1, len(ids) - 1)
            self.groups = [set(ids[:cut]), set(ids[cut:])]
        elif r < 0.008:
            self.groups = [set(self.ids)]
        elif r < 0.010:  # crash: the voter restarts from what it stored, loses its memory; a holder is gone
            victim = self.rng.choice(self.ids)
            self.restart(victim, copy.deepcopy(self.disk[victim]))
            self.down[victim] = self.now + self.rng.uniform(0.5, 5.0)  # back after a restart
        elif r < 0.014 and self.amnesia and not self.recovering and self.now > self.last_loss + 20.0:
            # One box's disk is lost (one at a time: if a majority forgot at once, no one could
            # say what they had promised - recovery then waits for an operator, as it must).
            victim = self.rng.choice(self.ids)
            self.last_loss = self.now
            self.losses += 1
            self.disk[victim] = {}
            self.restart(victim, {})
            self.max_round[victim] = 0  # its cashier_rounds went with the disk
            back_at = self.down[victim] = self.now + self.rng.uniform(0.5, 5.0)
            self.recovering[victim] = Recovery(victim, started=back_at)
        for tid, back_at in list(self.down.items()):
            if back_at <= self.now:
                del self.down[tid]

    def restart(self, tid: str, states: dict[str, VoterState]) -> None:
        self.voters[tid] = Voter(tid, states, lease=self.lease)
        self.learners[tid] = Learner(self.voters[tid])
        self.holders[tid] = None
        for volatile in (self.acquiring, self.attempt, self.deposed, self.retry_at):
            volatile.pop(tid, None)

    def recover(self) -> None:
        """The recovering terminals ask the voters they reach, and adopt once enough reported."""
        for tid, rec in list(self.recovering.items()):
            if tid in self.down:
                continue
            reachable = {v for v in self.ids if self.connected(tid, v)}
            for v in rec.ask(self.now, self.ids, reachable):
                self.wire.append((self.now + self.rng.uniform(0.0, self.delay), tid, v, ("query",)))
            if rec.complete(self.now, self.ids, self.voters[tid].states):
                rounds = {DRAWER: self.max_round[tid]}
                for drawer in rec.adopt(self.voters[tid].states, rounds, self.ids):
                    self.disk[tid][drawer] = copy.deepcopy(self.voters[tid].states[drawer])
                self.max_round[tid] = rounds[DRAWER]
                del self.recovering[tid]

    def work(self) -> None:
        tid = self.rng.choice(self.ids)
        if tid in self.down or tid in self.recovering:
            return
        holder = self.holders[tid]
        if holder is None:
            self.work_acquire(tid)
        elif holder.phase == "holding" and self.rng.random() < 0.3:
            self.counter += 1
            self.post(tid, holder.append({"op": f"{tid}#{self.counter}"}))

    def work_acquire(self, tid: str) -> None:
        if tid not in self.acquiring and self.rng.random() < self.eagerness:
            self.acquiring[tid] = Acquisition(tid, self.now, patient=self.rng.random() < 0.8)
            # Half the time from nothing (a terminal far behind: voters answer with the ledger
            # itself, quorum.PROMISE_MAX_ENTRIES); else from its own voter's committed prefix,
            # as the shell does (voters then report only what lies above it, Prepare.known).
            self.start_attempt(tid, known=None if self.rng.random() < 0.5 else [])

    def start_attempt(self, tid: str, known: list[Any] | None = None) -> None:
        st = self.voters[tid].state(DRAWER)
        holder = Holder(tid, DRAWER, self.ids, round_above=max(self.max_round[tid], st.promised[0]),
                        ledger=list(st.committed) if known is None else known)
        self.max_round[tid] = holder.ballot[0]
        self.holders[tid] = holder
        self.attempt[tid] = (Acquisition.attempt(self.now), len(st.committed))
        self.post(tid, holder.acquire())

    def acquisitions(self) -> None:
        """The shell's ``_hold`` loop: an attempt ends held, refused, by the deadline, or when
        this terminal's ledger grew; the policy says what follows."""
        for tid, acq in list(self.acquiring.items()):
            if tid in self.down or tid in self.recovering:
                continue
            holder = self.holders[tid]
            if holder is None:  # waiting to retry
                if self.now >= self.retry_at.get(tid, float("inf")):
                    del self.retry_at[tid]
                    self.start_attempt(tid)
                continue
            if holder.phase == "holding":
                del self.acquiring[tid]
                continue
            deadline, base = self.attempt[tid]
            grown = len(self.voters[tid].state(DRAWER).committed) > base
            deposed = self.deposed.pop(tid, None)
            if deposed is None and not grown and self.now < deadline:
                continue
            self.post(tid, holder.release())
            self.holders[tid] = None
            decision = acq.failed(self.now, grown=grown, answered=deposed is not None, deposed=deposed, rng=self.rng)
            if isinstance(decision, Retry):
                self.catch_ups += grown and deposed is None
                self.lease_waits += decision.wait > 0
                self.retry_at[tid] = self.now + decision.wait
            else:
                del self.acquiring[tid]

    def tick(self) -> None:
        self.acquisitions()
        for tid, holder in self.holders.items():
            if holder is not None and tid not in self.down:
                self.post(tid, holder.tick(self.now))

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.now += STEP
            self.chaos()
            self.recover()
            self.work()
            self.tick()
            self.deliver_due()

    def settle(self) -> list[Any]:
        """Heal everything, wait out the leases, and let one fresh holder complete the ledger
        (catching up through the voters' ledger answers when it is far behind); then link the
        learner to it (``heads``), so it gets what it lacks."""
        self.groups, self.down, self.loss, self.dup = [set(self.ids)], {}, 0.0, 0.0
        self.now += LEASE_SECONDS + 1
        tid = self.ids[0]
        self.holders = dict.fromkeys(self.ids)
        self.acquiring.clear()
        self.max_round[tid] = max(self.max_round.values()) + 10
        for _attempt in range(200):
            self.start_attempt(tid)
            holder, (_, base) = self.holders[tid], self.attempt[tid]
            assert holder is not None
            for _ in range(200):
                self.now += STEP
                self.recover()
                self.tick()
                self.deliver_due()
                if holder.phase == "holding" or len(self.voters[tid].state(DRAWER).committed) > base:
                    break
            if holder.phase == "holding":
                for _ in range(100):  # the learner links up to it and gets what it lacks
                    if self.voters[LEARNER].state(DRAWER).committed == holder.ledger:
                        break
                    self.post(LEARNER, [Send(tid, self.learners[LEARNER].heads())])  # type: ignore[arg-type]
                    for _ in range(20):
                        self.now += STEP
                        self.tick()
                        self.deliver_due()
                assert self.voters[LEARNER].state(DRAWER).committed == holder.ledger, "the learner never caught up"
                return list(holder.ledger)
            self.holders[tid] = None
            if len(self.voters[tid].state(DRAWER).committed) == base:
                self.now += LEASE_SECONDS + 1
        raise AssertionError("no holder could complete the ledger on a healed network")

    def check(self, final: list[Any]) -> None:
        reported = [*self.ledgers, final, *[v.state(DRAWER).committed for v in self.voters.values()],
                    *[d[DRAWER].committed for d in self.disk.values() if DRAWER in d]]
        for ledger in reported:
            assert ledger == final[:len(ledger)], f"diverging committed ledgers:\n{ledger}\n{final}"
        for pos, entry in self.acknowledged.items():
            assert pos < len(final) and final[pos] == entry, f"acknowledged entry at {pos} lost: {entry}"
        ops = [e.get("op") or e["op_id"] for e in final if e != NOOP]
        assert len(ops) == len(set(ops)), "an operation committed twice"


@pytest.mark.parametrize("duel", [False, True], ids=["leases", "duelling"])
@pytest.mark.parametrize("voters", [3, 5])
@pytest.mark.parametrize("seed", range(12))
def test_randomized_schedules_keep_the_ledger_safe(seed: int, voters: int, duel: bool) -> None:
    """``duelling``: leases too short to matter, slow links, eager terminals - takeovers in the
    middle of appends, the interleavings where safety rests on the ballots alone."""
    sim = Sim(seed, voters, lease=0.05, delay=0.3) if duel else Sim(seed, voters)
    sim.loss, sim.dup = 0.05, 0.05
    if duel:
        sim.eagerness = 0.05
    sim.run(12000)
    final = sim.settle()
    sim.check(final)
    assert sim.acknowledged, "the schedule committed nothing: it tests nothing"
    assert sim.ledger_answers and sim.catch_ups and sim.lease_waits and sim.gap_asks, "a shell rule never ran"


@pytest.mark.parametrize("voters", [3, 5])
@pytest.mark.parametrize("seed", range(12))
def test_a_voter_that_lost_its_disk_rebuilds_before_it_votes(seed: int, voters: int) -> None:
    """Voters lose their whole cashier state (disk gone, ``meshpos recover``) during duelling
    schedules; with the recovery protocol no two entries are ever committed at one position."""
    sim = Sim(seed, voters, lease=0.05, delay=0.3)
    sim.loss, sim.dup, sim.eagerness = 0.05, 0.05, 0.05
    sim.amnesia = True
    sim.run(12000)
    final = sim.settle()
    sim.check(final)
    assert sim.acknowledged and sim.losses, "the schedule tests nothing"


def _exchange(voters: dict[str, Voter], holder: Holder, now: float = 0.0) -> None:
    """Deliver ``holder``'s messages to the voters in ``voters`` and their answers back, until quiet."""
    pending = holder.acquire() if holder.phase == "idle" else []
    while pending:
        out: list[Send] = []
        for send in pending:
            if send.to in voters and isinstance(send.message, Prepare | Accept | Commit):
                for answer in voters[send.to].handle(holder.me, send.message, now):
                    more, _ = holder.handle(send.to, answer.message)
                    out += more
        pending = out


@pytest.mark.parametrize("recover", [False, True], ids=["naive", "recovered"])
def test_a_forgotten_accept_is_rebuilt_before_the_voter_counts_again(recover: bool) -> None:
    """pos-1 and pos-2 commit ``v`` at position 0 under pos-2's ballot; pos-1 loses its disk.
    Voting at once, it and pos-3 (which never heard of ``v``) form a majority that does not know
    ``v``, and pos-1's next holder commits something else there.  Recovered first, it cannot."""
    ids = ["pos-1", "pos-2", "pos-3"]
    voters = {v: Voter(v) for v in ids}
    first = Holder("pos-2", DRAWER, ids)
    _exchange({v: voters[v] for v in ("pos-1", "pos-2")}, first)
    assert first.phase == "holding"
    sends = first.append({"op": "v"})
    for send in sends:
        if send.to in ("pos-1", "pos-2"):
            for answer in voters[send.to].handle("pos-2", send.message, 0.0):
                first.handle(send.to, answer.message)
    assert first.ledger == [{"op": "v"}]  # committed: on the disks of pos-1 and pos-2

    voters["pos-1"] = Voter("pos-1")  # pos-1's disk is gone; so are its rounds
    rounds = {DRAWER: 0}
    if recover:
        rec = Recovery("pos-1", started=0.0)
        asked = rec.ask(RECOVERY_QUARANTINE, ids, {"pos-2", "pos-3"})
        assert asked == ["pos-2", "pos-3"]
        for v in asked:
            learn(voters["pos-1"].state(DRAWER), 0, voters[v].state(DRAWER).committed)  # the relay
            rec.take(v, report(voters[v].states))
        assert rec.complete(RECOVERY_QUARANTINE, ids, voters["pos-1"].states)
        rec.adopt(voters["pos-1"].states, rounds, ids)
    second = Holder("pos-1", DRAWER, ids, round_above=rounds[DRAWER])
    _exchange({v: voters[v] for v in ("pos-1", "pos-3")}, second)  # pos-2 is unplugged now
    if second.phase == "holding":
        _exchange({v: voters[v] for v in ("pos-1", "pos-3")}, second)
        second_sends = second.append({"op": "w"})
        for send in second_sends:
            if send.to in ("pos-1", "pos-3"):
                for answer in voters[send.to].handle("pos-1", send.message, 0.0):
                    second.handle(send.to, answer.message)
    if recover:
        assert second.ledger[0] == {"op": "v"}, "the committed entry was lost"
    else:
        assert second.ledger[0] != {"op": "v"}, "the control should show the forgotten entry overwritten"


def test_recovery_needs_enough_voters_and_the_quarantine() -> None:
    rec = Recovery("pos-1", started=100.0)
    voters = ["pos-1", "pos-2", "pos-3", "pos-4", "pos-5"]
    assert [Recovery.needed(v, "pos-1") for v in (["pos-1"], voters[:2], voters[:3], voters[:4], voters)] == \
        [0, 1, 2, 2, 3]
    assert Recovery.needed(["pos-1", "pos-2", "pos-3"], "kds-1") == 2  # a holder that does not vote
    assert rec.ask(105.0, voters, set(voters)) == []  # quarantine
    assert rec.ask(110.0, voters, {"pos-2", "pos-3"}) == ["pos-2", "pos-3"]
    assert rec.ask(110.5, voters, {"pos-2", "pos-3"}) == []  # asked a moment ago
    rec.take("pos-4", {})  # never asked: an answer from before the quarantine could be stale
    promised = (7, "pos-9")
    rec.take("pos-2", {DRAWER: report({DRAWER: VoterState(promised=promised,
                                                            accepted={3: ((6, "pos-9"), "old"), 4: ((7, "pos-9"), "x")},
                                                            committed=["a", "b", "c"])})[DRAWER]})
    assert not rec.complete(111.0, voters, {DRAWER: VoterState(committed=["a", "b", "c"])})
    assert rec.ask(111.0, voters, {"pos-2", "pos-3", "pos-4"}) == ["pos-3", "pos-4"]
    rec.take("pos-3", {DRAWER: report({DRAWER: VoterState(promised=(5, "pos-1"), accepted={3: ((5, "pos-1"), "mine")},
                                                            committed=["a", "b", "c"])})[DRAWER]})
    rec.take("pos-4", {})
    states: dict[str, VoterState] = {}
    assert not rec.complete(111.0, voters, states)  # its ledger is shorter than theirs (3 entries)
    states[DRAWER] = VoterState(committed=["a", "b", "c"])
    assert rec.complete(111.0, voters, states)
    rounds: dict[str, int] = {}
    assert rec.adopt(states, rounds, voters) == [DRAWER]
    st = states[DRAWER]
    assert st.promised == promised  # the highest promise any of them made
    assert st.accepted == {3: ((6, "pos-9"), "old"), 4: ((7, "pos-9"), "x")}  # highest ballot per position
    assert rounds[DRAWER] == 7  # its next ballot (8, pos-1) is above all it may have used


# -- money on top: real ledger entries, validation, provisional entries, reconciliation -----------

ORDERS = {f"o{k}": 1000 + 250 * (k % 7) for k in range(60)}  # order id -> total cents


def _entry(tid: str, n: int, **fields: Any) -> dict[str, Any]:
    return {"kind": "payment", "op_id": f"{tid}#{n}", "drawer": DRAWER, "terminal_id": tid, "user_id": None,
            "at": "2026-12-02T12:00:00.000Z", "status": "committed", "tip_cents": 0, **fields}


OPENING = {"kind": "drawer_opened", "op_id": "open", "drawer": DRAWER, "terminal_id": "pos-1", "user_id": "carla",
           "at": "2026-12-02T11:00:00.000Z", "status": "committed", "float_cents": 0, "operator": "carla"}


class MoneySim(Sim):
    """Terminals take payments as the real shell does: one append at a time, validated against the
    completed ledger (:func:`meshpos.cashier.ledger.check`); cut off from a majority they store
    provisional payments, validated against what they know; after the final heal one holder
    reconciles them all (:func:`meshpos.cashier.ledger.conflict`), into the ledger or into review."""

    def __init__(self, seed: int, n: int, **kw: Any) -> None:
        super().__init__(seed, n, **kw)
        for tid, v in self.voters.items():  # the drawer was opened before the schedule
            v.state(DRAWER).committed.append(OPENING)
            self.disk[tid][DRAWER] = VoterState(committed=[OPENING])
        self.provisional: dict[str, list[dict[str, Any]]] = {tid: [] for tid in self.ids}

    def payment(self, tid: str, known: list[Any]) -> dict[str, Any] | None:
        """A payment ``tid`` would take now, valid against ``known`` (None: nothing left to pay)."""
        d = ledger_rules.fold(DRAWER, known)
        order = self.rng.choice(sorted(ORDERS))
        left = ORDERS[order] - d.paid_by_order.get(order, 0)
        if left <= 0:
            return None
        self.counter += 1
        amount = left if self.rng.random() < 0.5 else self.rng.randint(1, left)
        entry = _entry(tid, self.counter, order_id=order, amount_cents=amount,
                       method=self.rng.choice(ledger_rules.METHODS), order_total_cents=ORDERS[order])
        if self.rng.random() < 0.03 and d.op_positions:  # a client retrying an op_id with other content
            entry["op_id"] = self.rng.choice(sorted(d.op_positions))
        view = {"id": order, "status": "open", "total_cents": ORDERS[order]}
        try:
            ledger_rules.check(d, entry, view)
        except MeshposError:
            return None
        return entry

    def work(self) -> None:
        tid = self.rng.choice(self.ids)
        if tid in self.down:
            return
        reach = sum(1 for v in self.ids if self.connected(tid, v) or v == tid)
        holder = self.holders[tid]
        if reach < len(self.ids) // 2 + 1:
            if self.rng.random() < 0.05:  # no majority: service goes on, provisionally
                known = self.voters[tid].state(DRAWER).committed + self.provisional[tid]
                entry = self.payment(tid, known)
                if entry is not None and entry["op_id"] not in {e["op_id"] for e in self.provisional[tid]}:
                    self.provisional[tid].append(entry)
            return
        if holder is None:
            super().work_acquire(tid)
        elif holder.phase == "holding" and not holder.in_flight and self.rng.random() < 0.3:
            entry = self.payment(tid, holder.ledger)
            if entry is not None and entry["op_id"] not in ledger_rules.fold(DRAWER, holder.ledger).op_positions:
                self.post(tid, holder.append(entry))

    def run(self, steps: int) -> None:
        super().run(steps // 3)
        chaos, self.chaos = self.chaos, lambda: None  # type: ignore[method-assign]
        self.groups, self.down = [{self.ids[0]}, set(self.ids[1:])], {}  # one POS surely cut off a while
        super().run(steps // 6)
        self.chaos = chaos  # type: ignore[method-assign]
        super().run(steps - steps // 3 - steps // 6)

    def drive(self, holder: Holder, steps: int = 400) -> None:
        for _ in range(steps):
            self.now += STEP
            self.tick()
            self.deliver_due()
            if holder.phase == "holding" and not holder.in_flight:
                return

    def reconcile(self, final: list[Any]) -> list[Any]:
        """The heal: every provisional payment is committed, or appended in review."""
        holder = self.holders[self.ids[0]]
        assert holder is not None and holder.phase == "holding"
        for tid in self.ids:
            for entry in self.provisional[tid]:
                d = ledger_rules.fold(DRAWER, holder.ledger)
                pos = d.op_positions.get(entry["op_id"])
                if pos is not None and ledger_rules.content(d.entries[pos]) == ledger_rules.content(entry):
                    continue  # already in (cannot happen for a payment never sent, but harmless)
                view = {"id": entry["order_id"], "status": "open", "total_cents": ORDERS[entry["order_id"]]}
                reason = ledger_rules.conflict(d, entry, view)
                final_entry = dict(entry, provisional={"terminal_id": tid, "created_at": "", "reason": "cut off"})
                if reason is not None:
                    if pos is not None:
                        final_entry["op_id"] = f"{entry['op_id']}~{tid}"
                    final_entry |= {"status": "in_review", "review": {"reason": reason, "conflicts_with": []}}
                self.post(holder.me, holder.append(final_entry))
                self.drive(holder)
                assert not holder.in_flight, "a reconciling append did not commit on a healed network"
        return list(holder.ledger)

    def check_money(self, final: list[Any]) -> None:
        d = ledger_rules.fold(DRAWER, final)
        for order, total in ORDERS.items():
            assert d.paid_by_order.get(order, 0) <= total, f"order {order} paid beyond its total: {final}"
        in_ledger = {e["op_id"]: e for e in final if e != NOOP}
        for tid, entries in self.provisional.items():
            for entry in entries:
                found = in_ledger.get(f"{entry['op_id']}~{tid}") or in_ledger.get(entry["op_id"])
                assert found is not None and found.get("provisional"), f"provisional {entry} lost"
                assert found["status"] in ("committed", "in_review")
                if found["status"] == "in_review":
                    assert found["review"]["reason"]


@pytest.mark.parametrize("voters", [3, 5])
@pytest.mark.parametrize("seed", range(10))
def test_randomized_payments_never_overpay_and_lose_no_provisional_entry(seed: int, voters: int) -> None:
    sim = MoneySim(seed, voters)
    sim.loss, sim.dup = 0.05, 0.05
    sim.run(12000)
    final = sim.settle()
    sim.check(final)
    final = sim.reconcile(final)
    sim.check(final)
    sim.check_money(final)
    assert len(final) > 3 and any(sim.provisional.values()), "the schedule exercised nothing"


def test_a_deposed_holder_can_never_append_again() -> None:
    """Fencing: once a majority promised a higher ballot, the old holder's accepts are refused."""
    ids = ["pos-1", "pos-2", "pos-3"]
    voters = {v: Voter(v) for v in ids}

    def exchange(holder: Holder, sends: list[Send], reach: list[str], now: float) -> list[Any]:
        events, queue = [], list(sends)
        while queue:
            s = queue.pop(0)
            if s.to not in reach:
                continue
            for reply in voters[s.to].handle(holder.me, s.message, now):
                more, evs = holder.handle(s.to, reply.message)
                queue += more
                events += evs
        return events

    old = Holder("pos-1", DRAWER, ids)
    assert isinstance(exchange(old, old.acquire(), ids, 0.0)[-1], Acquired)
    assert isinstance(exchange(old, old.append({"op": "a"}), ids, 0.0)[-1], Committed)
    # pos-1 is cut off; after its lease, pos-2 takes the drawer with pos-2 and pos-3.
    new = Holder("pos-2", DRAWER, ids, round_above=old.ballot[0])
    early = exchange(new, new.acquire(), ["pos-2", "pos-3"], 1.0)
    assert isinstance(early[-1], Deposed) and early[-1].locked_by == "pos-1"  # lease still runs
    new = Holder("pos-2", DRAWER, ids, round_above=old.ballot[0])
    taken = exchange(new, new.acquire(), ["pos-2", "pos-3"], LEASE_SECONDS + 1)
    assert isinstance(taken[-1], Acquired) and taken[-1].ledger == ({"op": "a"},)
    # pos-1 comes back and tries to append under its old ballot: refused, in doubt, never committed.
    late = exchange(old, old.append({"op": "stale"}), ids, LEASE_SECONDS + 2)
    assert isinstance(late[-1], Deposed) and late[-1].in_doubt == ({"op": "stale"},)
    assert all(v.state(DRAWER).accepted.get(1, (None, None))[1] != {"op": "stale"} for v in voters.values()
               if v.me != "pos-1") and old.phase == "deposed"
    assert isinstance(exchange(new, new.append({"op": "b"}), ids, LEASE_SECONDS + 3)[-1], Committed)
    assert new.ledger == [{"op": "a"}, {"op": "b"}]


# -- on the wire -----------------------------------------------------------------------------------

ENTRY = {"kind": "noop"}


@pytest.mark.parametrize("msg", [
    Prepare(DRAWER, (3, "pos-1"), 7),
    Promise(DRAWER, (3, "pos-1"), "pos-2", ((7, (2, "pos-3"), ENTRY),), 7),
    Reject(DRAWER, (3, "pos-1"), "pos-2", (4, "pos-3"), "pos-3", 100.0 + 4.5),
    Reject(DRAWER, (3, "pos-1"), "pos-2", (4, "pos-3"), "pos-3", None),
    Accept(DRAWER, (3, "pos-1"), 8, ENTRY),
    Accepted(DRAWER, (3, "pos-1"), 8, "pos-2", 7),
    Commit(DRAWER, (3, "pos-1"), 7, (ENTRY, ENTRY)),
    Release(DRAWER, (3, "pos-1")),
])
def test_messages_survive_the_wire_and_leases_travel_as_time_left(msg: Any) -> None:
    data = json.loads(json.dumps(to_wire(msg, now=100.0)))
    assert data["type"] == "cashier"
    # the receiver's clock reads 5000: a lease end is re-based on it, everything else is equal
    back = from_wire(data, now=5000.0)
    if isinstance(msg, Reject) and msg.until is not None:
        assert back.until == pytest.approx(5004.5) and data["lease_left"] == 4.5
    else:
        assert back == msg


@pytest.mark.parametrize("data", [
    {"type": "cashier", "m": "vote"},
    {"type": "cashier", "m": "prepare", "drawer": DRAWER},
    {"type": "cashier", "m": "prepare", "drawer": DRAWER, "ballot": [1, "pos-1"], "known": 0, "x": 1},
    {"type": "cashier", "m": "prepare", "drawer": DRAWER, "ballot": [1.5, "pos-1"], "known": 0},
    {"type": "cashier", "m": "prepare", "drawer": DRAWER, "ballot": [True, "pos-1"], "known": 0},
    {"type": "cashier", "m": "prepare", "drawer": DRAWER, "ballot": [1, "pos-1"], "known": -1},
    {"type": "cashier", "m": "accept", "drawer": 7, "ballot": [1, "pos-1"], "position": 0, "entry": ENTRY},
    {"type": "cashier", "m": "accept", "drawer": DRAWER, "ballot": [1, "pos-1"], "position": 0, "entry": "x"},
    {"type": "cashier", "m": "promise", "drawer": DRAWER, "ballot": [1, "pos-1"], "voter": "v",
     "accepted": [[0, [1, "a"]]], "committed": 0},
])
def test_malformed_messages_are_refused(data: dict[str, Any]) -> None:
    with pytest.raises(BadMessage):
        from_wire(data, 0.0, check_entry)


_REJECT = {"type": "cashier", "m": "reject", "drawer": DRAWER, "ballot": [1, "pos-1"], "voter": "pos-2",
           "promised": [2, "pos-3"], "locked_by": "pos-3", "lease_left": 1.5}


@pytest.mark.parametrize(("change", "accepted"), [
    ({}, True),
    ({"lease_left": 0}, True),  # an integer number of seconds
    ({"lease_left": float("nan")}, True),  # as it always was: a NaN end of lease holds nobody off
    ({"lease_left": None, "locked_by": "", "promised": [0, ""]}, True),  # nobody's ballot
    ({"lease_left": -0.5}, False),
    ({"lease_left": True}, False),
    ({"lease_left": "1"}, False),
    ({"ballot": [2**53, "pos-1"]}, False),  # not a JS-safe integer
    ({"ballot": [2**53 - 1, "pos-1"]}, True),
    ({"ballot": [1, "pos-1\n"]}, False),
    ({"ballot": [1, "pos-1", 2]}, False),
    ({"voter": ""}, True),
    ({"voter": "-pos"}, False),
    ({"m": "ledger"}, False),  # a relay is not a quorum message
    ({"m": 7}, False),
    ({"m": "\ud800"}, False),  # msgspec cannot word these refusals (a lone surrogate): still refused
    ({"ballot": ["\ud800", "pos-1"]}, False),
    ({"\ud800": 1}, False),
])
def test_the_wire_accepts_exactly_its_shapes(change: dict[str, Any], accepted: bool) -> None:
    data = {**_REJECT, **change}
    if accepted:
        assert isinstance(from_wire(data, 10.0, check_entry), Reject)
    else:
        with pytest.raises(BadMessage):
            from_wire(data, 10.0, check_entry)


def test_release_frees_the_drawer_for_another_terminal_at_once() -> None:
    ids = ["pos-1", "pos-2", "pos-3"]
    voters = {v: Voter(v) for v in ids}

    def exchange(holder: Holder, sends: list[Send]) -> None:
        while sends:
            s = sends.pop(0)
            for reply in voters[s.to].handle(holder.me, s.message, now=1.0):
                out, _events = holder.handle(s.to, reply.message)  # answered by voter s.to
                sends.extend(out)

    first = Holder("pos-1", DRAWER, ids)
    exchange(first, first.acquire())
    assert first.phase == "holding"
    second = Holder("pos-2", DRAWER, ids, round_above=first.ballot[0])
    exchange(second, second.acquire())
    assert second.phase == "deposed"  # pos-1's lease runs
    exchange(first, first.release())
    third = Holder("pos-2", DRAWER, ids, round_above=first.ballot[0] + 1)
    exchange(third, third.acquire())
    assert third.phase == "holding"


def test_a_voter_that_always_answers_last_is_told_only_what_it_lacks() -> None:
    """Commits ride on the next Accept (``commit_upto``); a Commit, on tick, carries only what a
    voter's last answer says it lacks - never the whole ledger again for a voter that is late."""
    ids = ["pos-1", "pos-2", "pos-3"]
    voters = {v: Voter(v) for v in ids}
    holder = Holder("pos-1", DRAWER, ids)
    commits: list[Send] = []

    def exchange(sends: list[Send]) -> None:
        late: list[Send] = []
        queue = list(sends)
        while queue or late:
            s = queue.pop(0) if queue else late.pop(0)
            if s.to == "pos-3" and s in sends and queue:  # pos-3 hears everything last
                late.append(s)
                continue
            if isinstance(s.message, Commit):
                commits.append(s)
            for reply in voters[s.to].handle(holder.me, s.message, now=1.0):
                queue += holder.handle(s.to, reply.message)[0]

    exchange(holder.acquire())
    for n in range(300):
        exchange(holder.append({"op": n}))
        if n % 50 == 0:
            exchange(holder.tick(now=float(n)))
    assert commits == [] or max(len(s.message.entries) for s in commits) <= 2
    assert all(len(v.state(DRAWER).committed) >= 299 for v in voters.values())  # from the accepts
    exchange(holder.tick(now=1000.0))  # the last one, told on tick
    assert all(v.state(DRAWER).committed == holder.ledger for v in voters.values())
    assert len(holder.ledger) == 300


def test_a_resent_prepare_still_says_what_the_holder_knows() -> None:
    holder = Holder("pos-1", DRAWER, ["pos-1", "pos-2", "pos-3"], ledger=[{"op": n} for n in range(5000)])
    first = holder.acquire()
    again = holder.tick(now=10.0)
    assert {s.message.known for s in first + again} == {5000} and len(again) == 3
    voter = Voter("pos-2", {DRAWER: VoterState(committed=[{"op": n} for n in range(5000)])})
    (promise,) = voter.handle("pos-1", again[1].message, now=10.0)
    assert promise.message.accepted == ()  # nothing above what the holder knows: a small promise


def test_one_leftover_lease_does_not_block_a_majority() -> None:
    """A lease refusal deposes a holder only once no majority is left to promise."""
    ids = ["pos-1", "pos-2", "pos-3"]
    voters = {v: Voter(v) for v in ids}
    old = Holder("pos-1", DRAWER, ids)
    for s in old.acquire()[:1]:  # only pos-1's own voter heard the old holder: a lease there
        voters[s.to].handle("pos-1", s.message, now=0.0)
    new = Holder("pos-2", DRAWER, ids, round_above=5)
    events: list[Any] = []
    queue = new.acquire()
    while queue:
        s = queue.pop(0)
        for reply in voters[s.to].handle("pos-2", s.message, now=1.0):
            more, evs = new.handle(s.to, reply.message)
            queue += more
            events += evs
    assert new.phase == "holding" and isinstance(events[-1], Acquired)


def test_a_late_lease_refusal_does_not_depose_a_holder_with_a_majority() -> None:
    ids = ["pos-1", "pos-2", "pos-3"]
    holder = Holder("pos-2", DRAWER, ids, round_above=5)
    holder.acquire()
    for v in ("pos-2", "pos-3"):
        holder.handle(v, Promise(DRAWER, holder.ballot, v, (), 0))
    assert holder.phase == "holding"
    late = Reject(DRAWER, holder.ballot, "pos-1", (1, "pos-1"), "pos-1", 9.0)  # pos-1's leftover lease
    assert holder.handle("pos-1", late) == ([], []) and holder.phase == "holding"
    fenced = Reject(DRAWER, holder.ballot, "pos-1", (9, "pos-1"), "pos-1")
    assert isinstance(holder.handle("pos-1", fenced)[1][0], Deposed)
