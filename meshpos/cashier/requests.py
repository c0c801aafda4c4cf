"""The cashier's request API: entries built, validated against the completed ledger, appended.

Requests on one drawer are taken one at a time on a terminal (validation sees every earlier
entry); different drawers proceed in parallel.  A retried ``op_id`` returns its first result; one
that meant something else is a conflict.  Without a majority, a request with
``allow_provisional`` is stored provisionally (:mod:`meshpos.cashier.reconcile` settles it).
"""

from __future__ import annotations

import logging
from typing import Any

from core.clock import iso, random_id
from core.errors import Conflict, InvalidInput, MeshposError, NoQuorum, NotFound, Unavailable
from meshpos.cashier import ledger
from meshpos.cashier.disk import Disk
from meshpos.cashier.holding import Holding
from meshpos.cashier.ledger import check_drawer
from meshpos.cashier.links import Links
from meshpos.cashier.quorum import VoterState
from meshpos.cashier.state import CashierState, InDoubt
from storage import cashier_rows as rows

log = logging.getLogger(__name__)


class Requests:
    """The cashier's request API (open, pay, move cash, refund, close; the drawer views)."""

    def __init__(self, state: CashierState, disk: Disk, links: Links, holding: Holding) -> None:
        self.s = state
        self.disk = disk
        self.links = links
        self.holding = holding

    def entry(self, drawer: str, kind: str, op_id: str | None, user: str | None, *, internal: bool = False,
               **fields: Any) -> dict[str, Any]:
        """A new entry as this terminal takes it; a client's ``op_id`` is checked here (``internal``:
        a review decision's own ``resolve:<position>`` id)."""
        if op_id is not None and not internal:
            if not 1 <= len(op_id) <= 64:
                raise InvalidInput("op_id must be 1-64 characters")
            if op_id.startswith("resolve:") or "~" in op_id:
                raise InvalidInput("op_id: 'resolve:' and '~' are reserved for review entries")
        return {"kind": kind, "op_id": op_id or random_id(16, self.s.t.id_source), "drawer": drawer,
                "terminal_id": self.s.me, "user_id": user, "at": iso(self.s.t.clock()), "status": "committed", **fields}

    def _existing(self, drawer: str, entry: dict[str, Any]) -> dict[str, Any] | None:
        """The first result of a retried op_id; :class:`Conflict` if the op_id meant something else."""
        # This terminal's own provisional entry first: the client asked here, and it may have
        # been reconciled under another op_id (in review) since.
        row = self.s.provisional.get(drawer, {}).get(entry["op_id"])
        if row is not None:
            if ledger.content(row["entry"]) != ledger.content(entry):
                raise Conflict(f"op_id {entry['op_id']} was already used for another provisional operation")
            return self._result(drawer, self._provisional_view(row))
        d = self.s.drawers.get(drawer)
        pos = d.op_positions.get(entry["op_id"]) if d is not None else None
        if pos is None:
            self._check_other_drawers(drawer, entry)
            return None
        first = d.entries[pos]  # type: ignore[union-attr]
        if ledger.content(first) == ledger.content(entry):
            return self._result(drawer, ledger.view(d, pos))  # type: ignore[arg-type]
        if entry["kind"] == "review_resolution" and first["kind"] == "review_resolution":
            raise Conflict(f"review item {drawer}.{entry['of']} was already resolved ({first['decision']} by "
                           f"{first['operator']} at {first['at']})")
        raise Conflict(f"op_id {entry['op_id']} was already used for another operation "
                       f"(position {pos} of drawer {drawer})")

    def _check_other_drawers(self, drawer: str, entry: dict[str, Any]) -> None:
        """An ``op_id`` names one operation in the whole store: a retry sent to another drawer is
        a different operation under a used id (409), never a second payment.  (Review entries'
        ids are the drawer's own, ``resolve:<position>``.)"""
        if entry["kind"] == "review_resolution":
            return
        op_id = entry["op_id"]
        for name, other in self.s.drawers.items():
            if name != drawer and op_id in other.op_positions:
                raise Conflict(f"op_id {op_id} was already used in drawer {name} (position "
                               f"{other.op_positions[op_id]}); an op_id names one operation in the store")
        for name, pending in self.s.provisional.items():
            if name != drawer and op_id in pending:
                raise Conflict(f"op_id {op_id} was already used for a provisional entry of drawer {name}; an "
                               "op_id names one operation in the store")

    async def order(self, entry: dict[str, Any]) -> dict[str, Any] | None:
        """The paid order's view, with what the *other* drawers took for it (payments only)."""
        if entry["kind"] != "payment":
            return None
        order = await self.s.t.get_order(entry["order_id"])  # NotFound: 404, nothing recorded
        elsewhere = sum(d.paid_by_order.get(order["id"], 0) for name, d in self.s.drawers.items()
                        if name != entry["drawer"])
        return {**order, "paid_elsewhere_cents": elsewhere}

    async def submit(self, drawer: str, entry: dict[str, Any], *, allow_provisional: bool = False) -> dict[str, Any]:
        """Append ``entry`` under the drawer's quorum lock; answer once it is committed and on disk."""
        check_drawer(drawer)
        await self.disk.fresh()
        found = self._existing(drawer, entry)
        if found is not None:
            return found
        await self.order(entry)
        try:
            async with self.s.lock(drawer):
                for attempt in range(2):
                    epoch = self.s.epoch
                    hold = await self.holding.hold(drawer)
                    found = self._existing(drawer, entry)  # the completed ledger may hold it already
                    if found is not None:
                        return found
                    d = self.s.drawers.setdefault(drawer, ledger.Drawer(drawer))
                    order = await self.order(entry)
                    self.holding.check_current(drawer, hold, epoch)
                    _finish(entry, d, order)
                    ledger.check(d, entry, order)
                    try:
                        pos = await self.holding.append(hold, entry)
                    except InDoubt:
                        if attempt == 1:
                            raise NoQuorum(f"lost drawer {drawer}'s lock while appending op {entry['op_id']}: "
                                           "the operation is in doubt; retry with the same op_id") from None
                        continue
                    if self.s.epoch != epoch:  # reloaded meanwhile: the answer comes from the retry
                        raise Unavailable(f"op {entry['op_id']} is committed at position {pos}, but this terminal "
                                          "reloaded its ledger copy meanwhile; retry with the same op_id")
                    if entry["kind"] == "drawer_closed":
                        await self.holding.release(drawer)
                    await self.after_commit(drawer, pos)
                    return self._result(drawer, ledger.view(self.s.drawers[drawer], pos))
        except NoQuorum as exc:
            if not allow_provisional:
                raise
            return await self._store_provisional(drawer, entry, exc.message)
        raise AssertionError("unreachable")

    async def after_commit(self, drawer: str, pos: int) -> None:
        """A committed payment (or an accepted one) that covers its order marks the order paid."""
        d = self.s.drawers[drawer]
        entry = d.entries[pos]
        if entry["kind"] == "review_resolution" and d.status.get(entry["of"]) == "committed":
            entry = d.entries[entry["of"]]
        if entry["kind"] != "payment" or d.status.get(d.op_positions[entry["op_id"]]) != "committed":
            return
        await self.mark_paid(entry["order_id"], entry["user_id"])

    def own_covering_payments(self) -> set[tuple[str, str | None]]:
        """Orders this terminal took committed payments for (checked at start: a crash between a
        commit and the order's mark must not leave it unpaid)."""
        live = {day.strftime("%Y%m%d") for day in self.s.t.live_days()}  # older days are closed
        out = set()
        for d in self.s.drawers.values():
            for op_id, payment in d.payments.items():
                if payment["terminal_id"] == self.s.me and payment["order_id"][:8] in live \
                        and d.status.get(d.op_positions[op_id]) == "committed":
                    out.add((payment["order_id"], payment["user_id"]))
        return out

    async def mark_paid(self, order_id: str, user: str | None) -> None:
        """Mark the order paid if the payments of every drawer here cover it; a refused order
        write is kept for the reconciler's next round."""
        try:
            order = await self.s.t.get_order(order_id)
            paid = sum(other.paid_by_order.get(order_id, 0) for other in self.s.drawers.values())
            if paid >= order["total_cents"] and order["status"] not in ("paid", "closed", "cancelled"):
                await self.s.t.set_order_status(order_id, "paid", user=user)
        except Unavailable as exc:  # the disk refused the order write: retried every second
            log.warning("payment committed but order %s not marked paid yet (%s); retrying", order_id, exc)
            self.s.to_mark.add((order_id, user))
        except MeshposError as exc:  # archived (read-only) day, not on this box, ...: not retried
            log.warning("payment committed; order %s cannot be marked paid here: %s", order_id, exc.message)

    def _result(self, drawer: str, entry_view: dict[str, Any]) -> dict[str, Any]:
        return {"drawer": self.summary(drawer), "entry": entry_view}

    def _provisional_view(self, row: dict[str, Any]) -> dict[str, Any]:
        state = row["state"]
        return {"position": row["position"], **row["entry"],
                "status": "provisional" if state == "pending" else state}

    async def _store_provisional(self, drawer: str, entry: dict[str, Any], why: str) -> dict[str, Any]:
        async with self.s.lock(drawer):
            found = self._existing(drawer, entry)  # the same op_id taken meanwhile (a concurrent retry)
            if found is not None:
                return found
            pending = [r["entry"] for r in self.pending(drawer)]
            d = ledger.fold(drawer, self.s.states.get(drawer, VoterState()).committed + pending)
            order = await self.order(entry)
            _finish(entry, d, order)
            ledger.check(d, entry, order)
            at = iso(self.s.t.clock())
            entry["provisional"] = {"terminal_id": self.s.me, "created_at": at, "reason": why}
            self.s.seq += 1
            row = {"entry": entry, "state": "pending", "position": None, "seq": self.s.seq, "created_at": at}
            ticket = self.disk.enqueue(
                at=at, events=[("cashier:provisional", {"drawer": drawer, "op_id": entry["op_id"], "entry": entry})],
                sql=[rows.provisional(drawer, entry["op_id"], self.s.seq, entry, at)])
            await self.disk.durable(ticket)
            self.s.provisional.setdefault(drawer, {})[entry["op_id"]] = row
            self.s.stats["provisional"] += 1
            self.s.reconcile_now.set()
            for listener in self.s.provisional_listeners:
                listener(drawer, entry)
            result = self._result(drawer, self._provisional_view(row))
            result["message"] = (f"stored provisionally ({why}); it is committed, or sent to the review queue "
                                 "if it conflicts, once a majority is reachable")
            return result

    def pending(self, drawer: str) -> list[dict[str, Any]]:
        """The drawer's provisional entries not settled yet, in the order they were taken (the
        order the reconciler appends them in)."""
        return sorted((r for r in self.s.provisional.get(drawer, {}).values() if r["state"] == "pending"),
                      key=lambda r: r["seq"])

    async def open_drawer(self, drawer: str, *, float_cents: int, operator: str, op_id: str | None = None,
                          allow_provisional: bool = False) -> dict[str, Any]:
        check_cents("float_cents", float_cents, 0)
        entry = self.entry(drawer, "drawer_opened", op_id, operator, float_cents=float_cents, operator=operator)
        return await self.submit(drawer, entry, allow_provisional=allow_provisional)

    async def pay(self, drawer: str, *, order_id: str, amount_cents: int, method: str, tip_cents: int = 0,
                  op_id: str | None = None, user: str | None = None, allow_provisional: bool = False) -> dict[str, Any]:
        check_cents("amount_cents", amount_cents, 1)
        check_cents("tip_cents", tip_cents, 0)
        if method not in ledger.METHODS:
            raise InvalidInput(f"method must be one of {', '.join(ledger.METHODS)}")
        entry = self.entry(drawer, "payment", op_id, user, order_id=order_id, amount_cents=amount_cents,
                            method=method, tip_cents=tip_cents, order_total_cents=0)
        return await self.submit(drawer, entry, allow_provisional=allow_provisional)

    async def move_cash(self, drawer: str, *, direction: str, amount_cents: int, reason: str,
                        op_id: str | None = None, user: str | None = None,
                        allow_provisional: bool = False) -> dict[str, Any]:
        check_cents("amount_cents", amount_cents, 1)
        if direction not in ("in", "out"):
            raise InvalidInput("direction must be 'in' or 'out'")
        entry = self.entry(drawer, "cash_movement", op_id, user, direction=direction, amount_cents=amount_cents,
                            reason=reason)
        return await self.submit(drawer, entry, allow_provisional=allow_provisional)

    async def refund(self, drawer: str, *, payment_op_id: str, amount_cents: int, reason: str,
                     op_id: str | None = None, user: str | None = None) -> dict[str, Any]:
        check_cents("amount_cents", amount_cents, 1)
        entry = self.entry(drawer, "refund", op_id, user, payment_op_id=payment_op_id, amount_cents=amount_cents,
                            reason=reason)
        return await self.submit(drawer, entry)

    async def close_drawer(self, drawer: str, *, counted_cents: int, op_id: str | None = None,
                           user: str | None = None, allow_provisional: bool = False) -> dict[str, Any]:
        check_cents("counted_cents", counted_cents, 0)
        entry = self.entry(drawer, "drawer_closed", op_id, user, counted_cents=counted_cents, expected_cents=0,
                            difference_cents=0)
        return await self.submit(drawer, entry, allow_provisional=allow_provisional)

    def summary(self, drawer: str) -> dict[str, Any]:
        d = self.s.drawers.get(drawer) or ledger.Drawer(drawer)
        hold = self.s.holds.get(drawer)
        st = self.s.states.get(drawer)
        if hold is not None and hold.holder.phase == "holding":
            ballot: Any = list(hold.holder.ballot)
        elif st is not None and st.promised[1]:
            ballot = list(st.promised)
        else:
            ballot = None
        q = self.links.quorum()
        return {
            "drawer": drawer, "state": d.state, "session": d.session, "expected_cash_cents": d.expected_cash_cents,
            "totals_by_method": d.totals_by_method, "tips_cents": d.tips_cents, "last_close": d.last_close,
            "holder": ballot[1] if ballot else None, "ballot": ballot, "held_here": hold is not None,
            "ledger_length": len(d.entries), "open_reviews": len(d.open_reviews),
            "provisional_pending": len(self.pending(drawer)),
            "voters": {"total": len(q["voters"]), "reachable": len(q["reachable"]), "majority": q["majority"]},
        }

    def drawer(self, drawer: str, *, from_position: int | None = None) -> dict[str, Any]:
        """The drawer, its entries from ``from_position`` (default: the latest session's opening)
        and this terminal's provisional entries for it."""
        check_drawer(drawer)
        d = self.s.drawers.get(drawer)
        if (d is None or not d.entries) and drawer not in self.s.provisional:
            raise NotFound(f"drawer {drawer} is unknown here (never opened, or its ledger has not reached "
                           "this terminal)")
        d = d or ledger.Drawer(drawer)
        if from_position is None:
            opens = [p for p, e in enumerate(d.entries) if e["kind"] == "drawer_opened"]
            from_position = opens[-1] if opens else 0
        entries = [ledger.view(d, p) for p in range(from_position, len(d.entries)) if d.entries[p]["kind"] != "noop"]
        rows = sorted(self.s.provisional.get(drawer, {}).values(), key=lambda r: r["seq"])
        return {**self.summary(drawer), "entries": entries,
                "provisional": [self._provisional_view(r) for r in rows]}

    def drawer_names(self) -> list[str]:
        """Drawers with a ledger or provisional entries here (a refused request on a name that was
        never opened leaves none)."""
        return sorted({name for name, d in self.s.drawers.items() if d.entries} | set(self.s.provisional))


def _finish(entry: dict[str, Any], d: ledger.Drawer, order: dict[str, Any] | None) -> None:
    """Fill what the drawer knows at append time: the order's total, the expected cash at close."""
    if entry["kind"] == "payment" and order is not None:
        entry["order_total_cents"] = order["total_cents"]
    elif entry["kind"] == "drawer_closed":
        entry["expected_cents"] = d.expected_cash_cents
        entry["difference_cents"] = entry["counted_cents"] - d.expected_cash_cents


def check_cents(name: str, value: Any, minimum: int) -> None:
    if type(value) is not int or value < minimum or value > 100_000_000:
        raise InvalidInput(f"{name} must be a whole number of cents, {minimum}..100000000")
