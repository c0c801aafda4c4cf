"""The review queue: entries appended ``in_review`` and a person's decisions on them.

A decision is itself a committed ledger entry (``review_resolution``), so every terminal learns
it and folds the reviewed entry in (or not) from that position on.
"""

from __future__ import annotations

from typing import Any

from core.errors import InvalidInput, NotFound
from meshpos.cashier import ledger
from meshpos.cashier.requests import Requests, check_cents
from meshpos.cashier.state import CashierState

_RESOLVED = {"accept": "accepted", "reject": "rejected", "adjust": "adjusted"}


class Reviews:
    """The cashier's review queue: its items and a person's decisions."""

    def __init__(self, state: CashierState, requests: Requests) -> None:
        self.s = state
        self.requests = requests  # a decision is a request: appended under the drawer's lock

    def reviews(self, status: str = "open") -> list[dict[str, Any]]:
        out = []
        for _name, d in sorted(self.s.drawers.items()):
            for pos in d.open_reviews if status == "open" else d.reviewed:
                item = self._review_item(d, pos)
                if status == "all" or (status == "open") == (item["status"] == "open"):
                    out.append(item)
        return out

    def _review_item(self, d: ledger.Drawer, pos: int) -> dict[str, Any]:
        entry = d.entries[pos]
        review = entry.get("review") or {}
        state = d.status.get(pos)
        resolution = d.resolutions.get(pos)
        return {
            "id": f"{d.name}.{pos}", "drawer": d.name, "position": pos, "reason": review.get("reason"),
            "status": "open" if state == "in_review" else _RESOLVED.get((resolution or {}).get("decision"), state),
            "entry": ledger.view(d, pos),
            "conflicts_with": [ledger.view(d, p) for p in review.get("conflicts_with", []) if p < len(d.entries)],
            "resolution": resolution,
        }

    def _review_target(self, review_id: str) -> tuple[ledger.Drawer, int]:
        drawer, _, pos = review_id.rpartition(".")
        d = self.s.drawers.get(drawer)
        if d is None or not pos.isdigit() or int(pos) >= len(d.entries) \
                or d.entries[int(pos)].get("status") != "in_review":
            raise NotFound(f"no review item {review_id!r} (ids look like <drawer>.<position>; see GET /api/v1/review)")
        return d, int(pos)

    def review(self, review_id: str) -> dict[str, Any]:
        d, pos = self._review_target(review_id)
        return self._review_item(d, pos)

    async def resolve(self, review_id: str, *, decision: str, note: str, operator: str,
                      amount_cents: int | None = None) -> dict[str, Any]:
        """Record a person's decision on a review item as a committed ledger entry (needs the quorum)."""
        d, pos = self._review_target(review_id)
        if decision not in ledger.DECISIONS:
            raise InvalidInput(f"decision must be one of {', '.join(ledger.DECISIONS)}")
        reviewed = d.entries[pos]
        if decision == "adjust":
            if amount_cents is None or "amount_cents" not in ledger.FIELDS[reviewed["kind"]]:
                raise InvalidInput("adjust needs amount_cents, and only an entry with an amount can be adjusted")
            check_cents("amount_cents", amount_cents, 0)
        elif amount_cents is not None:
            raise InvalidInput("amount_cents goes with decision 'adjust' only")
        entry = self.requests.entry(d.name, "review_resolution", f"resolve:{pos}", operator, internal=True, of=pos,
                            decision=decision, amount_cents=amount_cents, note=note, operator=operator)
        await self.requests.submit(d.name, entry)  # the same decision again returns the first; another is 409
        return self.review(review_id)
