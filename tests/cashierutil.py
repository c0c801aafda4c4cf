"""What the cashier-on-a-mesh tests share: terminals enrolled with the final roster, and reading
a drawer's ledger and events from each.  Test modules import from here, never from each other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshpos.terminal import Terminal
from peer.identity import Authority, save_roster
from tests.meshutil import config_for, enroll, wait_for


def configs(authority: Authority, tmp: Path, ids: list[str], kinds: list[str] | None = None):  # noqa: ANN201
    """Enrolled terminals that all hold the final roster (the enrollment flow of docs/operations.md:
    every POS is enrolled, and knows every voter, before the first drawer opens)."""
    dirs = enroll(authority, tmp, ids, kinds)
    for d in dirs:
        save_roster(d, authority.roster)
    return [config_for(d, t) for d, t in zip(dirs, ids, strict=True)]


def ledger_of(t: Terminal, drawer: str) -> list[dict[str, Any]]:
    st = t.cashier.states.get(drawer)
    return [] if st is None else list(st.committed)


async def same_ledger(terminals: list[Terminal], drawer: str, length: int | None = None) -> None:
    def done() -> bool:
        ledgers = [ledger_of(t, drawer) for t in terminals]
        return all(x == ledgers[0] for x in ledgers) and (length is None or len(ledgers[0]) == length)

    await wait_for(done, 15.0)


async def events_of(t: Terminal, kind: str) -> list[dict[str, Any]]:
    """The ``kind`` events on disk at ``t`` (after what is queued now is written: a terminal's
    ledger copy is in memory a moment before its events are durable)."""
    await t.store.enqueue_rows(origin="test", at="").wait()
    return [e.payload for e in await t.store.events_after(0, 10_000) if e.type == kind]
