"""The shell of replication: carries out :class:`peer.replication.Replication`'s decisions.

It opens documents, reads state vectors and diffs, applies what peers sent through the durable
path, waits for storage tickets and timers, and queues frames on the links' sync sessions; the
decisions (who is asked for what, when a catch-up or a fetch is over, who gets a change, how
many reads are in flight) are the core's.
"""

from __future__ import annotations

import base64
import contextlib
import random
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from core.errors import INVALID_MESSAGE, PERMISSION_DENIED, StoreError
from core.names import HQ_TYPE
from core.yupdate import UpdateGap
from peer.driver import INTERNAL_ERROR, Link
from peer.link import Closed
from peer.replica import Replica
from peer.replication import AUTO_FETCH_DAYS, CATCH_UP_WAIT, Opening, Replication, by_doc
from peer.sync import AnswerStep1, Apply, Outgoing

FETCH_TIMEOUT = 3.0
#: How often linked peers re-compare state vectors (covers peers that cannot reach each other).
ANTI_ENTROPY_SECONDS = 10.0
#: Least time between two anti-entropy rounds (one brought forward by a lost link).
EARLY_ROUND_GAP = 1.0
#: A learner (the HQ) asks for every archived day a terminal lists that it lacks, however old.
LEARN_ALL_DAYS = 100_000


