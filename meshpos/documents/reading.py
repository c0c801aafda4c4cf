"""Reading values that peers and JS clients wrote: every value is untrusted input.

The machinery the three document models share: the ``need_*`` readers turn a value that breaks
docs/documents.md into a :class:`Flaw` naming what is wrong, and :class:`CheckedModel` keeps the
damage of a malformed value with its entity - listings skip it, it is counted for status and
logged once, and it refuses changes until a valid value replaces it.
"""

from __future__ import annotations

import heapq
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pycrdt

from core.clock import Clock, IdSource, id_bytes
from core.errors import MalformedEntity
from core.yupdate import is_panic
from meshpos.documents.host import Model
from meshpos.documents.values import ID_PATTERN, as_int

#: What reading a malformed value can raise: the ``need_*`` readers' :class:`Flaw`, and whatever
#: else a value of the wrong shape makes plain Python code raise (RecursionError: a plain object
#: nested thousands deep).  All of them mean "this entity is malformed", never "stop serving".
READ_ERRORS = (ValueError, TypeError, KeyError, AttributeError, RecursionError)
#: Status lists this many malformed entities per document (the count is always exact), and clips
#: each reason and id: a monitor's poll stays small whatever a peer wrote.
MALFORMED_SHOWN = 5
REASON_CHARS = 200
ID_CHARS = 80

log = logging.getLogger(__name__)
R = TypeVar("R")


class Flaw(ValueError):
    """What is wrong with one value read from a document; its text is the reason callers see."""


def clip(text: str, limit: int = REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(value: Any) -> str:
    """A value's kind in the words of docs/documents.md, i.e. what a JS client wrote."""
    if value is None:
        return "null"
    for kind, words in _KINDS:
        if isinstance(value, kind):
            return words
    return type(value).__name__


_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (dict, "a plain object"),
    (list, "an array"), (pycrdt.Map, "a Y.Map"), (pycrdt.Array, "a Y.Array"), (pycrdt.Text, "a Y.Text"),
    ((bytes, bytearray), "binary data"),
)


def _shown(value: Any) -> str:
    """A wrong value for a reason: numbers as written (they are short), anything else by kind."""
    if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**30):
        return clip(repr(value), 40)
    return describe(value)


def need_int(value: Any, lo: int, hi: int, what: str) -> int:
    """An integer within the documented bounds; a fraction, a string or an out-of-bounds number
    is a flaw (never served: a JS UI would read it wrong)."""
    try:
        number = as_int(value)
    except TypeError:
        raise Flaw(f"{what} must be an integer, got {_shown(value)}") from None
    if not lo <= number <= hi:
        raise Flaw(f"{what} must be in {lo}..{hi}, got {_shown(number)}")
    return number


def need_str(value: Any, what: str, *, null: bool = False) -> Any:
    if isinstance(value, str) or (null and value is None):
        return value
    raise Flaw(f"{what} must be a string{' or null' if null else ''}, got {describe(value)}")


def need_id(value: Any, what: str, *, null: bool = False, pattern: re.Pattern[str] = ID_PATTERN) -> Any:
    if null and value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise Flaw(f"{what} must be an id matching {pattern.pattern}, got "
                   f"{clip(repr(value), 40) if isinstance(value, str) else describe(value)}")
    return value


def need_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise Flaw(f"{what} must be true or false, got {describe(value)}")
    return value


def need_object(value: Any, what: str) -> dict[str, Any]:
    """A plain JSON object (a ``Y.Map`` is a flaw too: the documents say which of the two a key holds)."""
    if not isinstance(value, dict):
        raise Flaw(f"{what} must be a plain JSON object, got {describe(value)}")
    return value


def need_list(value: Any, what: str, most: int) -> list[Any]:
    if not isinstance(value, list):
        raise Flaw(f"{what} must be an array, got {describe(value)}")
    if len(value) > most:
        raise Flaw(f"{what} holds {len(value)} entries, more than {most}")
    return value


