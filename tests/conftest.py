"""Shared fixtures: every async test runs on asyncio and on trio, against real SQLite files."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest

from meshpos.config import TerminalConfig
from meshpos.server import serve_api
from meshpos.terminal import Terminal
from simulations.jsdeps import ensure_node_modules, node_missing
from simulations.postgres import PostgresServer, PostgresUnavailable, find_bindir


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., TerminalConfig]:
    def make(terminal_id: str = "pos-1", **kw: object) -> TerminalConfig:
        kw.setdefault("data_dir", tmp_path / terminal_id)
        kw.setdefault("api_port", 0)
        return TerminalConfig(terminal_id=terminal_id, **kw)  # type: ignore[arg-type]

    return make


@asynccontextmanager
async def serving(config: TerminalConfig) -> AsyncIterator[tuple[Terminal, httpx.AsyncClient]]:
    """A running terminal with its API on a real loopback socket, and a client for it."""
    async with Terminal(config).running() as terminal, anyio.create_task_group() as tg:
        shutdown = anyio.Event()
        ready = anyio.Event()
        urls: list[str] = []

        def on_ready(url: str) -> None:
            urls.append(url)
            ready.set()

        tg.start_soon(lambda: serve_api(terminal, shutdown=shutdown, on_ready=on_ready))
        await ready.wait()
        async with httpx.AsyncClient(base_url=urls[0], timeout=10) as client:
            try:
                yield terminal, client
            finally:
                shutdown.set()


@pytest.fixture
def served(make_config: Callable[..., TerminalConfig]):  # noqa: ANN201
    """``async with served() as (terminal, client)`` - a terminal serving on 127.0.0.1."""

    def factory(**kw: object):  # noqa: ANN202
        return serving(make_config(**kw))

    return factory


BURGER = {"sku": "burger", "name": "Burger", "qty": 2, "unit_price_cents": 1590, "station": "grill"}


# The subprocess fixture lives with the process tests; the mesh process tests use it too.
from tests.procutil import launch  # noqa: E402, F401


@pytest.fixture(scope="session")
def node_modules() -> None:
    """Node and js/'s locked npm packages (``npm ci`` the first time); without Node the test
    skips - unless MESHPOS_REQUIRE_NODE is set (CI installs it), where it fails."""
    if (missing := node_missing()) is not None:
        if os.environ.get("MESHPOS_REQUIRE_NODE"):
            pytest.fail(missing)
        pytest.skip(missing)
    ensure_node_modules()


# -- real PostgreSQL (simulations/postgres.py) ---------------------------------------------------


@pytest.fixture(scope="session")
def postgres_binaries() -> None:
    """The PostgreSQL server programs are here (for tests whose subprocess starts its own server).
    Without them the tests that need them skip - unless MESHPOS_REQUIRE_POSTGRES is set (CI),
    where they fail."""
    try:
        find_bindir()
    except PostgresUnavailable as missing:
        if os.environ.get("MESHPOS_REQUIRE_POSTGRES"):
            pytest.fail(f"MESHPOS_REQUIRE_POSTGRES is set but {missing}")
        pytest.skip(str(missing))


@pytest.fixture(scope="session")
def postgres_server(postgres_binaries: None) -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (fsync off)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """The DSN of a fresh, empty database of its own for this test (dropped afterwards)."""
    name = f"t_{secrets.token_hex(8)}"
    dsn = postgres_server.create_database(name)
    yield dsn
    if postgres_server.running:
        postgres_server.drop_database(name)
