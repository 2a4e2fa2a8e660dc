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
        self._seen: collections.OrderedDict[str, tuple[frozenset[bytes], float]] = collections.OrderedDict()

    def admit(self, signature: str, nonce: str, body: bytes, *, may_add: bool = False) -> bool:
        """False when this signed query was seen before with a different body.

        `may_add`: the caller knows a second genuine body is plausible for this query right now (DingTalk signs
        only a millisecond timestamp, so two callbacks in one millisecond share it); the body is then admitted
        and remembered too, so its own retries pass later.
        """
        return self.admit_digest(signature, nonce, hashlib.sha256(body).digest(), may_add=may_add)

    def digests(self, signature: str, nonce: str) -> frozenset[bytes]:
        """The body digests admitted so far for this signed query."""
        seen = self._seen.get(f"{signature}\x1f{nonce}")
        return seen[0] if seen is not None else frozenset()

    def admit_digest(self, signature: str, nonce: str, digest: bytes, *, may_add: bool = False) -> bool:
        """`admit` for a body known by its SHA-256 digest (e.g. one recorded before a restart)."""
        now = self._clock()
        while self._seen:
            _, (_, at) = next(iter(self._seen.items()))
            if len(self._seen) < self._capacity and at > now - self._ttl:
                break
            self._seen.popitem(last=False)
        key = f"{signature}\x1f{nonce}"
        seen = self._seen.get(key)
        if seen is not None:
            if digest in seen[0]:
                return True
            if not may_add:
                return False
            self._seen[key] = (seen[0] | {digest}, seen[1])
            return True
        self._seen[key] = (frozenset({digest}), now)
        return True
