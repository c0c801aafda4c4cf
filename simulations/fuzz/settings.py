"""What every part of the fuzzer agrees on: the targets, batch sizes, the fixed clock, the limits."""

from __future__ import annotations

from datetime import UTC, date, datetime

TARGETS = ("yupdate", "sync", "control", "link", "cashier", "roster", "api", "ui")
#: Inputs per batch (one child call; the terminal targets start a fresh terminal per batch, which
#: keeps memory bounded and makes a batch's outcome independent of the batches before it).
BATCH = {"yupdate": 500, "sync": 10_000, "control": 10_000, "link": 4_000, "cashier": 500, "roster": 4_000,
         "api": 500, "ui": 500, "planted": 1_000}
#: The terminal targets' fixed clock: "today" (the orders document's name, ids that match it)
#: must not depend on when the fuzzer runs, or a seed would not give the same outcomes.
TODAY = date(2026, 6, 15)
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
DAY = TODAY.isoformat()
ISO = "2026-06-15T12:00:00.000Z"
#: An input of an async target taking longer than this is a hang, counted as a crash.
INPUT_TIMEOUT = 30.0
#: A child whose resident memory passes this is killed: an input made it allocate without bound.
CHILD_RSS_LIMIT = 3 * 1024**3
#: Hidden ``--plant`` target (tests/test_fuzz.py): these inputs segfault and raise.
MAGIC_SEGV = b"SEGV-ME!"
MAGIC_RAISE = b"RAISE-ME"
OUTCOMES = ("refused", "accepted", "crash")
#: Crash inputs saved per kind of crash (see :func:`signature`); the rest are counted only.
SAVED_PER_KIND = 5
#: Times a bisection runs a prefix that did not kill its child before it believes it.
PROBE_TRIES = 3
