"""The anyio shell around the link and sync cores: listen, dial, run links, keep peer state.

Everything here is I/O and bookkeeping; decisions live in :mod:`peer.link` (framing, hello,
heartbeats, limits) and :mod:`peer.sync` (what to send, bounded).  Each link is three tasks in
one task group - reader, writer, ticker - and every task the mesh starts belongs to the task
group :meth:`Mesh.run` opens inside the terminal's own, so stopping the terminal stops them all.

One link per pair: when both terminals dial at once, the link dialled by the terminal with the
smaller id wins and the other is closed with 4004 on both sides (each side applies the same
rule, so they agree without talking).  A link from a new incarnation of a peer (another boot id)
replaces the old one at once instead of waiting for the old one's heartbeat to time out.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import logging
import random
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteStream
from anyio.streams.tls import TLSAttribute, TLSStream
from cryptography import x509

from core.clock import Clock, IdSource, id_bytes, iso, random_id
from core.errors import (
    ALREADY_CONNECTED,
    AUTHENTICATION_FAILED,
    INVALID_MESSAGE,
    INVALID_TERMINAL_ID,
    INVALID_TERMINAL_TYPE,
    RATE_LIMIT,
    MessageRefused,
    StoreError,
)
from core.names import parse_address
from core.ratelog import RateLimitedLog
from core.yupdate import UpdateGap
from peer import admission
from peer.identity import IdentityError, Roster, TerminalIdentity, save_roster, subject_of, verify_roster
from peer.link import ABNORMAL, Binary, Closed, Control, Heartbeat, Limits, LinkCore, Opened, Send
from peer.replica import ControlHandler, LinkListener, Replica
from peer.replication import AUTO_FETCH_DAYS, CATCH_UP_WAIT, ReadWindow, Replication, by_doc
from peer.sync import AnswerStep1, Apply, SyncSession
from peer.tls import client_context, peer_certificate, server_context
from peer.transport import Transport
from peer.wire import WireError, value_of

log = logging.getLogger(__name__)

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
FETCH_TIMEOUT = 3.0
#: How often linked peers re-compare state vectors (covers peers that cannot reach each other).
ANTI_ENTROPY_SECONDS = 10.0
#: Woken by a link opening, the dialler whose link would lose the tie-break waits this long first.
KICK_YIELD = 0.3
INTERNAL_ERROR = 1011
#: What reading or writing a TLS stream raises when the other side is gone or misbehaves.
TRANSPORT_ERRORS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ssl.SSLError, OSError)
GOING_AWAY = 1001
#: Local-only: a discovered address answered as another terminal (never sent on the wire).
WRONG_TERMINAL = -1
#: Connections accepted but not yet authenticated (TLS, upgrade and hello under way), in all and
#: per remote host.  Beyond these a new connection is closed at once: the peer port listens on
#: every interface, and anyone on the LAN can open connections without a certificate.  A real
#: peer needs one connection at a time; a store of 30 terminals all rebooting needs 29.
MAX_UNAUTHENTICATED = 64
MAX_UNAUTHENTICATED_PER_HOST = 8


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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


def failure_of(exc: BaseException, *, dialling: bool = False) -> tuple[int, str]:
    """The close code and reason a transport failure is reported with (TLS refusals are 4003).

    ``dialling``: a connection closed during the TLS handshake is then no refusal of this
    terminal's certificate (that comes as an alert) - a peer at its cap of connections waiting
    to authenticate hangs up before any TLS byte - and is retried with the usual backoff, not
    after the 60 s an authentication refusal waits."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    cause = exc.__cause__ or exc.__context__
    for e in (exc, cause):
        if isinstance(e, ssl.SSLCertVerificationError):
            return AUTHENTICATION_FAILED, f"TLS handshake failed: {e.verify_message or e.reason}"
        if dialling and isinstance(e, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return ABNORMAL, "connection closed during the TLS handshake"
        if isinstance(e, ssl.SSLError):
            return AUTHENTICATION_FAILED, f"TLS handshake failed: {e.reason or e}"
    if isinstance(exc, TimeoutError):
        return ABNORMAL, "timed out"
    return ABNORMAL, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass(slots=True)
class PeerState:
    """What ``GET /api/v1/peers`` shows for one peer terminal (or a static address not yet linked)."""

    terminal_id: str | None
    type: str | None = None
    address: str | None = None
    online: bool = False
    direction: str | None = None
    connected_since: str | None = None
    last_heartbeat: str | None = None
    rtt_ms: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    updates_in: int = 0
    updates_out: int = 0
    last_error: dict[str, Any] | None = None

    def to_json(self, roster: Roster) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]
        out["revoked"] = self.terminal_id is not None and roster.is_revoked(self.terminal_id)
        out["enrolled"] = self.terminal_id is not None and self.terminal_id in roster.terminals
        return out


