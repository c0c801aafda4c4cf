"""What a terminal advertises over mDNS, what it makes of another's advertisement, and why.

Sans-I/O: :mod:`discovery.mdns` feeds this module the raw TXT properties and addresses zeroconf
resolved; everything that decides (is it ours, do we dial it, why is it not linked) is here and
tested without a network.  An advertisement is only a hint of *where* a terminal is: anyone on
the LAN can send one, so nothing in it is trusted beyond choosing whom to dial - the TLS link
proves who answers (docs/protocol.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from peer.identity import Roster

SERVICE_TYPE = "_meshpos._tcp.local."
#: TXT keys (short: every terminal repeats them in every answer).
TXT_STORE, TXT_ID, TXT_TYPE, TXT_PROTOCOL, TXT_FINGERPRINT = "store", "id", "type", "proto", "fp"
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")
_HEX = re.compile(r"[0-9a-f]+")


def instance_name(terminal_id: str, store_id: str) -> str:
    """``<terminal id>@<store id>``: readable in any mDNS browser, and two restaurants in one mall
    whose terminals share ids ("pos-1") do not collide.  DNS-SD instance labels hold 63 bytes."""
    return f"{terminal_id.replace('.', '-')[:46]}@{store_id}.{SERVICE_TYPE}"


def host_name(terminal_id: str, store_id: str) -> str:
    """The A-record name: a DNS label allows only letters, digits and hyphens."""
    safe = _LABEL_UNSAFE.sub("-", terminal_id).strip("-")[:38] or "terminal"
    return f"meshpos-{safe}-{store_id}.local."


def txt_record(*, store_id: str, terminal_id: str, terminal_type: str, protocol: int,
               fingerprint: str) -> dict[str, str]:
    return {TXT_STORE: store_id, TXT_ID: terminal_id, TXT_TYPE: terminal_type,
            TXT_PROTOCOL: str(protocol), TXT_FINGERPRINT: fingerprint}


class BadAdvert(ValueError):
    """An advertisement of our service type that is not a meshpos terminal's (logged, ignored)."""


@dataclass(slots=True)
class Sighting:
    """One terminal as discovery last saw it."""

    name: str
    terminal_id: str
    store_id: str
    type: str
    protocol: int
    fingerprint: str
    addresses: list[str]
    port: int
    first_seen: str
    last_seen: str
    #: False once the terminal said goodbye (or its records expired); kept so operators see it.
    present: bool = True
    gone_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dial_addresses(self) -> list[str]:
        """``HOST:PORT`` for each advertised IPv4 address (the mesh tries them in turn)."""
        return [f"{address}:{self.port}" for address in self.addresses]


def parse_advert(name: str, properties: dict[bytes, bytes | None], addresses: list[str], port: int,
                 *, at: str) -> Sighting:
    """A :class:`Sighting` from a resolved service, or :class:`BadAdvert` saying what is wrong."""
    txt: dict[str, str] = {}
    for key, value in properties.items():
        try:
            txt[key.decode()] = "" if value is None else value.decode()
        except UnicodeDecodeError:
            raise BadAdvert(f"{name}: TXT entry {key!r} is not UTF-8") from None
    missing = [k for k in (TXT_STORE, TXT_ID, TXT_TYPE, TXT_PROTOCOL, TXT_FINGERPRINT) if not txt.get(k)]
    if missing:
        raise BadAdvert(f"{name}: TXT record lacks {', '.join(missing)}")
    if not (txt[TXT_PROTOCOL].isascii() and txt[TXT_PROTOCOL].isdigit()):
        raise BadAdvert(f"{name}: protocol {txt[TXT_PROTOCOL]!r} is not a number")
    if not _HEX.fullmatch(txt[TXT_STORE]) or not _HEX.fullmatch(txt[TXT_FINGERPRINT]):
        raise BadAdvert(f"{name}: store id and fingerprint must be lowercase hex")
    if not 0 < port < 65536:
        raise BadAdvert(f"{name}: port {port} is out of range")
    return Sighting(name=name, terminal_id=txt[TXT_ID], store_id=txt[TXT_STORE], type=txt[TXT_TYPE],
                    protocol=int(txt[TXT_PROTOCOL]), fingerprint=txt[TXT_FINGERPRINT],
                    addresses=[a for a in addresses if ":" not in a], port=port, first_seen=at, last_seen=at)


def refusal_to_dial(sighting: Sighting, *, me: str, store_id: str, roster: Roster, protocol: int) -> str | None:
    """Why this terminal will not dial ``sighting`` (``None``: dial it).

    A terminal the local roster does not know is still dialled: its hello may carry a newer
    roster that enrols it, and the link refuses it with 4003 otherwise.
    """
    if sighting.store_id != store_id:
        return f"other store ({sighting.store_id})"
    if sighting.terminal_id == me:
        return "this terminal's own advertisement (another box with a copy of this data directory?)"
    if roster.is_revoked(sighting.terminal_id):
        return f"revoked (roster v{roster.version})"
    if sighting.protocol != protocol:
        return f"speaks protocol {sighting.protocol}; this terminal speaks {protocol}"
    if not sighting.addresses:
        return "advertises no IPv4 address"
    return None
