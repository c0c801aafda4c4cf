"""Landing the stores' committed cashier ledgers in PostgreSQL, each entry once.

A committed ledger entry has a fixed place - (store, drawer, position) - and the quorum makes it
the same on every terminal (docs/cashier.md), so that is its key: an entry relayed again, or by
another terminal, or through another HQ process, finds its position taken by the same entry and
adds nothing.  Should a relay disagree with what is landed (only possible if the voter set
changed while a drawer was in use) the landed entry stands and the offered one goes to
``ledger_conflicts`` for a person to look at - never merged, never lost.  A relay that starts past
the landed end is a gap: nothing of it is landed, and the terminal is asked for what is missing.

The HQ never votes: it learns by asking each terminal for what it lacks (``heads``) and by the
relays terminals send to every peer that does not vote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from meshpos.cashier import ledger
from meshpos.documents.orders import ORDER_ID
from meshpos.hq.landing import RecordBehind, project
from storage import hq_rows


@dataclass
class DrawerMirror:
    """One drawer's landed ledger, folded (kept per process; caught up from the record under the lock)."""

    name: str
    entries: list[dict[str, Any]] = field(default_factory=list)
    drawer: ledger.Drawer = field(init=False)

    def __post_init__(self) -> None:
        self.drawer = ledger.Drawer(self.name)

    def extend(self, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            ledger.apply(self.drawer, len(self.entries), entry)
            self.entries.append(entry)


@dataclass(frozen=True, slots=True)
class LedgerLanded:
    length: int  # how far the drawer is landed now
    landed: int  # entries this call appended
    conflicts: int  # entries offered that disagree with the landed ones
    gap: bool  # the relay started past the landed end: ask the sender from ``length``


def payment_status(d: ledger.Drawer, pos: int) -> tuple[str, int | None]:
    """The status the ``payments`` table shows, and the amount a resolution set (``adjust``)."""
    resolution = d.resolutions.get(pos)
    if resolution is not None:
        decision = resolution["decision"]
        return {"accept": "accepted", "adjust": "adjusted", "reject": "rejected"}[decision], \
            resolution.get("amount_cents") if decision == "adjust" else None
    return d.status.get(pos, "committed"), None


def _business_day(order_id: Any) -> str | None:
    """The business day an order id names, if it names a real date (a peer's id is hostile)."""
    day = ORDER_ID.fullmatch(order_id) if isinstance(order_id, str) else None
    try:
        return date(int(day[1]), int(day[2]), int(day[3])).isoformat() if day else None
    except ValueError:
        return None


def _provisional_origin(entry: dict[str, Any]) -> tuple[str, str] | None:
    """(terminal, op id it was taken under) of a ledger entry that reconciled a provisional one
    (a review entry's op id carries ``~terminal``: meshpos.cashier.reconcile)."""
    origin = entry.get("provisional")
    if not isinstance(origin, dict) or not isinstance(origin.get("terminal_id"), str):
        return None
    terminal, op_id = origin["terminal_id"], entry["op_id"]
    return terminal, op_id.removesuffix(f"~{terminal}")


def land_provisional(conn: Any, store_id: str, drawer: str, terminal_id: str, entries: list[dict[str, Any]],
                     process: str) -> int:
    """A terminal's provisional entries (checked by :func:`meshpos.wan.provisional_from_wire`), each
    once; how many were new."""
    rows = [{**e, "business_day": _business_day(e.get("order_id"))} for e in entries]
    with conn.transaction():
        return hq_rows.insert_provisional(conn, store_id, drawer, terminal_id, rows, process)


def _rows(m: DrawerMirror, positions: list[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, payments = [], []
    for pos in positions:
        view = ledger.view(m.drawer, pos)
        status, adjusted = payment_status(m.drawer, pos) if view["kind"] != "noop" else ("committed", None)
        amount = adjusted if adjusted is not None else view.get("amount_cents", view.get("float_cents"))
        rows.append({**view, "status": status, "amount_cents": amount})
        if view["kind"] == "payment":
            payments.append({**view, "status": status, "amount_cents": amount,
                             "business_day": _business_day(view["order_id"])})
    return rows, payments


def land_entries(conn: Any, store_id: str, mirror: DrawerMirror, start: int, entries: list[dict[str, Any]],
                 received_from: str) -> LedgerLanded:
    """Land a relay (entries checked by :func:`meshpos.cashier.learner.relay_from_wire`) in one
    transaction; the mirror is caught up from the record first (another process may have landed)."""
    with conn.transaction():
        hq_rows.lock_drawer(conn, store_id, mirror.name)
        have = len(mirror.entries)
        if hq_rows.ledger_lengths(conn, store_id).get(mirror.name, 0) < have:
            raise RecordBehind(f"the ledger of {mirror.name} ends before this process's copy of it "
                               "(a restored database?): it is rebuilt from the record")
        newer = hq_rows.ledger_of(conn, store_id, mirror.name, since=have)
        mirror.extend(newer)
        have = len(mirror.entries)
        if start > have:
            return LedgerLanded(have, 0, 0, gap=True)
        conflicts = 0
        for k, offered in enumerate(entries[:max(0, have - start)]):
            if mirror.entries[start + k] != offered:
                hq_rows.record_conflict(conn, store_id, mirror.name, start + k, mirror.entries[start + k], offered,
                                        received_from)
                conflicts += 1
        new = entries[max(0, have - start):]
        if new:
            hq_rows.append_entries(conn, store_id, mirror.name, have, new, received_from)
            hq_rows.settle_provisional(conn, store_id, mirror.name, [
                (*origin, have + k) for k, e in enumerate(new) if (origin := _provisional_origin(e)) is not None])
            mirror.extend(new)
            touched = set(range(have, have + len(new)))
            touched |= {e["of"] for e in new if e["kind"] == "review_resolution" and isinstance(e.get("of"), int)}
            rows, payments = _rows(mirror, sorted(p for p in touched if p < len(mirror.entries)))
            project(conn, store_id, lambda: hq_rows.upsert_drawer_rows(conn, store_id, mirror.name, rows, payments),
                    len(rows))
    return LedgerLanded(len(mirror.entries), len(new), conflicts, gap=False)
