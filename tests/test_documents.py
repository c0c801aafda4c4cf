"""Documents converge under any delivery order, and the order lifecycle only moves forward."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, date, datetime, timedelta

import pycrdt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import InvalidInput, InvalidTransition, MalformedEntity, NotFound
from meshpos.documents import InventoryDoc, OrdersDoc, TablesDoc
from meshpos.documents.orders import ORDER_RANK, ORDER_STAGES, check_transition

DAY = date(2026, 11, 23)


class Replica:
    """One terminal's copy of a document, with the updates it produced waiting to be delivered."""

    def __init__(self, model_cls: type, name: str) -> None:
        self.ticks = itertools.count()
        clock = lambda: datetime(2026, 11, 23, 12, tzinfo=UTC) + timedelta(milliseconds=next(self.ticks))  # noqa: E731
        self.model = model_cls(pycrdt.Doc(), terminal_id=name, replica_id=f"r-{name}", clock=clock)
        self.outbox: list[bytes] = []
        self.model.doc.observe(self._capture)

    def _capture(self, event) -> None:  # noqa: ANN001
        # doc.observe hands the raw transaction, whose origin() is hash(origin) (pycrdt 0.14)
        if event.transaction.origin() == hash("w"):
            self.outbox.append(bytes(event.update))

    def write(self, fn) -> bool:  # noqa: ANN001
        try:
            with self.model.doc.transaction(origin="w"):
                fn(self.model)
            return True
        except (InvalidTransition, InvalidInput, NotFound):
            return False

    def receive(self, update: bytes) -> None:
        with self.model.doc.transaction(origin="remote"):
            self.model.doc.apply_update(update)


def sync_all(replicas: list[Replica]) -> None:
    for a in replicas:
        for b in replicas:
            if a is not b:
                b.receive(a.model.doc.get_update(b.model.doc.get_state()))


def items(n: int = 1) -> list[dict]:
    return [{"sku": "burger", "name": "Burger", "qty": n, "unit_price_cents": 1590}]


# -- orders ------------------------------------------------------------------------------------

order_step = st.tuples(
    st.sampled_from(["status", "status", "deliver", "deliver", "add", "void", "kitchen", "transfer"]),
    st.integers(0, 2), st.integers(0, 2), st.sampled_from(ORDER_STAGES), st.integers(0, 50),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(order_step, max_size=30), seed=st.integers(0, 2**32))
def test_orders_converge_to_the_furthest_stage(steps, seed) -> None:  # noqa: ANN001
    rng = random.Random(seed)
    replicas = [Replica(OrdersDoc, f"t{i}") for i in range(3)]
    origin = replicas[0]
    oid = None

    def create(m: OrdersDoc) -> None:
        nonlocal oid
        oid = m.create(day=DAY, table="T1", waiter="ana", items=items())

    assert origin.write(create)
    assert len(origin.outbox) == 1, "local writes must be captured, or nothing below is delivered"
    sync_all(replicas)
    reached = {"open"}
    seen_rank = [0, 0, 0]
    pending: list[tuple[int, bytes]] = []
    for action, who, to, stage, n in steps:
        r = replicas[who]
        pending.extend((dst, u) for u in r.outbox for dst in range(3) if dst != who)
        r.outbox.clear()
        if action == "deliver" and pending:
            dst, update = pending.pop(rng.randrange(len(pending)))
            replicas[dst].receive(update)
            if rng.random() < 0.2:  # duplicates are harmless
                replicas[dst].receive(update)
        elif action == "status":
            reason = "guest left" if stage == "cancelled" else None
            if r.write(lambda m, s=stage, why=reason: m.set_status(oid, s, reason=why)):
                reached.add(stage)
        elif action == "add":
            r.write(lambda m, q=n % 5 + 1: m.add_items(oid, items(q)))
        elif action == "void":
            view = r.model.view(oid)
            live = [i["id"] for i in view["items"] if not i["voided"]]
            if live:
                victim = live[n % len(live)]
                r.write(lambda m, i=victim: m.void_item(oid, i, "mistake"))
        elif action == "kitchen":
            view = r.model.view(oid)
            r.write(lambda m, i=view["items"][0]["id"]: m.set_kitchen_status(oid, i, "ready"))
        elif action == "transfer":
            r.write(lambda m, tb=f"T{to + 2}": m.transfer(oid, tb))
        # lifecycle rule: no replica ever sees its order go back
        for i, rep in enumerate(replicas):
            rank = ORDER_RANK[rep.model.view(oid)["status"]]
            assert rank >= seen_rank[i], "status went backwards"
            seen_rank[i] = rank
    for r in replicas:
        r.outbox.clear()
    sync_all(replicas)
    views = [r.model.view(oid) for r in replicas]
    assert views[0] == views[1] == views[2]
    assert views[0]["status"] == max(reached, key=ORDER_RANK.__getitem__)
    live_total = sum(i["qty"] * i["unit_price_cents"] for i in views[0]["items"] if not i["voided"])
    assert views[0]["total_cents"] == live_total
    raw = [r.model.orders.to_py() for r in replicas]
    assert raw[0] == raw[1] == raw[2]


