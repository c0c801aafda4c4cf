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
import tempfile
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


def _pg_clusters(pid: int) -> list[Path]:
    """The PostgreSQL directories of lab run ``pid`` (simulations.netlab.pg_prefix)."""
    return sorted(Path(tempfile.gettempdir()).glob(f"mplab-{pid}-pg-*"))


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
    # the lone POS kept its WAN uplink: its provisional payments went up, and settled
    hq = report["checks"]["hq"]
    assert hq["provisional_uploaded"] == report["payments"]["provisional"] and not hq["provisional_not_settled"], hq
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


def _hq_links(report: dict, tid: str) -> list[dict]:
    """``tid``'s WAN sync log, oldest link first."""
    return list(reversed(report["hq_sync_log"][tid]))


def test_wan_down_all_day_with_real_processes_lands_the_day_at_hq_after_close(
        tmp_path: Path, postgres_binaries: None) -> None:
    """``meshpos hq run`` across a WAN bridge, PostgreSQL of its own: the line goes down at the
    opening, the day runs on the LAN (the kitchen reboots), and once it is back after close the
    HQ holds every acknowledged order and every committed payment, each once."""
    done = subprocess.run([*NETNS, "--scenario", "wan-down-all-day", "--terminals", "4",
                           "--seed", "2", "--speed", "4", "--keep", str(tmp_path)],
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["checks"]["ok"], json.dumps(report["checks"], indent=1)
    hq = report["checks"]["hq"]
    assert hq["orders_landed"] == report["operations"]["order"] > 5, (hq, report["operations"])
    assert "wan_with_hq" not in report["not_simulated"]
    back = []  # the link each terminal opened once the line was back
    for tid in ("pos-1", "pos-2", "pos-3"):  # (the kitchen rebooted: its log starts again)
        first, *rest = _hq_links(report, tid)
        assert first["close"]["code"] == 1006, first  # the line went: the link died of silence
        assert len(rest) == 1 and rest[0]["closed_at"] is None, rest  # none while it was down
        back.append(rest[0])
    assert any(e["updates_up"] > 0 for e in back), back  # the day went up over them
    assert "linked to hq-1 (hq) at 10.212.0.1:8720" in (tmp_path / "pos-1.log").read_text(errors="replace")
    assert _namespaces(os.getpid()) == []


def test_wan_flapping_evening_rush_with_real_processes_lands_each_upload_once(
        tmp_path: Path, postgres_binaries: None) -> None:
    """The line drops 5 s of every 13 during the rush (real time: a link outlives less than its
    3.5 s heartbeat): each time it is back every terminal links again and uploads at once - the
    same changes and ledger relays from several boxes - and the HQ lands each once."""
    done = subprocess.run([*NETNS, "--scenario", "wan-flapping-evening-rush", "--terminals", "4",
                           "--seed", "1"], capture_output=True, text=True, check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["checks"]["ok"], json.dumps(report["checks"], indent=1)
    hq = report["checks"]["hq"]
    assert hq["ledger_conflicts"] == 0 and hq["orders_landed"] == report["operations"]["order"] > 20, hq
    assert report["payments"]["committed"] > 5, report["payments"]
    uploads: dict[int, set[str]] = {}  # link number -> the terminals that sent updates on it
    for tid in report["hq_sync_log"]:
        links = _hq_links(report, tid)
        assert sum(1 for e in links if e["close"] and e["close"]["code"] == 1006) >= 4, links
        for k, e in enumerate(links):
            if e["updates_up"]:
                uploads.setdefault(k, set()).add(tid)
    assert max(len(who) for who in uploads.values()) >= 2, uploads  # two terminals uploaded at once
    assert _namespaces(os.getpid()) == []


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_run_leaves_no_namespaces_or_terminals(tmp_path: Path, how: int,
                                                              postgres_binaries: None) -> None:
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
    assert _pg_clusters(runner.pid) and _processes_using(_pg_clusters(runner.pid)[0]), "and its HQ's PostgreSQL"
    runner.send_signal(how)
    runner.communicate(timeout=60)
    time.sleep(0.5)  # a SIGKILLed runner's children get their own SIGKILL from the kernel
    assert _processes_using(tmp_path) == []
    if how == signal.SIGKILL:  # nothing could run in the runner: the next run (or --clean) sweeps
        left = _namespaces(runner.pid)
        (cluster,) = _pg_clusters(runner.pid)  # PostgreSQL is no child of the runner's: it stays
        assert left and _processes_using(cluster)
        cleaned = subprocess.run([*NETNS, "--clean"], capture_output=True, text=True, check=True)
        assert set(left) | {cluster.name} <= set(json.loads(cleaned.stdout)["removed"])
        assert _namespaces(runner.pid) == [] and _pg_clusters(runner.pid) == []
        time.sleep(0.5)
        assert _processes_using(cluster) == []
    else:
        assert runner.returncode != 0
        assert _namespaces(runner.pid) == [] and _pg_clusters(runner.pid) == []


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


def test_forwarding_benchmark_times_every_arrival_on_both_topologies() -> None:
    """A small run of simulations/bench_forwarding.py (the real figures are in docs/performance.md)."""
    done = subprocess.run(module_command("simulations.bench_forwarding", "--samples", "6"), capture_output=True,
                          text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    isolation, line = json.loads(done.stdout)
    assert (isolation["topology"], isolation["arrivals_timed"]) == ("isolation", 12)  # 2 other handhelds each
    assert (line["topology"], line["arrivals_timed"]) == ("line", 6)
    for result in (isolation, line):
        assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
        assert result["frames_in_per_arrival"] >= 1 and result["bytes_in_per_arrival"] > 0
