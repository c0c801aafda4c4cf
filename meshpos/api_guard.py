"""Who may call the local API: the ASGI guard in front of every HTTP request and WebSocket upgrade.

Listening on 127.0.0.1 does not keep web pages out: any page open in a browser on the box can
send requests to it.  A ``no-cors`` POST with ``Content-Type: text/plain`` needs no preflight, a
WebSocket has no same-origin rule at all, and DNS rebinding (a name of the attacker's that
resolves to 127.0.0.1 after the page loaded) makes the browser treat the API as the attacker's own
origin, so it can read every answer.  Each rule below closes one of those doors:

- **Host** must name this box (a loopback name, ``api_host``, or a configured name): a rebound
  name fails here, before anything is read.
- **Origin**, when a browser sends one, must be the terminal's own UI origin or a configured one.
- **Content-Type** of a write must be ``application/json`` (checked by each write route in
  meshpos/api.py, after routing, so an unknown path or method stays a 404 or 405): that is not a
  "simple" type, so a browser cannot send it cross-origin without a preflight, which only
  configured origins pass.
- **Token** (``api_token``): callers that are not a browser on this box must present it.  A
  browser on the box is a loopback client whose request names an allowed Origin or - a
  same-origin read, which browsers send without Origin - carries ``Sec-Fetch-Site:
  same-origin``.  It cannot set headers on a WebSocket nor read a token it was never given, and
  the checks above already bound what it can do.  The screens' own files (code, no data) need
  no token: a browser must load the page before it can ask anything.

Refusals are JSON ``{code, message}`` like every other error; a refused WebSocket upgrade gets
its HTTP status and JSON body through the ASGI denial-response extension (bare 403 otherwise).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from collections.abc import Collection, Iterable
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from core import errors
from core.codec import encode_json_bytes
from meshpos.config import TerminalConfig

log = logging.getLogger(__name__)

#: Host names a browser uses for this box; port optional.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
#: Longest path plus query string served (a longer one is a 414); nothing of ours nears it.
MAX_TARGET_BYTES = 8 * 1024
#: Largest header block served (names and values; a larger one is a 431).
MAX_HEADER_BYTES = 64 * 1024
#: A refused request's body is read (and dropped) up to this size before the answer; see _drain.
MAX_DRAINED_BYTES = 256 * 1024
#: What hypercorn buffers of a request head before it answers on its own (bare 431, no body):
#: above the two limits above, so an over-long URL or header block reaches the guard and gets JSON.
MAX_REQUEST_HEAD_BYTES = 1024 * 1024
_HOST = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+)(?::(?P<port>[0-9]{1,5}))?")


def bracketed(host: str) -> str:
    """An IPv6 literal as it appears in Host and Origin (``[::1]``); other hosts lowercased."""
    host = host.strip().lower()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def allowed_hosts(config: TerminalConfig) -> frozenset[str]:
    hosts = set(LOOPBACK_NAMES) | {bracketed(h) for h in config.api_allowed_hosts}
    if config.api_host not in ("", "0.0.0.0", "::"):  # a wildcard is no name a client uses
        hosts.add(bracketed(config.api_host))
    return frozenset(hosts)


def own_origins(hosts: Iterable[str], port: int) -> frozenset[str]:
    """``http://<host>:<port>`` for every allowed host; a browser drops ``:80`` from an origin."""
    out = {f"http://{h}:{port}" for h in hosts}
    if port == 80:
        out |= {f"http://{h}" for h in hosts}
    return frozenset(out)


def startup_warning(config: TerminalConfig) -> str | None:
    """The one line to log when the API runs without a token (see docs/operations.md)."""
    if config.api_token:
        return None
    return ("local API has no token: any process on this box can call it; set api_token "
            "(MESHPOS_API_TOKEN or --api-token-file) to require one from callers other than this box's browser UI")


