"""The WeCom adapter: self-built app bots (HTTP callbacks) and AI bots (long connection), one package.

Each configured bot is one or the other; sending, streaming and readiness are routed by bot id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

import aiohttp

from adapters.base import AdapterHost, ReplyStream, SendReceipt
from adapters.tokens import probe_tokens
from adapters.wecom.aibot import AIBotConnection
from adapters.wecom.aibot_wire import AIBotSettings
from adapters.wecom.app import PLATFORM, ROUTE, WeComApps
from adapters.wecom.config import WeComAIBotConfig, WeComAppConfig, WeComConfig, WeComSecrets
from adapters.wecom.pacing import MemberPacer
from adapters.wxcommon.pieces import reply_pieces
from adapters.wxcommon.text import shape_text
from gateway.errors import PermanentSendError, TransientSendError
from gateway.messages import OutboundMessage, Target

log = logging.getLogger(__name__)

APP_TEXT_LIMIT_BYTES = 2048
AIBOT_TEXT_LIMIT_BYTES = 20480


class WeComAdapter:
    """Every WeCom bot of the config."""

    name = PLATFORM

    def __init__(
        self,
        config: WeComConfig,
        secrets: dict[str, WeComSecrets],
        *,
        aibot_settings: AIBotSettings | None = None,
        pacer: MemberPacer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        app_bots = {b: c for b, c in config.bots.items() if isinstance(c, WeComAppConfig)}
        self._apps = WeComApps(config, app_bots, secrets, self._http, clock, pacer=pacer)
        self._aibots: dict[str, AIBotConnection] = {}
        for bot_id, bot in config.bots.items():
            if isinstance(bot, WeComAIBotConfig):
                settings = aibot_settings or AIBotSettings()
                if bot.welcome:
                    settings = _with_welcome(settings, bot.welcome)
                self._aibots[bot_id] = AIBotConnection(
                    bot.bot_id, secrets[bot_id].secret, bot_id, ws_url=config.ws_url, settings=settings
                )
        self._host: AdapterHost | None = None
        self._probe_http: aiohttp.ClientSession | None = None
        self._runs: list[asyncio.Task[None]] = []

    def _http(self) -> aiohttp.ClientSession:
        if self._probe_http is not None:
            return self._probe_http
        if self._host is None:
            raise TransientSendError("wecom adapter not started", code="not_started")
        return self._host.http

    async def start(self, host: AdapterHost) -> None:
        """Mount the app callback routes and open every AI bot's connection."""
        self._host = host
        self._apps.host = host
        if self._apps.clients:
            host.add_route("GET", ROUTE, self._apps.handle_verify)
            host.add_route("POST", ROUTE, self._apps.handle_message)
        self._apps.started = True
        for bot_id, conn in self._aibots.items():
            self._runs.append(asyncio.create_task(conn.run(host), name=f"wecom-aibot:{bot_id}"))

    async def stop(self) -> None:
        """Finish every open stream with finish:true, then close the connections."""
        self._apps.started = False
        await asyncio.gather(*(c.close() for c in self._aibots.values()), return_exceptions=True)
        for task in self._runs:
            task.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
        self._runs.clear()

    def is_connected(self) -> bool:
        """Ready when started and every AI bot is subscribed."""
        return self._apps.started and all(c.connected for c in self._aibots.values())

    def prepare(self, reply: OutboundMessage) -> list[OutboundMessage]:
        """App messages: ≤ 2048-byte pieces (text or markdown by config); AI-bot streams carry 20 KB."""
        bot = self._config.bots.get(reply.target.bot_id)
        if isinstance(bot, WeComAIBotConfig):
            pieces = shape_text(reply.text, AIBOT_TEXT_LIMIT_BYTES, markdown=True) or [reply.text]
            # One stream per turn: the first piece finishes it, later ones go out proactively.
            return reply_pieces(reply, pieces, markdown=True, detach_later=True)
        markdown = isinstance(bot, WeComAppConfig) and bot.reply_format == "markdown"
        pieces = shape_text(reply.text, APP_TEXT_LIMIT_BYTES, markdown=markdown) or [reply.text]
        return reply_pieces(reply, pieces, markdown=markdown)

    def open_stream(self, target: Target, idempotency_key: str) -> ReplyStream | None:
        """AI bots stream the answer while it is written; apps cannot edit a sent message."""
        conn = self._aibots.get(target.bot_id)
        return conn.open_stream(target, idempotency_key) if conn is not None else None

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        """Route to the bot's channel."""
        if msg.target.platform != PLATFORM:
            raise PermanentSendError(f"not a wecom target: {msg.target.platform}", code="unknown_bot")
        conn = self._aibots.get(msg.target.bot_id)
        if conn is not None:
            return await conn.send(msg)
        return await self._apps.send(msg)

    async def check_credentials(self, http: aiohttp.ClientSession) -> dict[str, str]:
        """Fetch each app's token (doctor); AI bots report their connection state instead."""
        self._probe_http = http  # no start(): a diagnostic must not open connections or mount routes
        return await probe_tokens({bot_id: c.tokens for bot_id, c in self._apps.clients.items()})


def _with_welcome(settings: AIBotSettings, welcome: str) -> AIBotSettings:
    return dataclasses.replace(settings, welcome_text=welcome)
