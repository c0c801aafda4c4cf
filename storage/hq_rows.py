"""The HQ's SQL: what one landing reads and writes in PostgreSQL (docs/hq.md).

Plain functions over a psycopg connection, run from AnyIO worker threads (psycopg's async API is
asyncio-only, and the HQ runs on trio too).  The caller owns the transaction: a landing is one
``conn.transaction()`` holding the document's advisory lock (:func:`lock_doc`), so the append to
the record, the projections and the head all commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from psycopg.types.json import Jsonb

_INT64 = 2**63 - 1


def pg_safe(value: Any) -> Any:
    """``value`` as PostgreSQL takes it: no NUL in any string (``text`` and ``jsonb`` refuse it;
    a terminal's API does not), integers within ``bigint``.  What a store wrote is kept as it is in
    the record (Yjs bytes); only what is projected or stored as JSON is made safe."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return max(-_INT64, min(_INT64, value))
    if isinstance(value, dict):
        return {pg_safe(k): pg_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [pg_safe(v) for v in value]
    return value


def lock_doc(conn: Any, store_id: str, doc: str) -> None:
    """Serialize every HQ process's landings of one store's document until the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"doc:{store_id}/{doc}",))


def lock_drawer(conn: Any, store_id: str, drawer: str) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"drawer:{store_id}/{drawer}",))


def record_end(conn: Any, store_id: str, doc: str) -> int:
    """The last ``seq`` of ``doc`` in the record (0: none)."""
    row = conn.execute("SELECT coalesce(max(seq), 0) FROM doc_updates WHERE store_id = %s AND doc = %s",
                       (store_id, doc)).fetchone()
    return int(row[0])


def updates_after(conn: Any, store_id: str, doc: str, seq: int) -> list[tuple[int, bytes]]:
    """The record of ``doc`` past ``seq``, in order."""
    rows = conn.execute("SELECT seq, body FROM doc_updates WHERE store_id = %s AND doc = %s AND seq > %s "
                        "ORDER BY seq", (store_id, doc, seq)).fetchall()
    return [(int(s), bytes(b)) for s, b in rows]


def append_update(conn: Any, store_id: str, doc: str, seq: int, body: bytes, received_from: str,
                  process: str, state_vector: bytes) -> None:
    """Append one landed update and move the document's head to it."""
    conn.execute("INSERT INTO doc_updates (store_id, doc, seq, body, received_from, hq_process) "
                 "VALUES (%s, %s, %s, %s, %s, %s)", (store_id, doc, seq, body, received_from, process))
    conn.execute("INSERT INTO doc_heads (store_id, doc, seq, state_vector) VALUES (%s, %s, %s, %s) "
                 "ON CONFLICT (store_id, doc) DO UPDATE SET seq = excluded.seq, "
                 "state_vector = excluded.state_vector, updated_at = now()",
                 (store_id, doc, seq, state_vector))


def heads(conn: Any, store_id: str) -> dict[str, bytes]:
    """State vector of every document of the store, as landed."""
    rows = conn.execute("SELECT doc, state_vector FROM doc_heads WHERE store_id = %s", (store_id,)).fetchall()
    return {d: bytes(sv) for d, sv in rows}


def upsert_orders(conn: Any, store_id: str, orders: Iterable[dict[str, Any]]) -> None:
    """Replace the projection of each order (its row and its items) with ``orders``' views."""
    orders = [pg_safe(o) for o in orders]
    if not orders:
        return
    ids = [o["id"] for o in orders]
    conn.execute("DELETE FROM order_items WHERE store_id = %s AND order_id = ANY(%s)", (store_id, ids))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO orders (store_id, order_id, business_day, table_id, waiter, status, total_cents, "
            "items_count, created_at, created_by, cancel_reason, view) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (store_id, order_id) DO UPDATE SET business_day = excluded.business_day, "
            "table_id = excluded.table_id, waiter = excluded.waiter, status = excluded.status, "
            "total_cents = excluded.total_cents, items_count = excluded.items_count, "
            "created_at = excluded.created_at, created_by = excluded.created_by, "
            "cancel_reason = excluded.cancel_reason, view = excluded.view",
            [(store_id, o["id"], o["business_day"], o["table"], o["waiter"], o["status"], o["total_cents"],
              len(o["items"]), o["created_at"], o["created_by"],
              (o["cancellation"] or {}).get("reason"), Jsonb(o)) for o in orders])
        items = [(store_id, o["id"], i["id"], i["sku"], i["name"], i["qty"], i["unit_price_cents"],
                  i["total_cents"], i["kitchen_status"], i["voided"]) for o in orders for i in o["items"]]
        if items:
            cur.executemany(
                "INSERT INTO order_items (store_id, order_id, item_id, sku, name, qty, unit_price_cents, "
                "total_cents, kitchen_status, voided) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", items)


def upsert_stock(conn: Any, store_id: str, skus: Iterable[dict[str, Any]]) -> None:
    rows = [(store_id, v["sku"], v["name"], v["price_cents"], v["active"], v["quantity"], v["out_of_stock"])
            for v in map(pg_safe, skus)]
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO stock (store_id, sku, name, price_cents, active, quantity, out_of_stock) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (store_id, sku) DO UPDATE SET "
            "name = excluded.name, price_cents = excluded.price_cents, active = excluded.active, "
            "quantity = excluded.quantity, out_of_stock = excluded.out_of_stock", rows)


# -- ledgers ---------------------------------------------------------------------------------------


def ledger_lengths(conn: Any, store_id: str) -> dict[str, int]:
    """How far each drawer's ledger is landed (positions 0..n-1, dense: a landing never leaves a gap)."""
    rows = conn.execute("SELECT drawer, count(*) FROM ledger_entries WHERE store_id = %s GROUP BY drawer",
                        (store_id,)).fetchall()
    return {d: int(n) for d, n in rows}


def ledger_of(conn: Any, store_id: str, drawer: str, *, since: int = 0) -> list[dict[str, Any]]:
    """The landed entries of ``drawer`` from position ``since`` on, in order."""
    rows = conn.execute("SELECT entry FROM ledger_entries WHERE store_id = %s AND drawer = %s AND position >= %s "
                        "ORDER BY position", (store_id, drawer, since)).fetchall()
    return [r[0] for r in rows]


def append_entries(conn: Any, store_id: str, drawer: str, start: int, entries: list[dict[str, Any]],
                   received_from: str) -> None:
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO ledger_entries (store_id, drawer, position, entry, received_from) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        [(store_id, drawer, start + k, Jsonb(pg_safe(e)), received_from)
                         for k, e in enumerate(entries)])


