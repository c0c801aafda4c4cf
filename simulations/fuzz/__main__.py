"""``python -m simulations.fuzz``: the command line, and the replay of one saved crash input."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from simulations import fuzz
from simulations.fuzz.child import quiet, run_batch, worker
from simulations.fuzz.parent import Fuzzer
from simulations.fuzz.settings import TARGETS
from simulations.fuzz.target import Target
from simulations.fuzz.targets import target_of
from simulations.fuzz.values import from_jsonable


class Saved(Target):
    """A target whose input ``index`` is a saved one (the rest generated as in the fuzz run)."""

    def __init__(self, inner: Target, index: int, inp: Any) -> None:
        super().__init__(inner.seed, inner.plant)
        self.inner, self.index, self.inp = inner, index, inp
        self.name, self.asynchronous = inner.name, inner.asynchronous

    def prepare(self) -> None:
        self.inner.prepare()

    def generate(self, index: int) -> Any:
        return self.inp if index == self.index else self.inner.generate(index)

    def run(self, inp: Any) -> str:
        return self.inner.run(inp)

    def session(self, workdir: Path) -> Any:
        return self.inner.session(workdir)  # type: ignore[attr-defined]


def replay(path: Path) -> dict[str, Any]:
    """Run a saved input again, in this process (a segfault kills it: that is the reproduction),
    exactly as the fuzz run did: after the inputs before it on the same terminal
    (``context_start``), a crash among those replacing the terminal as it did then."""
    record = json.loads(path.read_text())
    inner = target_of(record["target"], record["seed"], record.get("plant"))
    first = record.get("context_start", record["index"])
    job = {"target": record["target"], "seed": record["seed"], "start": first,
           "count": record["index"] - first + 1, "backend": record.get("backend") or "asyncio"}
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-replay-"))  # not /dev/shm: a segfault leaves it behind
    try:
        result = run_batch(job, workdir, Saved(inner, record["index"], from_jsonable(record["input"])))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    crashed = [c for c in result["crashes"] if c["index"] == record["index"]]
    for crash in crashed:
        print(crash["error"], file=sys.stderr)
    return {"target": record["target"], "index": record["index"], "inputs_run": job["count"],
            "crash": bool(crashed), "earlier_crashes": [c["index"] for c in result["crashes"]
                                                        if c["index"] != record["index"]]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m simulations.fuzz", description=fuzz.__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=10_000, help="inputs in all, shared evenly by the targets")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), help="child processes at a time")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=[*TARGETS, "planted"])
    parser.add_argument("--out", type=Path, help="where crash inputs are saved (default: a new temporary directory)")
    parser.add_argument("--progress", action="store_true", help="a progress line on stderr after every batch")
    parser.add_argument("--replay", type=Path, help="run one saved crash input (a JSON file from --out)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # a child, with its work directory
    parser.add_argument("--plant", type=int, help=argparse.SUPPRESS)  # the planted target's killer input
    argv = sys.argv[1:]
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.plant, args.worker)
        return
    if args.replay is not None:
        import faulthandler  # noqa: PLC0415

        faulthandler.enable()
        quiet()
        print(json.dumps(replay(args.replay), indent=1))
        return
    if "planted" in args.targets and args.plant is None:
        parser.error("the planted target needs --plant")
    args.argv = argv
    out = args.out or Path(tempfile.mkdtemp(prefix="meshpos-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    result = Fuzzer(args, out.resolve()).run()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
