"""What the cashier needs of the terminal it runs in, and of the peer links - nothing more.

The cashier is built by the terminal (the composition root) and never imports it: these
protocols are the whole surface, so the dependency runs one way (terminal -> cashier) and a
test or a simulator can hand the cashier something smaller than a terminal.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from datetime import date
from typing import Any, Protocol

from core.clock import Clock, IdSource
from storage.store import Store


class Voters(Protocol):
    def voters(self) -> list[str]:
        """The terminals that vote on drawers (the roster's POS terminals)."""


class CashierNetwork(Protocol):
    """The peer links as the cashier uses them (``peer.mesh.Mesh`` is one)."""

    @property
    def roster(self) -> Voters: ...

    @property
    def links(self) -> Collection[str]:
        """The peers linked now."""

    def send_control(self, peer_id: str, message: dict[str, Any]) -> bool:
        """Queue a ``cashier`` control message to a linked peer; ``False`` if it is not linked."""


class Identity(Protocol):
    @property
    def terminal_id(self) -> str: ...

    @property
    def type(self) -> str: ...


class CashierTerminal(Protocol):
    """The terminal around the cashier (``meshpos.terminal.Terminal`` is one)."""

    @property
    def config(self) -> Identity: ...

    @property
    def rng(self) -> random.Random: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def id_source(self) -> IdSource: ...

    @property
    def store(self) -> Store: ...

    @property
    def mesh(self) -> CashierNetwork | None:
        """``None`` on a terminal that is not enrolled (it runs alone)."""

    def live_days(self) -> list[date]: ...

    async def get_order(self, order_id: str) -> dict[str, Any]: ...

    async def set_order_status(self, order_id: str, status: str, *, reason: str | None = None,
                               user: str | None = None) -> dict[str, Any]: ...
