"""Wire-format building blocks of the WeChat OA / WeCom callbacks, implemented without wechatpy.

* signature      = sha1(sorted([token, timestamp, nonce]))            (OA plain/compat query)
* msg_signature  = sha1(sorted([token, timestamp, nonce, Encrypt]))   (OA safe/compat, WeCom)
* Encrypt        = b64(AES-256-CBC(key=b64decode(EncodingAESKey+"="), iv=key[:16],
                       PKCS7-to-32(random16 ‖ htonl(len(xml)) ‖ xml ‖ receive_id)))
  random16 is 16 lowercase hex characters, as in the platforms' published sample messages;
  receive_id is the AppID (OA) or the CorpID (WeCom).

Plus the platforms' XML style (strings in CDATA, numbers bare) and hostile payloads for negative tests.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import struct
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any, TypeAlias

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "OA_AES_KEY",
    "OA_APPID",
    "OA_OPENID",
    "OA_ORIGINAL_ID",
    "OA_TOKEN",
    "WECOM_AES_KEY",
    "WECOM_AGENT_ID",
    "WECOM_CORPID",
    "WECOM_TOKEN",
    "WECOM_USERID",
    "Field",
    "WeChatCipher",
    "build_xml",
    "oversized_body",
    "sha1_signature",
    "xml_bomb",
    "xml_to_dict",
    "xxe_payload",
]

# Official sample values: OA "消息加解密" sample (token/key/AppID, gh_ id and openid of its sample message)
# and WeCom 加解密方案 sample (developer.work.weixin.qq.com/document/path/90968).
OA_TOKEN = "spamtest"
OA_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
OA_APPID = "wx2c2769f8efd9abc2"
OA_ORIGINAL_ID = "gh_10f6c3c3ac5a"
OA_OPENID = "oyORnuP8q7ou2gfYjqLzSIWZf0rs"
WECOM_TOKEN = "QDG6eK"
WECOM_AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
WECOM_CORPID = "wx5823bf96d3bd56c7"
WECOM_AGENT_ID = 1000002
WECOM_USERID = "zhangsan"

Field: TypeAlias = str | int | float
_BLOCK = 32


def sha1_signature(*parts: str) -> str:
    """The platforms' signature: sha1 of the sorted parts joined without separator."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


class WeChatCipher:
    """The platforms' AES scheme for one EncodingAESKey (43 characters of base64)."""

    def __init__(self, encoding_aes_key: str) -> None:
        if len(encoding_aes_key) != 43:
            raise ValueError("EncodingAESKey must be 43 characters")
        self.key = base64.b64decode(encoding_aes_key + "=")
        self.iv = self.key[:16]

    def encrypt(self, message: bytes | str, receive_id: str, *, random16: bytes | None = None) -> str:
        data = message.encode() if isinstance(message, str) else message
        rand = random16 if random16 is not None else secrets.token_hex(8).encode()
        plain = rand + struct.pack(">I", len(data)) + data + receive_id.encode()
        pad = _BLOCK - len(plain) % _BLOCK
        plain += bytes([pad]) * pad
        enc = Cipher(algorithms.AES(self.key), modes.CBC(self.iv)).encryptor()
        return base64.b64encode(enc.update(plain) + enc.finalize()).decode()

    def decrypt(self, encrypted: str) -> tuple[bytes, str]:
        """Return (message, receive_id); ValueError on any malformed input."""
        raw = base64.b64decode(encrypted, validate=True)
        if not raw or len(raw) % 16:
            raise ValueError("ciphertext is not a whole number of AES blocks")
        dec = Cipher(algorithms.AES(self.key), modes.CBC(self.iv)).decryptor()
        plain = dec.update(raw) + dec.finalize()
        pad = plain[-1]
        if not 1 <= pad <= _BLOCK or plain[-pad:] != bytes([pad]) * pad:
            raise ValueError("bad PKCS7 padding")
        plain = plain[:-pad]
        if len(plain) < 20:
            raise ValueError("plaintext too short")
        (length,) = struct.unpack(">I", plain[16:20])
        if 20 + length > len(plain):
            raise ValueError("length prefix beyond plaintext")
        return plain[20 : 20 + length], plain[20 + length :].decode()


def _cdata(value: str) -> str:
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def build_xml(fields: Mapping[str, Field]) -> str:
    """Platform-style XML: strings in CDATA, numbers bare, one element per line."""
    parts = [f"<{k}>{v}</{k}>" if isinstance(v, int | float) else f"<{k}>{_cdata(v)}</{k}>" for k, v in fields.items()]
    return "<xml>" + "\n".join(parts) + "\n</xml>"


def xml_to_dict(elem: ET.Element) -> dict[str, Any]:
    """Children of `elem` as a dict; nested elements become dicts, repeated tags lists."""
    out: dict[str, Any] = {}
    for child in elem:
        value: Any = xml_to_dict(child) if len(child) else (child.text or "")
        if child.tag in out:
            prev = out[child.tag]
            out[child.tag] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[child.tag] = value
    return out


def xml_bomb(levels: int = 9, fanout: int = 10) -> bytes:
    """A "billion laughs" document shaped like a text message."""
    ents = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * fanout}">' for i in range(1, levels + 1)]
    return (
        f'<?xml version="1.0"?><!DOCTYPE xml [{"".join(ents)}]>'
        f"<xml><ToUserName><![CDATA[{OA_ORIGINAL_ID}]]></ToUserName><FromUserName><![CDATA[{OA_OPENID}]]>"
        f"</FromUserName><CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content>&lol{levels};</Content><MsgId>1</MsgId></xml>"
    ).encode()


def xxe_payload(target: str = "file:///etc/hostname") -> bytes:
    """A text message whose Content is an external entity pointing at `target`."""
    return (
        f'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "{target}">]>'
        f"<xml><ToUserName><![CDATA[{OA_ORIGINAL_ID}]]></ToUserName><FromUserName><![CDATA[{OA_OPENID}]]>"
        f"</FromUserName><CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content>&xxe;</Content><MsgId>2</MsgId></xml>"
    ).encode()


def oversized_body(size: int) -> bytes:
    """A well-formed text message of exactly `size` bytes (padding in Content)."""
    head = (
        f"<xml><ToUserName><![CDATA[{OA_ORIGINAL_ID}]]></ToUserName><FromUserName><![CDATA[{OA_OPENID}]]>"
        f"</FromUserName><CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content>"
    ).encode()
    tail = b"</Content><MsgId>3</MsgId></xml>"
    return head + b"A" * max(0, size - len(head) - len(tail)) + tail
