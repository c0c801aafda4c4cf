"""The cashier over HTTP: every path of ``/api/v1/cashier`` and ``/api/v1/review``, every error.

A one-POS store (the terminal is its own majority) covers the request paths and the refusals;
an enrolled three-POS store served on loopback covers 503/4009, 202 provisional entries, the
review queue and the ``meshpos review`` CLI against a real API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner

from core.errors import (
    CONFLICT_RESOLUTION_FAILED,
    INVALID_MESSAGE,
    INVALID_TRANSITION,
    LOCK_TIMEOUT,
    NOT_FOUND,
)
from meshpos.cli import main
from peer.identity import Authority, save_roster
from tests.conftest import BURGER, serving
from tests.meshutil import config_for, connect_all, enroll, running_mesh, wait_for, wait_linked

pytestmark = pytest.mark.anyio
MAIN = "/api/v1/cashier/drawers/main"


def refused(resp: httpx.Response, status: int, code: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == code and body["message"], body
    return body["message"]


async def ledger_length(client: httpx.AsyncClient) -> int:
    resp = await client.get(MAIN, params={"from_position": 0})
    return 0 if resp.status_code == 404 else len(resp.json()["entries"])


async def test_drawer_paths_and_errors_on_a_one_pos_store(served: Any) -> None:
    async with served(type="pos") as (terminal, c):
        order = (await c.post("/api/v1/orders", json={"items": [BURGER]})).json()  # 3180 cents
        refused(await c.get(MAIN), 404, NOT_FOUND)
        refused(await c.post(f"{MAIN}/payments", json={"order_id": order["id"], "amount_cents": 100,
                                                       "method": "cash"}), 404, NOT_FOUND)
        resp = await c.post(f"{MAIN}/open", json={"float_cents": 10_000, "operator": "carla"})
        assert resp.status_code == 201 and resp.json()["entry"]["status"] == "committed"
        assert resp.json()["drawer"]["holder"] == "pos-1" and resp.json()["drawer"]["voters"]["total"] == 1
        refused(await c.post(f"{MAIN}/open", json={"float_cents": 1, "operator": "x"}), 409, INVALID_TRANSITION)

        pay = {"order_id": order["id"], "amount_cents": 2000, "method": "card", "tip_cents": 200, "op_id": "t1-a"}
        for bad in ({"amount_cents": -1}, {"amount_cents": 0}, {"amount_cents": 12.5}, {"amount_cents": "20"},
                    {"method": "cheque"}, {"tip_cents": -5}, {"surprise": 1}, {"op_id": ""}):
            refused(await c.post(f"{MAIN}/payments", json={**pay, **bad}), 422, INVALID_MESSAGE)
        refused(await c.post(f"{MAIN}/payments", json={**pay, "order_id": "20260101-unknown"}), 404, NOT_FOUND)
        refused(await c.post(f"{MAIN}/payments", json={**pay, "amount_cents": 3181}), 409, INVALID_TRANSITION)
        assert await ledger_length(c) == 1  # none of that was recorded

        first = await c.post(f"{MAIN}/payments", json=pay)
        assert first.status_code == 201
        retry = await c.post(f"{MAIN}/payments", json=pay)
        assert retry.status_code == 201 and retry.json()["entry"] == first.json()["entry"]
        refused(await c.post(f"{MAIN}/payments", json={**pay, "amount_cents": 1}), 409, CONFLICT_RESOLUTION_FAILED)
        rest = await c.post(f"{MAIN}/payments", json={"order_id": order["id"], "amount_cents": 1180,
                                                      "method": "cash", "op_id": "t1-b"})
        assert rest.json()["drawer"]["expected_cash_cents"] == 11_180
        assert (await c.get(f"/api/v1/orders/{order['id']}")).json()["status"] == "paid"
        refused(await c.post(f"{MAIN}/payments", json={**pay, "op_id": "t1-c", "amount_cents": 1}), 409,
                INVALID_TRANSITION)

        refund = await c.post(f"{MAIN}/refunds", json={"payment_op_id": "t1-a", "amount_cents": 500,
                                                       "reason": "cold fries"})
        assert refund.status_code == 201 and refund.json()["drawer"]["totals_by_method"]["card"] == 1500
        refused(await c.post(f"{MAIN}/refunds", json={"payment_op_id": "t1-a", "amount_cents": 1501,
                                                      "reason": "x"}), 409, INVALID_TRANSITION)
        refused(await c.post(f"{MAIN}/refunds", json={"payment_op_id": "nope", "amount_cents": 1,
                                                      "reason": "x"}), 404, NOT_FOUND)
        moved = await c.post(f"{MAIN}/cash-movements", json={"direction": "out", "amount_cents": 1180,
                                                             "reason": "bank run"})
        assert moved.status_code == 201 and moved.json()["drawer"]["expected_cash_cents"] == 10_000
        refused(await c.post(f"{MAIN}/cash-movements", json={"direction": "out", "amount_cents": 10_001,
                                                            "reason": "x"}), 409, INVALID_TRANSITION)
        refused(await c.post(f"{MAIN}/cash-movements", json={"direction": "sideways", "amount_cents": 1,
                                                            "reason": "x"}), 422, INVALID_MESSAGE)

        closed = await c.post(f"{MAIN}/close", json={"counted_cents": 9_950})
        assert closed.status_code == 200
        entry = closed.json()["entry"]
        assert (entry["expected_cents"], entry["difference_cents"]) == (10_000, -50)
        assert closed.json()["drawer"]["state"] == "closed" and not closed.json()["drawer"]["held_here"]
        refused(await c.post(f"{MAIN}/payments", json={**pay, "op_id": "late"}), 409, INVALID_TRANSITION)
        refused(await c.post("/api/v1/cashier/drawers/bad%20name/open", json={"float_cents": 0, "operator": "x"}),
                422, INVALID_MESSAGE)

        drawer = (await c.get(MAIN)).json()
        assert [e["kind"] for e in drawer["entries"]] == ["drawer_opened", "payment", "payment", "refund",
                                                          "cash_movement", "drawer_closed"]
        assert all(e["status"] == "committed" for e in drawer["entries"])
        assert drawer["last_close"]["difference_cents"] == -50
        listed = (await c.get("/api/v1/cashier/drawers")).json()
        assert [d["drawer"] for d in listed] == ["main"] and listed[0]["state"] == "closed"
        kinds = [e.type for e in await terminal.store.events_after(0, 1000)]
        for kind in ("cashier:opened", "payment:completed", "payment:refunded", "cashier:cash_movement",
                     "cashier:closed", "lock_acquired", "lock_released"):
            assert kind in kinds, kind
        assert kinds.count("payment:completed") == 2
        spec = (await c.get("/openapi.json")).json()["paths"]
        assert {MAIN.replace("main", "{drawer}") + p for p in ("", "/open", "/payments", "/close")} <= set(spec)
        assert "/api/v1/review/{review_id}/resolve" in spec


def _store(authority: Authority, tmp: Path) -> list[Any]:
    ids = ["pos-1", "pos-2", "pos-3"]
    dirs = enroll(authority, tmp, ids)
    for d in dirs:
        save_roster(d, authority.roster)
    return [config_for(d, t) for d, t in zip(dirs, ids, strict=True)]


async def test_partition_provisional_review_over_http_and_cli(tmp_path: Path) -> None:
    cfgs = _store(Authority.init(tmp_path / "auth", "Cantina Centro"), tmp_path)
    async with running_mesh(cfgs) as ts:
        order = await ts[0].create_order(table=None, waiter=None, items=[BURGER])
        await ts[0].cashier.open_drawer("main", float_cents=0, operator="carla")
        await wait_for(lambda: all(len(t.cashier.states["main"].committed) == 1 for t in ts))
        await wait_for(lambda: all(t.host.get(f"orders/{t.today().isoformat()}") is not None
                                   and order["id"] in t.host.get(f"orders/{t.today().isoformat()}").ids()
                                   for t in ts))
    # pos-1 is cut off: 503 with the counts, or 202 provisional when the caller allows it
    async with serving(cfgs[0]) as (_pos1, c):
        pay = {"order_id": order["id"], "amount_cents": 3180, "method": "pix", "op_id": "cut-off"}
        message = refused(await c.post(f"{MAIN}/payments", json=pay), 503, LOCK_TIMEOUT)
        assert "1 of 3 reachable, 2 needed" in message
        resp = await c.post(f"{MAIN}/payments", json={**pay, "allow_provisional": True})
        assert resp.status_code == 202 and resp.json()["entry"]["status"] == "provisional"
        again = await c.post(f"{MAIN}/payments", json={**pay, "allow_provisional": True})
        assert again.status_code == 202 and again.json()["entry"] == resp.json()["entry"]
        assert (await c.get(MAIN)).json()["provisional"][0]["op_id"] == "cut-off"
    # meanwhile the other side (a majority) takes the same order's payment
    async with running_mesh(cfgs[1:]) as (pos2, _pos3):
        await pos2.cashier.pay("main", order_id=order["id"], amount_cents=3180, method="cash", op_id="majority")
    # heal: the provisional payment conflicts, so it waits in the review queue
    async with serving(cfgs[0]) as (pos1, c), running_mesh(cfgs[1:], link=False) as others:
        ts = [pos1, *others]
        connect_all(ts)
        await wait_linked(ts)
        await wait_for(lambda: pos1.cashier.reviews() != [], 20)
        items = (await c.get("/api/v1/review")).json()
        assert len(items) == 1 and items[0]["entry"]["op_id"] == "cut-off"
        assert "already paid elsewhere" in items[0]["reason"]
        assert items[0]["conflicts_with"][0]["op_id"] == "majority"
        review_id = items[0]["id"]
        assert (await c.get(f"/api/v1/review/{review_id}")).json() == items[0]
        refused(await c.get("/api/v1/review/main.999"), 404, NOT_FOUND)
        refused(await c.post(f"/api/v1/review/{review_id}/resolve", json={"decision": "maybe", "note": "x",
                                                                          "operator": "y"}), 422, INVALID_MESSAGE)
        refused(await c.post(f"/api/v1/review/{review_id}/resolve", json={"decision": "accept", "note": "x",
                                                                          "operator": "y", "amount_cents": 5}),
                422, INVALID_MESSAGE)
        api = str(c.base_url).rstrip("/")
        runner = CliRunner()
        listed = await anyio.to_thread.run_sync(lambda: runner.invoke(main, ["review", "list", "--api", api]))
        assert listed.exit_code == 0 and review_id in listed.output and "other side" in listed.output
        resolved = await anyio.to_thread.run_sync(lambda: runner.invoke(main, [
            "review", "resolve", review_id, "--decision", "adjust", "--amount-cents", "0", "--note",
            "pix charged twice; refunded at the bank", "--operator", "gerente", "--api", api]))
        assert resolved.exit_code == 0, resolved.output
        assert "ADJUSTED" in resolved.output
        item = (await c.get(f"/api/v1/review/{review_id}")).json()
        assert item["status"] == "adjusted" and item["resolution"]["amount_cents"] == 0
        assert (await c.get("/api/v1/review")).json() == []
        assert (await c.get("/api/v1/review", params={"status": "resolved"})).json()[0]["id"] == review_id
        refused(await c.post(f"/api/v1/review/{review_id}/resolve", json={"decision": "reject", "note": "x",
                                                                          "operator": "y"}),
                409, CONFLICT_RESOLUTION_FAILED)
        await wait_for(lambda: all(t.cashier.reviews() == [] for t in ts))


async def test_review_cli_reports_an_api_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["review", "list", "--api", "http://127.0.0.1:9"])
    assert result.exit_code != 0 and "no terminal answering" in result.output


async def test_an_op_id_names_one_operation_in_the_whole_store(served: Any) -> None:
    """The same op_id sent to a second drawer is a different operation under a used id: 409, and
    only the first payment exists (it used to take two)."""
    async with served(type="pos") as (_, c):
        order = (await c.post("/api/v1/orders", json={"items": [BURGER]})).json()
        for drawer in ("main", "bar"):
            opened = await c.post(f"/api/v1/cashier/drawers/{drawer}/open",
                                  json={"float_cents": 0, "operator": "carla"})
            assert opened.status_code == 201, opened.text
        pay = {"order_id": order["id"], "amount_cents": 1000, "method": "cash", "op_id": "till-1-0001"}
        first = await c.post(f"{MAIN}/payments", json=pay)
        assert first.status_code == 201, first.text
        assert (await c.post(f"{MAIN}/payments", json=pay)).json() == first.json()  # a retry: the first result
        message = refused(await c.post("/api/v1/cashier/drawers/bar/payments", json=pay), 409,
                          CONFLICT_RESOLUTION_FAILED)
        assert "drawer main" in message
        bar = (await c.get("/api/v1/cashier/drawers/bar", params={"from_position": 0})).json()["entries"]
        assert [e["kind"] for e in bar] == ["drawer_opened"]
