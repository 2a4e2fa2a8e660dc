"""Per-conversation send pacing: DingTalk throttles a robot for 10 minutes past 20 messages a minute.

A throttled robot is silent in that conversation for ten minutes, so it is far cheaper to hold the
21st message back for a few seconds: the outbox retries it after `retry_after` (RateLimited), in
order, and nothing is dropped.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from gateway.errors import RateLimited

WINDOW = 60.0


class ConversationPacer:
    """At most `per_minute` sends per conversation in any 60 s window."""

    def __init__(
        self, per_minute: float, *, clock: Callable[[], float] = time.monotonic, max_conversations: int = 10_000
    ) -> None:
        self._limit = per_minute
        self._clock = clock
        self._max = max_conversations
        self._sent: dict[str, deque[float]] = {}

    def check(self, conversation_id: str) -> None:
        """Raise RateLimited (with the wait) when one more send now would exceed the limit."""
        window = self._sent.get(conversation_id)
        if window is None:
            return
        now = self._clock()
        while window and window[0] <= now - WINDOW:
            window.popleft()
        if len(window) >= self._limit:
            wait = window[0] + WINDOW - now
            raise RateLimited(f"pacing conversation {conversation_id}", code="paced", retry_after=max(wait, 0.01))

    def sent(self, conversation_id: str) -> None:
        """Count a send that went out."""
        self._sent.setdefault(conversation_id, deque()).append(self._clock())
        if len(self._sent) > self._max:  # forget conversations idle for a whole window
            cutoff = self._clock() - WINDOW
            self._sent = {c: w for c, w in self._sent.items() if w and w[-1] > cutoff}
