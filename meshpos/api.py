"""Local HTTP API (127.0.0.1) for the UI on the box: orders, tables, catalog, stock, events.

Every 2xx means the change is on disk.  Every error is JSON ``{code, message}`` with a code from
the shared table (docs/api.md); validation happens before anything is written, so a 4xx leaves
nothing half-applied.
"""

from __future__ import annotations

import json
import logging
from datetime import date
from typing import Annotated, Any, Literal

import anyio
from fastapi import FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshpos import errors
from meshpos.documents.orders import KITCHEN_STAGES, ORDER_STAGES
from meshpos.documents.tables import TABLE_STATUSES
from meshpos.events import Lagged, Reset
from meshpos.terminal import Terminal

log = logging.getLogger(__name__)

Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
Text = Annotated[str, Field(min_length=1, max_length=200)]
Cents = Annotated[int, Field(ge=0, le=100_000_000)]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Modifier(Strict):
    name: Text
    price_cents: Cents = 0


class ItemIn(Strict):
    sku: Id
    name: Text
    qty: Annotated[int, Field(ge=1, le=10_000)]
    unit_price_cents: Cents
    modifiers: list[Modifier | Text] = Field(default_factory=list, max_length=50)
    notes: Annotated[str, Field(max_length=500)] = ""
    station: Annotated[str, Field(max_length=64)] = ""


class OrderIn(Strict):
    table: Id | None = None
    waiter: Text | None = None
    items: list[ItemIn] = Field(min_length=1, max_length=200)
    notes: Annotated[str, Field(max_length=500)] = ""


class OrderPatch(Strict):
    status: Literal[ORDER_STAGES] | None = None  # type: ignore[valid-type]
    reason: Text | None = None
    waiter: Text | None = None
    notes: Annotated[str, Field(max_length=500)] | None = None
    user: Text | None = None


class ItemsIn(Strict):
    items: list[ItemIn] = Field(min_length=1, max_length=200)
    user: Text | None = None


class ReasonIn(Strict):
    """Body of cancel and void: both need a reason."""

    reason: Text
    user: Text | None = None


class ItemPatch(Strict):
    kitchen_status: Literal[KITCHEN_STAGES]  # type: ignore[valid-type]
    user: Text | None = None


class TransferIn(Strict):
    table: Id
    user: Text | None = None


class TableIn(Strict):
    name: Text
    seats: Annotated[int, Field(ge=1, le=100)]
    area: Annotated[str, Field(max_length=64)] | None = None
    user: Text | None = None


class TablePatch(Strict):
    status: Literal[TABLE_STATUSES] | None = None  # type: ignore[valid-type]
    waiter: Text | None = None
    guests: Annotated[int, Field(ge=0, le=400)] | None = None
    user: Text | None = None


class MergeIn(Strict):
    into: Id
    user: Text | None = None


class ProductIn(Strict):
    name: Text
    price_cents: Cents
    station: Annotated[str, Field(max_length=64)] | None = None
    category: Annotated[str, Field(max_length=64)] | None = None
    active: bool = True
    user: Text | None = None


class AdjustIn(Strict):
    delta: Annotated[int, Field(ge=-1_000_000, le=1_000_000)]
    reason: Text
    user: Text | None = None


class CountIn(Strict):
    quantity: Annotated[int, Field(ge=0, le=10_000_000)]
    user: Text | None = None


class StockFlagsIn(Strict):
    out_of_stock: bool | None = None
    low_stock_threshold: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    user: Text | None = None


class Error(BaseModel):
    code: int
    message: str


ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": Error} for s in (400, 404, 409, 413, 422, 503)
}


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 before the app reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(send)
                return
        # Read the body here (bounded), so an oversized chunked upload gets 413 as well.
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"code": errors.INVALID_MESSAGE,
                           "message": f"request body larger than {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        if err.get("type") == "json_invalid":
            return "malformed JSON body: " + str(err.get("ctx", {}).get("error", err.get("msg")))
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


