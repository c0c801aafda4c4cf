"""The anyio shell of the peer links: listen, admit, route what links bring, keep the registry.

Everything here is I/O and bookkeeping, and each job has its module: :mod:`peer.link` (framing,
hello, heartbeats, limits) and :mod:`peer.admission` (whom a hello admits) decide a link's life,
:mod:`peer.driver` runs it (reader, writer, ticker, closer in one task group),
:mod:`peer.dialling` dials and backs off, :mod:`peer.routing` sends what a link brings where it
belongs, :mod:`peer.replication` decides and :mod:`peer.syncing` carries out the sync,
:mod:`peer.status` keeps what the API shows.  Every task the mesh starts belongs to the task
group :meth:`Mesh.run` opens inside the terminal's own, so stopping the terminal stops them all.

One link per pair: when both terminals dial at once, the link dialled by the terminal with the
smaller id wins and the other is closed with 4004 on both sides (each side applies the same
rule, so they agree without talking).  A link from a new incarnation of a peer (another boot id)
replaces the old one at once instead of waiting for the old one's heartbeat to time out.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteStream
from anyio.streams.tls import TLSAttribute, TLSStream
from cryptography import x509

from core.clock import Clock, IdSource, id_bytes, random_id
from core.errors import (
    ALREADY_CONNECTED,
    AUTHENTICATION_FAILED,
    RATE_LIMIT,
    StoreError,
)
from core.names import HQ_TYPE
from peer import admission
from peer.carrying import Carrying
from peer.dialling import WRONG_TERMINAL, Dialler
from peer.driver import GOING_AWAY, Link, LinkDriver, failure_of
from peer.identity import IdentityError, TerminalIdentity, save_roster, subject_of, verify_roster
from peer.link import Closed, Limits, LinkCore
from peer.replica import ControlHandler, LinkListener, Replica
from peer.routing import Router
from peer.status import PeerBook, PeerState
from peer.syncing import Syncing
from peer.tls import client_context, peer_certificate, server_context
from peer.transport import Transport

__all__ = ["LinkDownListener", "Mesh"]

LinkDownListener = Callable[[str, "str | None", Closed, tuple[int, int, int, int]], None]

log = logging.getLogger(__name__)

class Mesh:
    """All peer links of one terminal.  :meth:`run` in the terminal's task group."""

    def __init__(self, replica: Replica, identity: TerminalIdentity, *, data_dir: Path, clock: Clock,
                 transport: Transport, peers: list[str], limits: Limits | None = None,
                 rng: random.Random | None = None, max_queue_bytes: int | None = None,
                 threads: bool = True, id_source: IdSource = id_bytes, hq: list[str] | None = None,
                 learn_only: bool = False) -> None:
        """``hq``: the WAN addresses of the chain's HQ (dialled for good, like static peers);
        ``learn_only``: this mesh is one store's side of an HQ process (docs/hq.md) - it takes
        documents, gives none, and runs no anti-entropy of its own (the terminals' covers it)."""
        self.replica = replica
        self.hq = list(dict.fromkeys(hq or []))
        self.learn_only = learn_only
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
        self.server_ctx = server_context(identity)
        #: Peer id -> its link, while linked (one per pair).
        self.links: dict[str, Link] = {}
        self.book = PeerBook(clock)
        self.peers: dict[str, PeerState] = self.book.peers
        #: Recent refusals (either side), newest last: why a terminal that tried is not linked.
        self.refusals: deque[dict[str, Any]] = self.book.refusals
        self.dialler = Dialler(me=self.me, transport=transport, client_ctx=client_context(identity), rng=self.rng,
                               book=self.book, links=self.links, static_peers=[*peers, *self.hq],
                               server_name=identity.store_id, run_link=lambda stream, address, expect: self._run_link(
                                   stream, address, client=True, expect=expect))
        #: Connections accepted and not authenticated yet (see :class:`peer.admission.Gate`).
        self.gate = admission.Gate()
        #: Callbacks for each link that opens.
        self._link_listeners: list[LinkListener] = []
        self._down_listeners: list[LinkDownListener] = []
        self.syncing = Syncing(replica, self.links, self.rng, self._close, learn_only=learn_only, me=self.me)
        self.driver = LinkDriver(act=self._act, closing=self._closing, ended=self._ended, book=self.book)
        self.router = Router(syncing=self.syncing, driver=self.driver, book=self.book,
                             adopt_roster=self.adopt_roster, opened=self._opened)
        self.carrying = Carrying(identity=identity, roster=lambda: self.roster, clock=clock, links=self.links,
                                 core=self.syncing.core, handlers=self.router.handlers)
        self.router.carried = self.carrying.received

    def handle_control(self, kind: str, handler: ControlHandler) -> None:
        """Hand every control message of type ``kind`` (one of :data:`peer.wire.CONTROL_TYPES`
        the mesh does not handle itself) to ``handler``."""
        self.router.handlers[kind] = handler

    def on_link_up(self, listener: LinkListener) -> None:
        self._link_listeners.append(listener)

    def on_link_down(self, listener: LinkDownListener) -> None:
        """``listener(peer_id, peer_type, closed, traffic)`` each time a registered link ends;
        ``traffic``: (bytes in, bytes out, updates in, updates out) over its life."""
        self._down_listeners.append(listener)

    # -- lifecycle -----------------------------------------------------------------------------

    def close_socket(self) -> None:
        """Release the bound peer socket of a mesh that will never :meth:`run`."""
        self.transport.close()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.transport.serve, self._accept)
                self.dialler.start(tg)
                if not self.learn_only:
                    tg.start_soon(self.syncing.anti_entropy)
                log.info("peer links on %s:%s (store %s, roster v%d)", self.host, self.port,
                         self.identity.store_id, self.roster.version)
                task_status.started()
        finally:
            self.dialler.start(None)

    # -- whom to dial (peer.dialling) ----------------------------------------------------------

    @property
    def static_peers(self) -> list[str]:
        return self.dialler.static_peers

    def dial(self, address: str) -> None:
        """Start dialling ``address`` for good (a static peer added at run time)."""
        self.dialler.dial(address)

    def discovered(self, terminal_id: str, addresses: list[str]) -> None:
        """Dial ``terminal_id`` where discovery saw it (``HOST:PORT`` each, tried in turn); new
        addresses replace the old ones for the next attempt.  A link already up is left alone."""
        self.dialler.discovered(terminal_id, addresses)

    def dial_addresses(self, terminal_id: str) -> list[str]:
        """Where the mesh dials a discovered terminal, in the order it tries them."""
        return self.dialler.dial_addresses(terminal_id)

    def lost(self, terminal_id: str) -> None:
        """Stop dialling a terminal discovery no longer sees (it said goodbye, or it was revoked);
        a link that is up stays until it ends by itself (a stale advert never cuts a working link)."""
        self.dialler.lost(terminal_id)

    def why_not_linked(self, terminal_id: str, addresses: list[str]) -> str:
        """The newest reason a known terminal is not linked, for ``meshpos peers``: its latest
        refusal or its link's last error, whichever came last (4004 tie-breaks are no reason)."""
        return self.book.why_not_linked(terminal_id, addresses)

    # -- admitting a link ----------------------------------------------------------------------

    async def _accept(self, raw: ByteStream, address: str) -> None:
        """One inbound connection: TLS, upgrade and hello must all be done within
        ``limits.hello_timeout`` of the accept, and only so many may be under way at once."""
        release = self.gate.enter(address)
        if isinstance(release, str):
            self.book.refused(None, address, RATE_LIMIT, release, inbound=True)
            await anyio.aclose_forcefully(raw)
            return
        accepted_at = anyio.current_time()
        try:
            try:
                with anyio.fail_after(self.limits.hello_timeout):
                    stream = await TLSStream.wrap(raw, server_side=True, ssl_context=self.server_ctx,
                                                  standard_compatible=False)
            except Exception as exc:  # noqa: BLE001 - any handshake failure is one refused peer
                code, reason = failure_of(exc)
                self.book.refused(None, address, code, reason, inbound=True)
                await anyio.aclose_forcefully(raw)
                return
            await self.admit(stream, address, started=accepted_at, authenticated=release)
        finally:
            release()

    async def admit(self, stream: ByteStream, address: str, *, started: float,
                    authenticated: Callable[[], None] | None = None) -> None:
        """Run an inbound link whose TLS handshake is done (by :meth:`_accept`, or by an HQ's
        front listener that picked this store's mesh, :mod:`peer.front`)."""
        await self._run_link(stream, address, client=False, started=started, authenticated=authenticated)

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
            self.book.refused(None, address, AUTHENTICATION_FAILED, str(exc), inbound=not client)
            await anyio.aclose_forcefully(stream)
            return Closed(AUTHENTICATION_FAILED, str(exc), by_peer=False), False
        if expect is not None:
            with contextlib.suppress(IdentityError):
                answered = subject_of(cert)[0]
                if answered != expect:
                    await anyio.aclose_forcefully(stream)
                    return Closed(WRONG_TERMINAL, f"{address} is now {answered}, not {expect}", by_peer=False), False
        hello = admission.hello_of(self.identity, self.roster, self.boot_id, relays=not self.learn_only)
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
        await self.driver.run(link)
        return link.closed, link.core.peer_hello is not None

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

    # -- a link's life (what peer.driver calls) ---------------------------------------------------

    async def _act(self, link: Link, actions: list[Any]) -> None:
        await self.router.act(link, actions)

    def _closing(self, link: Link) -> None:
        closed = link.closed
        assert closed is not None
        self.syncing.caught_up(link)  # its step 2s will not come: the other links ask now
        if not link.registered and closed.code != GOING_AWAY:
            self.book.refused(link.peer_id or link.cert_id, link.address, closed.code,
                              ("by peer: " if closed.by_peer else "") + closed.reason, inbound=not link.client)

    def _ended(self, link: Link) -> None:
        """Mark the peer offline (if this was its link)."""
        self.syncing.caught_up(link)
        closed = link.closed
        assert closed is not None
        if link.registered and self.links.get(link.peer_id or "") is link:
            peer_id: str = link.peer_id  # type: ignore[assignment]
            del self.links[peer_id]
            refused = 4000 <= closed.code < 5000 and closed.code != ALREADY_CONNECTED
            # an outage is redialled eagerly, a revoked or refused peer is not
            self.dialler.link_down(peer_id, refused=refused)
            self.book.unlinked(peer_id, link.traffic, closed.code, closed.reason)
            log.log(logging.WARNING if refused else logging.INFO, "link to %s closed: %d %s",
                    peer_id, closed.code, closed.reason)
            self._event("hq:unlinked" if link.peer_type == HQ_TYPE else "terminal:offline",
                        {"terminal_id": peer_id, "code": closed.code, "reason": closed.reason})
            self.syncing.peer_gone(peer_id)
            for listener in self._down_listeners:
                listener(peer_id, link.peer_type, closed, link.traffic())

    def _close(self, link: Link, code: int, reason: str) -> None:
        self.driver.close(link, code, reason)

    def _opened(self, link: Link, hello: dict[str, Any]) -> None:
        if link.authenticated is not None:
            link.authenticated()  # no longer counts against the unauthenticated connections
        peer_id = hello["terminal_id"]
        link.peer_id, link.peer_type, link.peer_boot = peer_id, hello["terminal_type"], hello["boot_id"]
        if link.client:
            self.dialler.identified(peer_id, link.address)
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
        self.dialler.link_up(peer_id)
        state = self.book.linked(peer_id, link.peer_type, link.address, client=link.client)
        log.info("linked to %s (%s) at %s, %s", peer_id, link.peer_type, link.address, state.direction)
        if existing is None:
            self._event("hq:linked" if link.peer_type == HQ_TYPE else "terminal:online",
                        {"terminal_id": peer_id, "terminal_type": link.peer_type, "address": link.address})
        self.syncing.start(link, relays=hello.get("relays") is True)
        for listener in self._link_listeners:
            listener(peer_id)

    def disconnect(self, peer_id: str, code: int, reason: str) -> None:
        """Close ``peer_id``'s link (if any) with ``code`` - an HQ whose database is down does."""
        link = self.links.get(peer_id)
        if link is not None:
            self._close(link, code, reason)

    # -- control messages and fetches -----------------------------------------------------------

    def send_control(self, peer_id: str, message: dict[str, Any]) -> bool:
        """Queue a control message (the cashier's) to ``peer_id``: on its link, or, not linked,
        signed and through a terminal that reaches it (:mod:`peer.carrying`); ``False`` if
        neither is there now."""
        link = self.links.get(peer_id)
        if link is None or link.core.state != "open":
            return self.carrying.send(peer_id, message)
        link.session.queue_control(message)
        link.wake.set()
        return True

    def reaches(self, peer_id: str) -> bool:
        """Linked to ``peer_id``, or linked to a terminal that says it is."""
        return peer_id in self.links or self.carrying.carrier(peer_id) is not None

    async def fetch(self, name: str) -> None:
        """Ask every linked peer for ``name`` (an archived day) and wait for their answers, briefly."""
        await self.syncing.fetch(name)

    # -- reporting -----------------------------------------------------------------------------

    def _event(self, kind: str, payload: dict[str, Any]) -> None:
        try:
            self.replica.record(self.book.now(), [(kind, payload)])
        except StoreError:
            log.warning("could not record %s %s", kind, payload)

    def status(self) -> dict[str, Any]:
        traffic = {peer_id: link.traffic for peer_id, link in self.links.items()}
        peers = self.book.peer_list(self.me, self.roster, traffic)
        for peer in peers:  # what each linked terminal says it is linked to (forwarding decides by it)
            tid = peer["terminal_id"]
            peer["reaches"] = sorted(self.syncing.core.neighbours(tid)) if tid in self.links else None
            peer["through"] = None if tid is None or tid in self.links else getattr(
                self.carrying.carrier(tid), "peer_id", None)
        return {
            "terminal_id": self.me, "store_id": self.identity.store_id, "roster_version": self.roster.version,
            "listen": f"{self.host}:{self.port}", "static_peers": self.static_peers,
            "peers": peers, "refusals": list(self.refusals), "carried": dict(self.carrying.counts),
        }
