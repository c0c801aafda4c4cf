"""In-process meshes on loopback: real TLS 1.3 links, real SQLite files, both anyio backends."""

from __future__ import annotations

import datetime as dt
import logging
import random
from pathlib import Path

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import peer.replication
import peer.syncing
from core.clock import iso
from core.errors import (
    ALREADY_CONNECTED,
    AUTHENTICATION_FAILED,
    INVALID_MESSAGE,
    INVALID_TERMINAL_ID,
    RATE_LIMIT,
    ConfigError,
)
from meshpos.terminal import Terminal
from peer.dialling import BACKOFF_CAP, EAGER_CAP, EAGER_SPACING, RECENT_LOSS_SECONDS, backoff_cap, backoff_delay
from peer.identity import STORE_CA_CERT, TERMINAL_CERT, TERMINAL_KEY, Authority
from peer.link import Limits
from peer.wire import UPDATE, encode_sync
from tests.meshutil import (
    ITEM,
    PRODUCT,
    address,
    config_for,
    converged,
    enroll,
    hello_of,
    linked,
    probe,
    running_mesh,
    tls_context,
    wait_for,
    wait_linked,
)

pytestmark = pytest.mark.anyio
#: What a dialler sees when the TLS handshake refuses its certificate (TLS 1.3 reports it after the
#: client's Finished, so the client may get the alert or just the reset).
TLS_REFUSED = (AUTHENTICATION_FAILED, 1006)


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "auth", "Cantina Centro")


def configs(authority: Authority, tmp_path: Path, ids: list[str], kinds: list[str] | None = None, **kw):  # noqa: ANN201
    return [config_for(d, t, **kw) for d, t in zip(enroll(authority, tmp_path, ids, kinds), ids, strict=True)]


def ctx_of(data_dir: Path):  # noqa: ANN201
    return tls_context(data_dir / TERMINAL_CERT, data_dir / TERMINAL_KEY, data_dir / STORE_CA_CERT)


async def test_writes_on_every_terminal_converge_over_one_link_per_pair(authority: Authority, tmp_path: Path) -> None:
    ids = ["pos-1", "kds-1", "waiter-1"]
    async with running_mesh(configs(authority, tmp_path, ids, ["pos", "kds", "waiter"])) as terminals:
        a, b, c = terminals
        await a.put_product("burger", **PRODUCT)
        await b.put_table("t1", name="Table 1", seats=4, area=None)
        order = await c.create_order(table="t1", waiter="ana", items=[ITEM])
        await converged(terminals)
        for t in terminals:
            assert (await t.get_order(order["id"]))["table"] == "t1"
            assert t.tables.exists("t1")
        # everyone dialled everyone: exactly one link per pair survived, the one dialled by the smaller id
        for x in terminals:
            for y in terminals:
                if x is not y:
                    mine, theirs = x.mesh.links[y.config.terminal_id], y.mesh.links[x.config.terminal_id]
                    assert mine.client != theirs.client
                    dialer = x if mine.client else y
                    assert dialer.config.terminal_id == min(x.config.terminal_id, y.config.terminal_id)
        duplicates = [r for r in a.mesh.refusals + b.mesh.refusals if r["code"] == ALREADY_CONNECTED]
        assert duplicates, "both directions were dialled, so some link must have lost the tie-break"


async def test_remote_updates_are_durable_and_emit_the_same_events(authority: Authority, tmp_path: Path) -> None:
    async with running_mesh(configs(authority, tmp_path, ["pos-1", "pos-2"])) as (a, b):
        cursor = b.store.last_cursor
        await a.put_product("burger", **PRODUCT)
        await a.adjust_stock("burger", 10, "delivery")
        await converged([a, b])
        await wait_for(lambda: b.store.last_cursor >= cursor + 2)
        events = await b.store.events_after(cursor)
        local = [(e.type, e.payload) for e in await a.store.events_after(0) if e.type == "inventory:updated"]
        remote = [(e.type, e.payload) for e in events if e.type == "inventory:updated"]
        assert remote and remote[-1] == local[-1]  # same event, same payload as the writer's own
        assert remote[-1][1]["item"]["quantity"] == 10
        rows = await b.store.query("SELECT origin FROM updates WHERE doc = 'inventory'")
        assert ("peer:pos-1",) in rows  # stored through the same durable path, marked with its source


