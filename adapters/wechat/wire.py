"""Pure WeChat OA callback handling: signatures, decryption, safe XML parsing, conversion, replies.

wechatpy does the AES and the message model; defusedxml looks at every XML document first, because
wechatpy parses with xmltodict/expat, which would expand entities or fetch a DTD if asked to.
Source of the wire facts: protocols.md section C1 (verified against wechatpy 1.8.18).
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException
from wechatpy.replies import TextReply

from adapters.wechat.config import CallbackMode
from adapters.wxcommon.convert import content_of, dedup_id
from adapters.wxcommon.xml import CallbackRejected, parse_xml, sha1_signature
from gateway.messages import ChatKind, InboundMessage

PLATFORM = "wechat"


def check_signature(token: str, query: Mapping[str, str], now: float, window: float) -> None:
    """The plain `signature` over (token, timestamp, nonce), and a fresh timestamp."""
    signature, timestamp, nonce = query.get("signature", ""), query.get("timestamp", ""), query.get("nonce", "")
    if not (signature and timestamp and nonce):
        raise CallbackRejected(403, "missing signature parameters")
    if not hmac.compare_digest(sha1_signature(token, timestamp, nonce).encode(), signature.lower().encode()):
        raise CallbackRejected(403, "bad signature")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise CallbackRejected(403, "bad timestamp") from None
    if abs(now - sent_at) > window:
        raise CallbackRejected(403, "timestamp outside the accepted window")


def plaintext_xml(
    body: bytes, query: Mapping[str, str], mode: CallbackMode, crypto: WeChatCrypto | None
) -> tuple[str, bool]:
    """The message XML and whether it came encrypted; AppID and msg_signature checked by wechatpy."""
    outer = parse_xml(body)
    encrypted = query.get("encrypt_type", "raw").lower() == "aes"
    if not encrypted:
        if mode is CallbackMode.SAFE:
            raise CallbackRejected(403, "plaintext message for an account in safe mode")
        try:
            return body.decode("utf-8", errors="strict"), False
        except UnicodeDecodeError:
            raise CallbackRejected(400, "message is not UTF-8") from None
    if crypto is None or mode is CallbackMode.PLAIN:
        raise CallbackRejected(403, "encrypted message for an account in plain mode")
    encrypt = outer.get("Encrypt", "")
    if not encrypt:
        raise CallbackRejected(400, "encrypted message without <Encrypt>")
    try:
        xml = crypto.decrypt_message(
            {"Encrypt": encrypt}, query.get("msg_signature", ""), query.get("timestamp", ""), query.get("nonce", "")
        )
    except InvalidSignatureException:
        raise CallbackRejected(403, "bad msg_signature") from None
    except InvalidAppIdException:
        raise CallbackRejected(403, "ciphertext is for another AppID") from None
    except Exception as exc:  # bad base64 / padding / length: garbage, not an attack we can say more about
        raise CallbackRejected(400, f"undecryptable message ({type(exc).__name__})") from None
    parse_xml(xml)  # the decrypted document gets the same scrutiny as a plaintext one
    return str(xml), True


@dataclass(frozen=True)
class Parsed:
    """A parsed callback: the wechatpy object plus what the adapter decides on."""

    message: Any
    kind: str  # "message", "subscribe", "unsubscribe", "click", "ignored"


def parse(xml: str) -> Parsed:
    """wechatpy's model of the message; 400 when it is not a WeChat message at all."""
    try:
        message = parse_message(xml)
        kind = _kind(message)
    except Exception as exc:
        raise CallbackRejected(400, f"not a WeChat message ({type(exc).__name__})") from None
    if message is None or not getattr(message, "source", None):
        raise CallbackRejected(400, "message without FromUserName")
    return Parsed(message, kind)


# Every message type an official account can receive (a video used to be acked and never answered).
_MESSAGE_TYPES = frozenset({"text", "image", "voice", "video", "shortvideo", "link", "location"})


def _kind(message: Any) -> str:
    if message.type == "event":
        event = str(getattr(message, "event", "")).lower()
        if event.startswith("subscribe"):
            return "subscribe"
        if event == "unsubscribe":
            return "unsubscribe"
        if event == "click":
            return "click"
        return "ignored"
    return "message" if message.type in _MESSAGE_TYPES else "ignored"


def to_inbound(bot_id: str, parsed: Parsed, received_at: datetime) -> InboundMessage:
    """The normalized message (always a direct chat with the follower's openid)."""
    m = parsed.message
    text, attachments = content_of(m)
    return InboundMessage(
        platform=PLATFORM,
        bot_id=bot_id,
        platform_msg_id=dedup_id(m),
        chat_id=m.source,
        chat_kind=ChatKind.DIRECT,
        sender_id=m.source,
        text=text,
        attachments=attachments,
        reply_ref=str(m.target or ""),
        received_at=received_at,
    )


# Characters XML 1.0 cannot carry at all (a document containing them is refused by the parser).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def xml_safe(text: str) -> str:
    """Text that survives wechatpy's CDATA rendering: no XML-invalid characters, and `]]>` split
    across two CDATA sections (wechatpy does not escape it, and code answers contain it)."""
    return _XML_INVALID.sub("", text).replace("]]>", "]]]]><![CDATA[>")


def render_text_reply(
    to_user: str, from_account: str, text: str, crypto: WeChatCrypto | None, nonce: str, now: float | None = None
) -> str:
    """A passive text reply, encrypted (and signed) when the request was."""
    reply = TextReply(source=from_account, target=to_user, content=xml_safe(text), time=int(now or time.time()))
    xml = str(reply.render())
    if crypto is None:
        return xml
    return str(crypto.encrypt_message(xml, nonce, str(int(now or time.time()))))


def received_time(now: float) -> datetime:
    """The arrival time as an aware datetime."""
    return datetime.fromtimestamp(now, UTC)
