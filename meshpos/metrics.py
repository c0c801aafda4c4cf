"""What a terminal counts about itself, for ``GET /metrics`` (Prometheus) and ``GET /api/v1/stats``.

:class:`TerminalMetrics` keeps what cannot be read back later - updates applied by origin, how
long changes took to arrive, the traffic of links that have ended, a minute of frame counts - fed
by the host, the store and the mesh as things happen.  Everything else (links, documents, the
cashier, the HQ backlog) is read from the terminal when a scrape asks, so an idle terminal pays
nothing for metrics nobody reads.  ``prometheus_client`` renders the exposition and is imported
on the first scrape only (core/histogram.py says why).  Names and labels: docs/api.md, "Metrics".
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import anyio

from core.clock import Clock
from core.histogram import Histogram
from core.names import TERMINAL_TYPES

#: Frame counts kept for ``message_throughput``: one a second, a minute's worth.
THROUGHPUT_WINDOW_S = 60
#: What an open link's and an ended link's traffic tuple hold, in order.
TRAFFIC = ("bytes_in", "bytes_out", "frames_in", "frames_out")


class TerminalMetrics:
    """Counters kept from the terminal's start; its listeners must never raise (they run inside
    commits and link teardown), so each reads defensively."""

    def __init__(self, terminal_id: str, clock: Clock, monotonic: Callable[[], float],
                 order_stamp: Callable[[dict[str, Any]], tuple[float | None, Any] | None]) -> None:
        """``order_stamp``: when an ``order:created`` payload's order was created (seconds since
        the epoch) and by whom (:func:`meshpos.documents.orders.order_stamp`)."""
        self.terminal_id = terminal_id
        self.order_stamp = order_stamp
        self.clock = clock
        self.monotonic = monotonic
        #: Storage records of document changes applied here, by origin kind (``local``, ``peer``...).
        self.updates: Counter[str] = Counter()
        #: Orders another terminal created: from their creation to durable here.
        self.propagation = Histogram()
        #: Per peer, the summed traffic of its links that have ended (see :data:`TRAFFIC`).
        self.ended: dict[str, tuple[int, int, int, int]] = {}
        self.samples: deque[tuple[float, int]] = deque(maxlen=THROUGHPUT_WINDOW_S + 1)

    # -- listeners -------------------------------------------------------------------------------

    def on_update(self, name: str, update: bytes, origin: str, ticket: Any) -> None:
        self.updates[origin.partition(":")[0]] += 1

    def on_commit(self, events: list[Any]) -> None:
        now = None
        for event in events:
            if event.type != "order:created":
                continue
            stamp = self.order_stamp(event.payload)
            if stamp is None or stamp[0] is None or stamp[1] == self.terminal_id:
                continue
            now = self.clock().timestamp() if now is None else now
            # a writer's clock ahead of this one's reads as no delay, never as a negative one
            self.propagation.observe(max(0.0, now - stamp[0]))

    def on_link_down(self, peer_id: str, peer_type: str | None, closed: Any, traffic: tuple[int, ...]) -> None:
        self.ended[peer_id] = _plus(self.ended.get(peer_id), traffic)

    # -- reading -------------------------------------------------------------------------------

    def traffic(self, live: dict[str, tuple[int, int, int, int]]) -> dict[str, tuple[int, int, int, int]]:
        """Per peer, the traffic since this terminal started: its ended links' and ``live`` (the
        open link's so far)."""
        out = dict(self.ended)
        for peer_id, now in live.items():
            out[peer_id] = _plus(out.get(peer_id), now)
        return out

    async def run(self, live: Callable[[], dict[str, tuple[int, int, int, int]]]) -> None:
        """Count frames once a second for :meth:`throughput` (a task of the terminal's group)."""
        while True:
            self.samples.append((self.monotonic(), self._frames(live())))
            await anyio.sleep(1)

    def _frames(self, live: dict[str, tuple[int, int, int, int]]) -> int:
        return sum(t[2] + t[3] for t in self.traffic(live).values())

    def throughput(self, live: dict[str, tuple[int, int, int, int]]) -> float:
        """Frames sent and received per second on all peer links over the last minute (since the
        start when younger)."""
        if not self.samples:
            return 0.0
        began, frames = self.samples[0]
        seconds = self.monotonic() - began
        return round((self._frames(live) - frames) / seconds, 3) if seconds > 0 else 0.0


