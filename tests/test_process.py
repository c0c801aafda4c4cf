"""Real ``meshpos`` processes: durability under SIGKILL, clean signals, config, refusing bad
databases, live backups and the demo.

Every test here spawns ``python -m meshpos.cli`` and talks to it over loopback HTTP with a
synchronous httpx client; the ``launch`` fixture kills whatever is left when a test ends.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procutil import (
    BACKENDS,
    BURGER,
    STAGES,
    Proc,
    all_orders,
    clean_env,
    db_meta,
    listing,
    new_order,
    ok,
    put_products,
    quantity,
    run_args,
    run_cli,
    set_status,
    sha256,
)

pytestmark = pytest.mark.slow

# -- 1. durability under SIGKILL -------------------------------------------------------------------


class Ledger:
    """What the clients were told (2xx) and what was in flight when the terminal died."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status: dict[str, str] = {}  # order id -> last acknowledged status
        self.in_flight_status: dict[str, str] = {}  # order id -> status of a PATCH with no answer
        self.totals: dict[str, int] = {}  # order id -> total_cents when created
        self.acked: dict[str, int] = {"burger": 0, "fries": 0}  # sum of acknowledged deltas
        self.in_flight: dict[str, list[int]] = {"burger": [], "fries": []}  # deltas with no answer
        self.refusals: list[str] = []  # non-2xx answers the background writers stopped at

    def verify(self, c: httpx.Client) -> None:
        """Every acknowledged write is in the restarted terminal ``c``; unanswered ones may be."""
        stored = all_orders(c)
        missing = sorted(set(self.status) - set(stored))
        assert not missing, f"{len(missing)} acknowledged orders lost: {missing[:5]}"
        for order_id, status in self.status.items():
            got = stored[order_id]["status"]
            allowed = {status, self.in_flight_status.get(order_id, status)}
            assert got in allowed, f"order {order_id}: acknowledged {status}, stored {got}"
            assert stored[order_id]["total_cents"] == self.totals[order_id]
        assert quantity(c, "burger") == self.acked["burger"]
        fries = quantity(c, "fries")
        low, high = self.acked["fries"], self.acked["fries"] + sum(self.in_flight["fries"])
        assert low <= fries <= high, (fries, self.acked["fries"], self.in_flight["fries"])
        assert {p["sku"] for p in ok(c.get("/api/v1/catalog"))} == {"burger", "fries"}

    def order(self, order: dict[str, Any]) -> None:
        with self.lock:
            self.status[order["id"]] = order["status"]
            self.totals[order["id"]] = order["total_cents"]


def _lifecycle_worker(url: str, ledger: Ledger, worker: int, count: int) -> None:
    """Phase 1: ``count`` orders, each walked some way through its lifecycle, plus stock moves."""
    with httpx.Client(base_url=url, timeout=15) as c:
        for n in range(count):
            order = new_order(c, f"w{worker}", n)
            ledger.order(order)
            if (worker + n) % 7 == 3:
                body = {"reason": "guest left"}
                cancelled = ok(c.post(f"/api/v1/orders/{order['id']}/cancel", json=body))
                assert cancelled["status"] == "cancelled"
                ledger.order(cancelled)
            else:
                for stage in STAGES[: (worker + n) % (len(STAGES) + 1)]:
                    ledger.order(set_status(c, order["id"], stage))
            delta = (n % 5) - 1 or 7  # mixed signs, never 0
            ok(c.post("/api/v1/inventory/burger/adjust", json={"delta": delta, "reason": "sale"}))
            with ledger.lock:
                ledger.acked["burger"] += delta


def _hammer_stock(url: str, ledger: Ledger, warmed: threading.Event) -> None:
    """Phase 2: positive fries adjustments until the terminal goes away under us."""
    with httpx.Client(base_url=url, timeout=15) as c:
        n = 0
        while True:
            n += 1
            delta = n % 3 + 1
            with ledger.lock:
                ledger.in_flight["fries"].append(delta)
            try:
                resp = c.post("/api/v1/inventory/fries/adjust", json={"delta": delta, "reason": "delivery"})
            except httpx.TransportError:
                return
            if not resp.is_success:  # e.g. while shutting down: not acknowledged, effect unknown
                ledger.refusals.append(f"adjust -> {resp.status_code} {resp.text}")
                return
            with ledger.lock:
                ledger.in_flight["fries"].remove(delta)
                ledger.acked["fries"] += delta
            if n >= 5:
                warmed.set()


