"""The cashier of one terminal: the quorum cores wired to storage, the peer links and the API.

Decisions live in pure cores - :mod:`~meshpos.cashier.quorum` (who may append, what is
committed, what a voter stores), :mod:`~meshpos.cashier.learner` (relays, gaps, heads),
:mod:`~meshpos.cashier.acquire` (when taking a drawer retries or gives up) and
:mod:`~meshpos.cashier.ledger` (what the money adds up to, which request is refused).  The shell
around them moves their messages and makes every state change durable before it is answered;
it is split by job - :mod:`~meshpos.cashier.shell` (state, disk, links),
:mod:`~meshpos.cashier.recovering`, :mod:`~meshpos.cashier.holding`,
:mod:`~meshpos.cashier.requests`, :mod:`~meshpos.cashier.reconcile`,
:mod:`~meshpos.cashier.review` - and :class:`Cashier` here routes what arrives:

* as a **voter** (the roster's POS terminals), a quorum message is handled, the changed voter
  state is queued on the store's group commit, and the reply leaves only once that is on disk;
* as a **holder**, a request takes the drawer (or keeps it), completes the ledger, validates,
  appends, and answers once a majority stored the entry and this terminal's copy is on disk;
* as a **learner** (every terminal), committed entries reach its own ledger copy - relayed by the
  holder, or exchanged at link-up (``heads`` / ``ledger``) - and raise the domain events there;
* without a majority, a request with ``allow_provisional`` is stored **provisionally**; the
  reconciler commits it after the heal, or appends it ``in_review`` when it conflicts.

Requests on one drawer are taken one at a time on a terminal (validation sees every earlier
entry); different drawers proceed in parallel.  Everything runs in the terminal's task group.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from core.errors import Unavailable
from meshpos.cashier import ledger
from meshpos.cashier.acquire import ACQUIRE_TIMEOUT, IDLE_RELEASE_SECONDS
from meshpos.cashier.learner import check_drawer_wire
from meshpos.cashier.ledger import check_drawer
from meshpos.cashier.messages import Accept, Commit, Message, Prepare, Release, check_positions, from_wire
from meshpos.cashier.quorum import PROMISE_MAX_ENTRIES, RETRY_SECONDS
from meshpos.cashier.review import Reviews

log = logging.getLogger(__name__)

__all__ = ["ACQUIRE_TIMEOUT", "IDLE_RELEASE_SECONDS", "PROMISE_MAX_ENTRIES", "Cashier", "check_drawer"]


class Cashier(Reviews):
    """One terminal's cashier: the request API, the review queue and the reconciler (the parts
    it is built from, one job each: shell, recovering, holding, requests, reconcile, review),
    and what drives them - the messages from peers and from its own holder, and the ticker."""

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._to_mark |= self._own_covering_payments()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._local_loop, self._local_recv)
            tg.start_soon(self._ticker)
            tg.start_soon(self._reconciler)
            task_status.started()

    async def _local_loop(self, receive: MemoryObjectReceiveStream[Message]) -> None:
        async with receive:
            async for msg in receive:
                try:
                    await self._deliver(self.me, msg)
                except Unavailable as exc:
                    log.error("cashier: %s", exc.message)  # unanswered: the holder resends
                except Exception:  # noqa: BLE001 - one message never stops this terminal's voter
                    log.exception("cashier: a message from this terminal's own holder failed")

    async def receive(self, sender: str, data: dict[str, Any]) -> None:
        """A ``cashier`` control message from an authenticated peer (raises :class:`BadMessage`)."""
        kind = data.get("m")
        try:
            if kind == "heads":
                self._on_heads(sender, data)
            elif kind == "ledger":
                await self._on_relay(sender, data)
            elif kind == "recovery_query":
                self._on_recovery_query(sender, data)
            elif kind == "recovery_report":
                await self._on_recovery_report(sender, data)
            else:
                await self._deliver(sender, from_wire(data, anyio.current_time(), ledger.check_entry))
        except Unavailable as exc:
            log.error("cashier: %s; %s is not answered", exc.message, sender)

    async def _deliver(self, sender: str, msg: Message) -> None:
        check_drawer_wire(msg.drawer)  # before anything is kept under that name
        st = self.states.get(msg.drawer)
        check_positions(msg, 0 if st is None else len(st.committed))
        if isinstance(msg, Prepare | Accept | Commit | Release):
            await self._vote(sender, msg)
        else:
            self._answer(sender, msg)

    async def _ticker(self) -> None:
        while True:
            await anyio.sleep(RETRY_SECONDS)
            now = anyio.current_time()
            if self.recovery is not None:
                await self._drive_recovery(now)
            for drawer, hold in list(self._holds.items()):
                idle = now - hold.last_used > IDLE_RELEASE_SECONDS and not hold.waiting
                if idle and hold.holder.phase == "holding" and not self._lock(drawer).locked():
                    await self._release(drawer)
                else:
                    self._send(hold.holder.tick(now))