@pytest.mark.parametrize("contradiction", [{"type": "kds"}, {"terminal_id": "pos-9"}])
async def test_a_terminal_built_in_code_that_contradicts_its_certificate_is_refused(
        authority: Authority, tmp_path: Path, contradiction: dict[str, str]) -> None:
    [data_dir] = enroll(authority, tmp_path, ["pos-1"])
    config = config_for(data_dir, contradiction.get("terminal_id", "pos-1"), type=contradiction.get("type", "pos"))
    name = next(iter(contradiction))
    with pytest.raises(ConfigError, match=f"{name} .* contradicts the certificate"):
        async with Terminal(config).running():
            pytest.fail("started")
    assert not (data_dir / "meshpos.db").exists()  # refused before anything was written


async def test_status_says_when_a_peer_last_changed_each_document(authority: Authority, tmp_path: Path) -> None:
    async with running_mesh(configs(authority, tmp_path, ["pos-1", "pos-2"])) as (a, b):
        before = iso(b.clock())
        assert (await b.status())["documents"]["inventory"]["last_peer_update_at"] is None
        await a.put_product("burger", **PRODUCT)
        await converged([a, b])
        heard = (await b.status())["documents"]["inventory"]["last_peer_update_at"]
        assert heard is not None and before <= heard <= iso(b.clock())
        assert (await a.status())["documents"]["inventory"]["last_peer_update_at"] is None  # its own write
        await b.adjust_stock("burger", 1, "delivery")  # b's own write does not move it
        await converged([a, b])
        assert (await b.status())["documents"]["inventory"]["last_peer_update_at"] == heard
        assert (await a.status())["documents"]["inventory"]["last_peer_update_at"] is not None


async def test_concurrent_stock_adjustments_on_every_terminal_sum_exactly(authority: Authority, tmp_path: Path) -> None:
    ids = [f"pos-{n}" for n in range(1, 5)]
    async with running_mesh(configs(authority, tmp_path, ids)) as terminals:
        await terminals[0].put_product("burger", **PRODUCT)
        await converged(terminals)
        rng = random.Random(7)
        deltas = {t.config.terminal_id: [rng.choice([-2, -1, 1, 3, 5]) for _ in range(25)] for t in terminals}

        async def adjust(t: Terminal) -> None:
            for d in deltas[t.config.terminal_id]:
                await t.adjust_stock("burger", d, "sale" if d < 0 else "delivery")

        async with anyio.create_task_group() as tg:
            for t in terminals:
                tg.start_soon(adjust, t)
        await converged(terminals)
        expected = sum(sum(v) for v in deltas.values())
        assert [t.inventory.quantity("burger") for t in terminals] == [expected] * len(terminals)


async def test_stopped_terminal_catches_up_by_state_vector_after_restart(authority: Authority, tmp_path: Path) -> None:
    cfgs = configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3"])
    async with running_mesh(cfgs[:2]) as (a, b):
        async with Terminal(cfgs[2]).running() as c:
            for x, y in ((a, c), (b, c)):
                x.mesh.dial(address(y))
            await wait_linked([a, b, c])
            await a.put_product("burger", **PRODUCT)
            for _ in range(100):
                await a.create_order(table=None, waiter="ana", items=[ITEM])
            await converged([a, b, c])
            c_address = address(c)
        # c is gone: both sides write while apart
        await wait_for(lambda: "pos-3" not in linked(a) and "pos-3" not in linked(b))
        orders = await a.list_orders()
        orders += [await a.create_order(table=None, waiter="ana", items=[ITEM]) for _ in range(20)]
        await b.adjust_stock("burger", 7, "delivery")
        cfgs[2].peer_port = int(c_address.rsplit(":", 1)[1])
        async with Terminal(cfgs[2]).running() as c:
            late = await c.create_order(table=None, waiter="bia", items=[ITEM])  # before it is linked
            await c.adjust_stock("burger", -1, "sale")
            c.mesh.dial(address(a))
            c.mesh.dial(address(b))
            await wait_linked([a, b, c])
            await converged([a, b, c])
            for t in (a, b, c):
                assert {o["id"] for o in await t.list_orders()} == {o["id"] for o in orders} | {late["id"]}
                assert t.inventory.quantity("burger") == 6
            # nothing resent in full: a and b each sent the 20 missing orders, not all 120
            full_day = len(a.host.diff(f"orders/{a.today().isoformat()}"))
            sent = sum(x.mesh.links["pos-3"].core.bytes_out for x in (a, b))
            assert sent < full_day / 2, (sent, full_day)


