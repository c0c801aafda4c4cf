"""The terminal's write-ahead store: group-committed, acknowledged only once on disk.

Callers enqueue records synchronously (right where the CRDT change happens, so nothing can slip
between the in-memory change and its place in the queue) and then await the record's ticket.
One writer task drains the queue in batches: every record queued while the previous COMMIT was
fsyncing goes into the next transaction, so many concurrent writers share one fsync (group
commit) while a lone writer still gets its own.

Compaction rides the same queue.  A snapshot request captures the document's full state at the
moment it is enqueued; because every update applied in memory before that moment is already
ahead of it in the queue, the snapshot covers exactly the updates with ids up to the last one
written before it, and those rows are deleted in the same transaction.  Writes never wait for a
separate compaction pass, and a crash at any point leaves either the rows or the snapshot.

SQLite runs in AnyIO worker threads (one for the writer, one for readers), so the store works
on asyncio and trio alike (aiosqlite is asyncio-only); a whole batch is one thread hop, and
thread calls are never abandoned on cancellation, so a COMMIT in flight always finishes.

Why one module of ~580 lines: the writer, the reader and the queue share one state - the two
connections, the next event cursor, the commit sequence and its marker, the failure that refuses
every later record - and each read (events, audit rows, documents, sizes) is a few lines over the
reader thread.  What is not that state lives beside it: opening and checking the file in
``storage/database.py``, the commit marker in ``storage/commits.py``.
"""

from __future__ import annotations

import base64
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from core.codec import decode_json, encode_json
from core.errors import StoreError
from core.histogram import Histogram
from storage.commits import CommitMarker, marker_path, read_marker
from storage.database import (
    RECOVER_HINT,
    DatabaseError,
    DatabaseMissing,
    DatabaseRolledBack,
    backup_database,
    open_database,
    rollback,
)

log = logging.getLogger(__name__)
#: Key prefix, in the ``meta`` table, of archived documents' state vectors.
_SV = "state_vector:"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    op_id: str
    entity: str
    entity_id: str
    operation: str
    terminal_id: str
    user_id: str | None
    at: str
    before: Any
    after: Any


@dataclass(slots=True)
class StoredEvent:
    """A domain event as persisted: ``cursor`` orders all events of this terminal.

    Not frozen: a reader may complete an event in place before handing it on (the terminal's
    event bus builds the order views its intake deferred), once for every subscriber that
    shares the live event."""

    cursor: int
    type: str
    at: str
    payload: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "type": self.type, "at": self.at, **self.payload}


@dataclass(slots=True)
class Ticket:
    """Completion of one enqueued record; ``wait`` returns once it is durable (or raises)."""

    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None
    events: list[StoredEvent] = field(default_factory=list)

    async def wait(self) -> list[StoredEvent]:
        await self.done.wait()
        if self.error is not None:
            raise StoreError("the write could not be made durable") from self.error
        return self.events


class IdentityMismatch(Exception):
    """The database belongs to another terminal."""


@dataclass(slots=True)
class _Record:
    doc: str | None
    update: bytes | None
    origin: str
    at: str
    events: list[tuple[str, dict[str, Any]]]
    audits: list[AuditRecord]
    ticket: Ticket
    snapshot: bytes | None = None
    sql: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)


