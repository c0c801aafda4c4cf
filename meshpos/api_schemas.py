"""What a request to the local API may hold, and how it is decoded: the path parameters'
formats, the msgspec structs of bodies and queries (their JSON Schemas are what /openapi.json
publishes), and strict, depth-bounded decoding into them with a precise 422.

Validation happens here, before a handler runs, so a refused request has written nothing.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType
from starlette.requests import Request

from core import errors
from core.codec import check_json_depth
from core.names import ID_BODY
from meshpos.cashier.ledger import DECISIONS, DIRECTIONS, DRAWER_PATTERN, METHODS
from meshpos.documents.orders import KITCHEN_STAGES, ORDER_STAGES
from meshpos.documents.tables import TABLE_STATUSES


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
    "table_id": ID_BODY,
    "sku": ID_BODY,
    "order_id": r"[0-9]{8}-[0-9a-hjkmnp-tv-z]{19}",  # business day, then core.clock.time_id
    "item_id": r"[0-9a-hjkmnp-tv-z]{8}",  # core.clock.random_id(8)
    "drawer": DRAWER_PATTERN,
    "review_id": rf"{DRAWER_PATTERN}\.[0-9]{{1,18}}",  # <drawer>.<ledger position>
    "store": r"[0-9a-f]{16}",  # peer.identity.store_id_of (the HQ API)
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


class CatalogIn(Strict):
    """What the HQ owns of a product (docs/hq.md): the store keeps station, category and stock."""

    name: Text
    price_cents: Cents
    active: bool = True


class SalesQuery(Strict):
    from_: Annotated[str, Meta(pattern=pattern(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"))] = msgspec.field(name="from")
    to: Annotated[str, Meta(pattern=pattern(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"))]
    store: Annotated[str, Meta(pattern=pattern(r"[0-9a-f]{16}"))] | None = None


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
    method: Literal[METHODS]  # type: ignore[valid-type]
    tip_cents: Cents = 0
    op_id: OpId | None = None
    user: Text | None = None
    allow_provisional: bool = False


class CashMovementIn(Strict):
    direction: Literal[DIRECTIONS]  # type: ignore[valid-type]
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
    decision: Literal[DECISIONS]  # type: ignore[valid-type]
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
    values = {k: v for k, v in params.items() if k in model.__struct_encode_fields__}
    try:
        return msgspec.convert(values, type=model, strict=False)
    except msgspec.ValidationError as exc:
        raise errors.InvalidInput(_validation_message(exc, "query")) from None
