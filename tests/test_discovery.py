"""mDNS discovery: the sans-I/O advert rules, interface choice, and real multicast on loopback.

The loopback tests run zeroconf for real (multicast on 127.0.0.1, which Linux loops back between
sockets); each test makes its own store authority, so terminals of concurrent or leftover tests
are "another store" and ignored.  Separate hosts are in tests/test_discovery_netns.py.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import anyio
import pytest
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from core.errors import ConfigError
from discovery.advert import (
    SERVICE_TYPE,
    BadAdvert,
    host_name,
    instance_name,
    parse_advert,
    refusal_to_dial,
    txt_record,
)
from discovery.mdns import Discovery, advertised_addresses, mdns_addresses
from meshpos.config import TerminalConfig, load_config
from meshpos.terminal import Terminal
from peer.identity import Authority, load_identity
from peer.link import ABNORMAL
from peer.status import PeerState
from peer.wire import PROTOCOL_VERSION
from tests.meshutil import ITEM, PRODUCT, address, config_for, converged, enroll, linked, running_mesh, wait_for
from tests.procutil import free_ports, run_cli

STORE = "0123456789abcdef"
FP = "ab" * 32


def advert(**patch: str) -> dict[bytes, bytes | None]:
    txt = txt_record(store_id=STORE, terminal_id="pos-1", terminal_type="pos", protocol=PROTOCOL_VERSION,
                     fingerprint=FP)
    return {k.encode(): v.encode() for k, v in {**txt, **patch}.items()}


# -- sans-I/O ------------------------------------------------------------------------------------


def test_advert_round_trip() -> None:
    s = parse_advert("pos-1@x", advert(), ["10.0.0.5", "fe80::1"], 8710, at="T")
    assert (s.terminal_id, s.store_id, s.type, s.protocol, s.fingerprint) == ("pos-1", STORE, "pos", 1, FP)
    assert s.addresses == ["10.0.0.5"]  # IPv4 only
    assert s.dial_addresses == ["10.0.0.5:8710"]


@pytest.mark.parametrize(("patch", "port", "error"), [
    ({"store": ""}, 8710, "lacks store"),
    ({"proto": "one"}, 8710, "not a number"),
    ({"fp": "NOT-HEX"}, 8710, "lowercase hex"),
    ({}, 0, "port 0"),
])
def test_bad_adverts_are_refused_with_the_reason(patch: dict[str, str], port: int, error: str) -> None:
    with pytest.raises(BadAdvert, match=error):
        parse_advert("x", advert(**patch), ["10.0.0.5"], port, at="T")
    with pytest.raises(BadAdvert, match="not UTF-8"):
        parse_advert("x", {**advert(), b"id": b"\xff"}, ["10.0.0.5"], 8710, at="T")


def test_names_are_valid_dns_labels_and_carry_the_store() -> None:
    assert instance_name("pos.1", STORE) == f"pos-1@{STORE}._meshpos._tcp.local."
    host = host_name("pos:1_a." + "x" * 80, STORE)
    label = host.removesuffix(".local.")
    assert len(label) <= 63 and all(c.isalnum() or c == "-" for c in label) and STORE in label


def test_refusal_to_dial(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path / "auth", "S")
    enroll(authority, tmp_path, ["a", "b", "c"])
    roster = authority.revoke("c")
    rules = {"me": "a", "store_id": authority.store_id, "roster": roster, "protocol": PROTOCOL_VERSION}

    def seen(tid: str, **patch: str) -> Any:
        return parse_advert(tid, advert(**{"id": tid, "store": authority.store_id, **patch}), ["10.0.0.5"], 8710,
                            at="T")

    assert refusal_to_dial(seen("b"), **rules) is None
    assert refusal_to_dial(seen("unknown"), **rules) is None  # its hello may carry a newer roster
    assert refusal_to_dial(seen("b", store=STORE), **rules) == f"other store ({STORE})"
    assert "revoked" in refusal_to_dial(seen("c"), **rules)
    assert "own advertisement" in refusal_to_dial(seen("a"), **rules)
    assert "protocol 9" in refusal_to_dial(seen("b", proto="9"), **rules)
    assert "no IPv4" in refusal_to_dial(parse_advert("b", advert(id="b", store=authority.store_id), ["fe80::1"],
                                                     8710, at="T"), **rules)


def test_mdns_interface_choice() -> None:
    assert mdns_addresses([], "127.0.0.1") == ["127.0.0.1"]
    assert mdns_addresses(["lo"], "0.0.0.0") == ["127.0.0.1"]
    assert mdns_addresses(["127.0.0.1", "lo"], "0.0.0.0") == ["127.0.0.1"]
    assert all(":" not in a for a in mdns_addresses([], "0.0.0.0"))
    with pytest.raises(ConfigError, match="not an IPv4 address of this machine"):
        mdns_addresses(["203.0.113.77"], "0.0.0.0")
    with pytest.raises(ConfigError, match="neither an interface"):
        mdns_addresses(["no-such-if0"], "0.0.0.0")
    assert mdns_addresses([], "localhost") == mdns_addresses([], "0.0.0.0")  # a name: every address
    assert advertised_addresses(["10.0.0.5", "10.1.0.5"], "0.0.0.0") == ["10.0.0.5", "10.1.0.5"]
    assert advertised_addresses(["10.0.0.5", "10.1.0.5"], "10.1.0.5") == ["10.1.0.5"]  # links listen there only
    assert advertised_addresses(["10.0.0.5"], "localhost") == ["10.0.0.5"]


@pytest.mark.anyio
async def test_a_bad_mdns_interface_gives_the_peer_port_back(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path / "auth", "S")
    (data_dir,) = enroll(authority, tmp_path, ["a"])
    port = free_ports(1)[0]
    with pytest.raises(ConfigError, match="no-such-if0"):
        async with Terminal(mdns_config(data_dir, peer_port=port, mdns_interfaces=["no-such-if0"])).running():
            pass
    async with Terminal(mdns_config(data_dir, peer_port=port, mdns=False)).running() as again:
        assert again.mesh is not None and again.mesh.port == port


def test_mdns_settings(tmp_path: Path) -> None:
    env = {"MESHPOS_DATA_DIR": str(tmp_path), "MESHPOS_TERMINAL_ID": "pos-1"}
    assert load_config(env=env).mdns is True
    config = load_config(env={**env, "MESHPOS_MDNS": "off", "MESHPOS_MDNS_INTERFACES": "lo, 127.0.0.1"})
    assert config.mdns is False and config.mdns_interfaces == ["lo", "127.0.0.1"]
    assert load_config(env=env, overrides={"mdns": False}).mdns is False
    with pytest.raises(ConfigError, match="MESHPOS_MDNS: mdns must be true or false"):
        load_config(env={**env, "MESHPOS_MDNS": "maybe"})


# -- real multicast on loopback ------------------------------------------------------------------


def mdns_config(data_dir: Path, **kw: Any) -> TerminalConfig:
    identity = load_identity(data_dir)
    kw.setdefault("mdns", True)
    kw.setdefault("mdns_interfaces", ["127.0.0.1"])
    kw.setdefault("peer_port", 0)
    return TerminalConfig(data_dir=data_dir, terminal_id=identity.terminal_id, type=identity.type, api_port=0,
                          peer_host="127.0.0.1", **kw)


def seen(terminal: Terminal, store: str | None = None) -> dict[str, dict[str, Any]]:
    """What ``terminal``'s discovery sees of one store (its own by default), by terminal id."""
    store = store or terminal.mesh.identity.store_id
    return {s["terminal_id"]: s for s in terminal.peers()["discovery"]["seen"] if s["store_id"] == store}


