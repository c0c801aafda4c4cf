"""The domain events a committed ledger entry raises on every terminal that learns it."""

from __future__ import annotations

from typing import Any

from meshpos.cashier import ledger

_EVENT_OF: dict[str, str] = {"drawer_opened": "cashier:opened", "drawer_closed": "cashier:closed",
                             "payment": "payment:completed", "cash_movement": "cashier:cash_movement",
                             "refund": "payment:refunded"}


def events_of(d: ledger.Drawer, pos: int) -> list[tuple[str, dict[str, Any]]]:
    """The domain events an entry raises on every terminal that learns it."""
    entry = d.entries[pos]
    if entry["kind"] == "noop":
        return []
    base = {"drawer": d.name, "position": pos}
    if entry["status"] == "in_review":
        return [("cashier:review_required", {**base, "reason": (entry.get("review") or {}).get("reason"),
                                             "entry": entry})]
    if entry["kind"] == "review_resolution":
        out = [("cashier:review_resolved", {**base, "of": entry["of"], "decision": entry["decision"],
                                            "entry": entry})]
        if d.status.get(entry["of"]) != "committed" or entry["of"] >= len(d.entries):
            return out  # rejected, or a resolution of nothing in review (ignored by the fold)
        reviewed = d.entries[entry["of"]]
        if reviewed["kind"] in _EVENT_OF:
            out.append((_EVENT_OF[reviewed["kind"]], {"drawer": d.name, "position": entry["of"], "entry": reviewed}))
        return out
    return [(_EVENT_OF[entry["kind"]], {**base, "entry": entry})]