def _is_loopback_client(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


async def _drain(receive: Receive, limit: int) -> bool:
    """Read and drop the request body, up to ``limit`` bytes; whether it was read to its end.

    Answering before the client has sent its body makes some servers (hypercorn on trio) drop
    the connection under the client's feet, which it sees as no answer at all.
    """
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return False
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
        if seen > limit:
            return False


class Refusal(Exception):
    def __init__(self, status: int, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class ApiGuard:
    """Size, Host, Origin and token checks, then the app (see the module docstring)."""

    def __init__(self, app: ASGIApp, config: TerminalConfig, *, port: int,
                 public: Collection[str] = ()) -> None:
        config.validate_api_access()  # ConfigError, e.g. for a non-loopback api_host without a token
        self.app = app
        #: Paths whose GET needs no token (the screens' files: code, no data).
        self.public = frozenset(public)
        self.hosts = allowed_hosts(config)
        self.extra_origins = frozenset(o.lower().rstrip("/") for o in config.api_allowed_origins)
        self.origins = own_origins(self.hosts, port) | self.extra_origins
        self.token = config.api_token.encode() if config.api_token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        try:
            self.check(scope, headers, origin)
        except Refusal as refusal:
            if origin is not None and origin.lower() in self.extra_origins:  # the page may read why
                refusal.headers.update({"Access-Control-Allow-Origin": origin, "Vary": "Origin"})
            log.debug("local API refused %s %s: %s", scope.get("method", "WEBSOCKET"), scope.get("path"),
                     refusal.message)
            await self.refuse(scope, receive, send, refusal)
            return
        await self.app(scope, receive, send)

    def check(self, scope: Scope, headers: Headers, origin: str | None) -> None:
        target = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
        if target > MAX_TARGET_BYTES:
            raise Refusal(414, errors.INVALID_MESSAGE, f"request target longer than {MAX_TARGET_BYTES} bytes")
        if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            raise Refusal(431, errors.INVALID_MESSAGE, f"request headers larger than {MAX_HEADER_BYTES} bytes")
        self.check_host(headers.get("host"))
        if origin is not None and origin.lower() not in self.origins:
            raise Refusal(403, errors.PERMISSION_DENIED, f"origin {origin[:100]!r} may not use this API "
                          "(not this terminal's UI nor in api_allowed_origins)")
        method = scope.get("method", "GET")
        if method == "OPTIONS" and origin is not None and "access-control-request-method" in headers:
            return  # a CORS preflight carries no credentials and no body; CORSMiddleware answers it
        if self.token is None or (method in ("GET", "HEAD") and scope["path"] in self.public):
            return
        # A browser on this box, on a page of an allowed origin: it names the origin (every write,
        # every WebSocket), or - a same-origin read, where browsers send no Origin - says the
        # request comes from a page of the very origin it goes to (Sec-Fetch-Site, which no page
        # can set: browsers forbid it to scripts).
        browser_here = _is_loopback_client(scope) and (
            origin is not None or headers.get("sec-fetch-site") == "same-origin")
        if not browser_here:
            self.check_token(scope, headers)

    def check_host(self, host_header: str | None) -> None:
        match = _HOST.fullmatch(host_header.strip()) if host_header else None
        if match is None or match["host"].lower() not in self.hosts:
            raise Refusal(403, errors.PERMISSION_DENIED,
                          f"Host {(host_header or '')[:100]!r} is not this terminal (use 127.0.0.1 or localhost, "
                          "or add the name to api_allowed_hosts)")

    def check_token(self, scope: Scope, headers: Headers) -> None:
        given = b""
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip().encode()
        elif scope["type"] == "websocket":  # a browser cannot set headers on a WebSocket
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            given = query.get("token", "").encode()
        assert self.token is not None
        if not given or not hmac.compare_digest(given, self.token):
            what = "wrong API token" if given else "an API token is required (Authorization: Bearer <api_token>)"
            raise Refusal(401, errors.AUTHENTICATION_FAILED, what, {"WWW-Authenticate": 'Bearer realm="meshpos"'})

    async def refuse(self, scope: Scope, receive: Receive, send: Send, refusal: Refusal) -> None:
        body = encode_json_bytes({"code": refusal.code, "message": refusal.message})
        response = Response(body, refusal.status, headers=refusal.headers, media_type="application/json")
        if scope["type"] == "http":
            if not await _drain(receive, MAX_DRAINED_BYTES):
                # A body left unread: the connection cannot carry the next request.
                response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            response.headers["connection"] = "close"  # the server closes it after a refused upgrade
            await response(scope, receive, send)  # sent as websocket.http.response.*: the real status
        else:
            await send({"type": "websocket.close", "code": 1008})  # the server answers a bare 403


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS handling; a refused preflight answers JSON ``{code, message}`` like all errors."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        body = encode_json_bytes({"code": errors.INVALID_MESSAGE, "message": bytes(response.body).decode()})
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-type", "content-length")}
        return Response(body, response.status_code, headers=headers, media_type="application/json")


def guarded(app: ASGIApp, config: TerminalConfig, *, port: int, methods: Collection[str],
            public: Collection[str] = ()) -> ASGIApp:
    """``app`` behind the guard, with CORS for the configured extra origins (the own origin needs
    none); ``public``: paths a GET may read without the token."""
    if config.api_allowed_origins:
        app = JsonCORSMiddleware(app, allow_origins=sorted(o.lower().rstrip("/") for o in config.api_allowed_origins),
                                 allow_methods=sorted(methods), allow_headers=["Authorization", "Content-Type"])
    return ApiGuard(app, config, port=port, public=public)