def _hammer_orders(url: str, ledger: Ledger, warmed: threading.Event) -> None:
    """Phase 2: create orders and move them on until the terminal goes away under us."""
    with httpx.Client(base_url=url, timeout=15) as c:
        n = 0
        while True:
            n += 1
            try:
                resp = c.post("/api/v1/orders", json={"waiter": "hammer", "items": [BURGER], "notes": f"h{n}"})
            except httpx.TransportError:
                return  # an unanswered create: its id is unknown, so nothing to check
            if not resp.is_success:
                ledger.refusals.append(f"create -> {resp.status_code} {resp.text}")
                return
            order = resp.json()
            ledger.order(order)
            for stage in STAGES[:3]:
                with ledger.lock:
                    ledger.in_flight_status[order["id"]] = stage
                try:
                    resp = c.patch(f"/api/v1/orders/{order['id']}", json={"status": stage})
                except httpx.TransportError:
                    return
                if not resp.is_success:
                    ledger.refusals.append(f"patch -> {resp.status_code} {resp.text}")
                    return
                ledger.order(resp.json())
                with ledger.lock:
                    del ledger.in_flight_status[order["id"]]
            if n >= 3:
                warmed.set()


def _run_threads(
    targets: list[tuple[Callable[..., None], tuple[Any, ...]]],
) -> tuple[list[threading.Thread], list[BaseException]]:
    errors: list[BaseException] = []

    def wrap(fn: Callable[..., None], args: tuple[Any, ...]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(fn, args), daemon=True) for fn, args in targets]
    for t in threads:
        t.start()
    return threads, errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_acknowledged_writes_survive_sigkill(
    launch: Callable[..., Proc], tmp_path: Path, backend: str
) -> None:
    data = tmp_path / "data"
    term = launch(data, backend=backend)
    ledger = Ledger()
    with term.client() as c:
        put_products(c)
        ok(c.post("/api/v1/inventory/burger/count", json={"quantity": 100}))
        ledger.acked["burger"] = 100

        # phase 1: 30 orders from 3 threads at once, statuses and stock moves interleaved
        threads, errors = _run_threads([(_lifecycle_worker, (term.url, ledger, w, 10)) for w in range(3)])
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(ledger.status) == 30
        still_open = sorted(o for o, status in ledger.status.items() if status == "open")

        # phase 2: two threads keep writing; the main thread makes its last writes and kills the
        # terminal the instant the last one is acknowledged
        warmed = [threading.Event(), threading.Event()]
        threads, errors = _run_threads([(_hammer_stock, (term.url, ledger, warmed[0])),
                                        (_hammer_orders, (term.url, ledger, warmed[1]))])
        for event in warmed:
            assert event.wait(30), "background writers made no progress"
        ledger.order(set_status(c, still_open[0], "sent"))
        ok(c.post("/api/v1/inventory/burger/adjust", json={"delta": -3, "reason": "waste"}))
        ledger.acked["burger"] -= 3
        last = new_order(c, "closer", 999)
        os.kill(term.pid, signal.SIGKILL)
        ledger.order(last)
    assert term.wait() == -signal.SIGKILL
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert not errors, errors

    assert not ledger.refusals, ledger.refusals

    restarted = launch(data, backend=backend)
    with restarted.client() as c:
        ledger.verify(c)
        assert all_orders(c)[last["id"]]["notes"] == "#999"
        # the restarted terminal takes writes again on top of the recovered state
        set_status(c, last["id"], "sent")
        assert quantity(c, "burger") == ledger.acked["burger"]


