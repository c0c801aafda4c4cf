"""``meshpos`` command line: the group, ``run`` (one terminal until a signal) and ``demo``.

The commands that talk to a running terminal live in :mod:`meshpos.cli_client`, the ones that
work on files with no terminal running in :mod:`meshpos.cli_offline`; this module adds them to
the group, so ``meshpos`` and ``python -m meshpos.cli`` see every command.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import anyio
import click

from core.errors import ConfigError
from core.names import TERMINAL_TYPES
from meshpos import cli_client, cli_hq, cli_offline
from meshpos.config import load_config, read_token
from meshpos.documents.host import DamagedDocument
from meshpos.logs import LOG_FORMATS, notify, setup_logging
from meshpos.memory import tune_allocator
from storage.database import DatabaseError
from storage.store import IdentityMismatch

BACKENDS = click.Choice(["asyncio", "trio"])


@click.group()
@click.version_option(package_name="meshpos")
def main() -> None:
    """meshpos: a peer-to-peer terminal mesh for restaurants."""


async def _run_until_signal(config, ready_message: bool = True) -> None:  # noqa: ANN001
    from core.net import bind_socket
    from meshpos.server import serve_api
    from meshpos.terminal import Terminal

    try:
        sock = bind_socket(config.api_host, config.api_port)
    except OSError as exc:
        raise OSError(exc.errno, f"API address {config.api_host}:{config.api_port}: {exc.strerror}") from None

    shutdown = anyio.Event()

    def ready(url: str) -> None:
        if ready_message:
            if terminal.mesh is not None:
                m = terminal.mesh
                print(f"meshpos terminal {config.terminal_id} links on {m.host}:{m.port} "
                      f"(store {m.identity.store_id}, roster v{m.roster.version})", flush=True)
            print(f"meshpos terminal {config.terminal_id} ({config.type}) serving {url}", flush=True)
        notify("READY=1")

    async def serve_then_release() -> None:
        try:
            await serve_api(terminal, shutdown=shutdown, on_ready=ready, sock=sock)
        finally:
            stopped.set()

    stopped = anyio.Event()
    with sock, anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with Terminal(config).running() as terminal, anyio.create_task_group() as tg:
            tg.start_soon(serve_then_release)

            async def wait_signal() -> None:
                async for signum in signals:
                    logging.getLogger("meshpos").info("received %s, stopping", signal.Signals(signum).name)
                    break
                notify("STOPPING=1")
                shutdown.set()

            tg.start_soon(wait_signal)
            await stopped.wait()
            shutdown.set()
            tg.cancel_scope.cancel()


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), help="TOML config file")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="terminal data directory")
@click.option("--terminal-id", help="this terminal's id (fixed for the data directory's life)")
@click.option("--type", "terminal_type", type=click.Choice(TERMINAL_TYPES), help="terminal type")
@click.option("--api-host", help="address of the local API (default 127.0.0.1)")
@click.option("--api-port", type=int, help="port of the local API (default 8700; 0 picks a free one)")
@click.option("--api-token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="file holding the API token callers must present (api_token; a file keeps it out of `ps`)")
@click.option("--api-allowed-origin", "api_allowed_origins", multiple=True, metavar="ORIGIN",
              help="a browser origin besides the terminal's own UI that may call the API (repeatable)")
@click.option("--api-allowed-host", "api_allowed_hosts", multiple=True, metavar="NAME",
              help="a Host name besides localhost/127.0.0.1 that requests may be addressed to (repeatable)")
@click.option("--peer-host", help="address peer links listen on (default 0.0.0.0; enrolled terminals only)")
@click.option("--peer-port", type=int, help="port peer links listen on (default 8710; 0 picks a free one)")
@click.option("--peer", "peers", multiple=True, metavar="HOST:PORT", help="a peer to dial (repeatable)")
@click.option("--hq", "hq", multiple=True, metavar="HOST:PORT",
              help="the chain's HQ over the WAN, to upload to (repeatable; docs/hq.md)")
@click.option("--mdns/--no-mdns", default=None, help="find the store's terminals over mDNS (default on)")
@click.option("--mdns-interface", "mdns_interfaces", multiple=True, metavar="ADDRESS|NAME",
              help="IPv4 address or interface for mDNS (repeatable; default: see docs/operations.md)")
@click.option("--backend", type=BACKENDS, default="asyncio", show_default=True, envvar="MESHPOS_BACKEND")
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True,
              help="json: one JSON object per line (docs/operations.md)")
def run(config_file, data_dir, terminal_id, terminal_type, api_host, api_port, api_token_file,  # noqa: ANN001
        api_allowed_origins, api_allowed_hosts, peer_host, peer_port, peers, hq, mdns, mdns_interfaces, backend,
        log_level, log_format) -> None:
    """Run one terminal until SIGTERM/SIGINT."""
    setup_logging(log_level, log_format)
    tune_allocator()
    try:
        config = load_config(config_file=config_file, overrides={
            "data_dir": data_dir, "terminal_id": terminal_id, "type": terminal_type,
            "api_host": api_host, "api_port": api_port, "api_token": read_token(api_token_file),
            "api_allowed_origins": list(api_allowed_origins) or None,
            "api_allowed_hosts": list(api_allowed_hosts) or None,
            "peer_host": peer_host, "peer_port": peer_port,
            "peers": list(peers) or None, "hq": list(hq) or None,
            "mdns": mdns, "mdns_interfaces": list(mdns_interfaces) or None,
        })
        from meshpos.api_guard import startup_warning

        if (warning := startup_warning(config)) is not None:
            logging.getLogger("meshpos.api").warning(warning)
        anyio.run(_run_until_signal, config, backend=backend)
    except BaseException as exc:  # noqa: BLE001 - anything known becomes one line, the rest propagates
        raise _start_failure(exc) from None



def _start_failure(exc: BaseException) -> BaseException:
    """The one-line error for a terminal that cannot start (unwrapping task-group exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, ConfigError | DatabaseError | IdentityMismatch | DamagedDocument):
        return click.ClickException(str(exc))
    if isinstance(exc, OSError):
        return click.ClickException(f"cannot start: {exc}")
    return exc


@main.command()
@click.option("--backend", type=BACKENDS, default="asyncio", show_default=True)
@click.option("--keep-running/--exit", default=None,
              help="keep serving the API after the script (default: only when run from a terminal)")
@click.option("--api-port", type=int, default=0, show_default=True, help="0 picks a free port")
def demo(backend: str, keep_running: bool | None, api_port: int) -> None:
    """Three terminals of one store on this machine - a POS, a kitchen display and a waiter's
    handheld - enrolled in a throw-away store, finding each other over mDNS and sharing a scripted
    lunch service paid through the POS's drawer; each prints its API address."""
    from meshpos.demo import run_demo

    if keep_running is None:
        keep_running = sys.stdin.isatty()
    logging.basicConfig(level=logging.WARNING)
    anyio.run(run_demo, api_port, keep_running, backend=backend)


for _command in (cli_client.status, cli_client.peers, cli_client.review, cli_client.roster,
                 cli_offline.backup, cli_offline.recover, cli_offline.store, cli_hq.hq):
    main.add_command(_command)


if __name__ == "__main__":
    main()
