"""Per-credential token buckets: ``burst`` requests at once, refilled at ``per_minute``.

In-process and approximate by design: each replica limits on its own, which bounds abuse of
one key without a shared store on the request path.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from mlharbor.core.errors import LimitExceededError

MAX_TRACKED = 100_000


class RateLimiter:
    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, key: str) -> None:
        """Take one token for ``key`` or raise LimitExceededError with Retry-After."""
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise LimitExceededError(
                    f"Too many requests for this credential: the limit is "
                    f"{self.rate * 60:.0f} per minute (bursts of {self.burst:.0f}).",
                    hint=f"Retry after {wait:.1f} s.",
                    retry_after=wait,
                )
            self._buckets[key] = (tokens - 1.0, now)
            while len(self._buckets) > MAX_TRACKED:
                self._buckets.popitem(last=False)
