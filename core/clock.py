"""Time and identifiers, injectable so a simulator can drive a terminal on virtual time."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

Clock = Callable[[], datetime]
#: Where ids get their randomness: ``n`` -> ``n`` bytes.  A terminal is given one (a simulation
#: seeds it, so one seed makes the same orders and items); everything else uses :func:`id_bytes`.
IdSource = Callable[[int], bytes]
_B32 = "0123456789abcdefghjkmnpqrstvwxyz"


def system_clock() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """UTC ISO-8601 with milliseconds and a ``Z``: sortable as text, readable in JavaScript."""
    d = dt.astimezone(UTC)
    return (f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}."
            f"{d.microsecond // 1000:03d}Z")


#: Ids need uniqueness, not secrecy: a generator seeded from the OS (and reseeded in a forked
#: child, which would otherwise repeat its parent's ids) costs no system call per id.
_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def id_bytes(n: int) -> bytes:
    return _ids.randbytes(n)


#: Byte -> base32 digit (256 is a multiple of 32: every digit equally likely).
_B32_OF_BYTE = bytes(ord(_B32[b % 32]) for b in range(256))


def random_id(length: int = 10, rand: IdSource = id_bytes) -> str:
    """Crockford-style base32 id: unique enough across terminals without coordination."""
    return rand(length).translate(_B32_OF_BYTE).decode()


def time_id(now: datetime, rand: IdSource = id_bytes) -> str:
    """Time-ordered id (ms timestamp + 50 random bits): sorts by creation, unique across terminals."""
    ms = int(now.timestamp() * 1000)
    head = []
    for _ in range(9):
        ms, rem = divmod(ms, 32)
        head.append(_B32[rem])
    return "".join(reversed(head)) + random_id(10, rand)


#: Our base32 digits -> Python's (``int(text, 32)`` reads ``0-9a-v``).
_B32_TO_PYTHON = str.maketrans(_B32, "0123456789abcdefghijklmnopqrstuv")


def time_of_id(value: str) -> float | None:
    """The instant a :func:`time_id` names, in seconds since the epoch (to the millisecond), read
    from its first 9 characters without parsing anything else; ``None`` if they are not base32.
    Hot: the propagation metric reads it for every order a peer creates."""
    head = value[:9]
    if len(head) < 9 or head.strip(_B32):  # strip leaves nothing only if every character is a digit
        return None
    return int(head.translate(_B32_TO_PYTHON), 32) / 1000


class BusinessCalendar:
    """Maps instants to business days: a day runs from ``rollover`` local time to the next.

    A restaurant open past midnight keeps one business day for the whole service; the default
    rollover is 04:00 in the store's time zone.
    """

    def __init__(self, tz: str = "UTC", rollover_hour: int = 4) -> None:
        if not 0 <= rollover_hour <= 23:
            raise ValueError("rollover_hour must be 0..23")
        self.tz = ZoneInfo(tz)
        self.rollover = timedelta(hours=rollover_hour)

    def day_of(self, instant: datetime) -> date:
        return (instant.astimezone(self.tz) - self.rollover).date()
