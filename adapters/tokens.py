"""Access tokens for platform APIs (WeChat, WeCom, Feishu...): cached, shared per credential, refreshed single-flight.

Peers fetch a token per message (the OA allows 2,000 fetches a day) or refresh it from every
request that saw 40001 at once. Here one cache per credential serves every bot and request that
uses it; a rejected token is dropped only if it is still the current one, so N concurrent calls
that all saw 40001 cause one refresh, not N (each fetch invalidates the previous token).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Refresh this long before the platform's stated expiry: in-flight calls must not carry a token that
# dies on the way, and a fetched token is announced as valid for 7200 s.
REFRESH_MARGIN_SECONDS = 300.0
# A failed fetch is the answer for callers queued behind it for this long: N waiters must not turn
# one refused credential into N more requests against a daily-limited endpoint.
FAILURE_MEMORY_SECONDS = 5.0


class TokenError(Exception):
    """The token endpoint refused the credential (wrong app id / secret, IP not whitelisted...)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class IssuedToken:
    """A token and how many seconds the platform says it lives."""

    value: str
    expires_in: float


TokenFetcher = Callable[[], Awaitable[IssuedToken]]


class AccessTokenCache:
    """One credential's token."""

    def __init__(
        self,
        fetch: TokenFetcher,
        *,
        clock: Callable[[], float] = time.monotonic,
        margin: float = REFRESH_MARGIN_SECONDS,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._margin = margin
        self._value = ""
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self._failure: tuple[BaseException, float] | None = None
        self.fetches = 0

    async def get(self) -> str:
        """A token believed valid; fetched (once, however many callers wait) when missing or near expiry."""
        if self._value and self._clock() < self._refresh_at:
            return self._value
        async with self._lock:
            if self._value and self._clock() < self._refresh_at:
                return self._value  # another caller refreshed it while we waited
            if self._failure is not None and self._clock() < self._failure[1]:
                raise self._failure[0]  # the fetch that just failed answers everyone who waited on it
            try:
                issued = await self._fetch()
            except Exception as exc:
                self._failure = (exc, self._clock() + FAILURE_MEMORY_SECONDS)
                raise
            self._failure = None
            self.fetches += 1
            lifetime = max(0.0, issued.expires_in)
            # Short-lived tokens (tests, odd platforms): refresh at half-life rather than never caching.
            margin = min(self._margin, lifetime / 2)
            self._value = issued.value
            self._refresh_at = self._clock() + lifetime - margin
            return self._value

    def invalidate(self, rejected: str) -> None:
        """The platform rejected `rejected`: forget it unless a newer token already replaced it."""
        if rejected == self._value:
            log.info("access token rejected by the platform; fetching a new one")
            self._value = ""
            self._refresh_at = 0.0


async def probe_tokens(caches: Mapping[str, AccessTokenCache]) -> dict[str, str]:
    """Fetch every bot's token once (doctor): bot id → "" when the platform accepted it, else the reason."""
    out: dict[str, str] = {}
    for bot_id, cache in caches.items():
        try:
            await cache.get()
            out[bot_id] = ""
        except Exception as exc:
            out[bot_id] = str(exc)
    return out