async def test_backpressure_drops_the_queue_and_resyncs_by_state_vector(authority: Authority, tmp_path: Path) -> None:
    async with running_mesh(configs(authority, tmp_path, ["pos-1", "pos-2"]), link=False) as (a, b):
        a.mesh.max_queue_bytes = 2048  # tiny: a burst must overflow it
        a.mesh.dial(address(b))
        await wait_linked([a, b])
        await a.put_product("burger", **PRODUCT)
        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(lambda: a.create_order(table=None, waiter="ana", items=[ITEM] * 3))
        await converged([a, b])
        link = a.mesh.links["pos-2"]
        assert link.session.resyncs >= 1, "the burst should have overflowed the 2 KiB outbox"
        assert link.session.queued_bytes <= 2048
        assert len(await b.list_orders()) == 40


async def test_peers_status_and_online_offline_events(authority: Authority, tmp_path: Path) -> None:
    cfgs = configs(authority, tmp_path, ["pos-1", "kds-1"], ["pos", "kds"])
    async with running_mesh(cfgs[:1], link=False) as (a,):
        cursor = a.store.last_cursor
        async with Terminal(cfgs[1]).running() as b:
            b.mesh.dial(address(a))
            await wait_linked([a, b])
            await a.put_product("burger", **PRODUCT)
            await converged([a, b])
            await wait_for(lambda: a.mesh.peers["kds-1"].rtt_ms is not None, within=5)
            peers = {p["terminal_id"]: p for p in a.peers()["peers"]}
            kds = peers["kds-1"]
            assert kds["online"] and kds["type"] == "kds" and kds["direction"] == "inbound"
            assert kds["connected_since"] and kds["last_heartbeat"] and kds["rtt_ms"] > 0
            assert kds["bytes_in"] > 0 and kds["bytes_out"] > 0 and kds["updates_out"] >= 1
            assert kds["enrolled"] and not kds["revoked"]
            assert (await a.status())["mesh"]["roster_version"] == 3
            # each document against the peer: what its catch-up's step 1 found apart, what changed since
            assert kds["documents"]["tables"] == {"they_lacked": 0, "we_lacked": 0, "changed_since": 0}
            assert kds["documents"]["inventory"]["changed_since"] == 1  # the product came after the catch-up
        await wait_for(lambda: not a.mesh.peers["kds-1"].online)
        day = f"orders/{a.today().isoformat()}"
        def state(doc: str) -> dict[str, int]:
            return next(p for p in a.peers()["peers"] if p["terminal_id"] == "kds-1")["documents"][doc]

        # what it got live before its link ended is taken as received
        assert state("inventory") == {"they_lacked": 0, "we_lacked": 0, "changed_since": 0}
        assert sum(a.host.versions(day).values()) == 0  # the day held nothing while kds-1 was linked
        await a.create_order(table=None, waiter="ana", items=[ITEM])  # kds-1 is gone: it lacks this
        assert state(day) == {"they_lacked": 0, "we_lacked": 0, "changed_since": sum(a.host.versions(day).values())}
        assert state(day)["changed_since"] > 0
        events = [e for e in await a.store.events_after(cursor) if e.type.startswith("terminal:")]
        assert [(e.type, e.payload["terminal_id"]) for e in events] == [
            ("terminal:online", "kds-1"), ("terminal:offline", "kds-1")]
        assert events[1].payload["code"] == 1001  # b said goodbye: "terminal stopping"


