"""``python -m simulations.partition``: one run, or a sweep of seeds; prints a JSON report."""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from simulations import partition
from simulations.partition.checks import failed
from simulations.partition.faults import FAULTS
from simulations.partition.plot import plot
from simulations.partition.runner import run
from simulations.partition.scenarios import SCENARIOS
from simulations.partition.shrink import Attempt, shrink


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m simulations.partition",
                                     description=partition.__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="lunch-rush-kitchen-split")
    parser.add_argument("--terminals", type=int, default=6, help="3 to 50 boxes (default 6)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sweep", type=int, metavar="N", help="run seeds seed..seed+N-1, report failures")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once in a sweep (default 1)")
    parser.add_argument("--shrink", action="store_true",
                        help="shrink a failing run to the fewest terminals and staff actions that still fail")
    parser.add_argument("--ops", type=int, metavar="K", help="the staff stop after K actions (a run's prefix)")
    parser.add_argument("--inject", choices=sorted(FAULTS), help="plant a bug the checks must catch")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the run's timeline (needs matplotlib)")
    args = parser.parse_args()
    if not 3 <= args.terminals <= 50:
        parser.error("--terminals must be 3..50")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.ops is not None and args.ops < 0:
        parser.error("--ops must be 0 or more")
    if args.sweep is None:
        report = run(args.scenario, args.terminals, args.seed, args.inject, args.ops)
        if args.plot is not None:
            plot(report, args.plot)
        if args.shrink and not report["checks"]["ok"]:
            report["shrunk"] = shrink(Attempt(args.scenario, args.terminals, args.seed, args.inject, args.ops),
                                      failed(report["checks"]), report["actions"])
        print(json.dumps(report, indent=1))
        sys.exit(0 if report["checks"]["ok"] else 1)
    failures = []
    finished = 0

    def one(seed: int) -> dict[str, Any] | None:
        attempt = Attempt(args.scenario, args.terminals, seed, args.inject, args.ops)
        failed, actions = attempt.run()
        return None if failed is None else {"seed": seed, "repro": attempt.command(), "failed": failed,
                                            "actions": actions}

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for failure in pool.map(one, range(args.seed, args.seed + args.sweep)):
            finished += 1
            if failure is not None:
                failures.append(failure)
            bar = "#" * finished + "." * (args.sweep - finished)
            print(f"\r[{bar}] {finished}/{args.sweep} failed {len(failures)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if args.shrink:
        for failure in failures:
            attempt = Attempt(args.scenario, args.terminals, failure["seed"], args.inject, args.ops)
            failure["shrunk"] = shrink(attempt, failure["failed"], failure["actions"])
    print(json.dumps({"scenario": args.scenario, "terminals": args.terminals, "seeds": args.sweep,
                      "first_seed": args.seed, **({"injected": args.inject} if args.inject else {}),
                      "failed": failures}, indent=1))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