@dataclass(eq=False)
class Link:
    core: LinkCore
    stream: ByteStream
    address: str
    client: bool
    session: SyncSession = field(default_factory=SyncSession)
    out: list[bytes] = field(default_factory=list)
    wake: anyio.Event = field(default_factory=anyio.Event)
    peer_id: str | None = None
    cert_id: str | None = None  # the terminal id the TLS certificate names (before the hello proves it)
    peer_type: str | None = None
    peer_boot: str | None = None
    registered: bool = False
    closed: Closed | None = None
    ended: anyio.Event = field(default_factory=anyio.Event)
    writer_done: anyio.Event = field(default_factory=anyio.Event)
    drained: anyio.Event = field(default_factory=anyio.Event)
    #: Called once its hello is authorized (an inbound link's admission slot is given back).
    authenticated: Callable[[], None] | None = None
    #: What its reads applied, not yet known durable.
    reads: ReadWindow = field(default_factory=ReadWindow)
    #: Set when the other links' catch-ups this link's deferred step 1s wait for are over.
    catch_up_done: anyio.Event = field(default_factory=anyio.Event)
    #: The link's own task group: what is started for one link ends with it.
    tasks: anyio.abc.TaskGroup | None = None

    def push(self, actions: list[Any]) -> list[Any]:
        """Queue the bytes among ``actions`` for the writer; return the rest."""
        rest = []
        for action in actions:
            if isinstance(action, Send):
                self.out.append(action.data)
            else:
                rest.append(action)
        self.wake.set()
        return rest

    @property
    def dialer(self) -> str | None:
        return None if self.peer_id is None else ("self" if self.client else self.peer_id)


