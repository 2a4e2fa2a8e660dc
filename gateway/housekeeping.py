"""Periodic upkeep as one plain async function: the runtime's timer only triggers it.

Answered inbound rows are kept for the dedup window (platforms retry within minutes; we keep
days), delivered replies for the same time, and idle cached sessions are dropped from memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.store.interfaces import Journal, KeyValueStore, Outbox
from sessions.manager import SessionManager


@dataclass(frozen=True)
class HousekeepingReport:
    """What one run removed."""

    inbound_pruned: int
    outbox_pruned: int
    sessions_evicted: int
    state_pruned: int = 0


async def run_housekeeping(
    journal: Journal,
    outbox: Outbox,
    sessions: SessionManager,
    *,
    now: float,
    retention_seconds: float,
    state: KeyValueStore | None = None,
) -> HousekeepingReport:
    """Prune old journal and outbox rows and expired adapter state, and evict idle sessions."""
    before = now - retention_seconds
    return HousekeepingReport(
        inbound_pruned=await journal.prune_done(before),
        outbox_pruned=await outbox.prune_sent(before),
        sessions_evicted=sessions.evict_idle(),
        state_pruned=await state.prune(now) if state is not None else 0,
    )
