"""The ``roster`` target: mutations of a really signed roster into ``verify_roster``."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from simulations import hostile
from simulations.fuzz.settings import ISO
from simulations.fuzz.target import Target, encoded
from simulations.fuzz.values import dump_json, mutate_bytes, mutate_text, mutate_value


class RosterTarget(Target):
    """A store authority made from the seed (its key and the signatures are deterministic), so a
    saved input verifies the same in any process."""

    name = "roster"

    def __init__(self, seed: int, plant: int | None = None) -> None:
        super().__init__(seed, plant)
        from cryptography import x509  # noqa: PLC0415
        from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
        from cryptography.x509.oid import NameOID  # noqa: PLC0415

        from peer.identity import store_id_of  # noqa: PLC0415

        secret = int.from_bytes(hashlib.sha256(f"{seed}:authority".encode()).digest(), "big")
        self.key = ec.derive_private_key(secret % (2**255) + 1, ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshpos store authority: fuzz")])
        moment = datetime(2026, 1, 1, tzinfo=UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(1).not_valid_before(moment).not_valid_after(moment + timedelta(days=3650))
                     .sign(self.key, hashes.SHA256(), ecdsa_deterministic=True))
        self.store_id = store_id_of(self.cert)
        self._hashes, self._ec = hashes, ec

    def sign(self, body: str) -> bytes:
        signature = self.key.sign(body.encode("utf-8", "surrogatepass"),
                                  self._ec.ECDSA(self._hashes.SHA256(), deterministic_signing=True))
        return json.dumps({"body": body, "signature": base64.b64encode(signature).decode()}, indent=1).encode()

    def body(self, rng: random.Random) -> dict[str, Any]:
        terminals = {f"pos-{k}": {"type": rng.choice(["pos", "pos", "kds", "waiter"]),
                                  "fingerprint": hashlib.sha256(f"{k}".encode()).hexdigest()}
                     for k in range(rng.randint(0, 5))}
        revoked = {tid: {"fingerprint": e["fingerprint"]} for tid, e in terminals.items() if rng.random() < 0.2}
        return {"store_id": self.store_id, "store_name": "fuzz", "version": rng.randint(1, 9), "issued_at": ISO,
                "terminals": terminals, "revoked": revoked}

    def generate(self, index: int) -> bytes:
        rng = self.rng(index)
        body = self.body(rng)
        r = rng.random()
        if r < 0.15:
            return self.sign(json.dumps(body, sort_keys=True, separators=(",", ":")))
        if r < 0.5:  # a body mutation behind a valid signature: the parsing after the check runs
            return self.sign(dump_json(mutate_value(body, rng, max_nesting=40), rng))
        if r < 0.6:
            return self.sign(mutate_text(json.dumps(body), rng))
        if r < 0.65:
            depth = rng.choice([31, 32, 33, 1000, 100_000])
            return self.sign(hostile.deep_json(depth, '{{"store_id":"x","terminals":{}}}'))
        signed = self.sign(json.dumps(body, sort_keys=True, separators=(",", ":")))
        if r < 0.85:
            return mutate_bytes(signed, rng)
        outer = json.loads(signed)
        if r < 0.95:
            return dump_json(mutate_value(outer, rng), rng).encode("utf-8", "surrogatepass")
        return rng.choice([b"", b"{}", b"[]", b"null", hostile.deep_json(100_000, "{}").encode(),
                           b'{"body":"{}","signature":"' + b"A" * 600_000 + b'"}', b"\xff\xfe", signed[:-1],
                           signed.replace(b'"body"', b'"body":"x","body"', 1)])

    def run(self, data: bytes) -> str:
        from peer.identity import IdentityError, newer_roster, verify_roster  # noqa: PLC0415

        try:
            roster = verify_roster(data, self.cert)
        except IdentityError:
            return "refused"
        roster.voters()  # what the cashier and the mesh ask of an adopted roster
        for tid in list(roster.terminals)[:5] + ["pos-1", "nobody"]:
            roster.admits(tid, "00" * 32)
            roster.is_revoked(tid)
        newer_roster(roster, data, self.cert)
        encoded({"terminals": roster.terminals, "revoked": roster.revoked, "version": roster.version})
        return "accepted"
