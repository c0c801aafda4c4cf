"""What a Yjs update may hold before pycrdt sees it: its shape checked by a bounded, flat parser.

pycrdt's decoder (Yrs, Rust) recurses on nested values: an update of 200 KB holding an array
nested 100,000 deep overflows its stack and the process dies with SIGSEGV - no exception, no log
line.  A chain of nested types is decoded fine but kills the process the first time it is read
(``str()`` of the outer map).  No ``except`` can catch either, so every update from outside a
terminal is parsed here first, with no recursion and no allocation beyond the input, and refused
unless it has the shape our documents use (docs/protocol.md, "What an update may hold"):

* only the document's own root names (a :class:`Shape` lists them);
* item contents: deleted content, plain values (``ContentAny``, nested at most
  :data:`MAX_ANY_DEPTH` deep) and ``Y.Map`` - no arrays, text, XML, subdocuments, binary or
  legacy JSON content;
* a ``Y.Map`` only as a direct child of a root that may hold maps (``orders`` in an orders
  document), stated in the item itself - so no type is ever nested in another type, whatever
  else the document holds;
* client ids within 53 bits and clocks within 31 (Yrs truncates larger ids silently, so a
  foreign client could land as another, and misbehaves on clocks near 2^32), each client's
  structs in one run and its deleted ranges in order, no empty struct or range, lengths and
  counts within the bytes given, nothing left over;
* given the document's state vector, complete against it: nothing that Yrs would have to keep
  "pending" for a dependency it lacks (:class:`UpdateGap`; the caller asks for what is missing).

The format is the Yjs update v1 encoding (``Y.encodeStateAsUpdate``; lib0 ``encoding.js``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pycrdt

#: Deepest plain value accepted (arrays/objects inside a map value); ours are flat objects.
MAX_ANY_DEPTH = 8
#: Client ids are JS-safe integers (pycrdt draws 53 bits; Yrs truncates larger ones silently, so
#: a foreign client could land as another).  Yrs keeps clocks in 32 bits and panics (or worse:
#: a SIGSEGV was found) on arithmetic near the top, so clocks stay below 2^31 - a client id lives
#: for one load of a document, and no document comes near 2 billion operations of one client.
MAX_CLIENT = 2**53 - 1
MAX_CLOCK = 2**31 - 1

_GC, _SKIP = 0, 10
_CONTENT_DELETED, _CONTENT_ANY, _CONTENT_TYPE = 1, 8, 7
_CONTENT_NAMES = {2: "legacy JSON", 3: "binary", 4: "text", 5: "embed", 6: "format", 9: "subdocument"}
_TYPE_MAP = 1
_TYPE_NAMES = {0: "Y.Array", 2: "Y.Text", 3: "Y.XmlElement", 4: "Y.XmlFragment", 5: "Y.XmlHook", 6: "Y.XmlText"}


class UpdateRefused(ValueError):
    """The update is malformed or has a shape the document does not allow (close 4006)."""


class UpdateGap(UpdateRefused):
    """The update builds on changes this document does not have yet (it starts past the
    document's clock of a client, names an item the document lacks, or deletes one).  Not the
    peer's fault - an update it made may overtake the catch-up that carries what came before -
    so the caller asks it for what is missing (a sync step 1) instead of closing the link.
    ``ticket``: the storage ticket of the updates of the same batch that were applied."""

    ticket: object = None


@dataclass(frozen=True, slots=True)
class Shape:
    """Which root names a document has, and which of them may hold ``Y.Map``s."""

    roots: frozenset[str]
    map_roots: frozenset[str] = frozenset()


def check_update(data: bytes, shape: Shape, state: dict[int, int] | None = None) -> dict[int, int] | None:
    """Raise :class:`UpdateRefused` unless ``data`` is a well-formed v1 update of ``shape``.

    ``state``: the receiving document's state vector (client -> clock).  Given it, the update
    must also be **complete against it** - every run of structs starts at or below the
    document's clock of its client (no gap), every item it names is in the document or in the
    update, every range it deletes is - or :class:`UpdateGap` is raised.  Yrs keeps what lacks a
    dependency as "pending" and integrates it later; that machinery is where the fuzzer found its
    panics and a SIGSEGV, so a terminal never feeds it anything.  Returns the state after the
    update (chain it through a batch), or ``None`` without ``state``.
    """
    reader = Lib0Reader(bytes(data), shape, state)
    reader.update()
    return reader.complete()


def is_panic(exc: BaseException) -> bool:
    """Yrs panicked under pycrdt: pyo3 raises ``PanicException``, which derives from
    ``BaseException`` - no ``except Exception`` sees it, and it would end a task group."""
    return type(exc).__name__ == "PanicException" and type(exc).__module__ == "pyo3_runtime"


def merge_run(updates: Sequence[bytes]) -> bytes:
    """One update for a run of updates to one document (in order, each already applied or
    durable): what is stored as one record or shipped as one frame instead of one per update.
    A run of one is returned as is - merging re-encodes, which a single update need not pay."""
    return updates[0] if len(updates) == 1 else pycrdt.merge_updates(*updates)


#: A lib0 varUint of at most 8 bytes: up to 7 bytes with the high bit set, then one without.
_VARUINT = re.compile(rb"[\x80-\xff]{0,7}[\x00-\x7f]")
#: varUint bytes -> value, for :func:`decode_state_vector`: a document's client ids repeat from
#: one state vector to the next (and their 8-byte numbers are most of its bytes).  Bounded.
_VARUINTS: dict[bytes, int] = {}


def decode_state_vector(data: bytes) -> dict[int, int]:
    """``{client id: clock}`` of an encoded state vector; compare these, not the bytes (equal
    states may encode in any order).  :class:`UpdateRefused` unless well-formed.

    Hot: every frame a peer sends is checked against its document's state vector, ~20 clients
    of 10 bytes each at 20 terminals - read byte by byte that cost 20 us a frame.  The numbers are
    split by a regular expression and looked up; anything unusual (a number too long or too
    large, a count that does not match, trailing bytes) is read again by the bounded reader
    below, which says precisely what is wrong."""
    data = bytes(data)
    parts = _VARUINT.findall(data)
    if sum(map(len, parts)) == len(data) and len(parts) % 2 == 1:
        known = _VARUINTS
        values = []
        for part in parts:
            value = known.get(part)
            if value is None:
                value = 0
                for shift, byte in enumerate(part):
                    value |= (byte & 0x7F) << (7 * shift)
                if len(known) >= 4096:
                    known.clear()
                known[part] = value
            values.append(value)
        clients, clocks = values[1::2], values[2::2]
        if values[0] == len(clients) and (not clients or (max(clients) <= MAX_CLIENT and max(clocks) <= MAX_CLOCK)):
            return dict(zip(clients, clocks, strict=True))
    return _read_state_vector(data)


def _read_state_vector(data: bytes) -> dict[int, int]:
    reader = Lib0Reader(data, Shape(frozenset()))
    out: dict[int, int] = {}
    for _ in range(reader.count("client", 2)):
        client = reader.uint()
        clock = reader.uint()
        if clock > MAX_CLOCK:
            raise reader.fail("clock beyond 2^31")
        out[client] = clock
    if reader.pos != reader.end:
        raise reader.fail(f"{reader.end - reader.pos} bytes after the state vector")
    return out


def check_state_vector(data: bytes) -> None:
    """Raise :class:`UpdateRefused` unless ``data`` is a well-formed state vector (a sync step 1)."""
    decode_state_vector(data)


class Lib0Reader:
    """lib0's encodings read with bounds (every number at most 53 bits, every length within the
    bytes left), and the v1 update itself; :mod:`core.ymessages` reads y-websocket messages with it."""

    __slots__ = ("data", "end", "pos", "ranges", "refs", "shape", "state")

    def __init__(self, data: bytes, shape: Shape = Shape(frozenset()), state: dict[int, int] | None = None) -> None:
        self.data, self.end, self.pos, self.shape = data, len(data), 0, shape
        self.state = state
        #: client -> [first clock, clock after the last struct] of its run in this update
        self.ranges: dict[int, list[int]] = {}
        #: (client, clock) of every item the update names, and every (client, end) it deletes to
        self.refs: list[tuple[int, int]] = []

    def complete(self) -> dict[int, int] | None:
        """The dependency rules of :func:`check_update`; the state after the update."""
        if self.state is None:
            return None
        state = self.state
        for client, (start, _) in self.ranges.items():
            if start > state.get(client, 0):
                raise UpdateGap(f"update starts at clock {start} of client {client}; the document has "
                                f"{state.get(client, 0)}")
        for client, clock in self.refs:
            if clock >= state.get(client, 0) and not (client in self.ranges and clock < self.ranges[client][1]):
                raise UpdateGap(f"update names item {client}:{clock}, which the document does not have")
        after = dict(state)
        for client, (_, end) in self.ranges.items():
            after[client] = max(after.get(client, 0), end)
        return after

    def fail(self, why: str) -> UpdateRefused:
        return UpdateRefused(f"update refused at byte {self.pos}: {why}")

    def uint(self) -> int:
        """lib0 varUint, at most 53 bits (what JavaScript's lib0 reads)."""
        data, pos, end = self.data, self.pos, self.end
        if pos >= end:
            raise self.fail("truncated")
        byte = data[pos]
        pos += 1
        if byte < 0x80:
            self.pos = pos
            return byte
        value, shift = byte & 0x7F, 7
        while True:
            if pos >= end:
                self.pos = pos
                raise self.fail("truncated number")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift > 53:
                self.pos = pos
                raise self.fail("number longer than 53 bits")
        self.pos = pos
        if value > MAX_CLIENT:
            raise self.fail("number beyond 53 bits")
        return value

    def skip_int(self) -> None:
        """lib0 varInt (sign in the first byte), at most 53 bits."""
        data, pos, end = self.data, self.pos, self.end
        for _ in range(8):
            if pos >= end:
                self.pos = pos
                raise self.fail("truncated number")
            byte = data[pos]
            pos += 1
            if byte < 0x80:
                self.pos = pos
                return
        self.pos = pos
        raise self.fail("number longer than 53 bits")

    def skip(self, n: int) -> None:
        if n > self.end - self.pos:
            raise self.fail(f"length {n} runs past the end")
        self.pos += n

    def string(self) -> str:
        n = self.uint()
        start = self.pos
        self.skip(n)
        try:
            return self.data[start:self.pos].decode()
        except UnicodeDecodeError:
            raise self.fail("a string is not UTF-8") from None

    def chunk(self) -> bytes:
        """A lib0 varUint8Array."""
        n = self.uint()
        start = self.pos
        self.skip(n)
        return self.data[start:self.pos]

    def skip_string(self) -> None:
        n = self.uint()
        if n > self.end - self.pos:
            raise self.fail(f"length {n} runs past the end")
        self.pos += n

    def count(self, what: str, least_bytes: int = 1) -> int:
        """A count of things that take ``least_bytes`` each: more than the bytes left is a lie."""
        n = self.uint()
        if n * least_bytes > self.end - self.pos:
            raise self.fail(f"{what} count {n} exceeds the bytes left")
        return n

    def id(self, client: int, clock: int) -> None:
        """A reference to another item, from the struct of ``client`` at ``clock``: an item it
        names existed before it, so one of the same client has a lower clock (Yrs panics on a
        struct that names itself or a later one)."""
        other, at = self.uint(), self.uint()
        if at > MAX_CLOCK:
            raise self.fail("clock beyond 2^31")
        if other == client and at >= clock:
            raise self.fail("a struct refers to itself or to a later struct of its client")
        self.refs.append((other, at))

    # -- the update ------------------------------------------------------------------------------

    def update(self) -> None:
        seen: set[int] = set()
        for _ in range(self.count("client", 3)):
            structs = self.count("struct")
            client, clock = self.uint(), self.uint()
            if client in seen:  # Yjs writes each client's structs as one run; Yrs panics on two
                raise self.fail(f"client {client} appears twice")
            seen.add(client)
            start = clock
            for _ in range(structs):
                clock += self.struct(client, clock)
                if clock > MAX_CLOCK:
                    raise self.fail("clock beyond 2^31")
            self.ranges[client] = [start, clock]
        self.delete_set()
        if self.pos != self.end:
            raise self.fail(f"{self.end - self.pos} bytes after the delete set")

    def struct(self, client: int, clock: int) -> int:
        """One struct of ``client`` at ``clock``; returns its length in clock ticks (never 0: an
        empty struct is no Yjs encoder's, and Yrs divides by lengths)."""
        if self.pos >= self.end:
            raise self.fail("truncated")
        info = self.data[self.pos]
        self.pos += 1
        ref = info & 0x1F
        if ref == _SKIP:
            length = self.uint()
            if self.state is not None:  # a merge of updates that were not contiguous: a gap
                raise UpdateGap(f"update skips clocks of client {client} (a merge of updates with a gap)")
        elif ref == _GC:
            length = self.uint()
        else:
            has_origin, has_right = info & 0x80, info & 0x40
            if has_origin:
                self.id(client, clock)
            if has_right:
                self.id(client, clock)
            root: str | None = None
            if not has_origin and not has_right:
                if self.uint() == 1:
                    root = self.string()
                    if root not in self.shape.roots:
                        raise self.fail(f"root {root[:40]!r} is not one of this document's")
                else:
                    self.id(client, clock)
                if info & 0x20:
                    self.skip_string()  # the map key
            length = self.content(ref, root)
        if length == 0:
            raise self.fail("a struct of length 0")
        return length

    def content(self, ref: int, root: str | None) -> int:
        if ref == _CONTENT_DELETED:
            return self.uint()
        if ref == _CONTENT_ANY:
            n = self.count("value")
            for _ in range(n):
                pos = self.pos
                if pos < self.end and self.data[pos] == 119:  # a string, as most values are: skipped
                    self.pos = pos + 1                          # here, not by any_value's walk
                    self.skip_string()
                else:
                    self.any_value()
            return n
        if ref == _CONTENT_TYPE:
            kind = self.uint()
            if kind != _TYPE_MAP:
                raise self.fail(f"{_TYPE_NAMES.get(kind, f'type {kind}')} is not part of any document")
            if root is None or root not in self.shape.map_roots:
                raise self.fail("a Y.Map is allowed only directly under a root that holds maps")
            return 1
        raise self.fail(f"{_CONTENT_NAMES.get(ref, f'content kind {ref}')} is not part of any document")

    def any_value(self) -> None:
        """One lib0 ``Any``; nested arrays and objects are walked with an explicit stack of
        ``[values left, is an object]`` (an object's values each follow their key string)."""
        levels = [[1, False]]
        while levels:
            level = levels[-1]
            if level[0] == 0:
                levels.pop()
                continue
            level[0] -= 1
            if level[1]:
                self.skip_string()  # the key
            if self.pos >= self.end:
                raise self.fail("truncated value")
            tag = self.data[self.pos]
            self.pos += 1
            if tag in (127, 126, 121, 120):  # undefined, null, false, true
                continue
            if tag == 125:
                self.skip_int()
            elif tag == 124:
                self.skip(4)
            elif tag in (123, 122):  # float64, bigint64
                self.skip(8)
            elif tag in (119, 116):  # string, bytes
                self.skip_string()
            elif tag in (118, 117):  # object, array
                if len(levels) > MAX_ANY_DEPTH:
                    raise self.fail(f"a value nested deeper than {MAX_ANY_DEPTH} levels")
                levels.append([self.count("entry"), tag == 118])
            else:
                raise self.fail(f"unknown value tag {tag}")

    def delete_set(self) -> None:
        """Each client once, its ranges non-empty, in order and apart - as Yjs and Yrs write them."""
        seen: set[int] = set()
        for _ in range(self.count("deleted client", 2)):
            client = self.uint()
            if client in seen:
                raise self.fail(f"client {client} appears twice in the delete set")
            seen.add(client)
            end = -1
            for _ in range(self.count("deleted range", 2)):
                clock, length = self.uint(), self.uint()
                if length == 0 or clock <= end or clock + length > MAX_CLOCK + 1:
                    raise self.fail("a deleted range is empty, out of order, overlapping or beyond 2^31")
                end = clock + length - 1
            if end >= 0:
                self.refs.append((client, end))
