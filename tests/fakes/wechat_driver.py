"""The WeChat OA / WeCom platform calling *our* callback URL: signing, encryption, retries.

`CallbackDriver` builds the requests exactly as the platforms do (signatures and AES from
tests/fakes/wechat_crypto.py, checked against the official sample vectors and wechatpy in
tests/test_fake_wechat_platform.py).

Each delivery is tried once plus up to `retries` (3) more times when the attempt times out
(`timeout`, 5 s), cannot connect, or gets a 5xx - always the identical request (same MsgId and
CreateTime). Passive replies are parsed; encrypted ones are signature-checked and decrypted, and a
bad one raises `ReplyVerificationError`. All methods are coroutines; from sync code use
`asyncio.run(driver.send_text(...))` (the server under test must then run in another thread/process).

    driver = CallbackDriver.oa(server_url + "/wechat/oa", mode="safe", api=fake_api)
    result = await driver.send_text(OA_OPENID, "你好")
    assert result.acked or result.reply["Content"] == "..."
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import aiohttp
from yarl import URL

from tests.fakes.wechat_crypto import (
    OA_AES_KEY,
    OA_APPID,
    OA_ORIGINAL_ID,
    OA_TOKEN,
    WECOM_AES_KEY,
    WECOM_AGENT_ID,
    WECOM_CORPID,
    WECOM_TOKEN,
    Field,
    WeChatCipher,
    build_xml,
    sha1_signature,
    xml_to_dict,
)

if TYPE_CHECKING:
    from tests.fakes.wechat_api import FakeWeChatAPI

__all__ = ["Attempt", "CallbackDriver", "CallbackRequest", "CallbackResult", "Forgery", "ReplyVerificationError"]

Mode: TypeAlias = Literal["plain", "compat", "safe"]
Platform: TypeAlias = Literal["oa", "wecom"]
_WINDOW_EVENTS = {"subscribe", "SCAN", "CLICK"}


class ReplyVerificationError(Exception):
    """Our server's passive reply would be rejected by the platform (bad signature, AppID, XML ...)."""

    def __init__(self, reason: str, result: CallbackResult) -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = result


@dataclass(frozen=True)
class Forgery:
    """Ways to make a request the real platform would never send (negative tests)."""

    bad_signature: bool = False  # wrong `signature` (OA plain/compat, and OA URL verification)
    bad_msg_signature: bool = False  # wrong `msg_signature` (encrypted requests, WeCom verification)
    receive_id: str | None = None  # encrypt with this AppID/CorpID instead of the real one
    encoding_aes_key: str | None = None  # encrypt with another key
    raw_plaintext: bytes | None = None  # encrypt these bytes instead of the message XML (plain mode: the body)
    raw_body: bytes | None = None  # the HTTP body as-is (msg_signature still matches its <Encrypt>, if any)
    timestamp: str | None = None  # e.g. a stale one for replay tests
    nonce: str | None = None
    omit_query: tuple[str, ...] = ()  # drop these query parameters


@dataclass(frozen=True)
class CallbackRequest:
    """One fully built platform request; `CallbackDriver.deliver` can replay it."""

    method: Literal["GET", "POST"]
    url: str  # with the query string
    query: dict[str, str]
    body: bytes
    xml: str  # the plaintext message XML ("" for URL verification)
    fields: dict[str, Field]
    expected_echo: str | None = None  # URL verification: what our server must answer


@dataclass(frozen=True)
class Attempt:
    status: int | None  # None: no HTTP response (timeout, connection error)
    body: str
    error: str | None
    elapsed: float

    @property
    def retryable(self) -> bool:
        """The platform tries again after this outcome."""
        return self.status is None or self.status >= 500


