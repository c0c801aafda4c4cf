"""The quorum's messages and their wire form: what voters and holders say to each other.

The message types are plain frozen dataclasses the cores (:mod:`~meshpos.cashier.quorum`,
:mod:`~meshpos.cashier.learner`, :mod:`~meshpos.cashier.recovery`) are fed and return; a peer's
JSON becomes one only through :func:`from_wire`, which checks it exactly (msgspec structs of
exactly the wire's fields) and refuses anything else with :class:`BadMessage`, so the cores never
see a malformed message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from core.errors import MessageRefused
from core.names import ID_PATTERN

Ballot = tuple[int, str]  # (round, terminal id): totally ordered, unique per terminal
NO_BALLOT: Ballot = (0, "")
#: No honest holder proposes this far beyond the committed ledger (it appends one entry at a
#: time); a peer's message that does is refused rather than looped over.
MAX_AHEAD = 100_000

# -- messages --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepare:
    drawer: str
    ballot: Ballot
    #: The holder already knows the committed ledger below this position: voters report only
    #: what lies at or above it, so a prepare costs the same on day 1 and on day 300.
    known: int = 0


@dataclass(frozen=True, slots=True)
class Promise:
    drawer: str
    ballot: Ballot
    voter: str
    #: Everything this voter accepted for the drawer: (position, ballot, entry).
    accepted: tuple[tuple[int, Ballot, Any], ...]
    committed: int  # positions below this are committed at this voter


@dataclass(frozen=True, slots=True)
class Reject:
    """The voter promised ``promised`` (higher), or another holder's lease runs until ``until``."""

    drawer: str
    ballot: Ballot
    voter: str
    promised: Ballot
    locked_by: str
    until: float | None = None


@dataclass(frozen=True, slots=True)
class Accept:
    drawer: str
    ballot: Ballot
    position: int
    entry: Any
    #: The holder's committed length when it sent this: the voter commits the entries it
    #: accepted under this same ballot below it, without a separate ``Commit`` (piggyback).
    commit_upto: int = 0


@dataclass(frozen=True, slots=True)
class Accepted:
    drawer: str
    ballot: Ballot
    position: int
    voter: str
    committed: int  # the voter's committed length: the holder's next Commit to it starts there


@dataclass(frozen=True, slots=True)
class Commit:
    """Positions ``[start, start + len(entries))`` are committed with these entries."""

    drawer: str
    ballot: Ballot
    start: int
    entries: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Release:
    """The holder is done with the drawer (it closed): voters drop its lease at once."""

    drawer: str
    ballot: Ballot


Message = Prepare | Promise | Reject | Accept | Accepted | Commit | Release


@dataclass(frozen=True, slots=True)
class Ledger:
    """Committed entries ``[start, start + len(entries))`` relayed to a terminal that lacks them
    (a learner, a peer at link-up, or a holder whose prepare was far behind).  Committed entries
    are final whoever relays them: no ballot."""

    drawer: str
    start: int
    entries: tuple[Any, ...]


def check_positions(msg: Message | Ledger, committed: int) -> None:
    """Refuse a message naming a position more than :data:`MAX_AHEAD` beyond ``committed`` (this
    terminal's ledger length for the drawer): nothing honest does, and a voter would loop to it."""
    positions = [getattr(msg, name) for name in ("position", "start", "known") if hasattr(msg, name)]
    positions += [pos for pos, _, _ in getattr(msg, "accepted", ())]
    if any(pos > committed + MAX_AHEAD for pos in positions):
        raise BadMessage(f"cashier {type(msg).__name__}: a position more than {MAX_AHEAD} beyond the ledger")


# -- on the wire -----------------------------------------------------------------------------------
# Quorum messages travel as JSON control messages ``{"type": "cashier", "m": <kind>, ...}`` on the
# signed peer links (docs/protocol.md).  A lease end is a point on the voter's own monotonic clock,
# meaningless elsewhere: it travels as the seconds left (``lease_left``).

_KINDS: dict[str, type] = {"prepare": Prepare, "promise": Promise, "reject": Reject, "accept": Accept,
                           "accepted": Accepted, "commit": Commit, "release": Release}
_NAMES = {cls: name for name, cls in _KINDS.items()} | {Ledger: "ledger"}  # a relay is parsed on its own


class BadMessage(MessageRefused):
    """A quorum message that does not parse exactly (the link closes with 4006)."""


