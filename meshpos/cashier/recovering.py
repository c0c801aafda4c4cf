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
from meshpos.cashier.learner import check_drawer_wire
from meshpos.cashier.quorum import RELAY_CHUNK, Send, ledger_chunks
from meshpos.cashier.recovery import Recovery, query_from_wire, query_to_wire, report, report_from_wire, report_to_wire
from meshpos.cashier.shell import Shell
from storage import cashier_rows as rows

log = logging.getLogger(__name__)


class Recovering(Shell):
    """The cashier's part that rebuilds a lost state, and answers another terminal doing so."""

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
            self.t.mesh.send_control(voter, query_to_wire(known))  # type: ignore[union-attr]
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
        known = query_from_wire(data)
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
