"""HTTP outgoing-robot callbacks: `POST /webhooks/dingtalk/<bot_id>`, verified before anything is parsed.

Wire facts (protocols.md B3, copy of the official "接收消息" page): DingTalk POSTs the bot-message JSON of
B2 with headers `timestamp` (ms since the epoch) and `sign`; a request is genuine iff the timestamp is within
an hour of our clock and `sign == base64(HMAC-SHA256(key=AppSecret, msg=f"{timestamp}\\n{AppSecret}"))`
(no URL-encoding on this inbound check).

The signature covers only the timestamp, not the body: whoever captures one signed request can replay its
headers with any body for the rest of the window. We cannot fix the platform; the consequences are bounded
instead: a signed header pair is accepted with one body only once it is more than a few seconds old (a replay
guard remembers the bodies' digests for the window; DingTalk's own retries resend the identical request; two
genuine callbacks in one millisecond share the pair, so while it is fresh another body is taken as one of those,
not a replay: a replay has to happen within seconds of the capture), the window is configurable
(`timestamp_window`), duplicate `msgId`s are dropped by the journal, and replies go only to DingTalk-hosted
sessionWebhooks (`api.DingTalkApi.post_session_webhook`).

Order of checks, cheapest and safest first: unknown bot → 404; headers, timestamp format, signature
(constant time) and freshness → 403, before the body is read at all; body over the cap → 413; not JSON or
not a bot message → 400. A rejection is logged with its reason, never with the body, the sign or the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from pydantic import ValidationError

from adapters.base import AdapterState, Handler
from adapters.dingtalk.wire import BotMessage, parse_bot_message
from adapters.httpio import read_bounded
from adapters.wxcommon.replay import ReplayGuard
from gateway.errors import BackpressureError

log = logging.getLogger(__name__)

ROUTE = "/webhooks/dingtalk/{bot_id}"
TIMESTAMP_HEADER = "timestamp"
SIGN_HEADER = "sign"
EMPTY_REPLY = {"msgtype": "empty"}  # 200 without a synchronous reply; the answer follows via sessionWebhook
_TIMESTAMP_RE = re.compile(r"[0-9]{1,16}")

SecretOf = Callable[[str], str | None]  # bot id → AppSecret of a robot that takes HTTP callbacks, else None
Publish = Callable[[str, BotMessage], Awaitable[None]]  # journal the message; raise BackpressureError when full


class CallbackRejected(Exception):
    """The callback is refused with HTTP `status`; `reason` is safe to log."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


SAME_MILLISECOND_GRACE = 5.0  # seconds after its timestamp a header pair may carry one more body


class CallbackReplays:
    """Which bodies each signed header pair carried: in memory, and in the adapter's durable state when
    given, so a restart (even kill -9) does not reopen the window for replaying a captured pair."""

    def __init__(self, ttl: float, clock: Callable[[], float], state: AdapterState | None = None) -> None:
        self._memory = ReplayGuard(ttl=ttl)
        self._ttl = ttl
        self._clock = clock
        self._state = state

    async def check(self, bot_id: str, stamp: str, body: bytes) -> None:
        """Raise CallbackRejected(403) when this (verified) pair already carried another body.

        Within a few seconds of its timestamp another body is taken as a second genuine callback of the same
        millisecond (at 50 callbacks/s that happens about once a second); later it is a replay.
        """
        fresh = self._clock() - int(stamp) / 1000 <= SAME_MILLISECOND_GRACE
        key = f"{bot_id}\x1f{stamp}"  # the sign is a function of the timestamp: it adds nothing to the key
        digest = hashlib.sha256(body).digest()
        stored = await self._state.get(f"replay:{key}") if self._state is not None else None
        earlier = {bytes.fromhex(h) for h in (stored or "").split(",") if h}
        for known in earlier:  # bodies this pair carried before a restart count too
            self._memory.admit_digest("", key, known, may_add=True)
        if not self._memory.admit_digest("", key, digest, may_add=fresh):
            raise CallbackRejected(403, "signature reused with another body (replay)")
        if self._state is not None and digest not in earlier:
            # The whole set the guard holds, so concurrent callbacks of one pair do not overwrite each other.
            value = ",".join(sorted(d.hex() for d in self._memory.digests("", key)))
            await self._state.put(f"replay:{key}", value, ttl=self._ttl)


