"""Platform state and endpoint logic of the DingTalk OpenAPI fake (tokens, sessionWebhooks, robot sends, files).

Everything here runs with the fake's lock held; `FakeDingTalkAPI` (dingtalk_api.py) does the HTTP plumbing
and the AI-card endpoints. Sources and assumptions are listed in dingtalk_api.py's docstring.
"""

from __future__ import annotations

import collections
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.feishu_api_state import Call, Reply

Json = dict[str, Any]
TOKEN_HEADER = "x-acs-dingtalk-access-token"
MSG_KEYS: dict[str, tuple[str, ...]] = {  # msgKey → msgParam keys it needs
    "sampleText": ("content",),
    "sampleMarkdown": ("title", "text"),
    "sampleImageMsg": ("photoURL",),
    "sampleLink": ("text", "title", "messageUrl"),
    "sampleActionCard": ("title", "text"),
    "sampleFile": ("mediaId", "fileName", "fileType"),
}
WEBHOOK_TYPES: dict[str, tuple[str, ...]] = {"text": ("content",), "markdown": ("title", "text")}
BATCH_LIMIT = 20


class DingTalkError(Exception):
    """An OpenAPI error answer: HTTP status + `{"code","message","requestid"}`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message

    def reply(self) -> Reply:
        body = {"code": self.code, "message": self.message, "requestid": uuid.uuid4().hex.upper()}
        return Reply(status=self.status, json=body)


def bad(code: str, message: str, status: int = 400) -> DingTalkError:
    return DingTalkError(status, code, message)


@dataclass
class Token:
    value: str
    app_key: str
    expires_at: float


@dataclass
class Session:
    """One sessionWebhook: which conversation it posts into and until when (fake clock)."""

    session_id: str
    conversation_id: str
    expires_at: float
    sent_at: collections.deque[float] = field(default_factory=collections.deque)


@dataclass(frozen=True)
class WebhookMessage:
    """A message accepted through a sessionWebhook."""

    conversation_id: str
    session_id: str
    msgtype: str
    title: str
    text: str
    at_user_ids: tuple[str, ...]
    body: Json
    at: float


@dataclass(frozen=True)
class RobotMessage:
    """A message accepted by batchSend (`users` = delivered ones) or groupMessages/send (`conversation_id`)."""

    kind: str  # "batch" | "group"
    robot_code: str
    users: tuple[str, ...]
    conversation_id: str
    msg_key: str
    msg_param: Json
    process_query_key: str
    at: float


@dataclass
class FileEntry:
    data: bytes
    content_type: str


class DingTalkState:
    """Tokens, sessionWebhooks, robot messages and downloadable files of one fake DingTalk."""

    def __init__(self, now: Callable[[], float], app_key: str, app_secret: str) -> None:
        self.now = now
        self.apps: dict[str, str] = {app_key: app_secret}
        self.robots: dict[str, str] = {app_key: app_key}  # robotCode → app; an app's default robot uses the AppKey
        self.token_ttl = 7200
        self.invalid_token_status = 400  # real answers are 400 + InvalidAuthentication (see dingtalk_api.py)
        self.tokens: dict[str, Token] = {}
        self.current: dict[str, Token] = {}
        self.token_issues = 0
        self.sessions: dict[str, Session] = {}
        self.webhook_per_minute: int | None = 20
        self.webhook_messages: list[WebhookMessage] = []
        self.robot_messages: list[RobotMessage] = []
        self.invalid_users: set[str] = set()
        self.flow_controlled: dict[str, int] = {}  # user → times left (< 0: always)
        self.files: dict[str, FileEntry] = {}  # downloadCode → file
        self.download_links: dict[str, str] = {}  # link id → downloadCode
        self.file_gets = 0

    # ---- tokens --------------------------------------------------------------------------------------------

    def token(self, call: Call) -> Reply:
        body = call.body if isinstance(call.body, dict) else {}
        key, secret = body.get("appKey"), body.get("appSecret")
        if not isinstance(key, str) or key not in self.apps:
            raise bad("invalidClientId", "应用不存在")
        if secret != self.apps[key]:
            raise bad("invalidClientSecret", "无效的appSecret")
        now = self.now()
        current = self.current.get(key)
        if current is not None and current.expires_at > now:
            current.expires_at = now + self.token_ttl  # a fetch within validity returns the same token, extended
        else:
            current = Token("dt-" + secrets.token_hex(12), key, now + self.token_ttl)
            self.tokens[current.value] = self.current[key] = current
        self.token_issues += 1
        return Reply(json={"accessToken": current.value, "expireIn": self.token_ttl})

    def authenticate(self, call: Call) -> str:
        """The app whose valid token the request carries."""
        token = self.tokens.get(call.headers.get(TOKEN_HEADER, ""))
        if token is None or token.expires_at <= self.now():
            raise bad("InvalidAuthentication", "不合法的access_token", self.invalid_token_status)
        call.record.app_id = token.app_key
        return token.app_key

    def expire_tokens(self) -> None:
        """Every issued token stops working now (the next fetch issues a new one)."""
        for token in self.tokens.values():
            token.expires_at = self.now()

    # ---- sessionWebhook ------------------------------------------------------------------------------------

    def add_session(self, conversation_id: str, ttl: float) -> Session:
        session = Session(secrets.token_urlsafe(12), conversation_id, self.now() + ttl)
        self.sessions[session.session_id] = session
        return session

    def webhook(self, call: Call) -> Reply:
        session = self.sessions.get(call.query.get("session", ""))
        now = self.now()
        if session is None or session.expires_at <= now:
            return _errcode(300001, "session 不存在")
        body = call.body
        msgtype = body.get("msgtype") if isinstance(body, dict) else None
        part = body.get(msgtype) if isinstance(body, dict) and isinstance(msgtype, str) else None
        needed = WEBHOOK_TYPES.get(msgtype) if isinstance(msgtype, str) else None
        if not isinstance(body, dict) or needed is None or not isinstance(part, dict):
            return _errcode(40035, "缺少参数 json")
        if not all(isinstance(part.get(k), str) and part[k] for k in needed):
            return _errcode(40035, f"缺少参数 {msgtype}")
        at = body.get("at", {})
        at_ids = at.get("atUserIds", []) if isinstance(at, dict) else None
        if not isinstance(at_ids, list) or not all(isinstance(u, str) for u in at_ids):
            return _errcode(40035, "at.atUserIds must be a list of strings")
        window = session.sent_at
        while window and window[0] <= now - 60:
            window.popleft()
        if self.webhook_per_minute is not None and len(window) >= self.webhook_per_minute:
            return _errcode(130101, "send too fast, exceed 20 times per minute")
        window.append(now)
        text, title = str(part.get("text", part.get("content", ""))), str(part.get("title", ""))
        cid, sid = session.conversation_id, session.session_id
        message = WebhookMessage(cid, sid, str(msgtype), title, text, tuple(at_ids), body, now)
        self.webhook_messages.append(message)
        return Reply(json={"errcode": 0, "errmsg": "ok"})

    # ---- robot OpenAPI sends -------------------------------------------------------------------------------

    def _robot(self, body: Json, app_key: str) -> tuple[str, str, Json]:
        robot = body.get("robotCode")
        if not isinstance(robot, str) or self.robots.get(robot) != app_key:
            raise bad("invalidParameter.robotCode", "robotCode不存在或不属于当前应用")
        key, raw = body.get("msgKey"), body.get("msgParam")
        if not isinstance(key, str) or key not in MSG_KEYS:
            raise bad("invalidParameter.msgKey", f"unknown msgKey {str(key)[:40]!r}")
        try:
            param = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            param = None
        if not isinstance(param, dict):
            raise bad("invalidParameter.msgParam", "msgParam must be a JSON object encoded as a string")
        if not all(isinstance(param.get(k), str) and param[k] for k in MSG_KEYS[key]):
            raise bad("invalidParameter.msgParam", f"{key} needs {', '.join(MSG_KEYS[key])}")
        return robot, key, param

    def batch_send(self, call: Call, app_key: str) -> Reply:
        body = object_of(call.body)
        robot, key, param = self._robot(body, app_key)
        users = body.get("userIds")
        if not isinstance(users, list) or not users or not all(isinstance(u, str) and u for u in users):
            raise bad("invalidParameter.userIds", "userIds must be a non-empty list of userIds")
        if len(users) > BATCH_LIMIT:
            raise bad("invalidParameter.userIds.exceedLimit", f"at most {BATCH_LIMIT} userIds per call")
        invalid = [u for u in users if u in self.invalid_users]
        flow = [u for u in users if u not in self.invalid_users and self.flow_controlled.get(u, 0) != 0]
        for user in flow:
            self.flow_controlled[user] -= 1 if self.flow_controlled[user] > 0 else 0
        delivered = tuple(u for u in users if u not in invalid and u not in flow)
        query_key = secrets.token_hex(8)
        if delivered:
            self.robot_messages.append(RobotMessage("batch", robot, delivered, "", key, param, query_key, self.now()))
        answer = {"processQueryKey": query_key, "invalidStaffIdList": invalid, "flowControlledStaffIdList": flow}
        return Reply(json=answer)

    def group_send(self, call: Call, app_key: str) -> Reply:
        body = object_of(call.body)
        robot, key, param = self._robot(body, app_key)
        conversation = body.get("openConversationId")
        if not isinstance(conversation, str) or not conversation:
            raise bad("invalidParameter.openConversationId", "openConversationId is required")
        query_key = secrets.token_hex(8)
        self.robot_messages.append(RobotMessage("group", robot, (), conversation, key, param, query_key, self.now()))
        return Reply(json={"processQueryKey": query_key})

    # ---- files ---------------------------------------------------------------------------------------------

    def download_url(self, call: Call, app_key: str, base_url: str) -> Reply:
        body = object_of(call.body)
        if self.robots.get(str(body.get("robotCode"))) != app_key:
            raise bad("invalidParameter.robotCode", "robotCode不存在或不属于当前应用")
        code = body.get("downloadCode")
        if not isinstance(code, str) or code not in self.files:
            raise bad("invalidParameter.downloadCode", "downloadCode无效")
        link = secrets.token_urlsafe(12)
        self.download_links[link] = code
        return Reply(json={"downloadUrl": f"{base_url}/files/{link}"})

    def file(self, call: Call) -> Reply:
        code = self.download_links.get(call.path.removeprefix("/files/"))
        entry = self.files.get(code or "")
        if entry is None:
            return Reply(status=404, data=b"NoSuchKey", content_type="text/plain")
        self.file_gets += 1
        return Reply(data=entry.data, content_type=entry.content_type)


def _errcode(errcode: int, errmsg: str) -> Reply:
    return Reply(json={"errcode": errcode, "errmsg": errmsg})


def object_of(value: Any) -> Json:
    if not isinstance(value, dict):
        raise bad("invalidParameter", "expected a JSON object")
    return value


def param_map(body: Json) -> dict[str, str]:
    """`cardData.cardParamMap`: DingTalk takes string values only."""
    params = object_of(body.get("cardData", {})).get("cardParamMap", {})
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise bad("invalidParameter.cardParamMap", "cardParamMap must map names to strings")
    return dict(params)
