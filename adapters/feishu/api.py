"""Feishu open-platform calls over aiohttp with our own tenant-token cache.

lark-oapi's async calls fetch tokens with blocking `requests` inside the event loop and cache them
process-globally; here every app has its own AccessTokenCache (single-flight, refreshed before
expiry, and once on 99991663/99991661) and nothing blocks the loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from adapters.feishu.errors import TOKEN_REJECTED, map_error
from adapters.httpio import read_bounded
from adapters.tokens import AccessTokenCache, IssuedToken, TokenError
from gateway.errors import TransientSendError

MAX_RESPONSE_BYTES = 1024 * 1024


def _reset_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("x-ogw-ratelimit-reset") or headers.get("X-Ogw-Ratelimit-Reset")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class FeishuApi:
    """One app's authenticated API client."""

    def __init__(
        self,
        http: Callable[[], aiohttp.ClientSession],
        domain: str,
        app_id: str,
        app_secret: str,
        *,
        timeout: float = 10.0,
    ) -> None:
        self._http = http
        self._domain = domain.rstrip("/")
        self._app_id = app_id
        self._app_secret = app_secret
        self._timeout = timeout
        self.tokens = AccessTokenCache(self._fetch_token)

    async def _fetch_token(self) -> IssuedToken:
        status, _, data = await self._raw(
            "POST",
            "/open-apis/auth/v3/tenant_access_token/internal",
            {"app_id": self._app_id, "app_secret": self._app_secret},
            token=None,
        )
        token = data.get("tenant_access_token")
        if status != 200 or data.get("code") != 0 or not isinstance(token, str) or not token:
            raise TokenError(
                f"tenant token refused: {data.get('code', status)} {data.get('msg', '')}",
                code=str(data.get("code", status)),
            )
        return IssuedToken(token, float(data.get("expire", 7200) or 7200))

    async def call(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, whole: bool = False
    ) -> dict[str, Any]:
        """One API call; `data` of the answer (the whole answer if `whole`, for APIs like bot info that put
        their result at the top level). A rejected token is refreshed once and the call retried once."""
        for attempt in (1, 2):
            try:
                token = await self.tokens.get()
            except TokenError as exc:
                raise map_error(400, int(exc.code) if exc.code.isdigit() else 0, str(exc)) from exc
            status, headers, data = await self._raw(method, path, body, token=token)
            code = data.get("code", 0 if status < 400 else -1)
            code = code if isinstance(code, int) else -1
            if status == 200 and code == 0:
                if whole:
                    return data
                payload = data.get("data", {})
                return payload if isinstance(payload, dict) else {}
            if code in TOKEN_REJECTED and attempt == 1:
                self.tokens.invalidate(token)
                continue
            raise map_error(status, code, str(data.get("msg", "")), _reset_after(headers))
        raise AssertionError("unreachable")

    async def _raw(
        self, method: str, path: str, body: Mapping[str, Any] | None, *, token: str | None
    ) -> tuple[int, Mapping[str, str], dict[str, Any]]:
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        try:
            async with self._http().request(
                method,
                f"{self._domain}{path}",
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                raw, too_large = await read_bounded(resp.content, MAX_RESPONSE_BYTES)
                status, resp_headers = resp.status, resp.headers
        except TimeoutError as exc:
            raise TransientSendError(f"Feishu {path} timed out after {self._timeout}s", code="timeout") from exc
        except aiohttp.ClientError as exc:
            raise TransientSendError(f"Feishu {path} failed: {type(exc).__name__}", code="network") from exc
        try:
            parsed = json.loads(raw) if raw and not too_large else None
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            # Never read a body we could not parse as success: "code" would default to 0.
            raise TransientSendError(
                f"Feishu {path} answered HTTP {status} without a readable JSON body", code=str(status)
            )
        return status, resp_headers, parsed

    async def download(self, path: str, limit: int) -> tuple[bytes, str, bool]:
        """GET a resource (bytes, content type, too_large); at most `limit + 1` bytes are read."""
        token = await self.tokens.get()
        try:
            async with self._http().get(
                f"{self._domain}{path}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=max(self._timeout, 60)),
            ) as resp:
                if resp.status != 200:
                    raise map_error(resp.status, 0, f"resource download answered HTTP {resp.status}")
                raw, too_large = await read_bounded(resp.content, limit)
                return raw[:limit], resp.headers.get("Content-Type", ""), too_large
        except TimeoutError as exc:
            raise TransientSendError("Feishu resource download timed out", code="timeout") from exc
        except aiohttp.ClientError as exc:
            raise TransientSendError(f"Feishu resource download failed: {type(exc).__name__}", code="network") from exc
