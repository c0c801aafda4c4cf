"""How long each change took to reach every other terminal: the report's ``propagation``.

A change is a local write on one terminal (one pycrdt transaction: its document, its client id
and the clock the write ended at).  It has reached terminal ``X`` once ``X``'s state vector of
that document covers that clock.  Every terminal's update listener (``DocumentHost.on_update``)
looks at its own state vector as it changes, so each arrival is timed the moment it is applied,
on the run's clock.

The bound is checked on "steady" changes only: made while every terminal was up, their links
one connected graph (after a heal the links come back one redial at a time), the network whole
(no split - client isolation leaves it connected through the wired boxes) and no radio lossy or
slow (TCP's retransmission timeout alone is 200 ms and more), at least
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
from simulations.benchutil import percentile

#: Heartbeat timeout (3.5 s) plus the anti-entropy round a lost link brings forward, with margin.
NOTICE_S = 5.0
#: Most time a steady change may take to reach every terminal (virtual seconds, the checker).
BOUND_S = 0.05
#: With real processes (simulations/netns.py, wall-clock, terminals sharing two cores with the
#: run's own polling): the p99 of steady arrivals is held to :data:`BOUND_S`, every one to this -
#: far below the 8 s an anti-entropy round takes at the soonest, so a change forwarding missed
#: still fails the run.
REAL_BOUND_S = 1.0


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
        self._terminals: dict[str, Any] = {}

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
        self._terminals[tid] = terminal
        terminal.host.on_update(lambda name, update, origin, ticket: self._updated(tid, terminal, name, origin))

    def _linked(self) -> bool:
        """The terminals' own links form one connected graph (after a heal they redial with
        backoff: until the links are back, a change cannot reach everyone, forwarding or not)."""
        return links_connected({tid: set(t.mesh.links) for tid, t in self._terminals.items()
                                if tid in self._up and t.mesh is not None})

    def _updated(self, tid: str, terminal: Any, name: str, origin: str) -> None:
        doc = terminal.host.get(name).doc
        state = decode_state_vector(doc.get_state())
        now = self.now()
        if origin == LOCAL_ORIGIN:
            steady = (self._connected and self._up == self._all and now - self._changed_at >= NOTICE_S
                      and self._linked())
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
        return report(self.delays, sum(1 for changes in self._pending.values() for c in changes if c.steady))

    def check(self) -> dict[str, Any]:
        """The checker: every steady change reached every terminal within :data:`BOUND_S`."""
        return check(self.delays, self.report()["steady"]["not_reached"])


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"arrivals": 0}
    return {"arrivals": len(values), "p50_ms": round(percentile(values, 50) * 1000, 1),
            "p99_ms": round(percentile(values, 99) * 1000, 1), "max_ms": round(max(values) * 1000, 1)}


def timeline(delays: list[tuple[float, float, bool]]) -> list[tuple[float, float, bool]]:
    """The report's ``timeline.propagation``: ``(written at, ms to one terminal, steady)``."""
    return [(round(at, 3), round(delay * 1000, 1), steady) for at, delay, steady in delays]


def report(delays: list[tuple[float, float, bool]], not_reached: int) -> dict[str, Any]:
    steady = _stats([d for _, d, s in delays if s])
    return {"all": _stats([d for _, d, _ in delays]),
            "steady": {**steady, "bound_ms": BOUND_S * 1000, "not_reached": not_reached}}


def check(delays: list[tuple[float, float, bool]], not_reached: int, *, bound: float = BOUND_S,
          p99_bound: float | None = None) -> dict[str, Any]:
    """Every steady arrival within ``bound`` (and, given ``p99_bound``, their p99 within that)."""
    steady = sorted(d for _, d, s in delays if s)
    slow = [round(d * 1000, 1) for d in steady if d > bound]
    out: dict[str, Any] = {"ok": not slow and not not_reached, "bound_ms": bound * 1000, "over_bound": len(slow),
                           "slowest_ms": slow[-5:], "not_reached": not_reached}
    if p99_bound is not None:
        p99 = percentile(steady, 99) if steady else 0.0
        out.update(p99_ms=round(p99 * 1000, 1), p99_bound_ms=p99_bound * 1000)
        out["ok"] = out["ok"] and p99 <= p99_bound
    return out


def links_connected(links: dict[str, set[str]]) -> bool:
    """Whether ``links`` (terminal -> the terminals it is linked to) is one connected graph."""
    if not links:
        return False
    start = next(iter(links))
    seen, todo = {start}, [start]
    while todo:
        for peer in links.get(todo.pop(), ()):
            if peer in links and peer not in seen:
                seen.add(peer)
                todo.append(peer)
    return seen == set(links)


#: The timeline marks that change the network or the set of running terminals.
TOPOLOGY_MARKS = frozenset({"split", "heal", "isolate", "crash", "restart", "radio"})


def from_arrivals(changes: list[tuple[str, float, dict[str, float]]], marks: list[dict[str, Any]],
                  every: set[str]) -> list[tuple[float, float, bool]]:
    """The delays of changes timed after the run (simulations/netns.py: each terminal's event
    times): ``changes`` are ``(writer, written at, {terminal: arrived at})`` on the run's clock,
    the writer's own entry included; ``marks`` the run's timeline, with ``links`` samples
    (``connected``: the terminals' links formed one graph).  Steady as :class:`Propagation`
    says: made while the LAN was whole (a radio that was not applied does not count) and every
    terminal up, :data:`NOTICE_S` after the last change of those, the links sampled connected
    before it and at every sample until it was everywhere, and everywhere before the next change."""
    samples = [(m["t"], m["connected"]) for m in marks if m["event"] == "links"]
    changed = [0.0]
    steady_after = [True]
    split, down = False, set()
    for mark in marks:
        kind = mark["event"]
        if kind not in TOPOLOGY_MARKS or (kind == "radio" and not mark.get("applied", True)):
            continue
        if kind == "split":
            split = True
        elif kind == "heal":
            split = False
        elif kind == "crash":
            down.add(mark["terminal"])
        elif kind == "restart":
            down.discard(mark["terminal"])
        changed.append(mark["t"])
        steady_after.append(not split and not down)
    delays = []
    for writer, written, arrived in changes:
        k = max(i for i, t in enumerate(changed) if t <= written)
        last = max(arrived.values())
        before = [c for t, c in samples if t <= written][-1:]
        during = [c for t, c in samples if written < t <= last]
        steady = (steady_after[k] and written - changed[k] >= NOTICE_S and set(arrived) >= every
                  and (k + 1 == len(changed) or last < changed[k + 1]) and before == [True] and all(during))
        delays.extend((written, max(0.0, at - written), steady) for tid, at in arrived.items() if tid != writer)
    return delays
