"""Running as a service: ``--log-format json``, systemd's readiness notification from a real
``meshpos run`` process, and the unit file shipped in docs/systemd/."""

from __future__ import annotations

import configparser
import json
import logging
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from meshpos.logs import JsonLines
from tests.procutil import Proc, clean_env, run_cli

UNIT = Path(__file__).resolve().parent.parent / "docs" / "systemd" / "meshpos.service"
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_a_json_line_carries_the_traceback() -> None:
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        record = logging.LogRecord("meshpos.storage", logging.ERROR, __file__, 1, "commit failed: %s", ("x",),
                                   sys.exc_info())
    line = json.loads(JsonLines().format(record))
    assert set(line) == {"at", "level", "logger", "message", "exception"}
    assert line["level"] == "ERROR" and line["logger"] == "meshpos.storage"
    assert line["message"] == "commit failed: x" and ISO_UTC.fullmatch(line["at"])
    assert "RuntimeError: disk on fire" in line["exception"]


@pytest.mark.slow
def test_run_tells_systemd_it_serves_and_logs_json(launch: Callable[..., Proc], tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.settimeout(20)
    with listener:
        proc = launch(tmp_path / "pos-1", extra=["--api-port", "0", "--log-format", "json", "--log-level", "debug"],
                      env=clean_env(NOTIFY_SOCKET=str(tmp_path / "notify")))
        assert listener.recv(64) == b"READY=1"  # sent once the API serves (the ready line was printed)
        assert proc.stop() == 0
        assert listener.recv(64) == b"STOPPING=1"
    lines = [json.loads(line) for line in proc.stderr().splitlines() if line.strip()]  # every line is JSON
    assert lines, "the terminal logged nothing"
    for line in lines:
        assert {"at", "level", "logger", "message"} <= set(line) and ISO_UTC.fullmatch(line["at"])
    assert {"level": "INFO", "logger": "meshpos", "message": "received SIGTERM, stopping"}.items() <= next(
        line for line in lines if line["message"].startswith("received")).items()


def test_an_unknown_log_format_is_refused(tmp_path: Path) -> None:
    result = run_cli("run", "--data-dir", str(tmp_path / "x"), "--terminal-id", "pos-1", "--log-format", "xml")
    assert result.returncode == 2 and "'xml' is not one of 'text', 'json'" in result.stderr


def test_the_unit_file_runs_the_terminal_the_way_the_cli_takes_it() -> None:
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read(UNIT)
    service = unit["Service"]
    assert service["Type"] == "notify" and service["Restart"] == "always" and service["User"] == "meshpos"
    program, command, *options = shlex.split(service["ExecStart"])
    assert program.endswith("/bin/meshpos") and command == "run"
    help_text = run_cli("run", "--help").stdout
    for option in options:
        if option.startswith("--"):
            assert option in help_text, f"{option} is not an option of meshpos run"
    assert options[options.index("--log-format") + 1] == "json"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_reads_the_unit_file_without_a_complaint(tmp_path: Path) -> None:
    meshpos = Path(sys.executable).parent / "meshpos"  # the installed entry point stands in for /opt's
    assert meshpos.exists(), f"{meshpos}: the project is not installed in this environment"
    unit = tmp_path / "meshpos.service"
    unit.write_text(UNIT.read_text().replace("/opt/meshpos/.venv/bin/meshpos", str(meshpos)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
