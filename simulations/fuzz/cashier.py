"""The ``cashier`` target: quorum messages with real-looking ledger entries into a running POS."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from simulations.fuzz.settings import ISO
from simulations.fuzz.target import Target, encoded, running_terminal
from simulations.fuzz.values import mutate_value, text

TERMINALS = ["pos-1", "pos-2", "pos-3", "kds-1", ""]


def ballot(rng: random.Random) -> Any:
    if rng.random() < 0.85:
        return [rng.choice([0, 1, 2, 3, rng.randint(0, 50)]), rng.choice(TERMINALS[:3])]
    return rng.choice([[-1, "pos-2"], [1.0, "pos-2"], [True, "pos-2"], [2**64, "pos-2"], ["1", "pos-2"], [1], [],
                       [1, "a", "b"], "1,pos-2", None, [2**63, ""], [1, None], {"round": 1}])


def position(rng: random.Random) -> Any:
    if rng.random() < 0.85:
        return rng.choice([0, 1, 2, 2, 3, rng.randint(0, 10)])
    return rng.choice([99_999, 100_000, 100_001, 100_002, 2**31, 2**63, 10**30, -1, 1.5, True, "3", None])


def drawer_name(rng: random.Random, *, key: bool = False) -> Any:
    """A drawer name; ``key``: as a JSON object's key (always a string)."""
    if rng.random() < 0.85:
        return rng.choice(["main", "main", "bar", "d2"])
    return rng.choice(["", "x" * 33, "bad name", "ümlaut", "main\n", "a/b"] + ([] if key else [7, None, ["main"]]))


def ledger_entry(rng: random.Random, drawer: Any = "main") -> Any:
    """An entry of the kinds and fields of meshpos/cashier/ledger.py; a quarter of them then
    mutated (a field dropped, added, of the wrong type, negative, huge)."""
    from meshpos.cashier.ledger import FIELDS, KINDS  # noqa: PLC0415

    kind = rng.choice(KINDS)
    if kind == "noop":
        entry: dict[str, Any] = {"kind": "noop"}
    else:
        entry = {"kind": kind, "op_id": text(rng, 4, 10), "drawer": drawer if isinstance(drawer, str) else "main",
                 "terminal_id": rng.choice(["pos-1", "pos-2"]), "user_id": rng.choice([None, "ana"]), "at": ISO,
                 "status": rng.choice(["committed", "committed", "committed", "in_review"])}
        for name, wanted in FIELDS[kind].items():
            if name == "method":
                entry[name] = rng.choice(["cash", "card", "pix", "voucher"])
            elif name == "direction":
                entry[name] = rng.choice(["in", "out"])
            elif name == "decision":
                entry[name] = rng.choice(["accept", "reject", "adjust"])
            elif name == "of":
                entry[name] = rng.choice([0, 1, 2, 3, 5])
            elif wanted is str:
                entry[name] = rng.choice(["fuzz-pay-1", text(rng)]) if name.endswith("op_id") else text(rng)
            elif name == "difference_cents":
                entry[name] = rng.randint(-500, 500)
            else:
                entry[name] = rng.choice([0, 1, 100, 1590, rng.randint(0, 100_000)])
        if kind == "review_resolution":
            entry["amount_cents"] = rng.randint(0, 1000) if entry["decision"] == "adjust" else None
        if rng.random() < 0.1:
            entry["review"] = {"reason": "fuzz", "conflicts_with": [rng.randint(0, 3)]}
        if rng.random() < 0.05:
            entry["provisional"] = {"terminal_id": "pos-2", "created_at": ISO}
    if rng.random() < 0.25:
        return mutate_value(entry, rng, max_nesting=28)
    return entry


