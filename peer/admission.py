"""Whom a link admits: the hello this terminal says, and the checks of the peer's.

Pure: each check reads the peer's certificate, its hello and this terminal's identity and roster,
and either passes or raises :class:`peer.link.Refused` with the close code and reason the link
closes with.  The order of the checks is the one ``docs/protocol.md`` lists (the first failure
decides the code), and ``tests/test_admission.py`` holds each refusal to it.

The TLS layer below has already proven the peer holds a key the store authority certified; the
hello binds that certificate to the terminal id and type the peer claims, against the newest
roster either side knows - a terminal that missed a revocation learns it from the peer's hello.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from cryptography import x509

from core.errors import (
    ALREADY_CONNECTED,
    AUTHENTICATION_FAILED,
    INVALID_MESSAGE,
    INVALID_TERMINAL_ID,
    INVALID_TERMINAL_TYPE,
)
from peer.identity import IdentityError, Roster, TerminalIdentity, fingerprint, subject_of, verify_roster
from peer.link import Refused
from peer.wire import PROTOCOL_VERSION, value_of

#: Longest ``boot_id`` a hello may carry (ours are 12 characters).
MAX_BOOT_ID = 64


def hello_of(identity: TerminalIdentity, roster: Roster, boot_id: str, *, relays: bool = False) -> dict[str, Any]:
    """The hello this terminal sends: who it is, in which incarnation, and the roster it holds
    (so a peer that missed a newer roster gets it before anything else); ``relays``: it passes
    changes on and announces its links (a terminal does, an HQ does not - docs/protocol.md)."""
    hello = {
        "type": "hello", "protocol": PROTOCOL_VERSION, "terminal_id": identity.terminal_id,
        "terminal_type": identity.type, "store_id": identity.store_id, "boot_id": boot_id,
        "roster": roster.signed.decode(),
    }
    if relays:
        hello["relays"] = True
    return hello


def revoked(roster: Roster, cert: x509.Certificate, cert_id: str | None) -> Refused | None:
    """A refusal for a certificate ``roster`` revoked - decided before the peer's first message
    is parsed.  Revocation is final (a newer roster never lifts it), so the peer's own roster
    cannot change the answer; the fingerprint catches a revoked certificate whose subject does
    not even name a terminal."""
    fp = fingerprint(cert)
    if (cert_id is not None and roster.is_revoked(cert_id)) \
            or any(entry["fingerprint"] == fp for entry in roster.revoked.values()):
        return Refused(AUTHENTICATION_FAILED, f"{cert_id or 'the certificate'} is revoked "
                                              f"(roster v{roster.version})")
    return None


def newest(signed: bytes | str, roster: Roster, identity: TerminalIdentity) -> Roster:
    """The newer of ``roster`` and the peer's ``signed`` one, which must verify (4003 if not)."""
    try:
        candidate = verify_roster(signed, identity.ca_cert)
    except IdentityError as exc:
        raise Refused(AUTHENTICATION_FAILED, f"peer's roster: {exc}") from None
    return candidate if candidate.version > roster.version else roster


def authorize(hello: dict[str, Any], cert: x509.Certificate, identity: TerminalIdentity, roster: Roster) -> None:
    """Bind the TLS certificate to the hello's claims, against the newest roster either side has
    (``roster``: this terminal's now).  A field missing or of the wrong JSON type is
    :class:`peer.wire.WireError` (4006)."""
    if value_of(hello, "protocol", int) != PROTOCOL_VERSION:
        raise Refused(INVALID_MESSAGE, f"protocol {hello['protocol']} is not {PROTOCOL_VERSION}")
    claimed, claimed_type = value_of(hello, "terminal_id", str), value_of(hello, "terminal_type", str)
    if not 1 <= len(value_of(hello, "boot_id", str)) <= MAX_BOOT_ID:
        raise Refused(INVALID_MESSAGE, f"boot_id must be 1-{MAX_BOOT_ID} characters")
    try:
        cert_id, cert_type, cert_store = subject_of(cert)
    except IdentityError as exc:
        raise Refused(AUTHENTICATION_FAILED, str(exc)) from None
    if claimed != cert_id:
        raise Refused(INVALID_TERMINAL_ID, f"peer claims {claimed!r} but its certificate is {cert_id!r}")
    if claimed_type != cert_type:
        raise Refused(INVALID_TERMINAL_TYPE, f"peer claims type {claimed_type!r}, certificate says {cert_type!r}")
    if cert_store != identity.store_id or hello.get("store_id") != cert_store:
        raise Refused(AUTHENTICATION_FAILED, f"peer belongs to store {cert_store!r}")
    newer = newest(value_of(hello, "roster", str), roster, identity)
    if newer.is_revoked(identity.terminal_id):
        raise Refused(AUTHENTICATION_FAILED, f"this terminal is revoked (roster v{newer.version})")
    if newer.is_revoked(cert_id):
        raise Refused(AUTHENTICATION_FAILED, f"{cert_id} is revoked (roster v{newer.version})")
    if not newer.admits(cert_id, fingerprint(cert)):
        raise Refused(AUTHENTICATION_FAILED,
                      f"{cert_id}'s certificate is not the one enrolled in roster v{newer.version}")
    if cert_id == identity.terminal_id:
        raise Refused(ALREADY_CONNECTED, "that is this terminal (a copied data directory?)")


#: Connections accepted but not yet authenticated (TLS, upgrade and hello under way), in all and
#: per remote host.  Beyond these a new connection is closed at once: a peer port listens on
#: every interface (an HQ's on the WAN), and anyone who reaches it can open connections without
#: a certificate.  A real peer needs one connection at a time; a store of 30 terminals all
#: rebooting needs 29.
MAX_UNAUTHENTICATED = 64
MAX_UNAUTHENTICATED_PER_HOST = 8


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Gate:
    """Counts the connections still authenticating, in all and per remote host."""

    def __init__(self, most: int = MAX_UNAUTHENTICATED, per_host: int = MAX_UNAUTHENTICATED_PER_HOST) -> None:
        self.most, self.per_host = most, per_host
        self._pending: dict[str, int] = {}

    @property
    def pending(self) -> int:
        return sum(self._pending.values())

    def enter(self, address: str) -> Callable[[], None] | str:
        """Let a connection from ``address`` (``HOST:PORT``) in: its release (call it once it
        authenticated or ended; calling again does nothing), or why it is turned away."""
        host = address.rpartition(":")[0] or address
        pending = sum(self._pending.values())
        per_host = self._pending.get(host, 0)
        # Loopback is exempt from the per-host cap: several terminals on one machine (the demo,
        # a test bench) all dial from 127.0.0.1; nothing on the LAN can come from there.
        if pending >= self.most or (per_host >= self.per_host and not _loopback(host)):
            return f"too many connections waiting to authenticate ({pending} in all, {per_host} from {host})"
        self._pending[host] = per_host + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                left = self._pending[host] - 1
                if left:
                    self._pending[host] = left
                else:
                    del self._pending[host]

        return release
