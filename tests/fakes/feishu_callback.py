"""The Feishu / Lark open platform calling *our* event request URL, exactly as the platform does.

Wire format (protocols.md A2; lark-oapi 1.7.5 `event/dispatcher_handler.py`): JSON POST, with an Encrypt
Key the body is `{"encrypt": b64(iv + AES-256-CBC(sha256(key), iv, PKCS7(json)))}` and the headers
`X-Lark-Request-Timestamp` (unix seconds), `X-Lark-Request-Nonce` and `X-Lark-Signature =
sha256(ts + nonce + key + body)`. The crypto here is written independently with `cryptography` and
cross-checked against the SDK's `lark_oapi.core.utils.decryptor.AESCipher` and `EventDispatcherHandler`
in tests/test_feishu_callback.py.

Platform behaviour reproduced:
* url_verification is sent once, **unsigned** even with an Encrypt Key (larksuite/oapi-sdk-python#79).
* An event not answered 200 within `timeout` (3 s) is redelivered with the same event_id after each delay
  of `retry_schedule` (15 s, 5 min, 1 h, 6 h - make it short in tests). Every delivery is signed afresh
  (new timestamp and nonce) over the same body unless `resign_retries=False`.

    driver = FeishuCallbackDriver(url, encrypt_key="ek", verification_token="vt", retry_schedule=(0.05,))
    assert (await driver.verify_url()).verified
    result = await driver.send(driver.text_event("hello", chat_type="p2p"))
    assert result.acked
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["Attempt", "CallbackRequest", "DeliveryResult", "FeishuCallbackDriver", "Forgery", "encrypt", "sign"]

FEISHU_RETRY_SCHEDULE = (15.0, 300.0, 3600.0, 21600.0)


def encrypt(encrypt_key: str, plaintext: bytes, iv: bytes | None = None) -> str:
    """The platform's `encrypt` field: base64(iv + AES-256-CBC(sha256(encrypt_key), iv, PKCS7(plaintext)))."""
    iv = os.urandom(16) if iv is None else iv
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(hashlib.sha256(encrypt_key.encode()).digest()), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + encryptor.update(padded) + encryptor.finalize()).decode("ascii")


def sign(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode() + body).hexdigest()


@dataclass(frozen=True)
class Forgery:
    """Requests the real platform would never send (negative tests)."""

    bad_signature: bool = False
    token: str | None = None  # put this verification token in the document instead of the real one
    encrypt_key: str | None = None  # encrypt and sign with another key
    timestamp: str | None = None  # e.g. a stale one (kept for every attempt)
    nonce: str | None = None
    lowercase_headers: bool = False  # what HTTP/2 proxies deliver (not a forgery, but not what Feishu sends)
    unsigned: bool = False  # no X-Lark-* headers at all
    raw_plaintext: bytes | None = None  # encrypt these bytes instead of the JSON document
    raw_body: bytes | None = None  # the HTTP body as-is (still signed, unless bad_signature/unsigned)


@dataclass(frozen=True)
class CallbackRequest:
    body: bytes
    document: dict[str, Any]  # the plaintext JSON the platform meant to send
    encrypted: bool
    signed: bool
    event_id: str = ""  # "" for url_verification
    expected_challenge: str | None = None


@dataclass(frozen=True)
class Attempt:
    status: int | None  # None: no response within the timeout, or no connection
    body: str
    error: str | None
    elapsed: float
    headers: Mapping[str, str] = field(default_factory=dict)  # what this attempt sent

    @property
    def retryable(self) -> bool:
        """Feishu redelivers anything that is not a 200 within the timeout."""
        return self.status != 200


@dataclass
class DeliveryResult:
    request: CallbackRequest
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def last(self) -> Attempt:
        return self.attempts[-1]

    @property
    def status(self) -> int | None:
        return self.last.status

    @property
    def attempt_count(self) -> int:
        return len(self.attempts)

    @property
    def acked(self) -> bool:
        return self.status == 200

    @property
    def json(self) -> Any:
        return json.loads(self.last.body)

    @property
    def verified(self) -> bool:
        """url_verification: answered 200 with exactly {"challenge": <the challenge>}."""
        if self.request.expected_challenge is None or self.status != 200:
            return False
        try:
            return bool(self.json == {"challenge": self.request.expected_challenge})
        except ValueError:
            return False


