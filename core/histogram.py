"""Latency histograms the hot paths keep (storage commits, cashier commits, propagation).

Prometheus' client library renders them (``GET /metrics``, meshpos/metrics.py), but it is not
what counts them: importing it costs ~80 ms and ~5 MB of resident memory, and an idle terminal
must stay within the cold-start and memory figures docs/performance.md holds it to.  So the
counting is these few lines, and ``prometheus_client`` is imported on the first scrape only.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

#: Upper bounds (seconds) of the buckets: an fsync is ~1 ms, a cashier round trip a few, a
#: change crossing the mesh 2-50 ms, a catch-up after a partition seconds.
BOUNDS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class Histogram:
    """Observations counted into :data:`BOUNDS` (``le`` semantics: a bucket holds what is at or
    below its bound), plus their sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BOUNDS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative ``(le, count)`` pairs ending with ``+Inf``, as the exposition format has them."""
        out, running = [], 0
        for bound, n in zip([*map(str, BOUNDS), "+Inf"], self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out
