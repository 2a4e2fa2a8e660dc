"""JSON calls to the WeChat / WeCom HTTP APIs with aiohttp (wechatpy's own client blocks the loop).

Both platforms answer HTTP 200 with `{"errcode": N, "errmsg": ...}`; token codes are handled here
(one refresh, one retry), every other code goes through the adapter's own error mapper.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from adapters.httpio import read_bounded
from adapters.tokens import AccessTokenCache, IssuedToken, TokenError
from gateway.errors import PermanentSendError, SendError, TransientSendError

log = logging.getLogger(__name__)

# 40001 invalid credential / not latest, 40014 invalid access_token, 42001 access_token expired.
TOKEN_REJECTED_CODES = frozenset({40001, 40014, 42001})
MAX_RESPONSE_BYTES = 256 * 1024
# Answers of the token endpoints that no retry can fix (invalid secret / app id / corp id, IP not allowed).
CREDENTIAL_REFUSED_CODES = frozenset({40001, 40013, 40125, 40164, 40056, 60020, 41002, 41004})

ErrorMapper = Callable[[int, str], SendError]


async def _read_json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    if resp.status >= 500:
        raise TransientSendError(f"API answered HTTP {resp.status}", code=str(resp.status))
    raw, too_large = await read_bounded(resp.content, MAX_RESPONSE_BYTES)
    if too_large:
        raise TransientSendError(f"API answer larger than {MAX_RESPONSE_BYTES} bytes", code="bad_response")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise TransientSendError(f"API answered HTTP {resp.status} without JSON", code=str(resp.status)) from exc
    if not isinstance(data, dict):
        raise TransientSendError("API answered with a non-object JSON body", code="bad_response")
    return data


def _errcode(data: Mapping[str, Any]) -> int:
    try:
        return int(data.get("errcode", 0) or 0)
    except (TypeError, ValueError):
        return -1


async def fetch_token(
    http: aiohttp.ClientSession, url: str, params: Mapping[str, str], *, request_timeout: float = 10.0
) -> IssuedToken:
    """GET a token endpoint; TokenError when the credential is refused, TransientSendError on trouble."""
    try:
        async with http.get(url, params=params, timeout=aiohttp.ClientTimeout(total=request_timeout)) as resp:
            data = await _read_json(resp)
    except TimeoutError as exc:
        raise TransientSendError("token endpoint timed out", code="timeout") from exc
    except aiohttp.ClientError as exc:
        raise TransientSendError(f"token endpoint unreachable: {type(exc).__name__}", code="network") from exc
    code = _errcode(data)
    token = data.get("access_token")
    if code != 0 or not isinstance(token, str) or not token:
        raise TokenError(f"token endpoint refused the credential: {code} {data.get('errmsg', '')}", code=str(code))
    try:
        expires_in = float(data.get("expires_in", 7200))
    except (TypeError, ValueError):
        expires_in = 7200.0
    return IssuedToken(token, expires_in)


class ApiClient:
    """Token-authenticated POSTs for one credential."""

    def __init__(
        self,
        http: Callable[[], aiohttp.ClientSession],
        base_url: str,
        tokens: AccessTokenCache,
        map_error: ErrorMapper,
        *,
        timeout: float = 10.0,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._tokens = tokens
        self._map_error = map_error
        self._timeout = timeout

    @property
    def tokens(self) -> AccessTokenCache:
        """The credential's token cache (shared with other clients of the same credential)."""
        return self._tokens

    async def post(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """POST `payload` to `path`; a rejected token is refreshed once and the call retried once."""
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        for attempt in (1, 2):
            token = await self._token()
            data = await self._post_once(path, token, body)
            code = _errcode(data)
            if code == 0:
                return data
            if code in TOKEN_REJECTED_CODES and attempt == 1:
                self._tokens.invalidate(token)
                continue
            raise self._map_error(code, str(data.get("errmsg", "")))
        raise AssertionError("unreachable")

    async def _token(self) -> str:
        try:
            return await self._tokens.get()
        except TokenError as exc:
            code = int(exc.code) if exc.code.lstrip("-").isdigit() else -1
            if code in CREDENTIAL_REFUSED_CODES:  # at the token endpoint these mean "wrong app id / secret / IP"
                raise PermanentSendError(f"{exc}: check the app id, secret and IP whitelist", code=str(code)) from exc
            raise self._map_error(code, str(exc)) from exc

    async def _post_once(self, path: str, token: str, body: bytes) -> dict[str, Any]:
        url = f"{self._base}{path}"
        try:
            async with self._http().post(
                url,
                params={"access_token": token},
                data=body,
                headers={"Content-Type": "application/json; charset=utf-8"},
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                return await _read_json(resp)
        except TimeoutError as exc:
            raise TransientSendError(f"{path} timed out after {self._timeout}s", code="timeout") from exc
        except aiohttp.ClientError as exc:
            raise TransientSendError(f"{path} failed: {type(exc).__name__}", code="network") from exc
