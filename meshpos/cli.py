"""``meshpos`` command line: run a terminal, the demo, status and backups."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sqlite3
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import click

from core.errors import ConfigError
from core.names import TERMINAL_TYPES
from meshpos.config import load_config
from meshpos.documents.host import DamagedDocument
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
@click.option("--mdns/--no-mdns", default=None, help="find the store's terminals over mDNS (default on)")
@click.option("--mdns-interface", "mdns_interfaces", multiple=True, metavar="ADDRESS|NAME",
              help="IPv4 address or interface for mDNS (repeatable; default: see docs/operations.md)")
@click.option("--backend", type=BACKENDS, default="asyncio", show_default=True, envvar="MESHPOS_BACKEND")
@click.option("--log-level", default="INFO", show_default=True)
def run(config_file, data_dir, terminal_id, terminal_type, api_host, api_port, api_token_file,  # noqa: ANN001
        api_allowed_origins, api_allowed_hosts, peer_host, peer_port, peers, mdns, mdns_interfaces, backend,
        log_level) -> None:
    """Run one terminal until SIGTERM/SIGINT."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune_allocator()
    try:
        config = load_config(config_file=config_file, overrides={
            "data_dir": data_dir, "terminal_id": terminal_id, "type": terminal_type,
            "api_host": api_host, "api_port": api_port, "api_token": _read_token(api_token_file),
            "api_allowed_origins": list(api_allowed_origins) or None,
            "api_allowed_hosts": list(api_allowed_hosts) or None,
            "peer_host": peer_host, "peer_port": peer_port,
            "peers": list(peers) or None, "mdns": mdns, "mdns_interfaces": list(mdns_interfaces) or None,
        })
        from meshpos.api_guard import startup_warning

        if (warning := startup_warning(config)) is not None:
            logging.getLogger("meshpos.api").warning(warning)
        anyio.run(_run_until_signal, config, backend=backend)
    except BaseException as exc:  # noqa: BLE001 - anything known becomes one line, the rest propagates
        raise _start_failure(exc) from None


def _read_token(path: Path | None) -> str | None:
    """The token file's first line (a trailing newline is not part of the token)."""
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--api-token-file: cannot read {path}: {exc}") from None
    if not token:
        raise ConfigError(f"--api-token-file: {path} is empty")
    return token


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


@dataclass(frozen=True)
class Api:
    """Where a running terminal's API is, and the token it may require (docs/operations.md)."""

    url: str
    token: str | None

    def __str__(self) -> str:
        return self.url


def api_target(command: Callable[..., None]) -> Callable[..., None]:
    """``--api URL`` and ``--api-token-file PATH`` (or ``MESHPOS_API_TOKEN``) for a client command."""
    @functools.wraps(command)
    def wrapper(*args: Any, api: str, api_token_file: Path | None, **kwargs: Any) -> None:
        try:
            token = _read_token(api_token_file) or os.environ.get("MESHPOS_API_TOKEN") or None
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        command(*args, api=Api(api, token), **kwargs)

    wrapper = click.option("--api-token-file", type=click.Path(dir_okay=False, path_type=Path),
                           envvar="MESHPOS_API_TOKEN_FILE",
                           help="file holding the terminal's API token (default: $MESHPOS_API_TOKEN)")(wrapper)
    return click.option("--api", default="http://127.0.0.1:8700", show_default=True,
                        help="terminal API address")(wrapper)


@main.command()
@api_target
def status(api: Api) -> None:
    """Print a running terminal's status."""
    click.echo(json.dumps(_api_call(api, "/api/v1/status"), indent=2))


