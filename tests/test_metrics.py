"""GET /metrics (Prometheus exposition) and GET /api/v1/stats: what they count, on real terminals
linked over TLS on loopback, read through the real API and parsed with Prometheus' own parser."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.clock import time_id, time_of_id
from core.histogram import BOUNDS, Histogram
from meshpos.config import TerminalConfig
from meshpos.documents.orders import DEFERRED, order_stamp
from meshpos.metrics import TerminalMetrics, exposition
from meshpos.terminal import Terminal
from peer.identity import Authority
from storage.store import StoredEvent
from tests.apiutil import assert_error, create_order
from tests.conftest import serving
from tests.meshutil import ITEM, PRODUCT, config_for, connect_all, enroll, wait_for, wait_linked

pytestmark = pytest.mark.anyio


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "auth", "Cantina Centro")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition by (name, sorted labels); the parser refuses a malformed one."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(got: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return got.get((name, tuple(sorted(labels.items()))))


async def scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await client.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(resp.text)


def test_histogram_counts_at_or_below_each_bound() -> None:
    h = Histogram()
    for seconds in (0.0001, 0.0005, 0.0007, 0.003, 42.0):
        h.observe(seconds)
    buckets = dict(h.buckets())
    assert buckets["0.0005"] == 2  # 0.0005 itself is in the bucket it bounds
    assert buckets["0.001"] == 3 and buckets["0.005"] == 4 and buckets[str(BOUNDS[-1])] == 4
    assert buckets["+Inf"] == 5 == h.count
    assert h.total == pytest.approx(42.0043)


async def test_one_terminal_counts_its_writes_and_commits(served: Callable[..., Any]) -> None:
    async with served() as (_, client):
        before = await scrape(client)
        assert value(before, "meshpos_terminal_info", terminal_id="pos-1", type="pos") == 1
        for _ in range(2):
            await create_order(client)
        after = await scrape(client)
        local = value(after, "meshpos_document_updates_total", origin="local")
        assert local == (value(before, "meshpos_document_updates_total", origin="local") or 0) + 2
        assert value(after, "meshpos_storage_commit_seconds_count") >= value(
            before, "meshpos_storage_commit_seconds_count") + 2  # each write awaited its own commit
        assert value(after, "meshpos_event_cursor") >= 2
        assert value(after, "meshpos_review_queue_length") == 0
        assert value(after, "meshpos_peer_up", peer="pos-2", type="pos") is None  # not enrolled: no mesh
        assert not any(name.startswith("meshpos_hq_") for name, _ in after)  # no HQ configured

        resp = await client.get("/api/v1/stats")
        assert resp.status_code == 200
        stats = resp.json()
        assert stats["total_connections"] == 0
        assert stats["connections_by_type"] == {"pos": 0, "kds": 0, "waiter": 0, "monitor": 0}
        assert stats["message_throughput"] == 0.0 and stats["average_latency"] is None
        assert stats["conflict_rate"] == 0.0 and stats["uptime_seconds"] > 0

        open_metrics = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
        assert open_metrics.text.endswith("# EOF\n")
        for accept in ("application/openmetrics-text; version=abc", "\x7f;;=", "text/plain;version=7;escaping=x"):
            odd = await client.get("/metrics", headers={"Accept": accept})  # a preference it cannot read
            assert odd.status_code == 200 and odd.headers["content-type"].startswith("text/plain"), accept

        # the guard covers /metrics like every route: a web page of another origin reads nothing
        assert_error(await client.get("/metrics", headers={"Origin": "http://evil.example"}), 403, 4008)


async def test_linked_terminals_count_links_propagation_and_the_cashier(authority: Authority,
                                                                         tmp_path: Path) -> None:
    dirs = enroll(authority, tmp_path, ["pos-1", "pos-2", "kds-1"], ["pos", "pos", "kds"])
    configs: list[TerminalConfig] = [config_for(d, d.name) for d in dirs]
    async with AsyncExitStack() as stack:
        pos1 = await stack.enter_async_context(Terminal(configs[0]).running())
        kds, client = await stack.enter_async_context(serving(configs[2]))
        async with Terminal(configs[1]).running() as pos2:
            connect_all([pos1, pos2, kds])
            await wait_linked([pos1, pos2, kds])
            await pos1.put_product("burger", **PRODUCT)
            order = await pos1.create_order(table=None, waiter="ana", items=[ITEM])
            await wait_for(lambda: kds.metrics.propagation.count >= 1)

            got = await scrape(client)
            assert value(got, "meshpos_peer_up", peer="pos-1", type="pos") == 1
            assert value(got, "meshpos_peer_up", peer="pos-2", type="pos") == 1
            assert value(got, "meshpos_peer_received_frames_total", peer="pos-1") >= 2  # product, order
            assert value(got, "meshpos_peer_received_bytes_total", peer="pos-1") > 0
            assert value(got, "meshpos_document_updates_total", origin="peer") >= 2
            assert value(got, "meshpos_propagation_seconds_count") == 1  # the order, not the product
            assert value(got, "meshpos_propagation_seconds_sum") < 5
            day = f"orders/{order['business_day']}"
            assert value(got, "meshpos_document_bytes", document=day) > 0

            stats = (await client.get("/api/v1/stats")).json()
            assert stats["total_connections"] == 2
            assert stats["connections_by_type"] == {"pos": 2, "kds": 0, "waiter": 0, "monitor": 0}
            await wait_for(lambda: (kds.metrics.samples[-1][1] if kds.metrics.samples else 0) > 0, within=5)
            assert (await client.get("/api/v1/stats")).json()["message_throughput"] > 0

            opened = await pos1.cashier.open_drawer("main", float_cents=10_000, operator="carla")
            assert opened["entry"]["status"] == "committed"
            cashier = samples((await exposition(pos1))[0].decode())
            assert value(cashier, "meshpos_cashier_commit_seconds_count") == 1
            assert value(cashier, "meshpos_cashier_provisional_entries") == 0
            received = value(got, "meshpos_peer_received_bytes_total", peer="pos-2")

        await wait_for(lambda: "pos-2" not in kds.mesh.links)  # type: ignore[union-attr]
        gone = await scrape(client)
        assert value(gone, "meshpos_peer_up", peer="pos-2", type="pos") == 0
        # counters stay counters: an ended link's traffic is kept, not dropped with it
        assert value(gone, "meshpos_peer_received_bytes_total", peer="pos-2") >= received
        assert (await client.get("/api/v1/stats")).json()["total_connections"] == 1


async def test_the_hq_backlog_shows_when_an_hq_is_configured(served: Callable[..., Any]) -> None:
    async with served(hq=["127.0.0.1:9"]) as (_, client):  # configured, never reached
        await create_order(client)
        got = await scrape(client)
        assert value(got, "meshpos_hq_pending_updates") >= 1  # the order, not landed anywhere
        assert value(got, "meshpos_hq_pending_ledger_entries") == 0


def test_propagation_counts_only_well_formed_orders_of_other_terminals() -> None:
    now = datetime(2026, 12, 6, 12, 0, 0, 250_000, tzinfo=UTC)
    metrics = TerminalMetrics("pos-1", lambda: now, lambda: 0.0, order_stamp)

    def created(order: Any) -> StoredEvent:
        return StoredEvent(1, "order:created", "2026-12-06T12:00:00.250Z", {"order_id": "x", "order": order})

    def deferred(order_id: Any) -> StoredEvent:  # a peer's new order: its time is its id's
        return StoredEvent(1, "order:created", "2026-12-06T12:00:00.250Z", {"order_id": order_id, DEFERRED: "{}"})

    metrics.on_commit([
        created({"created_by": "pos-2", "created_at": "2026-12-06T12:00:00.200Z"}),  # 50 ms
        created({"created_by": "pos-3", "created_at": "2026-12-06T12:00:01.000Z"}),  # its clock ahead: 0
        created({"created_by": "pos-1", "created_at": "2026-12-06T11:00:00.000Z"}),  # this terminal's own
        created({"created_by": "pos-2", "created_at": "not a time"}),
        created({"created_by": "pos-2", "created_at": "2026-12-06T12:00:00"}),  # no zone: not comparable
        created({"created_by": "pos-2"}),
        created(["not", "an", "order"]),
        StoredEvent(2, "order:updated", "2026-12-06T12:00:00.250Z", {"order_id": "x", "order": {}}),
        deferred("20261206-" + time_id(now - timedelta(milliseconds=20))),  # 20 ms
        deferred("20261206-" + time_id(now + timedelta(seconds=3))),  # its clock ahead: 0
        deferred("20261206-" + "I" * 19),  # not base32: no time
        deferred("short"),
        deferred(None),
    ])
    assert metrics.propagation.count == 4
    assert metrics.propagation.total == pytest.approx(0.07)
    assert dict(metrics.propagation.buckets())["0.05"] == 4


def test_an_order_id_carries_its_creation_time_to_the_millisecond() -> None:
    at = datetime(2026, 12, 7, 9, 30, 15, 123_456, tzinfo=UTC)
    assert round(time_of_id(time_id(at)) * 1000) == 1796635815123  # the milliseconds, truncated
    assert time_of_id("0123") is None and time_of_id("u" * 19) is None  # short; 'u' is no digit