@pytest.mark.anyio
async def test_terminals_find_each_other_and_ignore_other_stores(tmp_path: Path) -> None:
    ours = Authority.init(tmp_path / "auth", "Cantina Centro")
    dirs = enroll(ours, tmp_path, ["pos-1", "kds-1", "waiter-1"], ["pos", "kds", "waiter"])
    theirs = Authority.init(tmp_path / "auth-2", "Pizzaria ao lado")
    (neighbour,) = enroll(theirs, tmp_path / "other", ["pos-1"])  # same terminal id, other store
    async with Terminal(mdns_config(dirs[0])).running() as a, Terminal(mdns_config(dirs[1])).running() as b, \
            Terminal(mdns_config(dirs[2])).running() as c, Terminal(mdns_config(neighbour)).running() as n:
        mesh = [a, b, c]
        ids = {"pos-1", "kds-1", "waiter-1"}
        await wait_for(lambda: all(linked(t) == ids - {t.config.terminal_id} for t in mesh), within=10)
        await a.put_product("burger", **PRODUCT)
        await wait_for(lambda: "burger" in b.inventory.skus())
        await b.adjust_stock("burger", 5, "delivery")
        order = await c.create_order(table=None, waiter="ana", items=[ITEM])
        await converged(mesh)
        assert (await a.get_order(order["id"]))["total_cents"] == 1590
        # The neighbour's pos-1 is seen by all and linked to none, with the reason given.
        await wait_for(lambda: all("pos-1" in seen(t, theirs.store_id)
                                   and set(seen(t)) == ids - {t.config.terminal_id} for t in mesh), within=10)
        for t in mesh:
            other = seen(t, theirs.store_id)["pos-1"]
            assert other["linked"] is False and other["why_not_linked"] == f"other store ({theirs.store_id})"
            assert all(s["linked"] and s["present"] and s["why_not_linked"] is None for s in seen(t).values())
        assert linked(n) == set()
        await wait_for(lambda: ours.store_id in {s["store_id"] for s in n.peers()["discovery"]["seen"]})
        assert all(s["why_not_linked"] == f"other store ({ours.store_id})"
                   for s in n.peers()["discovery"]["seen"] if s["store_id"] == ours.store_id)
        assert n.peers()["refusals"] == []  # nobody even tried: the TXT record said "other store"


