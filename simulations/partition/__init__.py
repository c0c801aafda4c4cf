"""Seeded network-partition simulation of a restaurant's terminals; prints a JSON report.

    python -m simulations.partition [--scenario NAME] [--terminals N] [--seed S] [--sweep N] [--shrink]

Real terminals - the product's documents, sync, TLS links, SQLite storage and cashier - run in
this process on trio's virtual clock, joined by the in-memory network of ``peer/transport.py``:
no wall-clock sleeps, no sockets, no threads, every random choice from the seed, so one seed
is one run (``--seed S`` twice prints the same report; each run in its own process, as
``--sweep`` does too).  A scenario script splits and heals
the network, turns on a Wi-Fi access point's client isolation, gives boxes a poor radio (jitter,
lost segments), crashes and restarts terminals (the data directory survives, the process does
not), skews a clock; a restaurant workload runs meanwhile (orders through their lifecycle,
kitchen statuses, table turns, stock moves, payments - provisional ones when a POS is cut off).
After the final heal the checkers run (docs/simulations.md):

* converged within SETTLE_SECONDS (else the other checks run anyway, on what is there);
* every document identical on every terminal;
* no acknowledged write lost (orders, their stages, stock moves, payments);
* every stock counter equals the initial count plus all acknowledged adjustments;
* every order's status is the furthest stage it reached (the lifecycle rule);
* cashier: one committed ledger per drawer on every terminal, no operation twice, every
  acknowledged payment in it, every provisional payment committed or in review.

``--inject NAME`` plants a bug the checkers must catch (:data:`FAULTS`); ``--shrink`` turns a
failing run into the fewest terminals and staff actions (``--ops``) that still fail.

The same scenarios, workload and checkers run with real ``meshpos run`` processes in network
namespaces in simulations/netns.py (docs/simulations.md).

The package, by job: :mod:`.restaurant` (the boxes, the menu, enrolment), :mod:`.workload` (the
staff and the tally of what they were told), :mod:`.checks`, :mod:`.faults` (the bugs ``--inject``
plants), :mod:`.world` (the in-memory world on trio's virtual clock), :mod:`.scenarios` (the bad
days), :mod:`.runner` (one seeded run), :mod:`.shrink`, :mod:`.plot`; ``__main__`` is the command.
"""

from __future__ import annotations

from simulations.partition.checks import check, failed, missing_updates, union_state
from simulations.partition.faults import FAULTS, Fault
from simulations.partition.plot import plot
from simulations.partition.restaurant import EPOCH, MENU, STOCK, drawer_of, enroll, kinds_for
from simulations.partition.runner import run
from simulations.partition.scenarios import SCENARIOS, Scenario, World
from simulations.partition.workload import Box, Tally, TerminalBox, Workload

__all__ = ["EPOCH", "FAULTS", "MENU", "SCENARIOS", "STOCK", "Box", "Fault", "Scenario", "Tally", "TerminalBox",
           "Workload", "World", "check", "drawer_of", "enroll", "failed", "kinds_for", "missing_updates", "plot",
           "run", "union_state"]
