"""The cashier (drawer quorum lock) across real ``meshpos run`` processes on loopback.

Every terminal is its own process with its own enrolled data directory and the store's final
roster; the tests talk to them only through their local HTTP APIs and crash them with SIGKILL:

* 3 POS voters: the holder dies right after a payment is acknowledged; another terminal takes the
  drawer once the dead holder's lease runs out, and every acknowledged entry is there, in order;
  the dead terminal comes back and catches up to the same ledger.
* 5 POS voters: a minority dies and the cashier still commits; a third dies and requests fail fast
  (503, 4009) or are stored provisionally; the dead come back and the provisional entry commits
  everywhere.

Both anyio backends take part in each mesh (see ``backend`` in each test): the wire is the same.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from peer.identity import save_roster
from tests.procutil import Proc, Store, ok, online, start, wait

pytestmark = pytest.mark.slow

DRAWER = "/api/v1/cashier/drawers/main"
LOCK_TIMEOUT = 4009
#: A dead holder's lease (10 s from its last append, on each voter's clock) plus the ~1.5 s a
#: refused request waits before it fails, plus slack for a loaded machine.
TAKEOVER_WITHIN = 20.0


def pos_store(tmp: Path, n: int) -> Store:
    """``n`` enrolled POS terminals that all hold the final roster (all ``n`` are voters)."""
    store = Store(tmp, [f"pos-{k}" for k in range(1, n + 1)], ["pos"] * n)
    for tid in store.ids:
        save_roster(tmp / tid, store.authority.roster)
    return store


def linked(clients: dict[str, httpx.Client], ids: list[str]) -> None:
    for tid, c in clients.items():
        wait(lambda c=c, tid=tid: online(c) == set(ids) - {tid}, what=f"{tid} linked to {sorted(ids)}")


def new_order(c: httpx.Client, qty: int) -> dict[str, Any]:
    return ok(c.post("/api/v1/orders", json={"items": [
        {"sku": "burger", "name": "Burger", "qty": qty, "unit_price_cents": 1590}]}))


def order_status(c: httpx.Client, order_id: str) -> str | None:
    resp = c.get(f"/api/v1/orders/{order_id}")
    return resp.json()["status"] if resp.status_code == 200 else None


def committed(resp: httpx.Response, status: int = 201) -> dict[str, Any]:
    """The entry of an acknowledged, committed cashier request."""
    body = ok(resp)
    assert resp.status_code == status and body["entry"]["status"] == "committed", body
    return body["entry"]


def retry_while_locked(request: Callable[[], httpx.Response], within: float = TAKEOVER_WITHIN,
                       refusals: list[str] | None = None) -> httpx.Response:
    """Repeat ``request`` (same op_id: a retry never applies twice) while it fails with 503/4009;
    the refusals' messages go to ``refusals``."""
    deadline = time.monotonic() + within
    while True:
        resp = request()
        if resp.status_code != 503:
            return resp
        assert resp.json()["code"] == LOCK_TIMEOUT, resp.text
        if refusals is not None:
            refusals.append(resp.json()["message"])
        if time.monotonic() > deadline:
            pytest.fail(f"still refused after {within}s: {resp.text}")
        time.sleep(0.2)


def drawer(c: httpx.Client) -> dict[str, Any]:
    return ok(c.get(DRAWER, params={"from_position": 0}))


def entries(c: httpx.Client) -> list[dict[str, Any]] | None:
    """The drawer's committed ledger as this terminal shows it (``None`` while it knows no drawer)."""
    resp = c.get(DRAWER, params={"from_position": 0})
    return ok(resp)["entries"] if resp.status_code != 404 else None


def same_ledgers(clients: dict[str, httpx.Client], length: int, within: float = 15.0) -> list[dict[str, Any]]:
    """Wait until every terminal shows the same ``length`` committed entries; return them."""
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update({tid: entries(c) for tid, c in clients.items()})
        first = seen[next(iter(clients))]
        return first is not None and len(first) == length and all(v == first for v in seen.values())

    try:
        wait(done, within=within, what=f"{length} identical ledger entries on {sorted(clients)}")
    except pytest.fail.Exception:
        lengths = {tid: None if v is None else [(e["position"], e["kind"], e["op_id"]) for e in v]
                   for tid, v in seen.items()}
        raise AssertionError(f"ledgers differ: {lengths}") from None
    return seen[next(iter(clients))]


