"""A malformed entity in a document never breaks a listing, and order totals stay exact JS numbers.

Each test runs a real terminal (real SQLite files, the API on a real loopback socket) and writes a
malformed value into one of its documents the way a peer does: the change is made on a separate
pycrdt document holding the same state, and the resulting update goes through
``DocumentHost.apply_remote``, the path peer updates take.  An update that path refuses by its
shape (a ``Y.Map`` where a plain value belongs) is stored through a local transaction instead, as
a database written before peer updates were shape-checked holds it.  Then: the listing answers 200
with the valid entities, status shows the malformed one with its reason, a direct read and a
write answer 409 / 4010 and write nothing, the log warns once, and a valid value clears it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import pycrdt
import pytest

from core.codec import decode_json, embed_json, encode_json
from core.errors import (
    CONFLICT_RESOLUTION_FAILED,
    INVALID_MESSAGE,
    INVALID_TRANSITION,
    InvalidTransition,
)
from meshpos.documents.host import durable
from meshpos.documents.orders import DEFERRED, MAX_ORDER_ITEMS, MAX_ORDER_TOTAL_CENTS, order_stamp, resolve_event
from meshpos.documents.reading import MALFORMED_SHOWN
from meshpos.terminal import Terminal
from storage.store import StoredEvent

pytestmark = pytest.mark.anyio

BURGER: dict[str, Any] = {"sku": "burger", "name": "Burger", "qty": 2, "unit_price_cents": 1590}
FRIES: dict[str, Any] = {"sku": "fries", "name": "Fries", "qty": 1, "unit_price_cents": 450}
PEER_ORIGIN = "peer:pos-9"
Mutate = Callable[[pycrdt.Doc], None]


# -- helpers ------------------------------------------------------------------------------------------


async def as_peer(terminal: Terminal, name: str, mutate: Mutate) -> list[Any]:
    """Make ``mutate``'s change on a peer's copy of ``name`` and hand the update to the terminal as
    a peer's update; returns the events stored with it."""
    peer = pycrdt.Doc()
    peer.apply_update(terminal.host.diff(name))
    before = peer.get_state()
    with peer.transaction():
        mutate(peer)
    update = peer.get_update(before)
    try:
        ticket = terminal.host.apply_remote(name, [update], PEER_ORIGIN)
    except ValueError:  # refused by its shape before pycrdt saw it: stored as an older database holds it
        model = terminal.host.get(name)
        assert model is not None
        _, ticket = terminal.host.write(name, lambda: model.doc.apply_update(update), None)
    return await durable(ticket)


def order_map(doc: pycrdt.Doc, order_id: str) -> pycrdt.Map:
    return doc.get("orders", type=pycrdt.Map)[order_id]


def root(doc: pycrdt.Doc, name: str) -> pycrdt.Map:
    return doc.get(name, type=pycrdt.Map)


async def stored(client: httpx.AsyncClient) -> tuple[int, int, int]:
    storage = (await client.get("/api/v1/status")).json()["storage"]
    return storage["updates"], storage["events"], storage["audit"]


async def malformed(client: httpx.AsyncClient, doc: str) -> dict[str, Any]:
    resp = await client.get("/api/v1/status")
    assert resp.status_code == 200, resp.text
    return resp.json()["documents"][doc]["malformed"]


def assert_refused(resp: httpx.Response, what: str) -> str:
    """409 / 4010 saying the entity is malformed in the document."""
    assert resp.status_code == 409, resp.text
    body = resp.json()
    assert set(body) == {"code", "message"} and body["code"] == CONFLICT_RESOLUTION_FAILED, body
    assert body["message"].startswith(what) and " is malformed in document " in body["message"], body
    return body["message"]


def warnings_about(caplog: pytest.LogCaptureFixture, entity_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.levelno == logging.WARNING and "malformed" in r.getMessage() and repr(entity_id) in r.getMessage()]


async def create_order(client: httpx.AsyncClient, *items: dict[str, Any], table: str = "T1") -> dict[str, Any]:
    resp = await client.post("/api/v1/orders", json={"table": table, "waiter": "ana", "items": list(items or [BURGER])})
    assert resp.status_code == 201, resp.text
    return resp.json()


def record_of(doc: pycrdt.Doc, order_id: str) -> dict[str, Any]:
    return decode_json(order_map(doc, order_id)["order"])


