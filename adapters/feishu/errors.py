"""The one place Feishu API answers become typed send errors."""

from __future__ import annotations

from gateway.errors import PermanentSendError, RateLimited, SendError, TransientSendError

TOKEN_REJECTED = frozenset({99991663, 99991661, 99991668})  # invalid / missing / expired tenant token
RATE_LIMITED = frozenset({99991400, 230020, 11232})
SERVER_BUSY = frozenset({1, 2200, 55001, 1000040343})  # "system busy" / internal errors: worth retrying
_PERMANENT = {
    10003: "invalid app_id: check app_id",
    10014: "invalid app secret",
    230001: "invalid request parameters",
    230002: "the bot is not in this chat",
    230006: "the bot's ability is not enabled for this app",
    230011: "the message to reply to was recalled",
    230013: "the user is outside the app's availability range",
    230025: "message too large for Feishu",
    230099: "Feishu refused the message content",
    99991672: "the app lacks the permission (scope) for this API",
    99991401: "this server's IP is not on the app's whitelist",
    200850: "the card's streaming window expired",
    300309: "the card is no longer streaming",
    300313: "the card element does not exist",
    300317: "card update sequence not increasing",
    200740: "the card entity is invalid or expired",
}


def map_error(status: int, code: int, msg: str, reset_after: float | None = None) -> SendError:
    """HTTP status + Feishu `code` → permanent (dead letter with reason), rate limit, or transient.

    Unknown codes on a 4xx are permanent: a per-chat lane must not stay blocked for an hour behind a
    request Feishu will never accept; only 5xx, token and rate-limit answers are worth retrying.
    """
    label = f"Feishu {code or status}"
    if status == 429 or code in RATE_LIMITED:
        return RateLimited(f"{label}: rate limited ({msg})", code=str(code or status), retry_after=reset_after)
    if code in _PERMANENT:
        return PermanentSendError(f"{label}: {_PERMANENT[code]} ({msg})", code=str(code))
    if status >= 500 or code in TOKEN_REJECTED or code in SERVER_BUSY or code < 0:
        return TransientSendError(f"{label}: {msg or 'server error'}", code=str(code or status))
    return PermanentSendError(f"{label}: {msg or f'HTTP {status}'}", code=str(code or status))
