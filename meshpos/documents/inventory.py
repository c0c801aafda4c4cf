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

Every value is read as untrusted input (see orders.py, "Untrusted values"): a sku with one
malformed value (a fractional count, a price or counter out of bounds, a flag that is not an
object) is refused on its own and left out of the catalog and inventory listings.  Counter entries
are bounded by :data:`MAX_COUNTER` (10^12): a replica's lifetime sum of adjustments - a million
units a day for 2,700 years - and far below 2^53, so every quantity is an exact JS number.
"""

from __future__ import annotations

from typing import Any

import pycrdt

from core.errors import InvalidInput, InvalidTransition, MalformedEntity, NotFound
from core.yupdate import Shape
from meshpos.documents.orders import MAX_PRICE_CENTS
from meshpos.documents.reading import (
    CheckedModel,
    Flaw,
    clip,
    need_bool,
    need_id,
    need_int,
    need_object,
    need_str,
)
from meshpos.documents.values import check_id

DOC_NAME = "inventory"
MAX_STOCK = 10_000_000
MAX_COUNTER = 1_000_000_000_000
_PRODUCT_FIELDS = ("sku", "name", "price_cents", "station", "category", "active")


class InventoryDoc(CheckedModel):
    kind = "inventory"
    entity = "sku"
    #: What a peer's update may hold (core/yupdate.py): flat root maps of plain values.
    shape = Shape(frozenset({"catalog", "stock_counts", "stock_base", "stock_86", "stock_low"}))

    def attach(self) -> None:
        self.catalog = self.doc.get("catalog", type=pycrdt.Map)
        self.counts = self.doc.get("stock_counts", type=pycrdt.Map)
        self.base = self.doc.get("stock_base", type=pycrdt.Map)
        self.out = self.doc.get("stock_86", type=pycrdt.Map)
        self.low = self.doc.get("stock_low", type=pycrdt.Map)
        self._touched: set[str] = set()
        for root in (self.catalog, self.base, self.out, self.low):
            root.observe(lambda event: self._touched.update(event.keys))
        # sku -> its counter keys: a Y.Map has no prefix lookup, and scanning every sku's entries
        # on each read would make a stock write cost O(catalog x terminals).  Keys, not replica
        # ids: a key without "/<replica>" (a total written by a JS client) must be found and refused.
        self._keys: dict[str, set[str]] = {}
        for key in self.counts.keys():
            self._index(key)
        self.counts.observe(self._on_counts)

    def _index(self, key: str) -> str:
        sku = key.partition("/")[0]
        self._keys.setdefault(sku, set()).add(key)
        return sku

    def _on_counts(self, event: Any) -> None:
        self._touched.update(self._index(key) for key in event.keys)

    def drain_events(self, known: dict[str, dict[str, Any]] | None = None, *,
                     defer: bool = False) -> list[tuple[str, dict[str, Any]]]:
        touched, self._touched = self._touched, set()
        known = known or {}
        out = []
        for sku in sorted(touched):
            if sku not in self.catalog:
                self._forget(sku)
                continue
            try:
                out.append(("inventory:updated", {"sku": sku, "item": known.get(sku) or self.view(sku)}))
            except MalformedEntity:
                continue  # counted and logged by the view; the other skus' events stand
        return out

    # -- reads ---------------------------------------------------------------------------------

    def skus(self) -> list[str]:
        """The skus that read (a malformed one is counted, logged once and left out)."""
        return [v["sku"] for v in self.list()]

    def list(self) -> list[dict[str, Any]]:
        """The inventory view of every sku that reads."""
        return self._listed(sorted(self.catalog.keys()), self.view)

    def products(self) -> list[dict[str, Any]]:
        """The catalog: every product whose sku reads."""
        return [_product(v) for v in self.list()]

    def _entries(self, sku: str) -> dict[str, int]:
        """Replica id -> its counter entry for ``sku`` (a deleted entry no longer counts)."""
        entries, gone = {}, []
        for key in self._keys.get(sku, ()):
            value = self.counts.get(key)
            if value is None:
                gone.append(key)
                continue
            _, slash, replica = key.partition("/")
            if not slash or not replica:
                raise Flaw(f"stock_counts key {clip(repr(key), 80)} is not '<sku>/<replica id>'")
            entries[replica] = need_int(value, -MAX_COUNTER, MAX_COUNTER, f"stock_counts[{clip(repr(key), 80)}]")
        for key in gone:
            self._keys[sku].discard(key)
        return entries

    def _stock(self, sku: str) -> tuple[int, str | None]:
        """The quantity (see the module docstring) and when it was last counted."""
        base = self.base.get(sku)
        quantity, seen, counted_at = 0, {}, None
        if base is not None:
            base = need_object(base, "stock_base[sku]")
            quantity = need_int(base.get("quantity"), 0, MAX_STOCK, "stock_base[sku].quantity")
            seen = need_object(base.get("seen"), "stock_base[sku].seen")
            counted_at = need_str(base.get("counted_at"), "stock_base[sku].counted_at")
        for replica, value in self._entries(sku).items():
            quantity += value - need_int(seen.get(replica, 0), -MAX_COUNTER, MAX_COUNTER, "stock_base[sku].seen")
        if abs(quantity) > MAX_COUNTER:
            raise Flaw(f"the quantity {quantity} is beyond -{MAX_COUNTER}..{MAX_COUNTER}")
        return quantity, counted_at

    def quantity(self, sku: str) -> int:
        return self._read(sku, lambda: self._stock(sku)[0])

    def require(self, sku: str) -> None:
        """Stock operations need the product first: 404 (4007) naming the call that adds it."""
        if sku not in self.catalog:
            raise NotFound(f"sku {sku!r} is not in the catalog; add it with PUT /api/v1/catalog/{sku}")

    def view(self, sku: str) -> dict[str, Any]:
        """Raises :class:`MalformedEntity` when any value of the sku breaks docs/documents.md."""
        self.require(sku)
        return self._read(sku, lambda: self._compose(sku, self.catalog[sku]))

    def _compose(self, sku: str, product: Any) -> dict[str, Any]:
        """The view of ``sku`` with ``product`` as its catalog record (a write checks the one it is
        about to make, so it cannot leave a sku that no longer reads)."""
        need_id(sku, "the sku")
        product = need_object(product, "catalog[sku]")
        quantity, counted_at = self._stock(sku)
        low = self.low.get(sku)
        low = None if low is None else need_int(low, 0, MAX_STOCK, "stock_low[sku]")
        out = self.out.get(sku)
        out = False if out is None else need_bool(need_object(out, "stock_86[sku]").get("out"), "stock_86[sku].out")
        return {
            "sku": sku, "name": need_str(product.get("name"), "catalog[sku].name"),
            "price_cents": need_int(product.get("price_cents"), 0, MAX_PRICE_CENTS, "catalog[sku].price_cents"),
            "station": need_str(product.get("station"), "catalog[sku].station", null=True),
            "category": need_str(product.get("category"), "catalog[sku].category", null=True),
            "active": need_bool(product.get("active"), "catalog[sku].active"), "quantity": quantity,
            "out_of_stock": out, "low_stock_threshold": low, "low_stock": low is not None and quantity <= low,
            "counted_at": counted_at,
        }

    def product(self, sku: str) -> dict[str, Any]:
        return _product(self.view(sku))

    # -- writes --------------------------------------------------------------------------------

    def put_product(
        self, sku: str, *, name: str, price_cents: int, station: str | None, category: str | None, active: bool,
    ) -> None:
        check_id("sku", sku)
        if not isinstance(name, str) or not name:
            raise InvalidInput("name must be a non-empty string")
        if not _is_int(price_cents) or not 0 <= price_cents <= MAX_PRICE_CENTS:
            raise InvalidInput(f"price_cents must be an integer in 0..{MAX_PRICE_CENTS}")
        if not all(v is None or isinstance(v, str) for v in (station, category)) or not isinstance(active, bool):
            raise InvalidInput("station and category are strings or null; active is true or false")
        record = {
            "sku": sku, "name": name, "price_cents": price_cents, "station": station,
            "category": category, "active": active, "at": self.now(), "by": self.terminal_id,
        }
        self._read(sku, lambda: self._compose(sku, record))  # the sku's stock values read
        self.catalog[sku] = record

    def adjust(self, sku: str, delta: int) -> None:
        self.require(sku)
        qty = self.view(sku)["quantity"]
        if not _is_int(delta) or delta == 0:
            raise InvalidInput("delta must be an integer other than 0")
        if abs(qty + delta) > MAX_STOCK:  # depends on the stock level: refused by state (409)
            raise InvalidTransition(f"stock would leave -{MAX_STOCK}..{MAX_STOCK}")
        key = f"{sku}/{self.replica_id}"
        entry = self._entries(sku).get(self.replica_id, 0) + delta
        if abs(entry) > MAX_COUNTER:
            raise InvalidTransition(f"this terminal's stock counter {key} would leave -{MAX_COUNTER}..{MAX_COUNTER}")
        self.counts[key] = entry
        self._index(key)  # observers run at commit; reads inside this transaction need it now

    def count(self, sku: str, quantity: int) -> None:
        self.view(sku)
        if not _is_int(quantity) or not 0 <= quantity <= MAX_STOCK:
            raise InvalidInput(f"quantity must be 0..{MAX_STOCK}")
        self.base[sku] = {
            "quantity": quantity, "seen": self._entries(sku), "counted_at": self.now(),
            "counted_by": self.terminal_id,
        }

    def set_flags(self, sku: str, *, out_of_stock: bool | None = None, low_threshold: int | None = None,
                  clear_threshold: bool = False) -> None:
        self.view(sku)
        if out_of_stock is not None and not isinstance(out_of_stock, bool):
            raise InvalidInput("out_of_stock must be true or false")
        if low_threshold is not None and (not _is_int(low_threshold) or not 0 <= low_threshold <= MAX_STOCK):
            raise InvalidInput(f"low_stock_threshold must be 0..{MAX_STOCK}")
        if out_of_stock is not None:
            self.out[sku] = {"out": out_of_stock, "at": self.now(), "by": self.terminal_id}
        if clear_threshold:
            if sku in self.low:
                del self.low[sku]
        elif low_threshold is not None:
            self.low[sku] = low_threshold


def _product(view: dict[str, Any]) -> dict[str, Any]:
    return {k: view[k] for k in _PRODUCT_FIELDS}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