def set_record(order_id: str, change: Callable[[dict[str, Any]], Any]) -> Mutate:
    """Rewrite the order's record with ``change`` applied (JSON text, as a writer would)."""
    def mutate(doc: pycrdt.Doc) -> None:
        record = record_of(doc, order_id)
        change(record)
        order_map(doc, order_id)["order"] = encode_json(record)

    return mutate


def set_key(order_id: str, key: str, value: Any) -> Mutate:
    def mutate(doc: pycrdt.Doc) -> None:
        order_map(doc, order_id)[key] = value

    return mutate


def set_item(order_id: str, **fields: Any) -> Mutate:
    return set_record(order_id, lambda r: r["items"][0].update(fields))


# -- orders: one case per kind of malformation --------------------------------------------------------

ORDER_CASES: dict[str, tuple[Callable[[str], Mutate], str]] = {
    # wrong CRDT type: a plain object or a Y.Map where JSON text is expected
    "record as a plain object": (
        lambda oid: lambda doc: order_map(doc, oid).__setitem__("order", record_of(doc, oid)),
        "order must be JSON text (a string), got an object"),
    "record as a Y.Map": (
        lambda oid: lambda doc: order_map(doc, oid).__setitem__("order", pycrdt.Map({"id": oid})),
        "order must be JSON text (a string), got an object"),
    "record that is not JSON": (lambda oid: set_key(oid, "order", "{id: 1"), "order: "),
    "record that is a JSON array": (lambda oid: set_key(oid, "order", "[1, 2]"), "expected a JSON object record"),
    "record nested 40 deep": (lambda oid: set_key(oid, "order", "[" * 40 + "]" * 40), "nested deeper than 32"),
    "record without created_at": (lambda oid: set_record(oid, lambda r: r.pop("created_at")),
                                  "order.created_at must be a string, got null"),
    "record with a number for waiter": (lambda oid: set_record(oid, lambda r: r.update(waiter=7)),
                                        "waiter must be a string or null, got a number"),
    "business day that is not the id's": (lambda oid: set_record(oid, lambda r: r.update(business_day="1999-01-01")),
                                          "is not the day of the order id"),
    "fractional qty": (lambda oid: set_item(oid, qty=2.5), "qty must be an integer, got 2.5"),
    "qty as a string": (lambda oid: set_item(oid, qty="2"), "qty must be an integer, got a string"),
    "item without modifiers": (lambda oid: set_record(oid, lambda r: r["items"][0].pop("modifiers")),
                               "modifiers must be an array, got null"),
    "modifier price below 0": (lambda oid: set_item(oid, modifiers=[{"name": "x", "price_cents": -5}]),
                               "modifier price_cents must be in 0..100000000, got -5"),
    "unit price over the bound": (lambda oid: set_item(oid, unit_price_cents=100_000_001),
                                  "unit_price_cents must be in 0..100000000"),
    "item id off the pattern": (lambda oid: set_item(oid, id="a/b"), "item id in order must be an id"),
    "batch that is not an array": (lambda oid: set_key(oid, "items:k3v9x2aa", '{"id": "r8d2fh0m"}'),
                                   "expected a JSON array"),
    "item id twice": (lambda oid: lambda doc: order_map(doc, oid).__setitem__(
        "items:k3v9x2aa", encode_json(record_of(doc, oid)["items"])), "appears twice"),
    "stage without at": (lambda oid: set_key(oid, "stage:sent", '{"by": "pos-9"}'),
                         "stage:sent: at must be a string, got null"),
    "void as a plain object": (lambda oid: lambda doc: order_map(doc, oid).__setitem__(
        f"void:{record_of(doc, oid)['items'][0]['id']}", {"reason": "x", "at": "t", "by": "pos-9"}),
        "must be JSON text (a string), got an object"),
    "table register that is a number": (lambda oid: set_key(oid, "table", 5), "table must be an id"),
    # bounds: a total no JS number holds exactly is never served
    "total over the bound": (lambda oid: set_record(oid, lambda r: r["items"].extend(
        {**r["items"][0], "id": f"b1g{n:05d}", "qty": 10_000, "unit_price_cents": 100_000_000} for n in range(2))),
        f"total of {2 * 10**12 + 2 * 1590 + 450} cents is over {MAX_ORDER_TOTAL_CENTS * 10}"),
}