def create_app(terminal: Terminal) -> ASGIApp:
    app = FastAPI(
        title="meshpos terminal API",
        version="1",
        description="Local API of one meshpos terminal. Every 2xx is durable. Errors are {code, message}.",
        responses=ERRORS,
    )
    t = terminal

    @app.exception_handler(errors.MeshposError)
    async def _meshpos_error(_: Request, exc: errors.MeshposError) -> JSONResponse:
        return _error(exc.http_status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, errors.INVALID_MESSAGE, _describe(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = errors.NOT_FOUND if exc.status_code == 404 else errors.INVALID_MESSAGE
        return _error(exc.status_code, code, str(exc.detail))

    # -- orders --------------------------------------------------------------------------------

    @app.post("/api/v1/orders", status_code=201, tags=["orders"])
    async def create_order(body: OrderIn) -> dict[str, Any]:
        return await t.create_order(table=body.table, waiter=body.waiter, notes=body.notes,
                                    items=[i.model_dump() for i in body.items])

    @app.get("/api/v1/orders", tags=["orders"])
    async def list_orders(
        day: Annotated[date | None, Query(description="business day (YYYY-MM-DD); default: live days")] = None,
        status: Literal[ORDER_STAGES] | None = None,  # type: ignore[valid-type]
        table: str | None = None,
    ) -> list[dict[str, Any]]:
        return await t.list_orders(day=day, status=status, table=table)

    @app.get("/api/v1/orders/{order_id}", tags=["orders"])
    async def get_order(order_id: str) -> dict[str, Any]:
        return await t.get_order(order_id)

    @app.patch("/api/v1/orders/{order_id}", tags=["orders"])
    async def patch_order(order_id: str, body: OrderPatch) -> dict[str, Any]:
        if body.status is None and body.waiter is None and body.notes is None:
            raise errors.InvalidInput("nothing to change: give status, waiter or notes")
        if body.status is not None and (body.waiter is not None or body.notes is not None):
            raise errors.InvalidInput("change status on its own, without waiter or notes")
        if body.status is not None:
            return await t.set_order_status(order_id, body.status, reason=body.reason, user=body.user)
        return await t.update_order(order_id, waiter=body.waiter, notes=body.notes, user=body.user)

    @app.post("/api/v1/orders/{order_id}/items", status_code=201, tags=["orders"])
    async def add_items(order_id: str, body: ItemsIn) -> dict[str, Any]:
        return await t.add_items(order_id, [i.model_dump() for i in body.items], user=body.user)

    @app.patch("/api/v1/orders/{order_id}/items/{item_id}", tags=["orders"])
    async def patch_item(order_id: str, item_id: str, body: ItemPatch) -> dict[str, Any]:
        return await t.set_item_status(order_id, item_id, body.kitchen_status, user=body.user)

    @app.post("/api/v1/orders/{order_id}/items/{item_id}/void", tags=["orders"])
    async def void_item(order_id: str, item_id: str, body: ReasonIn) -> dict[str, Any]:
        return await t.void_item(order_id, item_id, body.reason, user=body.user)

    @app.post("/api/v1/orders/{order_id}/cancel", tags=["orders"])
    async def cancel_order(order_id: str, body: ReasonIn) -> dict[str, Any]:
        return await t.cancel_order(order_id, body.reason, user=body.user)

    @app.post("/api/v1/orders/{order_id}/transfer", tags=["orders"])
    async def transfer_order(order_id: str, body: TransferIn) -> dict[str, Any]:
        return await t.transfer_order(order_id, body.table, user=body.user)

    # -- tables --------------------------------------------------------------------------------

    @app.get("/api/v1/tables", tags=["tables"])
    async def list_tables() -> list[dict[str, Any]]:
        return t.tables.list()

    @app.get("/api/v1/tables/{table_id}", tags=["tables"])
    async def get_table(table_id: str) -> dict[str, Any]:
        return t.tables.view(table_id)

    @app.put("/api/v1/tables/{table_id}", tags=["tables"])
    async def put_table(table_id: str, body: TableIn) -> dict[str, Any]:
        return await t.put_table(table_id, name=body.name, seats=body.seats, area=body.area, user=body.user)

    @app.patch("/api/v1/tables/{table_id}", tags=["tables"])
    async def patch_table(table_id: str, body: TablePatch) -> dict[str, Any]:
        fields = body.model_fields_set - {"user"}
        if not fields:
            raise errors.InvalidInput("nothing to change: give status, waiter or guests")
        if "status" in fields and body.status is None:
            raise errors.InvalidInput("status cannot be null")
        return await t.update_table(
            table_id, user=body.user, status=body.status, guests=body.guests,
            waiter=body.waiter, set_waiter="waiter" in fields,
        )

    @app.post("/api/v1/tables/{table_id}/merge", tags=["tables"])
    async def merge_table(table_id: str, body: MergeIn) -> dict[str, Any]:
        return await t.merge_tables(table_id, body.into, user=body.user)

    @app.post("/api/v1/tables/{table_id}/unmerge", tags=["tables"])
    async def unmerge_table(table_id: str) -> dict[str, Any]:
        return await t.unmerge_table(table_id)

    # -- catalog and inventory -----------------------------------------------------------------

    @app.get("/api/v1/catalog", tags=["inventory"])
    async def list_catalog() -> list[dict[str, Any]]:
        return [t.inventory.product(s) for s in t.inventory.skus()]

    @app.get("/api/v1/catalog/{sku}", tags=["inventory"])
    async def get_product(sku: str) -> dict[str, Any]:
        return t.inventory.product(sku)

    @app.put("/api/v1/catalog/{sku}", tags=["inventory"])
    async def put_product(sku: str, body: ProductIn) -> dict[str, Any]:
        return await t.put_product(sku, name=body.name, price_cents=body.price_cents, station=body.station,
                                   category=body.category, active=body.active, user=body.user)

    @app.get("/api/v1/inventory", tags=["inventory"])
    async def list_inventory() -> list[dict[str, Any]]:
        return [t.inventory.view(s) for s in t.inventory.skus()]

    @app.get("/api/v1/inventory/{sku}", tags=["inventory"])
    async def get_inventory(sku: str) -> dict[str, Any]:
        return t.inventory.view(sku)

    @app.post("/api/v1/inventory/{sku}/adjust", tags=["inventory"])
    async def adjust(sku: str, body: AdjustIn) -> dict[str, Any]:
        return await t.adjust_stock(sku, body.delta, body.reason, user=body.user)

    @app.post("/api/v1/inventory/{sku}/count", tags=["inventory"])
    async def count(sku: str, body: CountIn) -> dict[str, Any]:
        return await t.count_stock(sku, body.quantity, user=body.user)

    @app.patch("/api/v1/inventory/{sku}", tags=["inventory"])
    async def stock_flags(sku: str, body: StockFlagsIn) -> dict[str, Any]:
        fields = body.model_fields_set - {"user"}
        if not fields:
            raise errors.InvalidInput("nothing to change: give out_of_stock or low_stock_threshold")
        if "out_of_stock" in fields and body.out_of_stock is None:
            raise errors.InvalidInput("out_of_stock cannot be null")
        return await t.set_stock_flags(
            sku, user=body.user, out_of_stock=body.out_of_stock, low_threshold=body.low_stock_threshold,
            clear_threshold="low_stock_threshold" in fields and body.low_stock_threshold is None,
        )

    # -- audit, status, events -----------------------------------------------------------------

    @app.get("/api/v1/audit", tags=["terminal"])
    async def audit(
        entity: str | None = None, entity_id: str | None = None,
        after: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        return await t.store.audit_rows(entity=entity, entity_id=entity_id, after=after, limit=limit)

    @app.get("/api/v1/status", tags=["terminal"])
    async def status() -> dict[str, Any]:
        return await t.status()

    @app.websocket("/api/v1/events")
    async def events(ws: WebSocket, cursor: int | None = None) -> None:
        """Domain events as JSON text frames; reconnect with ``?cursor=<last cursor seen>``."""
        await ws.accept()

        async def until_disconnect(scope: anyio.CancelScope) -> None:
            # Reading is how a server learns the client left; without it the subscription would linger.
            while (await ws.receive())["type"] != "websocket.disconnect":
                pass
            scope.cancel()

        try:
            async with anyio.create_task_group() as tg, t.events.subscribe(cursor) as stream:
                tg.start_soon(until_disconnect, tg.cancel_scope)
                async for item in stream:
                    if isinstance(item, Reset):
                        await ws.send_json({"type": "reset", "cursor": item.cursor})
                    else:
                        await ws.send_json(item.to_json())
        except* Lagged as group:
            await ws.close(code=errors.RATE_LIMIT, reason=str(group.exceptions[0])[:120])
        except* (WebSocketDisconnect, OSError):
            pass

    return BodyLimit(app, terminal.config.max_body_bytes)


def openapi_of(app: ASGIApp) -> dict[str, Any]:
    inner = app.app if isinstance(app, BodyLimit) else app
    return inner.openapi()  # type: ignore[union-attr]


