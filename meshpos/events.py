"""Live domain events with cursors: a UI that reconnects with its last cursor misses nothing.

Events are persisted in the same SQLite transaction as the CRDT update that produced them and
published only after that commit, so the cursor sequence a subscriber sees is gap-free: history
comes from the database, the rest from memory, and the hand-over is de-duplicated by cursor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from storage.store import Store, StoredEvent

#: Per-subscriber live buffer; a UI that falls further behind is disconnected and resumes by cursor.
SUBSCRIBER_BUFFER = 10_000


@dataclass(frozen=True, slots=True)
class Reset:
    """The requested cursor is older than retained history: refetch state, continue from ``cursor``."""

    cursor: int


class Lagged(Exception):
    """The subscriber fell more than :data:`SUBSCRIBER_BUFFER` events behind the live stream."""


#: Live events a subscriber takes from its buffer between two checkpoints.
DRAIN_BATCH = 64


async def _drained(receive: MemoryObjectReceiveStream[StoredEvent]) -> AsyncIterator[StoredEvent]:
    """The live events: what is buffered is taken without a trip through the event loop per
    event (a memory stream's ``receive`` checkpoints every time: 3 of the ~6 µs an event cost a
    subscriber - at 20 terminals a terminal takes in ~19,000 orders a second), then one
    checkpoint per :data:`DRAIN_BATCH`, so a long buffer does not keep other tasks waiting."""
    taken = 0
    while True:
        try:
            event = receive.receive_nowait()
        except anyio.WouldBlock:
            try:
                event = await receive.receive()
            except anyio.EndOfStream:
                return
            taken = 0
        except anyio.EndOfStream:
            return
        else:
            taken += 1
            if taken >= DRAIN_BATCH:
                taken = 0
                await anyio.lowlevel.checkpoint()
        yield event


class EventBus:
    def __init__(self, store: Store, resolve: Callable[[StoredEvent], None] | None = None) -> None:
        """``resolve``: completes an event in place before any subscriber sees it, stored or live
        (the terminal's: :func:`meshpos.documents.orders.resolve_event` builds the order views
        its intake left to the reader)."""
        self.store = store
        self._resolve = resolve or (lambda event: None)
        self._subscribers: set[MemoryObjectSendStream[StoredEvent]] = set()
        self._lagged: set[MemoryObjectSendStream[StoredEvent]] = set()
        store.on_commit(self.publish)

    def publish(self, events: list[StoredEvent]) -> None:
        for send in list(self._subscribers):
            for event in events:
                try:
                    send.send_nowait(event)
                except anyio.WouldBlock:
                    self._lagged.add(send)
                    self._subscribers.discard(send)
                    send.close()
                    break
                except anyio.BrokenResourceError:
                    self._subscribers.discard(send)
                    break

    @asynccontextmanager
    async def subscribe(self, cursor: int | None = None, *,
                        resolved: bool = True) -> AsyncIterator[AsyncIterator[StoredEvent | Reset]]:
        """Events after ``cursor`` (``None``: only new ones), then live ones, in cursor order.

        ``resolved=False``: the events as stored, nothing built for them (a new order's view left
        to its reader stays its map's JSON) - for a reader of ids only, such as the benchmarks'
        watchers, which stand for a terminal that no UI reads events from."""
        resolve = self._resolve if resolved else (lambda event: None)
        send, receive = anyio.create_memory_object_stream[StoredEvent](SUBSCRIBER_BUFFER)
        self._subscribers.add(send)  # before reading history, so nothing falls between the two
        now = self.store.last_cursor  # "new" means after subscribing, not after the first read

        async def iterate() -> AsyncIterator[StoredEvent | Reset]:
            last = now if cursor is None else cursor
            if cursor is not None and cursor > self.store.last_cursor:
                # a cursor from the future: this database was replaced (restore, new box)
                last = self.store.last_cursor
                yield Reset(last)
            elif cursor is not None and cursor < self.store.last_cursor:
                oldest = await self.store.oldest_event_cursor()
                if oldest is None or oldest > cursor + 1:
                    last = self.store.last_cursor
                    yield Reset(last)
                else:
                    while True:
                        page = await self.store.events_after(last, limit=500)
                        for event in page:
                            resolve(event)
                            yield event
                            last = event.cursor
                        if len(page) < 500:
                            break
            async for event in _drained(receive):
                if event.cursor > last:
                    last = event.cursor
                    resolve(event)
                    yield event
            if send in self._lagged:
                self._lagged.discard(send)
                raise Lagged(f"subscriber fell behind by more than {SUBSCRIBER_BUFFER} events")

        try:
            yield iterate()
        finally:
            self._subscribers.discard(send)
            self._lagged.discard(send)
            send.close()
            receive.close()


