"""Holding a drawer: the driver around quorum.Holder and the acquisition policy.

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
from meshpos.cashier.disk import Disk
from meshpos.cashier.links import Links
from meshpos.cashier.messages import Message
from meshpos.cashier.quorum import Acquired, Committed, Deposed, Holder
from meshpos.cashier.recovering import Recovering
from meshpos.cashier.state import CashierState, Hold, InDoubt
from storage import cashier_rows as rows

log = logging.getLogger(__name__)

#: An append not committed within this is *in doubt* (retry with the same op_id).
COMMIT_TIMEOUT = 3.0


class Holding:
    """Takes, holds, appends to and gives up drawers (the holds themselves are in the state:
    a reload drops them, the ticker releases idle ones)."""

    def __init__(self, state: CashierState, disk: Disk, links: Links, recovering: Recovering) -> None:
        self.s = state
        self.disk = disk
        self.links = links
        self.recovering = recovering  # only to say why nothing is taken while it rebuilds

    def answer(self, sender: str, msg: Message) -> None:
        hold = self.s.holds.get(msg.drawer)
        if hold is None:
            return
        sends, events = hold.holder.handle(sender, msg)
        self.links.send(sends)
        for event in events:
            if isinstance(event, Acquired):
                hold.ready.set()
            elif isinstance(event, Committed):
                hold.stored[event.position] = self.disk.learn(event.drawer, event.position, [event.entry])
                self.links.relay(event.drawer, event.position, [event.entry])
                waiter = hold.waiting.pop(event.position, None)
                if waiter is not None:
                    waiter.set()
            elif isinstance(event, Deposed):
                hold.deposed = event
                self.s.rounds[event.drawer] = max(self.s.rounds.get(event.drawer, 0), event.promised[0])
                if self.s.holds.get(event.drawer) is hold:
                    del self.s.holds[event.drawer]
                hold.ready.set()
                for waiter in hold.waiting.values():
                    waiter.set()
                hold.waiting.clear()

    def no_majority(self, drawer: str) -> str | None:
        q = self.links.quorum()
        if not q["voters"]:
            raise NotEnrolled("this store has no POS terminal to vote on drawers; enroll one (type pos)")
        if len(q["reachable"]) < q["majority"]:
            return (f"cannot reach a majority of the POS voters for drawer {drawer}: {len(q['reachable'])} of "
                    f"{len(q['voters'])} reachable, {q['majority']} needed")
        return None

    async def hold(self, drawer: str, *, patient: bool = True) -> Hold:
        """Hold ``drawer`` (taking it if needed).  ``patient=False`` (the reconciler, which simply
        tries again later): no waiting out another holder, no ``lock_failed`` events."""
        if self.s.recovery is not None:
            raise NoQuorum(self.recovering.status()["message"])
        why = self.no_majority(drawer)
        if why is not None:  # even while holding: an append could not commit, so fail fast
            self.s.holds.pop(drawer, None)
            raise NoQuorum(why)
        hold = self.s.holds.get(drawer)
        if hold is not None and hold.holder.phase == "holding":
            return hold
        voters = self.links.voters()
        acquisition = Acquisition(self.s.me, anyio.current_time(), patient=patient)
        while True:
            deadline = acquisition.attempt(anyio.current_time())
            st = self.s.voter.state(drawer)
            round_above = max(self.s.rounds.get(drawer, 0), st.promised[0])
            holder = Holder(self.s.me, drawer, voters, round_above=round_above, ledger=st.committed)
            # The round is on disk before any prepare leaves: a restarted terminal never reuses
            # a ballot (two entries proposed under one ballot would break the protocol).
            self.s.rounds[drawer] = holder.ballot[0]
            await self.disk.durable(self.disk.enqueue(sql=[rows.holder_round(drawer, holder.ballot[0])]))
            hold = Hold(holder)
            self.s.holds[drawer] = hold
            grown = self.s.grown.setdefault(drawer, anyio.Event())
            self.links.send(holder.acquire())
            with anyio.move_on_after(deadline - anyio.current_time()):
                await _first(hold.ready, grown)
            if holder.phase == "holding":
                self.s.stats["acquisitions"] += 1
                known = len(self.s.voter.state(drawer).committed)  # the current state (a reload may
                await self.disk.durable(self.disk.learn(drawer, known, holder.ledger[known:]))  # have replaced st)
                await self.disk.event("lock_acquired",
                                      {"drawer": drawer, "holder": self.s.me, "ballot": list(holder.ballot)})
                return hold
            if self.s.holds.get(drawer) is hold:
                del self.s.holds[drawer]
            # Give the attempt up for good: voters that promised it drop its lease at once (else
            # terminals trying together would hold each other off for a whole lease).
            self.links.send(holder.release())
            decision = acquisition.failed(anyio.current_time(), grown=grown.is_set(), answered=hold.ready.is_set(),
                                          deposed=hold.deposed, rng=self.s.t.rng)
            if isinstance(decision, Retry):
                if decision.wait:
                    await anyio.sleep(decision.wait)
                continue
            if isinstance(decision, Locked):
                if not decision.report:
                    raise NoQuorum(f"drawer {drawer} is held by {decision.locked_by}")
                until = iso(self.s.t.clock() + timedelta(seconds=max(0.0, decision.until - anyio.current_time())))
                await self.disk.event("lock_failed", {"drawer": drawer, "locked_by": decision.locked_by,
                                                  "locked_until": until})
                raise NoQuorum(f"drawer {drawer} is locked by {decision.locked_by} until {until}")
            q = self.links.quorum()
            if decision.report:
                await self.disk.event("lock_failed", {"drawer": drawer, "locked_by": None, "locked_until": None})
            raise NoQuorum(f"lock timeout: no majority of the POS voters answered for drawer {drawer} within "
                           f"{ACQUIRE_TIMEOUT:g} s ({len(q['reachable'])} of {len(q['voters'])} linked, "
                           f"{q['majority']} needed)")

    def check_current(self, drawer: str, hold: Hold, epoch: int) -> None:
        """Validate only against the ledger the holder completed: not across a reload, and not
        with this terminal's copy short of it (a write of it failed)."""
        if self.s.epoch != epoch or len(self.s.voter.state(drawer).committed) != len(hold.holder.ledger):
            if self.s.holds.get(drawer) is hold:
                del self.s.holds[drawer]
            raise Unavailable(f"drawer {drawer}: this terminal's ledger copy is being reloaded; retry")

    async def append(self, hold: Hold, entry: dict[str, Any]) -> int:
        if hold.holder.phase != "holding":  # deposed since it was taken (a late reject)
            raise InDoubt(f"op {entry['op_id']}: the drawer was lost before appending")
        pos = hold.holder.next_position
        hold.last_used = began = anyio.current_time()
        done = hold.waiting[pos] = anyio.Event()
        self.links.send(hold.holder.append(entry))
        with anyio.move_on_after(COMMIT_TIMEOUT):
            await done.wait()
        if pos >= len(hold.holder.ledger):  # not committed: deposed, or no majority in time
            if self.s.holds.get(hold.holder.drawer) is hold:
                del self.s.holds[hold.holder.drawer]  # take the drawer afresh next time
            raise InDoubt(f"op {entry['op_id']} at position {pos}")
        # This terminal's copy of the entry is on disk too: its own record, or the one its voter
        # queued (the barrier waits for that; a failure there marked the cashier stale).
        ticket = hold.stored.pop(pos, None)
        if ticket is not None:
            await self.disk.durable(ticket)
        else:
            await self.disk.barrier()
        if self.disk.stale:
            raise Unavailable("the cashier could not store its copy of the entry; retry with the same op_id")
        self.s.stats["commits"] += 1
        self.s.commit_seconds.observe(anyio.current_time() - began)
        return pos

    async def release(self, drawer: str) -> None:
        hold = self.s.holds.pop(drawer, None)
        if hold is not None:
            self.links.send(hold.holder.release())
            await self.disk.event("lock_released", {"drawer": drawer, "holder": self.s.me})


async def _first(*events: anyio.Event) -> None:
    """Return as soon as any of ``events`` is set."""
    async with anyio.create_task_group() as tg:
        async def one(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(one, event)
