"""The names of the enrollment files in a data directory, and whether there are any.

Apart from :mod:`peer.identity` so that a terminal that is not enrolled can find that out without
loading ``cryptography`` (~12 MB of RSS it would never use, docs/performance.md).
"""

from __future__ import annotations

from pathlib import Path

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
ROSTER = "roster.json"
TERMINAL_KEY = "terminal.key"
TERMINAL_CERT = "terminal.crt"
STORE_CA_CERT = "store-ca.crt"


def has_identity(data_dir: Path) -> bool:
    return (data_dir / TERMINAL_CERT).exists() or (data_dir / TERMINAL_KEY).exists()
