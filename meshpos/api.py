"""Local HTTP API for the UI on the box (127.0.0.1 unless configured): orders, tables, catalog,
stock, events, the cashier and its review queue, peers and rosters.  Who may call it (Host,
Origin, content type, the optional token) is checked by ``meshpos/api_guard.py`` first.

Every 2xx means the change is on disk.  Every error is JSON ``{code, message}`` with a code from
the shared table (docs/api.md); validation happens before anything is written, so a 4xx leaves
nothing half-applied.

Built on Starlette with msgspec bodies rather than FastAPI/pydantic: the terminal must load a
busy day within 80 MB of memory, and FastAPI's import alone costs about 20 MB and 0.3 s of cold
start.  The route table here is the single source of both the routing and ``/openapi.json``; what a
request may hold is in ``api_schemas.py``, how an endpoint is decoded and answered in
``api_routing.py``, the OpenAPI document in ``api_openapi.py``.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import msgspec
from msgspec import UNSET
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket, WebSocketDisconnect

from core import errors
from core.codec import encode_json
from meshpos.api_guard import guarded
from meshpos.api_openapi import openapi
from meshpos.api_routing import (
    Answer,
    BodyLimit,
    Routes,
    cashier_answer,
    deny_websocket,
    json_response,
    on_http_error,
    on_meshpos_error,
)
from meshpos.api_schemas import (
    AdjustIn,
    AuditQuery,
    CashMovementIn,
    CountIn,
    DrawerCloseIn,
    DrawerOpenIn,
    DrawerQuery,
    EventsQuery,
    ItemPatch,
    ItemsIn,
    MergeIn,
    OrderIn,
    OrderPatch,
    OrdersQuery,
    PaymentIn,
    ProductIn,
    ReasonIn,
    RefundIn,
    ResolveIn,
    ReviewQuery,
    RosterIn,
    StockFlagsIn,
    TableIn,
    TablePatch,
    TransferIn,
    UnmergeIn,
    decode_query,
)
from meshpos.api_screens import PUBLIC_PATHS, screen_routes
from meshpos.api_yjs import yjs_route
from meshpos.events import Lagged, Reset
from meshpos.metrics import exposition
from meshpos.metrics import stats as terminal_stats
from meshpos.terminal import Terminal

log = logging.getLogger(__name__)


def create_app(terminal: Terminal, *, port: int | None = None) -> ASGIApp:
    """The API behind its guard (meshpos/api_guard.py); ``port`` is the one actually bound (the
    terminal's own UI origin is ``http://127.0.0.1:<port>``), by default ``api_port``."""
    t = terminal
    r = Routes()

    # -- orders --------------------------------------------------------------------------------

    @r.add("POST", "/api/v1/orders", tag="orders", body=OrderIn, status=201)
    async def create_order(body: OrderIn) -> dict[str, Any]:
        """Create an order on today's business day."""
        return await t.create_order(table=body.table, waiter=body.waiter, notes=body.notes,
                                    items=[i.to_dict() for i in body.items])

    @r.add("GET", "/api/v1/orders", tag="orders", query=OrdersQuery)
    async def list_orders(query: OrdersQuery) -> list[dict[str, Any]]:
        """Orders of the live days, or of ``day``; filter by ``status`` and ``table``."""
        return await t.list_orders(day=query.day, status=query.status, table=query.table)

    @r.add("GET", "/api/v1/orders/{order_id}", tag="orders")
    async def get_order(order_id: str) -> dict[str, Any]:
        """One order."""
        return await t.get_order(order_id)

    @r.add("PATCH", "/api/v1/orders/{order_id}", tag="orders", body=OrderPatch)
    async def patch_order(order_id: str, body: OrderPatch) -> dict[str, Any]:
        """Move the status forward, or change waiter/notes."""
        if body.status is None and body.waiter is None and body.notes is None:
            raise errors.InvalidInput("nothing to change: give status, waiter or notes")
        if body.status is not None and (body.waiter is not None or body.notes is not None):
            raise errors.InvalidInput("change status on its own, without waiter or notes")
        if body.status is not None:
            return await t.set_order_status(order_id, body.status, reason=body.reason, user=body.user)
        return await t.update_order(order_id, waiter=body.waiter, notes=body.notes, user=body.user)

    @r.add("POST", "/api/v1/orders/{order_id}/items", tag="orders", body=ItemsIn, status=201)
    async def add_items(order_id: str, body: ItemsIn) -> dict[str, Any]:
        """Add items to an open order."""
        return await t.add_items(order_id, [i.to_dict() for i in body.items], user=body.user)

    @r.add("PATCH", "/api/v1/orders/{order_id}/items/{item_id}", tag="orders", body=ItemPatch)
    async def patch_item(order_id: str, item_id: str, body: ItemPatch) -> dict[str, Any]:
        """Move an item's kitchen status forward."""
        return await t.set_item_status(order_id, item_id, body.kitchen_status, user=body.user)

    @r.add("POST", "/api/v1/orders/{order_id}/items/{item_id}/void", tag="orders", body=ReasonIn)
    async def void_item(order_id: str, item_id: str, body: ReasonIn) -> dict[str, Any]:
        """Void an item (it stays listed with total 0)."""
        return await t.void_item(order_id, item_id, body.reason, user=body.user)

    @r.add("POST", "/api/v1/orders/{order_id}/cancel", tag="orders", body=ReasonIn)
    async def cancel_order(order_id: str, body: ReasonIn) -> dict[str, Any]:
        """Cancel an order (open … served) with a reason."""
        return await t.cancel_order(order_id, body.reason, user=body.user)

    @r.add("POST", "/api/v1/orders/{order_id}/transfer", tag="orders", body=TransferIn)
    async def transfer_order(order_id: str, body: TransferIn) -> dict[str, Any]:
        """Move an order to another table."""
        return await t.transfer_order(order_id, body.table, user=body.user)

    # -- tables --------------------------------------------------------------------------------

    @r.add("GET", "/api/v1/tables", tag="tables")
    async def list_tables() -> list[dict[str, Any]]:
        """Every table with its status, waiter, guests and merge."""
        return t.tables.list()

    @r.add("GET", "/api/v1/tables/{table_id}", tag="tables")
    async def get_table(table_id: str) -> dict[str, Any]:
        """One table."""
        return t.tables.view(table_id)

    @r.add("PUT", "/api/v1/tables/{table_id}", tag="tables", body=TableIn)
    async def put_table(table_id: str, body: TableIn) -> dict[str, Any]:
        """Create a table or change its layout (name, seats, area)."""
        return await t.put_table(table_id, name=body.name, seats=body.seats, area=body.area, user=body.user)

    @r.add("PATCH", "/api/v1/tables/{table_id}", tag="tables", body=TablePatch)
    async def patch_table(table_id: str, body: TablePatch) -> dict[str, Any]:
        """Status, waiter (null unassigns) and guests."""
        if body.status is UNSET and body.waiter is UNSET and body.guests is UNSET:
            raise errors.InvalidInput("nothing to change: give status, waiter or guests")
        return await t.update_table(
            table_id, user=body.user, status=None if body.status is UNSET else body.status,
            guests=None if body.guests is UNSET else body.guests,
            waiter=None if body.waiter is UNSET else body.waiter, set_waiter=body.waiter is not UNSET,
        )

    @r.add("POST", "/api/v1/tables/{table_id}/merge", tag="tables", body=MergeIn)
    async def merge_table(table_id: str, body: MergeIn) -> dict[str, Any]:
        """Merge this table into another."""
        return await t.merge_tables(table_id, body.into, user=body.user)

    @r.add("POST", "/api/v1/tables/{table_id}/unmerge", tag="tables", body=UnmergeIn)
    async def unmerge_table(table_id: str, body: UnmergeIn) -> dict[str, Any]:
        """Undo a merge."""
        return await t.unmerge_table(table_id, user=body.user)

    # -- catalog and inventory -----------------------------------------------------------------

    @r.add("GET", "/api/v1/catalog", tag="inventory")
    async def list_catalog() -> list[dict[str, Any]]:
        """Every product."""
        return t.inventory.products()

    @r.add("GET", "/api/v1/catalog/{sku}", tag="inventory")
    async def get_product(sku: str) -> dict[str, Any]:
        """One product."""
        return t.inventory.product(sku)

    @r.add("PUT", "/api/v1/catalog/{sku}", tag="inventory", body=ProductIn)
    async def put_product(sku: str, body: ProductIn) -> dict[str, Any]:
        """Create or replace a product."""
        return await t.put_product(sku, name=body.name, price_cents=body.price_cents, station=body.station,
                                   category=body.category, active=body.active, user=body.user)

    @r.add("GET", "/api/v1/inventory", tag="inventory")
    async def list_inventory() -> list[dict[str, Any]]:
        """Stock of every sku."""
        return t.inventory.list()

    @r.add("GET", "/api/v1/inventory/{sku}", tag="inventory")
    async def get_inventory(sku: str) -> dict[str, Any]:
        """Stock of one sku."""
        return t.inventory.view(sku)

    @r.add("POST", "/api/v1/inventory/{sku}/adjust", tag="inventory", body=AdjustIn)
    async def adjust(sku: str, body: AdjustIn) -> dict[str, Any]:
        """Add ``delta`` (negative for sales and waste) to the stock counter."""
        if body.delta == 0:  # in the schema as {"not": {"const": 0}}, which msgspec does not check
            raise errors.InvalidInput("delta: must not be 0")
        return await t.adjust_stock(sku, body.delta, body.reason, user=body.user)

    @r.add("POST", "/api/v1/inventory/{sku}/count", tag="inventory", body=CountIn)
    async def count(sku: str, body: CountIn) -> dict[str, Any]:
        """A stock count: resets the base level."""
        return await t.count_stock(sku, body.quantity, user=body.user)

    @r.add("PATCH", "/api/v1/inventory/{sku}", tag="inventory", body=StockFlagsIn)
    async def stock_flags(sku: str, body: StockFlagsIn) -> dict[str, Any]:
        """Out-of-stock ("86") flag and low-stock threshold (null clears it)."""
        if body.out_of_stock is UNSET and body.low_stock_threshold is UNSET:
            raise errors.InvalidInput("nothing to change: give out_of_stock or low_stock_threshold")
        threshold = None if body.low_stock_threshold is UNSET else body.low_stock_threshold
        return await t.set_stock_flags(
            sku, user=body.user, out_of_stock=None if body.out_of_stock is UNSET else body.out_of_stock,
            low_threshold=threshold, clear_threshold=body.low_stock_threshold is None,
        )

    # -- cashier -------------------------------------------------------------------------------
    cash = t.cashier
    drawer_path = "/api/v1/cashier/drawers/{drawer}"

    @r.add("GET", "/api/v1/cashier/drawers", tag="cashier")
    async def list_drawers() -> list[dict[str, Any]]:
        """Every drawer this terminal knows, summarised (state, holder, expected cash)."""
        return [cash.summary(name) for name in cash.drawer_names()]

    @r.add("GET", drawer_path, tag="cashier", query=DrawerQuery)
    async def get_drawer(drawer: str, query: DrawerQuery) -> dict[str, Any]:
        """State, holder, ballot, expected cash, the entries (from the latest opening, or
        ``from_position``) with their status, and this terminal's provisional entries."""
        return cash.drawer(drawer, from_position=query.from_position)

    @r.add("POST", drawer_path + "/open", tag="cashier", body=DrawerOpenIn, status=201, provisional=True)
    async def open_drawer(drawer: str, body: DrawerOpenIn) -> Answer:
        """Open the drawer with its float (needs the drawer's quorum lock; see docs/cashier.md)."""
        return cashier_answer(await cash.open_drawer(drawer, float_cents=body.float_cents, operator=body.operator,
                                                     op_id=body.op_id, allow_provisional=body.allow_provisional), 201)

    @r.add("POST", drawer_path + "/payments", tag="cashier", body=PaymentIn, status=201, provisional=True)
    async def pay(drawer: str, body: PaymentIn) -> Answer:
        """Take a payment for an order; a retry with the same ``op_id`` returns the first result."""
        return cashier_answer(await cash.pay(drawer, order_id=body.order_id, amount_cents=body.amount_cents,
                                             method=body.method, tip_cents=body.tip_cents, op_id=body.op_id,
                                             user=body.user, allow_provisional=body.allow_provisional), 201)

    @r.add("POST", drawer_path + "/cash-movements", tag="cashier", body=CashMovementIn, status=201, provisional=True)
    async def move_cash(drawer: str, body: CashMovementIn) -> Answer:
        """Cash put in or taken out of the drawer, with a reason."""
        return cashier_answer(await cash.move_cash(drawer, direction=body.direction, amount_cents=body.amount_cents,
                                                   reason=body.reason, op_id=body.op_id, user=body.user,
                                                   allow_provisional=body.allow_provisional), 201)

    @r.add("POST", drawer_path + "/refunds", tag="cashier", body=RefundIn, status=201)
    async def refund(drawer: str, body: RefundIn) -> Answer:
        """Refund (part of) a committed payment, named by its ``op_id``; never provisional."""
        return cashier_answer(await cash.refund(drawer, payment_op_id=body.payment_op_id,
                                                amount_cents=body.amount_cents, reason=body.reason,
                                                op_id=body.op_id, user=body.user), 201)

    @r.add("POST", drawer_path + "/close", tag="cashier", body=DrawerCloseIn, provisional=True)
    async def close_drawer(drawer: str, body: DrawerCloseIn) -> Answer:
        """Close the drawer with the counted cash; records expected and difference, releases the lock."""
        return cashier_answer(await cash.close_drawer(drawer, counted_cents=body.counted_cents, op_id=body.op_id,
                                                      user=body.user, allow_provisional=body.allow_provisional))

    @r.add("GET", "/api/v1/review", tag="cashier", query=ReviewQuery)
    async def reviews(query: ReviewQuery) -> list[dict[str, Any]]:
        """Ledger entries waiting for a person (both sides and the reason); ``status=all`` for history."""
        return cash.reviews(query.status)

    @r.add("GET", "/api/v1/review/{review_id}", tag="cashier")
    async def review(review_id: str) -> dict[str, Any]:
        """One review item."""
        return cash.review(review_id)

    @r.add("POST", "/api/v1/review/{review_id}/resolve", tag="cashier", body=ResolveIn)
    async def resolve(review_id: str, body: ResolveIn) -> dict[str, Any]:
        """Accept, reject or adjust a review item: a committed ledger entry (needs the quorum)."""
        return await cash.resolve(review_id, decision=body.decision, note=body.note, operator=body.operator,
                                  amount_cents=body.amount_cents)

    # -- audit, status -------------------------------------------------------------------------

    @r.add("GET", "/api/v1/audit", tag="terminal", query=AuditQuery)
    async def audit(query: AuditQuery) -> list[dict[str, Any]]:
        """Audit rows, oldest first; page with ``after``."""
        return await t.store.audit_rows(entity=query.entity, entity_id=query.entity_id,
                                        after=query.after, limit=query.limit)

    @r.add("GET", "/api/v1/status", tag="terminal")
    async def status() -> dict[str, Any]:
        """Terminal id and type, uptime, document and storage sizes."""
        return await t.status()

    @r.add("GET", "/api/v1/stats", tag="terminal")
    async def stats() -> dict[str, Any]:
        """Connections by terminal type, frames per second, mean round trip, conflict rate, uptime."""
        return terminal_stats(t)

    @r.add("GET", "/api/v1/hq/log", tag="mesh")
    async def hq_log() -> dict[str, Any]:
        """The WAN side: the HQ's status (as in ``/api/v1/status``) and its links, newest first -
        when each opened and closed, what went up and down, how it ended."""
        return {"hq": t.hq_status(), "links": t.hq_log()}

    @r.add("GET", "/api/v1/peers", tag="mesh")
    async def peers() -> dict[str, Any]:
        """Every peer terminal: linked or not, address, since when, heartbeat, round trip, traffic."""
        return t.peers()

    @r.add("POST", "/api/v1/roster", tag="mesh", body=RosterIn)
    async def roster(body: RosterIn) -> dict[str, Any]:
        """Hand a newer signed roster (e.g. after ``meshpos store revoke``) to this terminal; it
        travels to every other terminal through the mesh."""
        return await t.adopt_roster(msgspec.json.encode({"body": body.body, "signature": body.signature}))

    # -- events --------------------------------------------------------------------------------

    async def events(ws: WebSocket) -> None:
        """Domain events as JSON text frames; reconnect with ``?cursor=<last cursor seen>``."""
        try:
            cursor = decode_query(ws.query_params, EventsQuery).cursor
        except errors.MeshposError as exc:  # before accept: the handshake fails with an HTTP answer
            await deny_websocket(ws, exc)
            return
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
                    frame = {"type": "reset", "cursor": item.cursor} if isinstance(item, Reset) else item.to_json()
                    await ws.send_text(encode_json(frame))
        except* Lagged as group:
            await ws.close(code=errors.RATE_LIMIT, reason=str(group.exceptions[0])[:120])
        except* (WebSocketDisconnect, OSError):
            pass

    spec = openapi(r.endpoints, token=bool(terminal.config.api_token))

    async def openapi_json(_: Request) -> Response:
        return json_response(spec)

    async def metrics(request: Request) -> Response:
        body, content_type = await exposition(t, request.headers.get("accept"))
        return Response(body, media_type=content_type)

    app = Starlette(
        routes=r.routes() + [
            WebSocketRoute("/api/v1/events", events),
            yjs_route(t),
            Route("/openapi.json", openapi_json, methods=["GET"], include_in_schema=False),
            Route("/metrics", metrics, methods=["GET"], include_in_schema=False),
            *screen_routes(),
        ],
        exception_handlers={errors.MeshposError: on_meshpos_error, HTTPException: on_http_error},
    )
    methods = {e.method for e in r.endpoints}
    return guarded(BodyLimit(app, terminal.config.max_body_bytes), terminal.config,
                   port=terminal.config.api_port if port is None else port, methods=methods, public=PUBLIC_PATHS)
