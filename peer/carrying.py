"""Control messages for terminals this one is not linked to: sent, carried and taken in.

Who carries: of the linked terminals that announced a link to the addressee (their ``links``
message, kept by :class:`peer.replication.Replication`), the one with the smallest id - one
carrier, one hop.  A carrier passes an envelope on only when it came straight from its writer
and the addressee is linked to it now; anything else is dropped (the cashier's holder resends
what is not answered).  Every envelope is checked where it arrives, by the carrier too
(:func:`peer.envelope.open_envelope`), so a bad one closes the link of the terminal that sent
it and never travels further.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from core.clock import Clock
from core.errors import MessageRefused
from core.names import HQ_TYPE
from core.ratelog import RateLimitedLog
from peer.driver import Link
from peer.envelope import open_envelope, seal, writer_of
from peer.identity import Roster, TerminalIdentity, private_key
from peer.replica import ControlHandler
from peer.replication import Replication
from peer.wire import WireError

log = logging.getLogger("peer.mesh")
#: Dropped envelopes, logged at most a few times a second per carrier.
_bad_log = RateLimitedLog(log)


class Carrying:
    def __init__(self, *, identity: TerminalIdentity, roster: Callable[[], Roster], clock: Clock,
                 links: Mapping[str, Link], core: Replication[Link], handlers: Mapping[str, ControlHandler]) -> None:
        self.identity = identity
        self.me = identity.terminal_id
        self._key = private_key(identity)
        self._roster = roster
        self.clock = clock
        self.links = links
        self.core = core
        self.handlers = handlers
        #: Envelopes this terminal wrote, passed on, took in, and dropped (not its to carry).
        self.counts = {"sent": 0, "carried": 0, "received": 0, "dropped": 0}

    def carrier(self, peer_id: str) -> Link | None:
        """The linked terminal that carries to ``peer_id`` (``None``: nobody says it reaches it)."""
        for candidate in sorted(self.links):
            link = self.links[candidate]
            if link.peer_type != HQ_TYPE and link.core.state == "open" and self.core.relays(candidate) \
                    and peer_id in self.core.neighbours(candidate):
                return link
        return None

    def send(self, peer_id: str, message: dict[str, Any]) -> bool:
        """Seal ``message`` for ``peer_id`` and queue it to its carrier; ``False`` if none."""
        link = self.carrier(peer_id)
        if link is None:
            return False
        link.session.queue_control(seal(self._key, self.identity.cert, self.me, peer_id, message, self.clock()))
        link.wake.set()
        self.counts["sent"] += 1
        return True

    async def received(self, link: Link, envelope: dict[str, Any]) -> None:
        """A ``via`` envelope from ``link``.  A bad one from its writer raises
        :class:`peer.wire.WireError` (the writer's link closes 4006); a bad one a carrier brought
        is dropped - the carrier checked it against its own roster, which may be a moment older
        than this terminal's (a revocation on its way), and its link must not pay for that."""
        try:
            opened = open_envelope(envelope, ca_cert=self.identity.ca_cert, roster=self._roster())
        except WireError as exc:
            if writer_of(envelope) == link.peer_id:
                raise
            self.counts["dropped"] += 1
            _bad_log.log(link.peer_id or "?", logging.WARNING, "dropped a via envelope %s carried: %s",
                         link.peer_id, exc)
            return
        if opened.to != self.me:
            onward = self.links.get(opened.to)
            if opened.origin != link.peer_id or onward is None or onward.core.state != "open":
                self.counts["dropped"] += 1  # not straight from its writer, or not linked here now
                return
            onward.session.queue_control(envelope)
            onward.wake.set()
            self.counts["carried"] += 1
            return
        if opened.origin == self.me:
            self.counts["dropped"] += 1
            return
        self.counts["received"] += 1
        handler = self.handlers.get(opened.message["type"])
        if handler is None:
            return
        try:
            await handler(opened.origin, opened.message)
        except MessageRefused as exc:  # the writer's fault, not the carrier's: its link stays
            log.warning("%s message from %s (carried by %s) refused: %s", opened.message["type"], opened.origin,
                        link.peer_id, exc)
        except Exception:  # noqa: BLE001 - one peer's message never stops the terminal
            log.exception("%s message from %s (carried by %s) could not be handled", opened.message["type"],
                          opened.origin, link.peer_id)
