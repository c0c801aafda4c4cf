"""``via`` envelopes without a link: what a carrier and an addressee accept, and each refusal."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from core.codec import encode_json
from peer.carrying import Carrying
from peer.envelope import open_envelope, seal
from peer.identity import Authority, TerminalIdentity, load_identity, private_key
from peer.replication import Replication
from peer.wire import WireError

NOW = datetime(2020, 1, 1, tzinfo=UTC)  # the writer's clock: for the logs only, whatever it says
VOTE = {"type": "cashier", "m": "promise", "drawer": "main", "ballot": [3, "pos-1"]}


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp: Path = tmp_path_factory.mktemp("envelope")
    authority = Authority.init(tmp / "auth", "Cantina")
    for tid, kind in (("pos-1", "pos"), ("pos-2", "pos"), ("kds-1", "kds")):
        authority.enroll(tid, kind, tmp / tid)
    full = authority.roster
    revoked = authority.revoke("kds-1")
    other = Authority.init(tmp / "other", "Elsewhere")
    other.enroll("pos-2", "pos", tmp / "other-pos-2")
    loaded = {tid: load_identity(tmp / tid) for tid in ("pos-1", "pos-2", "kds-1", "other-pos-2")}
    return {**loaded, "full": full, "revoked": revoked}


def sealed(identity: TerminalIdentity, to: str = "pos-2", message: dict[str, Any] = VOTE,
           now: datetime = NOW, origin: str | None = None) -> dict[str, Any]:
    return seal(private_key(identity), identity.cert, origin or identity.terminal_id, to, message, now)


def opened(ids: dict[str, Any], envelope: dict[str, Any], *, roster: str = "full") -> Any:
    return open_envelope(envelope, ca_cert=ids["pos-1"].ca_cert, roster=ids[roster])


def refusal(ids: dict[str, Any], envelope: dict[str, Any], **kw: Any) -> str:
    with pytest.raises(WireError) as info:
        opened(ids, envelope, **kw)
    assert info.value.code == 4006
    return str(info.value)


def test_a_sealed_message_opens_as_its_writer_s_whatever_the_clocks_say(ids: dict[str, Any]) -> None:
    """No freshness window: a vote carried late or twice is what the quorum takes anyway, and a
    box whose clock is off (no NTP while the WAN is down) still votes through a carrier."""
    for now in (NOW, NOW + timedelta(days=3000)):
        got = opened(ids, sealed(ids["pos-1"], now=now))
        assert (got.origin, got.to, got.message) == ("pos-1", "pos-2", VOTE)


def test_what_a_carrier_could_change_or_forge_is_refused(ids: dict[str, Any]) -> None:
    envelope = sealed(ids["pos-1"])
    body = json.loads(envelope["body"])
    changed = {**envelope, "body": encode_json({**body, "message": {**VOTE, "ballot": [9, "kds-1"]}})}
    assert "signature does not verify against pos-1" in refusal(ids, changed)
    # the carrier signs a vote in pos-1's name with its own key: from is not the signer
    assert "from is not the signer" in refusal(ids, sealed(ids["kds-1"], origin="pos-1"))
    # its own key under pos-1's certificate: the signature does not match the certificate
    forged = {**sealed(ids["kds-1"], origin="pos-1"), "cert": envelope["cert"]}
    assert "signature does not verify against pos-1" in refusal(ids, forged)


@pytest.mark.parametrize("case", ["revoked", "other store", "not carried", "bad to", "bad cert", "no sig",
                                  "too large", "no at"])
def test_each_bad_envelope_is_refused_with_its_reason(ids: dict[str, Any], case: str) -> None:
    reasons = {
        "revoked": (sealed(ids["kds-1"]), {"roster": "revoked"}, "kds-1 is not admitted by roster v"),
        "other store": (sealed(ids["other-pos-2"], to="pos-1"), {}, "not issued by this store's authority"),
        "not carried": (sealed(ids["pos-1"], message={"type": "roster", "roster": "x"}), {}, "is not carried"),
        "bad to": (sealed(ids["pos-1"], to="../etc"), {}, "to is not a terminal id"),
        "bad cert": ({**sealed(ids["pos-1"]), "cert": base64.b64encode(b"junk").decode()}, {}, "does not decode"),
        "no sig": ({k: v for k, v in sealed(ids["pos-1"]).items() if k != "sig"}, {}, "'sig' is missing"),
        "too large": ({**sealed(ids["pos-1"]), "body": "x" * (300 * 1024)}, {}, "too large"),
        "no at": (None, {}, "'at' is missing"),
    }
    envelope, kw, reason = reasons[case]
    if case == "no at":  # a correctly signed body without its time
        identity = ids["pos-1"]
        good = sealed(identity)
        body = encode_json({k: v for k, v in json.loads(good["body"]).items() if k != "at"})
        sig = private_key(identity).sign(body.encode(), ec.ECDSA(hashes.SHA256()))
        envelope = {**good, "body": body, "sig": base64.b64encode(sig).decode()}
    assert reason in refusal(ids, envelope, **kw)


class _Session:
    def __init__(self) -> None:
        self.queued: list[dict[str, Any]] = []

    def queue_control(self, message: dict[str, Any]) -> None:
        self.queued.append(message)


def _link(peer_id: str) -> Any:
    return SimpleNamespace(peer_id=peer_id, peer_type="pos", core=SimpleNamespace(state="open"),
                           session=_Session(), wake=SimpleNamespace(set=lambda: None))


@pytest.mark.anyio
async def test_a_bad_envelope_closes_its_writer_s_link_and_is_dropped_from_a_carrier(ids: dict[str, Any]) -> None:
    """pos-2 holds the roster that revoked kds-1; pos-1, the carrier, had not heard of it yet."""
    got: list[tuple[str, dict[str, Any]]] = []

    async def handler(origin: str, message: dict[str, Any]) -> None:
        got.append((origin, message))

    links = {"pos-1": _link("pos-1"), "kds-1": _link("kds-1")}
    carrying = Carrying(identity=ids["pos-2"], roster=lambda: ids["revoked"], clock=lambda: NOW, links=links,
                        core=Replication(me="pos-2"), handlers={"cashier": handler})
    revoked = sealed(ids["kds-1"], to="pos-2")
    await carrying.received(links["pos-1"], revoked)  # carried: dropped, pos-1's link stays
    assert carrying.counts["dropped"] == 1 and got == []
    with pytest.raises(WireError, match="kds-1 is not admitted"):
        await carrying.received(links["kds-1"], revoked)  # its writer's own link: closed 4006
    await carrying.received(links["pos-1"], sealed(ids["pos-1"], to="pos-2"))
    assert got == [("pos-1", VOTE)] and carrying.counts["received"] == 1
    # for someone else: passed on only straight from its writer, to a terminal linked here
    onward = sealed(ids["pos-1"], to="kds-1")
    await carrying.received(links["pos-1"], onward)
    assert links["kds-1"].session.queued == [onward] and carrying.counts["carried"] == 1
    await carrying.received(links["kds-1"], sealed(ids["pos-1"], to="pos-3"))
    assert carrying.counts["dropped"] == 2  # not from its writer: no second hop
