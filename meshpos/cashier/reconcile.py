"""The reconciler: provisional entries committed after the heal, or appended ``in_review``.

Once a majority is reachable again, each drawer's pending provisional entries are appended in
the order they were taken: those that still fit as they were, the others flagged for a person
(ledger.conflict says why).  It is not patient: a drawer held elsewhere is simply tried later.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from core.clock import iso
from core.errors import NoQuorum, NotFound
from meshpos.cashier import ledger
from meshpos.cashier.disk import Disk
from meshpos.cashier.holding import Holding
from meshpos.cashier.requests import Requests
from meshpos.cashier.state import CashierState, InDoubt
from storage import cashier_rows as rows

log = logging.getLogger(__name__)

#: How often provisional entries are retried once a majority may be back.
RECONCILE_SECONDS = 1.0


class Reconciler:
    """Settles provisional entries once a majority is back."""

    def __init__(self, state: CashierState, disk: Disk, holding: Holding, requests: Requests) -> None:
        self.s = state
        self.disk = disk
        self.holding = holding
        self.requests = requests

    async def run(self) -> None:
        """Forever: orders whose mark failed, then each drawer's pending entries, every round."""
        while True:
            # jittered: terminals healed together do not retry in step
            with anyio.move_on_after(RECONCILE_SECONDS * self.s.t.rng.uniform(0.5, 1.5)):
                await self.s.reconcile_now.wait()
            self.s.reconcile_now = anyio.Event()
            for order_id, user in sorted(self.s.to_mark, key=str):
                self.s.to_mark.discard((order_id, user))
                await self.requests.mark_paid(order_id, user)
            for drawer in [d for d in self.s.provisional if self.requests.pending(d)]:
                try:
                    if self.holding.no_majority(drawer) is not None:
                        continue
                    await self.reconcile(drawer)
                except NoQuorum as exc:
                    log.info("provisional entries of drawer %s wait: %s", drawer, exc.message)
                except Exception:  # noqa: BLE001 - the next round retries; the terminal keeps serving
                    log.exception("reconciling the provisional entries of drawer %s failed", drawer)

    async def reconcile(self, drawer: str) -> None:
        """Commit the drawer's provisional entries that still fit; append the others ``in_review``."""
        async with self.s.lock(drawer):
            for row in self.requests.pending(drawer):
                entry = row["entry"]
                epoch = self.s.epoch
                hold = await self.holding.hold(drawer, patient=False)
                self.holding.check_current(drawer, hold, epoch)
                d = self.s.drawers.setdefault(drawer, ledger.Drawer(drawer))
                done = _reconciled_at(d, entry)
                if done is not None:  # an earlier round appended it (then crashed, or was in doubt)
                    await self._settle(drawer, row, d.entries[done]["status"], done)
                    continue
                pos = d.op_positions.get(entry["op_id"])
                if pos is not None and ledger.content(d.entries[pos]) == ledger.content(entry):
                    await self._settle(drawer, row, "committed", pos)  # a committed attempt made it in
                    continue
                try:
                    order = await self.requests.order(entry)
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
                    pos = await self.holding.append(hold, final)
                except InDoubt as exc:
                    raise NoQuorum(f"reconciling drawer {drawer}: in doubt ({exc}); retrying") from None
                await self._settle(drawer, row, "committed" if reason is None else "in_review", pos)
                if self.s.epoch != epoch:
                    return  # reloaded meanwhile: the next round goes on from the disk's state
                if reason is None:
                    await self.requests.after_commit(drawer, pos)
                else:
                    self.s.stats["reviews"] += 1

    async def _settle(self, drawer: str, row: dict[str, Any], state: str, pos: int) -> None:
        row["state"], row["position"] = state, pos
        await self.disk.durable(self.disk.enqueue(
            sql=[rows.settled(drawer, row["entry"]["op_id"], state, pos, iso(self.s.t.clock()))]))


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
