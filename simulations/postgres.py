"""Throwaway PostgreSQL servers for tests and benchmarks: real ``postgres`` processes, no mocks.

    with PostgresServer() as pg:
        dsn = pg.create_database("orders")   # postgresql://meshpos@127.0.0.1:PORT/orders

Each server is its own cluster in a temporary directory (``initdb``, then ``pg_ctl start``),
listening on 127.0.0.1 on a free port and on a unix socket in that directory; leaving the
``with`` block stops it and removes the directory, also when the block fails.  ``stop()`` and
``start()`` keep the data and the port, so a test can take "the database" down and bring it
back the way an outage would.

Why the binaries come from /usr/lib/postgresql/<version>/bin: that is where Debian's
``postgresql`` package puts the real programs (/usr/bin has only wrappers that pick a cluster of
the system's own); the newest version found wins.  Why ``postgres`` runs as the ``postgres``
system user when we are root: initdb and pg_ctl refuse to run as root, so the directory is
handed to that user and the programs run under its uid, gid and no supplementary groups.

Why fsync is off by default: a test cluster dies with the test, and without fsync a commit costs
no disk flush - tests run several times faster.  ``durable=True`` keeps fsync, synchronous
commit and full-page writes on, for benchmarks whose numbers must include the flush a real
server pays.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from psycopg import sql

USER = "meshpos"  # the cluster's superuser, the one every DSN names
INSTALL_ROOT = Path("/usr/lib/postgresql")
SYSTEM_USER = "postgres"  # who runs initdb/pg_ctl/postgres when we are root
START_TIMEOUT = 30  # seconds pg_ctl waits for the server to accept connections
STOP_TIMEOUT = 30
_DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

# Fast-test settings: no flush on commit, no full-page images, the least WAL there is.
_FAST = ["-F", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
         "-c", "wal_level=minimal", "-c", "max_wal_senders=0"]
# Both kinds: enough connections for pools under test, the buffers a small real server has.
_COMMON = ["-c", "max_connections=200", "-c", "shared_buffers=128MB"]


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine (the fixtures skip or fail on exactly this)."""


