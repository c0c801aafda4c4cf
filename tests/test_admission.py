"""Hello authorization without a link: each refusal's close code and reason, and their order
(docs/protocol.md's table: the first failing check decides)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.errors import (
    ALREADY_CONNECTED,
    AUTHENTICATION_FAILED,
    INVALID_MESSAGE,
    INVALID_TERMINAL_ID,
    INVALID_TERMINAL_TYPE,
)
from peer.admission import MAX_BOOT_ID, authorize, hello_of, newest, revoked
from peer.identity import Authority, Roster, TerminalIdentity, load_identity
from peer.link import Refused
from peer.wire import WireError


@dataclass
class Store:
    authority: Authority
    ids: dict[str, TerminalIdentity]
    early: Roster  # only pos-1 enrolled
    full: Roster  # pos-1, pos-2, kds-1
    kds_revoked: Roster  # then kds-1 revoked
    me_revoked: Roster  # then pos-1 revoked too
    foreign: TerminalIdentity  # pos-2 of another store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    tmp: Path = tmp_path_factory.mktemp("admission")
    authority = Authority.init(tmp / "auth", "Cantina")
    early = authority.enroll("pos-1", "pos", tmp / "pos-1")
    authority.enroll("pos-2", "pos", tmp / "pos-2")
    full = authority.enroll("kds-1", "kds", tmp / "kds-1")
    kds_revoked = authority.revoke("kds-1")
    me_revoked = authority.revoke("pos-1")
    other = Authority.init(tmp / "other", "Elsewhere")
    other.enroll("pos-2", "pos", tmp / "other-pos-2")
    ids = {tid: load_identity(tmp / tid) for tid in ("pos-1", "pos-2", "kds-1")}
    return Store(authority, ids, early, full, kds_revoked, me_revoked, load_identity(tmp / "other-pos-2"))


def refusal(check: Callable[[], Any]) -> tuple[int, str]:
    with pytest.raises(Refused) as info:
        check()
    return info.value.code, info.value.reason


def admit(store: Store, peer: str = "pos-2", *, held: Roster | None = None, cert: Any = None,
          **patch: Any) -> Callable[[], None]:
    """The check pos-1 (holding ``store.full`` unless ``held``) makes of ``peer``'s hello (its
    fields replaced by ``patch``)."""
    identity = store.ids[peer]
    hello = {**hello_of(identity, store.full, "boot"), **patch}
    return lambda: authorize(hello, cert or identity.cert, store.ids["pos-1"], held or store.full)


def test_a_good_hello_passes_and_says_who_is_speaking(store: Store) -> None:
    admit(store)()
    hello = hello_of(store.ids["pos-2"], store.full, "b00t")
    assert (hello["type"], hello["terminal_id"], hello["terminal_type"], hello["boot_id"]) == \
        ("hello", "pos-2", "pos", "b00t")
    assert hello["roster"] == store.full.signed.decode()


@pytest.mark.parametrize(("patch", "reason"), [
    ({"protocol": 2}, "protocol 2 is not 1"),
    ({"boot_id": ""}, f"boot_id must be 1-{MAX_BOOT_ID} characters"),
    ({"boot_id": "x" * (MAX_BOOT_ID + 1)}, f"boot_id must be 1-{MAX_BOOT_ID} characters"),
])
def test_malformed_hellos_are_4006(store: Store, patch: dict[str, Any], reason: str) -> None:
    assert refusal(admit(store, **patch)) == (INVALID_MESSAGE, reason)


@pytest.mark.parametrize("field", ["protocol", "terminal_id", "terminal_type", "boot_id", "roster"])
def test_a_missing_or_mistyped_field_is_4006(store: Store, field: str) -> None:
    for value in (None, 7.5):
        with pytest.raises(WireError) as info:
            admit(store, **{field: value})()
        assert info.value.code == INVALID_MESSAGE


def test_a_certificate_that_names_no_terminal_is_4003(store: Store) -> None:
    code, reason = refusal(admit(store, cert=store.authority.cert))
    assert code == AUTHENTICATION_FAILED and reason


def test_claims_must_match_the_certificate(store: Store) -> None:
    assert refusal(admit(store, terminal_id="pos-9")) == (
        INVALID_TERMINAL_ID, "peer claims 'pos-9' but its certificate is 'pos-2'")
    assert refusal(admit(store, terminal_type="kds")) == (
        INVALID_TERMINAL_TYPE, "peer claims type 'kds', certificate says 'pos'")


def test_another_store_is_4003(store: Store) -> None:
    store_id = store.ids["pos-1"].store_id
    assert refusal(admit(store, store_id="elsewhere")) == (AUTHENTICATION_FAILED, f"peer belongs to store {store_id!r}")
    foreign = store.foreign.store_id
    assert refusal(admit(store, cert=store.foreign.cert)) == (
        AUTHENTICATION_FAILED, f"peer belongs to store {foreign!r}")


def test_a_roster_that_does_not_verify_is_4003(store: Store) -> None:
    code, reason = refusal(admit(store, roster="{}"))
    assert code == AUTHENTICATION_FAILED and reason.startswith("peer's roster: ")


def test_revocation_in_either_roster_is_4003(store: Store) -> None:
    told = admit(store, roster=store.me_revoked.signed.decode())
    assert refusal(told) == (AUTHENTICATION_FAILED, f"this terminal is revoked (roster v{store.me_revoked.version})")
    v = store.kds_revoked.version
    assert refusal(admit(store, "kds-1", held=store.kds_revoked)) == (
        AUTHENTICATION_FAILED, f"kds-1 is revoked (roster v{v})")  # known here
    assert refusal(admit(store, "kds-1", roster=store.kds_revoked.signed.decode())) \
        == (AUTHENTICATION_FAILED, f"kds-1 is revoked (roster v{v})")  # learnt from the peer's own hello


def test_a_certificate_not_enrolled_is_4003(store: Store) -> None:
    early = store.early.signed.decode()
    assert refusal(admit(store, held=store.early, roster=early)) == (
        AUTHENTICATION_FAILED, f"pos-2's certificate is not the one enrolled in roster v{store.early.version}")


def test_this_terminal_itself_is_4004(store: Store) -> None:
    assert refusal(admit(store, "pos-1")) == (ALREADY_CONNECTED, "that is this terminal (a copied data directory?)")


def test_the_first_failing_check_decides(store: Store) -> None:
    """Wrong in several ways at once: the code is the earliest check's, as docs/protocol.md lists."""
    assert refusal(admit(store, protocol=2, terminal_id="pos-9"))[0] == INVALID_MESSAGE
    assert refusal(admit(store, terminal_id="pos-9", terminal_type="kds", store_id="x"))[0] == INVALID_TERMINAL_ID
    assert refusal(admit(store, terminal_type="kds", store_id="x"))[0] == INVALID_TERMINAL_TYPE
    assert refusal(admit(store, store_id="x", roster="{}"))[1].startswith("peer belongs")
    me_revoked = store.me_revoked.signed.decode()
    assert refusal(admit(store, "kds-1", roster=me_revoked))[1].startswith("this terminal")
    assert refusal(admit(store, "pos-1", roster=me_revoked))[1].startswith("this terminal")


def test_a_revoked_certificate_is_refused_before_its_hello(store: Store) -> None:
    kds = store.ids["kds-1"]
    assert revoked(store.full, kds.cert, "kds-1") is None
    by_id = revoked(store.kds_revoked, kds.cert, "kds-1")
    assert by_id is not None and (by_id.code, by_id.reason) == (
        AUTHENTICATION_FAILED, f"kds-1 is revoked (roster v{store.kds_revoked.version})")
    by_fingerprint = revoked(store.kds_revoked, kds.cert, None)  # its subject did not parse
    assert by_fingerprint is not None and by_fingerprint.reason.startswith("the certificate is revoked")


def test_the_newest_roster_wins(store: Store) -> None:
    me = store.ids["pos-1"]
    assert newest(store.full.signed, store.early, me).version == store.full.version
    assert newest(store.early.signed, store.full, me).version == store.full.version