class Store:
    """Owns the SQLite connections of one terminal.  Start :meth:`run` in the terminal's task group."""

    def __init__(self, conn: sqlite3.Connection, reader: sqlite3.Connection, path: Path, *,
                 threads: bool = True) -> None:
        # Two connections: the writer's transactions are never seen half-done by readers (WAL
        # readers see only committed data), so an event is never replayed before it is durable.
        self._conn = conn
        self._reader = reader
        self._write_limiter = anyio.CapacityLimiter(1)
        self._read_limiter = anyio.CapacityLimiter(1)
        #: ``False``: SQLite runs inline on the event loop (blocking it).  Only for a simulation on
        #: virtual time, where worker threads would make the order of events depend on the OS.
        self.threads = threads
        self.path = path
        self._queue: list[_Record] = []
        self._wakeup = anyio.Event()
        self._closed = False
        self._next_cursor = 1
        self._last_update_id = 0
        self._on_commit: list[Callable[[list[StoredEvent]], None]] = []
        self.pending_per_doc: dict[str, int] = {}
        #: Documents whose in-memory state holds changes a failed COMMIT refused; they take no
        #: new records until their owner reloads them from disk (see :meth:`DocumentHost.reload`).
        self.stale_docs: set[str] = set()
        self.stats = {"batches": 0, "records": 0, "snapshots": 0}
        #: Seconds each successful batch commit took in SQLite (the fsync included), real time.
        self.commit_seconds = Histogram()
        #: Rows per table, counted once at open and kept by every commit and prune (status reads
        #: them on each poll; COUNT(*) scans a busy day's 50,000 events in milliseconds).
        self.rows = {"updates": 0, "snapshots": 0, "events": 0, "audit": 0}
        #: Batches committed over the database's life (``meta.commit_seq``), and the marker file
        #: that keeps the same number beside it (see storage/commits.py).
        self.commit_seq = 0
        self._marker: CommitMarker | None = None
        self._damaged_events: set[int] = set()  # cursors already logged as damaged

    @classmethod
    async def open(cls, path: Path, *, threads: bool = True) -> Store:
        """Open the database at ``path``, checked against its commit marker (storage/commits.py).

        Raises :class:`DatabaseMissing` / :class:`DatabaseRolledBack` (both
        :class:`DatabaseError`) when the file lost acknowledged commits, and refuses a file that
        ``meshpos backup`` wrote (a backup is restored with ``meshpos recover --from``).
        """
        opened = await anyio.to_thread.run_sync(_open_checked, path) if threads else _open_checked(path)
        conn, marker, seq = opened
        reader = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        # The reader streams each day's update rows once at start (iter_doc) and then answers
        # small queries: a 256 KiB page cache instead of 2 MiB keeps ~2 MB of pages read once
        # out of the terminal's RSS (docs/performance.md); the OS page cache serves re-reads.
        reader.execute("PRAGMA cache_size=-256")
        store = cls(conn, reader, path, threads=threads)
        store._marker, store.commit_seq = marker, seq

        def scan() -> None:
            store._next_cursor = conn.execute("SELECT COALESCE(MAX(cursor), 0) FROM events").fetchone()[0] + 1
            last = conn.execute("SELECT COALESCE(MAX(id), 0) FROM updates").fetchone()[0]
            upto = conn.execute("SELECT COALESCE(MAX(upto), 0) FROM snapshots").fetchone()[0]
            store._last_update_id = max(last, upto)
            store.pending_per_doc = dict(conn.execute("SELECT doc, COUNT(*) FROM updates GROUP BY doc"))
            for table in store.rows:
                store.rows[table] = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

        await store._write(scan)
        return store

    async def _run(self, limiter: anyio.CapacityLimiter, fn: Callable[..., Any], *args: Any) -> Any:
        if not self.threads:
            await anyio.lowlevel.checkpoint()  # still a scheduling point, as a thread hop would be
            return fn(*args)
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    async def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._run(self._write_limiter, fn, *args)

    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        def query() -> list[tuple[Any, ...]]:
            return self._reader.execute(sql, params).fetchall()

        return await self._run(self._read_limiter, query)

    async def close(self) -> None:
        self._closed = True
        await self._run(self._read_limiter, self._reader.close)
        await self._write(self._conn.close)
        if self._marker is not None:
            await self._write(self._marker.close)

    def on_commit(self, callback: Callable[[list[StoredEvent]], None]) -> None:
        """Call ``callback`` with the events of every committed batch, in cursor order."""
        self._on_commit.append(callback)

    # -- writing -------------------------------------------------------------------------------

    def enqueue(
        self,
        *,
        doc: str | None,
        update: bytes | None,
        origin: str,
        at: str,
        events: Iterable[tuple[str, dict[str, Any]]] = (),
        audits: Iterable[AuditRecord] = (),
        sql: Iterable[tuple[str, tuple[Any, ...]]] = (),
    ) -> Ticket:
        """Queue one update (with the events it produced and its audit rows) for the next commit.

        ``sql``: statements of another subsystem (the cashier ledger) that must be durable
        together with the events; they run in the batch's transaction, in enqueue order.
        """
        if self._closed:
            raise StoreError("store is closed")
        if doc in self.stale_docs:
            raise StoreError(f"document {doc} must be reloaded after a failed commit")
        ticket = Ticket()
        self._queue.append(_Record(doc, update, origin, at, list(events), list(audits), ticket, sql=list(sql)))
        self._wakeup.set()
        return ticket

    def enqueue_rows(self, *, origin: str, at: str, events: Iterable[tuple[str, dict[str, Any]]] = (),
                     sql: Iterable[tuple[str, tuple[Any, ...]]] = ()) -> Ticket:
        """Queue events and another subsystem's statements that change no document (the cashier's
        ledger, a recovery's bookkeeping); with neither, the ticket is a barrier: it is done once
        everything queued before it is on disk (batches commit in order)."""
        return self.enqueue(doc=None, update=None, origin=origin, at=at, events=events, sql=sql)

    def enqueue_snapshot(self, doc: str, state: bytes, at: str) -> Ticket:
        """Fold ``doc``'s update rows written so far into ``state`` (its full encoded state now)."""
        ticket = Ticket()
        self._queue.append(_Record(doc, None, "compaction", at, [], [], ticket, snapshot=state))
        self._wakeup.set()
        return ticket

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Writer loop.  Finishes the batch in flight even when cancelled, then drains the rest."""
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                await self._flush()
        finally:
            with anyio.CancelScope(shield=True):
                await self._flush()

    async def flush(self) -> None:
        """Write everything queued now (used where no writer task runs, e.g. tools and tests)."""
        await self._flush()

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            self._wakeup = anyio.Event()
            await self._write_batch(batch)

    async def _write_batch(self, batch: list[_Record]) -> None:
        update_rows: list[tuple[int, str, bytes, str, str]] = []
        event_rows: list[tuple[int, str, str, str]] = []
        audit_rows: list[tuple[Any, ...]] = []
        snapshots: list[tuple[str, bytes, int, str]] = []
        statements: list[tuple[str, tuple[Any, ...]]] = []
        per_record_events: list[list[StoredEvent]] = []
        next_id = self._last_update_id
        next_cursor = self._next_cursor
        for rec in batch:
            if rec.snapshot is not None:
                snapshots.append((rec.doc, rec.snapshot, next_id, rec.at))
                per_record_events.append([])
                continue
            if rec.update is not None:
                next_id += 1
                update_rows.append((next_id, rec.doc, rec.update, rec.origin, rec.at))
            stored = []
            for etype, payload in rec.events:
                stored.append(StoredEvent(next_cursor, etype, rec.at, payload))
                event_rows.append((next_cursor, etype, rec.at, encode_json(payload)))
                next_cursor += 1
            per_record_events.append(stored)
            statements.extend(rec.sql)
            for a in rec.audits:
                audit_rows.append((
                    a.op_id, a.entity, a.entity_id, a.operation, a.terminal_id, a.user_id, a.at,
                    None if a.before is None else encode_json(a.before),
                    None if a.after is None else encode_json(a.after),
                ))
        folded = [0, 0]  # update rows a snapshot replaced, snapshots that are new
        seq = self.commit_seq + 1

        def commit() -> None:
            db = self._conn
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("UPDATE meta SET value = ? WHERE key = 'commit_seq'", (str(seq),))
                if update_rows:
                    db.executemany(
                        "INSERT INTO updates (id, doc, data, origin, stored_at) VALUES (?,?,?,?,?)", update_rows
                    )
                if event_rows:
                    db.executemany("INSERT INTO events (cursor, type, at, payload) VALUES (?,?,?,?)", event_rows)
                if audit_rows:
                    db.executemany(
                        "INSERT INTO audit (op_id, entity, entity_id, operation, terminal_id, user_id,"
                        " at, before, after) VALUES (?,?,?,?,?,?,?,?,?)",
                        audit_rows,
                    )
                for stmt, params in statements:
                    db.execute(stmt, params)
                for doc, state, upto, at in snapshots:
                    folded[1] += db.execute("SELECT COUNT(*) FROM snapshots WHERE doc = ?", (doc,)).fetchone()[0] == 0
                    db.execute(
                        "INSERT INTO snapshots (doc, data, upto, taken_at) VALUES (?,?,?,?) "
                        "ON CONFLICT (doc) DO UPDATE SET data=excluded.data, upto=excluded.upto, "
                        "taken_at=excluded.taken_at",
                        (doc, state, upto, at),
                    )
                    folded[0] += db.execute("DELETE FROM updates WHERE doc = ? AND id <= ?", (doc, upto)).rowcount
                db.execute("COMMIT")
            except BaseException:
                rollback(db)
                raise
            if self._marker is not None:
                self._marker.advance(seq)  # before anyone in the batch is told it is durable

        began = time.perf_counter()
        try:
            with anyio.CancelScope(shield=True):
                await self._write(commit)
        except Exception as exc:  # disk full, I/O error: nobody in this batch is acknowledged
            log.error("storage commit failed for %d records: %s", len(batch), exc)
            self._refuse_after_failure(batch, exc)
            return
        self.commit_seconds.observe(time.perf_counter() - began)
        self._last_update_id = next_id
        self._next_cursor = next_cursor
        self.commit_seq = seq
        self.rows["updates"] += len(update_rows) - folded[0]
        self.rows["snapshots"] += folded[1]
        self.rows["events"] += len(event_rows)
        self.rows["audit"] += len(audit_rows)
        for _, doc, _, _, _ in update_rows:
            self.pending_per_doc[doc] = self.pending_per_doc.get(doc, 0) + 1
        for doc, _, upto, _ in snapshots:
            self.pending_per_doc[doc] = sum(1 for r in update_rows if r[1] == doc and r[0] > upto)
        self.stats["batches"] += 1
        self.stats["records"] += len(batch)
        self.stats["snapshots"] += len(snapshots)
        committed: list[StoredEvent] = []
        for rec, stored in zip(batch, per_record_events, strict=True):
            rec.ticket.events = stored
            committed.extend(stored)
            rec.ticket.done.set()
        if committed:
            for callback in self._on_commit:
                callback(committed)

    def _refuse_after_failure(self, batch: list[_Record], exc: BaseException) -> None:
        """Fail the batch and every queued record of the documents it touched.

        Records queued behind a failed one were encoded on top of it (a Yjs update names the
        items it follows), so storing them would store writes that cannot be replayed after a
        restart.  They fail too, and the documents stay stale until reloaded from disk.
        """
        self.stale_docs.update(rec.doc for rec in batch if rec.doc is not None)
        failed = list(batch)
        keep = []
        for rec in self._queue:
            (failed if rec.doc in self.stale_docs else keep).append(rec)
        self._queue = keep
        for rec in failed:
            rec.ticket.error = exc
            rec.ticket.done.set()

    async def identity(self, terminal_id: str, terminal_type: str, replica_id: str, at: str) -> str:
        """Bind this database to one terminal; returns the replica id (created on first use).

        A data directory belongs to one terminal for life: starting it under another id would
        make its CRDT history look like a different terminal's and corrupt the stock counters.
        """
        def bind() -> dict[str, str]:
            db = self._conn
            db.execute("BEGIN IMMEDIATE")
            try:
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
                if "terminal_id" not in meta:
                    fresh = {"terminal_id": terminal_id, "terminal_type": terminal_type,
                             "replica_id": replica_id, "created_at": at}
                    db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", list(fresh.items()))
                    meta.update(fresh)
                db.execute("COMMIT")
            except BaseException:
                rollback(db)
                raise
            return meta

        meta = await self._write(bind)
        for key, wanted in (("terminal_id", terminal_id), ("terminal_type", terminal_type)):
            if meta[key] != wanted:
                raise IdentityMismatch(
                    f"{self.path} belongs to {key.replace('_', ' ')} {meta[key]!r}, not {wanted!r}; "
                    "a data directory serves one terminal for life"
                )
        return meta["replica_id"]

    async def save_state_vector(self, doc: str, state_vector: bytes) -> None:
        """Remember an archived document's state vector, so peers can compare without loading it."""
        def put() -> None:
            self._conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                               "SET value = excluded.value", (_SV + doc, base64.b64encode(state_vector).decode()))

        await self._write(put)

    async def state_vectors(self) -> dict[str, bytes]:
        rows = await self._read("SELECT key, value FROM meta WHERE key >= ? AND key < ?", (_SV, _SV[:-1] + ";"))
        return {key[len(_SV):]: base64.b64decode(value) for key, value in rows}

    # -- reading -------------------------------------------------------------------------------

    async def load_doc(self, doc: str) -> tuple[bytes | None, list[bytes]]:
        """The snapshot (if any) and the update rows after it, oldest first."""
        chunks = [chunk async for chunk in self.iter_doc(doc)]
        snapshot = chunks[0][0] if chunks and chunks[0][0] is not None else None
        return snapshot, [u for _, updates in chunks for u in updates]

    async def iter_doc(self, doc: str, chunk: int = 2000) -> AsyncIterator[tuple[bytes | None, list[bytes]]]:
        """The snapshot first, then the update rows in id order, ``chunk`` rows per thread hop.

        Loading a busy day (50,000 rows) in one list would hold every row at once and leave the
        freed memory fragmented; chunks keep the peak to a few hundred kilobytes.
        """
        snap = await self._read("SELECT data FROM snapshots WHERE doc = ?", (doc,))
        yield (bytes(snap[0][0]) if snap else None), []
        after = 0
        while True:
            rows = await self._read(
                "SELECT id, data FROM updates WHERE doc = ? AND id > ? ORDER BY id LIMIT ?", (doc, after, chunk)
            )
            if not rows:
                return
            after = rows[-1][0]
            yield None, [bytes(r[1]) for r in rows]

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read committed rows (another subsystem's tables, e.g. the cashier's)."""
        return await self._read(sql, params)

    async def doc_names(self) -> list[str]:
        rows = await self._read("SELECT doc FROM snapshots UNION SELECT DISTINCT doc FROM updates")
        return sorted(r[0] for r in rows)

    async def events_after(self, cursor: int, limit: int = 1000) -> list[StoredEvent]:
        rows = await self._read(
            "SELECT cursor, type, at, payload FROM events WHERE cursor > ? ORDER BY cursor LIMIT ?", (cursor, limit)
        )
        return [self._event_of(c, t, a, p) for c, t, a, p in rows]

    def _event_of(self, cursor: int, etype: str, at: str, payload: str) -> StoredEvent:
        """A stored event; a row whose payload no longer decodes (a damaged file) becomes an
        ``event:damaged`` event at its cursor - every UI moves past it, and sees that it did."""
        try:
            value = decode_json(payload)
            if not isinstance(value, dict):
                raise ValueError("payload is not an object")
            return StoredEvent(cursor, etype, at, value)
        except ValueError as exc:
            if cursor not in self._damaged_events:
                self._damaged_events.add(cursor)
                log.error("event %d (%s) in %s is damaged (%s); delivered as event:damaged", cursor, etype,
                          self.path, exc)
            return StoredEvent(cursor, "event:damaged", at, {"original_type": str(etype)[:64],
                                                            "message": f"stored payload unreadable: {exc}"})

    async def oldest_event_cursor(self) -> int | None:
        return (await self._read("SELECT MIN(cursor) FROM events"))[0][0]

    @property
    def last_cursor(self) -> int:
        return self._next_cursor - 1

    async def audit_rows(
        self, *, entity: str | None = None, entity_id: str | None = None, after: int = 0, limit: int = 100
    ) -> list[dict[str, Any]]:
        clauses, params = ["seq > ?"], [after]
        if entity is not None:
            clauses.append("entity = ?")
            params.append(entity)
        if entity_id is not None:
            clauses.append("entity_id = ?")
            params.append(entity_id)
        rows = await self._read(
            "SELECT seq, op_id, entity, entity_id, operation, terminal_id, user_id, at, before, after "
            f"FROM audit WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT ?",
            (*params, limit),
        )
        out = []
        for seq, op_id, ent, ent_id, op, term, user, at, before, after in rows:
            out.append({
                "seq": seq, "op_id": op_id, "entity": ent, "entity_id": ent_id, "operation": op,
                "terminal_id": term, "user_id": user, "at": at,
                "before": _audit_value(before), "after": _audit_value(after),
            })
        return out

    async def prune_events(self, keep: int) -> int:
        """Drop all but the newest ``keep`` events; UIs behind that get a ``reset`` and refetch."""
        def prune() -> int:
            return self._conn.execute("DELETE FROM events WHERE cursor <= ?", (self.last_cursor - keep,)).rowcount

        pruned = await self._write(prune)
        self.rows["events"] -= pruned
        return pruned

    async def size(self) -> dict[str, int]:
        """Row counts (kept in memory: status is polled) and the database's bytes."""
        (row,) = await self._read("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
        return {**self.rows, "bytes": row[0]}

    async def backup(self, dest: Path) -> None:
        """A consistent copy of the live database (:func:`storage.database.backup_database`)."""
        await self._run(self._read_limiter, backup_database, self.path, dest)


def _open_checked(path: Path) -> tuple[sqlite3.Connection, CommitMarker, int]:
    """Open ``path`` and hold it against its commit marker (blocking: run in a thread)."""
    marked = read_marker(marker_path(path))
    hint = RECOVER_HINT.format(dir=path.parent)
    if marked is not None and (not path.exists() or path.stat().st_size == 0):
        raise DatabaseMissing(f"{path} is {'empty' if path.exists() else 'missing'}, but this data directory "
                              f"had acknowledged {marked.seq} commits in it ({marker_path(path).name}). "
                              "Refusing to start empty: that would silently drop every acknowledged write. "
                              + hint)

    def check(conn: sqlite3.Connection) -> None:
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('db_id', 'commit_seq', 'backup_of')"))
        if "backup_of" in meta:
            raise DatabaseError(f"{path} is a backup copy (of database {meta['backup_of']}); a terminal does not "
                                f"run on a backup. Restore it with 'meshpos recover --data-dir {path.parent} "
                                "--from BACKUP' (docs/operations.md, Backup and restore).")
        if marked is None or "db_id" not in meta:
            return
        if marked.db_id != meta["db_id"]:
            raise DatabaseRolledBack(f"{path} is not the database this data directory last ran on (it is "
                                     f"{meta['db_id']}, the marker names {marked.db_id}): a file copied or "
                                     "restored by hand. " + hint)
        if int(meta["commit_seq"]) < marked.seq:
            raise DatabaseRolledBack(f"{path} went back in time: it holds {meta['commit_seq']} commits, but "
                                     f"{marked.seq} were acknowledged (a damaged or truncated -wal file, or an "
                                     "older copy). Acknowledged writes are missing. " + hint)

    try:
        conn = open_database(path, check)
    except DatabaseRolledBack:
        raise
    except DatabaseError as exc:
        if marked is None:
            raise
        raise DatabaseRolledBack(f"{exc} This data directory had acknowledged {marked.seq} commits. "
                                 + hint) from exc
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('db_id', 'commit_seq')"))
        seq = int(meta["commit_seq"])
        return conn, CommitMarker(marker_path(path), meta["db_id"]), seq
    except BaseException:
        conn.close()
        raise


def _audit_value(text: str | None) -> Any:
    """An audit row's before/after; a damaged one is reported as such instead of failing the page."""
    if text is None:
        return None
    try:
        return decode_json(text)
    except ValueError as exc:
        return {"damaged": f"stored value unreadable: {exc}"}
