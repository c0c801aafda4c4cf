"""What the API tests share: request bodies, counting what is stored, errors, upgrades.
Test modules import from here, never from each other."""

from __future__ import annotations

from typing import Any

import anyio
import httpx

BURGER: dict[str, Any] = {
    "sku": "burger",
    "name": "Burger",
    "qty": 2,
    "unit_price_cents": 1590,
    "station": "grill",
}
FRIES: dict[str, Any] = {
    "sku": "fries",
    "name": "Fries",
    "qty": 1,
    "unit_price_cents": 450,
    "station": "fryer",
}
ORDER: dict[str, Any] = {"table": "T1", "waiter": "ana", "items": [BURGER]}




async def written(client: httpx.AsyncClient) -> tuple[int, int, int]:
    """(update rows, event rows, audit rows) currently stored."""
    status = await client.get("/api/v1/status")
    assert status.status_code == 200
    storage = status.json()["storage"]
    audit = await client.get("/api/v1/audit", params={"limit": 1000})
    assert audit.status_code == 200
    assert len(audit.json()) == storage["audit"]
    return storage["updates"], storage["events"], storage["audit"]


def assert_error(resp: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body


async def create_order(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    resp = await client.post("/api/v1/orders", json={**ORDER, **overrides})
    assert resp.status_code == 201, resp.text
    return resp.json()


async def put_table(
    client: httpx.AsyncClient, table_id: str, seats: int = 4, area: str | None = "patio"
) -> None:
    resp = await client.put(
        f"/api/v1/tables/{table_id}", json={"name": table_id, "seats": seats, "area": area}
    )
    assert resp.status_code == 200, resp.text


async def put_product(client: httpx.AsyncClient, sku: str = "burger", price: int = 1590) -> dict[str, Any]:
    resp = await client.put(
        f"/api/v1/catalog/{sku}",
        json={"name": sku.title(), "price_cents": price, "station": "grill", "category": "mains"},
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


async def last_cursor(client: httpx.AsyncClient) -> int:
    return (await client.get("/api/v1/status")).json()["last_event_cursor"]


async def receive_until(ws: Any, cursor: int) -> list[dict[str, Any]]:
    """Frames up to and including the event with ``cursor`` (fails after 10 s)."""
    out: list[dict[str, Any]] = []
    with anyio.fail_after(10):
        while not out or out[-1]["cursor"] < cursor:
            out.append(await ws.receive_json())
    return out


async def upgrade(client: httpx.AsyncClient, url: str, **headers: str) -> httpx.Response:
    """A WebSocket handshake as a browser sends it, for the answer of a refused one (status and
    body; a WebSocket client library hides the body)."""
    handshake = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    resp = await client.get(url, headers={**handshake, **headers})
    assert resp.status_code != 101, "the upgrade was accepted"
    return resp


def assert_consecutive(events: list[dict[str, Any]], first: int) -> None:
    assert [e["cursor"] for e in events] == list(range(first, first + len(events)))
