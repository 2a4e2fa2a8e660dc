"""The one place DingTalk answers become typed send errors (`gateway.errors`), so no caller matches strings.

Two answer shapes reach us:

* OpenAPI (`api.dingtalk.com/v1.0/…`): HTTP status + `{"code": "<string>", "message": …, "requestid": …}`.
  A rejected access token is `code: "InvalidAuthentication"` ("不合法的access_token") with HTTP **400** in
  real logs (satorijs/satori#240, alibabacloud-sdk-php/dingtalk#1), 401 from some gateways; both mean
  "refresh the token once and retry" (AuthExpired). API QPS limits come as HTTP 403 +
  `Forbidden.AccessDenied.QpsLimitForApi` (DingTalk-Real-AI/dingtalk-openclaw-connector#410), other
  throttles as 429 or `Throttling*` codes: RateLimited. 5xx and `system*`/internal codes are transient;
  other 4xx are permanent, with DingTalk's reason, so one bad message dead-letters instead of blocking
  its chat's lane.
* sessionWebhook (`oapi.dingtalk.com/robot/sendBySession`): HTTP 200 + `{"errcode": 0, "errmsg": "ok"}`.
  130101 "send too fast" means the robot is throttled for 10 minutes (20 messages/minute, protocols.md G);
  300001 "session 不存在" (agentscope-ai/QwenPaw#2221) and 310000 mean the webhook is expired or refused:
  SessionWebhookGone, on which the adapter falls back to the OpenAPI send.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import AuthExpired, PermanentSendError, RateLimited, SendError, TransientSendError

WEBHOOK_THROTTLE_SECONDS = 600.0  # DingTalk mutes a robot for 10 minutes after 20 messages in a minute
QPS_RETRY_SECONDS = 1.0  # per-second API limits: the next second is a fresh budget
AUTH_CODES = frozenset({"invalidauthentication", "missingaccesstoken", "invalidaccesstoken", "unauthorized"})
WEBHOOK_GONE = frozenset({300001, 310000})
WEBHOOK_THROTTLED = frozenset({130101})
WEBHOOK_BUSY = frozenset({-1})  # "系统繁忙"
_TRANSIENT_PREFIXES = ("system", "internalerror", "serviceunavailable", "unknownerror")
_THROTTLE_MARKERS = ("qpslimit", "qpmlimit", "throttl", "flowcontrol", "ratelimit")


class SessionWebhookGone(PermanentSendError):
    """The message's sessionWebhook expired or was refused: send through the robot OpenAPI instead."""


def classify(status: int, body: Mapping[str, Any], *, retry_after: float | None = None) -> SendError:
    """HTTP status + DingTalk body (either shape) → the SendError the outbox acts on."""
    if "errcode" in body:
        return _webhook(status, body, retry_after)
    code = body.get("code")
    code = code if isinstance(code, str) else str(code) if isinstance(code, int) else ""
    message = body.get("message")
    reason = message if isinstance(message, str) and message else f"HTTP {status}"
    label = f"DingTalk {code or status}: {reason[:300]}"
    lowered = code.lower()
    if status == 401 or lowered in AUTH_CODES:
        return AuthExpired(f"{label} (access token rejected)", code=code or str(status))
    if status == 429 or any(marker in lowered for marker in _THROTTLE_MARKERS):
        wait = retry_after if retry_after is not None else QPS_RETRY_SECONDS
        return RateLimited(f"{label} (rate limited)", code=code or str(status), retry_after=wait)
    if status >= 500 or lowered.startswith(_TRANSIENT_PREFIXES) or status in (0, 408):
        return TransientSendError(label, code=code or str(status))
    if 200 <= status < 300:  # an error body on a 2xx: nothing says it is final
        return TransientSendError(f"{label} (unexpected answer)", code=code or str(status))
    return PermanentSendError(label, code=code or str(status))


def _webhook(status: int, body: Mapping[str, Any], retry_after: float | None) -> SendError:
    errcode = body.get("errcode")
    errmsg = body.get("errmsg")
    reason = f"DingTalk webhook errcode {errcode}: {str(errmsg)[:300] if errmsg else 'no message'}"
    if status >= 500:
        return TransientSendError(reason, code=str(status))
    if status == 429:
        return RateLimited(reason, code="429", retry_after=retry_after)
    if not isinstance(errcode, int) or isinstance(errcode, bool):
        return TransientSendError(f"{reason} (unreadable errcode)", code=str(status))
    if errcode in WEBHOOK_THROTTLED:
        wait = retry_after if retry_after is not None else WEBHOOK_THROTTLE_SECONDS
        return RateLimited(reason, code=str(errcode), retry_after=wait)
    if errcode in WEBHOOK_GONE:
        return SessionWebhookGone(reason, code=str(errcode))
    if errcode in WEBHOOK_BUSY:
        return TransientSendError(reason, code=str(errcode))
    return PermanentSendError(reason, code=str(errcode))
