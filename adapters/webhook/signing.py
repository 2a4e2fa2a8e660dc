"""HMAC request signing shared by both directions of the webhook adapter.

signature = hex(HMAC-SHA256(secret, f"{timestamp}.".encode() + body)), sent as
`X-Switchboard-Signature: v1=<hex>` next to `X-Switchboard-Timestamp: <unix seconds>`.
The timestamp is inside the MAC and checked against a window, so a captured request cannot be
replayed later; replays inside the window are caught by message-id deduplication downstream.
Everything here is pure (the caller passes `now`) so it is trivially testable.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

TIMESTAMP_HEADER = "X-Switchboard-Timestamp"
SIGNATURE_HEADER = "X-Switchboard-Signature"
SIGNATURE_PREFIX = "v1="

_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
_HEX_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")


class SignatureError(Exception):
    """A request failed authentication; `reason` is safe to return to the caller and to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The lowercase hex HMAC-SHA256 of `"{timestamp}." + body`."""
    mac = hmac.new(secret, f"{timestamp}.".encode("ascii"), hashlib.sha256)
    mac.update(body)
    return mac.hexdigest()


def signed_headers(secret: bytes, body: bytes, now: float) -> dict[str, str]:
    """The two authentication headers for sending `body` at time `now`."""
    timestamp = int(now)
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: SIGNATURE_PREFIX + sign(secret, timestamp, body),
    }


def find_header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works for plain dicts as well as aiohttp's CIMultiDict."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def verify(secret: bytes, headers: Mapping[str, str], body: bytes, now: float, window: float) -> None:
    """Raise SignatureError unless `headers` carry a fresh, valid signature of `body`.

    A timestamp more than `window` seconds away from `now` (in either direction) is rejected;
    exactly `window` seconds away is still accepted.
    """
    raw_ts = find_header(headers, TIMESTAMP_HEADER)
    if raw_ts is None:
        raise SignatureError(f"missing {TIMESTAMP_HEADER} header")
    raw_sig = find_header(headers, SIGNATURE_HEADER)
    if raw_sig is None:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    # Strict digits only: int() would also accept " 12", "+12" and "1_2".
    if _TIMESTAMP_RE.fullmatch(raw_ts) is None:
        raise SignatureError(f"{TIMESTAMP_HEADER} must be integer unix seconds")
    timestamp = int(raw_ts)
    if now - timestamp > window:
        raise SignatureError("timestamp is too old (outside the allowed window)")
    if timestamp - now > window:
        raise SignatureError("timestamp is in the future (outside the allowed window)")
    given = raw_sig[len(SIGNATURE_PREFIX) :] if raw_sig.startswith(SIGNATURE_PREFIX) else ""
    if _HEX_SHA256_RE.fullmatch(given) is None:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header, expected v1=<64 hex chars>")
    if not hmac.compare_digest(sign(secret, timestamp, body), given.lower()):
        raise SignatureError("signature mismatch")
