"""The real-process partition runner (simulations/netns.py) and the heal benchmark: ``meshpos
run`` processes in network namespaces, real mDNS, TLS and SQLite, checked through their APIs.

Root is required (each test skips, saying so, otherwise).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from simulations.benchutil import module_command
from tests.meshutil import handhelds_kept_up_through_the_wired_boxes

NETNS = module_command("simulations.netns")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def _namespaces(pid: int) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return re.findall(rf"^(mplab-{pid}-\S+)", listed, re.M)


def _processes_using(path: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-af", str(path)], capture_output=True, text=True, check=False).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


def test_cashier_isolated_with_real_processes_holds_its_checks(tmp_path: Path) -> None:
    """One POS's switch port goes down: it takes payments provisionally; after the heal they are
    committed or in review, and every terminal's API shows the same documents and ledgers."""
    done = subprocess.run([*NETNS, "--scenario", "cashier-isolated", "--terminals", "5",
                           "--seed", "3", "--speed", "2", "--keep", str(tmp_path)],
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["checks"]["ok"] and report["runner"] == "netns", json.dumps(report["checks"], indent=1)
    assert report["payments"]["provisional"] > 0, report["payments"]
    assert report["operations"]["order"] > 10, report["operations"]
    events = [e["event"] for e in report["events"]]
    assert events.index("split") < events.index("heal") < events.index("converged")
    # The lone POS really was cut off: its links died of silence (its log says so).
    assert "closed: 1006 no heartbeat" in (tmp_path / "pos-1.log").read_text(errors="replace")
    assert _namespaces(os.getpid()) == []


def test_wifi_client_isolation_with_real_processes_relays_through_the_wired_boxes(tmp_path: Path) -> None:
    """The handhelds' switch ports become isolated bridge ports: they reach the POS terminals and
    the KDS but not each other, yet get each other's writes through them; all checks hold."""
    done = subprocess.run([*NETNS, "--scenario", "wifi-client-isolation", "--terminals", "6",
                           "--seed", "2", "--speed", "2"], capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["checks"]["ok"], json.dumps(report["checks"], indent=1)
    handhelds_kept_up_through_the_wired_boxes(report)
    assert _namespaces(os.getpid()) == []


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_run_leaves_no_namespaces_or_terminals(tmp_path: Path, how: int) -> None:
    runner = subprocess.Popen([*NETNS, "--scenario", "wan-down-all-day", "--terminals", "3",
                               "--keep", str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert runner.stderr is not None
    seen = []
    deadline = time.monotonic() + 60
    for line in runner.stderr:  # the runner's progress lines
        seen.append(line)
        if "opening synced" in line or time.monotonic() > deadline:
            break
    assert any("opening synced" in line for line in seen), "".join(seen)
    assert _namespaces(runner.pid) and _processes_using(tmp_path), "the run should be under way"
    runner.send_signal(how)
    runner.communicate(timeout=60)
    time.sleep(0.5)  # a SIGKILLed runner's children get their own SIGKILL from the kernel
    assert _processes_using(tmp_path) == []
    if how == signal.SIGKILL:  # nothing could run in the runner: the next run (or --clean) sweeps
        left = _namespaces(runner.pid)
        assert left
        cleaned = subprocess.run([*NETNS, "--clean"], capture_output=True, text=True, check=True)
        assert set(left) <= set(json.loads(cleaned.stdout)["removed"])
        assert _namespaces(runner.pid) == []
    else:
        assert runner.returncode != 0
        assert _namespaces(runner.pid) == []


def test_heal_benchmark_reports_convergence(tmp_path: Path) -> None:
    """A small run of simulations/bench_heal.py (the real figures are in docs/performance.md)."""
    done = subprocess.run(module_command("simulations.bench_heal", "--terminals", "4",
                           "--updates", "300"), capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads(done.stdout)["results"]
    assert result["terminals"] == 4 and result["updates_per_half"] == 300
    assert all(m > 0 for m in result["missing_per_terminal_before_heal"].values())  # really apart
    assert 0 < result["first_link_back_s"] <= result["all_links_back_s"]
    assert result["converged_after_heal_s"] > 0
    # each terminal's own record of its last peer update comes before the poll that found it converged
    assert all(0 < t <= result["seen_by_poll_s"] + 0.01 for t in result["converged_per_terminal_s"].values())
