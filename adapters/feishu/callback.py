"""Pure checks for Feishu / Lark HTTP event callbacks: size, JSON shape, signature, AES, verification token.

Wire facts (protocols.md A2, verified against lark-oapi 1.7.5 `event/dispatcher_handler.py` and
`core/utils/decryptor.py`):

* Encrypted body: `{"encrypt": b64(iv[16] + AES-256-CBC(sha256(encrypt_key), iv, PKCS7(json)))}`.
* Signature (sent only when the app has an Encrypt Key): `X-Lark-Signature =
  sha256(X-Lark-Request-Timestamp + X-Lark-Request-Nonce + encrypt_key + raw_body).hexdigest()`.
* url_verification: `{"type": "url_verification", "challenge": c, "token": t}` → answer `{"challenge": c}`.
* Schema 2.0 events carry the verification token in `header.token`; v1 events in `token`, id in `uuid`.

Order of checks, cheapest and safest first: size → outer JSON shape → signature over the *raw* body →
decrypt → inner JSON shape → verification token. Verifying before decrypting means a forged body never
reaches the AES/padding code, so its error messages cannot become a padding oracle.

One exception is forced by the platform: the url_verification request Feishu sends when the request URL is
saved carries **no** signature headers, even with an Encrypt Key (larksuite/oapi-sdk-python#79 shows the
real headers; openclaw/openclaw#58905 confirmed it with tcpdump; the SDK skips the signature for this type).
An encrypted body without any X-Lark-* header is therefore decrypted, but it is accepted *only* as a
url_verification with the right token, only up to `MAX_UNSIGNED_BYTES`, and every failure on that path is
the same `401 unsigned request` - so it reveals nothing about padding or plaintext.

Authentication failures are 401, not the SDK's 500: nothing on our side broke, a 5xx would page operators
and pollute error-rate alerts, and Feishu redelivers on any non-200 anyway, so the status changes nothing
for a genuine delivery. Malformed input is 400, an oversize body 413.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

TIMESTAMP_HEADER = "X-Lark-Request-Timestamp"
NONCE_HEADER = "X-Lark-Request-Nonce"
SIGNATURE_HEADER = "X-Lark-Signature"
SIGNATURE_HEADERS = (TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)
URL_VERIFICATION = "url_verification"
MAX_UNSIGNED_BYTES = 4096  # an encrypted challenge is ~200 bytes; unsigned bodies get no more work than this
SUCCESS_JSON = '{"msg":"success"}'  # what the SDK answers on success (Feishu only looks at the 200)

_UNSIGNED = "unsigned request is not a valid url_verification"
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
_BLOCK = 16


class FeishuCallbackRejected(Exception):
    """The callback is refused with HTTP `status`; `reason` is safe to log (never body content or secrets)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class UrlVerification:
    """The platform checking the request URL; answer `response()` with 200 within 1 s."""

    challenge: str

    def response(self) -> dict[str, str]:
        return {"challenge": self.challenge}


@dataclass(frozen=True)
class EventEnvelope:
    """An authenticated event. `payload` is the whole (decrypted) document for `convert.to_inbound`.

    `event_id` is the redelivery-stable dedup key (`header.event_id`, or `uuid` for v1 events).
    """

    event_id: str
    event_type: str
    schema: str  # "2.0", or "1.0" for v1 events
    app_id: str
    tenant_key: str
    create_time: str  # ms since the epoch (v2) / seconds (v1 `ts`), as sent
    payload: dict[str, Any]
    encrypted: bool


CallbackResult: TypeAlias = UrlVerification | EventEnvelope


def find_header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup for any Mapping (HTTP/2 proxies lowercase names; a plain dict does not fold)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    """Feishu's request signature: plain SHA-256 (not HMAC) over timestamp + nonce + key + raw body."""
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode("utf-8") + body).hexdigest()


