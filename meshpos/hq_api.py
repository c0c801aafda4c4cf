"""The HQ API (docs/hq.md, "API"): the same conventions as a terminal's local API - the route
table, strict bodies, ``{code, message}`` errors, ``/openapi.json``, and the guard (Host, Origin,
token) - over an HQ process instead of a terminal.

``GET /hq/v1/stores``, ``GET /hq/v1/reports/sales``, ``PUT /hq/v1/stores/{store}/catalog/{sku}``,
``GET /hq/v1/status``.
"""

from __future__ import annotations

import logging
import socket
from datetime import date
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from core import errors
from meshpos.api_guard import guarded
from meshpos.api_openapi import openapi
from meshpos.api_routing import BodyLimit, Routes, json_response, on_http_error, on_meshpos_error
from meshpos.api_schemas import CatalogIn, SalesQuery
from meshpos.asgi_serving import serve_asgi
from meshpos.config import TerminalConfig
from meshpos.hq.service import Hq
from storage import hq_rows

log = logging.getLogger(__name__)

HQ_INFO = {"title": "meshpos HQ API", "version": "1",
           "description": "The HQ's view of every store it serves, from PostgreSQL. Errors are {code, message}; "
                          "see docs/hq.md."}
#: Longest range of business days one sales report covers.
MAX_REPORT_DAYS = 366


def access(host: str, port: int, token: str | None, allowed_origins: list[str] | None = None) -> TerminalConfig:
    """The API settings the guard reads (it checks a terminal's the same way): a config that
    carries only those."""
    return TerminalConfig(data_dir=Path("."), terminal_id="hq-api", api_host=host, api_port=port, api_token=token,
                          api_allowed_origins=list(allowed_origins or []))


def create_hq_app(hq: Hq, settings: TerminalConfig, *, port: int) -> ASGIApp:
    r = Routes()

    @r.add("GET", "/hq/v1/stores", tag="hq")
    async def list_stores() -> list[dict[str, Any]]:
        """Every store this HQ holds: last contact, terminals seen, and (this process) who is
        linked now and what is received but not landed yet."""
        rows = {s["store_id"]: s for s in await hq.db.run(hq_rows.stores)}
        out = []
        for store_id, side in sorted(hq.stores.items()):
            row = rows.get(store_id, {"first_contact_at": None, "last_contact_at": None, "terminals_seen": {}})
            documents = side.replica.status()
            out.append({"store_id": store_id, "name": side.mesh.roster.store_name,
                        "first_contact_at": row["first_contact_at"], "last_contact_at": row["last_contact_at"],
                        "terminals_seen": row["terminals_seen"], "linked": sorted(side.mesh.links),
                        "backlog": {"updates_queued": documents["queued"], "stale_documents": documents["stale"]},
                        "ledger_conflicts": side.conflicts})
        return out

    @r.add("GET", "/hq/v1/reports/sales", tag="hq", query=SalesQuery)
    async def sales(query: SalesQuery) -> dict[str, Any]:
        """Per store and business day: orders, cancellations, voided items, revenue and tips by
        payment method (payments in review do not count; they are counted apart)."""
        try:
            first, last = date.fromisoformat(query.from_), date.fromisoformat(query.to)
        except ValueError as exc:
            raise errors.InvalidInput(f"from/to: {exc}") from None
        if last < first or (last - first).days >= MAX_REPORT_DAYS:
            raise errors.InvalidInput(f"to must be on or after from, at most {MAX_REPORT_DAYS} days on")
        if query.store is not None and query.store not in hq.stores:
            raise errors.NotFound(f"this HQ holds no enrollment of store {query.store!r}")
        days = await hq.db.run(hq_rows.sales, first.isoformat(), last.isoformat(), query.store)
        return {"from": first.isoformat(), "to": last.isoformat(), "days": days}

    @r.add("PUT", "/hq/v1/stores/{store}/catalog/{sku}", tag="hq", body=CatalogIn)
    async def put_catalog(store: str, sku: str, body: CatalogIn) -> dict[str, Any]:
        """Set a product's name, price and active flag for a store; its terminals take it when
        linked (docs/hq.md, "What the HQ may write")."""
        return await hq.put_catalog(store, sku, name=body.name, price_cents=body.price_cents, active=body.active)

    @r.add("GET", "/hq/v1/status", tag="hq")
    async def status() -> dict[str, Any]:
        """This process: its PostgreSQL (without the password), peer port, stores and links."""
        return hq.status()

    spec = openapi(r.endpoints, token=bool(settings.api_token), info=HQ_INFO)

    async def openapi_json(_: Request) -> Response:
        return json_response(spec)

    app = Starlette(routes=r.routes() + [Route("/openapi.json", openapi_json, methods=["GET"])],
                    exception_handlers={errors.MeshposError: on_meshpos_error, HTTPException: on_http_error})
    return guarded(BodyLimit(app, settings.max_body_bytes), settings, port=port,
                   methods={e.method for e in r.endpoints})


async def serve_hq_api(hq: Hq, sock: socket.socket, settings: TerminalConfig, *, shutdown: anyio.Event) -> None:
    """Serve until ``shutdown`` is set."""
    await serve_asgi(create_hq_app(hq, settings, port=sock.getsockname()[1]), sock, shutdown=shutdown)