def _plus(total: tuple[int, int, int, int] | None, more: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Two traffic tuples (:data:`TRAFFIC`) added field by field."""
    a, b, c, d = total or (0, 0, 0, 0)
    e, f, g, h = more
    return a + e, b + f, c + g, d + h


def stats(terminal: Any) -> dict[str, Any]:
    """Seed 001's monitoring summary (``GET /api/v1/stats``); each field is defined in docs/api.md."""
    mesh, metrics = terminal.mesh, terminal.metrics
    links = {} if mesh is None else dict(mesh.links)
    by_type = dict.fromkeys(TERMINAL_TYPES, 0)
    for link in links.values():
        by_type[link.peer_type or "unknown"] = by_type.get(link.peer_type or "unknown", 0) + 1
    rtts = [p["rtt_ms"] for p in ([] if mesh is None else mesh.status()["peers"])
            if p.get("online") and p.get("rtt_ms") is not None]
    cash = terminal.cashier.stats
    entries = cash["commits"] + cash["provisional"]
    return {
        "total_connections": len(links),
        "connections_by_type": by_type,
        "message_throughput": metrics.throughput(terminal.live_traffic()),
        "average_latency": round(sum(rtts) / len(rtts), 3) if rtts else None,
        "conflict_rate": round(cash["reviews"] / entries, 6) if entries else 0.0,
        "uptime_seconds": round(terminal.monotonic() - terminal.started_monotonic, 3),
    }


async def exposition(terminal: Any, accept: str | None = None) -> tuple[bytes, str]:
    """``terminal``'s metrics and their content type, in the format the scraper's ``Accept`` asks
    for (Prometheus' text format 0.0.4 by default, OpenMetrics when asked; the library chooses)."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415 - on the first scrape only
    from prometheus_client.exposition import choose_encoder  # noqa: PLC0415

    families = await _families(terminal)

    class Snapshot:
        def collect(self) -> list[Any]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot())
    try:
        encode, content_type = choose_encoder(accept)
        return encode(registry), content_type
    except (TypeError, ValueError):  # the library fails on some Accept values (version=abc)
        encode, content_type = choose_encoder(None)  # a preference it cannot read: the default
        return encode(registry), content_type


async def _families(terminal: Any) -> list[Any]:
    from prometheus_client.core import (  # noqa: PLC0415 - on the first scrape
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    out: list[Any] = []

    def gauge(name: str, doc: str, value: float | None = None, labels: list[str] | None = None,
              rows: list[tuple[list[str], float]] | None = None) -> None:
        family = GaugeMetricFamily(name, doc, value=value, labels=labels)
        for label_values, v in rows or []:
            family.add_metric(label_values, v)
        out.append(family)

    def histogram(name: str, doc: str, h: Histogram) -> None:
        out.append(HistogramMetricFamily(name, doc, buckets=h.buckets(), sum_value=h.total))

    metrics, config = terminal.metrics, terminal.config
    info = GaugeMetricFamily("meshpos_terminal_info", "This terminal (always 1).", labels=["terminal_id", "type"])
    info.add_metric([config.terminal_id, config.type], 1)
    out.append(info)
    gauge("meshpos_uptime_seconds", "Seconds since the terminal started.",
          terminal.monotonic() - terminal.started_monotonic)

    status = await terminal.status()  # one read of the terminal: links, documents, storage, HQ
    if status["mesh"] is not None:
        peers = [p for p in status["mesh"]["peers"] if p.get("terminal_id")]
        gauge("meshpos_peer_up", "1 while a link to the peer is open, else 0.", labels=["peer", "type"],
              rows=[([p["terminal_id"], p.get("type") or ""], 1.0 if p.get("online") else 0.0) for p in peers])
        gauge("meshpos_peer_rtt_seconds", "Last heartbeat round trip of an open link.", labels=["peer"],
              rows=[([p["terminal_id"]], p["rtt_ms"] / 1000) for p in peers
                    if p.get("online") and p.get("rtt_ms") is not None])
        traffic = metrics.traffic(terminal.live_traffic())
        for index, (field, doc) in enumerate((
                ("received_bytes", "Bytes received from the peer (TLS records), all links since start."),
                ("sent_bytes", "Bytes sent to the peer (TLS records), all links since start."),
                ("received_frames", "Document frames received from the peer, all links since start."),
                ("sent_frames", "Document frames sent to the peer, all links since start."))):
            family = CounterMetricFamily(f"meshpos_peer_{field}", doc, labels=["peer"])
            for peer_id, counts in sorted(traffic.items()):
                family.add_metric([peer_id], counts[index])
            out.append(family)

    updates = CounterMetricFamily("meshpos_document_updates", "Document changes applied and stored here, by "
                                  "origin (local: this terminal's API; peer: another terminal).", labels=["origin"])
    for origin, n in sorted(metrics.updates.items()):
        updates.add_metric([origin], n)
    out.append(updates)
    histogram("meshpos_propagation_seconds", "Orders created on another terminal: from their creation (the "
              "time their id carries) to durable here (the two clocks' skew included).", metrics.propagation)
    histogram("meshpos_storage_commit_seconds", "SQLite group commits, fsync included.",
              terminal.store.commit_seconds)
    gauge("meshpos_document_bytes", "Encoded size of each open document.", labels=["document"],
          rows=[([name], d["bytes"]) for name, d in sorted(status["documents"].items())])
    gauge("meshpos_document_pending_updates", "Update rows stored since the document's last snapshot.",
          labels=["document"], rows=[([name], d["pending_updates"]) for name, d in sorted(status["documents"].items())])
    gauge("meshpos_event_cursor", "Cursor of the newest stored event.", status["last_event_cursor"])
    gauge("meshpos_storage_bytes", "Size of the database file (pages times page size).", status["storage"]["bytes"])

    cashier = terminal.cashier
    histogram("meshpos_cashier_commit_seconds", "Cashier entries: from proposing to the voters to durable here.",
              cashier.commit_seconds)
    gauge("meshpos_cashier_provisional_entries", "Provisional cashier entries taken here and not settled yet.",
          sum(len(v) for v in cashier.provisional_pending().values()))
    gauge("meshpos_review_queue_length", "Cashier entries waiting for a person's review.",
          len(cashier.reviews("open")))
    hq = status["hq"]
    if hq["configured"]:
        gauge("meshpos_hq_pending_updates", "Document operations the HQ has not landed yet.",
              hq["pending_updates"] or 0)
        gauge("meshpos_hq_pending_ledger_entries", "Cashier ledger entries the HQ has not landed yet.",
              hq["pending_ledger_entries"] or 0)
    return out
