"""The cashier's durability: loading its state, and every change on disk before it is answered.

A voter step's or a learn's :class:`~meshpos.cashier.quorum.Persist` becomes rows on the store's
group commit (with the domain events of newly committed entries) before its answers leave.  A
failed cashier write marks the state stale: nothing more is answered until it is reloaded from
disk (:meth:`Disk.fresh`).
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from core.clock import iso
from core.errors import StoreError, Unavailable
from meshpos.cashier import ledger
from meshpos.cashier.event_map import events_of
from meshpos.cashier.links import Links
from meshpos.cashier.quorum import Persist, VoterState
from meshpos.cashier.recovery import Recovery
from meshpos.cashier.state import CashierState
from storage import cashier_rows as rows
from storage.store import Ticket

log = logging.getLogger(__name__)


class Disk:
    """Loads the cashier state and makes its changes durable."""

    def __init__(self, state: CashierState, links: Links) -> None:
        self.s = state
        self.links = links
        #: A cashier write failed: memory may hold what the disk refused.  Nothing is answered
        #: until the state is reloaded from disk (:meth:`fresh`).
        self.stale = False
        self._reload_lock = anyio.Lock()

    async def load(self) -> None:
        """Read the voter state, the committed ledgers and the provisional entries from disk.

        Everything is read into new objects first and installed without an await between, so a
        reload never shows a half-read state, and a failed read leaves the old one in place.
        """
        s = self.s
        stored = await rows.read(s.t.store)
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
        if recovering and s.recovery is None:
            s.recovery = Recovery(s.me, anyio.current_time())
            log.warning("cashier: this terminal's cashier state was rebuilt by 'meshpos recover'; it neither votes "
                        "nor holds a drawer until the other voters have reported what it may have promised")
        for drawer in sorted(gaps):
            log.warning("drawer %s: stored ledger has a gap at position %d; completing it from the voters",
                        drawer, len(states[drawer].committed))
        for drawer, rnd in rounds.items():  # never lower: a prepare may be out under a newer round
            s.rounds[drawer] = max(rnd, s.rounds.get(drawer, 0))
        s.states.clear()  # in place: the Voter holds this dict
        s.states.update(states)
        s.drawers = {drawer: ledger.fold(drawer, st.committed) for drawer, st in states.items()}
        s.provisional = provisional
        s.seq = max(s.seq, seq)
        s.epoch += 1

    async def fresh(self) -> None:
        """After a failed cashier write: let what is queued settle, then reload from disk."""
        if not self.stale:
            return
        async with self._reload_lock:
            if not self.stale:
                return
            try:
                await self.barrier()
            except StoreError as exc:
                raise Unavailable(f"cashier storage is failing ({exc.__cause__ or exc}); retry") from exc
            try:
                await self.load()
            except Exception as exc:
                raise Unavailable(f"cashier state could not be read back from disk ({exc}); retry") from exc
            for hold in self.s.holds.values():  # their view came from memory: take drawers afresh
                for waiter in hold.waiting.values():
                    waiter.set()
                hold.ready.set()
                if hold.holder.phase == "holding":
                    self.links.send(hold.holder.release())  # what it committed is true: voters learn it
            self.s.holds.clear()
            self.stale = False
            log.warning("cashier state reloaded from disk after a failed write")

    async def durable(self, ticket: Ticket | None) -> None:
        """Wait for a cashier write.  If it failed, the terminal answers nothing more for the
        cashier until it has reloaded its state from disk; the caller gets 503 / 4012."""
        if ticket is None:
            return
        try:
            await ticket.wait()
        except StoreError as exc:
            self.stale = True
            raise Unavailable(f"the cashier could not store its state durably ({exc.__cause__ or exc}); "
                              "nothing was acknowledged, retry") from exc

    def store(self, persist: Persist | None) -> Ticket | None:
        """Queue what a voter step or a learn changed, and add newly committed entries to the
        drawer (raising their domain events with the same write)."""
        if persist is None:
            return None
        s = self.s
        drawer = persist.drawer
        sql: list[rows.Statement] = []
        if persist.promised is not None:
            sql.append(rows.vote(drawer, *persist.promised))
        sql.extend(rows.accepted(drawer, pos, ballot[0], ballot[1], entry) for pos, ballot, entry in persist.accepted)
        events: list[tuple[str, dict[str, Any]]] = []
        if persist.committed:
            sql.extend(rows.committed(drawer, persist.start, persist.committed, iso(s.t.clock())))
            d = s.drawers.setdefault(drawer, ledger.Drawer(drawer))
            grown = s.grown.pop(drawer, None)
            if grown is not None:
                grown.set()
            for pos, entry in enumerate(persist.committed, persist.start):
                ledger.apply(d, pos, entry)
                events.extend(events_of(d, pos))
        return self.enqueue(events=events, sql=sql)

    def learn(self, drawer: str, start: int, entries: list[Any] | tuple[Any, ...]) -> Ticket | None:
        """Committed entries this terminal learned (its holder's, or a peer's relay), queued."""
        return self.store(self.s.voter.learn(drawer, start, entries))

    def enqueue(self, *, events: list[tuple[str, dict[str, Any]]] | tuple[()] = (),
                sql: list[tuple[str, tuple[Any, ...]]] | tuple[()] = (), at: str | None = None) -> Ticket:
        """The cashier's rows and events for the terminal's next group commit."""
        return self.s.t.store.enqueue_rows(origin="cashier", at=at or iso(self.s.t.clock()), events=events, sql=sql)

    async def barrier(self) -> None:
        """Wait until everything queued so far is on disk (batches commit in order)."""
        await self.enqueue().wait()

    async def event(self, kind: str, payload: dict[str, Any]) -> None:
        """Record a lock event (durable before the request it explains is answered)."""
        try:
            await self.enqueue(events=[(kind, payload)]).wait()
        except StoreError:
            log.warning("could not record %s %s", kind, payload)
