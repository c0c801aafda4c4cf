"""Local HTTP API (127.0.0.1) for the UI on the box: orders, tables, catalog, stock, events.

Every 2xx means the change is on disk.  Every error is JSON ``{code, message}`` with a code from
the shared table (docs/api.md); validation happens before anything is written, so a 4xx leaves
nothing half-applied.

Built on Starlette with msgspec bodies rather than FastAPI/pydantic: the terminal must load a
busy day within 80 MB of memory, and FastAPI's import alone costs about 20 MB and 0.3 s of cold
start.  The route table below is the single source of both the routing and ``/openapi.json``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Literal

import anyio
import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from core import errors
from core.codec import check_json_depth, encode_json, encode_json_bytes
from meshpos.api_guard import guarded
from meshpos.documents.orders import KITCHEN_STAGES, ORDER_STAGES
from meshpos.documents.tables import TABLE_STATUSES
from meshpos.events import Lagged, Reset
from meshpos.terminal import Terminal

log = logging.getLogger(__name__)


def pattern(body: str) -> str:
    """A ``pattern`` that means "the whole string is ``body``" in Python and in ECMA-262 alike.

    msgspec checks patterns with ``re.search`` and they are published in /openapi.json, where
    clients read them as ECMA-262.  ``$`` would let ``"T1\\n"`` through in Python (it also matches
    before a final newline), and ``\\Z`` does not exist in ECMA-262; "no character follows" is
    the same in both.
    """
    return rf"^(?:{body})(?![\s\S])"


#: Path parameters, by name: the formats the terminal itself writes (see docs/api.md).
PATH_PATTERNS = {
    "table_id": r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}",  # meshpos.documents.values.ID_PATTERN
    "sku": r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}",
    "order_id": r"[0-9]{8}-[0-9a-hjkmnp-tv-z]{19}",  # business day, then core.clock.time_id
    "item_id": r"[0-9a-hjkmnp-tv-z]{8}",  # core.clock.random_id(8)
    "drawer": r"[A-Za-z0-9_-]{1,32}",  # meshpos.cashier.service.check_drawer
    "review_id": r"[A-Za-z0-9_-]{1,32}\.[0-9]{1,18}",  # <drawer>.<ledger position>
}
_PATH_REGEXES = {name: re.compile(body) for name, body in PATH_PATTERNS.items()}
#: Every integer a query may carry fits SQLite's INTEGER (larger ones overflowed into a 500).
MAX_INT64 = 2**63 - 1

Id = Annotated[str, Meta(pattern=pattern(PATH_PATTERNS["table_id"]))]
Text = Annotated[str, Meta(min_length=1, max_length=200)]
Notes = Annotated[str, Meta(max_length=500)]
Short = Annotated[str, Meta(max_length=64)]
Cents = Annotated[int, Meta(ge=0, le=100_000_000)]
OrderStage = Literal[ORDER_STAGES]  # type: ignore[valid-type]
KitchenStage = Literal[KITCHEN_STAGES]  # type: ignore[valid-type]
TableStatus = Literal[TABLE_STATUSES]  # type: ignore[valid-type]


class Strict(Struct, forbid_unknown_fields=True):
    """Request bodies: unknown fields and type coercion (``"4"`` for 4, ``true`` for 1) are errors."""


class Modifier(Strict):
    name: Text
    price_cents: Cents = 0


class ItemIn(Strict):
    sku: Id
    name: Text
    qty: Annotated[int, Meta(ge=1, le=10_000)]
    unit_price_cents: Cents
    modifiers: Annotated[list[Modifier | Text], Meta(max_length=50)] = []
    notes: Notes = ""
    station: Short = ""

    def to_dict(self) -> dict[str, Any]:
        mods = [m if isinstance(m, str) else {"name": m.name, "price_cents": m.price_cents} for m in self.modifiers]
        return {"sku": self.sku, "name": self.name, "qty": self.qty, "unit_price_cents": self.unit_price_cents,
                "modifiers": mods, "notes": self.notes, "station": self.station}


Items = Annotated[list[ItemIn], Meta(min_length=1, max_length=200)]


class OrderIn(Strict):
    items: Items
    table: Id | None = None
    waiter: Text | None = None
    notes: Notes = ""


class OrderPatch(Strict):
    status: OrderStage | None = None
    reason: Text | None = None
    waiter: Text | None = None
    notes: Notes | None = None
    user: Text | None = None


class ItemsIn(Strict):
    items: Items
    user: Text | None = None


class ReasonIn(Strict):
    """Body of cancel and void: both need a reason."""

    reason: Text
    user: Text | None = None


class ItemPatch(Strict):
    kitchen_status: KitchenStage
    user: Text | None = None


class TransferIn(Strict):
    table: Id
    user: Text | None = None


class TableIn(Strict):
    name: Text
    seats: Annotated[int, Meta(ge=1, le=100)]
    area: Short | None = None
    user: Text | None = None


class TablePatch(Strict):
    status: TableStatus | UnsetType = UNSET
    waiter: Text | None | UnsetType = UNSET
    guests: Annotated[int, Meta(ge=0, le=400)] | None | UnsetType = UNSET
    user: Text | None = None


class MergeIn(Strict):
    into: Id
    user: Text | None = None


class UnmergeIn(Strict):
    """A body although only ``user`` is in it: every write carries ``Content-Type: application/json``."""

    user: Text | None = None


class ProductIn(Strict):
    name: Text
    price_cents: Cents
    station: Short | None = None
    category: Short | None = None
    active: bool = True
    user: Text | None = None


class AdjustIn(Strict):
    delta: Annotated[int, Meta(ge=-1_000_000, le=1_000_000, extra_json_schema={"not": {"const": 0}})]
    reason: Text
    user: Text | None = None


class CountIn(Strict):
    quantity: Annotated[int, Meta(ge=0, le=10_000_000)]
    user: Text | None = None


class StockFlagsIn(Strict):
    out_of_stock: bool | UnsetType = UNSET
    low_stock_threshold: Annotated[int, Meta(ge=0, le=10_000_000)] | None | UnsetType = UNSET
    user: Text | None = None


class OrdersQuery(Struct):
    """Query strings are text: these structs are converted leniently (``"5"`` -> 5)."""

    day: date | None = None
    status: OrderStage | None = None
    table: str | None = None


class AuditQuery(Struct):
    entity: str | None = None
    entity_id: str | None = None
    after: Annotated[int, Meta(ge=0, le=MAX_INT64)] = 0
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


class RosterIn(Strict):
    """A roster file exactly as ``meshpos store revoke|enroll`` wrote it."""

    body: str
    signature: str


#: An idempotency key; ``resolve:`` and ``~`` are the cashier's own (its review entries).
OpId = Annotated[str, Meta(min_length=1, max_length=64, pattern=pattern(r"(?!resolve:)[^~]*"))]
PaymentOpId = Annotated[str, Meta(min_length=1, max_length=64)]
Amount = Annotated[int, Meta(ge=1, le=100_000_000)]


class DrawerOpenIn(Strict):
    float_cents: Cents
    operator: Text
    op_id: OpId | None = None
    allow_provisional: bool = False


class PaymentIn(Strict):
    order_id: Id
    amount_cents: Amount
    method: Literal["cash", "card", "pix", "voucher"]
    tip_cents: Cents = 0
    op_id: OpId | None = None
    user: Text | None = None
    allow_provisional: bool = False


class CashMovementIn(Strict):
    direction: Literal["in", "out"]
    amount_cents: Amount
    reason: Text
    op_id: OpId | None = None
    user: Text | None = None
    allow_provisional: bool = False


class RefundIn(Strict):
    payment_op_id: PaymentOpId
    amount_cents: Amount
    reason: Text
    op_id: OpId | None = None
    user: Text | None = None


class DrawerCloseIn(Strict):
    counted_cents: Cents
    op_id: OpId | None = None
    user: Text | None = None
    allow_provisional: bool = False


class DrawerQuery(Struct):
    from_position: Annotated[int, Meta(ge=0, le=MAX_INT64)] | None = None


class ReviewQuery(Struct):
    status: Literal["open", "resolved", "all"] = "open"


class ResolveIn(Strict):
    decision: Literal["accept", "reject", "adjust"]
    note: Text
    operator: Text
    amount_cents: Cents | None = None


class EventsQuery(Struct):
    cursor: Annotated[int, Meta(ge=0, le=MAX_INT64)] | None = None


class Error(Struct):
    code: int
    message: str


# -- decoding and errors --------------------------------------------------------------------------

_AT = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)


def _validation_message(exc: msgspec.ValidationError, where: str) -> str:
    """``"items[0].qty: Expected `int`, got `str`"`` - the field first, then what is wrong."""
    text = str(exc)
    match = _AT.match(text)
    if match is None:
        return f"{where}: {text}"
    return f"{match['path'].lstrip('.') or where}: {match['msg']}"


def _integral(value: Any) -> Any:
    """JSON numbers as JSON Schema reads them: ``91.0`` is the integer 91 (other floats stay)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def decode_body(raw: bytes, model: type[Struct]) -> Any:
    """Depth-bounded JSON, then the struct, strictly (``"4"`` is not 4, ``true`` is not 1).

    Decoded generically first: the published schema says ``91.0`` is an integer, and msgspec's
    typed decoding would refuse it.  The depth check runs before any parser sees the text, as a
    200,000-deep ``[[[[`` otherwise exhausts the parser's recursion.
    """
    try:
        check_json_depth(raw)
        value = msgspec.json.decode(raw)
    except ValueError as exc:  # msgspec.DecodeError is a ValueError too
        raise errors.InvalidInput(f"malformed JSON body: {exc}") from None
    try:
        return msgspec.convert(_integral(value), type=model)
    except msgspec.ValidationError as exc:
        raise errors.InvalidInput(_validation_message(exc, "body")) from None


