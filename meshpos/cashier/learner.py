"""The learner: how every terminal's copy of the committed ledgers is kept whole (sans-I/O).

A terminal learns committed entries three ways: its own voter commits them (quorum.Voter), a
holder or a voter relays them (:class:`~meshpos.cashier.messages.Ledger`), or a peer lists how
far its ledgers go at link-up (:class:`Heads`) and each side sends what the other lacks.  The
rules for the last two live here, fed messages and the time and returning what to send:

* a relay that starts beyond this copy's end is a *gap*: the sender is asked for everything
  from where this copy ends (at most once a second per peer and drawer, so a peer streaming
  chunks out of order is not answered with a storm of asks);
* a relay that overlaps this copy must agree with it; where it does not, two committed ledgers
  disagree - only possible if the voter set changed while a drawer was in use (docs/cashier.md,
  "Changing the voters") - and the shell raises an alarm instead of staying silent.

Learning itself (extending the dense prefix) is :meth:`quorum.Voter.learn`, which says what to
store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from core.errors import InvalidInput
from meshpos.cashier import ledger
from meshpos.cashier.messages import BadMessage, Ledger, wire_convert
from meshpos.cashier.quorum import RELAY_CHUNK, Send, Voter, ledger_chunks

#: A gap in a peer's relays is asked for again after this long (seconds), not before.
GAP_ASK_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Heads:
    """How far each of the sender's ledgers goes.  ``all``: it listed every drawer it has (one it
    did not list it lacks entirely); else only the listed drawers are asked for."""

    drawers: dict[str, int]
    all: bool


@dataclass(frozen=True, slots=True)
class Diverged:
    """``peer``'s committed ledger of ``drawer`` differs from this one at ``positions``."""

    drawer: str
    peer: str
    positions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Relayed:
    """What a relay asks of the shell: an alarm, a :class:`Heads` to send back to the relaying
    peer (a gap), and whether to learn its entries (:meth:`quorum.Voter.learn`) - not when they
    lie beyond a gap."""

    diverged: Diverged | None
    ask: Heads | None
    learn: bool


class Learner:
    """One terminal's bookkeeping of relays, over its voter's committed ledgers."""

    def __init__(self, voter: Voter) -> None:
        self.voter = voter
        self._asked: dict[tuple[str, str], float] = {}  # (peer, drawer) -> when a gap was asked for

    def heads(self) -> Heads:
        """What to tell a peer that just linked."""
        return Heads({drawer: len(st.committed) for drawer, st in self.voter.states.items()}, True)

    def on_heads(self, sender: str, msg: Heads) -> list[Send]:
        """Relay to ``sender`` what it lacks of the drawers it asked about."""
        states = self.voter.states
        drawers = list(states) if msg.all else [d for d in msg.drawers if d in states]
        return [Send(sender, relay) for drawer in drawers
                for relay in ledger_chunks(drawer, states[drawer].committed, msg.drawers.get(drawer, 0))]

    def on_relay(self, sender: str, msg: Ledger, now: float) -> Relayed:
        mine = self.voter.state(msg.drawer).committed
        have = len(mine)
        differ = tuple(msg.start + k for k, e in enumerate(msg.entries[:max(0, have - msg.start)])
                       if mine[msg.start + k] != e)
        diverged = Diverged(msg.drawer, sender, differ[:100]) if differ else None
        if msg.start <= have:
            return Relayed(diverged, None, True)
        if now - self._asked.get((sender, msg.drawer), float("-inf")) < GAP_ASK_SECONDS:
            return Relayed(diverged, None, False)
        self._asked[(sender, msg.drawer)] = now
        return Relayed(diverged, Heads({msg.drawer: have}, False), False)


# -- on the wire -----------------------------------------------------------------------------------
# ``{"type": "cashier", "m": "heads", "drawers": {drawer: length}, "all": bool}`` and
# ``{"type": "cashier", "m": "ledger", "drawer", "start", "entries"}`` (messages.to_wire writes it).


def check_drawer_wire(name: str) -> None:
    """A drawer name in a peer's message, checked before anything is kept under it."""
    try:
        ledger.check_drawer(name)
    except InvalidInput as exc:
        raise BadMessage(exc.message) from None


def heads_to_wire(msg: Heads) -> dict[str, Any]:
    return {"type": "cashier", "m": "heads", "drawers": msg.drawers, "all": msg.all}


class _WireHeads(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: Any
    m: Any
    drawers: dict[str, Annotated[int, msgspec.Meta(ge=0)]]
    all: bool


class _WireRelay(msgspec.Struct, frozen=True):  # other fields are ignored, as they always were
    drawer: str
    start: Annotated[int, msgspec.Meta(ge=0)]
    entries: Annotated[tuple[Any, ...], msgspec.Meta(max_length=RELAY_CHUNK)]


def heads_from_wire(data: dict[str, Any]) -> Heads:
    wire = wire_convert(data, _WireHeads, "heads: needs drawers (drawer -> ledger length) and all (bool)")
    return Heads(wire.drawers, wire.all)


def relay_from_wire(data: dict[str, Any]) -> Ledger:
    wire = wire_convert(data, _WireRelay, f"ledger: needs drawer, start and at most {RELAY_CHUNK} entries")
    check_drawer_wire(wire.drawer)
    for entry in wire.entries:
        try:
            ledger.check_entry(entry)
        except ValueError as exc:
            raise BadMessage(f"ledger: {exc}") from None
    return Ledger(wire.drawer, wire.start, wire.entries)