@pytest.mark.anyio
async def test_a_stopping_terminal_says_goodbye_and_is_offline_at_once(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path / "auth", "S")
    dirs = enroll(authority, tmp_path, ["a", "b"])
    async with Terminal(mdns_config(dirs[0])).running() as a:
        async with Terminal(mdns_config(dirs[1])).running() as b:
            await wait_for(lambda: linked(a) == {"b"} and linked(b) == {"a"} and "b" in seen(a), within=10)
            assert seen(a)["b"]["linked"] is True and seen(a)["b"]["why_not_linked"] is None
        stopped = anyio.current_time()
        await wait_for(lambda: not seen(a)["b"]["present"] and not a.peers()["peers"][0]["online"], within=5)
        assert anyio.current_time() - stopped < 5
        assert seen(a)["b"]["why_not_linked"].startswith("gone: it said goodbye")
        assert a.mesh is not None and "b" not in a.mesh.dialler.found  # no more dialling a stopped box
        # It comes back (on a new port: a new address) and is found again.
        async with Terminal(mdns_config(dirs[1])).running() as b:
            await wait_for(lambda: linked(a) == {"b"} and seen(a)["b"]["present"], within=10)
            assert seen(a)["b"]["port"] == b.mesh.port


@pytest.mark.anyio
async def test_static_peers_alongside_mdns_and_no_mdns(tmp_path: Path) -> None:
    """A box on a network without multicast (--no-mdns) still links through a static address."""
    authority = Authority.init(tmp_path / "auth", "S")
    dirs = enroll(authority, tmp_path, ["a", "b", "quiet"])
    async with Terminal(mdns_config(dirs[2], mdns=False)).running() as quiet:
        assert quiet.discovery is None and quiet.peers()["discovery"] == {"enabled": False, "seen": []}
        static = [f"127.0.0.1:{quiet.mesh.port}"]
        async with Terminal(mdns_config(dirs[0], peers=static)).running() as a, \
                Terminal(mdns_config(dirs[1])).running() as b:
            await wait_for(lambda: linked(a) == {"b", "quiet"} and linked(b) == {"a"}, within=10)
            await quiet.put_product("burger", **PRODUCT)
            await a.put_product("fries", **{**PRODUCT, "name": "Fries"})
            await wait_for(lambda: "burger" in a.inventory.skus() and "fries" in quiet.inventory.skus()
                           and "fries" in b.inventory.skus(), within=10)
            assert "quiet" not in seen(a) and "quiet" not in seen(b)  # it advertises nothing


