"""A drawer's ledger as plain data: entry shapes, the drawer it adds up to, and the money rules.

Pure functions over lists of JSON-able entries, shared by the terminal that takes a request
(validation before anything is appended), the reconciler (does a provisional entry still fit?)
and every reader (``GET /api/v1/cashier/drawers/{drawer}``, the review queue).  Money is integer
cents throughout; an entry is immutable once committed - corrections are new entries.

Effective status of an entry: ``committed`` entries count; an ``in_review`` entry counts only
once a ``review_resolution`` accepts (or adjusts) it, and from that resolution's position on;
a rejected one never counts.  docs/cashier.md has the rules in prose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from core.errors import InvalidInput, InvalidTransition, NotFound

KINDS = ("drawer_opened", "payment", "cash_movement", "refund", "drawer_closed", "review_resolution", "noop")
METHODS = ("cash", "card", "pix", "voucher")
DECISIONS = ("accept", "reject", "adjust")
STATUSES = ("committed", "in_review")  # as appended; "provisional" and "rejected" are derived
#: Fields every non-noop entry carries besides its kind's own.
META = ("kind", "op_id", "drawer", "terminal_id", "user_id", "at", "status")
#: Per kind: field -> type (``int`` fields are cents, ``>= 0``).
FIELDS: dict[str, dict[str, Any]] = {
    "drawer_opened": {"float_cents": int, "operator": str},
    "payment": {"order_id": str, "amount_cents": int, "method": str, "tip_cents": int, "order_total_cents": int},
    "cash_movement": {"direction": str, "amount_cents": int, "reason": str},
    "refund": {"payment_op_id": str, "amount_cents": int, "reason": str},
    "drawer_closed": {"counted_cents": int, "expected_cents": int, "difference_cents": int},
    "review_resolution": {"of": int, "decision": str, "amount_cents": (int, type(None)), "note": str,
                          "operator": str},
}
#: Optional on any entry: where a provisional entry came from, and why an entry is in review.
OPTIONAL = ("provisional", "review")
DIRECTIONS = ("in", "out")
#: A drawer's name (the API's path parameter takes the same pattern).
DRAWER_PATTERN = r"[A-Za-z0-9_-]{1,32}"
_DRAWER = re.compile(DRAWER_PATTERN)


def check_drawer(name: str) -> str:
    """A drawer's name: short and plain, as it becomes a key on disk, in URLs and on the wire."""
    if _DRAWER.fullmatch(name) is None:
        raise InvalidInput(f"drawer name {name[:40]!r}: 1-32 letters, digits, '_' or '-'")
    return name


