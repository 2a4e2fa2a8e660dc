"""Streaming answers as a Feishu card: created once, updated while the model writes, finalized once.

Peers ship duplicate finals, lost final text and sequence errors. The rules here:
* One card per reply key. Its ids are in durable adapter state before the card becomes visible, and
  the card message is sent with a `uuid` derived from the key, so a crash anywhere (even between
  create and finalize) resumes the same card after restart instead of showing a second one.
* Updates are coalesced (only the newest text is sent) and paced under Feishu's 10 ops/s per card;
  sequences are milliseconds since the card's creation (persisted), so they keep increasing across
  restarts without remembering the last one.
* The final text only ever goes through `finalize` (called by the adapter's `send`): full text, then
  streaming off. If the card cannot be finalized for good, the card message is replaced in place by
  a static card with the full text; a second copy of the answer is never sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from adapters.base import AdapterState
from adapters.feishu.api import FeishuApi
from gateway.errors import PermanentSendError, RateLimited, SendError

log = logging.getLogger(__name__)

ELEMENT_ID = "stream_md"
STATE_TTL = 7 * 24 * 3600.0
SEQUENCE_ERROR = "300317"
STOP_GRACE_SECONDS = 15.0
PATCH_INTERVAL = 0.25  # a message may be patched 5 times a second
NO_CARDKIT_CODES = frozenset({"99991672", "230006"})  # missing scope / ability not enabled
SEQUENCE_JUMP = 600_000  # ten minutes of milliseconds: past anything a previous process could have used


def card_json(text: str, *, streaming: bool) -> dict[str, Any]:
    """A JSON 2.0 card with one markdown element (Feishu renders the answer's markdown)."""
    config: dict[str, Any] = {"update_multi": True, "streaming_mode": streaming}
    if streaming:
        config["summary"] = {"content": "…"}
    return {
        "schema": "2.0",
        "config": config,
        "body": {"elements": [{"tag": "markdown", "content": text, "element_id": ELEMENT_ID}]},
    }


def _now_ms() -> int:
    return int(time.time() * 1000)


def uuid_for(key: str, purpose: str) -> str:
    """Feishu's idempotency `uuid` (≤ 50 chars) for a request made on behalf of reply `key`."""
    return f"{key}.{purpose}"[-50:]


@dataclass
class CardRecord:
    """What must survive a crash about one streamed reply."""

    card_id: str  # "" for a patched message card (no CardKit permission)
    created_ms: int
    message_id: str = ""
    finalized: bool = False

    @property
    def patched(self) -> bool:
        """A plain interactive card updated by PATCHing its message, not a CardKit entity."""
        return not self.card_id


class CardStream:
    """adapters.base.ReplyStream for one reply: buffers text and pumps it to the card."""

    def __init__(
        self, owner: CardStreams, bot_id: str, reply_to: str, thread: bool, key: str, stream_after: float
    ) -> None:
        self._owner = owner
        self._stream_after = stream_after
        self.bot_id = bot_id
        self._reply_to = reply_to
        self._thread = thread
        self.key = key
        self._opened = time.monotonic()
        self._text = ""
        self._sent = ""
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()
        self.record: CardRecord | None = None
        self.last_seq = 0
        self.broken = False
        self.last_op = 0.0  # when the pump last touched the card (monotonic)
        self._stopping = False

    async def update(self, text: str) -> None:
        """Remember the newest text; the pump sends it when the pace allows. Never raises."""
        self._text = text
        self._wake.set()
        if self._pump is None and not self.broken:
            self._pump = self._owner.track(self._run(), f"feishu-card:{self.key}")

    async def _run(self) -> None:
        delay = self._stream_after - (time.monotonic() - self._opened)
        if delay > 0:
            await asyncio.sleep(delay)  # quick answers never become a card: they arrive as one message
        interval = 1.0 / self._owner.updates_per_second
        while not self.broken:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            async with self.lock:
                if self.record is not None and self.record.finalized:
                    return
                text = self._text
                if text == self._sent:
                    continue
                try:
                    await self._owner.push(self, text)
                    self._sent = text
                    self.last_op = time.monotonic()
                except RateLimited as exc:
                    await asyncio.sleep(exc.retry_after or 1.0)
                    self._wake.set()
                except SendError as exc:
                    log.warning("streaming card for %s stopped: %s", self.key, exc)
                    self.broken = True
                    return
            if self._stopping:
                return
            patched = self.record is not None and self.record.patched
            await asyncio.sleep(max(interval, PATCH_INTERVAL) if patched else interval)

    async def stop(self) -> None:
        """Stop pumping (the final text is written by finalize).

        An update already sent is let finish (up to a bound): cancelling it mid-request could let Feishu
        apply it after the final, or leave a created card unrecorded while its message becomes visible.
        """
        pump = self._pump
        if pump is None or pump is asyncio.current_task() or pump.done():
            return
        self._stopping = True
        self._wake.set()
        if self.lock.locked():
            try:
                await asyncio.wait_for(asyncio.shield(pump), STOP_GRACE_SECONDS)
            except TimeoutError:
                log.warning("card update for %s did not finish in time; cancelling it", self.key)
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)

    def sequence(self) -> int:
        """Strictly increasing, and larger than any value used before a restart."""
        assert self.record is not None
        self.last_seq = max(self.last_seq + 1, int(time.time() * 1000) - self.record.created_ms)
        return self.last_seq

    @property
    def reply_to(self) -> str:
        return self._reply_to

    @property
    def thread(self) -> bool:
        return self._thread


