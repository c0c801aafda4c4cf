"""What a browser UI may write through the Yjs route, checked before it touches the live document.

A Yjs client edits its own copy and sends the update; a terminal cannot undo an update once Yrs
has integrated it.  So :func:`check_ui_update` applies it to a **scratch copy** of the document
first, notes every key it added, changed or deleted, re-reads each touched entity through the
typed model (the same reads that serve the API) and checks the domain rules the API's own
writes follow.  Only an update that passes is applied to the live document, through the durable
path every write takes.  A refused one raises the :class:`MeshposError` the API would answer the
same change with, and nothing of it stays anywhere.

The rules (docs/documents.md, "What a UI may write", is the reference for JS authors):

* nothing is deleted, and no record that is written once (an order's ``order``, ``items:*``,
  ``stage:*``, ``kitchen:*``, ``void:*``) is rewritten - only the registers (an order's
  ``table``, ``waiter``, ``notes``; the tables' and inventory's per-entity registers) change,
  and the low-stock threshold may be cleared;
* an order's status only moves forward (:func:`check_transition`), a cancellation has a reason,
  and nothing is added to or changed on a cancelled, paid or closed order but its status;
* a kitchen status only moves forward, on an item of the order that is not voided; a void names
  an item that is not voided yet and has a reason; a new order or new items stay within the
  order bounds;
* a table register belongs to a table that exists; guests fit the table; a merge follows the
  API's merge rules;
* a stock counter is written only under this terminal's own key (``<sku>/<replica id>``), for a
  sku in the catalog, within the stock bounds;
* every entity touched still reads (docs/documents.md's value shapes).

Cost: the scratch copy is the whole document - 0.9 ms per update for a day of 300 orders (225
KB), 6.5 ms for 3,000 (2.2 MB) - fine at the rate people touch screens, and why peers do not go
through here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pycrdt

from core.errors import InvalidInput, InvalidTransition, MalformedEntity, PermissionDenied
from core.yupdate import UpdateGap, UpdateRefused, check_update, decode_state_vector, is_panic
from meshpos.documents.host import Model, Operation
from meshpos.documents.inventory import MAX_STOCK, InventoryDoc
from meshpos.documents.orders import (
    KITCHEN_RANK,
    KITCHEN_STAGES,
    MAX_ORDER_ITEMS,
    MAX_ORDER_TOTAL_CENTS,
    ORDER_RANK,
    OrdersDoc,
    check_transition,
)
from meshpos.documents.tables import TablesDoc

#: The audit operation of a UI write (its user is ``ui:<client>``, its update's origin the same).
UI_OPERATION = "ui_write"
#: Order keys a UI may set again (registers); every other key of an order is written once.
_ORDER_REGISTERS = frozenset({"table", "waiter", "notes"})

#: The audit rows' entity per document kind (as the API's writes name them).
_AUDIT_ENTITY = {"orders": "order", "tables": "table", "inventory": "inventory"}

#: entity id -> {(root, key inside the entity or None for the root entry): action}
Changes = dict[str, dict[tuple[str, str | None], str]]


class _ChangeLog:
    """Every key the update added, changed or deleted, per entity (what pycrdt's observers report:
    the net change of the transaction)."""

    def __init__(self, doc: pycrdt.Doc, model: Model) -> None:
        self.changes: Changes = {}
        #: The roots and subscriptions, held: pycrdt drops an observer with its root object.
        self._held: list[Any] = []
        for root in sorted(model.shape.roots):
            shared = doc.get(root, type=pycrdt.Map)
            deep = root in model.shape.map_roots
            subscription = shared.observe_deep(self._deep(root)) if deep else shared.observe(self._flat(root))
            self._held += [shared, subscription]

    def _note(self, entity: str, root: str, key: str | None, action: str) -> None:
        self.changes.setdefault(entity, {})[(root, key)] = action

    def _flat(self, root: str) -> Callable[[Any], None]:
        def note(event: Any) -> None:
            for key, change in event.keys.items():
                self._note(key, root, None, change["action"])
        return note

    def _deep(self, root: str) -> Callable[[Any], None]:
        def note(events: list[Any]) -> None:
            for event in events:
                path = list(event.path)
                for key, change in event.keys.items():
                    if path:
                        self._note(str(path[0]), root, key, change["action"])
                    else:
                        self._note(key, root, None, change["action"])
        return note


def check_ui_update(live: Model, update: bytes, user: str) -> list[Operation]:
    """The audit operations of ``update`` if a UI may make it (none: it changes no entity - it
    may still carry items the client's later updates build on, so it is applied all the same);
    raises the ``MeshposError`` that says why not.  Reads ``live``, changes nothing.  ``user``:
    who the audit rows name (``ui:<client>``)."""
    try:
        check_update(update, live.shape, decode_state_vector(live.doc.get_state()))
    except UpdateGap as exc:
        raise InvalidInput(f"the update builds on changes this terminal does not hold ({exc}); "
                           "start from a fresh document") from None
    except UpdateRefused as exc:
        raise InvalidInput(f"the update is not one this document may hold: {exc}") from None
    scratch_doc = pycrdt.Doc()
    scratch_doc.apply_update(live.doc.get_update())
    scratch = type(live)(scratch_doc, terminal_id=live.terminal_id, replica_id=live.replica_id,
                         clock=live.clock, id_source=live.id_source)
    scratch.named(live.name)
    scratch.quiet = True  # type: ignore[attr-defined]
    log = _ChangeLog(scratch_doc, scratch)
    try:
        with scratch_doc.transaction(origin="ui-check"):
            scratch_doc.apply_update(update)
    except BaseException as exc:
        if not (is_panic(exc) or isinstance(exc, Exception)):
            raise
        raise InvalidInput(f"the update does not apply ({type(exc).__name__}: {str(exc)[:100]})") from None
    if not log.changes and decode_state_vector(scratch_doc.get_state()) == decode_state_vector(live.doc.get_state()):
        return []  # nothing new (state vectors compared decoded: equal ones may encode in any order)
    if live.read_only:
        raise PermissionDenied(f"{live.name} is an archived business day; it is read-only")
    changes = _group_counters(log.changes, live.replica_id) if live.kind == "inventory" else log.changes
    rules = _RULES[live.kind]
    ops = []
    for entity_id in sorted(changes):
        before, after = rules(live, scratch, entity_id, changes[entity_id])
        ops.append(Operation(_AUDIT_ENTITY[live.kind], entity_id, UI_OPERATION, user, before=before, after=after))
    return ops


def _after(scratch: Any, entity_id: str, what: str) -> dict[str, Any]:
    """The touched entity as the update leaves it; one that no longer reads is refused."""
    try:
        return scratch.view(entity_id)  # type: ignore[no-any-return]
    except MalformedEntity as exc:
        reason = scratch.malformed.get(entity_id, {}).get("reason", exc.message)
        raise InvalidInput(f"the update leaves {what} unreadable: {reason}") from None


def _no_deletes(entity: str, changes: dict[tuple[str, str | None], str], allowed: frozenset[str] = frozenset()) -> None:
    for (root, key), action in changes.items():
        if action == "delete" and root not in allowed:
            where = root if key is None else f"{key!r} of {root}"
            raise PermissionDenied(f"{entity}: a UI may not delete {where}")


# -- orders ----------------------------------------------------------------------------------------


def _order(live: Any, scratch: Any, oid: str, changes: dict[tuple[str, str | None], str]) -> tuple[Any, Any]:
    assert isinstance(live, OrdersDoc) and isinstance(scratch, OrdersDoc)
    what = f"order {oid!r}"
    top = changes.get(("orders", None))
    if top == "delete":
        raise PermissionDenied(f"{what}: a UI may not delete an order")
    if top == "update":
        raise PermissionDenied(f"{what}: a UI may not replace an order's map (it exists; change its keys)")
    before = None if top == "add" else live.view(oid)  # a malformed order refuses changes (4010)
    after = _after(scratch, oid, what)
    if top == "add":
        keys = {key: "add" for key in scratch.orders[oid].keys()}
        if "order" not in keys:
            raise InvalidInput(f"{what}: a new order needs its 'order' record")
    else:
        _no_deletes(what, changes)
        keys = {key: action for (_, key), action in changes.items() if key is not None}
    status = before["status"] if before else "open"
    closed = ORDER_RANK[status] >= ORDER_RANK["cancelled"]
    items_before = {i["id"]: i for i in before["items"]} if before else {}
    items_after = {i["id"]: i for i in after["items"]}
    # The update's new stages, lowest rank first, each from the one before: cancelling and paying
    # in one update is the API's cancel then pay, which it refuses.
    reached = status
    for stage in sorted((k.partition(":")[2] for k in keys if k.startswith("stage:")),
                        key=lambda s: ORDER_RANK.get(s, -1)):
        check_transition(reached, stage)
        reached = stage
    for key, action in sorted(keys.items()):
        kind, _, rest = key.partition(":")
        if key in _ORDER_REGISTERS:
            if closed:
                raise InvalidTransition(f"{what} is {status}; its {key} can no longer change")
            continue
        if action != "add":
            raise PermissionDenied(f"{what}: {key!r} is written once; a UI may not change it")
        if kind == "order" and not rest:
            if before is not None:
                raise PermissionDenied(f"{what}: the 'order' record is written once, when the order is created")
        elif kind == "items" and rest:
            if closed:
                raise InvalidTransition(f"{what} is {status}; nothing can be added to it")
        elif kind == "stage" and rest:  # its transition: checked above
            if rest == "cancelled" and not (after["cancellation"] or {}).get("reason"):
                raise InvalidInput(f"{what}: cancelling an order needs a reason")
        elif kind == "kitchen" and ":" in rest:
            item_id, _, stage = rest.rpartition(":")
            _kitchen(what, status, items_before.get(item_id), items_after.get(item_id), item_id, stage)
        elif kind == "void" and rest:
            if closed:
                raise InvalidTransition(f"{what} is {status}; its items can no longer change")
            if rest not in items_after:
                raise InvalidInput(f"{what}: void of item {rest!r}, which the order does not hold")
            if items_before.get(rest, {}).get("voided"):
                raise InvalidTransition(f"{what}: item {rest!r} is already voided")
            if not (items_after[rest]["void"] or {}).get("reason"):
                raise InvalidInput(f"{what}: a void needs a reason")
        else:
            raise InvalidInput(f"{what}: {key!r} is not a key of an order (docs/documents.md)")
    if len(items_after) > len(items_before):
        if len(items_after) > MAX_ORDER_ITEMS:
            raise InvalidTransition(f"{what}: an order holds at most {MAX_ORDER_ITEMS} items, not {len(items_after)}")
        if after["total_cents"] > MAX_ORDER_TOTAL_CENTS:
            raise InvalidTransition(f"{what}: an order's total may not exceed {MAX_ORDER_TOTAL_CENTS} cents")
    return before, after


def _kitchen(what: str, status: str, item: dict[str, Any] | None, after: dict[str, Any] | None, item_id: str,
             stage: str) -> None:
    """The rules of ``OrdersDoc.set_kitchen_status`` for a kitchen key a UI added (``item``: the
    item before the update, ``after``: as it leaves it - voided in the same update is voided)."""
    if stage not in KITCHEN_RANK:
        raise InvalidInput(f"{what}: unknown kitchen status {stage!r}; one of {', '.join(KITCHEN_STAGES)}")
    if ORDER_RANK[status] >= ORDER_RANK["cancelled"]:
        raise InvalidTransition(f"{what} is {status}; its items can no longer change")
    if after is None:
        raise InvalidInput(f"{what}: kitchen status of item {item_id!r}, which the order does not hold")
    if after["voided"]:
        raise InvalidTransition(f"{what}: item {item_id!r} is voided")
    current = item["kitchen_status"] if item is not None else "queued"
    if KITCHEN_RANK[stage] <= KITCHEN_RANK[current]:
        raise InvalidTransition(f"{what}: item {item_id!r} is {current}; kitchen status moves forward only, "
                                f"not to {stage}")


# -- tables ----------------------------------------------------------------------------------------


def _table(live: Any, scratch: Any, tid: str, changes: dict[tuple[str, str | None], str]) -> tuple[Any, Any]:
    assert isinstance(live, TablesDoc) and isinstance(scratch, TablesDoc)
    what = f"table {tid!r}"
    _no_deletes(what, changes)
    if not scratch.exists(tid):
        raise InvalidInput(f"{what}: a register of a table that does not exist (write tables[id] first)")
    before = live.view(tid) if live.exists(tid) else None
    after = _after(scratch, tid, what)
    if after["guests"] > max(after["seats"] * 4, 100):
        raise InvalidTransition(f"{what}: guests must be 0..{max(after['seats'] * 4, 100)} at this table")
    into = after["merged_into"]
    if ("table_merge", None) in changes and into is not None and (before is None or before["merged_into"] != into):
        if into == tid:
            raise InvalidTransition("a table cannot be merged into itself")
        if not scratch.exists(into):
            raise InvalidInput(f"{what}: merged into table {into!r}, which does not exist")
        target = _after(scratch, into, f"table {into!r}")
        if target["merged_into"] is not None:
            raise InvalidTransition(f"table {into!r} is itself merged into {target['merged_into']!r}")
        if len(scratch.group(tid)) > 1:
            raise InvalidTransition(f"other tables are merged into {tid!r}; unmerge them first")
    return before, after


# -- inventory -------------------------------------------------------------------------------------


def _inventory(live: Any, scratch: Any, sku: str, changes: dict[tuple[str, str | None], str]) -> tuple[Any, Any]:
    assert isinstance(live, InventoryDoc) and isinstance(scratch, InventoryDoc)
    what = f"sku {sku!r}"
    _no_deletes(what, changes, allowed=frozenset({"stock_low"}))
    if sku not in scratch.catalog:
        raise InvalidInput(f"{what}: stock values of a sku that is not in the catalog (write catalog[sku] first)")
    before = live.view(sku) if sku in live.catalog else None
    after = _after(scratch, sku, what)
    if abs(after["quantity"]) > MAX_STOCK:
        raise InvalidTransition(f"{what}: stock would leave -{MAX_STOCK}..{MAX_STOCK}")
    return before, after


def _group_counters(changes: Changes, replica_id: str) -> Changes:
    """Inventory changes keyed by sku: a ``stock_counts`` key is ``<sku>/<replica id>``, and a UI
    writes only this terminal's own."""
    out: Changes = {}
    for entity, keys in changes.items():
        for (root, key), action in keys.items():
            sku = entity
            if root == "stock_counts":
                sku, _, replica = entity.partition("/")
                if replica != replica_id:
                    raise PermissionDenied(f"stock counter {entity!r}: a UI writes only this terminal's own counter "
                                           f"'<sku>/{replica_id}'")
            out.setdefault(sku, {})[(root, key)] = action
    return out


_RULES: dict[str, Callable[[Any, Any, str, dict[tuple[str, str | None], str]], tuple[Any, Any]]] = {
    "orders": _order, "tables": _table, "inventory": _inventory,
}

