"""Dialling: whom this terminal dials, where, and how soon it tries again.

Static peers are dialled for good; terminals discovery found are dialled at the addresses it
saw while it still sees them.  A failed dial backs off (exponential, full jitter, capped); a link
opening anywhere wakes every dial loop in backoff, since it is evidence the network is back.
The link itself, once TLS is up, is the mesh's (:meth:`Dialler` is handed ``run_link``).
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
from anyio.streams.tls import TLSStream

from core.errors import AUTHENTICATION_FAILED, INVALID_TERMINAL_ID, INVALID_TERMINAL_TYPE
from core.names import parse_address
from peer.driver import failure_of
from peer.link import Closed
from peer.status import PeerBook, PeerState
from peer.transport import Transport

log = logging.getLogger("peer.mesh")

BACKOFF_BASE = 0.1
BACKOFF_CAP = 5.0
#: A peer linked less than RECENT_LOSS_SECONDS ago is redialled with this cap instead (see
#: :func:`backoff_cap`): short outages - a Wi-Fi flap, a split during a rush, a reboot -
#: are the common case, and the seeds ask reconnection < 2 s.
EAGER_CAP = 1.0
RECENT_LOSS_SECONDS = 300.0
#: The eager cap grows by this per recently lost peer: a terminal's eager redials stay at about
#: 2 / EAGER_SPACING per second however many peers a split took away.
EAGER_SPACING = 0.1
#: After an authentication refusal (4001-4003) a dialer waits this long: retrying fast cannot
#: fix a certificate, while a roster update (which may) reaches the terminal through others.
AUTH_RETRY_SECONDS = 60.0
CONNECT_TIMEOUT = 5.0
#: Woken by a link opening, the dialler whose link would lose the tie-break waits this long first.
KICK_YIELD = 0.3
#: Local-only: a discovered address answered as another terminal (never sent on the wire).
WRONG_TERMINAL = -1

#: ``run_link(stream, address, expect=terminal id or None)``: (how it closed, whether it opened).
RunLink = Callable[..., Awaitable[tuple[Closed | None, bool]]]


def backoff_cap(lost_at: dict[str, float], peer_id: str | None, now: float) -> float:
    """:data:`EAGER_CAP` for a peer lost less than :data:`RECENT_LOSS_SECONDS` ago, else
    :data:`BACKOFF_CAP`; ``lost_at``: peer id -> when its link dropped (expired entries are pruned).

    Nothing tells a terminal that a split healed or a rebooted box is up again but its next dial,
    so how soon the first link opens after the network comes back is the backoff cap.  A peer
    linked minutes ago is probably a short outage: retry about every 0.5 s.  The cap grows with
    the number of recently lost peers (:data:`EAGER_SPACING` each), so a 50-terminal store split
    in two does not dial 25 peers twice a second from every box; a peer gone longer than the
    window falls back to the 5 s cap - a box unplugged for the night costs one attempt per 2.5 s
    per dialler.
    """
    for old in [p for p, at in lost_at.items() if now - at > RECENT_LOSS_SECONDS]:
        del lost_at[old]
    if peer_id not in lost_at:
        return BACKOFF_CAP
    return min(BACKOFF_CAP, max(EAGER_CAP, EAGER_SPACING * len(lost_at)))


def backoff_delay(attempt: int, rng: random.Random, cap: float = BACKOFF_CAP) -> float:
    """Exponential backoff with full jitter, capped: uniform in [0, min(cap, base * 2^attempt)]."""
    return rng.uniform(0.0, min(cap, BACKOFF_BASE * 2 ** min(attempt, 16)))


class Dialler:
    """The dial loops of one terminal; they run in the task group :meth:`start` is given."""

    def __init__(self, *, me: str, transport: Transport, client_ctx: ssl.SSLContext, rng: random.Random,
                 book: PeerBook, links: Mapping[str, Any], run_link: RunLink, static_peers: list[str],
                 server_name: str | None = None) -> None:
        """``server_name``: sent as TLS SNI on every dial - the store id, which is how an HQ that
        serves many stores on one port picks the certificate this store trusts (docs/hq.md);
        terminals ignore it."""
        self.me = me
        self.server_name = server_name
        self.transport = transport
        self._client_ctx = client_ctx
        self.rng = rng
        self.book = book
        self.links = links  # peer id -> its link, while linked
        self._run_link = run_link
        self.static_peers = list(dict.fromkeys(static_peers))
        for address in self.static_peers:
            parse_address(address)
        self._address_ids: dict[str, str] = {}
        self._link_down: dict[str, anyio.Event] = {}
        #: Peer id -> when (``anyio.current_time()``) its link last dropped, while it is not linked.
        self.lost_at: dict[str, float] = {}
        #: Set (and replaced) whenever a link opens: dial loops sleeping in backoff wake on it.
        self._network_back = anyio.Event()
        #: Terminals discovery sees and where (``HOST:PORT``s); the ids whose dial loop runs.
        self.found: dict[str, list[str]] = {}
        self.found_dials: set[str] = set()
        self._tg: anyio.abc.TaskGroup | None = None

    def start(self, tg: anyio.abc.TaskGroup | None) -> None:
        """Dial the static peers in ``tg``; ``None``: stopped, nothing more is dialled."""
        self._tg = tg
        if tg is not None:
            for address in self.static_peers:
                tg.start_soon(self._dial_loop, address)

    def dial(self, address: str) -> None:
        parse_address(address)
        if address in self.static_peers or self._tg is None:
            return
        self.static_peers.append(address)
        self._tg.start_soon(self._dial_loop, address)

    def discovered(self, terminal_id: str, addresses: list[str]) -> None:
        for address in addresses:
            parse_address(address)
        addresses = [a for a in addresses if a not in self.static_peers]  # those are dialled for good
        if terminal_id == self.me or self._tg is None or not addresses:
            self.found.pop(terminal_id, None)
            return
        self.found[terminal_id] = addresses
        if terminal_id not in self.found_dials:
            self.found_dials.add(terminal_id)
            self._tg.start_soon(self._dial_loop, None, terminal_id)

    def dial_addresses(self, terminal_id: str) -> list[str]:
        return list(self.found.get(terminal_id, []))

    def lost(self, terminal_id: str) -> None:
        self.found.pop(terminal_id, None)
        self.lost_at.pop(terminal_id, None)  # gone for good, not an outage: no eager redials

    def link_up(self, peer_id: str) -> None:
        """A link to ``peer_id`` opened (its dial loop rests; every loop in backoff wakes)."""
        self.lost_at.pop(peer_id, None)
        self._network_back.set()
        self._network_back = anyio.Event()

    def identified(self, peer_id: str, address: str) -> None:
        """A link this terminal dialled at ``address`` reached ``peer_id`` (its hello said so)."""
        self._address_ids[address] = peer_id

    def link_down(self, peer_id: str, *, refused: bool) -> None:
        """``peer_id``'s link ended; after an outage (not a refusal) it is redialled eagerly."""
        self._link_down.pop(peer_id, anyio.Event()).set()
        if not refused:
            self.lost_at[peer_id] = anyio.current_time()

    async def _dial_loop(self, static: str | None, found: str | None = None) -> None:
        """Dial a static address for good, or the terminal ``found`` by discovery while discovery
        still sees it: its addresses in turn, so a stale one (cached from before a restart, or
        now another terminal's) fails over to the next."""
        attempt = 0
        try:
            while found is None or found in self.found:
                if found is None:
                    address = static
                else:
                    candidates = self.found[found]
                    address = candidates[attempt % len(candidates)]
                host, port = parse_address(address)  # type: ignore[arg-type]
                known = found if found is not None else self._address_ids.get(address)  # type: ignore[arg-type]
                if known is not None and known in self.links:
                    await self._link_down.setdefault(known, anyio.Event()).wait()
                    continue
                state: PeerState
                if found is not None:
                    state = self.book.peers.get(found) or self.book.found.setdefault(
                        found, PeerState(terminal_id=found, address=address))
                else:
                    state = self.book.by_address.setdefault(address, PeerState(terminal_id=None, address=address))  # type: ignore[arg-type]
                network_back = self._network_back  # a link opening while this dial is under way counts too
                try:
                    with anyio.fail_after(CONNECT_TIMEOUT):
                        stream = await self._connect(host, port)
                except Exception as exc:  # noqa: BLE001 - unreachable, refused, TLS: all mean "retry later"
                    code, reason = failure_of(exc, dialling=True)
                    self.book.failed(state, code, reason)
                    if code == AUTHENTICATION_FAILED:
                        self.book.refused(known, address, code, reason, inbound=False)  # type: ignore[arg-type]
                        await anyio.sleep(AUTH_RETRY_SECONDS)
                        continue
                    attempt += 1
                    log.debug("dial %s (%s) failed: %d %s", address, known or "unknown", code, reason)
                    await self._backoff(attempt, known, network_back)
                    continue
                closed, opened = await self._run_link(stream, address, expect=found)
                if closed is not None and closed.code == WRONG_TERMINAL:
                    self.book.failed(state, INVALID_TERMINAL_ID, closed.reason)
                    candidates = self.found.get(found, [])  # type: ignore[arg-type]
                    if address in candidates and len(candidates) > 1:
                        candidates.remove(address)  # that address is somebody else's now
                    attempt += 1
                    await self._backoff(attempt, known)
                    continue
                if closed is not None and closed.code in (INVALID_TERMINAL_ID, INVALID_TERMINAL_TYPE,
                                                          AUTHENTICATION_FAILED):
                    await anyio.sleep(AUTH_RETRY_SECONDS)
                    continue
                attempt = 0 if opened else attempt + 1
                await self._backoff(attempt, known)
        finally:
            if found is not None:
                self.found_dials.discard(found)
                self.book.found.pop(found, None)

    async def _backoff(self, attempt: int, peer_id: str | None, network_back: anyio.Event | None = None) -> None:
        """Sleep :func:`backoff_delay` before the next dial, or less if a link opens meanwhile.

        Any link opening (inbound or outbound, any peer) is evidence the network is back - a split
        healed, Wi-Fi returned - so a peer that was unreachable probably is reachable again too;
        without this wake-up every dial loop would wait out its own backoff (up to its cap)
        after a heal.  ``network_back`` is the event captured before the failed dial (a link that
        opened during it counts); by default the current one.  No storm: only a link opening wakes
        the loops, each sleeping loop dials once per such event, and ``attempt`` is kept (the
        caller's), so a peer that still fails backs off as far as before.  (Authentication
        refusals wait :data:`AUTH_RETRY_SECONDS` regardless: the network cannot fix a certificate.)

        Woken so, the side whose link would lose the tie-break (the higher terminal id) gives the
        other side's dial :data:`KICK_YIELD` to land first: the peer is woken by the same heal,
        and two simultaneous dials cost two TLS handshakes and two catch-ups for one link.
        """
        event = self._network_back if network_back is None else network_back
        delay = backoff_delay(attempt, self.rng, backoff_cap(self.lost_at, peer_id, anyio.current_time()))
        started = anyio.current_time()
        with anyio.move_on_after(delay):
            await event.wait()
        if peer_id is not None and peer_id < self.me:
            await anyio.sleep(max(0.0, min(KICK_YIELD, delay - (anyio.current_time() - started))))

    async def _connect(self, host: str, port: int) -> TLSStream:
        raw = await self.transport.connect(host, port)
        try:
            return await TLSStream.wrap(raw, server_side=False, hostname=self.server_name,
                                        ssl_context=self._client_ctx, standard_compatible=False)
        except BaseException:
            await anyio.aclose_forcefully(raw)
            raise
