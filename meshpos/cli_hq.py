"""``meshpos hq run``: an HQ process (docs/hq.md).  Imports the HQ (and psycopg) only when run."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import anyio
import click

from core.errors import ConfigError, StoreError
from core.names import parse_address
from core.net import bind_socket
from meshpos.config import TerminalConfig, read_token
from meshpos.logs import LOG_FORMATS, notify, setup_logging

BACKENDS = click.Choice(["asyncio", "trio"])


@click.group()
def hq() -> None:
    """The chain's HQ: lands every store's documents and ledgers in PostgreSQL."""


@hq.command("run")
@click.option("--postgres", "dsn", envvar="MESHPOS_HQ_POSTGRES", required=True, metavar="DSN",
              help="PostgreSQL connection string (or MESHPOS_HQ_POSTGRES; a password in it is never logged)")
@click.option("--enrollment", "enrollments", multiple=True, required=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="an HQ enrollment directory written by a store's `meshpos store enroll --type hq` (repeatable)")
@click.option("--listen", default="0.0.0.0:8720", show_default=True, metavar="HOST:PORT",
              help="where the stores' terminals link to (port 0 picks a free one)")
@click.option("--api-host", default="127.0.0.1", show_default=True, help="address of the HQ API")
@click.option("--api-port", type=int, default=8730, show_default=True, help="port of the HQ API (0 picks a free one)")
@click.option("--api-token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="file holding the token HQ API callers must present (required off loopback)")
@click.option("--process-name", default=None, help="this process's name in the record (default host:random)")
@click.option("--backend", type=BACKENDS, default="asyncio", show_default=True, envvar="MESHPOS_BACKEND")
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True,
              help="json: one JSON object per line (docs/operations.md)")
def hq_run(dsn: str, enrollments: tuple[Path, ...], listen: str, api_host: str, api_port: int,
           api_token_file: Path | None, process_name: str | None, backend: str, log_level: str,
           log_format: str) -> None:
    """Serve the stores of the given enrollments until SIGTERM/SIGINT."""
    setup_logging(log_level, log_format)
    try:
        host, port = parse_address(listen) if not listen.endswith(":0") else (listen[:-2].strip("[]"), 0)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    from meshpos.hq_api import access  # the HQ and psycopg load only here: a terminal never needs them

    try:
        settings = access(api_host, api_port, read_token(api_token_file) or os.environ.get("MESHPOS_HQ_API_TOKEN"))
        settings.validate_api_access()
        anyio.run(_serve, dsn, list(enrollments), host, port, process_name, settings, backend=backend)
    except BaseException as exc:  # noqa: BLE001 - anything known becomes one line
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if isinstance(exc, ConfigError | StoreError):
            raise click.ClickException(str(exc)) from None
        raise


async def _serve(dsn: str, enrollments: list[Path], host: str, port: int, process: str | None,
                 settings: TerminalConfig) -> None:
    from meshpos.hq.service import Hq
    from meshpos.hq_api import serve_hq_api

    try:
        sock = bind_socket(settings.api_host, settings.api_port)
    except OSError as exc:
        raise ConfigError(f"HQ API address {settings.api_host}:{settings.api_port}: {exc.strerror}") from None
    hq_process = Hq(dsn=dsn, enrollments=enrollments, listen_host=host, listen_port=port, process=process)
    shutdown = anyio.Event()
    with sock, anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with hq_process.running(), anyio.create_task_group() as tg:
            api_port = sock.getsockname()[1]
            tg.start_soon(lambda: serve_hq_api(hq_process, sock, settings, shutdown=shutdown))
            stores = ", ".join(f"{s} ({side.mesh.roster.store_name})" for s, side in hq_process.stores.items())
            print(f"meshpos hq {hq_process.process} (pid {os.getpid()}) links on {host}:{hq_process.port} "
                  f"for {stores}; API http://{settings.api_host}:{api_port}; PostgreSQL {hq_process.db.shown}",
                  flush=True)
            notify("READY=1")
            async for signum in signals:
                logging.getLogger("meshpos.hq").info("received %s, stopping", signal.Signals(signum).name)
                break
            notify("STOPPING=1")
            shutdown.set()