def insert_provisional(conn: Any, store_id: str, drawer: str, terminal_id: str, rows: list[dict[str, Any]],
                       process: str) -> int:
    """The provisional entries ``terminal_id`` took on ``drawer`` (each once: an upload again adds
    nothing); one whose reconciled entry is landed already is stored settled.  ``rows``: the
    entries with ``business_day`` added.  How many were new."""
    rows = pg_safe(rows)
    added = 0
    with conn.cursor() as cur:
        for r in rows:
            cur.execute(
                "INSERT INTO provisional_entries (store_id, drawer, terminal_id, op_id, kind, order_id, business_day, "
                "amount_cents, method, tip_cents, at, reason, entry, hq_process, position, settled_at) "
                "SELECT %(s)s, %(d)s, %(t)s, %(op)s, %(kind)s, %(order)s, %(day)s, %(amount)s, %(method)s, %(tip)s, "
                "%(at)s, %(reason)s, %(entry)s, %(process)s, l.position, CASE WHEN l.position IS NULL THEN NULL "
                "ELSE now() END FROM (SELECT (SELECT position FROM ledger_entries WHERE store_id = %(s)s "
                "AND drawer = %(d)s AND entry->>'op_id' IN (%(op)s, %(op)s || '~' || %(t)s) "
                "AND entry->'provisional'->>'terminal_id' = %(t)s ORDER BY position LIMIT 1) AS position) l "
                "ON CONFLICT DO NOTHING",
                {"s": store_id, "d": drawer, "t": terminal_id, "op": r["op_id"], "kind": r["kind"],
                 "order": r.get("order_id"), "day": r.get("business_day"), "amount": r.get("amount_cents"),
                 "method": r.get("method"), "tip": r.get("tip_cents"), "at": r["at"],
                 "reason": str(r["provisional"].get("reason", "")), "entry": Jsonb(r), "process": process})
            added += cur.rowcount
    return added


