"""Per-member send pacing: WeCom silently drops app messages above 30/min or 1,000/h per member.

A dropped message is indistinguishable from a delivered one (errcode 0), so the only safe policy
is to never exceed the limits: a send that would is refused with RateLimited (the outbox keeps it
and retries after the wait), which queues the answer instead of losing it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

WINDOWS: tuple[tuple[float, int], ...] = ((60.0, 30), (3600.0, 1000))


class MemberPacer:
    """Sliding windows of recent sends per (bot, member)."""

    def __init__(
        self, windows: tuple[tuple[float, int], ...] = WINDOWS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._windows = windows
        self._clock = clock
        self._longest = max(w for w, _ in windows)
        self._sent: dict[tuple[str, str], collections.deque[float]] = {}

    def wait_needed(self, bot_id: str, member: str) -> float:
        """Seconds until one more message to `member` fits every window (0 = send now)."""
        now = self._clock()
        history = self._prune((bot_id, member), now)
        wait = 0.0
        for seconds, limit in self._windows:
            recent = [t for t in history if t > now - seconds]
            if len(recent) >= limit:
                wait = max(wait, recent[-limit] + seconds - now)
        return wait

    def record(self, bot_id: str, member: str) -> None:
        """Count a message the platform accepted."""
        self._sent.setdefault((bot_id, member), collections.deque()).append(self._clock())

    def _prune(self, key: tuple[str, str], now: float) -> collections.deque[float]:
        history = self._sent.get(key)
        if history is None:
            return collections.deque()
        while history and history[0] <= now - self._longest:
            history.popleft()
        if not history:
            del self._sent[key]
        return history
