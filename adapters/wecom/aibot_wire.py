"""Pure frame building and parsing for the WeCom AI-bot (智能机器人) long connection. No I/O here.

Every frame is JSON `{cmd, headers: {req_id}, body}`; acks have no `cmd` and carry
`{headers: {req_id}, errcode, errmsg}`. Where each fact comes from:

* WecomTeam/aibot-node-sdk `src/types/api.ts`: the cmd names, the frame envelope, the stream reply
  body `{msgtype: "stream", stream: {id, finish, content}}` ("content ≤ 20480 bytes, utf-8"), the
  welcome body `{msgtype: "text", text: {content}}` and the proactive markdown body
  `{msgtype: "markdown", markdown: {content}}`.
* aibot-node-sdk `src/client.ts` `sendMessage`: the proactive body is `{chatid, ...body}` with a fresh
  req_id, and chatid is the user's userid in a DM or the group's chatid.
* aibot-node-sdk `src/ws.ts`: the subscribe body `{bot_id, secret}`, ping frames carry no body, acks
  are matched by req_id, and req ids look like `{cmd}_{ms}_{random}` (`src/utils.ts`); the SDK tells
  subscribe and ping acks apart by that prefix, so ours keep it.
* aibot-node-sdk `src/types/message.ts` / `event.ts`: callback bodies `{msgid, aibotid, chatid (groups
  only), chattype single|group, from: {userid}, msgtype, text|image|mixed|voice|file}`, image/file
  `{url, aeskey}` (url valid 5 min, encrypted), voice `{content}` (already transcribed), mixed
  `{msg_item: [{msgtype: text|image, ...}]}`, events `{event: {eventtype}}` incl. `disconnected_event`.
* WeCom's own OpenClaw plugin (message-sender.ts, found by code search): 846608 means the stream can
  no longer be updated (>6 min) and the answer must go out through `aibot_send_msg`; 846605 is
  "invalid req_id". The generic WeCom codes in `map_error` are from the global error-code list, not
  verified against this channel.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.errors import PermanentSendError, RateLimited, SendError, TransientSendError
from gateway.messages import Attachment, ChatKind, InboundMessage

PLATFORM = "wecom"
DEFAULT_WS_URL = "wss://openws.work.weixin.qq.com"

CMD_SUBSCRIBE = "aibot_subscribe"
CMD_PING = "ping"
CMD_RESPOND = "aibot_respond_msg"
CMD_RESPOND_WELCOME = "aibot_respond_welcome_msg"
CMD_SEND = "aibot_send_msg"
CMD_MSG_CALLBACK = "aibot_msg_callback"
CMD_EVENT_CALLBACK = "aibot_event_callback"
CALLBACK_CMDS = frozenset({CMD_MSG_CALLBACK, CMD_EVENT_CALLBACK})
# Frames sent on a callback's req_id (every other frame gets a fresh one).
REPLY_CMDS = frozenset({CMD_RESPOND, CMD_RESPOND_WELCOME})

EVENT_ENTER_CHAT = "enter_chat"
EVENT_DISCONNECTED = "disconnected_event"

MAX_CONTENT_BYTES = 20480
ERR_INVALID_REQ_ID = 846605
ERR_STREAM_EXPIRED = 846608
# The callback's req_id can no longer carry a reply: deliver proactively instead.
STREAM_GONE_CODES = frozenset({ERR_INVALID_REQ_ID, ERR_STREAM_EXPIRED})

_RATE_LIMIT_CODES = frozenset({45009, 45011, 45033})  # API frequency / concurrency limits
_AUTH_CODES = frozenset({40001, 40014, 42001})  # invalid or expired credential
_REFUSED_CODES = frozenset({40008, 40058, 44004, 45002, 48002, 60011, 60020})  # bad message, no permission

Frame = dict[str, Any]
MediaKind = Literal["image", "file", "audio", "video"]
_MEDIA_TYPES: dict[str, MediaKind] = {"image": "image", "file": "file", "video": "video"}


class LinkDown(Exception):
    """The socket is not (or no longer) authenticated and open, so a frame could not be exchanged."""


@dataclass(frozen=True)
class Ack:
    """The server's answer to one of our frames."""

    req_id: str
    errcode: int
    errmsg: str = ""
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AIBotSettings:
    """Timings and texts of one bot connection; defaults mirror the SDK, tests shrink them."""

    ping_interval: float = 30.0
    ack_timeout: float = 5.0
    missed_pings_allowed: int = 2
    reconnect_base: float = 1.0
    reconnect_max: float = 30.0
    replaced_backoff: float = 300.0  # after disconnected_event: let the newer connection be
    connect_timeout: float = 10.0
    close_timeout: float = 2.0
    stream_idle_timeout: float = 60.0
    welcome_text: str = ""  # answer to enter_chat; empty = no welcome
    busy_text: str = "busy, please retry"
    interrupted_note: str = "\n\n(interrupted; the answer will follow)"
    empty_answer_text: str = "(empty answer)"  # WeCom ignores invisible content in a final frame
    bot_name: str = ""  # the bot's display name, when it contains spaces (mention stripping)
    inbox_size: int = 1000
    publish_batch: int = 64  # callbacks journaled together (one group commit) when they queued up


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential with jitter, so gateways restarting together do not reconnect in step."""
    top = min(cap, base * 2.0 ** min(attempt, 30))
    return top / 2 + random.uniform(0, top / 2)


def new_req_id(cmd: str) -> str:
    """A fresh req_id in the SDK's `{cmd}_{ms}_{random}` shape (the server echoes it in the ack)."""
    return f"{cmd}_{int(time.time() * 1000)}_{secrets.token_hex(4)}"


