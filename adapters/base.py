"""The narrow contract between the core and a platform adapter.

An adapter is one package behind `Adapter` (start / stop / send). It reaches the runtime only
through `AdapterHost`, so it never imports the bus, the journal or the HTTP server directly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import aiohttp
from aiohttp import web

from gateway.messages import InboundMessage, OutboundMessage, Target


@dataclass(frozen=True)
class SendReceipt:
    """What the platform said about a delivered message (its id, if it gave one)."""

    platform_msg_id: str = ""


@dataclass(frozen=True)
class PublishResult:
    """Outcome of handing one inbound message to the runtime.

    `accepted` means it is durably journaled (safe to ack); `duplicate` means it was journaled
    before (a platform retry), which is also safe to ack and starts no second turn.
    """

    inbound_id: int
    duplicate: bool


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdapterHost(Protocol):
    """Capabilities the runtime lends to an adapter."""

    @property
    def http(self) -> aiohttp.ClientSession:
        """The shared outbound HTTP client session."""
        ...

    async def publish(self, msg: InboundMessage, *, refusable: bool = True) -> PublishResult:
        """Journal `msg` durably (deduplicated) and schedule its turn; raises BackpressureError when full.

        `refusable=False` for platforms that never redeliver a message we refuse (e.g. DingTalk Stream):
        it is then journaled even while draining or over the backlog cap, because a refusal would lose it.
        """
        ...

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Mount an HTTP route on the gateway's server (only before the server starts)."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run `coro` as a tracked task that is cancelled and awaited on shutdown."""
        ...

    def is_accepting(self) -> bool:
        """False while draining for shutdown or saturated: adapters should answer 503 then."""
        ...

    async def release_parked(self, target: Target) -> None:
        """The recipient of `target` is reachable again: retry its parked replies (see AwaitingRecipient) now."""
        ...

    def state(self, namespace: str) -> AdapterState:
        """Durable key-value state for the adapter (use its name as the namespace)."""
        ...

    @property
    def attachments(self) -> AttachmentStore:
        """The attachment store (downloads land here; turns and skills read them)."""
        ...


class AdapterState(Protocol):
    """Durable small values of one adapter (survive a crash; expire on their own)."""

    async def get(self, key: str) -> str | None:
        """The value, or None when absent or expired."""
        ...

    async def put(self, key: str, value: str, *, ttl: float) -> None:
        """Store `value` for `ttl` seconds; committed when this returns."""
        ...

    async def delete(self, key: str) -> None:
        """Forget `key`."""
        ...


class AttachmentStore(Protocol):
    """Where adapters put downloaded attachments, named by the message's attachment ref."""

    async def save(self, ref: str, data: bytes) -> Path:
        """Store `data` for `ref`; returns the file."""
        ...

    async def find(self, ref: str) -> Path | None:
        """The stored file for `ref`, if it was downloaded."""
        ...


class ReplyStream(Protocol):
    """A reply the user watches grow while the model writes it (one visible message).

    The final text still arrives through the durable outbox as a normal `send`, which must close the
    stream; updates are best effort and never raise (a lost update is repaired by the final text).
    """

    async def update(self, text: str) -> None:
        """Show `text`, the whole answer so far."""
        ...


class Adapter(Protocol):
    """One platform connection (possibly several bots of that platform)."""

    name: str

    async def start(self, host: AdapterHost) -> None:
        """Register routes / open connections. Must not block on long-running loops: spawn them."""
        ...

    async def stop(self) -> None:
        """Close connections; in-flight work is finished or left journaled for the next start."""
        ...

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        """Deliver one reply; raise a `gateway.errors.SendError` subclass on failure."""
        ...

    def prepare(self, reply: OutboundMessage) -> list[OutboundMessage]:
        """Cut a turn's reply into the messages this platform can carry (size limits, formats).

        Called once, before the reply is committed to the outbox, so each piece is queued, retried
        and deduplicated on its own; keys are the reply's key plus a piece suffix. Pure.
        """
        ...

    def open_stream(self, target: Target, idempotency_key: str) -> ReplyStream | None:
        """A live stream for the reply with this key, or None when the platform (or chat) cannot stream."""
        ...

    def is_connected(self) -> bool:
        """Readiness: True when the adapter can receive and send."""
        ...


@runtime_checkable
class ReportsConnections(Protocol):
    """Optional for adapters that hold long connections (one per bot): each one's health for /metrics."""

    def connection_stats(self) -> Mapping[str, Mapping[str, float]]:
        """Connection name -> {"up": 1 or 0, plus monotonic counts such as "connects", "reconnects", "messages"}."""
        ...
