"""The fuzzer (simulations/fuzz/) in CI: a short run of every target must find nothing, and the
crash detection must find what it is shown - a fuzzer that cannot see a segfault, or that only
ever produces garbage every decoder refuses at its first byte, would pass forever and test nothing.

docs/simulations.md ("Fuzzing") records the long run and how to replay a saved crash input.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from simulations.benchutil import module_command

pytestmark = pytest.mark.slow  # each test spawns the fuzzer and its children

FUZZ = module_command("simulations.fuzz")
TARGETS = ("yupdate", "sync", "control", "link", "cashier", "roster", "api", "ui")


def fuzz(tmp_path: Path, *args: str, timeout: float = 300) -> dict[str, Any]:
    done = subprocess.run([*FUZZ, *args, "--out", str(tmp_path / "crashes")],
                          capture_output=True, text=True, check=False, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_a_short_run_of_every_target_finds_no_crash(tmp_path: Path) -> None:
    """24,000 inputs (about 6 s on 2 cores).  Every target must meet inputs it refuses *and*
    inputs it takes: those reach the code behind the first check (pycrdt, the terminal's reads,
    the cashier's voter, the handlers)."""
    result = fuzz(tmp_path, "--inputs", "24000", "--seed", "1", "--jobs", "2")
    assert result["inputs"] == 24_000 and set(result["targets"]) == set(TARGETS)
    for name, counts in result["targets"].items():
        assert counts["inputs"] >= 2_800, (name, counts)
        assert counts["refused"] >= counts["inputs"] // 20, (name, counts)
        assert counts["accepted"] >= counts["inputs"] // 20, (name, counts)
        assert counts["harness_errors"] == 0, (name, result["crash_kinds"])
    assert result["crashes"] == 0, json.dumps(result["crash_kinds"], indent=1)


def test_a_seed_gives_the_same_outcomes_whatever_the_number_of_children(tmp_path: Path) -> None:
    one = fuzz(tmp_path / "one", "--inputs", "7000", "--seed", "4", "--jobs", "1")
    two = fuzz(tmp_path / "two", "--inputs", "7000", "--seed", "4", "--jobs", "2")
    # What the cashier logs goes through its per-peer rate limit, which runs on the wall clock:
    # how many of its divergence alarms get through depends on how fast the batch ran.  Every
    # other count - and every other target's logged errors - is a function of the seed.
    assert one["targets"]["cashier"]["logged_errors"] > 0
    for result in (one, two):
        result["targets"]["cashier"].pop("logged_errors")
    assert one["targets"] == two["targets"]


def test_a_planted_segfault_is_found_bisected_and_replayed(tmp_path: Path) -> None:
    """The hidden ``planted`` target: input 1234 calls ``ctypes.string_at(0)`` (SIGSEGV: no
    exception, the child just dies), input 1241 raises.  The parent bisects the dead batch down
    to input 1234, saves it, counts every other input of the batch, and the saved file replays
    the crash."""
    result = fuzz(tmp_path, "--inputs", "3000", "--seed", "5", "--targets", "planted", "--plant", "1234",
                  "--jobs", "2")
    counts = result["targets"]["planted"]
    assert counts["inputs"] == 3000 and counts["refused"] + counts["accepted"] + counts["crash"] == 3000
    assert counts["crash"] == 2 and result["crashes"] == 2 and result["bisections"] == 1
    saved = {json.loads(Path(p).read_text())["index"]: Path(p) for p in result["crash_inputs"]}
    assert set(saved) == {1234, 1241}
    segv = json.loads(saved[1234].read_text())
    assert segv["kind"] == "signal SIGSEGV" and base64.b64decode(segv["input"]["$b64"]) == b"SEGV-ME!"
    assert "string_at" in segv["error"]  # the faulthandler's Python stack of the dying child
    raised = json.loads(saved[1241].read_text())
    assert raised["kind"] == "exception" and "the planted exception" in raised["error"]

    env = {**os.environ, "TMPDIR": str(tmp_path)}  # what a replay that segfaults leaves behind
    replayed = subprocess.run([*FUZZ, "--replay", str(saved[1234])],
                              capture_output=True, text=True, check=False, timeout=60, env=env)
    assert replayed.returncode == -signal.SIGSEGV
    replayed = subprocess.run([*FUZZ, "--replay", str(saved[1241])],
                              capture_output=True, text=True, check=False, timeout=60, env=env)
    assert replayed.returncode == 0 and json.loads(replayed.stdout)["crash"] is True
