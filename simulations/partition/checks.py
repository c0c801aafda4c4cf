"""The checkers, run on what every terminal shows after the final heal (docs/simulations.md)."""

from __future__ import annotations

from typing import Any

from meshpos.documents.orders import ORDER_RANK, furthest
from simulations.partition.restaurant import STOCK
from simulations.partition.workload import Tally


def check(tally: Tally, observed: list[dict[str, Any]], drawers: list[str], *, converged: bool,
          missing: dict[str, int]) -> dict[str, Any]:
    """The checkers, on every terminal's :meth:`Box.observe` after the final heal - or after
    :data:`SETTLE_SECONDS` without convergence (``converged`` false; ``missing``: the CRDT
    updates each terminal still lacks), so such a run reports what is wrong instead of only
    timing out."""
    lacking = {tid: m for tid, m in missing.items() if m}
    checks: dict[str, Any] = {"converged": {"ok": converged, "missing_updates": lacking}}
    first = observed[0]
    checks["documents_identical"] = all({k: o[k] for k in ("orders", "tables", "stock")}
                                        == {k: first[k] for k in ("orders", "tables", "stock")} for o in observed)
    orders = first["orders"]
    lost = [oid for oid, stages in tally.orders.items()
            if oid not in orders or not stages <= set(orders[oid]["stages"])]
    checks["no_acknowledged_write_lost"] = {"ok": not lost, "lost": lost[:10]}
    stock = {sku: STOCK + delta for sku, delta in tally.stock.items()}
    checks["stock_equals_acknowledged_moves"] = {"ok": first["stock"] == stock,
                                                 "expected": stock, "found": first["stock"]}
    wrong = [oid for oid, o in orders.items() if o["status"] != furthest(o["stages"], ORDER_RANK)]
    checks["order_lifecycle_rule"] = {"ok": not wrong, "orders": wrong[:10]}
    checks["cashier"] = {drawer: _check_drawer(tally, [o["drawers"][drawer] for o in observed], drawer)
                         for drawer in drawers}
    checks["cashier"]["ok"] = all(c["ok"] for c in checks["cashier"].values())
    checks["ok"] = all(_passed(c) for c in checks.values())
    return checks


def _check_drawer(tally: Tally, seen: list[dict[str, Any]], drawer: str) -> dict[str, Any]:
    """One committed ledger everywhere, no operation twice, every acknowledged payment in it
    (a provisional one under its own op id or the reconciler's ``op~terminal``), every entry
    appended for review with its reason, no provisional entry left unsettled."""
    ledgers = [s["entries"] for s in seen]
    same = all(x == ledgers[0] for x in ledgers[1:])
    final = ledgers[0]
    ops = [e["op_id"] for e in final]
    have = set(ops)
    missing = [op for op, (paid_in, _) in tally.payments.items() if paid_in == drawer
               and op not in have and f"{op}~{op.split('@')[-1]}" not in have]
    in_review = [e for e in final if "review" in e]
    unexplained = [e["position"] for e in in_review if not (e["review"] or {}).get("reason")]
    pending = [p["op_id"] for s in seen for p in s["provisional"] if p["status"] not in ("committed", "in_review")]
    return {"ok": same and len(ops) == len(have) and not missing and not unexplained and not pending,
            "ledgers_identical": same, "entries": len(final), "duplicates": len(ops) - len(have),
            "acknowledged_payments_missing": missing[:10], "in_review": len(in_review),
            "provisional_unsettled": pending[:10]}


def union_state(vectors: dict[str, dict[str, dict[Any, int]]]) -> dict[str, dict[Any, int]]:
    """Per document, the state vector holding everything any terminal has
    (``terminal -> document -> client -> clock`` in)."""
    best: dict[str, dict[Any, int]] = {}
    for docs in vectors.values():
        for name, sv in docs.items():
            top = best.setdefault(name, {})
            for client, clock in sv.items():
                top[client] = max(top.get(client, 0), clock)
    return best


def missing_updates(vectors: dict[str, dict[str, dict[Any, int]]]) -> dict[str, int]:
    """Per terminal: CRDT updates it lacks that some other terminal has, summed over documents,
    from every terminal's state vectors (``terminal -> document -> client -> clock``)."""
    best = union_state(vectors)
    return {tid: sum(clock - docs.get(name, {}).get(client, 0)
                     for name, top in best.items() for client, clock in top.items())
            for tid, docs in vectors.items()}


