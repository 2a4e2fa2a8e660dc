"""A fake of the DingTalk OpenAPI + sessionWebhooks, as Switchboard's DingTalk adapter uses them.

Runs on 127.0.0.1:<free port> in its own thread (`ThreadedFake`); point `openapi_base` at `fake.base_url`.
sessionWebhook URLs (same origin) come from `session_webhook(cid)` or `bot_message(...)`. Every request is
recorded (`requests`); every /v1.0/ call needs a valid `x-acs-dingtalk-access-token`. Time is `now()`
(`advance()` moves it). Modelled:
* `POST /v1.0/oauth2/accessToken` → `{accessToken, expireIn}` (`token_ttl`); a fetch while valid returns the
  same token, extended (protocols.md G); `token_issues` counts answers.
* `POST /robot/sendBySession?session=` text / markdown → errcode 0; expired / unknown session → 300001;
  > `webhook_per_minute` (20) per session → 130101; bad body → 40035.
* robot `oToMessages/batchSend` (≤ 20 userIds, msgParam a JSON string, `invalid_users`, `flow_control()`),
  `groupMessages/send`, `messageFiles/download` → a `downloadUrl` the fake serves (`GET /files/<id>`, no token).
* AI cards (create, deliver, streaming, update) in `cards`; protocol slips in `violations` (stream / update
  after the card finished, a key finalized twice or streamed after finalize, delivered twice).
* Injection: `error_next` (status + `{code,message}`), `throttle_next` (403 QpsLimitForApi),
  `webhook_error_next` (200 + errcode), inherited `fail_next` (bare 5xx) and `delay_next` (slow answers).

Sources: protocols.md B/G; 400 + `InvalidAuthentication` (satorijs/satori#240); 403 +
`Forbidden.AccessDenied.QpsLimitForApi` (DingTalk-Real-AI/dingtalk-openclaw-connector#410); 300001 "session
不存在" (agentscope-ai/QwenPaw#2221); 130101 / 40035 from secondary copies of the robot error table.
Assumptions: token endpoint codes (`invalidClientId` / `invalidClientSecret`), a missing token header answered
like an invalid one, the `invalidParameter.*` codes, 200 for a stream / update after a card finished (only
recorded), 400 for a reused outTrackId.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.dingtalk_api_state import (
    DingTalkError,
    DingTalkState,
    FileEntry,
    Json,
    RobotMessage,
    WebhookMessage,
    bad,
    object_of,
    param_map,
)
from tests.fakes.feishu_api_server import ThreadedFake
from tests.fakes.feishu_api_state import Call, Reply

__all__ = ["APP_KEY", "APP_SECRET", "Card", "FakeDingTalkAPI", "RobotMessage", "WebhookMessage"]

APP_KEY = "dingappkey0001"
APP_SECRET = "ding-app-secret-0123456789"
_SPACE_RE = re.compile(r"dtv1\.card//(IM_GROUP|IM_ROBOT)\.(.+)")


@dataclass
class Card:
    """One AI card instance as the fake sees it."""

    out_track_id: str
    template_id: str
    params: dict[str, str]
    spaces: list[str] = field(default_factory=list)  # openSpaceIds it was delivered to
    content: dict[str, str] = field(default_factory=dict)  # streamed variables
    streams: list[Json] = field(default_factory=list)
    finalized: set[str] = field(default_factory=set)  # keys streamed with isFinalize
    errored: bool = False

    @property
    def flow_status(self) -> str:
        return self.params.get("flowStatus", "")

    @property
    def finished(self) -> bool:
        return self.flow_status in ("3", "5")

    def text(self, key: str = "content") -> str:
        return self.content.get(key, self.params.get(key, ""))


@dataclass
class _Inject:
    pattern: re.Pattern[str]
    method: str | None
    times: int
    reply: Reply
    skip: int = 0  # let this many matching requests through first


class FakeDingTalkAPI(ThreadedFake):
    """The fake server; read its recorded state from the test thread (lists are appended under a lock)."""

    thread_name = "fake-dingtalk-api"

    def __init__(self, *, port: int = 0, app_key: str = APP_KEY, app_secret: str = APP_SECRET) -> None:
        super().__init__(port=port)
        self._offset = 0.0
        self.state = DingTalkState(self.now, app_key, app_secret)
        self.cards: dict[str, Card] = {}
        self.violations: list[str] = []
        self._injections: list[_Inject] = []
        self._routes: dict[tuple[str, str], Callable[[Call, str], Reply]] = {
            ("POST", "/v1.0/robot/oToMessages/batchSend"): self.state.batch_send,
            ("POST", "/v1.0/robot/groupMessages/send"): self.state.group_send,
            ("POST", "/v1.0/robot/messageFiles/download"): lambda c, a: self.state.download_url(c, a, self.base_url),
            ("POST", "/v1.0/card/instances"): self._card_create,
            ("POST", "/v1.0/card/instances/deliver"): self._card_deliver,
            ("PUT", "/v1.0/card/streaming"): self._card_stream,
            ("PUT", "/v1.0/card/instances"): self._card_update,
        }

    def now(self) -> float:
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the fake's clock (token and sessionWebhook expiry, per-minute limits)."""
        with self._cond:
            self._offset += seconds

    def session_webhook(self, conversation_id: str, *, ttl: float = 5400.0) -> tuple[str, int]:
        """A sessionWebhook URL for `conversation_id` and its `sessionWebhookExpiredTime` (ms since the epoch)."""
        with self._cond:
            session = self.state.add_session(conversation_id, ttl)
        return f"{self.base_url}/robot/sendBySession?session={session.session_id}", int((time.time() + ttl) * 1000)

    def bot_message(self, text: str = "hello", *, group: bool = False, ttl: float = 5400.0, **fields: Any) -> Json:
        """A robot message (protocols.md B2) with a live sessionWebhook; `fields` override camelCase keys."""
        cid = str(fields.get("conversationId", "cidGroup001==" if group else "cidDirect001=="))
        url, expires = self.session_webhook(cid, ttl=ttl)
        now_ms = int(time.time() * 1000)
        bot, robot = "$:LWCP_v1:$bot", next(iter(self.state.robots))
        message: Json = {"msgId": f"msg{now_ms}{len(self.state.sessions)}", "msgtype": "text", "createAt": now_ms}
        message |= {"conversationId": cid, "conversationType": "2" if group else "1", "isInAtList": group}
        title, at_users = ("Test Group", [{"dingtalkId": bot}]) if group else ("", [])
        message |= {"conversationTitle": title, "atUsers": at_users, "isAdmin": False}
        message |= {"senderId": "$:LWCP_v1:$alice", "senderStaffId": "staff001", "senderNick": "Alice"}
        message |= {"senderCorpId": "dingcorp", "chatbotCorpId": "dingcorp", "chatbotUserId": bot, "robotCode": robot}
        message |= {"sessionWebhook": url, "sessionWebhookExpiredTime": expires}
        message["text"] = {"content": (" " if group else "") + text}
        return {**message, **fields}

    def add_file(self, download_code: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        with self._cond:
            self.state.files[download_code] = FileEntry(data, content_type)

    def flow_control(self, *users: str, times: int = -1) -> None:
        """batchSend reports these users in flowControlledStaffIdList (`times` calls; < 0: always)."""
        with self._cond:
            self.state.flow_controlled.update(dict.fromkeys(users, times))

    def expire_tokens(self) -> None:
        with self._cond:
            self.state.expire_tokens()

    def error_next(
        self,
        path_pattern: str,
        *,
        status: int = 400,
        code: str = "invalidParameter",
        message: str = "injected failure",
        times: int = 1,
        headers: dict[str, str] | None = None,
        method: str | None = None,
        after: int = 0,
    ) -> None:
        """The next `times` matching requests (after `after` untouched ones) get `status` + `{code, message}`."""
        reply = DingTalkError(status, code, message).reply()
        reply.headers = dict(headers or {})
        with self._cond:
            self._injections.append(_Inject(re.compile(path_pattern), method, times, reply, after))

    def throttle_next(
        self,
        path_pattern: str,
        *,
        times: int = 1,
        status: int = 403,
        code: str = "Forbidden.AccessDenied.QpsLimitForApi",
    ) -> None:
        self.error_next(path_pattern, status=status, code=code, message="调用频率超过限制", times=times)

    def webhook_error_next(self, errcode: int, errmsg: str = "injected failure", *, times: int = 1) -> None:
        reply = Reply(json={"errcode": errcode, "errmsg": errmsg})
        with self._cond:
            self._injections.append(_Inject(re.compile(r"^/robot/sendBySession$"), "POST", times, reply))

    @property
    def webhook_messages(self) -> list[WebhookMessage]:
        with self._cond:
            return list(self.state.webhook_messages)

    @property
    def robot_messages(self) -> list[RobotMessage]:
        with self._cond:
            return list(self.state.robot_messages)

    @property
    def token_issues(self) -> int:
        with self._cond:
            return self.state.token_issues

    def _route(self, call: Call) -> Reply:
        for rule in self._injections:
            if rule.pattern.search(call.path) and rule.method in (None, call.method):
                if rule.skip > 0:
                    rule.skip -= 1
                    break
                rule.times -= 1
                if rule.times <= 0:
                    self._injections.remove(rule)
                call.record.injected = True
                return rule.reply
        try:
            if (call.method, call.path) == ("POST", "/v1.0/oauth2/accessToken"):
                return self.state.token(call)
            if (call.method, call.path) == ("POST", "/robot/sendBySession"):
                return self.state.webhook(call)
            if call.method == "GET" and call.path.startswith("/files/"):
                return self.state.file(call)
            handler = self._routes.get((call.method, call.path))
            if handler is None:
                raise bad("NotFound", f"no API {call.method} {call.path}", 404)
            return handler(call, self.state.authenticate(call))
        except DingTalkError as exc:
            return exc.reply()

    def _card(self, body: Json) -> Card:
        card = self.cards.get(str(body.get("outTrackId")))
        if card is None:
            raise bad("invalidParameter.card.notExist", "card instance not found")
        return card

    def _card_create(self, call: Call, app_key: str) -> Reply:
        body = object_of(call.body)
        template, track = body.get("cardTemplateId"), body.get("outTrackId")
        if not isinstance(template, str) or not template or not isinstance(track, str) or not track:
            raise bad("invalidParameter", "cardTemplateId and outTrackId are required")
        if track in self.cards:
            raise bad("invalidParameter.outTrackId.duplicate", "outTrackId already used")
        self.cards[track] = Card(track, template, param_map(body))
        return Reply(json={"success": True, "result": track})

    def _card_deliver(self, call: Call, app_key: str) -> Reply:
        body = object_of(call.body)
        card = self._card(body)
        match = _SPACE_RE.fullmatch(str(body.get("openSpaceId", "")))
        if match is None or body.get("userIdType", 1) != 1:
            raise bad("invalidParameter.openSpaceId", "openSpaceId must be dtv1.card//IM_GROUP.<cid>|IM_ROBOT.<id>")
        space_type, space_id = match.groups()
        group, robot = (
            object_of(body.get("imGroupOpenDeliverModel", {})),
            object_of(body.get("imRobotOpenDeliverModel", {})),
        )
        if space_type == "IM_GROUP" and self.state.robots.get(str(group.get("robotCode"))) != app_key:
            raise bad("invalidParameter.robotCode", "imGroupOpenDeliverModel.robotCode is required")
        if space_type == "IM_ROBOT" and robot.get("spaceType") != "IM_ROBOT":
            raise bad("invalidParameter", "imRobotOpenDeliverModel.spaceType must be IM_ROBOT")
        if body["openSpaceId"] in card.spaces:
            self.violations.append(f"{card.out_track_id}: delivered twice to {body['openSpaceId']}")
        card.spaces.append(body["openSpaceId"])
        return Reply(
            json={"success": True, "result": [{"spaceType": space_type, "spaceId": space_id, "success": True}]}
        )

    def _card_stream(self, call: Call, app_key: str) -> Reply:
        body = object_of(call.body)
        card = self._card(body)
        key, content, guid = body.get("key"), body.get("content"), body.get("guid")
        flags = [body.get(k) for k in ("isFull", "isFinalize", "isError")]
        if not all(isinstance(v, str) and v for v in (key, guid)) or not isinstance(content, str):
            raise bad("invalidParameter", "outTrackId, guid, key and content are required strings")
        if not all(isinstance(f, bool) for f in flags):
            raise bad("invalidParameter", "isFull, isFinalize and isError must be booleans")
        key = str(key)
        if card.finished:
            self.violations.append(f"{card.out_track_id}: streamed after the card finished")
        if key in card.finalized:
            self.violations.append(
                f"{card.out_track_id}: {'finalized twice' if flags[1] else 'streamed after finalize'}"
            )
        card.content[key] = content if flags[0] else card.content.get(key, "") + content
        card.finalized.update([key] if flags[1] else [])
        card.errored = card.errored or bool(flags[2])
        card.streams.append(body)
        return Reply(json={"success": True, "result": True})

    def _card_update(self, call: Call, app_key: str) -> Reply:
        body = object_of(call.body)
        card = self._card(body)
        params = param_map(body)
        if card.finished:
            self.violations.append(f"{card.out_track_id}: updated after the card finished")
        card.params.update(params)
        return Reply(json={"success": True, "result": True})
