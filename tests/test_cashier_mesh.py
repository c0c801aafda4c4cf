"""The cashier on in-process meshes: real TLS links, real SQLite files, both anyio backends.

Three POS voters plus a KDS (a learner): drawers open, take payments and close under the quorum
lock; retries by op_id never pay twice; without a majority requests fail fast (503, 4009) or are
stored provisionally; after the heal provisional entries commit or land in the review queue, and
a person's resolution is itself a committed entry that every terminal learns.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from core.errors import (
    ALREADY_CONNECTED,
    INVALID_MESSAGE,
    LOCK_TIMEOUT,
    STORAGE_UNAVAILABLE,
    Conflict,
    InvalidInput,
    InvalidTransition,
    NoQuorum,
    NotFound,
    Unavailable,
)
from meshpos.cashier import quorum, service
from meshpos.terminal import Terminal
from peer.identity import Authority
from tests.cashierutil import configs, events_of, ledger_of, same_ledger
from tests.meshutil import ITEM, address, connect_all, running_mesh, wait_for, wait_linked

pytestmark = pytest.mark.anyio


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "auth", "Cantina Centro")




async def test_drawer_day_on_three_voters_and_a_learner(authority: Authority, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "IDLE_RELEASE_SECONDS", 60.0)  # pos-1 keeps the drawer while idle
    ids = ["pos-1", "pos-2", "pos-3", "kds-1"]
    async with running_mesh(configs(authority, tmp_path, ids, ["pos", "pos", "pos", "kds"])) as ts:
        pos1, pos2, _pos3, kds = ts
        order = await pos2.create_order(table=None, waiter="ana", items=[{**ITEM, "qty": 2}])  # 3180 cents
        await wait_for(lambda: all(t.host.get(f"orders/{t.today().isoformat()}") is not None for t in ts))

        opened = await pos1.cashier.open_drawer("main", float_cents=10_000, operator="carla")
        assert opened["entry"]["status"] == "committed" and opened["drawer"]["state"] == "open"
        paid = await pos1.cashier.pay("main", order_id=order["id"], amount_cents=3180, method="cash",
                                      tip_cents=300, op_id="pay-1", user="carla")
        assert paid["entry"]["position"] == 1 and paid["drawer"]["expected_cash_cents"] == 13_480
        again = await pos1.cashier.pay("main", order_id=order["id"], amount_cents=3180, method="cash",
                                       tip_cents=300, op_id="pay-1", user="carla")
        assert again["entry"] == paid["entry"]  # the first result, not a second payment
        with pytest.raises(Conflict):
            await pos1.cashier.pay("main", order_id=order["id"], amount_cents=100, method="card",
                                   op_id="pay-1")
        with pytest.raises(InvalidTransition, match="already paid"):
            await pos1.cashier.pay("main", order_id=order["id"], amount_cents=1, method="card")
        # the order is marked paid in the orders document, on every terminal
        await wait_for(lambda: all(_status(t, order["id"]) == "paid" for t in ts))

        # another terminal takes the drawer only once pos-1 lets it go: lock_failed until then
        with pytest.raises(NoQuorum, match="locked by pos-1"):
            await pos2.cashier.move_cash("main", direction="out", amount_cents=1000, reason="change")
        assert (await events_of(pos2, "lock_failed"))[-1]["locked_by"] == "pos-1"

        closed = await pos1.cashier.close_drawer("main", counted_cents=13_400, user="carla")
        assert closed["entry"]["expected_cents"] == 13_480 and closed["entry"]["difference_cents"] == -80
        assert await events_of(pos1, "lock_released")
        # released: pos-2 takes the drawer at once and reopens it for the next shift
        await pos2.cashier.open_drawer("main", float_cents=5_000, operator="duda")
        await same_ledger(ts, "main", 4)
        for t in ts:  # every terminal, the KDS included, learned the ledger and raised the events
            assert [e["entry"]["op_id"] for e in await events_of(t, "payment:completed")] == ["pay-1"]
            assert len(await events_of(t, "cashier:opened")) == 2
            assert len(await events_of(t, "cashier:closed")) == 1
            drawer = t.cashier.drawer("main", from_position=0)
            assert [e["kind"] for e in drawer["entries"]] == ["drawer_opened", "payment", "drawer_closed",
                                                               "drawer_opened"]
            assert drawer["state"] == "open" and drawer["expected_cash_cents"] == 5_000


def _status(t: Terminal, order_id: str) -> str | None:
    model = t.host.get(f"orders/{order_id[0:4]}-{order_id[4:6]}-{order_id[6:8]}")
    return None if model is None or order_id not in model.ids() else model.view(order_id)["status"]


async def test_voters_that_reach_each_other_only_through_a_third_terminal_still_commit(
        authority: Authority, tmp_path: Path) -> None:
    """Three POS tablets behind client isolation, each linked only to the wired KDS: their quorum
    messages travel signed through it (peer/envelope.py), so a payment commits instead of going
    provisional; the KDS carries them and votes in nothing."""
    ids = ["pos-1", "pos-2", "pos-3", "kds-1"]
    async with running_mesh(configs(authority, tmp_path, ids, ["pos", "pos", "pos", "kds"]), link=False) as ts:
        pos1, pos2, pos3, kds = ts
        for pos in (pos1, pos2, pos3):
            pos.mesh.dial(address(kds))
        await wait_for(lambda: set(kds.mesh.links) == {"pos-1", "pos-2", "pos-3"})
        await wait_for(lambda: all(pos.cashier.links.quorum()["reachable"] == ["pos-1", "pos-2", "pos-3"]
                                   for pos in (pos1, pos2, pos3)))
        assert set(pos1.mesh.links) == {"kds-1"}
        order = await pos2.create_order(table=None, waiter="ana", items=[ITEM])
        await wait_for(lambda: all(t.host.get(f"orders/{t.today().isoformat()}") is not None for t in ts))
        opened = await pos1.cashier.open_drawer("main", float_cents=10_000, operator="carla")
        assert opened["entry"]["status"] == "committed"
        paid = await pos3.cashier.pay("main", order_id=order["id"], amount_cents=1590, method="card", op_id="p-1")
        assert paid["entry"]["status"] == "committed" and paid["entry"]["position"] == 1
        await same_ledger(ts, "main", 2)
        assert kds.mesh.carrying.counts["carried"] > 0 and pos1.mesh.carrying.counts["sent"] > 0
        assert pos3.mesh.carrying.counts["received"] > 0


async def test_bad_requests_record_nothing(authority: Authority, tmp_path: Path) -> None:
    async with running_mesh(configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3"])) as ts:
        pos1 = ts[0]
        with pytest.raises(NotFound, match="never been opened"):
            await pos1.cashier.move_cash("main", direction="in", amount_cents=100, reason="x")
        order = await pos1.create_order(table=None, waiter=None, items=[ITEM])
        with pytest.raises(NotFound):
            await pos1.cashier.pay("main", order_id="20260101-nope", amount_cents=100, method="cash")
        await pos1.cashier.open_drawer("main", float_cents=0, operator="carla")
        for bad in ({"amount_cents": -5}, {"amount_cents": 1.5}, {"amount_cents": 0}, {"tip_cents": -1},
                    {"method": "bitcoin"}):
            with pytest.raises(InvalidInput):
                await pos1.cashier.pay("main", **{"order_id": order["id"], "amount_cents": 100,
                                                  "method": "cash", **bad})
        with pytest.raises(InvalidTransition, match="unpaid balance of 1590"):
            await pos1.cashier.pay("main", order_id=order["id"], amount_cents=1591, method="card")
        with pytest.raises(InvalidInput):
            await pos1.cashier.open_drawer("bad name!", float_cents=0, operator="x")
        with pytest.raises(InvalidTransition, match="already open"):
            await pos1.cashier.open_drawer("main", float_cents=0, operator="x")
        with pytest.raises(InvalidTransition, match="should hold 0 cents"):
            await pos1.cashier.move_cash("main", direction="out", amount_cents=1, reason="x")
        with pytest.raises(NotFound, match="no committed payment"):
            await pos1.cashier.refund("main", payment_op_id="nope", amount_cents=1, reason="x")
        await pos1.cashier.close_drawer("main", counted_cents=0)
        with pytest.raises(InvalidTransition, match="closed"):
            await pos1.cashier.pay("main", order_id=order["id"], amount_cents=100, method="cash")
        assert [e["kind"] for e in ledger_of(pos1, "main")] == ["drawer_opened", "drawer_closed"]
        rows = await pos1.store.query("SELECT COUNT(*) FROM cashier_ledger WHERE drawer = 'main'")
        assert rows == [(2,)]


async def test_a_holder_that_loses_its_majority_fails_fast(authority: Authority, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "IDLE_RELEASE_SECONDS", 60.0)  # pos-1 still holds the drawer
    cfgs = configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3"])
    async with running_mesh(cfgs[:1], link=False) as (pos1,):
        async with running_mesh(cfgs[1:], link=False) as others:
            connect_all([pos1, *others])
            await wait_linked([pos1, *others])
            await pos1.cashier.open_drawer("main", float_cents=0, operator="carla")
            assert pos1.cashier.summary("main")["held_here"]
        await wait_for(lambda: not pos1.mesh.links)  # type: ignore[union-attr]
        with anyio.fail_after(0.5), pytest.raises(NoQuorum, match="1 of 3 reachable"):
            await pos1.cashier.move_cash("main", direction="in", amount_cents=5, reason="x")
        assert pos1.cashier.states["main"].accepted == {}  # nothing was sent out to be accepted


async def test_no_majority_fails_fast_or_goes_provisional_then_reconciles(authority: Authority,
                                                                           tmp_path: Path) -> None:
    cfgs = configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3"])
    async with Terminal(cfgs[0]).running() as pos1:
        order = await pos1.create_order(table=None, waiter=None, items=[ITEM])
        with anyio.fail_after(1.0):  # fails fast: no waiting for a lock timeout
            with pytest.raises(NoQuorum, match="1 of 3 reachable, 2 needed") as err:
                await pos1.cashier.open_drawer("main", float_cents=1000, operator="carla")
        assert err.value.code == LOCK_TIMEOUT and err.value.http_status == 503
        opened = await pos1.cashier.open_drawer("main", float_cents=1000, operator="carla", allow_provisional=True)
        paid = await pos1.cashier.pay("main", order_id=order["id"], amount_cents=1590, method="cash",
                                      op_id="p-1", allow_provisional=True)
        assert opened["entry"]["status"] == paid["entry"]["status"] == "provisional"
        assert paid["drawer"]["provisional_pending"] == 2 and "provisionally" in paid["message"]
        assert ledger_of(pos1, "main") == []
    # a restart keeps them (they are durable), and the heal commits them, provisional origin visible
    async with running_mesh([cfgs[0]], link=False) as (pos1,), running_mesh(cfgs[1:], link=False) as others:
        ts = [pos1, *others]
        connect_all(ts)
        await wait_linked(ts)
        await same_ledger(ts, "main", 2)
        for entry in ledger_of(ts[2], "main"):
            assert entry["status"] == "committed" and entry["provisional"]["terminal_id"] == "pos-1"
        await wait_for(lambda: [p["status"] for p in pos1.cashier.drawer("main")["provisional"]]
                       == ["committed", "committed"])
        assert pos1.cashier.drawer("main")["expected_cash_cents"] == 2590
        await wait_for(lambda: _status(pos1, order["id"]) == "paid")


async def test_conflicting_provisional_payments_go_to_review(authority: Authority, tmp_path: Path) -> None:
    cfgs = configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3"])
    async with running_mesh(cfgs) as ts:
        pos1, pos2, pos3 = ts
        order = await pos1.create_order(table=None, waiter=None, items=[ITEM])
        await pos1.cashier.open_drawer("main", float_cents=0, operator="carla")
        await wait_for(lambda: all(_status(t, order["id"]) == "open" for t in ts))
        await same_ledger(ts, "main", 1)
    # pos-3 alone (a minority) takes the payment provisionally; pos-1 + pos-2 (the majority) too
    async with running_mesh([cfgs[2]], link=False) as (pos3,):
        side = await pos3.cashier.pay("main", order_id=order["id"], amount_cents=1590, method="card",
                                      op_id="minority", allow_provisional=True)
        assert side["entry"]["status"] == "provisional"
    async with running_mesh(cfgs[:2]) as (pos1, pos2):
        # leases live in memory: restarted voters grant pos-2 the drawer at once
        paid = await pos2.cashier.pay("main", order_id=order["id"], amount_cents=1590, method="cash",
                                      op_id="majority")
        assert paid["entry"]["status"] == "committed"
    async with running_mesh(cfgs) as ts:
        pos1, pos2, pos3 = ts
        await wait_for(lambda: len(pos1.cashier.reviews()) == 1 and len(pos3.cashier.reviews()) == 1)
        item = pos1.cashier.reviews()[0]
        assert item["reason"] == f"order {order['id']} was already paid elsewhere"
        assert item["entry"]["op_id"] == "minority" and item["status"] == "open"
        assert [c["op_id"] for c in item["conflicts_with"]] == ["majority"]
        await wait_for(lambda: pos3.cashier.drawer("main")["provisional"][0]["status"] == "in_review")
        assert pos1.cashier.drawer("main")["totals_by_method"]["card"] == 0  # not counted while in review
        with pytest.raises(InvalidInput):
            await pos2.cashier.resolve(item["id"], decision="adjust", note="x", operator="gerente")
        resolved = await pos2.cashier.resolve(item["id"], decision="reject", note="card charge voided",
                                              operator="gerente")
        assert resolved["status"] == "rejected" and resolved["resolution"]["operator"] == "gerente"
        again = await pos2.cashier.resolve(item["id"], decision="reject", note="card charge voided",
                                           operator="gerente")
        assert again == resolved  # idempotent
        with pytest.raises(Conflict, match="already resolved"):
            await pos1.cashier.resolve(item["id"], decision="accept", note="no", operator="outro")
        await same_ledger(ts, "main")
        for t in ts:
            assert t.cashier.reviews() == [] and t.cashier.reviews("all")[0]["status"] == "rejected"
            assert [e["decision"] for e in await events_of(t, "cashier:review_resolved")] == ["reject"]


async def test_standalone_pos_is_its_own_majority(make_config) -> None:  # noqa: ANN001
    async with Terminal(make_config("pos-1", type="pos")).running() as pos1:
        await pos1.cashier.open_drawer("main", float_cents=500, operator="carla")
        result = await pos1.cashier.close_drawer("main", counted_cents=500)
        assert result["entry"]["difference_cents"] == 0 and result["drawer"]["voters"]["total"] == 1
    async with Terminal(make_config("kds-1", type="kds")).running() as kds:
        with pytest.raises(Exception, match="no POS terminal"):
            await kds.cashier.open_drawer("main", float_cents=500, operator="carla")


async def test_a_malformed_cashier_message_closes_the_link_with_4006(authority: Authority, tmp_path: Path) -> None:
    async with running_mesh(configs(authority, tmp_path, ["pos-1", "pos-2"])) as (pos1, pos2):
        assert pos1.mesh is not None and pos2.mesh is not None
        pos1.mesh.send_control("pos-2", {"type": "cashier", "m": "accept", "drawer": "main", "ballot": [1, "pos-1"],
                                         "position": 0, "entry": {"kind": "payment", "amount_cents": "lots"}})
        await wait_for(lambda: any(r["code"] == INVALID_MESSAGE for r in pos1.mesh.refusals)
                       or pos2.mesh.peers["pos-1"].last_error is not None)
        assert pos2.mesh.peers["pos-1"].last_error["code"] == INVALID_MESSAGE
        assert "cashier accept" in pos2.mesh.peers["pos-1"].last_error["reason"]
        assert pos2.cashier.states.get("main") is None  # nothing of it was applied
        await wait_linked([pos1, pos2])  # the link comes back; the terminal keeps serving
        await pos2.cashier.open_drawer("main", float_cents=0, operator="carla")


async def test_a_holder_far_behind_catches_up_before_it_prepares(authority: Authority, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cfgs = configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3"])
    async with running_mesh(cfgs[:2], link=False) as (pos1, pos2):
        connect_all([pos1, pos2])
        await wait_linked([pos1, pos2])
        await pos1.cashier.open_drawer("main", float_cents=0, operator="carla")
        for n in range(quorum.PROMISE_MAX_ENTRIES + 50):
            await pos1.cashier.move_cash("main", direction="in", amount_cents=1, reason=f"tip jar {n}")
    # no ledger exchange at link-up: pos-3 prepares knowing nothing; the voters answer with the
    # ledger (in relay chunks) rather than a promise carrying 250 entries, and it prepares again
    monkeypatch.setattr(service.Cashier, "link_up", lambda self, peer_id: None)
    async with running_mesh(cfgs) as ts:
        pos3 = ts[2]
        assert ledger_of(pos3, "main") == []
        result = await pos3.cashier.move_cash("main", direction="out", amount_cents=10, reason="change")
        assert result["entry"]["position"] == quorum.PROMISE_MAX_ENTRIES + 51
        assert result["drawer"]["expected_cash_cents"] == quorum.PROMISE_MAX_ENTRIES + 50 - 10
        await same_ledger(ts, "main", quorum.PROMISE_MAX_ENTRIES + 52)


# -- the review's findings: each a scenario that used to go wrong ---------------------------------


async def test_a_restarted_non_voter_never_reuses_its_ballot(authority: Authority, tmp_path: Path) -> None:
    cfgs = configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3", "waiter-1"], ["pos", "pos", "pos", "waiter"])
    async with running_mesh(cfgs) as ts:
        waiter = ts[3]
        await waiter.cashier.open_drawer("main", float_cents=0, operator="ana")
        first = waiter.cashier.summary("main")["ballot"]
        assert first[1] == "waiter-1"
    async with running_mesh(cfgs) as ts:
        waiter = ts[3]
        assert waiter.cashier.state.voter.state("main").promised[1] == ""  # it votes on nothing
        await waiter.cashier.move_cash("main", direction="in", amount_cents=5, reason="tips")
        again = waiter.cashier.summary("main")["ballot"]
        assert again[1] == "waiter-1" and again[0] > first[0]  # the round came back from its disk
        assert await waiter.store.query("SELECT round FROM cashier_rounds WHERE drawer = 'main'") == [(again[0],)]


async def test_a_failed_voter_write_is_never_answered_and_the_state_reloads(authority: Authority, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_mesh(configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3"])) as ts:
        pos1, pos2, _pos3 = ts
        real = pos2.store._write
        failures = []

        async def failing(fn, *args):  # noqa: ANN001, ANN202 - the disk refuses pos-2's next commit
            if fn.__name__ == "commit" and not failures:
                failures.append(fn)
                raise sqlite3.OperationalError("disk I/O error")
            return await real(fn, *args)

        monkeypatch.setattr(pos2.store, "_write", failing)
        await pos1.cashier.open_drawer("main", float_cents=0, operator="carla")  # pos-1 + pos-3 suffice
        assert failures  # pos-2's promise or accept never reached its disk, and it did not answer
        await pos1.cashier.move_cash("main", direction="in", amount_cents=7, reason="x")
        await wait_for(lambda: not pos2.cashier.disk.stale)  # reloaded from disk at its next message
        # Memory agrees with the disk again - once the vote pos-2 is making now is committed (its
        # promise is in memory a moment before the commit that lets it answer).
        with anyio.fail_after(15):
            while True:
                votes = await pos2.store.query("SELECT round, holder FROM cashier_votes WHERE drawer = 'main'")
                if votes == [tuple(pos2.cashier.states["main"].promised)]:
                    break
                await anyio.sleep(0.02)
        assert votes[0][1] == "pos-1"
        await same_ledger(ts, "main", 2)


async def test_a_failed_write_on_the_holder_answers_503_4012(authority: Authority, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_mesh(configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3"])) as ts:
        pos1 = ts[0]
        await pos1.cashier.open_drawer("main", float_cents=0, operator="carla")
        real = pos1.store._write
        broken = [True]

        async def failing(fn, *args):  # noqa: ANN001, ANN202
            if fn.__name__ == "commit" and broken[0]:
                broken[0] = False
                raise sqlite3.OperationalError("disk full")
            return await real(fn, *args)

        monkeypatch.setattr(pos1.store, "_write", failing)
        with pytest.raises(Unavailable) as err:
            await pos1.cashier.move_cash("main", direction="in", amount_cents=7, reason="x", op_id="m-1")
        assert err.value.code == STORAGE_UNAVAILABLE and err.value.http_status == 503
        again = await pos1.cashier.move_cash("main", direction="in", amount_cents=7, reason="x", op_id="m-1")
        assert again["entry"]["op_id"] == "m-1"  # the retry finds it, or appends it: once either way
        await same_ledger(ts, "main", 2)
        assert [e["op_id"] for e in ledger_of(pos1, "main")].count("m-1") == 1


async def test_concurrent_identical_provisional_requests_store_one_entry(authority: Authority,
                                                                         tmp_path: Path) -> None:
    cfgs = configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3"])
    async with running_mesh(cfgs[:1], link=False) as (pos1,):
        await pos1.cashier.open_drawer("main", float_cents=0, operator="carla", allow_provisional=True)
        results = []

        async def move() -> None:
            results.append(await pos1.cashier.move_cash("main", direction="in", amount_cents=5, reason="x",
                                                        op_id="same", allow_provisional=True))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(move)
        assert len({r["entry"]["at"] for r in results}) == 1 and all(r["entry"]["op_id"] == "same" for r in results)
        assert len(pos1.cashier.drawer("main")["provisional"]) == 2


async def test_one_order_is_not_paid_twice_in_two_drawers(authority: Authority, tmp_path: Path) -> None:
    async with running_mesh(configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3"])) as ts:
        pos1 = ts[0]
        order = await pos1.create_order(table=None, waiter=None, items=[ITEM])
        for drawer in ("main", "bar"):
            await pos1.cashier.open_drawer(drawer, float_cents=0, operator="carla")
        await pos1.cashier.pay("main", order_id=order["id"], amount_cents=1000, method="card")
        with pytest.raises(InvalidTransition, match="unpaid balance of 590"):
            await pos1.cashier.pay("bar", order_id=order["id"], amount_cents=1590, method="card")
        await pos1.cashier.pay("bar", order_id=order["id"], amount_cents=590, method="cash")
        assert _status(pos1, order["id"]) == "paid"  # split over two drawers, still marked paid
        with pytest.raises(InvalidTransition, match="already paid"):
            await pos1.cashier.pay("main", order_id=order["id"], amount_cents=1, method="card")


async def test_reserved_op_ids_and_unknown_drawers_leave_nothing(authority: Authority, tmp_path: Path) -> None:
    async with running_mesh(configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3"])) as ts:
        pos1 = ts[0]
        for op_id in ("resolve:3", "a~b"):
            with pytest.raises(InvalidInput, match="reserved"):
                await pos1.cashier.open_drawer("main", float_cents=0, operator="carla", op_id=op_id)
        with pytest.raises(NotFound, match="never been opened"):
            await pos1.cashier.move_cash("mian", direction="in", amount_cents=1, reason="typo")
        with pytest.raises(NotFound):
            pos1.cashier.drawer("mian")
        assert pos1.cashier.drawer_names() == []


async def test_malformed_cashier_messages_never_stop_the_terminal(authority: Authority, tmp_path: Path) -> None:
    bad_entry = {"kind": "review_resolution", "op_id": "x", "drawer": "main", "terminal_id": "pos-1",
                 "user_id": None, "at": "", "status": "committed", "of": 0, "decision": "adjust",
                 "amount_cents": None, "note": "", "operator": ""}
    async with running_mesh(configs(authority, tmp_path, ["pos-1", "pos-2"])) as (pos1, pos2):
        assert pos1.mesh is not None and pos2.mesh is not None
        for message in ({"type": "cashier", "m": ["x"]},
                        {"type": "cashier", "m": "ledger", "drawer": "main", "start": 0, "entries": [bad_entry]},
                        {"type": "cashier", "m": "heads", "drawers": {"main": 0}},
                        {"type": "cashier", "m": "accept", "drawer": "main", "ballot": [1, "pos-1"],
                         "position": 10**12, "entry": {"kind": "noop"}, "commit_upto": 0}):
            while True:
                await wait_linked([pos1, pos2])
                link = pos1.mesh.links["pos-2"]
                pos1.mesh.send_control("pos-2", message)
                await wait_for(lambda: link.closed is not None)  # noqa: B023
                if link.closed.code != ALREADY_CONNECTED:
                    break
                # Both had dialled at once and the link it went on lost the tie-break before pos-2
                # read it (the message went with it): send it again on the winner.
            assert link.closed.code == INVALID_MESSAGE and link.closed.by_peer, link.closed  # pos-2 refused it
        await wait_linked([pos1, pos2])
        await pos2.cashier.open_drawer("main", float_cents=0, operator="carla")  # still serving


async def test_an_order_left_unmarked_by_a_failure_is_marked_later(authority: Authority, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_mesh(configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3"])) as ts:
        pos1 = ts[0]
        order = await pos1.create_order(table=None, waiter=None, items=[ITEM])
        await pos1.cashier.open_drawer("main", float_cents=0, operator="carla")
        real, calls = pos1.set_order_status, []

        async def flaky(order_id: str, status: str, **kw: Any) -> dict[str, Any]:
            calls.append(status)
            if len(calls) == 1:
                raise Unavailable("the change could not be stored durably; retry")
            return await real(order_id, status, **kw)

        monkeypatch.setattr(pos1, "set_order_status", flaky)
        await pos1.cashier.pay("main", order_id=order["id"], amount_cents=1590, method="cash")
        assert _status(pos1, order["id"]) == "open"  # the mark failed; the payment stands
        await wait_for(lambda: _status(pos1, order["id"]) == "paid", 5)  # the reconciler's round retried it


async def test_a_reconciliation_cut_short_is_not_done_twice(authority: Authority, tmp_path: Path) -> None:
    """pos-3 appended its conflicting provisional entries (one under a renamed op_id) and crashed
    before noting it: the next round finds them by their provisional origin, appends nothing."""
    cfgs = configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3"])
    async with running_mesh(cfgs) as ts:
        order = await ts[0].create_order(table=None, waiter=None, items=[ITEM])
        await ts[0].cashier.open_drawer("main", float_cents=0, operator="carla")
        await wait_for(lambda: all(_status(t, order["id"]) == "open" for t in ts))
        await same_ledger(ts, "main", 1)
    async with running_mesh([cfgs[2]], link=False) as (pos3,):
        await pos3.cashier.pay("main", order_id=order["id"], amount_cents=1590, method="card", op_id="p-3",
                               allow_provisional=True)
        await pos3.cashier.move_cash("main", direction="in", amount_cents=9, reason="other", op_id="mv",
                                     allow_provisional=True)  # the same op_id, other content
    async with running_mesh(cfgs[:2]) as (_pos1, pos2):
        await pos2.cashier.pay("main", order_id=order["id"], amount_cents=1590, method="cash", op_id="p-2")
        await pos2.cashier.move_cash("main", direction="in", amount_cents=5, reason="float top-up", op_id="mv")
    async with running_mesh(cfgs) as ts:
        await wait_for(lambda: len(ts[2].cashier.reviews()) == 2)
        await wait_for(lambda: all(p["status"] == "in_review" for p in ts[2].cashier.drawer("main")["provisional"]))
        await same_ledger(ts, "main")
        before = ledger_of(ts[2], "main")
        assert [e["op_id"] for e in before[-2:]] == ["p-3", "mv~pos-3"]
    db = sqlite3.connect(cfgs[2].data_dir / "meshpos.db")  # as if it crashed before _settle
    db.execute("UPDATE cashier_provisional SET state = 'pending', position = NULL")
    db.commit()
    db.close()
    async with running_mesh(cfgs) as ts:
        pos3 = ts[2]
        await wait_for(lambda: all(p["status"] == "in_review" for p in pos3.cashier.drawer("main")["provisional"]))
        assert [p["position"] for p in pos3.cashier.drawer("main")["provisional"]] == [len(before) - 2,
                                                                                         len(before) - 1]
        await pos3.cashier.reconcile("main")  # one more pass, run here rather than waited for
        assert ledger_of(pos3, "main") == before  # nothing appended twice
        retry = await pos3.cashier.move_cash("main", direction="in", amount_cents=9, reason="other", op_id="mv")
        assert retry["entry"]["status"] == "in_review"  # the client's retry gets its own entry, not a 409


async def test_a_reload_during_a_request_never_validates_against_the_old_state(
        authority: Authority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_mesh(configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3"])) as ts:
        pos1 = ts[0]
        order = await pos1.create_order(table=None, waiter=None, items=[ITEM])
        await pos1.cashier.open_drawer("main", float_cents=0, operator="carla")
        real_get_order = pos1.get_order

        async def order_then_reload(order_id: str) -> dict[str, Any]:
            result = await real_get_order(order_id)
            if pos1.cashier.state.epoch < 10:  # a failed write elsewhere: the cashier reloads
                pos1.cashier.disk.stale = True
                await pos1.cashier.disk.fresh()
            return result

        monkeypatch.setattr(pos1, "get_order", order_then_reload)  # the port the cashier reads orders by
        rounds_before = dict(pos1.cashier.state.rounds)
        with pytest.raises(Unavailable, match="reloaded"):
            await pos1.cashier.pay("main", order_id=order["id"], amount_cents=1590, method="cash", op_id="p-1")
        assert pos1.cashier.state.rounds["main"] >= rounds_before["main"]  # never lowered by a reload
        monkeypatch.setattr(pos1, "get_order", real_get_order)
        paid = await pos1.cashier.pay("main", order_id=order["id"], amount_cents=1590, method="cash", op_id="p-1")
        assert paid["entry"]["status"] == "committed"
        assert [e["op_id"] for e in ledger_of(pos1, "main")].count("p-1") == 1


async def test_a_failed_read_back_keeps_the_old_state_and_answers_503(
        authority: Authority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_mesh(configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3"])) as ts:
        pos1 = ts[0]
        await pos1.cashier.open_drawer("main", float_cents=0, operator="carla")
        before = ledger_of(pos1, "main")

        async def broken(*_: Any) -> Any:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(pos1.store, "query", broken)
        pos1.cashier.disk.stale = True
        with pytest.raises(Unavailable, match="read back"):
            await pos1.cashier.move_cash("main", direction="in", amount_cents=1, reason="x")
        assert ledger_of(pos1, "main") == before and pos1.cashier.disk.stale  # nothing half-loaded
        monkeypatch.undo()
        await pos1.cashier.move_cash("main", direction="in", amount_cents=1, reason="x")  # recovered
        assert len(ledger_of(pos1, "main")) == 2
