"""Opening the terminal database: refuse anything that is not ours, never overwrite it.

A terminal's data directory may be restored from a backup, copied between boxes, or hit by a
power cut; the one thing we must never do is "repair" a file by recreating it, because that
silently throws away acknowledged writes.  So an existing file must prove it is a meshpos
database of a schema we know, and pass SQLite's own integrity check, before we touch it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import IO

#: ``PRAGMA application_id`` of a meshpos database ("MSHP"); foreign SQLite files lack it.
APPLICATION_ID = 0x4D534850
SCHEMA_VERSION = 2
_SQLITE_MAGIC = b"SQLite format 3\x00"

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE updates (
    id INTEGER PRIMARY KEY,
    doc TEXT NOT NULL,
    data BLOB NOT NULL,
    origin TEXT NOT NULL,
    stored_at TEXT NOT NULL
);
CREATE INDEX updates_by_doc ON updates (doc, id);
CREATE TABLE snapshots (
    doc TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    upto INTEGER NOT NULL,
    taken_at TEXT NOT NULL
);
CREATE TABLE events (
    cursor INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    at TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    op_id TEXT NOT NULL UNIQUE,
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    operation TEXT NOT NULL,
    terminal_id TEXT NOT NULL,
    user_id TEXT,
    at TEXT NOT NULL,
    before TEXT,
    after TEXT
);
CREATE INDEX audit_by_entity ON audit (entity, entity_id);
"""

#: Schema 2: the cashier (meshpos/cashier).  Money lives here, never in a CRDT document.
#: ``cashier_votes`` and ``cashier_accepted`` are a voter's quorum state (what it promised and
#: accepted, durable before it answers); ``cashier_rounds`` the highest ballot round this
#: terminal used per drawer (durable before its prepare leaves: a ballot is never reused);
#: ``cashier_ledger`` is the committed ledger as this terminal knows it (every terminal keeps
#: one); ``cashier_provisional`` holds entries taken without a majority until they are
#: committed or sent to review.
CASHIER_SCHEMA = """
CREATE TABLE cashier_votes (drawer TEXT PRIMARY KEY, round INTEGER NOT NULL, holder TEXT NOT NULL);
CREATE TABLE cashier_rounds (drawer TEXT PRIMARY KEY, round INTEGER NOT NULL);
CREATE TABLE cashier_accepted (
    drawer TEXT NOT NULL,
    position INTEGER NOT NULL,
    round INTEGER NOT NULL,
    holder TEXT NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (drawer, position)
);
CREATE TABLE cashier_ledger (
    drawer TEXT NOT NULL,
    position INTEGER NOT NULL,
    entry TEXT NOT NULL,
    learned_at TEXT NOT NULL,
    PRIMARY KEY (drawer, position)
);
CREATE TABLE cashier_provisional (
    drawer TEXT NOT NULL,
    op_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    entry TEXT NOT NULL,
    state TEXT NOT NULL,
    position INTEGER,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (drawer, op_id)
);
"""
#: What upgrading a database of schema ``n - 1`` to ``n`` runs (one transaction per step).
MIGRATIONS = {2: CASHIER_SCHEMA}


class DatabaseError(Exception):
    """The database file cannot be used; the message says why and what to do."""


class DatabaseMissing(DatabaseError):
    """The data directory held a database with acknowledged writes, and it is gone or empty."""


class DatabaseRolledBack(DatabaseError):
    """The database lost commits it had acknowledged (a damaged or truncated WAL, an old copy)."""


#: What to do when a database cannot be trusted (docs/operations.md, "Recovery").
RECOVER_HINT = ("Nothing was changed. If the damage is understood, run 'meshpos recover --data-dir {dir}': "
                "it keeps this file aside, starts a fresh database from what is readable, and lets the "
                "terminal rebuild the rest from its peers (docs/operations.md, Recovery).")


def _check_header(path: Path) -> None:
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb") as fh:
        head = fh.read(len(_SQLITE_MAGIC))
    if head != _SQLITE_MAGIC:
        raise DatabaseError(
            f"{path} is not an SQLite database (corrupt or foreign file); refusing to open or "
            "overwrite it. Restore it from a backup or move it away to start empty."
        )


