"""Damaged storage is refused, never served as if nothing happened; recovery is explicit.

The crash images here are real: the files of a terminal that acknowledged writes, copied while
it ran (WAL not checkpointed - what a power cut or ``kill -9`` leaves), then damaged the ways a
disk, a tool or a person damages them.  tests/test_process.py does the same with a SIGKILLed
process.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from core.errors import Unavailable
from meshpos.recovery import recover
from meshpos.terminal import Terminal
from storage.database import DatabaseError, DatabaseMissing, DatabaseRolledBack
from tests.meshutil import wait_for
from tests.procutil import all_orders, listing, new_order, ok, put_products, run_cli

pytestmark = pytest.mark.anyio

ITEM = {"sku": "burger", "name": "Burger", "qty": 1, "unit_price_cents": 1590}
FILES = ("meshpos.db", "meshpos.db-wal", "meshpos.db-shm", "meshpos.db.commits")


async def crash_image(make_config, tmp_path: Path, orders: int = 20) -> tuple[Path, list[str]]:  # noqa: ANN001
    """A data directory as a crash leaves it after ``orders`` acknowledged orders."""
    config = make_config()
    image = tmp_path / "image"
    image.mkdir(mode=0o700)
    ids = []
    async with Terminal(config).running() as t:
        for n in range(orders):
            ids.append((await t.create_order(table=f"T{n}", waiter="ana", items=[ITEM]))["id"])
        assert (config.data_dir / "meshpos.db-wal").stat().st_size > 0
        for name in FILES:
            shutil.copyfile(config.data_dir / name, image / name)
    return image, ids


def image_config(make_config, image: Path):  # noqa: ANN001, ANN201
    return make_config(data_dir=image)


async def start(config) -> None:  # noqa: ANN001
    async with Terminal(config).running():
        pass


async def test_the_undamaged_crash_image_starts_with_every_acknowledged_order(make_config, tmp_path: Path) -> None:  # noqa: ANN001
    image, ids = await crash_image(make_config, tmp_path)
    async with Terminal(image_config(make_config, image)).running() as t:
        assert sorted(o["id"] for o in await t.list_orders()) == sorted(ids)


@pytest.mark.parametrize("damage", ["flip WAL bytes", "truncate WAL", "delete WAL"])
async def test_a_database_that_lost_acknowledged_commits_is_refused(make_config, tmp_path: Path,  # noqa: ANN001
                                                                    damage: str) -> None:
    image, _ = await crash_image(make_config, tmp_path)
    wal = image / "meshpos.db-wal"
    if damage == "flip WAL bytes":
        data = bytearray(wal.read_bytes())
        for offset in range(len(data) // 2, len(data), 4096):  # into the frames of the later commits
            data[offset] ^= 0xFF
        wal.write_bytes(bytes(data))
    elif damage == "truncate WAL":
        with wal.open("r+b") as fh:
            fh.truncate(wal.stat().st_size // 2)
    else:
        wal.unlink()
    before = {name: (image / name).read_bytes() for name in FILES if (image / name).exists()}
    with pytest.raises(DatabaseRolledBack, match="(went back in time|had acknowledged 20 commits).*meshpos recover"):
        await start(image_config(make_config, image))
    assert {name: (image / name).read_bytes() for name in before if name != "meshpos.db-shm"} == \
        {name: data for name, data in before.items() if name != "meshpos.db-shm"}, "a refusal changed the files"


@pytest.mark.parametrize("damage", ["delete", "empty"])
async def test_a_missing_or_empty_database_is_refused_where_there_was_history(make_config, tmp_path: Path,  # noqa: ANN001
                                                                               damage: str) -> None:
    image, _ = await crash_image(make_config, tmp_path)
    for name in ("meshpos.db", "meshpos.db-wal", "meshpos.db-shm"):
        (image / name).unlink()
    if damage == "empty":
        (image / "meshpos.db").touch()
    with pytest.raises(DatabaseMissing, match="had acknowledged .* commits"):
        await start(image_config(make_config, image))
    assert damage == "empty" or not (image / "meshpos.db").exists(), "the refusal created a database"


async def test_a_zeroed_database_is_refused(make_config, tmp_path: Path) -> None:  # noqa: ANN001
    image, _ = await crash_image(make_config, tmp_path)
    size = (image / "meshpos.db").stat().st_size
    (image / "meshpos.db").write_bytes(bytes(max(size, 4096)))
    with pytest.raises(DatabaseError, match="not an SQLite database.*had acknowledged"):
        await start(image_config(make_config, image))


async def test_another_database_put_in_place_is_refused(make_config, tmp_path: Path) -> None:  # noqa: ANN001
    image, _ = await crash_image(make_config, tmp_path)
    async with Terminal(make_config(data_dir=tmp_path / "other")).running() as other:
        await other.put_table("T1", name="T1", seats=2, area=None)
    for name in ("meshpos.db", "meshpos.db-wal", "meshpos.db-shm"):
        (image / name).unlink(missing_ok=True)
        if (tmp_path / "other" / name).exists():
            shutil.copyfile(tmp_path / "other" / name, image / name)
    with pytest.raises(DatabaseRolledBack, match="not the database this data directory last ran on"):
        await start(image_config(make_config, image))


async def test_recover_keeps_the_damaged_file_and_what_is_readable(make_config, tmp_path: Path) -> None:  # noqa: ANN001
    image, ids = await crash_image(make_config, tmp_path)
    with (image / "meshpos.db-wal").open("r+b") as fh:  # the last commits are gone
        fh.truncate((image / "meshpos.db-wal").stat().st_size // 2)
    with pytest.raises(DatabaseRolledBack):
        await start(image_config(make_config, image))
    result = await recover(image, terminal_id="pos-1", terminal_type="pos")
    assert result.moved_to is not None and (result.moved_to / "meshpos.db").exists()  # never deleted
    assert result.documents and not result.source_error
    async with Terminal(image_config(make_config, image)).running() as t:
        kept = {o["id"] for o in await t.list_orders()}
        assert kept and kept < set(ids)  # what the file still held; the rest comes from peers
        assert t.cashier.recovery is not None  # it lost what it promised: rebuilt before it votes
        with pytest.raises(Exception, match="rebuilding the cashier state"):
            await t.cashier.open_drawer("main", float_cents=0, operator="carla")
    async with Terminal(image_config(make_config, image)).running() as t:  # and it stays recoverable
        assert {o["id"] for o in await t.list_orders()} == kept


async def test_a_lone_pos_resumes_voting_after_the_quarantine(make_config, tmp_path: Path,  # noqa: ANN001
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from meshpos.cashier import recovery

    monkeypatch.setattr(recovery, "RECOVERY_QUARANTINE", 0.3)
    config = make_config()
    async with Terminal(config).running():
        pass
    await recover(config.data_dir, terminal_id="pos-1", terminal_type="pos")
    async with Terminal(config).running() as t:
        assert t.cashier.recovery is not None
        await wait_for(lambda: t.cashier.recovery is None)
        opened = await t.cashier.open_drawer("main", float_cents=1000, operator="carla")
        assert opened["entry"]["status"] == "committed"
        assert [e.type for e in await t.store.events_after(0) if e.type == "cashier:recovered"]
    async with Terminal(config).running() as t:  # the flag is gone for good
        assert t.cashier.recovery is None


async def test_files_are_private(make_config) -> None:  # noqa: ANN001
    config = make_config()
    async with Terminal(config).running() as t:
        await t.put_table("T1", name="T1", seats=2, area=None)
        assert stat.S_IMODE(config.data_dir.stat().st_mode) == 0o700
        for name in (*FILES, "meshpos.lock"):
            path = config.data_dir / name
            assert path.exists(), name
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name


async def test_older_wider_files_are_narrowed(make_config) -> None:  # noqa: ANN001
    config = make_config()
    async with Terminal(config).running():
        pass
    os.chmod(config.data_dir, 0o755)
    os.chmod(config.data_dir / "meshpos.db", 0o644)
    async with Terminal(config).running():
        assert stat.S_IMODE(config.data_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((config.data_dir / "meshpos.db").stat().st_mode) == 0o600


@contextmanager
def small_disk(where: Path, size: str = "4m") -> Iterator[Path]:
    """A real filesystem that fills up: a tmpfs of ``size`` mounted at ``where`` (root only)."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:  # root in a container that may not mount
        pytest.skip(f"a real full disk is a small tmpfs, and this root may not mount one: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> None:
    """Take every free byte of ``disk`` (what a runaway log does to a box)."""
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


@pytest.mark.skipif(os.geteuid() != 0, reason="a real full disk is a small tmpfs, and mounting one needs root")
async def test_a_full_disk_says_so(make_config, tmp_path: Path) -> None:  # noqa: ANN001
    with small_disk(tmp_path / "disk") as disk:
        config = make_config(data_dir=disk / "pos-1")
        async with Terminal(config).running() as t:
            await t.put_table("T1", name="T1", seats=2, area=None)
            acknowledged = ["T1"]
            fill(disk)
            with pytest.raises(Unavailable, match="full") as refused:
                for n in range(5000):
                    await t.put_table(f"T{n}", name="a" * 180, seats=2, area="x" * 60)
                    acknowledged.append(f"T{n}")
            assert "no transaction is active" not in refused.value.message
            (disk / "filler").unlink()  # space again: the operator cleaned up
        async with Terminal(config).running() as t:  # and nothing acknowledged was lost
            assert {table["id"] for table in t.tables.list()} >= set(acknowledged)


async def test_a_marker_that_cannot_be_written_does_not_fail_the_commit(make_config, caplog) -> None:  # noqa: ANN001
    """Out of descriptors, or the marker's place taken: SQLite has the commit, so the caller is told
    so and the terminal goes on; the marker catches up at the next commit it can write."""
    config = make_config()
    marker_file = config.data_dir / "meshpos.db.commits"
    ids = []
    async with Terminal(config).running() as t:
        # A fresh store creates its marker at its first commit (storage/commits.py): none yet.
        assert not marker_file.exists()
        marker_file.mkdir()  # open() now fails with an OSError, as EMFILE would
        for n in range(3):
            ids.append((await t.create_order(table=f"T{n}", waiter="ana", items=[ITEM]))["id"])
        assert "could not be written" in caplog.text
        marker_file.rmdir()
        ids.append((await t.create_order(table="T9", waiter="ana", items=[ITEM]))["id"])
        seq = t.store.commit_seq
    assert marker_file.read_bytes().split()[3] == str(seq).encode()
    async with Terminal(config).running() as t:
        assert sorted(o["id"] for o in await t.list_orders()) == sorted(ids)


async def test_a_damaged_event_row_does_not_wedge_readers(make_config) -> None:  # noqa: ANN001
    config = make_config()
    async with Terminal(config).running() as t:
        await t.put_table("T1", name="T1", seats=2, area=None)
        await t.put_table("T2", name="T2", seats=2, area=None)
        first = (await t.store.events_after(0))[0].cursor
    conn = sqlite3.connect(config.data_dir / "meshpos.db")
    conn.execute("UPDATE events SET payload = '{\"broken' WHERE cursor = ?", (first,))
    conn.commit()
    conn.close()
    async with Terminal(config).running() as t:
        events = await t.store.events_after(0)
        assert events[0].type == "event:damaged" and events[0].cursor == first
        assert [e.type for e in events[1:]] and all(e.type != "event:damaged" for e in events[1:])


# -- a real process, killed -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip WAL bytes", "truncate WAL", "delete the database"])
def test_after_kill_9_a_damaged_database_is_refused_then_recovered(launch, tmp_path: Path,  # noqa: ANN001
                                                                   damage: str) -> None:
    data = tmp_path / "data"
    term = launch(data)
    with term.client() as c:
        put_products(c)
        acked = {new_order(c, "ana", n)["id"] for n in range(20)}
    term.stop(signal.SIGKILL)
    wal = data / "meshpos.db-wal"
    assert wal.stat().st_size > 0, "the WAL should hold the acknowledged orders (no checkpoint on SIGKILL)"
    if damage == "flip WAL bytes":
        raw = bytearray(wal.read_bytes())
        for offset in range(len(raw) // 2, len(raw), 4096):
            raw[offset] ^= 0xFF
        wal.write_bytes(bytes(raw))
    elif damage == "truncate WAL":
        with wal.open("r+b") as fh:
            fh.truncate(wal.stat().st_size // 2)
    else:
        for name in ("meshpos.db", "meshpos.db-wal", "meshpos.db-shm"):
            (data / name).unlink(missing_ok=True)
    before = listing(data)
    refused = run_cli("run", "--data-dir", str(data), "--terminal-id", "pos-1", "--api-port", "0")
    assert refused.returncode != 0 and "serving" not in refused.stdout
    assert "meshpos recover" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert ("missing" if damage == "delete the database" else "went back in time") in refused.stderr
    assert {k: v for k, v in listing(data).items() if k != "meshpos.db-shm"} == \
        {k: v for k, v in before.items() if k != "meshpos.db-shm"}, "the refusal changed the files"
    who = ["--terminal-id", "pos-1", "--type", "pos"] if damage == "delete the database" else []  # nothing names it
    recovered = run_cli("recover", "--data-dir", str(data), *who)
    assert recovered.returncode == 0, recovered.stderr
    assert "moved the old database aside" in recovered.stdout
    term = launch(data)
    with term.client() as c:
        kept = set(all_orders(c))
        assert kept <= acked  # never anything that was not acknowledged
        if damage != "delete the database":
            assert kept, "what the file still held is kept"
        status = ok(c.get("/api/v1/status"))
        assert status["terminal_id"] == "pos-1"
        pay = c.post("/api/v1/cashier/drawers/main/open", json={"float_cents": 0, "operator": "carla"})
        assert pay.status_code == 503 and "rebuilding" in pay.json()["message"], pay.text
