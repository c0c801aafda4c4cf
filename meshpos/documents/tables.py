"""Floor plan and table state: document ``tables``.

Every root map is flat (table id -> plain JSON value).  Nested Y.Maps created for the same key on
two terminals would lose one side entirely after merge (Yjs keeps one of two concurrently
inserted map values), so nothing here is a per-table nested type: each aspect of a table is its
own last-writer-wins register, and concurrent changes to *different* aspects (status on the POS,
waiter on a handheld) both survive.

Every register is read as untrusted input (see orders.py, "Untrusted values"): a table with one
malformed register is refused on its own and left out of the listing; the others keep serving.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pycrdt

from core.errors import InvalidInput, InvalidTransition, MalformedEntity, NotFound
from core.yupdate import Shape
from meshpos.documents.reading import (
    CheckedModel,
    Flaw,
    clip,
    need_id,
    need_int,
    need_object,
    need_str,
)
from meshpos.documents.values import check_id

TABLE_STATUSES = ("free", "occupied", "reserved", "cleaning")
DOC_NAME = "tables"
MAX_SEATS = 100
#: Guests may reach four per seat (at least 100): never more than 400.
MAX_GUESTS = 4 * MAX_SEATS


class TablesDoc(CheckedModel):
    kind = "tables"
    entity = "table"
    #: What a peer's update may hold (core/yupdate.py): flat root maps of plain values.
    shape = Shape(frozenset({"tables", "table_status", "table_waiter", "table_guests", "table_merge"}))

    def attach(self) -> None:
        self.layout = self.doc.get("tables", type=pycrdt.Map)
        self.status = self.doc.get("table_status", type=pycrdt.Map)
        self.waiter = self.doc.get("table_waiter", type=pycrdt.Map)
        self.guests = self.doc.get("table_guests", type=pycrdt.Map)
        self.merge = self.doc.get("table_merge", type=pycrdt.Map)
        self._touched: dict[str, set[str]] = {}
        for root, aspect in (
            (self.layout, "layout"), (self.status, "status"), (self.waiter, "waiter"),
            (self.guests, "guests"), (self.merge, "merge"),
        ):
            root.observe(self._noter(aspect))

    def _noter(self, aspect: str) -> Callable[[Any], None]:
        # pycrdt passes the transaction too when a callback takes two parameters, so no defaults here
        def note(event: Any) -> None:
            for key in event.keys:
                self._touched.setdefault(key, set()).add(aspect)

        return note

    def drain_events(self, known: dict[str, dict[str, Any]] | None = None, *,
                     defer: bool = False) -> list[tuple[str, dict[str, Any]]]:
        touched, self._touched = self._touched, {}
        known = known or {}
        out = []
        for tid in sorted(touched):
            if tid not in self.layout:
                self._forget(tid)
                continue
            try:
                view = known.get(tid) or self.view(tid)
            except MalformedEntity:
                continue  # counted and logged by the view; the other tables' events stand
            aspects = touched[tid]
            if "status" in aspects:
                out.append(("table:status:changed", {"table_id": tid, "status": view["status"], "table": view}))
            if "waiter" in aspects:
                out.append(("table:assigned", {"table_id": tid, "waiter": view["waiter"], "table": view}))
            if aspects & {"layout", "guests", "merge"}:
                out.append(("table:updated", {"table_id": tid, "table": view}))
        return out

    def ids(self) -> list[str]:
        return sorted(self.layout.keys())

    def exists(self, table_id: str) -> bool:
        return table_id in self.layout

    def view(self, table_id: str) -> dict[str, Any]:
        """Raises :class:`MalformedEntity` when any of the table's registers breaks docs/documents.md."""
        if table_id not in self.layout:
            raise NotFound(f"table {table_id!r} not found")
        return self._read(table_id, lambda: self._compose(table_id, self.layout[table_id]))

    @staticmethod
    def _register(root: pycrdt.Map, table_id: str, what: str, default: dict[str, Any]) -> dict[str, Any]:
        value = root.get(table_id)
        return default if value is None else need_object(value, what)

    def _compose(self, table_id: str, layout: Any) -> dict[str, Any]:
        """The view of ``table_id`` with ``layout`` as its layout register (a write checks the one
        it is about to make, so it cannot leave a table that no longer reads)."""
        need_id(table_id, "the table id")
        layout = need_object(layout, "tables[id]")
        status = self._register(self.status, table_id, "table_status[id]", {"status": "free"})
        waiter = self._register(self.waiter, table_id, "table_waiter[id]", {})
        guests = self._register(self.guests, table_id, "table_guests[id]", {"guests": 0})
        merge = self._register(self.merge, table_id, "table_merge[id]", {})
        if status.get("status") not in TABLE_STATUSES:
            shown = clip(repr(status.get("status")), 40)
            raise Flaw(f"table_status[id].status must be one of {', '.join(TABLE_STATUSES)}, got {shown}")
        return {
            "id": table_id, "name": need_str(layout.get("name"), "tables[id].name"),
            "seats": need_int(layout.get("seats"), 1, MAX_SEATS, "tables[id].seats"),
            "area": need_str(layout.get("area"), "tables[id].area", null=True),
            "status": status["status"], "status_at": need_str(status.get("at"), "table_status[id].at", null=True),
            "waiter": need_str(waiter.get("waiter"), "table_waiter[id].waiter", null=True),
            "guests": need_int(guests.get("guests"), 0, MAX_GUESTS, "table_guests[id].guests"),
            "merged_into": need_id(merge.get("into"), "table_merge[id].into", null=True),
        }

    def list(self) -> list[dict[str, Any]]:
        """Every table that reads; a malformed one is counted, logged once and skipped."""
        return self._listed(self.ids(), self.view)

    # -- writes --------------------------------------------------------------------------------

    def _stamp(self) -> dict[str, str]:
        return {"at": self.now(), "by": self.terminal_id}

    def put(self, table_id: str, *, name: str, seats: int, area: str | None) -> None:
        check_id("table", table_id)
        if not isinstance(name, str) or not name:
            raise InvalidInput("name must be a non-empty string")
        if isinstance(seats, bool) or not isinstance(seats, int) or not 1 <= seats <= MAX_SEATS:
            raise InvalidInput(f"seats must be an integer in 1..{MAX_SEATS}")
        if area is not None and not isinstance(area, str):
            raise InvalidInput("area must be a string or null")
        layout = {"name": name, "seats": seats, "area": area, **self._stamp()}
        self._read(table_id, lambda: self._compose(table_id, layout))  # the table's other registers read
        self.layout[table_id] = layout

    def update(
        self, table_id: str, *, status: str | None = None, waiter: str | None = None,
        guests: int | None = None, set_waiter: bool = False,
    ) -> None:
        """Change any of status/waiter/guests; ``set_waiter`` distinguishes "unassign" from "leave"."""
        view = self.view(table_id)
        if status is not None and status not in TABLE_STATUSES:
            raise InvalidInput(f"unknown table status {status!r}; one of {', '.join(TABLE_STATUSES)}")
        if guests is not None and (isinstance(guests, bool) or not isinstance(guests, int) or guests < 0):
            raise InvalidInput("guests must be an integer of at least 0")
        if guests is not None and guests > max(view["seats"] * 4, 100):  # depends on the table: 409
            raise InvalidTransition(f"guests must be 0..{max(view['seats'] * 4, 100)} at this table")
        if set_waiter and waiter is not None and not isinstance(waiter, str):
            raise InvalidInput("waiter must be a string or null")
        stamp = self._stamp()
        if status is not None and status != view["status"]:
            self.status[table_id] = {"status": status, **stamp}
        if set_waiter and waiter != view["waiter"]:
            self.waiter[table_id] = {"waiter": waiter, **stamp}
        if guests is not None and guests != view["guests"]:
            self.guests[table_id] = {"guests": guests, **stamp}

    def merge_into(self, table_id: str, into: str) -> None:
        view = self.view(table_id)
        target = self.view(into)
        if table_id == into:
            raise InvalidTransition("a table cannot be merged into itself")
        if target["merged_into"] is not None:
            raise InvalidTransition(f"table {into!r} is itself merged into {target['merged_into']!r}")
        if len(self.group(table_id)) > 1:
            raise InvalidTransition(f"other tables are merged into {table_id!r}; unmerge them first")
        if view["merged_into"] == into:
            raise InvalidTransition(f"table {table_id!r} is already merged into {into!r}")
        self.merge[table_id] = {"into": into, **self._stamp()}

    def unmerge(self, table_id: str) -> None:
        if self.view(table_id)["merged_into"] is None:
            raise InvalidTransition(f"table {table_id!r} is not merged")
        self.merge[table_id] = {"into": None, **self._stamp()}

    def group(self, table_id: str) -> list[str]:
        """``table_id`` and every table merged into it (orders of a merged group print together).
        A merge register that is not an object merges nothing here (its table is malformed)."""
        merged = []
        for tid in self.ids():
            merge = self.merge.get(tid)
            if tid != table_id and isinstance(merge, dict) and merge.get("into") == table_id:
                merged.append(tid)
        return [table_id, *merged]
