"""DingTalk OpenAPI and sessionWebhook calls over aiohttp (never blocking the event loop).

dingtalk-stream 0.24.3 sends replies and card updates with blocking `requests` inside the coroutine
(protocols.md B1.5); here everything is aiohttp on the shared session. The access token lives in an
`AccessTokenCache` per app credential: fetched single-flight, refreshed before `expireIn`, and refreshed once
when DingTalk rejects it (then the call is retried once). Every failure becomes a typed error through
`errors.classify`.

Security: a sessionWebhook URL comes from the message body, and an HTTP callback's signature covers only its
timestamp, not the body - so a replayed-and-edited callback could name any URL. Replies are therefore POSTed
only to DingTalk's own webhook host or the configured OpenAPI origin (`webhook_origins`); anything else is
SessionWebhookGone, and the adapter falls back to the OpenAPI send. The token is never sent to a download URL.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from adapters.dingtalk.errors import SessionWebhookGone, classify
from adapters.httpio import read_bounded
from adapters.tokens import AccessTokenCache, IssuedToken, TokenError
from gateway.errors import AuthExpired, PermanentSendError, SendError, TransientSendError

MAX_RESPONSE_BYTES = 1024 * 1024
BATCH_LIMIT = 20  # oToMessages/batchSend takes at most 20 userIds (protocols.md G)
TOKEN_HEADER = "x-acs-dingtalk-access-token"
WEBHOOK_HOSTS = ("https://oapi.dingtalk.com", "https://api.dingtalk.com")
DOWNLOAD_TIMEOUT = 60.0


@dataclass(frozen=True)
class BatchResult:
    """Outcome of `batch_send`: who DingTalk refused or flow-controlled, and who was not sent at all.

    `unsent` users belong to chunks whose call failed with `error` after an earlier chunk succeeded; the
    caller retries exactly those (resending the whole list would duplicate the delivered chunks).
    """

    process_query_keys: tuple[str, ...] = ()
    invalid: tuple[str, ...] = ()  # invalidStaffIdList: never deliverable (dead-letter)
    flow_controlled: tuple[str, ...] = ()  # flowControlledStaffIdList: retry later
    unsent: tuple[str, ...] = ()
    error: SendError | None = None

    @property
    def failed(self) -> tuple[str, ...]:
        return (*self.invalid, *self.flow_controlled, *self.unsent)


@dataclass(frozen=True)
class Downloaded:
    """A downloaded file; `data` is empty when it was larger than the cap (`too_large`)."""

    data: bytes
    content_type: str
    too_large: bool


class DingTalkApi:
    """One app credential's authenticated client (share it between robots of the same app)."""

    def __init__(
        self,
        http: Callable[[], aiohttp.ClientSession],
        base: str,
        app_key: str,
        app_secret: str,
        *,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._base = base.rstrip("/")
        self._app_key = app_key
        self._app_secret = app_secret
        self._timeout = timeout
        self.tokens = AccessTokenCache(self._fetch_token, clock=clock)
        self.webhook_origins = frozenset({*WEBHOOK_HOSTS, _origin(self._base)})

    async def _fetch_token(self) -> IssuedToken:
        body = {"appKey": self._app_key, "appSecret": self._app_secret}
        status, headers, data = await self._raw("POST", self._base + "/v1.0/oauth2/accessToken", body, token=None)
        token, expires = data.get("accessToken"), data.get("expireIn", 7200)
        if status == 200 and isinstance(token, str) and token:
            lifetime = expires if isinstance(expires, int | float) and not isinstance(expires, bool) else 7200
            return IssuedToken(token, float(lifetime))
        error = classify(status if status != 200 else 502, data, retry_after=_retry_after(headers))
        if isinstance(error, TransientSendError) and not isinstance(error, AuthExpired):
            raise error  # the token endpoint is busy or throttling: worth retrying later
        raise TokenError(f"access token refused: {error}", code=error.code)

    async def probe(self) -> None:
        """Doctor: fetch a token (proves the AppKey/AppSecret and reachability); raises what a send would."""
        await self._token()

    async def _token(self) -> str:
        try:
            return await self.tokens.get()
        except TokenError as exc:
            raise PermanentSendError(f"DingTalk {exc}", code=exc.code or "token") from exc

    async def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One OpenAPI call; its JSON answer. A rejected token is refreshed once and the call retried once."""
        for attempt in (1, 2):
            token = await self._token()
            status, headers, data = await self._raw(method, self._base + path, body, token=token)
            if status == 200:
                return data
            error = classify(status, data, retry_after=_retry_after(headers))
            if isinstance(error, AuthExpired) and attempt == 1:
                self.tokens.invalidate(token)
                continue
            raise error
        raise AssertionError("unreachable")

    async def post_session_webhook(self, url: str, body: Mapping[str, Any]) -> None:
        """Reply through a message's sessionWebhook (no token: the URL is the credential)."""
        if _origin(url) not in self.webhook_origins:
            raise SessionWebhookGone(f"sessionWebhook host {_origin(url)[:80]!r} is not DingTalk's", code="host")
        status, headers, data = await self._raw("POST", url, body, token=None, empty_ok=False)
        if status == 200 and data.get("errcode") == 0:
            return
        if "errcode" not in data and status == 200:
            data = {**data, "errcode": None}
        raise classify(status, data, retry_after=_retry_after(headers))

    async def batch_send(
        self, robot_code: str, user_ids: Sequence[str], msg_key: str, msg_param: Mapping[str, Any]
    ) -> BatchResult:
        """Send one message to users 1:1, in calls of at most 20 ids. Raises only if nothing was sent."""
        users = list(dict.fromkeys(u for u in user_ids if u))
        param = json.dumps(msg_param, ensure_ascii=False)
        keys: list[str] = []
        invalid: list[str] = []
        flow: list[str] = []
        unsent: list[str] = []
        error: SendError | None = None
        for chunk in (users[i : i + BATCH_LIMIT] for i in range(0, len(users), BATCH_LIMIT)):
            body = {"robotCode": robot_code, "userIds": chunk, "msgKey": msg_key, "msgParam": param}
            try:
                data = await self.call("POST", "/v1.0/robot/oToMessages/batchSend", body)
            except SendError as exc:
                if not keys:  # nothing delivered yet: a plain failure the outbox retries as a whole
                    raise
                error = error or exc
                unsent.extend(chunk)
                continue
            keys.append(_str(data.get("processQueryKey")))
            invalid.extend(_strings(data.get("invalidStaffIdList")))
            flow.extend(_strings(data.get("flowControlledStaffIdList")))
        return BatchResult(tuple(keys), tuple(invalid), tuple(flow), tuple(unsent), error)

    async def group_send(
        self, robot_code: str, open_conversation_id: str, msg_key: str, msg_param: Mapping[str, Any]
    ) -> str:
        """Send one message to a group the robot is in; DingTalk's processQueryKey."""
        body = {"robotCode": robot_code, "openConversationId": open_conversation_id, "msgKey": msg_key}
        body["msgParam"] = json.dumps(msg_param, ensure_ascii=False)
        data = await self.call("POST", "/v1.0/robot/groupMessages/send", body)
        return _str(data.get("processQueryKey"))

    async def download_url(self, robot_code: str, download_code: str) -> str:
        """Exchange a message's downloadCode for a short-lived download URL."""
        body = {"downloadCode": download_code, "robotCode": robot_code}
        data = await self.call("POST", "/v1.0/robot/messageFiles/download", body)
        url = data.get("downloadUrl")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise TransientSendError("DingTalk messageFiles/download answered without a downloadUrl", code="no_url")
        return url

    async def download(self, url: str, max_bytes: int) -> Downloaded:
        """GET a download URL, reading at most `max_bytes + 1` bytes (no token: the URL is presigned)."""
        try:
            async with self._http().get(
                url, timeout=aiohttp.ClientTimeout(total=max(self._timeout, DOWNLOAD_TIMEOUT))
            ) as resp:
                content_type = resp.headers.get("Content-Type", "")
                if resp.status != 200:
                    raise classify(resp.status, {"message": f"download answered HTTP {resp.status}"})
                if resp.content_length is not None and resp.content_length > max_bytes:
                    return Downloaded(b"", content_type, True)
                raw, too_large = await read_bounded(resp.content, max_bytes)
        except TimeoutError as exc:
            raise TransientSendError("DingTalk file download timed out", code="timeout") from exc
        except aiohttp.ClientError as exc:
            raise TransientSendError(f"DingTalk file download failed: {type(exc).__name__}", code="network") from exc
        return Downloaded(b"" if too_large else raw, content_type, too_large)

    async def create_card(
        self, template_id: str, out_track_id: str, card_param_map: Mapping[str, str], *, support_forward: bool = True
    ) -> None:
        """Create a card instance (not yet visible); `out_track_id` is our id for it from now on."""
        body = {
            "cardTemplateId": template_id,
            "outTrackId": out_track_id,
            "cardData": {"cardParamMap": dict(card_param_map)},
            "callbackType": "STREAM",
            "imGroupOpenSpaceModel": {"supportForward": support_forward},
            "imRobotOpenSpaceModel": {"supportForward": support_forward},
        }
        await self.call("POST", "/v1.0/card/instances", body)

    async def deliver_card(
        self, out_track_id: str, robot_code: str, *, open_conversation_id: str = "", staff_id: str = ""
    ) -> None:
        """Show a created card in a group (`open_conversation_id`) or in the robot DM with `staff_id`."""
        body: dict[str, Any] = {"outTrackId": out_track_id, "userIdType": 1}
        if open_conversation_id:
            body["openSpaceId"] = f"dtv1.card//IM_GROUP.{open_conversation_id}"
            body["imGroupOpenDeliverModel"] = {"robotCode": robot_code}
        elif staff_id:
            body["openSpaceId"] = f"dtv1.card//IM_ROBOT.{staff_id}"
            body["imRobotOpenDeliverModel"] = {"spaceType": "IM_ROBOT"}
        else:
            raise PermanentSendError("a card needs a group or a staffId to be delivered to", code="no_space")
        await self.call("POST", "/v1.0/card/instances/deliver", body)

    async def stream_card(
        self,
        out_track_id: str,
        key: str,
        content: str,
        *,
        is_full: bool = True,
        is_finalize: bool = False,
        is_error: bool = False,
        guid: str | None = None,
    ) -> None:
        """Stream `content` into the card variable `key` (whole text when `is_full`); finalize exactly once."""
        body: dict[str, Any] = {"outTrackId": out_track_id, "guid": guid or uuid.uuid4().hex, "key": key}
        body |= {"content": content, "isFull": is_full, "isFinalize": is_finalize, "isError": is_error}
        await self.call("PUT", "/v1.0/card/streaming", body)

    async def update_card(self, out_track_id: str, card_param_map: Mapping[str, str]) -> None:
        """Update card variables, e.g. `{"flowStatus": "3"}` to mark the answer finished (5: failed)."""
        body = {"outTrackId": out_track_id, "cardData": {"cardParamMap": dict(card_param_map)}}
        await self.call("PUT", "/v1.0/card/instances", body)

    async def _raw(
        self, method: str, url: str, body: Mapping[str, Any] | None, *, token: str | None, empty_ok: bool = True
    ) -> tuple[int, Mapping[str, str], dict[str, Any]]:
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if token is not None:
            headers[TOKEN_HEADER] = token
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        path = urlsplit(url).path
        try:
            async with self._http().request(
                method, url, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=self._timeout)
            ) as resp:
                raw, too_large = await read_bounded(resp.content, MAX_RESPONSE_BYTES)
                status, resp_headers = resp.status, resp.headers
        except TimeoutError as exc:
            raise TransientSendError(f"DingTalk {path} timed out after {self._timeout}s", code="timeout") from exc
        except aiohttp.ClientError as exc:
            raise TransientSendError(f"DingTalk {path} failed: {type(exc).__name__}", code="network") from exc
        try:
            parsed = json.loads(raw) if raw and not too_large else ({} if empty_ok and not raw else None)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            if status == 200:  # never read an unparsable 200 as success
                raise TransientSendError(f"DingTalk {path} answered 200 without a JSON object", code="bad_json")
            parsed = {}
        return status, resp_headers, parsed


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
