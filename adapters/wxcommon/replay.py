"""Refuses a signed query reused with a different body (WeChat's plain-mode signature omits the body).

The platform's own retries resend the identical request, so the same (signature, nonce) with the
same body is fine (the journal dedupes it); with another body it is a replay of a leaked URL.
"""

from __future__ import annotations

import collections
import hashlib
import time
from collections.abc import Callable


class ReplayGuard:
    """Remembers which body each signed query carried, for the timestamp window."""

    def __init__(self, ttl: float, capacity: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._clock = clock
        self._seen: collections.OrderedDict[str, tuple[bytes, float]] = collections.OrderedDict()

    def admit(self, signature: str, nonce: str, body: bytes) -> bool:
        """False when this signed query was seen before with a different body."""
        now = self._clock()
        while self._seen:
            _, (_, at) = next(iter(self._seen.items()))
            if len(self._seen) < self._capacity and at > now - self._ttl:
                break
            self._seen.popitem(last=False)
        key = f"{signature}\x1f{nonce}"
        digest = hashlib.sha256(body).digest()
        seen = self._seen.get(key)
        if seen is not None:
            return seen[0] == digest
        self._seen[key] = (digest, now)
        return True
