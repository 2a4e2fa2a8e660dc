"""Feeds the router's utility prior from the skill-run audit log.

The router fuses relevance signals with a per-skill prior (agent_core.router.fusion); this job is
what gives that prior meaning: skills whose runs keep failing drift down the list, reliable ones
win ties. It is a plain async function the router's upkeep loop calls (and a test can call once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from agent_core.router.fusion import outcome_utility

log = logging.getLogger(__name__)

WINDOW_SECONDS = 30 * 86400.0  # old outcomes say little about today's version of a skill
Outcomes = Callable[[float], Awaitable[Mapping[str, tuple[int, int]]]]


class UtilityTarget(Protocol):
    def names(self) -> list[str]: ...

    def set_utility(self, name: str, value: float) -> None: ...


async def refresh_skill_utilities(
    outcomes: Outcomes, router: UtilityTarget, *, now: float | None = None, window: float = WINDOW_SECONDS
) -> dict[str, float]:
    """Set every indexed skill's utility from its recent runs (0 without any); returns what was set."""
    since = (time.time() if now is None else now) - window
    counts = await outcomes(since)

    def apply() -> dict[str, float]:
        values = {}
        for name in router.names():
            ok, total = counts.get(name, (0, 0))
            values[name] = outcome_utility(ok, total)
            router.set_utility(name, values[name])
        return values

    values = await asyncio.to_thread(apply)
    moved = {n: round(v, 3) for n, v in values.items() if v}
    if moved:
        log.info("skill utilities from run outcomes: %s", moved)
    return values
