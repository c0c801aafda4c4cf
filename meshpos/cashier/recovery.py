"""A terminal that lost its cashier state (``meshpos recover``): the sans-I/O recovery core.

What a whole voter reports (:class:`DrawerReport`, :func:`report`), how the rebuilding terminal
counts the reports and adopts the bound they give (:class:`Recovery`), and the two control
messages that carry them (``recovery_query``, ``recovery_report``).  The shell around it is
:mod:`meshpos.cashier.recovering`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from meshpos.cashier.messages import Ballot, WireAccepted, WireBallot, WireInt, check_entries, wire_convert
from meshpos.cashier.quorum import VoterState

# -- a terminal that lost its cashier state ------------------------------------------------------
# A voter keeps its promises and accepts on disk before it answers; the proof above rests on
# that.  A voter whose disk was lost or went back in time (``meshpos recover``) has forgotten
# some: if it voted at once it could promise a lower ballot than one it promised before, or hide
# an entry it accepted, and two entries could be committed at one position.  A holder that lost
# its ``cashier_rounds`` could reuse a ballot.  So such a terminal neither votes nor holds until
# it has rebuilt a bound on what it forgot from the voters that did not forget:
#
# 1. it waits RECOVERY_QUARANTINE from its start: every prepare its lost incarnation sent was
#    sent before it stopped, and by then has been delivered or dropped (a holder prepares one
#    ballot for at most 2 s; a link that stays silent 3.5 s is closed, dropping what it queued);
# 2. it asks the voters for their state and waits for reports from ``n - majority + 1`` voters
#    other than itself - enough to meet every majority that could have counted its lost votes -
#    and until its committed ledger is as long as each report says the reporter's is (the
#    reporters relay those entries first: an entry committed with its lost accept may be known
#    as committed, no longer as accepted, at the others);
# 3. it adopts, per drawer, the highest ballot any of them promised (and never promises below
#    it), the entry accepted under the highest ballot at each position above its committed
#    ledger (as a holder's takeover would choose it), and raises its own round above every round
#    reported, so a ballot it used before is never used again.
# docs/cashier.md, "A terminal that lost its cashier state", carries the argument.

#: Seconds a recovering terminal waits before asking the voters (see above).
RECOVERY_QUARANTINE = 10.0
#: A recovering terminal asks a voter that has not reported again after this long.
RECOVERY_ASK_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class DrawerReport:
    """What a voter tells a recovering terminal about one drawer (it promises nothing by it)."""

    promised: Ballot
    committed: int
    accepted: tuple[tuple[int, Ballot, Any], ...]  # (position, ballot, entry), above ``committed``


def report(states: dict[str, VoterState]) -> dict[str, DrawerReport]:
    return {drawer: DrawerReport(st.promised, len(st.committed),
                                 tuple(sorted((pos, b, e) for pos, (b, e) in st.accepted.items()
                                              if pos >= len(st.committed))))
            for drawer, st in states.items()}


class Recovery:
    """The rebuilding of one terminal's cashier state (steps 1-3 above), fed the time and the
    reports; the shell sends the queries, persists what :meth:`adopt` changed, then votes."""

    def __init__(self, me: str, started: float, *, quarantine: float | None = None) -> None:
        self.me, self.started = me, started
        self.quarantine = RECOVERY_QUARANTINE if quarantine is None else quarantine
        self.reports: dict[str, dict[str, DrawerReport]] = {}
        self._asked: dict[str, float] = {}

    @staticmethod
    def needed(voters: list[str], me: str) -> int:
        """Reports needed from voters other than ``me``: every majority that may have counted a
        vote of ``me``'s lost incarnation has ``majority - 1`` other members, and a set meets all
        of those among the ``n - 1`` others once it holds ``n - majority + 1`` of them.  A lone
        voter has nobody to ask (docs/cashier.md says what that costs)."""
        n = len(voters)
        if n == 0:
            return 0
        others = n - 1 if me in voters else n
        return min(others, n - (n // 2 + 1) + 1)

    def ask(self, now: float, voters: list[str], reachable: set[str]) -> list[str]:
        """The voters to ask now: none before the quarantine ends, each again every
        :data:`RECOVERY_ASK_SECONDS` until it reports."""
        if now < self.started + self.quarantine:
            return []
        out = [v for v in voters if v != self.me and v in reachable and v not in self.reports
               and now - self._asked.get(v, float("-inf")) >= RECOVERY_ASK_SECONDS]
        for v in out:
            self._asked[v] = now
        return out

    def take(self, sender: str, drawers: dict[str, DrawerReport]) -> None:
        """A report; counted only from a voter asked after the quarantine (an earlier answer could
        predate a promise the lost incarnation made)."""
        if sender in self._asked and sender != self.me:
            self.reports.setdefault(sender, {}).update(drawers)

    def complete(self, now: float, voters: list[str], states: dict[str, VoterState]) -> bool:
        """Quarantine over, enough reports, and every committed entry they reported learned."""
        reports = [r for v, r in self.reports.items() if v in voters]
        if now < self.started + self.quarantine or len(reports) < self.needed(voters, self.me):
            return False
        return all(len(states[d].committed) >= r.committed if d in states else r.committed == 0
                   for report_ in reports for d, r in report_.items())

    def adopt(self, states: dict[str, VoterState], rounds: dict[str, int], voters: list[str]) -> list[str]:
        """Raise ``states`` (this terminal's voter state) and ``rounds`` (its highest round per
        drawer as a holder) to what the reports bound; returns the drawers changed."""
        changed = []
        for drawer in sorted({d for v, r in self.reports.items() if v in voters for d in r}):
            reports = [r[drawer] for v, r in self.reports.items() if v in voters and drawer in r]
            st = states.setdefault(drawer, VoterState())
            before = (st.promised, dict(st.accepted), rounds.get(drawer, 0))
            top = max([st.promised, *(r.promised for r in reports)])
            for r in reports:
                for pos, ballot, entry in r.accepted:
                    top = max(top, ballot)
                    if pos >= len(st.committed) and (pos not in st.accepted or ballot > st.accepted[pos][0]):
                        st.accepted[pos] = (ballot, entry)
            st.promised = top
            rounds[drawer] = max(rounds.get(drawer, 0), top[0])
            if (st.promised, st.accepted, rounds[drawer]) != before:
                changed.append(drawer)
        return changed


class _WireQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: Any
    m: Any
    known: dict[str, Annotated[int, msgspec.Meta(ge=0)]]


def query_to_wire(known: dict[str, int]) -> dict[str, Any]:
    """A ``recovery_query``: how far this terminal's ledgers go (the reporters relay the rest)."""
    return {"type": "cashier", "m": "recovery_query", "known": known}


