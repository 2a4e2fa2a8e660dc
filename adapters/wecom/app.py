"""WeCom self-built app bots: encrypted XML callbacks at `/webhooks/wecom/{bot_id}`, replies by API.

The callback is acked with "success" as soon as the message is journaled (WeCom retries after
5 s, 3 times; retries are journal duplicates), and the answer goes out through `message/send`
with WeCom's duplicate check on and paced under the per-member limits (see pacing.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from wechatpy.enterprise.crypto import WeChatCrypto
from wechatpy.enterprise.exceptions import InvalidCorpIdException
from wechatpy.enterprise.parser import EVENT_TYPES, MESSAGE_TYPES
from wechatpy.exceptions import InvalidSignatureException
from wechatpy.messages import UnknownMessage

from adapters.base import AdapterHost, SendReceipt
from adapters.httpio import read_bounded
from adapters.tokens import AccessTokenCache, IssuedToken, TokenFetcher
from adapters.wecom.config import WeComAppConfig, WeComConfig, WeComSecrets
from adapters.wecom.errors import map_error
from adapters.wecom.pacing import MemberPacer
from adapters.wxcommon.api import ApiClient, fetch_token
from adapters.wxcommon.convert import content_of, dedup_id
from adapters.wxcommon.xml import CallbackRejected, parse_xml
from gateway.errors import BackpressureError, PermanentSendError, RateLimited, TransientSendError
from gateway.messages import ChatKind, InboundMessage, OutboundMessage

log = logging.getLogger(__name__)

PLATFORM = "wecom"
ROUTE = "/webhooks/wecom/{bot_id}"
_MESSAGE_TYPES = frozenset({"text", "image", "voice", "video", "link", "location"})


def decrypt_callback(
    crypto: WeChatCrypto, body: bytes, query: Mapping[str, str], now: float, window: float
) -> dict[str, str]:
    """The fields of an encrypted callback's message; signature, CorpID and XML safety all checked."""
    _fresh(query, now, window)
    encrypt = parse_xml(body).get("Encrypt", "")
    if not encrypt:
        raise CallbackRejected(400, "callback without <Encrypt>")
    try:
        xml = crypto.decrypt_message(
            {"Encrypt": encrypt}, query.get("msg_signature", ""), query.get("timestamp", ""), query.get("nonce", "")
        )
    except InvalidSignatureException:
        raise CallbackRejected(403, "bad msg_signature") from None
    except InvalidCorpIdException:
        raise CallbackRejected(403, "ciphertext is for another CorpID") from None
    except Exception as exc:
        raise CallbackRejected(400, f"undecryptable callback ({type(exc).__name__})") from None
    return parse_xml(xml)


def message_from(fields: dict[str, str]) -> Any:
    """wechatpy's message object built from the fields we already parsed safely (wechatpy's own
    parse_message would run the document through xmltodict a second time)."""
    kind = fields.get("MsgType", "").lower()
    if not kind:
        raise CallbackRejected(400, "message without MsgType")
    if kind == "event":
        return EVENT_TYPES.get(fields.get("Event", "").lower(), UnknownMessage)(fields)
    return MESSAGE_TYPES.get(kind, UnknownMessage)(fields)


def _fresh(query: Mapping[str, str], now: float, window: float) -> None:
    try:
        sent_at = int(query.get("timestamp", ""))
    except ValueError:
        raise CallbackRejected(403, "missing or bad timestamp") from None
    if abs(now - sent_at) > window:
        raise CallbackRejected(403, "timestamp outside the accepted window")


def to_inbound(bot_id: str, message: Any, received_at: datetime) -> InboundMessage | None:
    """The normalized message, or None for events (other than a menu click) and types the agent cannot use."""
    click = message.type == "event" and getattr(message, "event", "") == "click"
    if message.type not in _MESSAGE_TYPES and not click:
        return None
    text, attachments = content_of(message)
    return InboundMessage(
        platform=PLATFORM,
        bot_id=bot_id,
        platform_msg_id=dedup_id(message),
        chat_id=str(message.source),
        chat_kind=ChatKind.DIRECT,
        sender_id=str(message.source),
        text=text,
        attachments=attachments,
        received_at=received_at,
    )


