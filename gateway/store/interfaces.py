"""Storage contracts the runtime depends on.

Callers see only these Protocols and plain records; the SQLite implementation (and a later
Redis/PostgreSQL one) lives behind them, so no engine detail leaks into the bus or workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.messages import InboundMessage, OutboundMessage, SessionKey, Target


@dataclass(frozen=True)
class JournalEntry:
    """A journaled inbound message whose turn may still be pending."""

    inbound_id: int
    message: InboundMessage
    session_key: SessionKey
    attempts: int


@dataclass(frozen=True)
class AppendResult:
    """`duplicate` is True when the platform delivered this message before; `pending` when its turn
    has not completed yet (so a retry may safely re-queue it)."""

    inbound_id: int
    duplicate: bool
    pending: bool = True


@dataclass(frozen=True)
class HistoryMessage:
    """One stored message of a session's conversation."""

    role: str
    content: str


@dataclass(frozen=True)
class TurnRecord:
    """What a finished turn adds to its session: the user's messages and the reply."""

    session_key: SessionKey
    inbound_ids: tuple[int, ...]
    messages: tuple[HistoryMessage, ...]


@dataclass(frozen=True)
class OutboxItem:
    """A reply waiting to be delivered (or retried)."""

    outbox_id: int
    message: OutboundMessage
    attempts: int
    next_attempt_at: float
    deadline_at: float


@dataclass(frozen=True)
class DeadLetter:
    """A reply that could not be delivered, with the reason it was given up."""

    outbox_id: int
    idempotency_key: str
    platform: str
    reason: str
    code: str
    attempts: int
    died_at: float


@dataclass(frozen=True)
class OutboxStats:
    """Counts surfaced by /metrics and `switchboard doctor`."""

    pending: int
    dead: int


class Journal(Protocol):
    """Durable, deduplicated record of inbound messages and whether their turn finished."""

    async def append(self, msg: InboundMessage, key: SessionKey) -> AppendResult: ...

    async def pending(self) -> list[JournalEntry]: ...

    async def load(self, inbound_ids: Sequence[int]) -> list[JournalEntry]: ...

    async def begin_attempt(self, inbound_ids: Sequence[int]) -> None: ...

    async def undo_attempt(self, inbound_ids: Sequence[int]) -> None: ...

    async def prune_done(self, before: float) -> int: ...


class TurnLedger(Protocol):
    """Atomically finishes a turn: history appended, replies queued, inbound marked done."""

    async def complete_turn(
        self, record: TurnRecord, replies: Sequence[OutboundMessage], *, now: float, deadline: float
    ) -> None: ...


class Outbox(Protocol):
    """Replies persisted before sending; at most one in flight per chat lane, in order."""

    async def enqueue(self, replies: Sequence[OutboundMessage], *, now: float, deadline: float) -> None: ...

    async def due(self, now: float, limit: int) -> list[OutboxItem]: ...

    async def next_due_at(self) -> float | None: ...

    async def mark_sent(self, outbox_id: int, receipt: str, now: float) -> None: ...

    async def mark_retry(self, outbox_id: int, next_attempt_at: float, code: str, error: str) -> None: ...

    async def mark_dead(self, outbox_id: int, reason: str, code: str, now: float) -> None: ...

    async def release(self, target: Target, now: float) -> int:
        """Make the target chat's waiting replies due now (its recipient is reachable); returns how many."""
        ...

    async def stats(self) -> OutboxStats: ...

    async def dead_letters(self, limit: int = 50) -> list[DeadLetter]: ...

    async def prune_sent(self, before: float) -> int: ...


class KeyValueStore(Protocol):
    """Durable small values with an expiry, namespaced per adapter."""

    async def get(self, namespace: str, key: str, now: float) -> str | None: ...

    async def put(self, namespace: str, key: str, value: str, *, expires_at: float) -> None: ...

    async def delete(self, namespace: str, key: str) -> None: ...

    async def prune(self, now: float) -> int: ...


class SessionStore(Protocol):
    """Persistent per-session conversation history."""

    async def history(self, key: SessionKey, limit: int) -> list[HistoryMessage]: ...