def query_from_wire(data: dict[str, Any]) -> dict[str, int]:
    """Parse a ``recovery_query`` (raises :class:`BadMessage`); returns drawer -> ledger length."""
    return wire_convert(data, _WireQuery, "recovery_query: needs known (drawer -> ledger length)").known


def report_to_wire(drawers: dict[str, DrawerReport], *, last: bool) -> dict[str, Any]:
    """A ``recovery_report`` control message (one of several when a voter has many drawers)."""
    return {"type": "cashier", "m": "recovery_report", "last": last, "drawers": {
        drawer: {"promised": list(r.promised), "committed": r.committed,
                 "accepted": [[pos, list(b), e] for pos, b, e in r.accepted]}
        for drawer, r in drawers.items()}}


class _WireReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    promised: WireBallot
    committed: WireInt
    accepted: WireAccepted


class _WireReports(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: Any
    m: Any
    drawers: dict[str, _WireReport]
    last: bool


def report_from_wire(data: dict[str, Any], check_entry: Any = None) -> tuple[dict[str, DrawerReport], bool]:
    """Parse a ``recovery_report`` (raises :class:`BadMessage`); returns (drawers, last)."""
    wire = wire_convert(data, _WireReports,
                        "recovery_report needs drawers (drawer -> promised, committed, accepted) and last")
    for r in wire.drawers.values():
        check_entries("recovery_report", [e for _, _, e in r.accepted], check_entry)
    return {drawer: DrawerReport(r.promised, r.committed, r.accepted) for drawer, r in wire.drawers.items()}, wire.last