def _api_call(api: Api, path: str, body: bytes | None = None) -> dict:
    """One JSON call to a running terminal's local API; errors become one line."""
    import urllib.error  # here: ``meshpos run`` never needs an HTTP client (~1.5 MB, docs/performance.md)
    import urllib.request

    headers = {"content-type": "application/json"}
    if api.token is not None:
        headers["authorization"] = f"Bearer {api.token}"
    request = urllib.request.Request(f"{api.url}{path}", data=body, method="POST" if body is not None else "GET",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            detail = json.load(exc)
            message = f"{detail['code']} {detail['message']}"
        except (ValueError, KeyError):
            message = str(exc)
        raise click.ClickException(f"{api} refused: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"no terminal answering at {api}: {exc}") from None


@main.command()
@api_target
@click.option("--json", "as_json", is_flag=True, help="print GET /api/v1/peers as it is")
def peers(api: Api, as_json: bool) -> None:
    """What a running terminal is linked to, what discovery sees, and why a seen terminal is not linked."""
    answer = _api_call(api, "/api/v1/peers")
    click.echo(json.dumps(answer, indent=2) if as_json else peers_report(answer))


def peers_report(status: dict) -> str:
    """The operator's view of ``GET /api/v1/peers`` (one line per terminal)."""
    discovery = status.get("discovery") or {"enabled": False, "seen": []}
    lines = [f"{status['terminal_id']}: store {status['store_id']}, roster v{status['roster_version']}, "
             f"links on {status['listen']}"]
    if not discovery["enabled"]:
        lines.append("mDNS: off (--no-mdns); static peers: " + (", ".join(status["static_peers"]) or "none"))
    else:
        lines.append(f"mDNS: on {', '.join(discovery['addresses'])}, advertised as "
                     f"{discovery['advertised_as'] or '(not yet)'}" + (f"; ERROR {discovery['error']}"
                                                                      if discovery["error"] else ""))
    seen = {(s["store_id"], s["terminal_id"]): s for s in discovery["seen"]}
    lines.append("linked:")
    online = [p for p in status["peers"] if p["online"]]
    for p in online:
        lines.append(f"  {p['terminal_id']:<14} {p['type'] or '?':<8} {p['address'] or '?':<22} since "
                     f"{p['connected_since']}, rtt {p['rtt_ms']} ms, updates in/out "
                     f"{p['updates_in']}/{p['updates_out']}")
    if not online:
        lines.append("  (none)")
    lines.append("not linked:")
    count = len(lines)
    for p in status["peers"]:
        if p["online"]:
            continue
        sighting = seen.pop((status["store_id"], p["terminal_id"]), None)
        if sighting is not None:
            why, where = sighting["why_not_linked"], f"{','.join(sighting['addresses'])}:{sighting['port']}"
        elif p["revoked"]:
            why, where = "revoked", p["address"] or "-"
        elif p["last_error"]:
            why, where = f"{p['last_error']['code']} {p['last_error']['reason']}", p["address"] or "-"
        else:
            why, where = "not seen by discovery and not a static peer", "-"
        lines.append(f"  {p['terminal_id'] or '?':<14} {p['type'] or '?':<8} {where:<22} {why}")
    for (store, tid), sighting in sorted(seen.items()):
        if store == status["store_id"] and sighting["linked"]:
            continue
        where = f"{','.join(sighting['addresses'])}:{sighting['port']}"
        lines.append(f"  {tid:<14} {sighting['type']:<8} {where:<22} {sighting['why_not_linked']}")
    if len(lines) == count:
        lines.append("  (none)")
    if status["refusals"]:
        lines.append("recent refusals:")
        for r in status["refusals"][-5:]:
            lines.append(f"  {r['at']} {r['direction']} {r['address']} ({r['terminal_id'] or '?'}): "
                         f"{r['code']} {r['reason']}")
    return "\n".join(lines)


@main.group()
def review() -> None:
    """The cashier's manual review queue: entries that could not be reconciled automatically."""


@review.command("list")
@api_target
@click.option("--all", "show_all", is_flag=True, help="resolved items too")
@click.option("--json", "as_json", is_flag=True, help="print GET /api/v1/review as it is")
def review_list(api: Api, show_all: bool, as_json: bool) -> None:
    """What waits for a person: each item with both sides and the reason."""
    items = _api_call(api, "/api/v1/review?status=" + ("all" if show_all else "open"))
    click.echo(json.dumps(items, indent=2) if as_json else review_report(items))


def _money(cents: int | None) -> str:
    return "-" if cents is None else f"{cents / 100:.2f}"


def _describe(entry: dict) -> str:
    kind = entry["kind"]
    where = f"by {entry['terminal_id']} at {entry['at']}"
    if kind == "payment":
        what = f"payment {_money(entry['amount_cents'])} {entry['method']} for order {entry['order_id']}"
    elif kind == "drawer_opened":
        what = f"open with float {_money(entry['float_cents'])} ({entry['operator']})"
    elif kind == "drawer_closed":
        what = f"close counted {_money(entry['counted_cents'])}, expected {_money(entry['expected_cents'])}"
    elif kind == "cash_movement":
        what = f"cash {entry['direction']} {_money(entry['amount_cents'])} ({entry['reason']})"
    else:
        what = kind
    return f"#{entry['position']} {what} [op {entry['op_id']}] {where}"


def review_report(items: list[dict]) -> str:
    if not items:
        return "nothing to review"
    lines = []
    for item in items:
        lines.append(f"{item['id']}  {item['status'].upper()}  {item['reason']}")
        lines.append(f"    this side:  {_describe(item['entry'])}")
        for other in item["conflicts_with"]:
            lines.append(f"    other side: {_describe(other)}")
        if item["resolution"]:
            r = item["resolution"]
            lines.append(f"    resolved: {r['decision']} by {r['operator']} at {r['at']}: {r['note']}")
    return "\n".join(lines)


@review.command("resolve")
@click.argument("review_id")
@click.option("--decision", required=True, type=click.Choice(["accept", "reject", "adjust"]))
@click.option("--note", required=True, help="why (kept in the ledger)")
@click.option("--operator", required=True, help="who decides")
@click.option("--amount-cents", type=int, help="the corrected amount (with --decision adjust)")
@api_target
def review_resolve(review_id: str, decision: str, note: str, operator: str, amount_cents: int | None,
                   api: Api) -> None:
    """Record a decision on REVIEW_ID (as listed by 'meshpos review list'); needs the drawer's quorum."""
    body = {"decision": decision, "note": note, "operator": operator}
    if amount_cents is not None:
        body["amount_cents"] = amount_cents
    item = _api_call(api, f"/api/v1/review/{urllib.parse.quote(review_id)}/resolve", json.dumps(body).encode())
    click.echo(review_report([item]))


@main.group()
def roster() -> None:
    """Hand a roster to a running terminal (it travels to the others through the mesh)."""


@roster.command("push")
@click.argument("roster_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@api_target
def roster_push(roster_file: Path, api: Api) -> None:
    """Give ROSTER_FILE (e.g. AUTH_DIR/roster.json after 'meshpos store revoke') to one terminal."""
    answer = _api_call(api, "/api/v1/roster", roster_file.read_bytes())
    click.echo(answer["message"])


@main.command()
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="backup file to create")
def backup(data_dir: Path, out: Path) -> None:
    """Consistent copy of a terminal's database, safe while the terminal runs (restore it with
    'meshpos recover --from')."""
    from storage.database import backup_database

    if not (data_dir / "meshpos.db").exists():
        raise click.ClickException(f"{data_dir} has no meshpos.db")
    if not out.parent.is_dir():
        raise click.ClickException(f"cannot write backup {out}: directory {out.parent} does not exist")
    try:
        backup_database(data_dir / "meshpos.db", out)
    except (DatabaseError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot write backup {out}: {exc}") from None
    click.echo(f"backup written to {out}")


@main.command()
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--from", "source", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="a backup written by 'meshpos backup' to start from (default: what the old database holds)")
@click.option("--terminal-id", help="only for a terminal not enrolled in a store whose old database is unreadable")
@click.option("--type", "terminal_type", type=click.Choice(TERMINAL_TYPES), help="with --terminal-id")
def recover(data_dir: Path, source: Path | None, terminal_id: str | None, terminal_type: str | None) -> None:
    """Start DATA_DIR's database over from what is readable, after the terminal refused to start
    (database missing, damaged or gone back in time) or to restore a backup.  The old file is
    kept aside; the cashier rebuilds what it promised from the other POS voters before it votes."""
    from meshpos.recovery import DB_NAME, identity_of
    from meshpos.recovery import recover as run_recovery

    try:
        config = load_config(overrides={"data_dir": data_dir, "terminal_id": terminal_id, "type": terminal_type})
        who = (config.terminal_id, config.type)
    except ConfigError:
        found = [identity_of(p) for p in (source, data_dir / DB_NAME) if p is not None and p.exists()]
        known = next((f for f in found if f is not None), None)
        if known is None:
            raise click.ClickException(f"{data_dir} is not enrolled and no readable database names its terminal: "
                                       "give --terminal-id and --type") from None
        who = known
    try:
        result = anyio.run(lambda: run_recovery(data_dir, terminal_id=who[0], terminal_type=who[1], source=source))
    except DatabaseError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"recovered {data_dir} for {who[0]} ({who[1]}):")
    for line in result.lines():
        click.echo(f"  {line}")


@main.group()
def store() -> None:
    """The store authority: create it, enroll terminals, revoke them (run off the terminals)."""


def _authority_call(fn):  # noqa: ANN001, ANN202
    from peer.identity import IdentityError

    try:
        return fn()
    except IdentityError as exc:
        raise click.ClickException(str(exc)) from None


@store.command("init")
@click.option("--dir", "auth_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="authority directory to create (keep it off the terminals)")
@click.option("--name", required=True, help="store name, e.g. 'Cantina Centro'")
def store_init(auth_dir: Path, name: str) -> None:
    """Create the store authority: CA key and certificate, roster version 1."""
    from peer.identity import Authority

    auth = _authority_call(lambda: Authority.init(auth_dir, name))
    click.echo(f"store {auth.store_id} ({name}) created in {auth_dir}; roster v{auth.roster.version}")


@store.command("enroll")
@click.option("--dir", "auth_dir", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--terminal-id", required=True)
@click.option("--type", "terminal_type", required=True, type=click.Choice(TERMINAL_TYPES))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="the terminal's data dir")
@click.option("--days", default=5 * 365, show_default=True, type=click.IntRange(1, 30 * 365),
              help="certificate validity")
def store_enroll(auth_dir: Path, terminal_id: str, terminal_type: str, out: Path, days: int) -> None:
    """Write a terminal's key (0600), certificate and the current roster into its data directory."""
    from peer.identity import Authority

    roster = _authority_call(lambda: Authority(auth_dir).enroll(terminal_id, terminal_type, out, days=days))
    click.echo(f"enrolled {terminal_id} ({terminal_type}) into {out}; roster v{roster.version}")


@store.command("revoke")
@click.option("--dir", "auth_dir", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--terminal-id", required=True)
def store_revoke(auth_dir: Path, terminal_id: str) -> None:
    """Issue a newer roster that revokes a terminal; hand it to any running terminal."""
    from peer.identity import Authority

    roster = _authority_call(lambda: Authority(auth_dir).revoke(terminal_id))
    click.echo(f"revoked {terminal_id}: roster v{roster.version} written to {auth_dir / 'roster.json'}")


if __name__ == "__main__":
    main()
