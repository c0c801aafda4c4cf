"""Runs as their own commands, and the shrinking of a failing one to its smallest repro."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from simulations.benchutil import module_command
from simulations.partition.checks import failed as failed_checks


@dataclass(frozen=True)
class Attempt:
    """One run as its own command (a fresh process, exactly as its repro command runs it)."""

    scenario: str
    terminals: int
    seed: int
    inject: str | None = None
    ops: int | None = None

    def command(self) -> str:
        return "python -m simulations.partition " + " ".join(self._args())

    def _args(self) -> list[str]:
        args = ["--scenario", self.scenario, "--terminals", str(self.terminals), "--seed", str(self.seed)]
        if self.inject:
            args += ["--inject", self.inject]
        if self.ops is not None:
            args += ["--ops", str(self.ops)]
        return args

    def run(self) -> tuple[list[str] | None, int]:
        """``(failed checks, staff actions)``: ``None`` when it passed; a crash's last stderr line
        stands for its failed checks."""
        done = subprocess.run(module_command(__package__, *self._args()), capture_output=True, text=True,
                              check=False)
        try:
            report = json.loads(done.stdout)
        except ValueError:
            return done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"], 0
        return (None if done.returncode == 0 else failed_checks(report["checks"])), report["actions"]


def shrink(failing: Attempt, failed: list[str], actions: int | None = None) -> dict[str, Any]:
    """The smallest run that fails the same way (a check among ``failed`` fails again): the
    fewest terminals, tried from 3 up with the same seed; then the shortest prefix of its staff's
    actions, bisected with ``--ops``.  Each try is its own process; the answer is a repro command."""
    tries = 0

    def fails(attempt: Attempt) -> tuple[bool, int]:
        nonlocal tries
        tries += 1
        print(f"\rshrinking seed {attempt.seed}: {attempt.terminals} terminals, ops {attempt.ops} ...",
              end=" " * 10, file=sys.stderr, flush=True)
        got, done = attempt.run()
        return got is not None and bool(set(got) & set(failed)), done

    best = failing
    for n in range(3, failing.terminals):
        candidate = Attempt(failing.scenario, n, failing.seed, failing.inject, failing.ops)
        failed_too, done = fails(candidate)
        if failed_too:
            best, actions = candidate, done
            break
    if actions is None:
        _, actions = fails(best)
    if not actions:  # it crashed before reporting: no action count to bisect
        print(file=sys.stderr)
        return {"terminals": best.terminals, "ops": best.ops, "tries": tries, "repro": best.command()}
    low, high = -1, actions if best.ops is None else min(actions, best.ops)  # high fails; low = -1 stands for "passes"
    while high - low > 1:
        middle = (low + high) // 2
        if fails(Attempt(best.scenario, best.terminals, best.seed, best.inject, middle))[0]:
            high = middle
        else:
            low = middle
    best = Attempt(best.scenario, best.terminals, best.seed, best.inject, high)
    print(file=sys.stderr)
    return {"terminals": best.terminals, "ops": high, "tries": tries, "repro": best.command()}