@pytest.mark.anyio
async def test_mesh_tries_each_discovered_address_and_stops_when_lost(tmp_path: Path) -> None:
    """A restarted box may still be cached at its old address: the next one is tried."""
    authority = Authority.init(tmp_path / "auth", "S")
    dirs = enroll(authority, tmp_path, ["a", "b"])
    async with running_mesh([config_for(d, d.name) for d in dirs], link=False) as (a, b):
        assert a.mesh is not None
        stale = f"127.0.0.1:{free_ports(1)[0]}"
        a.mesh.discovered("b", [stale, address(b)])
        await wait_for(lambda: linked(a) == {"b"}, within=10)
        assert a.mesh.peers["b"].direction == "outbound"
        assert "connection attempts failed" in a.mesh.book.found["b"].last_error["reason"]  # tried first
        since = a.mesh.peers["b"].connected_since
        a.mesh.lost("b")
        await a.put_product("fries", **{**PRODUCT, "name": "Fries"})  # the link still carries writes
        await wait_for(lambda: "fries" in b.inventory.skus(), within=10)
        assert linked(a) == {"b"} and a.mesh.peers["b"].connected_since == since  # never cut, never redialled
        a.mesh.discovered("c-unreachable", [stale])
        await wait_for(lambda: "c-unreachable" in a.mesh.book.found
                       and a.mesh.book.found["c-unreachable"].last_error, 5)
        assert a.mesh.why_not_linked("c-unreachable", [stale]).startswith("link failed")
        assert "c-unreachable" not in {p["terminal_id"] for p in a.peers()["peers"]}  # not in the roster
        a.mesh.lost("c-unreachable")
        await wait_for(lambda: "c-unreachable" not in a.mesh.dialler.found_dials, within=10)  # the loop ended
        assert "c-unreachable" not in a.mesh.book.found  # and left nothing behind
        assert a.mesh.why_not_linked("nobody", []) == "connecting"


@pytest.mark.anyio
async def test_an_address_that_changed_hands_is_dropped(tmp_path: Path) -> None:
    """Both boxes got new leases: c's cached address is now a's.  a answers, the dialler hangs up
    before any hello (no 4004 churn), drops that address and links to c at its real one."""
    authority = Authority.init(tmp_path / "auth", "S")
    dirs = enroll(authority, tmp_path, ["a", "b", "c"])
    async with running_mesh([config_for(d, d.name) for d in dirs], link=False) as (a, b, c):
        assert b.mesh is not None
        b.mesh.discovered("c", [address(a), address(c)])
        await wait_for(lambda: linked(b) == {"c"}, within=10)
        assert b.mesh.dial_addresses("c") == [address(c)]
        assert linked(a) == set() and list(b.mesh.refusals) == []
        # a saw a peer hang up before its hello (logged, nothing else) - never a 4004 tie-break
        assert {r["code"] for r in a.mesh.refusals} <= {ABNORMAL}


@pytest.mark.anyio
async def test_why_not_linked_is_the_newest_reason_and_never_a_tie_break(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path / "auth", "S")
    (d,) = enroll(authority, tmp_path, ["a"])
    async with running_mesh([config_for(d, "a")], link=False) as (a,):
        mesh = a.mesh
        assert mesh is not None
        mesh.refusals.append({"terminal_id": "b", "address": "x:1", "code": 4004, "reason": "already linked",
                              "direction": "inbound", "at": "2026-01-01T10:00:00.000Z"})
        mesh.peers["b"] = PeerState(terminal_id="b", last_error={"code": 1006, "reason": "no heartbeat",
                                                                  "at": "2026-01-01T11:00:00.000Z"})
        assert mesh.why_not_linked("b", []) == "link failed (2026-01-01T11:00:00.000Z): 1006 no heartbeat"
        mesh.refusals.append({"terminal_id": "b", "address": "x:1", "code": 4003, "reason": "revoked",
                              "direction": "outbound", "at": "2026-01-01T12:00:00.000Z"})
        assert mesh.why_not_linked("b", []).endswith("4003 revoked")
        mesh.peers["b"].last_error = {"code": 1006, "reason": "reset", "at": "2026-01-01T13:00:00.000Z"}
        assert mesh.why_not_linked("b", []).endswith("1006 reset")


