"""The sans-I/O replication core: which document is asked of which peer, when, and who gets what.

:class:`peer.sync.SyncSession` is one link's outbox; this is what spans the links of a terminal -
one catch-up per document at a time, fetches of archived days, which archived days to sync, which
links get a local change, and how many reads of one link may be in flight.  It is fed events
("link opened", "step 2 durable", "link gone", "archived list received", "local update") and
answers with decisions (documents to ask for, links to wake, fetches that are over, links to
forward to).  It never touches a socket, a clock or the documents: the shell (:mod:`peer.mesh`)
passes in the time, the open documents and state vectors, and executes the answers, so
``tests/test_replication.py`` drives it by hand in milliseconds.

Links are opaque keys here (the shell's link objects): the core only compares and hashes them.
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Generic, TypeVar

from core.names import orders_day
from core.yupdate import decode_state_vector
from peer.sync import Apply
from peer.wire import WireError, check_doc_name, peer_state_vector

#: How long a new link's step 1 for a document waits for another link's catch-up of it.
CATCH_UP_WAIT = 3.0
#: Archived days a peer holds and this terminal lacks are fetched at link-up if this recent;
#: older ones on request (:meth:`peer.mesh.Mesh.fetch`).
AUTO_FETCH_DAYS = 7
#: Most document names one ``resync`` or ``docs`` message may list.
MAX_DOCS_PER_MESSAGE = 1000

L = TypeVar("L", bound=Hashable)


class _CatchUp:
    """One link's unanswered step 1 for one document (compared by identity: a catch-up taken over
    by another link after :data:`CATCH_UP_WAIT` is a new one, and ending the old holder's no
    longer releases those that waited for it - they wait out their time instead)."""

    __slots__ = ("holder", "since")

    def __init__(self, holder: Hashable, since: float) -> None:
        self.holder, self.since = holder, since


@dataclass(slots=True)
class _Wait:
    docs: list[str]  # asked for once the wait is over
    pending: set[_CatchUp]  # the other links' catch-ups it waits for


@dataclass(frozen=True, slots=True)
class Opening:
    """What a new link is asked first: ``ask`` now, ``later`` once the other links' catch-ups of
    them are over (:meth:`Replication.caught_up` names the link) or after ``wait`` seconds."""

    ask: list[str]
    later: list[str]
    wait: float


class Replication(Generic[L]):
    """Catch-ups and fetches of one terminal, over all its links."""

    def __init__(self, *, catch_up_wait: float = CATCH_UP_WAIT, me: str = "") -> None:
        self.catch_up_wait = catch_up_wait
        #: This terminal's id (the tie-break of :meth:`forward_to`).
        self.me = me
        #: Peer id -> the terminals it announced links to (its last ``links`` message).
        self._neighbours: dict[str, frozenset[str]] = {}
        #: Peer id -> those of its announced links that pass changes on.
        self._relays_of: dict[str, frozenset[str]] = {}
        #: Linked peers that pass changes on and announce their links (hello ``relays``).
        self._relaying: set[str] = set()
        #: Document -> the link whose step 1 for it is unanswered (and since when).
        self._catching_up: dict[str, _CatchUp] = {}
        #: Link -> the documents it asks for once the catch-ups it waits for are over.
        self._waiting: dict[L, _Wait] = {}
        #: Archived day -> the peers whose answer a fetch still waits for.
        self._fetches: dict[str, set[str]] = {}

    # -- catch-up at link-up -------------------------------------------------------------------

    def link_opened(self, link: L, names: Iterable[str], now: float) -> Opening:
        """Ask the new peer for what this terminal lacks (step 1 per open document) - one
        catch-up per document at a time.

        After a heal, links to every peer of the other side open within moments; each answered
        step 1 would carry the same thousands of updates, decoded and stored once per peer.  So a
        document another link is already catching up on is asked for once that catch-up is over
        (or after :attr:`catch_up_wait`): by then this terminal's state vector covers it and the
        new peer sends only what the first one lacked.
        """
        ask: list[str] = []
        later: list[str] = []
        pending: set[_CatchUp] = set()
        for name in names:
            busy = self._catching_up.get(name)
            if busy is not None and busy.holder != link and now - busy.since < self.catch_up_wait:
                later.append(name)
                pending.add(busy)
                continue
            self._catching_up[name] = _CatchUp(link, now)
            ask.append(name)
        if later:
            self._waiting[link] = _Wait(later, pending)
        return Opening(ask, later, self.catch_up_wait)

    def holders(self) -> dict[str, L]:
        """Each document being caught up on, and the link whose answer the others wait for."""
        return {name: c.holder for name, c in self._catching_up.items()}

    def caught_up(self, link: L, doc: str | None = None) -> list[L]:
        """``link``'s catch-up of ``doc`` (of every document: the link ended) is over; returns the
        links whose wait that ended (ask them :meth:`wait_over` now)."""
        ended = set()
        for name, catch_up in list(self._catching_up.items()):
            if catch_up.holder == link and doc in (None, name):
                del self._catching_up[name]
                ended.add(catch_up)
        if doc is None:
            self._waiting.pop(link, None)
        if not ended:
            return []
        woken = []
        for waiter, wait in self._waiting.items():
            if wait.pending & ended:
                wait.pending -= ended
                if not wait.pending:
                    woken.append(waiter)
        return woken

    def wait_over(self, link: L) -> list[str]:
        """The documents ``link`` waited to ask for (its wait is over, or timed out)."""
        wait = self._waiting.pop(link, None)
        return [] if wait is None else wait.docs

    def catching_up(self, doc: str) -> L | None:
        """The link whose catch-up of ``doc`` is under way, if any."""
        busy = self._catching_up.get(doc)
        return None if busy is None else busy.holder  # type: ignore[return-value]

    # -- fetches of archived days --------------------------------------------------------------

    def fetch(self, doc: str, peers: Iterable[str]) -> None:
        """A fetch of ``doc`` asks ``peers`` (every linked one); it is over once each answered
        (:meth:`answered`) or is gone (:meth:`peer_gone`)."""
        self._fetches.setdefault(doc, set()).update(peers)

    def fetch_over(self, doc: str) -> None:
        self._fetches.pop(doc, None)

    def answered(self, peer_id: str | None, doc: str) -> bool:
        """``peer_id``'s step 2 for ``doc`` is durable; whether that ended a fetch of ``doc``."""
        pending = self._fetches.get(doc)
        if pending is None:
            return False
        pending.discard(peer_id)  # type: ignore[arg-type]
        return not pending

    def peer_gone(self, peer_id: str) -> list[str]:
        """``peer_id``'s link is down: it answers no fetch, and what it announced is forgotten;
        returns the fetches that ended."""
        self._neighbours.pop(peer_id, None)
        self._relays_of.pop(peer_id, None)
        self._relaying.discard(peer_id)
        done = []
        for doc, pending in self._fetches.items():
            pending.discard(peer_id)
            if not pending:
                done.append(doc)
        return done

    # -- what is sent to whom ------------------------------------------------------------------

    def peer_linked(self, peer_id: str, relays: bool) -> None:
        """``peer_id`` linked; ``relays``: its hello says it passes changes on and announces its
        links (a terminal does; a JavaScript client or an HQ does neither)."""
        self._neighbours.pop(peer_id, None)
        self._relays_of.pop(peer_id, None)
        if relays:
            self._relaying.add(peer_id)
        else:
            self._relaying.discard(peer_id)

    def relays(self, peer_id: str) -> bool:
        return peer_id in self._relaying

    def neighbours(self, peer_id: str) -> frozenset[str]:
        """The terminals ``peer_id`` last announced links to (none known: empty)."""
        return self._neighbours.get(peer_id, frozenset())

    def links_announced(self, peer_id: str, peers: Iterable[str], relays: Iterable[str] = ()) -> None:
        """``peer_id`` says which terminals it is linked to now, and which of them pass changes
        on (its ``links`` message)."""
        self._neighbours[peer_id] = frozenset(peers)
        self._relays_of[peer_id] = frozenset(relays)

    def forward_to(self, doc: str, origin: str, peers: Mapping[str, L], uplinks: Collection[L] = ()) -> list[L]:
        """The links a change to ``doc`` applied here with ``origin`` is shipped to.

        ``peers`` are the linked terminals by id; ``uplinks`` the links to an HQ other than the
        one the change came from - every change goes up them: the writer may have no WAN, and an
        HQ lands each change once however many terminals bring it (docs/hq.md).

        This terminal's own changes go to every peer.  A change that came from peer ``S`` is
        passed on to a peer ``Q`` unless ``S`` announced a link to ``Q`` (``S`` sent it there
        itself, or the terminal ``S`` got it from did), and, of the terminals that pass changes
        on and announced links to both ``S`` and ``Q``, only the one with the smallest id passes
        it on (all of them got it from ``S``: the handhelds behind several access points get one
        copy, not one per box; a JavaScript client linked to both passes nothing on, so it is
        not counted).  pycrdt reports only what was new here, so a terminal passes a change on once,
        when it first gets it.  What is not known is taken as "no link": a sender that never
        announced reaches nobody else, a peer that never announced is linked to nobody - more
        copies, never fewer.  docs/protocol.md ("Forwarding") gives the argument that this
        reaches every terminal of a connected graph when each hop takes about as long as any
        other, the measured copies per change, and the rare miss (a change overtaking itself by
        several hops, or a link that closed a moment ago) that the periodic state-vector
        exchange (anti-entropy) takes up.
        """
        if not origin.startswith("peer:"):
            return [*peers.values(), *uplinks]
        sender = origin[len("peer:"):]
        chosen: list[L] = list(uplinks)
        reached = self.neighbours(sender)
        relaying = self._relays_of.get(sender, frozenset())
        for peer_id, link in peers.items():
            if peer_id == sender or peer_id in reached:
                continue
            also = relaying & self.neighbours(peer_id)
            if also and min(also) < self.me:
                continue  # a smaller terminal linked to both passes it on
            chosen.append(link)
        return chosen

    @staticmethod
    def resync_docs(names: list[Any], open_names: Collection[str]) -> list[str]:
        """The documents a peer's ``resync`` asks this terminal to ask it for (those open here:
        a peer asking after a document this terminal never sent gets nothing).  Raises
        :class:`WireError` on a malformed list."""
        if len(names) > MAX_DOCS_PER_MESSAGE:
            raise WireError(f"resync lists more than {MAX_DOCS_PER_MESSAGE} documents")
        asked = []
        for name in names:
            name = check_doc_name(name) if isinstance(name, str) else check_doc_name(repr(name))
            if name in open_names:
                asked.append(name)
        return asked

    @staticmethod
    def archived_to_sync(archived: dict[str, Any], ours: dict[str, bytes], open_names: Collection[str],
                         today: date, auto_fetch_days: int = AUTO_FETCH_DAYS) -> list[str]:
        """The archived days of a peer's ``docs`` message to ask it for: those both hold that
        differ, and those only it holds that are recent (:data:`AUTO_FETCH_DAYS`).  Days open
        here are left out (the step 1 at link-up covers them).  Raises :class:`WireError` on a
        malformed message."""
        if len(archived) > MAX_DOCS_PER_MESSAGE:
            raise WireError(f"docs lists more than {MAX_DOCS_PER_MESSAGE} archived days")
        asked = []
        for name, encoded in archived.items():
            day = orders_day(check_doc_name(name))
            if day is None or name in open_names or (day - today).days > 1:
                continue  # not an archived day (a day still to come: a peer's bad clock, or a flood)
            try:
                theirs = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else None
            except ValueError:
                raise WireError(f"docs: the state vector of {name} is not base64") from None
            if name in ours:
                if theirs is not None and decode_state_vector(ours[name]) == peer_state_vector(theirs):
                    continue
            elif (today - day).days > auto_fetch_days:
                continue
            asked.append(name)
        return asked


