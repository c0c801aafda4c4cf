"""The HQ against a real PostgreSQL server: terminals of real stores link to it over loopback
mutual TLS, and what they hold lands in PostgreSQL once (docs/hq.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest

from core.errors import AUTHENTICATION_FAILED, PERMISSION_DENIED, STORAGE_UNAVAILABLE, StoreError
from core.net import bind_socket
from meshpos.hq.service import Hq
from meshpos.hq_api import access, serve_hq_api
from meshpos.terminal import Terminal
from meshpos.wan import PROVISIONAL_CHUNK, provisional_from_wire, provisional_messages
from peer.identity import Authority, save_roster
from storage import hq_rows, hq_schema
from tests.meshutil import ITEM, PRODUCT, config_for, connect_all, wait_for

pytestmark = pytest.mark.anyio


def rows(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()


async def all_linked(ts: list[Terminal]) -> None:
    """Each terminal linked to the others and to an HQ."""
    ids = {t.config.terminal_id for t in ts} | {"hq-1"}
    await wait_for(lambda: all(set(t.mesh.links) == ids - {t.config.terminal_id} for t in ts), within=20)


def store(tmp: Path, name: str, terminals: list[str]) -> tuple[Authority, Path]:
    authority = Authority.init(tmp / f"{name}-authority", name)
    for tid in terminals:
        authority.enroll(tid, "pos", tmp / name / tid)
    authority.enroll("hq-1", "hq", tmp / name / "hq-1")
    return authority, tmp / name / "hq-1"


@asynccontextmanager
async def hq_running(dsn: str, enrollments: list[Path], **kw: Any) -> AsyncIterator[Hq]:
    hq = Hq(dsn=dsn, enrollments=enrollments, listen_host="127.0.0.1", listen_port=0, **kw)
    async with hq.running():
        yield hq


@asynccontextmanager
async def terminals(tmp: Path, name: str, ids: list[str], hq: Hq | None) -> AsyncIterator[list[Terminal]]:
    async with AsyncExitStack() as stack:
        out = []
        for tid in ids:
            extra = {"hq": [f"127.0.0.1:{hq.port}"]} if hq is not None else {}
            out.append(await stack.enter_async_context(Terminal(config_for(tmp / name / tid, tid, **extra)).running()))
        yield out


async def test_orders_and_payments_land_once_and_project(tmp_path: Path, postgres_dsn: str) -> None:
    _, enrollment = store(tmp_path, "centro", ["pos-1", "pos-2"])
    async with hq_running(postgres_dsn, [enrollment]) as hq, \
            terminals(tmp_path, "centro", ["pos-1", "pos-2"], hq) as (a, b):
        connect_all([a, b])
        await all_linked([a, b])
        await a.put_product("burger", **PRODUCT)
        order = await a.create_order(table=None, waiter=None, items=[ITEM, {**ITEM, "qty": 2}])
        doc = f"orders/{order['business_day']}"
        await wait_for(lambda: b.host.get(doc) is not None and order["id"] in b.host.get(doc).ids())
        await b.set_order_status(order["id"], "sent")
        await a.cashier.open_drawer("d1", float_cents=10_000, operator="ana", op_id="open-1")
        await a.cashier.pay("d1", order_id=order["id"], amount_cents=order["total_cents"], method="card",
                            tip_cents=300, user="ana", op_id="pay-1")
        store_id = a.mesh.identity.store_id

        def landed() -> bool:
            got = rows(postgres_dsn, "SELECT status, total_cents, items_count FROM orders WHERE store_id = %s",
                       store_id)
            pays = rows(postgres_dsn, "SELECT status FROM payments WHERE store_id = %s", store_id)
            return got == [("paid", order["total_cents"], 2)] and pays == [("committed",)]

        await wait_for(lambda: landed(), within=20)
        pay = rows(postgres_dsn, "SELECT op_id, order_id, amount_cents, method, tip_cents, business_day::text "
                   "FROM payments WHERE store_id = %s", store_id)
        assert pay == [("pay-1", order["id"], order["total_cents"], "card", 300, order["business_day"])]
        assert rows(postgres_dsn, "SELECT sku, price_cents, active FROM stock WHERE store_id = %s", store_id) \
            == [("burger", 1590, True)]
        assert rows(postgres_dsn, "SELECT count(*) FROM order_items WHERE store_id = %s", store_id) == [(2,)]
        # the sync log counts an open link's traffic as it goes, not only once it closed
        open_link = a.hq_log()[0]
        assert open_link["closed_at"] is None and open_link["bytes_up"] > 0 and open_link["updates_up"] > 0, open_link
        # both terminals uploaded (each is linked to the HQ): still one row per change
        before = rows(postgres_dsn, "SELECT count(*) FROM doc_updates WHERE store_id = %s AND doc = %s", store_id, doc)
        for t in (a, b):
            t.mesh.disconnect(hq.stores[store_id].identity.terminal_id, 1001, "test: relink")
        await wait_for(lambda: all("hq-1" in t.mesh.links for t in (a, b)), within=20)
        await anyio.sleep(0.5)
        assert rows(postgres_dsn, "SELECT count(*) FROM doc_updates WHERE store_id = %s AND doc = %s",
                    store_id, doc) == before
        assert rows(postgres_dsn, "SELECT count(*) FROM ledger_entries WHERE store_id = %s", store_id) == [(2,)]
        status = await a.status()
        assert status["hq"]["configured"] and status["hq"]["linked"]
        await wait_for(lambda: a.hq_status()["pending_updates"] == 0 and a.hq_status()["pending_ledger_entries"] == 0)


async def test_two_hq_processes_land_each_change_once(tmp_path: Path, postgres_dsn: str) -> None:
    """Two HQ processes against one database, each linked to another terminal of the store, both
    receiving the same changes: the record holds each Yjs item once, and the projection is whole."""
    _, enrollment = store(tmp_path, "norte", ["pos-1", "pos-2"])
    async with hq_running(postgres_dsn, [enrollment], process="hq-a") as h1, \
            hq_running(postgres_dsn, [enrollment], process="hq-b") as h2, \
            terminals(tmp_path, "norte", ["pos-1", "pos-2"], None) as (a, b):
        a.mesh.dial(f"127.0.0.1:{h1.port}")
        b.mesh.dial(f"127.0.0.1:{h2.port}")
        connect_all([a, b])
        await all_linked([a, b])
        created = [await (a if n % 2 else b).create_order(table=None, waiter=None, items=[ITEM]) for n in range(20)]
        store_id = a.mesh.identity.store_id
        await wait_for(lambda: rows(postgres_dsn, "SELECT count(*) FROM orders WHERE store_id = %s", store_id)
                       == [(20,)], within=30)
        doc = f"orders/{created[0]['business_day']}"
        # rebuild the document from the record: every order there, and no item twice
        bodies = [bytes(r[0]) for r in rows(postgres_dsn, "SELECT body FROM doc_updates WHERE store_id = %s AND "
                                                          "doc = %s ORDER BY seq", store_id, doc)]
        import pycrdt

        rebuilt, seen = pycrdt.Doc(), {}
        for body in bodies:
            before = dict(seen)
            rebuilt.apply_update(body)
            seen = {c: k for c, k in _clocks(rebuilt).items()}
            assert seen != before, "a row of the record added nothing: it was landed twice"
        assert sorted(rebuilt.get("orders", type=pycrdt.Map).keys()) == sorted(o["id"] for o in created)
        processes = {r[0] for r in rows(postgres_dsn, "SELECT DISTINCT hq_process FROM doc_updates")}
        assert processes <= {"hq-a", "hq-b"} and processes


def _clocks(doc: Any) -> dict[int, int]:
    from core.yupdate import decode_state_vector

    return decode_state_vector(doc.get_state())


async def test_a_store_the_hq_does_not_hold_is_refused(tmp_path: Path, postgres_dsn: str) -> None:
    _, enrollment = store(tmp_path, "sul", ["pos-1"])
    store(tmp_path, "leste", ["pos-1"])
    async with hq_running(postgres_dsn, [enrollment]) as hq, terminals(tmp_path, "leste", ["pos-1"], hq) as (t,):
        address = f"127.0.0.1:{hq.port}"
        await wait_for(lambda: (t.mesh.book.by_address.get(address) is not None
                                and t.mesh.book.by_address[address].last_error is not None), within=10)
        error = t.mesh.book.by_address[address].last_error
        assert error["code"] == AUTHENTICATION_FAILED and "does not serve this store" in error["reason"], error
        leste = t.mesh.identity.store_id
        assert any(r["reason"] == f"store {leste!r} is not enrolled at this HQ" for r in hq.front.refusals)
        assert t.hq_status()["last_error"]["code"] == AUTHENTICATION_FAILED
        assert rows(postgres_dsn, "SELECT count(*) FROM stores") == [(0,)]


async def test_an_hq_that_sends_document_updates_is_cut_off(tmp_path: Path, postgres_dsn: str) -> None:
    """Terminals take no document data from an HQ (it writes only the catalog)."""
    _, enrollment = store(tmp_path, "oeste", ["pos-1"])
    async with hq_running(postgres_dsn, [enrollment]) as hq, terminals(tmp_path, "oeste", ["pos-1"], hq) as (t,):
        await wait_for(lambda: "hq-1" in t.mesh.links)
        side = next(iter(hq.stores.values()))
        link = side.mesh.links["pos-1"]
        import pycrdt

        forged = pycrdt.Doc()
        forged.get("orders", type=pycrdt.Map)["x"] = "y"
        link.session.queue_step2("tables", forged.get_update())
        link.wake.set()
        await wait_for(lambda: any(e["close"]["code"] == PERMISSION_DENIED for e in t.wan.entries() if e["close"]),
                       within=10)


async def test_postgres_down_refuses_links_and_nothing_is_lost(tmp_path: Path, postgres_server: Any) -> None:
    dsn = postgres_server.create_database("hq_down")
    _, enrollment = store(tmp_path, "praia", ["pos-1"])
    try:
        async with hq_running(dsn, [enrollment]) as hq, terminals(tmp_path, "praia", ["pos-1"], hq) as (t,):
            await wait_for(lambda: "hq-1" in t.mesh.links)
            first = await t.create_order(table=None, waiter=None, items=[ITEM])
            await wait_for(lambda: rows(dsn, "SELECT count(*) FROM orders") == [(1,)])
            postgres_server.stop()
            try:
                second = await t.create_order(table=None, waiter=None, items=[ITEM])
                await wait_for(lambda: any(e["close"] and e["close"]["code"] == STORAGE_UNAVAILABLE
                                           for e in t.wan.entries()), within=20)
                assert t.hq_status()["pending_updates"] > 0
            finally:
                postgres_server.start()
            await wait_for(lambda: rows(dsn, "SELECT order_id FROM orders ORDER BY order_id")
                           == sorted([(first["id"],), (second["id"],)]), within=30)
            await wait_for(lambda: t.hq_status()["pending_updates"] == 0, within=15)
    finally:
        postgres_server.drop_database("hq_down")


@asynccontextmanager
async def hq_api(hq: Hq, token: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The HQ API on a real loopback socket, and a client for it."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    shutdown = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_hq_api(hq, sock, access("127.0.0.1", port, token), shutdown=shutdown))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(100):
                try:
                    await client.get("/openapi.json")
                    break
                except httpx.TransportError:
                    await anyio.sleep(0.05)
            try:
                yield client
            finally:
                shutdown.set()


async def test_catalog_written_at_hq_reaches_the_store_and_the_api_reports(tmp_path: Path, postgres_dsn: str) -> None:
    _, enrollment = store(tmp_path, "mercado", ["pos-1"])
    async with hq_running(postgres_dsn, [enrollment]) as hq, hq_api(hq) as api, \
            terminals(tmp_path, "mercado", ["pos-1"], hq) as (t,):
        store_id = t.mesh.identity.store_id
        await t.put_product("burger", **{**PRODUCT, "station": "grill"})
        await wait_for(lambda: "hq-1" in t.mesh.links)
        answer = await api.put(f"/hq/v1/stores/{store_id}/catalog/burger",
                               json={"name": "Burger deluxe", "price_cents": 2190, "active": True})
        assert answer.status_code == 200, answer.text
        await wait_for(lambda: t.inventory.product("burger")["price_cents"] == 2190)
        product = t.inventory.product("burger")
        assert product["name"] == "Burger deluxe" and product["station"] == "grill"  # the store's fields stay
        for _ in range(100):  # the in-memory write is seen first; its audit row commits with it
            audit = await t.store.audit_rows(entity="inventory", entity_id="burger", after=0, limit=10)
            if any(row["user_id"] == "hq:hq-1" for row in audit):
                break
            await anyio.sleep(0.05)
        assert [row["user_id"] for row in audit][-1] == "hq:hq-1", audit
        # a new sku written at HQ before the store has it
        await api.put(f"/hq/v1/stores/{store_id}/catalog/fries", json={"name": "Fries", "price_cents": 650})
        await wait_for(lambda: "fries" in t.inventory.catalog)
        # bad input: a price that is no integer, a negative one, an unknown store, a bad sku
        for body in ({"name": "x", "price_cents": 12.5}, {"name": "x", "price_cents": -1},
                     {"name": "", "price_cents": 1}, {"name": "x", "price_cents": 1, "extra": 1}):
            bad = await api.put(f"/hq/v1/stores/{store_id}/catalog/burger", json=body)
            assert bad.status_code == 422 and set(bad.json()) == {"code", "message"}, (body, bad.text)
        assert (await api.put("/hq/v1/stores/0123456789abcdef/catalog/burger",
                              json={"name": "x", "price_cents": 1})).status_code == 404
        assert (await api.put(f"/hq/v1/stores/{store_id}/catalog/bad%20sku",
                              json={"name": "x", "price_cents": 1})).status_code == 422
        assert (await api.put(f"/hq/v1/stores/{store_id}/catalog/burger", content=b'{"name":"x","price_cents":1}',
                              headers={"content-type": "text/plain"})).status_code == 415
        assert t.inventory.product("burger")["price_cents"] == 2190
        # the sales report and the stores list
        order = await t.create_order(table=None, waiter=None, items=[{**ITEM, "unit_price_cents": 2190}])
        await t.cashier.open_drawer("d1", float_cents=0, operator="ana")
        await t.cashier.pay("d1", order_id=order["id"], amount_cents=2190, method="pix", tip_cents=100, user="ana")
        day = order["business_day"]

        async def report() -> dict[str, Any]:
            answer = await api.get("/hq/v1/reports/sales", params={"from": day, "to": day})
            assert answer.status_code == 200, answer.text
            return answer.json()

        for _ in range(200):
            days = (await report())["days"]
            if days and days[0]["payments"] == 1 and days[0]["orders"] == 1:
                break
            await anyio.sleep(0.05)
        assert days == [{"store_id": store_id, "business_day": day, "orders": 1, "cancellations": 0,
                         "voided_items": 0, "revenue_cents": 2190, "tips_cents": 100, "by_method": {"pix": 2190},
                         "payments": 1, "in_review": 0, "provisional": 0, "provisional_cents": 0}]
        assert (await api.get("/hq/v1/reports/sales", params={"from": day, "to": "2020-01-01"})).status_code == 422
        assert (await api.get("/hq/v1/reports/sales", params={"from": day})).status_code == 422
        stores = (await api.get("/hq/v1/stores")).json()
        assert [(s["store_id"], s["name"], s["linked"]) for s in stores] == [(store_id, "mercado", ["pos-1"])]
        assert "pos-1" in stores[0]["terminals_seen"] and stores[0]["last_contact_at"]
        status = (await api.get("/hq/v1/status")).json()
        assert "password" not in str(status) and status["stores"][store_id]["linked"] == ["pos-1"]
        spec = (await api.get("/openapi.json")).json()
        assert set(spec["paths"]) >= {"/hq/v1/stores", "/hq/v1/reports/sales", "/hq/v1/stores/{store}/catalog/{sku}"}
        # the guard: another Host, another origin
        assert (await api.get("/hq/v1/stores", headers={"host": "evil.example"})).status_code in (400, 421, 403)
        assert (await api.get("/hq/v1/stores", headers={"origin": "http://evil.example"})).status_code == 403


async def test_provisional_payments_show_at_hq_until_their_reconciled_entries_land(
        tmp_path: Path, postgres_dsn: str) -> None:
    """pos-1 alone of three voters (no majority) but linked to the HQ: what it takes provisionally
    goes up and shows as provisional (all_payments, the sales report); once pos-2 is back the
    reconciled entries land and settle those rows, each once - an upload again adds nothing."""
    authority, enrollment = store(tmp_path, "praia", ["pos-1", "pos-2", "pos-3"])
    for tid in ("pos-1", "pos-2", "pos-3"):
        save_roster(tmp_path / "praia" / tid, authority.roster)
    async with hq_running(postgres_dsn, [enrollment]) as hq, \
            terminals(tmp_path, "praia", ["pos-1"], hq) as (a,):
        store_id = a.mesh.identity.store_id
        await wait_for(lambda: "hq-1" in a.mesh.links, within=20)
        await a.put_product("burger", **PRODUCT)
        order = await a.create_order(table=None, waiter=None, items=[ITEM])
        opened = await a.cashier.open_drawer("d1", float_cents=5_000, operator="ana", op_id="open-p",
                                             allow_provisional=True)
        paid = await a.cashier.pay("d1", order_id=order["id"], amount_cents=order["total_cents"], method="cash",
                                   tip_cents=50, user="ana", op_id="pay-p", allow_provisional=True)
        assert opened["entry"]["status"] == paid["entry"]["status"] == "provisional"
        query = "SELECT op_id, terminal_id, status, position, amount_cents FROM all_payments WHERE store_id = %s"
        await wait_for(lambda: rows(postgres_dsn, query, store_id) == [
            ("pay-p", "pos-1", "provisional", None, order["total_cents"])], within=20)
        assert rows(postgres_dsn, "SELECT op_id, kind, position FROM provisional_entries WHERE store_id = %s "
                    "ORDER BY op_id", store_id) == [("open-p", "drawer_opened", None), ("pay-p", "payment", None)]
        day = rows(postgres_dsn, "SELECT business_day::text FROM provisional_entries WHERE op_id = 'pay-p'")
        assert day == [(order["business_day"],)]
        report = await hq.db.run(hq_rows.sales, order["business_day"], order["business_day"], store_id)
        assert (report[0]["provisional"], report[0]["provisional_cents"], report[0]["payments"]) \
            == (1, order["total_cents"], 0)
        # the link again: the same entries go up again and land nowhere new
        a.mesh.disconnect("hq-1", 1001, "test: relink")
        await wait_for(lambda: "hq-1" in a.mesh.links, within=20)
        await anyio.sleep(0.5)
        assert rows(postgres_dsn, "SELECT count(*) FROM provisional_entries WHERE store_id = %s", store_id) == [(2,)]
        # a majority again: reconciled, relayed, landed - and the provisional rows are settled
        async with terminals(tmp_path, "praia", ["pos-2"], hq) as (b,):
            connect_all([a, b])
            await wait_for(lambda: not a.cashier.provisional_pending(), within=30)
            settled = "SELECT op_id, position FROM provisional_entries WHERE store_id = %s ORDER BY op_id"
            await wait_for(lambda: all(p is not None for _, p in rows(postgres_dsn, settled, store_id)), within=20)
            landed = dict(rows(postgres_dsn, "SELECT entry->>'op_id', position FROM ledger_entries "
                               "WHERE store_id = %s", store_id))
            assert dict(rows(postgres_dsn, settled, store_id)) == {"open-p": landed["open-p"],
                                                                   "pay-p": landed["pay-p"]}
            assert rows(postgres_dsn, query, store_id) == [
                ("pay-p", "pos-1", "committed", landed["pay-p"], order["total_cents"])]
            report = await hq.db.run(hq_rows.sales, order["business_day"], order["business_day"], store_id)
            assert (report[0]["provisional"], report[0]["payments"]) == (0, 1)


def test_a_provisional_upload_is_checked_before_anything_lands() -> None:
    """A terminal uploads only entries it took itself, of the drawer it names, well-formed, and
    at most a chunk of them (a refusal closes its link; nothing lands)."""
    entry = {"kind": "payment", "op_id": "p1", "drawer": "d1", "terminal_id": "pos-1", "user_id": "ana",
             "at": "2026-12-06T10:00:00.000Z", "status": "committed", "order_id": "x", "amount_cents": 100,
             "method": "cash", "tip_cents": 0, "order_total_cents": 0,
             "provisional": {"terminal_id": "pos-1", "created_at": "2026-12-06T10:00:00.000Z", "reason": "no quorum"}}
    good = {"type": "hq", "m": "provisional", "drawer": "d1", "entries": [entry]}
    assert provisional_from_wire(good, "pos-1") == ("d1", [entry])
    assert provisional_messages("d1", [entry] * (PROVISIONAL_CHUNK + 1))[1]["entries"] == [entry]
    for bad, sender in [(good, "pos-2"),  # another terminal's
                        ({**good, "drawer": "d2"}, "pos-1"),  # another drawer's
                        ({**good, "drawer": "../x"}, "pos-1"),
                        ({**good, "entries": [entry] * (PROVISIONAL_CHUNK + 1)}, "pos-1"),
                        ({**good, "entries": [{**entry, "amount_cents": -1}]}, "pos-1"),
                        ({**good, "entries": [{k: v for k, v in entry.items() if k != "provisional"}]}, "pos-1"),
                        ({**good, "entries": "x"}, "pos-1")]:
        with pytest.raises(ValueError):
            provisional_from_wire(bad, sender)


async def test_the_dsn_password_is_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from simulations.postgres import PostgresServer

    caplog.set_level("DEBUG")
    _, enrollment = store(tmp_path, "segredo", ["pos-1"])
    with PostgresServer(password="s3cr3t-Pa55") as server:
        dsn = server.dsn()
        async with hq_running(dsn, [enrollment]) as hq:
            assert "s3cr3t-Pa55" not in str(hq.status())
        server.stop()
        with pytest.raises(StoreError) as raised:
            async with hq_running(dsn, [enrollment]):
                pass
        assert "s3cr3t-Pa55" not in str(raised.value) and "not reachable" in str(raised.value)
    assert "s3cr3t-Pa55" not in caplog.text


async def test_what_postgresql_refuses_does_not_stop_the_landing(tmp_path: Path, postgres_dsn: str) -> None:
    """A NUL character in a note (PostgreSQL's text and jsonb refuse it) is made safe in the
    projection; the record lands, the link stays up, the terminal counts nothing pending."""
    _, enrollment = store(tmp_path, "nulo", ["pos-1"])
    async with hq_running(postgres_dsn, [enrollment]) as hq, terminals(tmp_path, "nulo", ["pos-1"], hq) as (t,):
        await wait_for(lambda: "hq-1" in t.mesh.links)
        order = await t.create_order(table=None, waiter=None, items=[ITEM], notes="sem\x00sal")
        await wait_for(lambda: rows(postgres_dsn, "SELECT view->>'notes' FROM orders") == [("sem\ufffdsal",)])
        await wait_for(lambda: t.hq_status()["pending_updates"] == 0)
        assert "hq-1" in t.mesh.links and not any(e["close"] for e in t.wan.entries())
        assert order["id"] == rows(postgres_dsn, "SELECT order_id FROM orders")[0][0]


def test_a_terminal_without_an_hq_says_so() -> None:
    from meshpos.wan import WanView

    status = WanView([]).status(linked=[], documents={"tables": b"\x01\x01\x01"}, ledgers={"d": 3}, last_error=None)
    assert status["configured"] is False and status["pending_updates"] is None


def test_the_schema_migrates_in_order_once_and_refuses_a_newer_one(postgres_dsn: str) -> None:
    """A database at version 1 (before provisional entries) is brought to the current version;
    again is a no-op; one that a newer meshpos migrated is refused rather than written."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        with conn.transaction():  # what a version-1 HQ left
            conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, "
                         "applied_at timestamptz NOT NULL DEFAULT now())")
            conn.execute(hq_schema.MIGRATIONS[0])
            conn.execute("INSERT INTO schema_migrations (version) VALUES (1)")
        assert hq_schema.migrate(conn) == 1
        assert hq_schema.migrate(conn) == hq_schema.VERSION == 2
        assert conn.execute("SELECT count(*) FROM all_payments").fetchone() == (0,)
        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (hq_schema.VERSION + 1,))
        with pytest.raises(hq_schema.SchemaTooNew):
            hq_schema.migrate(conn)


