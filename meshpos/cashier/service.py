"""The cashier of one terminal: a small façade over its parts, and what drives them.

Decisions live in pure cores - :mod:`~meshpos.cashier.quorum` (who may append, what is
committed, what a voter stores), :mod:`~meshpos.cashier.messages` (the messages and their wire
form), :mod:`~meshpos.cashier.learner` (relays, gaps, heads), :mod:`~meshpos.cashier.recovery`
(rebuilding a lost state), :mod:`~meshpos.cashier.acquire` (when taking a drawer retries or gives
up) and :mod:`~meshpos.cashier.ledger` (what the money adds up to, which request is refused).
The shell around them is composed of parts, each handed the shared
:class:`~meshpos.cashier.state.CashierState` and only the parts it calls:

* :class:`~meshpos.cashier.links.Links` - who votes, who is reachable, sending;
* :class:`~meshpos.cashier.disk.Disk` - loading the state, every change durable before it is
  answered, the reload after a failed write;
* :class:`~meshpos.cashier.voting.Voting` - this terminal as a voter and a learner;
* :class:`~meshpos.cashier.recovering.Recovering` - rebuilding a lost state, and answering
  another terminal doing so;
* :class:`~meshpos.cashier.holding.Holding` - taking, holding, appending to and giving up drawers;
* :class:`~meshpos.cashier.requests.Requests` - the request API and the drawer views;
* :class:`~meshpos.cashier.reconcile.Reconciler` - provisional entries, after the heal;
* :class:`~meshpos.cashier.review.Reviews` - the review queue.

:class:`Cashier` wires them and routes what arrives: a peer's quorum message to the voter or to
the holder, a relay or heads to the learner, the recovery messages to the recovery; its own
holder's messages to its own voter; and the ticker that resends, releases idle drawers and
drives a recovery.  Everything runs in the terminal's task group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio

from core.errors import Unavailable
from meshpos.cashier import ledger
from meshpos.cashier.acquire import IDLE_RELEASE_SECONDS
from meshpos.cashier.disk import Disk
from meshpos.cashier.holding import Holding
from meshpos.cashier.learner import check_drawer_wire
from meshpos.cashier.links import Links
from meshpos.cashier.messages import Accept, Commit, Message, Prepare, Release, check_positions, from_wire
from meshpos.cashier.ports import CashierTerminal
from meshpos.cashier.quorum import RETRY_SECONDS, VoterState
from meshpos.cashier.reconcile import Reconciler
from meshpos.cashier.recovering import Recovering
from meshpos.cashier.recovery import Recovery
from meshpos.cashier.requests import Requests
from meshpos.cashier.review import Reviews
from meshpos.cashier.state import CashierState
from meshpos.cashier.voting import Voting

log = logging.getLogger(__name__)

__all__ = ["Cashier"]


class Cashier:
    """One terminal's cashier: its parts, wired, and the API the terminal and the HTTP layer call."""

    def __init__(self, terminal: CashierTerminal) -> None:
        self.state = CashierState(terminal)
        self.links = Links(self.state)
        self.disk = Disk(self.state, self.links)
        self.voting = Voting(self.state, self.disk, self.links)
        self.recovering = Recovering(self.state, self.disk, self.links)
        self.holding = Holding(self.state, self.disk, self.links, self.recovering)
        self.requests = Requests(self.state, self.disk, self.links, self.holding)
        self.reconciler = Reconciler(self.state, self.disk, self.holding, self.requests)
        self.review_queue = Reviews(self.state, self.requests)
        #: Per drawer: what this terminal's voter promised and accepted, and its committed ledger.
        self.states: dict[str, VoterState] = self.state.states  # never replaced: a reload fills it in place
        self.stats = self.state.stats
        self.commit_seconds = self.state.commit_seconds
        # The request API, the drawer views and the review queue: the parts' own methods, bound
        # here so a request costs no extra call.
        self.load = self.disk.load
        self.voters = self.links.voters
        self.open_drawer = self.requests.open_drawer
        self.pay = self.requests.pay
        self.move_cash = self.requests.move_cash
        self.refund = self.requests.refund
        self.close_drawer = self.requests.close_drawer
        self.summary = self.requests.summary
        self.drawer = self.requests.drawer
        self.drawer_names = self.requests.drawer_names
        self.reconcile = self.reconciler.reconcile
        self.reviews = self.review_queue.reviews
        self.review = self.review_queue.review
        self.resolve = self.review_queue.resolve

    def provisional_pending(self) -> dict[str, list[dict[str, Any]]]:
        """Per drawer, the provisional entries this terminal took that are not settled yet, in the
        order taken (what it shows its HQ)."""
        return {drawer: [r["entry"] for r in rows] for drawer in sorted(self.state.provisional)
                if (rows := self.requests.pending(drawer))}

    def on_provisional(self, listener: Callable[[str, dict[str, Any]], None]) -> None:
        """``listener(drawer, entry)`` each time this terminal stores an entry provisionally
        (once it is on disk)."""
        self.state.provisional_listeners.append(listener)

    def ledger_lengths(self) -> dict[str, int]:
        """How far each committed ledger this terminal holds goes (what an HQ has yet to land)."""
        return {drawer: len(st.committed) for drawer, st in self.states.items()}

    @property
    def recovery(self) -> Recovery | None:
        """The rebuilding of a lost state under way (``meshpos recover``), or ``None``."""
        return self.state.recovery

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.state.to_mark |= self.requests.own_covering_payments()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._local_loop)
            tg.start_soon(self._ticker)
            tg.start_soon(self.reconciler.run)
            task_status.started()

    async def _local_loop(self) -> None:
        async with self.links.local as receive:
            async for msg in receive:
                try:
                    await self._deliver(self.state.me, msg)
                except Unavailable as exc:
                    log.error("cashier: %s", exc.message)  # unanswered: the holder resends
                except Exception:  # noqa: BLE001 - one message never stops this terminal's voter
                    log.exception("cashier: a message from this terminal's own holder failed")

    async def receive(self, sender: str, data: dict[str, Any]) -> None:
        """A ``cashier`` control message from an authenticated peer (raises :class:`BadMessage`)."""
        kind = data.get("m")
        try:
            if kind == "heads":
                self.voting.on_heads(sender, data)
            elif kind == "ledger":
                await self.voting.on_relay(sender, data)
            elif kind == "recovery_query":
                self.recovering.on_query(sender, data)
            elif kind == "recovery_report":
                await self.recovering.on_report(sender, data)
            else:
                await self._deliver(sender, from_wire(data, anyio.current_time(), ledger.check_entry))
        except Unavailable as exc:
            log.error("cashier: %s; %s is not answered", exc.message, sender)

    def link_up(self, peer_id: str) -> None:
        """A peer linked: the ledgers' heads go to it, and the reconciler wakes."""
        self.voting.link_up(peer_id)

    async def _deliver(self, sender: str, msg: Message) -> None:
        check_drawer_wire(msg.drawer)  # before anything is kept under that name
        st = self.state.states.get(msg.drawer)
        check_positions(msg, 0 if st is None else len(st.committed))
        if isinstance(msg, Prepare | Accept | Commit | Release):
            await self.voting.vote(sender, msg)
        else:
            self.holding.answer(sender, msg)

    async def _ticker(self) -> None:
        s = self.state
        while True:
            await anyio.sleep(RETRY_SECONDS)
            now = anyio.current_time()
            if s.recovery is not None:
                await self.recovering.drive(now)
            for drawer, hold in list(s.holds.items()):
                idle = now - hold.last_used > IDLE_RELEASE_SECONDS and not hold.waiting
                if idle and hold.holder.phase == "holding" and not s.lock(drawer).locked():
                    await self.holding.release(drawer)
                else:
                    self.links.send(hold.holder.tick(now))
