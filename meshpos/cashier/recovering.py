"""Rebuilding a lost cashier state (``meshpos recover``): the shell around recovery.Recovery.

Until the voters' reports bound what this terminal may have promised before it lost its state,
it neither votes nor holds a drawer; a voter that is whole answers such a terminal's query with
the ledger entries it lacks, then its promises and accepts (docs/cashier.md).
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from meshpos.cashier import ledger
from meshpos.cashier.disk import Disk
from meshpos.cashier.learner import check_drawer_wire
from meshpos.cashier.links import Links
from meshpos.cashier.quorum import RELAY_CHUNK, Send, ledger_chunks
from meshpos.cashier.recovery import (
    Recovery,
    query_from_wire,
    query_to_wire,
    report,
    report_from_wire,
    report_to_wire,
)
from meshpos.cashier.state import CashierState
from storage import cashier_rows as rows

log = logging.getLogger(__name__)


class Recovering:
    """Rebuilds this terminal's lost state, and answers another terminal doing so."""

    def __init__(self, state: CashierState, disk: Disk, links: Links) -> None:
        self.s = state
        self.disk = disk
        self.links = links
        self._report_parts: dict[str, dict[str, Any]] = {}  # reports arrive in parts: sender -> parts so far

    def status(self) -> dict[str, Any] | None:
        """Where the rebuilding stands (``None``: this terminal's cashier state is whole)."""
        rec = self.s.recovery
        if rec is None:
            return None
        voters = self.links.voters()
        got = sorted(v for v in rec.reports if v in voters)
        needed = Recovery.needed(voters, self.s.me)
        wait = max(0.0, rec.started + rec.quarantine - anyio.current_time())
        return {"reports": got, "needed": needed, "quarantine_left_s": round(wait, 1),
                "message": (f"this terminal is rebuilding the cashier state it lost ('meshpos recover'): it takes "
                            f"no drawer before {needed} other POS voter(s) have reported (so far "
                            f"{len(got)}: {', '.join(got) or 'none'})" + (f", in {wait:.0f} s at the earliest"
                                                                          if wait else ""))}

    async def drive(self, now: float) -> None:
        """One tick: ask the voters not heard from, and adopt the bound once the reports suffice."""
        s = self.s
        rec = s.recovery
        assert rec is not None
        voters = self.links.voters()
        links = set(s.t.mesh.links) if s.t.mesh is not None else set()
        for voter in rec.ask(now, voters, links):
            known = {drawer: len(st.committed) for drawer, st in s.states.items()}
            s.t.mesh.send_control(voter, query_to_wire(known))  # type: ignore[union-attr]
        if not rec.complete(now, voters, s.states):
            return
        rounds = dict(s.rounds)
        changed = rec.adopt(s.states, rounds, voters)
        sql = rows.recovered({drawer: (s.states[drawer].promised, rounds[drawer],
                                       [(pos, b[0], b[1], e) for pos, (b, e) in s.states[drawer].accepted.items()])
                              for drawer in changed})
        await self.disk.durable(self.disk.enqueue(
            sql=sql,
            events=[("cashier:recovered", {"reports_from": sorted(v for v in rec.reports if v in voters),
                                           "drawers": changed})]))
        s.rounds.update(rounds)
        s.recovery = None
        self._report_parts.clear()
        log.warning("cashier: rebuilt from the reports of %s; voting and holding drawers again",
                    ", ".join(sorted(rec.reports)) or "nobody (this terminal is the store's only POS voter)")
        s.reconcile_now.set()

    def on_query(self, sender: str, data: dict[str, Any]) -> None:
        """A terminal that lost its cashier state asks: the committed entries it lacks first (it
        must know them before it counts again), then this voter's promises and accepts."""
        s = self.s
        known = query_from_wire(data)
        if s.recovery is not None or s.me not in self.links.voters() or s.t.mesh is None:
            return  # it knows no more than the asker: silence, so it is not counted
        for drawer, st in s.states.items():
            self.links.send([Send(sender, relay) for relay in
                             ledger_chunks(drawer, st.committed, min(known.get(drawer, 0), len(st.committed)))])
        drawers = sorted(report(s.states).items())
        for at in range(0, max(1, len(drawers)), RELAY_CHUNK):
            part = dict(drawers[at:at + RELAY_CHUNK])
            s.t.mesh.send_control(sender, report_to_wire(part, last=at + RELAY_CHUNK >= len(drawers)))

    async def on_report(self, sender: str, data: dict[str, Any]) -> None:
        drawers, last = report_from_wire(data, ledger.check_entry)
        for drawer in drawers:
            check_drawer_wire(drawer)
        if self.s.recovery is None:
            return
        parts = self._report_parts.setdefault(sender, {})
        parts.update(drawers)
        if last:
            self.s.recovery.take(sender, self._report_parts.pop(sender))
