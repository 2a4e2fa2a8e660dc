"""Delivers outbox rows through their adapters: retries, backoff, Retry-After, dead letters.

At most one reply per chat lane is in flight, so a chat's replies arrive in order even when one
of them needs retries. A reply is marked sent only after the platform accepted it; a crash in
between re-sends it with the same idempotency key, which platforms (and our webhook peer) dedupe.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from adapters.base import Adapter
from gateway.errors import AwaitingRecipient, PermanentSendError, RateLimited, SendError, TransientSendError
from gateway.metrics import Metrics
from gateway.store.interfaces import Outbox, OutboxItem
from gateway.store.sqlite_outbox import lane_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SenderSettings:
    """Retry policy of the sender."""

    base_backoff: float = 1.0
    max_backoff: float = 300.0
    send_timeout: float = 30.0
    max_in_flight: int = 64
    idle_poll: float = 5.0


def backoff_delay(attempts: int, settings: SenderSettings, rng: random.Random) -> float:
    """Exponential backoff with 'equal jitter': half fixed, half random, capped."""
    ceiling = min(settings.max_backoff, settings.base_backoff * float(2 ** min(attempts, 30)))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class OutboxSender:
    """The sender worker."""

    def __init__(
        self,
        outbox: Outbox,
        adapters: Mapping[str, Adapter],
        metrics: Metrics,
        settings: SenderSettings,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._outbox = outbox
        self._adapters = adapters
        self._metrics = metrics
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        # Rows whose delivery finished while a due() query was running: that query may have read the
        # database before the delivery's mark_* committed, so its copy of them is stale.
        self._finished_during_query: set[int] | None = None

    def wake(self) -> None:
        """New replies were queued: look for due rows now instead of at the next poll."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Deliveries currently running."""
        return len(self._in_flight)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver continuously until `stop` is set; in-flight deliveries are finished first."""
        try:
            while not stop.is_set():
                self._wake.clear()
                started = self._start_due(await self._fresh_due())
                if started:
                    continue
                await self._sleep_until_next(stop)
        finally:
            if self._in_flight:
                await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def _fresh_due(self) -> list[OutboxItem]:
        """Due rows, minus any whose delivery finished while the (off-loop) query ran."""
        self._finished_during_query = set()
        try:
            items = await self._outbox.due(self._clock(), self._free_slots())
            stale = self._finished_during_query
        finally:
            self._finished_during_query = None
        return [item for item in items if item.outbox_id not in stale]

    def _free_slots(self) -> int:
        """How many lane heads to fetch: one per free slot, plus one per busy lane, whose head is skipped
        (so busy lanes can never crowd idle ones out of a fetch)."""
        return self._settings.max_in_flight + len(self._in_flight)

    def _start_due(self, items: list[OutboxItem]) -> int:
        started = 0
        for item in items:
            lane = lane_of(item.message.target)
            if lane in self._in_flight or len(self._in_flight) >= self._settings.max_in_flight:
                continue
            task = asyncio.create_task(self._deliver(item), name=f"send:{item.outbox_id}")
            self._in_flight[lane] = task
            task.add_done_callback(functools.partial(self._done, lane))
            started += 1
        return started

    def _done(self, lane: str, _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(lane, None)
        self._wake.set()

    async def _sleep_until_next(self, stop: asyncio.Event) -> None:
        timeout = self._settings.idle_poll
        if not self._in_flight:
            next_at = await self._outbox.next_due_at()
            if next_at is not None:
                timeout = min(timeout, max(0.0, next_at - self._clock()))
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _deliver(self, item: OutboxItem) -> None:
        try:
            await self._attempt(item)
        finally:
            if self._finished_during_query is not None:
                self._finished_during_query.add(item.outbox_id)

    async def _attempt(self, item: OutboxItem) -> None:
        msg = item.message
        platform = msg.target.platform
        adapter = self._adapters.get(platform)
        if adapter is None:
            await self._give_up(item, f"no adapter '{platform}' is enabled", "no_adapter")
            return
        try:
            async with asyncio.timeout(self._settings.send_timeout):
                receipt = await adapter.send(msg)
        except PermanentSendError as exc:
            await self._give_up(item, f"rejected: {exc}", exc.code or "permanent")
        except AwaitingRecipient as exc:
            await self._park(item, exc)
        except SendError as exc:
            await self._retry(item, exc)
        except TimeoutError:
            await self._retry(item, TransientSendError("send timed out", code="timeout"))
        except Exception as exc:  # a bug in an adapter must not kill the worker; it is retried
            log.exception("adapter %s raised unexpectedly", platform)
            await self._retry(item, TransientSendError(f"internal error: {type(exc).__name__}", code="internal"))
        else:
            self._metrics.sent_total.labels(platform=platform).inc()
            receipt_id = receipt.platform_msg_id
            await self._record(item, lambda: self._outbox.mark_sent(item.outbox_id, receipt_id, self._clock()))

    async def _record(self, item: OutboxItem, write: Callable[[], Awaitable[None]]) -> None:
        """Store a delivery's outcome, retrying while storage fails and holding the chat's lane meanwhile.

        Given up, the row would still read as pending with its old retry time, so the next poll would send
        it again at once, and again on every poll: a reply the platform already took, shown in a loop.
        """
        delay = self._settings.base_backoff
        while True:
            try:
                await write()
                return
            except Exception:
                key = item.message.idempotency_key
                log.exception("could not record the outcome of reply %s; retrying in %.1fs", key, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.max_backoff)

    async def _park(self, item: OutboxItem, exc: AwaitingRecipient) -> None:
        """Wait (blocking the chat's lane, so order holds) until released by the adapter or the deadline."""
        now = self._clock()
        if now >= item.deadline_at:
            await self._give_up(item, f"recipient never became reachable: {exc}", exc.code or "awaiting_recipient")
            return
        log.info("reply %s parked until its recipient writes again (%s)", item.message.idempotency_key, exc)
        code = exc.code or "awaiting_recipient"
        await self._record(item, lambda: self._outbox.mark_retry(item.outbox_id, item.deadline_at, code, str(exc)))

    async def _retry(self, item: OutboxItem, exc: SendError) -> None:
        platform = item.message.target.platform
        self._metrics.send_errors_total.labels(platform=platform, code=exc.code or "unknown").inc()
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            # Honoured within [base_backoff, max_backoff]: "Retry-After: 0" (or a past date) must not become
            # a tight resend loop, and an absurd value must not turn a throttle into a dead letter.
            delay = min(max(exc.retry_after, self._settings.base_backoff), self._settings.max_backoff)
        else:
            delay = backoff_delay(item.attempts, self._settings, self._rng)
        now = self._clock()
        if now + delay > item.deadline_at:
            await self._give_up(item, f"deadline passed after {item.attempts + 1} attempts; last: {exc}", exc.code)
            return
        log.info("send of %s failed (%s: %s); retry in %.1fs", item.message.idempotency_key, exc.code, exc, delay)
        await self._record(item, lambda: self._outbox.mark_retry(item.outbox_id, now + delay, exc.code, str(exc)))

    async def _give_up(self, item: OutboxItem, reason: str, code: str) -> None:
        platform = item.message.target.platform
        self._metrics.send_errors_total.labels(platform=platform, code=code or "unknown").inc()
        log.error("dead letter %s: %s", item.message.idempotency_key, reason)
        await self._record(item, lambda: self._outbox.mark_dead(item.outbox_id, reason, code, self._clock()))
