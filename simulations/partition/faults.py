"""The bugs ``--inject`` plants on purpose, for the checkers to catch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fault:
    """A bug planted on purpose (``--inject NAME``): the ``nth`` call of a terminal's ``method``
    (a dotted path from the :class:`Terminal`), counted over the whole run, is answered as if
    done and not done - or, ``lasting``, that call and every one after it.  These are the
    failures the checkers exist to catch: tests/test_partition.py proves each is caught by the
    checks it names, and ``--shrink`` finds the shortest run that still shows it."""

    name: str
    about: str
    method: str
    nth: int
    catches: tuple[str, ...]  # the checks that must fail, and only they (``hq``: the HQ lacks it too)
    only: str | None = None  # count only the calls with this argument
    where: Callable[[tuple[Any, ...]], bool] | None = None  # count only the calls whose arguments pass
    on: str | None = None  # only on terminals of this type
    lasting: bool = False
    answer: Any = None  # what the call that was not done returns
    scenario: str = "cashier-isolated"  # where tests/test_partition.py plants it, with that many terminals
    terminals: int = 5


_COMMITTED = {"entry": {"status": "committed"}}  # what a payment that was not recorded answers

FAULTS = {f.name: f for f in [
    Fault("lose-stock-move", "the 25th stock move is acknowledged and not written", "adjust_stock", 25,
          ("stock_equals_acknowledged_moves",), answer={}),
    # "sent": no later step of the workload sends the order again, which would write the stage after all
    Fault("lose-order-stage", "the 10th order sent to the kitchen is acknowledged and not written",
          "set_order_status", 10, ("no_acknowledged_write_lost", "hq"), only="sent", answer={}),
    Fault("lose-payment", "the 3rd payment is acknowledged as committed and not recorded", "cashier.pay", 3,
          ("cashier", "hq"), answer=_COMMITTED),
    Fault("deaf-kitchen", "from its 100th batch on, the KDS drops what its peers send it (a sync bug)",
          "host.apply_remote", 100, ("converged", "documents_identical"), on="kds", lasting=True),
    Fault("lazy-relay", "the terminals stop passing on what their peers send them (no forwarding, only "
          "the anti-entropy rounds)", "mesh.syncing.core.forward_to", 1, ("propagation",), lasting=True, answer=[],
          where=lambda args: str(args[1]).startswith("peer:"), scenario="wifi-client-isolation", terminals=6),
]}
