"""``/openapi.json``: OpenAPI 3.1 built from the route table, with the msgspec structs' own
JSON Schemas, plus what the handlers refuse beyond them - so a client, or a test generator,
reads exactly what the server accepts (tests/test_api_schema.py holds it to that).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from meshpos.api_routing import Endpoint
from meshpos.api_schemas import PATH_PATTERNS, Error, pattern

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


TERMINAL_INFO = {"title": "meshpos terminal API", "version": "1",
                 "description": "Local API of one meshpos terminal. Every 2xx is durable. "
                                "Errors are {code, message}; see docs/api.md."}


def openapi(endpoints: list[Endpoint], *, token: bool = False, info: dict[str, str] | None = None) -> dict[str, Any]:
    """OpenAPI 3.1 from the route table; schemas come from the msgspec structs themselves.

    ``token``: the terminal has an ``api_token``, so the document says every call needs it
    (a browser on the box served from an allowed origin is let in without it; see docs/api.md).
    """
    bodies = sorted({e.body for e in endpoints if e.body is not None} | {Error}, key=lambda s: s.__name__)
    _, components = msgspec.json.schema_components(bodies, ref_template="#/components/schemas/{name}")
    for name, rules in _BODY_RULES.items():
        if name in components:  # the HQ API has other bodies (meshpos/hq_api.py)
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
        "info": info or TERMINAL_INFO,
        "paths": paths,
        "components": {"schemas": components},
    }
    if token:
        spec["components"]["securitySchemes"] = {"api_token": {
            "type": "http", "scheme": "bearer", "description": "the terminal's api_token (docs/operations.md)"}}
        spec["security"] = [{"api_token": []}]
    return spec
