"""Orders of one business day: ``orders/<YYYY-MM-DD>``.

Lifecycle rule (why it converges): an order's status is not a register that writers overwrite -
it is *derived* from the set of stages the order has reached.  Each stage is its own key in the
order's ``stages`` map, written once by whoever reaches it; concurrent changes on different
terminals therefore union, and the status every replica computes is the highest-ranked stage
present.  "Furthest stage wins" follows from the CRDT merge, not from clocks or writer order.

Layout (why flat): every fact about an order is one key of the order's ``Y.Map`` and immutable
records are JSON text.  Yrs spends ~450 bytes of memory per CRDT item and several times more on a
nested map or a plain object, so a busy day (5,000 orders) must cost about one item per update.

Ranks: open < sent < preparing < ready < served < cancelled < paid < closed.
- A local change may only move to a higher rank (skipping is fine; going back is refused).
- ``cancelled`` is reachable from open..served only, and nothing follows it locally.
- Concurrent cancel vs paid: ``paid`` outranks ``cancelled`` - money was taken, so the order is
  paid and the cancellation stays visible (``cancellation.overridden_by``) for a refund.
- Concurrent cancel vs served/ready/...: ``cancelled`` wins - the deliberate act with a reason.

Untrusted values: peers and JS clients write these documents directly, so any value may break
docs/documents.md (a record stored as a ``Y.Map``, a fractional ``qty``, a total no JS number holds
exactly).  Every read checks what it serves; one malformed order is refused on its own
(:class:`MalformedEntity`) and never takes a listing or another order's events with it
(meshpos/documents/reading.py holds the machinery the three models share).

Bounds (why these): every number the terminal serves or sums must stay an exact JS number (at
most 2^53 - 1, about 9.007e15).  A write may not take an order past :data:`MAX_ORDER_TOTAL_CENTS`
(10^11 cents, a billion in the currency) or :data:`MAX_ORDER_ITEMS` items - no restaurant order
comes near, and a day of 5,000 orders at the bound still sums to 5e14.  Readers accept
:data:`READ_SLACK` times those bounds, because terminals adding items to the same order at the
same time each check only their own view and the merge may pass the bound legitimately; an order
beyond even that was not written by these rules and is malformed.

Why one module of ~590 lines: it is the whole of one document's rules - the lifecycle, the item
and modifier shapes, the bounds and the reads that check them refer to each other (an event's
deferred view, :func:`resolve_event`, is the same read from the same text), and a reader of
docs/documents.md's orders section finds them in one place (the machinery shared with the
other models is in ``reading.py`` and ``values.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import pycrdt
from pycrdt._pycrdt import Map as NativeMap  # the native maps _observe hands over

from core.clock import random_id, time_id, time_of_id
from core.codec import embed_json, embedded_text
from core.errors import InvalidInput, InvalidTransition, MalformedEntity, NotFound, PermissionDenied
from core.yupdate import Shape
from meshpos.documents.reading import (
    ID_CHARS,
    CheckedModel,
    Flaw,
    clip,
    describe,
    need_id,
    need_int,
    need_list,
    need_object,
    need_str,
    need_text,
)
from meshpos.documents.values import ID_PATTERN, check_id, dump, load, load_list
from storage.store import StoredEvent

ORDER_STAGES = ("open", "sent", "preparing", "ready", "served", "cancelled", "paid", "closed")
ORDER_RANK = {stage: rank for rank, stage in enumerate(ORDER_STAGES)}
KITCHEN_STAGES = ("queued", "preparing", "ready", "served")
KITCHEN_RANK = {stage: rank for rank, stage in enumerate(KITCHEN_STAGES)}
_FIELDS = ("table", "waiter", "notes")
MAX_QTY = 10_000
MAX_PRICE_CENTS = 100_000_000
MAX_MODIFIERS = 50
#: The order bounds a write may not pass, and the factor readers allow on top (module docstring).
MAX_ORDER_TOTAL_CENTS = 100_000_000_000
MAX_ORDER_ITEMS = 1_000
READ_SLACK = 10
#: An order id: the business day, then a time id (docs/documents.md, "Ids").  Ids are matched
#: with ``fullmatch``: ``$`` alone would let a trailing newline through.
ORDER_ID = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})-[0-9a-hjkmnp-tv-z]{19}")
ITEM_ID = re.compile(r"[0-9a-hjkmnp-tv-z]{8}")

# -- orders ----------------------------------------------------------------------------------------


def doc_name(day: date) -> str:
    return f"orders/{day.isoformat()}"


def furthest(stages: Iterable[str], rank: dict[str, int]) -> str:
    """The highest-ranked stage reached (names this version does not know are ignored)."""
    return max(stages, key=lambda s: rank.get(s, -1))


def check_transition(current: str, target: str) -> None:
    """The local lifecycle rule; raises :class:`InvalidTransition` with the reason."""
    if target not in ORDER_RANK:
        raise InvalidInput(f"unknown status {target!r}; one of {', '.join(ORDER_STAGES)}")
    if current == "cancelled":
        raise InvalidTransition(f"order is cancelled; it cannot become {target}")
    if target == "cancelled" and ORDER_RANK[current] > ORDER_RANK["served"]:
        raise InvalidTransition(f"order is {current}; a {current} order cannot be cancelled (refund it)")
    if ORDER_RANK[target] <= ORDER_RANK[current]:
        raise InvalidTransition(
            f"order is {current}; status moves forward only "
            f"({' -> '.join(s for s in ORDER_STAGES if s != 'cancelled')}), not to {target}"
        )


def line_total(qty: int, unit_price_cents: int, modifiers: list[dict[str, Any]]) -> int:
    return qty * (unit_price_cents + sum(m["price_cents"] for m in modifiers))


def check_order_bounds(items: list[dict[str, Any]], total: int = 0, count: int = 0) -> None:
    """Refuse new ``items`` that would take an order holding ``count`` items worth ``total`` past
    the order bounds - before anything is written, so the order stays as it was.  Items too many
    or too dear on their own are bad input (422); ones that pass only with what the order holds
    already are refused by its state (409, like the lifecycle rules)."""
    added = sum(line_total(i["qty"], i["unit_price_cents"], i["modifiers"]) for i in items)
    for error, n, cents in ((InvalidInput, len(items), added), (InvalidTransition, count + len(items), total + added)):
        if n > MAX_ORDER_ITEMS:
            raise error(f"an order holds at most {MAX_ORDER_ITEMS} items; with these it would hold {n}")
        if cents > MAX_ORDER_TOTAL_CENTS:
            raise error(f"an order's total may not exceed {MAX_ORDER_TOTAL_CENTS} cents; with these items it "
                        f"would be {cents} cents")


def validate_item(raw: dict[str, Any]) -> dict[str, Any]:
    """Normalise one new item; raises :class:`InvalidInput` naming the bad field."""
    def need_str(key: str, required: bool = True, max_len: int = 200) -> str | None:
        value = raw.get(key)
        if (value is None or value == "") and not required:
            return None
        if not isinstance(value, str) or not value or len(value) > max_len:
            raise InvalidInput(f"item.{key} must be a non-empty string of at most {max_len} characters")
        return value

    def need_int(key: str, lo: int, hi: int, default: int | None = None) -> int:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise InvalidInput(f"item.{key} must be an integer in {lo}..{hi}, got {value!r}")
        return value

    modifiers = []
    raw_modifiers = raw.get("modifiers") or []
    if not isinstance(raw_modifiers, list) or len(raw_modifiers) > MAX_MODIFIERS:
        raise InvalidInput(f"item.modifiers is a list of at most {MAX_MODIFIERS} entries")
    for m in raw_modifiers:
        if isinstance(m, str):
            m = {"name": m, "price_cents": 0}
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not m["name"]:
            raise InvalidInput("item.modifiers entries are strings or {name, price_cents}")
        price = m.get("price_cents", 0)
        if isinstance(price, bool) or not isinstance(price, int) or not 0 <= price <= MAX_PRICE_CENTS:
            raise InvalidInput(f"item.modifiers[].price_cents must be an integer in 0..{MAX_PRICE_CENTS}")
        modifiers.append({"name": m["name"], "price_cents": price})
    return {
        "sku": check_id("sku", raw.get("sku")),
        "name": need_str("name"),
        "qty": need_int("qty", 1, MAX_QTY),
        "unit_price_cents": need_int("unit_price_cents", 0, MAX_PRICE_CENTS),
        "modifiers": modifiers,
        "notes": need_str("notes", required=False, max_len=500) or "",
        "station": need_str("station", required=False, max_len=64) or "",
    }


def _entry(value: Any, what: str) -> dict[str, Any]:
    """A stage or void entry (``{"at", "by"[, "reason"]}``) with only the fields it serves: what
    else a writer put in it is not passed on."""
    entry = need_text(value, what, load)
    reason, at, by = entry.get("reason"), entry.get("at"), entry.get("by")
    if type(at) is str and (by is None or type(by) is str) and (reason is None or type(reason) is str):
        return {"reason": reason, "at": at, "by": by}  # the usual entry, checked inline (hot)
    try:
        return {"reason": need_str(entry.get("reason"), "reason", null=True), "at": need_str(entry.get("at"), "at"),
                "by": need_str(entry.get("by"), "by", null=True)}
    except Flaw as exc:
        raise Flaw(f"{what}: {exc}") from None


def _modifier(value: Any) -> dict[str, Any]:
    """A modifier with only its two fields (what else a writer put in it is not passed on)."""
    if type(value) is dict:  # the common case checked inline: hot, once per modifier of every view
        name, price = value.get("name"), value.get("price_cents")
        if type(name) is str and type(price) is int and 0 <= price <= MAX_PRICE_CENTS:
            return {"name": name, "price_cents": price}
    value = need_object(value, "a modifier")
    return {"name": need_str(value.get("name"), "modifier name"),
            "price_cents": need_int(value.get("price_cents"), 0, MAX_PRICE_CENTS, "modifier price_cents")}


def _item_fields(item: dict[str, Any]) -> tuple[Any, ...]:
    """An item's served fields as docs/documents.md defines them, or a flaw naming the first that
    is not (the slow path of :func:`_item_view`; it also accepts a JSON ``2.0`` for an integer)."""
    return (need_int(item.get("qty"), 1, MAX_QTY, "qty"),
            need_int(item.get("unit_price_cents"), 0, MAX_PRICE_CENTS, "unit_price_cents"),
            need_id(item.get("sku"), "sku"), need_str(item.get("name"), "name"),
            need_str(item.get("notes"), "notes", null=True), need_str(item.get("station"), "station", null=True),
            need_str(item.get("added_at"), "added_at"), need_str(item.get("added_by"), "added_by", null=True),
            need_list(item.get("modifiers"), "modifiers", MAX_MODIFIERS))


def _item_view(item_id: str, item: dict[str, Any], reached: dict[str, Any] | None, void: Any) -> dict[str, Any]:
    """One item of the view, every served field checked.  Hot (once per item of every view): the
    usual item is checked inline, and only one that fails that goes through the ``need_*`` readers."""
    get = item.get
    qty, unit, sku, name, notes = get("qty"), get("unit_price_cents"), get("sku"), get("name"), get("notes")
    station, added_at, added_by, mods = get("station"), get("added_at"), get("added_by"), get("modifiers")
    try:
        if not (type(qty) is int and 1 <= qty <= MAX_QTY and type(unit) is int and 0 <= unit <= MAX_PRICE_CENTS
                and type(sku) is str and ID_PATTERN.fullmatch(sku) and type(name) is str and type(added_at) is str
                and (notes is None or type(notes) is str) and (station is None or type(station) is str)
                and (added_by is None or type(added_by) is str) and type(mods) is list
                and len(mods) <= MAX_MODIFIERS):
            qty, unit, sku, name, notes, station, added_at, added_by, mods = _item_fields(item)
        modifiers = [_modifier(m) for m in mods]
        voided = None if void is None else _entry(void, f"void:{item_id}")
    except Flaw as exc:
        raise Flaw(f"item {clip(repr(item_id), ID_CHARS)}: {exc}") from None
    return {
        "id": item_id, "sku": sku, "name": name, "qty": qty, "unit_price_cents": unit, "modifiers": modifiers,
        "notes": notes or "", "station": station or "",
        "kitchen_status": furthest({"queued": None, **reached}, KITCHEN_RANK) if reached else "queued",
        "voided": voided is not None, "void": voided, "added_at": added_at, "added_by": added_by,
        "total_cents": 0 if voided is not None else line_total(qty, unit, modifiers),
    }


def _added(item: dict[str, Any]) -> tuple[str, str]:
    """Items in the order they were added (id breaks ties): the same list on every replica."""
    return item["added_at"], item["id"]


def _order_day(order_id: str, day: date | None) -> str:
    """The business day ``order_id`` names, as ``YYYY-MM-DD``; ``day``: the document's, which it
    must be (``None``: only that the id names a real date)."""
    match = ORDER_ID.fullmatch(order_id)
    if match is None:
        raise Flaw(f"the order id must match {ORDER_ID.pattern}")
    named = f"{match[1]}-{match[2]}-{match[3]}"
    if day is None:
        try:
            date.fromisoformat(named)
        except ValueError:
            raise Flaw(f"the order id names no date ({named})") from None
    elif named != day.isoformat():
        raise Flaw(f"the order id names business day {named}; this document holds {day.isoformat()}")
    return named


def _facts_of(text: Any) -> dict[str, Any]:
    """An order map's entries grouped by kind, from its JSON text (``str`` of the pycrdt map: one
    call, where reading it entry by entry cost a call per key), or from that text decoded
    already (a deferred event read from storage, see :data:`DEFERRED`)."""
    items: dict[str, Any] = {}
    stages: dict[str, Any] = {}
    kitchen: dict[str, dict[str, Any]] = {}
    void: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    facts: dict[str, Any] = {"stages": stages, "items": items, "kitchen": kitchen, "void": void,
                             "fields": fields, "record": None}

    def add(batch: Iterable[Any], where: str) -> None:
        for item in batch:
            item_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(item_id, str) or not ITEM_ID.fullmatch(item_id):
                need_object(item, f"an item of {where}")
                need_id(item_id, f"an item id in {where}", pattern=ITEM_ID)
            if item_id in items:
                raise Flaw(f"item id {item_id!r} appears twice")
            items[item_id] = item
        if len(items) > MAX_ORDER_ITEMS * READ_SLACK:
            raise Flaw(f"the order holds more than {MAX_ORDER_ITEMS * READ_SLACK} items")

    for key, value in (text if isinstance(text, dict) else need_text(text, "the order map", load)).items():
        kind, _, rest = key.partition(":")
        if kind == "order":
            facts["record"] = record = need_text(value, "order", load)
            add(need_list(record.get("items", []), "order.items", MAX_ORDER_ITEMS * READ_SLACK), "order")
        elif kind == "items":
            add(need_text(value, key, load_list), key)
        elif kind == "stage":
            stages[rest] = _entry(value, key)
        elif kind == "kitchen":
            item_id, _, stage = rest.rpartition(":")
            kitchen.setdefault(item_id, {})[stage] = value
        elif kind == "void":
            void[rest] = value  # decoded with its item: a void of an unknown item is ignored
        elif kind in _FIELDS:
            fields[kind] = value
    if facts["record"] is None:
        raise Flaw("the order map has no 'order' record")
    return facts


def _view(order_id: str, facts: dict[str, Any], day: str) -> dict[str, Any]:
    """The order's view from its :func:`_facts_of`; ``day``: the business day its id names.  Hot: a
    catch-up builds one per order it brings (2,500 for a busy half-day), so this is written for
    speed over brevity."""
    record, kitchen, voids, fields = facts["record"], facts["kitchen"], facts["void"], facts["fields"]
    business_day = need_str(record.get("business_day"), "order.business_day")
    if business_day != day:
        raise Flaw(f"order.business_day {clip(repr(business_day), 40)} is not the day of the order id ({day})")
    created_at = need_str(record.get("created_at"), "order.created_at")
    created_by = need_str(record.get("created_by"), "order.created_by")
    stages = {"open": {"reason": None, "at": created_at, "by": created_by}, **facts["stages"]}
    status = furthest(stages, ORDER_RANK) if len(stages) > 1 else "open"
    items = [_item_view(item_id, item, kitchen.get(item_id), voids.get(item_id))
             for item_id, item in facts["items"].items()]
    items.sort(key=_added)
    total = sum(i["total_cents"] for i in items)
    if total > MAX_ORDER_TOTAL_CENTS * READ_SLACK:
        raise Flaw(f"the order's total of {total} cents is over {MAX_ORDER_TOTAL_CENTS * READ_SLACK}")
    cancellation = stages.get("cancelled")
    if cancellation is not None and status != "cancelled":
        cancellation = {**cancellation, "overridden_by": status}
    table = need_id(fields["table"] if "table" in fields else record.get("table"), "table", null=True)
    waiter = need_str(fields["waiter"] if "waiter" in fields else record.get("waiter"), "waiter", null=True)
    notes = need_str(fields["notes"] if "notes" in fields else record.get("notes"), "notes", null=True)
    return {
        "id": order_id, "business_day": business_day, "table": table, "waiter": waiter, "notes": notes or "",
        "status": status, "stages": {s: v["at"] for s, v in stages.items()}, "cancellation": cancellation,
        "items": items, "total_cents": total, "created_at": created_at, "created_by": created_by,
    }


#: The payload key of an ``order:created`` event whose view is deferred (``drain_events(defer=True)``):
#: the order map's JSON as it was at the event - stored as a JSON object in place
#: (:func:`core.codec.embed_json`); rows stored by earlier versions hold it as JSON text - both read.
DEFERRED = "order_json"


def resolve_event(event: StoredEvent) -> None:
    """Build a deferred order view in place: the event then reads as every order event does,
    ``{order_id, order}``, with the order as it was at the event.  An order that does not read
    (a peer wrote it malformed) turns the event into ``order:malformed`` at the same cursor, with
    the reason - the cursors stay without gaps and every reader moves past it.  Idempotent: a
    live event shared by several subscribers is built once."""
    payload = event.payload
    if DEFERRED not in payload:
        return
    order_id = payload.get("order_id")
    try:
        if not isinstance(order_id, str):
            raise Flaw(f"the event names no order id ({describe(order_id)})")
        view = _view(order_id, _facts_of(embedded_text(payload[DEFERRED])), _order_day(order_id, None))
    except Exception as exc:  # noqa: BLE001 - whatever a peer wrote, the reader moves on
        reason = clip(str(exc) if isinstance(exc, Flaw) else f"{type(exc).__name__}: {exc}", 200)
        event.type, event.payload = "order:malformed", {
            "order_id": order_id if isinstance(order_id, str) else None, "original_type": event.type,
            "message": f"order {clip(repr(order_id), ID_CHARS)} is malformed: {reason}"}
        return
    event.payload = {"order_id": order_id, "order": view}


def order_stamp(payload: dict[str, Any]) -> tuple[float | None, Any] | None:
    """When an ``order:created`` payload's order was created (seconds since the epoch, ``None``
    when that does not read) and by whom, for the propagation metric, without building a view.

    A deferred event is a new order a peer's update brought (this terminal's own writes store
    their views): its time is the one its id carries (:func:`core.clock.time_of_id`, the
    creator's clock to the millisecond, read as ``created_at`` is), its creator ``None`` - not
    this terminal.  Decoding the order's JSON for its ``created_at`` cost the metric 4 µs per
    order, a fifth of what the rest of the commit costs.  The values are the caller's to bound."""
    try:
        if DEFERRED in payload:
            order_id = payload.get("order_id")
            return (time_of_id(order_id[9:]) if isinstance(order_id, str) else None), None
        order = payload.get("order")
        written = order.get("created_at")
        at = datetime.fromisoformat(written) if isinstance(written, str) else None
        return (at.timestamp() if at is not None and at.tzinfo is not None else None), order.get("created_by")
    except (AttributeError, TypeError, ValueError):
        return None


class OrdersDoc(CheckedModel):
    kind = "orders"
    entity = "order"
    #: What a peer's update may hold (core/yupdate.py): one Y.Map per order directly under the
    #: root map, plain values inside it.
    shape = Shape(frozenset({"orders"}), map_roots=frozenset({"orders"}))
    #: The document's business day once the host names it: an order of another day is then
    #: malformed here - the API finds an order's document by its id's day.
    day: date | None = None
    _day_prefix: str | None = None  # "YYYYMMDD-" of ``day``

    def named(self, name: str) -> None:
        super().named(name)
        self.day = date.fromisoformat(name.removeprefix("orders/"))
        self._day_prefix = self.day.strftime("%Y%m%d-")

    def attach(self) -> None:
        self.orders = self.doc.get("orders", type=pycrdt.Map)
        #: Orders added in this transaction -> their map as the observer handed it over (pycrdt's
        #: native map, see :meth:`_observe`; reused by the events and views: looking each of a
        #: catch-up's 2,500 new orders up again cost a third of it).
        self._created: dict[str, Any] = {}
        self._touched: set[str] = set()
        # pycrdt's observe_deep wraps every event, and every value in it, in its Python classes
        # before the callback sees them: a fifth of a terminal's intake of its peers' new orders
        # (docs/performance.md, "Where the intake goes").  The native observer hands over the
        # native events, of which this reads only the path and the root's keys.
        self._subscription = self.orders.integrated.observe_deep(self._observe)

    def _observe(self, events: list[Any]) -> None:
        """Native events (``pycrdt._pycrdt.MapEvent``): ``path`` a list, ``keys`` a dict whose new
        values are native (a map is a ``pycrdt._pycrdt.Map``, see :func:`_map_json`)."""
        for event in events:
            path = event.path
            if not path:
                for key, change in event.keys.items():
                    if change["action"] == "add":
                        self._created[key] = change.get("newValue")
                    self._touched.add(key)
            else:
                self._touched.add(path[0])

    def drain_events(self, known: dict[str, dict[str, Any]] | None = None, *,
                     defer: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """``defer``: an ``order:created`` whose view no caller knows carries the order map's JSON
        under :data:`DEFERRED` instead of the view, for :func:`resolve_event` to build when the
        event is read - at 20 terminals building and storing the view of every order the peers
        create was half of a terminal's intake (docs/performance.md, "Where the intake goes")."""
        created, touched = self._created, self._touched
        self._created, self._touched = {}, set()
        known = known or {}
        out = []
        for oid in sorted(touched):
            fresh = created.get(oid)
            if not isinstance(fresh, NativeMap):  # not added just now: is it still there?
                fresh = None
                if oid not in self.orders:
                    self._forget(oid)
                    continue
            elif defer and oid not in known and oid not in self.malformed and self._in_this_day(oid):
                out.append(("order:created", {"order_id": oid, DEFERRED: embed_json(self._map_json(fresh))}))
                continue
            else:
                fresh = pycrdt.Map(_integrated=fresh, _doc=self.doc)  # as pycrdt's own events wrap it
            try:
                order = known.get(oid) or self.view(oid, fresh)
            except MalformedEntity:
                continue  # counted and logged by the view; the other orders' events stand
            if oid in created:
                out.append(("order:created", {"order_id": oid, "order": order}))
            elif order["status"] == "cancelled":
                out.append(("order:cancelled", {"order_id": oid, "order": order}))
            else:
                out.append(("order:updated", {"order_id": oid, "order": order}))
        return out

    def _map_json(self, native: Any) -> str:
        """A native map's JSON text: ``str`` of a pycrdt map, without wrapping it first."""
        with self.doc.transaction() as txn:
            return native.to_json(txn._txn)

    # -- reads ---------------------------------------------------------------------------------

    def ids(self) -> list[str]:
        return sorted(self.orders.keys())

    def _get(self, order_id: str) -> Any:
        try:
            return self.orders[order_id]
        except KeyError:
            raise NotFound(f"order {order_id!r} not found") from None

    def _in_this_day(self, order_id: str) -> bool:
        """Whether ``order_id`` names this document's day: the one check of a view that needs the
        document, so a deferred view is built from the event alone.  Hot (every order a peer
        creates): the day's prefix is compared as text, the rest matched with the id's pattern."""
        if self._day_prefix is None:  # not named (a bare model): any real date
            try:
                self._check_id(order_id)
            except Flaw:
                return False
            return True
        return order_id.startswith(self._day_prefix) and ORDER_ID.fullmatch(order_id) is not None

    def _check_id(self, order_id: str) -> str:
        """The business day ``order_id`` names, as ``YYYY-MM-DD`` (this document's, once named)."""
        return _order_day(order_id, self.day)

    @staticmethod
    def _facts(order: Any) -> dict[str, Any]:
        if not isinstance(order, pycrdt.Map):  # a peer wrote something else under an order id
            raise Flaw(f"expected an order map (a Y.Map), got {describe(order)}")
        return _facts_of(str(order))

    def view(self, order_id: str, order: pycrdt.Map | None = None) -> dict[str, Any]:
        """``order``: the order's map when the caller holds it already (else looked up by id).

        Raises :class:`MalformedEntity` when any value it would serve breaks docs/documents.md.
        """
        if order is None:
            order = self._get(order_id)
        return self._read(order_id, lambda: self._build(order_id, order))

    def _build(self, order_id: str, order: Any) -> dict[str, Any]:
        facts = self._facts(order)
        return _view(order_id, facts, self._check_id(order_id))

    def list(self, *, status: str | None = None, table: str | None = None) -> list[dict[str, Any]]:
        """Every order that reads, filtered; a malformed one is counted, logged once and skipped."""
        return [o for o in self._listed(self.ids(), self.view)
                if (status is None or o["status"] == status) and (table is None or o["table"] == table)]

    # -- writes (each runs inside the host's transaction) -----------------------------------------
    # Each reads the order's view first: a malformed order is refused before anything is written.

    def _writable(self) -> None:
        if self.read_only:
            raise PermissionDenied("this business day is archived; its orders are read-only")

    def _item_records(self, taken: set[str], items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Records for validated items; ids are fresh within the order (``taken``)."""
        now = self.now()
        out = []
        for item in items:
            item_id = random_id(8, self.id_source)
            while item_id in taken:
                item_id = random_id(8, self.id_source)
            taken.add(item_id)
            out.append({"id": item_id, **item, "added_at": now, "added_by": self.terminal_id})
        return out

    def create(
        self, *, day: date, table: str | None, waiter: str | None, items: list[dict[str, Any]],
        notes: str = "",
    ) -> str:
        self._writable()
        if table is not None:
            check_id("table", table)
        clean = [validate_item(i) for i in items]
        check_order_bounds(clean)
        order_id = f"{day.strftime('%Y%m%d')}-{time_id(self.clock(), self.id_source)}"
        record = {
            "id": order_id, "business_day": day.isoformat(), "table": table, "waiter": waiter,
            "notes": notes, "created_at": self.now(), "created_by": self.terminal_id,
            "items": self._item_records(set(), clean),
        }
        self.orders[order_id] = pycrdt.Map({"order": dump(record)})
        return order_id

    def _open_for_items(self, order_id: str) -> tuple[pycrdt.Map, dict[str, Any]]:
        """The order's map and view, if its items, table, waiter and notes may still change."""
        self._writable()
        current = self.view(order_id)
        if ORDER_RANK[current["status"]] >= ORDER_RANK["cancelled"]:
            raise InvalidTransition(f"order is {current['status']}; it can no longer change")
        return self.orders[order_id], current

    def add_items(self, order_id: str, items: list[dict[str, Any]]) -> list[str]:
        order, current = self._open_for_items(order_id)
        clean = [validate_item(i) for i in items]
        check_order_bounds(clean, current["total_cents"], len(current["items"]))
        records = self._item_records({i["id"] for i in current["items"]}, clean)
        batch = random_id(8, self.id_source)
        while f"items:{batch}" in order:
            batch = random_id(8, self.id_source)
        order[f"items:{batch}"] = dump(records)
        return [r["id"] for r in records]

    @staticmethod
    def _item(current: dict[str, Any], item_id: str) -> dict[str, Any]:
        for item in current["items"]:
            if item["id"] == item_id:
                return item
        raise NotFound(f"item {item_id!r} not found in order {current['id']!r}")

    def void_item(self, order_id: str, item_id: str, reason: str) -> None:
        order, current = self._open_for_items(order_id)
        if self._item(current, item_id)["voided"]:
            raise InvalidTransition(f"item {item_id!r} is already voided")
        if not reason:
            raise InvalidInput("a void needs a reason")
        order[f"void:{item_id}"] = dump({"reason": reason, "at": self.now(), "by": self.terminal_id})

    def set_kitchen_status(self, order_id: str, item_id: str, stage: str) -> None:
        order, current = self._open_for_items(order_id)
        item = self._item(current, item_id)
        if stage not in KITCHEN_RANK:
            raise InvalidInput(f"unknown kitchen status {stage!r}; one of {', '.join(KITCHEN_STAGES)}")
        if item["voided"]:
            raise InvalidTransition(f"item {item_id!r} is voided")
        if KITCHEN_RANK[stage] <= KITCHEN_RANK[item["kitchen_status"]]:
            raise InvalidTransition(
                f"item is {item['kitchen_status']}; kitchen status moves forward only, not to {stage}")
        order[f"kitchen:{item_id}:{stage}"] = self.now()

    def set_status(self, order_id: str, status: str, *, reason: str | None = None) -> None:
        self._writable()
        check_transition(self.view(order_id)["status"], status)
        entry: dict[str, Any] = {"at": self.now(), "by": self.terminal_id}
        if status == "cancelled":
            if not reason:
                raise InvalidInput("cancelling an order needs a reason")
            entry["reason"] = reason
        self.orders[order_id][f"stage:{status}"] = dump(entry)

    def transfer(self, order_id: str, table: str) -> None:
        self._writable()
        check_id("table", table)
        current = self.view(order_id)
        if ORDER_RANK[current["status"]] >= ORDER_RANK["cancelled"]:
            raise InvalidTransition(f"order is {current['status']}; it cannot move to another table")
        if current["table"] == table:
            raise InvalidTransition(f"order is already on table {table!r}")
        self.orders[order_id]["table"] = table

    def update_fields(self, order_id: str, *, waiter: str | None = None, notes: str | None = None) -> None:
        order, current = self._open_for_items(order_id)
        if waiter is not None and current["waiter"] != waiter:
            order["waiter"] = waiter
        if notes is not None and current["notes"] != notes:
            order["notes"] = notes

