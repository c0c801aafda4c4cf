"""Small runs of the benchmark scripts whose figures docs/performance.md reports, so they keep working."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from simulations.benchutil import module_command

pytestmark = pytest.mark.slow  # each test runs a benchmark script in its own processes

SCRIPTS = ["partition", "netns", "bench_heal", "bench_forwarding", "bench_partition", "bench_quick", "bench_mesh",
           "bench_own_core", "bench_cashier", "bench_discovery", "bench_terminal", "bench_screens", "bench_intake",
           "fuzz", "star"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_runs_by_its_module_name(name: str) -> None:
    """The docs, .ci/run and the scripts' own children run them as ``python -m simulations.<name>``:
    each must import as a module of the package, with nothing added to ``sys.path``."""
    done = subprocess.run(module_command(f"simulations.{name}", "--help"), capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage:"), done.stderr[-2000:]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="bench_own_core.py pins to two CPUs; this has one")
def test_own_core_benchmark_takes_in_every_peer_frame() -> None:
    """One terminal with its own core, two replay peers: every recorded frame reaches it over a
    real TLS link and is stored with its events (the run waits for all 3 x 64 orders' events)."""
    done = subprocess.run(module_command("simulations.bench_own_core", "--terminals", "3",
                           "--updates", "64", "--frame-updates", "4", "--samples", "20", "--no-star"),
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads(done.stdout)["results"]
    throughput = result["throughput"]
    assert throughput["updates_written"] == 64 and throughput["updates_received"] == 128
    assert throughput["frames_sent"] == 2 * 64 // 4  # merged 4 by 4, as asked
    assert throughput["frames_received"] >= throughput["frames_sent"]  # counted by the terminal's links
    assert throughput["updates_per_s_per_terminal"] > 0 and throughput["cpu_s"] > 0
    assert result["latency_ms"]["samples"] == 20 and 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["max"]


def test_intake_benchmark_stores_every_order_it_is_handed(tmp_path) -> None:
    """Two writers' recorded frames into one terminal, twice: every order comes out as a durable
    ``order:created`` event that reads with its view (the script exits non-zero otherwise), and
    the profile is written."""
    profile = tmp_path / "intake.prof"
    done = subprocess.run(module_command("simulations.bench_intake", "--terminals", "3", "--orders", "48",
                                         "--frame-updates", "5", "--reps", "2", "--profile", str(profile)),
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)["result"]
    assert result["orders_received"] == 96 and result["frames"] == 2 * 10  # 48 orders: 9 frames of 5, 1 of 3
    cpu = result["cpu_us_per_update_received"]
    assert len(cpu["runs"]) == 2 and 0 < cpu["min"] <= cpu["median"]
    assert 0 < result["cpu_us_per_event_read"]["min"] <= result["cpu_us_per_event_read"]["median"]
    assert result["events"] == "product" and profile.stat().st_size > 0


@pytest.mark.anyio
async def test_recorded_orders_are_all_there_when_the_recording_outgrows_a_compaction(tmp_path, monkeypatch) -> None:
    """Past ``COMPACT_EVERY`` writes a terminal folds its update rows into a snapshot; the
    recording reads those rows, so it must not compact, or the replay silently lacks orders (a
    run of 3,000 orders per peer once waited forever for orders that were never sent)."""
    import pycrdt  # noqa: PLC0415

    from meshpos.documents import host  # noqa: PLC0415
    from peer.wire import decode_sync  # noqa: PLC0415
    from simulations.bench_own_core import record_orders  # noqa: PLC0415
    from simulations.benchutil import enrolled_store  # noqa: PLC0415

    monkeypatch.setattr(host, "COMPACT_EVERY", 20)
    (tid,) = enrolled_store(tmp_path, 1)
    frames = await record_orders(tmp_path, tid, 48, 5)
    doc = pycrdt.Doc()
    for frame in frames:
        doc.apply_update(decode_sync(frame).payload)
    assert len(doc.get("orders", type=pycrdt.Map)) == 48 and len(frames) == 10
    assert host.COMPACT_EVERY == 20  # put back


def test_own_core_benchmark_refuses_a_one_terminal_mesh() -> None:
    done = subprocess.run(module_command("simulations.bench_own_core", "--terminals", "1"),
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode != 0
    assert "at least 2" in done.stderr or "two CPUs" in done.stderr


@pytest.mark.parametrize("mode", [[], ["--processes"]], ids=["one process", "a process each"])
def test_mesh_benchmark_runs_the_star_with_bare_and_with_terminal_clients(mode: list[str]) -> None:
    """bench_mesh's baselines: the relay with bare pycrdt clients, and with real terminals as its
    clients (tests/test_star_relay.py checks what those do).  The run waits for every order's
    event on every terminal, and fails if the relay reports an error or drops a connection."""
    pytest.importorskip("pycrdt.websocket", reason="the star baseline needs the [bench] extra (pycrdt-websocket)")
    done = subprocess.run(module_command("simulations.bench_mesh", "--terminals", "3",
                           "--samples", "10", "--updates", "32", *mode),
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    mesh, star, durable = json.loads(done.stdout)["results"]
    assert [r["topology"] for r in (mesh, star, durable)] == ["mesh", "star", "star, meshpos terminals as clients"]
    for result in (mesh, star, durable):
        assert result["latency_ms"]["samples"] == 10
        assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["max"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="bench_own_core.py pins to two CPUs; this has one")
def test_own_core_benchmark_measures_both_stars_at_both_relay_placements() -> None:
    pytest.importorskip("pycrdt.websocket", reason="the star baseline needs the [bench] extra (pycrdt-websocket)")
    done = subprocess.run(module_command("simulations.bench_own_core", "--terminals", "3",
                           "--updates", "32", "--samples", "10"),
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads(done.stdout)["results"]
    keys = [f"{star}_latency_ms_relay_with_{side}"
            for star in ("star", "durable_star") for side in ("writer", "receiver")]
    for key in ["latency_ms", *keys]:
        assert result[key]["samples"] == 10 and 0 < result[key]["p50"] <= result[key]["max"], key


def test_screens_benchmark_times_every_ticket_and_the_day_load() -> None:
    """Two real terminals and Debian's headless Chromium: each order taken on pos-1 is timed into
    kds-1's page, and the page's loads with the whole day open are timed (a small run)."""
    from simulations.browser import chromium_missing  # noqa: PLC0415

    if (missing := chromium_missing()) is not None:
        if os.environ.get("MESHPOS_REQUIRE_CHROMIUM"):
            pytest.fail(missing)
        pytest.skip(missing)
    done = subprocess.run(module_command("simulations.bench_screens", "--orders", "5", "--day", "12"),
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["order_to_ticket_ms"]["samples"] == 5 and result["order_to_ticket_ms"]["p50"] > 0
    assert result["day_tickets"] == 12 and len(result["day_load_ms"]) == 3 and min(result["day_load_ms"]) > 0