async def test_revocation_handed_to_one_terminal_reaches_all_and_cuts_the_revoked(
        authority: Authority, tmp_path: Path) -> None:
    ids = ["pos-1", "pos-2", "pos-3"]
    async with running_mesh(configs(authority, tmp_path, ids)) as (a, b, c):
        revoked = authority.revoke("pos-3")
        answer = await a.adopt_roster(revoked.signed)
        assert answer["adopted"] and answer["version"] == revoked.version
        await wait_for(lambda: b.mesh.roster.version == revoked.version)
        await wait_for(lambda: linked(a) == {"pos-2"} and linked(b) == {"pos-1"} and not linked(c))
        assert (tmp_path / "pos-2" / "roster.json").read_bytes() == revoked.signed  # durable relay
        # c keeps dialling; every attempt is refused with 4003 and nothing it writes gets in
        await c.put_product("contraband", **PRODUCT)
        c.mesh.dial(address(a))
        await wait_for(lambda: any(r["code"] == AUTHENTICATION_FAILED and r["terminal_id"] == "pos-3"
                                   for r in a.mesh.refusals))
        assert "contraband" not in a.inventory.catalog and "contraband" not in b.inventory.catalog
        assert (await a.adopt_roster(revoked.signed))["adopted"] is False  # idempotent
        await a.put_product("burger", **PRODUCT)
        await converged([a, b])  # the others keep serving each other


# -- bad peers -------------------------------------------------------------------------------------


@pytest.fixture
async def target(authority: Authority, tmp_path: Path):  # noqa: ANN201
    """Two linked terminals (the attacks go to the first) plus an enrolled identity ``pos-9`` to abuse."""
    cfgs = configs(authority, tmp_path, ["pos-1", "pos-2"], peer_max_message_bytes=65536)
    enroll(authority, tmp_path, ["pos-9"])
    async with running_mesh(cfgs) as terminals:
        yield terminals


async def refused(a: Terminal, code: int, caplog: pytest.LogCaptureFixture) -> dict:
    await wait_for(lambda: any(r["code"] == code for r in a.mesh.refusals), within=5)
    assert any(f"refused: {code}" in r.getMessage() for r in caplog.records)
    return next(r for r in a.mesh.refusals if r["code"] == code)


async def still_serving(a: Terminal, b: Terminal) -> None:
    await a.put_product("burger", **PRODUCT)
    await converged([a, b])
    assert linked(a) == {"pos-2"}


def forged_update() -> bytes:
    import pycrdt

    doc = pycrdt.Doc()
    catalog = doc.get("catalog", type=pycrdt.Map)
    with doc.transaction():
        catalog["evil"] = '{"name":"evil"}'
    return doc.get_update()


async def test_key_from_another_store_fails_tls(target, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.INFO)
    other = Authority.init(tmp_path / "other-auth", "Other Store")
    other.enroll("pos-1", "pos", tmp_path / "foreign")
    a, b = target
    result = await probe(address(a), ctx_of(tmp_path / "foreign"), hello=hello_of(tmp_path / "foreign"))
    assert result.code in TLS_REFUSED  # the alert, or a reset if the server hung up first
    assert "TLS" in (await refused(a, AUTHENTICATION_FAILED, caplog))["reason"]
    await still_serving(a, b)


