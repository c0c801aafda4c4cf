"""A terminal's WAN side: is an HQ configured and linked, what has it landed, what is still to go
up, and the log of its links (``GET /api/v1/status``'s ``hq``, ``GET /api/v1/hq/log``).

The HQ says what it has landed: the state vector it asks with for each document (it asks only
after its landings committed), its ``heads`` at link-up, and a ``landed`` message after each
landing (``{"type": "hq", "m": "landed", "docs": {name: base64 state vector}, "drawers":
{drawer: length}}``).  Pending counts are the difference between those and what this terminal
holds - as fresh as the HQ's last word, and everything counts as pending after a restart until
the HQ has said something.

The other way, besides the documents and the committed ledgers every linked terminal uploads, a
terminal sends the HQ the provisional cashier entries it took itself (``provisional``: at
link-up, and each time it takes one) - the HQ shows them until their reconciled entry lands.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from typing import Any

from core.errors import ALREADY_CONNECTED
from core.names import ID_PATTERN, is_doc_name
from core.yupdate import decode_state_vector
from meshpos.cashier import ledger
from meshpos.cashier.ledger import DRAWER_PATTERN
from meshpos.cashier.quorum import RELAY_CHUNK
from meshpos.documents.orders import MAX_PRICE_CENTS

DRAWER = re.compile(DRAWER_PATTERN)

#: Longest base64 state vector in a ``landed`` message (a document with thousands of writers).
MAX_VECTOR_CHARS = 64 * 1024
#: Links kept in the sync log.
LOG_LINKS = 200
#: Most catalog items one ``hq`` message may carry; longest product name.
MAX_CATALOG_ITEMS = 10_000
MAX_NAME_CHARS = 200
#: Most provisional entries one ``provisional`` message carries (as many as a ledger relay).
PROVISIONAL_CHUNK = RELAY_CHUNK
#: What an HQ owns of a product (docs/hq.md, "What the HQ may write").
HQ_FIELDS = ("name", "price_cents", "active")


def catalog_items(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The items of an HQ's ``{"type": "hq", "m": "catalog", "items": [...]}``, each
    ``{sku, name, price_cents, active}``; ``ValueError`` naming the first fault (the link is
    refused: nothing of a bad message is applied)."""
    if message.get("m") != "catalog":
        raise ValueError(f"hq message {str(message.get('m'))[:20]!r} is not one a terminal takes")
    items = message.get("items")
    if not isinstance(items, list) or len(items) > MAX_CATALOG_ITEMS:
        raise ValueError(f"hq catalog: items must be a list of at most {MAX_CATALOG_ITEMS}")
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"hq catalog: item {n} is not an object")
        sku, name, price, active = item.get("sku"), item.get("name"), item.get("price_cents"), item.get("active")
        if not isinstance(sku, str) or not ID_PATTERN.match(sku):
            raise ValueError(f"hq catalog: item {n} has no valid sku")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS:
            raise ValueError(f"hq catalog: {sku}: name must be 1-{MAX_NAME_CHARS} characters")
        if isinstance(price, bool) or not isinstance(price, int) or not 0 <= price <= MAX_PRICE_CENTS:
            raise ValueError(f"hq catalog: {sku}: price_cents must be an integer in 0..{MAX_PRICE_CENTS}")
        if not isinstance(active, bool):
            raise ValueError(f"hq catalog: {sku}: active must be true or false")
        out.append({"sku": sku, "name": name, "price_cents": price, "active": active})
    return out


