"""Log lines a stranger can cause, at most a few per second per source.

A hostile or broken peer can be refused a thousand times a second; one log line each would fill
the disk and bury everything else.  Each source (an address, a peer id) gets a token bucket; what
it would have logged beyond that is counted and reported with its next line that gets through.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

#: Sources remembered at once; the least recently heard is forgotten first.
MAX_SOURCES = 1024


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, *, per_second: float = 2.0, burst: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.per_second, self.burst, self.clock = logger, per_second, burst, clock
        #: source -> [tokens, when they were counted, lines suppressed since the last one logged]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def log(self, source: str, level: int, message: str, *args: object,
            exc_info: BaseException | None = None) -> bool:
        """Log ``message % args`` unless ``source`` is over its rate; ``True`` if it was logged."""
        now = self.clock()
        bucket = self._buckets.pop(source, None)
        if bucket is None:
            bucket = [self.burst, now, 0]
        self._buckets[source] = bucket
        while len(self._buckets) > MAX_SOURCES:
            self._buckets.popitem(last=False)
        bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.per_second)
        bucket[1] = now
        if bucket[0] < 1.0:
            bucket[2] += 1
            return False
        bucket[0] -= 1.0
        suppressed, bucket[2] = int(bucket[2]), 0
        if suppressed:
            who = source.replace("%", "%%")
            message += f" (and {suppressed} similar line{'s' if suppressed > 1 else ''} from {who} suppressed)"
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True