def stream_id_for(idempotency_key: str) -> str:
    """A stream id that is the same for every retry and restart of one reply, so a late final still
    closes the stream the user is watching instead of starting a second bubble."""
    return "stream_" + hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:32]


def cut_utf8(text: str, limit: int = MAX_CONTENT_BYTES) -> str:
    """`text` within `limit` UTF-8 bytes, cut at a character boundary (never half a character).

    Lone surrogates become "?" first: they cannot be encoded and would fail the socket write.
    """
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data.decode("utf-8")
    return data[:limit].decode("utf-8", "ignore")


def encode(frame: Frame) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def make_frame(cmd: str, req_id: str, body: Mapping[str, Any] | None = None) -> Frame:
    frame: Frame = {"cmd": cmd, "headers": {"req_id": req_id}}
    if body is not None:
        frame["body"] = dict(body)
    return frame


def subscribe_frame(bot_id: str, secret: str) -> Frame:
    return make_frame(CMD_SUBSCRIBE, new_req_id(CMD_SUBSCRIBE), {"bot_id": bot_id, "secret": secret})


def ping_frame() -> Frame:
    return make_frame(CMD_PING, new_req_id(CMD_PING))


def stream_frame(req_id: str, stream_id: str, content: str, *, finish: bool) -> Frame:
    """One stream reply frame; `content` is the whole text so far, cut to the platform limit."""
    body = {"msgtype": "stream", "stream": {"id": stream_id, "finish": finish, "content": cut_utf8(content)}}
    return make_frame(CMD_RESPOND, req_id, body)


def welcome_frame(req_id: str, text: str) -> Frame:
    return make_frame(CMD_RESPOND_WELCOME, req_id, {"msgtype": "text", "text": {"content": cut_utf8(text)}})


def send_markdown_frame(chat_id: str, content: str) -> Frame:
    """A proactive message; the markdown limit is not documented in the SDK, so the stream limit is used."""
    body = {"chatid": chat_id, "msgtype": "markdown", "markdown": {"content": cut_utf8(content)}}
    return make_frame(CMD_SEND, new_req_id(CMD_SEND), body)