async def test_a_replaced_link_is_closed_in_both_logs(tmp_path: Path, postgres_dsn: str) -> None:
    """A new link that takes the place of one whose end was never seen (a reboot of either side
    links again first) closes the old one in the HQ's link_log and in the terminal's sync log."""
    _, enrollment = store(tmp_path, "porto", ["pos-1"])
    async with hq_running(postgres_dsn, [enrollment]) as hq, terminals(tmp_path, "porto", ["pos-1"], hq) as (t,):
        await wait_for(lambda: "hq-1" in t.mesh.links, within=20)
        side = hq.stores[t.mesh.identity.store_id]
        await wait_for(lambda: "pos-1" in side.link_ids)
        first = side.link_ids["pos-1"]
        await hq._linked(side, "pos-1")  # noqa: SLF001 - what the mesh calls for a replacing link
        await wait_for(lambda: rows(postgres_dsn, "SELECT close_code FROM link_log WHERE id = %s", first) == [(4004,)])
        assert rows(postgres_dsn, "SELECT count(*) FROM link_log WHERE closed_at IS NULL") == [(1,)]
        t.wan.linked("hq-1", "127.0.0.1:1", "2026-12-06T12:00:00.000Z")  # the terminal's side of the same
        newest, replaced = t.hq_log()[:2]
        assert newest["closed_at"] is None and replaced["close"] == {"code": 4004, "reason": "replaced by a new link"}
        assert replaced["closed_at"] == "2026-12-06T12:00:00.000Z"


