"""The partition simulator's own speed: simulated operations per real second; prints JSON.

    python -m simulations.bench_partition [--terminals 6 12 20] [--scenario NAME] [--seed S]

Each size runs in its own process (so its peak memory is its own): real seconds, virtual
seconds, the workload's operations (orders, stock moves, kitchen and order stages, payments),
operations per real second, virtual seconds per real second, peak RSS.  The heal-to-converged
figure with real processes is simulations/bench_heal.py's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import time

from simulations import partition
from simulations.benchutil import module_command


def one(scenario: str, n: int, seed: int) -> dict[str, object]:
    started = time.perf_counter()
    report = partition.run(scenario, n, seed)
    real = time.perf_counter() - started
    ops = sum(report["operations"].values())  # type: ignore[union-attr]
    return {
        "terminals": n, "ok": report["checks"]["ok"], "real_seconds": round(real, 2),  # type: ignore[index]
        "virtual_seconds": report["virtual_seconds"], "operations": ops,
        "operations_per_real_second": round(ops / real, 1),
        "virtual_seconds_per_real_second": round(report["virtual_seconds"] / real, 2),  # type: ignore[operator]
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "converged_after_heal_s": report["converged_after_heal_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terminals", type=int, nargs="+", default=[6, 12, 20])
    parser.add_argument("--scenario", choices=sorted(partition.SCENARIOS), default="lunch-rush-kitchen-split")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: one size
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.scenario, args.one, args.seed)))
        return
    results = []
    for n in args.terminals:
        done = subprocess.run(module_command(__spec__.name, "--scenario", args.scenario, "--seed", str(args.seed),
                                              "--one", str(n)), capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout))
    print(json.dumps({"scenario": args.scenario, "seed": args.seed, "results": results}, indent=1))


if __name__ == "__main__":
    main()
