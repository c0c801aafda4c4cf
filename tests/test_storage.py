"""Durable storage: group commit, exact restart, compaction, events, refusal of foreign files."""

from __future__ import annotations

import hashlib
import platform
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.lowlevel
import pycrdt
import pytest

import meshpos.events as events_module
from core.errors import PermissionDenied
from meshpos.documents import host as host_module
from meshpos.documents.host import DocumentHost
from meshpos.documents.inventory import InventoryDoc
from meshpos.events import Lagged, Reset
from meshpos.recovery import recover
from meshpos.terminal import Terminal
from storage.database import DatabaseError, open_database
from storage.store import Store, StoredEvent

pytestmark = pytest.mark.anyio
def same_state(u1: bytes, u2: bytes) -> bool:
    """Two encoded states hold exactly the same CRDT items (encodings may order clients differently)."""
    def absorbs(a: bytes, b: bytes) -> bool:
        doc = pycrdt.Doc()
        doc.apply_update(a)
        before = doc.get_update()
        doc.apply_update(b)
        return doc.get_update() == before

    return absorbs(u1, u2) and absorbs(u2, u1)


ITEM = {"sku": "burger", "name": "Burger", "qty": 1, "unit_price_cents": 1590}


async def test_concurrent_writes_share_commits_and_all_survive_restart(make_config) -> None:  # noqa: ANN001
    config = make_config()
    ids: list[str] = []
    async with Terminal(config).running() as t:
        await t.put_product("burger", name="Burger", price_cents=1590, station=None, category=None, active=True)

        async def writer(n: int) -> None:
            for _ in range(10):
                ids.append((await t.create_order(table=f"T{n}", waiter="ana", items=[ITEM]))["id"])
                await t.adjust_stock("burger", -1, "sale")

        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(writer, n)
        stats = dict(t.store.stats)
        state = {name: t.host.get(name).doc.get_update() for name in t.host.names()}
    assert stats["batches"] < stats["records"], "concurrent writers should share fsyncs"
    async with Terminal(config).running() as t:
        assert sorted(o["id"] for o in await t.list_orders()) == sorted(ids)
        assert t.inventory.quantity("burger") == -80
        for name, update in state.items():
            assert same_state(t.host.get(name).doc.get_update(), update), name


async def test_a_lone_surrogate_escape_from_a_js_writer_is_read_stored_and_served(make_config) -> None:  # noqa: ANN001
    """JavaScript's JSON.stringify writes a string cut inside an emoji as a lone ``\\ud83d``
    escape; the terminal must read such a record, store its events and serve them."""
    from core.codec import decode_json, embed_json, encode_json_bytes

    async with Terminal(make_config()).running() as t:
        order = await t.create_order(table=None, waiter="ana", items=[ITEM])
        name = f"orders/{order['business_day']}"
        peer = pycrdt.Doc()
        peer.apply_update(t.host.diff(name))
        before = peer.get_state()
        with peer.transaction():
            peer.get("orders", type=pycrdt.Map)[order["id"]]["stage:cancelled"] = (
                '{"at":"2026-12-02T10:00:00.000Z","by":"js-1","reason":"guest left \\ud83d"}')
        ticket = t.host.apply_remote(name, [peer.get_update(before)], "peer:js-1")
        (event,) = await ticket.wait()
        assert event.type == "order:cancelled"
        assert event.payload["order"]["cancellation"]["reason"] == "guest left \ud83d"
        replayed = [e for e in await t.store.events_after(0, 100) if e.cursor == event.cursor]
        assert replayed[0].payload == event.payload  # stored as the same escape, read back
        view = await t.get_order(order["id"])
        assert decode_json(encode_json_bytes(view)) == view  # what the API sends
    assert decode_json('"\\ud83d"') == "\ud83d"
    # the stdlib's fallback writes JSON embedded in place (a deferred order event's map) in place too
    mixed = {"s": "\ud83d", "m": embed_json('{"a":[1]}')}
    assert decode_json(encode_json_bytes(mixed)) == {"s": "\ud83d", "m": {"a": [1]}}


async def _counted(path: Path) -> dict[str, int]:
    """Row counts straight from the file (a second connection, as a backup tool would read it)."""
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("updates", "snapshots", "events", "audit")}
    finally:
        conn.close()