def check_entry(entry: Any) -> None:
    """Raise ``ValueError`` unless ``entry`` is a well-formed ledger entry (peers' entries too).

    Checked here rather than by a msgspec struct (the cashier's messages around it are structs,
    meshpos/cashier/messages.py): an entry stays the dict it arrived as - stored and compared as
    canonical JSON - and this check names every missing field at once and refuses in a fixed
    order (kind, fields, types, status, choices), where a struct stops at the first field it
    meets, in the order the peer sent them."""
    if not isinstance(entry, dict) or entry.get("kind") not in KINDS:
        raise ValueError(f"ledger entry needs a known kind, not {entry!r:.80}")
    if entry["kind"] == "noop":
        return
    wanted = FIELDS[entry["kind"]]
    missing = [name for name in (*META, *wanted) if name not in entry]
    if missing:
        raise ValueError(f"{entry['kind']} entry lacks {', '.join(missing)}")
    for name in META:
        if name == "user_id":
            if not isinstance(entry.get(name), str | None):
                raise ValueError("user_id must be a string or null")
        elif not isinstance(entry.get(name), str):
            raise ValueError(f"{entry['kind']} entry: {name} must be a string")
    if entry["status"] not in STATUSES:
        raise ValueError(f"entry status {entry['status']!r} is not one of {STATUSES}")
    for name, kind in wanted.items():
        value = entry.get(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValueError(f"{entry['kind']} entry: {name} has the wrong type")
        if isinstance(value, int) and value < 0 and name != "difference_cents":
            raise ValueError(f"{entry['kind']} entry: {name} is negative")
    extra = set(entry) - set(META) - set(wanted) - set(OPTIONAL)
    if extra:
        raise ValueError(f"{entry['kind']} entry: unknown fields {sorted(extra)}")
    for name, allowed in _CHOICES.items():
        if name in wanted and entry[name] not in allowed:
            raise ValueError(f"{entry['kind']} entry: {name} {entry[name]!r:.40} is not one of {allowed}")
    if entry["kind"] == "review_resolution" and (entry.get("amount_cents") is None) != (entry["decision"] != "adjust"):
        raise ValueError("review_resolution: amount_cents goes with decision 'adjust' only, and it needs one")
    for name in OPTIONAL:
        if name in entry and not isinstance(entry[name], dict):
            raise ValueError(f"{entry['kind']} entry: {name} must be an object")
    others = (entry.get("review") or {}).get("conflicts_with", [])
    if not isinstance(others, list) or not all(type(p) is int and p >= 0 for p in others):
        raise ValueError("review.conflicts_with must be a list of positions")


_CHOICES = {"method": METHODS, "direction": DIRECTIONS, "decision": DECISIONS}


def content(entry: dict[str, Any]) -> dict[str, Any]:
    """What a client asked for: compared when an ``op_id`` comes back (same op, or another?)."""
    skip = {"terminal_id", "user_id", "at", "status", "provisional", "review", "order_total_cents",
            "expected_cents", "difference_cents"}
    return {k: v for k, v in entry.items() if k not in skip}


@dataclass
class Drawer:
    """What a ledger adds up to."""

    name: str
    state: str = "never_opened"  # -> open -> closed -> open ...
    session: dict[str, Any] | None = None  # the open (or last) session: opened_at/by, float
    expected_cash_cents: int = 0
    totals_by_method: dict[str, int] = field(default_factory=lambda: dict.fromkeys(METHODS, 0))
    tips_cents: int = 0
    paid_by_order: dict[str, int] = field(default_factory=dict)
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)  # op_id -> payment (+ refunded)
    op_positions: dict[str, int] = field(default_factory=dict)  # op_id -> position
    #: position -> effective status ("committed" | "in_review" | "rejected").
    status: dict[int, str] = field(default_factory=dict)
    resolutions: dict[int, dict[str, Any]] = field(default_factory=dict)  # reviewed position -> resolution
    _open_reviews: set[int] = field(default_factory=set)
    reviewed: list[int] = field(default_factory=list)  # every position appended in_review, in order
    last_close: dict[str, Any] | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def open_reviews(self) -> list[int]:
        return sorted(self._open_reviews)

    def unpaid(self, order: dict[str, Any]) -> int:
        """What is left to pay of ``order``: its total minus committed payments here and in the
        other drawers (``order["paid_elsewhere_cents"]``, filled in by the caller)."""
        return order["total_cents"] - self.paid_by_order.get(order["id"], 0) - order.get("paid_elsewhere_cents", 0)


def fold(name: str, entries: list[dict[str, Any]]) -> Drawer:
    """The drawer ``entries`` (a committed ledger, optionally followed by pending ones) add up to."""
    d = Drawer(name)
    for pos, entry in enumerate(entries):
        apply(d, pos, entry)
    return d