@dataclass
class CallbackResult:
    request: CallbackRequest
    attempts: list[Attempt] = field(default_factory=list)
    reply: dict[str, Any] | None = None  # parsed passive reply (decrypted and verified if encrypted)
    reply_xml: str | None = None
    reply_encrypted: bool = False

    @property
    def last(self) -> Attempt:
        return self.attempts[-1]

    @property
    def status(self) -> int | None:
        return self.last.status

    @property
    def body(self) -> str:
        return self.last.body

    @property
    def attempt_count(self) -> int:
        return len(self.attempts)

    @property
    def ok(self) -> bool:
        """The platform got a final (non-retryable) answer."""
        return not self.last.retryable

    @property
    def acked(self) -> bool:
        """Answered 200 with "" or "success": no passive reply, no retry."""
        return self.status == 200 and self.body.strip() in ("", "success")

    @property
    def verified(self) -> bool:
        """URL verification: our server echoed the expected echostr."""
        return self.status == 200 and self.request.expected_echo is not None and self.body == self.request.expected_echo


def _digits(n: int) -> str:
    return str(secrets.randbelow(9 * 10 ** (n - 1)) + 10 ** (n - 1))


def _corrupt(sig: str) -> str:
    return ("0" if sig[0] != "0" else "1") + sig[1:]


