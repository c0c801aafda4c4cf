"""``meshpos`` commands that work on files with no terminal running: a backup, a recovery of a
data directory, and the store authority (create it, enroll and revoke terminals).

The authority's commands run off the terminals (docs/operations.md, "Enrollment"); the backup and
the recovery run beside a terminal or instead of it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import click

from core.errors import ConfigError
from core.names import ENROLLABLE_TYPES, TERMINAL_TYPES
from meshpos.config import load_config
from storage.database import DatabaseError


@click.command()
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


@click.command()
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


@click.group()
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
@click.option("--type", "terminal_type", required=True, type=click.Choice(ENROLLABLE_TYPES))
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