def verify_signature(headers: Mapping[str, str], body: bytes, encrypt_key: str, now: float, window: float) -> None:
    """401 unless the three X-Lark-* headers sign `body` and the timestamp is within `window` of `now`.

    The freshness check bounds replays of a captured request; replays inside the window are caught by
    event_id deduplication downstream. Feishu signs each delivery when it is sent, redeliveries included
    (secondary source: openclaw/openclaw#143484, which settled on a 1 h window), so the window only has to
    cover clock skew and transit; if redeliveries ever carried the original timestamp, a window shorter than
    the 6 h retry schedule would drop late retries (config default: 3600 s).
    """
    timestamp, nonce, sent = (find_header(headers, name) for name in SIGNATURE_HEADERS)
    if timestamp is None or nonce is None or sent is None:
        missing = [n for n, v in zip(SIGNATURE_HEADERS, (timestamp, nonce, sent), strict=True) if v is None]
        raise FeishuCallbackRejected(401, f"missing {', '.join(missing)}")
    expected = signature(timestamp, nonce, encrypt_key, body)
    if not hmac.compare_digest(expected.encode("ascii"), sent.strip().lower().encode("utf-8", "replace")):
        raise FeishuCallbackRejected(401, "bad signature")
    if _TIMESTAMP_RE.fullmatch(timestamp) is None:  # signed, but not the unix seconds Feishu sends
        raise FeishuCallbackRejected(401, f"{TIMESTAMP_HEADER} must be integer unix seconds")
    if abs(now - int(timestamp)) > window:
        raise FeishuCallbackRejected(401, "timestamp outside the accepted window (replay or clock skew)")


