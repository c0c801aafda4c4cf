"""``WS /api/v1/yjs/{doc}``: a Yjs client bound to a real terminal's documents over a real
loopback socket - sync, live updates, writes stored and audited, refused writes closed with the
table's code and leaving nothing behind, awareness, hostile messages, the guard.  The same
client is driven with the real npm packages in tests/test_yjs_node.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import pycrdt
import pytest
from httpx_ws import WebSocketUpgradeError, aconnect_ws

from core import errors
from core.codec import encode_json
from core.ymessages import STEP1, encode_sync
from tests.apiutil import (
    assert_error,
    create_order,
    last_cursor,
    put_product,
    put_table,
    receive_until,
    upgrade,
    written,
)
from tests.yjsutil import bound

pytestmark = pytest.mark.anyio


async def until_read(http: Any, path: str, done: Any) -> dict[str, Any]:
    """GET ``path`` until it answers 200 with what ``done`` accepts (fails after 10 s)."""
    with anyio.fail_after(10):
        while True:
            resp = await http.get(path)
            if resp.status_code == 200 and done(resp.json()):
                return resp.json()
            await anyio.sleep(0.02)


def now() -> str:
    return datetime.now(UTC).isoformat()


def orders_of(doc: pycrdt.Doc) -> pycrdt.Map:
    return doc.get("orders", type=pycrdt.Map)


async def test_a_client_syncs_then_gets_each_change_once_it_is_durable(served: Any) -> None:
    async with served() as (terminal, http):
        first = await create_order(http)
        name = f"orders/{first['business_day']}"
        async with bound(http, name) as y:
            assert set(orders_of(y.doc).keys()) == {first["id"]}
            second = await create_order(http, table="T2")
            await y.pump(lambda: second["id"] in orders_of(y.doc))
            # What it holds reads exactly as the API serves it (the typed view of its own copy).
            assert str(orders_of(y.doc)[second["id"]]) == str(terminal.host.get(name).orders[second["id"]])
        async with bound(http, "tables") as y:
            await put_table(http, "T9")
            await y.pump(lambda: "T9" in y.doc.get("tables", type=pycrdt.Map))


async def test_a_kitchen_bump_is_stored_audited_and_raises_its_event(served: Any) -> None:
    async with served() as (terminal, http):
        order = await create_order(http)
        item = order["items"][0]["id"]
        before = await written(http)
        cursor = await last_cursor(http)
        async with bound(http, f"orders/{order['business_day']}", client="kds-screen") as y:
            await y.write(lambda doc: orders_of(doc)[order["id"]].__setitem__(f"kitchen:{item}:ready", now()))
            await until_read(http, f"/api/v1/audit?entity_id={order['id']}", lambda rows: len(rows) == 2)
        got = (await http.get(f"/api/v1/orders/{order['id']}")).json()
        assert got["items"][0]["kitchen_status"] == "ready"
        assert await written(http) == (before[0] + 1, before[1] + 1, before[2] + 1)
        audit = (await http.get("/api/v1/audit", params={"entity_id": order["id"]})).json()
        assert (audit[-1]["operation"], audit[-1]["user_id"]) == ("ui_write", "ui:kds-screen")
        assert audit[-1]["after"]["items"] == {item: {"kitchen_status": "ready"}}
        async with aconnect_ws(f"/api/v1/events?cursor={cursor}", http) as ws:
            event = await receive_until(ws, cursor + 1)
        assert event[-1]["type"] == "order:updated"
        assert event[-1]["order"]["items"][0]["kitchen_status"] == "ready"


async def test_a_new_order_from_a_client_is_checked_like_one_from_the_api(served: Any) -> None:
    async with served() as (terminal, http):
        seed = await create_order(http)
        day = seed["business_day"]
        oid = day.replace("-", "") + "-" + "0" * 19
        record = {"id": oid, "business_day": day, "table": "T3", "waiter": None, "notes": "", "created_at": now(),
                  "created_by": "pos-1", "items": [{"id": "abcdefgh", "sku": "soup", "name": "Soup", "qty": 1,
                                                    "unit_price_cents": 700, "modifiers": [], "notes": None,
                                                    "station": "hot", "added_at": now(), "added_by": "pos-1"}]}
        async with bound(http, f"orders/{day}") as y:
            await y.write(lambda doc: orders_of(doc).__setitem__(oid, pycrdt.Map({"order": encode_json(record)})))
            got = await until_read(http, f"/api/v1/orders/{oid}", lambda o: True)
        assert (got["status"], got["total_cents"], got["table"]) == ("open", 700, "T3")


def _set(oid: str, key: str, value: Any) -> Any:
    return lambda doc: orders_of(doc)[oid].__setitem__(key, value)


def _refusals(order: dict[str, Any], replica: str) -> list[tuple[str, str, Any, int]]:
    """(what, document, change, close code) - each a write a UI may not make."""
    oid, item = order["id"], order["items"][0]["id"]
    stamp = encode_json({"at": now(), "by": "pos-1"})
    day = f"orders/{order['business_day']}"
    return [
        ("kitchen status back", day, _set(oid, f"kitchen:{item}:preparing", now()), errors.INVALID_TRANSITION),
        ("status back", day, _set(oid, "stage:sent", stamp), errors.INVALID_TRANSITION),
        ("cancel without a reason", day, _set(oid, "stage:cancelled", stamp), errors.INVALID_MESSAGE),
        ("cancel and pay in one update", day,
         lambda doc: (_set(oid, "stage:cancelled", encode_json({"at": now(), "by": "pos-1", "reason": "left"}))(doc),
                      _set(oid, "stage:paid", stamp)(doc)), errors.INVALID_TRANSITION),
        ("void and bump in one update", day,
         lambda doc: (_set(oid, f"void:{item}", encode_json({"at": now(), "by": "pos-1", "reason": "burnt"}))(doc),
                      _set(oid, f"kitchen:{item}:served", now())(doc)), errors.INVALID_TRANSITION),
        ("delete an order", day, lambda doc: orders_of(doc).pop(oid), errors.PERMISSION_DENIED),
        ("rewrite the order record", day,
         lambda doc: orders_of(doc)[oid].__setitem__("order", orders_of(doc)[oid]["order"].replace(
             '"notes":""', '"notes":"free"')), errors.PERMISSION_DENIED),
        ("an unknown key", day, _set(oid, "price_override", 1), errors.INVALID_MESSAGE),
        ("a malformed value", day, _set(oid, "table", 12.5), errors.INVALID_MESSAGE),
        ("bump an unknown item", day, _set(oid, "kitchen:zzzzzzzz:ready", now()), errors.INVALID_MESSAGE),
        ("a root the document does not have", day,
         lambda doc: doc.get("payments", type=pycrdt.Map).__setitem__("x", 1), errors.INVALID_MESSAGE),
        ("another terminal's stock counter", "inventory",
         lambda doc: doc.get("stock_counts", type=pycrdt.Map).__setitem__("burger/someoneelse", 5),
         errors.PERMISSION_DENIED),
        ("stock of a sku not in the catalog", "inventory",
         lambda doc: doc.get("stock_counts", type=pycrdt.Map).__setitem__(f"nosuch/{replica}", 5),
         errors.INVALID_MESSAGE),
        ("guests over the table's bound", "tables",
         lambda doc: doc.get("table_guests", type=pycrdt.Map).__setitem__("T1", {"guests": 150}),
         errors.INVALID_TRANSITION),
        ("a register of no table", "tables",
         lambda doc: doc.get("table_status", type=pycrdt.Map).__setitem__("T404", {"status": "free"}),
         errors.INVALID_MESSAGE),
    ]


async def test_a_refused_write_closes_with_its_code_and_leaves_nothing(served: Any, caplog: Any) -> None:
    async with served() as (terminal, http):
        await put_table(http, "T1")
        await put_product(http)
        order = await create_order(http)
        item = order["items"][0]["id"]
        assert (await http.patch(f"/api/v1/orders/{order['id']}/items/{item}",
                                 json={"kitchen_status": "ready"})).status_code == 200
        assert (await http.patch(f"/api/v1/orders/{order['id']}", json={"status": "preparing"})).status_code == 200
        replica = terminal.host.get("inventory").replica_id
        for what, doc, change, code in _refusals(order, replica):
            before = await written(http)
            states = {n: terminal.host.state_vector(n) for n in terminal.host.names()}
            async with bound(http, doc) as y:
                await y.write(change)
                got, reason = await y.closed()
            assert got == code, (what, got, reason)
            assert reason, what
            assert await written(http) == before, what
            assert {n: terminal.host.state_vector(n) for n in terminal.host.names()} == states, what
        # and the terminal goes on serving everyone; a refused write is not a malformed document
        assert (await http.get(f"/api/v1/orders/{order['id']}")).json()["status"] == "preparing"
        assert not [r for r in caplog.records if r.getMessage().startswith("malformed")]
        assert (await http.get("/api/v1/status")).json()["documents"]["tables"]["malformed"]["count"] == 0
        async with bound(http, "tables") as y:
            assert "T1" in y.doc.get("tables", type=pycrdt.Map)


async def test_a_paid_order_takes_nothing_but_a_status_forward(served: Any) -> None:
    async with served() as (terminal, http):
        order = await create_order(http)
        oid = order["id"]
        name = f"orders/{order['business_day']}"

        def pay() -> None:
            terminal.host.get(name).set_status(oid, "paid")

        await terminal._commit(name, pay, None)
        items = encode_json([{"id": "zzzzzzzz", "sku": "tea", "name": "Tea", "qty": 1, "unit_price_cents": 300,
                        "modifiers": [], "notes": None, "station": None, "added_at": now(), "added_by": "pos-1"}])
        async with bound(http, name) as y:
            await y.write(_set(oid, "items:batch001", items))
            assert (await y.closed())[0] == errors.INVALID_TRANSITION
        async with bound(http, name) as y:
            await y.write(_set(oid, "stage:closed", encode_json({"at": now(), "by": "pos-1"})))
            await until_read(http, f"/api/v1/orders/{oid}", lambda o: o["status"] == "closed")


async def test_awareness_goes_to_the_other_clients_and_leaves_with_its_client(served: Any) -> None:
    async with served() as (_, http):
        async with bound(http, "tables", client="a") as a, bound(http, "tables", client="b") as b:
            await a.aware(1111, 1, '{"user":"ana","ticket":"T1"}')
            await b.pump(lambda: 1111 in b.awareness)
            assert b.awareness[1111] == '{"user":"ana","ticket":"T1"}'
            # b may not rewrite a's state
            await b.aware(1111, 9, '{"user":"mallory"}')
            await b.aware(2222, 1, '{"user":"bea"}')
            await a.pump(lambda: 2222 in a.awareness)
            # a hears its own state back (a provider hearing nothing for 30 s reconnects), never b's forgery
            assert a.awareness[1111] == '{"user":"ana","ticket":"T1"}'
            await b.pump(lambda: 2222 in b.awareness)  # b's own state came back after its forgery would have
            assert b.awareness[1111] == '{"user":"ana","ticket":"T1"}'
            async with bound(http, "tables", client="c") as c:  # a newcomer gets everyone's state
                await c.pump(lambda: {1111, 2222} <= set(c.awareness))
                assert c.awareness[1111] == '{"user":"ana","ticket":"T1"}'
        async with bound(http, "tables", client="e") as e:
            async with bound(http, "tables", client="d") as d:
                await d.aware(3333, 1, '{"user":"dan"}')
                await e.pump(lambda: 3333 in e.awareness)
            await e.pump(lambda: 3333 not in e.awareness)  # d left: the others are told its state went too
            async with bound(http, "tables", client="f") as f:
                with anyio.move_on_after(0.3):
                    await f.pump(lambda: False)
                assert 3333 not in f.awareness


@pytest.mark.parametrize(("frame", "code"), [
    (b"\x07", errors.INVALID_MESSAGE),                       # unknown message type
    (b"\x00\x05\x00", errors.INVALID_MESSAGE),               # unknown sync type
    (b"\x00\x00\x05\x01", errors.INVALID_MESSAGE),           # length past the end
    (b"\x00\x02\x03\xff\xff\xff", errors.INVALID_MESSAGE),   # an update that does not parse
    (b"\x01\x02\x01\x01", errors.INVALID_MESSAGE),           # truncated awareness
    (encode_sync(STEP1, b"\x00") + b"\x00", errors.INVALID_MESSAGE),  # bytes after the message
])
async def test_hostile_messages_close_that_client_only(served: Any, frame: bytes, code: int) -> None:
    async with served() as (_, http):
        async with bound(http, "tables", client="bad") as y:
            await y.ws.send_bytes(frame)
            assert (await y.closed())[0] == code
        async with bound(http, "tables") as y:
            await y.ws.send_text("hello")
            assert (await y.closed())[0] == errors.INVALID_MESSAGE
        async with bound(http, "tables") as y:
            await y.aware(1, 1, "[" * 40 + "]" * 40)  # nested past the JSON depth bound
            assert (await y.closed())[0] == errors.INVALID_MESSAGE
        async with bound(http, "tables") as y:  # still serving
            assert y.synced


async def test_an_oversized_message_is_refused_before_it_is_parsed(served: Any) -> None:
    async with served(max_body_bytes=64 * 1024) as (_, http):
        async with bound(http, "tables") as y:
            await y.ws.send_bytes(b"\x00\x02" + b"\xff" * (70 * 1024))
            assert (await y.closed())[0] == 1009


async def test_unknown_documents_and_bad_client_names_are_refused_at_the_upgrade(served: Any) -> None:
    async with served() as (_, http):
        for path, status, code in (
            ("/api/v1/yjs/payments", 404, errors.NOT_FOUND),
            ("/api/v1/yjs/orders/2999-01-01", 404, errors.NOT_FOUND),
            ("/api/v1/yjs/tables?client=no%20spaces", 422, errors.INVALID_MESSAGE),
        ):
            assert_error(await upgrade(http, path), status, code)


async def test_the_route_is_guarded_like_the_rest_of_the_api(served: Any) -> None:
    token = "t" * 32
    async with served(api_token=token) as (_, http):
        assert_error(await upgrade(http, "/api/v1/yjs/tables"), 401, errors.AUTHENTICATION_FAILED)
        assert_error(await upgrade(http, "/api/v1/yjs/tables", Origin="https://evil.example"), 403,
                     errors.PERMISSION_DENIED)
        with pytest.raises(WebSocketUpgradeError):
            async with aconnect_ws("/api/v1/yjs/tables", http):
                pass
        async with bound(http, "tables", token=token) as y:
            assert y.synced


async def test_the_writes_a_floor_plan_and_a_stock_screen_make_are_taken(served: Any) -> None:
    async with served() as (terminal, http):
        await put_table(http, "T1")
        await put_table(http, "T2")
        await put_product(http)
        replica = terminal.host.get("inventory").replica_id
        stamp = {"at": now(), "by": "pos-1"}
        def seat(doc: pycrdt.Doc) -> None:
            doc.get("table_status", type=pycrdt.Map)["T1"] = {"status": "occupied", **stamp}
            doc.get("table_guests", type=pycrdt.Map)["T1"] = {"guests": 3, **stamp}
            doc.get("table_merge", type=pycrdt.Map)["T2"] = {"into": "T1", **stamp}

        def sell_out(doc: pycrdt.Doc) -> None:
            doc.get("stock_counts", type=pycrdt.Map)[f"burger/{replica}"] = -2
            doc.get("stock_86", type=pycrdt.Map)["burger"] = {"out": True, **stamp}

        async with bound(http, "tables", client="floor") as y:
            await y.write(seat)
            await until_read(http, "/api/v1/tables/T2", lambda t: t["merged_into"] == "T1")
        t1 = (await http.get("/api/v1/tables/T1")).json()
        assert (t1["status"], t1["guests"]) == ("occupied", 3)
        async with bound(http, "inventory", client="stock") as y:
            await y.write(sell_out)
            got = await until_read(http, "/api/v1/inventory/burger", lambda s: s["out_of_stock"])
        assert got["quantity"] == -2
        audit = await until_read(http, "/api/v1/audit?entity=inventory", lambda rows: rows[-1]["user_id"] == "ui:stock")
        assert audit[-1]["after"]["quantity"] == -2


async def test_a_change_a_failed_commit_took_back_is_never_sent(served: Any, monkeypatch: Any) -> None:
    """What a client is sent was durable first: the disk refuses one commit (503 to the API), the
    bound client never sees that change, and sees the next one."""
    import sqlite3

    async with served() as (terminal, http):
        async with bound(http, "tables") as y:
            real = terminal.store._write
            failures: list[Any] = []

            async def failing(fn: Any, *args: Any) -> Any:
                if fn.__name__ == "commit" and not failures:
                    failures.append(fn)
                    raise sqlite3.OperationalError("disk I/O error")
                return await real(fn, *args)

            monkeypatch.setattr(terminal.store, "_write", failing)
            refused = await http.put("/api/v1/tables/T9", json={"name": "T9", "seats": 2, "area": None})
            assert_error(refused, 503, errors.STORAGE_UNAVAILABLE)
            await put_table(http, "T10")
            tables = y.doc.get("tables", type=pycrdt.Map)
            await y.pump(lambda: "T10" in tables)
            assert failures and "T9" not in tables


async def test_a_client_that_falls_behind_is_cut_off_with_4005(served: Any, monkeypatch: Any) -> None:
    import meshpos.ui_rooms

    monkeypatch.setattr(meshpos.ui_rooms, "QUEUE_FRAMES", 2)  # changes queue up while their commit runs
    async with served() as (terminal, http):
        async with bound(http, "tables") as y:
            async with anyio.create_task_group() as tg:
                for n in range(12):
                    tg.start_soon(put_table, http, f"T{n}")
            code, reason = await y.closed()
            assert code == errors.RATE_LIMIT and "behind" in reason
        assert terminal.ui_rooms.clients() == 0
        async with bound(http, "tables") as y:  # reconnecting syncs everything in one step 2
            assert len(y.doc.get("tables", type=pycrdt.Map)) == 12
