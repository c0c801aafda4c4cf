"""The replication core driven by hand: no sockets, no clock, no documents - links are strings."""

from __future__ import annotations

import base64
import heapq
import random
from datetime import date

import pytest

from peer.replication import MAX_DOCS_PER_MESSAGE, ReadWindow, Replication, by_doc
from peer.sync import Apply
from peer.wire import MAX_LINKS_PER_MESSAGE, WireError, links_of

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


def test_own_changes_go_to_every_link_and_a_peer_s_to_those_it_does_not_reach() -> None:
    core: Replication[str] = Replication(me="pos-1")
    peers = {"pos-2": "a", "pos-3": "b", "kds-1": "c"}
    assert core.forward_to("tables", "api", peers, ["hq"]) == ["a", "b", "c", "hq"]
    # pos-2 never announced its links (a JavaScript client): it is taken to reach nobody
    assert core.forward_to("tables", "peer:pos-2", peers, ["hq"]) == ["hq", "b", "c"]
    core.peer_linked("pos-3", relays=True)
    core.links_announced("pos-2", ["pos-1", "pos-3"])
    assert core.forward_to("tables", "peer:pos-2", peers) == ["c"]  # kds-1 is not linked to pos-2
    assert core.forward_to("tables", "peer:kds-1", peers) == ["a", "b"]
    assert core.relays("pos-3")
    core.peer_gone("pos-2")  # what it said is forgotten with its link
    assert core.forward_to("tables", "peer:pos-2", peers) == ["b", "c"]


def test_of_the_terminals_linked_to_the_sender_and_a_peer_only_the_smallest_passes_it_on() -> None:
    # three wired boxes linked to each other and to the handhelds; handhelds do not reach each other
    boxes, handhelds = ["box-1", "box-2", "box-3"], ["hh-1", "hh-2"]
    links = {peer: peer for peer in [*boxes, *handhelds]}
    passed = {}
    for box in boxes:
        core: Replication[str] = Replication(me=box)
        for hh in handhelds:
            core.peer_linked(hh, relays=True)
            core.links_announced(hh, boxes, boxes)
        passed[box] = core.forward_to("tables", "peer:hh-1", {p: link for p, link in links.items() if p != box})
    assert passed == {"box-1": ["hh-2"], "box-2": [], "box-3": []}
    # a JavaScript client ("app-1", smaller than every box) linked to both passes nothing on: it
    # is not a candidate, or hh-2 would never get the change
    core = Replication(me="box-1")
    core.links_announced("hh-1", [*boxes, "app-1"], boxes)
    core.links_announced("hh-2", [*boxes, "app-1"], boxes)
    assert core.forward_to("tables", "peer:hh-1", {"hh-1": "hh-1", "hh-2": "hh-2", "app-1": "app-1"}) == ["hh-2"]


def _graph(edges: list[tuple[str, str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set()).add(a)
    return graph


def _flood(graph: dict[str, set[str]], writer: str, jitter: float = 0.0,
           rng: random.Random | None = None) -> tuple[set[str], int]:
    """One change written at ``writer`` crossing ``graph``: every terminal runs its own core and
    knows what its neighbours announced.  Each frame takes 1 ± ``jitter`` time units (in send
    order when ``jitter`` is 0).  Returns who got the change and how many frames were sent."""
    cores = {}
    for node, neighbours in graph.items():
        core: Replication[str] = Replication(me=node)
        for peer in neighbours:
            core.peer_linked(peer, relays=True)
            core.links_announced(peer, graph[peer], graph[peer])
        cores[node] = core
    rng = rng or random.Random(0)
    frames: list[tuple[float, int, str, str]] = []
    sent = 0

    def send(now: float, sender: str, to: list[str]) -> None:
        nonlocal sent
        for peer in to:
            sent += 1
            heapq.heappush(frames, (now + 1 + rng.uniform(-jitter, jitter), sent, peer, sender))

    has = {writer}
    send(0.0, writer, cores[writer].forward_to("tables", "api", {p: p for p in sorted(graph[writer])}))
    while frames:
        now, _, to, sender = heapq.heappop(frames)
        if to in has:
            continue  # nothing new: pycrdt reports no change, nothing is passed on
        has.add(to)
        send(now, to, cores[to].forward_to("tables", f"peer:{sender}", {p: p for p in sorted(graph[to])}))
    return has, sent


def test_a_change_crosses_a_line_and_client_isolation_with_one_frame_per_terminal() -> None:
    line = _graph([("t1", "t2"), ("t2", "t3"), ("t3", "t4"), ("t4", "t5")])
    isolation = _graph([(a, b) for a in ("box-1", "box-2", "box-3") for b in ("box-1", "box-2", "box-3") if a < b]
                       + [(b, h) for b in ("box-1", "box-2", "box-3") for h in ("hh-1", "hh-2", "hh-3")])
    full = _graph([(f"t{a}", f"t{b}") for a in range(8) for b in range(a + 1, 8)])  # a full mesh relays nothing
    for graph in (line, isolation, full):
        for writer in graph:
            for jitter in (0.0, 0.9):  # no other path to race: any timing
                assert _flood(graph, writer, jitter, random.Random(writer)) == (set(graph), len(graph) - 1)


def _random_graph(rng: random.Random, density: float) -> dict[str, set[str]]:
    n = rng.randrange(3, 31)
    nodes = [f"t{i:02d}" for i in range(n)]
    edges = [(nodes[i], nodes[rng.randrange(i)]) for i in range(1, n)]  # a spanning tree: connected
    return _graph(edges + [(a, b) for a in nodes for b in nodes if a < b and rng.random() < density])


def test_a_change_reaches_every_terminal_of_random_connected_graphs() -> None:
    rng = random.Random(7)
    frames = terminals = 0
    for density in (0.1, 0.25, 0.5):
        for _ in range(200):
            graph = _random_graph(rng, density)
            reached, sent = _flood(graph, rng.choice(sorted(graph)), jitter=0.3, rng=random.Random(rng.random()))
            assert reached == set(graph)
            frames, terminals = frames + sent, terminals + len(graph) - 1
    # flooding to every link but the sender's would send 3.5-9 frames per terminal on these graphs
    assert frames / terminals < 1.8


def test_links_messages_are_bounded_and_name_terminals() -> None:
    assert links_of({"type": "links", "peers": ["pos-1", "kds-2"]}) == (["pos-1", "kds-2"], [])
    assert links_of({"type": "links", "peers": ["pos-1", "app"], "relays": ["pos-1"]}) == (["pos-1", "app"], ["pos-1"])
    for bad in (["pos-1"] * (MAX_LINKS_PER_MESSAGE + 1), ["../x"], [7], "pos-1"):
        with pytest.raises(WireError):
            links_of({"type": "links", "peers": bad})
    with pytest.raises(WireError, match="subset"):
        links_of({"type": "links", "peers": ["pos-1"], "relays": ["pos-2"]})
    with pytest.raises(WireError):
        links_of({"type": "links", "peers": ["pos-1"], "relays": "pos-1"})


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
