"""The API's route table: an :class:`Endpoint` per method and path, decoded and answered the
same way (content type, path, query, body, then the handler; errors as ``{code, message}``),
and the request body bound that runs before any of it.  The same table is the source of
``/openapi.json`` (meshpos/api_openapi.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from msgspec import Struct
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from core import errors
from core.codec import encode_json_bytes
from meshpos.api_schemas import check_content_type, check_path, decode_body, decode_query


@dataclass(frozen=True, slots=True)
class Answer:
    """A handler's payload with a status other than its route's (202 for a provisional entry)."""

    payload: Any
    status: int


def cashier_answer(result: dict[str, Any], status: int = 200) -> Answer:
    return Answer(result, 202 if result["entry"]["status"] == "provisional" else status)


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(encode_json_bytes(payload), status_code=status, media_type="application/json")


def error_response(status: int, code: int, message: str) -> Response:
    return json_response({"code": code, "message": message}, status)


async def on_meshpos_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.MeshposError)
    return error_response(exc.http_status, exc.code, exc.message)


async def deny_websocket(ws: WebSocket, exc: errors.MeshposError) -> None:
    """Refuse a WebSocket upgrade before accepting it: the HTTP status and ``{code, message}``
    through the ASGI denial-response extension, a bare 403 where the server lacks it."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        denial = error_response(exc.http_status, exc.code, exc.message)
        denial.headers["connection"] = "close"  # the server closes it after a refused upgrade
        await ws.send_denial_response(denial)
    else:
        await ws.close(code=1008)


async def on_http_error(_: Request, exc: Exception) -> Response:
    """Starlette's own errors (404, 405) as ``{code, message}``, keeping their headers (405's ``Allow``)."""
    assert isinstance(exc, HTTPException)
    code = errors.NOT_FOUND if exc.status_code == 404 else errors.INVALID_MESSAGE
    response = error_response(exc.status_code, code, str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


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
            try:
                raw = await request.body()
            except ClientDisconnect:  # gone before its body arrived (a terminal stopping ends it so)
                return error_response(400, errors.InvalidInput.code,
                                      "the client went away before the request's body arrived; nothing was done")
            kwargs["body"] = decode_body(raw, self.body)
        result = await self.handler(**kwargs)
        if isinstance(result, Answer):
            return json_response(result.payload, result.status)
        return json_response(result, self.status)


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
        body = encode_json_bytes({"code": errors.INVALID_MESSAGE,
                                  "message": f"request body larger than {self.limit} bytes"})
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
