"""Catalog and stock: document ``inventory``.

Stock is a mergeable counter.  Each terminal replica owns one key per sku in ``stock_counts``
(``"<sku>/<replica id>"``: the running sum of the adjustments *it* made) and is the only writer
of that key, so concurrent adjustments on different terminals can never overwrite each other -
the quantity is a sum over all replicas' entries.

A stock count resets the base without losing concurrent sales: ``stock_base[sku]`` records the
counted quantity *and the counter entries the counting terminal had seen* (``seen``).  The
quantity is ``base.quantity + sum(entry - seen.get(replica, 0))``: adjustments the count already
reflected are cancelled out, adjustments it did not know about (made concurrently elsewhere) are
added on top.  Two concurrent counts: the base register is last-writer-wins, deterministically.

The replica id, not the terminal id, keys the entries: a terminal that is replaced with an empty
data directory gets a fresh replica id, so it can never clobber the old box's entry.
"""

from __future__ import annotations

from typing import Any

import pycrdt

from meshpos.documents.host import Model
from meshpos.documents.values import as_int, check_id, plain
from meshpos.errors import InvalidInput, NotFound

DOC_NAME = "inventory"
MAX_STOCK = 10_000_000


class InventoryDoc(Model):
    kind = "inventory"

    def attach(self) -> None:
        self.catalog = self.doc.get("catalog", type=pycrdt.Map)
        self.counts = self.doc.get("stock_counts", type=pycrdt.Map)
        self.base = self.doc.get("stock_base", type=pycrdt.Map)
        self.out = self.doc.get("stock_86", type=pycrdt.Map)
        self.low = self.doc.get("stock_low", type=pycrdt.Map)
        self._touched: set[str] = set()
        for root in (self.catalog, self.base, self.out, self.low):
            root.observe(lambda event: self._touched.update(event.keys))
        # sku -> replicas with a counter entry: a Y.Map has no prefix lookup, and scanning every
        # sku's entries on each read would make a stock write cost O(catalog x terminals).
        self._replicas: dict[str, set[str]] = {}
        for key in self.counts.keys():
            self._index(key)
        self.counts.observe(self._on_counts)

    def _index(self, key: str) -> str:
        sku, _, replica = key.partition("/")
        self._replicas.setdefault(sku, set()).add(replica)
        return sku

    def _on_counts(self, event: Any) -> None:
        self._touched.update(self._index(key) for key in event.keys)

    def drain_events(self, known: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, dict[str, Any]]]:
        touched, self._touched = self._touched, set()
        known = known or {}
        return [
            ("inventory:updated", {"sku": sku, "item": known.get(sku) or self.view(sku)})
            for sku in sorted(touched) if sku in self.catalog
        ]

    # -- reads ---------------------------------------------------------------------------------

    def skus(self) -> list[str]:
        return sorted(self.catalog.keys())

    def _entries(self, sku: str) -> dict[str, int]:
        return {r: as_int(self.counts[f"{sku}/{r}"]) for r in self._replicas.get(sku, ())}

    def quantity(self, sku: str) -> int:
        base = plain(self.base.get(sku)) or {"quantity": 0, "seen": {}}
        seen = base["seen"]
        return base["quantity"] + sum(v - seen.get(r, 0) for r, v in self._entries(sku).items())

    def require(self, sku: str) -> None:
        """Stock operations need the product first: 404 (4007) naming the call that adds it."""
        if sku not in self.catalog:
            raise NotFound(f"sku {sku!r} is not in the catalog; add it with PUT /api/v1/catalog/{sku}")

    def view(self, sku: str) -> dict[str, Any]:
        self.require(sku)
        product = plain(self.catalog[sku])
        qty = self.quantity(sku)
        low = self.low.get(sku)
        low = None if low is None else as_int(low)
        out = plain(self.out.get(sku)) or {"out": False}
        base = plain(self.base.get(sku))
        return {
            "sku": sku, "name": product["name"], "price_cents": product["price_cents"],
            "station": product.get("station"), "category": product.get("category"),
            "active": product["active"], "quantity": qty, "out_of_stock": out["out"],
            "low_stock_threshold": low, "low_stock": low is not None and qty <= low,
            "counted_at": base["counted_at"] if base else None,
        }

    def product(self, sku: str) -> dict[str, Any]:
        v = self.view(sku)
        return {k: v[k] for k in ("sku", "name", "price_cents", "station", "category", "active")}

    # -- writes --------------------------------------------------------------------------------

    def put_product(
        self, sku: str, *, name: str, price_cents: int, station: str | None, category: str | None, active: bool,
    ) -> None:
        check_id("sku", sku)
        self.catalog[sku] = {
            "sku": sku, "name": name, "price_cents": price_cents, "station": station,
            "category": category, "active": active, "at": self.now(), "by": self.terminal_id,
        }

    def adjust(self, sku: str, delta: int) -> None:
        self.require(sku)
        qty = self.quantity(sku)
        if delta == 0:
            raise InvalidInput("delta must not be 0")
        if abs(qty + delta) > MAX_STOCK:
            raise InvalidInput(f"stock would leave -{MAX_STOCK}..{MAX_STOCK}")
        key = f"{sku}/{self.replica_id}"
        self.counts[key] = as_int(self.counts.get(key, 0)) + delta
        self._index(key)  # observers run at commit; reads inside this transaction need it now

    def count(self, sku: str, quantity: int) -> None:
        self.view(sku)
        if not 0 <= quantity <= MAX_STOCK:
            raise InvalidInput(f"quantity must be 0..{MAX_STOCK}")
        self.base[sku] = {
            "quantity": quantity, "seen": self._entries(sku), "counted_at": self.now(),
            "counted_by": self.terminal_id,
        }

    def set_flags(self, sku: str, *, out_of_stock: bool | None = None, low_threshold: int | None = None,
                  clear_threshold: bool = False) -> None:
        self.view(sku)
        if low_threshold is not None and not 0 <= low_threshold <= MAX_STOCK:
            raise InvalidInput(f"low_stock_threshold must be 0..{MAX_STOCK}")
        if out_of_stock is not None:
            self.out[sku] = {"out": out_of_stock, "at": self.now(), "by": self.terminal_id}
        if clear_threshold:
            if sku in self.low:
                del self.low[sku]
        elif low_threshold is not None:
            self.low[sku] = low_threshold