def test_writes_after_a_failed_commit_survive_restart(launch: Callable[..., Proc], tmp_path: Path) -> None:
    data = tmp_path / "data"
    term = launch(data)
    problems: list[str] = []
    with term.client() as c:
        put_products(c)
        ok(c.post("/api/v1/inventory/fries/count", json={"quantity": 10}))
        # another process holds SQLite's write lock for longer than the terminal's busy_timeout (5 s)
        holder = sqlite3.connect(data / "meshpos.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            resp = c.post("/api/v1/inventory/fries/adjust", json={"delta": 3, "reason": "delivery"})
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert resp.status_code == 503 and resp.json()["code"] == 4012, resp.text
        shown = quantity(c, "fries")
        if shown != 10:
            problems.append(f"after the 503 the terminal shows {shown} fries, not 10: the refused change stayed")
        answers = [ok(c.post("/api/v1/inventory/fries/adjust", json={"delta": d, "reason": "retry"}))["quantity"]
                   for d in (3, 1)]
        if answers != [13, 14]:
            problems.append(f"count 10 then acknowledged +3, +1 were answered with quantities {answers}")
    assert term.stop() == 0

    restarted = launch(data)
    with restarted.client() as c:
        after = quantity(c, "fries")
        audit = [row["operation"] for row in ok(c.get("/api/v1/audit", params={"entity": "inventory"}))]
    if after != 14:
        problems.append(f"after restart fries = {after}, but the acknowledged count 10 and adjustments +3, +1 "
                        f"make 14 (audit operations kept: {audit})")
    assert not problems, problems


# -- 2. SIGTERM / SIGINT ---------------------------------------------------------------------------



@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_under_load_commits_acknowledged_writes(
    launch: Callable[..., Proc], tmp_path: Path, backend: str
) -> None:
    data = tmp_path / "data"
    term = launch(data, backend=backend)
    ledger = Ledger()
    with term.client() as c:
        put_products(c)
    warmed = [threading.Event(), threading.Event()]
    threads, errors = _run_threads([(_hammer_stock, (term.url, ledger, warmed[0])),
                                    (_hammer_orders, (term.url, ledger, warmed[1]))])
    for event in warmed:
        assert event.wait(30), "background writers made no progress"
    started = time.monotonic()
    code = term.stop(signal.SIGTERM)
    elapsed = time.monotonic() - started
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert not errors, errors
    assert code == 0, f"exit code {code}\nstderr:\n{term.stderr()}"
    assert elapsed < 6, f"SIGTERM under load took {elapsed:.1f}s"
    assert "Traceback" not in term.stderr()
    assert len(ledger.status) >= 3

    restarted = launch(data, backend=backend)
    with restarted.client() as c:
        ledger.verify(c)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_signal_stops_cleanly_and_keeps_data(
    launch: Callable[..., Proc], tmp_path: Path, backend: str, sig: signal.Signals
) -> None:
    data = tmp_path / "data"
    term = launch(data, backend=backend)
    with term.client() as c:
        put_products(c)
        orders = [new_order(c, "ana", n)["id"] for n in range(3)]
        set_status(c, orders[0], "sent")
    started = time.monotonic()
    code = term.stop(sig)
    assert code == 0, f"exit code {code} after {sig.name}\nstderr:\n{term.stderr()}"
    assert time.monotonic() - started < 5
    assert "Traceback" not in term.stderr()
    assert not (data / "meshpos.db-wal").exists() or (data / "meshpos.db-wal").stat().st_size == 0

    restarted = launch(data, backend=backend)
    with restarted.client() as c:
        stored = all_orders(c)
        assert set(stored) == set(orders)
        assert stored[orders[0]]["status"] == "sent"
    assert restarted.stop(sig) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_right_after_ready_line_is_clean(
    launch: Callable[..., Proc], tmp_path: Path, backend: str
) -> None:
    """A supervisor may stop the terminal the moment it reports ready: that is a clean stop too."""
    term = launch(tmp_path / "data", backend=backend)
    code = term.stop(signal.SIGTERM)
    assert code == 0, f"exit code {code}\nstderr:\n{term.stderr()}"
    assert db_meta(tmp_path / "data" / "meshpos.db")["terminal_id"] == "pos-1"


def test_port_in_use_is_a_clean_error(launch: Callable[..., Proc], tmp_path: Path) -> None:
    first = launch(tmp_path / "one")
    port = first.url.rsplit(":", 1)[1]
    result = run_cli("run", "--data-dir", str(tmp_path / "two"), "--terminal-id", "pos-2", "--api-port", port)
    assert result.returncode != 0
    assert "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "cannot start" in result.stderr


def test_second_process_on_a_data_dir_in_use_is_refused(launch: Callable[..., Proc], tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = launch(data)
    with first.client() as c:
        put_products(c)
    second = launch(data, ready=False)
    code = second.ready_or_exit()
    if code is None:
        with second.client() as c2:
            theirs = c2.put("/api/v1/catalog/soda", json={"name": "Soda", "price_cents": 450})
        with first.client() as c:
            ours = c.put("/api/v1/catalog/water", json={"name": "Water", "price_cents": 300})
        pytest.fail(f"a second terminal process started on {data}; its write -> {theirs.status_code}, then the "
                    f"first terminal's write -> {ours.status_code} {ours.text}")
    assert code != 0
    assert "meshpos.db" in second.stderr() and "Traceback" not in second.stderr()
    with first.client() as c:  # the running terminal is unaffected
        ok(c.put("/api/v1/catalog/water", json={"name": "Water", "price_cents": 300}))


# -- 3. configuration ------------------------------------------------------------------------------


def test_config_file(launch: Callable[..., Proc], tmp_path: Path) -> None:
    data = tmp_path / "kds data"
    config = tmp_path / "meshpos.toml"
    config.write_text(
        "[terminal]\n"
        f"data_dir = {str(data)!r}\n"
        'terminal_id = "kds-7"\n'
        'type = "kds"\n'
        "api_port = 0\n"
    )
    term = launch(terminal_id=None, type=None, extra=["--config", str(config)])
    assert (term.terminal_id, term.type) == ("kds-7", "kds")
    with term.client() as c:
        status = ok(c.get("/api/v1/status"))
    assert (status["terminal_id"], status["type"]) == ("kds-7", "kds")
    assert db_meta(data / "meshpos.db")["terminal_id"] == "kds-7"


def test_environment_variables(launch: Callable[..., Proc], tmp_path: Path) -> None:
    data = tmp_path / "env-data"
    env = clean_env(MESHPOS_TERMINAL_ID="waiter-3", MESHPOS_DATA_DIR=str(data), MESHPOS_TYPE="waiter",
                    MESHPOS_API_PORT="0")
    term = launch(terminal_id=None, type=None, extra=[], env=env)
    assert (term.terminal_id, term.type) == ("waiter-3", "waiter")
    with term.client() as c:
        assert ok(c.get("/api/v1/status"))["terminal_id"] == "waiter-3"
    assert db_meta(data / "meshpos.db")["terminal_type"] == "waiter"


def test_precedence_flag_over_env_over_file(launch: Callable[..., Proc], tmp_path: Path) -> None:
    config = tmp_path / "meshpos.toml"
    config.write_text(f'[terminal]\ndata_dir = {str(tmp_path / "d")!r}\nterminal_id = "from-file"\n'
                      'type = "kds"\napi_port = 0\n')
    env = clean_env(MESHPOS_TERMINAL_ID="from-env", MESHPOS_TYPE="waiter")
    term = launch(terminal_id=None, type="monitor", extra=["--config", str(config)], env=env)
    assert (term.terminal_id, term.type) == ("from-env", "monitor")


def test_missing_terminal_id_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run_cli("run", "--data-dir", str(data), "--api-port", "0")
    assert result.returncode != 0
    assert "terminal_id is required" in result.stderr
    assert "--terminal-id" in result.stderr and "MESHPOS_TERMINAL_ID" in result.stderr
    assert "Traceback" not in result.stderr
    assert not data.exists()


def test_bad_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "meshpos.toml"
    config.write_text('[terminal]\nterminal_id = "pos-1"\ndata_dir = "x"\ncolour = "blue"\n')
    result = run_cli("run", "--config", str(config))
    assert result.returncode != 0
    assert "colour" in result.stderr and "Traceback" not in result.stderr
    config.write_text("[terminal\n")
    result = run_cli("run", "--config", str(config))
    assert result.returncode != 0
    assert "cannot read config file" in result.stderr and "Traceback" not in result.stderr


def test_non_numeric_port_names_the_setting(tmp_path: Path) -> None:
    env = clean_env(MESHPOS_API_PORT="abc")
    result = run_cli("run", "--data-dir", str(tmp_path / "d"), "--terminal-id", "pos-1", env=env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "api_port" in result.stderr or "MESHPOS_API_PORT" in result.stderr, result.stderr


def test_data_dir_serves_one_terminal_for_life(launch: Callable[..., Proc], tmp_path: Path) -> None:
    data = tmp_path / "data"
    term = launch(data, terminal_id="pos-1")
    with term.client() as c:
        put_products(c)
        order = new_order(c, "ana", 1)
    assert term.stop() == 0
    before = listing(data)

    result = run_cli("run", "--data-dir", str(data), "--terminal-id", "pos-2", "--api-port", "0")
    assert result.returncode != 0
    assert "'pos-1'" in result.stderr and "'pos-2'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr

    result = run_cli("run", "--data-dir", str(data), "--terminal-id", "pos-1", "--type", "kds",
                     "--api-port", "0")
    assert result.returncode != 0
    assert "'pos'" in result.stderr and "'kds'" in result.stderr, result.stderr
    assert listing(data) == before
    assert db_meta(data / "meshpos.db")["terminal_id"] == "pos-1"

    again = launch(data, terminal_id="pos-1")
    with again.client() as c:
        assert order["id"] in all_orders(c)


# -- 4. corrupt and foreign databases --------------------------------------------------------------


def _refused(data: Path, *fragments: str, clean: bool = True) -> str:
    result = run_cli("run", "--data-dir", str(data), "--terminal-id", "pos-1", "--api-port", "0")
    assert result.returncode != 0, result.stdout
    assert "serving" not in result.stdout
    if clean:
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    return result.stderr


def test_random_bytes_database_is_refused_untouched(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "meshpos.db").write_bytes(os.urandom(64 * 1024))
    before = listing(data)
    _refused(data, "not an SQLite database", "meshpos.db")
    assert listing(data) == before


def test_foreign_sqlite_database_is_refused_untouched(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / "meshpos.db")
    conn.execute("CREATE TABLE x (a INTEGER, b TEXT)")
    conn.executemany("INSERT INTO x VALUES (?, ?)", [(i, f"row {i}") for i in range(500)])
    conn.commit()
    conn.close()
    before = listing(data)
    _refused(data, "not a meshpos", "application_id=0x0")
    assert listing(data) == before


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / "meshpos.db")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(f"PRAGMA application_id={0x4D534850}")
    conn.execute("PRAGMA user_version=99")
    conn.commit()
    conn.close()
    before = listing(data)
    _refused(data, "schema version 99")
    assert listing(data) == before


@pytest.fixture(scope="module")
def written_db(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a meshpos.db after 40 orders, taken after a clean stop (no WAL left)."""
    base = tmp_path_factory.mktemp("written")
    data = base / "data"
    proc = Proc(run_args(data, backend="trio"), base / "stderr.log", clean_env(), base)
    try:
        proc.wait_ready()
        with proc.client() as c:
            put_products(c)
            for n in range(40):
                set_status(c, new_order(c, "ana", n)["id"], "sent")
        assert proc.stop() == 0
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()
    # the lock file stays (unlinking a lock file on exit races with a starting process)
    assert sorted(p.name for p in data.iterdir()) == ["meshpos.db", "meshpos.db.commits", "meshpos.lock"], \
        "a clean stop leaves no WAL"
    return (data / "meshpos.db").read_bytes()


def test_damaged_pages_are_refused_untouched(written_db: bytes, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    raw = bytearray(written_db)
    # the SQLite header: page size at offset 16 (1 means 65536), page count at offset 28
    page_size = int.from_bytes(raw[16:18], "big") or 65536
    page_count = int.from_bytes(raw[28:32], "big")
    assert page_count * page_size == len(raw) and page_count >= 10, (page_size, page_count, len(raw))
    middle = (page_count // 2) * page_size  # start of a b-tree page in the middle of the file
    raw[middle: middle + 512] = b"\xa5" * 512
    (data / "meshpos.db").write_bytes(bytes(raw))
    before = listing(data)
    # Observed: SQLite opens the file (its header is intact) but PRAGMA quick_check fails with
    # "database disk image is malformed", so meshpos says "... is corrupt (...); refusing to open it"
    # and exits 1; the file and the directory stay byte-for-byte the same.
    stderr = _refused(data, "meshpos.db")
    assert "integrity check" in stderr or "corrupt" in stderr or "unreadable" in stderr, stderr
    assert listing(data) == before


def _damage_an_update_row(written_db: bytes, data: Path) -> None:
    """Overwrite bytes inside one stored CRDT update: valid b-tree pages, so quick_check passes."""
    data.mkdir()
    db = data / "meshpos.db"
    db.write_bytes(written_db)
    conn = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    try:
        (blob,) = conn.execute(
            "SELECT data FROM updates WHERE doc LIKE 'orders/%' ORDER BY length(data) DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    raw = bytearray(written_db)
    at = raw.find(blob)
    assert at > 0 and raw.find(blob, at + 1) == -1 and len(blob) > 100
    raw[at + len(blob) // 2: at + len(blob) // 2 + 32] = b"\xa5" * 32
    db.write_bytes(bytes(raw))
    check = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    try:
        assert check.execute("PRAGMA quick_check").fetchall() == [("ok",)], "SQLite itself sees no damage"
    finally:
        check.close()


def test_damaged_update_row_never_serves_and_is_untouched(written_db: bytes, tmp_path: Path) -> None:
    """Damage SQLite cannot see: the terminal must still not serve (and lose) or rewrite the file."""
    data = tmp_path / "data"
    _damage_an_update_row(written_db, data)
    before = listing(data)
    # Observed: the terminal fails while loading the orders document (pycrdt: "Cannot decode update")
    # and exits non-zero; it never serves, and the file is left exactly as it was.
    _refused(data, clean=False)
    assert listing(data) == before


def test_damaged_update_row_is_refused_with_a_message(written_db: bytes, tmp_path: Path) -> None:
    data = tmp_path / "data"
    _damage_an_update_row(written_db, data)
    _refused(data, "meshpos.db")


def test_empty_database_file_is_initialised(launch: Callable[..., Proc], tmp_path: Path) -> None:
    """A zero-byte meshpos.db (e.g. ``touch``) holds nothing to lose: it becomes a fresh database."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "meshpos.db").touch()
    term = launch(data)
    with term.client() as c:
        put_products(c)
    assert db_meta(data / "meshpos.db")["terminal_id"] == "pos-1"


# -- 5. backups ------------------------------------------------------------------------------------


def test_backup_of_a_running_terminal_restores(launch: Callable[..., Proc], tmp_path: Path) -> None:
    data = tmp_path / "data"
    term = launch(data)
    out = tmp_path / "backups" / "pos-1.db"
    out.parent.mkdir()
    acked: list[str] = []
    stop = threading.Event()
    with term.client() as c:
        put_products(c)
        for n in range(10):
            order = new_order(c, "ana", n)
            set_status(c, order["id"], "sent")
            acked.append(order["id"])

        def writer() -> None:
            with term.client() as wc:
                n = 100
                while not stop.is_set():
                    n += 1
                    acked.append(new_order(wc, "bruno", n)["id"])
                    ok(wc.post("/api/v1/inventory/fries/adjust", json={"delta": 1, "reason": "delivery"}))

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        while len(acked) < 15:
            time.sleep(0.01)
        before_backup = list(acked)
        result = run_cli("backup", "--data-dir", str(data), "--out", str(out))
        during = len(acked) - len(before_backup)
        stop.set()
        thread.join(30)
        assert not thread.is_alive()
        assert result.returncode == 0, result.stderr
        assert f"backup written to {out}" in result.stdout
        assert during > 0, "no writes happened while the backup ran"
        # the live terminal is unaffected and still writing
        new_order(c, "ana", 500)
        live = all_orders(c)
    assert set(acked) <= set(live)
    os.kill(term.pid, signal.SIGKILL)
    term.wait()

    restored_dir = tmp_path / "restored"
    restored_dir.mkdir()
    shutil.copyfile(out, restored_dir / "meshpos.db")
    refused = run_cli("run", "--data-dir", str(restored_dir), "--terminal-id", "pos-1", "--api-port", "0")
    assert refused.returncode != 0 and "is a backup copy" in refused.stderr, refused.stderr  # never as it is
    (restored_dir / "meshpos.db").unlink()
    recovered = run_cli("recover", "--data-dir", str(restored_dir), "--from", str(out))
    assert recovered.returncode == 0, recovered.stderr
    restored = launch(restored_dir)
    with restored.client() as c:
        stored = all_orders(c)
        assert set(before_backup) <= set(stored), "orders acknowledged before the backup are missing"
        assert set(stored) <= set(acked), "the backup holds orders that were never acknowledged"
        for order_id in before_backup[:10]:
            assert stored[order_id]["status"] == "sent"
        assert 0 <= quantity(c, "fries") <= len(acked)
        assert ok(c.get("/api/v1/status"))["terminal_id"] == "pos-1"

    digest = sha256(out)
    again = run_cli("backup", "--data-dir", str(data), "--out", str(out))
    assert again.returncode != 0
    assert "exists" in again.stderr and "Traceback" not in again.stderr
    assert sha256(out) == digest


def test_backup_into_missing_directory_is_a_clean_error(launch: Callable[..., Proc], tmp_path: Path) -> None:
    data = tmp_path / "data"
    term = launch(data)
    out = tmp_path / "no such dir" / "b.db"
    result = run_cli("backup", "--data-dir", str(data), "--out", str(out))
    term.stop(signal.SIGKILL)
    assert result.returncode != 0
    assert not out.exists()
    assert "Traceback" not in result.stderr, result.stderr[-1500:]
    assert str(out.parent) in result.stderr


def test_backup_refuses_missing_database(tmp_path: Path) -> None:
    result = run_cli("backup", "--data-dir", str(tmp_path), "--out", str(tmp_path / "b.db"))
    assert result.returncode != 0
    assert "no meshpos.db" in result.stderr
    assert not (tmp_path / "b.db").exists()
    assert not (tmp_path / "meshpos.db").exists()


# -- 6. demo ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_demo_runs_to_completion(tmp_path: Path, backend: str) -> None:
    """Three terminals find each other over mDNS on loopback and share one lunch service."""
    result = run_cli("demo", "--exit", "--backend", backend, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    match = re.search(r"three enrolled terminals in (\S+)$", out, re.M)
    assert match, out
    urls = dict(re.findall(r"^   (pos-1|kds-1|waiter-1) \(\w+\): API at (http://127\.0\.0\.1:\d+)", out, re.M))
    assert set(urls) == {"pos-1", "kds-1", "waiter-1"} and len(set(urls.values())) == 3, out
    assert "found each other by mDNS and linked" in out
    summaries = re.findall(r"^   (?:pos-1|kds-1|waiter-1): (4 orders, revenue 113\.70; stock .*); \d+ durable"
                           r" updates; (drawer ledger \d+ entries)", out, re.M)
    assert len(summaries) == 3 and len(set(summaries)) == 1, out  # the three terminals agree
    assert summaries[0][1] == "drawer ledger 6 entries", out  # open, four payments, close: learned by all
    assert "drawer closed: expected 164.00 in cash, counted 164.00; card 53.70" in out
    for url in urls.values():
        assert f"{url}  (OpenAPI: {url}/openapi.json" in out and f"monitor: {url}/monitor)" in out
    assert "Traceback" not in result.stderr and "WARNING" not in result.stderr, result.stderr
    assert not Path(match.group(1)).exists(), "the demo's temporary data dir is removed on exit"