@pytest.mark.parametrize("case", ORDER_CASES)
async def test_a_malformed_order_is_skipped_counted_refused_and_repaired(
    served: Any, case: str, caplog: pytest.LogCaptureFixture,
) -> None:
    breaks, reason = ORDER_CASES[case]
    caplog.set_level(logging.INFO, logger="meshpos.documents")
    async with served() as (terminal, client):
        good = await create_order(client)
        bad = await create_order(client, BURGER, FRIES)
        doc = f"orders/{bad['business_day']}"
        peer_copy = pycrdt.Doc()
        peer_copy.apply_update(terminal.host.diff(doc))
        valid_record = order_map(peer_copy, bad["id"])["order"]

        await as_peer(terminal, doc, breaks(bad["id"]))
        for _ in range(3):  # a UI and a monitor polling: one warning in all
            listing = await client.get("/api/v1/orders")
            assert listing.status_code == 200, listing.text
            assert [o["id"] for o in listing.json()] == [good["id"]]
            assert_refused(await client.get(f"/api/v1/orders/{bad['id']}"), f"order {bad['id']!r}")
            shown = await malformed(client, doc)
            assert shown["count"] == 1 and [e["id"] for e in shown["entities"]] == [bad["id"]], shown
            assert reason in shown["entities"][0]["reason"], shown
            assert shown["entities"][0]["first_seen_at"].endswith("Z")
        assert len(warnings_about(caplog, bad["id"])) == 1, [r.getMessage() for r in caplog.records]
        assert reason in warnings_about(caplog, bad["id"])[0].getMessage()
        assert (await client.get("/api/v1/orders", params={"table": "T1"})).status_code == 200

        # writes to it fail cleanly: nothing stored, nothing changed
        before = await stored(client)
        assert_refused(await client.patch(f"/api/v1/orders/{bad['id']}", json={"status": "sent"}), "order")
        assert_refused(await client.post(f"/api/v1/orders/{bad['id']}/items", json={"items": [FRIES]}), "order")
        assert_refused(await client.post(f"/api/v1/orders/{bad['id']}/cancel", json={"reason": "x"}), "order")
        assert await stored(client) == before

        def repair(peer: pycrdt.Doc) -> None:  # valid values over the broken ones
            order = order_map(peer, bad["id"])
            for key in list(order.keys()):
                if key != "order":
                    del order[key]
            order["order"] = valid_record

        events = await as_peer(terminal, doc, repair)
        assert [e.type for e in events] == ["order:updated"] and events[0].payload["order"] == bad
        assert (await malformed(client, doc)) == {"count": 0, "entities": []}
        assert [o["id"] for o in (await client.get("/api/v1/orders")).json()] == [good["id"], bad["id"]]
        assert (await client.get(f"/api/v1/orders/{bad['id']}")).json() == bad


@pytest.mark.parametrize("value", ["not a map", 42, {"order": "{}"}], ids=["text", "number", "plain object"])
async def test_a_value_under_an_order_id_that_is_not_an_order_map(served: Any, value: Any) -> None:
    async with served() as (terminal, client):
        good = await create_order(client)
        doc = f"orders/{good['business_day']}"
        bogus = good["id"][:9] + "zzzzzzzzzzzzzzzzzzz"
        events = await as_peer(terminal, doc, lambda d: root(d, "orders").__setitem__(bogus, value))
        assert events == []
        assert [o["id"] for o in (await client.get("/api/v1/orders")).json()] == [good["id"]]
        assert_refused(await client.get(f"/api/v1/orders/{bogus}"), "order")
        shown = await malformed(client, doc)
        assert shown["count"] == 1 and "expected an order map (a Y.Map)" in shown["entities"][0]["reason"]
        # deleted by a client: no longer counted
        await as_peer(terminal, doc, lambda d: root(d, "orders").__delitem__(bogus))
        assert (await client.get("/api/v1/orders")).status_code == 200
        assert (await malformed(client, doc))["count"] == 0


