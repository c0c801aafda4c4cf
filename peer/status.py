"""What the mesh reports about its peers: per-peer state, recent refusals, why one is not linked.

Bookkeeping only - nothing here decides whom to dial or admit.  Kept apart from the shell so
``GET /api/v1/peers``, ``meshpos peers`` and the dial loops read and write one book, whatever
task (a link's reader, a dial loop, the API) touches it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core.clock import Clock, iso
from core.errors import ALREADY_CONNECTED
from core.ratelog import RateLimitedLog
from peer.identity import Roster

log = logging.getLogger("peer.mesh")


@dataclass(slots=True)
class PeerState:
    """What ``GET /api/v1/peers`` shows for one peer terminal (or a static address not yet linked)."""

    terminal_id: str | None
    type: str | None = None
    address: str | None = None
    online: bool = False
    direction: str | None = None
    connected_since: str | None = None
    last_heartbeat: str | None = None
    rtt_ms: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    updates_in: int = 0
    updates_out: int = 0
    last_error: dict[str, Any] | None = None

    def to_json(self, roster: Roster) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]
        out["revoked"] = self.terminal_id is not None and roster.is_revoked(self.terminal_id)
        out["enrolled"] = self.terminal_id is not None and self.terminal_id in roster.terminals
        return out


#: ``(bytes_in, bytes_out, updates_in, updates_out)`` of a peer's current (or just closed) link.
Traffic = Callable[[], tuple[int, int, int, int]]


class PeerBook:
    """Peer states by id, by static address (not linked yet) and for discovered terminals being
    dialled; the refusals of either direction, newest last."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.peers: dict[str, PeerState] = {}
        #: Static addresses not linked yet (the id behind them is not known before a hello).
        self.by_address: dict[str, PeerState] = {}
        #: Dial state of discovered terminals not linked yet (dropped with their dial loop, so a
        #: forged advert leaves nothing behind).
        self.found: dict[str, PeerState] = {}
        #: Recent refusals (either side), newest last: why a terminal that tried is not linked.
        self.refusals: deque[dict[str, Any]] = deque(maxlen=50)
        self._refusal_log = RateLimitedLog(log)

    def now(self) -> str:
        return iso(self.clock())

    def failed(self, state: PeerState, code: int, reason: str) -> None:
        state.last_error = {"code": code, "reason": reason, "at": self.now()}

    def refused(self, peer_id: str | None, address: str, code: int, reason: str, *, inbound: bool) -> None:
        entry = {"terminal_id": peer_id, "address": address, "code": code, "reason": reason,
                 "direction": "inbound" if inbound else "outbound", "at": self.now()}
        self.refusals.append(entry)
        self._refusal_log.log(address.rpartition(":")[0] or address,
                              logging.INFO if code == ALREADY_CONNECTED else logging.WARNING,
                              "link %s %s refused: %d %s", "from" if inbound else "to", address, code, reason)

    def internal_error(self, key: str, message: str, *args: Any, exc: BaseException) -> None:
        """Log an unforeseen failure handling one peer's input, rate-limited per ``key``."""
        self._refusal_log.log(f"internal:{key}", logging.ERROR, message, *args, exc_info=exc)

    def linked(self, peer_id: str, peer_type: str | None, address: str, *, client: bool) -> PeerState:
        state = self.peers.setdefault(peer_id, PeerState(terminal_id=peer_id))
        now = self.now()
        state.type, state.address, state.online = peer_type, address, True
        state.direction = "outbound" if client else "inbound"
        state.connected_since, state.last_heartbeat = now, now
        if client:
            self.by_address.pop(address, None)
        return state

    def heartbeat(self, peer_id: str, rtt: float) -> None:
        state = self.peers.get(peer_id)
        if state is not None:
            state.rtt_ms = round(rtt * 1000, 3)
            state.last_heartbeat = self.now()

    def unlinked(self, peer_id: str, traffic: Traffic, code: int, reason: str) -> None:
        state = self.peers[peer_id]
        self.count(state, traffic)
        state.online = False
        self.failed(state, code, reason)

    @staticmethod
    def count(state: PeerState, traffic: Traffic) -> None:
        """Traffic counters of the peer's current (or just closed) link."""
        state.bytes_in, state.bytes_out, state.updates_in, state.updates_out = traffic()

    def why_not_linked(self, terminal_id: str, addresses: list[str]) -> str:
        """The newest reason a known terminal is not linked, for ``meshpos peers``: its latest
        refusal or its link's last error, whichever came last (4004 tie-breaks are no reason)."""
        refusal = next((e for e in reversed(self.refusals) if e["code"] != ALREADY_CONNECTED
                        and (e["terminal_id"] == terminal_id or e["address"] in addresses)), None)
        state = self.peers.get(terminal_id) or self.found.get(terminal_id)
        error = state.last_error if state is not None else None
        if refusal is not None and (error is None or refusal["at"] >= error["at"]):
            return (f"handshake failed ({refusal['direction']}, {refusal['at']}): "
                    f"{refusal['code']} {refusal['reason']}")
        if error is not None:
            return f"link failed ({error['at']}): {error['code']} {error['reason']}"
        return "connecting"

    def peer_list(self, me: str, roster: Roster, traffic: Mapping[str, Traffic]) -> list[dict[str, Any]]:
        """Every peer: linked or known (``traffic``: of the peers linked now), then every other
        terminal of the roster, then static addresses not linked yet."""
        peers = []
        for peer_id, state in sorted(self.peers.items()):
            if peer_id in traffic:
                self.count(state, traffic[peer_id])
            peers.append(state.to_json(roster))
        for tid, entry in sorted(roster.terminals.items()):
            if tid != me and tid not in self.peers:
                state = self.found.get(tid) or PeerState(terminal_id=tid)
                state.type = entry["type"]
                peers.append(state.to_json(roster))
        peers.extend(state.to_json(roster) for state in self.by_address.values())
        return peers
