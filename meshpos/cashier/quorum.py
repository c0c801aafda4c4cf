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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec

from core.errors import MessageRefused
from core.names import ID_PATTERN

Ballot = tuple[int, str]  # (round, terminal id): totally ordered, unique per terminal
NO_BALLOT: Ballot = (0, "")
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


def ledger_chunks(drawer: str, committed: list[Any], start: int, chunks: int | None = None) -> list[Ledger]:
    """``committed`` from ``start`` on as relay messages of :data:`RELAY_CHUNK` entries
    (at most ``chunks`` of them)."""
    end = len(committed) if chunks is None else min(len(committed), start + chunks * RELAY_CHUNK)
    return [Ledger(drawer, at, tuple(committed[at:min(end, at + RELAY_CHUNK)]))
            for at in range(start, end, RELAY_CHUNK)]


def check_positions(msg: Message | Ledger, committed: int) -> None:
    """Refuse a message naming a position more than :data:`MAX_AHEAD` beyond ``committed`` (this
    terminal's ledger length for the drawer): nothing honest does, and a voter would loop to it."""
    positions = [getattr(msg, name) for name in ("position", "start", "known") if hasattr(msg, name)]
    positions += [pos for pos, _, _ in getattr(msg, "accepted", ())]
    if any(pos > committed + MAX_AHEAD for pos in positions):
        raise BadMessage(f"cashier {type(msg).__name__}: a position more than {MAX_AHEAD} beyond the ledger")


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


# -- a terminal that lost its cashier state ------------------------------------------------------
# A voter keeps its promises and accepts on disk before it answers; the proof above rests on
# that.  A voter whose disk was lost or went back in time (``meshpos recover``) has forgotten
# some: if it voted at once it could promise a lower ballot than one it promised before, or hide
# an entry it accepted, and two entries could be committed at one position.  A holder that lost
# its ``cashier_rounds`` could reuse a ballot.  So such a terminal neither votes nor holds until
# it has rebuilt a bound on what it forgot from the voters that did not forget:
#
# 1. it waits RECOVERY_QUARANTINE from its start: every prepare its lost incarnation sent was
#    sent before it stopped, and by then has been delivered or dropped (a holder prepares one
#    ballot for at most 2 s; a link that stays silent 3.5 s is closed, dropping what it queued);
# 2. it asks the voters for their state and waits for reports from ``n - majority + 1`` voters
#    other than itself - enough to meet every majority that could have counted its lost votes -
#    and until its committed ledger is as long as each report says the reporter's is (the
#    reporters relay those entries first: an entry committed with its lost accept may be known
#    as committed, no longer as accepted, at the others);
# 3. it adopts, per drawer, the highest ballot any of them promised (and never promises below
#    it), the entry accepted under the highest ballot at each position above its committed
#    ledger (as a holder's takeover would choose it), and raises its own round above every round
#    reported, so a ballot it used before is never used again.
# docs/cashier.md, "A terminal that lost its cashier state", carries the argument.

#: Seconds a recovering terminal waits before asking the voters (see above).
RECOVERY_QUARANTINE = 10.0
#: A recovering terminal asks a voter that has not reported again after this long.
RECOVERY_ASK_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class DrawerReport:
    """What a voter tells a recovering terminal about one drawer (it promises nothing by it)."""

    promised: Ballot
    committed: int
    accepted: tuple[tuple[int, Ballot, Any], ...]  # (position, ballot, entry), above ``committed``


def report(states: dict[str, VoterState]) -> dict[str, DrawerReport]:
    return {drawer: DrawerReport(st.promised, len(st.committed),
                                 tuple(sorted((pos, b, e) for pos, (b, e) in st.accepted.items()
                                              if pos >= len(st.committed))))
            for drawer, st in states.items()}