def parse(raw: str) -> Frame | None:
    """The frame in one text message, or None if it is not a JSON object."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def req_id_of(frame: Mapping[str, Any]) -> str:
    return _str(_obj(frame.get("headers")).get("req_id"))


def body_of(frame: Mapping[str, Any]) -> dict[str, Any]:
    return _obj(frame.get("body"))


def event_type(frame: Mapping[str, Any]) -> str:
    return _str(_obj(body_of(frame).get("event")).get("eventtype"))


def as_ack(frame: Mapping[str, Any]) -> Ack:
    code = frame.get("errcode")
    errcode = code if isinstance(code, int) and not isinstance(code, bool) else -1
    return Ack(req_id_of(frame), errcode, _str(frame.get("errmsg")), body_of(frame))


def map_error(errcode: int, errmsg: str) -> SendError:
    """The single place a non-zero WeCom errcode becomes a typed send error.

    Rate limits → RateLimited; rejected credentials and messages WeCom will never take → Permanent;
    anything unknown (incl. -1 "system busy") → Transient, since the outbox retry is cheap.
    """
    code = str(errcode)
    detail = f"errcode {errcode}" + (f": {errmsg[:200]}" if errmsg else "")
    if errcode in _RATE_LIMIT_CODES:
        return RateLimited(f"wecom aibot rate limited ({detail})", code=code)
    if errcode in _AUTH_CODES:
        return PermanentSendError(f"wecom aibot rejected the credentials ({detail}); check bot_id/secret", code=code)
    if errcode in _REFUSED_CODES:
        return PermanentSendError(f"wecom aibot refused the message ({detail})", code=code)
    return TransientSendError(f"wecom aibot send failed ({detail})", code=code)


_LEADING_MENTION = re.compile(r"\A\s*@\S+(?:\s+|\Z)")


def strip_mention(text: str, bot_name: str = "") -> str:
    """`text` without the leading "@bot " a group message starts with.

    WeChat clients put U+2005 after a mention (matched by \\s). Without a configured name only the
    first word is removed, so names with spaces need `bot_name`.
    """
    if bot_name:
        stripped = text.lstrip()
        if stripped.startswith("@" + bot_name):
            return stripped[len(bot_name) + 1 :].lstrip()
        return text
    return _LEADING_MENTION.sub("", text, count=1)


def _media(kind: MediaKind, item: Mapping[str, Any]) -> Attachment | None:
    """An attachment whose ref is the download url; the per-file AES key rides in the fragment,
    which HTTP clients never send, so the url stays directly usable."""
    url = _str(item.get("url"))
    if not url:
        return None
    key = _str(item.get("aeskey"))
    ref = f"{url}#aeskey={key}" if key else url
    return Attachment(kind=kind, ref=ref, name=_str(item.get("filename")))


def _content(body: Mapping[str, Any]) -> tuple[str, list[Attachment]]:
    msgtype = _str(body.get("msgtype"))
    part = _obj(body.get(msgtype))
    texts: list[str] = []
    found: list[Attachment | None] = []
    if msgtype in ("text", "voice"):  # voice arrives already transcribed
        texts.append(_str(part.get("content")))
        found.append(_media("audio", part) if msgtype == "voice" else None)
    elif msgtype == "mixed":
        for item in part.get("msg_item") or ():
            item = _obj(item)
            if item.get("msgtype") == "text":
                texts.append(_str(_obj(item.get("text")).get("content")))
            elif item.get("msgtype") == "image":
                found.append(_media("image", _obj(item.get("image"))))
    elif msgtype in _MEDIA_TYPES:
        found.append(_media(_MEDIA_TYPES[msgtype], part))
    else:  # tell the agent something arrived rather than dropping it silently
        found.append(Attachment(kind="other", ref="", name=msgtype or "unknown"))
    return "\n".join(t for t in texts if t), [a for a in found if a is not None]


def to_inbound(body: Mapping[str, Any], req_id: str, bot_id: str, bot_name: str = "") -> InboundMessage | None:
    """The normalized message for an `aibot_msg_callback` body, or None when it lacks an id or sender.

    Group callbacks only reach the bot when it was @-mentioned, so `mentioned` is True there.
    `reply_ref` is the callback's req_id: replies on it appear as the answer to this message.
    """
    msgid = _str(body.get("msgid"))
    sender = _str(_obj(body.get("from")).get("userid"))
    if not msgid or not sender:
        return None
    group = body.get("chattype") == "group"
    text, attachments = _content(body)
    if group:
        text = strip_mention(text, bot_name)
    return InboundMessage(
        platform=PLATFORM,
        bot_id=bot_id,
        platform_msg_id=msgid,
        chat_id=(_str(body.get("chatid")) or sender) if group else sender,
        chat_kind=ChatKind.GROUP if group else ChatKind.DIRECT,
        sender_id=sender,
        mentioned=group,
        text=text,
        attachments=tuple(attachments),
        reply_ref=req_id,
    )