def find_bindir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb, pg_ctl and postgres."""
    found: list[tuple[tuple[int, ...], Path]] = []
    for bindir in INSTALL_ROOT.glob("*/bin"):
        version = bindir.parent.name
        complete = all((bindir / program).is_file() for program in ("initdb", "pg_ctl", "postgres"))
        if complete and re.fullmatch(r"\d+(\.\d+)*", version):
            found.append((tuple(int(part) for part in version.split(".")), bindir))
    if not found:
        raise PostgresUnavailable(
            f"no PostgreSQL server binaries under {INSTALL_ROOT}/<version>/bin; "
            "install them with: apt-get install postgresql"
        )
    return max(found)[1]


def _free_port() -> int:
    """A loopback port nobody listens on right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """One throwaway PostgreSQL cluster; a context manager (``with`` starts it, leaving removes it).

    ``password``: when given the cluster requires it (scram-sha-256 on the socket and on TCP) and
    every DSN carries it; by default anyone local gets in (trust).  ``durable``: keep fsync on.
    """

    def __init__(self, *, password: str | None = None, durable: bool = False, bindir: Path | None = None,
                 prefix: str = "meshpos-pg-") -> None:
        """``prefix``: of the temporary directory's name (a runner that may be SIGKILLed names its
        own, so that the next run finds the cluster it left: :func:`remove_cluster`)."""
        self.bindir = bindir if bindir is not None else find_bindir()
        self.durable = durable
        self.prefix = prefix
        self._password = password
        self._root: Path | None = None  # the temporary directory: data/, the log, the socket
        self._port: int | None = None
        self._running = False
        self._as_user: dict[str, Any] = {}  # subprocess.run's user/group/extra_groups when root

    def __repr__(self) -> str:  # never the password
        state = "running" if self._running else "stopped"
        return f"<PostgresServer {self.bindir.parent.name} port={self._port} {state}>"

    # -- where it is ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server has not been started yet")
        return self._port

    @property
    def socket_dir(self) -> Path:
        """The directory of the unix socket (libpq: ``host=<socket_dir>``)."""
        return self._dir()

    @property
    def data_dir(self) -> Path:
        return self._dir() / "data"

    @property
    def log_path(self) -> Path:
        return self._dir() / "postgres.log"

    @property
    def password(self) -> str | None:
        """The cluster's password (None: trust) - for tests that check it never shows up in logs."""
        return self._password

    @property
    def running(self) -> bool:
        return self._running

    def dsn(self, dbname: str = "postgres") -> str:
        """The libpq URI of database ``dbname`` over TCP, password included when there is one."""
        auth = USER if self._password is None else f"{USER}:{quote(self._password, safe='')}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def socket_dsn(self, dbname: str = "postgres") -> str:
        """The same over the unix socket: a socket is a file, so a process in another network
        namespace of this machine reaches it where 127.0.0.1 would be its own loopback."""
        auth = USER if self._password is None else f"{USER}:{quote(self._password, safe='')}"
        return f"postgresql://{auth}@/{quote(dbname, safe='')}?host={quote(str(self.socket_dir))}&port={self.port}"

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server; the first call creates the cluster, later ones reuse data and port."""
        if self._running:
            return
        if self._root is None:
            self._create_cluster()
        if self._port is not None:
            self._pg_ctl_start()
            return
        for attempt in range(3):  # the free port can be taken between the probe and the bind
            self._port = _free_port()
            try:
                self._pg_ctl_start()
                return
            except RuntimeError:
                if attempt == 2 or "could not bind" not in self._log_tail():
                    raise

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are cut off); the data stays."""
        if not self._running:
            return
        self._run([self.bindir / "pg_ctl", "stop", "-D", self.data_dir, "-m", "fast", "-w", "-t", str(STOP_TIMEOUT)])
        self._running = False

    def close(self) -> None:
        """Stop the server if it runs and remove its directory - even when stopping fails."""
        try:
            if self._running:
                try:
                    self.stop()
                except RuntimeError:
                    self._kill()
                    raise
        finally:
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
                self._root = None
            self._running = False

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- databases ------------------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create database ``name`` (a plain identifier) and return its DSN."""
        from psycopg import sql

        self._execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self._checked(name))))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, cutting off whoever is still connected to it."""
        from psycopg import sql

        self._execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self._checked(name))))

    # -- internals ------------------------------------------------------------------------------

    def _dir(self) -> Path:
        if self._root is None:
            raise RuntimeError("the server has not been started yet")
        return self._root

    @staticmethod
    def _checked(name: str) -> str:
        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(f"not a plain database name: {name!r}")
        return name

    def _execute(self, statement: sql.Composable) -> None:
        import psycopg  # here, not at the top: conftest.py imports this module in every test session

        with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(statement)

    def _create_cluster(self) -> None:
        root = Path(tempfile.mkdtemp(prefix=self.prefix))
        self._root = root
        if os.geteuid() == 0:
            account = pwd.getpwnam(SYSTEM_USER)  # KeyError is clear enough: the package creates it
            os.chown(root, account.pw_uid, account.pw_gid)
            self._as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        command: list[str | Path] = [self.bindir / "initdb", "-D", self.data_dir, "-U", USER, "-E", "UTF8",
                                     "--no-locale", "--no-sync", "--no-instructions"]
        if self._password is None:
            command += ["-A", "trust"]
            self._run(command)
            return
        pwfile = root / "pwfile"  # read by initdb (as the postgres user), removed right after
        pwfile.write_text(self._password + "\n")
        pwfile.chmod(0o600)
        if self._as_user:
            os.chown(pwfile, self._as_user["user"], self._as_user["group"])
        try:
            self._run([*command, "-A", "scram-sha-256", "--pwfile", pwfile])
        finally:
            pwfile.unlink(missing_ok=True)

    def _pg_ctl_start(self) -> None:
        options = ["-k", str(self.socket_dir), "-p", str(self.port), "-h", "127.0.0.1", *_COMMON]
        if not self.durable:
            options += _FAST
        self._run([self.bindir / "pg_ctl", "start", "-D", self.data_dir, "-l", self.log_path, "-w",
                   "-t", str(START_TIMEOUT), "-o", shlex.join(options)])
        self._running = True

    def _run(self, command: list[str | Path]) -> None:
        """Run one of the cluster programs as the right user; failures carry its output and the log."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # no PGDATA/PGPORT from outside
        env.update(LC_ALL="C", LANG="C", HOME=str(self._dir()))
        done = subprocess.run(
            [str(part) for part in command], cwd=self._dir(), env=env, capture_output=True, text=True,
            check=False, **self._as_user,
        )
        if done.returncode != 0:
            program = Path(command[0]).name
            label = f"{program} {command[1]}" if program == "pg_ctl" else program
            output = f"{done.stdout}{done.stderr}{self._log_tail()}"
            raise RuntimeError(f"{label} failed (exit {done.returncode}):\n{output}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except (OSError, RuntimeError):
            return ""
        return "--- postgres.log (tail) ---\n" + "\n".join(tail)

    def _kill(self) -> None:
        """Last resort when pg_ctl cannot stop it."""
        _kill_postmaster(self.data_dir)


def _kill_postmaster(data_dir: Path) -> None:
    """SIGQUIT, then SIGKILL, the postmaster of ``data_dir``'s postmaster.pid (its backends end
    when it does)."""
    with contextlib.suppress(OSError, ValueError, RuntimeError):
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # OSError once it is gone
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


def remove_cluster(root: Path) -> None:
    """A :class:`PostgresServer` directory whose owner died without closing it (SIGKILL): its
    server stopped, the directory removed."""
    _kill_postmaster(root / "data")
    shutil.rmtree(root, ignore_errors=True)