def signature(timestamp: str, secret: str) -> str:
    """DingTalk's `sign` for `timestamp`: base64(HMAC-SHA256(secret, timestamp + "\\n" + secret))."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_headers(headers: Mapping[str, str], secret: str, *, now: float, window: float) -> None:
    """Raise CallbackRejected(403) unless `sign` signs a `timestamp` within `window` seconds of `now`."""
    timestamp, sent = _header(headers, TIMESTAMP_HEADER), _header(headers, SIGN_HEADER)
    if timestamp is None or sent is None:
        raise CallbackRejected(403, "missing timestamp or sign header")
    if not secret:
        raise CallbackRejected(403, "no AppSecret configured for this robot")
    if _TIMESTAMP_RE.fullmatch(timestamp) is None:
        raise CallbackRejected(403, "timestamp is not integer milliseconds")
    expected = signature(timestamp, secret).encode("ascii")
    # Exact bytes: no .strip(), which also removes Unicode spaces that HTTP parsers keep, so a captured
    # (timestamp, sign) pair plus e.g. U+00A0 would verify yet pass the replay guard as a new signature.
    if not hmac.compare_digest(expected, sent.encode("utf-8", "surrogateescape")):
        raise CallbackRejected(403, "bad sign")
    if abs(now * 1000 - int(timestamp)) > window * 1000:
        raise CallbackRejected(403, "timestamp outside the accepted window (replay or clock skew)")


def parse_body(body: bytes, max_bytes: int) -> BotMessage:
    """The bot message in an (already authenticated) body; 413 when too large, 400 when malformed."""
    if len(body) > max_bytes:
        raise CallbackRejected(413, f"body larger than {max_bytes} bytes")
    try:
        return parse_bot_message(body)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in err["loc"]) or "body" for err in exc.errors()})
        raise CallbackRejected(400, f"not a DingTalk bot message: {', '.join(fields[:5])}") from None


def verify_and_parse(
    headers: Mapping[str, str], body: bytes, secret: str, *, now: float, window: float, max_bytes: int
) -> BotMessage:
    """`verify_headers` then `parse_body`: the whole check for callers that already hold the body."""
    verify_headers(headers, secret, now=now, window=window)
    return parse_body(body, max_bytes)


def make_handler(
    secret_of: SecretOf,
    publish: Publish,
    *,
    max_body_bytes: int,
    timestamp_window: float,
    clock: Callable[[], float] = time.time,
    accepting: Callable[[], bool] = lambda: True,
    state: AdapterState | None = None,
) -> Handler:
    """The aiohttp handler for ROUTE. `publish` runs only for verified, well-formed messages; when it
    returns, DingTalk gets 200 `{"msgtype":"empty"}` (the answer follows through the sessionWebhook)."""

    replays = CallbackReplays(2 * timestamp_window, clock, state)

    async def handle(request: web.Request) -> web.StreamResponse:
        bot_id = request.match_info.get("bot_id", "")
        try:
            secret = secret_of(bot_id)
            if secret is None:
                raise CallbackRejected(404, "unknown bot")
            if not accepting():
                return web.json_response({"msg": "not accepting"}, status=503, headers={"Retry-After": "1"})
            verify_headers(request.headers, secret, now=clock(), window=timestamp_window)
            if request.content_length is not None and request.content_length > max_body_bytes:
                raise CallbackRejected(413, f"body larger than {max_body_bytes} bytes")
            body, too_large = await read_bounded(request.content, max_body_bytes)
            if too_large:
                raise CallbackRejected(413, f"body larger than {max_body_bytes} bytes")
            message = parse_body(body, max_body_bytes)  # before the replay record: a 400 leaves nothing behind
            await replays.check(bot_id, request.headers.get(TIMESTAMP_HEADER, ""), body)
        except CallbackRejected as exc:
            return _reject(bot_id, exc)
        except Exception:  # the replay record could not be read or written: not checked, so not accepted
            log.exception("could not check dingtalk callback replay for bot %r", bot_id[:64])
            return web.json_response({"msg": "temporarily unavailable"}, status=503, headers={"Retry-After": "2"})
        try:
            await publish(bot_id, message)
        except BackpressureError:
            return web.json_response({"msg": "busy"}, status=503, headers={"Retry-After": "1"})
        except Exception:
            log.exception("could not journal dingtalk message for bot %r", bot_id[:64])
            return web.json_response({"msg": "temporarily unavailable"}, status=503, headers={"Retry-After": "2"})
        return web.json_response(EMPTY_REPLY)

    return handle


def _reject(bot_id: str, exc: CallbackRejected) -> web.Response:
    level = logging.WARNING if exc.status == 403 else logging.INFO
    log.log(level, "dingtalk callback rejected: %d %s bot=%r", exc.status, exc.reason, bot_id[:64])
    resp = web.json_response({"msg": exc.reason}, status=exc.status)
    if exc.status == 413:
        resp.force_close()  # the unread rest of the body must not be parsed as the next request
    return resp


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive for any Mapping (aiohttp's headers fold case already; a plain dict does not)."""
    value = headers.get(name)
    if value is not None:
        return value
    return next((v for k, v in headers.items() if k.lower() == name), None)
