"""A fake of the WeChat OA (api.weixin.qq.com) and WeCom (qyapi.weixin.qq.com) HTTP APIs.

Runs on 127.0.0.1:<free port> in its own thread and event loop (wechatpy's clients are synchronous:
a fake on the caller's loop would deadlock). Point clients at `base_url` + "/cgi-bin/...".

Modelled platform rules (all times on a fake clock that `advance()` moves forward):

* Tokens: `GET /cgi-bin/token`, `POST /cgi-bin/stable_token` (OA, isolated from each other) and
  `GET /cgi-bin/gettoken` (WeCom). Every OA /token fetch issues a new random token; the previous one
  stays valid for `token_overlap` seconds. stable_token returns the current token while it is valid
  unless force_refresh. WeCom returns the same token while it is valid (`wecom_token_reuse`).
  Stale / unknown tokens get 40001; a missing one 41001.
* OA `POST /cgi-bin/message/custom/send`: text > 2048 UTF-8 bytes → 45002; user without an open
  48 h window (`open_window`) → 45015; more than the window's quota (5 per user message) → 45047.
* WeCom `POST /cgi-bin/message/send`: text/markdown > 2048 bytes is truncated silently;
  enable_duplicate_check hides repeats within duplicate_check_interval (errcode 0, not delivered);
  more than 30/min or 1000/h per member per app is accepted but silently dropped.

Scripting: `fail_next`, `delay_next`, `expire_all_tokens`, `open_window`. Observations: `sends`
(every accepted message with its fate), `delivered`, `dedup_hits`, `dropped`, `requests`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from aiohttp import web

from tests.fakes.threaded import ThreadedServer
from tests.fakes.wechat_crypto import OA_APPID, WECOM_AGENT_ID, WECOM_CORPID

__all__ = ["OA_SECRET", "WECOM_SECRET", "Delivery", "FakeWeChatAPI", "RecordedRequest", "WeComApp"]

OA_SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
WECOM_SECRET = "fake-wecom-app-secret-0123456789abcdefghijk"
MAX_TEXT_BYTES = 2048
WINDOW_SECONDS = 48 * 3600
ERR_STALE = {"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest"}
WECOM_MSGTYPES = {"text", "markdown", "image", "voice", "video", "file", "textcard", "news", "mpnews", "template_card"}
OA_MSGTYPES = {"text", "image", "voice", "video", "music", "news", "mpnews", "mpnewsarticle", "msgmenu", "wxcard"}
OA_MSGTYPES |= {"miniprogrampage"}

Json: TypeAlias = dict[str, Any]
Status: TypeAlias = Literal["delivered", "dedup", "dropped"]


def _err(code: int, msg: str) -> Json:
    return {"errcode": code, "errmsg": msg}


def _int(value: Any, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True)
class WeComApp:
    corp_id: str
    secret: str
    agent_id: int


@dataclass(frozen=True)
class Delivery:
    """One message the platform accepted (errcode 0), and what became of it."""

    kind: Literal["oa", "wecom"]
    touser: str  # one openid / WeCom member ("" for toparty/totag-only sends, "@all")
    msgtype: str
    content: str | None  # text/markdown content as delivered (after WeCom truncation)
    app: str  # OA appid or WeCom corpid
    agentid: int | None
    status: Status
    truncated: bool
    msgid: str | None
    payload: Json
    at: float  # fake clock


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any  # parsed JSON, or None
    raw: bytes
    at: float
    status: int | None = None  # filled in when answered
    response: Json | str | None = None


@dataclass
class _Token:
    value: str
    key: tuple[str, str, str]  # (kind, app id, secret)
    expires_at: float
    agent_id: int | None = None


@dataclass
class _Window:
    until: float
    quota: int | None
    used: int = 0


@dataclass
class _Rule:
    suffix: str
    times: int
    errcode: int = -1
    errmsg: str = "system error"
    http_status: int = 200
    seconds: float = 0.0
    after: bool = False  # fail: process (deliver) first; delay: sleep after processing


class FakeWeChatAPI(ThreadedServer):
    """OA + WeCom API fake; a context manager (sync and async).

    oa_apps: appid -> secret (default: the OA sample AppID with OA_SECRET); wecom_apps: one per
    self-built app (default: the WeCom sample CorpID, WECOM_SECRET, agent 1000002).
    expires_in: token lifetime reported and enforced; token_overlap: how long the previous OA token
    keeps working after a new fetch. wecom_token_reuse: WeCom gettoken answers the current token while
    valid (the documented behaviour). window_open_by_default: every openid may receive
    customer-service messages (no quota unless `open_window` was called for it). wecom_users: known
    members (None: everyone); others come back in `invaliduser`. oa_bad_secret_errcode: 40125 (what
    /cgi-bin/token answers today) or 40001 (what older docs list for a wrong AppSecret).
    """

    thread_name = "fake-wechat-api"

    def __init__(
        self,
        *,
        oa_apps: Mapping[str, str] | None = None,
        wecom_apps: Iterable[WeComApp] | None = None,
        expires_in: int = 7200,
        token_overlap: float = 300.0,
        wecom_token_reuse: bool = True,
        window_open_by_default: bool = False,
        window_quota: int = 5,
        wecom_users: Iterable[str] | None = None,
        wecom_per_minute: int = 30,
        wecom_per_hour: int = 1000,
        oa_bad_secret_errcode: Literal[40125, 40001] = 40125,
        port: int = 0,
    ) -> None:
        super().__init__(port=port)
        self.oa_apps = dict(oa_apps if oa_apps is not None else {OA_APPID: OA_SECRET})
        apps = wecom_apps if wecom_apps is not None else [WeComApp(WECOM_CORPID, WECOM_SECRET, WECOM_AGENT_ID)]
        self.wecom_apps = list(apps)
        self.expires_in = expires_in
        self.token_overlap = token_overlap
        self.wecom_token_reuse = wecom_token_reuse
        self.window_open_by_default = window_open_by_default
        self.window_quota = window_quota
        self.wecom_users = set(wecom_users) if wecom_users is not None else None
        self.wecom_per_minute = wecom_per_minute
        self.wecom_per_hour = wecom_per_hour
        self.oa_bad_secret_errcode = oa_bad_secret_errcode
        self._cond = threading.Condition()
        self._offset = 0.0
        self._tokens: dict[str, _Token] = {}
        self._current: dict[tuple[str, str, str], str] = {}
        self._fetches: collections.Counter[str] = collections.Counter()
        self._windows: dict[str, _Window] = {}
        self._dup_seen: dict[tuple[str, ...], float] = {}
        self._member_sends: dict[tuple[str, int, str], collections.deque[float]] = {}
        self._fails: list[_Rule] = []
        self._delays: list[_Rule] = []
        self._sends: list[Delivery] = []
        self._requests: list[RecordedRequest] = []

    # ---- lifecycle -------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application()
        routes: list[tuple[str, str, Callable[[RecordedRequest], Json]]] = [
            ("GET", "/cgi-bin/token", self._oa_token),
            ("POST", "/cgi-bin/stable_token", self._oa_stable_token),
            ("GET", "/cgi-bin/gettoken", self._wecom_token),
            ("POST", "/cgi-bin/message/custom/send", self._oa_custom_send),
            ("POST", "/cgi-bin/message/send", self._wecom_send),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, self._endpoint(handler))
        return app  # `base_url` (ThreadedServer) serves both platforms' hosts

    # ---- scripting -------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the fake clock forward (token expiry, windows, duplicate check, rate limits)."""
        with self._cond:
            self._offset += seconds

    def add_oa_app(self, appid: str, secret: str) -> None:
        with self._cond:
            self.oa_apps[appid] = secret

    def add_wecom_app(self, corp_id: str, secret: str, agent_id: int) -> None:
        with self._cond:
            self.wecom_apps.append(WeComApp(corp_id, secret, agent_id))

    def expire_all_tokens(self) -> None:
        """Every issued token stops working now (the next API call gets 40001)."""
        with self._cond:
            for tok in self._tokens.values():
                tok.expires_at = min(tok.expires_at, self.now())

    def open_window(self, openid: str, *, quota: int | None = None, seconds: float = WINDOW_SECONDS) -> None:
        """The user just messaged the OA: customer-service messages allowed for `seconds`, `quota` of them."""
        with self._cond:
            self._windows[openid] = _Window(self.now() + seconds, self.window_quota if quota is None else quota)

    def close_window(self, openid: str) -> None:
        with self._cond:
            self._windows.pop(openid, None)

    def window_is_open(self, openid: str) -> bool:
        with self._cond:
            win = self._windows.get(openid)
            return win is not None and win.until > self.now()

    def fail_next(
        self,
        path_suffix: str,
        errcode: int = -1,
        errmsg: str = "system error",
        *,
        http_status: int = 200,
        times: int = 1,
        deliver: bool = False,
    ) -> None:
        """Answer the next `times` requests whose path ends with `path_suffix` with this error.

        deliver=True processes the request normally first (the message *is* delivered) and only the
        answer is an error - the ambiguous case that exactly-once senders must survive.
        """
        with self._cond:
            self._fails.append(_Rule(path_suffix, times, errcode, errmsg, http_status, after=deliver))

    def delay_next(self, path_suffix: str, seconds: float, *, times: int = 1, after_processing: bool = False) -> None:
        """Sleep `seconds` before answering (after_processing: the message is delivered before the sleep)."""
        with self._cond:
            self._delays.append(_Rule(path_suffix, times, seconds=seconds, after=after_processing))

    def clear(self) -> None:
        """Forget recorded requests and sends (tokens, windows and limits stay)."""
        with self._cond:
            self._sends.clear()
            self._requests.clear()

    # ---- observations ----------------------------------------------------------------------

    @property
    def sends(self) -> list[Delivery]:
        """Every accepted message (per member for WeCom) with status delivered / dedup / dropped."""
        with self._cond:
            return list(self._sends)

    @property
    def delivered(self) -> list[Delivery]:
        return [d for d in self.sends if d.status == "delivered"]

    @property
    def dedup_hits(self) -> list[Delivery]:
        return [d for d in self.sends if d.status == "dedup"]

    @property
    def dropped(self) -> list[Delivery]:
        return [d for d in self.sends if d.status == "dropped"]

    def texts(self, touser: str | None = None) -> list[str]:
        """Contents of delivered text/markdown messages, optionally to one user."""
        return [d.content for d in self.delivered if d.content is not None and touser in (None, d.touser)]

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._requests)

    @property
    def token_fetches(self) -> dict[str, int]:
        """Tokens issued per credential: OA appid, "<appid>:stable", WeCom "<corpid>:<agentid>"."""
        with self._cond:
            return dict(self._fetches)

    def valid_tokens(self) -> list[str]:
        with self._cond:
            return [t.value for t in self._tokens.values() if t.expires_at > self.now()]

    def wait_delivered(self, n: int, timeout: float = 10.0) -> list[Delivery]:
        """Block until at least `n` messages were delivered; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (count := sum(d.status == "delivered" for d in self._sends)) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"only {count} of {n} messages delivered")
                self._cond.wait(remaining)
        return self.delivered

    async def async_wait_delivered(self, n: int, seconds: float = 10.0) -> list[Delivery]:
        """`wait_delivered` for async tests (does not block the caller's loop)."""
        deadline = time.monotonic() + seconds
        while len(delivered := self.delivered) < n:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"only {len(delivered)} of {n} messages delivered")
            await asyncio.sleep(0.01)
        return delivered

    # ---- HTTP plumbing ---------------------------------------------------------------------

    def _pop_rule(self, rules: list[_Rule], path: str) -> _Rule | None:
        for rule in rules:
            if path.endswith(rule.suffix):
                rule.times -= 1
                if rule.times <= 0:
                    rules.remove(rule)
                return rule
        return None

    def _endpoint(self, handler: Callable[[RecordedRequest], Json]) -> Callable[[web.Request], Any]:
        async def endpoint(request: web.Request) -> web.Response:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            with self._cond:
                rec = RecordedRequest(request.method, request.path, dict(request.query), body, raw, self.now())
                self._requests.append(rec)
                fail = self._pop_rule(self._fails, request.path)
                delay = self._pop_rule(self._delays, request.path)
            if delay is not None and not delay.after:
                await asyncio.sleep(delay.seconds)
            result: Json | None = None
            if fail is None or fail.after:
                with self._cond:
                    result = handler(rec)
                    self._cond.notify_all()
            if delay is not None and delay.after:
                await asyncio.sleep(delay.seconds)
            if fail is not None:
                if fail.http_status != 200:
                    text = f"<html><body><h1>{fail.http_status}</h1></body></html>"
                    rec.status, rec.response = fail.http_status, text
                    return web.Response(status=fail.http_status, text=text, content_type="text/html")
                result = _err(fail.errcode, fail.errmsg)
            assert result is not None
            rec.status, rec.response = 200, result
            return web.Response(
                text=json.dumps(result, ensure_ascii=False), content_type="application/json", charset="utf-8"
            )

        return endpoint

    # ---- tokens (called with the lock held) ------------------------------------------------

    def _issue(self, key: tuple[str, str, str], counter: str, *, reuse: bool, agent_id: int | None = None) -> Json:
        now = self.now()
        current = self._tokens.get(self._current.get(key, ""))
        if reuse and current is not None and current.expires_at > now:
            return {"access_token": current.value, "expires_in": int(current.expires_at - now)}
        if current is not None:
            current.expires_at = min(current.expires_at, now + self.token_overlap)
        token = _Token(secrets.token_urlsafe(102), key, now + self.expires_in, agent_id)
        self._tokens[token.value] = token
        self._current[key] = token.value
        self._fetches[counter] += 1
        return {"access_token": token.value, "expires_in": self.expires_in}

    def _oa_credential(self, grant_type: Any, appid: Any, secret: Any) -> Json | None:
        if grant_type != "client_credential":
            return _err(40002, "invalid grant_type")
        if not appid:
            return _err(41002, "appid missing")
        if appid not in self.oa_apps:
            return _err(40013, "invalid appid")
        if not secret:
            return _err(41004, "appsecret missing")
        if self.oa_apps[appid] != secret:
            return _err(40125, "invalid appsecret") if self.oa_bad_secret_errcode == 40125 else dict(ERR_STALE)
        return None

    def _oa_token(self, rec: RecordedRequest) -> Json:
        q = rec.query
        error = self._oa_credential(q.get("grant_type"), q.get("appid"), q.get("secret"))
        if error is not None:
            return error
        return self._issue(("oa", q["appid"], q["secret"]), q["appid"], reuse=False)

    def _oa_stable_token(self, rec: RecordedRequest) -> Json:
        b = rec.body if isinstance(rec.body, dict) else {}
        error = self._oa_credential(b.get("grant_type"), b.get("appid"), b.get("secret"))
        if error is not None:
            return error
        appid, secret = str(b["appid"]), str(b["secret"])
        return self._issue(("oa_stable", appid, secret), f"{appid}:stable", reuse=not b.get("force_refresh"))

    def _wecom_token(self, rec: RecordedRequest) -> Json:
        corpid, secret = rec.query.get("corpid", ""), rec.query.get("corpsecret", "")
        if not corpid:
            return _err(41002, "corpid missing")
        apps = [a for a in self.wecom_apps if a.corp_id == corpid]
        if not apps:
            return _err(40013, "invalid corpid")
        app = next((a for a in apps if a.secret == secret), None)
        if app is None:
            return _err(40001, "invalid credential")
        key = ("wecom", corpid, secret)
        issued = self._issue(key, f"{corpid}:{app.agent_id}", reuse=self.wecom_token_reuse, agent_id=app.agent_id)
        return {"errcode": 0, "errmsg": "ok", **issued}

    def _auth(self, rec: RecordedRequest, kinds: tuple[str, ...]) -> _Token | Json:
        value = rec.query.get("access_token")
        if not value:
            return _err(41001, "access_token missing")
        token = self._tokens.get(value)
        if token is None or token.key[0] not in kinds or token.expires_at <= self.now():
            return dict(ERR_STALE)
        return token

    # ---- sending (called with the lock held) -----------------------------------------------

    def _record_send(self, kind: Literal["oa", "wecom"], touser: str, body: Json, **kw: Any) -> None:
        msgtype = str(body.get("msgtype", ""))
        section = body.get(msgtype)
        content = section.get("content") if isinstance(section, dict) and msgtype in ("text", "markdown") else None
        kw.setdefault("content", None if content is None else str(content))
        kw.setdefault("truncated", False)
        kw.setdefault("msgid", None)
        kw.setdefault("agentid", None)
        self._sends.append(Delivery(kind, touser, msgtype, payload=body, at=self.now(), **kw))

    def _oa_custom_send(self, rec: RecordedRequest) -> Json:
        token = self._auth(rec, ("oa", "oa_stable"))
        if not isinstance(token, _Token):
            return token
        body = rec.body
        if not isinstance(body, dict):
            return _err(47001, "data format error")
        touser, msgtype = str(body.get("touser") or ""), str(body.get("msgtype") or "")
        if not touser:
            return _err(40003, "invalid openid")
        if msgtype not in OA_MSGTYPES or not isinstance(body.get(msgtype), dict):
            return _err(40008, "invalid message type")
        if msgtype == "text" and len(str(body["text"].get("content", "")).encode()) > MAX_TEXT_BYTES:
            return _err(45002, "content size out of limit")
        window = self._windows.get(touser)
        if window is None and self.window_open_by_default:
            window = _Window(float("inf"), None)
        if window is None or window.until <= self.now():
            return _err(45015, "response out of time limit or subscription is canceled")
        if window.quota is not None and window.used >= window.quota:
            return _err(45047, "out of response count limit")
        window.used += 1
        self._record_send("oa", touser, body, app=token.key[1], status="delivered")
        return _err(0, "ok")

    def _wecom_check(self, rec: RecordedRequest) -> tuple[_Token, Json, int] | Json:
        """(token, body, agentid) of a well-formed app message, or the platform's error."""
        token = self._auth(rec, ("wecom",))
        if not isinstance(token, _Token):
            return token
        body = rec.body
        if not isinstance(body, dict):
            return _err(47001, "data format error")
        if body.get("agentid") in (None, ""):
            return _err(41011, "missing agentid")
        try:
            agentid = int(body["agentid"])
        except (TypeError, ValueError):
            return _err(40056, "invalid agentid")
        if agentid != token.agent_id:
            return _err(301002, "not allow operate another agent with this accesstoken")
        msgtype = str(body.get("msgtype") or "")
        section = body.get(msgtype)
        if msgtype not in WECOM_MSGTYPES or not isinstance(section, dict):
            return _err(40008, "invalid message type")
        if msgtype in ("text", "markdown") and not section.get("content"):
            return _err(44004, "empty content")
        return token, body, agentid

    def _wecom_send(self, rec: RecordedRequest) -> Json:
        checked = self._wecom_check(rec)
        if isinstance(checked, dict):
            return checked
        token, body, agentid = checked
        msgtype = str(body["msgtype"])
        section = body[msgtype]
        touser, toparty, totag = (str(body.get(k) or "") for k in ("touser", "toparty", "totag"))
        users = [u for u in touser.split("|") if u]
        known = self.wecom_users
        invalid = [u for u in users if known is not None and u != "@all" and u not in known]
        valid = [u for u in users if u not in invalid]
        if not valid and not toparty and not totag:
            return _err(81013, "user & party & tag all invalid")
        msgid = secrets.token_urlsafe(32)
        reply = {"errcode": 0, "errmsg": "ok", "invaliduser": "|".join(invalid), "msgid": msgid}
        now, corp = self.now(), token.key[1]
        content_key = json.dumps(section, sort_keys=True, ensure_ascii=False)
        dup_key = (corp, str(agentid), touser, toparty, totag, msgtype, content_key)
        interval = min(_int(body.get("duplicate_check_interval"), 1800), 4 * 3600)
        seen = self._dup_seen.get(dup_key)
        common: dict[str, Any] = {"app": corp, "agentid": agentid, "msgid": msgid}
        if str(body.get("enable_duplicate_check", 0)) == "1" and seen is not None and now - seen < interval:
            for user in valid or [""]:
                self._record_send("wecom", user, body, status="dedup", **common)
            return reply
        self._dup_seen[dup_key] = now
        truncated = False
        if msgtype in ("text", "markdown"):
            raw = str(section["content"]).encode()
            if len(raw) > MAX_TEXT_BYTES:
                truncated = True
                common["content"] = raw[:MAX_TEXT_BYTES].decode("utf-8", "ignore")
        for user in valid or [""]:
            status: Status = "delivered" if user in ("", "@all") else self._pace(corp, agentid, user, now)
            self._record_send("wecom", user, body, status=status, truncated=truncated, **common)
        return reply

    def _pace(self, corp: str, agentid: int, user: str, now: float) -> Status:
        sent = self._member_sends.setdefault((corp, agentid, user), collections.deque())
        while sent and sent[0] <= now - 3600:
            sent.popleft()
        last_minute = sum(1 for t in sent if t > now - 60)
        if last_minute >= self.wecom_per_minute or len(sent) >= self.wecom_per_hour:
            return "dropped"
        sent.append(now)
        return "delivered"
