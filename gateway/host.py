"""The AdapterHost the runtime lends to adapters: journal-first publish, routes, tasks."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp

from adapters.base import AttachmentStore, Handler, PublishResult
from gateway.bus import SessionBus
from gateway.errors import BackpressureError
from gateway.messages import InboundMessage, SessionScope, Target, session_key_for
from gateway.metrics import Metrics
from gateway.store.interfaces import Journal, KeyValueStore
from gateway.tasks import TaskTracker


class RuntimeHost:
    """Implements adapters.base.AdapterHost."""

    def __init__(
        self,
        *,
        journal: Journal,
        bus: SessionBus,
        metrics: Metrics,
        tasks: TaskTracker,
        http: aiohttp.ClientSession,
        group_scope: SessionScope,
        accepting: Callable[[], bool],
        release_parked: Callable[[Target], Awaitable[None]],
        state: KeyValueStore,
        attachments: AttachmentStore,
    ) -> None:
        self._journal = journal
        self._bus = bus
        self._metrics = metrics
        self._tasks = tasks
        self._http = http
        self._group_scope = group_scope
        self._accepting = accepting
        self._release_parked = release_parked
        self._state = state
        self._attachments = attachments
        self.routes: list[tuple[str, str, Handler]] = []

    @property
    def http(self) -> aiohttp.ClientSession:
        """Shared outbound HTTP session."""
        return self._http

    def is_accepting(self) -> bool:
        """False while draining or when the backlog is full."""
        return self._accepting() and self._bus.has_capacity()

    async def publish(self, msg: InboundMessage, *, refusable: bool = True) -> PublishResult:
        """Journal first (durable, deduplicated), then schedule the turn; only then may the caller ack.

        A message that must not be refused is journaled even while draining or over the backlog cap
        (the journal is the buffer); while draining its turn is left for the next start, which resumes it.
        """
        accepting = self.is_accepting()
        if not accepting and refusable:
            self._metrics.rejected_total.labels(platform=msg.platform, reason="backpressure").inc()
            raise BackpressureError("gateway is saturated or shutting down; retry later")
        key = session_key_for(msg, self._group_scope)
        result = await self._journal.append(msg, key)
        counter = self._metrics.dedup_hits_total if result.duplicate else self._metrics.inbound_total
        counter.labels(platform=msg.platform).inc()
        if result.pending and (accepting or self._accepting()):
            # Also for a retry of a still-pending message: if the first delivery was journaled but its
            # publish was cut short before queuing, this queues it; the bus ignores ids it already has.
            self._bus.submit(key, result.inbound_id)
        return PublishResult(inbound_id=result.inbound_id, duplicate=result.duplicate)

    async def release_parked(self, target: Target) -> None:
        """Replies waiting for this chat's recipient are sent now."""
        await self._release_parked(target)

    @property
    def attachments(self) -> AttachmentStore:
        """Downloaded attachments."""
        return self._attachments

    def state(self, namespace: str) -> NamespacedState:
        """The adapter's durable key-value state."""
        return NamespacedState(self._state, namespace)

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Record a route; the server mounts them all when it starts."""
        self.routes.append((method, path, handler))

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run a tracked task."""
        self._tasks.spawn(coro, name)


class NamespacedState:
    """adapters.base.AdapterState over the shared store, bound to one namespace."""

    def __init__(self, store: KeyValueStore, namespace: str, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._ns = namespace
        self._clock = clock

    async def get(self, key: str) -> str | None:
        """The value unless absent or expired."""
        return await self._store.get(self._ns, key, self._clock())

    async def put(self, key: str, value: str, *, ttl: float) -> None:
        """Store for `ttl` seconds."""
        await self._store.put(self._ns, key, value, expires_at=self._clock() + ttl)

    async def delete(self, key: str) -> None:
        """Forget."""
        await self._store.delete(self._ns, key)