def apply(d: Drawer, pos: int, entry: dict[str, Any]) -> None:
    d.entries.append(entry)
    kind = entry["kind"]
    if kind == "noop":
        return
    d.op_positions.setdefault(entry["op_id"], pos)
    if entry["status"] == "in_review":
        d.status[pos] = "in_review"
        d._open_reviews.add(pos)
        d.reviewed.append(pos)
        return
    d.status[pos] = "committed"
    if kind == "review_resolution":
        of = entry["of"]
        if d.status.get(of) != "in_review":
            return  # a second resolution of one item: the first stands (the API refuses it anyway)
        d.resolutions[of] = {**entry, "position": pos}
        d._open_reviews.discard(of)
        if entry["decision"] == "reject":
            d.status[of] = "rejected"
            return
        d.status[of] = "committed"
        reviewed = d.entries[of]
        if entry["decision"] == "adjust" and "amount_cents" in FIELDS[reviewed["kind"]]:
            reviewed = {**reviewed, "amount_cents": entry["amount_cents"]}
        _count(d, reviewed)
        return
    _count(d, entry)


def _count(d: Drawer, e: dict[str, Any]) -> None:
    kind = e["kind"]
    if kind == "drawer_opened":
        if d.state == "open":  # a second float accepted in review: it went into the drawer too
            d.expected_cash_cents += e["float_cents"]
            return
        d.state = "open"
        d.session = {"opened_at": e["at"], "opened_by": e["operator"], "terminal_id": e["terminal_id"],
                     "float_cents": e["float_cents"]}
        d.expected_cash_cents = e["float_cents"]
        d.totals_by_method = dict.fromkeys(METHODS, 0)
        d.tips_cents = 0
    elif kind == "payment":
        d.paid_by_order[e["order_id"]] = d.paid_by_order.get(e["order_id"], 0) + e["amount_cents"]
        d.totals_by_method[e["method"]] = d.totals_by_method.get(e["method"], 0) + e["amount_cents"]
        d.tips_cents += e["tip_cents"]
        if e["method"] == "cash":
            d.expected_cash_cents += e["amount_cents"] + e["tip_cents"]
        d.payments[e["op_id"]] = {**e, "refunded_cents": 0}
    elif kind == "cash_movement":
        d.expected_cash_cents += e["amount_cents"] if e["direction"] == "in" else -e["amount_cents"]
    elif kind == "refund":
        paid = d.payments.get(e["payment_op_id"])
        if paid is None:
            return
        paid["refunded_cents"] += e["amount_cents"]
        d.paid_by_order[paid["order_id"]] = d.paid_by_order.get(paid["order_id"], 0) - e["amount_cents"]
        d.totals_by_method[paid["method"]] -= e["amount_cents"]
        if paid["method"] == "cash":
            d.expected_cash_cents -= e["amount_cents"]
    elif kind == "drawer_closed":
        d.state = "closed"
        d.last_close = {"closed_at": e["at"], "counted_cents": e["counted_cents"],
                        "expected_cents": e["expected_cents"], "difference_cents": e["difference_cents"]}


# -- the rules a new entry must pass --------------------------------------------------------------


def check(d: Drawer, entry: dict[str, Any], order: dict[str, Any] | None = None) -> None:
    """Refuse an entry this drawer cannot take now (:class:`InvalidTransition`, 409), with the reason.

    ``order``: the paid order's current view (payments only), with ``paid_elsewhere_cents``: what
    other drawers took for it.  Rule on overpayment: a payment may cover at most the order's
    unpaid balance; anything over it is a tip (``tip_cents``).
    """
    kind = entry["kind"]
    if kind == "drawer_opened":
        if d.state == "open":
            s = d.session or {}
            raise InvalidTransition(f"drawer {d.name} is already open (by {s.get('opened_by')} "
                                    f"on {s.get('terminal_id')} since {s.get('opened_at')})")
        return
    if kind == "review_resolution":
        return
    if d.state == "never_opened":
        raise NotFound(f"drawer {d.name} has never been opened")
    if d.state != "open":
        raise InvalidTransition(f"drawer {d.name} is closed; open it first")
    if kind == "payment":
        assert order is not None
        if order["status"] == "cancelled":
            raise InvalidTransition(f"order {order['id']} is cancelled; it cannot be paid")
        remaining = d.unpaid(order)
        if remaining <= 0 or order["status"] in ("paid", "closed"):
            raise InvalidTransition(f"order {order['id']} is already paid ({order['total_cents'] - remaining} of "
                                    f"{order['total_cents']} cents taken, status {order['status']})")
        if entry["amount_cents"] > remaining:
            raise InvalidTransition(
                f"amount_cents {entry['amount_cents']} exceeds order {order['id']}'s unpaid balance of "
                f"{remaining} cents; put anything over it in tip_cents")
    elif kind == "cash_movement":
        if entry["direction"] == "out" and entry["amount_cents"] > d.expected_cash_cents:
            raise InvalidTransition(f"drawer {d.name} should hold {d.expected_cash_cents} cents; "
                                    f"cannot take {entry['amount_cents']} out")
    elif kind == "refund":
        paid = d.payments.get(entry["payment_op_id"])
        if paid is None:
            raise NotFound(f"no committed payment with op_id {entry['payment_op_id']!r} in drawer {d.name}")
        left = paid["amount_cents"] - paid["refunded_cents"]
        if entry["amount_cents"] > left:
            raise InvalidTransition(f"payment {entry['payment_op_id']} has {left} cents left to refund")