class Mesh:
    """All peer links of one terminal.  :meth:`run` in the terminal's task group."""

    def __init__(self, replica: Replica, identity: TerminalIdentity, *, data_dir: Path, clock: Clock,
                 transport: Transport, peers: list[str], limits: Limits | None = None,
                 rng: random.Random | None = None, max_queue_bytes: int | None = None,
                 threads: bool = True, id_source: IdSource = id_bytes) -> None:
        self.replica = replica
        self.data_dir = data_dir  # where an adopted roster is saved
        #: ``False``: the roster file is written inline, as the store does for a simulation on
        #: virtual time (a worker thread would make the order of events depend on the OS).
        self.threads = threads
        self._roster_lock = anyio.Lock()
        self.clock = clock
        self.identity = identity
        self.roster = identity.roster
        self.me = identity.terminal_id
        self.boot_id = random_id(12, id_source)
        self.limits = limits or Limits()
        self.max_queue_bytes = max_queue_bytes
        self.rng = rng or random.Random()
        self.transport = transport
        self.host, self.port = transport.host, transport.port
        self.static_peers = list(dict.fromkeys(peers))
        for address in self.static_peers:
            parse_address(address)
        self._server_ctx = server_context(identity)
        self._client_ctx = client_context(identity)
        self.links: dict[str, Link] = {}
        self.peers: dict[str, PeerState] = {}
        self._by_address: dict[str, PeerState] = {}
        self._address_ids: dict[str, str] = {}
        self._link_down: dict[str, anyio.Event] = {}
        #: Peer id -> when (``anyio.current_time()``) its link last dropped, while it is not linked.
        self._lost_at: dict[str, float] = {}
        #: Set (and replaced) whenever a link opens: dial loops sleeping in backoff wake on it.
        self._network_back = anyio.Event()
        #: Catch-ups and fetches across the links (the decisions; this shell waits and sends).
        self.replication: Replication[Link] = Replication(catch_up_wait=CATCH_UP_WAIT)
        #: Archived day -> set when its fetch is over (every asked peer answered or is gone).
        self._fetched: dict[str, anyio.Event] = {}
        #: Terminals discovery sees and where (``HOST:PORT``s); the ids whose dial loop runs.
        self._discovered: dict[str, list[str]] = {}
        self._discovery_dials: set[str] = set()
        #: Dial state of discovered terminals not linked yet (dropped with their dial loop, so a
        #: forged advert leaves nothing behind).
        self._found_states: dict[str, PeerState] = {}
        #: Recent refusals (either side), newest last: why a terminal that tried is not linked.
        self.refusals: deque[dict[str, Any]] = deque(maxlen=50)
        #: Remote host -> connections from it not authenticated yet (see MAX_UNAUTHENTICATED).
        self._unauthenticated: dict[str, int] = {}
        self._refusal_log = RateLimitedLog(log)
        self._tg: anyio.abc.TaskGroup | None = None
        #: Control message type -> its handler (the cashier's); callbacks for each link that opens.
        self._control_handlers: dict[str, ControlHandler] = {}
        self._link_listeners: list[LinkListener] = []
        replica.on_update(self._on_local_update)

    def handle_control(self, kind: str, handler: ControlHandler) -> None:
        """Hand every control message of type ``kind`` (one of :data:`peer.wire.CONTROL_TYPES`
        the mesh does not handle itself) to ``handler``."""
        self._control_handlers[kind] = handler

    def on_link_up(self, listener: LinkListener) -> None:
        self._link_listeners.append(listener)

    # -- lifecycle -----------------------------------------------------------------------------

    def close_socket(self) -> None:
        """Release the bound peer socket of a mesh that will never :meth:`run`."""
        self.transport.close()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self.transport.serve, self._accept)
                for address in self.static_peers:
                    tg.start_soon(self._dial_loop, address)
                tg.start_soon(self._anti_entropy)
                log.info("peer links on %s:%s (store %s, roster v%d)", self.host, self.port,
                         self.identity.store_id, self.roster.version)
                task_status.started()
        finally:
            self._tg = None

    def dial(self, address: str) -> None:
        """Start dialling ``address`` for good (a static peer added at run time)."""
        parse_address(address)
        if address in self.static_peers or self._tg is None:
            return
        self.static_peers.append(address)
        self._tg.start_soon(self._dial_loop, address)

    def discovered(self, terminal_id: str, addresses: list[str]) -> None:
        """Dial ``terminal_id`` where discovery saw it (``HOST:PORT`` each, tried in turn); new
        addresses replace the old ones for the next attempt.  A link already up is left alone."""
        for address in addresses:
            parse_address(address)
        addresses = [a for a in addresses if a not in self.static_peers]  # those are dialled for good
        if terminal_id == self.me or self._tg is None or not addresses:
            self._discovered.pop(terminal_id, None)
            return
        self._discovered[terminal_id] = addresses
        if terminal_id not in self._discovery_dials:
            self._discovery_dials.add(terminal_id)
            self._tg.start_soon(self._dial_loop, None, terminal_id)

    def dial_addresses(self, terminal_id: str) -> list[str]:
        """Where the mesh dials a discovered terminal, in the order it tries them."""
        return list(self._discovered.get(terminal_id, []))

    def lost(self, terminal_id: str) -> None:
        """Stop dialling a terminal discovery no longer sees (it said goodbye, or it was revoked);
        a link that is up stays until it ends by itself (a stale advert never cuts a working link)."""
        self._discovered.pop(terminal_id, None)
        self._lost_at.pop(terminal_id, None)  # gone for good, not an outage: no eager redials

    def why_not_linked(self, terminal_id: str, addresses: list[str]) -> str:
        """The newest reason a known terminal is not linked, for ``meshpos peers``: its latest
        refusal or its link's last error, whichever came last (4004 tie-breaks are no reason)."""
        refusal = next((e for e in reversed(self.refusals) if e["code"] != ALREADY_CONNECTED
                        and (e["terminal_id"] == terminal_id or e["address"] in addresses)), None)
        state = self.peers.get(terminal_id) or self._found_states.get(terminal_id)
        error = state.last_error if state is not None else None
        if refusal is not None and (error is None or refusal["at"] >= error["at"]):
            return (f"handshake failed ({refusal['direction']}, {refusal['at']}): "
                    f"{refusal['code']} {refusal['reason']}")
        if error is not None:
            return f"link failed ({error['at']}): {error['code']} {error['reason']}"
        return "connecting"

    # -- accepting and dialling ----------------------------------------------------------------

    async def _accept(self, raw: ByteStream, address: str) -> None:
        """One inbound connection: TLS, upgrade and hello must all be done within
        ``limits.hello_timeout`` of the accept, and only so many may be under way at once."""
        host = address.rpartition(":")[0] or address
        pending = sum(self._unauthenticated.values())
        per_host = self._unauthenticated.get(host, 0)
        # Loopback is exempt from the per-host cap: several terminals on one machine (the demo,
        # a test bench) all dial from 127.0.0.1; nothing on the LAN can come from there.
        if pending >= MAX_UNAUTHENTICATED or (per_host >= MAX_UNAUTHENTICATED_PER_HOST and not _loopback(host)):
            self._refused(None, address, RATE_LIMIT, f"too many connections waiting to authenticate "
                          f"({pending} in all, {per_host} from {host})", inbound=True)
            await anyio.aclose_forcefully(raw)
            return
        self._unauthenticated[host] = self._unauthenticated.get(host, 0) + 1
        accepted_at = anyio.current_time()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                left = self._unauthenticated[host] - 1
                if left:
                    self._unauthenticated[host] = left
                else:
                    del self._unauthenticated[host]

        try:
            try:
                with anyio.fail_after(self.limits.hello_timeout):
                    stream = await TLSStream.wrap(raw, server_side=True, ssl_context=self._server_ctx,
                                                  standard_compatible=False)
            except Exception as exc:  # noqa: BLE001 - any handshake failure is one refused peer
                code, reason = failure_of(exc)
                self._refused(None, address, code, reason, inbound=True)
                await anyio.aclose_forcefully(raw)
                return
            await self._run_link(stream, address, client=False, started=accepted_at, authenticated=release)
        finally:
            release()

    async def _dial_loop(self, static: str | None, found: str | None = None) -> None:
        """Dial a static address for good, or the terminal ``found`` by discovery while discovery
        still sees it: its addresses in turn, so a stale one (cached from before a restart, or
        now another terminal's) fails over to the next."""
        attempt = 0
        try:
            while found is None or found in self._discovered:
                if found is None:
                    address = static
                else:
                    candidates = self._discovered[found]
                    address = candidates[attempt % len(candidates)]
                host, port = parse_address(address)  # type: ignore[arg-type]
                known = found if found is not None else self._address_ids.get(address)
                if known is not None and known in self.links:
                    await self._link_down.setdefault(known, anyio.Event()).wait()
                    continue
                if found is not None:
                    state = self.peers.get(found) or self._found_states.setdefault(
                        found, PeerState(terminal_id=found, address=address))
                else:
                    state = self._by_address.setdefault(address, PeerState(terminal_id=None, address=address))
                network_back = self._network_back  # a link opening while this dial is under way counts too
                try:
                    with anyio.fail_after(CONNECT_TIMEOUT):
                        stream = await self._connect(host, port)
                except Exception as exc:  # noqa: BLE001 - unreachable, refused, TLS: all mean "retry later"
                    code, reason = failure_of(exc, dialling=True)
                    state.last_error = {"code": code, "reason": reason, "at": self._now()}
                    if code == AUTHENTICATION_FAILED:
                        self._refused(known, address, code, reason, inbound=False)
                        await anyio.sleep(AUTH_RETRY_SECONDS)
                        continue
                    attempt += 1
                    log.debug("dial %s (%s) failed: %d %s", address, known or "unknown", code, reason)
                    await self._backoff(attempt, known, network_back)
                    continue
                closed, opened = await self._run_link(stream, address, client=True, expect=found)
                if closed is not None and closed.code == WRONG_TERMINAL:
                    state.last_error = {"code": INVALID_TERMINAL_ID, "reason": closed.reason, "at": self._now()}
                    candidates = self._discovered.get(found, [])  # type: ignore[arg-type]
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
                self._discovery_dials.discard(found)
                self._found_states.pop(found, None)

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
        delay = backoff_delay(attempt, self.rng, backoff_cap(self._lost_at, peer_id, anyio.current_time()))
        started = anyio.current_time()
        with anyio.move_on_after(delay):
            await event.wait()
        if peer_id is not None and peer_id < self.me:
            await anyio.sleep(max(0.0, min(KICK_YIELD, delay - (anyio.current_time() - started))))

    def _link_opened(self) -> None:
        """Wake the dial loops sleeping in backoff (:meth:`_backoff`): a link opened."""
        self._network_back.set()
        self._network_back = anyio.Event()

    async def _connect(self, host: str, port: int) -> TLSStream:
        raw = await self.transport.connect(host, port)
        try:
            return await TLSStream.wrap(raw, server_side=False, ssl_context=self._client_ctx,
                                        standard_compatible=False)
        except BaseException:
            await anyio.aclose_forcefully(raw)
            raise

    # -- one link ------------------------------------------------------------------------------

    async def _run_link(self, stream: ByteStream, address: str, *, client: bool, expect: str | None = None,
                        started: float | None = None,
                        authenticated: Callable[[], None] | None = None) -> tuple[Closed | None, bool]:
        """Drive one TLS stream until the link closes; returns (how it closed, whether it opened).

        ``expect``: the terminal discovery placed at ``address``.  Another terminal of the store
        answering there (the address changed hands) is hung up on before the hello, reported as
        :data:`WRONG_TERMINAL`: not a refusal, just a stale address.  ``started``: when the
        connection was accepted (the hello deadline runs from there); ``authenticated()`` is
        called once the peer's hello is authorized.
        """
        try:
            cert = peer_certificate(stream.extra(TLSAttribute.peer_certificate_binary))
        except Exception as exc:  # noqa: BLE001
            self._refused(None, address, AUTHENTICATION_FAILED, str(exc), inbound=not client)
            await anyio.aclose_forcefully(stream)
            return Closed(AUTHENTICATION_FAILED, str(exc), by_peer=False), False
        if expect is not None:
            with contextlib.suppress(IdentityError):
                answered = subject_of(cert)[0]
                if answered != expect:
                    await anyio.aclose_forcefully(stream)
                    return Closed(WRONG_TERMINAL, f"{address} is now {answered}, not {expect}", by_peer=False), False
        hello = admission.hello_of(self.identity, self.roster, self.boot_id)
        cert_id = None
        with contextlib.suppress(IdentityError):
            cert_id = subject_of(cert)[0]
        core = LinkCore(client=client, hello=hello, limits=self.limits,
                        now=anyio.current_time() if started is None else started,
                        authorize=lambda peer_hello: self.authorize(peer_hello, cert),
                        refuse=admission.revoked(self.roster, cert, cert_id))
        link = Link(core=core, stream=stream, address=address, client=client, authenticated=authenticated)
        link.cert_id = cert_id
        if self.max_queue_bytes is not None:
            link.session.max_queue_bytes = self.max_queue_bytes
        try:
            async with anyio.create_task_group() as tg:
                link.tasks = tg
                tg.start_soon(self._writer, link)
                tg.start_soon(self._ticker, link)
                tg.start_soon(self._closer, link, tg.cancel_scope)
                await self._act(link, link.push(core.start()))
                while True:
                    try:
                        data: bytes | None = await stream.receive()
                    except TRANSPORT_ERRORS as exc:
                        if link.closed is None and core.state != "open" and not isinstance(exc, anyio.EndOfStream):
                            code, reason = failure_of(exc)
                            self._mark_closed(link, Closed(code, reason, by_peer=True))
                        data = None
                    if link.closed is not None:
                        # Closing: drain until the peer hangs up, so our close frame is not lost to
                        # a TCP reset (closing a socket with unread data resets the connection).
                        if data is None:
                            break
                        continue
                    try:
                        await self._act(link, link.push(core.receive(data, anyio.current_time())))
                    except Exception as exc:  # noqa: BLE001 - one peer's input never stops the terminal
                        self._internal_error(link, exc)
                link.drained.set()
                await anyio.sleep_forever()  # the closer ends the link once the writer flushed
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish_link(link)
        return link.closed, link.core.peer_hello is not None

    async def _act(self, link: Link, actions: list[Any]) -> None:
        applies: list[Apply] = []
        for action in actions:
            if link.closed is not None:
                return
            if isinstance(action, Binary):
                try:
                    intent = link.session.receive(action.data)
                except WireError as exc:
                    self._close(link, exc.code, str(exc))
                    return
                if isinstance(intent, Apply):
                    applies.append(intent)
                    continue
                await self._apply(link, applies)
                applies = []
                await self._answer_step1(link, intent)
                continue
            await self._apply(link, applies)
            applies = []
            if isinstance(action, Opened):
                with contextlib.suppress(IdentityError):  # authorize() verified it; adopted if newer
                    await self.adopt_roster(action.hello["roster"])
                if link.closed is not None:
                    return
                self._opened(link, action.hello)
            elif isinstance(action, Control):
                try:
                    await self._control(link, action.message)
                except WireError as exc:
                    self._close(link, exc.code, str(exc))
            elif isinstance(action, Heartbeat):
                state = self.peers.get(link.peer_id or "")
                if state is not None and link.registered:
                    state.rtt_ms = round(action.rtt * 1000, 3)
                    state.last_heartbeat = self._now()
            elif isinstance(action, Closed):
                self._mark_closed(link, action)
        if link.closed is None:
            await self._apply(link, applies)

    def _internal_error(self, link: Link, exc: Exception) -> None:
        """Something this terminal did not foresee went wrong handling ``link``'s input: close that
        link (1011) and go on serving everyone else - never let it end the terminal."""
        self._refusal_log.log(f"internal:{link.peer_id or link.address}", logging.ERROR,
                              "link %s (%s): closing after an internal error handling its input",
                              link.address, link.peer_id or link.cert_id or "?", exc_info=exc)
        self._close(link, INTERNAL_ERROR, f"internal error: {type(exc).__name__}")

    def _close(self, link: Link, code: int, reason: str) -> None:
        for action in link.push(link.core.close(code, reason)):
            if isinstance(action, Closed):
                self._mark_closed(link, action)

    def _mark_closed(self, link: Link, closed: Closed) -> None:
        if link.closed is not None:
            return
        link.closed = closed
        self._caught_up(link)  # its step 2s will not come: the other links ask now
        if not link.registered and closed.code != GOING_AWAY:
            self._refused(link.peer_id or link.cert_id, link.address, closed.code,
                          ("by peer: " if closed.by_peer else "") + closed.reason, inbound=not link.client)
        link.ended.set()
        link.wake.set()

    async def _closer(self, link: Link, scope: anyio.CancelScope) -> None:
        await link.ended.wait()
        if link.closed is None or link.closed.code != ABNORMAL:  # a dead peer reads no close frame
            with anyio.move_on_after(1.0):
                await link.writer_done.wait()
                await link.drained.wait()
        scope.cancel()

    async def _writer(self, link: Link) -> None:
        try:
            await self._write_loop(link)
        finally:
            link.writer_done.set()

    async def _write_loop(self, link: Link) -> None:
        while True:
            await link.wake.wait()
            link.wake = anyio.Event()
            run_doc: str | None = None
            run: list[bytes] = []
            for item in [*link.session.take(), None]:
                if item is not None and item.ticket is not None:
                    await item.ticket.done.wait()
                    if item.ticket.error is not None:
                        continue  # never durable here: never shipped
                if item is not None and item.update_of is not None and item.update_of == run_doc:
                    run.append(item.update)
                    continue
                if run:  # consecutive updates of one document leave as one frame
                    frame = link.session.encode_updates(run_doc, run)  # type: ignore[arg-type]
                    link.out.extend(s.data for s in link.core.send_binary(frame))
                run_doc, run = None, []
                if item is None:
                    break
                if item.update_of is not None:
                    run_doc, run = item.update_of, [item.update]
                elif item.data is not None:
                    link.out.extend(s.data for s in link.core.send_binary(item.data))
                else:
                    link.out.extend(s.data for s in link.core.send_control(item.control))
            if link.out:
                data = b"".join(link.out)
                link.out.clear()
                try:
                    await link.stream.send(data)
                except TRANSPORT_ERRORS as exc:
                    self._mark_closed(link, Closed(ABNORMAL, f"send failed: {failure_of(exc)[1]}", by_peer=False))
                    return
            if link.core.state == "closed":
                link.ended.set()
                return

    async def _ticker(self, link: Link) -> None:
        while True:
            await anyio.sleep(max(0.0, link.core.next_deadline() - anyio.current_time()) + 0.001)
            try:
                await self._act(link, link.push(link.core.tick(anyio.current_time())))
            except Exception as exc:  # noqa: BLE001 - as in the reader: this link ends, not the terminal
                self._internal_error(link, exc)
            if link.closed is not None:
                return

    async def _finish_link(self, link: Link) -> None:
        """Flush the close frame (briefly), drop the transport, mark the peer offline."""
        if link.closed is None:  # cancelled: this terminal is stopping
            self._close(link, GOING_AWAY, "terminal stopping")
        if link.out:
            with anyio.move_on_after(1.0), contextlib.suppress(Exception):
                await link.stream.send(b"".join(link.out))
        await anyio.aclose_forcefully(link.stream)
        self._caught_up(link)
        if link.closed is None:
            link.closed = Closed(ABNORMAL, "link ended", by_peer=False)
        if link.registered and self.links.get(link.peer_id or "") is link:
            del self.links[link.peer_id]  # type: ignore[arg-type]
            self._link_down.pop(link.peer_id, anyio.Event()).set()  # type: ignore[arg-type]
            state = self.peers[link.peer_id]  # type: ignore[index]
            self._count(state, link)
            state.online = False
            state.last_error = {"code": link.closed.code, "reason": link.closed.reason, "at": self._now()}
            refused = 4000 <= link.closed.code < 5000 and link.closed.code != ALREADY_CONNECTED
            if not refused:  # an outage (a revoked or refused peer is not redialled eagerly)
                self._lost_at[link.peer_id] = anyio.current_time()  # type: ignore[index]
            log.log(logging.WARNING if refused else logging.INFO, "link to %s closed: %d %s",
                    link.peer_id, link.closed.code, link.closed.reason)
            self._event("terminal:offline", {"terminal_id": link.peer_id, "code": link.closed.code,
                                             "reason": link.closed.reason})
            for doc in self.replication.peer_gone(link.peer_id):  # type: ignore[arg-type]
                self._fetch_over(doc)

    # -- authentication ------------------------------------------------------------------------

    def authorize(self, hello: dict[str, Any], cert: x509.Certificate) -> None:
        """Bind the TLS certificate to the hello's claims, against the newest roster either side
        has (:func:`peer.admission.authorize`, against this terminal's roster now)."""
        admission.authorize(hello, cert, self.identity, self.roster)

    async def adopt_roster(self, signed: bytes | str) -> bool:
        """Take a roster handed in by an operator or a peer if it is newer; relay it; drop the revoked.

        The file is replaced (and fsync'd) in a worker thread: a slow disk must not stall every
        link and the API.  Adoptions take turns, so an older roster that arrived first can never
        overwrite a newer one on disk.

        Raises :class:`IdentityError` when it is not validly signed by this store's authority.
        """
        candidate = verify_roster(signed, self.identity.ca_cert)
        if candidate.version <= self.roster.version:
            return False
        async with self._roster_lock:
            if candidate.version <= self.roster.version:  # a newer one was adopted meanwhile
                return False
            if self.threads:
                await anyio.to_thread.run_sync(save_roster, self.data_dir, candidate)
            else:
                save_roster(self.data_dir, candidate)
            self.roster = candidate
        log.warning("adopted roster v%d (%d terminals, %d revoked)", candidate.version,
                    len(candidate.terminals), len(candidate.revoked))
        for peer_id, link in list(self.links.items()):
            if candidate.is_revoked(self.me) or candidate.is_revoked(peer_id):
                who = "this terminal" if candidate.is_revoked(self.me) else peer_id
                self._close(link, AUTHENTICATION_FAILED, f"{who} is revoked (roster v{candidate.version})")
            else:
                link.session.queue_control({"type": "roster", "roster": candidate.signed.decode()})
                link.wake.set()
        self._event("roster:updated", {"version": candidate.version, "revoked": sorted(candidate.revoked)})
        return True

    # -- link life -----------------------------------------------------------------------------

    def _opened(self, link: Link, hello: dict[str, Any]) -> None:
        if link.authenticated is not None:
            link.authenticated()  # no longer counts against the unauthenticated connections
        peer_id = hello["terminal_id"]
        link.peer_id, link.peer_type, link.peer_boot = peer_id, hello["terminal_type"], hello["boot_id"]
        if link.client:
            self._address_ids[link.address] = peer_id
        existing = self.links.get(peer_id)
        if existing is not None:
            preferred = "self" if self.me < peer_id else peer_id
            replace = existing.peer_boot != link.peer_boot or (
                existing.dialer != preferred and link.dialer == preferred)
            loser = existing if replace else link
            self._close(loser, ALREADY_CONNECTED, f"{self.me} and {peer_id} are already linked")
            if not replace:
                return
            existing.registered = False
        self.links[peer_id] = link
        link.registered = True
        self._lost_at.pop(peer_id, None)
        self._link_opened()
        state = self.peers.setdefault(peer_id, PeerState(terminal_id=peer_id))
        now = self._now()
        state.type, state.address, state.online = link.peer_type, link.address, True
        state.direction = "outbound" if link.client else "inbound"
        state.connected_since, state.last_heartbeat = now, now
        if link.client:
            self._by_address.pop(link.address, None)
        log.info("linked to %s (%s) at %s, %s", peer_id, link.peer_type, link.address, state.direction)
        if existing is None:
            self._event("terminal:online", {"terminal_id": peer_id, "terminal_type": link.peer_type,
                                            "address": link.address})
        self._start_sync(link)
        for listener in self._link_listeners:
            listener(peer_id)

    def _start_sync(self, link: Link) -> None:
        """Ask the new peer for what this terminal lacks, one catch-up per document at a time
        (:meth:`peer.replication.Replication.link_opened` says why and decides)."""
        opening = self.replication.link_opened(link, self.replica.names(), anyio.current_time())
        for name in opening.ask:
            link.session.queue_step1(name, self.replica.state_vector(name))
        assert link.tasks is not None  # opened from inside the link's task group
        if opening.later:
            link.tasks.start_soon(self._step1_after_catch_up, link, opening.wait)
        link.tasks.start_soon(self._send_archived, link)
        link.wake.set()

    async def _step1_after_catch_up(self, link: Link, wait: float) -> None:
        with anyio.move_on_after(wait):
            await link.catch_up_done.wait()
        later = self.replication.wait_over(link)
        if link.closed is None and link.core.state == "open":
            for name in later:
                if self.replica.is_open(name):  # not closed meanwhile (a day archived at rollover)
                    link.session.queue_step1(name, self.replica.state_vector(name))
            link.wake.set()

    def _caught_up(self, link: Link, doc: str | None = None) -> None:
        """``link``'s catch-up of ``doc`` (of every document: the link ended) is over."""
        for waiter in self.replication.caught_up(link, doc):
            waiter.catch_up_done.set()

    async def _send_archived(self, link: Link) -> None:
        vectors = await self.replica.archived_state_vectors()
        archived = {name: base64.b64encode(sv).decode() for name, sv in vectors.items()}
        if link.core.state == "open":
            link.session.queue_control({"type": "docs", "archived": archived})
            link.wake.set()

    # -- sync ----------------------------------------------------------------------------------

    def _on_local_update(self, name: str, update: bytes, origin: str, ticket: Any) -> None:
        """Queue a change applied here for the links :meth:`Replication.forward_to` names."""
        for link in self.replication.forward_to(name, origin, self.links.values()):
            link.session.queue_update(name, update, ticket)
            link.wake.set()

    async def _anti_entropy(self) -> None:
        """Every :data:`ANTI_ENTROPY_SECONDS`, ask each peer for what this terminal lacks (step 1).

        An answer is an empty step 2 when nothing is missing; otherwise it carries exactly the
        changes that reached this terminal's peers but not it (relayed, in effect, by state vector).
        """
        while True:
            await anyio.sleep(ANTI_ENTROPY_SECONDS * self.rng.uniform(0.8, 1.2))
            for link in list(self.links.values()):
                for name in self.replica.names():
                    link.session.queue_step1(name, self.replica.state_vector(name))
                link.wake.set()

    async def _answer_step1(self, link: Link, intent: AnswerStep1) -> None:
        await self.replica.open(intent.doc)
        await self.replica.settled(intent.doc)
        try:
            update = self.replica.diff(intent.doc, intent.state_vector)
        except ValueError as exc:
            self._close(link, INVALID_MESSAGE, f"state vector of {intent.doc} does not decode ({exc})")
            return
        link.session.queue_step2(intent.doc, update)
        link.wake.set()

    async def _apply(self, link: Link, applies: list[Apply]) -> None:
        """Apply what one read brought, one transaction (one storage record) per document, and
        wait for the reads :class:`peer.replication.ReadWindow` says are due."""
        if not applies:
            return
        tickets = []
        error: Closed | None = None
        for doc, items in by_doc(applies).items():
            try:
                await self.replica.open(doc)
                tickets.append(self.replica.apply_remote(doc, [a.update for a in items], f"peer:{link.peer_id}"))
            except UpdateGap as gap:
                # It overtook what it builds on (a live update ahead of the catch-up): ask for all
                # this terminal lacks instead; the answer (a step 2) carries it.
                tickets.append(gap.ticket)
                link.session.queue_step1(doc, self.replica.state_vector(doc))
                link.wake.set()
            except ValueError as exc:  # refused by its shape (core/yupdate.py) or by pycrdt
                error = Closed(INVALID_MESSAGE, f"update for {doc} refused: {exc}", by_peer=False)
                break
            except StoreError as exc:
                error = Closed(INTERNAL_ERROR, f"storage is failing ({exc}); resync later", by_peer=False)
                break
        with anyio.CancelScope(shield=True):  # pycrdt failed on an update: back to what is on disk
            await self.replica.recover()
        for read in link.reads.applied([t for t in tickets if t is not None], applies, failed=error is not None):
            await self._settle(link, *read)
        if error is not None:
            self._close(link, error.code, error.reason)

    async def _settle(self, link: Link, tickets: list[Any], applies: list[Apply]) -> None:
        for ticket in tickets:
            with contextlib.suppress(StoreError):
                await ticket.wait()
        for a in applies:
            if a.step2:
                self._caught_up(link, a.doc)
                if self.replication.answered(link.peer_id, a.doc):
                    self._fetch_over(a.doc)

    def _fetch_over(self, doc: str) -> None:
        done = self._fetched.get(doc)
        if done is not None:
            done.set()

    async def _control(self, link: Link, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "roster":
            try:
                await self.adopt_roster(value_of(message, "roster", str))
            except IdentityError as exc:
                self._close(link, INVALID_MESSAGE, f"relayed roster: {exc}")
        elif kind == "resync":
            for name in Replication.resync_docs(value_of(message, "docs", list), set(self.replica.names())):
                link.session.queue_step1(name, self.replica.state_vector(name))
            link.wake.set()
        elif kind == "docs":
            await self._on_archived(link, value_of(message, "archived", dict))
        elif (handler := self._control_handlers.get(kind)) is not None:
            try:
                await handler(link.peer_id, message)  # type: ignore[arg-type]
            except MessageRefused as exc:
                self._close(link, INVALID_MESSAGE, str(exc))
            except Exception as exc:  # noqa: BLE001 - one peer's message never stops the terminal
                log.exception("%s message from %s could not be handled", kind, link.peer_id)
                self._close(link, INVALID_MESSAGE, f"{kind} message could not be handled: {type(exc).__name__}")

    def send_control(self, peer_id: str, message: dict[str, Any]) -> bool:
        """Queue a control message (the cashier's) to a linked peer; ``False`` if not linked now."""
        link = self.links.get(peer_id)
        if link is None or link.core.state != "open":
            return False
        link.session.queue_control(message)
        link.wake.set()
        return True

    async def _on_archived(self, link: Link, archived: dict[str, Any]) -> None:
        """Sync the archived days :meth:`Replication.archived_to_sync` picks."""
        ours = await self.replica.archived_state_vectors()
        for name in Replication.archived_to_sync(archived, ours, set(self.replica.names()), self.replica.today(),
                                                 AUTO_FETCH_DAYS):
            await self.replica.open(name)
            link.session.queue_step1(name, self.replica.state_vector(name))
        link.wake.set()

    async def fetch(self, name: str) -> None:
        """Ask every linked peer for ``name`` (an archived day) and wait for their answers, briefly."""
        if not self.links:
            return
        await self.replica.open(name)
        self.replication.fetch(name, self.links)
        done = self._fetched.setdefault(name, anyio.Event())
        for link in self.links.values():
            link.session.queue_step1(name, self.replica.state_vector(name))
            link.wake.set()
        with anyio.move_on_after(FETCH_TIMEOUT):
            await done.wait()
        self.replication.fetch_over(name)
        self._fetched.pop(name, None)

    # -- reporting -----------------------------------------------------------------------------

    def _now(self) -> str:
        return iso(self.clock())

    def _event(self, kind: str, payload: dict[str, Any]) -> None:
        try:
            self.replica.record(self._now(), [(kind, payload)])
        except StoreError:
            log.warning("could not record %s %s", kind, payload)

    def _refused(self, peer_id: str | None, address: str, code: int, reason: str, *, inbound: bool) -> None:
        entry = {"terminal_id": peer_id, "address": address, "code": code, "reason": reason,
                 "direction": "inbound" if inbound else "outbound", "at": self._now()}
        self.refusals.append(entry)
        self._refusal_log.log(address.rpartition(":")[0] or address,
                              logging.INFO if code == ALREADY_CONNECTED else logging.WARNING,
                              "link %s %s refused: %d %s", "from" if inbound else "to", address, code, reason)

    @staticmethod
    def _count(state: PeerState, link: Link) -> None:
        """Traffic counters of the peer's current (or just closed) link."""
        state.bytes_in, state.bytes_out = link.core.bytes_in, link.core.bytes_out
        state.updates_in, state.updates_out = link.session.updates_in, link.session.updates_out

    def status(self) -> dict[str, Any]:
        peers = []
        for peer_id, state in sorted(self.peers.items()):
            link = self.links.get(peer_id)
            if link is not None:
                self._count(state, link)
            peers.append(state.to_json(self.roster))
        for tid, entry in sorted(self.roster.terminals.items()):
            if tid != self.me and tid not in self.peers:
                state = self._found_states.get(tid) or PeerState(terminal_id=tid)
                state.type = entry["type"]
                peers.append(state.to_json(self.roster))
        for state in self._by_address.values():
            peers.append(state.to_json(self.roster))
        return {
            "terminal_id": self.me, "store_id": self.identity.store_id, "roster_version": self.roster.version,
            "listen": f"{self.host}:{self.port}", "static_peers": self.static_peers, "peers": peers,
            "refusals": list(self.refusals),
        }