def provisional_messages(drawer: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A terminal's provisional entries of ``drawer`` for its HQ (``{"type": "hq", "m":
    "provisional", "drawer", "entries"}``), in chunks of at most :data:`PROVISIONAL_CHUNK`."""
    return [{"type": "hq", "m": "provisional", "drawer": drawer, "entries": entries[k:k + PROVISIONAL_CHUNK]}
            for k in range(0, len(entries), PROVISIONAL_CHUNK)]


def provisional_from_wire(message: dict[str, Any], sender: str) -> tuple[str, list[dict[str, Any]]]:
    """The drawer and entries of a terminal's ``provisional`` message, each a well-formed
    ledger entry of that drawer that ``sender`` itself took provisionally (a terminal uploads its
    own only); ``ValueError`` naming the first fault (nothing of the message is landed)."""
    drawer, entries = message.get("drawer"), message.get("entries")
    if not isinstance(drawer, str) or not DRAWER.fullmatch(drawer):
        raise ValueError("hq provisional: drawer must be a drawer name")
    if not isinstance(entries, list) or len(entries) > PROVISIONAL_CHUNK:
        raise ValueError(f"hq provisional: entries must be a list of at most {PROVISIONAL_CHUNK}")
    for n, entry in enumerate(entries):
        ledger.check_entry(entry)
        if entry["kind"] in ("noop", "review_resolution") or entry["drawer"] != drawer:
            raise ValueError(f"hq provisional: entry {n} is no provisional entry of drawer {drawer}")
        origin = entry.get("provisional")
        if not isinstance(origin, dict) or origin.get("terminal_id") != sender \
                or not isinstance(origin.get("reason"), str) or not isinstance(origin.get("created_at"), str):
            raise ValueError(f"hq provisional: entry {n} was not taken provisionally by {sender}")
    return drawer, entries


def missing_operations(ours: bytes, known: dict[int, int] | None) -> int:
    """Yjs operations (struct clock units) ``ours`` has beyond the state ``known``."""
    known = known or {}
    return sum(max(0, clock - known.get(client, 0)) for client, clock in decode_state_vector(ours).items())


def landed_message(message: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, int]]:
    """The documents' state vectors and the drawers' lengths of an HQ's ``landed`` message;
    ``ValueError`` naming the first fault."""
    docs, drawers = message.get("docs", {}), message.get("drawers", {})
    if not isinstance(docs, dict) or not isinstance(drawers, dict) or len(docs) + len(drawers) > MAX_CATALOG_ITEMS:
        raise ValueError(f"hq landed: docs and drawers must be objects of at most {MAX_CATALOG_ITEMS} entries")
    vectors = {}
    for name, encoded in docs.items():
        if not is_doc_name(name) or not isinstance(encoded, str) or len(encoded) > MAX_VECTOR_CHARS:
            raise ValueError("hq landed: docs maps document names to base64 state vectors")
        try:
            vector = base64.b64decode(encoded, validate=True)
            decode_state_vector(vector)
        except ValueError:
            raise ValueError(f"hq landed: the state vector of {name} does not decode") from None
        vectors[name] = vector
    for drawer, length in drawers.items():
        if not DRAWER.fullmatch(drawer) or isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ValueError("hq landed: drawers maps drawer names to lengths")
    return vectors, dict(drawers)


class WanView:
    """What this terminal knows of its HQ."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = list(addresses)
        #: Drawer -> how far the HQ has landed its ledger (its last ``heads``).
        self.ledger_heads: dict[str, int] = {}
        #: Document -> client -> clock the HQ has landed (merged from everything it said).
        self.landed_vectors: dict[str, dict[int, int]] = {}
        self.last_sync_at: str | None = None
        self.log: deque[dict[str, Any]] = deque(maxlen=LOG_LINKS)
        self._open: dict[str, dict[str, Any]] = {}

    @property
    def configured(self) -> bool:
        return bool(self.addresses)

    def landed(self, vectors: dict[str, bytes], at: str | None) -> None:
        """State vectors the HQ has landed (its step 1 or its ``landed``): merged, never moved
        back; ``at``: when it said so (``None``: not known, the last sync time stays)."""
        for name, vector in vectors.items():
            known = self.landed_vectors.setdefault(name, {})
            for client, clock in decode_state_vector(vector).items():
                if clock > known.get(client, 0):
                    known[client] = clock
        if at is not None:
            self.last_sync_at = at

    def heads(self, drawers: dict[str, int], complete: bool, at: str) -> None:
        """The HQ's ``heads``: ``complete`` lists every drawer it has landed."""
        if complete:
            self.ledger_heads = dict(drawers)
        else:
            for drawer, length in drawers.items():
                self.ledger_heads[drawer] = max(length, self.ledger_heads.get(drawer, 0))
        self.last_sync_at = at

    def linked(self, hq_id: str, address: str, at: str) -> None:
        """A link to ``hq_id`` opened; one still open to it was replaced (a reboot of either side
        links again before the old link's end is noticed) and is closed in the log as such."""
        old = self._open.pop(hq_id, None)
        if old is not None:
            old.update(closed_at=at, close={"code": ALREADY_CONNECTED, "reason": "replaced by a new link"})
        entry = {"hq": hq_id, "address": address, "opened_at": at, "closed_at": None, "duration_s": None,
                 "bytes_up": 0, "bytes_down": 0, "updates_up": 0, "close": None}
        self._open[hq_id] = entry
        self.log.append(entry)
        self.last_sync_at = at

    def unlinked(self, hq_id: str, at: str, seconds: float | None, code: int, reason: str,
                 traffic: tuple[int, int, int, int]) -> None:
        entry = self._open.pop(hq_id, None)
        if entry is None:
            return
        bytes_in, bytes_out, _updates_in, updates_out = traffic
        entry.update(closed_at=at, duration_s=None if seconds is None else round(seconds, 3), bytes_up=bytes_out,
                     bytes_down=bytes_in, updates_up=updates_out, close={"code": code, "reason": reason})

    def status(self, *, linked: list[str], documents: dict[str, bytes], ledgers: dict[str, int],
               last_error: dict[str, Any] | None) -> dict[str, Any]:
        """``documents``: this terminal's state vectors; ``ledgers``: its committed ledger lengths."""
        if not self.configured:
            return {"configured": False, "addresses": [], "linked": False, "hq_ids": [], "last_sync_at": None,
                    "pending_updates": None, "pending_ledger_entries": None, "last_error": None}
        pending = sum(missing_operations(sv, self.landed_vectors.get(name)) for name, sv in documents.items())
        entries = sum(max(0, n - self.ledger_heads.get(drawer, 0)) for drawer, n in ledgers.items())
        return {"configured": self.configured, "addresses": self.addresses, "linked": bool(linked),
                "hq_ids": linked, "last_sync_at": self.last_sync_at, "pending_updates": pending,
                "pending_ledger_entries": entries, "last_error": last_error}

    def entries(self, live: dict[str, tuple[int, int, int, int]] | None = None) -> list[dict[str, Any]]:
        """The sync log, newest first; ``live``: the traffic so far of the links still open, by
        HQ id (their entries show it; a closed one shows its whole life's)."""
        out = []
        for entry in reversed(self.log):
            e = dict(entry)
            if live and e["hq"] in live and self._open.get(e["hq"]) is entry:
                bytes_in, bytes_out, _updates_in, updates_out = live[e["hq"]]
                e.update(bytes_up=bytes_out, bytes_down=bytes_in, updates_up=updates_out)
            out.append(e)
        return out
