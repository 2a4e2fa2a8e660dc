"""Platform state and endpoint logic of the Feishu API fake (tokens, bot info, IM messages, resources).

Everything here runs with the fake's lock held; `FakeFeishuAPI` (feishu_api.py) does the HTTP plumbing.
"""

from __future__ import annotations

import collections
import hashlib
import json
import secrets
import urllib.parse
import uuid as uuid_mod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tests.fakes.feishu_api_cards import CardStore
from tests.fakes.feishu_api_model import (
    APP_ID_INVALID,
    APP_SECRET_INVALID,
    FIELD_INVALID,
    FOURTEEN_DAYS,
    IM_CARD_FAILED,
    IM_EDIT_LIMIT,
    IM_FREQUENCY,
    IM_INVALID_PARAM,
    IM_NOT_SENDER,
    IM_TOO_LONG,
    IM_TOO_OLD,
    IM_TYPE_UNSUPPORTED,
    RECEIVE_ID_TYPES,
    RES_INVALID_PARAM,
    RES_NOT_IN_MESSAGE,
    TOKEN_INVALID,
    TOKEN_MISSING,
    UPDATABLE_TYPES,
    ApiError,
    DedupHit,
    Json,
    RecordedRequest,
    SlidingWindows,
    VisibleMessage,
    fail,
    is_card_json,
    is_card_reference,
    message_text,
    parse_content,
    rate_limited,
    size_limit,
)

MAX_EDITS = 20  # "一条消息最多可编辑 20 次" [doc im-v1/message/update]
UUID_MAX_CHARS = 50  # create/reply uuid (max length 50)


@dataclass
class Call:
    """One routed API request."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: Any
    raw: bytes
    params: dict[str, str]  # path parameters
    now: float
    record: RecordedRequest


@dataclass
class Reply:
    status: int = 200
    json: Json | None = None
    data: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class App:
    app_id: str
    app_secret: str
    app_name: str
    bot_open_id: str


@dataclass
class _Token:
    value: str
    app_id: str
    expires_at: float


@dataclass
class _Message:
    message_id: str
    chat_id: str
    chat_type: str
    app_id: str | None  # None: a user's message (registered inbound)
    msg_type: str
    content: str
    created_at: float
    create_ms: int
    root_id: str = ""
    parent_id: str = ""
    thread_id: str = ""
    card_id: str | None = None
    edits: int = 0
    update_ms: int = 0


@dataclass
class Resource:
    data: bytes
    content_type: str
    filename: str
    kind: Literal["image", "file"]


@dataclass
class Limits:
    """Rate limits (None disables one). Per-app limits are per API, like the platform's."""

    app_qps: int | None = 50
    app_qpm: int | None = 1000
    chat_qps: int | None = 5  # sends per chat (p2p chat = per user), shared by all apps
    message_patch_qps: int | None = 5
    chat_limit_code: Literal[230020, 99991400] = 230020


def _hex_id(prefix: str) -> str:
    return prefix + uuid_mod.uuid4().hex