class Recovery:
    """The rebuilding of one terminal's cashier state (steps 1-3 above), fed the time and the
    reports; the shell sends the queries, persists what :meth:`adopt` changed, then votes."""

    def __init__(self, me: str, started: float, *, quarantine: float | None = None) -> None:
        self.me, self.started = me, started
        self.quarantine = RECOVERY_QUARANTINE if quarantine is None else quarantine
        self.reports: dict[str, dict[str, DrawerReport]] = {}
        self._asked: dict[str, float] = {}

    @staticmethod
    def needed(voters: list[str], me: str) -> int:
        """Reports needed from voters other than ``me``: every majority that may have counted a
        vote of ``me``'s lost incarnation has ``majority - 1`` other members, and a set meets all
        of those among the ``n - 1`` others once it holds ``n - majority + 1`` of them.  A lone
        voter has nobody to ask (docs/cashier.md says what that costs)."""
        n = len(voters)
        if n == 0:
            return 0
        others = n - 1 if me in voters else n
        return min(others, n - (n // 2 + 1) + 1)

    def ask(self, now: float, voters: list[str], reachable: set[str]) -> list[str]:
        """The voters to ask now: none before the quarantine ends, each again every
        :data:`RECOVERY_ASK_SECONDS` until it reports."""
        if now < self.started + self.quarantine:
            return []
        out = [v for v in voters if v != self.me and v in reachable and v not in self.reports
               and now - self._asked.get(v, float("-inf")) >= RECOVERY_ASK_SECONDS]
        for v in out:
            self._asked[v] = now
        return out

    def take(self, sender: str, drawers: dict[str, DrawerReport]) -> None:
        """A report; counted only from a voter asked after the quarantine (an earlier answer could
        predate a promise the lost incarnation made)."""
        if sender in self._asked and sender != self.me:
            self.reports.setdefault(sender, {}).update(drawers)

    def complete(self, now: float, voters: list[str], states: dict[str, VoterState]) -> bool:
        """Quarantine over, enough reports, and every committed entry they reported learned."""
        reports = [r for v, r in self.reports.items() if v in voters]
        if now < self.started + self.quarantine or len(reports) < self.needed(voters, self.me):
            return False
        return all(len(states[d].committed) >= r.committed if d in states else r.committed == 0
                   for report_ in reports for d, r in report_.items())

    def adopt(self, states: dict[str, VoterState], rounds: dict[str, int], voters: list[str]) -> list[str]:
        """Raise ``states`` (this terminal's voter state) and ``rounds`` (its highest round per
        drawer as a holder) to what the reports bound; returns the drawers changed."""
        changed = []
        for drawer in sorted({d for v, r in self.reports.items() if v in voters for d in r}):
            reports = [r[drawer] for v, r in self.reports.items() if v in voters and drawer in r]
            st = states.setdefault(drawer, VoterState())
            before = (st.promised, dict(st.accepted), rounds.get(drawer, 0))
            top = max([st.promised, *(r.promised for r in reports)])
            for r in reports:
                for pos, ballot, entry in r.accepted:
                    top = max(top, ballot)
                    if pos >= len(st.committed) and (pos not in st.accepted or ballot > st.accepted[pos][0]):
                        st.accepted[pos] = (ballot, entry)
            st.promised = top
            rounds[drawer] = max(rounds.get(drawer, 0), top[0])
            if (st.promised, st.accepted, rounds[drawer]) != before:
                changed.append(drawer)
        return changed


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


_WireMessage = _Prepare | _Promise | _Reject | _Accept | _Accepted | _Commit | _Release
_CORE: dict[type, type] = {_Prepare: Prepare, _Promise: Promise, _Reject: Reject, _Accept: Accept,
                           _Accepted: Accepted, _Commit: Commit, _Release: Release}


def wire_convert(data: dict[str, Any], shape: Any, what: str) -> Any:
    """``data`` as ``shape``, or :class:`BadMessage` saying why not.  (msgspec fails to *word*
    some refusals of a string holding a lone surrogate, e.g. as an unknown kind: still a refusal.)"""
    try:
        return msgspec.convert(data, shape)
    except (msgspec.ValidationError, UnicodeEncodeError) as exc:
        raise BadMessage(f"{what}: {exc}") from None


def _entries(what: str, entries: Any, check_entry: Any) -> None:
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
    wire = wire_convert(data, _WireMessage, f"cashier {kind} message" if isinstance(kind, str) and kind in _KINDS
                        else f"unknown cashier message {kind!r:.40}")
    cls = _CORE[type(wire)]
    kw = {name: getattr(wire, name) for name in cls.__slots__ if name != "until"}
    if isinstance(wire, _Reject):
        if wire.lease_left is not None and wire.lease_left < 0:
            raise BadMessage("lease_left must be seconds or null")
        kw["until"] = None if wire.lease_left is None else now + wire.lease_left
    what = f"cashier {data['m']}"
    if isinstance(wire, _Accept):
        _entries(what, [wire.entry], check_entry)
    elif isinstance(wire, _Commit):
        _entries(what, wire.entries, check_entry)
    elif isinstance(wire, _Promise):
        _entries(what, [e for _, _, e in wire.accepted], check_entry)
    return cls(**kw)


class _WireQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: Any
    m: Any
    known: dict[str, Annotated[int, msgspec.Meta(ge=0)]]


def query_to_wire(known: dict[str, int]) -> dict[str, Any]:
    """A ``recovery_query``: how far this terminal's ledgers go (the reporters relay the rest)."""
    return {"type": "cashier", "m": "recovery_query", "known": known}


def query_from_wire(data: dict[str, Any]) -> dict[str, int]:
    """Parse a ``recovery_query`` (raises :class:`BadMessage`); returns drawer -> ledger length."""
    return wire_convert(data, _WireQuery, "recovery_query: needs known (drawer -> ledger length)").known


def report_to_wire(drawers: dict[str, DrawerReport], *, last: bool) -> dict[str, Any]:
    """A ``recovery_report`` control message (one of several when a voter has many drawers)."""
    return {"type": "cashier", "m": "recovery_report", "last": last, "drawers": {
        drawer: {"promised": list(r.promised), "committed": r.committed,
                 "accepted": [[pos, list(b), e] for pos, b, e in r.accepted]}
        for drawer, r in drawers.items()}}


class _WireReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    promised: WireBallot
    committed: WireInt
    accepted: WireAccepted


class _WireReports(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: Any
    m: Any
    drawers: dict[str, _WireReport]
    last: bool


def report_from_wire(data: dict[str, Any], check_entry: Any = None) -> tuple[dict[str, DrawerReport], bool]:
    """Parse a ``recovery_report`` (raises :class:`BadMessage`); returns (drawers, last)."""
    wire = wire_convert(data, _WireReports,
                        "recovery_report needs drawers (drawer -> promised, committed, accepted) and last")
    for r in wire.drawers.values():
        _entries("recovery_report", [e for _, _, e in r.accepted], check_entry)
    return {drawer: DrawerReport(r.promised, r.committed, r.accepted) for drawer, r in wire.drawers.items()}, wire.last
