"""One HQ process: a learn-only mesh per store it holds the enrollment of, behind one peer port,
landing everything in PostgreSQL (docs/hq.md).

Stateless besides PostgreSQL: everything it holds in memory (documents, mirrors, drawer folds) is
rebuilt from the record, so any number of HQ processes may serve the same stores against one
database, and one may be killed at any moment - what it had not committed, the terminals still
count as pending and upload again.
"""

from __future__ import annotations

import base64
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from core.clock import Clock, iso, random_id, system_clock
from core.errors import ALREADY_CONNECTED, STORAGE_UNAVAILABLE, ConfigError, MessageRefused, NotFound, StoreError
from core.names import HQ_TYPE
from core.net import bind_socket
from core.ratelog import RateLimitedLog
from meshpos.cashier.learner import GAP_ASK_SECONDS, Heads, heads_from_wire, heads_to_wire, relay_from_wire
from meshpos.cashier.messages import BadMessage
from meshpos.hq import ledgers
from meshpos.hq.replica import HqReplica
from meshpos.wan import MAX_CATALOG_ITEMS, provisional_from_wire
from peer.admission import Gate
from peer.front import BehindFront, Front
from peer.identity import IdentityError, TerminalIdentity, load_identity
from peer.mesh import Mesh
from peer.transport import TcpTransport, Transport
from storage import hq_rows
from storage.hq_database import Database, DataRefused

log = logging.getLogger(__name__)
#: Connections still authenticating at the HQ's port, in all and per remote address: a port on
#: the internet, where stores behind one carrier NAT or one load balancer share an address.
FRONT_UNAUTHENTICATED = 1024
FRONT_PER_HOST = 128
#: How often a process looks for catalog changes another HQ process made.
CATALOG_POLL_SECONDS = 2.0
#: An archived day untouched this long is let go of (HqReplica.evict_idle); looked for this often.
EVICT_IDLE_SECONDS = 600.0
EVICT_EVERY_SECONDS = 60.0
_gap_log = RateLimitedLog(log)


@dataclass
class StoreSide:
    """What one HQ process keeps of one store."""

    identity: TerminalIdentity
    replica: HqReplica
    mesh: Mesh
    drawers: dict[str, ledgers.DrawerMirror] = field(default_factory=dict)
    drawer_locks: dict[str, anyio.Lock] = field(default_factory=dict)
    asked: dict[tuple[str, str], float] = field(default_factory=dict)
    link_ids: dict[str, int] = field(default_factory=dict)
    #: How far this process's poll of the catalog has read (only the poll moves it: a local write
    #: with a newer version must not hide an older one another process committed meanwhile).
    catalog_polled: int = 0
    entries_landed: int = 0
    conflicts: int = 0

    @property
    def store_id(self) -> str:
        return self.identity.store_id


def load_enrollments(directories: list[Path]) -> dict[str, tuple[Path, TerminalIdentity]]:
    """Store id -> (directory, identity) of each HQ enrollment; :class:`ConfigError` saying which
    directory is wrong (not an HQ's, or a second one for the same store)."""
    if not directories:
        raise ConfigError("an HQ needs at least one --enrollment directory")
    out: dict[str, tuple[Path, TerminalIdentity]] = {}
    for directory in directories:
        try:
            identity = load_identity(directory)
        except IdentityError as exc:
            raise ConfigError(f"--enrollment {directory}: {exc}") from None
        if identity.type != HQ_TYPE:
            raise ConfigError(f"--enrollment {directory} is a {identity.type!r} terminal's, not an HQ's "
                              f"(enroll one with `meshpos store enroll --type hq`)")
        if identity.store_id in out:
            raise ConfigError(f"--enrollment {directory} and {out[identity.store_id][0]} are both for store "
                              f"{identity.store_id}")
        out[identity.store_id] = (directory, identity)
    return out


