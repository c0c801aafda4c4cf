"""Helpers for mesh tests: an enrolled store on disk and running in-process terminals on loopback."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from core.yupdate import decode_state_vector
from meshpos.config import TerminalConfig
from meshpos.terminal import Terminal
from peer.admission import hello_of as hello_of_identity
from peer.driver import failure_of
from peer.identity import Authority, load_identity
from peer.link import Closed, LinkCore, Opened, Send
from peer.tls import context

PRODUCT = {"name": "Burger", "price_cents": 1590, "station": "grill", "category": None, "active": True}
ITEM = {"sku": "burger", "name": "Burger", "qty": 1, "unit_price_cents": 1590, "station": "grill"}


def enroll(authority: Authority, tmp: Path, ids: list[str], kinds: list[str] | None = None) -> list[Path]:
    dirs = []
    for n, tid in enumerate(ids):
        kind = (kinds or ["pos"] * len(ids))[n]
        authority.enroll(tid, kind, tmp / tid)
        dirs.append(tmp / tid)
    return dirs


def config_for(data_dir: Path, terminal_id: str, **kw: Any) -> TerminalConfig:
    if (data_dir / "terminal.crt").exists():
        kw.setdefault("type", load_identity(data_dir).type)  # what the terminal was enrolled as
    kw.setdefault("api_port", 0)
    kw.setdefault("mdns", False)  # these meshes are wired by hand; tests/test_discovery.py covers mDNS
    return TerminalConfig(data_dir=data_dir, terminal_id=terminal_id, peer_host="127.0.0.1", peer_port=0, **kw)


def address(terminal: Terminal) -> str:
    assert terminal.mesh is not None
    return f"127.0.0.1:{terminal.mesh.port}"


@asynccontextmanager
async def running_mesh(configs: list[TerminalConfig], *, both_ways: bool = True,
                       link: bool = True) -> AsyncIterator[list[Terminal]]:
    """Start every terminal, then make each dial every other (both directions: tie-break)."""
    async with AsyncExitStack() as stack:
        terminals = [await stack.enter_async_context(Terminal(c).running()) for c in configs]
        if link:
            connect_all(terminals, both_ways=both_ways)
            await wait_linked(terminals)
        yield terminals


def connect_all(terminals: list[Terminal], *, both_ways: bool = True) -> None:
    for i, a in enumerate(terminals):
        for j, b in enumerate(terminals):
            if i != j and (both_ways or i < j):
                assert a.mesh is not None
                a.mesh.dial(address(b))


def linked(terminal: Terminal) -> set[str]:
    assert terminal.mesh is not None
    return set(terminal.mesh.links)


async def wait_for(predicate: Callable[[], bool], within: float = 15.0) -> None:
    """Poll state spread over several terminals (no single event to wait on)."""
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def wait_linked(terminals: list[Terminal], within: float = 15.0) -> None:
    """Every pair linked over one connection both ends agree on (the dialler of one is the acceptor
    of the other): when both dialled at once each side may briefly hold a different one until the
    tie-break closes one, with whatever was sent on it.  (A dial still under way can replace an
    agreed link later; a test sending on a link must allow for that - see the cashier tests.)"""
    ids = {t.config.terminal_id for t in terminals}
    by_id = {t.config.terminal_id: t for t in terminals}

    def settled() -> bool:
        if not all(linked(t) == ids - {t.config.terminal_id} for t in terminals):
            return False
        for t in terminals:
            for peer_id, link in t.mesh.links.items():  # type: ignore[union-attr]
                theirs = by_id[peer_id].mesh.links.get(t.config.terminal_id)  # type: ignore[union-attr]
                if theirs is None or theirs.client == link.client:
                    return False
        return True

    await wait_for(settled, within)


def fingerprint(terminal: Terminal) -> dict[str, Any]:
    """Everything a user can read from a terminal's documents (plus the state vectors)."""
    host = terminal.host
    out: dict[str, Any] = {}
    for name in host.names():
        model = host.get(name)
        assert model is not None
        out[name] = decode_state_vector(model.doc.get_state())
    inv = terminal.inventory
    out["stock"] = {sku: inv.quantity(sku) for sku in sorted(inv.catalog.keys())}
    out["tables"] = terminal.tables.list()
    return out


