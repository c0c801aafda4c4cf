"""The partition simulator (simulations/partition.py): every named scenario holds its checks,
and one seed is one run, byte for byte.

A short sweep for CI; the long one is in docs/simulations.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "simulations"))
import partition  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("scenario", sorted(partition.SCENARIOS))
def test_scenario_holds_its_checks(scenario: str, seed: int) -> None:
    report = partition.run(scenario, 6, seed)
    checks = report["checks"]
    assert checks["ok"], json.dumps(checks, indent=1)
    assert report["operations"]["order"] > 20 and report["operations"]["payment"] > 3, report["operations"]
    if scenario == "cashier-isolated":  # the lone POS took payments provisionally; all settled
        assert report["payments"]["provisional"] > 0, report["payments"]
    if scenario == "lunch-rush-kitchen-split":  # the kitchen really fell behind, then caught up
        assert report["peak_missing_updates"] > 50


def test_one_seed_is_one_run() -> None:
    first = partition.run("flapping-wifi", 5, 11)
    assert partition.run("flapping-wifi", 5, 11) == first
    assert partition.run("flapping-wifi", 5, 12)["state_sha256"] != first["state_sha256"]
