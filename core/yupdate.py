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
* client ids within 53 bits and clocks within 32 (Yrs truncates larger ones silently, so a
  foreign client could land as another), lengths and counts within the bytes given, nothing left
  over.

The format is the Yjs update v1 encoding (``Y.encodeStateAsUpdate``; lib0 ``encoding.js``).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Deepest plain value accepted (arrays/objects inside a map value); ours are flat objects.
MAX_ANY_DEPTH = 8
#: Client ids are JS-safe integers (pycrdt draws 53 bits; Yrs truncates larger ones silently, so
#: a foreign client could land as another) and Yrs keeps clocks in 32 bits.
MAX_CLIENT = 2**53 - 1
MAX_CLOCK = 2**32 - 1

_GC, _SKIP = 0, 10
_CONTENT_DELETED, _CONTENT_ANY, _CONTENT_TYPE = 1, 8, 7
_CONTENT_NAMES = {2: "legacy JSON", 3: "binary", 4: "text", 5: "embed", 6: "format", 9: "subdocument"}
_TYPE_MAP = 1
_TYPE_NAMES = {0: "Y.Array", 2: "Y.Text", 3: "Y.XmlElement", 4: "Y.XmlFragment", 5: "Y.XmlHook", 6: "Y.XmlText"}


class UpdateRefused(ValueError):
    """The update is malformed or has a shape the document does not allow (close 4006)."""


@dataclass(frozen=True, slots=True)
class Shape:
    """Which root names a document has, and which of them may hold ``Y.Map``s."""

    roots: frozenset[str]
    map_roots: frozenset[str] = frozenset()


def check_update(data: bytes, shape: Shape) -> None:
    """Raise :class:`UpdateRefused` unless ``data`` is a well-formed v1 update of ``shape``."""
    _Reader(bytes(data), shape).update()


def check_state_vector(data: bytes) -> None:
    """Raise :class:`UpdateRefused` unless ``data`` is a well-formed state vector (a sync step 1)."""
    reader = _Reader(bytes(data), Shape(frozenset()))
    for _ in range(reader.count("client", 2)):
        reader.uint()  # the client
        if reader.uint() > MAX_CLOCK:
            raise reader.fail("clock beyond 32 bits")
    if reader.pos != reader.end:
        raise reader.fail(f"{reader.end - reader.pos} bytes after the state vector")


class _Reader:
    __slots__ = ("data", "end", "pos", "shape")

    def __init__(self, data: bytes, shape: Shape) -> None:
        self.data, self.end, self.pos, self.shape = data, len(data), 0, shape

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

    def skip_string(self) -> None:
        self.skip(self.uint())

    def count(self, what: str, least_bytes: int = 1) -> int:
        """A count of things that take ``least_bytes`` each: more than the bytes left is a lie."""
        n = self.uint()
        if n * least_bytes > self.end - self.pos:
            raise self.fail(f"{what} count {n} exceeds the bytes left")
        return n

    def id(self) -> None:
        self.uint()  # the client (any uint() is within MAX_CLIENT)
        if self.uint() > MAX_CLOCK:
            raise self.fail("clock beyond 32 bits")

    # -- the update ------------------------------------------------------------------------------

    def update(self) -> None:
        for _ in range(self.count("client", 3)):
            structs = self.count("struct")
            self.uint()  # the client
            clock = self.uint()
            for _ in range(structs):
                clock += self.struct()
                if clock > MAX_CLOCK:
                    raise self.fail("clock beyond 32 bits")
        self.delete_set()
        if self.pos != self.end:
            raise self.fail(f"{self.end - self.pos} bytes after the delete set")

    def struct(self) -> int:
        """One struct; returns its length in clock ticks."""
        if self.pos >= self.end:
            raise self.fail("truncated")
        info = self.data[self.pos]
        self.pos += 1
        ref = info & 0x1F
        if ref in (_GC, _SKIP):
            return self.uint()
        has_origin, has_right = info & 0x80, info & 0x40
        if has_origin:
            self.id()
        if has_right:
            self.id()
        root: str | None = None
        if not has_origin and not has_right:
            if self.uint() == 1:
                root = self.string()
                if root not in self.shape.roots:
                    raise self.fail(f"root {root[:40]!r} is not one of this document's")
            else:
                self.id()
            if info & 0x20:
                self.skip_string()  # the map key
        return self.content(ref, root)

    def content(self, ref: int, root: str | None) -> int:
        if ref == _CONTENT_DELETED:
            return self.uint()
        if ref == _CONTENT_ANY:
            n = self.count("value")
            for _ in range(n):
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
        for _ in range(self.count("deleted client", 2)):
            self.uint()  # the client
            for _ in range(self.count("deleted range", 2)):
                clock, length = self.uint(), self.uint()
                if clock + length > MAX_CLOCK + 1:
                    raise self.fail("deleted range beyond 32-bit clocks")