def cashier_message(rng: random.Random) -> dict[str, Any]:
    m = rng.choice(["prepare", "promise", "reject", "accept", "accept", "accepted", "commit", "commit", "release",
                    "heads", "ledger", "ledger", "recovery_query", "recovery_report"])
    d = drawer_name(rng)
    msg: dict[str, Any] = {"type": "cashier", "m": m}

    def entries(n: int) -> list[Any]:
        return [ledger_entry(rng, d) for _ in range(n)]

    if m == "prepare":
        msg.update(drawer=d, ballot=ballot(rng), known=position(rng))
    elif m == "promise":
        msg.update(drawer=d, ballot=ballot(rng), voter=rng.choice(TERMINALS), committed=position(rng),
                   accepted=[[position(rng), ballot(rng), ledger_entry(rng, d)] for _ in range(rng.randint(0, 3))])
    elif m == "reject":
        msg.update(drawer=d, ballot=ballot(rng), voter=rng.choice(TERMINALS), promised=ballot(rng),
                   locked_by=rng.choice(TERMINALS), lease_left=rng.choice([None, 0, 1.5, 10, -1, "x", True, 1e308]))
    elif m == "accept":
        msg.update(drawer=d, ballot=ballot(rng), position=position(rng), entry=ledger_entry(rng, d),
                   commit_upto=position(rng))
    elif m == "accepted":
        msg.update(drawer=d, ballot=ballot(rng), position=position(rng), voter=rng.choice(TERMINALS),
                   committed=position(rng))
    elif m == "commit":
        msg.update(drawer=d, ballot=ballot(rng), start=position(rng), entries=entries(rng.choice([0, 1, 2, 3, 70])))
    elif m == "release":
        msg.update(drawer=d, ballot=ballot(rng))
    elif m == "heads":
        msg.update(drawers={drawer_name(rng, key=True): position(rng)
                            for _ in range(rng.randint(0, 3))}, all=rng.choice([True, False, True, 1, None]))
    elif m == "ledger":
        msg.update(drawer=d, start=position(rng), entries=entries(rng.choice([0, 1, 2, 3, 64, 65])))
    elif m == "recovery_query":
        msg.update(known={drawer_name(rng, key=True): position(rng)
                          for _ in range(rng.randint(0, 3))})
    else:
        msg.update(last=rng.choice([True, False, True, 1]), drawers={
            drawer_name(rng, key=True): {
                "promised": ballot(rng), "committed": position(rng),
                "accepted": [[position(rng), ballot(rng), ledger_entry(rng, d)] for _ in range(rng.randint(0, 2))]}
            for _ in range(rng.randint(0, 2))})
    if rng.random() < 0.3:
        msg = mutate_value(msg, rng, max_nesting=28)
    return msg


class CashierTarget(Target):
    """Quorum messages to the parsers and to the cashier of a running POS, its store's only voter
    (enrolled, so ``heads``, ``ledger`` and recovery queries find the peer links they answer on)."""

    name = "cashier"
    asynchronous = True
    _template: Path | None = None

    def generate(self, index: int) -> dict[str, Any]:
        rng = self.rng(index)
        message = cashier_message(rng)
        if not isinstance(message, dict):  # a mutation replaced the whole message
            message = {"type": "cashier", "m": "commit", "x": message}
        return {"sender": rng.choice(["pos-2", "pos-2", "pos-3", "pos-1", "kds-1"]), "message": message}

    def template(self, workdir: Path) -> Path:
        """An enrolled data directory (made once per process): a copy starts each session."""
        if self._template is None:
            from peer.identity import Authority  # noqa: PLC0415

            root = workdir / "cashier-template"
            authority = Authority.init(root / "auth", "fuzz")
            authority.enroll("pos-1", "pos", root / "pos-1")
            type(self)._template = root / "pos-1"
        return self._template

    @contextlib.asynccontextmanager
    async def session(self, workdir: Path) -> AsyncIterator[Any]:
        template = self.template(workdir.parent)
        async with running_terminal(workdir, template=template) as terminal:
            session = CashierSession(terminal)
            await session.setup()
            yield session


class CashierSession:
    def __init__(self, terminal: Any) -> None:
        self.t = terminal

    async def setup(self) -> None:
        """Drawer ``main`` opened with a payment in it: the messages meet a ledger, not nothing."""
        order = await self.t.create_order(table=None, waiter=None, items=[
            {"sku": "burger", "name": "Burger", "qty": 2, "unit_price_cents": 1590, "station": "grill"}])
        await self.t.cashier.open_drawer("main", float_cents=10_000, operator="fuzz", op_id="fuzz-open-1")
        await self.t.cashier.pay("main", order_id=order["id"], amount_cents=1000, method="cash", op_id="fuzz-pay-1")

    async def run(self, inp: dict[str, Any]) -> str:
        import anyio  # noqa: PLC0415

        from meshpos.cashier.ledger import check_entry  # noqa: PLC0415
        from meshpos.cashier.messages import BadMessage, from_wire  # noqa: PLC0415
        from meshpos.cashier.recovery import report_from_wire  # noqa: PLC0415

        message = inp["message"]
        if message.get("m") == "recovery_report":
            with contextlib.suppress(BadMessage):
                report_from_wire(message, check_entry)
        else:
            with contextlib.suppress(BadMessage):
                from_wire(message, 0.0, check_entry)
        try:
            await self.t.cashier.receive(inp["sender"], message)
        except BadMessage:
            return "refused"
        await anyio.lowlevel.checkpoint()
        return "accepted"

    async def finish(self) -> None:
        encoded([self.t.cashier.summary(d) for d in self.t.cashier.drawer_names()])
        encoded([self.t.cashier.drawer(d) for d in self.t.cashier.drawer_names()])
        encoded(self.t.cashier.reviews("all"))
