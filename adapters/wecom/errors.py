"""The one place WeCom API error codes become typed send errors."""

from __future__ import annotations

from gateway.errors import PermanentSendError, RateLimited, SendError, TransientSendError

_PERMANENT = {
    40013: "invalid CorpID: check corp_id",
    40056: "invalid AgentID: check agent_id",
    40003: "invalid UserID",
    60011: "the app has no privilege for this member",
    40001: "invalid app secret: check the secret",
    60020: "this server's IP is not in the app's trusted IP list",
    81013: "the user is not in the app's visible range",
    82001: "the user is not in the app's visible range",
    44004: "empty message content",
    45002: "message too long for WeCom",
    48002: "the app has no permission for this API",
}
_RATE = {45009: 60.0, 45033: 1.0, 45011: 60.0}  # frequency, concurrency, minute quota


def map_error(errcode: int, errmsg: str) -> SendError:
    """Permanent when a retry cannot help (dead letter with the reason), rate limits wait, else transient."""
    code = str(errcode)
    if errcode in _PERMANENT:
        return PermanentSendError(f"WeCom {errcode}: {_PERMANENT[errcode]} ({errmsg})", code=code)
    if errcode in _RATE:
        return RateLimited(f"WeCom {errcode}: rate limited ({errmsg})", code=code, retry_after=_RATE[errcode])
    return TransientSendError(f"WeCom {errcode}: {errmsg or 'error'}", code=code)