async def test_an_order_id_off_the_pattern_or_of_another_day(served: Any) -> None:
    async with served() as (terminal, client):
        good = await create_order(client)
        doc = f"orders/{good['business_day']}"
        peer = pycrdt.Doc()
        peer.apply_update(terminal.host.diff(doc))
        record = record_of(peer, good["id"])
        off_pattern = "not-an-order-id"
        other_day = "19990101" + good["id"][8:]

        def add(d: pycrdt.Doc) -> None:
            root(d, "orders")[off_pattern] = pycrdt.Map({"order": encode_json({**record, "id": off_pattern})})
            root(d, "orders")[other_day] = pycrdt.Map(
                {"order": encode_json({**record, "id": other_day, "business_day": "1999-01-01"})})

        await as_peer(terminal, doc, add)
        assert [o["id"] for o in (await client.get("/api/v1/orders")).json()] == [good["id"]]
        reasons = {e["id"]: e["reason"] for e in (await malformed(client, doc))["entities"]}
        assert "the order id must match" in reasons[off_pattern]
        assert f"names business day 1999-01-01; this document holds {good['business_day']}" in reasons[other_day]


async def test_one_malformed_order_does_not_cost_the_events_of_the_others(served: Any) -> None:
    """One peer transaction touches a valid and a malformed order: the valid one's event is stored."""
    async with served() as (terminal, client):
        a = await create_order(client)
        b = await create_order(client)
        doc = f"orders/{a['business_day']}"

        def both(d: pycrdt.Doc) -> None:
            order_map(d, a["id"])["stage:sent"] = encode_json({"at": "2026-11-23T12:00:00.000Z", "by": "pos-9"})
            order_map(d, b["id"])["stage:sent"] = encode_json({"by": "pos-9"})  # no "at"

        events = await as_peer(terminal, doc, both)
        assert [(e.type, e.payload["order_id"]) for e in events] == [("order:updated", a["id"])]
        assert events[0].payload["order"]["status"] == "sent"
        assert (await malformed(client, doc))["entities"][0]["id"] == b["id"]


def new_order_like(source_id: str, new_id: str) -> Mutate:
    """A peer's new order under ``new_id``: ``source_id``'s record renamed, created by pos-9."""
    def mutate(doc: pycrdt.Doc) -> None:
        record = {**record_of(doc, source_id), "id": new_id, "created_by": "pos-9"}
        root(doc, "orders")[new_id] = pycrdt.Map({"order": encode_json(record)})

    return mutate


@pytest.mark.parametrize("case", ORDER_CASES)
async def test_a_new_order_a_peer_wrote_malformed_reads_as_order_malformed_at_its_cursor(
    served: Any, case: str,
) -> None:
    """A peer's new orders are stored with their map's JSON and built when read: the valid one reads
    as the view GET serves, the malformed one as ``order:malformed`` with the reason, at its own
    cursor - no gap, nothing raised - and the document treats it as any malformed order."""
    breaks, reason = ORDER_CASES[case]
    async with served() as (terminal, client):
        good = await create_order(client, BURGER, FRIES)
        doc = f"orders/{good['business_day']}"
        ok_id, bad_id = good["id"][:9] + "z" * 18 + "0", good["id"][:9] + "z" * 18 + "1"
        cursor = terminal.store.last_cursor

        def both(d: pycrdt.Doc) -> None:
            new_order_like(good["id"], ok_id)(d)
            new_order_like(good["id"], bad_id)(d)
            breaks(bad_id)(d)

        kept = await as_peer(terminal, doc, both)
        assert [(e.type, e.payload["order_id"], sorted(e.payload)) for e in kept] == [
            ("order:created", ok_id, ["order_id", DEFERRED]), ("order:created", bad_id, ["order_id", DEFERRED])]
        async with terminal.events.subscribe(cursor) as stream:
            got = [await anext(stream), await anext(stream)]
        assert [e.cursor for e in got] == [cursor + 1, cursor + 2]
        ok_view = (await client.get(f"/api/v1/orders/{ok_id}")).json()
        assert (got[0].type, got[0].payload) == ("order:created", {"order_id": ok_id, "order": ok_view})
        assert ok_view["created_by"] == "pos-9" and ok_view["items"] == good["items"]
        assert got[1].type == "order:malformed" and set(got[1].payload) == {"order_id", "original_type", "message"}
        assert got[1].payload["order_id"] == bad_id and got[1].payload["original_type"] == "order:created"
        assert got[1].payload["message"].startswith(f"order {bad_id!r} is malformed: "), got[1].payload
        assert reason in got[1].payload["message"], got[1].payload
        assert [o["id"] for o in (await client.get("/api/v1/orders")).json()] == [good["id"], ok_id]
        shown = await malformed(client, doc)
        assert [e["id"] for e in shown["entities"]] == [bad_id] and reason in shown["entities"][0]["reason"]