async def converged(terminals: list[Terminal], within: float = 15.0) -> None:
    def same() -> bool:
        prints = [fingerprint(t) for t in terminals]
        return all(p == prints[0] for p in prints[1:])

    try:
        await wait_for(same, within)
    except TimeoutError:
        report = {t.config.terminal_id: fingerprint(t) for t in terminals}
        raise AssertionError(f"not converged within {within} s: {report}") from None


# -- a hand-driven peer, for the bad-peer tests --------------------------------------------------


def tls_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    return context(ssl.PROTOCOL_TLS_CLIENT, cert, key, ca)


def hello_of(data_dir: Path, **patch: Any) -> dict[str, Any]:
    identity = load_identity(data_dir)
    return {**hello_of_identity(identity, identity.roster, "probe"), **patch}


async def probe(target: str, ctx: ssl.SSLContext, *, hello: dict[str, Any] | None = None,
                raw: bytes | None = None, after_open: list[bytes] = (), within: float = 10.0,
                together: bool = False) -> Closed:
    """Dial ``target`` as a peer would; return how the link ended, as this side saw it.

    ``raw`` is sent right after TLS instead of a WebSocket handshake; ``after_open`` are binary
    messages (or, when prefixed with ``b"RAW:"``, raw bytes) sent once the target accepted the
    hello - ``together``: in one write (TLS records of 16 KB each, in one TCP send).
    """
    host, port = target.rsplit(":", 1)
    with anyio.fail_after(within):
        try:
            stream = await anyio.connect_tcp(host, int(port), ssl_context=ctx, tls_standard_compatible=False)
        except (ssl.SSLError, OSError, anyio.BrokenResourceError) as exc:
            return Closed(*failure_of(exc), by_peer=True)
        core = LinkCore(client=True, hello=hello or {}, authorize=lambda _: None, now=anyio.current_time())
        async with stream:
            if raw is not None:
                await stream.send(raw)
            else:
                await _send(stream, core.start())
            while True:
                try:
                    data: bytes | None = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError, OSError) as exc:
                    if raw is not None or core.state != "open":
                        return Closed(*failure_of(exc), by_peer=True)
                    data = None
                if raw is not None:
                    continue  # whatever the target answers, we wait for it to hang up
                for action in core.receive(data, anyio.current_time()):
                    if isinstance(action, Send):
                        await stream.send(action.data)
                    elif isinstance(action, Opened):
                        try:
                            if together:
                                await stream.send(b"".join(s.data for m in after_open for s in core.send_binary(m)))
                            else:
                                for message in after_open:
                                    if message.startswith(b"RAW:"):
                                        await stream.send(message[4:])
                                    else:
                                        await _send(stream, core.send_binary(message))
                        except (anyio.BrokenResourceError, OSError):
                            pass  # the target hung up mid-way: its close frame may still be readable
                    elif isinstance(action, Closed):
                        return action


async def _send(stream: Any, actions: list[Any]) -> None:
    for action in actions:
        if isinstance(action, Send):
            await stream.send(action.data)


def handhelds_kept_up_through_the_wired_boxes(report: dict[str, Any]) -> None:
    """In a ``wifi-client-isolation`` report (python -m simulations.partition or simulations.netns): while
    isolated, the handhelds stay in step with each other's writes - the wired boxes pass them on
    (docs/protocol.md, "Forwarding").  The first seconds are left out: until a handheld's
    heartbeat finds its link to the other dead, the boxes take that link to carry the writes."""
    at = {e["event"]: e["t"] for e in report["events"] if e["event"] in ("isolate", "heal")}
    during = [m for t, m in report["timeline"]["divergence"] if at["isolate"] + NOTICED_DEAD_S < t < at["heal"]]
    assert len(during) >= 20, during
    for tid in (tid for tid, kind in report["terminals"].items() if kind == "waiter"):
        missing = sorted(m[tid] for m in during if tid in m)
        # in step at a typical sample; a burst in flight while a sample is read (real processes
        # are polled one after the other) may show a few - never the anti-entropy saw-tooth,
        # which climbs for up to 12 s between rounds
        assert missing and missing[len(missing) // 2] <= 1 and missing[-1] <= 10, (tid, missing)


#: A dead link's heartbeat timeout (3.5 s), the anti-entropy round it brings forward, and margin.
NOTICED_DEAD_S = 5.0
