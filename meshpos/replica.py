"""The terminal's documents as the mesh sees them (:class:`peer.replica.Replica`).

The adapter is the whole of what ``peer/`` may do to the product: read state vectors and diffs,
apply peers' updates through the durable path, open days, record link events.  The terminal
builds it from its document host, its store and three of its own methods, so this module knows
nothing of the terminal either.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

from meshpos.documents.host import DocumentHost
from peer.replica import UpdateListener
from storage.store import Store, Ticket


class TerminalReplica:
    """:class:`peer.replica.Replica` over a terminal's document host and store."""

    def __init__(self, host: DocumentHost, store: Store, *, open_doc: Callable[[str], Awaitable[None]],
                 archived_state_vectors: Callable[[], Awaitable[dict[str, bytes]]],
                 today: Callable[[], date]) -> None:
        self._host, self._store = host, store
        self._open_doc, self._archived, self._today = open_doc, archived_state_vectors, today

    def names(self) -> list[str]:
        return self._host.names()

    def is_open(self, name: str) -> bool:
        return self._host.get(name) is not None

    def state_vector(self, name: str) -> bytes:
        return self._host.state_vector(name)

    def diff(self, name: str, state_vector: bytes) -> bytes:
        return self._host.diff(name, state_vector)

    async def settled(self, name: str) -> None:
        await self._host.settled(name)

    async def open(self, name: str) -> None:
        await self._open_doc(name)

    def apply_remote(self, name: str, updates: list[bytes], origin: str) -> Ticket | None:
        return self._host.apply_remote(name, updates, origin)

    async def recover(self) -> None:
        if self._store.stale_docs:
            await self._host.reload_stale()

    def on_update(self, listener: UpdateListener) -> None:
        self._host.on_update(listener)

    async def archived_state_vectors(self) -> dict[str, bytes]:
        return await self._archived()

    def today(self) -> date:
        return self._today()

    def record(self, at: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        self._store.enqueue_rows(origin="mesh", at=at, events=events)
