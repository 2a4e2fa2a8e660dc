"""Turn admission: a fixed cap, and the adaptive limit that gives acks priority over new turns."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.admission import AdaptiveTurnLimit, TurnLimit


async def _hold(limit: TurnLimit, gate: asyncio.Event, order: list[int], n: int, peak: list[int]) -> None:
    async with limit.slot():
        order.append(n)
        peak[0] = max(peak[0], limit.running)
        await gate.wait()


async def test_fixed_limit_caps_running_turns_and_admits_in_arrival_order() -> None:
    limit = TurnLimit(3)
    gate = asyncio.Event()
    order: list[int] = []
    peak = [0]
    tasks = [asyncio.create_task(_hold(limit, gate, order, n, peak)) for n in range(10)]
    await asyncio.sleep(0.01)
    assert limit.running == 3 and order == [0, 1, 2]
    gate.set()
    await asyncio.gather(*tasks)
    assert peak[0] == 3
    assert order == list(range(10))
    assert limit.running == 0


async def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    limit = TurnLimit(1)
    gate = asyncio.Event()
    order: list[int] = []
    peak = [0]
    first = asyncio.create_task(_hold(limit, gate, order, 0, peak))
    waiter = asyncio.create_task(_hold(limit, gate, order, 1, peak))
    await asyncio.sleep(0.01)
    waiter.cancel()
    gate.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limit.running == 0
    late = asyncio.create_task(_hold(limit, gate, order, 2, peak))
    await asyncio.wait_for(late, 1)
    assert order == [0, 2]


async def test_a_waiter_cancelled_right_after_being_woken_passes_its_slot_on() -> None:
    limit = TurnLimit(1)
    gate = asyncio.Event()
    gate.set()
    order: list[int] = []
    peak = [0]
    held = limit.slot()
    await held.__aenter__()
    second = asyncio.create_task(_hold(limit, gate, order, 1, peak))
    third = asyncio.create_task(_hold(limit, gate, order, 2, peak))
    await asyncio.sleep(0.01)
    await held.__aexit__(None, None, None)  # hands the slot to `second`, which has not run yet
    second.cancel()
    await asyncio.wait_for(third, 1)
    assert order == [2]
    assert limit.running == 0


def test_lag_over_target_halves_the_limit_down_to_the_floor_and_quiet_grows_it_back() -> None:
    seen: list[int] = []
    limit = AdaptiveTurnLimit(32, floor=2, lag_target=0.005, on_change=seen.append)
    limit.observe(0.02)
    assert limit.limit == 16
    for _ in range(5):
        limit.observe(0.02)
    assert limit.limit == 2
    limit.observe(0.004)  # between half the target and the target: hold
    assert limit.limit == 2
    for _ in range(40):
        limit.observe(0.0)
    assert limit.limit == 32
    assert seen[:5] == [16, 8, 4, 2, 3]


async def test_waiting_turns_start_as_the_limit_grows() -> None:
    limit = AdaptiveTurnLimit(4, lag_target=0.005)
    for _ in range(3):
        limit.observe(1.0)
    assert limit.limit == 1
    gate = asyncio.Event()
    order: list[int] = []
    peak = [0]
    tasks = [asyncio.create_task(_hold(limit, gate, order, n, peak)) for n in range(4)]
    await asyncio.sleep(0.01)
    assert limit.running == 1
    limit.observe(0.0)
    limit.observe(0.0)
    await asyncio.sleep(0.01)
    assert limit.running == 3
    gate.set()
    await asyncio.gather(*tasks)


def _block(seconds: float) -> None:
    time.sleep(seconds)  # stands in for a burst of CPU work that keeps the loop from running anything else


async def test_probe_on_a_real_loop_lowers_the_limit_while_the_loop_is_blocked_and_restores_it() -> None:
    restored = asyncio.Event()
    limit = AdaptiveTurnLimit(16, lag_target=0.005, period=0.005, on_change=lambda n: n == 16 and restored.set())
    stop = asyncio.Event()
    probe = asyncio.create_task(limit.run(stop))
    await asyncio.sleep(0.02)
    loop = asyncio.get_running_loop()
    for _ in range(6):
        loop.call_soon(_block, 0.03)
        await asyncio.sleep(0.012)
    assert limit.limit < 16
    await asyncio.wait_for(restored.wait(), 3)
    assert limit.limit == 16
    stop.set()
    await asyncio.wait_for(probe, 1)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        TurnLimit(0)
    with pytest.raises(ValueError, match="floor"):
        AdaptiveTurnLimit(4, floor=5)
