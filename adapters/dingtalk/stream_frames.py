"""Wire shapes of DingTalk's Stream mode (protocols.md B1), kept apart from the connection logic.

Everything the server sends is a JSON text frame `{specVersion, type, headers, data}` whose `data` is itself a
JSON *string*; every answer we send is an ack `{code, headers: {contentType, messageId}, message, data}` with
`data` again a JSON string. Parsing is strict about the fields we route on and lenient about everything else,
so a new header or frame type from DingTalk is skipped rather than fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal
from urllib.parse import quote_plus, urlsplit

__all__ = [
    "BOT_TOPIC",
    "CARD_TOPIC",
    "OPEN_PATH",
    "SUBSCRIPTIONS",
    "AckResult",
    "FrameError",
    "OpenError",
    "StreamMessage",
    "ack_data",
    "ack_frame",
    "callback_ack_data",
    "connect_url",
    "event_ack_data",
    "open_body",
    "parse_frame",
    "parse_open",
    "user_agent",
]

OPEN_PATH = "/v1.0/gateway/connections/open"
BOT_TOPIC = "/v1.0/im/bot/messages/get"
CARD_TOPIC = "/v1.0/card/instances/callback"
SUBSCRIPTIONS: tuple[dict[str, str], ...] = (
    {"type": "CALLBACK", "topic": BOT_TOPIC},
    {"type": "CALLBACK", "topic": CARD_TOPIC},
    {"type": "EVENT", "topic": "*"},
)
CONTENT_TYPE = "application/json"
FrameType = Literal["SYSTEM", "EVENT", "CALLBACK"]
_TYPES: frozenset[str] = frozenset(("SYSTEM", "EVENT", "CALLBACK"))


class FrameError(ValueError):
    """A frame we cannot route; logged and skipped."""


class OpenError(Exception):
    """The open-connection call failed; `status` 0 means no usable HTTP answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"open connection failed: HTTP {status} {code}: {message}"[:300])
        self.status = status
        self.code = code


@dataclass(frozen=True)
class StreamMessage:
    """One CALLBACK or EVENT push; `data` is the raw JSON string so the journal stores exactly what arrived."""

    type: FrameType
    topic: str
    message_id: str
    headers: dict[str, str]
    data: str


@dataclass(frozen=True)
class AckResult:
    """What `on_message` wants acked: `data` replaces the default ack payload (a JSON string, e.g. a card
    callback's answer); `later` asks DingTalk to push an EVENT again later instead of marking it done."""

    data: str | None = None
    later: bool = False


def user_agent() -> str:
    try:
        return f"switchboard/{version('switchboard')}"
    except PackageNotFoundError:
        return "switchboard/0"


def open_body(client_id: str, client_secret: str, ua: str, local_ip: str = "127.0.0.1") -> dict[str, Any]:
    return {
        "clientId": client_id,
        "clientSecret": client_secret,
        "subscriptions": [dict(s) for s in SUBSCRIPTIONS],
        "ua": ua,
        "localIp": local_ip,
    }


def parse_open(status: int, raw: bytes) -> tuple[str, str]:
    """`(endpoint, ticket)` from the open-connection answer, or OpenError carrying DingTalk's error code."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise OpenError(status, "BadResponse", raw[:200].decode("utf-8", "replace"))
    endpoint, ticket = body.get("endpoint"), body.get("ticket")
    if status != 200 or not isinstance(endpoint, str) or not isinstance(ticket, str) or not ticket:
        raise OpenError(status, str(body.get("code") or "BadResponse"), str(body.get("message") or body)[:200])
    if urlsplit(endpoint).scheme not in ("ws", "wss"):
        raise OpenError(status, "BadEndpoint", endpoint[:200])
    return endpoint, ticket


def connect_url(endpoint: str, ticket: str) -> str:
    return f"{endpoint}{'&' if '?' in endpoint else '?'}ticket={quote_plus(ticket)}"


def parse_frame(text: str) -> StreamMessage:
    try:
        frame = json.loads(text)
    except ValueError as exc:
        raise FrameError(f"not JSON: {text[:80]!r}") from exc
    if not isinstance(frame, dict):
        raise FrameError(f"not an object: {text[:80]!r}")
    kind, raw_headers, data = frame.get("type"), frame.get("headers"), frame.get("data")
    if kind not in _TYPES:
        raise FrameError(f"unknown frame type {kind!r}")
    if not isinstance(raw_headers, dict):
        raise FrameError("frame without headers")
    headers = {str(k): str(v) for k, v in raw_headers.items() if v is not None}
    message_id, topic = headers.get("messageId", ""), headers.get("topic", "")
    if not message_id:
        raise FrameError(f"{kind} frame without messageId")
    if not isinstance(data, str):
        data = json.dumps(data, ensure_ascii=False) if data is not None else ""
    return StreamMessage(kind, topic, message_id, headers, data)


def ack_frame(message_id: str, data: str, message: str = "OK") -> str:
    headers = {"contentType": CONTENT_TYPE, "messageId": message_id}
    return json.dumps({"code": 200, "headers": headers, "message": message, "data": data}, ensure_ascii=False)


def callback_ack_data() -> str:
    return json.dumps({"response": None})


def ack_data(kind: str, result: AckResult | None) -> str:
    """The ack's data for a stored push: the handler's own, else what DingTalk expects for the frame type."""
    if result is not None and result.data is not None:
        return result.data
    return event_ack_data(result is not None and result.later) if kind == "EVENT" else callback_ack_data()


def event_ack_data(later: bool) -> str:
    status = "LATER" if later else "SUCCESS"
    return json.dumps({"status": status, "message": status.lower()})
