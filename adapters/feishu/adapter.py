"""Feishu / Lark adapter: long connection (default) or HTTP callbacks in, replies and streaming cards out.

Inbound events are acked only after `host.publish` journaled them (within Feishu's 3 s; the turn runs
later) and are deduplicated by the message's `message_id` (see convert.py: Feishu may push one message
again under a new event_id), so redeliveries never start a second turn. Group
messages that do not concern the bot are acked and dropped before anything is stored.
Outbound replies use the reply API with a `uuid` derived from the outbox key (a resend after a crash
cannot show twice), as a JSON 2.0 card so markdown renders; answers still being written after
`stream_after` seconds appear in a streaming card (cards.py) that the final send finalizes.
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
from aiohttp import web

from adapters.base import AdapterHost, AdapterState, ReplyStream, SendReceipt
from adapters.feishu.api import FeishuApi
from adapters.feishu.callback import FeishuCallbackRejected, UrlVerification, parse_callback
from adapters.feishu.cards import CardStreams, card_json, uuid_for
from adapters.feishu.config import FeishuConfig, FeishuSecrets
from adapters.feishu.convert import PLATFORM, should_answer, split_reply_ref, to_inbound
from adapters.feishu.ws import FeishuWsConnection, FeishuWsSettings
from adapters.httpio import read_bounded
from adapters.tokens import probe_tokens
from adapters.wxcommon.pieces import reply_pieces
from adapters.wxcommon.text import shape_text
from gateway.errors import PermanentSendError, RateLimited, TransientSendError
from gateway.messages import ChatKind, InboundMessage, OutboundMessage, Target

log = logging.getLogger(__name__)

ROUTE = "/webhooks/feishu/{bot_id}"
DOWNLOAD_RETRY_PAUSES = (1.0, 5.0, 30.0, 0.0)  # seconds before attempts 2, 3, 4 (the last entry is unused)
CARD_TEXT_LIMIT_BYTES = 14_000  # a card carries <= 30 KB of JSON; escaping can double text (quotes, backslashes)


class FeishuAdapter:
    """Every configured Feishu app."""

    name = PLATFORM

    def __init__(
        self,
        config: FeishuConfig,
        secrets: dict[str, FeishuSecrets],
        *,
        ws_settings: FeishuWsSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._secrets = secrets
        self._clock = clock
        self._host: AdapterHost | None = None
        self._probe_http: aiohttp.ClientSession | None = None
        self._apis = {
            b: FeishuApi(self._http, config.domain, bot.app_id, secrets[b].app_secret, timeout=config.api_timeout)
            for b, bot in config.bots.items()
        }
        self._bot_open_ids: dict[str, str] = {}
        self._warned_v1: set[str] = set()  # bots already told their app subscribes to v1 message events
        self._links = {
            b: FeishuWsConnection(
                bot.app_id,
                secrets[b].app_secret,
                self._receiver(b),
                domain=config.long_connection_domain or config.domain,
                settings=ws_settings,
            )
            for b, bot in config.bots.items()
            if bot.inbound == "long_connection"
        }
        self._cards = CardStreams(
            self._apis.__getitem__,
            self._state,
            stream_after=1.0,  # per bot, see open_stream
            updates_per_second=config.card_updates_per_second,
        )
        self._last_send: dict[str, float] = {}
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._probe_http is not None:
            return self._probe_http
        if self._host is None:
            raise TransientSendError("feishu adapter not started", code="not_started")
        return self._host.http

    def _state(self) -> AdapterState:
        if self._host is None:
            raise TransientSendError("feishu adapter not started", code="not_started")
        return self._host.state(PLATFORM)

    async def start(self, host: AdapterHost) -> None:
        """Learn each bot's open_id, mount the callback route, open the long connections."""
        self._host = host
        if any(b.inbound == "webhook" for b in self._config.bots.values()):
            host.add_route("POST", ROUTE, self._handle_callback)
        for bot_id in self._config.bots:
            host.spawn(self._learn_bot_open_id(bot_id), name=f"feishu-bot-info:{bot_id}")
        for bot_id, link in self._links.items():
            host.spawn(link.run(host.http), name=f"feishu-ws:{bot_id}")
        self._started = True

    async def stop(self) -> None:
        """Close the long connections (in-flight events get a moment to be stored and acked)."""
        self._started = False
        for link in self._links.values():
            await link.close()
        await self._cards.close()

    def is_connected(self) -> bool:
        """Ready when every long connection is up and every bot knows its own open_id."""
        return (
            self._started
            and all(link.connected for link in self._links.values())
            and all(b in self._bot_open_ids for b in self._config.bots)
        )

    async def _learn_bot_open_id(self, bot_id: str) -> None:
        """Mentions are recognized by the bot's open_id, which only the bot info API tells."""
        delay = 1.0
        while bot_id not in self._bot_open_ids:
            try:
                data = await self._apis[bot_id].call("GET", "/open-apis/bot/v3/info", whole=True)
                info = data.get("bot")
                open_id = info.get("open_id", "") if isinstance(info, dict) else ""
                if isinstance(open_id, str) and open_id:
                    self._bot_open_ids[bot_id] = open_id
                    return
            except Exception as exc:
                log.warning("feishu bot %s: bot info unavailable (%s); retrying in %.0fs", bot_id, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 300.0)

    async def check_credentials(self, http: aiohttp.ClientSession) -> dict[str, str]:
        """Fetch each app's tenant token (doctor) without starting anything."""
        self._probe_http = http
        return await probe_tokens({bot_id: c.tokens for bot_id, c in self._apis.items()})

    # -- inbound ---------------------------------------------------------------------------------
    def _receiver(self, bot_id: str) -> Callable[[bytes], Any]:
        async def on_event(payload: bytes) -> None:
            # Only a failure to store may raise (the ack then says 500 and Feishu redelivers); an event
            # we can never use is acked and dropped, or its redeliveries would repeat for hours.
            try:
                envelope = json.loads(payload)
                if not isinstance(envelope, dict):
                    raise FeishuCallbackRejected(400, "event is not a JSON object")
                await self._accept(bot_id, envelope)
            except (ValueError, FeishuCallbackRejected) as exc:
                log.warning("feishu bot %s: dropped an unusable event (%s)", bot_id, exc)

        return on_event

    async def _accept(self, bot_id: str, envelope: dict[str, Any]) -> None:
        """Journal a message event that concerns the bot; raises when it could not be stored (no ack)."""
        host = self._host
        if host is None or not self._started:
            raise TransientSendError("not accepting", code="not_started")
        bot = self._config.bots[bot_id]
        bot_open_id = self._bot_open_ids.get(bot_id, "")
        msg = to_inbound(
            bot_id, envelope, bot_open_id=bot_open_id, received_at=datetime.fromtimestamp(self._clock(), UTC)
        )
        if msg is None:
            self._warn_if_old_subscription(bot_id, envelope)
            return
        if not bot_open_id and msg.chat_kind is ChatKind.GROUP:
            # Without our own open_id a mention cannot be recognized: refuse (Feishu redelivers) rather than
            # ack and silently drop a question asked of us.
            raise TransientSendError("bot identity not known yet", code="bot_info")
        policy = bot.group_policies.get(msg.chat_id, bot.group_policy)
        if not should_answer(msg, group_policy=policy):
            return
        result = await host.publish(msg)
        if msg.attachments and not result.duplicate and self._config.max_attachment_bytes:
            host.spawn(self._download(bot_id, msg), name=f"feishu-download:{msg.platform_msg_id}")

    def _warn_if_old_subscription(self, bot_id: str, envelope: dict[str, Any]) -> None:
        """A v1 "message" event means the app subscribes with the old event format: every message is acked
        and none answered, so say so (once per bot) instead of staying silent."""
        event = envelope.get("event")
        if "header" in envelope or not isinstance(event, dict) or event.get("type") != "message":
            return
        if bot_id not in self._warned_v1:
            self._warned_v1.add(bot_id)
            log.warning(
                "feishu bot %s: received an old-format (v1) message event, which is not answered; subscribe the app"
                " to im.message.receive_v1 (event format 2.0) in the developer console",
                bot_id,
            )

    async def _download(self, bot_id: str, msg: InboundMessage) -> None:
        """Fetch the message's resources into the attachment store (after the ack: never delays it)."""
        host = self._host
        if host is None:
            return
        limit = self._config.max_attachment_bytes
        for att in msg.attachments:
            message_id, _, key = att.ref.partition(":")
            if not message_id or not key:
                continue
            kind = "image" if att.kind == "image" else "file"
            path = f"/open-apis/im/v1/messages/{message_id}/resources/{key}?type={kind}"
            fetched = await self._fetch_with_retries(bot_id, path, limit, att.ref)
            if fetched is None:
                continue
            data, too_large = fetched
            if too_large:
                log.warning("feishu attachment %s is larger than %d bytes; not stored", att.ref, limit)
                continue
            await host.attachments.save(f"{PLATFORM}:{bot_id}:{att.ref}", data)

    async def _fetch_with_retries(self, bot_id: str, path: str, limit: int, ref: str) -> tuple[bytes, bool] | None:
        """A resource download, retried on transient trouble (redeliveries are duplicates: no second chance)."""
        for attempt, pause in enumerate(DOWNLOAD_RETRY_PAUSES, 1):
            try:
                data, _, too_large = await self._apis[bot_id].download(path, limit)
                return data, too_large
            except TransientSendError as exc:
                if attempt == len(DOWNLOAD_RETRY_PAUSES):
                    log.warning("feishu attachment %s not downloaded after %d attempts: %s", ref, attempt, exc)
                    return None
                await asyncio.sleep(pause)
            except Exception as exc:
                log.warning("feishu attachment %s not downloaded: %s", ref, exc)
                return None
        return None

    async def _handle_callback(self, request: web.Request) -> web.Response:
        bot_id = request.match_info["bot_id"]
        bot, secrets = self._config.bots.get(bot_id), self._secrets.get(bot_id)
        if bot is None or secrets is None or bot.inbound != "webhook":
            return _reject(bot_id, FeishuCallbackRejected(404, "unknown bot"))
        host = self._host
        if host is None or not self._started or not host.is_accepting():
            return web.json_response({"msg": "not accepting"}, status=503, headers={"Retry-After": "1"})
        body, too_large = await read_bounded(request.content, self._config.max_body_bytes)
        if too_large:
            resp = _reject(bot_id, FeishuCallbackRejected(413, "body too large"))
            resp.force_close()
            return resp
        try:
            result = parse_callback(
                body,
                request.headers,
                encrypt_key=secrets.encrypt_key or None,
                verification_token=secrets.verification_token,
                now=self._clock(),
                window=self._config.timestamp_window,
                max_bytes=self._config.max_body_bytes,
            )
            if isinstance(result, UrlVerification):
                return web.json_response(result.response())
            await self._accept(bot_id, result.payload)
        except FeishuCallbackRejected as exc:
            return _reject(bot_id, exc)
        except Exception:
            log.exception("could not journal a feishu event for bot %r", bot_id)
            return web.json_response({"msg": "temporarily unavailable"}, status=503, headers={"Retry-After": "2"})
        return web.json_response({"msg": "success"})

    # -- outbound --------------------------------------------------------------------------------
    def prepare(self, reply: OutboundMessage) -> list[OutboundMessage]:
        """Markdown kept (cards render it); split only above what one card carries."""
        return reply_pieces(
            reply, shape_text(reply.text, CARD_TEXT_LIMIT_BYTES, markdown=True) or [reply.text], markdown=True
        )

    def _in_thread(self, target: Target) -> tuple[str, bool]:
        message_id, in_thread = split_reply_ref(target.reply_ref)
        bot = self._config.bots.get(target.bot_id)
        return message_id, in_thread or (target.chat_kind is ChatKind.GROUP and bot is not None and bot.reply_in_thread)

    def open_stream(self, target: Target, idempotency_key: str) -> ReplyStream | None:
        """A streaming card for answers that take a while (not for proactive messages)."""
        bot = self._config.bots.get(target.bot_id)
        if bot is None or bot.streaming == "off" or not target.reply_ref:
            return None
        message_id, in_thread = self._in_thread(target)
        return self._cards.open(target.bot_id, message_id, in_thread, idempotency_key, bot.stream_after)

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        """Finalize the reply's streaming card if it has one, else reply with a card (or post to the chat)."""
        bot_id = msg.target.bot_id
        api = self._apis.get(bot_id)
        if api is None or msg.target.platform != PLATFORM:
            raise PermanentSendError(f"no feishu bot {bot_id!r}", code="unknown_bot")
        self._pace(msg.target.chat_id)
        text = msg.text or " "
        message_id, in_thread = self._in_thread(msg.target)
        if message_id:
            finalized = await self._cards.finalize(bot_id, message_id, in_thread, msg.idempotency_key, text)
            if finalized is not None:
                return SendReceipt(platform_msg_id=finalized)
        content = json.dumps(card_json(text, streaming=False), ensure_ascii=False)
        body: dict[str, Any] = {
            "msg_type": "interactive",
            "content": content,
            "uuid": uuid_for(msg.idempotency_key, "reply"),
        }
        if message_id:
            if in_thread:
                body["reply_in_thread"] = True
            data = await api.call("POST", f"/open-apis/im/v1/messages/{message_id}/reply", body)
        else:
            body["receive_id"] = msg.target.chat_id
            data = await api.call("POST", "/open-apis/im/v1/messages?receive_id_type=chat_id", body)
        self._last_send[msg.target.chat_id] = time.monotonic()
        return SendReceipt(platform_msg_id=str(data.get("message_id", "")))

    def _pace(self, chat_id: str) -> None:
        """Feishu allows 5 messages/s per chat (shared by all bots): stay under it, queueing the rest."""
        interval = 1.0 / self._config.chat_messages_per_second
        last = self._last_send.get(chat_id)
        if last is not None:
            wait = last + interval - time.monotonic()
            if wait > 0:
                raise RateLimited(f"pacing chat {chat_id}", code="paced", retry_after=wait)
        if len(self._last_send) > 10_000:  # forget idle chats
            cutoff = time.monotonic() - 60
            self._last_send = {c: t for c, t in self._last_send.items() if t > cutoff}


def _reject(bot_id: str, exc: FeishuCallbackRejected) -> web.Response:
    level = logging.WARNING if exc.status in (401, 403) else logging.INFO
    log.log(level, "feishu callback rejected: %d %s bot=%r", exc.status, exc.reason, bot_id[:64])
    return web.json_response({"msg": exc.reason}, status=exc.status)
