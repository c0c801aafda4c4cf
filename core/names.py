"""Names every layer checks the same way."""

from __future__ import annotations

import re

#: Ids of skus, tables and terminals: safe in composite keys ("sku/replica") and URLs.
#: ``\Z``, not ``$``: ``$`` also matches before a final newline, so every ``ID_PATTERN.match``
#: would take ``"T1\n"`` for an id.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")
