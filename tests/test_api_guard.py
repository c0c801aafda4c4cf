"""Who may call the local API (meshpos/api_guard.py), and the request-level defects fixed with it.

Everything runs against a real hypercorn server on a loopback socket (the ``served`` fixture), on
asyncio and on trio, with requests shaped the way a browser would send them: an ``Origin``
header, a rebound ``Host``, ``text/plain`` bodies.  Every refused write is also checked to have
written nothing.  A few tests spawn ``meshpos run`` (start-up refusal, the warning, the token file),
and one drives the ASGI app directly to claim a remote client address, which a loopback socket
cannot produce.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from httpx_ws import WebSocketUpgradeError, aconnect_ws

from core.errors import ConfigError
from meshpos.api import create_app
from meshpos.api_guard import MAX_REQUEST_HEAD_BYTES
from meshpos.config import load_config
from meshpos.server import serve_api
from meshpos.terminal import Terminal
from peer.identity import Authority
from tests.apiutil import BURGER, ORDER, assert_error, upgrade, written
from tests.conftest import serving
from tests.meshutil import config_for
from tests.procutil import Proc, clean_env, run_cli

TOKEN = "0123456789abcdef-box-token"
EVIL = "http://evil.example"


def own_origin(client: httpx.AsyncClient) -> str:
    return str(client.base_url).rstrip("/")


def port_of(client: httpx.AsyncClient) -> int:
    port = urlsplit(str(client.base_url)).port
    assert port is not None
    return port


async def order_ids(client: httpx.AsyncClient, **headers: str) -> list[str]:
    resp = await client.get("/api/v1/orders", headers=headers)
    assert resp.status_code == 200, resp.text
    return [o["id"] for o in resp.json()]


async def ws_refused(client: httpx.AsyncClient, url: str, status: int, code: int, **headers: str) -> None:
    """The upgrade is refused before it is accepted: an HTTP answer with a JSON ``{code, message}``."""
    with pytest.raises(WebSocketUpgradeError) as refused:
        async with aconnect_ws(url, client, headers=headers):
            pass
    assert refused.value.response.status_code == status
    assert_error(await upgrade(client, url, **headers), status, code)


async def ws_first_frame(client: httpx.AsyncClient, url: str, **headers: str) -> dict[str, Any]:
    async with aconnect_ws(url, client, headers=headers) as ws:
        with anyio.fail_after(10):
            return await ws.receive_json()


async def raw_get(port: int, target: str, *, websocket: bool = False) -> httpx.Response:
    """A GET written by hand on a new connection (``Connection: close``), answer read to the end."""
    head = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
    if websocket:
        head = head.replace("Connection: close", "Connection: Upgrade") + (
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send((head + "\r\n").encode())
        raw = b""
        with anyio.fail_after(10):
            try:
                while chunk := await stream.receive():
                    raw += chunk
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    status_line, _, rest = raw.partition(b"\r\n")
    header_block, _, body = rest.partition(b"\r\n\r\n")
    headers = [tuple(line.decode().split(": ", 1)) for line in header_block.split(b"\r\n") if line]
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=body)


# -- Origin ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_page_of_another_origin_is_refused(served: Any) -> None:
    async with served() as (_, client):
        await client.put("/api/v1/tables/T1", json={"name": "T1", "seats": 2})
        before = await written(client)
        for origin in (EVIL, "null", "http://127.0.0.1", "http://localhost:3000", "https://127.0.0.1:" +
                       str(port_of(client))):
            assert_error(await client.post("/api/v1/orders", json=ORDER, headers={"Origin": origin}), 403, 4008)
            assert_error(await client.get("/api/v1/orders", headers={"Origin": origin}), 403, 4008)
            assert_error(await client.get("/openapi.json", headers={"Origin": origin}), 403, 4008)
            await ws_refused(client, "/api/v1/events?cursor=0", 403, 4008, Origin=origin)
        assert await written(client) == before
        assert await order_ids(client) == []


@pytest.mark.anyio
async def test_the_terminals_own_origin_is_served(served: Any) -> None:
    async with served() as (_, client):
        port = port_of(client)
        for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"):
            resp = await client.post("/api/v1/orders", json=ORDER, headers={"Origin": origin})
            assert resp.status_code == 201, resp.text
            assert "access-control-allow-origin" not in resp.headers  # same origin: no CORS needed
        assert len(await order_ids(client, Origin=own_origin(client))) == 3
        frame = await ws_first_frame(client, "/api/v1/events?cursor=0", Origin=own_origin(client))
        assert frame["type"] == "order:created"


@pytest.mark.anyio
async def test_configured_origin_gets_cors_answers(served: Any) -> None:
    ui = "http://kitchen-screen.local:5173"
    async with served(api_allowed_origins=[ui]) as (_, client):
        preflight = await client.options("/api/v1/orders", headers={
            "Origin": ui, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization"})
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == ui
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        resp = await client.post("/api/v1/orders", json=ORDER, headers={"Origin": ui})
        assert resp.status_code == 201, resp.text
        assert resp.headers["access-control-allow-origin"] == ui
        # a refusal is readable by that page too, and is JSON like every error
        bad = await client.post("/api/v1/orders", content=b"{}", headers={"Origin": ui, "Content-Type": "text/plain"})
        assert_error(bad, 415, 4006)
        assert bad.headers["access-control-allow-origin"] == ui
        odd = await client.options("/api/v1/orders", headers={
            "Origin": ui, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-evil"})
        assert_error(odd, 400, 4006)
        # another origin's preflight is refused before CORS is considered
        assert_error(await client.options("/api/v1/orders", headers={
            "Origin": EVIL, "Access-Control-Request-Method": "POST"}), 403, 4008)
        assert await ws_first_frame(client, "/api/v1/events?cursor=0", Origin=ui)


# -- Host ------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_foreign_host_is_refused(served: Any) -> None:
    """DNS rebinding: the browser connects to 127.0.0.1 but names the attacker's host."""
    async with served() as (_, client):
        port = port_of(client)
        before = await written(client)
        for host in ("evil.example:8700", f"evil.example:{port}", "127.0.0.1.evil.example", "", "localhost:x"):
            headers = {"Host": host}
            assert_error(await client.get("/api/v1/orders", headers=headers), 403, 4008)
            assert_error(await client.post("/api/v1/orders", json=ORDER, headers=headers), 403, 4008)
            await ws_refused(client, "/api/v1/events?cursor=0", 403, 4008, **headers)
        assert await written(client) == before
        for host in (f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "127.0.0.1"):
            assert (await client.get("/api/v1/status", headers={"Host": host})).status_code == 200