def open_database(path: Path, check: Callable[[sqlite3.Connection], None] | None = None) -> sqlite3.Connection:
    """Open (or create) the database at ``path`` with durable settings.  Blocking: run in a thread.

    Raises :class:`DatabaseError` for a corrupt, foreign or newer-schema file, or whatever
    ``check(connection)`` raises.  An existing file is judged through a *read-only* connection
    first: closing a read-write one checkpoints the WAL into the file and deletes it, which would
    rewrite the very evidence a refusal is about.  The file and its
    ``-wal`` and ``-shm`` are readable by this user only (the ledger is money): a new file is
    created 0600 before SQLite opens it (SQLite gives the WAL and shm files the database's
    mode), and an older, wider one is narrowed.
    """
    existed = path.exists() and path.stat().st_size > 0
    if path.exists():
        _check_header(path)
    else:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    if existed:
        # Read-only, and with no -wal beside it immutable: a read-only connection to a WAL
        # database would create the -wal and -shm files, and a refusal must leave the directory
        # as it found it (with a -wal present, what it holds must be read: mode=ro).
        wal = path.with_name(path.name + "-wal").exists()
        try:
            probe = sqlite3.connect(f"file:{path}?{'mode=ro' if wal else 'immutable=1'}", uri=True)
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open {path}: {exc}") from exc
        try:
            _verify_existing(probe, path)
            if check is not None:
                check(probe)
        finally:
            probe.close()
    for suffix in ("", "-wal", "-shm"):
        private(path.with_name(path.name + suffix))
    try:
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) in the store.
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open {path}: {exc}") from exc
    try:
        # WAL + FULL: a COMMIT returns only once the WAL frame is fsynced, so an acknowledged
        # write survives power loss; readers never block the writer.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        if not existed:
            conn.execute("BEGIN IMMEDIATE")
            _run_script(conn, SCHEMA + "".join(MIGRATIONS[v] for v in sorted(MIGRATIONS)))
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        else:
            _migrate(conn)
        for key, value in (("db_id", os.urandom(8).hex()), ("commit_seq", "0")):
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
    except BaseException:
        conn.close()
        raise
    return conn


def private(path: Path) -> None:
    """Narrow ``path`` to 0600 if it exists with more."""
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except FileNotFoundError:
        pass


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already (it does by itself on a full
    disk or an I/O error): a ROLLBACK then would fail with "no transaction is active" and hide
    the error that matters."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    for stmt in script.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring an older meshpos database up to :data:`SCHEMA_VERSION`, one step per transaction.

    A step only adds tables, and commits with its new ``user_version``: a crash mid-way leaves
    the previous version, whole, and the next start runs the step again.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            _run_script(conn, MIGRATIONS[target])
            conn.execute(f"PRAGMA user_version={target}")
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise


def _verify_existing(conn: sqlite3.Connection, path: Path) -> None:
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(
            f"{path} is unreadable ({exc}); refusing to open or overwrite it. "
            "Restore it from a backup."
        ) from exc
    if app_id != APPLICATION_ID:
        raise DatabaseError(
            f"{path} is an SQLite database but not a meshpos one (application_id={app_id:#x}); "
            "refusing to open or overwrite it. Point --data-dir at a meshpos data directory."
        )
    if version > SCHEMA_VERSION:
        raise DatabaseError(
            f"{path} has schema version {version}, newer than this meshpos ({SCHEMA_VERSION}); "
            "upgrade meshpos instead of opening it with an older one."
        )
    if version < 1:
        raise DatabaseError(f"{path} has no meshpos schema (user_version={version}); refusing it.")
    try:
        result = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(f"{path} is corrupt ({exc}); refusing to open it. Restore it from a backup.") from exc
    if result != ["ok"]:
        raise DatabaseError(
            f"{path} failed SQLite's integrity check ({'; '.join(result[:3])}); refusing to open it. "
            "Restore it from a backup."
        )


class DataDirLocked(DatabaseError):
    """Another process runs a terminal on this data directory."""


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold an exclusive lock on ``data_dir`` for as long as the returned file stays open.

    Two terminal processes on one database would number update rows from separate counters and
    make each other's commits fail; the lock makes the second one refuse to start instead.  The
    kernel drops the lock when the process dies (even on SIGKILL), so it never goes stale.
    """
    import fcntl

    lock_path = data_dir / "meshpos.lock"
    handle = open(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600), "a+")  # noqa: SIM115 - held for life
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise DataDirLocked(
            f"{data_dir / 'meshpos.db'} is in use by another meshpos process (pid {holder}); "
            "one terminal process per data directory"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def backup_database(path: Path, dest: Path) -> None:
    """A consistent copy of the live database at ``path`` in ``dest``, marked as a backup.

    ``VACUUM INTO`` reads one committed snapshot (WAL readers never block the writer) and writes
    a compact, self-contained file.  The copy then gets ``meta.backup_of``: a terminal refuses
    to run on it as it is (its voter state is older than what it promised since), and
    ``meshpos recover --from`` restores it.  Blocking: run in a thread.
    """
    if dest.exists():
        raise FileExistsError(f"{dest} exists; backups never overwrite a file")
    _check_header(path)
    source = sqlite3.connect(str(path), isolation_level=None)
    try:
        _verify_existing(source, path)
        source.execute("VACUUM INTO ?", (str(dest),))
    finally:
        source.close()
    private(dest)
    copy = sqlite3.connect(str(dest), isolation_level=None)
    try:
        (db_id,) = copy.execute("SELECT value FROM meta WHERE key = 'db_id'").fetchone() or ("unknown",)
        copy.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('backup_of', ?)", (db_id,))
    finally:
        copy.close()
