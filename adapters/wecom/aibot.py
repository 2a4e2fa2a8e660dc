"""The long connection of one WeCom AI bot (智能机器人), spoken directly over an aiohttp WebSocket.

No SDK: the official Python SDK brings its own websockets stack and reconnect policy, while the
gateway needs its shared HTTP session, typed send errors and streams that always end. Behaviour
copied from WecomTeam/aibot-node-sdk `src/ws.ts` (the protocol's reference client): subscribe first
and wait for its ack; app-level `ping` every 30 s, two unanswered pings mean the socket is dead;
replies on a callback reuse its req_id, one frame in flight per req_id, 5 s per ack; exponential
reconnect backoff; after a `disconnected_event` (a newer connection took over) the SDK stops
reconnecting, here we only wait a long time so two gateways never fight over the bot.
Frame shapes and sources: see `aibot_wire`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable
from contextlib import suppress
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

import aiohttp

from adapters.base import AdapterHost, ReplyStream, SendReceipt
from adapters.wecom import aibot_wire as wire
from adapters.wecom.aibot_stream import StreamBook
from adapters.wecom.aibot_wire import Ack, AIBotSettings, Frame, LinkDown
from gateway.errors import RateLimited, TransientSendError
from gateway.messages import OutboundMessage, Target

__all__ = ["AIBotConnection", "AIBotSettings"]

log = logging.getLogger(__name__)

_Socket = aiohttp.ClientWebSocketResponse[bool]
_T = TypeVar("_T")


class _End(Enum):
    FAILED = "failed"  # could not connect or subscribe
    REJECTED = "rejected"  # subscribe answered with an error (e.g. bad secret)
    DROPPED = "dropped"
    HALF_OPEN = "half-open"
    REPLACED = "replaced"


@dataclass
class _Owed:
    """Acks still due on one req_id after their frames timed out."""

    count: int = 0
    paid: asyncio.Event = field(default_factory=asyncio.Event)


class AIBotConnection:
    """Receives callbacks into `host.publish` and delivers streamed and final replies for one bot."""

    def __init__(
        self,
        bot_id: str,
        secret: str,
        platform_bot_id: str,
        *,
        ws_url: str = wire.DEFAULT_WS_URL,
        settings: AIBotSettings | None = None,
    ) -> None:
        self._bot_id = bot_id
        self._secret = secret
        self._platform_bot_id = platform_bot_id
        self._ws_url = ws_url
        self._s = settings or AIBotSettings()
        self._ws: _Socket | None = None
        self._connected = False
        self._end: _End | None = None
        self._pending: dict[str, asyncio.Future[Ack]] = {}
        self._owed: dict[str, _Owed] = {}  # acks still due for frames we stopped waiting for
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._inbox: asyncio.Queue[Frame] = asyncio.Queue(self._s.inbox_size)
        self._closing = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopped.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams = StreamBook(self, idle_timeout=self._s.stream_idle_timeout, note=self._s.interrupted_note)
        # The most recent failure, kept after recovery so doctor can say why the link flapped.
        self.last_error = ""

    @property
    def connected(self) -> bool:
        """Subscribed and not known to be dead."""
        return self._connected

    # ------------------------------------------------------------------ connection loop
    async def run(self, host: AdapterHost) -> None:
        """Keep the bot subscribed until `close`; never raises for network or protocol trouble."""
        self._stopped.clear()
        self._tasks = {
            asyncio.create_task(self._work(host), name="wecom-aibot-inbox"),
            asyncio.create_task(self._janitor(), name="wecom-aibot-janitor"),
        }
        attempt = 0
        try:
            while not self._closing.is_set():
                began = time.monotonic()
                end = await self._connect_once(host)
                if self._closing.is_set():
                    break
                if end is _End.REPLACED:
                    delay, attempt = self._s.replaced_backoff, 0
                else:
                    if end in (_End.DROPPED, _End.HALF_OPEN) and time.monotonic() - began >= self._s.ping_interval:
                        attempt = 0  # it was healthy for a while: start the backoff over
                    delay = wire.backoff_delay(attempt, self._s.reconnect_base, self._s.reconnect_max)
                    attempt += 1
                log.info("wecom aibot %s: link %s, reconnecting in %.2fs", self._platform_bot_id, end.value, delay)
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
        finally:
            await self._drain_inbox()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = set()
            self._stopped.set()

    async def _drain_inbox(self) -> None:
        """Journal the callbacks already received before stopping: WeCom will not send them again."""
        if self._inbox.empty():
            return
        try:
            await asyncio.wait_for(self._inbox.join(), self._s.close_timeout)
        except TimeoutError:
            log.error(
                "wecom aibot %s: stopping with %d callbacks not journaled (the journal is too slow)",
                self._platform_bot_id,
                self._inbox.qsize(),
            )

    async def _connect_once(self, host: AdapterHost) -> _End:
        try:
            return await self._session(host)
        except (OSError, aiohttp.ClientError, TimeoutError, LinkDown) as exc:
            self.last_error = f"connect failed: {type(exc).__name__}: {exc}"[:300]
            log.warning("wecom aibot %s: %s", self._platform_bot_id, self.last_error)
        except Exception as exc:
            self.last_error = f"connection error: {type(exc).__name__}"
            log.exception("wecom aibot %s: unexpected connection error", self._platform_bot_id)
        return _End.FAILED

    async def _session(self, host: AdapterHost) -> _End:
        timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self._s.close_timeout)
        async with asyncio.timeout(self._s.connect_timeout):
            ws = await host.http.ws_connect(self._ws_url, autoping=True, heartbeat=None, timeout=timeout)
        self._ws, self._end = ws, None
        reader = asyncio.create_task(self._read(ws), name="wecom-aibot-reader")
        try:
            ack = await self._exchange(ws, wire.subscribe_frame(self._bot_id, self._secret))
            if ack.errcode:
                self.last_error = f"subscribe rejected: errcode {ack.errcode} {ack.errmsg}".strip()[:300]
                log.error("wecom aibot %s: %s (check bot_id and secret)", self._platform_bot_id, self.last_error)
                return _End.REJECTED
            self._connected = True
            log.info("wecom aibot %s: subscribed", self._platform_bot_id)
            pinger = asyncio.create_task(self._ping(ws), name="wecom-aibot-ping")
            try:
                done, _ = await asyncio.wait({reader, pinger}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                pinger.cancel()
                await asyncio.gather(pinger, return_exceptions=True)
            if self._end is None:
                self._end = _End.HALF_OPEN if pinger in done else _End.DROPPED
                if pinger not in done and not self._closing.is_set():
                    self.last_error = "connection closed by the server"
            return self._end
        finally:
            self._connected, self._ws = False, None
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            with suppress(Exception):
                await ws.close()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(LinkDown("connection lost"))
            self._pending.clear()
            self._owed.clear()  # acks never cross connections

    async def _read(self, ws: _Socket) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                frame = wire.parse(msg.data)
                if frame is None:
                    log.warning("wecom aibot %s: ignoring a frame that is not JSON", self._platform_bot_id)
                elif self._on_frame(frame):
                    return

    def _on_frame(self, frame: Frame) -> bool:
        """Route one frame; True when the server told us to go away."""
        cmd = frame.get("cmd")
        if cmd in wire.CALLBACK_CMDS:
            if cmd == wire.CMD_EVENT_CALLBACK and wire.event_type(frame) == wire.EVENT_DISCONNECTED:
                self._end = _End.REPLACED
                self.last_error = "replaced by a newer connection for this bot (disconnected_event)"
                log.warning("wecom aibot %s: %s; backing off", self._platform_bot_id, self.last_error)
                return True
            try:
                self._inbox.put_nowait(frame)
            except asyncio.QueueFull:
                self._refuse(frame)
            return False
        ack = wire.as_ack(frame)
        owed = self._owed.get(ack.req_id)
        if owed is not None and ack.req_id not in self._pending:  # see _settle
            owed.count -= 1
            if owed.count <= 0:
                owed.paid.set()
                del self._owed[ack.req_id]
            log.info("wecom aibot %s: late ack for %s absorbed", self._platform_bot_id, ack.req_id)
            return False
        fut = self._pending.get(ack.req_id)
        if fut is not None and not fut.done():
            fut.set_result(ack)
        else:
            log.debug("wecom aibot %s: unmatched frame for req_id %s", self._platform_bot_id, ack.req_id)
        return False

    async def _ping(self, ws: _Socket) -> None:
        missed = 0
        while True:
            await asyncio.sleep(self._s.ping_interval)
            try:
                await self._exchange(ws, wire.ping_frame(), min(self._s.ack_timeout, self._s.ping_interval))
                missed = 0  # any answer, even an error, proves the socket carries data
            except TimeoutError:
                missed += 1
            if missed >= self._s.missed_pings_allowed:
                self.last_error = f"no ack for {missed} pings: socket is half-open"
                log.warning("wecom aibot %s: %s, reconnecting", self._platform_bot_id, self.last_error)
                return

    # ------------------------------------------------------------------ frames
    def lock_for(self, req_id: str) -> asyncio.Lock:
        lock = self._locks.get(req_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[req_id] = lock
        return lock

    async def request(self, frame: Frame) -> Ack:
        """Send `frame` on the subscribed socket and wait for its ack (LinkDown / TimeoutError)."""
        ws = self._ws
        if ws is None or not self._connected:
            raise LinkDown("not connected")
        return await self._exchange(ws, frame)

    async def _exchange(self, ws: _Socket, frame: Frame, wait: float | None = None) -> Ack:
        req_id = wire.req_id_of(frame)
        await self._settle(req_id)
        fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            try:
                await ws.send_str(wire.encode(frame))
            except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
                raise LinkDown(f"send failed: {type(exc).__name__}") from exc
            try:
                return await asyncio.wait_for(fut, self._s.ack_timeout if wait is None else wait)
            except TimeoutError:
                if self._ws is ws and frame.get("cmd") in wire.REPLY_CMDS:  # other req_ids are never reused
                    self._owed.setdefault(req_id, _Owed()).count += 1
                raise
        finally:
            if self._pending.get(req_id) is fut:
                del self._pending[req_id]

    async def _settle(self, req_id: str) -> None:
        """Before a frame goes out on `req_id`, give acks still due there one ack timeout to arrive.

        Acks carry nothing but the req_id, and all frames answering a callback share it: a late
        "ok" for a timed-out update, arriving while the finish waits, would pass for the finish's
        ack, so a refused final would count as shown and the answer would be lost. Frames on one
        req_id go one at a time, so waiting here keeps the next frame's ack unambiguous; an ack
        that never came within the grace is taken as lost.
        """
        owed = self._owed.get(req_id)
        if owed is None:
            return
        with suppress(TimeoutError):
            await asyncio.wait_for(owed.paid.wait(), self._s.ack_timeout)
        if self._owed.get(req_id) is owed:
            del self._owed[req_id]

    async def _respond(self, frame: Frame) -> None:
        """Best-effort reply (welcome, busy) on a callback's req_id, serialised with its other frames."""
        async with self.lock_for(wire.req_id_of(frame)):
            try:
                ack = await self.request(frame)
            except (LinkDown, TimeoutError) as exc:
                log.warning("wecom aibot %s: %s not delivered (%s)", self._platform_bot_id, frame["cmd"], exc)
                return
        if ack.errcode:
            log.warning("wecom aibot %s: %s refused (errcode %d)", self._platform_bot_id, frame["cmd"], ack.errcode)

    # ------------------------------------------------------------------ callbacks
    async def _work(self, host: AdapterHost) -> None:
        """Journal callbacks in arrival order, off the reader so a slow journal never delays ping acks.

        Whatever queued up while the previous batch was being committed is published together: one
        at a time, each callback waited for its own commit, so a burst drained at one fsync per
        message and overflowed the inbox. The publishes of a batch start in arrival order and each
        reaches the journal before it first waits, so journal order (each session's order) is
        arrival order, and the group commit carries the whole batch.
        """
        while True:
            frames = [await self._inbox.get()]
            while len(frames) < self._s.publish_batch and not self._inbox.empty():
                frames.append(self._inbox.get_nowait())
            try:
                outcomes = await asyncio.gather(*(self._dispatch(host, f) for f in frames), return_exceptions=True)
            finally:
                for _ in frames:
                    self._inbox.task_done()
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    log.error(
                        "wecom aibot %s: callback handling failed",
                        self._platform_bot_id,
                        exc_info=(type(outcome), outcome, outcome.__traceback__),
                    )

    def _refuse(self, frame: Frame) -> None:
        """The inbox is full: answer "busy" on the callback's stream instead of dropping it unseen.

        WeCom never redelivers a long-connection callback, so the user is the only one who can retry.
        The answer needs an ack the reader itself must route, so it runs as a tracked task.
        """
        req_id = wire.req_id_of(frame)
        log.error("wecom aibot %s: inbox full, answering busy to callback %s", self._platform_bot_id, req_id)
        if frame.get("cmd") == wire.CMD_EVENT_CALLBACK:
            return  # an event (e.g. enter_chat) carries no message that could be lost
        busy = wire.stream_frame(req_id, wire.new_req_id("stream"), self._s.busy_text, finish=True)
        task = asyncio.get_running_loop().create_task(self._respond(busy), name="wecom-aibot-busy")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, host: AdapterHost, frame: Frame) -> None:
        req_id = wire.req_id_of(frame)
        if frame.get("cmd") == wire.CMD_EVENT_CALLBACK:
            if wire.event_type(frame) == wire.EVENT_ENTER_CHAT and self._s.welcome_text:
                await self._respond(wire.welcome_frame(req_id, self._s.welcome_text))
            return
        msg = wire.to_inbound(wire.body_of(frame), req_id, self._platform_bot_id, self._s.bot_name)
        if msg is None:
            log.warning("wecom aibot %s: callback without msgid or sender ignored", self._platform_bot_id)
            return
        try:
            # WeCom never redelivers a long-connection callback: journal it even while draining or over the
            # backlog cap (the journal is the buffer), as adapters.base asks of such platforms.
            await host.publish(msg, refusable=False)
        except Exception as exc:  # e.g. the disk is full: it is lost, so tell the user
            log.warning("wecom aibot %s: could not accept %s (%s)", self._platform_bot_id, msg.gateway_id, exc)
            busy_id = wire.new_req_id("stream")
            await self._respond(wire.stream_frame(req_id, busy_id, self._s.busy_text, finish=True))

    async def _janitor(self) -> None:
        period = max(0.02, min(1.0, self._s.stream_idle_timeout / 4))
        while True:
            await asyncio.sleep(period)
            await self._streams.sweep()

    # ------------------------------------------------------------------ replies
    def open_stream(self, target: Target, idempotency_key: str) -> ReplyStream | None:
        """A live view on the callback's req_id; None without one (e.g. a proactive reply)."""
        if not target.reply_ref or self._closing.is_set():
            return None
        return self._streams.open(target.reply_ref, wire.stream_id_for(idempotency_key))

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        """Finish the reply's stream with the full text, or send it proactively when the req_id is gone."""
        if not self._connected:
            raise TransientSendError(f"wecom aibot not connected ({self.last_error or 'starting'})", code="offline")
        text = msg.text if msg.text.strip() else self._s.empty_answer_text
        req_id = msg.target.reply_ref
        if req_id:
            stream = self._streams.ensure(req_id, wire.stream_id_for(msg.idempotency_key))
            ack = await self._guard(stream.finish(text))
            if ack is not None:
                if ack.errcode == 0:
                    return SendReceipt(platform_msg_id=stream.stream_id)
                if ack.errcode not in wire.STREAM_GONE_CODES:
                    error = wire.map_error(ack.errcode, ack.errmsg)
                    if isinstance(error, RateLimited):
                        raise error
                    if stream.final_maybe_shown == text:
                        # Our earlier finish with this very text was applied but its ack got lost; the
                        # refusal is WeCom saying "already finished". A proactive copy would show it twice.
                        return SendReceipt(platform_msg_id=stream.stream_id)
                # Expired, unknown req_id, or refused for a reason a proactive message does not share (e.g. the
                # stream was already finished by a previous run): the answer must still arrive.
            log.info(
                "wecom aibot %s: stream for %s unusable (%s), sending proactively",
                self._platform_bot_id,
                req_id,
                ack.errcode if ack is not None else "no ack",
            )
        sent = await self._guard(self.request(wire.send_markdown_frame(msg.target.chat_id, text)))
        if sent.errcode:
            raise wire.map_error(sent.errcode, sent.errmsg)
        return SendReceipt(platform_msg_id=str(sent.body.get("msgid") or sent.req_id))

    async def _guard(self, call: Awaitable[_T]) -> _T:
        """Await a frame exchange, turning link trouble into the outbox's retryable error."""
        try:
            result = await call
        except LinkDown as exc:
            raise TransientSendError(f"wecom aibot link lost: {exc}", code="offline") from exc
        except TimeoutError as exc:
            raise TransientSendError(f"wecom aibot ack timed out after {self._s.ack_timeout}s", code="timeout") from exc
        return result

    async def close(self) -> None:
        """End every visible stream with `finish: true`, then close the socket and stop `run`."""
        self._closing.set()
        await self._streams.interrupt_all()
        ws = self._ws
        if ws is not None:
            with suppress(Exception):
                await ws.close()
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), self._s.close_timeout + self._s.ack_timeout)
