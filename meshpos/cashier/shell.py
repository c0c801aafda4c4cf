"""The cashier's plumbing: its state, the disk and the peer links (the base of the cashier).

Holds what every part of the cashier shares - the voter and its states, the folded drawers, the
drawers held here - and moves the cores' actions: a voter step's or a learn's
:class:`~meshpos.cashier.quorum.Persist` becomes rows on the store's group commit (with the
domain events of newly committed entries) before its answers leave; a relay or heads from a
peer goes through :class:`~meshpos.cashier.learner.Learner`.  A failed cashier write marks the
state stale: nothing more is answered until it is reloaded from disk.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import anyio

from core.clock import iso
from core.errors import StoreError, Unavailable
from core.ratelog import RateLimitedLog
from meshpos.cashier import ledger
from meshpos.cashier.event_map import events_of
from meshpos.cashier.learner import Learner, heads_from_wire, heads_to_wire, relay_from_wire
from meshpos.cashier.messages import Accept, Ledger, Message, Prepare, to_wire
from meshpos.cashier.ports import CashierTerminal
from meshpos.cashier.quorum import Deposed, Holder, Persist, Send, Voter, VoterState
from meshpos.cashier.recovery import Recovery
from storage import cashier_rows as rows
from storage.store import Ticket

log = logging.getLogger(__name__)
#: Alarms a peer's messages raise, logged at most a few times a second per peer (each is an event too).
_alarm_log = RateLimitedLog(log)


class InDoubt(Exception):
    """The holder lost the drawer (or the voters went quiet) with an append in flight."""


@dataclass(eq=False)
class Hold:
    """A :class:`Holder` at work and the requests waiting on it."""

    holder: Holder
    ready: anyio.Event = field(default_factory=anyio.Event)  # acquired or deposed
    deposed: Deposed | None = None
    waiting: dict[int, anyio.Event] = field(default_factory=dict)
    stored: dict[int, Ticket | None] = field(default_factory=dict)  # this terminal's copy of each commit
    last_used: float = field(default_factory=anyio.current_time)


class Shell:
    """The state the cashier's parts share and the plumbing they all use (a base class: the
    parts stack on it - Recovering, Holding, Requests, Reconciler, Reviews - and
    :class:`meshpos.cashier.service.Cashier` on top)."""

    def __init__(self, terminal: CashierTerminal) -> None:
        self.t = terminal
        self.me = terminal.config.terminal_id
        self.rng = terminal.rng
        self.states: dict[str, VoterState] = {}  # per drawer: votes, accepted, committed ledger
        self.voter = Voter(self.me, self.states)
        self.learner = Learner(self.voter)
        self.drawers: dict[str, ledger.Drawer] = {}  # the committed ledgers, added up
        self.provisional: dict[str, dict[str, dict[str, Any]]] = {}  # drawer -> op_id -> row
        self._holds: dict[str, Hold] = {}
        self._rounds: dict[str, int] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._grown: dict[str, anyio.Event] = {}  # set when a drawer's committed ledger grows here
        self._seq = 0
        self._local_send, self._local_recv = anyio.create_memory_object_stream[Message](math.inf)
        self._reconcile_now = anyio.Event()
        #: A cashier write failed: memory may hold what the disk refused.  Nothing is answered
        #: until the state is reloaded from disk (:meth:`_fresh`).
        self._stale = False
        self._reload_lock = anyio.Lock()
        #: Counts state (re)loads: a request that awaited across one starts over (503, retry).
        self.epoch = 0
        self._to_mark: set[tuple[str, str | None]] = set()  # (order id, user) to mark paid, retried
        self.stats = {"commits": 0, "acquisitions": 0, "provisional": 0, "reviews": 0}
        #: Set while this terminal rebuilds the cashier state it lost (``meshpos recover``): it
        #: neither votes nor holds a drawer until the voters' reports bound what it forgot
        #: (recovery.Recovery; docs/cashier.md).  Reports arrive in parts: sender -> parts so far.
        self.recovery: Recovery | None = None
        self._report_parts: dict[str, dict[str, Any]] = {}

    async def load(self) -> None:
        """Read the voter state, the committed ledgers and the provisional entries from disk.

        Everything is read into new objects first and installed without an await between, so a
        reload never shows a half-read state, and a failed read leaves the old one in place.
        """
        stored = await rows.read(self.t.store)
        states: dict[str, VoterState] = {}
        for drawer, rnd, holder in stored.votes:
            states.setdefault(drawer, VoterState()).promised = (rnd, holder)
        for drawer, pos, rnd, holder, entry in stored.accepted:
            states.setdefault(drawer, VoterState()).accepted[pos] = ((rnd, holder), entry)
        gaps: set[str] = set()
        for drawer, pos, entry in stored.ledger:
            st = states.setdefault(drawer, VoterState())
            if pos != len(st.committed) or drawer in gaps:
                # Only a commit that failed between two later successful ones leaves a gap (its
                # accepted rows stay: see cashier_rows.committed).  Keep the dense prefix; what lies
                # beyond is committed, so it is reported as accepted under the promised ballot - the
                # value chosen there - and the next holder commits it again; peers relay the rest.
                gaps.add(drawer)
                st.accepted.setdefault(pos, (st.promised, entry))
                continue
            st.committed.append(entry)
        provisional: dict[str, dict[str, dict[str, Any]]] = {}
        seq = 0
        for drawer, op_id, row_seq, entry, state, pos, created in stored.provisional:
            provisional.setdefault(drawer, {})[op_id] = {
                "entry": entry, "state": state, "position": pos, "seq": row_seq, "created_at": created}
            seq = max(seq, row_seq)
        rounds, recovering = stored.rounds, stored.recovering
        # -- install (no await from here on) --
        if recovering and self.recovery is None:
            self.recovery = Recovery(self.me, anyio.current_time())
            log.warning("cashier: this terminal's cashier state was rebuilt by 'meshpos recover'; it neither votes "
                        "nor holds a drawer until the other voters have reported what it may have promised")
        for drawer in sorted(gaps):
            log.warning("drawer %s: stored ledger has a gap at position %d; completing it from the voters",
                        drawer, len(states[drawer].committed))
        for drawer, rnd in rounds.items():  # never lower: a prepare may be out under a newer round
            self._rounds[drawer] = max(rnd, self._rounds.get(drawer, 0))
        self.states.clear()  # in place: the Voter holds this dict
        self.states.update(states)
        self.drawers = {drawer: ledger.fold(drawer, st.committed) for drawer, st in states.items()}
        self.provisional = provisional
        self._seq = max(self._seq, seq)
        self.epoch += 1

    async def _fresh(self) -> None:
        """After a failed cashier write: let what is queued settle, then reload from disk."""
        if not self._stale:
            return
        async with self._reload_lock:
            if not self._stale:
                return
            try:
                await self._durable_barrier()
            except StoreError as exc:
                raise Unavailable(f"cashier storage is failing ({exc.__cause__ or exc}); retry") from exc
            try:
                await self.load()
            except Exception as exc:
                raise Unavailable(f"cashier state could not be read back from disk ({exc}); retry") from exc
            for hold in self._holds.values():  # their view came from memory: take drawers afresh
                for waiter in hold.waiting.values():
                    waiter.set()
                hold.ready.set()
                if hold.holder.phase == "holding":
                    self._send(hold.holder.release())  # what it committed is true: voters learn it
            self._holds.clear()
            self._stale = False
            log.warning("cashier state reloaded from disk after a failed write")

    async def _durable(self, ticket: Ticket | None) -> None:
        """Wait for a cashier write.  If it failed, the terminal answers nothing more for the
        cashier until it has reloaded its state from disk; the caller gets 503 / 4012."""
        if ticket is None:
            return
        try:
            await ticket.wait()
        except StoreError as exc:
            self._stale = True
            raise Unavailable(f"the cashier could not store its state durably ({exc.__cause__ or exc}); "
                              "nothing was acknowledged, retry") from exc

    def voters(self) -> list[str]:
        """The roster's POS terminals; a terminal not enrolled in a store is its own only voter."""
        if self.t.mesh is not None:
            return self.t.mesh.roster.voters()
        return [self.me] if self.t.config.type == "pos" else []

    def reachable(self, voters: list[str]) -> list[str]:
        links = self.t.mesh.links if self.t.mesh is not None else {}
        return [v for v in voters if v == self.me or v in links]

    def quorum(self) -> dict[str, Any]:
        voters = self.voters()
        return {"voters": voters, "reachable": self.reachable(voters), "majority": len(voters) // 2 + 1}

    def _send(self, sends: list[Send]) -> None:
        now = anyio.current_time()
        for s in sends:
            if s.to == self.me:
                self._local_send.send_nowait(s.message)
            elif self.t.mesh is not None:
                self.t.mesh.send_control(s.to, to_wire(s.message, now))  # unreachable: the holder resends

    async def _vote(self, sender: str, msg: Message) -> None:
        if self.me not in self.voters():
            return
        if self.recovery is not None and isinstance(msg, Prepare | Accept):
            return  # it may have promised more than it remembers: unanswered, like an unplugged voter
        await self._fresh()
        replies, persist = self.voter.step(sender, msg, anyio.current_time())
        await self._durable(self._store(persist))  # durable before any answer leaves
        self._send(replies)

    def _store(self, persist: Persist | None) -> Ticket | None:
        """Queue what a voter step or a learn changed, and add newly committed entries to the
        drawer (raising their domain events with the same write)."""
        if persist is None:
            return None
        drawer = persist.drawer
        sql: list[rows.Statement] = []
        if persist.promised is not None:
            sql.append(rows.vote(drawer, *persist.promised))
        sql.extend(rows.accepted(drawer, pos, ballot[0], ballot[1], entry) for pos, ballot, entry in persist.accepted)
        events: list[tuple[str, dict[str, Any]]] = []
        if persist.committed:
            sql.extend(rows.committed(drawer, persist.start, persist.committed, iso(self.t.clock())))
            d = self.drawers.setdefault(drawer, ledger.Drawer(drawer))
            grown = self._grown.pop(drawer, None)
            if grown is not None:
                grown.set()
            for pos, entry in enumerate(persist.committed, persist.start):
                ledger.apply(d, pos, entry)
                events.extend(events_of(d, pos))
        return self._enqueue(events=events, sql=sql)

    def _learn(self, drawer: str, start: int, entries: list[Any] | tuple[Any, ...]) -> Ticket | None:
        return self._store(self.voter.learn(drawer, start, entries))

    def _relay(self, drawer: str, start: int, entries: list[Any]) -> None:
        """Hand fresh commits to the linked terminals that do not vote (voters get ``Commit``)."""
        mesh = self.t.mesh
        if mesh is None:
            return
        voters = set(self.voters())
        wire = to_wire(Ledger(drawer, start, tuple(entries)), 0.0)
        for peer_id in list(mesh.links):
            if peer_id not in voters:
                mesh.send_control(peer_id, wire)

    def link_up(self, peer_id: str) -> None:
        """A peer linked: tell it how far each ledger goes here, so each side sends what the other lacks."""
        assert self.t.mesh is not None
        self.t.mesh.send_control(peer_id, heads_to_wire(self.learner.heads()))
        self._reconcile_now.set()

    def _on_heads(self, sender: str, data: dict[str, Any]) -> None:
        self._send(self.learner.on_heads(sender, heads_from_wire(data)))

    async def _on_relay(self, sender: str, data: dict[str, Any]) -> None:
        relay = relay_from_wire(data)
        relayed = self.learner.on_relay(sender, relay, anyio.current_time())
        if relayed.diverged is not None:
            # Two committed ledgers disagree: only possible if the voter set changed while a drawer
            # was in use (docs/cashier.md, "Changing the voters").  Never silent: an alarm event.
            d = relayed.diverged
            _alarm_log.log(sender, logging.ERROR, "drawer %s: %s's committed ledger differs from this one at "
                           "positions %s", d.drawer, sender, list(d.positions[:10]))
            await self._event("cashier:divergence",
                              {"drawer": d.drawer, "peer": sender, "positions": list(d.positions)})
        if relayed.ask is not None:  # a gap: ask the sender for everything from where this copy ends
            assert self.t.mesh is not None
            self.t.mesh.send_control(sender, heads_to_wire(relayed.ask))
        if relayed.learn:
            await self._fresh()
            await self._durable(self._learn(relay.drawer, relay.start, relay.entries))

    def _enqueue(self, *, events: list[tuple[str, dict[str, Any]]] | tuple[()] = (),
                 sql: list[tuple[str, tuple[Any, ...]]] | tuple[()] = (), at: str | None = None) -> Ticket:
        """The cashier's rows and events for the terminal's next group commit."""
        return self.t.store.enqueue_rows(origin="cashier", at=at or iso(self.t.clock()), events=events, sql=sql)

    async def _durable_barrier(self) -> None:
        """Wait until everything queued so far is on disk (batches commit in order)."""
        await self._enqueue().wait()

    async def _event(self, kind: str, payload: dict[str, Any]) -> None:
        """Record a lock event (durable before the request it explains is answered)."""
        try:
            await self._enqueue(events=[(kind, payload)]).wait()
        except StoreError:
            log.warning("could not record %s %s", kind, payload)

    def _lock(self, drawer: str) -> anyio.Lock:
        return self._locks.setdefault(drawer, anyio.Lock())