def failed(checks: dict[str, Any]) -> list[str]:
    """The names of the checks that failed in a report's ``checks``."""
    return [name for name, c in checks.items() if name != "ok" and not _passed(c)]


def _passed(check: Any) -> bool:
    return check is True or (isinstance(check, dict) and bool(check.get("ok")))


def hq_snapshot(dsn: str) -> dict[str, Any]:
    """What the HQ landed in PostgreSQL: each order's reached stages, each drawer's ledger
    (position -> op id) and each payment's status."""
    import psycopg  # noqa: PLC0415 - only the scenarios with an HQ need it

    with psycopg.connect(dsn, autocommit=True) as conn:
        orders = {oid: sorted(view["stages"]) for oid, view in conn.execute("SELECT order_id, view FROM orders")}
        ledgers: dict[str, dict[int, str]] = {}
        for drawer, position, entry in conn.execute("SELECT drawer, position, entry FROM ledger_entries"):
            ledgers.setdefault(drawer, {})[int(position)] = entry.get("op_id", "")
        payments = {(d, int(p)): s for d, p, s in conn.execute("SELECT drawer, position, status FROM payments")}
        conflicts = conn.execute("SELECT count(*) FROM ledger_conflicts").fetchone()[0]
        provisional = {(d, t, op): (None if p is None else int(p)) for d, t, op, p in conn.execute(
            "SELECT drawer, terminal_id, op_id, position FROM provisional_entries WHERE kind = 'payment'")}
    return {"orders": orders, "ledgers": ledgers, "payments": payments, "conflicts": int(conflicts),
            "provisional": provisional}


def check_hq(tally: Tally, observed: list[dict[str, Any]], drawers: list[str], hq: dict[str, Any]) -> dict[str, Any]:
    """After the WAN is back: the HQ holds every acknowledged order with every acknowledged stage,
    every drawer's committed ledger exactly (each entry once, at its position), each payment
    with its status - in review, resolved - as the terminals show it, and every provisional
    payment a terminal uploaded settled where the ledger holds it."""
    lost = [oid for oid, stages in tally.orders.items()
            if oid not in hq["orders"] or not stages <= set(hq["orders"][oid])]
    wrong_ledgers, wrong_status = [], []
    for drawer in drawers:
        final = observed[0]["drawers"][drawer]["entries"]
        landed = hq["ledgers"].get(drawer, {})
        if {e["position"]: e.get("op_id", "") for e in final} != landed:
            wrong_ledgers.append(drawer)
        for e in final:
            if e["kind"] != "payment":
                continue
            resolution = e.get("resolution")
            want = ({"accept": "accepted", "adjust": "adjusted", "reject": "rejected"}[resolution["decision"]]
                    if resolution else e["status"])
            if hq["payments"].get((drawer, e["position"])) != want:
                wrong_status.append(f"{drawer}.{e['position']}")
    paid = {op for ops in hq["ledgers"].values() for op in ops.values()}
    missing = [op for op in tally.payments if op not in paid and f"{op}~{op.split('@')[-1]}" not in paid]
    # Provisional payments a terminal uploaded: each one the staff were told was provisional,
    # and settled at the position where the ledger holds it (under its op id, or op~terminal).
    unsettled = []
    for (drawer, terminal, op), pos in hq.get("provisional", {}).items():
        at = hq["ledgers"].get(drawer, {}).get(pos) if pos is not None else None
        if tally.payments.get(op, ("", ""))[1] != "provisional" or at not in (op, f"{op}~{terminal}"):
            unsettled.append(f"{drawer}.{op}")
    return {"ok": not lost and not wrong_ledgers and not wrong_status and not missing and not hq["conflicts"]
            and not unsettled,
            "orders_landed": len(hq["orders"]), "acknowledged_orders_missing": lost[:10],
            "ledgers_unlike_the_terminals": wrong_ledgers, "payment_status_wrong": wrong_status[:10],
            "acknowledged_payments_missing": missing[:10], "ledger_conflicts": hq["conflicts"],
            "payments_in_review": sum(1 for s in hq["payments"].values() if s == "in_review"),
            "provisional_uploaded": len(hq.get("provisional", {})), "provisional_not_settled": unsettled[:10]}