def decrypt(encrypt_key: str, encrypted_b64: str) -> bytes:
    """The plaintext of an `encrypt` field; 400 on bad base64, length or PKCS7 padding."""
    try:
        raw = base64.b64decode(encrypted_b64, validate=True)
    except (binascii.Error, ValueError):
        raise FeishuCallbackRejected(400, "encrypt is not valid base64") from None
    if len(raw) < 2 * _BLOCK or len(raw) % _BLOCK:
        raise FeishuCallbackRejected(400, "encrypt has an invalid ciphertext length")
    key = hashlib.sha256(encrypt_key.encode("utf-8")).digest()
    decryptor = Cipher(algorithms.AES(key), modes.CBC(raw[:_BLOCK])).decryptor()
    padded = decryptor.update(raw[_BLOCK:]) + decryptor.finalize()
    unpadder = padding.PKCS7(_BLOCK * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise FeishuCallbackRejected(400, "encrypt has invalid padding (wrong encrypt key?)") from None


def parse_callback(
    body: bytes,
    headers: Mapping[str, str],
    *,
    encrypt_key: str | None,
    verification_token: str,
    now: float,
    window: float,
    max_bytes: int,
) -> CallbackResult:
    """Authenticate and classify one callback POST; raises FeishuCallbackRejected(status, reason).

    With an encrypt key (None and "" both mean "not configured") every body must be encrypted, because
    Feishu encrypts every push once the app has an Encrypt Key; a plaintext body then is a forgery or a
    misconfiguration (401). Without one, plaintext bodies are authenticated by the token alone, which is
    all the platform offers in that mode (it sends no signature).
    """
    if len(body) > max_bytes:
        raise FeishuCallbackRejected(413, f"body larger than {max_bytes} bytes")
    outer = _json_object(body, "body")
    key = encrypt_key or None
    encrypted = "encrypt" in outer
    if encrypted:
        if key is None:
            raise FeishuCallbackRejected(400, "encrypted body but no encrypt key is configured")
        ciphertext = outer["encrypt"]
        if not isinstance(ciphertext, str) or not ciphertext:
            raise FeishuCallbackRejected(400, "encrypt must be a non-empty string")
        if all(find_header(headers, name) is None for name in SIGNATURE_HEADERS):
            return _unsigned_challenge(body, key, ciphertext, verification_token)
        verify_signature(headers, body, key, now, window)
        doc = _json_object(decrypt(key, ciphertext), "decrypted body")
    elif key is not None:
        raise FeishuCallbackRejected(401, "plaintext body but an encrypt key is configured")
    else:
        doc = outer
    return _classify(doc, verification_token, encrypted)


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise FeishuCallbackRejected(400, f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise FeishuCallbackRejected(400, f"{what} is not a JSON object")
    return value


def _check_token(sent: Any, expected: str) -> None:
    """Constant-time token comparison; an unset expected token fails closed."""
    if not expected or not isinstance(sent, str) or not sent:
        raise FeishuCallbackRejected(401, "missing or unconfigured verification token")
    if not hmac.compare_digest(sent.encode("utf-8"), expected.encode("utf-8")):
        raise FeishuCallbackRejected(401, "verification token mismatch")


def _unsigned_challenge(body: bytes, key: str, encrypted: str, verification_token: str) -> UrlVerification:
    """The unsigned bootstrap challenge; any failure is one indistinguishable 401 (no padding oracle)."""
    if len(body) > MAX_UNSIGNED_BYTES:
        raise FeishuCallbackRejected(401, _UNSIGNED)
    try:
        doc = _json_object(decrypt(key, encrypted), "decrypted body")
        if doc.get("type") != URL_VERIFICATION:
            raise FeishuCallbackRejected(401, _UNSIGNED)
        return _url_verification(doc, verification_token)
    except FeishuCallbackRejected:
        raise FeishuCallbackRejected(401, _UNSIGNED) from None


def _url_verification(doc: dict[str, Any], verification_token: str) -> UrlVerification:
    _check_token(doc.get("token"), verification_token)
    challenge = doc.get("challenge")
    if not isinstance(challenge, str) or not challenge:
        raise FeishuCallbackRejected(400, "url_verification without a challenge")
    return UrlVerification(challenge)


def _classify(doc: dict[str, Any], verification_token: str, encrypted: bool) -> CallbackResult:
    if doc.get("type") == URL_VERIFICATION:
        return _url_verification(doc, verification_token)
    schema = doc.get("schema")
    if isinstance(schema, str) and schema:
        return _v2(doc, schema, verification_token, encrypted)
    if "uuid" in doc:
        return _v1(doc, verification_token, encrypted)
    raise FeishuCallbackRejected(400, "neither a url_verification nor an event envelope")


def _v2(doc: dict[str, Any], schema: str, verification_token: str, encrypted: bool) -> EventEnvelope:
    header = doc.get("header")
    if not isinstance(header, dict):
        raise FeishuCallbackRejected(400, "schema 2.0 envelope without a header object")
    _check_token(header.get("token"), verification_token)
    event_id, event_type = header.get("event_id"), header.get("event_type")
    if not isinstance(event_id, str) or not event_id:
        raise FeishuCallbackRejected(400, "header.event_id missing")
    if not isinstance(event_type, str) or not event_type:
        raise FeishuCallbackRejected(400, "header.event_type missing")
    if not isinstance(doc.get("event"), dict):
        raise FeishuCallbackRejected(400, "envelope without an event object")
    return EventEnvelope(
        event_id=event_id,
        event_type=event_type,
        schema=schema,
        app_id=_text(header.get("app_id")),
        tenant_key=_text(header.get("tenant_key")),
        create_time=_text(header.get("create_time")),
        payload=doc,
        encrypted=encrypted,
    )


def _v1(doc: dict[str, Any], verification_token: str, encrypted: bool) -> EventEnvelope:
    """Legacy v1 events: `uuid` plays event_id's role, `event.type` the event type (the SDK does the same)."""
    _check_token(doc.get("token"), verification_token)
    uuid, event = doc.get("uuid"), doc.get("event")
    if not isinstance(uuid, str) or not uuid:
        raise FeishuCallbackRejected(400, "v1 event without a uuid")
    if not isinstance(event, dict) or not isinstance(event.get("type"), str) or not event["type"]:
        raise FeishuCallbackRejected(400, "v1 event without event.type")
    return EventEnvelope(
        event_id=uuid,
        event_type=event["type"],
        schema="1.0",
        app_id=_text(event.get("app_id")),
        tenant_key=_text(event.get("tenant_key")),
        create_time=_text(doc.get("ts")),
        payload=doc,
        encrypted=encrypted,
    )


def _text(value: Any) -> str:
    """Informational header fields: strings as-is, numbers as digits, anything else empty."""
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else ""
