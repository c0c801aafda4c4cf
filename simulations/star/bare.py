"""Bare pycrdt clients of the relay: a ``Doc`` each, storing nothing - the floor a star could reach.

Each terminal is a pycrdt ``Doc`` with a root ``Map`` named ``"bench"``, synchronised by pycrdt's
``Provider`` over a real WebSocket (httpx-ws, already a meshpos test dependency), through
:class:`~simulations.star.channel.WsChannel` so that a connection the relay drops mid-run is an
error rather than a silent end of the stream.

By default the provider sends only the terminal's own updates (:class:`OwnUpdatesProvider`).
pycrdt's stock ``Provider`` also sends back every update it has just received from the relay
(y-websocket's JS provider filters those by origin; pycrdt's events carry none), so with ``n``
terminals every write costs ``n - 1`` useless echo messages on both sides.  That is a client
quirk, not a cost of the star topology, and a baseline that kept it would make the mesh look
better than it is (what the echoes cost is in docs/performance.md).  The star benchmark's
``--stock-provider`` measures the stack as shipped.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
from pycrdt import (
    Channel,
    Doc,
    Map,
    MapEvent,
    Provider,
    TransactionEvent,
    create_sync_message,
    create_update_message,
)


class Latencies:
    """Latency samples in flight: key -> [end of the writer's transaction, peers still to see it]."""

    def __init__(self) -> None:
        self.pending: dict[str, list[float]] = {}
        self.samples: list[float] = []
        self.drained = anyio.Event()
        self._all_written = False

    def written(self, key: str, at: float, peers: int) -> None:
        self.pending[key] = [at, float(peers)]

    def observed(self, key: str, now: float) -> None:
        entry = self.pending.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.pending[key]
            self.samples.append(now - entry[0])

    def all_written(self) -> None:
        """No more samples will be added: ``drained`` is set once the last one has been seen."""
        self._all_written = True
        self.check_drained()

    def check_drained(self) -> None:
        if self._all_written and not self.pending:
            self.drained.set()


class BareTerminal:
    """One terminal: a ``Doc`` with a root ``Map`` "bench", and counters fed by ``Map.observe``."""

    def __init__(self, index: int, latencies: Latencies, *, record_own_updates: bool) -> None:
        self.index = index
        self.doc = Doc()
        self.bench = self.doc.get("bench", type=Map)
        self.latencies = latencies
        self.seq = 0
        self.remote_seen = 0
        self._remote_target = 0
        self.reached = anyio.Event()
        self._writing = False
        self.own_updates: set[bytes] = set()
        self.bench.observe(self._on_change)
        if record_own_updates:  # only OwnUpdatesProvider consumes (and so empties) this set
            self.doc.observe(self._on_transaction)

    def _on_transaction(self, event: TransactionEvent) -> None:
        # Remember the binary update of each of our own writes, for OwnUpdatesProvider.
        if self._writing:
            self.own_updates.add(event.update)

    def expect_remote(self, count: int) -> None:
        """Arm ``reached`` for when ``count`` more keys written by other terminals have arrived."""
        self._remote_target = self.remote_seen + count
        self.reached = anyio.Event()
        if self.remote_seen >= self._remote_target:
            self.reached.set()

    def progress(self) -> str:
        return f"terminal {self.index}: {self.remote_seen}/{self._remote_target}"

    def _on_change(self, event: MapEvent) -> None:
        # Runs synchronously inside the transaction that applied the change: for a remote update
        # that is the provider's handle_sync_message, so `now` is the moment the key became visible.
        if self._writing:
            return  # our own write
        now = time.perf_counter()
        keys: dict[str, Any] = event.keys  # type: ignore[attr-defined]
        self.remote_seen += len(keys)
        latencies = self.latencies
        if latencies.pending:
            for key in keys:
                latencies.observed(key, now)
            latencies.check_drained()
        if self.remote_seen >= self._remote_target:
            self.reached.set()

    def write(self, value: str) -> tuple[str, float]:
        """Write one key in one transaction; returns the key and the time the transaction ended."""
        key = f"{self.index}:{self.seq}"
        self.seq += 1
        self._writing = True
        try:
            with self.doc.transaction():
                self.bench[key] = value
        finally:
            self._writing = False
        return key, time.perf_counter()


class OwnUpdatesProvider(Provider):
    """pycrdt's ``Provider``, minus the echo: it sends only the updates this terminal wrote.

    The stock ``Provider`` forwards every document update to the relay, including each update it
    has just received from the relay, so with ``n`` terminals the relay decodes ``n - 1`` useless
    echoes per write and every terminal sends as many.  y-websocket's JS provider skips updates
    whose origin is itself; pycrdt's ``TransactionEvent`` carries no origin, so this subclass
    recognises its terminal's own writes by their update bytes (recorded by ``BareTerminal`` in a doc
    observer).  It overrides the private ``_send_updates`` of pycrdt 0.14 (pinned ``<0.15``) and
    keeps the rest of the provider (sync handshake, flush on exit) as shipped.
    """

    def __init__(self, doc: Doc, channel: Channel, own_updates: set[bytes]) -> None:
        super().__init__(doc, channel)
        self._own_updates = own_updates

    async def _send_updates(self) -> None:
        assert self._events is not None
        async with self._events as events:
            try:
                await self._channel.send(create_sync_message(self._doc))
                async for event in events:
                    update = event.update
                    if update in self._own_updates:
                        self._own_updates.discard(update)
                        await self._channel.send(create_update_message(update))
            finally:
                events.unsubscribe()


def payload(writer: int, seq: int, size: int) -> str:
    """A JSON text of about ``size`` bytes, like a serialised order record."""
    head = {"terminal": writer, "seq": seq, "pad": ""}
    pad = max(0, size - len(json.dumps(head)))
    head["pad"] = "x" * pad
    return json.dumps(head)
