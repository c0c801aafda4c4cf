"""One meshpos terminal - the composition root: it opens the store, the documents, the cashier,
and (when enrolled) the mesh and discovery, and wires them to each other through their
interfaces (docs/architecture.md, "Layers"); nothing below imports it.

The terminal owns a task group for everything that runs in the background (the storage writer,
the mesh and its links, discovery, business-day rollover, event retention); leaving
:meth:`Terminal.running` cancels it, lets the writer finish what is queued, and closes the
database.  Every public write method returns only after the change is durable - that is what an
API 2xx promises.

Why one module of ~530 lines: besides composing, the terminal is the one place where an API
operation meets its document, its audit row and its durability wait; each of its ~20 write operations
is a thin call into a model inside :meth:`Terminal._commit` (the rules live in the models), and
splitting them across modules would spread that one pattern over several files.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import anyio

from core.clock import BusinessCalendar, Clock, IdSource, id_bytes, iso, random_id, system_clock
from core.errors import (
    InvalidInput,
    MessageRefused,
    NotEnrolled,
    NotFound,
    PermissionDenied,
    StoreError,
    Unavailable,
)
from core.names import HQ_TYPE, orders_day
from core.yupdate import decode_state_vector
from meshpos.cashier.service import Cashier
from meshpos.config import TerminalConfig, match_certificate
from meshpos.documents import DocumentHost, InventoryDoc, OrdersDoc, TablesDoc
from meshpos.documents import inventory as inventory_doc
from meshpos.documents import orders as orders_doc
from meshpos.documents import tables as tables_doc
from meshpos.documents.host import Operation, durable
from meshpos.documents.ui_writes import check_ui_update
from meshpos.events import EventBus
from meshpos.metrics import TerminalMetrics
from meshpos.ui_rooms import UiRooms
from meshpos.wan import (
    HQ_FIELDS,
    WanView,
    catalog_items,
    landed_message,
    missing_operations,
    provisional_messages,
)
from storage.database import lock_data_dir
from storage.store import Store

if TYPE_CHECKING:
    from discovery.mdns import Discovery
    from peer.identity import TerminalIdentity
    from peer.mesh import Mesh
    from peer.transport import Transport

log = logging.getLogger(__name__)

#: How many earlier business days stay writable (late tables close after midnight rollover).
WRITABLE_PAST_DAYS = 1
HOUSEKEEPING_SECONDS = 30.0
#: A Yjs state vector with no clients: the document holds nothing.
EMPTY_STATE_VECTOR = b"\x00"
#: Documents encoded smaller than this have an exact size in status on every call (~1 ms).
SIZE_EXACT_BYTES = 64 * 1024


def raise_descriptor_limit() -> None:
    """Soft descriptor limit up to the hard one: every peer link, API client and event socket
    holds one, and the soft default (1,024 under systemd) is far below what the box allows."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Terminal:
    def __init__(self, config: TerminalConfig, *, clock: Clock = system_clock, transport: Transport | None = None,
                 storage_threads: bool = True, rng: random.Random | None = None, id_source: IdSource = id_bytes,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """``transport``, ``storage_threads=False``, ``rng``, ``id_source`` and ``monotonic`` let a
        simulation run terminals in one process on an in-memory network and a virtual clock
        (simulations/), every random choice from its seed; a real terminal binds
        ``peer_host:peer_port``, keeps SQLite in worker threads and takes its randomness from the OS."""
        self.config = config
        self.clock = clock
        #: Randomness of order, item, operation and boot ids.
        self.id_source = id_source
        #: Seconds for intervals (uptime, how fresh a cached size is): virtual in a simulation.
        self.monotonic = monotonic
        self._transport = transport
        self._storage_threads = storage_threads
        #: Jitter (dial backoff, anti-entropy, cashier retries) and, when given, Yjs client ids.
        self.rng = rng or random.Random()
        self._rng = rng
        self.calendar = BusinessCalendar(config.timezone, config.day_rollover_hour)
        self.started_monotonic = monotonic()
        self._sizes: dict[str, tuple[bytes, int, float]] = {}  # doc -> (state vector, size, when)
        self.store: Store
        self.host: DocumentHost
        self.events: EventBus
        #: What /metrics and /api/v1/stats read that cannot be read back later (meshpos/metrics.py).
        self.metrics: TerminalMetrics
        #: Browser clients on the Yjs route, per document (meshpos/ui_rooms.py).
        self.ui_rooms = UiRooms()
        #: Peer links; ``None`` for a terminal whose data directory is not enrolled in a store.
        self.mesh: Mesh | None = None
        #: The WAN side: what the chain's HQ has landed, and its sync log (docs/hq.md).
        self.wan = WanView(config.hq)
        self._hq_since: dict[str, float] = {}
        #: mDNS discovery; ``None`` when not enrolled or turned off (``--no-mdns``).
        self.discovery: Discovery | None = None
        #: Drawers, payments and the review queue (outside the CRDT documents).
        self.cashier: Cashier
        self._tg: anyio.abc.TaskGroup | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Terminal]:
        identity = self._enrollment()
        self.config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.config.data_dir.chmod(0o700)  # the ledger and the keys: this user's only
        raise_descriptor_limit()
        lock = lock_data_dir(self.config.data_dir)
        try:
            self.store = await Store.open(self.config.data_dir / "meshpos.db", threads=self._storage_threads)
        except BaseException:
            lock.close()
            raise
        try:
            replica_id = await self.store.identity(
                self.config.terminal_id, self.config.type, random_id(12, self.id_source), iso(self.clock())
            )
            self.host = DocumentHost(
                self.store, terminal_id=self.config.terminal_id, replica_id=replica_id, clock=self.clock,
                rng=self._rng, id_source=self.id_source,
            )
            self.events = EventBus(self.store, orders_doc.resolve_event)
            self.metrics = TerminalMetrics(self.config.terminal_id, self.clock, self.monotonic,
                                           orders_doc.order_stamp)
            self.host.on_update(self.metrics.on_update)
            self.host.on_update(self.ui_rooms.on_update)
            self.store.on_commit(self.metrics.on_commit)
            await self.host.open(tables_doc.DOC_NAME, TablesDoc)
            await self.host.open(inventory_doc.DOC_NAME, InventoryDoc)
            await self.roll_over()
            self.cashier = Cashier(self)
            self.cashier.on_provisional(lambda drawer, entry: self._provisional_to_hq({drawer: [entry]}))
            await self.cashier.load()
            self.mesh, self.discovery = self._make_mesh(identity), None
            if self.mesh is not None:
                self.mesh.on_link_down(self.metrics.on_link_down)
                if self.config.mdns:
                    self.discovery = self._make_discovery(self.mesh)
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await tg.start(self.store.run)
                await tg.start(self.cashier.run)
                if self.mesh is not None:
                    await tg.start(self.mesh.run)
                if self.discovery is not None:
                    await tg.start(self.discovery.run)
                tg.start_soon(self._housekeeping)
                tg.start_soon(self.metrics.run, self.live_traffic)
                self.started_monotonic = self.monotonic()
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                try:
                    await self.store.close()
                finally:
                    lock.close()

    def _enrollment(self) -> TerminalIdentity | None:
        """The data directory's enrollment, ``None`` if it has none.  It names the terminal: a
        config that contradicts the certificate is refused before anything is written, as
        ``meshpos run`` refuses it (:func:`meshpos.config.load_config`) - this covers terminals
        built in code."""
        from peer.files import has_identity

        if not has_identity(self.config.data_dir):
            return None
        from peer.identity import load_identity

        identity = load_identity(self.config.data_dir)
        match_certificate(identity, self.config.data_dir,
                          {"terminal_id": self.config.terminal_id, "type": self.config.type},
                          {"terminal_id": "TerminalConfig.terminal_id", "type": "TerminalConfig.type"})
        return identity

    def _make_mesh(self, identity: TerminalIdentity | None) -> Mesh | None:
        """The peer links of an enrolled data directory (the socket is bound here, so a port in use
        stops the start with a clear error)."""
        if identity is None:
            return None  # before the imports: an unenrolled terminal never loads cryptography
        from core.net import bind_socket
        from meshpos.replica import TerminalReplica
        from peer.link import Limits
        from peer.mesh import Mesh
        from peer.transport import TcpTransport

        transport = self._transport
        if transport is None:
            try:
                sock = bind_socket(self.config.peer_host, self.config.peer_port)
            except OSError as exc:
                raise OSError(exc.errno, f"peer address {self.config.peer_host}:{self.config.peer_port}: "
                                         f"{exc.strerror}") from None
            transport = TcpTransport(sock)
        replica = TerminalReplica(self.host, self.store, open_doc=self.ensure_doc,
                                  archived_state_vectors=self.archived_state_vectors, today=self.today)
        mesh = Mesh(replica, identity, data_dir=self.config.data_dir, clock=self.clock,
                    transport=transport, peers=self.config.peers, hq=self.config.hq, rng=self.rng,
                    limits=Limits(max_message_bytes=self.config.peer_max_message_bytes),
                    threads=self._storage_threads, id_source=self.id_source)
        mesh.handle_control("cashier", self._cashier_message)
        mesh.handle_control("hq", self._hq_message)
        mesh.on_link_up(self.cashier.link_up)
        mesh.on_link_up(self._hq_linked)
        mesh.on_link_down(self._hq_unlinked)
        return mesh

    # -- the WAN side (docs/hq.md) ---------------------------------------------------------------

    def _peer_type(self, peer_id: str) -> str | None:
        link = self.mesh.links.get(peer_id) if self.mesh is not None else None
        return None if link is None else link.peer_type

    async def _cashier_message(self, sender: str, data: dict[str, Any]) -> None:
        """A cashier message; from an HQ only ``heads`` (what it has landed) - it never votes."""
        if self._peer_type(sender) == HQ_TYPE:
            if data.get("m") != "heads":
                raise MessageRefused(f"an HQ sends no cashier {str(data.get('m'))[:20]!r} messages: it never votes")
        await self.cashier.receive(sender, data)  # checks the message (a malformed one closes the link)
        if self._peer_type(sender) == HQ_TYPE:
            self.wan.heads(dict(data["drawers"]), bool(data["all"]), iso(self.clock()))

    async def _hq_message(self, sender: str, data: dict[str, Any]) -> None:
        """The HQ's catalog: each product whose name, price or active flag differs is written
        here through the durable path (audited as ``hq:<id>``; station, category and stock stay
        the store's).  From anyone but an HQ, or malformed: refused, nothing applied."""
        if self._peer_type(sender) != HQ_TYPE:
            raise MessageRefused("only an HQ sends hq messages")
        try:
            if data.get("m") == "landed":
                vectors, drawers = landed_message(data)
                self.wan.landed(vectors, iso(self.clock()))
                self.wan.heads(drawers, False, iso(self.clock()))
                return
            items = catalog_items(data)
        except ValueError as exc:
            raise MessageRefused(str(exc)) from None
        inventory = self.inventory
        for item in items:
            sku = item["sku"]
            current = inventory.product(sku) if sku in inventory.catalog else None
            if current is not None and all(current[k] == item[k] for k in HQ_FIELDS):
                continue
            try:
                await self.put_product(sku, user=f"hq:{sender}", name=item["name"], price_cents=item["price_cents"],
                                       active=item["active"],
                                       station=None if current is None else current["station"],
                                       category=None if current is None else current["category"])
            except InvalidInput as exc:
                raise MessageRefused(f"hq catalog: {sku}: {exc.message}") from None
        self.wan.last_sync_at = iso(self.clock())

    def _hq_linked(self, peer_id: str) -> None:
        link = self.mesh.links.get(peer_id) if self.mesh is not None else None
        if link is not None and link.peer_type == HQ_TYPE:
            self._hq_since[peer_id] = self.monotonic()
            self.wan.linked(peer_id, link.address, iso(self.clock()))
            self._provisional_to_hq(self.cashier.provisional_pending(), [peer_id])

    def _provisional_to_hq(self, entries: dict[str, list[dict[str, Any]]], peers: list[str] | None = None) -> None:
        """This terminal's own provisional entries to its linked HQs (``peers``: these only): an
        HQ shows them until their reconciled entry lands (docs/hq.md); one not linked now gets
        the unsettled ones when it links."""
        mesh = self.mesh
        if mesh is None:
            return
        hqs = peers if peers is not None else [p for p, link in mesh.links.items() if link.peer_type == HQ_TYPE]
        for drawer, rows in entries.items():
            for message in provisional_messages(drawer, rows):
                for peer_id in hqs:
                    mesh.send_control(peer_id, message)

    def _hq_unlinked(self, peer_id: str, peer_type: str | None, closed: Any,
                     traffic: tuple[int, int, int, int]) -> None:
        if peer_type == HQ_TYPE:
            since = self._hq_since.pop(peer_id, None)
            self.wan.unlinked(peer_id, iso(self.clock()), None if since is None else self.monotonic() - since,
                              closed.code, closed.reason, traffic)

    def hq_status(self) -> dict[str, Any]:
        mesh = self.mesh
        linked = [] if mesh is None else sorted(p for p, link in mesh.links.items() if link.peer_type == HQ_TYPE)
        if mesh is not None:
            for hq_id in mesh.syncing.hq_peers:  # what each HQ asked with: what it has landed
                asked = mesh.syncing.asked_with.get(hq_id, {})
                self.wan.landed({name: record[0] for name, record in asked.items() if record[0] is not None}, None)
        last_error = None
        if mesh is not None:
            for address in self.wan.addresses:
                state = mesh.book.by_address.get(address)
                if state is not None and state.last_error is not None:
                    last_error = {**state.last_error, "address": address}
        return self.wan.status(linked=linked, documents={n: self.host.state_vector(n) for n in self.host.names()},
                               ledgers=self.cashier.ledger_lengths(), last_error=last_error)

    def hq_log(self) -> list[dict[str, Any]]:
        """The WAN sync log (GET /api/v1/hq/log), the open links' traffic counted up to now."""
        mesh = self.mesh
        live = {} if mesh is None else {p: link.traffic() for p, link in mesh.links.items()
                                        if link.peer_type == HQ_TYPE}
        return self.wan.entries(live)

    def _make_discovery(self, mesh: Mesh) -> Discovery:
        from discovery.mdns import Discovery  # noqa: F811 - zeroconf only when enrolled

        try:
            return Discovery(mesh, choices=self.config.mdns_interfaces, peer_host=self.config.peer_host)
        except BaseException:
            mesh.close_socket()  # the terminal does not start: give the peer port back
            raise

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        """The terminal's task group: later subsystems (links, discovery) start their tasks here."""
        if self._tg is None:
            raise RuntimeError("terminal is not running")
        return self._tg

    def today(self) -> date:
        return self.calendar.day_of(self.clock())

    def live_days(self) -> list[date]:
        """The business days still writable: yesterday (late tables) and today."""
        today = self.today()
        return [today - timedelta(days=n) for n in range(WRITABLE_PAST_DAYS, -1, -1)]

    async def roll_over(self) -> None:
        """Open the live business days and archive the older ones - what housekeeping does every
        30 s and a write does when the day changed since; public so a clock that jumps (a test,
        the simulator) need not wait for it."""
        live = {orders_doc.doc_name(d) for d in self.live_days()}
        for name in sorted(live):
            model = self.host.get(name)
            if model is None or model.read_only:
                self.host.close(name)
                await self.host.open(name, OrdersDoc)
        for name in self.host.names():
            if name.startswith("orders/") and name not in live:
                await self._archive(name)  # reopened read-only on request

    async def _archive(self, name: str) -> None:
        """Close a past day, remembering its state vector so peers can compare it unloaded."""
        await self.host.settled(name)
        if self.host.get(name) is None:
            return
        if name in await self.store.doc_names():
            await self.store.save_state_vector(name, self.host.state_vector(name))
        self.host.close(name)

    async def archived_state_vectors(self) -> dict[str, bytes]:
        """State vectors of the stored documents not open now (computed once for older data)."""
        vectors = await self.store.state_vectors()
        missing = [n for n in await self.store.doc_names() if n not in vectors and self.host.get(n) is None]
        for name in missing:
            await self.host.open(name, OrdersDoc, read_only=True)
            await self._archive(name)
        if missing:
            vectors = await self.store.state_vectors()
        return {name: sv for name, sv in vectors.items() if self.host.get(name) is None}

    async def ensure_doc(self, name: str) -> None:
        """Open ``name`` (a validated document name) for a peer: live days writable, others read-only."""
        if self.host.get(name) is not None:
            return
        day = orders_day(name)
        if day is None:
            raise RuntimeError(f"{name} is always open")
        if day in self.live_days():
            await self.roll_over()
        if self.host.get(name) is None:
            await self.host.open(name, OrdersDoc, read_only=True)

    async def _housekeeping(self) -> None:
        while True:
            await anyio.sleep(HOUSEKEEPING_SECONDS)
            with contextlib.suppress(Unavailable):
                await self._reload_stale()
            await self.roll_over()
            if self.store.last_cursor > self.config.event_retention * 1.2:
                await self.store.prune_events(self.config.event_retention)

    # -- document access -----------------------------------------------------------------------

    @property
    def tables(self) -> TablesDoc:
        return self.host.get(tables_doc.DOC_NAME)  # type: ignore[return-value]

    @property
    def inventory(self) -> InventoryDoc:
        return self.host.get(inventory_doc.DOC_NAME)  # type: ignore[return-value]

    async def orders_of_day(self, day: date) -> OrdersDoc:
        name = orders_doc.doc_name(day)
        live = self.live_days()
        model = self.host.get(name)
        if (model is None and day in live) or (model is not None and not model.read_only and day not in live):
            await self.roll_over()  # the day rolled over since housekeeping last ran
            model = self.host.get(name)
        if model is None:
            if day > self.today():
                raise NotFound(f"business day {day.isoformat()} has not started")
            if name not in await self.store.doc_names():
                if self.mesh is not None:
                    await self.mesh.fetch(name)  # an archived day this box never had: ask the peers
                model = self.host.get(name)
                if model is None or model.doc.get_state() == EMPTY_STATE_VECTOR:
                    self.host.close(name)
                    raise NotFound(f"no orders for business day {day.isoformat()}")
            else:
                model = await self.host.open(name, OrdersDoc, read_only=True)
        return model  # type: ignore[return-value]

    async def ui_document(self, name: str) -> str:
        """Open ``name`` for a browser on the Yjs route (an archived day read-only); its name.
        Raises :class:`NotFound` for a document this terminal does not hold."""
        day = orders_day(name)
        if day is not None:
            await self.orders_of_day(day)
        elif self.host.get(name) is None:
            raise NotFound(f"no document {name[:80]!r}; one of tables, inventory, orders/<YYYY-MM-DD>")
        return name

    async def apply_ui_update(self, name: str, update: bytes, user: str, rooms_client: Any = None) -> None:
        """A browser's update of ``name``: checked on a scratch copy (meshpos/documents/ui_writes.py),
        then applied and stored like any write, audited as ``user`` (``ui:<client>``), passed on to
        the peers and the document's other browsers; returns once durable.  Raises the
        ``MeshposError`` that refuses it - nothing of a refused update stays."""
        await self._reload_stale()
        model = self.host.get(await self.ui_document(name))
        assert model is not None  # ui_document opened it or raised NotFound
        ops = check_ui_update(model, update, user)
        try:
            self.ui_rooms.applying = rooms_client  # the sender has the change: not sent it back
            try:
                ticket = self.host.apply_remote(name, [update], user, audits=ops)  # no await since the check
            except ValueError as exc:  # what applied on the scratch copy did not here (a Yrs panic: reloaded)
                raise InvalidInput(f"the update does not apply ({exc})") from None
            finally:
                self.ui_rooms.applying = None
            await durable(ticket)
        except StoreError as exc:
            await self._reload_stale()
            raise Unavailable(f"the change could not be stored durably ({exc.__cause__ or exc}); retry") from exc

    async def _orders_for(self, order_id: str) -> OrdersDoc:
        try:
            day = date(int(order_id[0:4]), int(order_id[4:6]), int(order_id[6:8]))
        except ValueError:
            raise NotFound(f"order {order_id!r} not found") from None
        try:
            return await self.orders_of_day(day)
        except NotFound:
            raise NotFound(f"order {order_id!r} not found") from None

    async def _commit(self, name: str, mutate, op: Operation | None):  # noqa: ANN001, ANN202
        await self._reload_stale()
        try:
            result, ticket = self.host.write(name, mutate, op)
            await durable(ticket)
        except StoreError as exc:
            # Nothing of a refused write may stay visible or be built on: back to what is on disk.
            await self._reload_stale()
            raise Unavailable(f"the change could not be stored durably ({exc.__cause__ or exc}); retry") from exc
        return result

    async def _reload_stale(self) -> None:
        if not self.store.stale_docs:
            return
        with anyio.CancelScope(shield=True):
            try:
                await self.host.reload_stale()
            except Exception as exc:
                log.exception("reloading documents after a failed commit failed")
                raise Unavailable(f"storage is failing ({exc}); writes are refused until it recovers") from exc

    # -- orders --------------------------------------------------------------------------------

    async def create_order(
        self, *, table: str | None, waiter: str | None, items: list[dict[str, Any]], notes: str = "",
        user: str | None = None,
    ) -> dict[str, Any]:
        if not items:
            raise InvalidInput("an order needs at least one item")
        day = self.today()
        model = await self.orders_of_day(day)
        op = Operation("order", "", "create", user or waiter)

        def mutate() -> dict[str, Any]:
            op.entity_id = model.create(day=day, table=table, waiter=waiter, items=items, notes=notes)
            op.after = model.view(op.entity_id)
            return op.after

        return await self._commit(orders_doc.doc_name(day), mutate, op)  # the view as committed

    async def _audited(self, doc: str, model, entity: str, entity_id: str, operation: str,  # noqa: ANN001
                       user: str | None, before: dict[str, Any] | None, mutate_fn) -> dict[str, Any]:  # noqa: ANN001
        """One audited write: ``mutate_fn(model)`` plus an audit row with the entity before and after."""
        op = Operation(entity, entity_id, operation, user)

        def mutate() -> dict[str, Any]:
            mutate_fn(model)
            op.before, op.after = before, model.view(entity_id)
            return op.after

        return await self._commit(doc, mutate, op)  # the view as committed, also the audit's "after"

    async def _order_op(self, order_id: str, operation: str, user: str | None, mutate_fn) -> dict[str, Any]:  # noqa: ANN001
        model = await self._orders_for(order_id)
        before = model.view(order_id)
        doc = orders_doc.doc_name(date.fromisoformat(before["business_day"]))
        return await self._audited(doc, model, "order", order_id, operation, user, before, mutate_fn)

    async def get_order(self, order_id: str) -> dict[str, Any]:
        return (await self._orders_for(order_id)).view(order_id)

    async def list_orders(
        self, *, day: date | None = None, status: str | None = None, table: str | None = None
    ) -> list[dict[str, Any]]:
        """Orders that read; a malformed one is skipped (counted in :meth:`status`, logged once)."""
        days = [day] if day is not None else self.live_days()
        out: list[dict[str, Any]] = []
        tables = None
        if table is not None and self.tables.exists(table):
            tables = self.tables.group(table)
        for d in days:
            try:
                model = await self.orders_of_day(d)
            except NotFound:
                if day is not None:
                    raise
                continue
            for order in model.list(status=status):
                if table is None or order["table"] == table or (tables and order["table"] in tables):
                    out.append(order)
        return out

    async def set_order_status(self, order_id: str, status: str, *, reason: str | None = None,
                               user: str | None = None) -> dict[str, Any]:
        return await self._order_op(order_id, f"status:{status}", user,
                                    lambda m: m.set_status(order_id, status, reason=reason))

    async def update_order(self, order_id: str, *, waiter: str | None = None, notes: str | None = None,
                           user: str | None = None) -> dict[str, Any]:
        return await self._order_op(order_id, "update", user,
                                    lambda m: m.update_fields(order_id, waiter=waiter, notes=notes))

    async def cancel_order(self, order_id: str, reason: str, user: str | None = None) -> dict[str, Any]:
        return await self.set_order_status(order_id, "cancelled", reason=reason, user=user)

    async def add_items(self, order_id: str, items: list[dict[str, Any]], user: str | None = None) -> dict[str, Any]:
        if not items:
            raise InvalidInput("no items to add")
        return await self._order_op(order_id, "add_items", user, lambda m: m.add_items(order_id, items))

    async def void_item(self, order_id: str, item_id: str, reason: str, user: str | None = None) -> dict[str, Any]:
        return await self._order_op(order_id, "void_item", user, lambda m: m.void_item(order_id, item_id, reason))

    async def set_item_status(self, order_id: str, item_id: str, stage: str, user: str | None = None) -> dict[str, Any]:
        return await self._order_op(order_id, f"kitchen:{stage}", user,
                                    lambda m: m.set_kitchen_status(order_id, item_id, stage))

    async def transfer_order(self, order_id: str, table: str, user: str | None = None) -> dict[str, Any]:
        return await self._order_op(order_id, "transfer", user, lambda m: m.transfer(order_id, table))

    # -- tables --------------------------------------------------------------------------------

    async def _table_op(self, table_id: str, operation: str, user: str | None, mutate_fn, *, create: bool = False):  # noqa: ANN001, ANN202
        model = self.tables
        before = model.view(table_id) if model.exists(table_id) else None
        if before is None and not create:
            raise NotFound(f"table {table_id!r} not found")
        return await self._audited(tables_doc.DOC_NAME, model, "table", table_id, operation, user, before, mutate_fn)

    async def put_table(self, table_id: str, *, name: str, seats: int, area: str | None,
                        user: str | None = None) -> dict[str, Any]:
        return await self._table_op(table_id, "put", user,
                                    lambda m: m.put(table_id, name=name, seats=seats, area=area), create=True)

    async def update_table(self, table_id: str, *, user: str | None = None, **changes: Any) -> dict[str, Any]:
        return await self._table_op(table_id, "update", user, lambda m: m.update(table_id, **changes))

    async def merge_tables(self, table_id: str, into: str, user: str | None = None) -> dict[str, Any]:
        return await self._table_op(table_id, "merge", user, lambda m: m.merge_into(table_id, into))

    async def unmerge_table(self, table_id: str, user: str | None = None) -> dict[str, Any]:
        return await self._table_op(table_id, "unmerge", user, lambda m: m.unmerge(table_id))

    # -- catalog and stock ---------------------------------------------------------------------

    async def _inventory_op(self, sku: str, operation: str, user: str | None, mutate_fn, *, create: bool = False):  # noqa: ANN001, ANN202
        model = self.inventory
        before = model.view(sku) if sku in model.catalog else None
        if before is None and not create:
            model.require(sku)
        return await self._audited(inventory_doc.DOC_NAME, model, "inventory", sku, operation, user, before, mutate_fn)

    async def put_product(self, sku: str, *, user: str | None = None, **product: Any) -> dict[str, Any]:
        await self._inventory_op(sku, "put_product", user, lambda m: m.put_product(sku, **product), create=True)
        return self.inventory.product(sku)

    async def adjust_stock(self, sku: str, delta: int, reason: str, user: str | None = None) -> dict[str, Any]:
        return await self._inventory_op(sku, f"adjust:{reason}", user, lambda m: m.adjust(sku, delta))

    async def count_stock(self, sku: str, quantity: int, user: str | None = None) -> dict[str, Any]:
        return await self._inventory_op(sku, "count", user, lambda m: m.count(sku, quantity))

    async def set_stock_flags(self, sku: str, user: str | None = None, **flags: Any) -> dict[str, Any]:
        return await self._inventory_op(sku, "flags", user, lambda m: m.set_flags(sku, **flags))

    # -- mesh ----------------------------------------------------------------------------------

    def _require_mesh(self) -> Mesh:
        if self.mesh is None:
            raise NotEnrolled(f"{self.config.data_dir} is not enrolled in a store: no peer links "
                              "(see 'meshpos store enroll' in docs/operations.md)")
        return self.mesh

    def live_traffic(self) -> dict[str, tuple[int, int, int, int]]:
        """Per linked peer, its open link's traffic so far (bytes and frames, in and out)."""
        return {} if self.mesh is None else {p: link.traffic() for p, link in self.mesh.links.items()}

    def peers(self) -> dict[str, Any]:
        mesh = self._require_mesh()
        status = mesh.status()
        ours = {name: self.host.state_vector(name) for name in self.host.names()}
        for peer in status["peers"]:
            asked = mesh.syncing.asked_with.get(peer["terminal_id"] or "")
            peer["documents"] = None if asked is None else {
                name: sync_state(ours[name], *record) for name, record in sorted(asked.items()) if name in ours}
        return {**status, "discovery": self._discovery_status()}

    def _discovery_status(self) -> dict[str, Any]:
        if self.discovery is None:
            return {"enabled": False, "seen": []}
        return self.discovery.status()

    async def adopt_roster(self, signed: bytes) -> dict[str, Any]:
        from peer.identity import IdentityError

        mesh = self._require_mesh()
        try:
            adopted = await mesh.adopt_roster(signed)
        except IdentityError as exc:
            raise PermissionDenied(f"roster refused: {exc}") from None
        message = (f"adopted roster v{mesh.roster.version}; relaying it to {len(mesh.links)} linked terminal(s)"
                   if adopted else f"this terminal already holds roster v{mesh.roster.version}; nothing to do")
        return {"adopted": adopted, "version": mesh.roster.version, "message": message}

    # -- status --------------------------------------------------------------------------------

    def _encoded_size(self, name: str, state: bytes) -> int:
        """``name``'s encoded size, for status.  Encoding costs O(document) (~20 ms for a day of
        a few thousand orders) and monitors poll status: a document over :data:`SIZE_EXACT_BYTES` is
        re-measured at most once a second (exact whenever it has not changed since)."""
        cached = self._sizes.get(name)
        now = self.monotonic()
        if cached is not None and (cached[0] == state or (cached[1] > SIZE_EXACT_BYTES and now - cached[2] < 1.0)):
            return cached[1]
        size = len(self.host.diff(name))
        self._sizes[name] = (state, size, now)
        return size

    async def status(self) -> dict[str, Any]:
        docs = {}
        for name in self.host.names():
            model = self.host.get(name)
            state = self.host.state_vector(name)
            docs[name] = {
                "bytes": self._encoded_size(name, state),
                "pending_updates": self.store.pending_per_doc.get(name, 0),
                "read_only": model.read_only,
                "state_vector": {str(k): v for k, v in sorted(decode_state_vector(state).items())},
                "last_peer_update_at": self.host.last_peer_update_at.get(name),
                "malformed": model.malformed_summary(),  # type: ignore[attr-defined]
            }
        return {
            "terminal_id": self.config.terminal_id, "type": self.config.type, "replica_id": self.host.replica_id,
            "business_day": self.today().isoformat(),
            "uptime_seconds": round(self.monotonic() - self.started_monotonic, 3),
            "documents": docs, "storage": await self.store.size(), "last_event_cursor": self.store.last_cursor,
            "mesh": None if self.mesh is None else self.peers(),
            "hq": self.hq_status(),
        }


def sync_state(ours: bytes, theirs: Any, answered: Any, until: Any) -> dict[str, int]:
    """One document against one peer, in Yjs operations (docs/api.md, GET /api/v1/peers), from
    the state vector it last asked with (``theirs``), this terminal's when it answered
    (``answered``) and when the link ended (``until``, ``None`` while linked): how far apart the
    two were at that exchange - each side got the rest in it - and what changed here since it, or
    since the link ended: a linked peer gets that as it happens, one that is not linked lacks it."""
    them, then = decode_state_vector(theirs), decode_state_vector(answered)
    known: dict[int, int] = {}
    for vector in (them, then, decode_state_vector(until) if until is not None else {}):
        for client, clock in vector.items():
            known[client] = max(known.get(client, 0), clock)
    return {"they_lacked": missing_operations(answered, them), "we_lacked": missing_operations(theirs, then),
            "changed_since": missing_operations(ours, known)}
