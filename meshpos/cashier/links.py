"""The cashier's side of the peer links: who votes, who is reachable, and sending the cores' messages.

A message a core addresses to this terminal itself (its own holder to its own voter) goes
through an in-memory stream the cashier's loop reads, never over a link, so a lone POS is its
own majority without a network.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from meshpos.cashier.messages import Ledger, Message, to_wire
from meshpos.cashier.quorum import Send
from meshpos.cashier.state import CashierState


class Links:
    """The voters and the sending of quorum messages and relays."""

    def __init__(self, state: CashierState) -> None:
        self.t = state.t
        self.me = state.me
        send, receive = anyio.create_memory_object_stream[Message](math.inf)
        self._local_send = send
        #: What this terminal's cores addressed to itself; the cashier's loop delivers it.
        self.local: MemoryObjectReceiveStream[Message] = receive

    def voters(self) -> list[str]:
        """The roster's POS terminals; a terminal not enrolled in a store is its own only voter."""
        if self.t.mesh is not None:
            return self.t.mesh.roster.voters()
        return [self.me] if self.t.config.type == "pos" else []

    def reachable(self, voters: list[str]) -> list[str]:
        """This terminal, and the voters it is linked to or reaches through another terminal."""
        mesh = self.t.mesh
        return [v for v in voters if v == self.me or (mesh is not None and mesh.reaches(v))]

    def quorum(self) -> dict[str, Any]:
        voters = self.voters()
        return {"voters": voters, "reachable": self.reachable(voters), "majority": len(voters) // 2 + 1}

    def send(self, sends: list[Send]) -> None:
        now = anyio.current_time()
        for s in sends:
            if s.to == self.me:
                self._local_send.send_nowait(s.message)
            elif self.t.mesh is not None:
                self.t.mesh.send_control(s.to, to_wire(s.message, now))  # unreachable: the holder resends

    def relay(self, drawer: str, start: int, entries: list[Any]) -> None:
        """Hand fresh commits to the linked terminals that do not vote (voters get ``Commit``)."""
        mesh = self.t.mesh
        if mesh is None:
            return
        voters = set(self.voters())
        wire = to_wire(Ledger(drawer, start, tuple(entries)), 0.0)
        for peer_id in list(mesh.links):
            if peer_id not in voters:
                mesh.send_control(peer_id, wire)
