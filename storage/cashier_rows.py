"""The cashier's rows: the SQL that reads and writes its five tables (storage/database.py).

The cashier (meshpos/cashier) decides what to store and when it must be durable; this module
only knows how that looks in SQLite, in plain values (drawer names, rounds, positions, JSON-able
entries), so storage never learns the cashier's types.  Writes are ``(sql, params)`` pairs for
the store's group commit (``Store.enqueue_rows``); reads return decoded rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from core.codec import decode_json
from storage.store import Store

Statement = tuple[str, tuple[Any, ...]]


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


# -- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CashierRows:
    """Everything the cashier keeps on disk, as read at start or after a failed write."""

    rounds: dict[str, int]  # drawer -> highest round this terminal used as a holder
    votes: list[tuple[str, int, str]]  # (drawer, round, holder) promised
    accepted: list[tuple[str, int, int, str, Any]]  # (drawer, position, round, holder, entry)
    ledger: list[tuple[str, int, Any]]  # (drawer, position, entry), by drawer and position
    #: (drawer, op_id, seq, entry, state, position, created_at), by seq
    provisional: list[tuple[str, str, int, Any, str, int | None, str]]
    recovering: bool  # 'meshpos recover' rebuilt this terminal's cashier state


async def read(store: Store) -> CashierRows:
    q = store.query
    return CashierRows(
        rounds=dict(await q("SELECT drawer, round FROM cashier_rounds")),
        votes=list(await q("SELECT drawer, round, holder FROM cashier_votes")),
        accepted=[(drawer, pos, rnd, holder, decode_json(entry)) for drawer, pos, rnd, holder, entry in await q(
            "SELECT drawer, position, round, holder, entry FROM cashier_accepted")],
        ledger=[(drawer, pos, decode_json(entry)) for drawer, pos, entry in await q(
            "SELECT drawer, position, entry FROM cashier_ledger ORDER BY drawer, position")],
        provisional=[(drawer, op_id, seq, decode_json(entry), state, pos, created)
                     for drawer, op_id, seq, entry, state, pos, created in await q(
                         "SELECT drawer, op_id, seq, entry, state, position, created_at FROM cashier_provisional "
                         "ORDER BY seq")],
        recovering=bool(await q("SELECT 1 FROM meta WHERE key = 'cashier_recovery'")),
    )


# -- a voter's state and the ledger copy -----------------------------------------------------------


def vote(drawer: str, round_: int, holder: str) -> Statement:
    return ("INSERT INTO cashier_votes (drawer, round, holder) VALUES (?,?,?) ON CONFLICT (drawer) "
            "DO UPDATE SET round = excluded.round, holder = excluded.holder", (drawer, round_, holder))


def accepted(drawer: str, position: int, round_: int, holder: str, entry: Any) -> Statement:
    return ("INSERT OR REPLACE INTO cashier_accepted (drawer, position, round, holder, entry) VALUES (?,?,?,?,?)",
            (drawer, position, round_, holder, _dump(entry)))


def committed(drawer: str, start: int, entries: list[Any] | tuple[Any, ...], at: str) -> list[Statement]:
    """``entries`` committed from ``start`` on.  Only the accepted rows these commit go: if an
    earlier write failed, its accepted rows must stay until its entries are stored (the cashier
    completes a gap in its ledger from them when it loads)."""
    out: list[Statement] = [("DELETE FROM cashier_accepted WHERE drawer = ? AND position >= ? AND position < ?",
                             (drawer, start, start + len(entries)))]
    out += [("INSERT OR REPLACE INTO cashier_ledger (drawer, position, entry, learned_at) VALUES (?,?,?,?)",
             (drawer, pos, _dump(entry), at)) for pos, entry in enumerate(entries, start)]
    return out


def holder_round(drawer: str, round_: int) -> Statement:
    """The round a holder is about to prepare with (on disk first: a ballot is never reused)."""
    return ("INSERT OR REPLACE INTO cashier_rounds (drawer, round) VALUES (?, ?)", (drawer, round_))


def recovered(drawers: dict[str, tuple[tuple[int, str], int, list[tuple[int, int, str, Any]]]]) -> list[Statement]:
    """The end of a recovery: per drawer changed, (promised, round, accepted rows as (position,
    round, holder, entry)); the recovery mark goes."""
    out: list[Statement] = [("DELETE FROM meta WHERE key = 'cashier_recovery'", ())]
    for drawer, (promised, round_, rows) in drawers.items():
        out.append(("INSERT OR REPLACE INTO cashier_votes (drawer, round, holder) VALUES (?,?,?)",
                    (drawer, promised[0], promised[1])))
        out.append(("INSERT OR REPLACE INTO cashier_rounds (drawer, round) VALUES (?,?)", (drawer, round_)))
        out.extend(accepted(drawer, pos, rnd, holder, entry) for pos, rnd, holder, entry in rows)
    return out


# -- provisional entries ---------------------------------------------------------------------------


def provisional(drawer: str, op_id: str, seq: int, entry: Any, at: str) -> Statement:
    return ("INSERT INTO cashier_provisional (drawer, op_id, seq, entry, state, position, created_at, updated_at) "
            "VALUES (?,?,?,?,?,?,?,?)", (drawer, op_id, seq, _dump(entry), "pending", None, at, at))


def settled(drawer: str, op_id: str, state: str, position: int, at: str) -> Statement:
    return ("UPDATE cashier_provisional SET state = ?, position = ?, updated_at = ? WHERE drawer = ? AND op_id = ?",
            (state, position, at, drawer, op_id))
