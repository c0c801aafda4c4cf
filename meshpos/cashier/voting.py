"""This terminal as a voter and a learner: quorum messages answered once durable, ledgers exchanged.

As a **voter** (the roster's POS terminals), a quorum message goes through
:class:`~meshpos.cashier.quorum.Voter`, the changed voter state is queued on the store's group
commit, and the reply leaves only once that is on disk.  As a **learner** (every terminal),
committed entries reach its own ledger copy - relayed by the holder, or exchanged at link-up
(``heads`` / ``ledger``) through :class:`~meshpos.cashier.learner.Learner`.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from core.ratelog import RateLimitedLog
from meshpos.cashier.disk import Disk
from meshpos.cashier.learner import heads_from_wire, heads_to_wire, relay_from_wire
from meshpos.cashier.links import Links
from meshpos.cashier.messages import Accept, Message, Prepare
from meshpos.cashier.state import CashierState

log = logging.getLogger(__name__)
#: Alarms a peer's messages raise, logged at most a few times a second per peer (each is an event too).
_alarm_log = RateLimitedLog(log)


class Voting:
    """Answers quorum messages as a voter and learns committed entries from peers."""

    def __init__(self, state: CashierState, disk: Disk, links: Links) -> None:
        self.s = state
        self.disk = disk
        self.links = links

    async def vote(self, sender: str, msg: Message) -> None:
        s = self.s
        if s.me not in self.links.voters():
            return
        if s.recovery is not None and isinstance(msg, Prepare | Accept):
            return  # it may have promised more than it remembers: unanswered, like an unplugged voter
        await self.disk.fresh()
        replies, persist = s.voter.step(sender, msg, anyio.current_time())
        await self.disk.durable(self.disk.store(persist))  # durable before any answer leaves
        self.links.send(replies)

    def link_up(self, peer_id: str) -> None:
        """A peer linked: tell it how far each ledger goes here, so each side sends what the other lacks."""
        assert self.s.t.mesh is not None
        self.s.t.mesh.send_control(peer_id, heads_to_wire(self.s.learner.heads()))
        self.s.reconcile_now.set()

    def on_heads(self, sender: str, data: dict[str, Any]) -> None:
        self.links.send(self.s.learner.on_heads(sender, heads_from_wire(data)))

    async def on_relay(self, sender: str, data: dict[str, Any]) -> None:
        relay = relay_from_wire(data)
        relayed = self.s.learner.on_relay(sender, relay, anyio.current_time())
        if relayed.diverged is not None:
            # Two committed ledgers disagree: only possible if the voter set changed while a drawer
            # was in use (docs/cashier.md, "Changing the voters").  Never silent: an alarm event.
            d = relayed.diverged
            _alarm_log.log(sender, logging.ERROR, "drawer %s: %s's committed ledger differs from this one at "
                           "positions %s", d.drawer, sender, list(d.positions[:10]))
            await self.disk.event("cashier:divergence",
                                  {"drawer": d.drawer, "peer": sender, "positions": list(d.positions)})
        if relayed.ask is not None:  # a gap: ask the sender for everything from where this copy ends
            assert self.s.t.mesh is not None
            self.s.t.mesh.send_control(sender, heads_to_wire(relayed.ask))
        if relayed.learn:
            await self.disk.fresh()
            await self.disk.durable(self.disk.learn(relay.drawer, relay.start, relay.entries))
