"""Streamed replies on a callback's req_id: coalesced updates, one frame in flight, always finished.

Why this shape:
* WeCom acks every frame, and the official SDK sends the frames of one req_id one at a time, waiting
  up to 5 s for each ack (aibot-node-sdk `src/ws.ts` `sendReply`). Queueing every model delta behind
  slow acks would show the user text that is seconds old, so only the newest text waits to be sent.
* The user watches a growing bubble until a `finish: true` frame arrives for its stream id, so a
  stream that was ever shown is always finished: by the final answer, on close, or when it idles.
* After `finish: true` a stream id takes no more frames (the fake server enforces this), so a final
  that finds its stream already finished reports that and is delivered proactively instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from adapters.wecom.aibot_wire import (
    MAX_CONTENT_BYTES,
    STREAM_GONE_CODES,
    Ack,
    Frame,
    LinkDown,
    cut_utf8,
    stream_frame,
)

log = logging.getLogger(__name__)


class Link(Protocol):
    """What a stream needs from the connection."""

    def lock_for(self, req_id: str) -> asyncio.Lock:
        """The lock serialising every frame sent on `req_id` (one in flight per req_id)."""
        ...

    async def request(self, frame: Frame) -> Ack:
        """Send `frame` and wait for its ack; raises LinkDown or TimeoutError."""
        ...


class AIBotStream:
    """One reply the user watches grow; `update` is the ReplyStream protocol."""

    def __init__(self, link: Link, req_id: str, stream_id: str, clock: Callable[[], float]) -> None:
        self.req_id = req_id
        self.stream_id = stream_id
        self.text = ""
        self.last_activity = clock()
        self._link = link
        self._clock = clock
        self._lock = link.lock_for(req_id)  # strong reference keeps the shared lock alive
        self._pending: str | None = None
        self._started = False  # a frame was sent, so the user may see this stream
        self._closing = False  # the final is being delivered: later updates are stale
        self._finished = False
        self._dead = False  # WeCom refused the req_id (expired / invalid): nothing more can be sent
        self._pump: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        """No frame will ever be sent on this stream again."""
        return self._finished or self._dead

    @property
    def visible(self) -> bool:
        """Shown to the user and not finished: it must still get a `finish: true` frame."""
        return self._started and not self.done

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def update(self, text: str) -> None:
        """Remember `text` as the newest state and make sure a sender is running; never raises."""
        try:
            if self._closing or self.done:
                return
            self.text = text
            self.last_activity = self._clock()
            if not text.strip():  # WeCom ignores invisible content: nothing worth a frame yet
                return
            self._pending = text
            if self._pump is None or self._pump.done():
                self._pump = asyncio.create_task(self._drain(), name=f"wecom-aibot-stream-{self.stream_id}")
        except Exception:  # a lost update is repaired by the final text
            log.exception("wecom aibot stream %s: update failed", self.stream_id)

    async def _drain(self) -> None:
        while self._pending is not None:
            async with self._lock:
                text, self._pending = self._pending, None
                if text is None or self._closing or self.done:
                    return
                try:
                    ack = await self._link.request(stream_frame(self.req_id, self.stream_id, text, finish=False))
                except (LinkDown, TimeoutError) as exc:
                    self._started = self._started or isinstance(exc, TimeoutError)  # sent, maybe shown
                    log.info("wecom aibot stream %s: update not acknowledged (%s)", self.stream_id, type(exc).__name__)
                    continue
                self._started = True
                if ack.errcode in STREAM_GONE_CODES:
                    log.info("wecom aibot stream %s: req_id no longer usable (errcode %d)", self.stream_id, ack.errcode)
                    self._dead = True
                elif ack.errcode:
                    log.info("wecom aibot stream %s: update refused (errcode %d)", self.stream_id, ack.errcode)

    final_maybe_shown: str | None = None  # a finish frame with this text went out but its ack was lost

    async def finish(self, text: str) -> Ack | None:
        """Send the final text with `finish: true`; None when the stream can no longer take it.

        Raises LinkDown or TimeoutError (the outbox retries; the same stream id is finished then).
        """
        self._closing = True
        self._pending = None
        self.text = text
        self.last_activity = self._clock()
        async with self._lock:
            if self.done:
                return None
            try:
                ack = await self._link.request(stream_frame(self.req_id, self.stream_id, text, finish=True))
            except TimeoutError:
                self._started = True  # sent, maybe shown: it must still be ended if no retry succeeds
                self.final_maybe_shown = text
                raise
            self._started = True
            if ack.errcode == 0:
                self._finished = True
            elif ack.errcode in STREAM_GONE_CODES:
                self._dead = True
            return ack

    async def interrupt(self, note: str) -> None:
        """End a visible stream with what it shows so far plus `note`, so no spinner is left behind."""
        if not self.visible:
            return
        async with self._lock:
            if self.done:
                return
            content = cut_utf8(self.text, MAX_CONTENT_BYTES - len(note.encode("utf-8"))) + note
            try:
                ack = await self._link.request(stream_frame(self.req_id, self.stream_id, content, finish=True))
            except (LinkDown, TimeoutError) as exc:
                log.warning("wecom aibot stream %s: could not be ended (%s)", self.stream_id, type(exc).__name__)
                self.last_activity = self._clock()  # try again after another idle period
                return
            if ack.errcode == 0:
                self._finished = True
            elif ack.errcode in STREAM_GONE_CODES:
                self._dead = True
            else:
                log.warning("wecom aibot stream %s: end refused (errcode %d)", self.stream_id, ack.errcode)
                self.last_activity = self._clock()

    async def stop_pump(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None and not pump.done():
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)


class StreamBook:
    """The streams of one connection by stream id, and the policy that ends forgotten ones."""

    def __init__(
        self,
        link: Link,
        *,
        idle_timeout: float,
        note: str,
        keep_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._link = link
        self._idle_timeout = idle_timeout
        self._note = note
        # Finished streams are remembered so a late final goes out proactively instead of
        # sending a second `finish: true` on the same stream id.
        self._keep_seconds = keep_seconds
        self._clock = clock
        self._streams: dict[str, AIBotStream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def open(self, req_id: str, stream_id: str) -> AIBotStream | None:
        """A live stream for this reply, or None when its final is already being delivered or done."""
        stream = self.ensure(req_id, stream_id)
        return None if stream.closing or stream.done else stream

    def ensure(self, req_id: str, stream_id: str) -> AIBotStream:
        stream = self._streams.get(stream_id)
        if stream is None or stream.req_id != req_id:
            stream = AIBotStream(self._link, req_id, stream_id, self._clock)
            self._streams[stream_id] = stream
        return stream

    async def sweep(self) -> None:
        """End streams nobody updated for the idle time; forget old finished or never-shown ones."""
        now = self._clock()
        for stream_id, stream in list(self._streams.items()):
            idle = now - stream.last_activity
            if stream.visible and not stream.busy and idle >= self._idle_timeout:
                log.warning("wecom aibot stream %s: idle for %.1fs, ending it", stream_id, idle)
                await stream.interrupt(self._note)
            elif not stream.visible and idle >= self._keep_seconds:
                await stream.stop_pump()
                self._streams.pop(stream_id, None)

    async def interrupt_all(self) -> None:
        """Stop sending updates and end every visible stream (on close)."""
        streams = list(self._streams.values())
        await asyncio.gather(*(s.stop_pump() for s in streams))
        await asyncio.gather(*(s.interrupt(self._note) for s in streams if s.visible))
