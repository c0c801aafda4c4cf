"""``meshpos recover``: start a data directory over from what is readable, never silently.

A terminal refuses to start on a database that lost acknowledged commits (storage/commits.py),
on a missing one where it had history, and on a backup copy.  Recovery is the operator's
explicit step out of that state:

1. the old database (with its ``-wal``, ``-shm`` and commit marker) is moved into
   ``damaged-<UTC time>/`` inside the data directory - never deleted;
2. a fresh database is created, with a new replica id (the Yjs client ids and stock counters of
   the old one may be ahead of it on the other terminals: writing under them again would clash);
3. whatever the old database (or ``--from BACKUP``) still holds and passes the same checks as a
   peer's input is copied in: each document's history (every update checked against its shape,
   core/yupdate.py), the committed cashier ledgers (each entry checked, dense from position 0),
   this terminal's provisional cashier entries and the audit trail;
4. the cashier is marked as **recovering**: the voter's promises and the holder's ballot rounds
   are not copied - they may be older than what this terminal promised since - so it neither
   votes nor holds a drawer until the other voters have reported (meshpos/cashier/recovery.py,
   ``Recovery``; docs/cashier.md).  The terminal's peers send back everything else it lacks.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pycrdt

from core.clock import iso, random_id
from core.codec import decode_json
from core.names import orders_day
from core.yupdate import Shape, UpdateRefused, check_update, is_panic
from meshpos.cashier import ledger
from meshpos.documents import InventoryDoc, OrdersDoc, TablesDoc
from meshpos.documents import inventory as inventory_doc
from meshpos.documents import tables as tables_doc
from storage.commits import marker_path
from storage.database import lock_data_dir
from storage.store import Store

DB_NAME = "meshpos.db"


@dataclass
class Recovered:
    """What ``meshpos recover`` did, for the operator."""

    moved_to: Path | None = None
    source: Path | None = None
    source_error: str | None = None
    documents: dict[str, int] = field(default_factory=dict)  # name -> updates kept
    refused_updates: dict[str, int] = field(default_factory=dict)
    ledger_entries: dict[str, int] = field(default_factory=dict)  # drawer -> committed entries kept
    provisional: int = 0
    audit_rows: int = 0

    def lines(self) -> list[str]:
        out = []
        if self.moved_to is not None:
            out.append(f"moved the old database aside to {self.moved_to}")
        if self.source is None:
            out.append("nothing to copy from: the terminal starts empty and takes everything from its peers")
        elif self.source_error is not None:
            out.append(f"could not read {self.source}: {self.source_error}; nothing copied from it")
        else:
            out.append(f"copied from {self.source}: {len(self.documents)} document(s) "
                       f"({sum(self.documents.values())} updates), {sum(self.ledger_entries.values())} committed "
                       f"ledger entries in {len(self.ledger_entries)} drawer(s), {self.provisional} provisional "
                       f"entries, {self.audit_rows} audit rows")
            for name, n in sorted(self.refused_updates.items()):
                out.append(f"  {name}: {n} update(s) did not pass the checks and were left out")
        out.append("the cashier rebuilds what it promised from the other POS voters before it votes or takes a "
                   "drawer (docs/cashier.md); start the terminal as usual")
        return out


def identity_of(path: Path) -> tuple[str, str] | None:
    """(terminal id, type) a database was bound to, if it can be read."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('terminal_id', 'terminal_type')"))
        finally:
            conn.close()
        return meta["terminal_id"], meta["terminal_type"]
    except (sqlite3.Error, KeyError):
        return None


def shape_of(name: str) -> Shape | None:
    if name == tables_doc.DOC_NAME:
        return TablesDoc.shape
    if name == inventory_doc.DOC_NAME:
        return InventoryDoc.shape
    if orders_day(name) is not None:
        return OrdersDoc.shape
    return None


