"""The real-PostgreSQL fixtures (tests/conftest.py) and simulations/postgres.py: a server that
answers, a database of its own per test, an outage that keeps the data and the port, a password
that is enforced, a directory that is gone afterwards."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest

from simulations import postgres
from simulations.postgres import PostgresServer, PostgresUnavailable

SEEN_DATABASES: list[str] = []


def test_a_fresh_database_answers(postgres_dsn: str, postgres_server: PostgresServer) -> None:
    assert postgres_dsn.startswith(f"postgresql://meshpos@127.0.0.1:{postgres_server.port}/t_")
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        database, user, fsync = conn.execute(
            "SELECT current_database(), current_user, current_setting('fsync')"
        ).fetchone()
    assert postgres_dsn.endswith(f"/{database}")
    assert user == "meshpos"
    assert fsync == "off"  # the session server is the fast kind


def test_the_unix_socket_answers_too(postgres_server: PostgresServer) -> None:
    with psycopg.connect(host=str(postgres_server.socket_dir), port=postgres_server.port, user="meshpos",
                         dbname="postgres") as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)
        assert conn.info.host == str(postgres_server.socket_dir)


@pytest.mark.parametrize("run", ["first", "second"])
def test_each_test_gets_a_database_of_its_own(postgres_dsn: str, run: str) -> None:
    """Either order: the later run must neither share the name nor see the earlier run's table."""
    with psycopg.connect(postgres_dsn) as conn:
        (database,) = conn.execute("SELECT current_database()").fetchone()
        assert conn.execute("SELECT to_regclass('public.marker')").fetchone() == (None,)
        conn.execute("CREATE TABLE marker (run text)")
        conn.execute("INSERT INTO marker VALUES (%s)", (run,))
    assert database not in SEEN_DATABASES
    SEEN_DATABASES.append(database)


def test_the_test_databases_are_dropped_afterwards(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.dsn()) as conn:
        names = {name for (name,) in conn.execute("SELECT datname FROM pg_database")}
    assert not set(SEEN_DATABASES) & names
    assert {"postgres", "template0", "template1"} <= names


@pytest.mark.slow
def test_stop_and_start_keep_the_rows_and_the_port() -> None:
    with PostgresServer() as pg:
        dsn = pg.create_database("outage")
        port = pg.port
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total_cents int)")
            conn.execute("INSERT INTO orders SELECT i, i * 100 FROM generate_series(1, 50) AS i")
        pg.stop()
        assert not pg.running
        with pytest.raises(psycopg.OperationalError):  # really down: nothing listens on the port
            psycopg.connect(dsn, connect_timeout=2)
        pg.start()
        assert pg.running and pg.port == port and pg.dsn("outage") == dsn
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*), sum(total_cents) FROM orders").fetchone() == (50, 127500)


@pytest.mark.slow
def test_a_password_server_rejects_a_wrong_password_and_accepts_the_right_one() -> None:
    password = "s3cret pw/:@?#%"  # characters a URI must escape
    with PostgresServer(password=password, durable=True) as pg:
        dsn = pg.dsn()
        assert dsn.startswith("postgresql://meshpos:") and password not in dsn  # escaped, not raw
        assert password not in repr(pg) and pg.password == password
        for wrong in (pg.dsn().replace("s3cret", "wrong"), f"postgresql://meshpos@127.0.0.1:{pg.port}/postgres"):
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(wrong, connect_timeout=5)
        with pytest.raises(psycopg.OperationalError, match="password"):  # the socket is not trusted either
            psycopg.connect(host=str(pg.socket_dir), port=pg.port, user="meshpos", dbname="postgres",
                            password="wrong")
        with psycopg.connect(dsn) as conn:
            assert conn.info.password == password
            assert conn.execute("SELECT current_user, current_setting('fsync')").fetchone() == ("meshpos", "on")
        assert pg.create_database("hq").endswith("/hq")
        with psycopg.connect(pg.dsn("hq")) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("hq",)
        assert not any(path.name == "pwfile" for path in pg.socket_dir.iterdir())


@pytest.mark.slow
def test_leaving_the_block_on_an_error_stops_the_server_and_removes_its_directory() -> None:
    with pytest.raises(ZeroDivisionError), PostgresServer() as pg:
        root, port = pg.socket_dir, pg.port
        assert (root / "data" / "PG_VERSION").is_file()
        1 / 0  # noqa: B018
    assert not root.exists() and not pg.running
    with socket.socket() as probe:  # nobody listens on the port any more
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_missing_binaries_say_how_to_install_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(postgres, "INSTALL_ROOT", tmp_path)
    (tmp_path / "15" / "bin").mkdir(parents=True)  # a version directory without the programs
    with pytest.raises(PostgresUnavailable, match="apt-get install postgresql") as missing:
        PostgresServer()
    assert isinstance(missing.value, RuntimeError)


def test_the_newest_installed_version_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for version in ("9.6", "15", "16", "not-a-version"):
        bindir = tmp_path / version / "bin"
        bindir.mkdir(parents=True)
        for program in ("initdb", "pg_ctl", "postgres"):
            (bindir / program).touch()
    (tmp_path / "17" / "bin").mkdir(parents=True)  # incomplete: no programs
    monkeypatch.setattr(postgres, "INSTALL_ROOT", tmp_path)
    assert postgres.find_bindir() == tmp_path / "16" / "bin"
