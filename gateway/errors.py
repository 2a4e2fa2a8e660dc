"""Typed errors: adapters map their wire errors onto these in one place, the core decides on types.

No retry decision anywhere is made by matching error strings.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error Switchboard raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid; the message names the key path and the reason."""


class StorageError(GatewayError):
    """The state store cannot be opened or written (path, permissions, disk)."""


class SendError(GatewayError):
    """Delivering an outbound message failed; `code` is the platform's error code or HTTP status."""

    retryable: bool = False

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class TransientSendError(SendError):
    """Network trouble, 5xx, timeouts: try again later."""

    retryable = True


class RateLimited(TransientSendError):
    """The platform asked us to slow down; `retry_after` seconds if it said so."""

    def __init__(self, message: str, *, code: str = "429", retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class AuthExpired(TransientSendError):
    """A token was rejected; refresh it once and retry."""


class PermanentSendError(SendError):
    """The platform refused the message for good (bad target, no permission, 4xx)."""


class BackpressureError(GatewayError):
    """The gateway is saturated; the caller should retry later."""


class AwaitingRecipient(SendError):
    """The platform can deliver this reply only when the recipient writes again (no push permission).

    The reply stays queued, in order, until the adapter calls `AdapterHost.release_parked` for its
    chat, or its deadline passes (then it becomes a dead letter with this reason).
    """

    retryable = True
