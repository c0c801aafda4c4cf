"""One store's documents in an HQ process, as its mesh sees them (:class:`peer.replica.Replica`).

Two copies of each document: the *live* one the mesh syncs against (its state vector tells the
terminals what to upload), and the *mirror* of the PostgreSQL record (:mod:`meshpos.hq.landing`).
A terminal's update is checked (shape, completeness) and applied to the live document at once;
what it added there is queued for landing, and its ticket is done once the landing committed -
so the mesh's acknowledgements never run ahead of PostgreSQL.  One lander task per document
lands everything queued for it in one transaction.

When a landing fails (PostgreSQL down) the live document holds changes the record lacks; it is
marked stale, and the links of the store are closed (4012) so that terminals keep those changes
as pending; the next link finds it reloaded from the record and uploads them again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, timedelta
from functools import partial
from typing import Any

import anyio

from core.clock import Clock, iso, system_clock
from core.errors import StoreError
from core.names import is_doc_name, orders_day
from core.yupdate import UpdateGap, check_update, decode_state_vector, is_panic
from meshpos.hq import landing
from peer.replica import UpdateListener
from storage import hq_rows
from storage.hq_database import Database
from storage.store import Ticket

log = logging.getLogger(__name__)


class _Live(landing.DeltaDoc):
    """The copy the mesh syncs against, and the shape a terminal's update must have."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.shape = landing.model_class(name).shape


class _Queued:
    __slots__ = ("origins", "tickets", "updates")

    def __init__(self) -> None:
        self.updates: list[bytes] = []
        self.origins: list[str] = []
        self.tickets: list[Ticket] = []


