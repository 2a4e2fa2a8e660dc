"""How many turns may start now: acks come first when the one event loop is saturated.

One process both acks inbound messages and runs turns. A turn costs that loop milliseconds of
CPU (session load, commit, outbox, the model call's plumbing) while an ack costs a fraction of
one, so under a burst running turns at full width makes acks queue behind them: ack latency
grows until platforms time out and redeliver, which only adds load. The journal exists to
absorb bursts, so the right trade is to let turns wait, not acks.

`AdaptiveTurnLimit` keeps the number of running turns between a floor and the configured cap
with AIMD (as TCP does with its window): a timer measures how late the loop wakes it; when the
lag is over the target the limit halves, and each quiet period it grows by one back to the cap.
Running turns are never interrupted; only new ones wait. With slow real models the loop is idle
while turns wait on the network, the lag stays low and the cap applies as configured.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable


class TurnLimit:
    """A fixed number of turns at once (the behaviour without adaptation)."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("the turn cap must be at least 1")
        self.cap = cap
        self._limit = cap
        self._running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        """Turns allowed to run at once right now."""
        return self._limit

    @property
    def running(self) -> int:
        """Turns holding a slot."""
        return self._running

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one turn slot (FIFO among waiters)."""
        if self._running >= self._limit or self._waiters:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():  # woken and cancelled at once: pass the slot on
                    self._running -= 1
                    self._wake()
                else:  # `_wake` may already have dropped it (it skips cancelled futures)
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(fut)
                raise
        else:
            self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            self._wake()

    def _set_limit(self, limit: int) -> None:
        self._limit = limit
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._running < self._limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self._running += 1  # the slot is handed over before the waiter runs
                fut.set_result(None)


class AdaptiveTurnLimit(TurnLimit):
    """TurnLimit whose limit follows the event loop's lag (see the module docstring)."""

    def __init__(
        self,
        cap: int,
        *,
        floor: int = 1,
        lag_target: float = 0.005,
        period: float = 0.02,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(cap)
        if not 1 <= floor <= cap:
            raise ValueError("floor must be between 1 and the cap")
        self.floor = floor
        self.lag_target = lag_target
        self.period = period
        self._on_change = on_change

    def observe(self, lag: float) -> None:
        """Adjust the limit after one probe that woke `lag` seconds late."""
        if lag > self.lag_target:
            new = max(self.floor, self._limit // 2)
        elif lag <= self.lag_target / 2:
            new = min(self.cap, self._limit + 1)
        else:
            return
        if new != self._limit:
            self._set_limit(new)
            if self._on_change is not None:
                self._on_change(new)

    async def run(self, stop: asyncio.Event) -> None:
        """Probe the loop every `period` until `stop` is set (a plain job: the app spawns it)."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            await asyncio.sleep(self.period)
            self.observe(max(0.0, loop.time() - started - self.period))
