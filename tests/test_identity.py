"""Store authority, enrollment and the signed roster (peer/identity.py and ``meshpos store``)."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ConfigError
from meshpos.config import load_config
from peer.identity import (
    ROSTER,
    STORE_CA_CERT,
    TERMINAL_CERT,
    TERMINAL_KEY,
    Authority,
    IdentityError,
    load_identity,
    newer_roster,
    subject_of,
    verify_roster,
    verify_terminal_cert,
)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshpos.cli", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "auth", "Cantina Centro")


def test_enrollment_writes_a_verifiable_identity(authority: Authority, tmp_path: Path) -> None:
    data = tmp_path / "pos-1"
    roster = authority.enroll("pos-1", "pos", data)
    assert stat.S_IMODE(os.stat(data / TERMINAL_KEY).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(authority.dir / "ca.key").st_mode) == 0o600
    identity = load_identity(data)
    assert (identity.terminal_id, identity.type, identity.store_id) == ("pos-1", "pos", authority.store_id)
    assert identity.roster.version == roster.version == 2
    assert identity.roster.admits("pos-1", identity.fingerprint)
    assert identity.roster.voters() == ["pos-1"]
    assert subject_of(identity.cert) == ("pos-1", "pos", authority.store_id)


def test_nothing_is_ever_overwritten(authority: Authority, tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="already holds a store authority"):
        Authority.init(authority.dir, "again")
    authority.enroll("pos-1", "pos", tmp_path / "d")
    before = (tmp_path / "d" / TERMINAL_KEY).read_bytes()
    with pytest.raises(IdentityError, match="already holds a terminal identity"):
        authority.enroll("pos-2", "pos", tmp_path / "d")
    assert (tmp_path / "d" / TERMINAL_KEY).read_bytes() == before


def test_revocation_is_a_newer_signed_roster(authority: Authority, tmp_path: Path) -> None:
    authority.enroll("pos-1", "pos", tmp_path / "a")
    authority.enroll("kds-1", "kds", tmp_path / "b")
    held = load_identity(tmp_path / "a").roster  # v2: pos-1 was enrolled before kds-1 (v3)
    revoked = authority.revoke("kds-1")
    assert (held.version, revoked.version) == (2, 4) and revoked.is_revoked("kds-1")
    fp = load_identity(tmp_path / "b").fingerprint
    assert not revoked.admits("kds-1", fp)
    accepted = newer_roster(held, revoked.signed, authority.cert)
    assert accepted is not None and accepted.is_revoked("kds-1")
    # an older (or equal) roster is never taken: no rollback of a revocation
    assert newer_roster(accepted, held.signed, authority.cert) is None
    with pytest.raises(IdentityError, match="revoked"):
        authority.enroll("kds-1", "kds", tmp_path / "c")
    with pytest.raises(IdentityError, match="already revoked"):
        authority.revoke("kds-1")
    with pytest.raises(IdentityError, match="not enrolled"):
        authority.revoke("ghost")


def test_forged_and_foreign_rosters_are_refused(authority: Authority, tmp_path: Path) -> None:
    other = Authority.init(tmp_path / "other", "Another Store")
    with pytest.raises(IdentityError, match="does not verify"):
        verify_roster(other.roster.signed, authority.cert)
    outer = json.loads(authority.roster.signed)
    body = json.loads(outer["body"])
    body["version"] = 99
    outer["body"] = json.dumps(body, sort_keys=True, separators=(",", ":"))
    with pytest.raises(IdentityError, match="does not verify"):
        verify_roster(json.dumps(outer).encode(), authority.cert)
    with pytest.raises(IdentityError, match="malformed"):
        verify_roster(b"not json", authority.cert)


def test_certificates_of_another_store_or_expired_are_refused(authority: Authority, tmp_path: Path) -> None:
    other = Authority.init(tmp_path / "other", "Another Store")
    other.enroll("pos-1", "pos", tmp_path / "foreign")
    foreign = load_identity(tmp_path / "foreign").cert
    with pytest.raises(IdentityError, match="not issued by this store"):
        verify_terminal_cert(foreign, authority.cert)
    authority.enroll("pos-2", "pos", tmp_path / "short", days=1)
    cert = load_identity(tmp_path / "short").cert
    verify_terminal_cert(cert, authority.cert)
    with pytest.raises(IdentityError, match="not valid now"):
        verify_terminal_cert(cert, authority.cert, at=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))


def test_mixed_up_enrollment_files_are_refused(authority: Authority, tmp_path: Path) -> None:
    authority.enroll("pos-1", "pos", tmp_path / "a")
    authority.enroll("pos-2", "pos", tmp_path / "b")
    (tmp_path / "a" / TERMINAL_KEY).unlink()
    (tmp_path / "a" / TERMINAL_KEY).write_bytes((tmp_path / "b" / TERMINAL_KEY).read_bytes())
    with pytest.raises(IdentityError, match="does not belong"):
        load_identity(tmp_path / "a")
    (tmp_path / "b" / ROSTER).unlink()
    with pytest.raises(IdentityError, match="missing"):
        load_identity(tmp_path / "b")


def test_config_takes_the_identity_from_the_certificate(authority: Authority, tmp_path: Path) -> None:
    data = tmp_path / "kds"
    authority.enroll("kds-1", "kds", data)
    config = load_config(overrides={"data_dir": data}, env={})
    assert (config.terminal_id, config.type) == ("kds-1", "kds")
    assert load_config(overrides={"data_dir": data, "terminal_id": "kds-1"}, env={}).type == "kds"
    with pytest.raises(ConfigError, match="--terminal-id: terminal_id 'pos-9' contradicts the certificate"):
        load_config(overrides={"data_dir": data, "terminal_id": "pos-9"}, env={})
    with pytest.raises(ConfigError, match="MESHPOS_TYPE: type 'pos' contradicts"):
        load_config(overrides={"data_dir": data}, env={"MESHPOS_TYPE": "pos"})
    (data / STORE_CA_CERT).write_text("garbage")
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        load_config(overrides={"data_dir": data}, env={})


def test_store_cli_init_enroll_revoke(tmp_path: Path) -> None:
    auth, data = tmp_path / "auth", tmp_path / "pos-1"
    result = cli("store", "init", "--dir", str(auth), "--name", "Cantina")
    assert result.returncode == 0, result.stderr
    assert "roster v1" in result.stdout
    result = cli("store", "enroll", "--dir", str(auth), "--terminal-id", "pos-1", "--type", "pos", "--out", str(data))
    assert result.returncode == 0, result.stderr
    assert {p.name for p in data.iterdir()} == {TERMINAL_KEY, TERMINAL_CERT, STORE_CA_CERT, ROSTER}
    result = cli("store", "revoke", "--dir", str(auth), "--terminal-id", "pos-1")
    assert result.returncode == 0 and "roster v3" in result.stdout, result.stderr
    result = cli("store", "revoke", "--dir", str(auth), "--terminal-id", "pos-1")
    assert result.returncode != 0 and "already revoked" in result.stderr and "Traceback" not in result.stderr
    result = cli("store", "init", "--dir", str(auth), "--name", "Again")
    assert result.returncode != 0 and "never overwritten" in result.stderr
    result = cli("run", "--data-dir", str(data), "--terminal-id", "pos-2", "--api-port", "0")
    assert result.returncode != 0 and "contradicts the certificate" in result.stderr
    assert "Traceback" not in result.stderr
