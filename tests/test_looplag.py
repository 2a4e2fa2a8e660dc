"""Event-loop lag monitor."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.looplag import monitor_event_loop_lag


async def test_blocking_the_loop_is_reported() -> None:
    lags: list[float] = []
    stop = asyncio.Event()
    monitor = asyncio.create_task(monitor_event_loop_lag(lags.append, interval=0.01, stop=stop))
    await asyncio.sleep(0.05)  # let it take a few idle samples first

    async def blocker() -> None:
        time.sleep(0.2)  # noqa: ASYNC251 - deliberately blocks the event loop

    await asyncio.create_task(blocker())
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(monitor, 1.0)

    assert max(lags) >= 0.15, lags
    assert max(lags) < 1.0, lags


async def test_idle_loop_reports_small_non_negative_lag() -> None:
    lags: list[float] = []
    stop = asyncio.Event()
    monitor = asyncio.create_task(monitor_event_loop_lag(lags.append, interval=0.05, stop=stop))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(monitor, 1.0)

    assert len(lags) >= 3, lags
    assert all(lag >= 0.0 for lag in lags), lags
    # lag excludes the interval itself: reporting elapsed time (>= 0.05) would fail here
    assert min(lags) < 0.025, lags


async def test_stop_ends_monitor_promptly_without_waiting_full_interval() -> None:
    lags: list[float] = []
    stop = asyncio.Event()
    monitor = asyncio.create_task(monitor_event_loop_lag(lags.append, interval=30.0, stop=stop))
    await asyncio.sleep(0.02)
    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(monitor, 1.0)
    assert time.monotonic() - started < 0.5
    assert lags == []
    assert monitor.exception() is None


async def test_already_set_stop_returns_immediately() -> None:
    stop = asyncio.Event()
    stop.set()
    calls: list[float] = []
    await asyncio.wait_for(monitor_event_loop_lag(calls.append, interval=30.0, stop=stop), 0.5)
    assert calls == []


async def test_without_stop_runs_until_cancelled() -> None:
    lags: list[float] = []
    monitor = asyncio.create_task(monitor_event_loop_lag(lags.append, interval=0.01))
    await asyncio.sleep(0.1)
    monitor.cancel()
    with pytest.raises(asyncio.CancelledError):
        await monitor
    assert len(lags) >= 2


async def test_cancel_with_stop_event_cleans_up_waiter() -> None:
    stop = asyncio.Event()
    monitor = asyncio.create_task(monitor_event_loop_lag(lambda _lag: None, interval=30.0, stop=stop))
    await asyncio.sleep(0.01)
    before = len(asyncio.all_tasks())
    monitor.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(monitor, 1.0)  # a hang here would surface as TimeoutError
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before - 2  # the monitor and its stop.wait() helper


async def test_rejects_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        await monitor_event_loop_lag(lambda _lag: None, interval=0)