async def test_a_peers_new_order_is_built_once_for_every_live_reader_and_the_same_when_replayed(
    served: Any,
) -> None:
    async with served() as (terminal, client):
        good = await create_order(client)
        doc = f"orders/{good['business_day']}"
        new_id = good["id"][:9] + "z" * 19
        cursor = terminal.store.last_cursor
        seen = terminal.metrics.propagation.count
        async with terminal.events.subscribe() as one, terminal.events.subscribe() as two:
            await as_peer(terminal, doc, new_order_like(good["id"], new_id))
            first, second = await anext(one), await anext(two)
        assert first is second and first.payload["order"]["id"] == new_id  # one build, shared
        # the propagation metric read the creator and the time without a view: counted, not ours
        assert terminal.metrics.propagation.count == seen + 1
        async with terminal.events.subscribe(cursor) as replay:  # from the stored row
            again = await anext(replay)
        assert again is not first and (again.cursor, again.type, again.payload) == (
            first.cursor, first.type, first.payload)
        async with terminal.events.subscribe(cursor, resolved=False) as raw:  # ids only: nothing built
            stored_row = await anext(raw)
        assert stored_row.type == "order:created" and sorted(stored_row.payload) == ["order_id", DEFERRED]
    # stored as a JSON object in place, not as text escaped inside a string; the text form of the
    # rows earlier versions stored, and the in-memory form live subscribers get, read the same
    stored_map = stored_row.payload[DEFERRED]
    assert isinstance(stored_map, dict) and isinstance(stored_map["order"], str)
    for form in (encode_json(stored_map), embed_json(encode_json(stored_map))):
        event = StoredEvent(first.cursor, "order:created", first.at, {"order_id": new_id, DEFERRED: form})
        resolve_event(event)
        assert (event.type, event.payload) == (first.type, first.payload)


def test_resolving_an_event_never_raises_and_leaves_complete_events_alone() -> None:
    done = StoredEvent(1, "order:created", "t", {"order_id": "x", "order": {"id": "x"}})
    resolve_event(done)
    assert done.payload == {"order_id": "x", "order": {"id": "x"}}
    for payload in ({"order_id": 7, DEFERRED: "{}"}, {"order_id": "x", DEFERRED: None},
                    {"order_id": "20261206-" + "z" * 19, DEFERRED: "[" * 5000}, {DEFERRED: "{}"}):
        event = StoredEvent(2, "order:created", "t", dict(payload))
        resolve_event(event)
        assert event.type == "order:malformed" and event.payload["original_type"] == "order:created"
        assert "is malformed: " in event.payload["message"] and len(event.payload["message"]) < 400
    # the propagation metric's read: a deferred event's time is its id's, whatever its JSON holds
    assert order_stamp({"order_id": "20261206-" + "0" * 8 + "1" + "z" * 10, DEFERRED: "not json"}) == (0.001, None)
    for order_id in (None, 7, "20261206-" + "u" * 19):
        payload = {DEFERRED: "{}"} if order_id is None else {"order_id": order_id, DEFERRED: "{}"}
        assert order_stamp(payload) == (None, None)
    assert order_stamp({"order": {"created_at": "2026-12-06T12:00:00.250Z", "created_by": "p"}}) == (1796558400.25, "p")
    assert order_stamp({"order": {"created_at": "2026-12-06T12:00:00", "created_by": "p"}}) == (None, "p")  # no zone
    assert order_stamp({"order": {"created_at": "not a time"}}) is None and order_stamp({"order": None}) is None


async def test_status_shows_a_bounded_few_and_the_exact_count(served: Any) -> None:
    async with served() as (terminal, client):
        orders = [await create_order(client) for _ in range(MALFORMED_SHOWN + 3)]
        doc = f"orders/{orders[0]['business_day']}"

        def break_all(d: pycrdt.Doc) -> None:
            for order in orders:
                order_map(d, order["id"])["order"] = "x" * 5000  # not JSON, and long
        await as_peer(terminal, doc, break_all)
        assert (await client.get("/api/v1/orders")).json() == []
        shown = await malformed(client, doc)
        assert shown["count"] == len(orders)
        assert len(shown["entities"]) == MALFORMED_SHOWN
        assert {e["id"] for e in shown["entities"]} <= {o["id"] for o in orders}
        assert all(set(e) == {"id", "reason", "first_seen_at"} and len(e["reason"]) <= 200 for e in shown["entities"])
        others = (await client.get("/api/v1/status")).json()["documents"]
        assert others["tables"]["malformed"] == others["inventory"]["malformed"] == {"count": 0, "entities": []}


