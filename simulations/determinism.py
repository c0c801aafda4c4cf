"""Trio's scheduling choices as a function of a seed: the one reach into trio's private state.

The partition simulator promises that one seed is one run (docs/simulations.md).  Its clock is
trio's MockClock and its network is in memory, so what is left to chance is trio's scheduler:
tasks woken in the same batch run in an order trio picks with a module-level ``random.Random``
(``trio._core._run._r``) - by default reversed or not at random, which keeps the order their
timers happened to tie in (object addresses).  With ``_ALLOW_DETERMINISTIC_SCHEDULING`` trio
sorts each batch by task creation and shuffles it with that generator instead: seeded, the same
order every time.  That is what trio's own Hypothesis plugin (``_hypothesis_plugin_setup``) does.

Trio has no public way to do this: python-trio/trio#2675 (keyword arguments for deterministic
scheduling) is open, and the maintainers keep the question with the scheduler's design
(python-trio/trio#32); #2022 asked the same and was closed there.  So the private access stays
here, in one function that fails loudly when a trio release moves it, rather than quietly
letting seeds stop reproducing runs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import trio


def seed_trio_scheduler(seed: int) -> None:
    """From now on (in this process), trio schedules each batch of woken tasks in an order drawn
    from ``seed``; call it again to start the sequence over.

    Raises :class:`RuntimeError` when the installed trio no longer has the private hooks."""
    run_module = getattr(getattr(trio, "_core", None), "_run", None)
    generator = getattr(run_module, "_r", None)
    if not isinstance(generator, random.Random) or not hasattr(run_module, "_ALLOW_DETERMINISTIC_SCHEDULING"):
        raise RuntimeError(
            f"trio {trio.__version__} no longer has trio._core._run._r and _ALLOW_DETERMINISTIC_SCHEDULING, "
            "the private hooks its Hypothesis plugin uses to make scheduling deterministic: without them a "
            "seed no longer fixes the simulator's run. Find where this trio seeds its scheduler "
            "(_hypothesis_plugin_setup) and update simulations/determinism.py, or install an older trio.")
    run_module._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[union-attr]
    generator.seed(seed)


@contextmanager
def seeded_trio_scheduler(seed: int) -> Iterator[None]:
    """:func:`seed_trio_scheduler` for the duration of a block, then trio's switch back as it
    was: tests share one process, and a test that seeds must not make the next one's
    scheduling deterministic behind its back."""
    run_module = trio._core._run  # checked by seed_trio_scheduler before use  # noqa: SLF001
    previous = getattr(run_module, "_ALLOW_DETERMINISTIC_SCHEDULING", False)
    seed_trio_scheduler(seed)
    try:
        yield
    finally:
        run_module._ALLOW_DETERMINISTIC_SCHEDULING = previous  # noqa: SLF001
