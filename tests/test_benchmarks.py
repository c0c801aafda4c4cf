"""Small runs of the benchmark scripts whose figures docs/performance.md reports, so they keep working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SIMULATIONS = Path(__file__).resolve().parent.parent / "simulations"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="bench_own_core.py pins to two CPUs; this has one")
def test_own_core_benchmark_takes_in_every_peer_frame() -> None:
    """One terminal with its own core, two replay peers: every recorded frame reaches it over a
    real TLS link and is stored with its events (the run waits for all 3 x 64 orders' events)."""
    done = subprocess.run([sys.executable, str(SIMULATIONS / "bench_own_core.py"), "--terminals", "3",
                           "--updates", "64", "--frame-updates", "4", "--samples", "20", "--no-star"],
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads(done.stdout)["results"]
    throughput = result["throughput"]
    assert throughput["updates_written"] == 64 and throughput["updates_received"] == 128
    assert throughput["frames_sent"] == 2 * 64 // 4  # merged 4 by 4, as asked
    assert throughput["frames_received"] >= throughput["frames_sent"]  # counted by the terminal's links
    assert throughput["updates_per_s_per_terminal"] > 0 and throughput["cpu_s"] > 0
    assert result["latency_ms"]["samples"] == 20 and 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["max"]


def test_own_core_benchmark_refuses_a_one_terminal_mesh() -> None:
    done = subprocess.run([sys.executable, str(SIMULATIONS / "bench_own_core.py"), "--terminals", "1"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode != 0
    assert "at least 2" in done.stderr or "two CPUs" in done.stderr
