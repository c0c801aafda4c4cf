"""The partition simulator (simulations/partition/): every named scenario holds its checks,
and one seed is one run, byte for byte.

A short sweep for CI; the long one is in docs/simulations.md.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import trio

from simulations import partition
from simulations.benchutil import module_command
from simulations.partition import propagation
from tests.meshutil import handhelds_kept_up_through_the_wired_boxes


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(partition.SCENARIOS))
def test_scenario_holds_its_checks(scenario: str) -> None:
    report = partition.run(scenario, 6, 1)
    checks = report["checks"]
    assert checks["ok"], json.dumps(checks, indent=1)
    assert report["operations"]["order"] > 20 and report["operations"]["payment"] > 3, report["operations"]
    if scenario == "cashier-isolated":  # the lone POS took payments provisionally; all settled
        assert report["payments"]["provisional"] > 0, report["payments"]
    if scenario == "lunch-rush-kitchen-split":  # the kitchen really fell behind, then caught up
        assert report["peak_missing_updates"] > 50
    if scenario == "wifi-client-isolation":
        handhelds_kept_up_through_the_wired_boxes(report)
    if scenario == "flapping-wifi":  # the lossy radio was on: the report says so
        assert any(e["event"] == "radio" and e["loss"] > 0 for e in report["events"])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(module_command("simulations.partition", *args), capture_output=True, text=True, check=False,
                          timeout=600)


@pytest.mark.slow
def test_one_seed_is_one_run() -> None:
    """The same command prints the same report, byte for byte (Python's hash seed aside)."""
    args = ("--scenario", "flapping-wifi", "--terminals", "5", "--seed", "11")
    first = _cli(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(module_command("simulations.partition", *args), capture_output=True, text=True, check=False,
                           timeout=600, env={**os.environ, "PYTHONHASHSEED": "7"})
    assert again.stdout == first.stdout
    other = _cli("--scenario", "flapping-wifi", "--terminals", "5", "--seed", "12")
    assert json.loads(other.stdout)["state_sha256"] != json.loads(first.stdout)["state_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(partition.SCENARIOS))
def test_short_sweep_of_eight_terminals(scenario: str) -> None:
    """CI's sweep: 4 seeds x 8 terminals per scenario (24 runs), two at a time."""
    done = _cli("--scenario", scenario, "--terminals", "8", "--seed", "100", "--sweep", "4", "--jobs", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert json.loads(done.stdout)["failed"] == [] and "4/4 failed 0" in done.stderr


@pytest.mark.slow
def test_the_plot_draws_the_timeline(tmp_path: Path) -> None:
    out = tmp_path / "run.png"
    done = _cli("--scenario", "cashier-isolated", "--terminals", "4", "--seed", "3", "--plot", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    timeline = json.loads(done.stdout)["timeline"]
    assert timeline["writes"] and timeline["divergence"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(partition.FAULTS))
def test_each_planted_bug_is_caught_by_its_check(fault: str) -> None:
    """An acknowledged write that was not done - stock move, order stage, payment - fails the
    check that watches for it, and only that one; a terminal that stops taking in its peers'
    updates fails convergence and identity (its bug starts while the cashier is cut off: no
    steady change is timed after it); terminals that pass nothing on fail propagation alone:
    the checkers can fail, and say where."""
    planted = partition.FAULTS[fault]
    report = partition.run(planted.scenario, planted.terminals, 2, fault)
    checks = report["checks"]
    assert not checks["ok"]
    assert set(partition.failed(checks)) == set(partition.FAULTS[fault].catches), json.dumps(checks, indent=1)
    assert [e["fault"] for e in report["events"] if e["event"] == "fault"] == [fault]
    if fault == "deaf-kitchen":  # it never converged: the run says so, and what the KDS lacks
        assert report["converged_after_heal_s"] is None
        assert list(checks["converged"]["missing_updates"]) == ["kds-1"]


@pytest.mark.slow
def test_a_failing_run_shrinks_to_the_shortest_that_still_fails() -> None:
    """A sweep with ``--shrink`` turns a failing seed into the fewest terminals and staff
    actions that still fail the same check; one action fewer passes."""
    done = _cli("--scenario", "cashier-isolated", "--terminals", "5", "--seed", "2", "--sweep", "1",
                "--inject", "lose-stock-move", "--shrink")
    assert done.returncode == 1, done.stderr[-2000:]
    [failure] = json.loads(done.stdout)["failed"]
    assert failure["failed"] == ["stock_equals_acknowledged_moves"]
    shrunk = failure["shrunk"]
    assert shrunk["terminals"] < 5 and 0 < shrunk["ops"] < failure["actions"], failure
    command = "python -m simulations.partition "
    assert shrunk["repro"].startswith(command)
    again = _cli(*shrunk["repro"].removeprefix(command).split())
    assert again.returncode == 1
    assert partition.failed(json.loads(again.stdout)["checks"]) == ["stock_equals_acknowledged_moves"]
    one_fewer = shrunk["repro"].replace(f"--ops {shrunk['ops']}", f"--ops {shrunk['ops'] - 1}")
    assert _cli(*one_fewer.removeprefix(command).split()).returncode == 0


def test_a_trio_without_its_private_scheduler_hooks_is_refused_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """One seed is one run only while trio's scheduler takes the seed: if a trio release moves
    the private hooks, the simulator must say so rather than run unseeded."""
    monkeypatch.delattr(trio._core._run, "_r")  # noqa: SLF001
    with pytest.raises(RuntimeError, match="_ALLOW_DETERMINISTIC_SCHEDULING"):
        partition.run("cashier-isolated", 3, 1)


def test_the_hq_checker_catches_what_the_hq_lost_or_mislabelled() -> None:
    """``checks.hq`` fails on each way an HQ can be wrong, and passes on the truth."""
    from simulations.partition.checks import check_hq
    from simulations.partition.workload import Tally

    tally = Tally(orders={"o1": {"open", "sent"}, "o2": {"open"}},
                  payments={"p1@pos-1": ("d", "committed"), "p2@pos-2": ("d", "provisional")})
    entries = [{"position": 0, "kind": "drawer_opened", "op_id": "open-1", "status": "committed"},
               {"position": 1, "kind": "payment", "op_id": "p1@pos-1", "status": "committed"},
               {"position": 2, "kind": "payment", "op_id": "p2@pos-2", "status": "committed",
                "resolution": {"decision": "adjust"}}]
    observed = [{"drawers": {"d": {"entries": entries, "provisional": []}}}]
    truth = {"orders": {"o1": ["open", "sent"], "o2": ["open"]},
             "ledgers": {"d": {0: "open-1", 1: "p1@pos-1", 2: "p2@pos-2"}},
             "payments": {("d", 1): "committed", ("d", 2): "adjusted"}, "conflicts": 0,
             "provisional": {("d", "pos-2", "p2@pos-2"): 2}}
    assert check_hq(tally, observed, ["d"], truth)["ok"]
    wrong = [
        {**truth, "orders": {"o1": ["open"], "o2": ["open"]}},  # a stage lost
        {**truth, "orders": {"o1": ["open", "sent"]}},  # an order lost
        {**truth, "ledgers": {"d": {0: "open-1", 1: "p1@pos-1"}}},  # an entry lost
        {**truth, "ledgers": {"d": {0: "open-1", 1: "p1@pos-1", 2: "p2@pos-2", 3: "p1@pos-1"}}},  # twice
        {**truth, "payments": {("d", 1): "committed", ("d", 2): "committed"}},  # resolution not shown
        {**truth, "conflicts": 1},
        {**truth, "provisional": {("d", "pos-2", "p2@pos-2"): None}},  # never settled
        {**truth, "provisional": {("d", "pos-2", "p2@pos-2"): 1}},  # settled at another entry
        {**truth, "provisional": {("d", "pos-2", "p2@pos-2"): 2, ("d", "pos-1", "p1@pos-1"): 1}},  # was never one
    ]
    for hq in wrong:
        assert not check_hq(tally, observed, ["d"], hq)["ok"], hq


def test_real_process_arrivals_are_steady_only_between_settled_topology_changes() -> None:
    """simulations/netns.py's propagation: a change counts against the bound only when made
    while the LAN was whole, every terminal up, the links sampled connected, 5 s after the last
    change of topology, and everywhere before the next."""
    every = {"a", "b", "c"}
    marks = [{"t": 0.0, "event": "linked"}, {"t": 1.0, "event": "links", "connected": True},
             {"t": 10.0, "event": "split"}, {"t": 20.0, "event": "heal"},
             {"t": 21.0, "event": "links", "connected": False}, {"t": 24.5, "event": "links", "connected": True},
             {"t": 30.0, "event": "radio", "applied": False}, {"t": 40.0, "event": "crash", "terminal": "c"}]
    changes = [("a", 6.0, {"a": 6.0, "b": 6.002, "c": 6.004}),      # steady
               ("a", 9.99, {"a": 9.99, "b": 9.995, "c": 10.5}),     # the split came first
               ("b", 12.0, {"b": 12.0, "a": 12.001, "c": 20.3}),    # during the split
               ("b", 24.0, {"b": 24.0, "a": 24.001, "c": 24.002}),  # links not back yet at the sample
               ("c", 26.0, {"c": 26.0, "a": 26.01, "b": 26.02}),    # steady (a radio not applied)
               ("c", 3.0, {"c": 3.0, "a": 3.001})]                  # b never got it
    delays = propagation.from_arrivals(changes, marks, every)
    steady = {(round(at, 3), round(d * 1000)) for at, d, s in delays if s}
    assert steady == {(6.0, 2), (6.0, 4), (26.0, 10), (26.0, 20)}
    assert len(delays) == 11  # every arrival but the writers' own is reported
    result = propagation.check(delays, 0, bound=0.015, p99_bound=0.05)
    assert not result["ok"] and result["over_bound"] == 1 and result["p99_ms"] == 20.0
    assert propagation.links_connected({"a": {"b"}, "b": {"a", "c"}, "c": {"b"}})
    assert not propagation.links_connected({"a": {"b"}, "b": {"a"}, "c": set()})