# -- tables --------------------------------------------------------------------------------------------

TABLE_CASES: dict[str, tuple[str, Any, str]] = {
    "layout as a Y.Map": ("tables", pycrdt.Map({"name": "T2", "seats": 4}),
                          "tables[id] must be a plain JSON object, got a Y.Map"),
    "fractional seats": ("tables", {"name": "T2", "seats": 2.5, "area": None}, "tables[id].seats must be an integer"),
    "seats over the bound": ("tables", {"name": "T2", "seats": 1e9}, "tables[id].seats must be in 1..100"),
    "name missing": ("tables", {"seats": 4}, "tables[id].name must be a string, got null"),
    "unknown status": ("table_status", {"status": "busy"}, "table_status[id].status must be one of"),
    "status as bare text": ("table_status", "occupied", "table_status[id] must be a plain JSON object, got a string"),
    "guests over the bound": ("table_guests", {"guests": 1_000_000}, "table_guests[id].guests must be in 0..400"),
    "waiter as a number": ("table_waiter", {"waiter": 3}, "table_waiter[id].waiter must be a string or null"),
    "merged into a number": ("table_merge", {"into": 5}, "table_merge[id].into must be an id"),
}


@pytest.mark.parametrize("case", TABLE_CASES)
async def test_a_malformed_table_is_skipped_counted_refused_and_repaired(
    served: Any, case: str, caplog: pytest.LogCaptureFixture,
) -> None:
    root_name, value, reason = TABLE_CASES[case]
    caplog.set_level(logging.WARNING, logger="meshpos.documents")
    async with served() as (terminal, client):
        for tid in ("T1", "T2"):
            assert (await client.put(f"/api/v1/tables/{tid}", json={"name": tid, "seats": 4})).status_code == 200
        await create_order(client, table="T2")
        valid = (await client.get("/api/v1/tables/T2")).json()
        await as_peer(terminal, "tables", lambda d: root(d, root_name).__setitem__("T2", value))
        for _ in range(2):
            listing = await client.get("/api/v1/tables")
            assert listing.status_code == 200 and [t["id"] for t in listing.json()] == ["T1"], listing.text
            assert_refused(await client.get("/api/v1/tables/T2"), "table 'T2'")
        shown = await malformed(client, "tables")
        assert shown["count"] == 1 and reason in shown["entities"][0]["reason"], shown
        assert len(warnings_about(caplog, "T2")) == 1
        assert len((await client.get("/api/v1/orders", params={"table": "T2"})).json()) == 1  # orders still list

        before = await stored(client)
        assert_refused(await client.patch("/api/v1/tables/T2", json={"status": "occupied"}), "table")
        assert_refused(await client.put("/api/v1/tables/T2", json={"name": "T2", "seats": 4}), "table")
        assert_refused(await client.post("/api/v1/tables/T1/merge", json={"into": "T2"}), "table")
        assert await stored(client) == before

        repair = {"tables": {"name": "T2", "seats": 4, "area": None}, "table_status": {"status": "free"},
                  "table_guests": {"guests": 0}, "table_waiter": {"waiter": None}, "table_merge": {"into": None}}
        await as_peer(terminal, "tables", lambda d: root(d, root_name).__setitem__("T2", repair[root_name]))
        assert (await malformed(client, "tables"))["count"] == 0
        assert {k: v for k, v in (await client.get("/api/v1/tables/T2")).json().items() if k != "status_at"} == {
            k: v for k, v in valid.items() if k != "status_at"}


async def test_a_table_id_off_the_pattern(served: Any) -> None:
    async with served() as (terminal, client):
        assert (await client.put("/api/v1/tables/T1", json={"name": "T1", "seats": 4})).status_code == 200
        def add(d: pycrdt.Doc) -> None:
            for tid in ("T 9/x", "T2\n"):  # a trailing newline passes a bare "$"
                root(d, "tables")[tid] = {"name": "x", "seats": 2}

        await as_peer(terminal, "tables", add)
        assert [t["id"] for t in (await client.get("/api/v1/tables")).json()] == ["T1"]
        shown = await malformed(client, "tables")
        assert shown["count"] == 2 and all("the table id must be an id" in e["reason"] for e in shown["entities"])