async def test_self_signed_key_fails_tls(target, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.INFO)
    a, b = target
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pos-2")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    d = tmp_path / "selfsigned"
    d.mkdir()
    (d / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    (d / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ctx = tls_context(d / "c.pem", d / "k.pem", tmp_path / "pos-1" / STORE_CA_CERT)
    result = await probe(address(a), ctx, hello=hello_of(tmp_path / "pos-2"))
    assert result.code in TLS_REFUSED  # the alert, or a reset if the server hung up first
    await refused(a, AUTHENTICATION_FAILED, caplog)
    await still_serving(a, b)


async def test_expired_certificate_fails_tls(target, authority: Authority, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.INFO)
    a, b = target
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pos-9"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "pos"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, authority.store_id)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(authority.cert.subject)
            .public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(days=10)).not_valid_after(now - dt.timedelta(days=1))
            .sign(authority.key, hashes.SHA256()))
    d = tmp_path / "expired"
    d.mkdir()
    (d / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    (d / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    result = await probe(address(a), tls_context(d / "c.pem", d / "k.pem", authority.dir / "ca.crt"),
                         hello=hello_of(tmp_path / "pos-9"))
    assert result.code in TLS_REFUSED  # the alert, or a reset if the server hung up first
    assert "expired" in (await refused(a, AUTHENTICATION_FAILED, caplog))["reason"]
    await still_serving(a, b)


async def test_certificate_not_in_the_roster_is_refused(target, authority: Authority, tmp_path: Path,  # noqa: ANN001
                                                        caplog) -> None:
    caplog.set_level(logging.INFO)
    a, b = target
    # re-enrolling pos-9 replaces its roster entry: the first certificate is signed but no longer enrolled
    authority.enroll("pos-9", "pos", tmp_path / "pos-9-new")
    await a.adopt_roster(authority.roster.signed)
    result = await probe(address(a), ctx_of(tmp_path / "pos-9"), hello=hello_of(tmp_path / "pos-9"),
                         after_open=[encode_sync("inventory", UPDATE, forged_update())])
    assert result.code == AUTHENTICATION_FAILED and "not the one enrolled" in result.reason
    await refused(a, AUTHENTICATION_FAILED, caplog)
    assert "evil" not in a.inventory.catalog
    await still_serving(a, b)


async def test_revoked_terminal_is_refused(target, authority: Authority, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.INFO)
    a, b = target
    await a.adopt_roster(authority.revoke("pos-9").signed)
    result = await probe(address(a), ctx_of(tmp_path / "pos-9"), hello=hello_of(tmp_path / "pos-9"))
    assert result.code == AUTHENTICATION_FAILED and "revoked" in result.reason
    await refused(a, AUTHENTICATION_FAILED, caplog)
    await still_serving(a, b)


async def test_peer_claiming_another_terminal_id_is_refused(target, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.INFO)
    a, b = target
    result = await probe(address(a), ctx_of(tmp_path / "pos-9"),
                         hello=hello_of(tmp_path / "pos-9", terminal_id="pos-2"),
                         after_open=[encode_sync("inventory", UPDATE, forged_update())])
    assert result.code == INVALID_TERMINAL_ID
    await refused(a, INVALID_TERMINAL_ID, caplog)
    assert "evil" not in a.inventory.catalog
    await still_serving(a, b)


async def test_garbage_bytes_are_refused(target, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.INFO)
    a, b = target
    result = await probe(address(a), ctx_of(tmp_path / "pos-9"), raw=b"\x00\xffgarbage\r\n\r\n" * 10)
    assert result.by_peer
    assert "handshake" in (await refused(a, INVALID_MESSAGE, caplog))["reason"]
    await still_serving(a, b)


async def test_what_a_link_has_buffered_is_taken_in_as_one_read(target, tmp_path: Path) -> None:  # noqa: ANN001
    """A terminal behind on a link (its frames queued in the socket) takes in what is buffered
    with the frame it reads and stores it as one record, not one per TLS record: 60 frames of
    ~2.5 KB in one write are 10 TLS records; read one record at a time they were 10 storage
    records.  Everything before the bad last frame is applied, then the link closes (4006)."""
    import pycrdt

    a, _ = target
    writer = pycrdt.Doc()
    catalog = writer.get("catalog", type=pycrdt.Map)
    updates: list[bytes] = []
    writer.observe(lambda event: updates.append(bytes(event.update)))
    for i in range(60):
        catalog[f"sku-{i}"] = '{"name":"' + "x" * 2500 + '"}'
    frames = [encode_sync("inventory", UPDATE, u) for u in updates]
    before = a.metrics.updates["peer"]
    result = await probe(address(a), ctx_of(tmp_path / "pos-9"), hello=hello_of(tmp_path / "pos-9"),
                         after_open=[*frames, encode_sync("secrets", UPDATE, updates[0])], together=True)
    assert result.code == INVALID_MESSAGE, result
    await wait_for(lambda: "sku-59" in a.host.get("inventory").doc.get("catalog", type=pycrdt.Map), within=5)
    assert len(a.host.get("inventory").doc.get("catalog", type=pycrdt.Map)) == 60
    records = a.metrics.updates["peer"] - before
    assert 1 <= records <= 3, records  # one read on asyncio; trio takes only what TLS holds decrypted-ready


@pytest.mark.parametrize("attack", ["bad-frame", "corrupt-update", "unknown-doc"])
async def test_tampered_frames_close_with_4006_and_apply_nothing(target, tmp_path: Path, caplog,  # noqa: ANN001
                                                                 attack: str) -> None:
    caplog.set_level(logging.INFO)
    a, b = target
    good = encode_sync("inventory", UPDATE, forged_update())
    bad = {
        "bad-frame": b"RAW:\x8f\x80\x00\x00\x00\x00",  # reserved opcode 0xF, masked, empty
        "corrupt-update": good[:-6] + b"\xff\xff\xff\xff\xff\xff",
        "unknown-doc": encode_sync("secrets", UPDATE, forged_update()),
    }[attack]
    result = await probe(address(a), ctx_of(tmp_path / "pos-9"), hello=hello_of(tmp_path / "pos-9"),
                         after_open=[bad])
    assert result.code == INVALID_MESSAGE, result
    # the hello and the frame may be read together: the close frame can then leave before the
    # link is registered, and the link is logged as closed once it is
    await wait_for(lambda: any("closed: 4006" in r.getMessage() for r in caplog.records), within=5)
    assert "pos-9" not in linked(a)
    assert "evil" not in a.inventory.catalog
    await still_serving(a, b)


async def test_oversized_frame_is_refused(target, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.INFO)
    a, b = target
    result = await probe(address(a), ctx_of(tmp_path / "pos-9"), hello=hello_of(tmp_path / "pos-9"),
                         after_open=[b"\x00" * 70_000])
    assert result.code == INVALID_MESSAGE and "65536 byte limit" in result.reason
    await still_serving(a, b)


async def test_message_flood_is_rate_limited(authority: Authority, tmp_path: Path) -> None:
    cfgs = configs(authority, tmp_path, ["pos-1"])
    enroll(authority, tmp_path, ["pos-9"])
    async with running_mesh(cfgs, link=False) as (a,):
        a.mesh.limits = Limits(messages_per_second=50, message_burst=20)
        step1 = encode_sync("tables", 0, b"\x00")
        result = await probe(address(a), ctx_of(tmp_path / "pos-9"), hello=hello_of(tmp_path / "pos-9"),
                             after_open=[step1] * 200)
        assert result.code == RATE_LIMIT


# -- pure logic ----------------------------------------------------------------------------------


def test_backoff_is_full_jitter_and_capped() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, rng) for n in range(1, 2000)]
    assert all(0 <= d <= BACKOFF_CAP for d in delays)
    assert max(delays[:3]) <= 0.8  # starts fast
    # a peer down for an hour costs about one attempt per 2.5 s, not a storm
    assert 3600 / (sum(delays[20:]) / len(delays[20:])) < 2000
    assert len({round(d, 3) for d in delays}) > 1500  # jittered: dialers do not retry in lock-step