def test_local_transitions_move_forward_only() -> None:
    check_transition("open", "ready")  # skipping is allowed
    check_transition("sent", "cancelled")
    for current, target in [("ready", "sent"), ("paid", "cancelled"), ("cancelled", "paid"),
                            ("closed", "paid"), ("served", "served")]:
        with pytest.raises(InvalidTransition):
            check_transition(current, target)


def test_concurrent_cancel_and_paid_resolve_to_paid_with_visible_cancellation() -> None:
    a, b = Replica(OrdersDoc, "a"), Replica(OrdersDoc, "b")
    box = {}
    a.write(lambda m: box.setdefault("id", m.create(day=DAY, table="T1", waiter="x", items=items())))
    sync_all([a, b])
    oid = box["id"]
    assert a.write(lambda m: m.set_status(oid, "cancelled", reason="walked out"))
    assert b.write(lambda m: m.set_status(oid, "paid"))
    sync_all([a, b])
    for r in (a, b):
        view = r.model.view(oid)
        assert view["status"] == "paid"
        assert view["cancellation"]["reason"] == "walked out"
        assert view["cancellation"]["overridden_by"] == "paid"


def test_concurrent_cancel_beats_kitchen_progress() -> None:
    a, b = Replica(OrdersDoc, "a"), Replica(OrdersDoc, "b")
    box = {}
    a.write(lambda m: box.setdefault("id", m.create(day=DAY, table="T1", waiter="x", items=items())))
    sync_all([a, b])
    assert a.write(lambda m: m.set_status(box["id"], "cancelled", reason="86"))
    assert b.write(lambda m: m.set_status(box["id"], "served"))
    sync_all([a, b])
    assert a.model.view(box["id"])["status"] == b.model.view(box["id"])["status"] == "cancelled"


def test_invalid_writes_change_nothing() -> None:
    a = Replica(OrdersDoc, "a")
    box = {}
    a.write(lambda m: box.setdefault("id", m.create(day=DAY, table="T1", waiter="x", items=items())))
    a.outbox.clear()
    before = a.model.doc.get_update()
    assert not a.write(lambda m: m.create(day=DAY, table="T1", waiter="x", items=[{"sku": "b", "qty": -1}]))
    assert not a.write(lambda m: m.set_status(box["id"], "cancelled"))  # no reason
    assert not a.write(lambda m: m.add_items(box["id"], items() + [{"sku": "x"}]))
    assert a.outbox == [] and a.model.doc.get_update() == before


# -- inventory ---------------------------------------------------------------------------------