# -- catalog and inventory -----------------------------------------------------------------------------

INVENTORY_CASES: dict[str, tuple[str, str, Any, str]] = {
    "fractional price": ("catalog", "burger", {"name": "Burger", "price_cents": 15.9, "active": True},
                         "catalog[sku].price_cents must be an integer, got 15.9"),
    "price over the bound": ("catalog", "burger", {"name": "Burger", "price_cents": 2**60, "active": True},
                             "catalog[sku].price_cents must be in 0..100000000"),
    "record as JSON text": ("catalog", "burger", '{"name": "Burger", "price_cents": 100, "active": true}',
                            "catalog[sku] must be a plain JSON object, got a string"),
    "active missing": ("catalog", "burger", {"name": "Burger", "price_cents": 100},
                       "catalog[sku].active must be true or false, got null"),
    "a total under the bare sku": ("stock_counts", "burger", 40,
                                   "stock_counts key 'burger' is not '<sku>/<replica id>'"),
    "fractional counter": ("stock_counts", "burger/r9", 0.5, "must be an integer, got 0.5"),
    "counter over the bound": ("stock_counts", "burger/r9", 1e13, "must be in -1000000000000..1000000000000"),
    "base quantity over the bound": ("stock_base", "burger", {"quantity": 2**60, "seen": {}, "counted_at": "t"},
                                     "stock_base[sku].quantity must be in 0..10000000"),
    "base seen not an object": ("stock_base", "burger", {"quantity": 5, "seen": [], "counted_at": "t"},
                                "stock_base[sku].seen must be a plain JSON object, got an array"),
    "out flag as text": ("stock_86", "burger", {"out": "yes"}, "stock_86[sku].out must be true or false"),
    "negative low threshold": ("stock_low", "burger", -1, "stock_low[sku] must be in 0..10000000, got -1"),
}


@pytest.mark.parametrize("case", INVENTORY_CASES)
async def test_a_malformed_sku_is_skipped_counted_refused_and_repaired(
    served: Any, case: str, caplog: pytest.LogCaptureFixture,
) -> None:
    root_name, key, value, reason = INVENTORY_CASES[case]
    caplog.set_level(logging.WARNING, logger="meshpos.documents")
    async with served() as (terminal, client):
        for sku in ("burger", "fries"):
            resp = await client.put(f"/api/v1/catalog/{sku}", json={"name": sku, "price_cents": 100})
            assert resp.status_code == 200, resp.text
        delivered = await client.post("/api/v1/inventory/burger/adjust", json={"delta": 3, "reason": "in"})
        assert delivered.status_code == 200, delivered.text
        valid = (await client.get("/api/v1/inventory/burger")).json()
        await as_peer(terminal, "inventory", lambda d: root(d, root_name).__setitem__(key, value))
        for _ in range(2):
            for path in ("/api/v1/catalog", "/api/v1/inventory"):
                listing = await client.get(path)
                assert listing.status_code == 200 and [p["sku"] for p in listing.json()] == ["fries"], listing.text
            for path in ("/api/v1/catalog/burger", "/api/v1/inventory/burger"):
                assert_refused(await client.get(path), "sku 'burger'")
        shown = await malformed(client, "inventory")
        assert shown["count"] == 1 and reason in shown["entities"][0]["reason"], shown
        assert len(warnings_about(caplog, "burger")) == 1

        before = await stored(client)
        sale = {"delta": -1, "reason": "sale"}
        assert_refused(await client.post("/api/v1/inventory/burger/adjust", json=sale), "sku")
        assert_refused(await client.post("/api/v1/inventory/burger/count", json={"quantity": 5}), "sku")
        assert_refused(await client.patch("/api/v1/inventory/burger", json={"out_of_stock": True}), "sku")
        assert_refused(await client.put("/api/v1/catalog/burger", json={"name": "B", "price_cents": 1}), "sku")
        assert await stored(client) == before

        def repair(d: pycrdt.Doc) -> None:
            if root_name == "catalog":
                root(d, "catalog")[key] = {"sku": "burger", "name": "burger", "price_cents": 100, "station": None,
                                           "category": None, "active": True}
            else:
                del root(d, root_name)[key]

        await as_peer(terminal, "inventory", repair)
        assert (await malformed(client, "inventory"))["count"] == 0
        assert (await client.get("/api/v1/inventory/burger")).json()["quantity"] == valid["quantity"]


