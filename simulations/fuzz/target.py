"""What a target is, and what the terminal targets share: a running terminal on the fixed clock,
and reading a document back the ways the API and the events do."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from simulations.fuzz.settings import NOW


class Target:
    """One input path: ``generate(index)`` is a pure function of (seed, index); ``run(input)``
    returns ``"refused"`` or ``"accepted"`` and raises on a crash."""

    name = ""
    asynchronous = False

    def __init__(self, seed: int, plant: int | None = None) -> None:
        self.seed = seed
        self.plant = plant

    def rng(self, index: int) -> random.Random:
        return random.Random(f"{self.seed}:{self.name}:{index}")

    def prepare(self) -> None:
        """Once per process, outside any event loop, before the first input is generated."""

    def generate(self, index: int) -> Any:
        raise NotImplementedError

    def run(self, inp: Any) -> str:
        raise NotImplementedError


def encoded(value: Any) -> Any:
    """What the API would send: a value that does not encode as JSON would be a 500 there."""
    from core.codec import encode_json_bytes  # noqa: PLC0415

    encode_json_bytes(value)
    return value


async def read_back(terminal: Any, kind: str) -> None:
    """Read a document the ways the API and the events WebSocket do (every one must work whatever
    it holds)."""
    if kind == "tables":
        encoded(terminal.tables.list())
    elif kind == "inventory":
        inv = terminal.inventory
        encoded([inv.view(sku) for sku in inv.skus()])
        encoded(inv.products())
    else:
        encoded(await terminal.list_orders())
    # the newest events as a UI replaying them reads them: an order view a peer's new order left
    # to the reader (meshpos/documents/orders.py, resolve_event) is built here, whatever it holds
    last = terminal.store.last_cursor
    if last == 0:
        return
    async with terminal.events.subscribe(max(0, last - 50)) as stream:
        async for event in stream:
            if not hasattr(event, "to_json"):  # a Reset: history this old is gone
                break
            encoded(event.to_json())
            if event.cursor >= last:
                break


@contextlib.asynccontextmanager
async def running_terminal(data_dir: Path, *, template: Path | None = None) -> AsyncIterator[Any]:
    """A real terminal in ``data_dir`` (fresh), on the fixed clock; enrolled if ``template`` holds
    an enrolled data directory (copied first)."""
    from meshpos.config import TerminalConfig  # noqa: PLC0415
    from meshpos.terminal import Terminal  # noqa: PLC0415

    if template is not None:
        shutil.copytree(template, data_dir)
    config = TerminalConfig(data_dir=data_dir, terminal_id="pos-1", api_port=0, mdns=False,
                            peer_host="127.0.0.1", peer_port=0)
    try:
        async with Terminal(config, clock=lambda: NOW).running() as terminal:
            yield terminal
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def scratch() -> str | None:
    """Terminals' data directories go to memory when the box has a tmpfs: fsync is not what is tested."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