inv_step = st.tuples(st.sampled_from(["adjust", "adjust", "deliver"]), st.integers(0, 2),
                     st.sampled_from(["burger", "soda"]), st.integers(-5, 5))


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(inv_step, max_size=60), seed=st.integers(0, 2**32))
def test_concurrent_stock_adjustments_all_count(steps, seed) -> None:  # noqa: ANN001
    rng = random.Random(seed)
    replicas = [Replica(InventoryDoc, f"t{i}") for i in range(3)]
    for sku in ("burger", "soda"):
        replicas[0].write(lambda m, s=sku: m.put_product(s, name=s, price_cents=100, station=None,
                                                           category=None, active=True))
    assert len(replicas[0].outbox) == 2, "local writes must be captured, or nothing below is delivered"
    replicas[0].outbox.clear()
    sync_all(replicas)
    expected = {"burger": 0, "soda": 0}
    pending: list[tuple[int, bytes]] = []
    for action, who, sku, delta in steps:
        r = replicas[who]
        if action == "adjust" and delta:
            assert r.write(lambda m, s=sku, d=delta: m.adjust(s, d))
            expected[sku] += delta
        pending.extend((dst, u) for u in r.outbox for dst in range(3) if dst != who)
        r.outbox.clear()
        if action == "deliver" and pending:
            dst, update = pending.pop(rng.randrange(len(pending)))
            replicas[dst].receive(update)
    sync_all(replicas)
    for r in replicas:
        for sku, qty in expected.items():
            assert r.model.quantity(sku) == qty


def test_count_resets_base_but_keeps_concurrent_sales() -> None:
    a, b = Replica(InventoryDoc, "a"), Replica(InventoryDoc, "b")
    a.write(lambda m: m.put_product("fries", name="Fries", price_cents=690, station=None, category=None,
                                    active=True))
    a.write(lambda m: m.adjust("fries", 10))
    sync_all([a, b])
    b.write(lambda m: m.adjust("fries", -1))
    sync_all([a, b])
    assert a.model.quantity("fries") == 9
    # a counts 40 without having seen b's next sale; that sale must still count after merge
    assert a.write(lambda m: m.count("fries", 40))
    assert b.write(lambda m: m.adjust("fries", -3))
    sync_all([a, b])
    assert a.model.quantity("fries") == b.model.quantity("fries") == 37


def test_stock_flags_and_unknown_sku() -> None:
    a = Replica(InventoryDoc, "a")
    assert not a.write(lambda m: m.adjust("ghost", 1))
    a.write(lambda m: m.put_product("soda", name="Soda", price_cents=450, station="bar", category=None,
                                    active=True))
    a.write(lambda m: m.set_flags("soda", out_of_stock=True, low_threshold=5))
    view = a.model.view("soda")
    assert view["out_of_stock"] is True and view["low_stock"] is True
    a.write(lambda m: m.adjust("soda", 6))
    assert a.model.view("soda")["low_stock"] is False
    assert isinstance(a.model.view("soda")["quantity"], int)


# -- tables ------------------------------------------------------------------------------------

def test_concurrent_table_changes_to_different_aspects_both_survive() -> None:
    a, b = Replica(TablesDoc, "a"), Replica(TablesDoc, "b")
    # both create T1 concurrently (flat registers: no nested map is lost)
    a.write(lambda m: m.put("T1", name="T1", seats=4, area="patio"))
    b.write(lambda m: m.put("T1", name="T1", seats=4, area="patio"))
    b.write(lambda m: m.update("T1", waiter="ana", set_waiter=True))
    a.write(lambda m: m.update("T1", status="occupied", guests=3))
    sync_all([a, b])
    for r in (a, b):
        view = r.model.view("T1")
        assert (view["status"], view["waiter"], view["guests"]) == ("occupied", "ana", 3)
    a.write(lambda m: m.put("T2", name="T2", seats=2, area=None))
    a.write(lambda m: m.merge_into("T2", "T1"))
    sync_all([a, b])
    assert b.model.group("T1") == ["T1", "T2"]
    assert not a.write(lambda m: m.merge_into("T1", "T1"))


