"""SessionBus: per-session order, cross-session parallelism, cap, merge mode, retries, eviction."""

from __future__ import annotations

import asyncio

from gateway.bus import PendingMode, SessionBus
from gateway.messages import SessionKey
from gateway.tasks import TaskTracker


def key(user: str) -> SessionKey:
    return SessionKey(platform="t", bot_id="b", chat_id="", user_id=user)


async def test_one_session_runs_in_order_one_at_a_time() -> None:
    tasks = TaskTracker()
    seen: list[int] = []
    running = 0
    peak = 0

    async def handler(_k: SessionKey, ids: list[int]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001)
        seen.extend(ids)
        running -= 1

    bus = SessionBus(handler, tasks.spawn)
    for i in range(50):
        bus.submit(key("u"), i)
    await asyncio.wait_for(bus.wait_idle(), 5)
    assert seen == list(range(50))
    assert peak == 1
    assert bus.active_sessions == 0, "idle sessions leave no state behind"
    assert bus.backlog == 0


async def test_sessions_run_in_parallel_under_the_cap() -> None:
    tasks = TaskTracker()
    running = 0
    peak = 0
    release = asyncio.Event()

    async def handler(_k: SessionKey, _ids: list[int]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    bus = SessionBus(handler, tasks.spawn, max_concurrency=8)
    for u in range(200):
        bus.submit(key(f"u{u}"), u)
    await asyncio.sleep(0.05)
    assert peak == 8
    release.set()
    await asyncio.wait_for(bus.wait_idle(), 5)
    assert bus.backlog == 0


async def test_merge_mode_folds_waiting_messages_into_next_turn() -> None:
    tasks = TaskTracker()
    turns: list[list[int]] = []
    first_started = asyncio.Event()
    release = asyncio.Event()

    async def handler(_k: SessionKey, ids: list[int]) -> None:
        turns.append(ids)
        first_started.set()
        await release.wait()

    bus = SessionBus(handler, tasks.spawn, mode=PendingMode.MERGE)
    bus.submit(key("u"), 1)
    await first_started.wait()
    for i in (2, 3, 4):
        bus.submit(key("u"), i)
    release.set()
    await asyncio.wait_for(bus.wait_idle(), 5)
    assert turns == [[1], [2, 3, 4]]


async def test_duplicate_submit_is_ignored_and_backpressure_reported() -> None:
    tasks = TaskTracker()
    gate = asyncio.Event()
    calls: list[list[int]] = []

    async def handler(_k: SessionKey, ids: list[int]) -> None:
        calls.append(ids)
        await gate.wait()

    bus = SessionBus(handler, tasks.spawn, max_backlog=3)
    bus.submit(key("u"), 1)
    bus.submit(key("u"), 2)
    bus.submit(key("u"), 2)
    assert bus.backlog == 2 and bus.has_capacity()
    bus.submit(key("v"), 3)
    assert not bus.has_capacity()
    gate.set()
    await asyncio.wait_for(bus.wait_idle(), 5)
    assert sorted(calls) == [[1], [2], [3]]
    assert bus.has_capacity()


async def test_failed_turn_is_retried_until_it_succeeds() -> None:
    tasks = TaskTracker()
    attempts = 0

    async def handler(_k: SessionKey, _ids: list[int]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RuntimeError("transient bug")

    bus = SessionBus(handler, tasks.spawn, retry_delay=0.01)
    bus.submit(key("u"), 1)
    await asyncio.wait_for(bus.wait_idle(), 5)
    assert attempts == 3
