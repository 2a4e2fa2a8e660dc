"""A fake of the Feishu / Lark open-platform HTTP API, as Switchboard's Feishu adapter uses it.

Runs on 127.0.0.1:<free port> in its own thread and event loop: lark-oapi fetches tokens with blocking
`requests` even in its async calls, so a fake on the caller's loop deadlocks. Point the SDK at it with
`lark.Client.builder().app_id(..).app_secret(..).domain(api.base_url).build()`.

Endpoints: tenant_access_token/internal, bot/v3/info, im/v1 messages (create, reply, PATCH card,
PUT edit), message resources, CardKit cards (create, element content, settings, full update).
Unknown paths answer 404 + 99991201. Platform rules modelled (times on a fake clock, see `advance`):

* Tokens: 2 h (`token_ttl`); while >= 30 min are left the endpoint returns the same token, below that a
  new one (both stay valid). Unknown app_id -> 10003, wrong secret -> 10014. Missing token -> 99991661,
  invalid / expired -> 99991663, both HTTP 400 (`invalid_token_status`).
* Messages: content is a JSON string matching msg_type (230001); request body > 150 KB (text) or > 30 KB
  (post, card) -> 230025; the same `uuid` from the same app within 1 h returns the original message
  (same message_id), creates nothing and is recorded in `dedup_hits`. PATCH: own interactive message,
  `update_multi: true` before and after, <= 14 days (230031), 5 QPS per message (230020). PUT: text /
  post only (230054), <= 20 edits (230072).
* Rate limits: per app and API 50/s and 1000/min -> HTTP 429 + 99991400 + `x-ogw-ratelimit-limit` /
  `x-ogw-ratelimit-reset` (seconds). Sends to one chat (a p2p chat = one user): 5/s shared by all apps ->
  HTTP 400 + 230020 (`Limits.chat_limit_code=99991400` gives the 429 form instead). Per card entity
  10 ops/s -> 429 + 99991400. `clock="manual"` freezes time so bursts are deterministic.
* CardKit: see `feishu_api_cards.py` (schema 2.0, strictly increasing sequence -> 300317, streaming
  closed -> 300309, 10-minute streaming timeout -> 200850, a card entity is sent once).
* Resources: registered bytes per (message_id, file_key) with Content-Type / Content-Disposition;
  unknown -> 234003, bad `type` -> 234001.

Layout: feishu_api_server.py (threaded aiohttp server, recording, fail/delay injection, waits),
feishu_api_state.py (tokens, messages, resources), feishu_api_cards.py (CardKit), feishu_api_model.py
(errors, records, content parsing, rate windows); event envelopes for inbound messages: feishu_events.py.

Sources (verified 2026-11 via the docs/code search corpora):
* Error tables of the official API pages (open.larksuite.com / open.feishu.cn mirrors): im-v1 message
  reply, update (PUT), patch (230001/230020/230025/230031/230054/230071/230072/230099; uuid "requests with
  the same uuid succeed at most once within 1 hour", max 50 chars); message-resource get (234001/234003,
  binary body, type image|file); cardkit-v1 card create / update / settings and card-element content
  (10002, 200220, 200740, 200750, 200770, 200850, 200860, 300301-300317 incl. 300317 sequence and 300309
  streaming closed; content 1-100000 chars; sequence int32 > 0; "a card entity can be sent only once";
  14-day validity); streaming-updates overview (10 ops/s per card entity).
* Generic error-code page (server-docs/api-call-guide/generic-error-code): 99991661, 99991663 with the
  exact msg above, 99991400 "request trigger frequency limit", 99991201, 10003 "invalid parameter".
* Rate-limit page (uUzN04SN3QjL1cDN): HTTP 429 (400 on older APIs) + 99991400 + both x-ogw headers.
* tenant_access_token_internal page: response shape, 2 h, the 30-minute renewal rule.
* HTTP 400 for 99991663: real-world logs in multica-ai/multica#7611 and zai-org/feedback#586.
* bot/v3/info shape (top-level "bot" with activate_status/app_name/avatar_url/ip_white_list/open_id):
  secondary sources only (several SDK fakes / wrappers that quote the official response table).

Not confirmed (assumptions): 10014 "app secret invalid" for a wrong secret is what clients observe (the
generic table lists 10014 as "app unauthorized" and 10015 "wrong app secret"), HTTP status of token
errors (400 here); a uuid replay returns the original message with code 0 (docs only say "at most once");
uuid scope shared by create and reply; the error for a non-shared card PATCH (230099 here) and for
sending a card entity twice (230099); a missing element on content update (300313); the answer when a
card entity exceeds 10 ops/s (429 + 99991400 here); CardKit uuid replays answer 0 without applying, a uuid
reused for another operation -> 200770; receive_id_type errors -> 99992402; 230020 responses carry no
x-ogw headers; the per-chat 5/s applies across apps and to p2p chats keyed by the user.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from tests.fakes.feishu_api_model import (
    ROUTE_NOT_FOUND,
    CardUpdate,
    CardView,
    DedupHit,
    RecordedRequest,
    VisibleMessage,
    fail,
)
from tests.fakes.feishu_api_server import ThreadedFake
from tests.fakes.feishu_api_state import Call, FeishuState, Limits, Reply, Resource

__all__ = [
    "APP_ID",
    "APP_SECRET",
    "CardUpdate",
    "CardView",
    "DedupHit",
    "FakeFeishuAPI",
    "Limits",
    "RecordedRequest",
    "VisibleMessage",
]

APP_ID = "cli_fake_app_0001"
APP_SECRET = "fake-app-secret-0123456789abcdef"
_ROUTES: list[tuple[str, str, str]] = [
    ("POST", r"/open-apis/auth/v3/tenant_access_token/internal/?", "token"),
    ("GET", r"/open-apis/bot/v3/info/?", "bot_info"),
    ("POST", r"/open-apis/im/v1/messages", "create"),
    ("POST", r"/open-apis/im/v1/messages/(?P<message_id>[^/]+)/reply", "reply"),
    ("PATCH", r"/open-apis/im/v1/messages/(?P<message_id>[^/]+)", "patch"),
    ("PUT", r"/open-apis/im/v1/messages/(?P<message_id>[^/]+)", "update"),
    ("GET", r"/open-apis/im/v1/messages/(?P<message_id>[^/]+)/resources/(?P<file_key>[^/]+)", "resource"),
    ("POST", r"/open-apis/cardkit/v1/cards", "card_create"),
    ("PUT", r"/open-apis/cardkit/v1/cards/(?P<card_id>[^/]+)/elements/(?P<element_id>[^/]+)/content", "card_content"),
    ("PATCH", r"/open-apis/cardkit/v1/cards/(?P<card_id>[^/]+)/settings", "card_settings"),
    ("PUT", r"/open-apis/cardkit/v1/cards/(?P<card_id>[^/]+)", "card_update"),
]
ROUTES = [(method, re.compile(pattern), name) for method, pattern, name in _ROUTES]


class FakeFeishuAPI(ThreadedFake):
    """Feishu open-platform fake; a context manager (sync and async). Several apps at once.

    apps: app_id -> app_secret (default {APP_ID: APP_SECRET}). clock: "real" (monotonic time plus
    `advance()` offsets) or "manual" (time moves only with `advance()`). rate_limits=False disables
    every limit; `limits` (a `Limits`) and `card_ops_per_second` can be changed at any time.
    """

    thread_name = "fake-feishu-api"

    def __init__(
        self,
        apps: Mapping[str, str] | None = None,
        *,
        token_ttl: int = 7200,
        refresh_window: float = 1800.0,
        clock: Literal["real", "manual"] = "real",
        rate_limits: bool = True,
        limits: Limits | None = None,
        card_ops_per_second: int | None = 10,
        streaming_timeout: float | None = 600.0,
        dedup_window: float = 3600.0,
        invalid_token_status: int = 400,
        tenant_key: str = "fake_tenant_key",
        port: int = 0,
    ) -> None:
        super().__init__(port=port)
        limits = limits or Limits()
        if not rate_limits:
            limits = Limits(app_qps=None, app_qpm=None, chat_qps=None, message_patch_qps=None)
            card_ops_per_second = None
        self._clock = clock
        self._offset = 0.0
        self._mono0 = time.monotonic()
        self._wall0 = time.time()
        self._state = FeishuState(
            apps if apps is not None else {APP_ID: APP_SECRET},
            now=self.now,
            wall_ms=lambda t: int((self._wall0 + t - self._mono0) * 1000),
            token_ttl=token_ttl,
            refresh_window=refresh_window,
            invalid_token_status=invalid_token_status,
            limits=limits,
            card_ops_per_second=card_ops_per_second,
            streaming_timeout=streaming_timeout,
            dedup_window=dedup_window,
            tenant_key=tenant_key,
        )

    # ---- scripting -------------------------------------------------------------------------------------------

    def now(self) -> float:
        """The fake clock (seconds): monotonic + advance() offsets, or only the offsets with clock="manual"."""
        return (self._mono0 if self._clock == "manual" else time.monotonic()) + self._offset

    def advance(self, seconds: float) -> None:
        """Move the fake clock forward (token expiry, uuid window, rate-limit windows, streaming timeout)."""
        with self._cond:
            self._offset += seconds

    def add_app(
        self, app_id: str, app_secret: str, *, app_name: str | None = None, bot_open_id: str | None = None
    ) -> None:
        with self._cond:
            self._state.add_app(app_id, app_secret, app_name=app_name, bot_open_id=bot_open_id)

    def bot_open_id(self, app_id: str = APP_ID) -> str:
        with self._cond:
            return self._state.apps[app_id].bot_open_id

    @property
    def limits(self) -> Limits:
        """Live rate limits: mutate fields (`api.limits.chat_qps = None`) or assign a new `Limits`."""
        return self._state.limits

    @limits.setter
    def limits(self, value: Limits) -> None:
        with self._cond:
            self._state.limits = value

    @property
    def card_ops_per_second(self) -> int | None:
        return self._state.cards.ops_per_second

    @card_ops_per_second.setter
    def card_ops_per_second(self, value: int | None) -> None:
        with self._cond:
            self._state.cards.ops_per_second = value

    def expire_all_tokens(self) -> None:
        """Every issued token stops working now (next API call: 99991663); fetching again issues a new one."""
        with self._cond:
            self._state.expire_all_tokens()

    def p2p_chat_id(self, open_id: str) -> str:
        """The p2p chat a send with receive_id_type=open_id lands in (registered inbound p2p chats win)."""
        with self._cond:
            return self._state.p2p_chat_id(open_id)

    def add_message(
        self,
        message_id: str,
        chat_id: str,
        *,
        chat_type: Literal["p2p", "group"] = "p2p",
        msg_type: str = "text",
        content: str = '{"text":""}',
        sender_open_id: str = "",
        root_id: str = "",
        parent_id: str = "",
        thread_id: str = "",
    ) -> None:
        """Register a user's message (so it can be replied to and its resources downloaded)."""
        ids = {"sender_open_id": sender_open_id, "root_id": root_id, "parent_id": parent_id, "thread_id": thread_id}
        with self._cond:
            self._state.add_message(message_id, chat_id, chat_type=chat_type, msg_type=msg_type, content=content, **ids)

    def add_event(self, envelope: Mapping[str, Any]) -> None:
        """Register the message of an im.message.receive_v1 envelope (see feishu_events.py)."""
        msg, sender = envelope["event"]["message"], envelope["event"]["sender"]
        self.add_message(
            msg["message_id"],
            msg["chat_id"],
            chat_type=msg["chat_type"],
            msg_type=msg["message_type"],
            content=msg["content"],
            sender_open_id=sender["sender_id"]["open_id"],
            root_id=msg.get("root_id") or "",
            parent_id=msg.get("parent_id") or "",
            thread_id=msg.get("thread_id") or "",
        )

    def add_resource(
        self,
        message_id: str,
        file_key: str,
        data: bytes,
        *,
        kind: Literal["image", "file"] = "file",
        content_type: str = "application/octet-stream",
        filename: str | None = None,
    ) -> None:
        """Bytes served by GET .../messages/{message_id}/resources/{file_key}?type={kind}."""
        with self._cond:
            self._state.add_resource(message_id, file_key, Resource(data, content_type, filename or file_key, kind))

    def clear(self) -> None:
        """Forget recorded requests and dedup hits (messages, cards, tokens and limits stay)."""
        super().clear()
        with self._cond:
            self._state.dedup_hits.clear()

    # ---- observations ----------------------------------------------------------------------------------------

    def visible_messages(self, chat_id: str | None = None, *, include_inbound: bool = False) -> list[VisibleMessage]:
        """Messages as users see them now, in send order (bots' only unless include_inbound)."""
        with self._cond:
            shown = [self._state.visible(m) for m in self._state.messages.values() if chat_id in (None, m.chat_id)]
        return [m for m in shown if include_inbound or m.sender == "app"]

    def message(self, message_id: str) -> VisibleMessage:
        with self._cond:
            return self._state.visible(self._state.messages[message_id])

    def texts(self, chat_id: str | None = None) -> list[str]:
        return [m.text for m in self.visible_messages(chat_id)]

    @property
    def dedup_hits(self) -> list[DedupHit]:
        with self._cond:
            return list(self._state.dedup_hits)

    def card(self, card_id: str) -> CardView:
        with self._cond:
            return self._state.cards.view(card_id)

    def cards(self) -> list[CardView]:
        with self._cond:
            return [self._state.cards.view(card_id) for card_id in self._state.cards.ids()]

    def card_updates(self, card_id: str | None = None) -> list[CardUpdate]:
        """Every CardKit operation (accepted and rejected) in time order, optionally for one card."""
        if card_id is not None:
            return list(self.card(card_id).updates)
        with self._cond:
            return self._state.cards.all_updates()

    @property
    def token_fetches(self) -> dict[str, int]:
        """Successful calls to the token endpoint per app_id."""
        with self._cond:
            return dict(self._state.token_fetches)

    @property
    def tokens_issued(self) -> dict[str, int]:
        """Distinct tokens handed out per app_id."""
        with self._cond:
            return dict(self._state.tokens_issued)

    def valid_tokens(self, app_id: str | None = None) -> list[str]:
        with self._cond:
            now = self.now()
            tokens = self._state.tokens.values()
            return [t.value for t in tokens if t.expires_at > now and app_id in (None, t.app_id)]

    # ---- waiting ---------------------------------------------------------------------------------------------

    def wait_messages(self, n: int, chat_id: str | None = None, timeout: float = 10.0) -> list[VisibleMessage]:
        """Block until at least `n` bot messages are visible (in `chat_id`); return them all."""
        return self.wait_for(lambda: self._at_least(n, chat_id), timeout)

    async def async_wait_messages(
        self, n: int, chat_id: str | None = None, seconds: float = 10.0
    ) -> list[VisibleMessage]:
        return await self.async_wait_for(lambda: self._at_least(n, chat_id), seconds)

    def wait_card_finalized(self, card_id: str, timeout: float = 10.0) -> CardView:
        return self.wait_for(lambda: self._finalized(card_id), timeout)

    async def async_wait_card_finalized(self, card_id: str, seconds: float = 10.0) -> CardView:
        return await self.async_wait_for(lambda: self._finalized(card_id), seconds)

    def _at_least(self, n: int, chat_id: str | None) -> list[VisibleMessage] | None:
        shown = self.visible_messages(chat_id)
        return shown if len(shown) >= n else None

    def _finalized(self, card_id: str) -> CardView | None:
        card = self.card(card_id)
        return card if card.finalized else None

    # ---- routing ---------------------------------------------------------------------------------------------

    def _route(self, call: Call) -> Reply:
        name = None
        for method, pattern, route in ROUTES:
            match = pattern.fullmatch(call.path)
            if match is not None and method == call.method:
                name, call.params = route, match.groupdict()
                break
        state, p, body, now = self._state, call.params, call.body, call.now
        if name is None:
            raise fail(ROUTE_NOT_FOUND, status=404)
        if name == "token":
            return state.token(call)
        app_id = state.authenticate(call)
        state.gateway_limit(app_id, name, now)
        cards = state.cards
        handlers: dict[str, Callable[[], Reply]] = {
            "bot_info": lambda: state.bot_info(app_id),
            "create": lambda: state.create(call, app_id),
            "reply": lambda: state.reply(call, app_id),
            "patch": lambda: state.patch(call, app_id),
            "update": lambda: state.update(call, app_id),
            "resource": lambda: state.resource(call),
            "card_create": lambda: _ok(cards.create(app_id, body, now)),
            "card_content": lambda: _ok(cards.content(app_id, p["card_id"], p["element_id"], body, now)),
            "card_settings": lambda: _ok(cards.settings(app_id, p["card_id"], body, now)),
            "card_update": lambda: _ok(cards.update(app_id, p["card_id"], body, now)),
        }
        return handlers[name]()


def _ok(data: dict[str, Any]) -> Reply:
    return Reply(json={"code": 0, "msg": "success", "data": data})