def to_wire(msg: Message | Ledger, now: float) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "cashier", "m": _NAMES[type(msg)]}
    for name in msg.__slots__:  # type: ignore[attr-defined]
        value = getattr(msg, name)
        if name == "until":
            out["lease_left"] = None if value is None else round(max(0.0, value - now), 3)
        elif name == "accepted":
            out[name] = [[pos, list(b), e] for pos, b, e in value]
        elif name == "entries":
            out[name] = list(value)
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


#: Rounds, positions and counts on the wire: JS-safe integers (a round past 2^63 once failed a
#: voter's whole group commit in SQLite, taking other terminals' writes with it).
MAX_WIRE_INT = 2**53 - 1

# The wire's shapes, checked by msgspec (exactly these fields, each of its type: a bool is no
# integer, a float no position).  Only what msgspec cannot say is checked by hand: the entries
# (``check_entry``) and a lease's seconds left (any number >= 0, as before).
WireInt = Annotated[int, msgspec.Meta(ge=0, le=MAX_WIRE_INT)]
#: A terminal id, or ``""`` (the ballot of nobody: ``NO_BALLOT``).
WireId = Annotated[str, msgspec.Meta(
    pattern=f"^(?:{ID_PATTERN.pattern.removeprefix('^').removesuffix(chr(92) + 'Z')})?\\Z")]
WireBallot = tuple[WireInt, WireId]
WireAccepted = tuple[tuple[WireInt, WireBallot, Any], ...]


class _Wire(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="m"):
    type: Any  # "cashier": the link dispatched on it
    drawer: str
    ballot: WireBallot


class _Prepare(_Wire, tag="prepare"):
    known: WireInt


class _Promise(_Wire, tag="promise"):
    voter: WireId
    accepted: WireAccepted
    committed: WireInt


class _Reject(_Wire, tag="reject"):
    voter: WireId
    promised: WireBallot
    locked_by: WireId
    lease_left: float | None


class _Accept(_Wire, tag="accept"):
    position: WireInt
    entry: Any
    commit_upto: WireInt


class _Accepted(_Wire, tag="accepted"):
    position: WireInt
    voter: WireId
    committed: WireInt


class _Commit(_Wire, tag="commit"):
    start: WireInt
    entries: tuple[Any, ...]


class _Release(_Wire, tag="release"):
    pass


_CORE: dict[type, type] = {_Prepare: Prepare, _Promise: Promise, _Reject: Reject, _Accept: Accept,
                           _Accepted: Accepted, _Commit: Commit, _Release: Release}
#: The wire shape of each kind.  Converted to the one struct its tag names, not to the union of
#: all seven: msgspec rebuilds a union's type information at every ``convert`` (~12 us against
#: ~1 us, measured), and a commit at 5 voters parses some ten of these messages per terminal.
_BY_KIND: dict[str, type] = {wire.__struct_config__.tag: wire for wire in _CORE}


def wire_convert(data: dict[str, Any], shape: Any, what: str) -> Any:
    """``data`` as ``shape``, or :class:`BadMessage` saying why not.  (msgspec fails to *word*
    some refusals of a string holding a lone surrogate, e.g. as an unknown kind: still a refusal.)"""
    try:
        return msgspec.convert(data, shape)
    except (msgspec.ValidationError, UnicodeEncodeError) as exc:
        raise BadMessage(f"{what}: {exc}") from None


def check_entries(what: str, entries: Any, check_entry: Any) -> None:
    if check_entry is None:
        return
    try:
        for entry in entries:
            check_entry(entry)
    except ValueError as exc:
        raise BadMessage(f"{what}: {exc}") from None


def from_wire(data: dict[str, Any], now: float, check_entry: Any = None) -> Message:
    """Parse a quorum message; ``check_entry(entry)`` raises ``ValueError`` for a malformed entry."""
    kind = data.get("m")
    shape = _BY_KIND.get(kind) if isinstance(kind, str) else None
    if shape is None:
        raise BadMessage(f"unknown cashier message {kind!r:.40}")
    wire = wire_convert(data, shape, f"cashier {kind} message")
    cls = _CORE[type(wire)]
    kw = {name: getattr(wire, name) for name in cls.__slots__ if name != "until"}
    if isinstance(wire, _Reject):
        if wire.lease_left is not None and wire.lease_left < 0:
            raise BadMessage("lease_left must be seconds or null")
        kw["until"] = None if wire.lease_left is None else now + wire.lease_left
    what = f"cashier {data['m']}"
    if isinstance(wire, _Accept):
        check_entries(what, [wire.entry], check_entry)
    elif isinstance(wire, _Commit):
        check_entries(what, wire.entries, check_entry)
    elif isinstance(wire, _Promise):
        check_entries(what, [e for _, _, e in wire.accepted], check_entry)
    return cls(**kw)