@dataclass(slots=True)
class ReadWindow:
    """What one link's reads applied and is not known durable yet: at most two reads in flight.

    The records of one read of live updates may still be committing while the next read is
    applied (they join the same group commit); the read after that waits for them.  So a link
    has at most two reads' worth in flight, and the frames of many small reads share one fsync.
    A read with a step 2 (or one that failed) is waited for at once: the catch-up or fetch it
    ends is over only once it is durable.
    """

    #: The last read's (storage tickets, frames), not waited for yet.
    unsettled: tuple[list[Any], list[Apply]] | None = None

    def applied(self, tickets: list[Any], applies: list[Apply], *,
                failed: bool = False) -> list[tuple[list[Any], list[Apply]]]:
        """One read was applied (``failed``: and the link closes): the reads to wait for now,
        oldest first."""
        previous, self.unsettled = self.unsettled, (tickets, applies)
        due = [] if previous is None else [previous]
        if failed or any(a.step2 for a in applies):
            due.append(self.unsettled)
            self.unsettled = None
        return due


def by_doc(applies: list[Apply]) -> dict[str, list[Apply]]:
    """One read's frames grouped by document, in order: one transaction (one storage record)
    per document instead of one per frame."""
    grouped: dict[str, list[Apply]] = {}
    for a in applies:
        grouped.setdefault(a.doc, []).append(a)
    return grouped