def test_three_voters_holder_killed_after_ack_takeover_and_catch_up(launch, tmp_path: Path) -> None:  # noqa: ANN001
    store = pos_store(tmp_path, 3)
    backend = {"pos-1": "asyncio", "pos-2": "trio", "pos-3": "asyncio"}  # the taker runs on trio
    procs: dict[str, Proc] = {tid: start(launch, store, tid, backend[tid]) for tid in store.ids}
    clients = {tid: p.client() for tid, p in procs.items()}
    linked(clients, store.ids)
    pos1, pos2, pos3 = (clients[t] for t in store.ids)

    a, b = new_order(pos1, 2), new_order(pos1, 1)  # 3180 and 1590 cents
    acked = [committed(pos1.post(f"{DRAWER}/open", json={"float_cents": 10_000, "operator": "carla",
                                                        "op_id": "open-1"}))]
    acked.append(committed(pos1.post(f"{DRAWER}/payments", json={
        "order_id": a["id"], "amount_cents": 3180, "method": "cash", "tip_cents": 300, "op_id": "pay-a",
        "user": "carla"})))
    acked.append(committed(pos1.post(f"{DRAWER}/cash-movements", json={
        "direction": "in", "amount_cents": 500, "reason": "change", "op_id": "mv-1"})))
    acked.append(committed(pos1.post(f"{DRAWER}/payments", json={
        "order_id": b["id"], "amount_cents": 1590, "method": "card", "op_id": "pay-b"})))
    # kill -9 the holder the moment its last payment is acknowledged (its lease still runs)
    procs["pos-1"].stop(signal.SIGKILL)
    assert [e["position"] for e in acked] == [0, 1, 2, 3]
    wait(lambda: "pos-1" not in online(pos2) and "pos-1" not in online(pos3), within=10, what="pos-1 offline")

    # pos-2 takes the drawer once pos-1's lease has run out (503 4009 until then) and goes on
    c = new_order(pos2, 1)
    started = time.monotonic()
    pay_c = {"order_id": c["id"], "amount_cents": 1590, "method": "cash", "op_id": "pay-c", "user": "duda"}
    refusals: list[str] = []
    acked.append(committed(retry_while_locked(lambda: pos2.post(f"{DRAWER}/payments", json=pay_c),
                                              refusals=refusals)))
    took = time.monotonic() - started
    # the dead holder's lease (10 s from its last append) held pos-2 off, then ran out
    assert any("locked by pos-1" in m for m in refusals) and took > 5, (took, refusals)
    assert acked[-1]["position"] == 4 and acked[-1]["terminal_id"] == "pos-2", acked[-1]
    assert committed(pos2.post(f"{DRAWER}/payments", json=pay_c)) == acked[-1]  # a retry, not a 2nd payment
    closed = committed(pos2.post(f"{DRAWER}/close", json={"counted_cents": 13_500, "op_id": "close-1"}), 200)
    expected = 10_000 + 3180 + 300 + 500 + 1590  # float + cash payment with its tip + cash in + cash payment
    assert (closed["position"], closed["expected_cents"]) == (5, expected)
    assert closed["difference_cents"] == 13_500 - expected
    acked.append(closed)

    ledger = same_ledgers({"pos-2": pos2, "pos-3": pos3}, 6)
    assert ledger == acked, "entries acknowledged before the crash are missing, changed or reordered"
    assert [e["op_id"] for e in ledger] == ["open-1", "pay-a", "mv-1", "pay-b", "pay-c", "close-1"]
    summary = drawer(pos3)
    assert summary["state"] == "closed" and summary["voters"] == {"total": 3, "reachable": 2, "majority": 2}

    # pos-1 restarts on its data dir and catches up to the very same ledger
    procs["pos-1"] = start(launch, store, "pos-1", backend["pos-1"])
    clients["pos-1"] = procs["pos-1"].client()
    linked(clients, store.ids)
    assert same_ledgers(clients, 6) == acked
    pos1 = clients["pos-1"]
    wait(lambda: all(order_status(pos1, o["id"]) == "paid" for o in (a, b, c)), within=15, what="orders paid on pos-1")
    assert drawer(pos1)["state"] == "closed" and drawer(pos1)["expected_cash_cents"] == expected


