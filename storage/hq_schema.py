"""The HQ's PostgreSQL schema, as numbered migrations applied in order (docs/hq.md, "Schema").

Every HQ process runs :func:`migrate` at start; the migrations take a transaction-level advisory
lock, so two processes starting together apply each one once, and a database newer than this
code (a version it does not know) is refused instead of written with old rules.

Two kinds of tables: the append-only record (``doc_updates``, ``ledger_entries``) - what the
stores sent, each change once - and the projections rebuilt from it in the same transaction
(``orders``, ``order_items``, ``payments``, ``drawer_ledger``, ``stock``).  The provisional
cashier entries terminals upload (``provisional_entries``) are a record of their own, settled
when the ledger lands their reconciled entry.  The HQ's own writes live in ``catalog``.
``stores`` and ``link_log`` say who was in contact and when.
"""

from __future__ import annotations

from typing import Any

#: Advisory lock key of the migrations (any constant both processes agree on).
MIGRATION_LOCK = 0x6D657368_706F7301

MIGRATIONS: list[str] = [
    # 1: the record, the projections, the catalog, the contact log
    """
    CREATE TABLE stores (
        store_id text PRIMARY KEY,
        name text NOT NULL DEFAULT '',
        first_contact_at timestamptz,
        last_contact_at timestamptz,
        terminals_seen jsonb NOT NULL DEFAULT '{}'::jsonb
    );
    CREATE TABLE doc_updates (
        store_id text NOT NULL,
        doc text NOT NULL,
        seq bigint NOT NULL CHECK (seq >= 1),
        body bytea NOT NULL,
        received_from text NOT NULL,
        hq_process text NOT NULL,
        landed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (store_id, doc, seq)
    );
    CREATE TABLE doc_heads (
        store_id text NOT NULL,
        doc text NOT NULL,
        seq bigint NOT NULL,
        state_vector bytea NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (store_id, doc)
    );
    CREATE TABLE ledger_entries (
        store_id text NOT NULL,
        drawer text NOT NULL,
        position integer NOT NULL CHECK (position >= 0),
        entry jsonb NOT NULL,
        received_from text NOT NULL,
        landed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (store_id, drawer, position)
    );
    CREATE TABLE ledger_conflicts (
        id bigserial PRIMARY KEY,
        store_id text NOT NULL,
        drawer text NOT NULL,
        position integer NOT NULL,
        landed jsonb NOT NULL,
        offered jsonb NOT NULL,
        offered_by text NOT NULL,
        at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE orders (
        store_id text NOT NULL,
        order_id text NOT NULL,
        business_day date NOT NULL,
        table_id text,
        waiter text,
        status text NOT NULL,
        total_cents bigint NOT NULL,
        items_count integer NOT NULL,
        created_at text NOT NULL,
        created_by text NOT NULL,
        cancel_reason text,
        view jsonb NOT NULL,
        first_landed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (store_id, order_id)
    );
    CREATE INDEX orders_by_day ON orders (store_id, business_day);
    CREATE TABLE order_items (
        store_id text NOT NULL,
        order_id text NOT NULL,
        item_id text NOT NULL,
        sku text NOT NULL,
        name text NOT NULL,
        qty integer NOT NULL,
        unit_price_cents bigint NOT NULL,
        total_cents bigint NOT NULL,
        kitchen_status text NOT NULL,
        voided boolean NOT NULL,
        PRIMARY KEY (store_id, order_id, item_id)
    );
    CREATE TABLE drawer_ledger (
        store_id text NOT NULL,
        drawer text NOT NULL,
        position integer NOT NULL,
        kind text NOT NULL,
        op_id text,
        terminal_id text,
        at text,
        amount_cents bigint,
        status text NOT NULL,
        PRIMARY KEY (store_id, drawer, position)
    );
    CREATE TABLE payments (
        store_id text NOT NULL,
        drawer text NOT NULL,
        position integer NOT NULL,
        op_id text NOT NULL,
        order_id text NOT NULL,
        business_day date,
        amount_cents bigint NOT NULL,
        method text NOT NULL,
        tip_cents bigint NOT NULL,
        terminal_id text NOT NULL,
        at text NOT NULL,
        status text NOT NULL,
        PRIMARY KEY (store_id, drawer, position)
    );
    CREATE INDEX payments_by_day ON payments (store_id, business_day);
    CREATE TABLE stock (
        store_id text NOT NULL,
        sku text NOT NULL,
        name text NOT NULL,
        price_cents bigint NOT NULL,
        active boolean NOT NULL,
        quantity bigint NOT NULL,
        out_of_stock boolean NOT NULL,
        PRIMARY KEY (store_id, sku)
    );
    CREATE SEQUENCE catalog_version;
    CREATE TABLE catalog (
        store_id text NOT NULL,
        sku text NOT NULL,
        name text NOT NULL,
        price_cents bigint NOT NULL CHECK (price_cents >= 0),
        active boolean NOT NULL,
        version bigint NOT NULL DEFAULT nextval('catalog_version'),
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (store_id, sku)
    );
    CREATE TABLE link_log (
        id bigserial PRIMARY KEY,
        store_id text NOT NULL,
        terminal_id text NOT NULL,
        hq_process text NOT NULL,
        address text NOT NULL,
        opened_at timestamptz NOT NULL,
        closed_at timestamptz,
        close_code integer,
        close_reason text,
        updates_landed bigint NOT NULL DEFAULT 0,
        entries_landed bigint NOT NULL DEFAULT 0
    );
    """,
    # 2: provisional cashier entries, as the terminal that took them uploaded them; settled (the
    # ledger position they got) once the reconciled entry lands.  all_payments adds the unsettled
    # provisional payments to the ledger's.
    """
    CREATE TABLE provisional_entries (
        store_id text NOT NULL,
        drawer text NOT NULL,
        terminal_id text NOT NULL,
        op_id text NOT NULL,
        kind text NOT NULL,
        order_id text,
        business_day date,
        amount_cents bigint,
        method text,
        tip_cents bigint,
        at text NOT NULL,
        reason text NOT NULL,
        entry jsonb NOT NULL,
        hq_process text NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        position integer,
        settled_at timestamptz,
        PRIMARY KEY (store_id, drawer, terminal_id, op_id)
    );
    CREATE INDEX provisional_by_day ON provisional_entries (store_id, business_day);
    CREATE INDEX ledger_entries_by_op ON ledger_entries (store_id, drawer, (entry->>'op_id'));
    CREATE VIEW all_payments AS
        SELECT store_id, drawer, position, op_id, order_id, business_day, amount_cents, method, tip_cents,
               terminal_id, at, status
        FROM payments
        UNION ALL
        SELECT store_id, drawer, NULL, op_id, order_id, business_day, amount_cents, method, tip_cents,
               terminal_id, at, 'provisional'
        FROM provisional_entries WHERE kind = 'payment' AND position IS NULL;
    """,
]

#: The schema version this code writes.
VERSION = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer meshpos than this one."""


def migrate(conn: Any) -> int:
    """Bring the database to :data:`VERSION` (``conn``: a psycopg connection, not in a
    transaction); returns the version it was at before."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                     "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        before = int(row[0])
        if before > VERSION:
            raise SchemaTooNew(f"the database is at schema version {before}; this meshpos knows up to {VERSION}")
        for version in range(before + 1, VERSION + 1):
            conn.execute(MIGRATIONS[version - 1])
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
    return before
