"""The drawer lock: a sans-I/O quorum state machine (Multi-Paxos per drawer, with leases).

Money is not merged by a CRDT.  Each drawer has one append-only ledger; to append, a terminal
must *hold* the drawer: a majority of the voters promised it a ballot higher than any other they
promised.  The ballot fences every message - a voter refuses anything under a ballot lower than
the one it promised - so a holder that lost the drawer (paused, partitioned, lease gone) can
never append again.

Two roles, both plain objects fed messages and the current time, returning what to send:

* :class:`Voter` - the roster's POS terminals.  Its state (:class:`VoterState`) must be durable
  before any reply it produced is sent (the I/O shell persists, then sends).
* :class:`Holder` - a terminal taking or holding a drawer.  Volatile: a crashed holder simply
  loses the drawer; the next holder completes the ledger from a majority's answers.

Why two holders can never both commit at one position: an entry is committed when a majority
accepted it under ballot *b*.  A later holder with ballot *b' > b* first collects promises from
a majority; the two majorities share a voter, which reports what it accepted, and the new holder
re-proposes, at each position, the entry accepted under the highest ballot it heard of.  By
induction on ballots every ballot above *b* proposes the same entry at that position, so no
other entry can ever gather a majority there.  Why nothing committed is lost or reordered: the
committed entry is on disk at a majority, every later holder hears of it before appending, and
positions only grow.  docs/cashier.md carries the full argument.

Leases only keep holders from duelling: a voter does not promise another terminal while the
current holder's lease runs (measured on the voter's own clock, from when it promised).  Safety
never depends on clocks.

The voter and the holder stay in one module (a little over 400 lines): the argument above is
about the two together, and each one's rules are read against the other's.  Their messages are
:mod:`~meshpos.cashier.messages`; rebuilding a lost state is :mod:`~meshpos.cashier.recovery`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshpos.cashier.messages import (
    NO_BALLOT,
    Accept,
    Accepted,
    Ballot,
    Commit,
    Ledger,
    Message,
    Prepare,
    Promise,
    Reject,
    Release,
)

#: How long a promise keeps other terminals from taking the drawer (voter's clock, seconds).
LEASE_SECONDS = 10.0
#: A holder resends unanswered prepares and accepts this often.
RETRY_SECONDS = 0.2
#: Committed entries per ``Commit`` message (a voter far behind gets several).  An entry's text
#: fields are bounded (200 characters each, at most ~6 KB of JSON), so 64 stay far below the
#: links' 1 MB control-message limit.
COMMIT_CHUNK = 64
NOOP = {"kind": "noop"}  # fills a position no majority member had accepted anything at
#: Committed entries per ``ledger`` relay message (keeps it far below the 1 MB control limit).
RELAY_CHUNK = COMMIT_CHUNK
#: A voter answers a prepare that is further behind its committed ledger than this with the
#: ledger itself (relay chunks) instead of a promise, so a promise stays small; the holder then
#: prepares again from where it got to (:mod:`meshpos.cashier.acquire`).
PROMISE_MAX_ENTRIES = RELAY_CHUNK


def ledger_chunks(drawer: str, committed: list[Any], start: int, chunks: int | None = None) -> list[Ledger]:
    """``committed`` from ``start`` on as relay messages of :data:`RELAY_CHUNK` entries
    (at most ``chunks`` of them)."""
    end = len(committed) if chunks is None else min(len(committed), start + chunks * RELAY_CHUNK)
    return [Ledger(drawer, at, tuple(committed[at:min(end, at + RELAY_CHUNK)]))
            for at in range(start, end, RELAY_CHUNK)]


@dataclass(frozen=True, slots=True)
class Send:
    to: str
    message: Message | Ledger


@dataclass(frozen=True, slots=True)
class Persist:
    """What one voter step changed in a drawer's state: on disk before any answer it produced
    leaves (the proof rests on it).  The shell turns it into rows; it never diffs states."""

    drawer: str
    promised: Ballot | None  # the new promise (``None``: unchanged)
    #: Accepted entries to store; positions in ``[start, start + len(committed))`` are dropped
    #: from the accepted ones, being committed now.
    accepted: tuple[tuple[int, Ballot, Any], ...]
    start: int
    committed: tuple[Any, ...]  # newly committed entries from ``start`` on


# -- voter -----------------------------------------------------------------------------------------


@dataclass
class VoterState:
    """What a voter must keep on disk for one drawer."""

    promised: Ballot = NO_BALLOT
    accepted: dict[int, tuple[Ballot, Any]] = field(default_factory=dict)
    committed: list[Any] = field(default_factory=list)  # the dense committed prefix


class Voter:
    def __init__(self, me: str, states: dict[str, VoterState] | None = None, *,
                 lease: float = LEASE_SECONDS) -> None:
        self.me, self.lease = me, lease
        self.states: dict[str, VoterState] = states if states is not None else {}
        #: Volatile: when the current promise's lease ends (a restarted voter grants none at once).
        self._lease_until: dict[str, float] = {}

    def state(self, drawer: str) -> VoterState:
        return self.states.setdefault(drawer, VoterState())

    def handle(self, sender: str, msg: Message, now: float) -> list[Send]:
        """:meth:`step` for a caller that keeps no disk (the state stays in memory)."""
        return self.step(sender, msg, now)[0]

    def step(self, sender: str, msg: Message, now: float) -> tuple[list[Send], Persist | None]:
        """Answer ``msg``; the answers may leave only once the returned :class:`Persist` is durable."""
        st = self.state(msg.drawer)
        promised, start = st.promised, len(st.committed)
        stored: list[tuple[int, Ballot, Any]] = []
        sends = self._answer(sender, msg, now, st, stored)
        accepted = tuple((pos, b, e) for pos, b, e in stored if st.accepted.get(pos) == (b, e))
        if st.promised == promised and not accepted and len(st.committed) == start:
            return sends, None
        return sends, Persist(msg.drawer, st.promised if st.promised != promised else None, accepted,
                              start, tuple(st.committed[start:]))

    def learn(self, drawer: str, start: int, entries: list[Any] | tuple[Any, ...]) -> Persist | None:
        """:func:`learn` into ``drawer``'s state; what to store, if anything was new."""
        st = self.state(drawer)
        before = len(st.committed)
        if learn(st, start, entries) == 0:
            return None
        return Persist(drawer, None, (), before, tuple(st.committed[before:]))

    def _answer(self, sender: str, msg: Message, now: float, st: VoterState,
                stored: list[tuple[int, Ballot, Any]]) -> list[Send]:
        if isinstance(msg, Prepare) and len(st.committed) - msg.known > PROMISE_MAX_ENTRIES and sender != self.me:
            # One chunk, not the whole gap: the holder learns it, prepares again from there and
            # gets the next one - linear however far behind it is.
            return [Send(sender, m) for m in ledger_chunks(msg.drawer, st.committed, msg.known, chunks=1)]
        if isinstance(msg, Prepare):
            holder = st.promised[1]
            lease = self._lease_until.get(msg.drawer, 0.0)
            if msg.ballot < st.promised or (msg.ballot[1] != holder and now < lease):
                return [Send(sender, Reject(msg.drawer, msg.ballot, self.me, st.promised, holder,
                                            lease if now < lease else None))]
            st.promised = msg.ballot
            self._lease_until[msg.drawer] = now + self.lease
            accepted = tuple(sorted((pos, b, e) for pos, (b, e) in st.accepted.items() if pos >= len(st.committed)))
            committed = tuple((pos, NO_BALLOT, e) for pos, e in enumerate(st.committed[msg.known:], msg.known))
            return [Send(sender, Promise(msg.drawer, msg.ballot, self.me, committed + accepted, len(st.committed)))]
        if isinstance(msg, Accept):
            if msg.ballot < st.promised:
                return [Send(sender, Reject(msg.drawer, msg.ballot, self.me, st.promised, st.promised[1]))]
            # The holder at work renews its lease with every append: one that stops appending
            # can be replaced by another terminal ``lease`` seconds after its last append.
            self._lease_until[msg.drawer] = now + self.lease
            st.promised = msg.ballot
            if msg.position >= len(st.committed) and st.accepted.get(msg.position) != (msg.ballot, msg.entry):
                st.accepted[msg.position] = (msg.ballot, msg.entry)
                stored.append((msg.position, msg.ballot, msg.entry))
            # A holder proposes one entry per position under its ballot, and commits in order:
            # what this voter accepted under ``msg.ballot`` below ``commit_upto`` is committed.
            while len(st.committed) < msg.commit_upto:
                got = st.accepted.get(len(st.committed))
                if got is None or got[0] != msg.ballot:
                    break  # accepted under another ballot, or never: a Commit will bring it
                st.committed.append(got[1])
                del st.accepted[len(st.committed) - 1]
            return [Send(sender, Accepted(msg.drawer, msg.ballot, msg.position, self.me, len(st.committed)))]
        if isinstance(msg, Commit):
            if msg.ballot < st.promised:
                return []  # a deposed holder's news; the current one will tell the same or more
            for offset, entry in enumerate(msg.entries):
                pos = msg.start + offset
                if pos == len(st.committed):
                    st.committed.append(entry)
                    st.accepted.pop(pos, None)
            return []
        if isinstance(msg, Release):
            if msg.ballot == st.promised:
                self._lease_until.pop(msg.drawer, None)
            return []
        return []


