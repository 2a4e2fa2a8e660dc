"""Streaming answers as a DingTalk AI card: created and delivered once, streamed, finalized exactly once.

* The outTrackId is a hash of (robot, reply key): every retry, in any process, addresses the same card. Its
  progress (created → delivered → final → closed) and an index of open cards are durable adapter state.
* Updates are coalesced (newest text wins), paced, back off when throttled, never raise into the turn.
* Only `finalize` (the adapter's `send`) writes the answer - full text with isFinalize, then flowStatus 3 -
  recording each step, so a retry repeats only what is missing. None means "send markdown" (never shown,
  refused, or closed without the answer): an answer is never shown twice. After a restart, open cards wait
  ORPHAN_GRACE s for their resent reply or re-run turn, then close as interrupted; so do they at stop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import Any

from adapters.base import AdapterState
from adapters.dingtalk.api import DingTalkApi
from gateway.errors import PermanentSendError, RateLimited, SendError

log = logging.getLogger(__name__)

# The variable the SDK's AIMarkdownCard template (382e4302-551d-4880-bf29-a30acfab2e71.schema) renders.
CONTENT_KEY = "msgContent"
ORDER = json.dumps({"order": ["msgTitle", "msgButtons", "msgImages", "msgTextList", "msgContent"]})
INPUTING, FINISHED, FAILED = "2", "3", "5"
STATE_TTL, OPEN_INDEX = 86400.0, "cards:open"
ORPHAN_GRACE = 60.0  # after a restart, how long a resent reply or re-run turn has to claim its open card
MAX_PAUSE, MAX_UPDATE_FAILURES = 10.0, 3
INTERRUPTED = "⚠️ Interrupted; the answer follows as a separate message."


def track_id(bot_id: str, key: str) -> str:
    return "sb" + hashlib.sha256(f"{bot_id}\x1f{key}".encode()).hexdigest()[:40]


@dataclass(frozen=True)
class Space:
    """Where a card is shown: a group (`chat_id` is its openConversationId) or the robot DM with `staff_id`."""

    robot_code: str
    chat_id: str
    group: bool
    staff_id: str


@dataclass
class CardRecord:
    track: str
    bot_id: str
    created: float  # epoch seconds
    phase: str = "new"  # new → created → delivered → final (answer written) → closed
    answered: bool = False  # closed holding the answer: a resend must not send it again


class CardStream:
    """adapters.base.ReplyStream of one reply: keeps the newest text; a pump sends it when the pace allows."""

    def __init__(
        self, owner: CardStreams, bot_id: str, key: str, template: str, space: Space, stream_after: float
    ) -> None:
        self._owner, self._stream_after, self._opened = owner, stream_after, time.monotonic()
        self.bot_id, self.key, self.template, self.space = bot_id, key, template, space
        self._text = self._sent = ""
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._stopping, self._failures = False, 0
        self.lock = owner.lock_of(key)
        self.record: CardRecord | None = None
        self.broken, self.last_op = False, 0.0

    async def update(self, text: str) -> None:
        """Remember the newest text; never raises. Answers done before `stream_after` never become a card."""
        self._text = text
        self._wake.set()
        if self._pump is None and not self.broken and not self._stopping:
            self._pump = self._owner.track(self._run(), f"dingtalk-card:{self.key}")

    async def _run(self) -> None:
        await asyncio.sleep(max(0.0, self._stream_after - (time.monotonic() - self._opened)))
        interval = 1.0 / self._owner.updates_per_second
        while not self.broken:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            pause = interval
            async with self.lock:
                if (text := self._text) == self._sent:
                    continue
                try:
                    await self._owner.push(self, text)
                    self._sent, self._failures = text, 0
                except RateLimited as exc:  # slow down for the rest of this answer
                    interval = min(interval * 2, MAX_PAUSE)
                    pause = max(interval, min(exc.retry_after or 1.0, MAX_PAUSE))
                    self._wake.set()
                except Exception as exc:  # not shown yet, refused, or failing again and again: stop trying
                    self._failures += 1
                    shown = self.record is not None and self.record.phase == "delivered"
                    if not shown or isinstance(exc, PermanentSendError) or self._failures >= MAX_UPDATE_FAILURES:
                        log.warning("dingtalk card for %s stopped (%s: %s)", self.key, type(exc).__name__, exc)
                        self.broken = True
                    self._wake.set()
                self.last_op = time.monotonic()
            await asyncio.sleep(pause)

    async def halt(self) -> None:
        """Stop pumping, after the request in flight (cancelled, it could still land after the final)."""
        self._stopping, pump = True, self._pump
        self._wake.set()
        if pump is not None and pump is not asyncio.current_task():
            async with self.lock:  # the pump holds it while a request is out (bounded by the API timeout)
                pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)


class CardStreams:
    """Every card of one adapter, keyed by reply key."""

    def __init__(
        self,
        apis: Callable[[str], DingTalkApi],
        state: Callable[[], AdapterState],
        updates_per_second: float,
        on_delivered: Callable[[str], None],  # a card shown in this conversation (it counts as a message)
    ) -> None:
        self._apis, self._state, self._on_delivered = apis, state, on_delivered
        self.updates_per_second = updates_per_second
        self._streams: dict[str, CardStream] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._index_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeping, self._claimed = False, set[str]()  # claimed: keys streamed or sent while the sweep waits

    def track(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def lock_of(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def open(self, bot_id: str, key: str, template: str, space: Space, stream_after: float) -> CardStream:
        """The stream for reply `key` (the same object if the turn asks twice)."""
        if self._sweeping:
            self._claimed.add(key)
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = CardStream(self, bot_id, key, template, space, stream_after)
        return stream

    async def push(self, stream: CardStream, text: str) -> None:
        """Create and deliver the card once (or find it, after a restart), then stream `text` into it."""
        api, space = self._apis(stream.bot_id), stream.space
        new = CardRecord(track_id(stream.bot_id, stream.key), stream.bot_id, time.time())
        stream.record = record = stream.record or await self._load(stream.key) or new
        if record.phase in ("final", "closed"):  # answered, or closed by a restart: the answer comes via send
            stream.broken = True
            return
        if record.phase == "new":
            params = {"flowStatus": INPUTING, CONTENT_KEY: "", "sys_full_json_obj": ORDER}
            try:
                await api.create_card(stream.template, record.track, params)
            except PermanentSendError as exc:
                if "duplicate" not in exc.code.lower():  # else: created before a crash, the same card
                    raise
            await self._save(stream.key, record, "created")
        if record.phase == "created":
            group = space.chat_id if space.group else ""
            await api.deliver_card(record.track, space.robot_code, open_conversation_id=group, staff_id=space.staff_id)
            await self._save(stream.key, record, "delivered")
            self._on_delivered(space.chat_id)
        await api.stream_card(record.track, CONTENT_KEY, text)

    async def finalize(self, key: str, text: str, *, failed: bool = False) -> str | None:
        """Write the answer into the reply's card and finish it; its outTrackId, or None: send markdown.

        Raises a transient SendError for the outbox to retry; a retry repeats only the steps not done.
        """
        if self._sweeping:
            self._claimed.add(key)
        stream = self._streams.pop(key, None)
        if stream is not None:
            await stream.halt()  # first: the pump may be between creating the card and recording it
        async with self.lock_of(key):
            record = await self._load(key) or (stream.record if stream is not None else None)
            last_op = stream.last_op if stream else 0.0
            done = await self._finish(key, record, text, last_op, failed=failed) if record else None
        self._locks.pop(key, None)
        return done

    async def _finish(
        self, key: str, record: CardRecord, text: str | None, last_op: float = 0.0, *, failed: bool = False
    ) -> str | None:
        """The answer `text` (None: whatever the card holds) → final; a card without it is closed as failed."""
        if record.phase in ("new", "closed"):
            return record.track if record.answered else None
        if record.phase == "created" or (record.phase == "delivered" and text is None):
            await self._close_failed(key, record)
            return None
        api = self._apis(record.bot_id)
        if record.phase == "delivered" and text is not None:
            await asyncio.sleep(max(0.0, last_op + 1.0 / self.updates_per_second - time.monotonic()))
            try:
                await api.stream_card(record.track, CONTENT_KEY, text, is_full=True, is_finalize=True)
            except PermanentSendError as exc:
                log.warning("dingtalk card %s cannot take the answer (%s); sending it as markdown", record.track, exc)
                await self._close_failed(key, record)
                return None
            await self._save(key, record, "final")
        try:
            status = FAILED if failed else FINISHED  # an error reply shows as a failed card, its text kept
            await api.update_card(record.track, {"flowStatus": status, **({CONTENT_KEY: text} if text else {})})
        except PermanentSendError as exc:  # the answer is shown all the same, the card still "typing"
            log.warning("dingtalk card %s holds its answer but was not marked finished: %s", record.track, exc)
        record.answered = True
        await self._save(key, record, "closed")
        return record.track

    async def _close_failed(self, key: str, record: CardRecord) -> None:
        """flowStatus 5 and a note in one idempotent update (like the SDK's `ai_fail`); kept open if it fails."""
        try:
            await self._apis(record.bot_id).update_card(record.track, {"flowStatus": FAILED, CONTENT_KEY: INTERRUPTED})
        except SendError as exc:
            log.warning("dingtalk card %s could not be closed: %s", record.track, exc)
            if not isinstance(exc, PermanentSendError):
                return
        await self._save(key, record, "closed")

    async def _settle(self, key: str, *, stopping: bool) -> None:
        """Finish or close one open card that no reply in this process finalizes (restart sweep, stop)."""
        async with self.lock_of(key):
            if key in self._claimed and not stopping:
                return
            record = await self._load(key)
            await (self._finish(key, record, None) if record else self._index(key, add=False))

    def recover(self) -> None:
        """At start: after ORPHAN_GRACE, close the cards left open that no reply or turn claimed."""
        self._sweeping = True
        self.track(self._recover(), "dingtalk-card-recovery")

    async def _recover(self) -> None:
        try:
            keys = list(await self._index())
            await asyncio.sleep(ORPHAN_GRACE)
            for key in keys:
                await self._settle(key, stopping=False)
        except Exception:
            log.exception("dingtalk cards left open by the previous run could not be closed")
        finally:
            self._sweeping = False
            self._claimed.clear()

    async def close(self) -> None:
        """At stop: stop every pump, then close the cards whose answer did not come."""
        for stream in list(self._streams.values()):
            await stream.halt()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            for key in await self._index():
                await self._settle(key, stopping=True)
        except Exception:
            log.exception("dingtalk cards could not be closed at stop")
        self._streams.clear()
        self._locks.clear()

    async def _load(self, key: str) -> CardRecord | None:
        raw = await self._state().get(f"card:{key}")
        try:
            return CardRecord(**json.loads(raw)) if raw else None
        except (TypeError, ValueError):
            return None

    async def _save(self, key: str, record: CardRecord, phase: str) -> None:
        record.phase = phase
        await self._state().put(f"card:{key}", json.dumps(asdict(record)), ttl=STATE_TTL)
        await self._index(key, add=phase != "closed")

    async def _index(self, key: str = "", *, add: bool | None = None) -> dict[str, float]:
        """The open cards {reply key: created}, after adding or removing `key`."""
        async with self._index_lock:
            raw = await self._state().get(OPEN_INDEX)
            try:
                cutoff = time.time() - STATE_TTL  # cards past their record's lifetime are forgotten
                index = {str(k): float(v) for k, v in json.loads(raw or "{}").items() if float(v) > cutoff}
            except (AttributeError, TypeError, ValueError):
                index = {}
            if add is not None and (key in index) != add:
                index = {**index, key: time.time()} if add else {k: v for k, v in index.items() if k != key}
                await self._state().put(OPEN_INDEX, json.dumps(index), ttl=STATE_TTL)
            return index
