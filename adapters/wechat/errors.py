"""The one place WeChat OA API error codes become typed send errors."""

from __future__ import annotations

from gateway.errors import PermanentSendError, RateLimited, SendError, TransientSendError

_PERMANENT = {
    45015: "outside the 48-hour customer-service window (the user has not written for 48 h)",
    45047: "customer-service quota for this user message is used up",
    45002: "message too long for WeChat",
    43004: "the user has unsubscribed",
    40003: "invalid openid for this account",
    48001: "this account has no customer-service (客服消息) permission: set customer_service: false",
    40013: "invalid AppID: check app_id",
    40125: "invalid AppSecret: check the app secret",
    40164: "this server's IP is not on the account's IP whitelist",
    41001: "access token missing",
}
_RATE = {45009: 3600.0, 45011: 60.0}  # daily quota, per-minute quota


def map_error(errcode: int, errmsg: str) -> SendError:
    """Permanent for codes a retry cannot fix (these become dead letters with the reason), rate limits
    with a sensible wait, everything else transient (retried with backoff until the deadline)."""
    code = str(errcode)
    if errcode in _PERMANENT:
        return PermanentSendError(f"WeChat {errcode}: {_PERMANENT[errcode]} ({errmsg})", code=code)
    if errcode in _RATE:
        return RateLimited(f"WeChat {errcode}: API quota reached ({errmsg})", code=code, retry_after=_RATE[errcode])
    return TransientSendError(f"WeChat {errcode}: {errmsg or 'error'}", code=code)