class Hq:
    """Use :meth:`running`."""

    def __init__(self, *, dsn: str, enrollments: list[Path], listen_host: str = "0.0.0.0", listen_port: int = 8720,
                 clock: Clock = system_clock, process: str | None = None, transport: Transport | None = None,
                 threads: bool = True) -> None:
        """``transport``: where terminals reach it (default: a TCP socket on ``listen_host:listen_port``;
        the partition simulator gives it its in-memory network); ``threads=False``: PostgreSQL is
        called inline, blocking the loop - what keeps a simulation on virtual time one run per seed."""
        self.dsn = dsn
        self._transport = transport
        self.enrollments = load_enrollments(enrollments)
        self.listen_host, self.listen_port = listen_host, listen_port
        self.clock = clock
        #: Names this process in the record (``doc_updates.hq_process``, ``link_log``).
        self.process = process or f"{socket.gethostname()[:40]}:{random_id(6)}"
        self.db = Database(dsn, threads=threads)
        self.stores: dict[str, StoreSide] = {}
        self.front: Front | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Hq]:
        transport = self._transport
        if transport is None:
            try:
                transport = TcpTransport(bind_socket(self.listen_host, self.listen_port))
            except OSError as exc:
                raise ConfigError(f"cannot listen on {self.listen_host}:{self.listen_port}: {exc.strerror}") from None
        try:
            await self.db.open()
        except BaseException:
            transport.close()
            raise
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for store_id, (directory, identity) in self.enrollments.items():
                    side = self._store(tg, directory, identity, transport.host, transport.port)
                    self.stores[store_id] = side
                    await tg.start(side.mesh.run)
                self.front = Front(transport, {s: side.mesh for s, side in self.stores.items()},
                                   refused=self._refused, gate=Gate(FRONT_UNAUTHENTICATED, FRONT_PER_HOST))
                tg.start_soon(self.front.serve)
                tg.start_soon(self._catalog_poll)
                tg.start_soon(self._evict_loop)
                log.info("HQ %s serving %d store(s) on %s:%s, PostgreSQL %s", self.process, len(self.stores),
                         transport.host, transport.port, self.db.shown)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.db.close()

    @property
    def port(self) -> int:
        assert self.front is not None
        return self.front.transport.port

    def _store(self, tg: anyio.abc.TaskGroup, directory: Path, identity: TerminalIdentity,
               host: str, port: int) -> StoreSide:
        store_id = identity.store_id
        replica = HqReplica(store_id, self.db, process=self.process, tg=tg, clock=self.clock,
                            failed=lambda reason: self._database_failed(store_id, reason))
        mesh = Mesh(replica, identity, data_dir=directory, clock=self.clock, transport=BehindFront(host, port),
                    peers=[], learn_only=True)
        side = StoreSide(identity, replica, mesh)
        mesh.handle_control("cashier", lambda sender, data: self._cashier(side, sender, data))
        mesh.handle_control("hq", lambda sender, data: self._from_terminal(side, sender, data))
        mesh.on_link_up(lambda peer_id: tg.start_soon(self._linked, side, peer_id))
        replica.on_event = lambda kind, payload: self._link_event(side, kind, payload)
        replica.on_landed = lambda name, vector: self._tell_landed(
            side, {"docs": {name: base64.b64encode(vector).decode()}})
        return side

    # -- links -----------------------------------------------------------------------------------

    async def _linked(self, side: StoreSide, peer_id: str) -> None:
        """A terminal linked: note the contact, refuse the link if PostgreSQL does not answer, and
        tell the terminal how far its ledgers are landed (it relays the rest)."""
        link = side.mesh.links.get(peer_id)
        address = link.address if link is not None else "?"
        at = iso(self.clock())

        def contact(conn: Any) -> tuple[int, dict[str, int], list[dict[str, Any]]]:
            with conn.transaction():
                hq_rows.touch_store(conn, side.store_id, side.mesh.roster.store_name, peer_id, at)
                link_id = hq_rows.link_opened(conn, side.store_id, peer_id, self.process, address, at)
            return link_id, hq_rows.ledger_lengths(conn, side.store_id), hq_rows.catalog_since(conn, side.store_id, 0)

        try:
            link_id, lengths, catalog = await self.db.run(contact)
        except StoreError as exc:
            side.mesh.disconnect(peer_id, STORAGE_UNAVAILABLE, f"HQ database unavailable: {exc}"[:120])
            return
        except Exception:  # noqa: BLE001 - a bug ends this link, not the HQ
            log.exception("store %s: logging the link of %s failed", side.store_id, peer_id)
            side.mesh.disconnect(peer_id, 1011, "HQ internal error")
            return
        replaced = side.link_ids.get(peer_id)
        side.link_ids[peer_id] = link_id
        if replaced is not None:  # a new link took the place of one whose end was never seen
            self._close_link_row(side, replaced, ALREADY_CONNECTED, "replaced by a new link")
        for drawer, length in lengths.items():
            mirror = side.drawers.get(drawer)
            if mirror is not None and len(mirror.entries) > length:
                side.drawers.pop(drawer)  # cannot be: the record is the truth
        side.mesh.send_control(peer_id, heads_to_wire(Heads(lengths, True)))
        self._push_catalog(side, catalog, [peer_id])

    @staticmethod
    def _tell_landed(side: StoreSide, landed: dict[str, Any]) -> None:
        """Tell the store's linked terminals what is in PostgreSQL now (their pending counts;
        docs/hq.md, "What a terminal shows of its WAN side")."""
        message = {"type": "hq", "m": "landed", **landed}
        for peer_id in list(side.mesh.links):
            side.mesh.send_control(peer_id, message)

    # -- the catalog (what the HQ writes) ------------------------------------------------------

    def _push_catalog(self, side: StoreSide, items: list[dict[str, Any]], peers: list[str] | None = None) -> None:
        """Send ``items`` to ``peers`` (default: every linked terminal of the store); each
        terminal writes those that differ from what it holds (:meth:`Terminal._hq_message`)."""
        if not items:
            return
        wire = [{k: i[k] for k in ("sku", "name", "price_cents", "active")} for i in items]
        for start in range(0, len(wire), MAX_CATALOG_ITEMS):
            message = {"type": "hq", "m": "catalog", "items": wire[start:start + MAX_CATALOG_ITEMS]}
            for peer_id in peers if peers is not None else list(side.mesh.links):
                side.mesh.send_control(peer_id, message)

    async def put_catalog(self, store_id: str, sku: str, *, name: str, price_cents: int,
                          active: bool) -> dict[str, Any]:
        """Set one product of a store's catalog; it reaches the store's terminals now if one is
        linked to this process, within :data:`CATALOG_POLL_SECONDS` if linked to another, and at
        the next link otherwise."""
        side = self.stores.get(store_id)
        if side is None:
            raise NotFound(f"this HQ holds no enrollment of store {store_id!r}")
        item = await self.db.run(hq_rows.put_catalog, store_id, sku, name, price_cents, active)
        self._push_catalog(side, [item])
        return item

    async def _catalog_poll(self) -> None:
        """Push what other HQ processes wrote to the catalogs of the stores linked here."""
        while True:
            await anyio.sleep(CATALOG_POLL_SECONDS)
            for side in self.stores.values():
                if not side.mesh.links:
                    continue
                try:
                    items = await self.db.run(hq_rows.catalog_since, side.store_id, side.catalog_polled)
                except Exception:  # noqa: BLE001 - the next round tries again; the HQ serves on
                    log.exception("store %s: the catalog poll failed", side.store_id)
                    continue
                if items:
                    side.catalog_polled = max(i["version"] for i in items)
                    self._push_catalog(side, items)

    async def _evict_loop(self) -> None:
        """What an HQ process holds in memory stays bounded by its stores' live days."""
        while True:
            await anyio.sleep(EVICT_EVERY_SECONDS)
            self.evict_idle(EVICT_IDLE_SECONDS)

    def evict_idle(self, idle: float) -> dict[str, list[str]]:
        """Each store's archived days untouched for ``idle`` seconds, let go of (they load again
        from the record when next asked for)."""
        out = {}
        for store_id, side in self.stores.items():
            gone = side.replica.evict_idle(idle)
            if gone:
                log.info("store %s: %d archived day(s) let go of (idle %.0f s)", store_id, len(gone), idle)
                out[store_id] = gone
        return out

    def _link_event(self, side: StoreSide, kind: str, payload: dict[str, Any]) -> None:
        if kind != "terminal:offline" or self._tg is None:
            return
        link_id = side.link_ids.pop(payload.get("terminal_id", ""), None)
        if link_id is not None:
            self._close_link_row(side, link_id, int(payload.get("code", 0)), str(payload.get("reason", "")))

    def _close_link_row(self, side: StoreSide, link_id: int, code: int, reason: str) -> None:
        if self._tg is None:
            return
        at = iso(self.clock())

        async def closed() -> None:
            try:
                await self.db.run(hq_rows.link_closed, link_id, at, code, reason[:200], side.replica.landed,
                                  side.entries_landed)
            except Exception:  # noqa: BLE001 - a log row is not worth the HQ
                log.warning("store %s: could not log the end of link %d", side.store_id, link_id)

        self._tg.start_soon(closed)

    def _database_failed(self, store_id: str, reason: str) -> None:
        """A landing failed: every link of the store closes (4012), so its terminals keep what
        was not landed as pending and upload it again once a link opens."""
        side = self.stores.get(store_id)
        if side is None:
            return
        for peer_id in list(side.mesh.links):
            side.mesh.disconnect(peer_id, STORAGE_UNAVAILABLE, f"HQ database unavailable: {reason}"[:120])

    def _refused(self, store: str | None, address: str, code: int, reason: str) -> None:
        side = self.stores.get(store or "")
        if side is not None:
            side.mesh.book.refused(None, address, code, reason, inbound=True)

    # -- ledgers -------------------------------------------------------------------------------

    async def _cashier(self, side: StoreSide, sender: str, data: dict[str, Any]) -> None:
        """The cashier messages an HQ takes: ``heads`` (checked; its own went out at link-up) and
        ``ledger`` relays (landed).  Quorum messages are not for it - it never votes - and are
        dropped."""
        kind = data.get("m")
        try:
            if kind == "heads":
                # Checked, and not answered: the HQ sent its own heads when the link opened
                # (:meth:`_linked`), and answering again would have the terminal relay all it
                # lacks a second time.
                heads_from_wire(data)
            elif kind == "ledger":
                await self._land_relay(side, sender, data)
        except BadMessage as exc:
            raise MessageRefused(str(exc)) from None

    async def _land_relay(self, side: StoreSide, sender: str, data: dict[str, Any]) -> None:
        relay = relay_from_wire(data)
        lock = side.drawer_locks.setdefault(relay.drawer, anyio.Lock())
        async with lock:
            mirror = side.drawers.setdefault(relay.drawer, ledgers.DrawerMirror(relay.drawer))
            try:
                landed = await self.db.run(ledgers.land_entries, side.store_id, mirror, relay.start,
                                           list(relay.entries), sender)
            except StoreError as exc:
                side.drawers.pop(relay.drawer, None)  # rebuilt from the record next time
                self._database_failed(side.store_id, str(exc))
                return
            except DataRefused as exc:  # the database is up and refused this relay: drop it, not the links
                side.drawers.pop(relay.drawer, None)
                log.error("store %s: %s's relay of %s was refused by PostgreSQL (%s)", side.store_id, sender,
                          relay.drawer, exc)
                return
            except Exception:
                side.drawers.pop(relay.drawer, None)
                raise
        side.entries_landed += landed.landed
        side.conflicts += landed.conflicts
        if not landed.gap:
            self._tell_landed(side, {"drawers": {relay.drawer: landed.length}})
        if landed.conflicts:
            log.error("store %s: %s relayed %d entries of %s that differ from the landed ones "
                      "(kept in ledger_conflicts)", side.store_id, sender, landed.conflicts, relay.drawer)
        if landed.gap:
            now = anyio.current_time()
            if now - side.asked.get((sender, relay.drawer), float("-inf")) >= GAP_ASK_SECONDS:
                side.asked[(sender, relay.drawer)] = now
                _gap_log.log(sender, logging.INFO, "store %s: %s's relay of %s starts at %d, landed up to %d: "
                             "asking for the rest", side.store_id, sender, relay.drawer, relay.start, landed.length)
                side.mesh.send_control(sender, heads_to_wire(Heads({relay.drawer: landed.length}, False)))

    async def _from_terminal(self, side: StoreSide, sender: str, data: dict[str, Any]) -> None:
        """The ``hq`` message a terminal sends: its own ``provisional`` cashier entries (landed
        each once; docs/hq.md).  Anything else, or a malformed one, is refused (the link closes)."""
        if data.get("m") != "provisional":
            raise MessageRefused(f"hq message {str(data.get('m'))[:20]!r} is not one an HQ takes")
        try:
            drawer, entries = provisional_from_wire(data, sender)
        except ValueError as exc:
            raise MessageRefused(str(exc)) from None
        try:
            await self.db.run(ledgers.land_provisional, side.store_id, drawer, sender, entries, self.process)
        except StoreError as exc:
            self._database_failed(side.store_id, str(exc))
        except DataRefused as exc:
            log.error("store %s: %s's provisional entries of %s were refused by PostgreSQL (%s)", side.store_id,
                      sender, drawer, exc)

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "process": self.process, "postgres": self.db.shown, "database_down": self.db.down,
            "listen": self.front.status() if self.front is not None else None,
            "stores": {store_id: {
                "name": side.mesh.roster.store_name, "linked": sorted(side.mesh.links),
                "documents": side.replica.status(), "entries_landed": side.entries_landed,
                "ledger_conflicts": side.conflicts, "refusals": list(side.mesh.refusals)[-10:],
            } for store_id, side in self.stores.items()},
        }

