"""The WeChat OA / WeCom fakes are protocol-correct: official sample vectors, wechatpy interop, platform rules.

The callback side is checked against `ReferenceServer`, a minimal callback endpoint written with wechatpy
(what a correct adapter does); the API side with wechatpy's own clients plus raw HTTP.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Any

import defusedxml.ElementTree as DET
import pytest
import requests
from aiohttp import web
from wechatpy import WeChatClient, create_reply, parse_message
from wechatpy.crypto import PrpCrypto, WeChatCrypto
from wechatpy.enterprise import WeChatClient as WeComClient
from wechatpy.enterprise import parse_message as wecom_parse
from wechatpy.enterprise.crypto import PrpCrypto as WeComPrpCrypto
from wechatpy.enterprise.crypto import WeChatCrypto as WeComCrypto
from wechatpy.enterprise.exceptions import InvalidCorpIdException
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException, WeChatClientException
from wechatpy.utils import check_signature

from tests.fakes.wechat_platform import (
    OA_AES_KEY,
    OA_APPID,
    OA_OPENID,
    OA_ORIGINAL_ID,
    OA_SECRET,
    OA_TOKEN,
    WECOM_AES_KEY,
    WECOM_AGENT_ID,
    WECOM_CORPID,
    WECOM_SECRET,
    WECOM_TOKEN,
    WECOM_USERID,
    CallbackDriver,
    FakeWeChatAPI,
    Forgery,
    ReplyVerificationError,
    WeChatCipher,
    oversized_body,
    sha1_signature,
    xml_bomb,
    xxe_payload,
)

# ---- official sample vectors --------------------------------------------------------------------------

OA_SAMPLE_ENCRYPT = (
    "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2L"
    "dJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6u"
    "x5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJ"
    "pXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCz"
    "pu9GhglF2PE="
)
WECOM_SAMPLE_ENCRYPT = (
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/s"
    "YYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJ"
    "YuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGU"
    "callcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDY"
    "A5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q=="
)
WECOM_SAMPLE_ECHO = "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="


def test_official_oa_sample_vector() -> None:
    assert sha1_signature(OA_TOKEN, "1409735669", "1320562132", OA_SAMPLE_ENCRYPT) == (
        "5d197aaffba7e9b25a30732f161a50dee96bd5fa"
    )
    xml, appid = WeChatCipher(OA_AES_KEY).decrypt(OA_SAMPLE_ENCRYPT)
    assert appid == OA_APPID
    msg = parse_message(xml.decode())
    assert (msg.type, msg.content, msg.id, msg.target) == ("text", "abcdteT", 6054768590064713728, OA_ORIGINAL_ID)


def test_official_wecom_sample_vectors() -> None:
    cipher = WeChatCipher(WECOM_AES_KEY)
    assert sha1_signature(WECOM_TOKEN, "1409659813", "1372623149", WECOM_SAMPLE_ENCRYPT) == (
        "477715d11cdb4164915debcba66cb864d751f3e6"
    )
    xml, corp = cipher.decrypt(WECOM_SAMPLE_ENCRYPT)
    assert corp == WECOM_CORPID
    assert wecom_parse(xml.decode()).content == "hello"
    assert sha1_signature(WECOM_TOKEN, "1409659589", "263014780", WECOM_SAMPLE_ECHO) == (
        "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3"
    )
    assert cipher.decrypt(WECOM_SAMPLE_ECHO) == (b"1616140317555161061", WECOM_CORPID)


def test_cipher_interop_with_wechatpy_both_ways() -> None:
    ours = WeChatCipher(OA_AES_KEY)
    text = "<xml><Content><![CDATA[中文 ]]]]><![CDATA[> 混合]]></Content></xml>" * 7
    theirs_oa = PrpCrypto(ours.key)
    assert theirs_oa.decrypt(ours.encrypt(text, OA_APPID), OA_APPID) == text
    assert ours.decrypt(theirs_oa.encrypt(text, OA_APPID).decode()) == (text.encode(), OA_APPID)
    theirs_wc = WeComPrpCrypto(WeChatCipher(WECOM_AES_KEY).key)
    assert theirs_wc.decrypt(WeChatCipher(WECOM_AES_KEY).encrypt(text, WECOM_CORPID), WECOM_CORPID) == text
    with pytest.raises(InvalidAppIdException):
        theirs_oa.decrypt(ours.encrypt(text, "wxWRONGWRONGWRONG0"), OA_APPID)
    with pytest.raises(ValueError, match=r"padding|blocks"):
        ours.decrypt("QUJD")


# ---- callback side: a wechatpy reference endpoint -------------------------------------------------------


class ReferenceServer:
    """A correct callback endpoint built on wechatpy, in the test's loop. `behaviour` shapes the reply."""

    def __init__(self) -> None:
        self.oa = WeChatCrypto(OA_TOKEN, OA_AES_KEY, OA_APPID)
        self.wecom = WeComCrypto(WECOM_TOKEN, WECOM_AES_KEY, WECOM_CORPID)
        self.messages: list[Any] = []
        self.arrivals: list[tuple[dict[str, str], bytes]] = []
        self.behaviour = "echo"
        self.fail_first = 0
        self.sleep_first = 0
        self.sleep = 0.0
        self.runner: web.AppRunner | None = None
        self.base = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/oa", self.oa_get)
        app.router.add_post("/oa", self.oa_post)
        app.router.add_get("/wecom", self.wecom_get)
        app.router.add_post("/wecom", self.wecom_post)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def oa_get(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            check_signature(OA_TOKEN, q["signature"], q["timestamp"], q["nonce"])
        except InvalidSignatureException:
            return web.Response(status=403, text="bad signature")
        return web.Response(text=q["echostr"])

    async def wecom_get(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            echo = self.wecom.check_signature(q["msg_signature"], q["timestamp"], q["nonce"], q["echostr"])
        except (InvalidSignatureException, InvalidCorpIdException):
            return web.Response(status=403, text="bad signature")
        return web.Response(text=echo)

    async def _arrive(self, request: web.Request) -> tuple[dict[str, str], str, web.Response | None]:
        raw = await request.read()
        self.arrivals.append((dict(request.query), raw))
        if self.fail_first > 0:
            self.fail_first -= 1
            return {}, "", web.Response(status=500)
        if self.sleep_first > 0:
            self.sleep_first -= 1
            await asyncio.sleep(self.sleep)
        return dict(request.query), raw.decode(), None

    async def oa_post(self, request: web.Request) -> web.Response:
        q, raw, early = await self._arrive(request)
        if early is not None:
            return early
        aes = q.get("encrypt_type") == "aes"
        try:
            check_signature(OA_TOKEN, q["signature"], q["timestamp"], q["nonce"])
            xml = self.oa.decrypt_message(raw, q["msg_signature"], q["timestamp"], q["nonce"]) if aes else raw
        except (InvalidSignatureException, InvalidAppIdException, ValueError):
            return web.Response(status=403, text="forbidden")
        return self._reply(parse_message(xml), self.oa if aes else None, q["nonce"], WeChatCrypto)

    async def wecom_post(self, request: web.Request) -> web.Response:
        q, raw, early = await self._arrive(request)
        if early is not None:
            return early
        try:
            xml = self.wecom.decrypt_message(raw, q["msg_signature"], q["timestamp"], q["nonce"])
        except (InvalidSignatureException, InvalidCorpIdException, ValueError):
            return web.Response(status=403, text="forbidden")
        return self._reply(wecom_parse(xml), self.wecom, q["nonce"], WeComCrypto)

    def _reply(self, msg: Any, crypto: Any, nonce: str, crypto_cls: Any) -> web.Response:
        self.messages.append(msg)
        if self.behaviour in ("success", ""):
            return web.Response(text=self.behaviour)
        # wechatpy puts the reply text in CDATA without splitting "]]>", so keep that out of echoes.
        text = str(getattr(msg, "content", msg.type)).replace("]]>", "")
        rendered = create_reply(f"echo: {text}", msg).render()
        if crypto is None or self.behaviour == "plain_reply":
            return web.Response(text=rendered, content_type="text/xml")
        if self.behaviour == "wrong_appid":
            crypto = crypto_cls(crypto.token, OA_AES_KEY if crypto is self.oa else WECOM_AES_KEY, "wxWRONGWRONGWRONG0")
        envelope = crypto.encrypt_message(rendered, nonce)
        if self.behaviour == "bad_signature":
            envelope = envelope.replace("<MsgSignature><![CDATA[", "<MsgSignature><![CDATA[0")
        return web.Response(text=envelope, content_type="text/xml")


@pytest.fixture
async def ref() -> AsyncIterator[ReferenceServer]:
    server = ReferenceServer()
    await server.start()
    yield server
    assert server.runner is not None
    await server.runner.cleanup()


@pytest.fixture
def api() -> Iterator[FakeWeChatAPI]:
    with FakeWeChatAPI() as fake:
        yield fake


@pytest.mark.parametrize("mode", ["plain", "compat", "safe"])
async def test_oa_modes_interoperate_with_wechatpy(ref: ReferenceServer, mode: Any) -> None:
    driver = CallbackDriver.oa(ref.base + "/oa", mode=mode)
    assert (await driver.verify_url()).verified
    result = await driver.send_text(OA_OPENID, "你好 <b>&amp; ]]> end", msg_id=1234567890123456)
    msg = ref.messages[-1]
    assert (msg.type, msg.content, msg.id, msg.source, msg.target) == (
        "text",
        "你好 <b>&amp; ]]> end",
        1234567890123456,
        OA_OPENID,
        OA_ORIGINAL_ID,
    )
    assert result.attempt_count == 1 and result.reply is not None
    assert result.reply["Content"] == "echo: 你好 <b>&amp;  end"
    assert result.reply["ToUserName"] == OA_OPENID and result.reply["FromUserName"] == OA_ORIGINAL_ID
    assert result.reply_encrypted == (mode != "plain")
    query, body = ref.arrivals[-1]
    assert ("msg_signature" in query) == (mode != "plain") and query["openid"] == OA_OPENID
    assert (b"<Encrypt>" in body) == (mode != "plain") and (b"<Content>" in body) == (mode != "safe")


async def test_oa_message_and_event_types_parse_in_wechatpy(ref: ReferenceServer) -> None:
    driver = CallbackDriver.oa(ref.base + "/oa")
    ref.behaviour = "success"
    await driver.send_image(OA_OPENID, media_id="m1")
    await driver.send_voice(OA_OPENID, recognition="语音识别结果")
    await driver.send_link(OA_OPENID, "t", "d", "https://example.com/a?b=1&c=2")
    await driver.send_location(OA_OPENID, 23.1, 113.3, label="广州")
    await driver.send_event(OA_OPENID, "subscribe")
    await driver.send_event(OA_OPENID, "subscribe", event_key="qrscene_42", ticket="TICKET")
    await driver.send_event(OA_OPENID, "CLICK", event_key="MENU_HELP")
    result = await driver.send_event(OA_OPENID, "unsubscribe")
    assert result.acked and result.reply is None
    kinds = [type(m).__name__ for m in ref.messages]
    assert kinds == [
        "ImageMessage",
        "VoiceMessage",
        "LinkMessage",
        "LocationMessage",
        "SubscribeEvent",
        "SubscribeScanEvent",
        "ClickEvent",
        "UnsubscribeEvent",
    ]
    image, voice, link, loc, _, scan, click, _ = ref.messages
    assert image.media_id == "m1" and voice.recognition == "语音识别结果" and link.url.endswith("b=1&c=2")
    assert tuple(map(float, loc.location)) == (23.1, 113.3) and loc.label == "广州"
    assert scan.scene_id == "42" and scan.ticket == "TICKET" and click.key == "MENU_HELP"


async def test_wecom_verify_and_message_interoperate_with_wechatpy(ref: ReferenceServer) -> None:
    driver = CallbackDriver.wecom(ref.base + "/wecom")
    verify = await driver.verify_url()
    assert verify.verified
    assert urllib.parse.unquote(verify.request.url.split("echostr=")[1]) != verify.request.expected_echo
    result = await driver.send_text(WECOM_USERID, "hello wecom", msg_id=77)
    msg = ref.messages[-1]
    assert (type(msg).__name__, msg.source, msg.target, msg.agent, msg.content, msg.id) == (
        "TextMessage",
        WECOM_USERID,
        WECOM_CORPID,
        WECOM_AGENT_ID,
        "hello wecom",
        77,
    )
    assert result.reply_encrypted and result.reply is not None and result.reply["Content"] == "echo: hello wecom"
    assert b"<AgentID><![CDATA[1000002]]></AgentID>" in ref.arrivals[-1][1]
    await driver.send_event(WECOM_USERID, "click", event_key="K")
    assert type(ref.messages[-1]).__name__ == "ClickEvent" and ref.messages[-1].agent == WECOM_AGENT_ID


async def test_forgeries_are_rejected_by_wechatpy(ref: ReferenceServer) -> None:
    oa = CallbackDriver.oa(ref.base + "/oa")
    wecom = CallbackDriver.wecom(ref.base + "/wecom")
    assert (await oa.verify_url(forge=Forgery(bad_signature=True))).status == 403
    assert (await wecom.verify_url(forge=Forgery(bad_msg_signature=True))).status == 403
    assert (await wecom.verify_url(forge=Forgery(receive_id="wwOTHERCORP"))).status == 403
    for forge in (
        Forgery(bad_signature=True),
        Forgery(bad_msg_signature=True),
        Forgery(receive_id="wxWRONGWRONGWRONG0"),
        Forgery(encoding_aes_key=WECOM_AES_KEY),
    ):
        result = await oa.send_text(OA_OPENID, "x", forge=forge)
        assert (result.status, result.attempt_count, result.ok) == (403, 1, True), forge
    assert (await wecom.send_text(WECOM_USERID, "x", forge=Forgery(receive_id="wwOTHER"))).status == 403
    assert ref.messages == []
    # Hostile payloads: raw bodies arrive byte-exact; an encrypted one still carries a valid msg_signature.
    bomb = xml_bomb()
    await oa.send_text(OA_OPENID, "x", forge=Forgery(raw_body=bomb))
    assert ref.arrivals[-1][1] == bomb
    with pytest.raises(DET.EntitiesForbidden):
        DET.fromstring(bomb)
    enc = oa.build_post({"ToUserName": "gh", "Content": "x"}, Forgery(raw_plaintext=xxe_payload()))
    assert ref.oa.decrypt_message(enc.body, enc.query["msg_signature"], enc.query["timestamp"], enc.query["nonce"]) == (
        xxe_payload().decode()
    )
    assert len(oversized_body(100_000)) == 100_000
    stale = oa.build_post({"MsgType": "text"}, Forgery(timestamp="1409735669", omit_query=("nonce",)))
    assert stale.query["timestamp"] == "1409735669" and "nonce=" not in stale.url


@pytest.mark.parametrize("behaviour", ["bad_signature", "wrong_appid", "plain_reply"])
async def test_bad_passive_replies_raise(ref: ReferenceServer, behaviour: str) -> None:
    ref.behaviour = behaviour
    for driver, user in (
        (CallbackDriver.oa(ref.base + "/oa"), OA_OPENID),
        (CallbackDriver.wecom(ref.base + "/wecom"), "u"),
    ):
        with pytest.raises(ReplyVerificationError) as info:
            await driver.send_text(user, "hi")
        assert info.value.result.status == 200 and info.value.result.attempt_count == 1


async def test_retries_on_timeout_reuse_the_identical_request(ref: ReferenceServer) -> None:
    ref.sleep, ref.sleep_first = 1.0, 10
    driver = CallbackDriver.oa(ref.base + "/oa", timeout=0.3)
    started = time.monotonic()
    result = await driver.send_text(OA_OPENID, "slow")
    assert time.monotonic() - started < 2.0
    assert result.attempt_count == 4 and not result.ok
    assert all(a.error == "timeout" and 0.25 <= a.elapsed < 0.8 for a in result.attempts)
    assert len(ref.arrivals) == 4 and len({(tuple(q.items()), body) for q, body in ref.arrivals}) == 1
    # Slow twice, then answered in time: 3 attempts, ended by the passive reply.
    ref.arrivals.clear()
    ref.sleep_first = 2
    result = await driver.send_text(OA_OPENID, "eventually")
    assert [a.error for a in result.attempts] == ["timeout", "timeout", None]
    assert result.reply is not None and result.reply["Content"] == "echo: eventually"


async def test_retries_on_5xx_and_connection_errors(ref: ReferenceServer) -> None:
    ref.fail_first, ref.behaviour = 2, ""
    result = await CallbackDriver.wecom(ref.base + "/wecom").send_text(WECOM_USERID, "x")
    assert [a.status for a in result.attempts] == [500, 500, 200] and result.acked
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = CallbackDriver.oa(f"http://127.0.0.1:{port}/oa", timeout=0.3, retries=2)
    result = await closed.send_text(OA_OPENID, "x")
    assert result.attempt_count == 3 and all(a.error and a.error.startswith("connection") for a in result.attempts)


# ---- API side --------------------------------------------------------------------------------------------


class OAClient(WeChatClient):  # type: ignore[misc]
    """wechatpy's OA client pointed at the fake (its token URL is hard-coded upstream)."""

    def __init__(self, base: str, appid: str = OA_APPID, secret: str = OA_SECRET) -> None:
        super().__init__(appid, secret)
        self.API_BASE_URL = base + "/cgi-bin/"
        self._base = base

    def fetch_access_token(self) -> Any:
        params = {"grant_type": "client_credential", "appid": self.appid, "secret": self.secret}
        return self._fetch_access_token(url=self._base + "/cgi-bin/token", params=params)


class WeComAppClient(WeComClient):  # type: ignore[misc]
    def __init__(self, base: str, corp_id: str = WECOM_CORPID, secret: str = WECOM_SECRET) -> None:
        super().__init__(corp_id, secret)
        self.API_BASE_URL = base + "/cgi-bin/"
        self._base = base

    def fetch_access_token(self) -> Any:
        params = {"corpid": self.corp_id, "corpsecret": self.secret}
        return self._fetch_access_token(url=self._base + "/cgi-bin/gettoken", params=params)


def _get(api: FakeWeChatAPI, path: str, **params: Any) -> dict[str, Any]:
    return dict(requests.get(api.base_url + path, params=params, timeout=5).json())


def _post(api: FakeWeChatAPI, path: str, body: dict[str, Any], **params: Any) -> dict[str, Any]:
    return dict(requests.post(api.base_url + path, params=params, json=body, timeout=5).json())


def _oa_token(api: FakeWeChatAPI) -> str:
    return str(
        _get(api, "/cgi-bin/token", grant_type="client_credential", appid=OA_APPID, secret=OA_SECRET)["access_token"]
    )


def _wecom_token(api: FakeWeChatAPI) -> str:
    return str(_get(api, "/cgi-bin/gettoken", corpid=WECOM_CORPID, corpsecret=WECOM_SECRET)["access_token"])


def _custom(api: FakeWeChatAPI, token: str, text: str, touser: str = OA_OPENID) -> int:
    body = {"touser": touser, "msgtype": "text", "text": {"content": text}}
    return int(_post(api, "/cgi-bin/message/custom/send", body, access_token=token)["errcode"])


def _wecom_send(api: FakeWeChatAPI, token: str, text: str, touser: str = WECOM_USERID, **extra: Any) -> dict[str, Any]:
    body = {"touser": touser, "agentid": WECOM_AGENT_ID, "msgtype": "text", "text": {"content": text}, **extra}
    return _post(api, "/cgi-bin/message/send", body, access_token=token)


def test_token_credentials_and_errors(api: FakeWeChatAPI) -> None:
    ok = _get(api, "/cgi-bin/token", grant_type="client_credential", appid=OA_APPID, secret=OA_SECRET)
    assert ok["expires_in"] == 7200 and len(ok["access_token"]) > 100
    bad = {"grant_type": "client_credential", "appid": "wx0000000000000000", "secret": OA_SECRET}
    assert _get(api, "/cgi-bin/token", **bad)["errcode"] == 40013
    assert _get(api, "/cgi-bin/token", **{**bad, "appid": OA_APPID, "secret": "nope"})["errcode"] == 40125
    stable = {"grant_type": "client_credential", "appid": OA_APPID, "secret": OA_SECRET}
    first = _post(api, "/cgi-bin/stable_token", stable)["access_token"]
    assert _post(api, "/cgi-bin/stable_token", stable)["access_token"] == first
    assert _post(api, "/cgi-bin/stable_token", {**stable, "force_refresh": True})["access_token"] != first
    assert _post(api, "/cgi-bin/stable_token", {**stable, "secret": "x"})["errcode"] == 40125
    wc = _get(api, "/cgi-bin/gettoken", corpid=WECOM_CORPID, corpsecret=WECOM_SECRET)
    assert (wc["errcode"], wc["errmsg"], wc["expires_in"]) == (0, "ok", 7200)
    assert _wecom_token(api) == wc["access_token"]  # WeCom: same token while valid
    assert _get(api, "/cgi-bin/gettoken", corpid="wwnope", corpsecret=WECOM_SECRET)["errcode"] == 40013
    assert _get(api, "/cgi-bin/gettoken", corpid=WECOM_CORPID, corpsecret="nope")["errcode"] == 40001
    assert api.token_fetches == {OA_APPID: 1, f"{OA_APPID}:stable": 2, f"{WECOM_CORPID}:{WECOM_AGENT_ID}": 1}


def test_token_overlap_expiry_and_stale_tokens(api: FakeWeChatAPI) -> None:
    api.open_window(OA_OPENID)
    old, new = _oa_token(api), _oa_token(api)
    assert old != new and _custom(api, old, "a") == 0 and _custom(api, new, "b") == 0
    api.advance(301)  # the 5-minute overlap is over
    assert _custom(api, old, "c") == 40001 and _custom(api, new, "d") == 0
    api.advance(7200)
    assert _custom(api, new, "e") == 40001 and _custom(api, "garbage", "f") == 40001
    assert _post(api, "/cgi-bin/message/custom/send", {})["errcode"] == 41001
    with FakeWeChatAPI(expires_in=2, window_open_by_default=True) as fast:
        token = _oa_token(fast)
        assert (
            _get(fast, "/cgi-bin/token", grant_type="client_credential", appid=OA_APPID, secret=OA_SECRET)["expires_in"]
            == 2
        )
        fast.advance(2.5)
        assert _custom(fast, token, "late") == 40001


def test_wechatpy_clients_refetch_after_expiry_and_injected_errors(api: FakeWeChatAPI) -> None:
    api.open_window(OA_OPENID)
    oa = OAClient(api.base_url)
    assert oa.message.send_text(OA_OPENID, "one")["errcode"] == 0
    api.expire_all_tokens()
    assert oa.message.send_text(OA_OPENID, "two")["errcode"] == 0
    api.fail_next("/message/custom/send", 42001, "access_token expired")
    assert oa.message.send_text(OA_OPENID, "three")["errcode"] == 0
    assert api.token_fetches[OA_APPID] == 3 and api.texts(OA_OPENID) == ["one", "two", "three"]
    wecom = WeComAppClient(api.base_url)
    assert wecom.message.send_text(WECOM_AGENT_ID, ["zhangsan", "lisi"], "hi")["msgid"]
    api.fail_next("/message/send", 40014, "invalid access_token")
    assert wecom.message.send_markdown(WECOM_AGENT_ID, "zhangsan", "**md**")["errcode"] == 0
    assert [(d.touser, d.msgtype, d.content) for d in api.delivered[3:]] == [
        ("zhangsan", "text", "hi"),
        ("lisi", "text", "hi"),
        ("zhangsan", "markdown", "**md**"),
    ]
    with pytest.raises(WeChatClientException) as info:
        OAClient(api.base_url, secret="wrong").message.send_text(OA_OPENID, "x")
    assert info.value.errcode == 40125


def test_oa_customer_service_rules(api: FakeWeChatAPI) -> None:
    token = _oa_token(api)
    assert _custom(api, token, "no window") == 45015
    api.open_window(OA_OPENID)
    assert _custom(api, token, "中" * 683) == 45002  # 2049 UTF-8 bytes
    assert _custom(api, token, "中" * 682 + "ab") == 0  # exactly 2048
    assert [_custom(api, token, str(i)) for i in range(5)] == [0, 0, 0, 0, 45047]
    api.open_window(OA_OPENID)  # the user wrote again: quota renewed
    assert _custom(api, token, "again") == 0
    api.advance(48 * 3600 + 1)
    token = _oa_token(api)  # the old one expired meanwhile
    assert _custom(api, token, "too late") == 45015
    bad_type = {"touser": OA_OPENID, "msgtype": "sticker", "sticker": {}}
    assert _post(api, "/cgi-bin/message/custom/send", bad_type, access_token=token)["errcode"] == 40008
    assert len(api.delivered) == 6 and api.delivered[0].kind == "oa" and api.delivered[0].app == OA_APPID


async def test_driver_opens_the_window_on_the_linked_api(ref: ReferenceServer, api: FakeWeChatAPI) -> None:
    ref.behaviour = "success"
    driver = CallbackDriver.oa(ref.base + "/oa", api=api)
    await driver.send_event("oCLICKER", "CLICK", event_key="K")  # menu click: 3 messages within 1 min
    await driver.send_text(OA_OPENID, "hi")
    token = await asyncio.to_thread(_oa_token, api)
    codes = [await asyncio.to_thread(_custom, api, token, str(i), "oCLICKER") for i in range(4)]
    assert codes == [0, 0, 0, 45047]
    assert await asyncio.to_thread(_custom, api, token, "reply") == 0
    assert [d.content for d in await api.async_wait_delivered(4)][-1] == "reply"


def test_wecom_truncation_duplicate_check_and_silent_drop(api: FakeWeChatAPI) -> None:
    token = _wecom_token(api)
    long = "é" * 1500  # 3000 bytes; the cut lands mid-character
    assert _wecom_send(api, token, long)["errcode"] == 0
    first = api.delivered[-1]
    assert first.truncated and first.content == "é" * 1024 and first.payload["text"]["content"] == long
    dup: dict[str, Any] = {"enable_duplicate_check": 1, "duplicate_check_interval": 600}
    assert _wecom_send(api, token, "same", **dup)["errcode"] == 0
    assert _wecom_send(api, token, "same", **dup)["errcode"] == 0
    assert _wecom_send(api, token, "same")["errcode"] == 0  # no check requested: delivered again
    api.advance(601)
    assert _wecom_send(api, token, "same", **dup)["errcode"] == 0
    assert [d.content for d in api.dedup_hits] == ["same"]
    assert api.texts(WECOM_USERID)[1:] == ["same", "same", "same"]
    api.clear()
    api.advance(3600)
    replies = [_wecom_send(api, token, f"m{i}", touser="lisi") for i in range(35)]
    assert all(r["errcode"] == 0 and r["msgid"] for r in replies)
    assert len(api.delivered) == 30 and [d.content for d in api.dropped] == [f"m{i}" for i in range(30, 35)]
    assert _wecom_send(api, token, "other member")["errcode"] == 0 and api.delivered[-1].touser == WECOM_USERID
    api.advance(60)
    _wecom_send(api, token, "next minute", touser="lisi")
    assert api.delivered[-1].content == "next minute"
    wrong_agent = {"touser": "a", "agentid": 1, "msgtype": "text", "text": {"content": "x"}}
    assert _post(api, "/cgi-bin/message/send", wrong_agent, access_token=token)["errcode"] == 301002
    oa_token = _oa_token(api)
    assert _wecom_send(api, oa_token, "x")["errcode"] == 40001


def test_wecom_invalid_users() -> None:
    with FakeWeChatAPI(wecom_users=["zhangsan"]) as api:
        token = _wecom_token(api)
        reply = _wecom_send(api, token, "x", touser="zhangsan|ghost")
        assert reply["invaliduser"] == "ghost" and [d.touser for d in api.delivered] == ["zhangsan"]
        assert _wecom_send(api, token, "x", touser="ghost")["errcode"] == 81013


def test_error_injection_and_delays(api: FakeWeChatAPI) -> None:
    token = _wecom_token(api)
    api.fail_next("/message/send", 45009, "reach max api daily quota limit")
    assert _wecom_send(api, token, "a") == {"errcode": 45009, "errmsg": "reach max api daily quota limit"}
    api.fail_next("/message/send", http_status=503, times=2)
    statuses = [requests.post(api.base_url + "/cgi-bin/message/send", timeout=5).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    api.fail_next("/message/send", deliver=True)  # delivered, but the answer says -1 system error
    assert _wecom_send(api, token, "ambiguous")["errcode"] == -1
    assert api.texts() == ["ambiguous"]
    api.fail_next("/gettoken", -1, "system error")
    assert _get(api, "/cgi-bin/gettoken", corpid=WECOM_CORPID, corpsecret=WECOM_SECRET)["errcode"] == -1
    api.delay_next("/message/send", 0.3)
    started = time.monotonic()
    assert _wecom_send(api, token, "slow")["errcode"] == 0
    assert time.monotonic() - started >= 0.3
    api.delay_next("/message/send", 0.5, after_processing=True)
    with pytest.raises(requests.ReadTimeout):
        requests.post(
            api.base_url + "/cgi-bin/message/send",
            params={"access_token": token},
            json={"touser": "u", "agentid": WECOM_AGENT_ID, "msgtype": "text", "text": {"content": "lost ack"}},
            timeout=0.2,
        )
    assert api.texts()[-1] == "lost ack"
    recorded = [r for r in api.requests if r.path.endswith("/message/send")]
    assert recorded[0].response == {"errcode": 45009, "errmsg": "reach max api daily quota limit"}
    assert recorded[1].status == 503


def test_wait_delivered_from_another_thread(api: FakeWeChatAPI) -> None:
    token = _wecom_token(api)
    timer = threading.Timer(0.1, _wecom_send, args=(api, token, "later"))
    timer.start()
    try:
        assert [d.content for d in api.wait_delivered(1, timeout=5)] == ["later"]
        with pytest.raises(TimeoutError):
            api.wait_delivered(2, timeout=0.1)
    finally:
        timer.join()


async def test_async_context_manager_and_wait() -> None:
    async with FakeWeChatAPI(window_open_by_default=True) as api:
        token = await asyncio.to_thread(_oa_token, api)
        assert await asyncio.to_thread(_custom, api, token, "x", "oANYONE") == 0
        assert [d.touser for d in await api.async_wait_delivered(1, 5)] == ["oANYONE"]
        with pytest.raises(TimeoutError):
            await api.async_wait_delivered(2, 0.05)
