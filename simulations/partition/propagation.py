"""How long each change took to reach every other terminal: the report's ``propagation``.

A change is a local write on one terminal (one pycrdt transaction: its document, its client id
and the clock the write ended at).  It has reached terminal ``X`` once ``X``'s state vector of
that document covers that clock.  Every terminal's update listener (``DocumentHost.on_update``)
looks at its own state vector as it changes, so each arrival is timed the moment it is applied,
on the run's clock.

The bound is checked on "steady" changes only: made while every terminal was up and the graph
connected (no split - client isolation leaves it connected through the wired boxes) and no
radio lossy or slow (TCP's retransmission timeout alone is 200 ms and more), at least
:data:`NOTICE_S` after the last change of topology (until a heartbeat finds a dead link, peers
take it to carry what it no longer does: docs/protocol.md, "Forwarding"), and with no change of
topology before they reached everyone.  Everything else is reported, not bounded: a change made
during a split waits for the heal by design.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.yupdate import decode_state_vector
from meshpos.documents.host import LOCAL_ORIGIN

#: Heartbeat timeout (3.5 s) plus the anti-entropy round a lost link brings forward, with margin.
NOTICE_S = 5.0
#: Most time a steady change may take to reach every terminal (virtual seconds, the checker).
BOUND_S = 0.05


@dataclass(slots=True)
class _Change:
    at: float
    doc: str
    client: int
    clock: int
    writer: str
    steady: bool
    waiting: set[str] = field(default_factory=set)


class Propagation:
    """Times every local change to its arrival on every other terminal up at the time."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self._pending: dict[str, list[_Change]] = {}  # doc -> changes not everywhere yet
        self.delays: list[tuple[float, float, bool]] = []  # (written at, seconds to one terminal, steady)
        self._changed_at = 0.0
        self._connected = True
        self._up: set[str] = set()
        self._all: set[str] = set()

    def topology(self, *, connected: bool, up: set[str], every: set[str]) -> None:
        """The network or the set of running terminals changed (``connected``: one LAN, every
        radio clean): changes in flight are no longer steady, and none is until :data:`NOTICE_S`
        later."""
        self._changed_at = self.now()
        self._connected, self._up, self._all = connected, set(up), set(every)
        for changes in self._pending.values():
            for change in changes:
                change.steady = False
                change.waiting &= self._up  # a stopped terminal is timed again from scratch: not at all

    def watch(self, tid: str, terminal: Any) -> None:
        terminal.host.on_update(lambda name, update, origin, ticket: self._updated(tid, terminal, name, origin))

    def _updated(self, tid: str, terminal: Any, name: str, origin: str) -> None:
        doc = terminal.host.get(name).doc
        state = decode_state_vector(doc.get_state())
        now = self.now()
        if origin == LOCAL_ORIGIN:
            steady = (self._connected and self._up == self._all and now - self._changed_at >= NOTICE_S)
            waiting = self._up - {tid}
            if waiting:
                self._pending.setdefault(name, []).append(
                    _Change(now, name, doc.client_id, state.get(doc.client_id, 0), tid, steady, waiting))
        changes = self._pending.get(name)
        if not changes:
            return
        for change in changes:
            if tid in change.waiting and state.get(change.client, 0) >= change.clock:
                change.waiting.discard(tid)
                self.delays.append((change.at, now - change.at, change.steady))
        self._pending[name] = [c for c in changes if c.waiting]

    def report(self) -> dict[str, Any]:
        """p50/p99/max of every arrival, and of the steady ones with the bound they are held to."""
        def stats(values: list[float]) -> dict[str, Any]:
            if not values:
                return {"arrivals": 0}
            ordered = sorted(values)
            pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)  # noqa: E731
            return {"arrivals": len(ordered), "p50_ms": pick(0.5), "p99_ms": pick(0.99),
                    "max_ms": round(ordered[-1] * 1000, 1)}
        steady_unreached = sum(1 for changes in self._pending.values() for c in changes if c.steady)
        return {"all": stats([d for _, d, _ in self.delays]),
                "steady": {**stats([d for _, d, s in self.delays if s]), "bound_ms": BOUND_S * 1000,
                           "not_reached": steady_unreached}}

    def check(self) -> dict[str, Any]:
        """The checker: every steady change reached every terminal within :data:`BOUND_S`."""
        slow = [round(d * 1000, 1) for _, d, s in self.delays if s and d > BOUND_S]
        unreached = self.report()["steady"]["not_reached"]
        return {"ok": not slow and not unreached, "bound_ms": BOUND_S * 1000, "over_bound": len(slow),
                "slowest_ms": sorted(slow)[-5:], "not_reached": unreached}
