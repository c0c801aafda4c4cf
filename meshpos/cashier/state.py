"""What the cashier's parts share: the drawers, the voter states, the holds, the rounds, the
provisional rows and the ports to the world - and nothing else.

Each part of the cashier (:mod:`~meshpos.cashier.links`, :mod:`~meshpos.cashier.disk`,
:mod:`~meshpos.cashier.voting`, :mod:`~meshpos.cashier.holding`,
:mod:`~meshpos.cashier.requests`, :mod:`~meshpos.cashier.reconcile`,
:mod:`~meshpos.cashier.review`, :mod:`~meshpos.cashier.recovering`) is handed this object and
only the other parts it calls, so what a part may touch is visible in its constructor.  The
state has no behaviour of its own beyond the per-drawer lock: a rule about it lives in one part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from core.histogram import Histogram
from meshpos.cashier import ledger
from meshpos.cashier.learner import Learner
from meshpos.cashier.ports import CashierTerminal
from meshpos.cashier.quorum import Deposed, Holder, Voter, VoterState
from meshpos.cashier.recovery import Recovery
from storage.store import Ticket


class InDoubt(Exception):
    """The holder lost the drawer (or the voters went quiet) with an append in flight."""


@dataclass(eq=False)
class Hold:
    """A :class:`Holder` at work and the requests waiting on it."""

    holder: Holder
    ready: anyio.Event = field(default_factory=anyio.Event)  # acquired or deposed
    deposed: Deposed | None = None
    waiting: dict[int, anyio.Event] = field(default_factory=dict)
    stored: dict[int, Ticket | None] = field(default_factory=dict)  # this terminal's copy of each commit
    last_used: float = field(default_factory=anyio.current_time)


class CashierState:
    """One terminal's cashier state, shared by its parts."""

    def __init__(self, terminal: CashierTerminal) -> None:
        #: The ports: ``t.store`` (disk), ``t.mesh`` (peer links, ``None`` when not enrolled),
        #: ``t.clock`` and ``t.id_source`` (wall time, ids), ``t.rng`` (jitter) and the orders.
        self.t = terminal
        self.me = terminal.config.terminal_id
        self.states: dict[str, VoterState] = {}  # per drawer: votes, accepted, committed ledger
        self.voter = Voter(self.me, self.states)
        self.learner = Learner(self.voter)
        self.drawers: dict[str, ledger.Drawer] = {}  # the committed ledgers, added up
        self.provisional: dict[str, dict[str, dict[str, Any]]] = {}  # drawer -> op_id -> row
        self.seq = 0  # the last provisional row's sequence number
        self.holds: dict[str, Hold] = {}  # the drawers this terminal holds or is taking
        self.rounds: dict[str, int] = {}  # the highest round this terminal used per drawer (never lowered)
        self.grown: dict[str, anyio.Event] = {}  # set when a drawer's committed ledger grows here
        #: Counts state (re)loads: a request that awaited across one starts over (503, retry).
        self.epoch = 0
        #: Set while this terminal rebuilds the cashier state it lost (``meshpos recover``): it
        #: neither votes nor holds a drawer until the voters' reports bound what it forgot
        #: (recovery.Recovery; docs/cashier.md).
        self.recovery: Recovery | None = None
        self.reconcile_now = anyio.Event()  # wakes the reconciler (a link, a provisional entry)
        self.to_mark: set[tuple[str, str | None]] = set()  # (order id, user) to mark paid, retried
        self.stats = {"commits": 0, "acquisitions": 0, "provisional": 0, "reviews": 0}
        #: Seconds from handing an entry to the voters to its being on disk here (GET /metrics).
        self.commit_seconds = Histogram()
        #: Called with (drawer, entry) once a provisional entry is on disk (Cashier.on_provisional).
        self.provisional_listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self._locks: dict[str, anyio.Lock] = {}

    def lock(self, drawer: str) -> anyio.Lock:
        """Requests on one drawer are taken one at a time on a terminal (validation sees every
        earlier entry); different drawers proceed in parallel."""
        return self._locks.setdefault(drawer, anyio.Lock())
