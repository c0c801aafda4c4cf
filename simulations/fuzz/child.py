"""A child process: runs batches of inputs, reports counts and the crashes that raised."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from simulations.fuzz.parent import signature
from simulations.fuzz.settings import INPUT_TIMEOUT, OUTCOMES, SAVED_PER_KIND
from simulations.fuzz.target import Target
from simulations.fuzz.targets import target_of
from simulations.fuzz.values import to_jsonable


class ErrorLog(logging.Handler):
    """Counts what the product logs at ERROR and above while fuzzed (a swallowed exception shows
    here, not as a crash) and keeps a few distinct messages; nothing is printed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.samples: list[str] = []
        #: Failed storage commits: the disk is fine here, so one means an input reached SQLite
        #: with something it cannot store - and a group commit fails every record with it.
        self.commit_failures: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if record.name == "storage.store" and "commit failed" in record.getMessage():
            self.commit_failures.append(record.getMessage()[:500])
        if len(self.samples) < 3:
            message = f"{record.name}: {record.getMessage()[:300]}"
            if record.exc_info and record.exc_info[1] is not None:
                message += f" ({type(record.exc_info[1]).__name__}: {str(record.exc_info[1])[:200]})"
            if message not in self.samples:
                self.samples.append(message)


class Poisoned(Exception):
    """A Rust panic unwound through pycrdt: the process's native state is no longer to be trusted,
    so the batch stops there and the rest of it runs in a fresh child."""


def poisons(exc: BaseException) -> bool:
    return type(exc).__name__ == "PanicException"


def crash_record(index: int, inp: Any, exc: BaseException, kind: str = "exception",
                 first: int | None = None) -> dict[str, Any]:
    """``first``: the first input the crashed terminal took (a replay runs those before it)."""
    return {"index": index, "kind": kind, "error": "".join(traceback.format_exception(exc))[-6000:],
            "input": to_jsonable(inp), "context_start": index if first is None else first}


def generated(target: Target, index: int, counts: dict[str, int], crashes: list[dict[str, Any]]) -> Any:
    """The input, or ``None`` when generating it failed: a bug of the fuzzer, not of the product,
    counted apart (``harness_errors``) and saved like a crash so it gets fixed."""
    try:
        return target.generate(index)
    except Exception as exc:  # noqa: BLE001
        counts["harness_error"] += 1
        crashes.append(crash_record(index, None, exc, kind="harness error"))
        return None


def run_batch(job: dict[str, Any], workdir: Path, target: Target | None = None) -> dict[str, Any]:
    """Inputs ``start .. start + count - 1`` of one target, in order; a fresh terminal for the
    async targets (another after one failed)."""
    target = target or target_of(job["target"], job["seed"], job.get("plant"))
    target.prepare()
    counts = dict.fromkeys((*OUTCOMES, "harness_error"), 0)
    crashes: list[dict[str, Any]] = []
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    started = time.perf_counter()
    stopped: int | None = None
    try:
        if target.asynchronous:
            import anyio  # noqa: PLC0415

            try:
                anyio.run(_async_batch, target, job, workdir, counts, crashes, errors,
                          backend=job.get("backend", "asyncio"))
            except BaseExceptionGroup as group:  # Poisoned from inside a task group
                poisoned, rest = group.split(Poisoned)
                if poisoned is None or rest is not None:
                    raise
                leaf: BaseException = poisoned
                while isinstance(leaf, BaseExceptionGroup):
                    leaf = leaf.exceptions[0]
                raise leaf from None
        else:
            for index in range(job["start"], job["start"] + job["count"]):
                inp = generated(target, index, counts, crashes)
                if inp is None:
                    continue
                try:
                    counts[target.run(inp)] += 1
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # noqa: BLE001 - pycrdt's PanicException is a BaseException
                    counts["crash"] += 1
                    crashes.append(crash_record(index, inp, exc))
                    if poisons(exc):
                        raise Poisoned(index + 1) from None
    except Poisoned as poisoned:
        stopped = poisoned.args[0]
    finally:
        logging.getLogger().removeHandler(errors)
    seen: dict[str, int] = {}
    for crash in crashes:  # one bug hit a thousand times: a few inputs travel back, all are counted
        crash["signature"] = signature(crash)
        seen[crash["signature"]] = seen.get(crash["signature"], 0) + 1
        if seen[crash["signature"]] > SAVED_PER_KIND:
            crash["input"] = crash["error"] = None
    return {"counts": counts, "crashes": crashes, "seconds": time.perf_counter() - started,
            "logged_errors": errors.count, "log_samples": errors.samples, "stopped": stopped}


