"""A POS voter whose disk is lost rebuilds its cashier state from the other voters before it
votes or holds a drawer (``meshpos recover``; recovery.Recovery; docs/cashier.md).  Real TLS links,
real SQLite files, both anyio backends."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from core.errors import NoQuorum
from meshpos.cashier import recovery
from meshpos.recovery import recover
from meshpos.terminal import Terminal
from peer.identity import Authority
from tests.cashierutil import configs, events_of, ledger_of, same_ledger
from tests.meshutil import ITEM, address, connect_all, wait_for, wait_linked

pytestmark = pytest.mark.anyio


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "auth", "Cantina Centro")


async def test_a_voter_that_lost_its_disk_counts_again_only_after_the_others_reported(
        authority: Authority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery, "RECOVERY_QUARANTINE", 0.5)
    cfgs = configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3"])
    async with Terminal(cfgs[0]).running() as pos1:
        pos2_stack = AsyncExitStack()
        pos2 = await pos2_stack.enter_async_context(Terminal(cfgs[1]).running())
        async with Terminal(cfgs[2]).running() as pos3:
            connect_all([pos1, pos2, pos3])
            await wait_linked([pos1, pos2, pos3])
            order = await pos1.create_order(table=None, waiter="ana", items=[{**ITEM, "qty": 4}])
            await pos1.cashier.open_drawer("main", float_cents=0, operator="carla")
            await pos1.cashier.pay("main", order_id=order["id"], amount_cents=1000, method="cash", op_id="p1")
            await same_ledger([pos1, pos2, pos3], "main", 2)
        # pos-3's disk dies; the box is set up again from its enrollment and 'meshpos recover'
        for name in ("meshpos.db", "meshpos.db-wal", "meshpos.db-shm"):
            (cfgs[2].data_dir / name).unlink(missing_ok=True)
        result = await recover(cfgs[2].data_dir, terminal_id="pos-3", terminal_type="pos")
        assert not result.documents  # nothing readable was left: everything comes from the peers
        await pos2_stack.aclose()  # and pos-2 is unplugged: pos-3 cannot be rebuilt without it
        async with Terminal(cfgs[2]).running() as pos3:
            pos1.mesh.dial(address(pos3))
            pos3.mesh.dial(address(pos1))
            await wait_linked([pos1, pos3])
            await same_ledger([pos1, pos3], "main", 2)  # the committed ledger comes back by relay
            assert pos3.cashier.recovery is not None  # but one report of the two it needs
            with pytest.raises(NoQuorum):  # pos-1 and a voter that does not answer: no majority
                await pos1.cashier.pay("main", order_id=order["id"], amount_cents=500, method="card", op_id="p2")
            with pytest.raises(NoQuorum, match="rebuilding the cashier state"):  # nor does it hold
                await pos3.cashier.pay("main", order_id=order["id"], amount_cents=500, method="card", op_id="p3")
            async with Terminal(cfgs[1]).running() as pos2:
                connect_all([pos1, pos2, pos3])
                await wait_linked([pos1, pos2, pos3])
                await wait_for(lambda: pos3.cashier.recovery is None)
                recovered = await events_of(pos3, "cashier:recovered")
                assert recovered and set(recovered[0]["reports_from"]) == {"pos-1", "pos-2"}
                paid = await pos3.cashier.pay("main", order_id=order["id"], amount_cents=500, method="card",
                                              op_id="p3")
                assert paid["entry"]["status"] == "committed"
                await same_ledger([pos1, pos2, pos3], "main")
                assert [e["op_id"] for e in ledger_of(pos1, "main")][-1] == "p3"
        async with Terminal(cfgs[2]).running() as pos3:  # rebuilt for good: votes at once after a restart
            assert pos3.cashier.recovery is None
            assert pos3.cashier.states["main"].promised >= pos1.cashier.states["main"].promised
