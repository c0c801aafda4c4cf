"""The regression guard CI runs at every landing (simulations/bench_quick.py): it measures, and a
figure past its tolerance fails the run."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from simulations import bench_quick
from simulations.benchutil import module_command


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return bench_quick


def test_a_figure_past_its_tolerance_is_a_regression_and_one_far_below_an_improvement(bench: ModuleType) -> None:
    baseline = {"import_cpu_s": 0.2, "trio": {"idle_rss_mb": 40.0, "adjust_cpu_s_per_1000": 0.1,
                                               "adjust_bytes_per_update": 42.0}, "cpu_count": 2}
    assert bench.compare(copy.deepcopy(baseline), baseline) == ([], [])
    within = {"import_cpu_s": 0.25, "trio": {"idle_rss_mb": 43.9, "adjust_cpu_s_per_1000": 0.124,
                                            "adjust_bytes_per_update": 44.0}, "cpu_count": 4}
    assert bench.compare(within, baseline) == ([], [])  # cpu_count is not a figure
    past = {"import_cpu_s": 0.27, "trio": {"idle_rss_mb": 44.1, "adjust_cpu_s_per_1000": 0.126,
                                          "adjust_bytes_per_update": 44.2}}
    worse, better = bench.compare(past, baseline)
    assert [line.split(":")[0] for line in worse] == ["import_cpu_s", "trio.idle_rss_mb",
                                                      "trio.adjust_cpu_s_per_1000", "trio.adjust_bytes_per_update"]
    assert better == [] and "baseline 40.0, +10 %" in worse[1]
    worse, better = bench.compare({"trio": {"idle_rss_mb": 30.0}}, baseline)
    assert worse == [] and better == ["trio.idle_rss_mb: 30.0 (baseline 40.0, -25 %)"]
    # A figure the baseline does not have (a new measure) is neither.
    assert bench.compare({"asyncio": {"idle_rss_mb": 99.0}}, baseline) == ([], [])


def test_cpu_is_judged_in_units_of_the_reference_work_and_memory_is_not(bench: ModuleType) -> None:
    baseline = {"trio": {"reference_cpu_s_per_1000": 0.2, "adjust_cpu_s_per_1000": 0.5, "idle_rss_mb": 40.0}}
    # The machine is 50 % slower now: 0.7 is 2.33 references, better than the baseline's 2.5.
    slower = {"trio": {"reference_cpu_s_per_1000": 0.3, "adjust_cpu_s_per_1000": 0.7, "idle_rss_mb": 40.0}}
    assert bench.compare(slower, baseline) == ([], [])
    # Twice the CPU on a machine 50 % slower is +33 % of our own: a regression, named against the scaled baseline.
    worse, _ = bench.compare({"trio": {**slower["trio"], "adjust_cpu_s_per_1000": 1.0}}, baseline)
    assert worse == ["trio.adjust_cpu_s_per_1000: 1.0 (baseline 0.75, +33 %)"]
    # Memory does not scale with the machine's speed: +12 % RSS is a regression however slow it is.
    worse, _ = bench.compare({"trio": {**slower["trio"], "idle_rss_mb": 44.8}}, baseline)
    assert worse == ["trio.idle_rss_mb: 44.8 (baseline 40.0, +12 %)"]
    # The reference is the machine, never a regression of ours, however far it moves.
    assert bench.compare({"trio": {"reference_cpu_s_per_1000": 0.9}}, baseline) == ([], [])


def test_cpu_per_write_is_the_least_over_processes_and_bytes_the_most(bench: ModuleType) -> None:
    runs = [{"adjust": {"cpu_s_per_1000": 0.7, "bytes_per_update": 33.0}, "reference": {"cpu_s_per_1000": 0.2}},
            {"adjust": {"cpu_s_per_1000": 0.5, "bytes_per_update": 33.0}, "reference": {"cpu_s_per_1000": 0.3}},
            {"adjust": {"cpu_s_per_1000": 0.6, "bytes_per_update": 34.0}, "reference": {"cpu_s_per_1000": 0.25}}]
    assert bench._least_writes(runs) == {"adjust_cpu_s_per_1000": 0.5, "adjust_bytes_per_update": 34.0,
                                         "reference_cpu_s_per_1000": 0.2}


def test_a_recorded_baseline_is_each_figures_median(bench: ModuleType) -> None:
    measures = [{"orders": 50, "import_cpu_s": 0.31, "trio": {"idle_rss_mb": 46.0, "adjust_cpu_s_per_1000": 0.5}},
                {"orders": 50, "import_cpu_s": 0.25, "trio": {"idle_rss_mb": 46.2, "adjust_cpu_s_per_1000": 0.7}},
                {"orders": 50, "import_cpu_s": 0.27, "trio": {"idle_rss_mb": 46.1, "adjust_cpu_s_per_1000": 0.6}}]
    assert bench.median_of(measures) == {"orders": 50, "import_cpu_s": 0.27,
                                         "trio": {"idle_rss_mb": 46.1, "adjust_cpu_s_per_1000": 0.6}}
    assert bench.median_of(measures[:1]) == measures[0]


@pytest.mark.slow  # the script measures in child processes
def test_it_measures_both_backends_and_fails_against_a_better_baseline(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    run = module_command("simulations.bench_quick", "--orders", "50", "--baseline", str(baseline))
    done = subprocess.run([*run, "--write-baseline", "--baseline-runs", "1"], capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = json.loads(baseline.read_text())
    assert recorded["orders"] == 50 and recorded["recorded"]["date"] and recorded["recorded"]["measures"] == 1
    assert 0 < recorded["import_cpu_s"] < 5
    for backend in ("asyncio", "trio"):
        figures = recorded[backend]
        assert 20 < figures["idle_rss_mb"] <= figures["day_rss_mb"] < 500
        assert 0 < figures["reference_cpu_s_per_1000"] < 10
        for op in ("adjust", "create_order"):
            assert 0 < figures[f"{op}_cpu_s_per_1000"] < 10
            assert 10 < figures[f"{op}_bytes_per_update"] < 2000
    # The same code against a baseline that claims half the memory: the run fails, naming it.
    recorded["trio"]["idle_rss_mb"] /= 2
    baseline.write_text(json.dumps(recorded))
    done = subprocess.run(run, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 1
    assert "regression against" in done.stderr and "trio.idle_rss_mb" in done.stderr
    assert json.loads(done.stdout)["regressions"]
    # A baseline measured on another size of day is refused rather than compared.
    orders = run.index("--orders") + 1
    done = subprocess.run([*run[:orders], "60", *run[orders + 1:]], capture_output=True, text=True, check=False,
                          timeout=300)
    assert done.returncode != 0 and "--orders 50" in done.stderr
