"""Runs one turn for a session: journal entries in, replies queued in the outbox, atomically.

Called by the bus with the session's lock held. The LLM may be called again if we crash before
the turn commits, but nothing was visible then, so the user still sees exactly one answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from agent_core.llm import ChatMessage
from gateway.logs import with_correlation
from gateway.messages import InboundMessage, MarkdownPart, OutboundMessage, SessionKey, reply_target
from gateway.metrics import Metrics
from gateway.replies import ReplyChannels
from gateway.responders import OnText, Responder
from gateway.store.interfaces import HistoryMessage, Journal, JournalEntry, TurnLedger, TurnRecord
from sessions.manager import SessionManager

log = logging.getLogger(__name__)

POISON_REPLY = "Sorry, I could not process this message (it failed repeatedly). The operators have been notified."


@dataclass(frozen=True)
class TurnSettings:
    """Limits for a turn."""

    max_attempts: int = 3
    reply_deadline_seconds: float = 3600.0


def user_text(msg: InboundMessage) -> str:
    """What the model sees of one inbound message; the display name is marked as untrusted data."""
    parts = [msg.text.strip()] if msg.text.strip() else []
    parts += [f"[{a.kind} attachment: {a.name or a.ref}]" for a in msg.attachments]
    body = "\n".join(parts) or "(empty message)"
    if msg.chat_kind == "group":
        who = msg.sender_name or msg.sender_id  # platforms that send no display name still tell people apart
        name = "".join(c for c in who if c.isprintable() and c not in "<>")[:64]
        return f"<sender>{name}</sender> {body}"
    return body


def reply_key(msg: InboundMessage, part: int) -> str:
    """Idempotency key of a reply part, derived from the platform's identity of the message.

    Stable across re-runs of the turn, restarts and even a wiped database (a platform retry of the
    same message gets the same key, which peers dedupe), and never reused for another message, unlike
    journal row ids. 24 hex digits keep it within every platform's key length limit.
    """
    digest = hashlib.sha256(f"{msg.platform}\x1f{msg.bot_id}\x1f{msg.platform_msg_id}".encode()).hexdigest()
    return f"sb-{digest[:24]}-{part}"


class TraceRecorder(Protocol):
    async def record(
        self, *, at: float, session_key: str, user_id: str, inbound_ids: Sequence[int], trace: dict[str, Any]
    ) -> None: ...


class TurnRunner:
    """The bus's turn handler."""

    def __init__(
        self,
        *,
        journal: Journal,
        ledger: TurnLedger,
        sessions: SessionManager,
        agent: Responder,
        metrics: Metrics,
        settings: TurnSettings,
        on_replies_queued: Callable[[], None],
        channels: ReplyChannels | None = None,
        llm_ready: asyncio.Event | None = None,
        traces: TraceRecorder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._journal = journal
        self._ledger = ledger
        self._sessions = sessions
        self._agent = agent
        self._metrics = metrics
        self._settings = settings
        self._on_replies_queued = on_replies_queued
        self._channels = channels or ReplyChannels({})
        self._clock = clock
        self._llm_ready = llm_ready
        self._traces = traces
        self._suspects = asyncio.Lock()

    async def __call__(self, key: SessionKey, inbound_ids: list[int]) -> None:
        entries = await self._journal.load(inbound_ids)
        if not entries:
            return  # already answered before a restart
        last = entries[-1]
        with with_correlation(last.message.gateway_id):
            started = time.perf_counter()
            try:
                await self._run(key, entries)
            except Exception:
                self._sessions.forget(key)
                self._metrics.turn_errors_total.labels(kind="internal").inc()
                raise
            finally:
                self._metrics.turn_latency_seconds.observe(time.perf_counter() - started)

    async def _run(self, key: SessionKey, entries: Sequence[JournalEntry]) -> None:
        if self._llm_ready is not None:
            await self._llm_ready.wait()  # a kill during start-up is not the message's fault
        poisoned = [e for e in entries if e.attempts >= self._settings.max_attempts]
        healthy = [e for e in entries if e.attempts < self._settings.max_attempts]
        for entry in poisoned:  # alone, so messages merged with it still get a real answer
            log.error("giving up on inbound %s after %d attempts", entry.inbound_id, entry.attempts)
            self._metrics.turn_errors_total.labels(kind="poison").inc()
            await self._commit(key, [entry], POISON_REPLY, (), failed=True)
        if not healthy:
            return
        if any(e.attempts for e in healthy):
            # Tried before: it may be what killed the process last time. Such turns run one at a time, so
            # a crash counts against the message causing it, not against every turn running beside it
            # (a crash loop would otherwise make innocent messages "poison" after max_attempts restarts).
            async with self._suspects:
                await self._attempt(key, healthy)
        else:
            await self._attempt(key, healthy)

    async def _attempt(self, key: SessionKey, healthy: Sequence[JournalEntry]) -> None:
        ids = [e.inbound_id for e in healthy]
        try:
            # Inside the try: a cancel landing while the count is being written still undoes it (the write
            # was queued before the first wait, so it commits either way).
            await self._journal.begin_attempt(ids)
            state = await self._sessions.load(key)
            texts = [user_text(e.message) for e in healthy]
            history = [ChatMessage(role=_role(m.role), content=m.content) for m in state.history]
            last = healthy[-1].message
            on_delta, on_progress = self._live_view(last)
            answer, trace = await self._agent.respond(key, last, history, texts, on_delta, on_progress)
        except asyncio.CancelledError:
            # Shutdown, not the message's fault: do not count this attempt (the drain deadline passed).
            await asyncio.shield(self._journal.undo_attempt(ids))
            raise
        if answer.failed:
            self._metrics.turn_errors_total.labels(kind=answer.error_kind or "llm").inc()
        history_add = (
            ()
            if answer.failed
            else (*(HistoryMessage("user", t) for t in texts), HistoryMessage("assistant", answer.text))
        )
        await self._commit(key, healthy, answer.text, history_add, failed=answer.failed)
        if trace is not None and self._traces is not None:
            try:  # the answer is committed; a lost trace costs learning, never the reply
                await self._traces.record(
                    at=self._clock(),
                    session_key=str(key),
                    user_id=f"{last.platform}:{last.bot_id}:{last.sender_id}",  # unambiguous across platforms
                    inbound_ids=ids,
                    trace=trace,
                )
            except Exception:
                log.exception("could not store the trace of a turn")

    def _live_view(self, last: InboundMessage) -> tuple[OnText | None, OnText | None]:
        """Forward the answer so far (and progress before it) to the platform's stream, if it has one."""
        stream = self._channels.open_stream(reply_target(last), reply_key(last, 0))
        if stream is None:
            return None, None
        chunks: list[str] = []

        async def show(text: str) -> None:
            try:  # a live view is best effort: its failure must never fail the answer
                await stream.update(text)
            except Exception:
                log.exception("live view update failed")

        async def on_delta(delta: str) -> None:
            chunks.append(delta)
            await show("".join(chunks))

        async def on_progress(line: str) -> None:
            if not chunks:  # once the answer is being written, it is what the user watches
                await show(f"⏳ {line}…")

        return on_delta, on_progress

    async def _commit(
        self,
        key: SessionKey,
        entries: Sequence[JournalEntry],
        text: str,
        history_add: tuple[HistoryMessage, ...],
        *,
        failed: bool = False,
    ) -> None:
        last = entries[-1]
        reply = OutboundMessage(
            target=reply_target(last.message),
            parts=(MarkdownPart(text=text),),
            idempotency_key=reply_key(last.message, 0),
            failed=failed,
        )
        now = self._clock()
        ids = tuple(e.inbound_id for e in entries)
        record = TurnRecord(session_key=key, inbound_ids=ids, messages=history_add)
        replies = self._channels.prepare(reply)
        await self._ledger.complete_turn(record, replies, now=now, deadline=now + self._settings.reply_deadline_seconds)
        self._sessions.record(key, history_add)
        self._on_replies_queued()


def _role(role: str) -> Literal["user", "assistant", "system"]:
    if role == "assistant":
        return "assistant"
    if role == "system":
        return "system"
    return "user"