class CallbackDriver:
    """Plays the WeChat OA or WeCom platform against one callback URL of the server under test."""

    def __init__(
        self,
        url: str,
        *,
        platform: Platform,
        token: str,
        encoding_aes_key: str | None,
        receive_id: str,
        account: str,
        mode: Mode = "safe",
        agent_id: int | None = None,
        timeout: float = 5.0,
        retries: int = 3,
        retry_interval: float = 0.0,
        api: FakeWeChatAPI | None = None,
    ) -> None:
        if platform == "wecom" and mode != "safe":
            raise ValueError("WeCom callbacks are always encrypted (mode='safe')")
        if mode != "plain" and encoding_aes_key is None:
            raise ValueError(f"mode {mode!r} needs an EncodingAESKey")
        self.url = url
        self.platform: Platform = platform
        self.token = token
        self.cipher = WeChatCipher(encoding_aes_key) if encoding_aes_key is not None else None
        self.receive_id = receive_id
        self.account = account
        self.mode: Mode = mode
        self.agent_id = agent_id
        self.timeout = timeout
        self.retries = retries
        self.retry_interval = retry_interval
        self.api = api

    @classmethod
    def oa(
        cls,
        url: str,
        *,
        token: str = OA_TOKEN,
        encoding_aes_key: str | None = OA_AES_KEY,
        app_id: str = OA_APPID,
        original_id: str = OA_ORIGINAL_ID,
        mode: Mode = "safe",
        **kwargs: Any,
    ) -> CallbackDriver:
        """An Official Account (公众号) platform; `original_id` is the gh_ id in ToUserName."""
        return cls(
            url,
            platform="oa",
            token=token,
            encoding_aes_key=encoding_aes_key,
            receive_id=app_id,
            account=original_id,
            mode=mode,
            **kwargs,
        )

    @classmethod
    def wecom(
        cls,
        url: str,
        *,
        token: str = WECOM_TOKEN,
        encoding_aes_key: str = WECOM_AES_KEY,
        corp_id: str = WECOM_CORPID,
        agent_id: int = WECOM_AGENT_ID,
        **kwargs: Any,
    ) -> CallbackDriver:
        """A WeCom self-built app (自建应用) callback."""
        return cls(
            url,
            platform="wecom",
            token=token,
            encoding_aes_key=encoding_aes_key,
            receive_id=corp_id,
            account=corp_id,
            agent_id=agent_id,
            **kwargs,
        )

    # ---- message builders ----------------------------------------------------------------------

    def message_fields(
        self,
        from_user: str,
        msg_type: str,
        body: Sequence[tuple[str, Field]],
        *,
        create_time: int | None = None,
        msg_id: int | None = None,
    ) -> dict[str, Field]:
        """Header, `body`, MsgId (not for events) and AgentID (WeCom), in the platform's order."""
        fields: dict[str, Field] = {
            "ToUserName": self.account,
            "FromUserName": from_user,
            "CreateTime": int(time.time()) if create_time is None else create_time,
            "MsgType": msg_type,
        }
        fields.update(body)
        if msg_type != "event":
            fields["MsgId"] = msg_id if msg_id is not None else secrets.randbelow(2**62) + 2**62
        if self.platform == "wecom":
            fields["AgentID"] = self.agent_id if self.agent_id is not None else WECOM_AGENT_ID
        return fields

    async def send_text(
        self,
        user: str,
        content: str,
        *,
        msg_id: int | None = None,
        create_time: int | None = None,
        forge: Forgery | None = None,
    ) -> CallbackResult:
        fields = self.message_fields(user, "text", [("Content", content)], create_time=create_time, msg_id=msg_id)
        return await self.send_fields(fields, forge=forge)

    async def send_image(
        self,
        user: str,
        *,
        pic_url: str = "http://mmbiz.qpic.cn/fake.jpg",
        media_id: str = "media_img_1",
        msg_id: int | None = None,
        create_time: int | None = None,
        forge: Forgery | None = None,
    ) -> CallbackResult:
        body: list[tuple[str, Field]] = [("PicUrl", pic_url), ("MediaId", media_id)]
        fields = self.message_fields(user, "image", body, create_time=create_time, msg_id=msg_id)
        return await self.send_fields(fields, forge=forge)

    async def send_video(
        self,
        user: str,
        *,
        media_id: str = "media_video_1",
        thumb_media_id: str = "media_thumb_1",
        short: bool = False,
        msg_id: int | None = None,
        forge: Forgery | None = None,
    ) -> CallbackResult:
        body: list[tuple[str, Field]] = [("MediaId", media_id), ("ThumbMediaId", thumb_media_id)]
        fields = self.message_fields(user, "shortvideo" if short else "video", body, msg_id=msg_id)
        return await self.send_fields(fields, forge=forge)

    async def send_voice(
        self,
        user: str,
        *,
        media_id: str = "media_voice_1",
        fmt: str = "amr",
        recognition: str | None = None,
        msg_id: int | None = None,
        create_time: int | None = None,
        forge: Forgery | None = None,
    ) -> CallbackResult:
        """`recognition`: the speech-to-text result (only sent when 语音识别 is enabled)."""
        body: list[tuple[str, Field]] = [("MediaId", media_id), ("Format", fmt)]
        if recognition is not None:
            body.append(("Recognition", recognition))
        fields = self.message_fields(user, "voice", body, create_time=create_time, msg_id=msg_id)
        return await self.send_fields(fields, forge=forge)

    async def send_link(
        self,
        user: str,
        title: str,
        description: str,
        url: str,
        *,
        msg_id: int | None = None,
        create_time: int | None = None,
        forge: Forgery | None = None,
    ) -> CallbackResult:
        body: list[tuple[str, Field]] = [("Title", title), ("Description", description), ("Url", url)]
        fields = self.message_fields(user, "link", body, create_time=create_time, msg_id=msg_id)
        return await self.send_fields(fields, forge=forge)

    async def send_location(
        self,
        user: str,
        x: float = 23.134521,
        y: float = 113.358803,
        *,
        scale: int = 20,
        label: str = "位置信息",
        msg_id: int | None = None,
        create_time: int | None = None,
        forge: Forgery | None = None,
    ) -> CallbackResult:
        body: list[tuple[str, Field]] = [("Location_X", x), ("Location_Y", y), ("Scale", scale), ("Label", label)]
        fields = self.message_fields(user, "location", body, create_time=create_time, msg_id=msg_id)
        return await self.send_fields(fields, forge=forge)

    async def send_event(
        self,
        user: str,
        event: str,
        *,
        event_key: str | None = None,
        ticket: str | None = None,
        forge: Forgery | None = None,
        create_time: int | None = None,
    ) -> CallbackResult:
        """subscribe / unsubscribe / CLICK / VIEW / SCAN (OA) or enter_agent ... (WeCom)."""
        body: list[tuple[str, Field]] = [("Event", event)]
        if event_key is not None:
            body.append(("EventKey", event_key))
        if ticket is not None:
            body.append(("Ticket", ticket))
        fields = self.message_fields(user, "event", body, create_time=create_time)
        return await self.send_fields(fields, forge=forge)

    async def send_fields(self, fields: Mapping[str, Field], *, forge: Forgery | None = None) -> CallbackResult:
        """Deliver an arbitrary message (fields in XML order), with the platform's retries."""
        if forge is None:
            self._note_inbound(fields)
        return await self.deliver(self.build_post(fields, forge))

    def _note_inbound(self, fields: Mapping[str, Field]) -> None:
        """A user message opens the 48 h customer-service window on the linked fake API."""
        if self.api is None or self.platform != "oa":
            return
        openid = str(fields.get("FromUserName", ""))
        if fields.get("MsgType") != "event":
            self.api.open_window(openid)
        elif fields.get("Event") in _WINDOW_EVENTS and not self.api.window_is_open(openid):
            self.api.open_window(openid, quota=3, seconds=60)

    # ---- request construction ------------------------------------------------------------------

    def _sign_query(self, forge: Forgery) -> dict[str, str]:
        ts = forge.timestamp or str(int(time.time()))
        nonce = forge.nonce or _digits(10)
        return {"timestamp": ts, "nonce": nonce}

    def _encrypt(self, plaintext: bytes, forge: Forgery) -> str:
        cipher = WeChatCipher(forge.encoding_aes_key) if forge.encoding_aes_key else self.cipher
        assert cipher is not None
        return cipher.encrypt(plaintext, forge.receive_id if forge.receive_id is not None else self.receive_id)

    def _msg_signature(self, q: Mapping[str, str], encrypt: str, forge: Forgery) -> str:
        sig = sha1_signature(self.token, q["timestamp"], q["nonce"], encrypt)
        return _corrupt(sig) if forge.bad_msg_signature else sig

    def _url(self, query: Mapping[str, str], forge: Forgery) -> str:
        kept = {k: v for k, v in query.items() if k not in forge.omit_query}
        sep = "&" if "?" in self.url else "?"
        return self.url + sep + urllib.parse.urlencode(kept)

    def build_post(self, fields: Mapping[str, Field], forge: Forgery | None = None) -> CallbackRequest:
        """The exact POST the platform would send for `fields`."""
        forge = forge or Forgery()
        xml = build_xml(fields)
        plaintext = forge.raw_plaintext if forge.raw_plaintext is not None else xml.encode()
        query = self._sign_query(forge)
        body: bytes
        if self.platform == "wecom":
            encrypt = self._encrypt(plaintext, forge)
            envelope = {"ToUserName": self.account, "AgentID": str(fields.get("AgentID", "")), "Encrypt": encrypt}
            body = build_xml(envelope).encode()
        else:
            query["signature"] = sha1_signature(self.token, query["timestamp"], query["nonce"])
            if forge.bad_signature:
                query["signature"] = _corrupt(query["signature"])
            query["openid"] = str(fields.get("FromUserName", ""))
            if self.mode == "plain":
                body, encrypt = plaintext, ""
            else:
                encrypt = self._encrypt(plaintext, forge)
                query["encrypt_type"] = "aes"
                if self.mode == "safe":
                    body = build_xml({"ToUserName": self.account, "Encrypt": encrypt}).encode()
                else:  # compat: the plaintext fields and <Encrypt>
                    body = build_xml({**fields, "Encrypt": encrypt}).encode()
        if forge.raw_body is not None:
            body = forge.raw_body
            found = re.search(rb"<Encrypt><!\[CDATA\[(.*?)\]\]></Encrypt>", body, re.S)
            encrypt = found.group(1).decode("latin-1") if found else ""
        if self.platform == "wecom" or self.mode != "plain":
            query["msg_signature"] = self._msg_signature(query, encrypt, forge)
        return CallbackRequest("POST", self._url(query, forge), query, body, xml, dict(fields))

    def build_verify(self, echostr: str | None = None, forge: Forgery | None = None) -> CallbackRequest:
        """The GET the platform sends when the callback URL is saved in the admin console."""
        forge = forge or Forgery()
        plain_echo = echostr if echostr is not None else _digits(19)
        query = self._sign_query(forge)
        if self.platform == "wecom":
            wire_echo = self._encrypt(plain_echo.encode(), forge)
            query["msg_signature"] = self._msg_signature(query, wire_echo, forge)
        else:
            wire_echo = plain_echo
            query["signature"] = sha1_signature(self.token, query["timestamp"], query["nonce"])
            if forge.bad_signature:
                query["signature"] = _corrupt(query["signature"])
        query["echostr"] = wire_echo
        return CallbackRequest("GET", self._url(query, forge), query, b"", "", {}, expected_echo=plain_echo)

    async def verify_url(self, echostr: str | None = None, *, forge: Forgery | None = None) -> CallbackResult:
        """URL verification (single attempt): `result.verified` tells whether we echoed correctly."""
        return await self.deliver(self.build_verify(echostr, forge), retries=0)

    # ---- transport -----------------------------------------------------------------------------

    async def deliver(self, request: CallbackRequest, *, retries: int | None = None) -> CallbackResult:
        """Send `request` like the platform: per-attempt timeout, identical retries, reply check."""
        result = CallbackResult(request)
        total = 1 + (self.retries if retries is None else retries)
        headers = {"User-Agent": "Mozilla/4.0"}
        if request.method == "POST":
            headers["Content-Type"] = "text/xml"
        url = URL(request.url, encoded=True)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            for n in range(total):
                if n and self.retry_interval > 0:
                    await asyncio.sleep(self.retry_interval)
                started = time.monotonic()
                try:
                    async with session.request(
                        request.method,
                        url,
                        data=request.body if request.method == "POST" else None,
                        headers=headers,
                        timeout=aiohttp.ClientTimeout(total=self.timeout),
                    ) as resp:
                        text = (await resp.read()).decode("utf-8", "replace")
                    attempt = Attempt(resp.status, text, None, time.monotonic() - started)
                except TimeoutError:
                    attempt = Attempt(None, "", "timeout", time.monotonic() - started)
                except aiohttp.ClientError as exc:
                    attempt = Attempt(None, "", f"connection error: {exc!r}", time.monotonic() - started)
                result.attempts.append(attempt)
                if not attempt.retryable:
                    break
        if request.method == "POST" and result.status == 200 and not result.acked:
            self._check_reply(result)
        return result

    def _check_reply(self, result: CallbackResult) -> None:
        try:
            root = ET.fromstring(result.body)
        except ET.ParseError as exc:
            raise ReplyVerificationError(f"reply is neither ''/'success' nor XML: {exc}", result) from None
        encrypted = root.find("Encrypt")
        if encrypted is None:
            if self.platform == "wecom" or self.mode == "safe":
                raise ReplyVerificationError("plaintext passive reply where the platform expects encryption", result)
            result.reply_xml, result.reply = result.body, xml_to_dict(root)
            return
        if self.mode == "plain" or self.cipher is None:
            raise ReplyVerificationError("encrypted reply in plain mode", result)
        outer = xml_to_dict(root)
        encrypt = outer.get("Encrypt", "")
        expected = sha1_signature(self.token, str(outer.get("TimeStamp", "")), str(outer.get("Nonce", "")), encrypt)
        if outer.get("MsgSignature") != expected:
            raise ReplyVerificationError("reply MsgSignature does not match", result)
        try:
            inner, receive_id = self.cipher.decrypt(encrypt)
            inner_root = ET.fromstring(inner)
        except (ValueError, ET.ParseError) as exc:
            raise ReplyVerificationError(f"reply does not decrypt: {exc}", result) from None
        if receive_id != self.receive_id:
            raise ReplyVerificationError(f"reply encrypted for {receive_id!r}, not {self.receive_id!r}", result)
        result.reply_xml, result.reply, result.reply_encrypted = inner.decode(), xml_to_dict(inner_root), True
