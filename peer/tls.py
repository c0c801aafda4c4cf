"""TLS 1.3 contexts for peer links: both sides present a certificate the store authority signed.

OpenSSL does the chain and validity-period checks (a foreign store's key, a self-signed or
expired certificate never completes the handshake); host names are not checked because peers are
identified by the terminal id in their certificate, which :func:`peer.admission.authorize`
compares with the hello and the roster.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509

from peer.identity import TerminalIdentity


def context(purpose: int, cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """A TLS 1.3-only context presenting ``cert`` and trusting only ``ca`` (tests build odd ones)."""
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(identity: TerminalIdentity) -> ssl.SSLContext:
    return context(ssl.PROTOCOL_TLS_SERVER, identity.cert_path, identity.key_path, identity.ca_path)


def client_context(identity: TerminalIdentity) -> ssl.SSLContext:
    return context(ssl.PROTOCOL_TLS_CLIENT, identity.cert_path, identity.key_path, identity.ca_path)


def peer_certificate(der: bytes | None) -> x509.Certificate:
    if not der:
        raise ssl.SSLError("peer presented no certificate")
    return x509.load_der_x509_certificate(der)
