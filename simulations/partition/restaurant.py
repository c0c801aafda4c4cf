"""The simulated restaurant: its boxes, its menu and stock, its drawers, its enrolment."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from peer.identity import Authority, save_roster

MENU = {"burger": 1590, "fries": 690, "salad": 1290, "soda": 450}
STOCK = 10_000  # counted at the start; the checker adds the acknowledged moves
EPOCH = datetime(2026, 12, 2, 11, 0, tzinfo=UTC)  # the simulated service starts at 11:00 UTC


def drawer_of(pos: str) -> str:
    """Each POS has its own cash drawer (they vote on every drawer)."""
    return f"drawer-{pos}"


def kinds_for(n: int) -> list[tuple[str, str]]:
    """A restaurant of ``n`` boxes: three POS (the cashier's voters; five from 12 boxes, one below
    4), one KDS, the rest waiters' handhelds."""
    pos = 1 if n < 4 else 3 if n < 12 else 5
    out = [(f"pos-{k + 1}", "pos") for k in range(pos)]
    if n > pos:
        out.append(("kds-1", "kds"))
    out += [(f"waiter-{k + 1}", "waiter") for k in range(n - len(out))]
    return out


#: The chain's HQ of the scenarios that have one (its enrollment is ``root/hq-1``).
HQ_ID = "hq-1"


def enroll(root: Path, kinds: list[tuple[str, str]], *, hq: bool = False) -> None:
    """A store authority in ``root/auth`` and every box enrolled under ``root/<id>`` (and, with
    ``hq``, the HQ under ``root/hq-1``), each holding the final roster (the first-enrolled would
    otherwise know only itself as a voter)."""
    authority = Authority.init(root / "auth", "Simulated Cantina")
    for tid, kind in kinds:
        authority.enroll(tid, kind, root / tid)
    if hq:
        authority.enroll(HQ_ID, "hq", root / HQ_ID)
    for tid, _ in kinds:
        save_roster(root / tid, authority.roster)