class HqReplica:
    """:class:`peer.replica.Replica` of one store in one HQ process."""

    def __init__(self, store_id: str, db: Database, *, process: str, tg: anyio.abc.TaskGroup,
                 clock: Clock = system_clock, failed: Callable[[str], None] | None = None) -> None:
        self.store_id = store_id
        self.db = db
        self.process = process
        self.clock = clock
        self._tg = tg
        self._failed = failed or (lambda reason: None)
        self._live: dict[str, _Live] = {}
        self._mirrors: dict[str, landing.Mirror] = {}
        self._queued: dict[str, _Queued] = {}
        self._wake: dict[str, anyio.Event] = {}
        self._last: dict[str, Ticket] = {}
        self._landed_sv: dict[str, bytes] = {}
        self._used: dict[str, float] = {}  # when the mesh last touched each open document
        self._open_lock = anyio.Lock()
        self._listeners: list[UpdateListener] = []
        #: Documents whose live copy may hold what the record lacks: reloaded before use.
        self.stale: set[str] = set()
        #: Landings committed, and the updates they appended (status and the link log).
        self.landings = 0
        self.landed = 0
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        #: Called with a document's name and landed state vector after each landing committed.
        self.on_landed: Callable[[str, bytes], None] | None = None
        #: Called with each link event the mesh records (the HQ logs links in ``link_log``).
        self.on_event: Callable[[str, dict[str, Any]], None] | None = None

    # -- what the mesh reads -------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._live)

    def is_open(self, name: str) -> bool:
        return name in self._live

    def state_vector(self, name: str) -> bytes:
        """What the record holds of ``name`` (as of the last landing this process committed or
        loaded): an HQ asks with it, and terminals count what lies beyond it as pending - so it
        is never the live copy's, which may hold what is queued and not landed yet."""
        self._used[name] = anyio.current_time()
        return self._landed_sv[name]

    def diff(self, name: str, state_vector: bytes) -> bytes:
        self._used[name] = anyio.current_time()
        return self._live[name].doc.get_update(state_vector)

    async def settled(self, name: str) -> None:
        ticket = self._last.get(name)
        if ticket is not None:
            await ticket.done.wait()

    async def open(self, name: str) -> None:
        """Load ``name`` from the record (again, if a failed landing left it stale, or
        :meth:`evict_idle` let it go)."""
        self._used[name] = anyio.current_time()
        if name in self._live and name not in self.stale:
            return
        if not is_doc_name(name):
            raise ValueError(f"{name!r} is not a document")
        async with self._open_lock:
            if name in self._live and name not in self.stale:
                return
            await self.settled(name)
            live = _Live(name)
            try:
                mirror = await self.db.run(landing.load, self.store_id, name,
                                           lambda rows: live.apply(rows, "load"))
            except BaseException as exc:
                if isinstance(exc, StoreError) or not (is_panic(exc) or isinstance(exc, Exception)):
                    raise
                log.error("store %s: %s does not load from the record (%s: %s)", self.store_id, name,
                          type(exc).__name__, str(exc)[:200])
                raise StoreError(f"{name} does not load from the record ({type(exc).__name__})") from None
            self._live[name], self._mirrors[name] = live, mirror
            self._used[name] = anyio.current_time()
            self._landed_sv[name] = mirror.doc.get_state()  # loaded: the worker thread is done with it
            self.stale.discard(name)
            if name not in self._wake:
                self._wake[name] = anyio.Event()
                self._queued[name] = _Queued()
                self._tg.start_soon(self._lander, name)

    def evict_idle(self, idle: float) -> list[str]:
        """Let go of the archived days (an ``orders`` day before yesterday, by this process's
        clock) nobody has touched for ``idle`` seconds and that have nothing waiting to land: the
        record holds them, and the next step 1 or update for one loads it again.  What an HQ
        process holds in memory is then bounded by the live days of its stores, not by their
        history.  Returns the names let go."""
        now, oldest_live = anyio.current_time(), self.today() - timedelta(days=1)
        out = []
        for name in list(self._live):
            day = orders_day(name)
            last = self._last.get(name)
            if day is None or day >= oldest_live or name in self.stale or self._open_lock.locked() \
                    or self._queued[name].updates or (last is not None and not last.done.is_set()) \
                    or now - self._used.get(name, now) < idle:
                continue
            del self._live[name], self._mirrors[name], self._landed_sv[name]
            self._used.pop(name, None)
            out.append(name)
        return out

    async def recover(self) -> None:
        for name in sorted(self.stale):
            try:
                await self.open(name)
            except StoreError as exc:
                log.warning("store %s: %s stays stale (%s)", self.store_id, name, exc)
                return

    def on_update(self, listener: UpdateListener) -> None:
        self._listeners.append(listener)

    async def archived_state_vectors(self) -> dict[str, bytes]:
        """What the record holds of the documents not open here: a terminal's archived days
        that are landed already are then not asked for again at every link."""
        heads = await self.db.run(hq_rows.heads, self.store_id)
        return {name: sv for name, sv in heads.items() if name not in self._live}

    def today(self) -> date:
        return self.clock().date()

    def record(self, at: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        for kind, payload in events:
            self.events.append((at, kind, payload))
            if self.on_event is not None:
                self.on_event(kind, payload)
        del self.events[:-200]

    # -- what terminals send -------------------------------------------------------------------

    def apply_remote(self, name: str, updates: list[bytes], origin: str) -> Ticket | None:
        """Check and apply to the live document; queue what it added for landing."""
        if name in self.stale:
            raise StoreError(f"{name} is being reloaded after a failed landing")
        live = self._live[name]
        self._used[name] = anyio.current_time()
        state: dict[int, int] | None = decode_state_vector(live.doc.get_state())
        gap: UpdateGap | None = None
        for n, update in enumerate(updates):
            try:
                state = check_update(update, live.shape, state)
            except UpdateGap as exc:
                gap, updates = exc, updates[:n]
                break
        try:
            delta = live.apply(updates, origin) if updates else None
        except BaseException as exc:
            if not (is_panic(exc) or isinstance(exc, Exception)):
                raise
            self._stale(name, f"pycrdt failed on an update from {origin} ({type(exc).__name__})", close=False)
            raise ValueError(f"pycrdt could not apply it ({type(exc).__name__})") from None
        ticket = None if delta is None else self._queue(name, delta, origin)
        if gap is not None:
            gap.ticket = ticket
            raise gap
        return ticket

    def _queue(self, name: str, delta: bytes, origin: str) -> Ticket:
        queued = self._queued[name]
        ticket = Ticket()
        queued.updates.append(delta)
        queued.origins.append(origin.removeprefix("peer:"))
        queued.tickets.append(ticket)
        self._last[name] = ticket
        self._wake[name].set()
        for listener in self._listeners:
            listener(name, delta, origin, ticket)
        return ticket

    async def _lander(self, name: str) -> None:
        while True:
            await self._wake[name].wait()
            self._wake[name] = anyio.Event()
            batch, self._queued[name] = self._queued[name], _Queued()
            if not batch.updates:
                continue
            if name in self.stale:  # queued before a landing failed: on top of a mirror unlike the record
                self._fail(batch, StoreError(f"{name} is being reloaded after a failed landing"))
                continue
            mirror = self._mirrors[name]
            origins = ",".join(dict.fromkeys(batch.origins))[:200]
            try:
                landed = await self.db.run(partial(landing.land, received_from=origins, process=self.process),
                                           self.store_id, mirror, batch.updates)
            except StoreError as exc:
                error: BaseException = exc
            except BaseException as exc:  # a bug (or a Yrs panic) must not stop the other documents
                if not (is_panic(exc) or isinstance(exc, Exception)):
                    raise  # cancellation
                log.exception("store %s: landing %s failed", self.store_id, name)
                error = exc
            else:
                vector = mirror.doc.get_state()  # the worker thread is done with the mirror
                self._landed_sv[name] = vector
                if landed.others:  # another process landed them: the live copy learns them too
                    try:
                        self._live[name].apply(landed.others, "hq:record")
                    except BaseException as exc:
                        if not (is_panic(exc) or isinstance(exc, Exception)):
                            raise
                        self._stale(name, f"the record's rows did not apply ({type(exc).__name__})", close=True)
                self.landings += 1
                self.landed += len(batch.updates)
                for ticket in batch.tickets:
                    ticket.done.set()
                if self.on_landed is not None:
                    self.on_landed(name, vector)
                continue
            self._stale(name, str(error), close=True)
            self._fail(batch, error)
            self._fail(self._queued[name], error)
            self._queued[name] = _Queued()

    @staticmethod
    def _fail(batch: _Queued, error: BaseException) -> None:
        for ticket in batch.tickets:
            ticket.error = error
            ticket.done.set()

    def _stale(self, name: str, reason: str, *, close: bool) -> None:
        """The live copy and the mirror of ``name`` may differ from the record: both are rebuilt."""
        self.stale.add(name)
        log.warning("store %s: %s is reloaded from PostgreSQL before its next use (%s)", self.store_id, name, reason)
        if close:
            self._failed(reason)

    def status(self) -> dict[str, Any]:
        return {"documents": len(self._live), "stale": sorted(self.stale), "landings": self.landings,
                "updates_landed": self.landed, "queued": sum(len(q.updates) for q in self._queued.values()),
                "at": iso(self.clock())}
