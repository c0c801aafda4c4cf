"""What the mesh needs of the documents it replicates, and of whatever handles other control
messages - the two interfaces through which ``peer/`` talks to the product above it.

The mesh never imports the terminal, its documents or its cashier: the composition root
(``meshpos/terminal.py``) hands it a :class:`Replica` and registers the control handlers, so
``peer/`` depends only on ``core/`` and itself (the contract in pyproject.toml, checked in CI).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any, Protocol


class Ticket(Protocol):
    """A storage commit in flight: :meth:`wait` returns once it is durable, or raises
    :class:`core.errors.StoreError` if it never will be."""

    async def wait(self) -> None: ...


#: ``(document, update, origin, ticket)`` for every change applied to an open document.
UpdateListener = Callable[[str, bytes, str, Any], None]


class Replica(Protocol):
    """The replicated documents of one terminal.

    Errors it raises that the mesh acts on: :class:`core.yupdate.UpdateGap` (the peer's update
    builds on something missing: ask it for a catch-up), any other ``ValueError`` (refused: close
    the link 4006), :class:`core.errors.StoreError` (the disk failed: close 1011, resync later).
    """

    def names(self) -> list[str]:
        """The documents open now (every live day, tables, inventory, archived days fetched)."""

    def is_open(self, name: str) -> bool: ...

    def state_vector(self, name: str) -> bytes: ...

    def diff(self, name: str, state_vector: bytes) -> bytes:
        """What ``name`` holds beyond ``state_vector`` (``ValueError`` if it does not decode)."""

    async def settled(self, name: str) -> None:
        """Returns once every change to ``name`` made so far is durable (answers never get ahead
        of the disk)."""

    async def open(self, name: str) -> None:
        """Open ``name`` (a validated document name): live days writable, others read-only."""

    def apply_remote(self, name: str, updates: list[bytes], origin: str) -> Ticket | None:
        """Apply a peer's updates in one transaction; the ticket of their storage record."""

    async def recover(self) -> None:
        """Reload from disk any document an earlier failure left unlike its stored state."""

    def on_update(self, listener: UpdateListener) -> None: ...

    async def archived_state_vectors(self) -> dict[str, bytes]:
        """State vectors of the stored documents that are not open."""

    def today(self) -> date:
        """The business day now (which archived days are recent enough to fetch)."""

    def record(self, at: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Store ``events`` (link up/down, refusals) durably; :class:`core.errors.StoreError` if
        the disk refuses."""


#: ``(peer id, message)`` of a control message of a type a handler registered for.  Raising
#: :class:`core.errors.MessageRefused` closes the link 4006 with its text.
ControlHandler = Callable[[str, dict[str, Any]], Awaitable[None]]
#: Called with the peer id each time a link to a peer opens.
LinkListener = Callable[[str], None]
