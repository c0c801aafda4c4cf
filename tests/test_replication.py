"""The replication core driven by hand: no sockets, no clock, no documents - links are strings."""

from __future__ import annotations

import base64
from datetime import date

import pytest

from peer.replication import MAX_DOCS_PER_MESSAGE, ReadWindow, Replication, by_doc
from peer.sync import Apply
from peer.wire import WireError

DOCS = ["inventory", "orders/2026-11-01", "tables"]
TODAY = date(2026, 11, 10)


def test_one_catch_up_per_document_the_next_link_asks_once_it_is_over() -> None:
    core: Replication[str] = Replication(catch_up_wait=3.0)
    first = core.link_opened("a", DOCS, now=0.0)
    assert first.ask == DOCS and first.later == []
    second = core.link_opened("b", DOCS, now=1.0)
    assert second.ask == [] and second.later == DOCS and second.wait == 3.0
    assert core.caught_up("a", "tables") == []  # b still waits for the other two
    assert core.caught_up("a", "inventory") == []
    assert core.caught_up("a", "orders/2026-11-01") == ["b"]
    assert core.wait_over("b") == DOCS and core.wait_over("b") == []


def test_a_stale_catch_up_is_taken_over_and_its_end_wakes_nobody() -> None:
    core: Replication[str] = Replication(catch_up_wait=3.0)
    core.link_opened("a", ["tables"], now=0.0)
    assert core.link_opened("b", ["tables"], now=1.0).later == ["tables"]
    taken = core.link_opened("c", ["tables"], now=3.0)  # a's has run for the whole wait: c asks itself
    assert taken.ask == ["tables"] and core.catching_up("tables") == "c"
    assert core.caught_up("a", "tables") == []  # not a's any more: b waits out its time
    assert core.caught_up("c", "tables") == []  # b waited for a's, not c's
    assert core.wait_over("b") == ["tables"]


def test_a_link_that_ends_releases_its_catch_ups_and_its_own_wait() -> None:
    core: Replication[str] = Replication()
    core.link_opened("a", DOCS, now=0.0)
    core.link_opened("b", DOCS, now=0.0)
    core.link_opened("c", ["tables"], now=0.0)
    assert core.caught_up("b") == []  # b ends while waiting: forgotten
    assert sorted(core.caught_up("a")) == ["c"]  # a ends: every document free again, c asks now
    assert core.catching_up("tables") is None and core.wait_over("b") == []
    assert core.link_opened("d", DOCS, now=0.0).ask == DOCS


def test_a_fetch_ends_when_every_asked_peer_answered_or_is_gone() -> None:
    core: Replication[str] = Replication()
    day = "orders/2026-11-01"
    assert not core.answered("p1", day)  # no fetch of it under way
    core.fetch(day, ["p1", "p2", "p3"])
    assert not core.answered("p1", day)
    assert not core.answered("p1", "tables")
    assert core.peer_gone("p2") == []
    assert core.peer_gone("p3") == [day]
    core.fetch_over(day)
    core.fetch(day, ["p1"])
    assert core.answered("p1", day)


def test_only_own_changes_are_forwarded_to_every_link() -> None:
    core: Replication[str] = Replication()
    assert core.forward_to("tables", "api", ["a", "b"]) == ["a", "b"]
    assert core.forward_to("tables", "peer:pos-2", ["a", "b"]) == []


def test_resync_asks_only_for_open_documents_and_refuses_malformed_lists() -> None:
    assert Replication.resync_docs(["tables", "orders/2026-11-01"], {"tables"}) == ["tables"]
    with pytest.raises(WireError):
        Replication.resync_docs(["../etc"], {"tables"})
    with pytest.raises(WireError):
        Replication.resync_docs([7], {"tables"})
    with pytest.raises(WireError):
        Replication.resync_docs(["tables"] * (MAX_DOCS_PER_MESSAGE + 1), {"tables"})


def _sv(pairs: dict[int, int]) -> bytes:
    out = bytes([len(pairs)])
    for client, clock in pairs.items():
        out += bytes([client, clock])
    return out


def test_archived_days_differing_or_recent_and_missing_are_asked_for() -> None:
    ours = {"orders/2026-11-01": _sv({1: 5}), "orders/2026-11-02": _sv({1: 5})}
    theirs = {
        "orders/2026-11-01": base64.b64encode(_sv({1: 5})).decode(),  # the same: nothing to do
        "orders/2026-11-02": base64.b64encode(_sv({1: 6})).decode(),  # differs: sync
        "orders/2026-11-05": base64.b64encode(_sv({2: 1})).decode(),  # recent, missing: fetch
        "orders/2026-10-01": base64.b64encode(_sv({2: 1})).decode(),  # old, missing: on request
        "orders/2026-11-09": base64.b64encode(_sv({2: 1})).decode(),  # open here: link-up covers it
        "tables": "",  # not a day
    }
    asked = Replication.archived_to_sync(theirs, ours, {"orders/2026-11-09"}, TODAY)
    assert asked == ["orders/2026-11-02", "orders/2026-11-05"]
    assert "orders/2026-10-01" in Replication.archived_to_sync(theirs, ours, set(), TODAY, auto_fetch_days=60)


@pytest.mark.parametrize("archived", [{"orders/2026-11-02": "not base64!"}, {"../x": ""},
                                      {f"orders/2026-11-{i % 28 + 1:02}-{i}": "" for i in range(1001)}])
def test_malformed_archived_lists_are_refused(archived: dict[str, str]) -> None:
    with pytest.raises(WireError):
        Replication.archived_to_sync(archived, {}, set(), TODAY)


def test_at_most_two_reads_in_flight_and_a_step2_is_waited_for_at_once() -> None:
    live, catch_up = Apply("tables", b"u", step2=False), Apply("tables", b"s", step2=True)
    window = ReadWindow()
    assert window.applied(["t1"], [live]) == []  # the first read's records commit meanwhile
    assert window.applied(["t2"], [live]) == [(["t1"], [live])]  # the third waits for the first
    assert window.applied(["t3"], [catch_up]) == [(["t2"], [live]), (["t3"], [catch_up])]
    assert window.applied(["t4"], [live], failed=True) == [(["t4"], [live])]
    assert window.unsettled is None


def test_one_read_groups_its_frames_by_document_in_order() -> None:
    a1, b1, a2 = Apply("a", b"1", False), Apply("b", b"1", False), Apply("a", b"2", True)
    assert by_doc([a1, b1, a2]) == {"a": [a1, a2], "b": [b1]}
