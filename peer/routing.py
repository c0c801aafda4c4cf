"""Where what a link brings goes: sync frames to the sync shell, control messages to their owner.

The link core reports actions (a hello that opened, a binary frame, a control message, a
heartbeat, a close); this routes each one.  Sync frames of one read that carry updates are
collected and applied together (one transaction per document); ``roster``, ``resync``,
``links``, ``via`` and ``docs`` are the mesh's own control messages, every other type goes to the handler registered
for it (the cashier's), whose refusal closes the link 4006.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from core.errors import INVALID_MESSAGE, MessageRefused
from peer.driver import Link, LinkDriver
from peer.identity import IdentityError
from peer.link import Binary, Closed, Control, Heartbeat, Opened
from peer.replica import ControlHandler
from peer.status import PeerBook
from peer.sync import Apply
from peer.syncing import Syncing
from peer.wire import WireError, links_of, value_of

log = logging.getLogger("peer.mesh")


class Router:
    def __init__(self, *, syncing: Syncing, driver: LinkDriver, book: PeerBook,
                 adopt_roster: Callable[[str], Awaitable[bool]],
                 opened: Callable[[Link, dict[str, Any]], None]) -> None:
        self.syncing = syncing
        self.driver = driver
        self.book = book
        self._adopt_roster = adopt_roster
        self._opened = opened
        #: Control message type -> its handler (the cashier's).
        self.handlers: dict[str, ControlHandler] = {}
        #: Takes in a ``via`` envelope (:meth:`peer.carrying.Carrying.received`).
        self.carried: Callable[[Link, dict[str, Any]], Awaitable[None]] | None = None

    async def act(self, link: Link, actions: list[Any]) -> None:
        applies: list[Apply] = []
        for action in actions:
            if link.closed is not None:
                return
            if isinstance(action, Binary):
                try:
                    intent = link.session.receive(action.data)
                except WireError as exc:
                    await self.syncing.apply(link, applies)  # the frames before it were sound
                    if link.closed is None:
                        self.driver.close(link, exc.code, str(exc))
                    return
                if isinstance(intent, Apply):
                    applies.append(intent)
                    continue
                await self.syncing.apply(link, applies)
                applies = []
                await self.syncing.answer_step1(link, intent)
                continue
            await self.syncing.apply(link, applies)
            applies = []
            if isinstance(action, Opened):
                with contextlib.suppress(IdentityError):  # authorize() verified it; adopted if newer
                    await self._adopt_roster(action.hello["roster"])
                if link.closed is not None:
                    return
                self._opened(link, action.hello)
            elif isinstance(action, Control):
                try:
                    await self.control(link, action.message)
                except WireError as exc:
                    self.driver.close(link, exc.code, str(exc))
            elif isinstance(action, Heartbeat):
                if link.registered:
                    self.book.heartbeat(link.peer_id or "", action.rtt)
            elif isinstance(action, Closed):
                self.driver.mark_closed(link, action)
        if link.closed is None:
            await self.syncing.apply(link, applies)

    async def control(self, link: Link, message: dict[str, Any]) -> None:
        """One control message of an open link (raises :class:`WireError` if malformed)."""
        kind = message["type"]
        if kind == "roster":
            try:
                await self._adopt_roster(value_of(message, "roster", str))
            except IdentityError as exc:
                self.driver.close(link, INVALID_MESSAGE, f"relayed roster: {exc}")
        elif kind == "resync":
            self.syncing.resync(link, value_of(message, "docs", list))
        elif kind == "via":
            if self.carried is not None:
                await self.carried(link, message)
        elif kind == "links":
            self.syncing.links_announced(link, *links_of(message))
        elif kind == "docs":
            await self.syncing.on_archived(link, value_of(message, "archived", dict))
        elif (handler := self.handlers.get(kind)) is not None:
            try:
                await handler(link.peer_id, message)  # type: ignore[arg-type]
            except MessageRefused as exc:
                self.driver.close(link, INVALID_MESSAGE, str(exc))
            except Exception as exc:  # noqa: BLE001 - one peer's message never stops the terminal
                log.exception("%s message from %s could not be handled", kind, link.peer_id)
                self.driver.close(link, INVALID_MESSAGE, f"{kind} message could not be handled: {type(exc).__name__}")
