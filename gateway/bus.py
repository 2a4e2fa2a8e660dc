"""Per-session ordered dispatch of journaled inbound messages.

One worker per active SessionKey runs turns one at a time (the session lock), workers run in
parallel under a global cap, and a session's state disappears as soon as its queue is empty,
so idle sessions cost nothing. The bus only carries journal ids: the journal stays the source of
truth, so anything in memory here can be lost in a crash and is rebuilt from the journal at start.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from gateway.admission import TurnLimit
from gateway.messages import SessionKey

log = logging.getLogger(__name__)

TurnHandler = Callable[[SessionKey, list[int]], Awaitable[None]]
Spawn = Callable[[Coroutine[Any, Any, None], str], object]


class PendingMode(enum.StrEnum):
    """What to do with messages that arrive while a session's turn is running."""

    SEQUENTIAL = "sequential"  # one turn per message, in order
    MERGE = "merge"  # everything waiting becomes the next single turn


@dataclass
class _Lane:
    queue: deque[int] = field(default_factory=deque)
    queued: set[int] = field(default_factory=set)


class SessionBus:
    """Routes inbound ids to per-session workers with ordering, a concurrency cap and backpressure."""

    def __init__(
        self,
        handler: TurnHandler,
        spawn: Spawn,
        *,
        max_concurrency: int = 32,
        limit: TurnLimit | None = None,
        max_backlog: int = 10_000,
        mode: PendingMode = PendingMode.SEQUENTIAL,
        retry_delay: float = 1.0,
    ) -> None:
        self._handler = handler
        self._spawn = spawn
        self._slots = limit or TurnLimit(max_concurrency)
        self._max_backlog = max_backlog
        self._mode = mode
        self._retry_delay = retry_delay
        self._lanes: dict[SessionKey, _Lane] = {}
        self._backlog = 0
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def backlog(self) -> int:
        """Messages queued or in a running turn."""
        return self._backlog

    @property
    def running(self) -> int:
        """Turns executing right now."""
        return self._running

    @property
    def active_sessions(self) -> int:
        """Sessions with queued or running work."""
        return len(self._lanes)

    def has_capacity(self) -> bool:
        """False when the backlog is full: callers should refuse new work (HTTP 503) before journaling."""
        return self._backlog < self._max_backlog

    def submit(self, key: SessionKey, inbound_id: int) -> None:
        """Queue an already-journaled message for its session (idempotent per id)."""
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
            self._spawn(self._work(key, lane), f"session:{key}")
        if inbound_id in lane.queued:
            return
        lane.queue.append(inbound_id)
        lane.queued.add(inbound_id)
        self._backlog += 1
        self._idle.clear()

    async def wait_idle(self) -> None:
        """Return once no message is queued or running (used for draining and tests)."""
        await self._idle.wait()

    def _take(self, lane: _Lane) -> list[int]:
        if self._mode is PendingMode.MERGE:
            ids = list(lane.queue)
            lane.queue.clear()
        else:
            ids = [lane.queue.popleft()]
        return ids

    async def _work(self, key: SessionKey, lane: _Lane) -> None:
        try:
            while lane.queue:
                ids = self._take(lane)
                async with self._slots.slot():
                    self._running += 1
                    try:
                        await self._run_until_done(key, ids)
                    finally:
                        self._running -= 1
                for i in ids:
                    lane.queued.discard(i)
                self._backlog -= len(ids)
        finally:
            if self._lanes.get(key) is lane:
                del self._lanes[key]
            if not self._lanes:
                self._idle.set()

    async def _run_until_done(self, key: SessionKey, ids: list[int]) -> None:
        """A failing turn is retried with growing delays; the handler gives up on poison messages."""
        delay = self._retry_delay
        while True:
            try:
                await self._handler(key, ids)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("turn failed for session %s (inbound %s); retrying in %.1fs", key, ids, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