def test_recently_lost_peers_are_redialled_eagerly_within_a_budget() -> None:
    lost = {"pos-2": 100.0}
    assert backoff_cap(lost, "pos-2", 160.0) == EAGER_CAP  # lost a minute ago: a flap, a reboot
    assert backoff_cap(lost, "pos-3", 160.0) == BACKOFF_CAP  # never linked (or linked now)
    assert backoff_cap(lost, None, 160.0) == BACKOFF_CAP  # a static address not linked yet
    # a split that took 30 peers away: the cap grows so this box's eager dials stay ~2/EAGER_SPACING per s
    many = {f"t{k}": 100.0 for k in range(30)}
    assert backoff_cap(many, "t1", 101.0) == pytest.approx(30 * EAGER_SPACING)
    assert 30 * EAGER_SPACING < BACKOFF_CAP
    rng = random.Random(3)
    per_second = sum(1 / (sum(backoff_delay(20, rng, backoff_cap(many, f"t{k}", 101.0)) for _ in range(200)) / 200)
                     for k in range(30))
    assert per_second < 2.5 / EAGER_SPACING
    # gone longer than the window: back to the 5 s cap, and the entry is forgotten
    assert backoff_cap(lost, "pos-2", 100.0 + RECENT_LOSS_SECONDS + 1) == BACKOFF_CAP
    assert lost == {}