def settle_provisional(conn: Any, store_id: str, drawer: str, settled: list[tuple[str, str, int]]) -> None:
    """``settled``: (terminal id, provisional op id, position) of reconciled entries just landed."""
    if settled:
        with conn.cursor() as cur:
            cur.executemany("UPDATE provisional_entries SET position = %s, settled_at = now() WHERE store_id = %s "
                            "AND drawer = %s AND terminal_id = %s AND op_id = %s AND position IS NULL",
                            [(pos, store_id, drawer, t, op) for t, op, pos in pg_safe(settled)])


def record_conflict(conn: Any, store_id: str, drawer: str, position: int, landed: dict[str, Any],
                    offered: Any, offered_by: str) -> None:
    conn.execute("INSERT INTO ledger_conflicts (store_id, drawer, position, landed, offered, offered_by) "
                 "VALUES (%s, %s, %s, %s, %s, %s)",
                 (store_id, drawer, position, Jsonb(pg_safe(landed)), Jsonb(pg_safe(offered)), offered_by))


def upsert_drawer_rows(conn: Any, store_id: str, drawer: str, rows: list[dict[str, Any]],
                       payments: list[dict[str, Any]]) -> None:
    """``rows``: the ledger positions to (re)write, as :func:`meshpos.cashier.ledger.view` shows
    them; ``payments``: the payment rows among them."""
    rows, payments = pg_safe(rows), pg_safe(payments)
    with conn.cursor() as cur:
        if rows:
            cur.executemany(
                "INSERT INTO drawer_ledger (store_id, drawer, position, kind, op_id, terminal_id, at, "
                "amount_cents, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (store_id, drawer, position) DO UPDATE SET status = excluded.status, "
                "amount_cents = excluded.amount_cents",
                [(store_id, drawer, r["position"], r["kind"], r.get("op_id"), r.get("terminal_id"), r.get("at"),
                  r.get("amount_cents"), r.get("status", "committed")) for r in rows])
        if payments:
            cur.executemany(
                "INSERT INTO payments (store_id, drawer, position, op_id, order_id, business_day, amount_cents, "
                "method, tip_cents, terminal_id, at, status) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (store_id, drawer, position) DO UPDATE SET status = excluded.status, "
                "amount_cents = excluded.amount_cents",
                [(store_id, drawer, p["position"], p["op_id"], p["order_id"], p["business_day"], p["amount_cents"],
                  p["method"], p["tip_cents"], p["terminal_id"], p["at"], p["status"]) for p in payments])


# -- the catalog (the HQ's own writes) -----------------------------------------------------------


def put_catalog(conn: Any, store_id: str, sku: str, name: str, price_cents: int, active: bool) -> dict[str, Any]:
    """Set one product of a store's catalog; its new version (a sequence: newer is larger, across
    every HQ process) tells the processes what they have not pushed yet."""
    row = conn.execute(
        "INSERT INTO catalog (store_id, sku, name, price_cents, active) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (store_id, sku) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents, "
        "active = excluded.active, version = nextval('catalog_version'), updated_at = now() "
        "RETURNING version, updated_at", (store_id, sku, name, price_cents, active)).fetchone()
    return {"store_id": store_id, "sku": sku, "name": name, "price_cents": price_cents, "active": active,
            "version": int(row[0]), "updated_at": row[1].isoformat()}


def catalog_since(conn: Any, store_id: str, version: int) -> list[dict[str, Any]]:
    """The store's catalog items changed after ``version`` (0: all), oldest change first."""
    rows = conn.execute("SELECT sku, name, price_cents, active, version FROM catalog WHERE store_id = %s AND "
                        "version > %s ORDER BY version", (store_id, version)).fetchall()
    return [{"sku": sku, "name": name, "price_cents": int(price), "active": active, "version": int(v)}
            for sku, name, price, active, v in rows]


# -- contact -------------------------------------------------------------------------------------


def touch_store(conn: Any, store_id: str, name: str, terminal_id: str | None, at: str) -> None:
    """The store is in contact now (``terminal_id``: through that terminal)."""
    seen = Jsonb({terminal_id: at}) if terminal_id else Jsonb({})
    conn.execute(
        "INSERT INTO stores (store_id, name, first_contact_at, last_contact_at, terminals_seen) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (store_id) DO UPDATE SET name = excluded.name, "
        "last_contact_at = greatest(stores.last_contact_at, excluded.last_contact_at), "
        "terminals_seen = stores.terminals_seen || excluded.terminals_seen",
        (store_id, name, at, at, seen))