async def test_size_row_counts_stay_exact_through_compaction_pruning_and_restart(make_config) -> None:  # noqa: ANN001
    config = make_config()
    db = config.data_dir / "meshpos.db"
    async with Terminal(config).running() as t:
        await t.put_product("soda", name="Soda", price_cents=450, station=None, category=None, active=True)
        for _ in range(30):
            await t.adjust_stock("soda", -1, "sale")
        await t.create_order(table=None, waiter="ana", items=[ITEM])
        await t.host.compact("inventory").wait()
        await t.adjust_stock("soda", 2, "delivery")
        assert await t.store.prune_events(5) > 0
        size = await t.store.size()
        rows = {k: size[k] for k in ("updates", "snapshots", "events", "audit")}
        assert rows == await _counted(db)
        assert rows["snapshots"] == 1 and rows["events"] == 5 and rows["audit"] == 33
        assert rows["updates"] < 33  # the inventory's 31 rows before the snapshot were folded into it
        assert size["bytes"] > 0
    async with Terminal(config).running() as t:
        size = await t.store.size()
        assert {k: size[k] for k in rows} == rows


async def test_compaction_folds_the_log_while_writes_continue(make_config, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(host_module, "COMPACT_EVERY", 100)
    config = make_config()
    async with Terminal(config).running() as t:
        await t.put_product("soda", name="Soda", price_cents=450, station=None, category=None, active=True)
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(lambda: _adjust_many(t, 70))
        size = await t.store.size()
        assert size["snapshots"] >= 1
        assert size["updates"] < 100, "the update log must stay bounded"
        # a compaction queued between writes must not drop the writes around it
        t.host.compact("inventory")
        await t.adjust_stock("soda", 5, "delivery")
    async with Terminal(config).running() as t:
        assert t.inventory.quantity("soda") == 5 * 70 + 5


async def _adjust_many(t: Terminal, n: int) -> None:
    for _ in range(n):
        await t.adjust_stock("soda", 1, "delivery")


async def test_remote_updates_are_stored_and_yield_the_same_events(tmp_path: Path) -> None:
    now = lambda: datetime(2026, 11, 23, 12, tzinfo=UTC)  # noqa: E731
    a_store = await Store.open(tmp_path / "a.db")
    b_store = await Store.open(tmp_path / "b.db")
    try:
        a = DocumentHost(a_store, terminal_id="a", replica_id="ra", clock=now)
        b = DocumentHost(b_store, terminal_id="b", replica_id="rb", clock=now)
        inv_a = await a.open("inventory", InventoryDoc)
        await b.open("inventory", InventoryDoc)
        shipped: list[bytes] = []
        a.on_update(lambda name, update, origin, ticket: shipped.append(update))
        _, ticket = a.write("inventory", lambda: inv_a.put_product(
            "soda", name="Soda", price_cents=450, station=None, category=None, active=True), None)
        await a_store.flush()
        local = await ticket.wait()
        remote_ticket = b.apply_remote("inventory", [shipped[0]], "peer:a")
        await b_store.flush()
        remote = await remote_ticket.wait()
        assert [e.type for e in local] == [e.type for e in remote] == ["inventory:updated"]
        assert local[0].payload == remote[0].payload
        assert b.apply_remote("inventory", [shipped[0]], "peer:a") is None  # duplicate: nothing new
    finally:
        await a_store.close()
        await b_store.close()
    reopened = await Store.open(tmp_path / "b.db")
    try:
        snapshot, updates = await reopened.load_doc("inventory")
        assert snapshot is None and len(updates) == 1 and same_state(updates[0], shipped[0])
    finally:
        await reopened.close()


async def test_event_subscribers_resume_by_cursor_and_get_reset_after_pruning(make_config) -> None:  # noqa: ANN001
    async with Terminal(make_config()).running() as t:
        for n in range(5):
            await t.put_table(f"T{n}", name=f"T{n}", seats=2, area=None)
        async with t.events.subscribe(2) as stream:
            got = []
            with anyio.fail_after(5):
                async for event in stream:
                    got.append(event.cursor)
                    if event.cursor == 5:
                        break
        assert got == [3, 4, 5]
        await t.store.prune_events(keep=2)
        async with t.events.subscribe(1) as stream:
            with anyio.fail_after(5):
                first = await stream.__anext__()
        assert isinstance(first, Reset) and first.cursor == 5


async def test_a_new_subscriber_gets_what_was_published_before_it_first_reads(make_config) -> None:  # noqa: ANN001
    async with Terminal(make_config()).running() as t:
        await t.put_table("T0", name="T0", seats=2, area=None)
        async with t.events.subscribe() as stream:
            await t.put_table("T1", name="T1", seats=2, area=None)  # before the first read
            with anyio.fail_after(5):
                first = await stream.__anext__()
        assert first.type == "table:updated" and first.payload["table_id"] == "T1"


async def test_a_burst_of_live_events_arrives_whole_in_order_without_starving_other_tasks(
        make_config, monkeypatch) -> None:  # noqa: ANN001
    """A subscriber takes a buffered burst without a checkpoint per event (meshpos.events
    ``_drained``), but with one every ``DRAIN_BATCH``: other tasks run during a long drain; and a
    subscriber that falls behind the buffer still ends with ``Lagged`` after what it had."""
    async with Terminal(make_config()).running() as t:
        base = t.store.last_cursor
        burst = [StoredEvent(base + n, "table:updated", "2026-12-07T08:00:00.000Z", {"n": n}) for n in range(1, 1001)]
        others = []

        async def other() -> None:
            while True:
                others.append(len(got))
                await anyio.lowlevel.checkpoint()

        got: list[int] = []
        async with anyio.create_task_group() as tg, t.events.subscribe() as stream:
            t.events.publish(burst)  # all buffered before the first read
            tg.start_soon(other)
            with anyio.fail_after(5):
                async for event in stream:
                    got.append(event.payload["n"])
                    if len(got) == 1000:
                        break
            tg.cancel_scope.cancel()
        assert got == list(range(1, 1001))
        ran_while_draining = {n for n in others if 0 < n < 1000}
        assert len(ran_while_draining) >= 1000 // events_module.DRAIN_BATCH // 2  # trio batches its runs

        monkeypatch.setattr(events_module, "SUBSCRIBER_BUFFER", 10)
        base = t.store.last_cursor
        seen = []
        async with t.events.subscribe() as stream:
            t.events.publish([StoredEvent(base + n, "table:updated", "t", {"n": n}) for n in range(1, 21)])
            with pytest.raises(Lagged), anyio.fail_after(5):
                async for event in stream:
                    seen.append(event.payload["n"])
        assert seen == list(range(1, 11))  # what fitted its buffer, then the end


async def test_business_day_rollover_archives_old_days(make_config) -> None:  # noqa: ANN001
    now = [datetime(2026, 11, 20, 13, tzinfo=UTC)]
    t = Terminal(make_config(), clock=lambda: now[0])
    async with t.running():
        old = await t.create_order(table="T1", waiter="ana", items=[ITEM])
        now[0] += timedelta(days=1)
        await t.roll_over()
        await t.set_order_status(old["id"], "sent")  # yesterday stays writable for late tables
        now[0] += timedelta(days=1)
        await t.roll_over()
        assert [o["id"] for o in await t.list_orders()] == []
        archived = await t.get_order(old["id"])
        assert archived["status"] == "sent"
        with pytest.raises(PermissionDenied):
            await t.set_order_status(old["id"], "ready")
        new = await t.create_order(table="T1", waiter="ana", items=[ITEM])
        assert new["business_day"] == "2026-11-22"


@pytest.mark.parametrize("content", ["garbage", "foreign"])
async def test_corrupt_or_foreign_files_are_refused_untouched(tmp_path: Path, content: str) -> None:
    path = tmp_path / "meshpos.db"
    if content == "garbage":
        path.write_bytes(b"\x00not a database at all" * 100)
    else:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE x (y)")
        conn.commit()
        conn.close()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(DatabaseError, match="refusing"):
        await open_database(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


async def test_backup_is_a_consistent_copy_restored_by_recover(make_config, tmp_path: Path) -> None:  # noqa: ANN001
    async with Terminal(make_config()).running() as t:
        await t.put_table("T1", name="T1", seats=4, area=None)
        await t.store.backup(tmp_path / "copy.db")
        with pytest.raises(FileExistsError):
            await t.store.backup(tmp_path / "copy.db")
    restored = make_config(data_dir=tmp_path / "restored")
    restored.data_dir.mkdir()
    shutil.copyfile(tmp_path / "copy.db", restored.data_dir / "meshpos.db")
    with pytest.raises(DatabaseError, match="is a backup copy"):  # never run on a backup as it is
        async with Terminal(restored).running():
            pass
    (restored.data_dir / "meshpos.db").unlink()
    await recover(restored.data_dir, terminal_id="pos-1", terminal_type="pos", source=tmp_path / "copy.db")
    async with Terminal(restored).running() as t:
        assert t.tables.view("T1")["seats"] == 4
        assert t.cashier.recovery is not None  # its voter state is older than the backup: rebuilt first


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning applies to glibc only")
def test_allocator_tuning_applies_on_glibc() -> None:
    from meshpos.memory import tune_allocator

    assert tune_allocator() is True


async def test_a_schema_1_database_is_migrated_in_place_and_keeps_everything(make_config) -> None:  # noqa: ANN001
    config = make_config(type="pos")
    async with Terminal(config).running() as t:
        await t.put_table("T1", name="T1", seats=4, area=None)
    # what the previous release left: the same file without the cashier tables, user_version 1
    conn = sqlite3.connect(config.data_dir / "meshpos.db")
    for table in ("cashier_votes", "cashier_rounds", "cashier_accepted", "cashier_ledger", "cashier_provisional"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    async with Terminal(config).running() as t:
        assert t.tables.view("T1")["seats"] == 4
        await t.cashier.open_drawer("main", float_cents=1000, operator="carla")
        await t.cashier.move_cash("main", direction="in", amount_cents=250, reason="change")
        ballot = t.cashier.states["main"].promised
    conn = sqlite3.connect(config.data_dir / "meshpos.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert conn.execute("SELECT COUNT(*) FROM cashier_ledger").fetchone()[0] == 2
    conn.close()
    async with Terminal(config).running() as t:  # the voter state and the ledger come back from disk
        assert t.cashier.states["main"].promised == ballot
        assert t.cashier.drawer("main")["expected_cash_cents"] == 1250
        await t.cashier.close_drawer("main", counted_cents=1250)
        assert [e["kind"] for e in t.cashier.drawer("main")["entries"]] == ["drawer_opened", "cash_movement",
                                                                             "drawer_closed"]
        assert t.cashier.states["main"].promised[0] > ballot[0]  # a restarted holder outbids itself


async def test_a_ledger_gap_left_by_a_failed_commit_is_completed_at_start(make_config) -> None:  # noqa: ANN001
    """A cashier record whose commit failed, followed by one that succeeded, leaves a gap in
    ``cashier_ledger`` - and the failed record's accepted row, which its rollback kept."""
    config = make_config(type="pos")
    async with Terminal(config).running() as t:
        await t.cashier.open_drawer("main", float_cents=0, operator="carla")
        for n in range(3):
            await t.cashier.move_cash("main", direction="in", amount_cents=1, reason=f"r{n}")
        ballot = t.cashier.states["main"].promised
    conn = sqlite3.connect(config.data_dir / "meshpos.db")
    (entry,) = conn.execute("SELECT entry FROM cashier_ledger WHERE position = 2").fetchone()
    conn.execute("DELETE FROM cashier_ledger WHERE position = 2")
    conn.execute("INSERT INTO cashier_accepted VALUES ('main', 2, ?, ?, ?)", (*ballot, entry))
    conn.commit()
    conn.close()
    async with Terminal(config).running() as t:
        assert len(t.cashier.states["main"].committed) == 2  # the dense prefix
        await t.cashier.move_cash("main", direction="in", amount_cents=1, reason="r3")
        entries = t.cashier.drawer("main", from_position=0)["entries"]
        assert [e.get("reason") for e in entries] == [None, "r0", "r1", "r2", "r3"]  # nothing lost
        assert t.cashier.drawer("main")["expected_cash_cents"] == 4
    async with Terminal(config).running() as t:
        assert len(t.cashier.states["main"].committed) == 5 and not t.cashier.states["main"].accepted