class FeishuCallbackDriver:
    """Plays the Feishu open platform against one event request URL of the server under test."""

    def __init__(
        self,
        url: str,
        *,
        encrypt_key: str | None,
        verification_token: str,
        app_id: str = "cli_test",
        tenant_key: str = "tk_test",
        timeout: float = 3.0,
        retry_schedule: Sequence[float] = FEISHU_RETRY_SCHEDULE,
        resign_retries: bool = True,
    ) -> None:
        self.url = url
        self.encrypt_key = encrypt_key or None
        self.verification_token = verification_token
        self.app_id = app_id
        self.tenant_key = tenant_key
        self.timeout = timeout
        self.retry_schedule = tuple(retry_schedule)
        self.resign_retries = resign_retries

    # ---- documents -----------------------------------------------------------------------------

    def envelope(
        self, event_type: str, event: Mapping[str, Any], *, event_id: str | None = None, token: str | None = None
    ) -> dict[str, Any]:
        """A schema-2.0 envelope around `event`."""
        header = {
            "event_id": event_id or uuid.uuid4().hex,
            "token": self.verification_token if token is None else token,
            "create_time": str(int(time.time() * 1000)),
            "event_type": event_type,
            "tenant_key": self.tenant_key,
            "app_id": self.app_id,
        }
        return {"schema": "2.0", "header": header, "event": dict(event)}

    def message_event(
        self,
        message_type: str,
        content: Mapping[str, Any] | str,
        *,
        chat_type: str = "p2p",
        chat_id: str = "oc_chat1",
        sender_open_id: str = "ou_user1",
        sender_type: str = "user",
        mentions: Sequence[Mapping[str, Any]] = (),
        message_id: str | None = None,
        thread_id: str = "",
        root_id: str = "",
        parent_id: str = "",
        event_id: str | None = None,
    ) -> dict[str, Any]:
        """An `im.message.receive_v1` envelope; `content` is JSON-encoded unless already a string."""
        now_ms = str(int(time.time() * 1000))
        message = {
            "message_id": message_id or "om_" + uuid.uuid4().hex,
            "root_id": root_id,
            "parent_id": parent_id,
            "create_time": now_ms,
            "update_time": now_ms,
            "chat_id": chat_id,
            "thread_id": thread_id,
            "chat_type": chat_type,
            "message_type": message_type,
            "content": content if isinstance(content, str) else json.dumps(content, ensure_ascii=False),
            "mentions": [dict(m) for m in mentions],
            "user_agent": "Mozilla/5.0 Lark/7.30",
        }
        sender = {
            "sender_id": {"union_id": "on_" + sender_open_id, "user_id": "", "open_id": sender_open_id},
            "sender_type": sender_type,
            "tenant_key": self.tenant_key,
        }
        return self.envelope("im.message.receive_v1", {"sender": sender, "message": message}, event_id=event_id)

    def text_event(self, text: str, **kwargs: Any) -> dict[str, Any]:
        return self.message_event("text", {"text": text}, **kwargs)

    @staticmethod
    def mention(n: int, open_id: str, name: str) -> dict[str, Any]:
        """The `mentions[]` entry for the placeholder `@_user_<n>`."""
        return {"key": f"@_user_{n}", "id": {"union_id": "", "user_id": "", "open_id": open_id}, "name": name}

    def recall_event(self, message_id: str, chat_id: str = "oc_chat1") -> dict[str, Any]:
        event = {"message_id": message_id, "chat_id": chat_id, "recall_time": str(int(time.time() * 1000))}
        return self.envelope("im.message.recalled_v1", {**event, "recall_type": "message_owner"})

    def challenge_document(self, challenge: str | None = None, *, token: str | None = None) -> dict[str, Any]:
        return {
            "challenge": challenge or secrets.token_hex(8),
            "token": self.verification_token if token is None else token,
            "type": "url_verification",
        }

    # ---- requests ------------------------------------------------------------------------------

    def build(
        self, document: Mapping[str, Any], forge: Forgery | None = None, *, signed: bool = True
    ) -> CallbackRequest:
        """The exact body the platform would POST for `document` (headers are made per attempt)."""
        forge = forge or Forgery()
        doc = dict(document)
        if forge.token is not None:
            if isinstance(doc.get("header"), dict):
                doc["header"] = {**doc["header"], "token": forge.token}
            else:
                doc["token"] = forge.token
        plaintext = json.dumps(doc, ensure_ascii=False).encode()
        if forge.raw_plaintext is not None:
            plaintext = forge.raw_plaintext
        key = forge.encrypt_key or self.encrypt_key
        body = json.dumps({"encrypt": encrypt(key, plaintext)}).encode() if key else plaintext
        if forge.raw_body is not None:
            body = forge.raw_body
        header = doc.get("header")
        return CallbackRequest(
            body=body,
            document=doc,
            encrypted=key is not None,
            signed=signed and key is not None and not forge.unsigned,
            event_id=str(header.get("event_id", "")) if isinstance(header, dict) else str(doc.get("uuid", "")),
            expected_challenge=doc.get("challenge") if doc.get("type") == "url_verification" else None,
        )

    def headers_for(self, request: CallbackRequest, forge: Forgery | None = None) -> dict[str, str]:
        """One attempt's headers: fresh timestamp and nonce, signature over the raw body."""
        forge = forge or Forgery()
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "Go-http-client/1.1"}
        key = forge.encrypt_key or self.encrypt_key
        if request.signed and key:
            ts = forge.timestamp or str(int(time.time()))
            nonce = forge.nonce or secrets.token_hex(8)
            sig = sign(ts, nonce, key, request.body)
            if forge.bad_signature:
                sig = ("0" if sig[0] != "0" else "1") + sig[1:]
            headers |= {"X-Lark-Request-Timestamp": ts, "X-Lark-Request-Nonce": nonce, "X-Lark-Signature": sig}
        if forge.lowercase_headers:
            headers = {k.lower(): v for k, v in headers.items()}
        return headers

    async def verify_url(
        self, challenge: str | None = None, *, forge: Forgery | None = None, signed: bool = False
    ) -> DeliveryResult:
        """The request-URL check when the URL is saved: one attempt, unsigned like the platform, no redelivery."""
        request = self.build(self.challenge_document(challenge), forge, signed=signed)
        return await self.deliver(request, forge, retry_schedule=())

    async def send(
        self,
        document: Mapping[str, Any],
        *,
        forge: Forgery | None = None,
        retry_schedule: Sequence[float] | None = None,
    ) -> DeliveryResult:
        """Deliver an event with the platform's redeliveries."""
        return await self.deliver(self.build(document, forge), forge, retry_schedule=retry_schedule)

    async def deliver(
        self, request: CallbackRequest, forge: Forgery | None = None, *, retry_schedule: Sequence[float] | None = None
    ) -> DeliveryResult:
        """POST `request`; on anything but a 200 within `timeout`, wait and try again per the schedule."""
        delays = self.retry_schedule if retry_schedule is None else tuple(retry_schedule)
        result = DeliveryResult(request)
        headers = self.headers_for(request, forge)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            for n in range(1 + len(delays)):
                if n:
                    await asyncio.sleep(delays[n - 1])
                    if self.resign_retries:
                        headers = self.headers_for(request, forge)
                result.attempts.append(await self._attempt(session, request.body, headers))
                if not result.last.retryable:
                    break
        return result

    async def _attempt(self, session: aiohttp.ClientSession, body: bytes, headers: dict[str, str]) -> Attempt:
        started = time.monotonic()
        try:
            async with session.post(
                self.url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as resp:
                text = (await resp.read()).decode("utf-8", "replace")
            return Attempt(resp.status, text, None, time.monotonic() - started, dict(headers))
        except TimeoutError:
            return Attempt(None, "", "timeout", time.monotonic() - started, dict(headers))
        except aiohttp.ClientError as exc:
            return Attempt(None, "", f"connection error: {exc!r}", time.monotonic() - started, dict(headers))
