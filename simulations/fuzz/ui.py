"""What a browser sends on the Yjs route (``ui``): y-websocket messages carrying the updates the
``yupdate`` target makes, state vectors and awareness, framed right or broken - decoded by
core/ymessages.py, then an update goes through the terminal's UI write path
(``Terminal.apply_ui_update``: checked on a scratch copy, stored) into each document.

The oracle, beyond "no crash": an input is refused only with the error table's errors
(``MeshposError``, or ``MessageError`` for the framing), and a refused update leaves the
document's state exactly as it was."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from simulations.fuzz.encoding import random_state_vector
from simulations.fuzz.peers import crdt_pool, yjs_update
from simulations.fuzz.settings import DAY
from simulations.fuzz.target import Target, read_back, running_terminal
from simulations.fuzz.values import json_value, mutate_bytes, text


def ui_message(rng: random.Random, seed: int) -> bytes:
    from core.codec import encode_json  # noqa: PLC0415
    from core.ymessages import STEP1, STEP2, UPDATE, AwarenessEntry, encode_awareness, encode_sync  # noqa: PLC0415

    r = rng.random()
    if r < 0.6:
        return encode_sync(rng.choice([UPDATE, UPDATE, STEP2]), yjs_update(rng, crdt_pool(seed)))
    if r < 0.7:
        return encode_sync(STEP1, random_state_vector(rng))
    if r < 0.85:
        entries = []
        for _ in range(rng.choice([0, 1, 1, 2, 17])):
            state = rng.choice(["null", "{}", encode_json({text(rng): json_value(rng)}), text(rng), "[" * 40])
            entries.append(AwarenessEntry(rng.randint(0, 2**53 - 1), rng.randint(0, 2**31), state))
        return encode_awareness(entries)
    if r < 0.9:
        return rng.choice([b"\x03", b"\x02", b"", b"\x00", b"\x01\x00"])
    base = encode_sync(UPDATE, yjs_update(rng, crdt_pool(seed)))
    return mutate_bytes(base, rng)


class UiTarget(Target):
    name = "ui"
    asynchronous = True

    def generate(self, index: int) -> bytes:
        return ui_message(self.rng(index), self.seed)

    @contextlib.asynccontextmanager
    async def session(self, workdir: Path) -> AsyncIterator[Any]:
        async with running_terminal(workdir) as terminal:
            yield UiSession(terminal)


class UiSession:
    def __init__(self, terminal: Any) -> None:
        from core.ymessages import AwarenessTable  # noqa: PLC0415

        self.t = terminal
        self.awareness = AwarenessTable()
        self.docs = [("tables", "tables"), ("inventory", "inventory"), (f"orders/{DAY}", "orders")]

    async def run(self, data: bytes) -> str:
        from core.errors import MeshposError  # noqa: PLC0415
        from core.ymessages import STEP1, AwarenessMessage, MessageError, SyncMessage, decode_message  # noqa: PLC0415

        try:
            message = decode_message(data)
        except MessageError:
            return "refused"
        if isinstance(message, AwarenessMessage):
            self.awareness.apply(object(), message.entries)
            return "accepted"
        if not isinstance(message, SyncMessage):
            return "accepted"
        if message.kind == STEP1:
            for name, _ in self.docs:
                self.t.host.diff(name, message.payload)
            return "accepted"
        outcome = "refused"
        for name, kind in self.docs:
            before = self.t.host.versions(name)
            try:
                await self.t.apply_ui_update(name, message.payload, "ui:fuzz")
            except MeshposError:
                if self.t.host.versions(name) != before:
                    raise AssertionError(f"a refused update changed {name}") from None
                continue
            await read_back(self.t, kind)
            outcome = "accepted"
        return outcome

    async def finish(self) -> None:
        for _, kind in self.docs:
            await read_back(self.t, kind)
