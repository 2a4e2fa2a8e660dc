"""DingTalk adapter: Stream mode (default) or HTTP outgoing-robot callbacks in; sessionWebhook or robot OpenAPI out.

Inbound bot messages are acked only after `host.publish` journaled them: DingTalk never redelivers a
Stream bot message, so an ack for a message we did not store would lose it for good. Group messages
that do not concern the robot are acked and dropped before anything is stored.
Outbound: answers still being written after `stream_after` seconds stream into an AI card (cards.py); else
the asking message's sessionWebhook while it lives (markdown, @ the asker in groups); after
it expires, and for proactive pushes, the robot OpenAPI (`oToMessages/batchSend` for people,
`groupMessages/send` for groups) with what each inbound message taught us about reaching that user or
group (kept in adapter state for a year, so a push to "this group" works long after the last message).
DingTalk throttles a robot for 10 minutes past 20 messages a minute in one conversation, so sends are
paced per conversation and throttled sends wait (RateLimited) instead of being dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp

from adapters.base import AdapterHost, AdapterState, ReplyStream, SendReceipt
from adapters.dingtalk.api import DingTalkApi
from adapters.dingtalk.callback import ROUTE, make_handler
from adapters.dingtalk.cards import CardStreams, Space
from adapters.dingtalk.config import DingTalkConfig, DingTalkSecrets
from adapters.dingtalk.convert import (
    PLATFORM,
    ReplyRef,
    markdown_message,
    parse_reply_ref,
    sample_markdown,
    should_answer,
    to_inbound,
)
from adapters.dingtalk.errors import SessionWebhookGone
from adapters.dingtalk.pacing import ConversationPacer
from adapters.dingtalk.stream import StreamConnection
from adapters.dingtalk.stream_frames import StreamMessage
from adapters.dingtalk.wire import BotMessage, parse_bot_message
from adapters.tokens import probe_tokens
from adapters.wxcommon.pieces import reply_pieces
from adapters.wxcommon.text import shape_text
from gateway.errors import PermanentSendError, RateLimited, TransientSendError
from gateway.messages import ChatKind, InboundMessage, OutboundMessage, Target

log = logging.getLogger(__name__)

BOT_TOPIC = "/v1.0/im/bot/messages/get"
REACH_TTL = 365 * 86400.0
TEXT_LIMIT_BYTES = 18_000  # markdown messages are capped around 20 KB; stay under with the @ line and title


class DingTalkAdapter:
    """Every configured DingTalk robot."""

    name = PLATFORM

    def __init__(
        self,
        config: DingTalkConfig,
        secrets: dict[str, DingTalkSecrets],
        *,
        clock: Callable[[], float] = time.time,
        stream_options: dict[str, Any] | None = None,
    ) -> None:
        self._config = config
        self._secrets = secrets
        self._clock = clock
        self._host: AdapterHost | None = None
        self._probe_http: aiohttp.ClientSession | None = None
        self._apis = {
            b: DingTalkApi(
                self._http, config.openapi_base, bot.client_id, secrets[b].client_secret, timeout=config.api_timeout
            )
            for b, bot in config.bots.items()
        }
        self._stream_options = stream_options or {}
        self._links: dict[str, StreamConnection] = {}
        self._links_stop = asyncio.Event()
        self._pacer = ConversationPacer(config.messages_per_minute)
        self._cards = CardStreams(self._apis.__getitem__, self._state, config.card_updates_per_second, self._pacer.sent)
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._probe_http is not None:
            return self._probe_http
        if self._host is None:
            raise TransientSendError("dingtalk adapter not started", code="not_started")
        return self._host.http

    def _state(self) -> AdapterState:
        if self._host is None:
            raise TransientSendError("dingtalk adapter not started", code="not_started")
        return self._host.state(PLATFORM)

    async def start(self, host: AdapterHost) -> None:
        """Mount the callback route (HTTP-mode robots) and open one Stream connection per Stream robot.

        Starting again first closes the previous connections: one live connection per credential, never two
        (two would each get a share of the messages and the other's replies would look lost).
        """
        await self._close_links()
        self._host = host
        self._links_stop = asyncio.Event()
        if any(b.inbound == "http" for b in self._config.bots.values()) and not self._started:
            host.add_route("POST", ROUTE, self._callback_handler())
        cfg = self._config
        for bot_id, bot in cfg.bots.items():
            if bot.inbound != "stream":
                continue
            link = StreamConnection(
                host.http,
                f"{cfg.stream_base or cfg.openapi_base}/v1.0/gateway/connections/open",
                bot.client_id,
                self._secrets[bot_id].client_secret,
                self._receiver(bot_id),
                reconnect_min=cfg.reconnect_min,
                reconnect_max=cfg.reconnect_max,
                idle_timeout=cfg.stream_idle_timeout,
                name=f"dingtalk:{bot_id}",
                **self._stream_options,
            )
            self._links[bot_id] = link
            host.spawn(link.run(self._links_stop), name=f"dingtalk-stream:{bot_id}")
        self._cards.recover()  # AI cards a killed process left open
        self._started = True

    async def stop(self) -> None:
        """Close the Stream connections (messages being stored get a moment to be journaled and acked) and cards."""
        await self._close_links()  # first: messages read meanwhile must still be journaled (no redelivery)
        self._started = False
        await self._cards.close()

    async def _close_links(self) -> None:
        links, self._links = self._links, {}
        self._links_stop.set()
        for link in links.values():
            await link.close()

    def is_connected(self) -> bool:
        """Ready when every Stream robot has its live connection."""
        return self._started and all(link.is_connected for link in self._links.values())

    def connection_stats(self) -> dict[str, dict[str, float]]:
        """Per-robot Stream health for /metrics (adapters.base.ReportsConnections)."""
        return {
            b: {
                "up": 1.0 if x.is_connected else 0.0,
                "connects": x.connects,
                "reconnects": x.reconnects,
                "messages": x.messages,
                "acks": x.acks,
            }
            for b, x in self._links.items()
        }

    async def check_credentials(self, http: aiohttp.ClientSession) -> dict[str, str]:
        """Fetch each robot's access token (doctor) without starting anything."""
        self._probe_http = http
        return await probe_tokens({bot_id: api.tokens for bot_id, api in self._apis.items()})

    # -- inbound ---------------------------------------------------------------------------------
    def _receiver(self, bot_id: str) -> Callable[[StreamMessage], Any]:
        async def on_message(frame: StreamMessage) -> None:
            # Raising means "not stored": no ack. Bot messages are never redelivered, so a message we can
            # never use is acked and dropped with a log line; only a failure to journal raises.
            if frame.topic != BOT_TOPIC:
                return
            try:
                message = parse_bot_message(frame.data)
            except ValueError as exc:
                log.warning("dingtalk bot %s: dropped an unusable message (%s)", bot_id, str(exc)[:200])
                return
            await self._accept(bot_id, message, refusable=False)

        return on_message

    def _callback_handler(self) -> Any:
        def secret_of(bot_id: str) -> str | None:
            bot = self._config.bots.get(bot_id)
            return self._secrets[bot_id].client_secret if bot is not None and bot.inbound == "http" else None

        def accepting() -> bool:
            return self._host is not None and self._started and self._host.is_accepting()

        return make_handler(
            secret_of,
            self._accept,
            max_body_bytes=self._config.max_body_bytes,
            timestamp_window=self._config.timestamp_window,
            clock=self._clock,
            accepting=accepting,
            state=self._state(),
        )

    async def _accept(self, bot_id: str, message: BotMessage, *, refusable: bool = True) -> None:
        """Journal a message that concerns the robot; raises when it could not be stored.

        Stream messages are never redelivered, so they are not refusable: stored even while the gateway
        drains or its backlog is over the cap (then answered after the restart or once there is room).
        """
        host = self._host
        if host is None or (refusable and not self._started):
            raise TransientSendError("not accepting", code="not_started")
        bot = self._config.bots[bot_id]
        if not should_answer(message, bot.group_policy, bot.group_policies):
            return
        received = datetime.fromtimestamp(self._clock(), UTC)
        msg = to_inbound(bot_id, message, received, robot_code=bot.code)
        result = await host.publish(msg, refusable=refusable)
        if result.duplicate:
            return
        host.spawn(self._remember_reach(bot_id, msg), name=f"dingtalk-reach:{msg.platform_msg_id}")
        if msg.attachments and self._config.max_attachment_bytes:
            host.spawn(self._download(bot_id, msg), name=f"dingtalk-download:{msg.platform_msg_id}")

    async def _remember_reach(self, bot_id: str, msg: InboundMessage) -> None:
        """What a push to this user or group needs later, when no sessionWebhook is left."""
        ref = parse_reply_ref(msg.reply_ref)
        if ref is None:
            return
        value = json.dumps({"robot_code": ref.robot_code, "staff_id": ref.staff_id, "type": ref.conversation_type})
        try:
            state = self._state()
            await state.put(f"reach:{bot_id}:{msg.chat_id}", value, ttl=REACH_TTL)
            if ref.staff_id:
                await state.put(f"reach:{bot_id}:user:{msg.sender_id}", value, ttl=REACH_TTL)
        except Exception:  # costs later pushes their robotCode override only: the config default still works
            log.exception("dingtalk bot %s: could not record how to reach chat %s", bot_id, msg.chat_id)

    async def _download(self, bot_id: str, msg: InboundMessage) -> None:
        """Fetch pictures and files into the attachment store (after the ack: never delays it)."""
        host = self._host
        if host is None:
            return
        api, limit = self._apis[bot_id], self._config.max_attachment_bytes
        ref = parse_reply_ref(msg.reply_ref)
        robot_code = ref.robot_code if ref is not None else self._config.bots[bot_id].code
        for att in msg.attachments:
            try:
                url = await api.download_url(robot_code, att.ref)
                got = await api.download(url, limit)
            except Exception as exc:
                log.warning("dingtalk attachment of %s not downloaded: %s", msg.platform_msg_id, exc)
                continue
            if got.too_large:
                log.warning("dingtalk attachment of %s is larger than %d bytes; not stored", msg.platform_msg_id, limit)
                continue
            await host.attachments.save(f"{PLATFORM}:{bot_id}:{att.ref}", got.data)

    # -- outbound --------------------------------------------------------------------------------
    def prepare(self, reply: OutboundMessage) -> list[OutboundMessage]:
        """Markdown kept (DingTalk renders it); split only above what one message carries."""
        return reply_pieces(
            reply, shape_text(reply.text, TEXT_LIMIT_BYTES, markdown=True) or [reply.text], markdown=True
        )

    def open_stream(self, target: Target, idempotency_key: str) -> ReplyStream | None:
        """An AI card (cards.py) for replies still being written after `stream_after` s; DMs need a staffId."""
        bot = self._config.bots.get(target.bot_id)
        ref = parse_reply_ref(target.reply_ref)
        if bot is None or not bot.card_template_id or ref is None or not (ref.is_group or ref.staff_id):
            return None
        space = Space(ref.robot_code or bot.code, ref.conversation_id or target.chat_id, ref.is_group, ref.staff_id)
        return self._cards.open(target.bot_id, idempotency_key, bot.card_template_id, space, bot.stream_after)

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        """Into the reply's AI card if it has one, else the asking message's sessionWebhook, else the OpenAPI."""
        target = msg.target
        bot = self._config.bots.get(target.bot_id)
        if bot is None or target.platform != PLATFORM:
            raise PermanentSendError(f"no dingtalk robot {target.bot_id!r}", code="unknown_bot")
        text = msg.text or " "
        card = await self._cards.finalize(msg.idempotency_key, text, failed=msg.failed)
        if card is not None:
            return SendReceipt(platform_msg_id=card)
        self._pacer.check(target.chat_id)
        ref = parse_reply_ref(target.reply_ref)
        api = self._apis[target.bot_id]
        if ref is not None and ref.webhook_alive(self._clock()):
            at = ref.staff_id if ref.is_group and ref.staff_id else None
            try:
                await api.post_session_webhook(ref.session_webhook, markdown_message(text, at_staff_id=at))
                self._pacer.sent(target.chat_id)
                return SendReceipt()
            except SessionWebhookGone as exc:
                if exc.code == "host":  # not DingTalk's URL: a forged message, never a reason to use the OpenAPI
                    raise PermanentSendError(str(exc), code="foreign_webhook") from exc
                log.info("dingtalk sessionWebhook of %s unusable (%s); using the OpenAPI", target.chat_id, exc)
        receipt = await self._send_openapi(target, ref, text, bot.code)
        self._pacer.sent(target.chat_id)
        return receipt

    async def _send_openapi(self, target: Target, ref: ReplyRef | None, text: str, default_code: str) -> SendReceipt:
        reach = await self._reach(target)
        robot_code = (ref.robot_code if ref else "") or reach.get("robot_code") or default_code
        api = self._apis[target.bot_id]
        key, param = sample_markdown(text)
        if target.chat_kind is ChatKind.GROUP:
            query = await api.group_send(robot_code, target.chat_id, key, param)
            return SendReceipt(platform_msg_id=query)
        # target.user_id is the staffId when DingTalk gave one, else the opaque "$:LWCP_v1:$..." senderId,
        # which the OpenAPI does not take as a userId.
        fallback = "" if target.user_id.startswith("$:") else target.user_id
        staff_id = (ref.staff_id if ref else "") or reach.get("staff_id") or fallback
        if not staff_id:
            raise PermanentSendError("this user has no staffId, so only a live sessionWebhook could reach them")
        result = await api.batch_send(robot_code, [staff_id], key, param)
        if staff_id in result.flow_controlled or staff_id in result.unsent:
            raise RateLimited(f"dingtalk flow control for {staff_id}", code="flow_controlled", retry_after=60.0)
        if staff_id in result.invalid:
            raise PermanentSendError(f"dingtalk says {staff_id} is not a valid user for robot {robot_code}")
        return SendReceipt(platform_msg_id=result.process_query_keys[0] if result.process_query_keys else "")

    async def _reach(self, target: Target) -> dict[str, str]:
        key = f"reach:{target.bot_id}:{target.chat_id}"
        try:
            raw = await self._state().get(key)
            data = json.loads(raw) if raw else {}
        except Exception:
            return {}
        return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}