def learn(st: VoterState, start: int, entries: list[Any] | tuple[Any, ...]) -> int:
    """Extend ``st.committed`` with the part of ``entries`` (starting at ``start``) it lacks - a
    peer's relay or a holder's news.  Committed entries are final whoever relays them, so no
    ballot is checked.  Returns how many were new."""
    added = 0
    for offset, entry in enumerate(entries):
        pos = start + offset
        if pos == len(st.committed):
            st.committed.append(entry)
            st.accepted.pop(pos, None)
            added += 1
    return added


# -- holder ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acquired:
    drawer: str
    ballot: Ballot
    ledger: tuple[Any, ...]  # the committed ledger as completed by this holder


@dataclass(frozen=True, slots=True)
class Committed:
    drawer: str
    position: int
    entry: Any


@dataclass(frozen=True, slots=True)
class Deposed:
    """The holder lost (or never got) the drawer; appends in flight are *in doubt*: each may yet
    be committed by the next holder (find it by its operation id), or never."""

    drawer: str
    ballot: Ballot
    locked_by: str
    until: float | None
    in_doubt: tuple[Any, ...]
    promised: Ballot = NO_BALLOT  # the ballot the refusing voter promised: outbid it next time


Event = Acquired | Committed | Deposed


class Holder:
    """One terminal's attempt to hold one drawer, and its appends while it does."""

    def __init__(self, me: str, drawer: str, voters: list[str], *, round_above: int = 0,
                 ledger: list[Any] | tuple[Any, ...] = ()) -> None:
        """``ledger``: the committed ledger this terminal already knows (a prefix of the truth)."""
        self.me, self.drawer, self.voters = me, drawer, sorted(voters)
        self.ballot: Ballot = (round_above + 1, me)
        self.phase = "idle"
        self._promises: dict[str, Promise] = {}
        self._lease_refusals: dict[str, Reject] = {}
        self._acks: dict[int, set[str]] = {}
        self._proposed: dict[int, Any] = {}
        self.ledger: list[Any] = list(ledger)  # committed entries, dense
        self._known = len(self.ledger)
        self._last_retry = float("-inf")
        #: Where the next ``Commit`` to each voter starts: what it last said it has committed,
        #: or (optimistically) the end of what was already sent to it.
        self._commit_from: dict[str, int] = {}
        self.next_position = len(self.ledger)

    @property
    def majority(self) -> int:
        return len(self.voters) // 2 + 1

    def _all(self, msg: Message) -> list[Send]:
        return [Send(v, msg) for v in self.voters]

    def acquire(self) -> list[Send]:
        self.phase = "preparing"
        self._promises.clear()
        return self._all(Prepare(self.drawer, self.ballot, self._known))

    def release(self) -> list[Send]:
        """Give the drawer up (after closing it): voters stop holding others off."""
        self.phase = "released"
        return self._commits(self.voters) + self._all(Release(self.drawer, self.ballot))

    @property
    def in_flight(self) -> dict[int, Any]:
        """Appended, not yet committed: position -> entry."""
        return {pos: e for pos, e in self._proposed.items() if pos >= len(self.ledger)}

    def append(self, entry: Any) -> list[Send]:
        """Propose ``entry`` at the next position (only while holding)."""
        if self.phase != "holding":
            raise RuntimeError(f"{self.me} does not hold drawer {self.drawer} ({self.phase})")
        return self._propose(self.next_position_take(), entry)

    def next_position_take(self) -> int:
        pos = self.next_position
        self.next_position += 1
        return pos

    def _propose(self, pos: int, entry: Any) -> list[Send]:
        self._proposed[pos] = entry
        self._acks[pos] = set()
        return self._all(Accept(self.drawer, self.ballot, pos, entry, len(self.ledger)))

    def handle(self, sender: str, msg: Message) -> tuple[list[Send], list[Event]]:
        if getattr(msg, "ballot", None) != self.ballot or self.phase in ("idle", "deposed", "released"):
            return [], []
        if getattr(msg, "voter", None) not in self.voters or msg.voter != sender:
            return [], []  # answers count only from the voters themselves
        if isinstance(msg, Reject):
            if msg.promised > self.ballot:
                return self._deposed(msg)  # fenced: a higher ballot was promised
            if self.phase != "preparing":
                return [], []  # a late lease refusal of our prepare: a majority promised already
            # Only another holder's lease runs at this voter (a leftover one, maybe): give up
            # only once no majority can be left to promise.
            self._lease_refusals[msg.voter] = msg
            if len(self.voters) - len(self._lease_refusals) < self.majority:
                return self._deposed(msg)
            return [], []
        if isinstance(msg, Promise) and self.phase == "preparing":
            self._promises[msg.voter] = msg
            self._lease_refusals.pop(msg.voter, None)
            self._commit_from[msg.voter] = msg.committed
            if len(self._promises) >= self.majority:
                return self._take_over()
            return [], []
        if isinstance(msg, Accepted) and self.phase in ("holding", "completing"):
            # Every answer says how far the voter's ledger goes - also a late one, after a
            # majority already answered: a voter that is always late is still told only what
            # it lacks, never the whole ledger again.
            self._commit_from[msg.voter] = msg.committed
            if msg.position in self._acks:
                self._acks[msg.position].add(msg.voter)
            return self._advance()
        return [], []

    def _take_over(self) -> tuple[list[Send], list[Event]]:
        """Complete the ledger from a majority's answers before appending anything new."""
        best: dict[int, tuple[Ballot, Any]] = {}
        committed: dict[int, Any] = {}
        for promise in self._promises.values():
            for pos, ballot, entry in promise.accepted:
                if pos < promise.committed:
                    committed[pos] = entry
                elif pos not in best or ballot > best[pos][0]:
                    best[pos] = (ballot, entry)
        base = len(self.ledger)
        top = max([*best, *committed, base - 1])
        self.phase = "completing"
        self.next_position = top + 1
        out: list[Send] = []
        for pos in range(base, top + 1):
            if pos in committed:
                self._proposed[pos] = committed[pos]
                self._acks[pos] = set(self.voters)  # already on a majority's disk as committed
            else:
                out += self._propose(pos, best[pos][1] if pos in best else NOOP)
        more, events = self._advance()
        return out + more, events

    def _advance(self) -> tuple[list[Send], list[Event]]:
        """Commit what a majority accepted, in position order."""
        events: list[Event] = []
        start = len(self.ledger)
        while len(self.ledger) in self._acks and len(self._acks[len(self.ledger)]) >= self.majority:
            pos = len(self.ledger)
            self.ledger.append(self._proposed.pop(pos))
            del self._acks[pos]
            if self.phase == "holding":
                events.append(Committed(self.drawer, pos, self.ledger[pos]))
        # Voters learn commits from the next Accept (commit_upto); a Commit goes out right away
        # only while completing (nothing else will follow) and on tick, to voters that lag.
        out = self._commits(self.voters) if self.phase == "completing" and len(self.ledger) > start else []
        if self.phase == "completing" and len(self.ledger) == self.next_position:
            self.phase = "holding"
            events.append(Acquired(self.drawer, self.ballot, tuple(self.ledger)))
        return out, events

    def _commits(self, voters: list[str]) -> list[Send]:
        """``Commit``s of what each of ``voters`` lacks, as far as its answers tell (chunked)."""
        out: list[Send] = []
        for voter in voters:
            at = self._commit_from.get(voter, self._known)
            while at < len(self.ledger):
                end = min(len(self.ledger), at + COMMIT_CHUNK)
                out.append(Send(voter, Commit(self.drawer, self.ballot, at, tuple(self.ledger[at:end]))))
                at = end
            self._commit_from[voter] = max(at, self._commit_from.get(voter, 0))
        return out

    def tick(self, now: float) -> list[Send]:
        """Resend what is unanswered (messages get lost; positions commit only in order, so one
        lost accept would hold up every later entry) and tell lagging voters what is committed.
        Call every so often."""
        if now - self._last_retry < RETRY_SECONDS or self.phase in ("idle", "deposed", "released"):
            return []
        self._last_retry = now
        if self.phase == "preparing":
            return [Send(v, Prepare(self.drawer, self.ballot, self._known)) for v in self.voters
                    if v not in self._promises]
        accepts = [Send(v, Accept(self.drawer, self.ballot, pos, self._proposed[pos], len(self.ledger)))
                   for pos, acks in sorted(self._acks.items()) if pos in self._proposed
                   for v in self.voters if v not in acks]
        return accepts + self._commits(self.voters)

    def _deposed(self, msg: Reject) -> tuple[list[Send], list[Event]]:
        self.phase = "deposed"
        in_doubt = tuple(self._proposed[pos] for pos in sorted(self._proposed))
        self._proposed.clear()
        self._acks.clear()
        return [], [Deposed(self.drawer, self.ballot, msg.locked_by, msg.until, in_doubt, msg.promised)]