async def test_half_broken_mesh_still_converges_through_state_vectors(
        authority: Authority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer.syncing, "ANTI_ENTROPY_SECONDS", 0.3)
    async with running_mesh(configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3"]), link=False) as (a, b, c):
        a.mesh.dial(address(b))  # a - b - c: a and c cannot reach each other (Wi-Fi split, say)
        b.mesh.dial(address(c))
        await wait_for(lambda: linked(b) == {"pos-1", "pos-3"} and linked(a) == {"pos-2"})
        await a.put_product("burger", **PRODUCT)
        await c.put_table("t9", name="Table 9", seats=2, area=None)
        await converged([a, b, c])
        assert "burger" in c.inventory.catalog and a.tables.exists("t9")
        assert linked(a) == {"pos-2"} and linked(c) == {"pos-2"}


async def test_a_line_of_terminals_passes_changes_on_as_they_happen(
        authority: Authority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """a - b - c - d, each reaching only its neighbours: a change crosses the line hop by hop
    (no anti-entropy round runs in this test), and each terminal knows what its neighbours reach."""
    monkeypatch.setattr(peer.syncing, "ANTI_ENTROPY_SECONDS", 3600.0)
    async with running_mesh(configs(authority, tmp_path, ["pos-1", "pos-2", "pos-3", "pos-4"]),
                            link=False) as (a, b, c, d):
        a.mesh.dial(address(b))
        b.mesh.dial(address(c))
        c.mesh.dial(address(d))
        await wait_for(lambda: linked(b) == {"pos-1", "pos-3"} and linked(c) == {"pos-2", "pos-4"})
        await wait_for(lambda: b.mesh.syncing.core.neighbours("pos-3") == {"pos-2", "pos-4"})
        await a.put_product("burger", **PRODUCT)
        await d.put_table("t9", name="Table 9", seats=2, area=None)
        with anyio.fail_after(5):
            await wait_for(lambda: "burger" in d.inventory.catalog and a.tables.exists("t9"))
        await converged([a, b, c, d])
        assert linked(a) == {"pos-2"} and linked(d) == {"pos-3"}
        peers = {p["terminal_id"]: p for p in a.mesh.status()["peers"]}
        assert peers["pos-2"]["reaches"] == ["pos-1", "pos-3"] and peers["pos-2"]["through"] is None
        assert peers["pos-3"]["reaches"] is None and peers["pos-3"]["through"] == "pos-2"
        assert peers["pos-4"]["through"] is None  # two hops away: nobody a links to reaches it


@pytest.mark.parametrize("days_ago", [3, 20])
async def test_archived_days_recent_ones_synced_older_ones_on_request(authority: Authority, tmp_path: Path,
                                                                      days_ago: int,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # An answer ends the fetch as soon as it is durable, not at the timeout nor at the next message.
    monkeypatch.setattr(peer.syncing, "FETCH_TIMEOUT", 60.0)
    monkeypatch.setattr(peer.syncing, "ANTI_ENTROPY_SECONDS", 60.0)
    now = [dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)]
    cfgs = configs(authority, tmp_path, ["pos-1", "pos-2"])
    async with Terminal(cfgs[0], clock=lambda: now[0]).running() as a:
        order = await a.create_order(table=None, waiter="ana", items=[ITEM])
        recent = "orders/2026-11-01"
        if days_ago > peer.replication.AUTO_FETCH_DAYS:
            # A recent archived day goes in the same offer: once b has fetched it, b has read the
            # whole offer, so the old day's absence then means "not fetched", not "not yet".
            now[0] += dt.timedelta(days=days_ago - 3)
            await a.roll_over()
            await a.create_order(table=None, waiter="bo", items=[ITEM])
            recent = f"orders/{now[0].date().isoformat()}"
            now[0] += dt.timedelta(days=3)
        else:
            now[0] += dt.timedelta(days=days_ago)
        await a.roll_over()  # housekeeping: the days are archived (state vectors remembered)
        assert a.host.get("orders/2026-11-01") is None and a.host.get(recent) is None
        async with Terminal(cfgs[1], clock=lambda: now[0]).running() as b:  # a box that never saw that day
            b.mesh.dial(address(a))
            await wait_linked([a, b])
            if days_ago <= peer.replication.AUTO_FETCH_DAYS:
                await wait_for(lambda: "orders/2026-11-01" in b.host.names())
                await wait_for(lambda: bool(b.host.get("orders/2026-11-01").ids()))
                await b.host.settled("orders/2026-11-01")  # seen in memory; the check below is of the disk
            else:
                await wait_for(lambda: recent in b.host.names() and bool(b.host.get(recent).ids()))
                assert "orders/2026-11-01" not in await b.store.doc_names()
            with anyio.fail_after(10):
                fetched = await b.get_order(order["id"])  # on request: asks the peers
            assert fetched["id"] == order["id"] and fetched["waiter"] == "ana"
            assert "orders/2026-11-01" in await b.store.doc_names()  # and keeps it, durably