class WeComApps:
    """Every self-built app bot of the section."""

    def __init__(
        self,
        config: WeComConfig,
        bots: Mapping[str, WeComAppConfig],
        secrets: Mapping[str, WeComSecrets],
        http: Callable[[], aiohttp.ClientSession],
        clock: Callable[[], float] = time.time,
        *,
        pacer: MemberPacer | None = None,
    ) -> None:
        self._config = config
        self._bots = dict(bots)
        self._secrets = secrets
        self._http = http
        self._clock = clock
        self._crypto = {
            b: WeChatCrypto(secrets[b].token, secrets[b].encoding_aes_key, cfg.corp_id) for b, cfg in bots.items()
        }
        self.pacer = pacer or MemberPacer()
        shared: dict[tuple[str, str], AccessTokenCache] = {}
        self.clients: dict[str, ApiClient] = {}
        for bot_id, bot in bots.items():
            cred = (bot.corp_id, secrets[bot_id].secret)
            if cred not in shared:
                shared[cred] = AccessTokenCache(self._fetcher(*cred))
            self.clients[bot_id] = ApiClient(http, config.api_base, shared[cred], map_error, timeout=config.api_timeout)
        self.host: AdapterHost | None = None
        self.started = False

    def _fetcher(self, corp_id: str, secret: str) -> TokenFetcher:
        async def fetch() -> IssuedToken:
            url = f"{self._config.api_base.rstrip('/')}/cgi-bin/gettoken"
            return await fetch_token(self._http(), url, {"corpid": corp_id, "corpsecret": secret})

        return fetch

    async def handle_verify(self, request: web.Request) -> web.Response:
        """URL verification: the echostr is encrypted; its plaintext is the answer."""
        bot_id = request.match_info["bot_id"]
        crypto = self._crypto.get(bot_id)
        if crypto is None:
            return _reject(bot_id, CallbackRejected(404, "unknown bot"))
        q = request.query
        try:
            _fresh(q, self._clock(), self._config.timestamp_window)
            echo = crypto.check_signature(
                q.get("msg_signature", ""), q.get("timestamp", ""), q.get("nonce", ""), q.get("echostr", "")
            )
        except CallbackRejected as exc:
            return _reject(bot_id, exc)
        except InvalidSignatureException:
            return _reject(bot_id, CallbackRejected(403, "bad msg_signature"))
        except Exception as exc:
            return _reject(bot_id, CallbackRejected(403, f"bad echostr ({type(exc).__name__})"))
        return web.Response(text=str(echo))

    async def handle_message(self, request: web.Request) -> web.Response:
        """Verify, decrypt, journal, then ack; the turn answers through the API later."""
        bot_id = request.match_info["bot_id"]
        crypto, host = self._crypto.get(bot_id), self.host
        if crypto is None:
            return _reject(bot_id, CallbackRejected(404, "unknown bot"))
        # Not refused while draining or over the backlog cap: WeCom retries only 3 times within seconds, less
        # than a drain lasts, so a refused message would be lost. The journal is the buffer (adapters.base).
        if host is None or not self.started:
            return web.Response(status=503, headers={"Retry-After": "1"}, text="not accepting")
        body, too_large = await read_bounded(request.content, self._config.max_body_bytes)
        if too_large:
            resp = _reject(bot_id, CallbackRejected(413, "body too large"))
            resp.force_close()
            return resp
        now = self._clock()
        try:
            fields = decrypt_callback(crypto, body, request.query, now, self._config.timestamp_window)
            try:
                # wechatpy converts fields lazily: a non-numeric MsgId or Location_X fails in to_inbound.
                msg = to_inbound(bot_id, message_from(fields), datetime.fromtimestamp(now, UTC))
            except CallbackRejected:
                raise
            except Exception as exc:
                raise CallbackRejected(400, f"not a WeCom message ({type(exc).__name__})") from None
        except CallbackRejected as exc:
            return _reject(bot_id, exc)
        if msg is None:
            return web.Response(text="success")
        try:
            await host.publish(msg, refusable=False)
        except BackpressureError:
            return web.Response(status=503, headers={"Retry-After": "2"}, text="busy")
        except Exception:
            log.exception("could not journal a wecom message for bot %r", bot_id)
            return web.Response(status=503, headers={"Retry-After": "2"}, text="temporarily unavailable")
        return web.Response(text="success")

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        """`message/send` to the member, paced; WeCom's duplicate check guards a resend after a crash."""
        bot_id, member = msg.target.bot_id, msg.target.chat_id
        bot = self._bots.get(bot_id)
        if bot is None:
            raise PermanentSendError(f"no wecom app bot {bot_id!r}", code="unknown_bot")
        if self.host is None:
            raise TransientSendError("wecom adapter not started", code="not_started")
        wait = self.pacer.wait_needed(bot_id, member)
        if wait > 0:
            raise RateLimited(
                f"pacing {member}: WeCom drops more than 30/min per member", code="paced", retry_after=wait
            )
        fmt = bot.reply_format
        payload = {
            "touser": member,
            "agentid": bot.agent_id,
            "msgtype": fmt,
            fmt: {"content": msg.text},
            "safe": 0,
            "enable_duplicate_check": 1,
            "duplicate_check_interval": bot.duplicate_check_interval,
        }
        data = await self.clients[bot_id].post("/cgi-bin/message/send", payload)
        if data.get("invaliduser"):
            raise PermanentSendError(f"WeCom: {member} is not in the app's visible range", code="invaliduser")
        if data.get("unlicenseduser"):
            raise PermanentSendError(f"WeCom: {member} has no license for this app", code="unlicenseduser")
        self.pacer.record(bot_id, member)
        return SendReceipt(platform_msg_id=str(data.get("msgid", "")))


def _reject(bot_id: str, exc: CallbackRejected) -> web.Response:
    level = logging.WARNING if exc.status == 403 else logging.INFO
    log.log(level, "wecom callback rejected: %d %s bot=%r", exc.status, exc.reason, bot_id[:64])
    return web.Response(status=exc.status, text=exc.reason)