def conflict(d: Drawer, entry: dict[str, Any], order: dict[str, Any] | None) -> str | None:
    """Why a provisional entry cannot be committed as it stands after the heal (``None``: it can).

    The cases of docs/cashier.md: the order already paid elsewhere, a drawer closed (or opened)
    meanwhile, an op_id with two contents, a total that no longer matches.
    """
    pos = d.op_positions.get(entry["op_id"])
    if pos is not None and content(d.entries[pos]) != content(entry):
        return f"operation id {entry['op_id']} was already used for a different operation (position {pos})"
    kind = entry["kind"]
    if kind == "payment":
        if order is None:
            return f"order {entry['order_id']} is unknown on this terminal"
        if order["total_cents"] != entry["order_total_cents"]:
            return (f"order total no longer matches: {entry['order_total_cents']} cents when paid, "
                    f"{order['total_cents']} now")
        if d.state == "open" and (d.unpaid(order) <= 0 or order["status"] in ("paid", "closed")):
            return f"order {entry['order_id']} was already paid elsewhere"
    if kind == "drawer_closed" and d.state == "open" and d.expected_cash_cents != entry["expected_cents"]:
        return (f"expected cash no longer matches: {entry['expected_cents']} cents when counted, "
                f"{d.expected_cash_cents} now")
    try:
        check(d, entry, order)
    except (InvalidTransition, NotFound, InvalidInput) as exc:
        if kind == "drawer_opened":
            return f"drawer opened twice: {exc.message}"
        if d.state == "closed" and kind != "drawer_opened":
            return f"drawer {d.name} was closed meanwhile"
        return exc.message
    return None


def conflicting_positions(d: Drawer, entry: dict[str, Any]) -> list[int]:
    """The committed entries a conflicting one collides with ("the other side" in review)."""
    kind = entry["kind"]
    out = []
    for pos, e in enumerate(d.entries):
        if e["kind"] == "noop" or d.status.get(pos) != "committed":
            continue
        if e["op_id"] == entry["op_id"] \
                or kind == "payment" and e["kind"] == "payment" and e["order_id"] == entry["order_id"] \
                or kind in ("drawer_opened", "drawer_closed") and e["kind"] == kind:
            out.append(pos)
    if not out and d.state == "closed":
        out = [p for p, e in enumerate(d.entries) if e["kind"] == "drawer_closed"][-1:]
    return out[-5:]


def view(d: Drawer, pos: int) -> dict[str, Any]:
    """One entry as the API shows it: its position and effective status."""
    entry = d.entries[pos]
    out = {"position": pos, **entry}
    if entry["kind"] != "noop":
        out["status"] = d.status.get(pos, entry["status"])
        if pos in d.resolutions:
            out["resolution"] = d.resolutions[pos]
    return out
