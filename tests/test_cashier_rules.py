"""The rules the cashier's shell used to carry, now in its pure cores, one by one (milliseconds).

The seeded simulator (tests/test_cashier_quorum.py) drives them all under chaos; these pin each
rule's edges: what a voter stores, its answer to a far-behind prepare, the MAX_AHEAD refusal,
gaps and divergence in relays, and when a failed acquisition retries, waits or gives up.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from meshpos.cashier.acquire import (
    ACQUIRE_TIMEOUT,
    CATCH_UP_SECONDS,
    LOCK_WAIT_SECONDS,
    MAX_REFUSALS,
    Acquisition,
    Locked,
    Retry,
    TimedOut,
)
from meshpos.cashier.learner import GAP_ASK_SECONDS, Diverged, Heads, Learner
from meshpos.cashier.messages import (
    MAX_AHEAD,
    Accept,
    Accepted,
    BadMessage,
    Commit,
    Ledger,
    Prepare,
    Promise,
    check_positions,
)
from meshpos.cashier.quorum import PROMISE_MAX_ENTRIES, RELAY_CHUNK, Deposed, Holder, Persist, Send, Voter, VoterState

D = "main"
IDS = ["pos-1", "pos-2", "pos-3"]


def _voter(me: str, entries: int) -> Voter:
    return Voter(me, {D: VoterState(committed=[{"n": k} for k in range(entries)])})


# -- what a voter stores -------------------------------------------------------------------------


def test_each_voter_step_says_exactly_what_to_store() -> None:
    v = Voter("pos-2")
    b1, b2 = (1, "pos-1"), (2, "pos-3")
    sends, persist = v.step("pos-1", Prepare(D, b1), 0.0)
    assert persist == Persist(D, b1, (), 0, ())
    assert isinstance(sends[0].message, Promise)
    assert v.step("pos-1", Prepare(D, b1), 0.1)[1] is None  # a resent prepare changes nothing
    _, persist = v.step("pos-1", Accept(D, b1, 0, "a"), 0.2)
    assert persist == Persist(D, None, ((0, b1, "a"),), 0, ())
    assert v.step("pos-1", Accept(D, b1, 0, "a"), 0.3)[1] is None  # the same accept again
    _, persist = v.step("pos-1", Accept(D, b1, 1, "b", commit_upto=1), 0.4)
    assert persist == Persist(D, None, ((1, b1, "b"),), 0, ("a",))  # 0 committed, its accepted row goes
    assert v.step("pos-1", Commit(D, (0, "pos-9"), 1, ("x",)), 0.5) == ([], None)  # a deposed holder's news
    _, persist = v.step("pos-3", Accept(D, b2, 1, "c", commit_upto=1), 20.0)  # outbid, after the lease
    assert persist == Persist(D, b2, ((1, b2, "c"),), 1, ())  # replaces "b", accepted under b1
    _, persist = v.step("pos-3", Commit(D, b2, 1, ("c",)), 20.1)
    assert persist == Persist(D, None, (), 1, ("c",))
    assert v.learn(D, 0, ["a", "c"]) is None  # nothing new
    assert v.learn(D, 2, ["d"]) == Persist(D, None, (), 2, ("d",))
    assert v.state(D).committed == ["a", "c", "d"] and v.state(D).accepted == {}


# -- a prepare far behind the ledger ---------------------------------------------------------------


def test_a_far_behind_prepare_is_answered_with_one_chunk_of_the_ledger() -> None:
    entries = PROMISE_MAX_ENTRIES + 3 * RELAY_CHUNK
    v = _voter("pos-2", entries)
    sends, persist = v.step("pos-1", Prepare(D, (1, "pos-1"), known=10), 0.0)
    assert persist is None and v.state(D).promised == (0, "")  # it promised nothing
    assert sends == [Send("pos-1", Ledger(D, 10, tuple({"n": k} for k in range(10, 10 + RELAY_CHUNK))))]
    # just within reach: a promise, with what lies above ``known``
    sends, _ = v.step("pos-1", Prepare(D, (1, "pos-1"), known=entries - PROMISE_MAX_ENTRIES), 0.0)
    assert isinstance(sends[0].message, Promise) and len(sends[0].message.accepted) == PROMISE_MAX_ENTRIES
    # its own terminal's holder starts from this very ledger: never answered with it
    own = _voter("pos-1", entries)
    assert isinstance(own.step("pos-1", Prepare(D, (1, "pos-1")), 0.0)[0][0].message, Promise)


def _exchange(voters: dict[str, Voter], learner: Learner, holder: Holder, now: float) -> bool:
    """Deliver the holder's messages and the answers until quiet; ``True`` if its terminal's
    ledger copy grew (it learned a ledger answer)."""
    grew, pending = False, holder.acquire()
    while pending:
        out: list[Send] = []
        for send in pending:
            for answer in voters[send.to].step(holder.me, send.message, now)[0]:
                if isinstance(answer.message, Ledger):
                    relayed = learner.on_relay(send.to, answer.message, now)
                    assert relayed.learn and relayed.diverged is None
                    grew |= learner.voter.learn(D, answer.message.start, answer.message.entries) is not None
                else:
                    out += holder.handle(send.to, answer.message)[0]
        pending = out
    return grew


def test_a_holder_far_behind_catches_up_through_the_ledger_answers() -> None:
    """pos-1 knows nothing of a long ledger: each attempt learns one chunk from the voters'
    answers, the policy says prepare again at once, and it holds the drawer with the whole ledger."""
    entries = PROMISE_MAX_ENTRIES + 3 * RELAY_CHUNK + 5
    voters = {"pos-1": Voter("pos-1"), "pos-2": _voter("pos-2", entries), "pos-3": _voter("pos-3", entries)}
    learner, acq, now, attempts = Learner(voters["pos-1"]), Acquisition("pos-1", 0.0), 0.0, 0
    while True:
        attempts += 1
        holder = Holder("pos-1", D, IDS, round_above=attempts, ledger=voters["pos-1"].state(D).committed)
        grew = _exchange(voters, learner, holder, now)
        if holder.phase == "holding":
            break
        assert acq.failed(now, grown=grew, answered=False, deposed=None, rng=random.Random(0)) == Retry()
        now += 0.1
    assert holder.ledger == voters["pos-2"].state(D).committed
    assert attempts == 5  # four chunks (the last attempt's promise carries the rest), then held


# -- MAX_AHEAD -------------------------------------------------------------------------------------


@pytest.mark.parametrize("msg", [
    Accept(D, (1, "pos-1"), 7 + MAX_AHEAD + 1, "x"),
    Commit(D, (1, "pos-1"), 7 + MAX_AHEAD + 1, ("x",)),
    Prepare(D, (1, "pos-1"), known=7 + MAX_AHEAD + 1),
    Promise(D, (1, "pos-1"), "pos-2", ((7 + MAX_AHEAD + 1, (1, "pos-1"), "x"),), 0),
    Ledger(D, 7 + MAX_AHEAD + 1, ("x",)),
])
def test_a_position_too_far_beyond_the_ledger_is_refused(msg: Any) -> None:
    with pytest.raises(BadMessage):
        check_positions(msg, 7)
    check_positions(msg, 8)  # one entry more here: within reach


# -- relays: gaps, divergence, heads -------------------------------------------------------------


def test_a_relay_beyond_the_ledger_asks_for_the_gap_once_a_second() -> None:
    learner = Learner(_voter("till-1", 3))
    relayed = learner.on_relay("pos-1", Ledger(D, 5, ({"n": 5},)), 10.0)
    assert relayed.ask == Heads({D: 3}, False) and not relayed.learn and relayed.diverged is None
    assert learner.on_relay("pos-1", Ledger(D, 6, ({"n": 6},)), 10.5).ask is None  # asked a moment ago
    assert learner.on_relay("pos-2", Ledger(D, 6, ({"n": 6},)), 10.5).ask == Heads({D: 3}, False)  # per peer
    assert learner.on_relay("pos-1", Ledger(D, 6, ({"n": 6},)), 10.0 + GAP_ASK_SECONDS).ask == Heads({D: 3}, False)
    relayed = learner.on_relay("pos-1", Ledger(D, 3, ({"n": 3},)), 10.0)  # adjacent: learned
    assert relayed.learn and relayed.ask is None


def test_a_relay_that_disagrees_with_the_ledger_is_reported_and_learned_no_further() -> None:
    voter = _voter("till-1", 4)
    learner = Learner(voter)
    relayed = learner.on_relay("pos-1", Ledger(D, 1, ({"n": 1}, {"n": "x"}, {"n": 3}, {"n": 4})), 0.0)
    assert relayed.diverged == Diverged(D, "pos-1", (2,)) and relayed.learn
    assert voter.learn(D, 1, ({"n": 1}, {"n": "x"}, {"n": 3}, {"n": 4})) == Persist(D, None, (), 4, ({"n": 4},))
    assert voter.state(D).committed[2] == {"n": 2}  # what this terminal committed stays


def test_heads_bring_what_the_peer_lacks() -> None:
    learner = Learner(Voter("pos-1", {D: VoterState(committed=list(range(RELAY_CHUNK + 2))),
                                      "bar": VoterState(committed=["b"])}))
    assert learner.heads() == Heads({D: RELAY_CHUNK + 2, "bar": 1}, True)
    sends = learner.on_heads("pos-2", Heads({D: 1}, True))
    assert [(s.message.drawer, s.message.start, len(s.message.entries)) for s in sends] == \
        [(D, 1, RELAY_CHUNK), (D, RELAY_CHUNK + 1, 1), ("bar", 0, 1)]  # a drawer it did not list: it lacks it
    assert learner.on_heads("pos-2", Heads({"bar": 0, "other": 0}, False)) == [Send("pos-2", Ledger("bar", 0, ("b",)))]


# -- when a failed acquisition retries, waits or gives up ------------------------------------------


def _refusal(locked_by: str, until: float | None) -> Deposed:
    return Deposed(D, (1, "pos-1"), locked_by, until, (), (2, locked_by))


def test_a_terminal_far_behind_keeps_catching_up_only_for_a_while() -> None:
    acq = Acquisition("pos-1", 100.0)
    rng = random.Random(1)
    assert acq.failed(100.0 + CATCH_UP_SECONDS - 0.1, grown=True, answered=False, deposed=None, rng=rng) == Retry()
    assert acq.failed(100.0 + CATCH_UP_SECONDS, grown=True, answered=False, deposed=None, rng=rng) == TimedOut(True)
    # growth that came with a refusal is a refusal
    acq = Acquisition("pos-1", 0.0)
    assert acq.failed(1.0, grown=True, answered=True, deposed=_refusal("pos-1", None), rng=rng) == Retry()
    assert acq.refusals == 1
    assert Acquisition.attempt(5.0) == 5.0 + ACQUIRE_TIMEOUT


def test_another_holders_lease_is_waited_out_once_then_reported() -> None:
    rng = random.Random(7)
    acq = Acquisition("pos-1", 0.0)
    wait = acq.failed(1.0, grown=False, answered=True, deposed=_refusal("pos-2", 9.0), rng=rng)
    assert isinstance(wait, Retry) and LOCK_WAIT_SECONDS <= wait.wait <= LOCK_WAIT_SECONDS * 1.5
    assert acq.failed(4.0, grown=False, answered=True, deposed=_refusal("pos-2", 9.0), rng=rng) == \
        Locked("pos-2", 9.0, True)
    # a lease about to end is waited out only that long
    assert Acquisition("pos-1", 0.0).failed(1.0, grown=False, answered=True, deposed=_refusal("pos-2", 1.25),
                                            rng=rng) == Retry(0.25)
    # the reconciler is not patient: it tries again later, and records nothing
    assert Acquisition("pos-1", 0.0, patient=False).failed(
        1.0, grown=False, answered=True, deposed=_refusal("pos-2", 9.0), rng=rng) == Locked("pos-2", 9.0, False)


def test_an_outbid_terminal_prepares_again_a_few_times_and_silence_gives_up() -> None:
    rng = random.Random(3)
    for patient in (True, False):
        acq = Acquisition("pos-1", 0.0, patient=patient)
        outbid = _refusal("pos-3", None)
        own_lease = _refusal("pos-1", 5.0)  # its own earlier ballot's lease: no one to wait for
        assert acq.failed(1.0, grown=False, answered=True, deposed=outbid, rng=rng) == Retry()
        assert acq.failed(2.0, grown=False, answered=True, deposed=own_lease, rng=rng) == Retry()
        assert acq.refusals == MAX_REFUSALS - 1
        assert acq.failed(3.0, grown=False, answered=True, deposed=outbid, rng=rng) == TimedOut(patient)
        assert Acquisition("pos-1", 0.0, patient=patient).failed(
            2.0, grown=False, answered=False, deposed=None, rng=rng) == TimedOut(patient)


def test_an_accepted_answer_for_nothing_proposed_changes_nothing() -> None:
    """A holder that proposed nothing at a position ignores an ``Accepted`` for it: no send, no
    event (a late or forged answer never commits or ends anything)."""
    h = Holder("pos-1", D, IDS)
    h.acquire()
    for v in IDS[:2]:
        h.handle(v, Promise(D, h.ballot, v, (), 0))
    assert h.phase == "holding"
    assert h.handle("pos-2", Accepted(D, h.ballot, 0, "pos-2", 0)) == ([], [])