class UnsupportedMediaType(errors.MeshposError):
    code = errors.INVALID_MESSAGE
    http_status = 415


def check_content_type(request: Request) -> None:
    """Writes only as ``application/json``: a web page of another origin can send ``text/plain``
    or a form without asking first (a "simple" request); ``application/json`` needs a CORS
    preflight, which only the configured origins pass (meshpos/api_guard.py)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(f"{request.method} needs Content-Type: application/json, "
                                   f"not {media_type[:60] or 'none'!r}")


def check_path(params: dict[str, Any]) -> dict[str, Any]:
    """Path parameters in the formats the terminal writes (``T1\\n`` is no table id)."""
    for name, value in params.items():
        regex = _PATH_REGEXES.get(name)
        if regex is not None and not regex.fullmatch(value):
            raise errors.InvalidInput(f"{name}: {value[:80]!r} is not of the form {PATH_PATTERNS[name]}")
    return params


def decode_query(params: Any, model: type[Struct]) -> Any:
    values = {k: v for k, v in params.items() if k in model.__struct_fields__}
    try:
        return msgspec.convert(values, type=model, strict=False)
    except msgspec.ValidationError as exc:
        raise errors.InvalidInput(_validation_message(exc, "query")) from None


@dataclass(frozen=True, slots=True)
class Answer:
    """A handler's payload with a status other than its route's (202 for a provisional entry)."""

    payload: Any
    status: int


def _cashier(result: dict[str, Any], status: int = 200) -> Answer:
    return Answer(result, 202 if result["entry"]["status"] == "provisional" else status)


def _json(payload: Any, status: int = 200) -> Response:
    return Response(encode_json_bytes(payload), status_code=status, media_type="application/json")


def _error(status: int, code: int, message: str) -> Response:
    return _json({"code": code, "message": message}, status)


async def _meshpos_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.MeshposError)
    return _error(exc.http_status, exc.code, exc.message)


async def _http_error(_: Request, exc: Exception) -> Response:
    """Starlette's own errors (404, 405) as ``{code, message}``, keeping their headers (405's ``Allow``)."""
    assert isinstance(exc, HTTPException)
    code = errors.NOT_FOUND if exc.status_code == 404 else errors.INVALID_MESSAGE
    response = _error(exc.status_code, code, str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


# -- the route table ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Callable[..., Awaitable[Any]]
    tag: str
    body: type[Struct] | None = None
    query: type[Struct] | None = None
    status: int = 200
    #: A cashier write that may answer 202 with a provisional entry.
    provisional: bool = False

    async def respond(self, request: Request) -> Response:
        if self.method != "GET":
            check_content_type(request)
        kwargs: dict[str, Any] = check_path(dict(request.path_params))
        if self.query is not None:
            kwargs["query"] = decode_query(request.query_params, self.query)
        if self.body is not None:
            kwargs["body"] = decode_body(await request.body(), self.body)
        result = await self.handler(**kwargs)
        if isinstance(result, Answer):
            return _json(result.payload, result.status)
        return _json(result, self.status)


class Routes:
    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []

    def routes(self) -> list[Route]:
        """One route per path with all its methods: a 405 then lists every one of them in ``Allow``
        (a route per method would name only its own)."""
        by_path: dict[str, dict[str, Endpoint]] = {}
        for e in self.endpoints:
            by_path.setdefault(e.path, {})[e.method] = e
        out = []
        for path, methods in by_path.items():
            async def endpoint(request: Request, methods: dict[str, Endpoint] = methods) -> Response:
                return await methods["GET" if request.method == "HEAD" else request.method].respond(request)

            out.append(Route(path, endpoint, methods=list(methods), name=path))
        return out

    def add(self, method: str, path: str, *, tag: str, body: type[Struct] | None = None,
            query: type[Struct] | None = None, status: int = 200,
            provisional: bool = False) -> Callable[[Callable], Callable]:
        def register(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            self.endpoints.append(Endpoint(method, path, handler, tag, body, query, status, provisional))
            return handler

        return register


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
        return _cashier(await cash.open_drawer(drawer, float_cents=body.float_cents, operator=body.operator,
                                               op_id=body.op_id, allow_provisional=body.allow_provisional), 201)

    @r.add("POST", drawer_path + "/payments", tag="cashier", body=PaymentIn, status=201, provisional=True)
    async def pay(drawer: str, body: PaymentIn) -> Answer:
        """Take a payment for an order; a retry with the same ``op_id`` returns the first result."""
        return _cashier(await cash.pay(drawer, order_id=body.order_id, amount_cents=body.amount_cents,
                                       method=body.method, tip_cents=body.tip_cents, op_id=body.op_id,
                                       user=body.user, allow_provisional=body.allow_provisional), 201)

    @r.add("POST", drawer_path + "/cash-movements", tag="cashier", body=CashMovementIn, status=201, provisional=True)
    async def move_cash(drawer: str, body: CashMovementIn) -> Answer:
        """Cash put in or taken out of the drawer, with a reason."""
        return _cashier(await cash.move_cash(drawer, direction=body.direction, amount_cents=body.amount_cents,
                                             reason=body.reason, op_id=body.op_id, user=body.user,
                                             allow_provisional=body.allow_provisional), 201)

    @r.add("POST", drawer_path + "/refunds", tag="cashier", body=RefundIn, status=201)
    async def refund(drawer: str, body: RefundIn) -> Answer:
        """Refund (part of) a committed payment, named by its ``op_id``; never provisional."""
        return _cashier(await cash.refund(drawer, payment_op_id=body.payment_op_id, amount_cents=body.amount_cents,
                                          reason=body.reason, op_id=body.op_id, user=body.user), 201)

    @r.add("POST", drawer_path + "/close", tag="cashier", body=DrawerCloseIn, provisional=True)
    async def close_drawer(drawer: str, body: DrawerCloseIn) -> Answer:
        """Close the drawer with the counted cash; records expected and difference, releases the lock."""
        return _cashier(await cash.close_drawer(drawer, counted_cents=body.counted_cents, op_id=body.op_id,
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
            if "websocket.http.response" in ws.scope.get("extensions", {}):
                denial = _error(exc.http_status, exc.code, exc.message)
                denial.headers["connection"] = "close"  # the server closes it after a refused upgrade
                await ws.send_denial_response(denial)
            else:
                await ws.close(code=1008)  # the server answers a bare 403
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
        return _json(spec)

    app = Starlette(
        routes=r.routes() + [
            WebSocketRoute("/api/v1/events", events),
            Route("/openapi.json", openapi_json, methods=["GET"], include_in_schema=False),
        ],
        exception_handlers={errors.MeshposError: _meshpos_error, HTTPException: _http_error},
    )
    methods = {e.method for e in r.endpoints}
    return guarded(BodyLimit(app, terminal.config.max_body_bytes), terminal.config,
                   port=terminal.config.api_port if port is None else port, methods=methods)


# -- OpenAPI --------------------------------------------------------------------------------------

_ERROR_STATUSES = {"400": "bad request", "401": "API token missing or wrong (api_token is set)",
                   "403": "Host or Origin refused; archived business day; roster not signed by the store",
                   "404": "not found", "409": "refused by a lifecycle rule or the current state",
                   "413": "body too large", "414": "URL too long", "422": "invalid input",
                   "431": "headers too large", "503": "not durable, or no cashier quorum; retry"}
_WRITE_ERROR_STATUSES = {"415": "body not sent as Content-Type: application/json"}

#: What the handlers refuse (422) beyond each struct's field types, so that the published
#: schema accepts exactly what the server does (checked by tests/test_api_schema.py).
_BODY_RULES: dict[str, dict[str, Any]] = {
    "OrderPatch": {
        "anyOf": [
            {"required": ["status"], "properties": {"status": {"type": "string"}, "waiter": {"type": "null"},
                                                    "notes": {"type": "null"}}},
            {"required": ["waiter"], "properties": {"waiter": {"type": "string"}, "status": {"type": "null"}}},
            {"required": ["notes"], "properties": {"notes": {"type": "string"}, "status": {"type": "null"}}},
        ],
        "if": {"required": ["status"], "properties": {"status": {"const": "cancelled"}}},
        "then": {"required": ["reason"], "properties": {"reason": {"type": "string"}}},
    },
    "OrderIn": {"description": "The order's total may not exceed 10^11 cents (a sum over the items, which a "
                               "schema cannot bound): 422 beyond it."},
    "ItemsIn": {"description": "The order may not pass 1000 items nor a total of 10^11 cents with these: 409."},
    "TablePatch": {"anyOf": [{"required": ["status"]}, {"required": ["waiter"]}, {"required": ["guests"]}]},
    "StockFlagsIn": {"anyOf": [{"required": ["out_of_stock"]}, {"required": ["low_stock_threshold"]}]},
    "ResolveIn": {
        "if": {"properties": {"decision": {"const": "adjust"}}},
        "then": {"required": ["amount_cents"], "properties": {"amount_cents": {"type": "integer"}}},
        "else": {"properties": {"amount_cents": {"type": "null"}}},
    },
}


_ORDER = {"order_id": "$response.body#/id"}
_ITEM = {"order_id": "$response.body#/id", "item_id": "$response.body#/items/0/id"}
_TABLE = {"table_id": "$response.body#/id"}
#: OpenAPI links: where an answer's ids can be used next (clients and test generators follow them).
_LINKS: dict[str, dict[str, dict[str, str]]] = {
    "create_order": {"get_order": _ORDER, "patch_order": _ORDER, "add_items": _ORDER, "cancel_order": _ORDER,
                     "transfer_order": _ORDER, "patch_item": _ITEM, "void_item": _ITEM},
    "add_items": {"get_order": _ORDER, "patch_item": _ITEM, "void_item": _ITEM},
    "put_table": {"get_table": _TABLE, "patch_table": _TABLE, "merge_table": _TABLE, "unmerge_table": _TABLE},
    "put_product": {"get_product": {"sku": "$response.body#/sku"}, "adjust": {"sku": "$response.body#/sku"},
                    "count": {"sku": "$response.body#/sku"}, "stock_flags": {"sku": "$response.body#/sku"}},
}


def _responses(e: Endpoint) -> dict[str, Any]:
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    done = {"application/json": {"schema": {}}}
    out: dict[str, Any] = {str(e.status): {"description": "done (durable for writes)", "content": done}}
    links = _LINKS.get(e.handler.__name__)
    if links:
        out[str(e.status)]["links"] = {target: {"operationId": target, "parameters": params}
                                       for target, params in links.items()}
    if e.provisional:
        out["202"] = {"description": "provisional entry (allow_provisional, no quorum)", "content": done}
    statuses = {**_ERROR_STATUSES, **(_WRITE_ERROR_STATUSES if e.method != "GET" else {})}
    out.update({s: {"description": d, "content": error} for s, d in sorted(statuses.items())})
    return out


def openapi(endpoints: list[Endpoint], *, token: bool = False) -> dict[str, Any]:
    """OpenAPI 3.1 from the route table; schemas come from the msgspec structs themselves.

    ``token``: the terminal has an ``api_token``, so the document says every call needs it
    (a browser on the box served from an allowed origin is let in without it; see docs/api.md).
    """
    bodies = sorted({e.body for e in endpoints if e.body is not None} | {Error}, key=lambda s: s.__name__)
    _, components = msgspec.json.schema_components(bodies, ref_template="#/components/schemas/{name}")
    for name, rules in _BODY_RULES.items():
        components[name].update(rules)
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        op: dict[str, Any] = {
            "operationId": e.handler.__name__, "tags": [e.tag],
            "summary": (e.handler.__doc__ or "").strip().splitlines()[0] if e.handler.__doc__ else "",
            "parameters": [
                {"name": name, "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": pattern(PATH_PATTERNS[name])}}
                for name in re.findall(r"{(\w+)}", e.path)
            ],
            "responses": _responses(e),
        }
        if e.query is not None:
            _, query_schemas = msgspec.json.schema_components([e.query])
            for name, prop in query_schemas[e.query.__name__].get("properties", {}).items():
                op["parameters"].append({"name": name, "in": "query", "required": False, "schema": prop})
        if e.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{e.body.__name__}"}}}}
        paths.setdefault(e.path, {})[e.method.lower()] = op
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "meshpos terminal API", "version": "1",
                 "description": "Local API of one meshpos terminal. Every 2xx is durable. "
                                "Errors are {code, message}; see docs/api.md."},
        "paths": paths,
        "components": {"schemas": components},
    }
    if token:
        spec["components"]["securitySchemes"] = {"api_token": {
            "type": "http", "scheme": "bearer", "description": "the terminal's api_token (docs/operations.md)"}}
        spec["security"] = [{"api_token": []}]
    return spec


# -- body size limit ------------------------------------------------------------------------------


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
