"""The sans-I/O Yjs sync state of one link: a bounded outbox and decoded intents.

Outgoing updates wait in a per-link outbox until the local store has made them durable; the
outbox is bounded in bytes, and a peer that falls further behind than that (stalled, slow Wi-Fi)
stops being queued for: its pending updates are dropped and it is asked for its state vectors
instead (``resync``), so it receives exactly what it lacks in one step 2 per document once it
catches up.  Memory per peer therefore stays below :attr:`SyncSession.max_queue_bytes` however
long the peer stalls, and nothing is lost: Yjs state vectors, not the queue, are the source of
truth for what a peer is missing.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass
from typing import Any

from core.yupdate import merge_run
from peer.wire import STEP1, STEP2, UPDATE, SyncFrame, decode_sync, encode_sync

#: Default bound of one peer's outbox (encoded frames waiting to be written).
MAX_QUEUE_BYTES = 8 * 1024 * 1024


@functools.lru_cache(maxsize=32)
def _update_frame(doc: str, updates: tuple[bytes, ...]) -> bytes:
    """The frame of a run, merged once for every link it goes to: each link's writer encodes the
    run its outbox holds, and in a full mesh of 20 the same run left on 19 links - merged 19
    times, 7 % of a busy terminal's CPU (docs/performance.md, "Where the intake goes").  Keyed
    by the updates' bytes (a run equal in content is the same frame); 32 runs held at most."""
    return encode_sync(doc, UPDATE, merge_run(updates))


@dataclass(slots=True)
class Outgoing:
    """A frame for the peer; ``ticket`` (a :class:`storage.store.Ticket`) must be durable first."""

    data: bytes | None = None  # binary sync frame
    control: dict[str, Any] | None = None
    ticket: Any = None
    update_of: str | None = None  # the document, for an update (``update`` holds it, unencoded)
    update: bytes = b""


@dataclass(frozen=True, slots=True)
class AnswerStep1:
    """The peer sent its state vector: answer with step 2 (what it lacks) from a settled doc."""

    doc: str
    state_vector: bytes


@dataclass(frozen=True, slots=True)
class Apply:
    doc: str
    update: bytes
    step2: bool


class SyncSession:
    def __init__(self, *, max_queue_bytes: int = MAX_QUEUE_BYTES) -> None:
        self.max_queue_bytes = max_queue_bytes
        self.outbox: deque[Outgoing] = deque()
        self.queued_bytes = 0
        #: Updates were dropped: ask the peer for its state vectors before queueing more.
        self.resync_needed = False
        #: Documents whose updates were dropped: the peer is asked for their state vectors.
        self.dropped: set[str] = set()
        #: The ``links`` announcement waiting in the outbox, if any.
        self._links: Outgoing | None = None
        self.updates_in = 0
        self.updates_out = 0
        self.resyncs = 0

    # -- outgoing ------------------------------------------------------------------------------

    def queue_shared(self, item: Outgoing) -> None:
        """Queue an update (``item.update_of`` set).  Every link an update goes to queues the same
        item - nothing changes an item once queued - where one each cost 19 objects per write at
        20 terminals."""
        if self.resync_needed:
            self.dropped.add(item.update_of)  # type: ignore[arg-type]  # the resync's step 2 will carry it
            return
        if self.queued_bytes + len(item.update) > self.max_queue_bytes:
            self.dropped.add(item.update_of)  # type: ignore[arg-type]
            self._overflow()
            return
        self.outbox.append(item)
        self.queued_bytes += len(item.update)

    def queue_step1(self, doc: str, state_vector: bytes) -> None:
        self._queue(Outgoing(data=encode_sync(doc, STEP1, state_vector)))

    def queue_step2(self, doc: str, update: bytes) -> None:
        self._queue(Outgoing(data=encode_sync(doc, STEP2, update)))
        self.updates_out += 1  # a catch-up is an update sent, as its receipt counts in updates_in

    def queue_control(self, message: dict[str, Any]) -> None:
        self._queue(Outgoing(control=message))

    def queue_links(self, peers: list[str], relays: list[str]) -> None:
        """Announce the terminals this one is linked to (and which of them pass changes on);
        one not sent yet is replaced, not followed by another (a restart links to every peer
        within a second)."""
        message = {"type": "links", "peers": peers, "relays": relays}
        if self._links is not None and any(item is self._links for item in self.outbox):
            self._links.control = message
            return
        self._links = Outgoing(control=message)
        self._queue(self._links)

    def _queue(self, item: Outgoing) -> None:
        self.outbox.append(item)
        self.queued_bytes += len(item.data or b"")

    def _overflow(self) -> None:
        self.dropped.update(item.update_of for item in self.outbox if item.update_of is not None)
        kept = deque(item for item in self.outbox if item.update_of is None)
        self.outbox = kept
        self.queued_bytes = sum(len(item.data or b"") + len(item.update) for item in kept)
        self.resync_needed = True
        self.resyncs += 1

    def take(self) -> list[Outgoing]:
        """Everything queued, in order; a pending resync request goes last (see module doc)."""
        items = list(self.outbox)
        self.outbox.clear()
        self.queued_bytes = 0
        if self.resync_needed:
            self.resync_needed = False
            items.append(Outgoing(control={"type": "resync", "docs": sorted(self.dropped)}))
            self.dropped = set()
        self.updates_out += sum(1 for item in items if item.update_of is not None)
        return items

    def encode_updates(self, doc: str, updates: list[bytes]) -> bytes:
        """One frame for a run of durable updates to one document (merged: one apply, one record
        on the peer instead of one per update - what keeps a burst cheap on both ends)."""
        return _update_frame(doc, tuple(u if type(u) is bytes else bytes(u) for u in updates))  # hashable

    # -- incoming ------------------------------------------------------------------------------

    def receive(self, data: bytes) -> AnswerStep1 | Apply:
        """Decode one binary message (raises :class:`peer.wire.WireError` on anything malformed)."""
        frame: SyncFrame = decode_sync(data)
        if frame.kind == STEP1:
            return AnswerStep1(frame.doc, frame.payload)
        self.updates_in += 1
        return Apply(frame.doc, frame.payload, step2=frame.kind == STEP2)
