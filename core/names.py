"""Names every layer checks the same way: ids, terminal types, document names, peer addresses."""

from __future__ import annotations

import re
from datetime import date

#: Ids of skus, tables and terminals: safe in composite keys ("sku/replica") and URLs.
#: ``\Z``, not ``$``: ``$`` also matches before a final newline, so every ``ID_PATTERN.match``
#: would take ``"T1\n"`` for an id.
ID_BODY = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}"  # the API's path parameters take it too
ID_PATTERN = re.compile(rf"^{ID_BODY}\Z")

#: What a terminal may be; its certificate names one (docs/operations.md).
TERMINAL_TYPES = ("pos", "kds", "waiter", "monitor")
#: The type of a chain's HQ: enrolled by each store's authority like a terminal, but it runs as
#: ``meshpos hq run``, never votes and writes only the catalog (docs/hq.md).
HQ_TYPE = "hq"
#: What a store authority may enroll.
ENROLLABLE_TYPES = (*TERMINAL_TYPES, HQ_TYPE)

#: The documents outside the per-day orders documents (docs/documents.md).
FIXED_DOCS = ("tables", "inventory")
_ORDERS = re.compile(r"orders/([0-9]{4}-[0-9]{2}-[0-9]{2})")


def orders_day(name: str) -> date | None:
    """The business day of an ``orders/YYYY-MM-DD`` document name (``None`` for other names)."""
    m = _ORDERS.fullmatch(name)
    if m is None:
        return None
    try:
        return date.fromisoformat(m.group(1))
    except ValueError:
        return None


def is_doc_name(name: str) -> bool:
    """Whether ``name`` is a document a terminal holds (``tables``, ``inventory``, ``orders/<day>``)."""
    return name in FIXED_DOCS or orders_day(name) is not None


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) of a static peer; ``ValueError`` otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"peer address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)