def test_audit_diff_keeps_only_what_changed() -> None:
    from meshpos.documents.host import changed_fields

    item = {"id": "a1", "name": "Burger", "kitchen_status": "queued"}
    other = {"id": "b2", "name": "Fries", "kitchen_status": "queued"}
    before = {"status": "sent", "items": [item, other], "total_cents": 100}
    after = {"status": "sent", "items": [{**item, "kitchen_status": "ready"}, other], "total_cents": 100}
    assert changed_fields(before, after) == (
        {"items": {"a1": {"kitchen_status": "queued"}}}, {"items": {"a1": {"kitchen_status": "ready"}}}
    )
    added = {**after, "items": [*after["items"], {"id": "c3", "name": "Soda", "kitchen_status": "queued"}]}
    assert changed_fields(after, added) == ({"items": {"c3": None}}, {"items": {"c3": added["items"][2]}})
    assert changed_fields(None, after) == (None, after)


def test_setting_a_field_to_its_value_writes_nothing() -> None:
    a = Replica(OrdersDoc, "a")
    box = {}
    a.write(lambda m: box.setdefault("id", m.create(day=DAY, table="T1", waiter="ana", items=items())))
    a.outbox.clear()
    assert a.write(lambda m: m.update_fields(box["id"], waiter="ana", notes=""))
    assert a.outbox == []
    assert a.write(lambda m: m.update_fields(box["id"], waiter="bea"))
    assert len(a.outbox) == 1 and a.model.view(box["id"])["waiter"] == "bea"


def test_a_peer_value_that_is_not_an_order_map_is_refused_not_read() -> None:
    """A buggy peer writing JSON text (or anything but a Y.Map) under an order id must not be read
    as an order: its JSON would otherwise look like one."""
    r = Replica(OrdersDoc, "pos-1")
    with r.model.doc.transaction():
        r.model.orders["20261123-bogus"] = '{"order": "{}"}'
    with pytest.raises(MalformedEntity, match="expected an order map"):
        r.model.view("20261123-bogus")
    # deriving its events skips it (the update itself is stored), and status shows why
    assert r.model.drain_events() == []
    assert "expected an order map" in r.model.malformed["20261123-bogus"]["reason"]


def test_a_ui_update_is_checked_on_a_scratch_copy_and_an_archived_day_takes_none() -> None:
    """meshpos/documents/ui_writes.py without a socket: the live document is only read; an
    archived business day refuses any update that changes it, and an empty one passes."""
    from core.errors import PermissionDenied
    from meshpos.documents.ui_writes import check_ui_update

    pos = Replica(OrdersDoc, "pos-1")
    pos.model.named(f"orders/{DAY.isoformat()}")
    pos.write(lambda m: m.create(day=DAY, table="T1", waiter=None, items=items()))
    (oid,) = pos.model.ids()
    item = pos.model.view(oid)["items"][0]["id"]
    ui = pycrdt.Doc()
    ui.apply_update(pos.model.doc.get_update())
    before = ui.get_state()
    ui.get("orders", type=pycrdt.Map)[oid][f"kitchen:{item}:ready"] = "2026-11-23T12:05:00.000Z"
    bump = ui.get_update(before)
    live = pos.model.doc.get_state()
    (op,) = check_ui_update(pos.model, bump, "ui:kds")
    assert (op.entity, op.entity_id, op.operation, op.user_id) == ("order", oid, "ui_write", "ui:kds")
    assert op.after["items"][0]["kitchen_status"] == "ready" and op.before["items"][0]["kitchen_status"] == "queued"
    assert pos.model.doc.get_state() == live and pos.model.view(oid)["items"][0]["kitchen_status"] == "queued"
    pos.model.read_only = True
    with pytest.raises(PermissionDenied, match="archived business day"):
        check_ui_update(pos.model, bump, "ui:kds")
    assert check_ui_update(pos.model, b"\x00\x00", "ui:kds") == []  # nothing new: nothing refused
