"""Event-loop lag monitor: how late does a timed wake-up actually happen?"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


async def monitor_event_loop_lag(
    report: Callable[[float], None],
    *,
    interval: float = 0.5,
    stop: asyncio.Event | None = None,
) -> None:
    """Every ``interval`` seconds call ``report(lag_seconds)``; return promptly once ``stop`` is set.

    Lag is how much later than scheduled the loop woke us (never negative). Runs forever
    without ``stop`` (cancel the task). Exceptions from ``report`` propagate.
    """
    if interval <= 0:
        raise ValueError("interval must be positive")
    loop = asyncio.get_running_loop()
    stop_waiter: asyncio.Task[bool] | None = None
    if stop is not None:
        if stop.is_set():
            return
        stop_waiter = asyncio.create_task(stop.wait())
    try:
        while True:
            started = loop.time()
            if stop_waiter is None:
                await asyncio.sleep(interval)
            else:
                await asyncio.wait({stop_waiter}, timeout=interval)
                if stop_waiter.done():
                    return
            report(max(0.0, loop.time() - started - interval))
    finally:
        if stop_waiter is not None and not stop_waiter.done():
            stop_waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop_waiter
