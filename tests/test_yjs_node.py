"""The Yjs route with the real npm packages: ``yjs`` and ``y-websocket``'s ``WebsocketProvider``
on the ``ws`` package, in Node, against a real terminal on loopback (js/test/yjs_route.mjs does
the client's part and reports what it saw)."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from simulations.jsdeps import JS_DIR
from tests.apiutil import create_order

pytestmark = pytest.mark.anyio


async def test_a_stock_yjs_client_binds_writes_is_refused_and_sees_the_others(served: Any, node_modules: None) -> None:
    async with served() as (terminal, http):
        order = await create_order(http)
        with anyio.fail_after(60):
            done = await anyio.run_process(
                ["node", str(JS_DIR / "test" / "yjs_route.mjs"), str(http.base_url).rstrip("/"), order["id"],
                 order["items"][0]["id"]], check=False)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        seen = json.loads(done.stdout)
        # the record the API wrote, read by Node's yjs byte for byte as docs/documents.md lays it out
        assert seen["record"]["id"] == order["id"] and seen["record"]["items"][0]["sku"] == "burger"
        assert seen["bumped"] == "ready"
        assert seen["liveOrder"] and (await http.get(f"/api/v1/orders/{seen['liveOrder']}")).status_code == 200
        assert seen["awareness"] == order["id"] and seen["awarenessGone"] is True
        assert seen["refused"]["code"] == 4011 and "forward only" in seen["refused"]["reason"]
        assert seen["afterRefusal"] == "ready"
        assert (seen["posSawBump"], seen["posSawRefused"]) == (True, False)
        audit = (await http.get("/api/v1/audit", params={"entity_id": order["id"]})).json()
        assert [(row["operation"], row["user_id"]) for row in audit[1:]] == [("ui_write", "ui:node-kds")]
