"""Every target by name, and the planted one (tests/test_fuzz.py: the crash detection must find
what it is shown)."""

from __future__ import annotations

import ctypes

from simulations.fuzz.api import ApiTarget
from simulations.fuzz.cashier import CashierTarget
from simulations.fuzz.link import LinkTarget
from simulations.fuzz.peers import ControlTarget, SyncTarget, YUpdateTarget
from simulations.fuzz.roster import RosterTarget
from simulations.fuzz.settings import MAGIC_RAISE, MAGIC_SEGV
from simulations.fuzz.target import Target
from simulations.fuzz.ui import UiTarget


class PlantedTarget(Target):
    """Hidden: input ``plant`` segfaults the process (``ctypes.string_at(0)``), input ``plant + 7``
    raises; everything else is refused or accepted by its first byte."""

    name = "planted"

    def generate(self, index: int) -> bytes:
        if index == self.plant:
            return MAGIC_SEGV
        if self.plant is not None and index == self.plant + 7:
            return MAGIC_RAISE
        return self.rng(index).randbytes(8)

    def run(self, data: bytes) -> str:
        if data == MAGIC_SEGV:
            ctypes.string_at(0)
        if data == MAGIC_RAISE:
            raise RuntimeError("the planted exception")
        return "refused" if data[0] % 2 else "accepted"


TARGET_CLASSES: dict[str, type[Target]] = {
    "yupdate": YUpdateTarget, "sync": SyncTarget, "control": ControlTarget, "link": LinkTarget,
    "cashier": CashierTarget, "roster": RosterTarget, "api": ApiTarget, "ui": UiTarget,
    "planted": PlantedTarget}
_TARGETS: dict[tuple[str, int, int | None], Target] = {}


def target_of(name: str, seed: int, plant: int | None) -> Target:
    key = (name, seed, plant)
    if key not in _TARGETS:
        _TARGETS[key] = TARGET_CLASSES[name](seed, plant)
    return _TARGETS[key]