@pytest.mark.anyio
async def test_configured_host_names_are_served(served: Any) -> None:
    async with served(api_allowed_hosts=["pos-1.local"]) as (_, client):
        port = port_of(client)
        headers = {"Host": f"pos-1.local:{port}", "Origin": f"http://pos-1.local:{port}"}
        assert (await client.post("/api/v1/orders", json=ORDER, headers=headers)).status_code == 201
        assert_error(await client.get("/api/v1/orders", headers={"Host": "pos-2.local"}), 403, 4008)


# -- content type ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_writes_only_as_json(served: Any) -> None:
    """A ``no-cors`` request may only be a "simple" one: text/plain, a form, or no type at all."""
    async with served() as (_, client):
        before = await written(client)
        body = json.dumps(ORDER).encode()
        for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "text/plain;charset=UTF-8"},
                        {"Content-Type": "application/x-www-form-urlencoded"}, {"Content-Type": "multipart/form-data"},
                        {"Content-Type": "application/jsonx"}, {}):
            resp = await client.post("/api/v1/orders", content=body, headers=headers)
            assert "Content-Type: application/json" in assert_error(resp, 415, 4006)["message"]
        assert_error(await client.post("/api/v1/orders", data={"items": "x"}), 415, 4006)
        assert_error(await client.put("/api/v1/tables/T1", content=b'{"name": "T1", "seats": 2}'), 415, 4006)
        assert_error(await client.post("/api/v1/tables/T1/unmerge"), 415, 4006)
        assert await written(client) == before
        assert await order_ids(client) == []
        ok = await client.post("/api/v1/orders", content=body,
                               headers={"Content-Type": "Application/JSON; charset=utf-8"})
        assert ok.status_code == 201, ok.text


