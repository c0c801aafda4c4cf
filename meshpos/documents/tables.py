"""Floor plan and table state: document ``tables``.

Every root map is flat (table id -> plain JSON value).  Nested Y.Maps created for the same key on
two terminals would lose one side entirely after merge (Yjs keeps one of two concurrently
inserted map values), so nothing here is a per-table nested type: each aspect of a table is its
own last-writer-wins register, and concurrent changes to *different* aspects (status on the POS,
waiter on a handheld) both survive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pycrdt

from meshpos.documents.host import Model
from meshpos.documents.values import check_id, plain
from meshpos.errors import InvalidInput, InvalidTransition, NotFound

TABLE_STATUSES = ("free", "occupied", "reserved", "cleaning")
DOC_NAME = "tables"


class TablesDoc(Model):
    kind = "tables"

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

    def drain_events(self, known: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, dict[str, Any]]]:
        touched, self._touched = self._touched, {}
        known = known or {}
        out = []
        for tid in sorted(touched):
            if tid not in self.layout:
                continue
            view = known.get(tid) or self.view(tid)
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
        if table_id not in self.layout:
            raise NotFound(f"table {table_id!r} not found")
        layout = plain(self.layout[table_id])
        status = plain(self.status.get(table_id)) or {"status": "free", "at": None}
        waiter = plain(self.waiter.get(table_id)) or {"waiter": None}
        guests = plain(self.guests.get(table_id)) or {"guests": 0}
        merge = plain(self.merge.get(table_id)) or {"into": None}
        return {
            "id": table_id, "name": layout["name"], "seats": layout["seats"], "area": layout.get("area"),
            "status": status["status"], "status_at": status.get("at"), "waiter": waiter["waiter"],
            "guests": guests["guests"], "merged_into": merge["into"],
        }

    def list(self) -> list[dict[str, Any]]:
        return [self.view(t) for t in self.ids()]

    # -- writes --------------------------------------------------------------------------------

    def _stamp(self) -> dict[str, str]:
        return {"at": self.now(), "by": self.terminal_id}

    def put(self, table_id: str, *, name: str, seats: int, area: str | None) -> None:
        check_id("table", table_id)
        self.layout[table_id] = {"name": name, "seats": seats, "area": area, **self._stamp()}

    def update(
        self, table_id: str, *, status: str | None = None, waiter: str | None = None,
        guests: int | None = None, set_waiter: bool = False,
    ) -> None:
        """Change any of status/waiter/guests; ``set_waiter`` distinguishes "unassign" from "leave"."""
        view = self.view(table_id)
        if status is not None and status not in TABLE_STATUSES:
            raise InvalidInput(f"unknown table status {status!r}; one of {', '.join(TABLE_STATUSES)}")
        if guests is not None and not 0 <= guests <= max(view["seats"] * 4, 100):
            raise InvalidInput(f"guests must be 0..{max(view['seats'] * 4, 100)}")
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
        """``table_id`` and every table merged into it (orders of a merged group print together)."""
        return [table_id] + [t for t in self.ids() if plain(self.merge.get(t) or {}).get("into") == table_id]
