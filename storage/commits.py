"""The commit marker: how far the database had got, kept in a second file beside it.

SQLite cannot tell a database that lost its newest commits from one that never had them: flip a
byte in the WAL and every frame from there on is silently ignored at the next open; truncate the
WAL, zero or delete ``meshpos.db``, and the terminal used to start with part of its acknowledged
writes, or none, without a word.  So every committed batch also bumps a counter in the database
(``meta.commit_seq``) and, right after its COMMIT and before anyone is told, writes the same
number here.  At start the database must have reached at least the marker's number, and be the
database the marker names; otherwise the terminal refuses to start and says how to recover
(``meshpos recover``, docs/operations.md).

The marker is written without an fsync per commit (the page cache survives ``kill -9``; only a
power cut can lose its last writes, which leaves it *behind* the database - never a false alarm)
and fsynced at most once a second and at close.  Each record carries a CRC, so a torn write is
recognised as such and not mistaken for a number.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from core.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

RECORD_BYTES = 80
#: At most one fsync of the marker per this many seconds (and one at close).
SYNC_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Marked:
    db_id: str
    seq: int


def marker_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".commits")


def _record(db_id: str, seq: int) -> bytes:
    body = f"meshpos-commits 1 {db_id} {seq}"
    line = f"{body} {zlib.crc32(body.encode()):08x}"
    return line.encode().ljust(RECORD_BYTES - 1) + b"\n"


def read_marker(path: Path) -> Marked | None:
    """The marker's record; ``None`` when there is none.  A damaged one is logged and ignored
    (it is rewritten at start): the check it would have made is lost, nothing else."""
    try:
        data = path.read_bytes()[:RECORD_BYTES]
    except FileNotFoundError:
        return None
    parts = data.decode(errors="replace").split()
    try:
        magic, version, db_id, seq, crc = parts
        body = f"{magic} {version} {db_id} {seq}"
        if magic != "meshpos-commits" or version != "1" or int(crc, 16) != zlib.crc32(body.encode()):
            raise ValueError
        return Marked(db_id, int(seq))
    except ValueError:
        log.error("%s is damaged (%r); the check that the database did not go back in time is skipped "
                  "this once", path, data[:RECORD_BYTES])
        return None


class CommitMarker:
    """The marker of a running store; :meth:`advance` after each COMMIT (writer thread).

    An existing marker is opened with the store, so a commit never needs a new descriptor (a
    terminal out of descriptors still commits, and says so).  A missing one is created at the
    first commit, not at open: a terminal that refuses to start after opening its database (a
    document that does not decode) leaves the data directory exactly as it found it.

    A marker that cannot be written (no descriptor left, a full disk) is logged and retried at
    the next commit, and the commit stands: SQLite has it, and a marker *behind* the database
    only weakens the start check, it never raises a false alarm.  Failing the commit instead
    would tell a caller a durable write was lost.
    """

    def __init__(self, path: Path, db_id: str) -> None:
        self.path = path
        self.db_id = db_id
        self._fd = -1
        self._synced_at = 0.0
        self._log = RateLimitedLog(log, per_second=0.2, burst=1)
        try:
            self._fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            pass

    def advance(self, seq: int) -> None:
        try:
            if self._fd < 0:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                os.fchmod(self._fd, 0o600)
            os.pwrite(self._fd, _record(self.db_id, seq), 0)
            if time.monotonic() - self._synced_at >= SYNC_SECONDS:
                self._sync()
        except OSError as exc:
            self._log.log("marker", logging.ERROR, "commit %d is stored, but its marker %s could not be written "
                          "(%s); retried at the next commit", seq, self.path, exc)

    def _sync(self) -> None:
        os.fsync(self._fd)
        self._synced_at = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self._sync()
            finally:
                os.close(self._fd)
                self._fd = -1
