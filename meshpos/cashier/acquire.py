"""When a terminal that failed to take a drawer tries again, waits, or gives up (sans-I/O).

One :class:`Acquisition` per request that needs the drawer.  The shell runs one
:class:`~meshpos.cashier.quorum.Holder` per attempt until it holds the drawer, the attempt's
deadline passes, or its own ledger copy grew meanwhile; after a failed attempt it releases it
(voters that promised it drop its lease at once) and asks :meth:`Acquisition.failed` what next:

* the voters answered with the ledger instead of a promise (this terminal was far behind, see
  ``quorum.PROMISE_MAX_ENTRIES``): prepare again at once from where it got to, for up to
  :data:`CATCH_UP_SECONDS`;
* another terminal's lease holds the drawer: a patient request (an API call) waits once - an
  idle holder releases within :data:`LOCK_WAIT_SECONDS` - jittered, so terminals refused together
  do not all come back together; then it fails with ``lock_failed``.  The reconciler is not
  patient: it fails at once and simply tries again later;
* outbid (a voter promised a higher ballot): prepare again, higher, up to :data:`MAX_REFUSALS`
  refusals in all;
* no majority answered in time: give up (``lock timeout``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from meshpos.cashier.quorum import RETRY_SECONDS, Deposed

#: Taking a drawer fails (503, code 4009) if a majority has not promised within this.
ACQUIRE_TIMEOUT = 2.0
#: A holder that appended nothing for this long gives the drawer up, so another terminal (or the
#: reconciler of one) takes it at once instead of waiting out the 10 s lease.
IDLE_RELEASE_SECONDS = 1.0
#: A request refused by another holder's lease waits this long once before failing (lock_failed).
LOCK_WAIT_SECONDS = IDLE_RELEASE_SECONDS + 2 * RETRY_SECONDS
#: How long a terminal far behind keeps preparing again from the ledger the voters sent it.
CATCH_UP_SECONDS = 30.0
#: Refusals (outbid or leased) after which an attempt gives up.
MAX_REFUSALS = 3


@dataclass(frozen=True, slots=True)
class Retry:
    """Prepare again (with a fresh ballot above every round heard of) after ``wait`` seconds."""

    wait: float = 0.0


@dataclass(frozen=True, slots=True)
class Locked:
    """Another terminal's lease holds the drawer (until ``until``, on this terminal's clock).
    ``report``: a patient request records ``lock_failed`` and says until when."""

    locked_by: str
    until: float
    report: bool


@dataclass(frozen=True, slots=True)
class TimedOut:
    """No majority promised in time.  ``report``: record ``lock_failed``."""

    report: bool


Decision = Retry | Locked | TimedOut


class Acquisition:
    def __init__(self, me: str, now: float, *, patient: bool = True) -> None:
        self.me, self.patient = me, patient
        self.refusals = 0
        self.catch_up_until = now + CATCH_UP_SECONDS

    @staticmethod
    def attempt(now: float) -> float:
        """An attempt starts now (a wait the last decision asked for is over): its deadline."""
        return now + ACQUIRE_TIMEOUT

    def failed(self, now: float, *, grown: bool, answered: bool, deposed: Deposed | None,
               rng: random.Random) -> Decision:
        """The attempt ended without the drawer.  ``grown``: this terminal's ledger copy grew
        while it prepared; ``answered``: the attempt ended by a majority's answer (or a reload)
        rather than by growth or the deadline; ``deposed``: the refusal, if one ended it."""
        if grown and not answered and now < self.catch_up_until:
            return Retry()
        if deposed is None:
            return TimedOut(self.patient)
        self.refusals += 1
        if deposed.until is not None and deposed.locked_by != self.me:
            if self.patient and self.refusals == 1:
                return Retry(max(0.0, min(deposed.until - now, LOCK_WAIT_SECONDS * rng.uniform(1.0, 1.5))))
            return Locked(deposed.locked_by, deposed.until, self.patient)
        if self.refusals >= MAX_REFUSALS:
            return TimedOut(self.patient)
        return Retry()
