"""Holding a drawer: the shell around quorum.Holder and the acquisition policy.

A request takes the drawer (or keeps it): each attempt's round is on disk before its prepares
leave, the holder's answers are fed back as they arrive, and :mod:`meshpos.cashier.acquire` says
whether a failed attempt retries, waits or gives up.  An append answers once a majority stored
it and this terminal's copy is on disk; one not committed in time is *in doubt*.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import anyio

from core.clock import iso
from core.errors import NoQuorum, NotEnrolled, Unavailable
from meshpos.cashier.acquire import ACQUIRE_TIMEOUT, Acquisition, Locked, Retry
from meshpos.cashier.messages import Message
from meshpos.cashier.quorum import Acquired, Committed, Deposed, Holder
from meshpos.cashier.recovering import Recovering
from meshpos.cashier.shell import Hold, InDoubt
from storage import cashier_rows as rows

log = logging.getLogger(__name__)

#: An append not committed within this is *in doubt* (retry with the same op_id).
COMMIT_TIMEOUT = 3.0


class Holding(Recovering):
    """The cashier's part that takes, holds, appends to and gives up drawers."""

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

    def _no_majority(self, drawer: str) -> str | None:
        q = self.quorum()
        if not q["voters"]:
            raise NotEnrolled("this store has no POS terminal to vote on drawers; enroll one (type pos)")
        if len(q["reachable"]) < q["majority"]:
            return (f"cannot reach a majority of the POS voters for drawer {drawer}: {len(q['reachable'])} of "
                    f"{len(q['voters'])} reachable, {q['majority']} needed")
        return None

    async def _hold(self, drawer: str, *, patient: bool = True) -> Hold:
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
            hold = Hold(holder)
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

    def _check_current(self, drawer: str, hold: Hold, epoch: int) -> None:
        """Validate only against the ledger the holder completed: not across a reload, and not
        with this terminal's copy short of it (a write of it failed)."""
        if self.epoch != epoch or len(self.voter.state(drawer).committed) != len(hold.holder.ledger):
            if self._holds.get(drawer) is hold:
                del self._holds[drawer]
            raise Unavailable(f"drawer {drawer}: this terminal's ledger copy is being reloaded; retry")

    async def _append(self, hold: Hold, entry: dict[str, Any]) -> int:
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


async def _first(*events: anyio.Event) -> None:
    """Return as soon as any of ``events`` is set."""
    async with anyio.create_task_group() as tg:
        async def one(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(one, event)
