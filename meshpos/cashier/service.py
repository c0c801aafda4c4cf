"""The cashier of one terminal: the quorum cores wired to storage, the peer links and the API.

Decisions live in :mod:`meshpos.cashier.quorum` (who may append, what is committed) and
:mod:`meshpos.cashier.ledger` (what the money adds up to, which request is refused); this module
moves their messages and makes every state change durable before it is answered:

* as a **voter** (the roster's POS terminals), a quorum message is handled, the changed voter
  state is queued on the store's group commit, and the reply leaves only once that is on disk;
* as a **holder**, a request takes the drawer (or keeps it), completes the ledger, validates,
  appends, and answers once a majority stored the entry and this terminal's copy is on disk;
* as a **learner** (every terminal), committed entries reach its own ledger copy - relayed by the
  holder, or exchanged at link-up (``heads`` / ``ledger``) - and raise the domain events there;
* without a majority, a request with ``allow_provisional`` is stored **provisionally**; the
  reconciler commits it after the heal, or appends it ``in_review`` when it conflicts.

Requests on one drawer are taken one at a time on a terminal (validation sees every earlier
entry); different drawers proceed in parallel.  Everything runs in the terminal's task group.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from core.clock import iso, random_id
from core.errors import Conflict, InvalidInput, MeshposError, NoQuorum, NotEnrolled, NotFound, StoreError, Unavailable
from core.ratelog import RateLimitedLog
from meshpos.cashier import ledger
from meshpos.cashier.acquire import ACQUIRE_TIMEOUT, IDLE_RELEASE_SECONDS, Acquisition, Locked, Retry
from meshpos.cashier.learner import Learner, check_drawer_wire, heads_from_wire, heads_to_wire, relay_from_wire
from meshpos.cashier.ledger import check_drawer
from meshpos.cashier.ports import CashierTerminal
from meshpos.cashier.quorum import (
    PROMISE_MAX_ENTRIES,
    RELAY_CHUNK,
    RETRY_SECONDS,
    Accept,
    Acquired,
    BadMessage,
    Commit,
    Committed,
    Deposed,
    Holder,
    Ledger,
    Message,
    Persist,
    Prepare,
    Recovery,
    Release,
    Send,
    Voter,
    VoterState,
    check_positions,
    from_wire,
    ledger_chunks,
    report,
    report_from_wire,
    report_to_wire,
    to_wire,
)
from storage import cashier_rows as rows
from storage.store import Ticket

log = logging.getLogger(__name__)
#: Alarms a peer's messages raise, logged at most a few times a second per peer (each is an event too).
_alarm_log = RateLimitedLog(log)

__all__ = ["PROMISE_MAX_ENTRIES", "Cashier", "check_drawer"]

#: An append not committed within this is *in doubt* (retry with the same op_id).
COMMIT_TIMEOUT = 3.0
#: How often provisional entries are retried once a majority may be back.
RECONCILE_SECONDS = 1.0

class InDoubt(Exception):
    """The holder lost the drawer (or the voters went quiet) with an append in flight."""


@dataclass(eq=False)
class _Hold:
    """A :class:`Holder` at work and the requests waiting on it."""

    holder: Holder
    ready: anyio.Event = field(default_factory=anyio.Event)  # acquired or deposed
    deposed: Deposed | None = None
    waiting: dict[int, anyio.Event] = field(default_factory=dict)
    stored: dict[int, Ticket | None] = field(default_factory=dict)  # this terminal's copy of each commit
    last_used: float = field(default_factory=anyio.current_time)


class Cashier:
    def __init__(self, terminal: CashierTerminal) -> None:
        self.t = terminal
        self.me = terminal.config.terminal_id
        self.rng = terminal.rng
        self.states: dict[str, VoterState] = {}  # per drawer: votes, accepted, committed ledger
        self.voter = Voter(self.me, self.states)
        self.learner = Learner(self.voter)
        self.drawers: dict[str, ledger.Drawer] = {}  # the committed ledgers, added up
        self.provisional: dict[str, dict[str, dict[str, Any]]] = {}  # drawer -> op_id -> row
        self._holds: dict[str, _Hold] = {}
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
        #: (quorum.Recovery; docs/cashier.md).  Reports arrive in parts: sender -> parts so far.
        self.recovery: Recovery | None = None
        self._report_parts: dict[str, dict[str, Any]] = {}

    # -- lifecycle -----------------------------------------------------------------------------

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

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._to_mark |= self._own_covering_payments()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._local_loop, self._local_recv)
            tg.start_soon(self._ticker)
            tg.start_soon(self._reconciler)
            task_status.started()

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

    # -- who votes -----------------------------------------------------------------------------

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

    # -- messages ------------------------------------------------------------------------------

    def _send(self, sends: list[Send]) -> None:
        now = anyio.current_time()
        for s in sends:
            if s.to == self.me:
                self._local_send.send_nowait(s.message)
            elif self.t.mesh is not None:
                self.t.mesh.send_control(s.to, to_wire(s.message, now))  # unreachable: the holder resends

    async def _local_loop(self, receive: MemoryObjectReceiveStream[Message]) -> None:
        async with receive:
            async for msg in receive:
                try:
                    await self._deliver(self.me, msg)
                except Unavailable as exc:
                    log.error("cashier: %s", exc.message)  # unanswered: the holder resends
                except Exception:  # noqa: BLE001 - one message never stops this terminal's voter
                    log.exception("cashier: a message from this terminal's own holder failed")

    async def receive(self, sender: str, data: dict[str, Any]) -> None:
        """A ``cashier`` control message from an authenticated peer (raises :class:`BadMessage`)."""
        kind = data.get("m")
        try:
            if kind == "heads":
                self._on_heads(sender, data)
            elif kind == "ledger":
                await self._on_relay(sender, data)
            elif kind == "recovery_query":
                self._on_recovery_query(sender, data)
            elif kind == "recovery_report":
                await self._on_recovery_report(sender, data)
            else:
                await self._deliver(sender, from_wire(data, anyio.current_time(), ledger.check_entry))
        except Unavailable as exc:
            log.error("cashier: %s; %s is not answered", exc.message, sender)

    async def _deliver(self, sender: str, msg: Message) -> None:
        check_drawer_wire(msg.drawer)  # before anything is kept under that name
        st = self.states.get(msg.drawer)
        check_positions(msg, 0 if st is None else len(st.committed))
        if isinstance(msg, Prepare | Accept | Commit | Release):
            await self._vote(sender, msg)
        else:
            self._answer(sender, msg)

    async def _vote(self, sender: str, msg: Message) -> None:
        if self.me not in self.voters():
            return
        if self.recovery is not None and isinstance(msg, Prepare | Accept):
            return  # it may have promised more than it remembers: unanswered, like an unplugged voter
        await self._fresh()
        replies, persist = self.voter.step(sender, msg, anyio.current_time())
        await self._durable(self._store(persist))  # durable before any answer leaves
        self._send(replies)

    def _answer(self, sender: str, msg: Message) -> None:
        hold = self._holds.get(msg.drawer)
        if hold is None:
            return
        sends, events = hold.holder.handle(sender, msg)
        self._send(sends)
        for event in events:
            if isinstance(event, Acquired):
                hold.ready.set()
            elif isinstance(event, Committed):
                hold.stored[event.position] = self._learn(event.drawer, event.position, [event.entry])
                self._relay(event.drawer, event.position, [event.entry])
                waiter = hold.waiting.pop(event.position, None)
                if waiter is not None:
                    waiter.set()
            elif isinstance(event, Deposed):
                hold.deposed = event
                self._rounds[event.drawer] = max(self._rounds.get(event.drawer, 0), event.promised[0])
                if self._holds.get(event.drawer) is hold:
                    del self._holds[event.drawer]
                hold.ready.set()
                for waiter in hold.waiting.values():
                    waiter.set()
                hold.waiting.clear()

    async def _ticker(self) -> None:
        while True:
            await anyio.sleep(RETRY_SECONDS)
            now = anyio.current_time()
            if self.recovery is not None:
                await self._drive_recovery(now)
            for drawer, hold in list(self._holds.items()):
                idle = now - hold.last_used > IDLE_RELEASE_SECONDS and not hold.waiting
                if idle and hold.holder.phase == "holding" and not self._lock(drawer).locked():
                    await self._release(drawer)
                else:
                    self._send(hold.holder.tick(now))

    # -- the ledger copy every terminal keeps ------------------------------------------------

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
                events.extend(_events_of(d, pos))
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

    # -- rebuilding a lost cashier state (meshpos recover) ----------------------------------------

    def recovery_status(self) -> dict[str, Any] | None:
        """Where the rebuilding stands (``None``: this terminal's cashier state is whole)."""
        rec = self.recovery
        if rec is None:
            return None
        voters = self.voters()
        got = sorted(v for v in rec.reports if v in voters)
        needed = Recovery.needed(voters, self.me)
        wait = max(0.0, rec.started + rec.quarantine - anyio.current_time())
        return {"reports": got, "needed": needed, "quarantine_left_s": round(wait, 1),
                "message": (f"this terminal is rebuilding the cashier state it lost ('meshpos recover'): it takes "
                            f"no drawer before {needed} other POS voter(s) have reported (so far "
                            f"{len(got)}: {', '.join(got) or 'none'})" + (f", in {wait:.0f} s at the earliest"
                                                                          if wait else ""))}

    async def _drive_recovery(self, now: float) -> None:
        rec = self.recovery
        assert rec is not None
        voters = self.voters()
        links = set(self.t.mesh.links) if self.t.mesh is not None else set()
        for voter in rec.ask(now, voters, links):
            known = {drawer: len(st.committed) for drawer, st in self.states.items()}
            self.t.mesh.send_control(voter, {"type": "cashier", "m": "recovery_query",  # type: ignore[union-attr]
                                             "known": known})
        if not rec.complete(now, voters, self.states):
            return
        rounds = dict(self._rounds)
        changed = rec.adopt(self.states, rounds, voters)
        sql = rows.recovered({drawer: (self.states[drawer].promised, rounds[drawer],
                                       [(pos, b[0], b[1], e) for pos, (b, e) in self.states[drawer].accepted.items()])
                              for drawer in changed})
        await self._durable(self._enqueue(
            sql=sql,
            events=[("cashier:recovered", {"reports_from": sorted(v for v in rec.reports if v in voters),
                                           "drawers": changed})]))
        self._rounds.update(rounds)
        self.recovery = None
        self._report_parts.clear()
        log.warning("cashier: rebuilt from the reports of %s; voting and holding drawers again",
                    ", ".join(sorted(rec.reports)) or "nobody (this terminal is the store's only POS voter)")
        self._reconcile_now.set()

    def _on_recovery_query(self, sender: str, data: dict[str, Any]) -> None:
        """A terminal that lost its cashier state asks: the committed entries it lacks first (it
        must know them before it counts again), then this voter's promises and accepts."""
        known = data.get("known")
        if set(data) != {"type", "m", "known"} or not isinstance(known, dict) \
                or not all(type(v) is int and v >= 0 for v in known.values()):
            raise BadMessage("recovery_query: needs known (drawer -> ledger length)")
        if self.recovery is not None or self.me not in self.voters() or self.t.mesh is None:
            return  # it knows no more than the asker: silence, so it is not counted
        for drawer, st in self.states.items():
            self._send([Send(sender, relay) for relay in
                        ledger_chunks(drawer, st.committed, min(known.get(drawer, 0), len(st.committed)))])
        drawers = sorted(report(self.states).items())
        for at in range(0, max(1, len(drawers)), RELAY_CHUNK):
            part = dict(drawers[at:at + RELAY_CHUNK])
            self.t.mesh.send_control(sender, report_to_wire(part, last=at + RELAY_CHUNK >= len(drawers)))

    async def _on_recovery_report(self, sender: str, data: dict[str, Any]) -> None:
        drawers, last = report_from_wire(data, ledger.check_entry)
        for drawer in drawers:
            check_drawer_wire(drawer)
        if self.recovery is None:
            return
        parts = self._report_parts.setdefault(sender, {})
        parts.update(drawers)
        if last:
            self.recovery.take(sender, self._report_parts.pop(sender))

    # -- holding a drawer ----------------------------------------------------------------------

    def _lock(self, drawer: str) -> anyio.Lock:
        return self._locks.setdefault(drawer, anyio.Lock())

    def _no_majority(self, drawer: str) -> str | None:
        q = self.quorum()
        if not q["voters"]:
            raise NotEnrolled("this store has no POS terminal to vote on drawers; enroll one (type pos)")
        if len(q["reachable"]) < q["majority"]:
            return (f"cannot reach a majority of the POS voters for drawer {drawer}: {len(q['reachable'])} of "
                    f"{len(q['voters'])} reachable, {q['majority']} needed")
        return None

    async def _hold(self, drawer: str, *, patient: bool = True) -> _Hold:
        """Hold ``drawer`` (taking it if needed).  ``patient=False`` (the reconciler, which simply
        tries again later): no waiting out another holder, no ``lock_failed`` events."""
        if self.recovery is not None:
            raise NoQuorum(self.recovery_status()["message"])
        why = self._no_majority(drawer)
        if why is not None:  # even while holding: an append could not commit, so fail fast
            self._holds.pop(drawer, None)
            raise NoQuorum(why)
        hold = self._holds.get(drawer)
        if hold is not None and hold.holder.phase == "holding":
            return hold
        voters = self.voters()
        acquisition = Acquisition(self.me, anyio.current_time(), patient=patient)
        while True:
            deadline = acquisition.attempt(anyio.current_time())
            st = self.voter.state(drawer)
            round_above = max(self._rounds.get(drawer, 0), st.promised[0])
            holder = Holder(self.me, drawer, voters, round_above=round_above, ledger=st.committed)
            # The round is on disk before any prepare leaves: a restarted terminal never reuses
            # a ballot (two entries proposed under one ballot would break the protocol).
            self._rounds[drawer] = holder.ballot[0]
            await self._durable(self._enqueue(sql=[rows.holder_round(drawer, holder.ballot[0])]))
            hold = _Hold(holder)
            self._holds[drawer] = hold
            grown = self._grown.setdefault(drawer, anyio.Event())
            self._send(holder.acquire())
            with anyio.move_on_after(deadline - anyio.current_time()):
                await _first(hold.ready, grown)
            if holder.phase == "holding":
                self.stats["acquisitions"] += 1
                known = len(self.voter.state(drawer).committed)  # the current state (a reload may
                await self._durable(self._learn(drawer, known, holder.ledger[known:]))  # have replaced st)
                await self._event("lock_acquired", {"drawer": drawer, "holder": self.me, "ballot": list(holder.ballot)})
                return hold
            if self._holds.get(drawer) is hold:
                del self._holds[drawer]
            # Give the attempt up for good: voters that promised it drop its lease at once (else
            # terminals trying together would hold each other off for a whole lease).
            self._send(holder.release())
            decision = acquisition.failed(anyio.current_time(), grown=grown.is_set(), answered=hold.ready.is_set(),
                                          deposed=hold.deposed, rng=self.rng)
            if isinstance(decision, Retry):
                if decision.wait:
                    await anyio.sleep(decision.wait)
                continue
            if isinstance(decision, Locked):
                if not decision.report:
                    raise NoQuorum(f"drawer {drawer} is held by {decision.locked_by}")
                until = iso(self.t.clock() + timedelta(seconds=max(0.0, decision.until - anyio.current_time())))
                await self._event("lock_failed", {"drawer": drawer, "locked_by": decision.locked_by,
                                                  "locked_until": until})
                raise NoQuorum(f"drawer {drawer} is locked by {decision.locked_by} until {until}")
            q = self.quorum()
            if decision.report:
                await self._event("lock_failed", {"drawer": drawer, "locked_by": None, "locked_until": None})
            raise NoQuorum(f"lock timeout: no majority of the POS voters answered for drawer {drawer} within "
                           f"{ACQUIRE_TIMEOUT:g} s ({len(q['reachable'])} of {len(q['voters'])} linked, "
                           f"{q['majority']} needed)")

    def _check_current(self, drawer: str, hold: _Hold, epoch: int) -> None:
        """Validate only against the ledger the holder completed: not across a reload, and not
        with this terminal's copy short of it (a write of it failed)."""
        if self.epoch != epoch or len(self.voter.state(drawer).committed) != len(hold.holder.ledger):
            if self._holds.get(drawer) is hold:
                del self._holds[drawer]
            raise Unavailable(f"drawer {drawer}: this terminal's ledger copy is being reloaded; retry")

    async def _append(self, hold: _Hold, entry: dict[str, Any]) -> int:
        if hold.holder.phase != "holding":  # deposed since it was taken (a late reject)
            raise InDoubt(f"op {entry['op_id']}: the drawer was lost before appending")
        pos = hold.holder.next_position
        hold.last_used = anyio.current_time()
        done = hold.waiting[pos] = anyio.Event()
        self._send(hold.holder.append(entry))
        with anyio.move_on_after(COMMIT_TIMEOUT):
            await done.wait()
        if pos >= len(hold.holder.ledger):  # not committed: deposed, or no majority in time
            if self._holds.get(hold.holder.drawer) is hold:
                del self._holds[hold.holder.drawer]  # take the drawer afresh next time
            raise InDoubt(f"op {entry['op_id']} at position {pos}")
        # This terminal's copy of the entry is on disk too: its own record, or the one its voter
        # queued (the barrier waits for that; a failure there marked the cashier stale).
        ticket = hold.stored.pop(pos, None)
        if ticket is not None:
            await self._durable(ticket)
        else:
            await self._durable_barrier()
        if self._stale:
            raise Unavailable("the cashier could not store its copy of the entry; retry with the same op_id")
        self.stats["commits"] += 1
        return pos

    async def _release(self, drawer: str) -> None:
        hold = self._holds.pop(drawer, None)
        if hold is not None:
            self._send(hold.holder.release())
            await self._event("lock_released", {"drawer": drawer, "holder": self.me})

    # -- requests ------------------------------------------------------------------------------

    def _entry(self, drawer: str, kind: str, op_id: str | None, user: str | None, *, internal: bool = False,
               **fields: Any) -> dict[str, Any]:
        if op_id is not None and not internal:
            if not 1 <= len(op_id) <= 64:
                raise InvalidInput("op_id must be 1-64 characters")
            if op_id.startswith("resolve:") or "~" in op_id:
                raise InvalidInput("op_id: 'resolve:' and '~' are reserved for review entries")
        return {"kind": kind, "op_id": op_id or random_id(16, self.t.id_source), "drawer": drawer,
                "terminal_id": self.me, "user_id": user, "at": iso(self.t.clock()), "status": "committed", **fields}

    def _existing(self, drawer: str, entry: dict[str, Any]) -> dict[str, Any] | None:
        """The first result of a retried op_id; :class:`Conflict` if the op_id meant something else."""
        # This terminal's own provisional entry first: the client asked here, and it may have
        # been reconciled under another op_id (in review) since.
        row = self.provisional.get(drawer, {}).get(entry["op_id"])
        if row is not None:
            if ledger.content(row["entry"]) != ledger.content(entry):
                raise Conflict(f"op_id {entry['op_id']} was already used for another provisional operation")
            return self._result(drawer, self._provisional_view(row))
        d = self.drawers.get(drawer)
        pos = d.op_positions.get(entry["op_id"]) if d is not None else None
        if pos is None:
            self._check_other_drawers(drawer, entry)
            return None
        first = d.entries[pos]  # type: ignore[union-attr]
        if ledger.content(first) == ledger.content(entry):
            return self._result(drawer, ledger.view(d, pos))  # type: ignore[arg-type]
        if entry["kind"] == "review_resolution" and first["kind"] == "review_resolution":
            raise Conflict(f"review item {drawer}.{entry['of']} was already resolved ({first['decision']} by "
                           f"{first['operator']} at {first['at']})")
        raise Conflict(f"op_id {entry['op_id']} was already used for another operation "
                       f"(position {pos} of drawer {drawer})")

    def _check_other_drawers(self, drawer: str, entry: dict[str, Any]) -> None:
        """An ``op_id`` names one operation in the whole store: a retry sent to another drawer is
        a different operation under a used id (409), never a second payment.  (Review entries'
        ids are the drawer's own, ``resolve:<position>``.)"""
        if entry["kind"] == "review_resolution":
            return
        op_id = entry["op_id"]
        for name, other in self.drawers.items():
            if name != drawer and op_id in other.op_positions:
                raise Conflict(f"op_id {op_id} was already used in drawer {name} (position "
                               f"{other.op_positions[op_id]}); an op_id names one operation in the store")
        for name, pending in self.provisional.items():
            if name != drawer and op_id in pending:
                raise Conflict(f"op_id {op_id} was already used for a provisional entry of drawer {name}; an "
                               "op_id names one operation in the store")

    async def _order(self, entry: dict[str, Any]) -> dict[str, Any] | None:
        """The paid order's view, with what the *other* drawers took for it (payments only)."""
        if entry["kind"] != "payment":
            return None
        order = await self.t.get_order(entry["order_id"])  # NotFound: 404, nothing recorded
        elsewhere = sum(d.paid_by_order.get(order["id"], 0) for name, d in self.drawers.items()
                        if name != entry["drawer"])
        return {**order, "paid_elsewhere_cents": elsewhere}

    async def submit(self, drawer: str, entry: dict[str, Any], *, allow_provisional: bool = False) -> dict[str, Any]:
        """Append ``entry`` under the drawer's quorum lock; answer once it is committed and on disk."""
        check_drawer(drawer)
        await self._fresh()
        found = self._existing(drawer, entry)
        if found is not None:
            return found
        await self._order(entry)
        try:
            async with self._lock(drawer):
                for attempt in range(2):
                    epoch = self.epoch
                    hold = await self._hold(drawer)
                    found = self._existing(drawer, entry)  # the completed ledger may hold it already
                    if found is not None:
                        return found
                    d = self.drawers.setdefault(drawer, ledger.Drawer(drawer))
                    order = await self._order(entry)
                    self._check_current(drawer, hold, epoch)
                    _finish(entry, d, order)
                    ledger.check(d, entry, order)
                    try:
                        pos = await self._append(hold, entry)
                    except InDoubt:
                        if attempt == 1:
                            raise NoQuorum(f"lost drawer {drawer}'s lock while appending op {entry['op_id']}: "
                                           "the operation is in doubt; retry with the same op_id") from None
                        continue
                    if self.epoch != epoch:  # reloaded meanwhile: the answer comes from the retry
                        raise Unavailable(f"op {entry['op_id']} is committed at position {pos}, but this terminal "
                                          "reloaded its ledger copy meanwhile; retry with the same op_id")
                    if entry["kind"] == "drawer_closed":
                        await self._release(drawer)
                    await self._after_commit(drawer, pos)
                    return self._result(drawer, ledger.view(self.drawers[drawer], pos))
        except NoQuorum as exc:
            if not allow_provisional:
                raise
            return await self._store_provisional(drawer, entry, exc.message)
        raise AssertionError("unreachable")

    async def _after_commit(self, drawer: str, pos: int) -> None:
        """A committed payment (or an accepted one) that covers its order marks the order paid."""
        d = self.drawers[drawer]
        entry = d.entries[pos]
        if entry["kind"] == "review_resolution" and d.status.get(entry["of"]) == "committed":
            entry = d.entries[entry["of"]]
        if entry["kind"] != "payment" or d.status.get(d.op_positions[entry["op_id"]]) != "committed":
            return
        await self._mark_paid(entry["order_id"], entry["user_id"])

    def _own_covering_payments(self) -> set[tuple[str, str | None]]:
        """Orders this terminal took committed payments for (checked at start: a crash between a
        commit and the order's mark must not leave it unpaid)."""
        live = {day.strftime("%Y%m%d") for day in self.t.live_days()}  # older days are closed
        out = set()
        for d in self.drawers.values():
            for op_id, payment in d.payments.items():
                if payment["terminal_id"] == self.me and payment["order_id"][:8] in live \
                        and d.status.get(d.op_positions[op_id]) == "committed":
                    out.add((payment["order_id"], payment["user_id"]))
        return out

    async def _mark_paid(self, order_id: str, user: str | None) -> None:
        try:
            order = await self.t.get_order(order_id)
            paid = sum(other.paid_by_order.get(order_id, 0) for other in self.drawers.values())
            if paid >= order["total_cents"] and order["status"] not in ("paid", "closed", "cancelled"):
                await self.t.set_order_status(order_id, "paid", user=user)
        except Unavailable as exc:  # the disk refused the order write: retried every second
            log.warning("payment committed but order %s not marked paid yet (%s); retrying", order_id, exc)
            self._to_mark.add((order_id, user))
        except MeshposError as exc:  # archived (read-only) day, not on this box, ...: not retried
            log.warning("payment committed; order %s cannot be marked paid here: %s", order_id, exc.message)

    def _result(self, drawer: str, entry_view: dict[str, Any]) -> dict[str, Any]:
        return {"drawer": self.summary(drawer), "entry": entry_view}

    # -- provisional entries -------------------------------------------------------------------

    def _provisional_view(self, row: dict[str, Any]) -> dict[str, Any]:
        state = row["state"]
        return {"position": row["position"], **row["entry"],
                "status": "provisional" if state == "pending" else state}

    async def _store_provisional(self, drawer: str, entry: dict[str, Any], why: str) -> dict[str, Any]:
        async with self._lock(drawer):
            found = self._existing(drawer, entry)  # the same op_id taken meanwhile (a concurrent retry)
            if found is not None:
                return found
            pending = [r["entry"] for r in self._pending(drawer)]
            d = ledger.fold(drawer, self.states.get(drawer, VoterState()).committed + pending)
            order = await self._order(entry)
            _finish(entry, d, order)
            ledger.check(d, entry, order)
            at = iso(self.t.clock())
            entry["provisional"] = {"terminal_id": self.me, "created_at": at, "reason": why}
            self._seq += 1
            row = {"entry": entry, "state": "pending", "position": None, "seq": self._seq, "created_at": at}
            ticket = self._enqueue(
                at=at, events=[("cashier:provisional", {"drawer": drawer, "op_id": entry["op_id"], "entry": entry})],
                sql=[rows.provisional(drawer, entry["op_id"], self._seq, entry, at)])
            await self._durable(ticket)
            self.provisional.setdefault(drawer, {})[entry["op_id"]] = row
            self.stats["provisional"] += 1
            self._reconcile_now.set()
            result = self._result(drawer, self._provisional_view(row))
            result["message"] = (f"stored provisionally ({why}); it is committed, or sent to the review queue "
                                 "if it conflicts, once a majority is reachable")
            return result

    def _pending(self, drawer: str) -> list[dict[str, Any]]:
        return sorted((r for r in self.provisional.get(drawer, {}).values() if r["state"] == "pending"),
                      key=lambda r: r["seq"])

    async def _reconciler(self) -> None:
        while True:
            with anyio.move_on_after(RECONCILE_SECONDS * self.rng.uniform(0.5, 1.5)):  # jittered, as above
                await self._reconcile_now.wait()
            self._reconcile_now = anyio.Event()
            for order_id, user in sorted(self._to_mark, key=str):
                self._to_mark.discard((order_id, user))
                await self._mark_paid(order_id, user)
            for drawer in [d for d in self.provisional if self._pending(d)]:
                try:
                    if self._no_majority(drawer) is not None:
                        continue
                    await self.reconcile(drawer)
                except NoQuorum as exc:
                    log.info("provisional entries of drawer %s wait: %s", drawer, exc.message)
                except Exception:  # noqa: BLE001 - the next round retries; the terminal keeps serving
                    log.exception("reconciling the provisional entries of drawer %s failed", drawer)

    async def reconcile(self, drawer: str) -> None:
        """Commit the drawer's provisional entries that still fit; append the others ``in_review``."""
        async with self._lock(drawer):
            for row in self._pending(drawer):
                entry = row["entry"]
                epoch = self.epoch
                hold = await self._hold(drawer, patient=False)
                self._check_current(drawer, hold, epoch)
                d = self.drawers.setdefault(drawer, ledger.Drawer(drawer))
                done = _reconciled_at(d, entry)
                if done is not None:  # an earlier round appended it (then crashed, or was in doubt)
                    await self._settle(drawer, row, d.entries[done]["status"], done)
                    continue
                pos = d.op_positions.get(entry["op_id"])
                if pos is not None and ledger.content(d.entries[pos]) == ledger.content(entry):
                    await self._settle(drawer, row, "committed", pos)  # a committed attempt made it in
                    continue
                try:
                    order = await self._order(entry)
                except NotFound:
                    order = None
                reason = ledger.conflict(d, entry, order)
                final = dict(entry)
                if reason is not None:
                    if pos is not None:  # same op_id, other content: the review item needs its own id
                        final["op_id"] = f"{entry['op_id']}~{entry['provisional']['terminal_id']}"
                    final["status"] = "in_review"
                    final["review"] = {"reason": reason, "conflicts_with": ledger.conflicting_positions(d, entry)}
                try:
                    pos = await self._append(hold, final)
                except InDoubt as exc:
                    raise NoQuorum(f"reconciling drawer {drawer}: in doubt ({exc}); retrying") from None
                await self._settle(drawer, row, "committed" if reason is None else "in_review", pos)
                if self.epoch != epoch:
                    return  # reloaded meanwhile: the next round goes on from the disk's state
                if reason is None:
                    await self._after_commit(drawer, pos)
                else:
                    self.stats["reviews"] += 1

    async def _settle(self, drawer: str, row: dict[str, Any], state: str, pos: int) -> None:
        row["state"], row["position"] = state, pos
        await self._durable(self._enqueue(
            sql=[rows.settled(drawer, row["entry"]["op_id"], state, pos, iso(self.t.clock()))]))

    # -- the API's operations -------------------------------------------------------------------

    async def open_drawer(self, drawer: str, *, float_cents: int, operator: str, op_id: str | None = None,
                          allow_provisional: bool = False) -> dict[str, Any]:
        _cents("float_cents", float_cents, 0)
        entry = self._entry(drawer, "drawer_opened", op_id, operator, float_cents=float_cents, operator=operator)
        return await self.submit(drawer, entry, allow_provisional=allow_provisional)

    async def pay(self, drawer: str, *, order_id: str, amount_cents: int, method: str, tip_cents: int = 0,
                  op_id: str | None = None, user: str | None = None, allow_provisional: bool = False) -> dict[str, Any]:
        _cents("amount_cents", amount_cents, 1)
        _cents("tip_cents", tip_cents, 0)
        if method not in ledger.METHODS:
            raise InvalidInput(f"method must be one of {', '.join(ledger.METHODS)}")
        entry = self._entry(drawer, "payment", op_id, user, order_id=order_id, amount_cents=amount_cents,
                            method=method, tip_cents=tip_cents, order_total_cents=0)
        return await self.submit(drawer, entry, allow_provisional=allow_provisional)

    async def move_cash(self, drawer: str, *, direction: str, amount_cents: int, reason: str,
                        op_id: str | None = None, user: str | None = None,
                        allow_provisional: bool = False) -> dict[str, Any]:
        _cents("amount_cents", amount_cents, 1)
        if direction not in ("in", "out"):
            raise InvalidInput("direction must be 'in' or 'out'")
        entry = self._entry(drawer, "cash_movement", op_id, user, direction=direction, amount_cents=amount_cents,
                            reason=reason)
        return await self.submit(drawer, entry, allow_provisional=allow_provisional)

    async def refund(self, drawer: str, *, payment_op_id: str, amount_cents: int, reason: str,
                     op_id: str | None = None, user: str | None = None) -> dict[str, Any]:
        _cents("amount_cents", amount_cents, 1)
        entry = self._entry(drawer, "refund", op_id, user, payment_op_id=payment_op_id, amount_cents=amount_cents,
                            reason=reason)
        return await self.submit(drawer, entry)

    async def close_drawer(self, drawer: str, *, counted_cents: int, op_id: str | None = None,
                           user: str | None = None, allow_provisional: bool = False) -> dict[str, Any]:
        _cents("counted_cents", counted_cents, 0)
        entry = self._entry(drawer, "drawer_closed", op_id, user, counted_cents=counted_cents, expected_cents=0,
                            difference_cents=0)
        return await self.submit(drawer, entry, allow_provisional=allow_provisional)

    def summary(self, drawer: str) -> dict[str, Any]:
        d = self.drawers.get(drawer) or ledger.Drawer(drawer)
        hold = self._holds.get(drawer)
        st = self.states.get(drawer)
        if hold is not None and hold.holder.phase == "holding":
            ballot: Any = list(hold.holder.ballot)
        elif st is not None and st.promised[1]:
            ballot = list(st.promised)
        else:
            ballot = None
        q = self.quorum()
        return {
            "drawer": drawer, "state": d.state, "session": d.session, "expected_cash_cents": d.expected_cash_cents,
            "totals_by_method": d.totals_by_method, "tips_cents": d.tips_cents, "last_close": d.last_close,
            "holder": ballot[1] if ballot else None, "ballot": ballot, "held_here": hold is not None,
            "ledger_length": len(d.entries), "open_reviews": len(d.open_reviews),
            "provisional_pending": len(self._pending(drawer)),
            "voters": {"total": len(q["voters"]), "reachable": len(q["reachable"]), "majority": q["majority"]},
        }

    def drawer(self, drawer: str, *, from_position: int | None = None) -> dict[str, Any]:
        """The drawer, its entries from ``from_position`` (default: the latest session's opening)
        and this terminal's provisional entries for it."""
        check_drawer(drawer)
        d = self.drawers.get(drawer)
        if (d is None or not d.entries) and drawer not in self.provisional:
            raise NotFound(f"drawer {drawer} is unknown here (never opened, or its ledger has not reached "
                           "this terminal)")
        d = d or ledger.Drawer(drawer)
        if from_position is None:
            opens = [p for p, e in enumerate(d.entries) if e["kind"] == "drawer_opened"]
            from_position = opens[-1] if opens else 0
        entries = [ledger.view(d, p) for p in range(from_position, len(d.entries)) if d.entries[p]["kind"] != "noop"]
        rows = sorted(self.provisional.get(drawer, {}).values(), key=lambda r: r["seq"])
        return {**self.summary(drawer), "entries": entries,
                "provisional": [self._provisional_view(r) for r in rows]}

    def drawer_names(self) -> list[str]:
        """Drawers with a ledger or provisional entries here (a refused request on a name that was
        never opened leaves none)."""
        return sorted({name for name, d in self.drawers.items() if d.entries} | set(self.provisional))

    # -- review ----------------------------------------------------------------------------------

    def reviews(self, status: str = "open") -> list[dict[str, Any]]:
        out = []
        for _name, d in sorted(self.drawers.items()):
            for pos in d.open_reviews if status == "open" else d.reviewed:
                item = self._review_item(d, pos)
                if status == "all" or (status == "open") == (item["status"] == "open"):
                    out.append(item)
        return out

    def _review_item(self, d: ledger.Drawer, pos: int) -> dict[str, Any]:
        entry = d.entries[pos]
        review = entry.get("review") or {}
        state = d.status.get(pos)
        resolution = d.resolutions.get(pos)
        return {
            "id": f"{d.name}.{pos}", "drawer": d.name, "position": pos, "reason": review.get("reason"),
            "status": "open" if state == "in_review" else _RESOLVED.get((resolution or {}).get("decision"), state),
            "entry": ledger.view(d, pos),
            "conflicts_with": [ledger.view(d, p) for p in review.get("conflicts_with", []) if p < len(d.entries)],
            "resolution": resolution,
        }

    def _review_target(self, review_id: str) -> tuple[ledger.Drawer, int]:
        drawer, _, pos = review_id.rpartition(".")
        d = self.drawers.get(drawer)
        if d is None or not pos.isdigit() or int(pos) >= len(d.entries) \
                or d.entries[int(pos)].get("status") != "in_review":
            raise NotFound(f"no review item {review_id!r} (ids look like <drawer>.<position>; see GET /api/v1/review)")
        return d, int(pos)

    def review(self, review_id: str) -> dict[str, Any]:
        d, pos = self._review_target(review_id)
        return self._review_item(d, pos)

    async def resolve(self, review_id: str, *, decision: str, note: str, operator: str,
                      amount_cents: int | None = None) -> dict[str, Any]:
        """Record a person's decision on a review item as a committed ledger entry (needs the quorum)."""
        d, pos = self._review_target(review_id)
        if decision not in ledger.DECISIONS:
            raise InvalidInput(f"decision must be one of {', '.join(ledger.DECISIONS)}")
        reviewed = d.entries[pos]
        if decision == "adjust":
            if amount_cents is None or "amount_cents" not in ledger.FIELDS[reviewed["kind"]]:
                raise InvalidInput("adjust needs amount_cents, and only an entry with an amount can be adjusted")
            _cents("amount_cents", amount_cents, 0)
        elif amount_cents is not None:
            raise InvalidInput("amount_cents goes with decision 'adjust' only")
        entry = self._entry(d.name, "review_resolution", f"resolve:{pos}", operator, internal=True, of=pos,
                            decision=decision, amount_cents=amount_cents, note=note, operator=operator)
        await self.submit(d.name, entry)  # the same decision again returns the first; another is 409
        return self.review(review_id)


def _finish(entry: dict[str, Any], d: ledger.Drawer, order: dict[str, Any] | None) -> None:
    """Fill what the drawer knows at append time: the order's total, the expected cash at close."""
    if entry["kind"] == "payment" and order is not None:
        entry["order_total_cents"] = order["total_cents"]
    elif entry["kind"] == "drawer_closed":
        entry["expected_cents"] = d.expected_cash_cents
        entry["difference_cents"] = entry["counted_cents"] - d.expected_cash_cents


def _cents(name: str, value: Any, minimum: int) -> None:
    if type(value) is not int or value < minimum or value > 100_000_000:
        raise InvalidInput(f"{name} must be a whole number of cents, {minimum}..100000000")


_EVENT_OF: dict[str, str] = {"drawer_opened": "cashier:opened", "drawer_closed": "cashier:closed",
                             "payment": "payment:completed", "cash_movement": "cashier:cash_movement",
                             "refund": "payment:refunded"}


def _events_of(d: ledger.Drawer, pos: int) -> list[tuple[str, dict[str, Any]]]:
    """The domain events an entry raises on every terminal that learns it."""
    entry = d.entries[pos]
    if entry["kind"] == "noop":
        return []
    base = {"drawer": d.name, "position": pos}
    if entry["status"] == "in_review":
        return [("cashier:review_required", {**base, "reason": (entry.get("review") or {}).get("reason"),
                                             "entry": entry})]
    if entry["kind"] == "review_resolution":
        out = [("cashier:review_resolved", {**base, "of": entry["of"], "decision": entry["decision"],
                                            "entry": entry})]
        if d.status.get(entry["of"]) != "committed" or entry["of"] >= len(d.entries):
            return out  # rejected, or a resolution of nothing in review (ignored by the fold)
        reviewed = d.entries[entry["of"]]
        if reviewed["kind"] in _EVENT_OF:
            out.append((_EVENT_OF[reviewed["kind"]], {"drawer": d.name, "position": entry["of"], "entry": reviewed}))
        return out
    return [(_EVENT_OF[entry["kind"]], {**base, "entry": entry})]

_RESOLVED = {"accept": "accepted", "reject": "rejected", "adjust": "adjusted"}


async def _first(*events: anyio.Event) -> None:
    """Return as soon as any of ``events`` is set."""
    async with anyio.create_task_group() as tg:
        async def one(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(one, event)


def _reconciled_at(d: ledger.Drawer, entry: dict[str, Any]) -> int | None:
    """Where an earlier reconciliation appended this provisional entry (under its op_id, or the
    ``op_id~terminal`` a review entry gets), if it did: same provisional origin, same content."""
    origin = entry["provisional"]
    for op_id in (entry["op_id"], f"{entry['op_id']}~{origin['terminal_id']}"):
        pos = d.op_positions.get(op_id)
        if pos is not None and d.entries[pos].get("provisional") == origin \
                and ledger.content(d.entries[pos]) | {"op_id": entry["op_id"]} == ledger.content(entry):
            return pos
    return None
