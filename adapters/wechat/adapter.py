"""WeChat Official Account adapter: `/webhooks/wechat/{bot_id}` callbacks, passive or pushed replies.

Reply strategy (WeChat waits 5 s, then retries the same message 3 times):
* the turn finishes within `passive_budget` → the answer is the HTTP response (free, no quota);
* otherwise, accounts with the customer-service permission ack "success" and push the answer with
  `message/custom/send`; accounts without it keep the request unanswered past WeChat's timeout so
  WeChat retries, and any finished answer is handed to the next request of that user (a retry or a
  new message), in order. Retries are journal duplicates: they never start a second turn.
Nothing is parsed or stored before the signature is checked; rejections get 403/400/413.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web
from wechatpy.crypto import WeChatCrypto

from adapters.base import AdapterHost, ReplyStream, SendReceipt
from adapters.httpio import read_bounded
from adapters.tokens import AccessTokenCache, IssuedToken, TokenFetcher, probe_tokens
from adapters.wechat.config import CallbackMode, WeChatConfig, WeChatSecrets
from adapters.wechat.errors import map_error
from adapters.wechat.window import DeliveryCounter, PassiveWindow, Slot
from adapters.wechat.wire import (
    PLATFORM,
    Parsed,
    check_signature,
    parse,
    plaintext_xml,
    received_time,
    render_text_reply,
    to_inbound,
)
from adapters.wxcommon.api import ApiClient, fetch_token
from adapters.wxcommon.replay import ReplayGuard
from adapters.wxcommon.text import shape_text
from adapters.wxcommon.xml import CallbackRejected
from gateway.errors import AwaitingRecipient, BackpressureError, PermanentSendError, TransientSendError
from gateway.messages import InboundMessage, OutboundMessage, Target, TextPart, reply_target

log = logging.getLogger(__name__)

ROUTE = "/webhooks/wechat/{bot_id}"
TEXT_LIMIT_BYTES = 2048
SUCCESS = "success"


class WeChatAdapter:
    """Every configured Official Account."""

    name = PLATFORM

    def __init__(
        self, config: WeChatConfig, secrets: dict[str, WeChatSecrets], clock: Callable[[], float] = time.time
    ) -> None:
        self._config = config
        self._secrets = secrets
        self._clock = clock
        self._crypto = {
            bot_id: WeChatCrypto(s.token, s.encoding_aes_key, config.bots[bot_id].app_id)
            for bot_id, s in secrets.items()
            if config.bots[bot_id].mode is not CallbackMode.PLAIN
        }
        self._host: AdapterHost | None = None
        self._probe_http: aiohttp.ClientSession | None = None
        self._window = PassiveWindow()
        self._deliveries = DeliveryCounter()
        self._replays = ReplayGuard(ttl=2 * config.timestamp_window)
        self._clients: dict[str, ApiClient] = {}
        shared: dict[tuple[str, str], AccessTokenCache] = {}
        for bot_id, bot in config.bots.items():
            cred = (bot.app_id, secrets[bot_id].app_secret)
            if cred not in shared:  # one token per credential, however many bots use it
                shared[cred] = AccessTokenCache(self._token_fetcher(*cred))
            self._clients[bot_id] = ApiClient(
                self._http, config.api_base, shared[cred], map_error, timeout=config.api_timeout
            )
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, host: AdapterHost) -> None:
        """Mount the callback routes."""
        self._host = host
        host.add_route("GET", ROUTE, self._handle_verify)
        host.add_route("POST", ROUTE, self._handle_message)
        self._started = True

    async def stop(self) -> None:
        """Waiting requests answer now; their replies are pushed or parked for the user's next message."""
        self._started = False
        self._window.close_all()

    def is_connected(self) -> bool:
        """No upstream connection to lose: ready between start and stop."""
        return self._started

    def _http(self) -> aiohttp.ClientSession:
        if self._probe_http is not None:
            return self._probe_http
        if self._host is None:
            raise TransientSendError("wechat adapter not started", code="not_started")
        return self._host.http

    def _token_fetcher(self, app_id: str, secret: str) -> TokenFetcher:
        async def fetch() -> IssuedToken:
            params = {"grant_type": "client_credential", "appid": app_id, "secret": secret}
            return await fetch_token(self._http(), f"{self._config.api_base.rstrip('/')}/cgi-bin/token", params)

        return fetch

    async def check_credentials(self, http: aiohttp.ClientSession) -> dict[str, str]:
        """Fetch each account's token (doctor): bot id → "" when fine, else the reason."""
        self._probe_http = http  # no start(): a diagnostic must not open connections or mount routes
        return await probe_tokens({bot_id: c.tokens for bot_id, c in self._clients.items()})

    # -- inbound ---------------------------------------------------------------------------------
    async def _handle_verify(self, request: web.Request) -> web.Response:
        bot_id = request.match_info["bot_id"]
        secrets = self._secrets.get(bot_id)
        if secrets is None:
            return _reject(bot_id, CallbackRejected(404, "unknown bot"))
        try:
            check_signature(secrets.token, request.query, self._clock(), self._config.timestamp_window)
        except CallbackRejected as exc:
            return _reject(bot_id, exc)
        return web.Response(text=request.query.get("echostr", ""))

    async def _handle_message(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        bot_id = request.match_info["bot_id"]
        secrets, bot = self._secrets.get(bot_id), self._config.bots.get(bot_id)
        host = self._host
        if secrets is None or bot is None:
            return _reject(bot_id, CallbackRejected(404, "unknown bot"))
        # Not refused while draining or over the backlog cap: WeChat retries only 3 times in ~15 s, less
        # than a drain lasts, so a refused message would be lost. The journal is the buffer (adapters.base).
        if host is None or not self._started:
            return web.Response(status=503, headers={"Retry-After": "1"}, text="not accepting")
        body, too_large = await read_bounded(request.content, self._config.max_body_bytes)
        if too_large:
            resp = _reject(bot_id, CallbackRejected(413, "body too large"))
            resp.force_close()
            return resp
        now = self._clock()
        crypto = self._crypto.get(bot_id)
        try:
            check_signature(secrets.token, request.query, now, self._config.timestamp_window)
            q = request.query
            # Keyed on the signature as verified (hex, any case): an upper-cased copy is the same signed query.
            if not self._replays.admit(q.get("signature", "").lower(), q.get("nonce", ""), body):
                raise CallbackRejected(403, "signed query replayed with another body")
            xml, encrypted = plaintext_xml(body, request.query, bot.mode, crypto)
            parsed = parse(xml)
        except CallbackRejected as exc:
            return _reject(bot_id, exc)
        reply_crypto = crypto if encrypted else None
        nonce = request.query.get("nonce", "")
        if parsed.kind == "subscribe" and bot.welcome:
            m = parsed.message
            return _xml(render_text_reply(m.source, m.target, bot.welcome, reply_crypto, nonce, now))
        if parsed.kind in ("message", "click"):
            return await self._converse(request, host, bot_id, parsed, now, arrived, reply_crypto, nonce)
        if parsed.kind == "ignored":
            m = parsed.message
            log.info("wechat bot %s: %s %s not handled", bot_id, m.type, getattr(m, "event", "") or "")
        return web.Response(text=SUCCESS)  # unsubscribe, other events, unsupported types: nothing to do

    async def _converse(
        self,
        request: web.Request,
        host: AdapterHost,
        bot_id: str,
        parsed: Parsed,
        now: float,
        arrived: float,
        crypto: WeChatCrypto | None,
        nonce: str,
    ) -> web.StreamResponse:
        bot = self._config.bots[bot_id]
        try:  # wechatpy converts fields when they are read: a bad MsgId or CreateTime fails only here
            msg = to_inbound(bot_id, parsed, received_time(now))
        except Exception as exc:
            return _reject(bot_id, CallbackRejected(400, f"not a WeChat message ({type(exc).__name__})"))
        attempt = self._deliveries.record(msg.gateway_id)
        slot = self._window.open(bot_id, msg.chat_id, msg.platform_msg_id, arrived + bot.passive_budget)
        try:
            await host.publish(msg, refusable=False)
            if not bot.customer_service:
                await host.release_parked(reply_target(msg))  # earlier answers waiting for this user
        except BackpressureError:
            self._window.close(slot)
            return web.Response(status=503, headers={"Retry-After": "2"}, text="busy")
        except Exception:
            self._window.close(slot)
            log.exception("could not journal a wechat message for bot %r", bot_id)
            return web.Response(status=503, headers={"Retry-After": "2"}, text="temporarily unavailable")
        reply = await self._window.wait(slot)
        if reply is not None:
            return await self._write_passive(request, slot, arrived, msg, reply, crypto, nonce)
        if bot.customer_service or attempt >= self._config.platform_attempts:
            return web.Response(text=SUCCESS)
        # No push permission: leave this attempt unanswered so WeChat retries; the retry (or the user's
        # next message) collects the answer. The last attempt answers "success" (see config).
        await _sleep_until(arrived + self._config.platform_timeout + 0.5)
        return web.Response(text=SUCCESS)

    async def _write_passive(
        self,
        request: web.Request,
        slot: Slot,
        arrived: float,
        msg: InboundMessage,
        reply: OutboundMessage,
        crypto: WeChatCrypto | None,
        nonce: str,
    ) -> web.StreamResponse:
        """Write the reply ourselves and tell the sender whether it really left in time."""
        try:
            body = render_text_reply(msg.chat_id, msg.reply_ref, reply.text, crypto, nonce, self._clock())
        except Exception:
            log.exception("could not render a passive reply; it will be sent another way")
            slot.confirm(False)
            return web.Response(text=SUCCESS)
        transport = request.transport
        late = time.monotonic() - arrived > self._config.platform_timeout - 0.1
        if transport is None or transport.is_closing() or late:
            slot.confirm(False)  # WeChat has given up on this request: the reply must go another way
            return web.Response(text=SUCCESS)
        resp = web.Response(text=body, content_type="application/xml")
        try:
            await resp.prepare(request)
            await resp.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            slot.confirm(False)
            return resp
        slot.confirm(True)
        return resp

    # -- outbound --------------------------------------------------------------------------------
    def prepare(self, reply: OutboundMessage) -> list[OutboundMessage]:
        """Plain text (WeChat renders no markdown) in numbered pieces of at most 2048 UTF-8 bytes."""
        pieces = shape_text(reply.text, TEXT_LIMIT_BYTES, markdown=False) or [reply.text or " "]
        if len(pieces) == 1:
            return [reply.model_copy(update={"parts": (TextPart(text=pieces[0]),)})]
        return [
            reply.model_copy(update={"parts": (TextPart(text=p),), "idempotency_key": f"{reply.idempotency_key}.{i}"})
            for i, p in enumerate(pieces, 1)
        ]

    def open_stream(self, target: Target, idempotency_key: str) -> ReplyStream | None:
        """WeChat messages cannot be edited: no streaming."""
        return None

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        """Into a waiting request if there is one, else pushed (customer service) or parked for the user."""
        bot = self._config.bots.get(msg.target.bot_id)
        if bot is None or msg.target.platform != PLATFORM:
            raise PermanentSendError(f"no wechat bot {msg.target.bot_id!r}", code="unknown_bot")
        slot = self._window.hand_over(msg)
        if slot is not None:
            try:
                async with asyncio.timeout(self._config.platform_timeout):
                    if await asyncio.shield(slot.written):
                        return SendReceipt(platform_msg_id="passive")
            except TimeoutError:
                slot.confirm(False)
            log.info("passive reply for %s was not written in time; sending it another way", msg.idempotency_key)
        if not bot.customer_service:
            raise AwaitingRecipient("no customer-service permission: waiting for the user's next message")
        payload = {"touser": msg.target.chat_id, "msgtype": "text", "text": {"content": msg.text}}
        await self._clients[msg.target.bot_id].post("/cgi-bin/message/custom/send", payload)
        return SendReceipt()


def _xml(text: str) -> web.Response:
    return web.Response(text=text, content_type="application/xml")


def _reject(bot_id: str, exc: CallbackRejected) -> web.Response:
    level = logging.WARNING if exc.status == 403 else logging.INFO
    log.log(level, "wechat callback rejected: %d %s bot=%r", exc.status, exc.reason, bot_id[:64])
    return web.Response(status=exc.status, text=exc.reason)


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