class Syncing:
    """Replication over ``links`` (peer id -> link, the mesh's registry)."""

    def __init__(self, replica: Replica, links: Mapping[str, Link], rng: random.Random,
                 close: Callable[[Link, int, str], None], *, learn_only: bool = False, me: str = "") -> None:
        """``learn_only``: this side is an HQ - it takes what terminals hold and gives no
        document data back (a step 1 is answered with its own step 1, which the terminal answers
        with what the HQ lacks); see docs/hq.md."""
        self.replica = replica
        self.learn_only = learn_only
        self.links = links
        self.rng = rng
        self._close = close
        #: Catch-ups and fetches across the links (the decisions; this shell waits and sends).
        self.core: Replication[Link] = Replication(catch_up_wait=CATCH_UP_WAIT, me=me)
        #: Archived day -> set when its fetch is over (every asked peer answered or is gone).
        self._fetched: dict[str, anyio.Event] = {}
        #: Peer id -> document -> [the state vector it last asked with - its step 1, on each
        #: link's catch-up and every anti-entropy round -, this terminal's when it answered, this
        #: terminal's when the link ended (``None`` while linked: changes go to it live)], kept
        #: after the link ends: how far apart the two copies were then, and what changed here since
        #: (the monitor's sync state per peer).  An HQ asks only once its landings of the document
        #: committed, so for the ids in :attr:`hq_peers` it is what the HQ has landed (the
        #: terminal's WAN status).
        self.asked_with: dict[str, dict[str, list[bytes | None]]] = {}
        self.hq_peers: set[str] = set()
        #: Set to bring the next anti-entropy round forward (made by the round's task).
        self._round_now: anyio.Event | None = None
        replica.on_update(self._on_local_update)

    # -- a link's life -------------------------------------------------------------------------

    def start(self, link: Link, *, relays: bool = False) -> None:
        """Ask the new peer for what this terminal lacks, one catch-up per document at a time
        (:meth:`peer.replication.Replication.link_opened` says why and decides); tell the
        terminals linked here that this one is too.  ``relays``: the peer's hello says so."""
        if link.peer_type != HQ_TYPE and not self.learn_only:
            self.core.peer_linked(link.peer_id or "", relays)
            self.announce_links()
        if link.peer_type == HQ_TYPE:
            # An HQ answers a step 1 with its own, never with data: it holds no catch-up another
            # link would wait for (a LAN peer linking just after it would wait CATCH_UP_WAIT).
            opening = Opening(list(self.replica.names()), [], 0.0)
        else:
            opening = self.core.link_opened(link, self.replica.names(), anyio.current_time())
        for name in opening.ask:
            link.session.queue_step1(name, self.replica.state_vector(name))
        assert link.tasks is not None  # opened from inside the link's task group
        if opening.later:
            link.tasks.start_soon(self._step1_after_catch_up, link, opening.wait)
        if not self.learn_only:  # an HQ lists no days: it has none to give, and a terminal would ask
            link.tasks.start_soon(self._send_archived, link)
        link.wake.set()

    async def _step1_after_catch_up(self, link: Link, wait: float) -> None:
        with anyio.move_on_after(wait):
            await link.catch_up_done.wait()
        later = self.core.wait_over(link)
        if link.closed is None and link.core.state == "open":
            for name in later:
                if self.replica.is_open(name):  # not closed meanwhile (a day archived at rollover)
                    link.session.queue_step1(name, self.replica.state_vector(name))
            link.wake.set()

    def caught_up(self, link: Link, doc: str | None = None) -> None:
        """``link``'s catch-up of ``doc`` (of every document: the link ended) is over."""
        for waiter in self.core.caught_up(link, doc):
            waiter.catch_up_done.set()

    def peer_gone(self, peer_id: str) -> None:
        """``peer_id``'s link is down: the fetches waiting only for it are over, and the
        terminals still linked learn this one no longer reaches it."""
        relayed = self.core.relays(peer_id)
        open_docs = set(self.replica.names())
        for doc, record in self.asked_with.get(peer_id, {}).items():
            if doc in open_docs:  # what it was sent live, up to now, is taken as received
                record[2] = self.replica.state_vector(doc)
        for doc in self.core.peer_gone(peer_id):
            self._fetch_over(doc)
        if not self.learn_only:
            self.announce_links()
            if relayed and self._round_now is not None:
                self._round_now.set()

    def _terminals(self) -> dict[str, Link]:
        return {peer_id: link for peer_id, link in self.links.items() if link.peer_type != HQ_TYPE}

    def announce_links(self) -> None:
        """Send every relaying peer the terminals this one is linked to (the ``links`` message:
        what :meth:`Replication.forward_to` decides by on their side)."""
        terminals = self._terminals()
        peers = sorted(terminals)
        relays = [peer_id for peer_id in peers if self.core.relays(peer_id)]
        for peer_id, link in terminals.items():
            if self.core.relays(peer_id) and link.core.state == "open":
                link.session.queue_links(peers, relays)
                link.wake.set()

    def links_announced(self, link: Link, peers: list[str], relays: list[str]) -> None:
        self.core.links_announced(link.peer_id or "", peers, relays)

    async def _send_archived(self, link: Link) -> None:
        try:
            vectors = await self.replica.archived_state_vectors()
        except StoreError as exc:  # its own task: an error here must end this link, not the terminal
            self._close(link, INTERNAL_ERROR, f"storage is failing ({exc}); resync later"[:120])
            return
        archived = {name: base64.b64encode(sv).decode() for name, sv in vectors.items()}
        if link.core.state == "open":
            link.session.queue_control({"type": "docs", "archived": archived})
            link.wake.set()

    # -- what goes out -------------------------------------------------------------------------

    def _on_local_update(self, name: str, update: bytes, origin: str, ticket: Any) -> None:
        """Queue a change applied here for the links :meth:`Replication.forward_to` names."""
        if self.learn_only:
            return
        uplinks = [link for link in self.links.values()
                   if link.peer_type == HQ_TYPE and origin != f"peer:{link.peer_id}"]
        item = Outgoing(ticket=ticket, update_of=name, update=update)
        for link in self.core.forward_to(name, origin, self._terminals(), uplinks):
            link.session.queue_shared(item)
            link.wake.set()

    async def anti_entropy(self) -> None:
        """Every :data:`ANTI_ENTROPY_SECONDS`, ask each peer for what this terminal lacks (step 1).

        An answer is an empty step 2 when nothing is missing; otherwise it carries exactly the
        changes that reached this terminal's peers but not it (a frame lost, or not passed on
        because a peer was taken to reach this terminal over a link that had died unnoticed).
        A lost link brings the next round forward (:meth:`peer_gone`), at most one round per
        :data:`EARLY_ROUND_GAP` seconds: what the lost peer would have passed on is asked of the
        others at once, not up to 12 s later.
        """
        while True:
            self._round_now = anyio.Event()
            await anyio.sleep(EARLY_ROUND_GAP)
            with anyio.move_on_after(ANTI_ENTROPY_SECONDS * self.rng.uniform(0.8, 1.2) - EARLY_ROUND_GAP):
                await self._round_now.wait()
            for link in list(self.links.values()):
                for name in self.replica.names():
                    link.session.queue_step1(name, self.replica.state_vector(name))
                link.wake.set()

    async def answer_step1(self, link: Link, intent: AnswerStep1) -> None:
        await self.replica.open(intent.doc)
        if link.peer_type == HQ_TYPE:
            self.hq_peers.add(link.peer_id or "")
        if self.learn_only:  # what the terminal lacks is not the HQ's to give: ask for what it holds
            await self.replica.settled(intent.doc)  # what it asks with is landed, not just received
            self._asked(link, intent)
            link.session.queue_step1(intent.doc, self.replica.state_vector(intent.doc))
            link.wake.set()
            return
        await self.replica.settled(intent.doc)
        self._asked(link, intent)  # with the state the answer is computed from (no await between)
        try:
            update = self.replica.diff(intent.doc, intent.state_vector)
        except ValueError as exc:
            self._close(link, INVALID_MESSAGE, f"state vector of {intent.doc} does not decode ({exc})")
            return
        link.session.queue_step2(intent.doc, update)
        link.wake.set()

    def _asked(self, link: Link, intent: AnswerStep1) -> None:
        self.asked_with.setdefault(link.peer_id or "", {})[intent.doc] = [
            intent.state_vector, self.replica.state_vector(intent.doc), None]

    def resync(self, link: Link, names: list[Any]) -> None:
        """The peer dropped updates for ``names``: ask it for what this terminal lacks of them."""
        for name in Replication.resync_docs(names, set(self.replica.names())):
            link.session.queue_step1(name, self.replica.state_vector(name))
        link.wake.set()

    # -- what comes in -------------------------------------------------------------------------

    async def apply(self, link: Link, applies: list[Apply]) -> None:
        """Apply what one read brought, one transaction (one storage record) per document, and
        wait for the reads :class:`peer.replication.ReadWindow` says are due."""
        if not applies:
            return
        if link.peer_type == HQ_TYPE:
            self._close(link, PERMISSION_DENIED, "an HQ writes only the catalog, and not as document updates")
            return
        tickets = []
        error: Closed | None = None
        for doc, items in by_doc(applies).items():
            try:
                await self.replica.open(doc)
                tickets.append(self.replica.apply_remote(doc, [a.update for a in items], f"peer:{link.peer_id}"))
            except UpdateGap as gap:
                # It overtook what it builds on (a live update ahead of the catch-up): ask for all
                # this terminal lacks instead; the answer (a step 2) carries it.
                tickets.append(gap.ticket)
                link.session.queue_step1(doc, self.replica.state_vector(doc))
                link.wake.set()
            except ValueError as exc:  # refused by its shape (core/yupdate.py) or by pycrdt
                error = Closed(INVALID_MESSAGE, f"update for {doc} refused: {exc}", by_peer=False)
                break
            except StoreError as exc:
                error = Closed(INTERNAL_ERROR, f"storage is failing ({exc}); resync later", by_peer=False)
                break
        with anyio.CancelScope(shield=True):  # pycrdt failed on an update: back to what is on disk
            await self.replica.recover()
        for read in link.reads.applied([t for t in tickets if t is not None], applies, failed=error is not None):
            await self._settle(link, *read)
        if error is not None:
            self._close(link, error.code, error.reason)

    async def _settle(self, link: Link, tickets: list[Any], applies: list[Apply]) -> None:
        for ticket in tickets:
            with contextlib.suppress(StoreError):
                await ticket.wait()
        for a in applies:
            if a.step2:
                self.caught_up(link, a.doc)
                if self.core.answered(link.peer_id, a.doc):
                    self._fetch_over(a.doc)

    # -- archived days -------------------------------------------------------------------------

    async def on_archived(self, link: Link, archived: dict[str, Any]) -> None:
        """Sync the archived days :meth:`Replication.archived_to_sync` picks."""
        ours = await self.replica.archived_state_vectors()
        days = LEARN_ALL_DAYS if self.learn_only else AUTO_FETCH_DAYS
        for name in Replication.archived_to_sync(archived, ours, set(self.replica.names()), self.replica.today(),
                                                 days):
            await self.replica.open(name)
            link.session.queue_step1(name, self.replica.state_vector(name))
        link.wake.set()

    async def fetch(self, name: str) -> None:
        """Ask every linked peer for ``name`` (an archived day) and wait for their answers, briefly."""
        peers = {peer_id: link for peer_id, link in self.links.items() if link.peer_type != HQ_TYPE}
        if not peers:
            return
        await self.replica.open(name)
        self.core.fetch(name, peers)
        done = self._fetched.setdefault(name, anyio.Event())
        for link in peers.values():
            link.session.queue_step1(name, self.replica.state_vector(name))
            link.wake.set()
        with anyio.move_on_after(FETCH_TIMEOUT):
            await done.wait()
        self.core.fetch_over(name)
        self._fetched.pop(name, None)

    def _fetch_over(self, doc: str) -> None:
        done = self._fetched.get(doc)
        if done is not None:
            done.set()
