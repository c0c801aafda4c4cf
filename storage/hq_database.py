"""The HQ's PostgreSQL connections: a pool driven from AnyIO worker threads.

psycopg 3's async API (like asyncpg) runs on asyncio only; the HQ runs on trio too, so it uses
the blocking API in worker threads, as the terminals' storage does with sqlite3.  A landing holds
one connection for its transaction; the pool bounds how many run at once.  The DSN's password is
never logged or shown: :func:`redacted` is what messages print.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from core.errors import StoreError
from storage import hq_schema

log = logging.getLogger(__name__)
R = TypeVar("R")

#: Connections per HQ process: landings of different documents run side by side up to this.
POOL_SIZE = 8
CONNECT_TIMEOUT = 5.0
#: Server-side bounds on every connection: a frozen HQ process holding a document's advisory lock
#: (or a statement stuck behind it) is cut off instead of stalling every other process for hours.
SESSION_OPTIONS = ("-c statement_timeout=30000 -c lock_timeout=30000 "
                   "-c idle_in_transaction_session_timeout=60000")
#: What says the database is unavailable (as opposed to refusing what it was given).
UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)


class DataRefused(Exception):
    """PostgreSQL refused what it was given (a value out of range, a key taken): the database is
    up - the caller drops what it tried, it does not close the store's links."""


def redacted(dsn: str) -> str:
    """``dsn`` without its password (for logs, errors and status)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(a DSN that does not parse)"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**params)


class Database:
    """The pool of one HQ process.  :meth:`open` migrates the schema; :meth:`run` runs a function
    with a connection in a worker thread."""

    def __init__(self, dsn: str, *, size: int = POOL_SIZE, threads: bool = True) -> None:
        """``threads=False``: every call runs inline, blocking the event loop (a simulation on
        virtual time, where a worker thread would make the order of events depend on the OS)."""
        self.dsn = dsn
        self.threads = threads
        self.shown = redacted(dsn)
        self._pool = ConnectionPool(dsn, min_size=1, max_size=size, open=False, timeout=CONNECT_TIMEOUT,
                                    kwargs={"connect_timeout": int(CONNECT_TIMEOUT), "options": SESSION_OPTIONS,
                                            "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                                            "keepalives_count": 3},
                                    name="meshpos-hq")
        self._limit = anyio.CapacityLimiter(size)
        #: ``None`` while the database answers; else why it did not, last time it was asked.
        self.down: str | None = None

    async def open(self) -> None:
        def start() -> None:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT)
            with self._pool.connection() as conn:
                conn.autocommit = True
                before = hq_schema.migrate(conn)
            if before != hq_schema.VERSION:
                log.warning("PostgreSQL %s migrated from schema %d to %d", self.shown, before, hq_schema.VERSION)
        try:
            if self.threads:
                await anyio.to_thread.run_sync(start)
            else:
                start()
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"PostgreSQL at {self.shown} is not reachable: {_reason(exc, self.dsn)}") from None
        except hq_schema.SchemaTooNew as exc:
            raise StoreError(f"PostgreSQL at {self.shown}: {exc}") from None

    async def close(self) -> None:
        if self.threads:
            await anyio.to_thread.run_sync(self._pool.close)
        else:
            self._pool.close()

    async def run(self, fn: Callable[..., R], *args: Any) -> R:
        """``fn(connection, *args)`` in a worker thread; :class:`StoreError` when PostgreSQL is
        unavailable, :class:`DataRefused` when it refused the data (the connection is returned to
        the pool either way; a broken one is replaced)."""
        def call() -> R:
            with self._pool.connection() as conn:
                conn.autocommit = True  # each function opens its own transaction(s)
                return fn(conn, *args)
        try:
            if self.threads:
                result = await anyio.to_thread.run_sync(call, limiter=self._limit)
            else:
                await anyio.lowlevel.checkpoint()
                result = call()
        except UNAVAILABLE as exc:
            self.down = _reason(exc, self.dsn)
            raise StoreError(f"PostgreSQL at {self.shown}: {self.down}") from None
        except psycopg.Error as exc:
            self.down = None
            raise DataRefused(_reason(exc, self.dsn)) from None
        self.down = None
        return result

    async def check(self) -> str | None:
        """Ask the database now; ``None`` if it answers, else why not."""
        try:
            await self.run(lambda conn: conn.execute("SELECT 1").fetchone())
        except StoreError:
            return self.down
        return None


def _reason(exc: BaseException, dsn: str) -> str:
    """One line on why PostgreSQL failed, with any password the message might echo removed."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    password = conninfo_to_dict(dsn).get("password") if dsn else None
    if password:
        text = text.replace(str(password), "***")
    return text[:300]
