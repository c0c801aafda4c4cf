"""Store authority, terminal enrollment and the signed roster.

Trust in a store comes from one authority key pair, made once by ``meshpos store init`` and kept
off the terminals.  It signs two things:

* each terminal's **certificate** at enrollment (ECDSA P-256), binding the terminal id (CN), its
  type (OU) and the store id (O) - the TLS links authenticate with these, both ways;
* the **roster**: who is enrolled (id, type, certificate fingerprint) and who is revoked, with a
  version that only grows.  A terminal accepts a roster only if the authority signed it and its
  version is newer than the one it holds, so any terminal can relay it and nobody can roll it
  back or forge it.

The store id is derived from the authority's public key, so two stores can never share one by
accident (and a TXT record claiming one proves nothing: the TLS link does).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.clock import iso, system_clock
from core.codec import decode_json
from core.names import ENROLLABLE_TYPES, ID_PATTERN
from peer.files import CA_CERT, CA_KEY, ROSTER, STORE_CA_CERT, TERMINAL_CERT, TERMINAL_KEY

#: Terminal certificates are valid this long by default; renew by enrolling again.
CERT_DAYS = 5 * 365


class IdentityError(Exception):
    """Enrollment material is missing, malformed, foreign or not signed by the store authority."""


def store_id_of(ca_cert: x509.Certificate) -> str:
    """First 16 hex digits of SHA-256 over the authority's public key (SubjectPublicKeyInfo)."""
    spki = ca_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()[:16]


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (never world-readable, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise IdentityError(f"{path} is missing") from None
    except ValueError as exc:
        raise IdentityError(f"{path} is not a PEM certificate: {exc}") from None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise IdentityError(f"{path} is missing") from None
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{path} is not an ECDSA key")
    return key


# -- the roster ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Roster:
    """A verified roster.  ``signed`` is the exact file content, relayed between terminals as is."""

    store_id: str
    store_name: str
    version: int
    issued_at: str
    terminals: dict[str, dict[str, Any]]
    revoked: dict[str, dict[str, Any]]
    signed: bytes

    def is_revoked(self, terminal_id: str) -> bool:
        return terminal_id in self.revoked

    def admits(self, terminal_id: str, cert_fingerprint: str) -> bool:
        """Enrolled, not revoked, and presenting the certificate the roster lists for it."""
        entry = self.terminals.get(terminal_id)
        return entry is not None and not self.is_revoked(terminal_id) and entry["fingerprint"] == cert_fingerprint

    def voters(self) -> list[str]:
        """The roster's POS terminals that are not revoked (the cashier quorum's voters)."""
        return sorted(t for t, e in self.terminals.items() if e["type"] == "pos" and not self.is_revoked(t))


def sign_roster(ca_key: ec.EllipticCurvePrivateKey, body: dict[str, Any]) -> bytes:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    signature = ca_key.sign(text.encode(), ec.ECDSA(hashes.SHA256()))
    return json.dumps({"body": text, "signature": base64.b64encode(signature).decode()}, indent=1).encode()


#: Largest roster accepted (a file, an API body or a peer's relay); a few hundred terminals fit.
MAX_ROSTER_BYTES = 512 * 1024


def signed_object(cert: x509.Certificate, signature: bytes, text: str, what: str, signer: str) -> dict[str, Any]:
    """``text`` as a JSON object, once ``signature`` verifies over its exact bytes with
    ``cert``'s key - nothing unsigned is parsed, and what is parsed is depth-bounded first.
    Raises :class:`IdentityError` naming ``what`` (and ``signer``, whose signature it is not)."""
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise IdentityError(f"{signer}'s certificate holds no ECDSA key")
    try:
        public_key.verify(signature, text.encode(), ec.ECDSA(hashes.SHA256()))
    except UnicodeEncodeError:
        raise IdentityError(f"{what} body is not UTF-8 text") from None
    except InvalidSignature:
        raise IdentityError(f"{what} signature does not verify against {signer}") from None
    try:
        body = decode_json(text)
    except ValueError as exc:
        raise IdentityError(f"{what} body is malformed: {exc}") from None
    if not isinstance(body, dict):
        raise IdentityError(f"{what} body is not an object")
    return body


def verify_roster(signed: bytes | str, ca_cert: x509.Certificate) -> Roster:
    """Parse and check a roster file (or its text, as a hello carries it) against the store
    authority; raises :class:`IdentityError`.

    The signature is checked over the body's exact text *before* the body is parsed: nothing a
    stranger wrote is parsed beyond the small outer object, and that is depth-bounded.
    """
    try:
        if isinstance(signed, str):
            signed = signed.encode()
    except UnicodeEncodeError:  # a lone surrogate (a JSON escape): no authority signed that
        raise IdentityError("roster is not UTF-8 text") from None
    if len(signed) > MAX_ROSTER_BYTES:
        raise IdentityError(f"roster is larger than {MAX_ROSTER_BYTES} bytes")
    try:
        outer = decode_json(signed, max_depth=1)
        if not isinstance(outer, dict) or not isinstance(outer.get("body"), str) \
                or not isinstance(outer.get("signature"), str):
            raise ValueError("needs a body and a signature, both strings")
        text, signature = outer["body"], base64.b64decode(outer["signature"], validate=True)
    except ValueError as exc:  # binascii.Error is one too
        raise IdentityError(f"roster is malformed: {exc}") from None
    body = signed_object(ca_cert, signature, text, "roster", "the store authority")
    if body.get("store_id") != store_id_of(ca_cert):
        raise IdentityError(f"roster is for store {body.get('store_id')!r}, not {store_id_of(ca_cert)!r}")
    version = body.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise IdentityError(f"roster version {version!r} is invalid")
    terminals, revoked = body.get("terminals", {}), body.get("revoked", {})
    if not _entries_of(terminals, ("type", "fingerprint")) or not _entries_of(revoked, ("fingerprint",)):
        raise IdentityError("roster terminals and revoked must map terminal ids to entries with "
                            "string type and fingerprint")
    return Roster(store_id=body["store_id"], store_name=str(body.get("store_name", "")), version=version,
                  issued_at=str(body.get("issued_at", "")), terminals=dict(terminals),
                  revoked=dict(revoked), signed=bytes(signed))


def _entries_of(value: Any, fields: tuple[str, ...]) -> bool:
    """``value`` maps string ids to objects whose ``fields`` are strings."""
    return isinstance(value, dict) and all(
        isinstance(tid, str) and isinstance(entry, dict) and all(isinstance(entry.get(f), str) for f in fields)
        for tid, entry in value.items())


def newer_roster(current: Roster, candidate_signed: bytes, ca_cert: x509.Certificate) -> Roster | None:
    """The candidate if it is validly signed and newer than ``current``; ``None`` if not newer."""
    candidate = verify_roster(candidate_signed, ca_cert)
    return candidate if candidate.version > current.version else None


def _roster_body(roster: Roster | None, **changes: Any) -> dict[str, Any]:
    base = {} if roster is None else {
        "store_id": roster.store_id, "store_name": roster.store_name, "version": roster.version,
        "terminals": roster.terminals, "revoked": roster.revoked,
    }
    return {**base, **changes, "issued_at": iso(system_clock())}


# -- the authority (runs on an operator's machine, not on terminals) -------------------------------


class Authority:
    """The store authority directory: ``ca.key`` (0600), ``ca.crt``, ``roster.json``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.key = _load_key(directory / CA_KEY)
        self.cert = _load_cert(directory / CA_CERT)
        self.store_id = store_id_of(self.cert)
        self.roster = verify_roster(self._roster_path.read_bytes(), self.cert)

    @property
    def _roster_path(self) -> Path:
        return self.dir / ROSTER

    @classmethod
    def init(cls, directory: Path, name: str) -> Authority:
        if not name.strip():
            raise IdentityError("a store needs a name")
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / CA_KEY).exists() or (directory / CA_CERT).exists():
            raise IdentityError(f"{directory} already holds a store authority; it is never overwritten")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"meshpos store authority: {name}")])
        now = system_clock()
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30 * 365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(directory / CA_KEY, _key_pem(key))
        (directory / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        body = _roster_body(None, store_id=store_id_of(cert), store_name=name, version=1, terminals={}, revoked={})
        (directory / ROSTER).write_bytes(sign_roster(key, body))
        return cls(directory)

    def _publish(self, **changes: Any) -> Roster:
        signed = sign_roster(self.key, _roster_body(self.roster, version=self.roster.version + 1, **changes))
        roster = verify_roster(signed, self.cert)
        tmp = self._roster_path.with_suffix(".tmp")
        tmp.write_bytes(signed)
        os.replace(tmp, self._roster_path)
        self.roster = roster
        return roster

    def enroll(self, terminal_id: str, terminal_type: str, out: Path, *, days: int = CERT_DAYS) -> Roster:
        """Key, certificate and current roster for one terminal, written into its data directory."""
        if not ID_PATTERN.match(terminal_id):
            raise IdentityError(f"terminal id {terminal_id!r} is invalid (letters, digits, . _ : -)")
        if terminal_type not in ENROLLABLE_TYPES:
            raise IdentityError(f"type {terminal_type!r} is invalid; one of {', '.join(ENROLLABLE_TYPES)}")
        if self.roster.is_revoked(terminal_id):
            raise IdentityError(f"terminal {terminal_id!r} is revoked; enroll the replacement under a new id")
        out.mkdir(parents=True, exist_ok=True)
        if (out / TERMINAL_KEY).exists():
            raise IdentityError(f"{out} already holds a terminal identity; it is never overwritten")
        key = ec.generate_private_key(ec.SECP256R1())
        now = system_clock()
        subject = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, terminal_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, terminal_type),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.store_id),
        ])
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([
                x509.UniformResourceIdentifier(f"urn:meshpos:{self.store_id}:{terminal_type}:{terminal_id}"),
            ]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        terminals = {**self.roster.terminals, terminal_id: {
            "type": terminal_type, "fingerprint": fingerprint(cert), "enrolled_at": iso(now),
        }}
        roster = self._publish(terminals=terminals)
        _write_private(out / TERMINAL_KEY, _key_pem(key))
        (out / TERMINAL_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (out / STORE_CA_CERT).write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        (out / ROSTER).write_bytes(roster.signed)
        return roster

    def revoke(self, terminal_id: str) -> Roster:
        entry = self.roster.terminals.get(terminal_id)
        if entry is None:
            raise IdentityError(f"terminal {terminal_id!r} is not enrolled in this store")
        if self.roster.is_revoked(terminal_id):
            raise IdentityError(f"terminal {terminal_id!r} is already revoked (roster v{self.roster.version})")
        revoked = {**self.roster.revoked, terminal_id: {"at": iso(system_clock()), "fingerprint": entry["fingerprint"]}}
        return self._publish(revoked=revoked)


# -- a terminal's identity -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TerminalIdentity:
    terminal_id: str
    type: str
    store_id: str
    cert: x509.Certificate
    ca_cert: x509.Certificate
    roster: Roster
    key_path: Path
    cert_path: Path
    ca_path: Path

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)


def subject_of(cert: x509.Certificate) -> tuple[str, str, str]:
    """(terminal id, type, store id) as the certificate binds them."""
    def one(oid: x509.ObjectIdentifier) -> str:
        values = cert.subject.get_attributes_for_oid(oid)
        if len(values) != 1:
            raise IdentityError(f"certificate subject lacks a single {oid._name}")
        return str(values[0].value)

    return one(NameOID.COMMON_NAME), one(NameOID.ORGANIZATIONAL_UNIT_NAME), one(NameOID.ORGANIZATION_NAME)


def verify_terminal_cert(cert: x509.Certificate, ca_cert: x509.Certificate, *, at: dt.datetime | None = None) -> None:
    """Issued by the store authority and valid now; raises :class:`IdentityError` saying why not."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise IdentityError(f"certificate is not issued by this store's authority ({exc or 'bad signature'})") from None
    moment = at or system_clock()
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        raise IdentityError(f"certificate is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} "
                            f"to {cert.not_valid_after_utc:%Y-%m-%d})")


def load_identity(data_dir: Path) -> TerminalIdentity:
    """The enrollment material in ``data_dir``, checked for consistency; raises :class:`IdentityError`."""
    cert = _load_cert(data_dir / TERMINAL_CERT)
    ca_cert = _load_cert(data_dir / STORE_CA_CERT)
    key = _load_key(data_dir / TERMINAL_KEY)
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise IdentityError(f"{data_dir / TERMINAL_KEY} does not belong to {data_dir / TERMINAL_CERT}")
    verify_terminal_cert(cert, ca_cert)
    terminal_id, terminal_type, store_id = subject_of(cert)
    if store_id != store_id_of(ca_cert):
        raise IdentityError("certificate names another store than its authority certificate")
    try:
        roster = verify_roster((data_dir / ROSTER).read_bytes(), ca_cert)
    except FileNotFoundError:
        raise IdentityError(f"{data_dir / ROSTER} is missing") from None
    return TerminalIdentity(terminal_id, terminal_type, store_id, cert, ca_cert, roster,
                            data_dir / TERMINAL_KEY, data_dir / TERMINAL_CERT, data_dir / STORE_CA_CERT)


def private_key(identity: TerminalIdentity) -> ec.EllipticCurvePrivateKey:
    """The terminal's own key (signing what it sends through another terminal, peer/envelope.py)."""
    return _load_key(identity.key_path)


def save_roster(data_dir: Path, roster: Roster) -> None:
    """Replace the stored roster atomically (a crash leaves the old or the new one, never half)."""
    tmp = data_dir / f"{ROSTER}.{os.getpid()}.tmp"  # two HQ processes may share an enrollment directory
    with open(tmp, "wb") as f:
        f.write(roster.signed)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, data_dir / ROSTER)