def test_five_voters_minority_down_commits_no_majority_provisional_then_heals(  # noqa: ANN001
        launch, tmp_path: Path) -> None:
    """Odd terminals run on asyncio, even ones on trio: one mesh, both backends."""
    store = pos_store(tmp_path, 5)
    backend = {tid: ("asyncio", "trio")[k % 2] for k, tid in enumerate(store.ids)}
    procs: dict[str, Proc] = {tid: start(launch, store, tid, backend[tid]) for tid in store.ids}
    clients = {tid: p.client() for tid, p in procs.items()}
    linked(clients, store.ids)
    pos1, pos3 = clients["pos-1"], clients["pos-3"]

    x, y, z = new_order(pos1, 1), new_order(pos1, 2), new_order(pos1, 1)  # 1590, 3180, 1590 cents
    acked = [committed(pos1.post(f"{DRAWER}/open", json={"float_cents": 5_000, "operator": "carla"}))]
    acked.append(committed(pos1.post(f"{DRAWER}/payments", json={
        "order_id": x["id"], "amount_cents": 1590, "method": "pix", "op_id": "pay-x"})))

    # a minority (2 of 5) dies: the other three still commit, on more than one terminal
    for tid in ("pos-4", "pos-5"):
        procs[tid].stop(signal.SIGKILL)
    alive = ["pos-1", "pos-2", "pos-3"]
    for tid in alive:
        wait(lambda tid=tid: online(clients[tid]) == set(alive) - {tid}, within=10, what=f"{tid} sees 2 dead")
    acked.append(committed(pos1.post(f"{DRAWER}/payments", json={
        "order_id": y["id"], "amount_cents": 3180, "method": "cash", "op_id": "pay-y"})))
    # pos-3 takes the drawer after pos-1 (idle for 1 s) lets it go
    move = {"direction": "out", "amount_cents": 200, "reason": "change", "op_id": "mv-1"}
    acked.append(committed(retry_while_locked(lambda: pos3.post(f"{DRAWER}/cash-movements", json=move), 10)))
    assert [e["position"] for e in acked] == [0, 1, 2, 3] and acked[3]["terminal_id"] == "pos-3"
    assert same_ledgers({t: clients[t] for t in alive}, 4) == acked
    assert drawer(pos1)["voters"] == {"total": 5, "reachable": 3, "majority": 3}

    # a third dies: no majority; fail fast without allow_provisional, 202 provisional with it
    procs["pos-3"].stop(signal.SIGKILL)
    alive = ["pos-1", "pos-2"]
    for tid in alive:
        wait(lambda tid=tid: online(clients[tid]) == set(alive) - {tid}, within=10, what=f"{tid} sees 3 dead")
    wait(lambda: not drawer(pos1)["held_here"], within=5, what="pos-1 holds no drawer")
    pay_z = {"order_id": z["id"], "amount_cents": 1590, "method": "card", "op_id": "pay-z", "user": "carla"}
    before = time.monotonic()
    refused = pos1.post(f"{DRAWER}/payments", json=pay_z)
    assert time.monotonic() - before < 1.5, "no majority is refused at once, not after a lock timeout"
    assert refused.status_code == 503, refused.text
    error = refused.json()
    assert error["code"] == LOCK_TIMEOUT and "2 of 5 reachable, 3 needed" in error["message"], error
    summary = drawer(pos1)
    assert summary["voters"] == {"total": 5, "reachable": 2, "majority": 3}
    assert summary["ledger_length"] == 4 and summary["provisional"] == [], "a refused request records nothing"

    resp = pos1.post(f"{DRAWER}/payments", json={**pay_z, "allow_provisional": True})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    provisional = body["entry"]
    assert provisional["status"] == "provisional" and provisional["position"] is None, provisional
    assert provisional["provisional"]["terminal_id"] == "pos-1" and "provisionally" in body["message"]
    assert body["drawer"]["provisional_pending"] == 1 and body["drawer"]["ledger_length"] == 4
    again = pos1.post(f"{DRAWER}/payments", json={**pay_z, "allow_provisional": True})
    assert again.status_code == 202 and again.json()["entry"] == provisional  # a retry, not a second one
    assert order_status(pos1, z["id"]) == "open", "a provisional payment does not mark the order paid"

    # the dead come back (same data dirs): the provisional entry commits, everyone has the same ledger
    for tid in ("pos-3", "pos-4", "pos-5"):
        procs[tid] = start(launch, store, tid, backend[tid])
        clients[tid] = procs[tid].client()
    linked(clients, store.ids)

    def settled() -> bool:
        rows = drawer(pos1)["provisional"]
        return len(rows) == 1 and rows[0]["status"] == "committed"

    wait(settled, within=15, what="the provisional payment committed")
    row = drawer(pos1)["provisional"][0]
    assert row["position"] == 4 and row["op_id"] == "pay-z", row
    ledger = same_ledgers(clients, 5)
    assert ledger[:4] == acked, "entries acknowledged before the crashes are missing, changed or reordered"
    last = ledger[4]
    assert (last["op_id"], last["kind"], last["status"]) == ("pay-z", "payment", "committed")
    assert last["amount_cents"] == 1590 and last["method"] == "card"
    assert last["provisional"]["terminal_id"] == "pos-1"
    for tid, c in clients.items():
        summary = drawer(c)
        assert summary["provisional_pending"] == 0 and summary["open_reviews"] == 0, (tid, summary)
        assert summary["expected_cash_cents"] == 5_000 + 3180 - 200, (tid, summary)
        assert summary["totals_by_method"]["card"] == 1590, (tid, summary)
    wait(lambda: all(order_status(c, o["id"]) == "paid" for c in clients.values() for o in (x, y, z)),
         within=15, what="the three orders paid on all five terminals")
