"""A control message for a terminal this one is not linked to, carried by one they both reach.

The cashier's quorum messages go to voters by terminal id.  When two voters cannot reach each
other (tablets behind an access point with client isolation) but both reach a third terminal,
that terminal carries the message one hop further, in a ``via`` envelope.  A link proves who is
at its other end; an envelope has to prove who wrote it itself, or any enrolled terminal in the
middle could vote in a POS's name.  So the writer signs it with its terminal key and puts its
certificate in it:

    {"type": "via", "body": "<JSON text: {from, to, at, message}>",
     "cert": "<base64 DER of the writer's certificate>", "sig": "<base64 ECDSA-SHA256 over body>"}

The receiver (the carrier before it passes it on, and the addressee) checks, before parsing the
body: the certificate is issued by the store authority, valid (by the machine's clock, as the
TLS handshake checks a link's), and the one the roster lists for the terminal it names, which
is not revoked; the signature is that certificate's over the body's exact text.  Then the body:
``from`` is the certificate's terminal, ``to`` a terminal id, ``message`` a control object of a
type that may travel so (:data:`CARRIED_TYPES`).  ``at`` (the writer's clock) is for the logs:
a carrier can delay, drop or repeat an envelope, and the quorum's safety never depended on a
message's freshness - its messages may arrive late, twice or not at all (ballots order them;
``tests/test_cashier_quorum.py`` delivers them so), so no clock has to agree with another's for
a vote to count, which matters on a day the WAN (and with it NTP) is down.
Pure functions: the mesh (:mod:`peer.mesh`) decides who carries what.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from core.clock import iso
from core.codec import encode_json
from core.names import ID_PATTERN
from peer.identity import IdentityError, Roster, fingerprint, signed_object, subject_of, verify_terminal_cert
from peer.wire import WireError, value_of

#: Control messages that may be carried: the cashier's.  The mesh's own (hello, links, roster,
#: docs, resync) concern the link they arrive on and are never carried.
CARRIED_TYPES = frozenset({"cashier"})
#: Longest ``body`` and ``cert`` accepted (a quorum message is small; a certificate ~500 bytes).
MAX_BODY = 256 * 1024
MAX_CERT = 8 * 1024


@dataclass(frozen=True, slots=True)
class Opened:
    """A checked envelope: who wrote it, to whom, and the message."""

    origin: str
    to: str
    message: dict[str, Any]


def seal(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, origin: str, to: str,
         message: dict[str, Any], now: datetime) -> dict[str, Any]:
    body = encode_json({"from": origin, "to": to, "at": iso(now), "message": message})
    return {"type": "via", "body": body,
            "cert": base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode(),
            "sig": base64.b64encode(key.sign(body.encode(), ec.ECDSA(hashes.SHA256()))).decode()}


def open_envelope(envelope: dict[str, Any], *, ca_cert: x509.Certificate, roster: Roster) -> Opened:
    """Check ``envelope`` (see the module doc); raises :class:`WireError` (4006) saying why."""
    body = value_of(envelope, "body", str)
    if len(body) > MAX_BODY or len(value_of(envelope, "cert", str)) > MAX_CERT:
        raise WireError("via envelope is too large")
    try:
        der = base64.b64decode(envelope["cert"], validate=True)
        sig = base64.b64decode(value_of(envelope, "sig", str), validate=True)
        cert = x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError) as exc:
        raise WireError(f"via envelope: certificate or signature does not decode ({exc})") from None
    try:
        verify_terminal_cert(cert, ca_cert)
        signer, _, _ = subject_of(cert)
    except IdentityError as exc:
        raise WireError(f"via envelope: {exc}") from None
    if roster.is_revoked(signer) or not roster.admits(signer, fingerprint(cert)):
        raise WireError(f"via envelope: {signer[:64]} is not admitted by roster v{roster.version}")
    try:
        fields = signed_object(cert, sig, body, "via envelope", signer[:64])
    except IdentityError as exc:
        raise WireError(str(exc)) from None
    origin, to = value_of(fields, "from", str), value_of(fields, "to", str)
    message = value_of(fields, "message", dict)
    if origin != signer or ID_PATTERN.match(to) is None:
        raise WireError("via envelope: from is not the signer, or to is not a terminal id")
    value_of(fields, "at", str)
    if message.get("type") not in CARRIED_TYPES:
        raise WireError(f"via envelope: a {str(message.get('type'))[:32]!r} message is not carried")
    return Opened(origin, to, message)


def writer_of(envelope: dict[str, Any]) -> str | None:
    """The terminal the envelope's certificate names, unchecked (``None`` if it names none):
    whether the link it came on is its writer's decides who answers for a bad one."""
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(str(envelope.get("cert", ""))[:MAX_CERT * 2],
                                                                validate=True))
        return subject_of(cert)[0]
    except (binascii.Error, ValueError, IdentityError):
        return None
