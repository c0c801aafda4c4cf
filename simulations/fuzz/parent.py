"""The parent: children, batches, the bisection of a child's death down to the input that killed
it, and crashes grouped by kind."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from simulations.benchutil import module_command
from simulations.fuzz.settings import BATCH, CHILD_RSS_LIMIT, OUTCOMES, PROBE_TRIES, SAVED_PER_KIND
from simulations.fuzz.target import scratch
from simulations.fuzz.targets import TARGET_CLASSES


class Died(Exception):
    """A child ended without answering: killed by a signal, out of memory, or hung."""

    def __init__(self, how: str, log_tail: str) -> None:
        super().__init__(how)
        self.how = how
        self.log_tail = log_tail


class Child:
    """One ``--worker`` process; its stderr goes to a log file (the faulthandler's stack of a crash)."""

    def __init__(self, plant: int | None, logdir: Path) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix="child-", suffix=".log", dir=logdir)[1])
        self.log = self.log_path.open("wb")
        #: Its terminals' data directories (in memory when the box has a tmpfs).
        self.workdir = Path(tempfile.mkdtemp(prefix="fuzz-worker-", dir=scratch()))
        argv = module_command(__package__, "--worker", str(self.workdir))
        if plant is not None:
            argv += ["--plant", str(plant)]
        env = {**os.environ, "PYTHONHASHSEED": "0", "RUST_BACKTRACE": "0"}
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env)

    def call(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died already: reading says how
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if line:
                    return json.loads(line)
                self.proc.wait()
                raise Died(describe_exit(self.proc.returncode), self.tail())
            if rss_of(self.proc.pid) > CHILD_RSS_LIMIT:
                self.kill()
                raise Died(f"memory: over {CHILD_RSS_LIMIT // 1024**2} MB resident", self.tail())
            if time.monotonic() > deadline:
                self.kill()
                raise Died(f"hang: no answer within {timeout:.0f} s", self.tail())

    def tail(self) -> str:
        self.log.flush()
        data = self.log_path.read_bytes()
        return data[-4000:].decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()  # type: ignore[union-attr]
        self.log.close()
        self.log_path.unlink(missing_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def rss_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def batch_timeout(target: str, count: int) -> float:
    per_input = 0.2 if target in ("yupdate", "cashier", "api") else 0.02
    return 120 + count * per_input


class Fuzzer:
    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args = args
        self.out = out
        self.logdir = Path(tempfile.mkdtemp(prefix="fuzz-logs-"))
        self.lock = threading.Lock()
        #: Per target: inputs, their outcomes, what the product logged at ERROR, the fuzzer's own
        #: errors, and children that died once on a batch that then ran through (a crash that is
        #: counted, on top of the batch's outcomes, but could not be pinned on an input).
        self.totals = {t: {"inputs": 0, **dict.fromkeys(OUTCOMES, 0), "logged_errors": 0, "harness_errors": 0,
                           "unreproduced_deaths": 0} for t in args.targets}
        self.log_samples: dict[str, list[str]] = {t: [] for t in args.targets}
        self.saved: list[str] = []
        #: What went wrong, grouped: "target: exception: message" (numbers and quoted text
        #: blanked) -> count and one saved input.  Many crashes are often one bug.
        self.kinds: dict[str, dict[str, Any]] = {}
        self.bisections = 0
        self.done_inputs = 0
        self.jobs: queue.Queue[dict[str, Any]] = queue.Queue()
        self.pending = 0  # jobs queued or running; a bisection adds the rest of its batch as a job
        self.failure: BaseException | None = None

    def plan(self) -> list[dict[str, Any]]:
        """Batches of every target, interleaved so the slow targets spread over the children."""
        names = self.args.targets
        share = {t: self.args.inputs // len(names) + (1 if k < self.args.inputs % len(names) else 0)
                 for k, t in enumerate(names)}
        per_target = {t: [{"target": t, "seed": self.args.seed, "start": s, "count": min(BATCH[t], share[t] - s),
                           # the terminal targets run on asyncio and trio, batch by batch
                           "backend": ("trio" if (s // BATCH[t]) % 2 else "asyncio")
                           if TARGET_CLASSES[t].asynchronous else None}
                          for s in range(0, share[t], BATCH[t])] for t in names}
        jobs = []
        while any(per_target.values()):
            for t in names:
                if per_target[t]:
                    jobs.append(per_target[t].pop(0))
        return jobs

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        jobs = self.plan()
        self.pending = len(jobs)
        for job in jobs:
            self.jobs.put(job)
        threads = [threading.Thread(target=self._slot, daemon=True) for _ in range(max(1, self.args.jobs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        shutil.rmtree(self.logdir, ignore_errors=True)
        if self.failure is not None:
            raise self.failure
        seconds = time.perf_counter() - started
        inputs = sum(t["inputs"] for t in self.totals.values())
        return {
            "command": "python -m simulations.fuzz " + " ".join(self.args.argv),
            "seed": self.args.seed, "jobs": self.args.jobs, "inputs": inputs,
            "targets": self.totals,
            "crashes": sum(t["crash"] for t in self.totals.values()),
            "crash_kinds": dict(sorted(self.kinds.items(), key=lambda kv: -kv[1]["count"])),
            "crash_inputs": sorted(self.saved),
            "bisections": self.bisections,
            "seconds": round(seconds, 1), "inputs_per_second": round(inputs / seconds, 1),
            "out": str(self.out),
            "log_samples": {t: s for t, s in self.log_samples.items() if s},
        }

    def _slot(self) -> None:
        child: Child | None = None
        try:
            while True:
                with self.lock:
                    if self.pending == 0 or self.failure is not None:
                        return
                try:
                    job = self.jobs.get(timeout=0.2)
                except queue.Empty:
                    continue  # another slot is bisecting: it may queue the rest of its batch
                if child is None:
                    child = Child(self.args.plant, self.logdir)
                try:
                    result = child.call(job, batch_timeout(job["target"], job["count"]))
                except Died as death:
                    child.close()
                    child = None
                    self._bisect(job, death)
                else:
                    self._record_partial(job, result)
                    if result["stopped"] is not None:
                        child.close()  # a Rust panic unwound in it: the rest runs in a fresh one
                        child = None
                with self.lock:
                    self.pending -= 1
        except BaseException as exc:  # noqa: BLE001 - the parent's own failure: reported, not swallowed
            with self.lock:
                self.failure = exc
        finally:
            if child is not None:
                child.close()

    def _record(self, job: dict[str, Any], result: dict[str, Any]) -> None:
        with self.lock:
            totals = self.totals[job["target"]]
            totals["inputs"] += job["count"]
            for outcome in OUTCOMES:
                totals[outcome] += result["counts"][outcome]
            totals["harness_errors"] += result["counts"]["harness_error"]
            totals["logged_errors"] += result["logged_errors"]
            samples = self.log_samples[job["target"]]
            samples.extend(s for s in result["log_samples"] if s not in samples and len(samples) < 5)
            self.done_inputs += job["count"]
            self._progress()
        for crash in result["crashes"]:
            self._save(job, crash)

    def _record_partial(self, job: dict[str, Any], result: dict[str, Any]) -> None:
        """A batch that stopped after a Rust panic: count what ran, queue the rest."""
        stopped = result["stopped"]
        if stopped is None:
            self._record(job, result)
            return
        self._record({**job, "count": stopped - job["start"]}, result)
        if stopped < job["start"] + job["count"]:
            with self.lock:
                self.pending += 1
            self.jobs.put({**job, "start": stopped, "count": job["start"] + job["count"] - stopped})

    def _progress(self) -> None:
        if self.args.progress:
            print(f"fuzz: {self.done_inputs} / {self.args.inputs} inputs, "
                  f"{sum(t['crash'] for t in self.totals.values())} crashes", file=sys.stderr, flush=True)

    def _probe(self, job: dict[str, Any], start: int, count: int,
               tries: int = PROBE_TRIES) -> tuple[dict[str, Any] | None, Died | None]:
        """Run a part of a batch in a fresh child: its result, or how the child died.  A run that
        lives is tried again (``tries`` in all): memory corruption does not strike every time,
        and a bisection misled once points at the wrong input."""
        result: dict[str, Any] | None = None
        for _ in range(tries):
            child = Child(self.args.plant, self.logdir)
            try:
                result = child.call({**job, "start": start, "count": count}, batch_timeout(job["target"], count))
            except Died as death:
                return None, death
            finally:
                child.close()
        return result, None

    def _bisect(self, job: dict[str, Any], death: Died) -> None:
        """The batch killed its child.  Find the shortest prefix that still does - its last input
        is the killer - then count the inputs before it from that run and go on after it."""
        with self.lock:
            self.bisections += 1
        start, end = job["start"], job["start"] + job["count"]
        again, death_again = self._probe(job, start, job["count"])
        if again is not None:  # did not die again: counted, and recorded as a crash that did not repeat
            self._record_partial(job, again)
            with self.lock:
                self.totals[job["target"]]["crash"] += 1
                self.totals[job["target"]]["unreproduced_deaths"] += 1
            self._save_death(job, start, start, end - 1, death, standalone=False, repeated=False)
            return
        death = death_again or death
        lo, hi = start, end  # [start, lo) runs through; [start, hi) dies
        good: dict[str, Any] | None = None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            result, died = self._probe(job, start, mid - start)
            if died is None:
                lo, good = mid, result
            else:
                hi, death = mid, died
        killer = hi - 1
        if good is not None and lo > start:
            self._record_partial({**job, "count": lo - start}, good)
        alone, alone_death = self._probe(job, killer, 1)
        standalone = alone is None
        if alone_death is not None:
            death = alone_death
        with self.lock:
            totals = self.totals[job["target"]]
            totals["inputs"] += 1
            totals["crash"] += 1
            self.done_inputs += 1
        self._save_death(job, start, killer, killer, death, standalone=standalone, repeated=True)
        if killer + 1 < end:
            with self.lock:
                self.pending += 1
            self.jobs.put({**job, "start": killer + 1, "count": end - killer - 1})

    def _save_death(self, job: dict[str, Any], context_start: int, index: int, last: int, death: Died, *,
                    standalone: bool, repeated: bool) -> None:
        dump = Child(self.args.plant, self.logdir)
        try:
            inp = dump.call({"dump": True, "target": job["target"], "seed": job["seed"], "index": index,
                             "plant": self.args.plant}, 300)["input"]
        except Died as failed:  # generating it fails (a fuzzer bug): the record says so
            inp = None
            death = Died(f"{death.how}; generating the input failed too ({failed.how})",
                         death.log_tail + "\n--- generating it:\n" + failed.log_tail)
        finally:
            dump.close()
        record = {"target": job["target"], "seed": job["seed"], "index": index, "kind": death.how,
                  "backend": job.get("backend"), "plant": self.args.plant, "input": inp,
                  "error": death.log_tail}
        if not repeated:
            record["note"] = (f"the child died on inputs {context_start}..{last} once and not in "
                              f"{PROBE_TRIES} more runs: not reproduced; 'input' is the batch's first")
        if not standalone:
            record["context_start"] = context_start  # replay runs inputs context_start..index-1 first
        self._write(record, counted=False)

    def _save(self, job: dict[str, Any], crash: dict[str, Any]) -> None:
        kind = f"{job['target']}: {crash['signature']}"
        with self.lock:
            entry = self.kinds.setdefault(kind, {"count": 0, "saved": 0, "example": None})
            entry["count"] += 1
            if crash["error"] is None or entry["saved"] >= SAVED_PER_KIND:  # counted only
                return
            entry["saved"] += 1
        record = {"target": job["target"], "seed": job["seed"], "index": crash["index"], "kind": crash["kind"],
                  "backend": job.get("backend"), "plant": self.args.plant, "input": crash["input"],
                  "error": crash["error"]}
        if crash["context_start"] < crash["index"]:
            record["context_start"] = crash["context_start"]  # the inputs the crashed terminal took first
        self._write(record)

    def _write(self, record: dict[str, Any], counted: bool = True) -> None:
        path = self.out / f"{record['target']}-s{record['seed']}-i{record['index']}.json"
        record["replay"] = f"python -m simulations.fuzz --replay {path}"
        path.write_text(json.dumps(record, indent=1))
        kind = f"{record['target']}: {signature(record)}"
        with self.lock:
            self.saved.append(str(path))
            entry = self.kinds.setdefault(kind, {"count": 0, "saved": 0, "example": None})
            entry["example"] = entry["example"] or str(path)
            if not counted:  # a death found by bisection: counted here (exceptions are, in _save)
                entry["count"] += 1
                entry["saved"] += 1


def signature(record: dict[str, Any]) -> str:
    """One line naming a crash's kind: a signal, or the exception's last line with the numbers
    and quoted text blanked (the same bug hit with other bytes reads the same)."""
    if not record["kind"].startswith(("exception", "harness")):
        return record["kind"].split(";")[0]
    lines = [line for line in record["error"].strip().splitlines() if line and not line.startswith(" ")]
    last = lines[-1] if lines else record["kind"]
    last = re.sub(r"'[^' ]*'|\"[^\" ]*\"|<[^>]*>|0x[0-9a-fA-F]+|\\[ux][0-9a-fA-F]+|\b\d+\b", "_", last)
    return (record["kind"] + ": " if record["kind"] != "exception" else "") + last[:160]