async def test_a_link_to_the_hq_holds_no_catch_up_a_lan_peer_would_wait_for(tmp_path: Path, postgres_dsn: str) -> None:
    """An HQ answers a step 1 with its own, never with data: a terminal that links to it first
    must not make its LAN peers' catch-ups wait behind it."""
    _, enrollment = store(tmp_path, "lago", ["pos-1", "pos-2"])
    async with hq_running(postgres_dsn, [enrollment]) as hq, \
            terminals(tmp_path, "lago", ["pos-1"], hq) as (a,):
        await wait_for(lambda: "hq-1" in a.mesh.links, within=20)
        assert not any(link.peer_type == "hq" for link in a.mesh.syncing.core.holders().values())
        async with terminals(tmp_path, "lago", ["pos-2"], None) as (b,):
            await b.put_product("burger", **PRODUCT)
            connect_all([a, b])
            await wait_for(lambda: "burger" in a.inventory.catalog, within=20)


async def test_an_idle_archived_day_is_let_go_of_and_loads_again_when_needed(tmp_path: Path, postgres_dsn: str) -> None:
    """An HQ process holds its stores' live days; an archived day nobody touched for a while is
    dropped from memory (the record has it), and the next change to it loads it again and lands."""
    _, enrollment = store(tmp_path, "serra", ["pos-1"])
    later = lambda: datetime.now(UTC) + timedelta(days=3)  # noqa: E731 - the HQ's today is 3 days on
    async with hq_running(postgres_dsn, [enrollment], clock=later) as hq, \
            terminals(tmp_path, "serra", ["pos-1"], hq) as (t,):
        store_id = t.mesh.identity.store_id
        side = hq.stores[store_id]
        await t.put_product("burger", **PRODUCT)
        order = await t.create_order(table=None, waiter=None, items=[ITEM])
        doc = f"orders/{order['business_day']}"
        status = "SELECT status FROM orders WHERE store_id = %s"
        await wait_for(lambda: rows(postgres_dsn, status, store_id) == [("open",)], within=20)
        assert hq.evict_idle(3600) == {}  # touched just now: kept
        assert doc in side.replica.names()
        gone: list[str] = []  # archived days to this HQ (the terminal holds yesterday too), once nothing lands

        def evicted() -> bool:
            gone.extend(hq.evict_idle(0).get(store_id, []))
            return doc in gone

        await wait_for(evicted, within=20)
        assert all(n.startswith("orders/") for n in gone), gone
        assert doc not in side.replica.names() and "tables" in side.replica.names()  # live ones stay
        await t.set_order_status(order["id"], "sent")  # the next change loads it from the record
        await wait_for(lambda: rows(postgres_dsn, status, store_id) == [("sent",)], within=20)
        assert doc in side.replica.names()
        await wait_for(lambda: t.hq_status()["pending_updates"] == 0, within=20)