@pytest.mark.anyio
async def test_discovery_dials_by_terminal_id_across_adverts(tmp_path: Path) -> None:
    """Two adverts naming one id (a forgery, a copied data directory): both addresses are tried,
    and one saying goodbye does not stop the dialling of the other; a revocation does."""
    authority = Authority.init(tmp_path / "auth", "S")
    dirs = enroll(authority, tmp_path, ["a", "b"])
    async with running_mesh([config_for(dirs[0], "a")], link=False) as (a,):
        discovery = Discovery(a.mesh, choices=["127.0.0.1"], peer_host="127.0.0.1")

        def advert_of(name: str, ip: str, at: str) -> Any:
            return parse_advert(name, advert(id="b", store=authority.store_id), [ip], 8710, at=at)

        discovery.sightings["one"] = advert_of("one", "127.0.0.2", "2026-01-01T10:00:00.000Z")
        discovery.sightings["two"] = advert_of("two", "127.0.0.3", "2026-01-01T11:00:00.000Z")
        discovery._sync("b")
        assert a.mesh.dial_addresses("b") == ["127.0.0.3:8710", "127.0.0.2:8710"]  # newest advert first
        discovery._gone("two")
        assert a.mesh.dial_addresses("b") == ["127.0.0.2:8710"]
        a.mesh.roster = authority.revoke("b")
        discovery._sync("b")
        assert a.mesh.dial_addresses("b") == []
        assert "revoked" in discovery.status()["seen"][0]["why_not_linked"]


@pytest.mark.anyio
async def test_adverts_are_only_hints(tmp_path: Path) -> None:
    """A forged advert (our store id, a made-up terminal, a port that is no terminal) is dialled,
    fails, is shown as such - and a malformed one is listed and ignored."""
    authority = Authority.init(tmp_path / "auth", "S")
    (data_dir,) = enroll(authority, tmp_path, ["a"])
    with socket.socket() as impostor:  # a port nobody serves
        impostor.bind(("127.0.0.1", 0))
        port = impostor.getsockname()[1]
        forged = ServiceInfo(
            SERVICE_TYPE, instance_name("pos-9", authority.store_id), port=port,
            addresses=[socket.inet_aton("127.0.0.1")], server="forged.local.",
            properties=txt_record(store_id=authority.store_id, terminal_id="pos-9", terminal_type="pos",
                                  protocol=PROTOCOL_VERSION, fingerprint=FP))
        junk = ServiceInfo(SERVICE_TYPE, "junk._meshpos._tcp.local.", port=port, server="junk.local.",
                           addresses=[socket.inet_aton("127.0.0.1")], properties={"hello": "world"})
        zc = await anyio.to_thread.run_sync(lambda: Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only))
        try:
            await anyio.to_thread.run_sync(zc.register_service, forged)
            await anyio.to_thread.run_sync(zc.register_service, junk)
            async with Terminal(mdns_config(data_dir)).running() as a:

                def impostor_seen() -> dict[str, Any] | None:
                    return seen(a).get("pos-9")

                await wait_for(lambda: impostor_seen() is not None
                               and impostor_seen()["why_not_linked"] != "connecting", within=10)
                assert impostor_seen()["linked"] is False
                assert impostor_seen()["why_not_linked"].startswith(("handshake failed", "link failed"))
                assert linked(a) == set()
                await wait_for(lambda: a.peers()["discovery"]["bad_adverts"] != [], within=10)
                assert "lacks store" in a.peers()["discovery"]["bad_adverts"][0]
                await a.put_product("burger", **PRODUCT)  # still serving
        finally:
            await anyio.to_thread.run_sync(zc.close)


def test_a_bad_mdns_interface_stops_the_start_with_one_line(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path / "auth", "S")
    (data_dir,) = enroll(authority, tmp_path, ["a"])
    done = run_cli("run", "--data-dir", str(data_dir), "--api-port", "0", "--peer-port", "0",
                   "--mdns-interface", "no-such-if0")
    assert done.returncode != 0
    assert "Error: mdns_interfaces: 'no-such-if0' is neither an interface of this machine" in done.stderr
    assert "Traceback" not in done.stderr
