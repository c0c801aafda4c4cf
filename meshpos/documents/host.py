"""Where CRDT changes become durable records and domain events.

Every change to a document - a local API call or an update that arrived from a peer - ends the
same way: the pycrdt transaction commits, the model's observers have noted what it touched, and
:meth:`DocumentHost._finish` turns that into one storage record (the binary update, the domain
events derived from the transaction, the audit row of a local operation).  Events are therefore
derived from what the CRDT actually changed, never from which API was called, so a peer's update
produces exactly the events the local write did.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import pycrdt

from core.clock import Clock, IdSource, id_bytes, iso, random_id
from core.errors import StoreError
from core.yupdate import Shape, UpdateGap, UpdateRefused, check_update, decode_state_vector, is_panic, merge_run
from storage.store import AuditRecord, Store, StoredEvent, Ticket

log = logging.getLogger(__name__)

LOCAL_ORIGIN = "local"
R = TypeVar("R")
#: After this many update rows a document is folded into a snapshot.
COMPACT_EVERY = 2000


class DamagedDocument(Exception):
    """A stored update of a document does not decode: refuse to serve rather than lose data."""


class Model:
    """Base of the typed document models.  Subclasses declare roots and derive events."""

    kind: str = ""
    #: The roots a peer's update may touch and what they may hold (checked before pycrdt sees it).
    shape: Shape = Shape(frozenset())

    def __init__(self, doc: pycrdt.Doc, *, terminal_id: str, replica_id: str, clock: Clock,
                 id_source: IdSource = id_bytes) -> None:
        self.doc = doc
        #: The document's name (the host names what it opens, :meth:`named`); ``kind`` until then.
        self.name = self.kind
        self.terminal_id = terminal_id
        self.replica_id = replica_id
        self.clock = clock
        self.id_source = id_source
        self.read_only = False
        self.attach()

    def named(self, name: str) -> None:
        """The name the host stores and syncs this document under."""
        self.name = name

    def attach(self) -> None:
        """Create/bind root types and subscribe the observers that note touched entities."""
        raise NotImplementedError

    def drain_events(self, known: dict[str, dict[str, Any]] | None = None, *,
                     defer: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """Domain events for everything touched since the last call; resets the notes.

        ``known`` maps entity ids to views the caller built after its last change in this
        transaction (a local write's audit "after"): reused instead of building them again.
        ``defer``: a model may leave a new entity's view for the event's reader to build
        (the orders do: :func:`meshpos.documents.orders.resolve_event`); the others ignore it.
        """
        raise NotImplementedError

    def now(self) -> str:
        return iso(self.clock())


@dataclass(slots=True)
class Operation:
    """Audit facts of one local domain operation."""

    entity: str
    entity_id: str
    operation: str
    user_id: str | None = None
    before: Any = None
    after: Any = None


class _Hosted:
    __slots__ = ("model", "name", "updates")

    def __init__(self, name: str, model: Model) -> None:
        self.name = name
        self.model = model
        self.updates: list[bytes] = []
        model.doc.observe(lambda event: self.updates.append(bytes(event.update)))


class DocumentHost:
    """Holds the live documents of one terminal and routes every change to the store."""

    def __init__(self, store: Store, *, terminal_id: str, replica_id: str, clock: Clock,
                 rng: random.Random | None = None, id_source: IdSource = id_bytes) -> None:
        """``rng``: where Yjs client ids come from (a simulation seeds it; ``None``: pycrdt's own);
        ``id_source``: where order, item and operation ids come from."""
        self.store = store
        self.rng = rng
        self.id_source = id_source
        self.terminal_id = terminal_id
        self.replica_id = replica_id
        self.clock = clock
        self._docs: dict[str, _Hosted] = {}
        self._update_listeners: list[Callable[[str, bytes, str, Ticket], None]] = []
        #: The newest storage ticket per document: :meth:`settled` waits for it.
        self._last_ticket: dict[str, Ticket] = {}
        #: When a peer's update last changed each document (UTC ISO-8601): a monitor's "last
        #: heard from the mesh", and how a benchmark times convergence without polling hard.
        self.last_peer_update_at: dict[str, str] = {}
        self._reload_lock = anyio.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self, name: str, model_cls: type[Model], *, read_only: bool = False) -> Model:
        """Load ``name`` from storage (snapshot + update rows) and start capturing its changes."""
        if name in self._docs:
            return self._docs[name].model
        doc = await self._load(name)
        model = model_cls(doc, terminal_id=self.terminal_id, replica_id=self.replica_id, clock=self.clock,
                          id_source=self.id_source)
        model.named(name)
        model.read_only = read_only
        self._docs[name] = _Hosted(name, model)
        return model

    async def _load(self, name: str) -> pycrdt.Doc:
        """A fresh doc (new random client id) holding exactly what the database holds for ``name``."""
        doc = pycrdt.Doc(client_id=None if self.rng is None else self.rng.getrandbits(32))
        try:
            async for snapshot, updates in self.store.iter_doc(name):
                with doc.transaction(origin="load"):
                    if snapshot is not None:
                        doc.apply_update(snapshot)
                    for update in updates:
                        doc.apply_update(update)
        except ValueError as exc:  # pycrdt: "Cannot decode update"
            raise DamagedDocument(
                f"{self.store.path}: document {name!r} holds an update that does not decode ({exc}); "
                "the file is left untouched - restore it from a backup or let peers resync a fresh data dir"
            ) from exc
        return doc

    async def reload(self, name: str) -> None:
        """Replace ``name``'s in-memory state with what is on disk, after a failed commit.

        The model object stays (callers hold it); its roots are rebound to the reloaded doc, whose
        new client id also keeps the refused update's clock range from ever being reused.
        """
        hosted = self._docs.get(name)
        if hosted is None:
            self.store.stale_docs.discard(name)
            return
        doc = await self._load(name)
        model = hosted.model
        model.doc = doc
        model.attach()
        self._docs[name] = _Hosted(name, model)
        self.store.stale_docs.discard(name)
        log.warning("reloaded %s from disk after a failed commit", name)

    async def reload_stale(self) -> None:
        """Reload every document a failed commit left stale (serialised: one reload per doc)."""
        async with self._reload_lock:
            for name in sorted(self.store.stale_docs):
                await self.reload(name)

    def close(self, name: str) -> None:
        self._docs.pop(name, None)
        self._last_ticket.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._docs)

    def get(self, name: str) -> Model | None:
        hosted = self._docs.get(name)
        return hosted.model if hosted else None

    def on_update(self, listener: Callable[[str, bytes, str, Ticket], None]) -> None:
        """``listener(doc_name, update, origin, ticket)`` for every change queued for storage.

        Peers ship the update once ``ticket`` is done without error: nothing leaves the terminal
        before it is durable here, so a refused write can never reach another terminal.
        """
        self._update_listeners.append(listener)

    async def settled(self, name: str) -> None:
        """Wait until every change queued for ``name`` is durable (or refused and reloaded).

        A sync step 2 is computed from the in-memory doc; settling first keeps it from carrying
        a change that is not on disk yet.
        """
        ticket = self._last_ticket.get(name)
        if ticket is not None:
            await ticket.done.wait()
        if name in self.store.stale_docs:
            await self.reload_stale()

    async def durable_now(self, name: str) -> None:
        """:meth:`settled`, again until no change of ``name`` is in flight: a diff computed right
        after it returns (no await between) holds only what is on disk - what a browser is sent."""
        while True:
            await self.settled(name)
            ticket = self._last_ticket.get(name)
            if (ticket is None or ticket.done.is_set()) and name not in self.store.stale_docs:
                return

    # -- writes --------------------------------------------------------------------------------

    def write(self, name: str, mutate: Callable[[], R], op: Operation | None) -> tuple[R, Ticket | None]:
        """Run ``mutate`` in one local transaction; returns its result and the durability ticket.

        ``mutate`` must validate before it changes anything: an exception it raises before its
        first mutation leaves the document untouched.
        """
        hosted = self._docs[name]
        if name in self.store.stale_docs:
            raise StoreError(f"document {name} is being reloaded after a failed commit")
        with hosted.model.doc.transaction(origin=LOCAL_ORIGIN):
            result = mutate()
        audits = [] if op is None else [self.audit_record(op)]
        known = {op.entity_id: op.after} if op is not None and isinstance(op.after, dict) else None
        return result, self._finish(hosted, LOCAL_ORIGIN, audits, known)

    def audit_record(self, op: Operation) -> AuditRecord:
        before, after = changed_fields(op.before, op.after)
        return AuditRecord(
            op_id=random_id(16, self.id_source), entity=op.entity, entity_id=op.entity_id, operation=op.operation,
            terminal_id=self.terminal_id, user_id=op.user_id, at=iso(self.clock()),
            before=before, after=after,
        )

    def apply_remote(self, name: str, updates: list[bytes], origin: str,
                     audits: Sequence[Operation] = ()) -> Ticket | None:
        """Apply updates from a peer in one transaction (one storage record); ``None``: nothing new.
        ``audits``: the audit rows of what they change, stored with them (a browser UI's write,
        checked by ``meshpos.documents.ui_writes`` first).

        Every update is checked first (:func:`check_update`): its shape, and that it is complete
        against the document - Yrs never holds anything "pending".  A refused one
        (:class:`UpdateRefused`, a ``ValueError``) leaves nothing applied.  One that builds on
        what the document lacks (:class:`UpdateGap`) is raised after the updates before it are
        applied, with their ticket on it: the caller asks the peer for what is missing.  One that
        passes but does not decode raises ``ValueError`` after the ones before it were applied and
        queued (they were valid); it and everything after it are not applied.
        """
        hosted = self._docs[name]
        if name in self.store.stale_docs:
            raise StoreError(f"document {name} is being reloaded after a failed commit")
        state: dict[int, int] | None = decode_state_vector(hosted.model.doc.get_state())
        gap: UpdateGap | None = None
        for n, update in enumerate(updates):
            try:
                state = check_update(update, hosted.model.shape, state)
            except UpdateGap as exc:
                gap, updates = exc, updates[:n]
                break
        error: ValueError | None = None
        try:
            with hosted.model.doc.transaction(origin=origin):
                for update in updates:
                    try:
                        hosted.model.doc.apply_update(update)
                    except ValueError as exc:
                        error = exc
                        break
        except BaseException as exc:
            if not (is_panic(exc) or isinstance(exc, Exception)):
                raise  # cancellation and the like
            # Yrs refused what passed the shape check: a panic (pyo3 makes it a BaseException) or
            # a RuntimeError.  What it did to the in-memory document is unknown: nothing of this
            # transaction is stored, and the document is reloaded from disk before it is used again.
            hosted.updates.clear()
            self.store.stale_docs.add(name)
            log.warning("%s: pycrdt failed on an update from %s (%s: %s); reloading the document from disk",
                        name, origin, type(exc).__name__, str(exc)[:200])
            raise UpdateRefused(f"pycrdt could not apply it ({type(exc).__name__}: {str(exc)[:100]})") from None
        ticket = self._finish(hosted, origin, [self.audit_record(op) for op in audits])
        if ticket is not None and not audits:  # audited: a browser's write, not the mesh's
            self.last_peer_update_at[name] = iso(self.clock())
        if error is not None:
            raise error
        if gap is not None:
            gap.ticket = ticket
            raise gap
        return ticket

    def _finish(self, hosted: _Hosted, origin: str, audits: list[AuditRecord],
                known: dict[str, dict[str, Any]] | None = None) -> Ticket | None:
        updates, hosted.updates = hosted.updates, []
        try:
            # One transaction for all the views (reads only: committing it changes nothing):
            # each pycrdt read outside one opens and commits its own, which cost more than
            # building a catch-up's 2,500 views.
            with hosted.model.doc.transaction():
                events = hosted.model.drain_events(known, defer=True)
        except Exception:  # a malformed entity (e.g. from a buggy peer) must not stop durability
            log.exception("could not derive events for %s; storing the update without events", hosted.name)
            events = []
        if not updates:
            return None
        update = merge_run(updates)
        ticket = self.store.enqueue(
            doc=hosted.name, update=update, origin=origin, at=iso(self.clock()), events=events, audits=audits
        )
        self._last_ticket[hosted.name] = ticket
        for listener in self._update_listeners:
            listener(hosted.name, update, origin, ticket)
        if self.store.pending_per_doc.get(hosted.name, 0) >= COMPACT_EVERY:
            self.compact(hosted.name)
        return ticket

    def compact(self, name: str) -> Ticket:
        """Queue a snapshot of ``name``'s current state; see :mod:`storage.store` for why it is exact."""
        hosted = self._docs[name]
        # Reset the count now so one burst queues one snapshot, not one per write until it lands.
        self.store.pending_per_doc[name] = 0
        return self.store.enqueue_snapshot(name, hosted.model.doc.get_update(), iso(self.clock()))

    # -- sync helpers (used by peers and tests) ------------------------------------------------

    def state_vector(self, name: str) -> bytes:
        return self._docs[name].model.doc.get_state()

    def versions(self, name: str) -> dict[int, int]:
        """``name``'s state vector decoded (client id -> clock): equal on two terminals = same document."""
        return decode_state_vector(self.state_vector(name))

    def diff(self, name: str, state_vector: bytes | None = None) -> bytes:
        doc = self._docs[name].model.doc
        return doc.get_update(state_vector) if state_vector is not None else doc.get_update()


def changed_fields(before: Any, after: Any) -> tuple[Any, Any]:
    """Keep only what differs, recursively: an audit row of a busy order stays small.

    Lists of objects that carry an ``id`` (order items) are compared as objects keyed by id, so a
    kitchen bump records one item's ``kitchen_status``, not the whole item list twice.
    """
    if _keyed(before) and _keyed(after):
        before, after = {x["id"]: x for x in before}, {x["id"]: x for x in after}
    if not isinstance(before, dict) or not isinstance(after, dict):
        return before, after
    old, new = {}, {}
    for key in sorted(after.keys() | before.keys()):
        b, a = before.get(key), after.get(key)
        if b != a:
            old[key], new[key] = changed_fields(b, a)
    return old, new


def _keyed(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, dict) and "id" in x for x in value)


async def durable(ticket: Ticket | None) -> list[StoredEvent]:
    """Await a write's ticket (``None`` means nothing changed, which is trivially durable)."""
    return [] if ticket is None else await ticket.wait()