def need_text(value: Any, what: str, read: Callable[[Any], R]) -> R:
    """JSON text decoded by ``read`` (:func:`load` or :func:`load_list`), or a flaw naming the key.

    In ``str(order)`` a ``Y.Map`` and a plain object both read as JSON objects: the reason names both.
    """
    if isinstance(value, dict):
        raise Flaw(f"{what} must be JSON text (a string), got an object (a Y.Map or a plain object)")
    try:
        return read(value)
    except (TypeError, ValueError) as exc:
        raise Flaw(f"{what}: {exc}") from None


class CheckedModel(Model):
    """A model whose reads treat every document value as untrusted input.

    The damage of a malformed value stays with its entity: :meth:`_read` turns whatever its reader
    raises into :class:`MalformedEntity`, remembers the entity (shown by ``GET /api/v1/status``)
    and logs it once - listings skip it, and a monitor polling every second does not flood the
    log.  A read that succeeds again (a valid value replaced the bad one) forgets it.
    """

    #: The kind of entity the document holds, in messages ("order", "table", "sku").
    entity = ""
    #: A scratch copy (meshpos/documents/ui_writes.py) logs nothing: what it finds malformed is
    #: a refused write, not a document's state, and the refusal is logged where it is answered.
    quiet = False

    def __init__(self, doc: pycrdt.Doc, *, terminal_id: str, replica_id: str, clock: Clock,
                 id_source: IdSource = id_bytes) -> None:
        #: Entity id -> {"reason", "first_seen_at"}.  Set before :meth:`attach`, which a reload
        #: after a failed commit calls again: the same bad values found again are not news.
        self.malformed: dict[str, dict[str, str]] = {}
        super().__init__(doc, terminal_id=terminal_id, replica_id=replica_id, clock=clock, id_source=id_source)

    def _read(self, entity_id: str, build: Callable[[], R]) -> R:
        try:
            result = build()
        except BaseException as exc:
            if not (isinstance(exc, READ_ERRORS) or is_panic(exc)):
                raise
            raise self._malformed(entity_id, exc) from None
        if self.malformed:
            self._forget(entity_id)
        return result

    def _malformed(self, entity_id: str, exc: BaseException) -> MalformedEntity:
        reason = clip(str(exc) if isinstance(exc, Flaw) else f"{type(exc).__name__}: {exc}")
        known = self.malformed.get(entity_id)
        shown = clip(repr(entity_id), ID_CHARS)
        if known is None or known["reason"] != reason:
            # Once per entity (and again only if a new bad value replaces the old): not per request.
            # An unexpected exception gets its traceback - it may be a reader bug, not only bad data.
            if not self.quiet:
                log.warning("malformed %s %s in document %s, left out of listings until a valid value replaces "
                            "it: %s", self.entity, shown, self.name, reason, exc_info=not isinstance(exc, Flaw))
            self.malformed[entity_id] = {"reason": reason,
                                         "first_seen_at": known["first_seen_at"] if known else self.now()}
        return MalformedEntity(f"{self.entity} {shown} is malformed in document {self.name}: {reason}; it is "
                               "left out of listings and refuses changes until a valid value replaces it")

    def _forget(self, entity_id: str) -> None:
        """The entity reads again (repaired) or is gone: stop counting it."""
        if self.malformed.pop(entity_id, None) is not None:
            log.info("%s %s in document %s is no longer malformed", self.entity, clip(repr(entity_id), ID_CHARS),
                     self.name)

    def _forget_gone(self, present: Iterable[str]) -> None:
        """After a full listing: entities deleted from the document are no longer malformed."""
        if self.malformed:
            for gone in self.malformed.keys() - set(present):
                self._forget(gone)

    def _listed(self, ids: list[str], view: Callable[[str], dict[str, Any]]) -> list[dict[str, Any]]:
        """Views of ``ids`` that read; a malformed entity is counted, logged once and skipped."""
        out = []
        for entity_id in ids:
            try:
                out.append(view(entity_id))
            except MalformedEntity:
                continue
        self._forget_gone(ids)
        return out

    def malformed_summary(self) -> dict[str, Any]:
        """For status: the count, and the first-seen few with their reasons (bounded in size)."""
        first = heapq.nsmallest(MALFORMED_SHOWN, self.malformed.items(), key=lambda e: (e[1]["first_seen_at"], e[0]))
        return {"count": len(self.malformed),
                "entities": [{"id": clip(eid, ID_CHARS), **entry} for eid, entry in first]}