# -- bounds of an order --------------------------------------------------------------------------------


def assert_over_bound(resp: httpx.Response, message: str) -> None:
    """Items that pass the bound only with what the order holds already are refused by its state:
    409 / 4011, like the lifecycle rules (422 means the request alone breaks the schema)."""
    assert (resp.status_code, resp.json().get("code")) == (409, INVALID_TRANSITION), resp.text
    assert message in resp.json()["message"], resp.text


async def test_items_added_up_to_the_total_bound_then_refused_with_the_order_unchanged(served: Any) -> None:
    at_bound = {**BURGER, "qty": MAX_ORDER_TOTAL_CENTS // 100_000_000, "unit_price_cents": 100_000_000}
    async with served() as (terminal, client):
        order = await create_order(client, at_bound)
        assert order["total_cents"] == MAX_ORDER_TOTAL_CENTS
        before = await stored(client)
        one_cent = {**FRIES, "unit_price_cents": 1}
        with pytest.raises(InvalidTransition, match=f"may not exceed {MAX_ORDER_TOTAL_CENTS} cents") as refused:
            await terminal.add_items(order["id"], [one_cent])
        assert refused.value.code == INVALID_TRANSITION
        resp = await client.post(f"/api/v1/orders/{order['id']}/items", json={"items": [one_cent]})
        assert_over_bound(resp, f"may not exceed {MAX_ORDER_TOTAL_CENTS} cents; with these items it would be "
                                f"{MAX_ORDER_TOTAL_CENTS + 1} cents")
        assert await stored(client) == before
        assert (await client.get(f"/api/v1/orders/{order['id']}")).json() == order
        # a voided item no longer counts: room again
        voided = await client.post(f"/api/v1/orders/{order['id']}/items/{order['items'][0]['id']}/void",
                                   json={"reason": "typo"})
        assert voided.status_code == 200 and voided.json()["total_cents"] == 0
        resp = await client.post(f"/api/v1/orders/{order['id']}/items", json={"items": [FRIES]})
        assert resp.status_code == 201 and resp.json()["total_cents"] == FRIES["unit_price_cents"]
        # one create over the bound is refused whole
        over = {**at_bound, "qty": at_bound["qty"] + 1}
        before = await stored(client)
        resp = await client.post("/api/v1/orders", json={"items": [over]})
        assert resp.status_code == 422 and resp.json()["code"] == INVALID_MESSAGE, resp.text
        assert await stored(client) == before


async def test_items_added_up_to_the_item_bound_then_refused(served: Any) -> None:
    cheap = {**FRIES, "unit_price_cents": 1}
    async with served() as (_, client):
        order = await create_order(client, *[cheap] * 200)
        for _ in range(MAX_ORDER_ITEMS // 200 - 1):
            resp = await client.post(f"/api/v1/orders/{order['id']}/items", json={"items": [cheap] * 200})
            assert resp.status_code == 201, resp.text
        full = (await client.get(f"/api/v1/orders/{order['id']}")).json()
        assert len(full["items"]) == MAX_ORDER_ITEMS
        before = await stored(client)
        resp = await client.post(f"/api/v1/orders/{order['id']}/items", json={"items": [cheap]})
        assert_over_bound(resp, f"an order holds at most {MAX_ORDER_ITEMS} items; with these it would hold 1001")
        assert await stored(client) == before
        assert (await client.get(f"/api/v1/orders/{order['id']}")).json() == full


async def test_a_payment_for_a_malformed_order_is_refused_and_records_nothing(served: Any) -> None:
    async with served(type="pos") as (terminal, client):
        order = await create_order(client)
        opened = await client.post("/api/v1/cashier/drawers/main/open", json={"float_cents": 0, "operator": "carla"})
        assert opened.status_code == 201, opened.text
        await as_peer(terminal, f"orders/{order['business_day']}", set_item(order["id"], qty=0.5))
        ledger = (await client.get("/api/v1/cashier/drawers/main", params={"from_position": 0})).json()["entries"]
        pay = {"order_id": order["id"], "amount_cents": 100, "method": "cash"}
        assert_refused(await client.post("/api/v1/cashier/drawers/main/payments", json=pay), f"order {order['id']!r}")
        after = (await client.get("/api/v1/cashier/drawers/main", params={"from_position": 0})).json()["entries"]
        assert after == ledger