class CardStreams:
    """All streams of one adapter, keyed by reply key."""

    def __init__(
        self,
        apis: Callable[[str], FeishuApi],
        state: Callable[[], AdapterState],
        *,
        stream_after: float,
        updates_per_second: float,
    ) -> None:
        self._apis = apis
        self._state = state
        self.stream_after = stream_after
        self.updates_per_second = updates_per_second
        self._streams: dict[str, CardStream] = {}
        self._no_cardkit: set[str] = set()  # bots whose app lacks the CardKit permission
        self._tasks: set[asyncio.Task[None]] = set()

    def track(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def open(self, bot_id: str, reply_to: str, thread: bool, key: str, stream_after: float | None = None) -> CardStream:
        """The stream for `key` (the same object if the turn asks twice)."""
        stream = self._streams.get(key)
        if stream is None:
            after = self.stream_after if stream_after is None else stream_after
            stream = self._streams[key] = CardStream(self, bot_id, reply_to, thread, key, after)
        return stream

    async def _load(self, key: str) -> CardRecord | None:
        raw = await self._state().get(f"card:{key}")
        if raw is None:
            return None
        try:
            return CardRecord(**json.loads(raw))
        except (TypeError, ValueError):
            return None

    async def _save(self, key: str, record: CardRecord) -> None:
        await self._state().put(f"card:{key}", json.dumps(asdict(record)), ttl=STATE_TTL)

    async def push(self, stream: CardStream, text: str) -> None:
        """Create (or find, after a restart) the card, make it visible once, then update its text."""
        api = self._apis(stream.bot_id)
        if stream.record is None:
            stream.record = await self._load(stream.key)
        if stream.record is None:
            stream.record = CardRecord(card_id=await self._create_card(api, stream.bot_id), created_ms=_now_ms())
            await self._save(stream.key, stream.record)
        if not stream.record.message_id:
            stream.record.message_id = await self._send_card(api, stream, text)
            await self._save(stream.key, stream.record)
        await self._set_text(api, stream, stream.record, text)

    async def _create_card(self, api: FeishuApi, bot_id: str) -> str:
        """A CardKit card in streaming mode, or "" when this app may not use CardKit (then a patched card)."""
        if bot_id in self._no_cardkit:
            return ""
        data = json.dumps(card_json("", streaming=True))
        try:
            created = await api.call("POST", "/open-apis/cardkit/v1/cards", {"type": "card_json", "data": data})
        except PermanentSendError as exc:
            if exc.code not in NO_CARDKIT_CODES:
                raise
            log.warning("feishu bot %s cannot use CardKit (%s); streaming by patching a card message", bot_id, exc)
            self._no_cardkit.add(bot_id)
            return ""
        return str(created.get("card_id", ""))

    async def _set_text(self, api: FeishuApi, stream: CardStream, record: CardRecord, text: str) -> None:
        if record.patched:
            content = json.dumps(card_json(text, streaming=False), ensure_ascii=False)
            await api.call("PATCH", f"/open-apis/im/v1/messages/{record.message_id}", {"content": content})
            return
        await api.call(
            "PUT",
            f"/open-apis/cardkit/v1/cards/{record.card_id}/elements/{ELEMENT_ID}/content",
            {"content": text, "sequence": stream.sequence()},
        )

    async def _send_card(self, api: FeishuApi, stream: CardStream, text: str = "") -> str:
        assert stream.record is not None
        if stream.record.patched:
            content = json.dumps(card_json(text, streaming=False), ensure_ascii=False)
        else:
            content = json.dumps({"type": "card", "data": {"card_id": stream.record.card_id}})
        body: dict[str, Any] = {"msg_type": "interactive", "content": content, "uuid": uuid_for(stream.key, "card")}
        if stream.thread:
            body["reply_in_thread"] = True
        data = await api.call("POST", f"/open-apis/im/v1/messages/{stream.reply_to}/reply", body)
        return str(data.get("message_id", ""))

    async def finalize(self, bot_id: str, reply_to: str, thread: bool, key: str, text: str) -> str | None:
        """Write the final text into the reply's card and end streaming; None when no card exists.

        Works after a restart too (the card's ids come from durable state). Raises a SendError the
        outbox retries on transient trouble; repeating a finalize is harmless.
        """
        stream = self._streams.get(key)
        if stream is not None:
            await stream.stop()  # first: the pump may be between creating the card and recording it
        record = stream.record if stream is not None and stream.record is not None else await self._load(key)
        if record is None:
            self._streams.pop(key, None)
            return None
        stream = self.open(bot_id, reply_to, thread, key)
        async with stream.lock:
            stream.record = record
            api = self._apis(bot_id)
            if record.finalized:
                self._streams.pop(key, None)
                return record.message_id
            if not record.message_id:
                record.message_id = await self._send_card(api, stream)  # same uuid: never a second card
                await self._save(key, record)
            # The final takes two operations; leaving two update slots free keeps the card under Feishu's
            # 10 operations/s even right after a burst of updates (the bench measured exactly 10 without it).
            pause = stream.last_op + 2.0 / self.updates_per_second - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            try:
                await self._write_final(api, stream, record, text)
            except PermanentSendError as exc:
                log.warning("card %s cannot be finalized (%s); replacing the message in place", record.card_id, exc)
                await self._replace(api, stream, record, text)
            record.finalized = True
            await self._save(key, record)
        self._streams.pop(key, None)
        return record.message_id

    async def _replace(self, api: FeishuApi, stream: CardStream, record: CardRecord, text: str) -> None:
        """Show the full text in place of the card; a plain reply only if the message cannot be patched."""
        content = json.dumps(card_json(text, streaming=False), ensure_ascii=False)
        try:
            await api.call("PATCH", f"/open-apis/im/v1/messages/{record.message_id}", {"content": content})
        except PermanentSendError as exc:
            log.error("card message %s cannot be replaced (%s); sending the answer as a reply", record.message_id, exc)
            body: dict[str, Any] = {
                "msg_type": "interactive",
                "content": content,
                "uuid": uuid_for(stream.key, "reply"),
            }
            if stream.thread:
                body["reply_in_thread"] = True
            await api.call("POST", f"/open-apis/im/v1/messages/{stream.reply_to}/reply", body)

    async def _write_final(self, api: FeishuApi, stream: CardStream, record: CardRecord, text: str) -> None:
        """Full text, then streaming off; one retry with a jumped sequence if Feishu saw a larger one."""
        if record.patched:
            await self._set_text(api, stream, record, text)
            return
        for attempt in (1, 2):
            try:
                await api.call(
                    "PUT",
                    f"/open-apis/cardkit/v1/cards/{record.card_id}/elements/{ELEMENT_ID}/content",
                    {"content": text, "sequence": stream.sequence()},
                )
                await api.call(
                    "PATCH",
                    f"/open-apis/cardkit/v1/cards/{record.card_id}/settings",
                    {"settings": json.dumps({"config": {"streaming_mode": False}}), "sequence": stream.sequence()},
                )
                return
            except PermanentSendError as exc:
                if exc.code != SEQUENCE_ERROR or attempt == 2:
                    raise
                stream.last_seq += SEQUENCE_JUMP

    async def close(self) -> None:
        """Stop every pump (finals still arrive through the outbox after a restart)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
