"""The local HTTP API end to end: a real hypercorn server on 127.0.0.1, on asyncio and on trio.

Every rejected request is also checked to have written nothing: the storage update rows, the
event rows and the audit rows are counted before and after.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import anyio
import pytest
from httpx_ws import WebSocketUpgradeError, aconnect_ws

from tests.apiutil import (
    BURGER,
    FRIES,
    ORDER,
    assert_consecutive,
    assert_error,
    create_order,
    last_cursor,
    put_product,
    put_table,
    receive_until,
    upgrade,
    written,
)

pytestmark = pytest.mark.anyio


# -- orders ----------------------------------------------------------------------------------------


async def test_create_get_and_list_order(served: Any) -> None:
    async with served() as (_, client):
        resp = await client.post("/api/v1/orders", json=ORDER)
        assert resp.status_code == 201
        order = resp.json()
        assert order["id"]
        assert order["status"] == "open"
        assert order["total_cents"] == 3180
        assert order["table"] == "T1"
        assert order["waiter"] == "ana"
        assert order["created_by"] == "pos-1"
        assert list(order["stages"]) == ["open"]
        assert order["cancellation"] is None
        [item] = order["items"]
        assert {k: item[k] for k in BURGER} == BURGER
        assert item["total_cents"] == 3180
        assert item["kitchen_status"] == "queued"
        assert item["voided"] is False
        assert item["modifiers"] == []
        assert re.fullmatch(r"[0-9a-hjkmnp-tv-z]{8}", item["id"]), item["id"]  # unique within its order

        got = await client.get(f"/api/v1/orders/{order['id']}")
        assert got.status_code == 200
        assert got.json() == order

        second = await create_order(client, table="T2", items=[FRIES])
        listed = await client.get("/api/v1/orders")
        assert listed.status_code == 200
        assert {o["id"]: o["total_cents"] for o in listed.json()} == {order["id"]: 3180, second["id"]: 450}

        by_status = await client.get("/api/v1/orders", params={"status": "open"})
        assert len(by_status.json()) == 2
        assert (await client.get("/api/v1/orders", params={"status": "sent"})).json() == []
        by_table = await client.get("/api/v1/orders", params={"table": "T2"})
        assert [o["id"] for o in by_table.json()] == [second["id"]]
        by_day = await client.get("/api/v1/orders", params={"day": order["business_day"]})
        assert len(by_day.json()) == 2


async def test_order_without_table_or_waiter(served: Any) -> None:
    async with served() as (_, client):
        resp = await client.post("/api/v1/orders", json={"items": [FRIES]})
        assert resp.status_code == 201
        assert resp.json()["table"] is None
        assert resp.json()["waiter"] is None
        assert resp.json()["total_cents"] == 450


async def test_status_moves_forward_and_may_skip(served: Any) -> None:
    async with served() as (_, client):
        oid = (await create_order(client))["id"]
        sent = await client.patch(f"/api/v1/orders/{oid}", json={"status": "sent"})
        assert sent.status_code == 200
        assert sent.json()["status"] == "sent"
        ready = await client.patch(f"/api/v1/orders/{oid}", json={"status": "ready"})  # skips preparing
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        assert set(ready.json()["stages"]) == {"open", "sent", "ready"}

        before = await written(client)
        for target in ("preparing", "open", "ready"):  # backwards, and the same stage again
            resp = await client.patch(f"/api/v1/orders/{oid}", json={"status": target})
            assert_error(resp, 409, 4011)
        assert await written(client) == before
        assert (await client.get(f"/api/v1/orders/{oid}")).json() == ready.json()

        paid = await client.patch(f"/api/v1/orders/{oid}", json={"status": "paid"})
        assert paid.json()["status"] == "paid"
        # a paid order can no longer be cancelled (it is refunded instead)
        resp = await client.post(f"/api/v1/orders/{oid}/cancel", json={"reason": "changed mind"})
        assert_error(resp, 409, 4011)
        assert (await client.get(f"/api/v1/orders/{oid}")).json()["status"] == "paid"


async def test_patch_waiter_and_notes(served: Any) -> None:
    async with served() as (_, client):
        oid = (await create_order(client))["id"]
        resp = await client.patch(f"/api/v1/orders/{oid}", json={"waiter": "bea"})
        assert resp.status_code == 200
        assert resp.json()["waiter"] == "bea"
        resp = await client.patch(f"/api/v1/orders/{oid}", json={"notes": "birthday", "user": "bea"})
        assert resp.json()["notes"] == "birthday"
        assert resp.json()["waiter"] == "bea"
        got = (await client.get(f"/api/v1/orders/{oid}")).json()
        assert (got["waiter"], got["notes"], got["status"]) == ("bea", "birthday", "open")

        before = await written(client)
        assert_error(await client.patch(f"/api/v1/orders/{oid}", json={}), 422, 4006)
        assert_error(await client.patch(f"/api/v1/orders/{oid}", json={"user": "bea"}), 422, 4006)
        mixed = await client.patch(f"/api/v1/orders/{oid}", json={"status": "sent", "waiter": "carl"})
        assert_error(mixed, 422, 4006)
        assert_error(await client.patch(f"/api/v1/orders/{oid}", json={"status": "eaten"}), 422, 4006)
        assert await written(client) == before
        assert (await client.get(f"/api/v1/orders/{oid}")).json() == got


async def test_add_items_and_kitchen_status(served: Any) -> None:
    async with served() as (_, client):
        order = await create_order(client)
        oid = order["id"]
        resp = await client.post(f"/api/v1/orders/{oid}/items", json={"items": [FRIES, {**FRIES, "qty": 2}]})
        assert resp.status_code == 201
        grown = resp.json()
        assert grown["total_cents"] == 3180 + 450 * 3
        assert len(grown["items"]) == 3
        assert len({i["id"] for i in grown["items"]}) == 3

        item_id = order["items"][0]["id"]
        url = f"/api/v1/orders/{oid}/items/{item_id}"
        resp = await client.patch(url, json={"kitchen_status": "preparing"})
        assert resp.status_code == 200
        assert {i["id"]: i["kitchen_status"] for i in resp.json()["items"]}[item_id] == "preparing"
        resp = await client.patch(url, json={"kitchen_status": "served"})  # skipping is fine
        assert {i["id"]: i["kitchen_status"] for i in resp.json()["items"]}[item_id] == "served"
        others = [i["kitchen_status"] for i in resp.json()["items"] if i["id"] != item_id]
        assert others == ["queued", "queued"]

        before = await written(client)
        assert_error(await client.patch(url, json={"kitchen_status": "ready"}), 409, 4011)
        assert_error(await client.patch(url, json={"kitchen_status": "burnt"}), 422, 4006)
        assert_error(
            await client.patch(f"/api/v1/orders/{oid}/items/zzzzzzzz", json={"kitchen_status": "ready"}),
            404,
            4007,
        )
        assert_error(  # not an item id at all (they are 8 base32 digits)
            await client.patch(f"/api/v1/orders/{oid}/items/{oid}.nope", json={"kitchen_status": "ready"}),
            422,
            4006,
        )
        assert_error(await client.post(f"/api/v1/orders/{oid}/items", json={"items": []}), 422, 4006)
        assert await written(client) == before


async def test_void_item_shrinks_total_but_keeps_item(served: Any) -> None:
    async with served() as (_, client):
        order = await create_order(client, items=[BURGER, FRIES])
        assert order["total_cents"] == 3180 + 450
        fries = next(i for i in order["items"] if i["sku"] == "fries")
        url = f"/api/v1/orders/{order['id']}/items/{fries['id']}"
        resp = await client.post(url + "/void", json={"reason": "dropped", "user": "ana"})
        assert resp.status_code == 200
        voided = resp.json()
        assert voided["total_cents"] == 3180
        assert len(voided["items"]) == 2
        item = next(i for i in voided["items"] if i["id"] == fries["id"])
        assert item["voided"] is True
        assert item["void"]["reason"] == "dropped"
        assert item["total_cents"] == 0
        assert (await client.get(f"/api/v1/orders/{order['id']}")).json() == voided

        before = await written(client)
        assert_error(await client.post(url + "/void", json={"reason": "again"}), 409, 4011)
        assert_error(await client.post(url + "/void", json={}), 422, 4006)
        assert_error(await client.patch(url, json={"kitchen_status": "ready"}), 409, 4011)
        assert await written(client) == before


async def test_cancel_order(served: Any) -> None:
    async with served() as (_, client):
        oid = (await create_order(client))["id"]
        before = await written(client)
        assert_error(await client.post(f"/api/v1/orders/{oid}/cancel", json={}), 422, 4006)
        assert_error(await client.post(f"/api/v1/orders/{oid}/cancel", json={"reason": ""}), 422, 4006)
        # cancelling through PATCH also needs a reason
        assert_error(await client.patch(f"/api/v1/orders/{oid}", json={"status": "cancelled"}), 422, 4006)
        assert await written(client) == before
        assert (await client.get(f"/api/v1/orders/{oid}")).json()["status"] == "open"

        resp = await client.post(f"/api/v1/orders/{oid}/cancel", json={"reason": "guest left", "user": "ana"})
        assert resp.status_code == 200
        cancelled = resp.json()
        assert cancelled["status"] == "cancelled"
        assert cancelled["cancellation"]["reason"] == "guest left"

        before = await written(client)
        for target in ("sent", "paid", "closed"):
            assert_error(await client.patch(f"/api/v1/orders/{oid}", json={"status": target}), 409, 4011)
        assert_error(await client.post(f"/api/v1/orders/{oid}/cancel", json={"reason": "twice"}), 409, 4011)
        assert_error(await client.post(f"/api/v1/orders/{oid}/items", json={"items": [FRIES]}), 409, 4011)
        item_id = cancelled["items"][0]["id"]
        assert_error(
            await client.post(f"/api/v1/orders/{oid}/items/{item_id}/void", json={"reason": "x"}), 409, 4011
        )
        assert_error(await client.post(f"/api/v1/orders/{oid}/transfer", json={"table": "T2"}), 409, 4011)
        assert await written(client) == before
        assert (await client.get(f"/api/v1/orders/{oid}")).json() == cancelled


async def test_patch_cancel_with_reason(served: Any) -> None:
    async with served() as (_, client):
        oid = (await create_order(client))["id"]
        resp = await client.patch(f"/api/v1/orders/{oid}", json={"status": "cancelled", "reason": "no show"})
        assert resp.status_code == 200
        assert resp.json()["status"] == "cancelled"
        assert resp.json()["cancellation"]["reason"] == "no show"


async def test_transfer_order(served: Any) -> None:
    async with served() as (_, client):
        oid = (await create_order(client))["id"]
        resp = await client.post(f"/api/v1/orders/{oid}/transfer", json={"table": "T2"})
        assert resp.status_code == 200
        assert resp.json()["table"] == "T2"
        assert resp.json()["total_cents"] == 3180
        assert [o["id"] for o in (await client.get("/api/v1/orders", params={"table": "T2"})).json()] == [oid]
        assert (await client.get("/api/v1/orders", params={"table": "T1"})).json() == []

        before = await written(client)
        assert_error(await client.post(f"/api/v1/orders/{oid}/transfer", json={"table": "T2"}), 409, 4011)
        assert_error(await client.post(f"/api/v1/orders/{oid}/transfer", json={"table": "bad id"}), 422, 4006)
        assert_error(await client.post(f"/api/v1/orders/{oid}/transfer", json={}), 422, 4006)
        assert await written(client) == before
        assert (await client.get(f"/api/v1/orders/{oid}")).json()["table"] == "T2"


async def test_modifiers_with_price_add_to_total(served: Any) -> None:
    async with served() as (_, client):
        item = {
            **BURGER,
            "modifiers": [{"name": "cheese", "price_cents": 150}, "no onions", {"name": "rare"}],
        }
        order = await create_order(client, items=[item])
        assert order["total_cents"] == 2 * (1590 + 150)
        assert order["items"][0]["modifiers"] == [
            {"name": "cheese", "price_cents": 150},
            {"name": "no onions", "price_cents": 0},
            {"name": "rare", "price_cents": 0},
        ]
        more = {**FRIES, "modifiers": [{"name": "truffle", "price_cents": 300}]}
        resp = await client.post(f"/api/v1/orders/{order['id']}/items", json={"items": [more]})
        assert resp.json()["total_cents"] == 2 * (1590 + 150) + 450 + 300


# -- tables ----------------------------------------------------------------------------------------


async def test_tables_put_list_patch(served: Any) -> None:
    async with served() as (_, client):
        resp = await client.put("/api/v1/tables/T1", json={"name": "T1", "seats": 4, "area": "patio"})
        assert resp.status_code == 200
        table = resp.json()
        assert table == {
            "id": "T1",
            "name": "T1",
            "seats": 4,
            "area": "patio",
            "status": "free",
            "status_at": None,
            "waiter": None,
            "guests": 0,
            "merged_into": None,
        }
        await put_table(client, "T2", seats=2, area=None)
        listed = (await client.get("/api/v1/tables")).json()
        assert [t["id"] for t in listed] == ["T1", "T2"]
        assert listed[1]["area"] is None

        resp = await client.patch(
            "/api/v1/tables/T1", json={"status": "occupied", "waiter": "ana", "guests": 4}
        )
        assert resp.status_code == 200
        patched = resp.json()
        assert (patched["status"], patched["waiter"], patched["guests"]) == ("occupied", "ana", 4)
        assert patched["status_at"]
        assert (await client.get("/api/v1/tables/T1")).json() == patched

        # waiter: null unassigns, other aspects stay
        resp = await client.patch("/api/v1/tables/T1", json={"waiter": None})
        assert resp.json()["waiter"] is None
        assert resp.json()["status"] == "occupied"

        # re-putting the layout keeps the table's state
        resp = await client.put("/api/v1/tables/T1", json={"name": "Terrace 1", "seats": 6})
        assert (resp.json()["name"], resp.json()["seats"], resp.json()["status"]) == (
            "Terrace 1",
            6,
            "occupied",
        )


async def test_table_errors_write_nothing(served: Any) -> None:
    async with served() as (_, client):
        await put_table(client, "T1")
        before = await written(client)
        assert_error(await client.patch("/api/v1/tables/T1", json={"status": "dirty"}), 422, 4006)
        assert_error(await client.patch("/api/v1/tables/T1", json={"status": None}), 422, 4006)
        assert_error(await client.patch("/api/v1/tables/T1", json={}), 422, 4006)
        assert_error(await client.patch("/api/v1/tables/T1", json={"guests": -1}), 422, 4006)
        # > max(4*4, 100): the body is valid, the table's seats refuse it (a state rule: 409)
        assert_error(await client.patch("/api/v1/tables/T1", json={"guests": 101}), 409, 4011)
        assert_error(await client.patch("/api/v1/tables/T1", json={"seats": 8}), 422, 4006)
        assert_error(await client.put("/api/v1/tables/T1", json={"name": "T1", "seats": 0}), 422, 4006)
        assert_error(await client.put("/api/v1/tables/T1", json={"name": "T1", "seats": True}), 422, 4006)
        assert_error(await client.put("/api/v1/tables/T1", json={"name": "T1", "seats": "4"}), 422, 4006)
        assert_error(await client.put("/api/v1/tables/bad id", json={"name": "x", "seats": 2}), 422, 4006)
        assert_error(await client.patch("/api/v1/tables/T9", json={"status": "occupied"}), 404, 4007)
        assert_error(await client.get("/api/v1/tables/T9"), 404, 4007)
        assert_error(await client.post("/api/v1/tables/T9/merge", json={"into": "T1"}), 404, 4007)
        assert_error(await client.post("/api/v1/tables/T1/merge", json={"into": "T9"}), 404, 4007)
        assert_error(await client.post("/api/v1/tables/T9/unmerge", json={}), 404, 4007)
        assert await written(client) == before
        assert (await client.get("/api/v1/tables")).json()[0]["status"] == "free"


async def test_merge_unmerge_and_orders_of_merged_tables(served: Any) -> None:
    async with served() as (_, client):
        for tid in ("T1", "T2", "T3"):
            await put_table(client, tid)
        o1 = (await create_order(client, table="T1"))["id"]
        o2 = (await create_order(client, table="T2"))["id"]
        o3 = (await create_order(client, table="T3"))["id"]

        resp = await client.post("/api/v1/tables/T2/merge", json={"into": "T1"})
        assert resp.status_code == 200
        assert resp.json()["merged_into"] == "T1"
        ids = {o["id"] for o in (await client.get("/api/v1/orders", params={"table": "T1"})).json()}
        assert ids == {o1, o2}
        # the merged table's own listing is unchanged
        assert [o["id"] for o in (await client.get("/api/v1/orders", params={"table": "T2"})).json()] == [o2]

        before = await written(client)
        assert_error(await client.post("/api/v1/tables/T1/merge", json={"into": "T1"}), 409, 4011)
        assert_error(await client.post("/api/v1/tables/T2/merge", json={"into": "T1"}), 409, 4011)
        assert_error(
            await client.post("/api/v1/tables/T3/merge", json={"into": "T2"}), 409, 4011
        )  # T2 is merged
        assert_error(await client.post("/api/v1/tables/T3/unmerge", json={}), 409, 4011)
        assert await written(client) == before

        resp = await client.post("/api/v1/tables/T2/unmerge", json={"user": "ana"})
        assert resp.status_code == 200
        assert resp.json()["merged_into"] is None
        assert [o["id"] for o in (await client.get("/api/v1/orders", params={"table": "T1"})).json()] == [o1]
        assert [o["id"] for o in (await client.get("/api/v1/orders", params={"table": "T3"})).json()] == [o3]


async def test_merge_of_a_merge_target_is_refused_or_followed(served: Any) -> None:
    async with served() as (_, client):
        for tid in ("T1", "T2", "T3"):
            await put_table(client, tid)
        o2 = (await create_order(client, table="T2"))["id"]
        assert (await client.post("/api/v1/tables/T2/merge", json={"into": "T1"})).status_code == 200
        resp = await client.post("/api/v1/tables/T1/merge", json={"into": "T3"})
        if resp.status_code == 200:
            ids = {o["id"] for o in (await client.get("/api/v1/orders", params={"table": "T3"})).json()}
            assert o2 in ids
        else:
            assert_error(resp, 409, 4011)


# -- catalog and inventory -------------------------------------------------------------------------


async def test_catalog_put_and_list(served: Any) -> None:
    async with served() as (_, client):
        product = await put_product(client, "burger", 1590)
        assert product == {
            "sku": "burger",
            "name": "Burger",
            "price_cents": 1590,
            "station": "grill",
            "category": "mains",
            "active": True,
        }
        await put_product(client, "fries", 450)
        catalog = (await client.get("/api/v1/catalog")).json()
        assert [p["sku"] for p in catalog] == ["burger", "fries"]
        assert (await client.get("/api/v1/catalog/fries")).json()["price_cents"] == 450
        resp = await client.put(
            "/api/v1/catalog/burger", json={"name": "Burger", "price_cents": 1690, "active": False}
        )
        assert resp.status_code == 200
        assert (resp.json()["price_cents"], resp.json()["active"], resp.json()["station"]) == (
            1690,
            False,
            None,
        )
        assert_error(await client.get("/api/v1/catalog/pizza"), 404, 4007)

        before = await written(client)
        assert_error(
            await client.put("/api/v1/catalog/pizza", json={"name": "Pizza", "price_cents": -1}), 422, 4006
        )
        assert_error(
            await client.put("/api/v1/catalog/pizza", json={"name": "Pizza", "price_cents": "9"}), 422, 4006
        )
        assert_error(
            await client.put("/api/v1/catalog/bad sku", json={"name": "X", "price_cents": 1}), 422, 4006
        )
        assert await written(client) == before


async def test_inventory_adjust_count_and_flags(served: Any) -> None:
    async with served() as (_, client):
        await put_product(client, "burger")
        inv = (await client.get("/api/v1/inventory/burger")).json()
        assert (inv["quantity"], inv["out_of_stock"], inv["low_stock"], inv["low_stock_threshold"]) == (
            0,
            False,
            False,
            None,
        )
        assert inv["counted_at"] is None

        resp = await client.post("/api/v1/inventory/burger/count", json={"quantity": 40})
        assert resp.status_code == 200
        assert resp.json()["quantity"] == 40
        assert resp.json()["counted_at"]
        resp = await client.post("/api/v1/inventory/burger/adjust", json={"delta": -2, "reason": "sale"})
        assert resp.status_code == 200
        assert resp.json()["quantity"] == 38
        resp = await client.post("/api/v1/inventory/burger/adjust", json={"delta": 5, "reason": "delivery"})
        assert resp.json()["quantity"] == 43
        # a count resets the base: the adjustments before it no longer add up
        resp = await client.post("/api/v1/inventory/burger/count", json={"quantity": 40})
        assert resp.json()["quantity"] == 40
        resp = await client.post("/api/v1/inventory/burger/adjust", json={"delta": -2, "reason": "sale"})
        assert resp.json()["quantity"] == 38
        assert (await client.get("/api/v1/inventory/burger")).json()["quantity"] == 38
        listed = (await client.get("/api/v1/inventory")).json()
        assert [(i["sku"], i["quantity"]) for i in listed] == [("burger", 38)]

        resp = await client.patch(
            "/api/v1/inventory/burger", json={"out_of_stock": True, "low_stock_threshold": 37}
        )
        assert resp.status_code == 200
        assert (
            resp.json()["out_of_stock"],
            resp.json()["low_stock_threshold"],
            resp.json()["low_stock"],
        ) == (True, 37, False)
        resp = await client.patch(
            "/api/v1/inventory/burger", json={"low_stock_threshold": 38}
        )  # quantity == threshold
        assert (resp.json()["low_stock"], resp.json()["out_of_stock"]) == (True, True)
        resp = await client.post("/api/v1/inventory/burger/adjust", json={"delta": 1, "reason": "found"})
        assert resp.json()["low_stock"] is False
        resp = await client.patch(
            "/api/v1/inventory/burger", json={"out_of_stock": False, "low_stock_threshold": None}
        )
        assert (
            resp.json()["out_of_stock"],
            resp.json()["low_stock_threshold"],
            resp.json()["low_stock"],
        ) == (False, None, False)


async def test_inventory_errors_write_nothing(served: Any) -> None:
    async with served() as (_, client):
        await put_product(client, "burger")
        before = await written(client)
        assert_error(
            await client.post("/api/v1/inventory/pizza/adjust", json={"delta": -2, "reason": "sale"}),
            404,
            4007,
        )
        assert_error(await client.post("/api/v1/inventory/pizza/count", json={"quantity": 40}), 404, 4007)
        assert_error(await client.patch("/api/v1/inventory/pizza", json={"out_of_stock": True}), 404, 4007)
        assert_error(await client.get("/api/v1/inventory/pizza"), 404, 4007)
        assert_error(
            await client.post("/api/v1/inventory/burger/adjust", json={"delta": 0, "reason": "x"}), 422, 4006
        )
        assert_error(await client.post("/api/v1/inventory/burger/adjust", json={"delta": -2}), 422, 4006)
        assert_error(
            await client.post("/api/v1/inventory/burger/adjust", json={"delta": "-2", "reason": "x"}),
            422,
            4006,
        )
        assert_error(await client.post("/api/v1/inventory/burger/count", json={"quantity": -1}), 422, 4006)
        assert_error(await client.patch("/api/v1/inventory/burger", json={}), 422, 4006)
        assert_error(await client.patch("/api/v1/inventory/burger", json={"out_of_stock": None}), 422, 4006)
        assert_error(
            await client.patch("/api/v1/inventory/burger", json={"low_stock_threshold": -1}), 422, 4006
        )
        assert await written(client) == before
        assert (await client.get("/api/v1/inventory/burger")).json()["quantity"] == 0

        # the stock may not leave -10,000,000..10,000,000: a rule of the stored state, so 409 (the body is valid)
        assert (await client.post("/api/v1/inventory/burger/count", json={"quantity": 10_000_000})).status_code == 200
        before = await written(client)
        assert_error(await client.post("/api/v1/inventory/burger/adjust", json={"delta": 1, "reason": "x"}), 409, 4011)
        assert await written(client) == before


# -- validation and errors -------------------------------------------------------------------------


async def test_malformed_json_is_rejected(served: Any) -> None:
    async with served() as (_, client):
        before = await written(client)
        resp = await client.post(
            "/api/v1/orders",
            content=b'{"table": "T1", "items": [',
            headers={"content-type": "application/json"},
        )
        body = assert_error(resp, 422, 4006)
        assert "JSON" in body["message"]
        assert await written(client) == before
        assert (await client.get("/api/v1/orders")).json() == []


BAD_ORDERS = {
    "qty as string": {**ORDER, "items": [{**BURGER, "qty": "2"}]},
    "qty as float": {**ORDER, "items": [{**BURGER, "qty": 2.5}]},
    "qty as bool": {**ORDER, "items": [{**BURGER, "qty": True}]},
    "price as string": {**ORDER, "items": [{**BURGER, "unit_price_cents": "1590"}]},
    "price as float": {**ORDER, "items": [{**BURGER, "unit_price_cents": 15.9}]},
    "unknown item field": {**ORDER, "items": [{**BURGER, "colour": "red"}]},
    "unknown order field": {**ORDER, "discount": 10},
    "zero qty": {**ORDER, "items": [{**BURGER, "qty": 0}]},
    "negative qty": {**ORDER, "items": [{**BURGER, "qty": -1}]},
    "negative price": {**ORDER, "items": [{**BURGER, "unit_price_cents": -1}]},
    "negative modifier price": {
        **ORDER,
        "items": [{**BURGER, "modifiers": [{"name": "x", "price_cents": -5}]}],
    },
    "no items": {**ORDER, "items": []},
    "items missing": {"table": "T1"},
    "bad sku": {**ORDER, "items": [{**BURGER, "sku": "two words"}]},
    "empty name": {**ORDER, "items": [{**BURGER, "name": ""}]},
    "table as number": {**ORDER, "table": 5},
    "bad table id": {**ORDER, "table": "-T1"},
    "body is a list": [ORDER],
    "body is a string": "order",
}


@pytest.mark.parametrize("body", list(BAD_ORDERS.values()), ids=list(BAD_ORDERS))
async def test_invalid_order_bodies_write_nothing(served: Any, body: Any) -> None:
    async with served() as (_, client):
        oid = (await create_order(client))["id"]
        before = await written(client)
        assert_error(await client.post("/api/v1/orders", json=body), 422, 4006)
        if isinstance(body, dict) and body.get("items", ORDER["items"]) != ORDER["items"]:
            add = await client.post(f"/api/v1/orders/{oid}/items", json={"items": body["items"]})
            assert_error(add, 422, 4006)
        assert await written(client) == before
        orders = (await client.get("/api/v1/orders")).json()
        assert [(o["id"], o["total_cents"], len(o["items"])) for o in orders] == [(oid, 3180, 1)]


UNKNOWN_ORDER_IDS = ["20200101-0000000000000000000", "99999999-zzzzzzzzzzzzzzzzzzz"]
MALFORMED_ORDER_IDS = ["nope", "99999999-x", "20200101-000000000000000000i", "20200101-0000000000000000000\n"]


@pytest.mark.parametrize("oid", UNKNOWN_ORDER_IDS)
async def test_unknown_order_is_404(served: Any, oid: str) -> None:
    async with served() as (_, client):
        real = await create_order(client)
        today_unknown = real["id"][:9] + "0000000000000000000"
        before = await written(client)
        for order_id in (oid, today_unknown):
            base = f"/api/v1/orders/{order_id}"
            assert_error(await client.get(base), 404, 4007)
            assert_error(await client.patch(base, json={"status": "sent"}), 404, 4007)
            assert_error(await client.patch(base, json={"waiter": "bea"}), 404, 4007)
            assert_error(await client.post(base + "/items", json={"items": [FRIES]}), 404, 4007)
            assert_error(await client.post(base + "/cancel", json={"reason": "x"}), 404, 4007)
            assert_error(await client.post(base + "/transfer", json={"table": "T2"}), 404, 4007)
            assert_error(await client.post(base + "/items/00000000/void", json={"reason": "x"}), 404, 4007)
            assert_error(await client.patch(base + "/items/00000000", json={"kitchen_status": "ready"}), 404, 4007)
        assert await written(client) == before


@pytest.mark.parametrize("oid", MALFORMED_ORDER_IDS)
async def test_malformed_order_id_is_422(served: Any, oid: str) -> None:
    """Order ids are ``YYYYMMDD-`` and 19 base32 digits; anything else is refused before a lookup."""
    async with served() as (_, client):
        real = await create_order(client)
        before = await written(client)
        base = f"/api/v1/orders/{quote(oid, safe='')}"
        for resp in (
            await client.get(base),
            await client.patch(base, json={"status": "sent"}),
            await client.post(base + "/items", json={"items": [FRIES]}),
            await client.post(base + "/cancel", json={"reason": "x"}),
        ):
            assert assert_error(resp, 422, 4006)["message"].startswith("order_id: ")
        void = await client.post(f"/api/v1/orders/{real['id']}/items/{quote(oid, safe='')}/void", json={"reason": "x"})
        assert assert_error(void, 422, 4006)["message"].startswith("item_id: ")
        assert await written(client) == before


# A 413 is sent before the body is read, and the server then drops the connection;
# "connection: close" keeps the client from reusing that connection for the next request.
JSON_CLOSE = {"content-type": "application/json", "connection": "close"}


async def test_oversized_body_is_413(served: Any) -> None:
    async with served() as (_, client):
        before = await written(client)
        limit = 256 * 1024
        padded = json.dumps({**ORDER, "notes": "x" * (limit + 1)}).encode()
        resp = await client.post("/api/v1/orders", content=padded, headers=JSON_CLOSE)
        body = assert_error(resp, 413, 4006)
        assert str(limit) in body["message"]
        resp = await client.post("/api/v1/orders", content=b" " * (limit + 1), headers=JSON_CLOSE)
        assert_error(resp, 413, 4006)
        assert await written(client) == before
        # exactly the limit is parsed (and here rejected for the long notes, not for its size)
        small = json.dumps({**ORDER, "notes": "x" * 1000}).encode()
        resp = await client.post(
            "/api/v1/orders", content=small + b" " * (limit - len(small)), headers=JSON_CLOSE
        )
        assert_error(resp, 422, 4006)
        assert await written(client) == before
        assert (await client.get("/api/v1/orders")).json() == []


async def test_configured_body_limit(served: Any) -> None:
    async with served(max_body_bytes=2000) as (_, client):
        resp = await client.post("/api/v1/orders", json={**ORDER, "notes": "n" * 400})
        assert resp.status_code == 201
        before = await written(client)
        items = [{**BURGER, "notes": "n" * 400}] * 5
        big = json.dumps({**ORDER, "items": items}).encode()
        assert len(big) > 2000
        assert_error(await client.post("/api/v1/orders", content=big, headers=JSON_CLOSE), 413, 4006)
        assert await written(client) == before


async def test_oversized_chunked_body_is_413(served: Any) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"items": [' + b" " * 1000
        yield b" " * 1001 + b"]}"

    async with served(max_body_bytes=2000) as (_, client):
        before = await written(client)
        resp = await client.post("/api/v1/orders", content=chunks(), headers=JSON_CLOSE)
        assert resp.request.headers.get("transfer-encoding") == "chunked"
        assert_error(resp, 413, 4006)
        assert await written(client) == before


async def test_413_tells_the_client_the_connection_closes(served: Any) -> None:
    async with served() as (_, client):
        resp = await client.post(
            "/api/v1/orders", content=b" " * (256 * 1024 + 1), headers={"content-type": "application/json"}
        )
        assert_error(resp, 413, 4006)
        assert resp.headers.get("connection") == "close"
        assert (await client.get("/api/v1/status")).status_code == 200


async def test_unknown_route_and_method(served: Any) -> None:
    async with served() as (_, client):
        assert_error(await client.get("/api/v1/nope"), 404, 4007)
        assert_error(await client.post("/api/v2/orders", json=ORDER), 404, 4007)
        refused = await client.delete("/api/v1/orders")
        assert_error(refused, 405, 4006)
        assert set(refused.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "POST"}
        assert_error(await client.get("/api/v1/orders", params={"status": "eaten"}), 422, 4006)
        assert_error(await client.get("/api/v1/orders", params={"day": "yesterday"}), 422, 4006)
        assert_error(await client.get("/api/v1/orders", params={"day": "2001-01-01"}), 404, 4007)
        assert_error(await client.get("/api/v1/audit", params={"limit": 0}), 422, 4006)


# -- audit, status, openapi ------------------------------------------------------------------------


async def test_audit_rows(served: Any) -> None:
    async with served() as (_, client):
        order = await create_order(client)
        oid = order["id"]
        await client.patch(f"/api/v1/orders/{oid}", json={"status": "sent", "user": "bob"})
        await put_table(client, "T1")
        await put_product(client, "burger")
        await client.post(
            "/api/v1/inventory/burger/adjust", json={"delta": -2, "reason": "sale", "user": "cy"}
        )

        rows = (await client.get("/api/v1/audit")).json()
        assert [(r["entity"], r["entity_id"], r["operation"]) for r in rows] == [
            ("order", oid, "create"),
            ("order", oid, "status:sent"),
            ("table", "T1", "put"),
            ("inventory", "burger", "put_product"),
            ("inventory", "burger", "adjust:sale"),
        ]
        keys = {
            "seq",
            "op_id",
            "entity",
            "entity_id",
            "operation",
            "terminal_id",
            "user_id",
            "at",
            "before",
            "after",
        }
        for row in rows:
            assert set(row) == keys
            assert row["terminal_id"] == "pos-1"
            assert row["at"].endswith("Z")
            assert row["after"] is not None
        assert len({r["op_id"] for r in rows}) == len(rows)
        assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)

        create, status, table, product, adjust = rows
        assert create["before"] is None
        assert create["after"] == order
        assert create["user_id"] == "ana"  # the waiter, when no user is given
        assert (status["before"]["status"], status["after"]["status"], status["user_id"]) == (
            "open",
            "sent",
            "bob",
        )
        assert table["before"] is None and table["after"]["seats"] == 4
        assert product["before"] is None and product["after"]["sku"] == "burger"
        assert (adjust["before"]["quantity"], adjust["after"]["quantity"], adjust["user_id"]) == (0, -2, "cy")

        only = (await client.get("/api/v1/audit", params={"entity": "order", "entity_id": oid})).json()
        assert [r["operation"] for r in only] == ["create", "status:sent"]
        after = (await client.get("/api/v1/audit", params={"after": rows[2]["seq"], "limit": 1})).json()
        assert [r["op_id"] for r in after] == [product["op_id"]]


async def test_status(served: Any) -> None:
    async with served() as (_, client):
        resp = await client.get("/api/v1/status")
        assert resp.status_code == 200
        status = resp.json()
        assert status["terminal_id"] == "pos-1"
        assert status["type"] == "pos"
        assert isinstance(status["uptime_seconds"], int | float) and status["uptime_seconds"] >= 0
        docs = status["documents"]
        assert {"tables", "inventory", f"orders/{status['business_day']}"} <= set(docs)
        assert all(d["read_only"] is False for d in docs.values())
        assert status["storage"]["updates"] == 0
        assert status["last_event_cursor"] == 0

        await create_order(client)
        after = (await client.get("/api/v1/status")).json()
        assert after["storage"]["updates"] == 1
        assert after["storage"]["audit"] == 1
        assert after["last_event_cursor"] == 1
        assert (
            after["documents"][f"orders/{status['business_day']}"]["bytes"]
            > docs[f"orders/{status['business_day']}"]["bytes"]
        )


async def test_openapi_lists_order_paths(served: Any) -> None:
    async with served() as (_, client):
        resp = await client.get("/openapi.json")
        assert resp.status_code == 200
        paths = resp.json()["paths"]
        assert {"get", "post"} <= set(paths["/api/v1/orders"])
        assert {"get", "patch"} <= set(paths["/api/v1/orders/{order_id}"])
        for path in (
            "/api/v1/orders/{order_id}/items",
            "/api/v1/orders/{order_id}/cancel",
            "/api/v1/orders/{order_id}/transfer",
            "/api/v1/tables/{table_id}",
            "/api/v1/inventory/{sku}",
        ):
            assert path in paths
        spec = resp.json()
        listing = {p["name"]: p for p in paths["/api/v1/orders"]["get"]["parameters"]}
        assert listing["status"]["in"] == "query" and "open" in str(listing["status"]["schema"])
        assert set(listing) == {"day", "status", "table"}
        assert [p["name"] for p in paths["/api/v1/orders/{order_id}/items/{item_id}"]["patch"]["parameters"]] == [
            "order_id", "item_id"]
        ref = paths["/api/v1/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        order_in = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert order_in["required"] == ["items"] and order_in["additionalProperties"] is False
        assert "201" in paths["/api/v1/orders"]["post"]["responses"]
        assert "409" in paths["/api/v1/orders/{order_id}"]["patch"]["responses"]


# -- events ----------------------------------------------------------------------------------------


async def test_events_replay_from_cursor_zero_and_reset(served: Any) -> None:
    async with served() as (terminal, client):
        oid = (await create_order(client))["id"]
        await put_table(client, "T1")
        await client.patch("/api/v1/tables/T1", json={"status": "occupied", "waiter": "ana", "guests": 2})
        await put_product(client, "burger")
        await client.post("/api/v1/inventory/burger/adjust", json={"delta": -1, "reason": "sale"})
        last = await last_cursor(client)

        async with aconnect_ws("/api/v1/events?cursor=0", client) as ws:
            events = await receive_until(ws, last)
        assert_consecutive(events, 1)
        assert [e["type"] for e in events] == [
            "order:created",
            "table:updated",
            "table:status:changed",
            "table:assigned",
            "table:updated",
            "inventory:updated",
            "inventory:updated",
        ]
        assert events[0]["order_id"] == oid and events[0]["order"]["total_cents"] == 3180
        assert (events[2]["table_id"], events[2]["status"]) == ("T1", "occupied")
        assert (events[3]["table_id"], events[3]["waiter"]) == ("T1", "ana")
        assert events[4]["table"]["guests"] == 2
        assert (events[5]["sku"], events[5]["item"]["quantity"]) == ("burger", 0)
        assert events[6]["item"]["quantity"] == -1
        assert all(e["at"].endswith("Z") for e in events)

        # history older than what is retained: a reset to the newest cursor, then live events
        await terminal.store.prune_events(2)
        async with aconnect_ws("/api/v1/events?cursor=0", client) as ws:
            with anyio.fail_after(10):
                reset = await ws.receive_json()
            assert reset == {"type": "reset", "cursor": last}
            await put_table(client, "T2")
            with anyio.fail_after(10):
                nxt = await ws.receive_json()
            assert (nxt["cursor"], nxt["type"], nxt["table_id"]) == (last + 1, "table:updated", "T2")
        # a cursor inside the retained window still replays exactly what followed it
        async with aconnect_ws(f"/api/v1/events?cursor={last - 1}", client) as ws:
            tail = await receive_until(ws, last + 1)
        assert [(e["cursor"], e["type"]) for e in tail] == [
            (last, "inventory:updated"),
            (last + 1, "table:updated"),
        ]
        # a cursor from the future (e.g. kept from a replaced data directory) is reset, not skipped over
        async with aconnect_ws(f"/api/v1/events?cursor={last + 100}", client) as ws:
            with anyio.fail_after(10):
                assert await ws.receive_json() == {"type": "reset", "cursor": last + 1}
            await put_table(client, "T3")
            with anyio.fail_after(10):
                nxt = await ws.receive_json()
            assert (nxt["cursor"], nxt["table_id"]) == (last + 2, "T3")
        # a cursor that is not a number fails the handshake, with a JSON answer like every error
        with pytest.raises(WebSocketUpgradeError) as refused:
            async with aconnect_ws("/api/v1/events?cursor=abc", client):
                pass
        assert refused.value.response.status_code == 422
        assert_error(await upgrade(client, "/api/v1/events?cursor=abc"), 422, 4006)


async def test_events_live_and_resume_without_gaps(served: Any) -> None:
    async with served() as (_, client):
        oid = (await create_order(client))["id"]
        await put_table(client, "T1")
        first = await last_cursor(client)

        async with aconnect_ws("/api/v1/events?cursor=0", client) as ws:
            replay = await receive_until(ws, first)  # subscribed from here on
            assert_consecutive(replay, 1)
            await client.patch(f"/api/v1/orders/{oid}", json={"status": "sent"})
            with anyio.fail_after(10):
                live = await ws.receive_json()
            assert (live["cursor"], live["type"], live["order_id"]) == (first + 1, "order:updated", oid)
            assert live["order"]["status"] == "sent"
            seen = live["cursor"]

        # missed while disconnected
        await client.post(f"/api/v1/orders/{oid}/cancel", json={"reason": "left"})
        await client.patch("/api/v1/tables/T1", json={"status": "cleaning"})
        second = await create_order(client, table="T2")
        await put_product(client, "fries", 450)
        missed_last = await last_cursor(client)
        assert missed_last == seen + 4

        async with aconnect_ws(f"/api/v1/events?cursor={seen}", client) as ws:
            missed = await receive_until(ws, missed_last)
            assert_consecutive(missed, seen + 1)
            assert [e["type"] for e in missed] == [
                "order:cancelled",
                "table:status:changed",
                "order:created",
                "inventory:updated",
            ]
            assert missed[0]["order"]["cancellation"]["reason"] == "left"
            assert missed[2]["order_id"] == second["id"]
            # the next frame is the next write: nothing repeated after the catch-up (and what the
            # client sends is ignored)
            await ws.send_text("hello")
            await client.post("/api/v1/inventory/fries/count", json={"quantity": 10})
            with anyio.fail_after(10):
                nxt = await ws.receive_json()
            assert (nxt["cursor"], nxt["type"], nxt["item"]["quantity"]) == (
                missed_last + 1,
                "inventory:updated",
                10,
            )

        # resuming at the newest cursor: no history, just what comes next
        newest = await last_cursor(client)
        async with aconnect_ws(f"/api/v1/events?cursor={newest}", client) as ws:
            # whether this lands before or after the server subscribes, it is delivered exactly once
            await put_table(client, "T3")
            await put_table(client, "T4")
            got = await receive_until(ws, newest + 2)
        assert [(e["cursor"], e["table_id"]) for e in got] == [(newest + 1, "T3"), (newest + 2, "T4")]


async def test_events_handler_ends_when_client_disconnects(served: Any) -> None:
    async with served() as (terminal, client):
        await put_table(client, "T1")
        async with aconnect_ws("/api/v1/events?cursor=0", client) as ws:
            with anyio.fail_after(10):
                assert (await ws.receive_json())["cursor"] == 1
            assert len(terminal.events._subscribers) == 1
        await put_table(client, "T2")
        stopping = anyio.current_time()
    # no client is connected any more, so nothing should hold the server up for the grace period
    assert anyio.current_time() - stopping < 2.0
