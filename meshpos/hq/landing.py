"""Landing a store's document changes in PostgreSQL exactly once (docs/hq.md, "Exactly once").

The same change reaches the HQ many times: every terminal with a WAN link uploads it, a link
that drops mid-catch-up sends it again, and two HQ processes may serve one store at once.  Nor is
it recognisable by its bytes: Yjs merges updates differently on each terminal.  What identifies
a change is its Yjs items (client id, clock) and deleted ranges, so the record is kept as
**deltas against itself**:

* each process keeps a *mirror* of every document it lands: a pycrdt document holding exactly
  the record's rows up to ``seq``;
* a landing takes the document's advisory lock (one landing per document at a time across
  every HQ process), first applies the rows other processes appended since ``seq``, then applies
  what arrived and captures what the transaction changed - Yrs reports only the items and
  deletions the document did not have - and appends that as row ``seq + 1`` (nothing at all
  when it is all known);
* the projections of the entities the rows touched, and the document's head, are written in the
  same transaction.

So every item and every deletion is in exactly one row, whoever brought it and however often;
a failed transaction leaves the mirror unlike the record, and it is dropped and rebuilt.  The
incoming updates were checked (shape, completeness) before they got here, so Yrs never keeps
anything pending that a later row would have to release.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pycrdt

from core.clock import system_clock
from core.errors import StoreError
from core.names import FIXED_DOCS, orders_day
from meshpos.documents import InventoryDoc, OrdersDoc, TablesDoc
from meshpos.documents.host import Model
from storage import hq_rows
from storage.hq_database import UNAVAILABLE

log = logging.getLogger(__name__)

#: The mirrors' model identity: they never write, so no replica key of theirs is ever used.
HQ_REPLICA = "hq"


class RecordBehind(StoreError):
    """PostgreSQL holds less than this process landed (restored from a backup, or a replica that
    lags): the in-memory copies are dropped and rebuilt from the record, and the terminals,
    told the older state, upload the rest again."""


def model_class(name: str) -> type[Model]:
    """The typed model of a document name (a checked name: ``tables``, ``inventory``, ``orders/<day>``)."""
    if name == "tables":
        return TablesDoc
    if name == "inventory":
        return InventoryDoc
    if orders_day(name) is not None:
        return OrdersDoc
    raise ValueError(f"{name!r} is not a document (one of {', '.join(FIXED_DOCS)}, orders/YYYY-MM-DD)")


def open_model(name: str, doc: pycrdt.Doc) -> Model:
    model = model_class(name)(doc, terminal_id=HQ_REPLICA, replica_id=HQ_REPLICA, clock=system_clock)
    model.named(name)
    model.read_only = True
    return model


class DeltaDoc:
    """A pycrdt document that says what each application added to it: Yrs reports a
    transaction's new items and deletions only, nothing when all of it was known - the
    exactly-once of the record (module doc), and what the live copy queues for landing."""

    def __init__(self) -> None:
        self.doc = pycrdt.Doc()
        self._changes: list[bytes] = []
        self.doc.observe(lambda event: self._changes.append(bytes(event.update)))

    def apply(self, updates: list[bytes], origin: str = "land") -> bytes | None:
        """Apply ``updates`` in one transaction; what they added (``None``: nothing)."""
        self._changes.clear()
        with self.doc.transaction(origin=origin):
            for update in updates:
                self.doc.apply_update(update)
        changes, self._changes = self._changes, []
        if not changes:
            return None
        return changes[0] if len(changes) == 1 else pycrdt.merge_updates(*changes)


@dataclass
class Mirror:
    """One document as the record holds it up to :attr:`seq` (see the module doc)."""

    name: str
    seq: int = 0
    delta: DeltaDoc = field(default_factory=DeltaDoc)
    model: Model = field(init=False)

    def __post_init__(self) -> None:
        self.model = open_model(self.name, self.doc)

    @property
    def doc(self) -> pycrdt.Doc:
        return self.delta.doc

    def apply(self, updates: list[bytes]) -> bytes | None:
        return self.delta.apply(updates)

    def projected(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The views of the orders and skus touched since the last call."""
        with self.doc.transaction():
            events = self.model.drain_events()
        orders = [p["order"] for kind, p in events if kind.startswith("order:")]
        skus = [p["item"] for kind, p in events if kind == "inventory:updated"]
        return orders, skus


@dataclass(frozen=True, slots=True)
class Landed:
    """What one landing did: ``others``, the rows other processes had appended (the live
    document needs them too); ``seq`` of the row it appended (``None``: nothing was new)."""

    others: list[bytes]
    seq: int | None
    unprojected: int = 0  # entities whose projection PostgreSQL refused (:func:`project`)


def land(conn: Any, store_id: str, mirror: Mirror, updates: list[bytes], *, received_from: str,
         process: str) -> Landed:
    """One landing, in its own transaction on ``conn`` (a worker thread's: it blocks).  Raises
    whatever PostgreSQL or pycrdt raise; the mirror is then unlike the record and must be dropped."""
    with conn.transaction():
        hq_rows.lock_doc(conn, store_id, mirror.name)
        if hq_rows.record_end(conn, store_id, mirror.name) < mirror.seq:
            raise RecordBehind(f"the record of {mirror.name} ends before this process's copy of it "
                               "(a restored database?): both copies are rebuilt from the record")
        rows = hq_rows.updates_after(conn, store_id, mirror.name, mirror.seq)
        if rows:
            mirror.apply([body for _, body in rows])
            mirror.seq = rows[-1][0]
        delta = mirror.apply(updates) if updates else None
        seq = None
        if delta is not None:
            seq = mirror.seq + 1
            hq_rows.append_update(conn, store_id, mirror.name, seq, delta, received_from, process,
                                  mirror.doc.get_state())
            mirror.seq = seq
        orders, skus = mirror.projected()
        unprojected = project(conn, store_id, lambda: (hq_rows.upsert_orders(conn, store_id, orders),
                                                       hq_rows.upsert_stock(conn, store_id, skus)),
                              len(orders) + len(skus))
    return Landed([body for _, body in rows], seq, unprojected)


def project(conn: Any, store_id: str, write: Callable[[], object], count: int) -> int:
    """Run the projection ``write`` in a savepoint: should PostgreSQL refuse a value anyway, the
    projection of those ``count`` entities is lost (logged; returned) and the record still lands -
    refusing the landing would have every terminal upload the same thing again, for ever."""
    try:
        with conn.transaction():
            write()
    except psycopg.Error as exc:
        if isinstance(exc, UNAVAILABLE):
            raise
        log.error("store %s: %d entities left out of the projections (%s: %s)", store_id, count,
                  type(exc).__name__, str(exc)[:200])
        return count
    return 0


def load(conn: Any, store_id: str, name: str, into: Callable[[list[bytes]], None] | None = None) -> Mirror:
    """A mirror of ``name`` built from the whole record (``into``: also handed the rows, for the
    live document)."""
    mirror = Mirror(name)
    rows = hq_rows.updates_after(conn, store_id, name, 0)
    if rows:
        bodies = [body for _, body in rows]
        mirror.apply(bodies)
        mirror.seq = rows[-1][0]
        mirror.projected()  # nothing to project: the record's projections were written as it landed
        if into is not None:
            into(bodies)
    return mirror