async def recover(data_dir: Path, *, terminal_id: str, terminal_type: str, source: Path | None = None,
                  now: dt.datetime | None = None) -> Recovered:
    """Steps 1-4 of the module doc.  ``source``: a backup to start from instead of the old file."""
    now = now or dt.datetime.now(dt.UTC)
    result = Recovered()
    lock = lock_data_dir(data_dir)
    try:
        db = data_dir / DB_NAME
        old = [p for p in (db, db.with_name(DB_NAME + "-wal"), db.with_name(DB_NAME + "-shm"), marker_path(db))
               if p.exists()]
        if old:
            result.moved_to = data_dir / f"damaged-{now.strftime('%Y%m%dT%H%M%SZ')}"
            result.moved_to.mkdir(mode=0o700)
            for path in old:
                shutil.move(str(path), result.moved_to / path.name)
        if source is None and result.moved_to is not None and (result.moved_to / DB_NAME).exists():
            source = result.moved_to / DB_NAME
        result.source = source
        rows: _Rows | None = None
        if source is not None:
            try:
                rows = await anyio.to_thread.run_sync(_read_source, source)
            except (sqlite3.Error, OSError, ValueError) as exc:
                result.source_error = str(exc)
        store = await Store.open(db)
        try:
            at = iso(now)
            await store.identity(terminal_id, terminal_type, random_id(12), at)
            if rows is not None:
                _copy(store, rows, result, at)
            store.enqueue_rows(origin="recover", at=at, sql=[
                ("INSERT OR REPLACE INTO meta (key, value) VALUES ('cashier_recovery', ?)", (at,)),
                ("INSERT OR REPLACE INTO meta (key, value) VALUES ('recovered_from', ?)", (str(source or ""),)),
            ], events=[("terminal:recovered", {"source": str(source) if source else None,
                                               "documents": sorted(result.documents)})])
            await store.flush()
        finally:
            await store.close()
    finally:
        lock.close()
    return result


@dataclass
class _Rows:
    docs: dict[str, list[bytes]] = field(default_factory=dict)  # snapshot first, then updates
    ledger: list[tuple[str, int, str, str]] = field(default_factory=list)
    provisional: list[tuple[Any, ...]] = field(default_factory=list)
    audit: list[tuple[Any, ...]] = field(default_factory=list)


def _read_source(path: Path) -> _Rows:
    """Every row worth keeping, read from a read-only connection (blocking)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id != 0x4D534850:
            raise ValueError(f"{path} is not a meshpos database")
        rows = _Rows()
        for doc, data in conn.execute("SELECT doc, data FROM snapshots"):
            rows.docs.setdefault(doc, []).insert(0, bytes(data))
        for doc, data in conn.execute("SELECT doc, data FROM updates ORDER BY id"):
            rows.docs.setdefault(doc, []).append(bytes(data))
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "cashier_ledger" in tables:
            rows.ledger = list(conn.execute(
                "SELECT drawer, position, entry, learned_at FROM cashier_ledger ORDER BY drawer, position"))
            rows.provisional = list(conn.execute(
                "SELECT drawer, op_id, seq, entry, state, position, created_at, updated_at FROM cashier_provisional"))
        rows.audit = list(conn.execute(
            "SELECT op_id, entity, entity_id, operation, terminal_id, user_id, at, before, after FROM audit "
            "ORDER BY seq"))
        return rows
    finally:
        conn.close()


def _copy(store: Store, rows: _Rows, result: Recovered, at: str) -> None:
    for name, updates in sorted(rows.docs.items()):
        shape = shape_of(name)
        if shape is None:
            result.refused_updates[name] = len(updates)
            continue
        doc, kept, state = pycrdt.Doc(), [], {}
        for update in updates:
            try:
                after = check_update(update, shape, state)  # nothing Yrs would keep pending
                doc.apply_update(update)
            except BaseException as exc:
                if not (isinstance(exc, Exception) or is_panic(exc)):
                    raise
                result.refused_updates[name] = result.refused_updates.get(name, 0) + 1
                if not isinstance(exc, UpdateRefused):  # pycrdt failed: rebuild from what passed
                    doc = pycrdt.Doc()
                    for good in kept:
                        doc.apply_update(good)
                continue
            kept.append(update)
            state = after
        if kept:
            store.enqueue(doc=name, update=doc.get_update(), origin="recover", at=at)
            result.documents[name] = len(kept)
    sql: list[tuple[str, tuple[Any, ...]]] = []
    for drawer, position, text, learned_at in rows.ledger:
        if position != result.ledger_entries.get(drawer, 0):
            continue  # a gap: what lies beyond it comes back from the other terminals
        try:
            ledger.check_entry(decode_json(text))
        except ValueError:
            continue
        result.ledger_entries[drawer] = position + 1
        sql.append(("INSERT INTO cashier_ledger (drawer, position, entry, learned_at) VALUES (?,?,?,?)",
                    (drawer, position, text, learned_at)))
    for row in rows.provisional:
        try:
            ledger.check_entry(decode_json(row[3]))
        except ValueError:
            continue
        sql.append(("INSERT INTO cashier_provisional (drawer, op_id, seq, entry, state, position, created_at, "
                    "updated_at) VALUES (?,?,?,?,?,?,?,?)", tuple(row)))
        result.provisional += 1
    for row in rows.audit:
        sql.append(("INSERT OR IGNORE INTO audit (op_id, entity, entity_id, operation, terminal_id, user_id, at, "
                    "before, after) VALUES (?,?,?,?,?,?,?,?,?)", tuple(row)))
        result.audit_rows += 1
    if sql:
        store.enqueue_rows(origin="recover", at=at, sql=sql)