async def _async_batch(target: Target, job: dict[str, Any], workdir: Path, counts: dict[str, int],
                       crashes: list[dict[str, Any]], errors: ErrorLog) -> None:
    """The inputs through one terminal after another: a terminal an input crashed is replaced
    before the next input, so nothing later is blamed on the state the crash left."""
    import anyio  # noqa: PLC0415

    cancelled = anyio.get_cancelled_exc_class()
    index, end = job["start"], job["start"] + job["count"]
    sessions = 0
    while index < end:
        sessions += 1
        phase, inp, crashed, first = "setup", None, False, index
        try:
            async with target.session(workdir / f"s{os.getpid()}-{job['start']}-{sessions}") as session:
                phase = "input"
                while index < end:
                    inp = generated(target, index, counts, crashes)
                    if inp is None:
                        index += 1
                        continue
                    failures = len(errors.commit_failures)
                    try:
                        with anyio.fail_after(INPUT_TIMEOUT):
                            outcome = await session.run(inp)
                        if len(errors.commit_failures) > failures:
                            raise AssertionError(f"a storage commit failed: {errors.commit_failures[-1]}")
                    except cancelled:
                        raise  # the terminal's task group is failing: handled below
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except BaseException as exc:  # noqa: BLE001 - any other exception is a crash
                        counts["crash"] += 1
                        crashes.append(crash_record(index, inp, exc, first=first))
                        index += 1
                        crashed = True
                        if poisons(exc):
                            raise Poisoned(index) from None
                        break
                    counts[outcome] += 1
                    index += 1
                if not crashed:
                    phase = "finish"
                    with anyio.fail_after(INPUT_TIMEOUT * 4):
                        await session.finish()
        except (KeyboardInterrupt, SystemExit, Poisoned):
            raise
        except BaseException as exc:  # noqa: BLE001 - the terminal itself failed
            if crashed:
                continue  # a terminal an input crashed failing to stop: the same crash
            counts["crash"] += 1
            if phase == "finish":
                # After the last input (the final reads, the shutdown): blamed on the last input,
                # a crash on top of its outcome.
                crashes.append(crash_record(end - 1, generated(target, end - 1, counts, crashes), exc, first=first))
                break
            # While an input ran (its task group died under it), or while a terminal started:
            # the input is the crash, and the batch goes on with a new terminal.
            crashes.append(crash_record(index, inp if inp is not None else generated(target, index, counts, crashes),
                                        exc, first=first))
            index += 1
            if "PanicException" in crashes[-1]["error"]:
                raise Poisoned(index) from None


def quiet() -> None:
    """What a child runs with (a replay too, so that it runs the same way): the product's logging
    counted, not printed, and a bound on address space."""
    logging.basicConfig(level=logging.CRITICAL + 1)
    logging.getLogger().setLevel(logging.ERROR)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.CRITICAL + 1)
    with contextlib.suppress(ValueError, OSError):  # a runaway allocation fails instead of eating the box
        resource.setrlimit(resource.RLIMIT_AS, (16 * 1024**3, resource.RLIM_INFINITY))


def worker(plant: int | None, workdir: Path) -> None:
    """``--worker``: batches as JSON lines on stdin, results as JSON lines on the real stdout
    (anything else printing to stdout goes to stderr, so the pipe stays clean)."""
    import faulthandler  # noqa: PLC0415

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    faulthandler.enable()  # a SIGSEGV prints the Python stack to stderr: kept with the crash
    quiet()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for line in sys.stdin:
            job = json.loads(line)
            if job.get("dump"):
                target = target_of(job["target"], job["seed"], job.get("plant", plant))
                target.prepare()
                result: dict[str, Any] = {"input": to_jsonable(target.generate(job["index"]))}
            else:
                job.setdefault("plant", plant)
                result = run_batch(job, workdir)
            proto.write(json.dumps(result) + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # the parent removes it too: a dead child cannot
