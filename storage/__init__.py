"""Durable local state of one terminal: CRDT update log + snapshots, domain events, audit.

Everything a terminal acknowledges goes through :class:`storage.store.Store`, which appends it
to SQLite (WAL, ``synchronous=FULL``) before the caller is told it happened.
"""

from storage.database import DatabaseError, open_database
from storage.store import AuditRecord, Store, StoredEvent

__all__ = ["AuditRecord", "DatabaseError", "Store", "StoredEvent", "open_database"]
