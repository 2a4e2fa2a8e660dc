"""In-memory cache of session histories in front of the SessionStore.

Load only under the session's lock (the bus runs one turn per session at a time), after the
lock is taken, so a turn never sees history from before the previous turn committed
(aiogram #1317). Idle entries are evicted so memory tracks active users, not all users.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.messages import SessionKey
from gateway.store.interfaces import HistoryMessage, SessionStore


@dataclass
class SessionState:
    """A session's recent history as the agent sees it."""

    key: SessionKey
    history: list[HistoryMessage] = field(default_factory=list)
    last_used: float = 0.0


class SessionManager:
    """Loads, caches and evicts per-session state."""

    def __init__(
        self,
        store: SessionStore,
        *,
        history_limit: int = 20,
        idle_seconds: float = 600.0,
        max_cached: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._history_limit = history_limit
        self._idle_seconds = idle_seconds
        self._max_cached = max_cached
        self._clock = clock
        self._cache: OrderedDict[SessionKey, SessionState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    async def load(self, key: SessionKey) -> SessionState:
        """The session's state; call only while holding the session's turn lock."""
        state = self._cache.get(key)
        if state is None:
            history = await self._store.history(key, self._history_limit)
            state = SessionState(key=key, history=history)
            self._cache[key] = state
        self._cache.move_to_end(key)
        state.last_used = self._clock()
        self._trim()
        return state

    def record(self, key: SessionKey, messages: Sequence[HistoryMessage]) -> None:
        """Mirror a committed turn into the cache (call after the store committed it)."""
        state = self._cache.get(key)
        if state is None:
            return
        state.history.extend(messages)
        del state.history[: max(0, len(state.history) - self._history_limit)]
        state.last_used = self._clock()

    def forget(self, key: SessionKey) -> None:
        """Drop a cached session (e.g. when its turn failed before committing)."""
        self._cache.pop(key, None)

    def evict_idle(self) -> int:
        """Drop sessions unused for `idle_seconds`; returns how many were evicted."""
        cutoff = self._clock() - self._idle_seconds
        stale = [k for k, s in self._cache.items() if s.last_used < cutoff]
        for k in stale:
            del self._cache[k]
        return len(stale)

    def _trim(self) -> None:
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