def link_opened(conn: Any, store_id: str, terminal_id: str, process: str, address: str, at: str) -> int:
    row = conn.execute("INSERT INTO link_log (store_id, terminal_id, hq_process, address, opened_at) "
                       "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                       (store_id, terminal_id, process, address, at)).fetchone()
    return int(row[0])


def link_closed(conn: Any, link_id: int, at: str, code: int, reason: str, updates: int, entries: int) -> None:
    conn.execute("UPDATE link_log SET closed_at = %s, close_code = %s, close_reason = %s, updates_landed = %s, "
                 "entries_landed = %s WHERE id = %s", (at, code, reason, updates, entries, link_id))


# -- reports ---------------------------------------------------------------------------------------

#: Payment statuses that count as money taken (``in_review`` and ``rejected`` do not).
COUNTED = ("committed", "accepted", "adjusted")


def stores(conn: Any) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT store_id, name, first_contact_at, last_contact_at, terminals_seen FROM stores "
                        "ORDER BY store_id").fetchall()
    return [{"store_id": s, "name": n, "first_contact_at": f.isoformat() if f else None,
             "last_contact_at": la.isoformat() if la else None, "terminals_seen": seen}
            for s, n, f, la, seen in rows]


def sales(conn: Any, day_from: str, day_to: str, store_id: str | None) -> list[dict[str, Any]]:
    """Per store and business day in ``[day_from, day_to]``: orders, cancellations, voided items,
    revenue and tips by payment method (payments that count: :data:`COUNTED`), payments in review,
    and provisional payments a terminal uploaded that are not in the ledger yet (not revenue)."""
    where, args = "business_day BETWEEN %s AND %s", [day_from, day_to]
    if store_id is not None:
        where += " AND store_id = %s"
        args.append(store_id)
    out: dict[tuple[str, str], dict[str, Any]] = {}

    def day(store: str, business_day: Any) -> dict[str, Any]:
        key = (store, str(business_day))
        if key not in out:
            out[key] = {"store_id": store, "business_day": str(business_day), "orders": 0, "cancellations": 0,
                        "voided_items": 0, "revenue_cents": 0, "tips_cents": 0, "by_method": {},
                        "payments": 0, "in_review": 0, "provisional": 0, "provisional_cents": 0}
        return out[key]

    for store, business_day, orders, cancelled in conn.execute(
            f"SELECT store_id, business_day, count(*) FILTER (WHERE status <> 'cancelled'), "
            f"count(*) FILTER (WHERE status = 'cancelled') FROM orders WHERE {where} GROUP BY 1, 2", args):
        d = day(store, business_day)
        d["orders"], d["cancellations"] = int(orders), int(cancelled)
    for store, business_day, voided in conn.execute(
            f"SELECT o.store_id, o.business_day, count(*) FROM order_items i JOIN orders o USING (store_id, order_id) "
            f"WHERE i.voided AND o.{where.replace(' AND store_id', ' AND o.store_id')} GROUP BY 1, 2", args):
        day(store, business_day)["voided_items"] = int(voided)
    for store, business_day, method, status, n, amount, tips in conn.execute(
            f"SELECT store_id, business_day, method, status, count(*), sum(amount_cents), sum(tip_cents) "
            f"FROM payments WHERE {where} GROUP BY 1, 2, 3, 4", args):
        d = day(store, business_day)
        if status in COUNTED:
            d["payments"] += int(n)
            d["revenue_cents"] += int(amount)
            d["tips_cents"] += int(tips)
            d["by_method"][method] = d["by_method"].get(method, 0) + int(amount)
        elif status == "in_review":
            d["in_review"] += int(n)
    for store, business_day, n, amount in conn.execute(
            f"SELECT store_id, business_day, count(*), sum(amount_cents) FROM provisional_entries "
            f"WHERE kind = 'payment' AND position IS NULL AND {where} GROUP BY 1, 2", args):
        d = day(store, business_day)
        d["provisional"], d["provisional_cents"] = int(n), int(amount)
    return [out[k] for k in sorted(out)]