# -- token -----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_token_is_required_when_configured(served: Any) -> None:
    async with served(api_token=TOKEN) as (_, client):
        right = {"Authorization": f"Bearer {TOKEN}"}
        for headers in ({}, {"Authorization": "Bearer wrong-token-of-the-same-size"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
            refused = await client.post("/api/v1/orders", json=ORDER, headers=headers)
            assert_error(refused, 401, 4003)
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert_error(await client.get("/api/v1/orders", headers=headers), 401, 4003)
            await ws_refused(client, "/api/v1/events?cursor=0", 401, 4003, **headers)
        await ws_refused(client, "/api/v1/events?cursor=0&token=nope", 401, 4003)
        assert (await client.get("/api/v1/status", headers=right)).json()["storage"]["updates"] == 0

        created = await client.post("/api/v1/orders", json=ORDER, headers=right)
        assert created.status_code == 201, created.text
        assert (await ws_first_frame(client, "/api/v1/events?cursor=0", **right))["type"] == "order:created"
        # a browser cannot set headers on a WebSocket: the token may come as a query parameter
        assert (await ws_first_frame(client, f"/api/v1/events?cursor=0&token={TOKEN}"))["cursor"] == 1
        # a browser on this box, served from an allowed origin, needs no token
        origin = {"Origin": own_origin(client)}
        assert (await client.post("/api/v1/orders", json=ORDER, headers=origin)).status_code == 201
        assert len(await order_ids(client, **origin)) == 2
        assert (await ws_first_frame(client, "/api/v1/events?cursor=0", **origin))["cursor"] == 1
        # ... and a token does not let another origin in
        assert_error(await client.get("/api/v1/orders", headers={**right, "Origin": EVIL}), 403, 4008)


@pytest.mark.anyio
async def test_a_remote_browser_needs_the_token_even_from_an_allowed_origin(make_config: Any) -> None:
    """The token exemption is for a browser on this box: a loopback client address.  A socket on
    loopback cannot claim another address, so this drives the ASGI app with a remote one."""
    ui = "http://office.example:8080"
    config = make_config(api_token=TOKEN, api_allowed_origins=[ui])
    async with Terminal(config).running() as terminal:
        app = create_app(terminal, port=8700)
        for client_address, token_needed in ((("192.0.2.7", 50000), True), (("127.0.0.1", 50000), False),
                                              (("::ffff:127.0.0.1", 50000), False)):
            transport = httpx.ASGITransport(app=app, client=client_address)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8700") as client:
                resp = await client.get("/api/v1/orders", headers={"Origin": ui})
                if token_needed:
                    assert_error(resp, 401, 4003)
                    authorized = {"Origin": ui, "Authorization": f"Bearer {TOKEN}"}
                    resp = await client.get("/api/v1/orders", headers=authorized)
                assert resp.status_code == 200, resp.text


def test_token_settings_are_checked() -> None:
    env: dict[str, str] = {}
    base = {"data_dir": "/tmp/x", "terminal_id": "pos-1"}
    with pytest.raises(ConfigError, match="api_host 0.0.0.0 is not a loopback address: set api_token"):
        load_config(overrides={**base, "api_host": "0.0.0.0"}, env=env)
    with pytest.raises(ConfigError, match="api_host 192.0.2.10 is not a loopback"):
        load_config(overrides=base, env={"MESHPOS_API_HOST": "192.0.2.10"})
    assert load_config(overrides={**base, "api_host": "0.0.0.0"}, env={"MESHPOS_API_TOKEN": TOKEN}).api_token == TOKEN
    for bad in ("short", "has a space in it 0123456789", ""):
        with pytest.raises(ConfigError, match="api_token must be"):
            load_config(overrides={**base, "api_token": bad}, env=env)
    for bad in ("*", "null", "http://ui.example/app", "ui.example"):
        with pytest.raises(ConfigError, match="api_allowed_origins"):
            load_config(overrides={**base, "api_allowed_origins": [bad]}, env=env)
    loaded = load_config(overrides=base, env={"MESHPOS_API_ALLOWED_ORIGINS": "http://a.example:1, https://b.example",
                                              "MESHPOS_API_ALLOWED_HOSTS": "pos-1.local"})
    assert (loaded.api_allowed_origins, loaded.api_allowed_hosts) == (
        ["http://a.example:1", "https://b.example"], ["pos-1.local"])
    assert TOKEN not in repr(load_config(overrides={**base, "api_token": TOKEN}, env=env))


@pytest.mark.anyio
async def test_serve_api_off_loopback_without_token_refuses_before_listening(make_config: Any) -> None:
    config = make_config(api_host="0.0.0.0")
    async with Terminal(config).running() as terminal:
        with pytest.raises(ConfigError, match="not a loopback address"):
            await serve_api(terminal, shutdown=anyio.Event())


@pytest.mark.slow
def test_run_off_loopback_without_token_refuses_to_start(tmp_path: Path) -> None:
    result = run_cli("run", "--data-dir", str(tmp_path / "d"), "--terminal-id", "pos-1", "--api-host", "0.0.0.0",
                     "--api-port", "0", "--no-mdns")
    assert result.returncode == 1, result
    assert ("Error: api_host 0.0.0.0 is not a loopback address: set api_token (MESHPOS_API_TOKEN or "
            "--api-token-file)") in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was created


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_warns_without_token_and_reads_the_token_file(launch: Callable[..., Proc], tmp_path: Path,
                                                          backend: str) -> None:
    open_box = launch(tmp_path / "a", terminal_id="pos-1", backend=backend)
    warnings = [line for line in open_box.stderr().splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "any process on this box can call it" in warnings[0], open_box.stderr()
    with open_box.client() as c:
        assert c.get("/api/v1/status").status_code == 200

    (tmp_path / "token").write_text(TOKEN + "\n")
    locked = launch(tmp_path / "b", terminal_id="pos-2", backend=backend,
                    extra=["--api-port", "0", "--api-token-file", str(tmp_path / "token")])
    assert "WARNING" not in locked.stderr(), locked.stderr()
    with locked.client() as c:
        assert c.get("/api/v1/status").status_code == 401
        assert c.get("/api/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    (tmp_path / "empty").write_text("\n")
    result = run_cli("run", "--data-dir", str(tmp_path / "c"), "--terminal-id", "pos-3", "--api-port", "0",
                     "--api-token-file", str(tmp_path / "empty"), env=clean_env())
    assert result.returncode == 1 and "--api-token-file" in result.stderr and "is empty" in result.stderr, result


# -- sizes, numbers, ids, depth --------------------------------------------------------------------


@pytest.mark.anyio
async def test_over_long_urls_and_headers_answer_json(served: Any) -> None:
    async with served() as (_, client):
        # httpx refuses to send a URL over 64 KiB itself, so these go over a plain socket
        port = port_of(client)
        for target in ("/api/v1/orders?table=" + "x" * 100_000, "/api/v1/" + "x" * 100_000):
            assert_error(await raw_get(port, target), 414, 4006)
            assert_error(await raw_get(port, target, websocket=True), 414, 4006)
        assert_error(await client.get("/api/v1/orders?table=" + "x" * 9_000), 414, 4006)
        await ws_refused(client, "/api/v1/events?cursor=0&x=" + "x" * 9_000, 414, 4006)
        assert_error(await client.get("/api/v1/status", headers={"X-Padding": "x" * 100_000}), 431, 4006)
        # What remains: a request head beyond hypercorn's buffer is refused by hypercorn itself,
        # before any application code runs - an empty 431 (documented in docs/api.md).
        huge = await client.get("/api/v1/status", headers={"X-Padding": "x" * 2 * MAX_REQUEST_HEAD_BYTES})
        assert huge.status_code == 431 and huge.content == b""
        assert (await client.get("/api/v1/status")).status_code == 200


@pytest.mark.anyio
async def test_integer_query_parameters_are_bounded(served: Any) -> None:
    async with served() as (_, client):
        for path in ("/api/v1/audit?after=9223372036854775808", "/api/v1/audit?after=-1",
                     "/api/v1/audit?limit=99999999999999999999999",
                     "/api/v1/cashier/drawers/main?from_position=9223372036854775808"):
            assert_error(await client.get(path), 422, 4006)
        assert (await client.get("/api/v1/audit?after=9223372036854775807")).json() == []
        await ws_refused(client, "/api/v1/events?cursor=9223372036854775808", 422, 4006)


@pytest.mark.anyio
async def test_ids_ending_in_a_newline_are_refused(served: Any) -> None:
    """``$`` matches before a final newline: ``T1\\n`` used to create a second table."""
    async with served() as (_, client):
        await client.put("/api/v1/tables/T1", json={"name": "T1", "seats": 2})
        before = await written(client)
        assert_error(await client.put("/api/v1/tables/T1%0A", json={"name": "T1", "seats": 2}), 422, 4006)
        assert_error(await client.get("/api/v1/tables/T1%0A"), 422, 4006)
        assert_error(await client.put("/api/v1/catalog/burger%0A", json={"name": "B", "price_cents": 1}), 422, 4006)
        assert_error(await client.post("/api/v1/orders", json={**ORDER, "table": "T1\n"}), 422, 4006)
        item = {**BURGER, "sku": "burger\n"}
        assert_error(await client.post("/api/v1/orders", json={**ORDER, "items": [item]}), 422, 4006)
        assert_error(await client.post("/api/v1/cashier/drawers/main%0A/open",
                                       json={"float_cents": 0, "operator": "x"}), 422, 4006)
        assert await written(client) == before
        assert [t["id"] for t in (await client.get("/api/v1/tables")).json()] == ["T1"]


@pytest.mark.anyio
async def test_integral_floats_are_integers_and_coercions_are_not(served: Any) -> None:
    """As the published JSON Schema reads numbers: ``2.0`` is the integer 2; ``"2"`` and ``true`` are not."""
    async with served() as (_, client):
        resp = await client.post("/api/v1/orders", json={"items": [{**BURGER, "qty": 2.0, "unit_price_cents": 1e3}]})
        assert resp.status_code == 201, resp.text
        assert (resp.json()["items"][0]["qty"], resp.json()["total_cents"]) == (2, 2000)
        before = await written(client)
        for qty in ("2", True, 2.5, None):
            assert_error(await client.post("/api/v1/orders", json={"items": [{**BURGER, "qty": qty}]}), 422, 4006)
        assert_error(await client.put("/api/v1/tables/T1", json={"name": "T1", "seats": 4.5}), 422, 4006)
        assert await written(client) == before


@pytest.mark.anyio
async def test_deep_json_bodies_are_422(served: Any) -> None:
    async with served() as (_, client):
        before = await written(client)
        just_too_deep = b'{"items": ' + b"[" * 33 + b"]" * 33 + b"}"  # 34 levels, whole and well-formed
        for body in (b"[" * 200_000, b'{"items": ' + b"[" * 200_000, b'{"items": ' + b'{"a": ' * 40_000,
                     just_too_deep):
            resp = await client.post("/api/v1/orders", content=body, headers={"Content-Type": "application/json"})
            assert "deeper than" in assert_error(resp, 422, 4006)["message"]
        assert await written(client) == before
        # brackets inside strings are text, not nesting
        ok = await client.post("/api/v1/orders", json={**ORDER, "notes": "[" * 400})
        assert ok.status_code == 201, ok.text


@pytest.mark.anyio
@pytest.mark.anyio
async def test_roster_with_deep_json_inside_is_refused_as_json(tmp_path: Path) -> None:
    """The roster's ``body`` is JSON text inside a JSON string: the request is 2 levels deep, the
    text inside it 100,000.  Parsing that must end in a 4xx answer, never a 500 or a crash - also
    when the authority signed it (the signature is checked before the body is parsed)."""
    authority = Authority.init(tmp_path / "auth", "Cantina Centro")
    authority.enroll("pos-1", "pos", tmp_path / "pos-1")
    async with serving(config_for(tmp_path / "pos-1", "pos-1")) as (terminal, client):
        assert terminal.mesh is not None
        version = terminal.mesh.roster.version
        for text in ("[" * 100_000, '{"v":' * 30_000 + "1" + "}" * 30_000):
            signature = authority.key.sign(text.encode(), ec.ECDSA(hashes.SHA256()))
            for signed in (base64.b64encode(signature).decode(), "AAAA"):
                resp = await client.post("/api/v1/roster", json={"body": text, "signature": signed})
                assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
                assert set(resp.json()) == {"code", "message"}
        assert terminal.mesh.roster.version == version
        assert (await client.get("/api/v1/status")).status_code == 200


@pytest.mark.anyio
async def test_a_client_gone_before_its_body_arrived_is_answered_not_raised(make_config: Any) -> None:
    """A terminal that stops ends its open requests (hypercorn sends ``http.disconnect``): a write
    whose body had not arrived yet got a traceback in the log; it is answered 400 and does nothing."""
    async with Terminal(make_config()).running() as terminal:
        app = create_app(terminal, port=8700)
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/api/v1/orders", "raw_path": b"/api/v1/orders", "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8700),
                 "headers": [(b"host", b"127.0.0.1:8700"), (b"content-type", b"application/json"),
                             (b"content-length", b"40")]}
        await app(scope, receive, send)
        assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400, sent
        assert b"went away" in sent[1]["body"]
        assert await terminal.list_orders() == []