class FeishuState:
    def __init__(
        self,
        apps: Mapping[str, str],
        *,
        now: Callable[[], float],
        wall_ms: Callable[[float], int],
        token_ttl: int,
        refresh_window: float,
        invalid_token_status: int,
        limits: Limits,
        card_ops_per_second: int | None,
        streaming_timeout: float | None,
        dedup_window: float,
        tenant_key: str,
    ) -> None:
        self.now = now
        self.wall_ms = wall_ms
        self.token_ttl = token_ttl
        self.refresh_window = refresh_window
        self.invalid_token_status = invalid_token_status
        self.limits = limits
        self.dedup_window = dedup_window
        self.tenant_key = tenant_key
        self.apps: dict[str, App] = {}
        for app_id, secret in apps.items():
            self.add_app(app_id, secret)
        self.tokens: dict[str, _Token] = {}
        self.current_token: dict[str, str] = {}
        self.token_fetches: collections.Counter[str] = collections.Counter()
        self.tokens_issued: collections.Counter[str] = collections.Counter()
        self.messages: dict[str, _Message] = {}
        self.dedup: dict[tuple[str, str], tuple[str, float, str]] = {}
        self.dedup_hits: list[DedupHit] = []
        self.resources: dict[tuple[str, str], Resource] = {}
        self.p2p_chats: dict[str, str] = {}
        self.windows = SlidingWindows()
        self.cards = CardStore(self.windows, ops_per_second=card_ops_per_second, streaming_timeout=streaming_timeout)

    # ---- apps and tokens ---------------------------------------------------------------------------------------

    def add_app(
        self, app_id: str, app_secret: str, *, app_name: str | None = None, bot_open_id: str | None = None
    ) -> App:
        digest = hashlib.sha256(app_id.encode()).hexdigest()
        app = App(app_id, app_secret, app_name or f"Bot {app_id}", bot_open_id or f"ou_{digest[:32]}")
        self.apps[app_id] = app
        return app

    def token(self, call: Call) -> Reply:
        body = call.body if isinstance(call.body, dict) else {}
        app_id, secret = body.get("app_id"), body.get("app_secret")
        app = self.apps.get(app_id) if isinstance(app_id, str) else None
        if app is None:
            raise fail(APP_ID_INVALID)
        if secret != app.app_secret:
            raise fail(APP_SECRET_INVALID)
        now = call.now
        self.token_fetches[app.app_id] += 1
        current = self.tokens.get(self.current_token.get(app.app_id, ""))
        if current is not None and current.expires_at - now >= self.refresh_window:
            value, expire = current.value, round(current.expires_at - now)
        else:  # < 30 min left (or none): a new token; the old one stays valid until it expires
            value, expire = "t-" + secrets.token_hex(20), self.token_ttl
            self.tokens[value] = _Token(value, app.app_id, now + self.token_ttl)
            self.current_token[app.app_id] = value
            self.tokens_issued[app.app_id] += 1
        return Reply(json={"code": 0, "msg": "ok", "tenant_access_token": value, "expire": expire})

    def authenticate(self, call: Call) -> str:
        header = call.headers.get("authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise fail(TOKEN_MISSING, status=self.invalid_token_status)
        token = self.tokens.get(header[7:].strip())
        if token is None or token.expires_at <= call.now:
            raise fail(TOKEN_INVALID, status=self.invalid_token_status)
        call.record.app_id = token.app_id
        return token.app_id

    def expire_all_tokens(self) -> None:
        now = self.now()
        for token in self.tokens.values():
            token.expires_at = min(token.expires_at, now)

    def gateway_limit(self, app_id: str, api: str, now: float) -> None:
        """Per app and API: app_qps per second and app_qpm per minute -> 429 + 99991400 + x-ogw headers."""
        checks = [(self.limits.app_qps, 1.0), (self.limits.app_qpm, 60.0)]
        for limit, window in checks:
            if limit is not None:
                wait = self.windows.blocked(("app", app_id, api), limit, window, now)
                if wait is not None:
                    raise rate_limited(limit, wait)
        for limit, window in checks:
            if limit is not None:
                self.windows.record(("app", app_id, api), window, now)

    def bot_info(self, app_id: str) -> Reply:
        app = self.apps[app_id]
        bot = {
            "activate_status": 2,
            "app_name": app.app_name,
            "avatar_url": f"https://example.invalid/avatar/{app.app_id}.png",
            "ip_white_list": [],
            "open_id": app.bot_open_id,
        }
        return Reply(json={"code": 0, "msg": "ok", "bot": bot})

    # ---- messages ----------------------------------------------------------------------------------------------

    def p2p_chat_id(self, open_id: str) -> str:
        if open_id not in self.p2p_chats:
            self.p2p_chats[open_id] = "oc_" + hashlib.sha256(f"p2p:{open_id}".encode()).hexdigest()[:32]
        return self.p2p_chats[open_id]

    def create(self, call: Call, app_id: str) -> Reply:
        id_type = call.query.get("receive_id_type", "")
        if id_type not in RECEIVE_ID_TYPES:
            raise fail(FIELD_INVALID, f"receive_id_type {id_type!r}")
        body = call.body if isinstance(call.body, dict) else {}
        receive_id = body.get("receive_id")
        if not isinstance(receive_id, str) or not receive_id:
            raise fail(IM_INVALID_PARAM, "receive_id is required")
        if id_type == "chat_id":
            known = next((m for m in self.messages.values() if m.chat_id == receive_id), None)
            chat_id, chat_type = receive_id, known.chat_type if known else "group"
        else:
            chat_id, chat_type = self.p2p_chat_id(receive_id), "p2p"
        return self._send(call, app_id, body, chat_id=chat_id, chat_type=chat_type)

    def reply(self, call: Call, app_id: str) -> Reply:
        parent = self.messages.get(call.params["message_id"])
        if parent is None:
            raise fail(IM_INVALID_PARAM, f"message {call.params['message_id']!r} not found")
        body = call.body if isinstance(call.body, dict) else {}
        thread_id = parent.thread_id
        if not thread_id and body.get("reply_in_thread") is True:
            thread_id = parent.thread_id = _hex_id("omt_")[:20]
        thread = {
            "root_id": parent.root_id or parent.message_id,
            "parent_id": parent.message_id,
            "thread_id": thread_id,
        }
        return self._send(call, app_id, body, chat_id=parent.chat_id, chat_type=parent.chat_type, **thread)

    def _send(self, call: Call, app_id: str, body: Json, *, chat_id: str, chat_type: str, **thread: str) -> Reply:
        msg_type, content = body.get("msg_type"), body.get("content")
        parsed = parse_content(msg_type, content)
        assert isinstance(msg_type, str) and isinstance(content, str)
        if len(call.raw) > size_limit(msg_type):
            raise fail(IM_TOO_LONG)
        card_like = is_card_reference(parsed) or is_card_json(parsed) or parsed.get("type") == "template"
        if msg_type == "interactive" and not card_like:
            raise fail(IM_CARD_FAILED, "interactive content is neither a card nor a card reference")
        uuid = body.get("uuid")
        if uuid is not None and (not isinstance(uuid, str) or not 0 < len(uuid) <= UUID_MAX_CHARS):
            raise fail(IM_INVALID_PARAM, "uuid must be 1-50 characters")
        now = call.now
        signature = json.dumps({"chat": chat_id, "type": msg_type, "content": content, **thread}, sort_keys=True)
        if isinstance(uuid, str):
            seen = self.dedup.get((app_id, uuid))
            if seen is not None and now - seen[1] < self.dedup_window:
                original = self.messages[seen[0]]
                self.dedup_hits.append(
                    DedupHit(app_id, uuid, original.message_id, call.path, seen[2] == signature, now)
                )
                return Reply(json={"code": 0, "msg": "success", "data": self._message_data(original)})
        self._chat_limit(chat_id, now)
        message_id = _hex_id("om_")
        card_id = None
        if msg_type == "interactive" and is_card_reference(parsed):
            data = parsed.get("data")
            card_id = self.cards.attach(
                app_id, data.get("card_id") if isinstance(data, dict) else None, message_id, now
            )
        ms = self.wall_ms(now)
        message = _Message(message_id, chat_id, chat_type, app_id, msg_type, content, now, ms, card_id=card_id)
        _set_thread(message, thread)
        message.update_ms = ms
        self.messages[message_id] = message
        if isinstance(uuid, str):
            self.dedup[(app_id, uuid)] = (message_id, now, signature)
        if self.limits.chat_qps is not None:
            self.windows.record(("chat", chat_id), 1.0, now)
        return Reply(json={"code": 0, "msg": "success", "data": self._message_data(message)})

    def _chat_limit(self, chat_id: str, now: float) -> None:
        limit = self.limits.chat_qps
        wait = None if limit is None else self.windows.blocked(("chat", chat_id), limit, 1.0, now)
        if limit is None or wait is None:
            return
        if self.limits.chat_limit_code == 99991400:
            raise rate_limited(limit, wait)
        raise fail(IM_FREQUENCY)

    def _own_message(self, call: Call, app_id: str) -> _Message:
        message = self.messages.get(call.params["message_id"])
        if message is None:
            raise fail(IM_INVALID_PARAM, f"message {call.params['message_id']!r} not found")
        if message.app_id != app_id:
            raise fail(IM_NOT_SENDER)
        return message

    def patch(self, call: Call, app_id: str) -> Reply:
        """PATCH a card message: shared cards only (update_multi true before and after), <= 14 days, 5 QPS."""
        message = self._own_message(call, app_id)
        if message.msg_type != "interactive":
            raise fail(IM_TYPE_UNSUPPORTED)
        if call.now - message.created_at >= FOURTEEN_DAYS:
            raise fail(IM_TOO_OLD)
        content = call.body.get("content") if isinstance(call.body, dict) else None
        parsed = parse_content("interactive", content)
        if len(call.raw) > size_limit("interactive"):
            raise fail(IM_TOO_LONG)
        old_shared = message.card_id is not None or _update_multi(json.loads(message.content))
        if not (old_shared and _update_multi(parsed)):
            raise fail(IM_CARD_FAILED, 'card config must declare "update_multi": true before and after')
        limit = self.limits.message_patch_qps
        if limit is not None:
            if self.windows.blocked(("patch", message.message_id), limit, 1.0, call.now) is not None:
                raise fail(IM_FREQUENCY)
            self.windows.record(("patch", message.message_id), 1.0, call.now)
        assert isinstance(content, str)
        self._edit(message, "interactive", content, call.now)
        message.card_id = None
        return Reply(json={"code": 0, "msg": "success", "data": {}})

    def update(self, call: Call, app_id: str) -> Reply:
        """PUT (edit) a text / post message: at most 20 edits."""
        message = self._own_message(call, app_id)
        body = call.body if isinstance(call.body, dict) else {}
        msg_type, content = body.get("msg_type"), body.get("content")
        if message.msg_type not in UPDATABLE_TYPES or msg_type not in UPDATABLE_TYPES:
            raise fail(IM_TYPE_UNSUPPORTED)
        parse_content(msg_type, content)
        assert isinstance(msg_type, str) and isinstance(content, str)
        if len(call.raw) > size_limit(msg_type):
            raise fail(IM_TOO_LONG)
        if message.edits >= MAX_EDITS:
            raise fail(IM_EDIT_LIMIT)
        self._edit(message, msg_type, content, call.now)
        return Reply(json={"code": 0, "msg": "success", "data": self._message_data(message)})

    def _edit(self, message: _Message, msg_type: str, content: str, now: float) -> None:
        message.msg_type, message.content = msg_type, content
        message.edits += 1
        message.update_ms = self.wall_ms(now)

    def _message_data(self, m: _Message) -> Json:
        data: Json = {
            "message_id": m.message_id,
            "msg_type": m.msg_type,
            "create_time": str(m.create_ms),
            "update_time": str(m.update_ms or m.create_ms),
            "deleted": False,
            "updated": m.edits > 0,
            "chat_id": m.chat_id,
            "sender": {"id": m.app_id, "id_type": "app_id", "sender_type": "app", "tenant_key": self.tenant_key},
            "body": {"content": m.content},
        }
        data.update({k: v for k, v in (("root_id", m.root_id), ("parent_id", m.parent_id)) if v})
        if m.thread_id:
            data["thread_id"] = m.thread_id
        return data

    # ---- inbound messages and resources ------------------------------------------------------------------------

    def add_message(
        self, message_id: str, chat_id: str, *, chat_type: str, msg_type: str, content: str, **ids: str
    ) -> None:
        sender = ids.pop("sender_open_id", "")
        now = self.now()
        message = _Message(message_id, chat_id, chat_type, None, msg_type, content, now, self.wall_ms(now))
        self.messages[message_id] = _set_thread(message, ids)
        if chat_type == "p2p" and sender:
            self.p2p_chats.setdefault(sender, chat_id)

    def add_resource(self, message_id: str, file_key: str, resource: Resource) -> None:
        self.resources[(message_id, file_key)] = resource

    def resource(self, call: Call) -> Reply:
        kind = call.query.get("type")
        if kind not in ("image", "file"):
            raise fail(RES_INVALID_PARAM, "type must be image or file")
        found = self.resources.get((call.params["message_id"], call.params["file_key"]))
        if found is None:
            raise fail(RES_NOT_IN_MESSAGE)
        if found.kind != kind:
            raise fail(RES_INVALID_PARAM, f"resource is a {found.kind}")
        ascii_name = found.filename if found.filename.isascii() else _quote(found.filename)
        disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{_quote(found.filename)}"
        headers = {"Content-Disposition": disposition}
        return Reply(data=found.data, headers=headers, content_type=found.content_type)

    # ---- observations ------------------------------------------------------------------------------------------

    def visible(self, m: _Message) -> VisibleMessage:
        text, finalized = self.cards.text(m.card_id) if m.card_id else ("", None)
        if m.card_id is None:
            try:
                text = message_text(m.msg_type, json.loads(m.content))
            except (ValueError, AttributeError):
                text = m.content
        return VisibleMessage(
            message_id=m.message_id,
            chat_id=m.chat_id,
            sender="user" if m.app_id is None else "app",
            app_id=m.app_id,
            msg_type=m.msg_type,
            content=m.content,
            text=text,
            card_id=m.card_id,
            finalized=finalized,
            root_id=m.root_id,
            parent_id=m.parent_id,
            thread_id=m.thread_id,
            created_at=m.created_at,
            edits=m.edits,
        )


def _set_thread(message: _Message, ids: Mapping[str, str]) -> _Message:
    message.root_id, message.parent_id = ids.get("root_id", ""), ids.get("parent_id", "")
    message.thread_id = ids.get("thread_id", "")
    return message


def _update_multi(card: Any) -> bool:
    config = card.get("config") if isinstance(card, dict) else None
    return isinstance(config, dict) and config.get("update_multi") is True


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def error_reply(exc: ApiError) -> Reply:
    return Reply(status=exc.status, json={"code": exc.code, "msg": exc.msg}, headers=exc.headers)
