"""The browser clients bound to each document over the Yjs route, and what each is sent next.

A terminal owns one :class:`UiRooms`; the host calls :meth:`UiRooms.on_update` for every change
queued for storage (local API, peer, another browser).  Each client gets the change through its
own bounded queue, and its connection's writer sends it only once the change is durable: a
browser never shows what a failed commit took back.  A client that falls more than
:data:`QUEUE_FRAMES` frames behind is cut off (close 4005) rather than buffered without end; its
provider reconnects and syncs what it missed in one step 2.

Awareness (who looks at which ticket) lives here too, per document, in memory only: it is about
the people at the screens now, not a record of the restaurant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from core.ymessages import UPDATE, AwarenessEntry, AwarenessTable, encode_awareness, encode_sync

#: Frames a client's queue holds before it is cut off (close 4005).
QUEUE_FRAMES = 2_000


@dataclass(slots=True)
class Outgoing:
    """One frame for a client; ``ticket``: the storage ticket to wait for first (``None``: the
    frame is already about durable state, or is awareness)."""

    frame: bytes
    ticket: Any = None


@dataclass(eq=False, slots=True)
class UiClient:
    """One connection on the Yjs route."""

    doc: str
    client: str
    send: MemoryObjectSendStream[Outgoing] = field(init=False)
    receive: MemoryObjectReceiveStream[Outgoing] = field(init=False)
    #: Set when the queue overflowed: the connection is cut at once (close 4005) - its writer
    #: may be stuck in a send the client never reads.
    behind: anyio.Event = field(default_factory=anyio.Event)

    def __post_init__(self) -> None:
        self.send, self.receive = anyio.create_memory_object_stream[Outgoing](QUEUE_FRAMES)

    def push(self, item: Outgoing) -> None:
        if self.behind.is_set():
            return
        try:
            self.send.send_nowait(item)
        except anyio.WouldBlock:
            self.behind.set()
            self.send.close()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the connection is ending


class UiRooms:
    def __init__(self) -> None:
        self.rooms: dict[str, set[UiClient]] = {}
        self.awareness: dict[str, AwarenessTable] = {}
        #: The client whose update is being applied now (the host calls :meth:`on_update` inside
        #: that call): it has the change already and is not sent it back.
        self.applying: UiClient | None = None

    def join(self, client: UiClient) -> None:
        self.rooms.setdefault(client.doc, set()).add(client)
        self.awareness.setdefault(client.doc, AwarenessTable())

    def leave(self, client: UiClient) -> None:
        """``client`` is gone: the others are told its awareness states are."""
        room = self.rooms.get(client.doc, set())
        room.discard(client)
        client.send.close()
        table = self.awareness.get(client.doc)
        removals = table.drop(client) if table is not None else []
        if removals:
            self.broadcast(client.doc, encode_awareness(removals))
        if not room:
            self.rooms.pop(client.doc, None)
            self.awareness.pop(client.doc, None)

    def clients(self) -> int:
        return sum(len(room) for room in self.rooms.values())

    def on_update(self, name: str, update: bytes, origin: str, ticket: Any) -> None:
        room = self.rooms.get(name)
        if not room:
            return
        frame = encode_sync(UPDATE, update)
        for client in room:
            if client is not self.applying:
                client.push(Outgoing(frame, ticket))

    def aware(self, client: UiClient, entries: tuple[AwarenessEntry, ...]) -> None:
        """Awareness ``client`` sent: what changed goes to every client of the document - the
        sender too, as y-websocket's own server does: a provider that hears nothing for 30 s
        takes the connection for dead, and its awareness renewal every 15 s is what it hears."""
        changed = self.awareness[client.doc].apply(client, entries)
        if changed:
            self.broadcast(client.doc, encode_awareness(changed))

    def awareness_of(self, doc: str) -> bytes | None:
        states = self.awareness[doc].snapshot() if doc in self.awareness else []
        return encode_awareness(states) if states else None

    def broadcast(self, doc: str, frame: bytes, *, but: UiClient | None = None) -> None:
        for client in self.rooms.get(doc, ()):
            if client is not but:
                client.push(Outgoing(frame))
