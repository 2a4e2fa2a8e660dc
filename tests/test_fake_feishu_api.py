"""FakeFeishuAPI behaves like the Feishu open platform as documented, and lark-oapi 1.7.5 talks to it.

Raw HTTP (requests) checks status codes, bodies and headers exactly; the SDK checks interop. lark-oapi
caches tenant tokens process-wide by app_id, so SDK tests use their own app_id and clear the cache.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.fakes.feishu_api import APP_ID, APP_SECRET, FakeFeishuAPI, Limits
from tests.fakes.feishu_events import (
    USER,
    Person,
    at,
    audio_event,
    file_event,
    group_mention_event,
    image_event,
    link,
    message_event,
    post_event,
    text,
    text_event,
)

TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
MESSAGES = "/open-apis/im/v1/messages"
CARDS = "/open-apis/cardkit/v1/cards"


# ---- helpers --------------------------------------------------------------------------------------------------


def call(
    api: FakeFeishuAPI, method: str, path: str, body: Any = None, *, token: str | None = None
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, api.base_url + path, json=body, headers=headers, timeout=5)


def get_token(api: FakeFeishuAPI, app_id: str = APP_ID, secret: str = APP_SECRET) -> str:
    resp = call(api, "POST", TOKEN_PATH, {"app_id": app_id, "app_secret": secret})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["tenant_access_token"])


def send_text(api: FakeFeishuAPI, token: str, to: str, body: str, *, id_type: str = "chat_id", **extra: Any) -> Any:
    payload = {"receive_id": to, "msg_type": "text", "content": json.dumps({"text": body}), **extra}
    return call(api, "POST", f"{MESSAGES}?receive_id_type={id_type}", payload, token=token)


def streaming_card(*elements: dict[str, Any], streaming: bool = True) -> str:
    elements = elements or ({"tag": "markdown", "content": "", "element_id": "md"},)
    card = {"schema": "2.0", "config": {"streaming_mode": streaming, "update_multi": True}}
    return json.dumps({**card, "body": {"elements": list(elements)}})


def create_card(api: FakeFeishuAPI, token: str, data: str | None = None) -> str:
    resp = call(api, "POST", CARDS, {"type": "card_json", "data": data or streaming_card()}, token=token)
    assert resp.json()["code"] == 0, resp.text
    return str(resp.json()["data"]["card_id"])


def stream(api: FakeFeishuAPI, token: str, card_id: str, content: str, seq: int, **extra: Any) -> dict[str, Any]:
    body = {"content": content, "sequence": seq, **extra}
    return dict(call(api, "PUT", f"{CARDS}/{card_id}/elements/md/content", body, token=token).json())


def finalize(api: FakeFeishuAPI, token: str, card_id: str, seq: int) -> dict[str, Any]:
    body = {"settings": json.dumps({"config": {"streaming_mode": False}}), "sequence": seq}
    return dict(call(api, "PATCH", f"{CARDS}/{card_id}/settings", body, token=token).json())


@pytest.fixture
def api() -> Iterator[FakeFeishuAPI]:
    with FakeFeishuAPI(clock="manual") as fake:
        yield fake


@pytest.fixture
def token(api: FakeFeishuAPI) -> str:
    return get_token(api)


@pytest.fixture
def lark_app() -> Iterator[tuple[str, str]]:
    """A fresh app_id for the SDK (its token cache is process-global and keyed by app_id only)."""
    from lark_oapi.core.token import TokenManager

    TokenManager.cache.cache.clear()  # type: ignore[attr-defined]
    yield f"cli_sdk_{uuid.uuid4().hex[:12]}", "sdk-secret"
    TokenManager.cache.cache.clear()  # type: ignore[attr-defined]


def lark_client(api: FakeFeishuAPI, app_id: str, secret: str) -> Any:
    import lark_oapi as lark

    return (
        lark.Client.builder()
        .app_id(app_id)
        .app_secret(secret)
        .domain(api.base_url)
        .log_level(lark.LogLevel.CRITICAL)
        .build()
    )


# ---- tokens ---------------------------------------------------------------------------------------------------


def test_token_reused_until_30_minutes_left_then_renewed_with_both_valid(api: FakeFeishuAPI) -> None:
    first = call(api, "POST", TOKEN_PATH, {"app_id": APP_ID, "app_secret": APP_SECRET}).json()
    assert first["code"] == 0 and first["msg"] == "ok" and first["expire"] == 7200
    assert first["tenant_access_token"].startswith("t-")
    api.advance(3600)
    again = call(api, "POST", TOKEN_PATH, {"app_id": APP_ID, "app_secret": APP_SECRET}).json()
    assert (
        again["tenant_access_token"] == first["tenant_access_token"] and 3590 <= again["expire"] <= 3600
    )  # real clock: a loaded machine loses a second
    api.advance(1900)  # 1700 s left (< 30 min): a new token, the old one keeps working
    renewed = call(api, "POST", TOKEN_PATH, {"app_id": APP_ID, "app_secret": APP_SECRET}).json()
    assert renewed["tenant_access_token"] != first["tenant_access_token"] and renewed["expire"] == 7200
    assert set(api.valid_tokens()) == {first["tenant_access_token"], renewed["tenant_access_token"]}
    for tok in (first["tenant_access_token"], renewed["tenant_access_token"]):
        assert call(api, "GET", "/open-apis/bot/v3/info", token=tok).json()["code"] == 0
    api.advance(1700)
    stale = call(api, "GET", "/open-apis/bot/v3/info", token=first["tenant_access_token"])
    assert stale.status_code == 400 and stale.json()["code"] == 99991663
    assert api.token_fetches == {APP_ID: 3} and api.tokens_issued == {APP_ID: 2}


def test_token_errors_and_invalid_tokens(api: FakeFeishuAPI) -> None:
    wrong = call(api, "POST", TOKEN_PATH, {"app_id": APP_ID, "app_secret": "nope"})
    assert wrong.status_code == 400 and wrong.json() == {"code": 10014, "msg": "app secret invalid"}
    unknown = call(api, "POST", TOKEN_PATH, {"app_id": "cli_unknown", "app_secret": APP_SECRET})
    assert unknown.json()["code"] == 10003
    assert api.token_fetches == {}

    missing = send_text(api, "", "oc_1", "hi")
    assert missing.status_code == 400 and missing.json()["code"] == 99991661
    bogus = send_text(api, "t-bogus", "oc_1", "hi")
    assert bogus.status_code == 400
    assert bogus.json() == {
        "code": 99991663,
        "msg": "Invalid access token for authorization. Please make a request with token attached.",
    }
    tok = get_token(api)
    assert send_text(api, tok, "oc_1", "hi").json()["code"] == 0
    api.expire_all_tokens()
    assert send_text(api, tok, "oc_1", "hi").json()["code"] == 99991663
    fresh = get_token(api)
    assert fresh != tok and send_text(api, fresh, "oc_1", "again").json()["code"] == 0
    assert api.texts("oc_1") == ["hi", "again"]
    assert api.requests_to(MESSAGES)[1].app_id is None and api.requests_to(MESSAGES)[2].app_id == APP_ID


def test_several_apps_have_their_own_bot_and_cards() -> None:
    with FakeFeishuAPI({"cli_a": "sa", "cli_b": "sb"}, clock="manual") as api:
        api.add_app("cli_c", "sc", app_name="Gamma", bot_open_id="ou_gamma")
        tok_a, tok_b, tok_c = (
            get_token(api, "cli_a", "sa"),
            get_token(api, "cli_b", "sb"),
            get_token(api, "cli_c", "sc"),
        )
        bots = [call(api, "GET", "/open-apis/bot/v3/info", token=t).json() for t in (tok_a, tok_b, tok_c)]
        assert all(b["code"] == 0 and b["bot"]["ip_white_list"] == [] for b in bots)
        assert bots[2]["bot"]["app_name"] == "Gamma" and bots[2]["bot"]["open_id"] == "ou_gamma"
        assert bots[0]["bot"]["open_id"] == api.bot_open_id("cli_a") != bots[1]["bot"]["open_id"]
        card_id = create_card(api, tok_a)
        assert stream(api, tok_b, card_id, "steal", 1)["code"] == 300311
        assert api.token_fetches == {"cli_a": 1, "cli_b": 1, "cli_c": 1}


# ---- lark-oapi interop ----------------------------------------------------------------------------------------


async def test_sdk_send_reply_and_stale_token(lark_app: tuple[str, str]) -> None:
    from lark_oapi.api.im.v1 import (
        CreateMessageRequest,
        CreateMessageRequestBody,
        ReplyMessageRequest,
        ReplyMessageRequestBody,
    )
    from lark_oapi.core.token import TokenManager

    app_id, secret = lark_app
    async with FakeFeishuAPI({app_id: secret}) as api:
        client = lark_client(api, app_id, secret)
        body = CreateMessageRequestBody.builder().receive_id(USER.open_id).msg_type("text")
        body = body.content(json.dumps({"text": "pong"})).uuid("once-1").build()
        req = CreateMessageRequest.builder().receive_id_type("open_id").request_body(body).build()
        resp = await client.im.v1.message.acreate(req)
        assert resp.success(), resp.msg
        assert resp.data.chat_id == api.p2p_chat_id(USER.open_id) and resp.data.sender.id == app_id
        again = await client.im.v1.message.acreate(req)  # same uuid: the original message again
        assert again.data.message_id == resp.data.message_id and len(api.visible_messages()) == 1

        reply_body = ReplyMessageRequestBody.builder().msg_type("text").content(json.dumps({"text": "in thread"}))
        reply = ReplyMessageRequest.builder().message_id(resp.data.message_id)
        reply = reply.request_body(reply_body.reply_in_thread(True).build()).build()
        replied = await client.im.v1.message.areply(reply)
        assert replied.success() and replied.data.parent_id == resp.data.message_id
        assert replied.data.root_id == resp.data.message_id and replied.data.thread_id.startswith("omt_")
        assert api.token_fetches == {app_id: 1}

        api.expire_all_tokens()  # the SDK keeps using its cached token: the caller must handle 99991663
        stale = await client.im.v1.message.acreate(req)
        assert stale.code == 99991663 and stale.raw.status_code == 400
        TokenManager.cache.cache.clear()  # type: ignore[attr-defined]
        assert (await client.im.v1.message.acreate(req)).success()
        assert api.token_fetches == {app_id: 2} and api.texts() == ["pong", "in thread"]


async def test_sdk_streams_a_cardkit_card(lark_app: tuple[str, str]) -> None:
    from lark_oapi.api.cardkit.v1 import (
        ContentCardElementRequest,
        ContentCardElementRequestBody,
        CreateCardRequest,
        CreateCardRequestBody,
        SettingsCardRequest,
        SettingsCardRequestBody,
    )
    from lark_oapi.api.im.v1 import CreateMessageRequest, CreateMessageRequestBody

    app_id, secret = lark_app
    async with FakeFeishuAPI({app_id: secret}) as api:
        client = lark_client(api, app_id, secret)
        created = await client.cardkit.v1.card.acreate(
            CreateCardRequest.builder()
            .request_body(CreateCardRequestBody.builder().type("card_json").data(streaming_card()).build())
            .build()
        )
        assert created.success(), created.msg
        card_id = created.data.card_id
        ref = json.dumps({"type": "card", "data": {"card_id": card_id}})
        send = CreateMessageRequestBody.builder().receive_id("oc_group").msg_type("interactive").content(ref).build()
        sent = await client.im.v1.message.acreate(
            CreateMessageRequest.builder().receive_id_type("chat_id").request_body(send).build()
        )
        assert sent.success(), sent.msg

        async def content(text_: str, seq: int) -> Any:
            body = ContentCardElementRequestBody.builder().content(text_).sequence(seq).build()
            request = ContentCardElementRequest.builder().card_id(card_id).element_id("md").request_body(body)
            return await client.cardkit.v1.card_element.acontent(request.build())

        for seq, piece in enumerate(["Hel", "Hello", "Hello, world"], start=1):
            assert (await content(piece, seq)).success()
            assert api.message(sent.data.message_id).text == piece
        rejected = await content("late", 2)
        assert rejected.code == 300317
        settings = SettingsCardRequestBody.builder().settings(json.dumps({"config": {"streaming_mode": False}}))
        done = await client.cardkit.v1.card.asettings(
            SettingsCardRequest.builder().card_id(card_id).request_body(settings.sequence(4).build()).build()
        )
        assert done.success()
        shown = api.visible_messages("oc_group")
        assert [(m.text, m.finalized, m.card_id) for m in shown] == [("Hello, world", True, card_id)]
        assert [(u.op, u.sequence, u.accepted) for u in api.card_updates(card_id)] == [
            ("create", None, True),
            ("content", 1, True),
            ("content", 2, True),
            ("content", 3, True),
            ("content", 2, False),
            ("settings", 4, True),
        ]


async def test_sdk_downloads_a_message_resource(lark_app: tuple[str, str]) -> None:
    from lark_oapi.api.im.v1 import GetMessageResourceRequest

    app_id, secret = lark_app
    async with FakeFeishuAPI({app_id: secret}) as api:
        ev = file_event("file_v3_key", "年报.pdf")
        api.add_event(ev)
        message_id = ev["event"]["message"]["message_id"]
        api.add_resource(
            message_id, "file_v3_key", b"%PDF-1.7 fake", content_type="application/pdf", filename="年报.pdf"
        )
        client = lark_client(api, app_id, secret)
        req = GetMessageResourceRequest.builder().message_id(message_id).file_key("file_v3_key").type("file").build()
        resp = await client.im.v1.message_resource.aget(req)
        assert resp.success() and resp.file.read() == b"%PDF-1.7 fake"
        # lark-oapi 1.7.5's async path looks "Content-Disposition" up case-sensitively in httpx's lower-cased
        # header dict, so only the sync call (requests) recovers the file name
        sync = await asyncio.to_thread(client.im.v1.message_resource.get, req)
        assert sync.file.read() == b"%PDF-1.7 fake" and sync.file_name == "年报.pdf"
        assert resp.raw.headers["content-type"] == "application/pdf"
        unknown = GetMessageResourceRequest.builder().message_id(message_id).file_key("nope").type("file").build()
        missing = await client.im.v1.message_resource.aget(unknown)
        assert missing.raw.status_code == 400 and missing.code is None  # same case-sensitivity issue
        missing = await asyncio.to_thread(client.im.v1.message_resource.get, unknown)
        assert missing.code == 234003 and missing.msg == "File not in message."


# ---- messages -------------------------------------------------------------------------------------------------


def test_uuid_dedupes_within_an_hour_per_app(api: FakeFeishuAPI, token: str) -> None:
    first = send_text(api, token, "oc_1", "once", uuid="req-1").json()["data"]
    again = send_text(api, token, "oc_1", "once", uuid="req-1").json()
    assert again["code"] == 0 and again["data"]["message_id"] == first["message_id"]
    changed = send_text(api, token, "oc_1", "different text", uuid="req-1").json()
    assert changed["data"]["message_id"] == first["message_id"]
    assert api.texts() == ["once"]
    hits = api.dedup_hits
    assert [(h.uuid, h.message_id, h.same_payload) for h in hits] == [
        ("req-1", first["message_id"], True),
        ("req-1", first["message_id"], False),
    ]
    api.add_app("cli_other", "so")
    other = send_text(api, get_token(api, "cli_other", "so"), "oc_1", "once", uuid="req-1").json()["data"]
    assert other["message_id"] != first["message_id"]
    api.advance(3601)
    later = send_text(api, token, "oc_1", "once", uuid="req-1").json()["data"]
    assert later["message_id"] != first["message_id"] and len(api.visible_messages("oc_1")) == 3
    too_long = send_text(api, token, "oc_1", "x", uuid="u" * 51).json()
    assert too_long["code"] == 230001


def test_content_must_match_msg_type_and_size_limits(api: FakeFeishuAPI, token: str) -> None:
    def send(msg_type: str, content: Any) -> Any:
        body = {"receive_id": "oc_1", "msg_type": msg_type, "content": content}
        return call(api, "POST", f"{MESSAGES}?receive_id_type=chat_id", body, token=token)

    assert send("text", {"text": "an object, not a string"}).json()["code"] == 230001
    assert send("text", "not json").json()["code"] == 230001
    assert send("text", json.dumps({"body": "x"})).json()["code"] == 230001
    assert send("post", json.dumps({"text": "x"})).json()["code"] == 230001
    assert send("image", json.dumps({})).json()["code"] == 230001
    assert send("interactive", json.dumps({"foo": 1})).json()["code"] == 230099
    assert send("interactive", json.dumps({"type": "card", "data": {"card_id": "404"}})).json()["code"] == 230099
    bad_type = call(api, "POST", f"{MESSAGES}?receive_id_type=phone", {"receive_id": "x"}, token=token)
    assert bad_type.json()["code"] == 99992402

    assert send("text", json.dumps({"text": "a" * 140_000})).json()["code"] == 0
    too_big = send("text", json.dumps({"text": "a" * 160_000}))
    assert too_big.status_code == 400 and too_big.json()["code"] == 230025
    post = {"zh_cn": {"title": "T", "content": [[{"tag": "text", "text": "b" * 31_000}]]}}
    assert send("post", json.dumps(post)).json()["code"] == 230025
    post["zh_cn"]["content"] = [[text("see "), link("docs", "https://x.test")], [at(USER)]]
    assert send("post", json.dumps(post)).json()["code"] == 0
    card = {"config": {"update_multi": True}, "elements": [{"tag": "div", "text": {"tag": "lark_md", "content": "v1"}}]}
    assert send("interactive", json.dumps(card)).json()["code"] == 0
    assert api.texts("oc_1")[1:] == ["T\nsee docs\n@Alice", "v1"]


def test_per_chat_limit_is_5_per_second_shared_by_all_apps(api: FakeFeishuAPI, token: str) -> None:
    api.add_app("cli_b", "sb")
    other = get_token(api, "cli_b", "sb")
    for i in range(5):
        assert send_text(api, token if i % 2 else other, "oc_busy", f"m{i}").json()["code"] == 0
    limited = send_text(api, token, "oc_busy", "m5")
    assert limited.status_code == 400 and limited.json()["code"] == 230020
    assert "x-ogw-ratelimit-reset" not in limited.headers
    assert send_text(api, token, "oc_quiet", "elsewhere").json()["code"] == 0
    api.advance(1.0)
    assert send_text(api, token, "oc_busy", "m5").json()["code"] == 0
    api.limits.chat_limit_code = 99991400
    for i in range(4):
        send_text(api, token, "oc_busy", f"n{i}")
    gateway_style = send_text(api, token, "oc_busy", "n4")
    assert gateway_style.status_code == 429 and gateway_style.json()["code"] == 99991400
    assert gateway_style.headers["x-ogw-ratelimit-limit"] == "5"
    assert gateway_style.headers["x-ogw-ratelimit-reset"] == "1"


def test_app_limit_answers_429_with_ogw_headers() -> None:
    limits = Limits(app_qps=3, app_qpm=5, chat_qps=None)
    with FakeFeishuAPI(clock="manual", limits=limits) as api:
        tok = get_token(api)
        codes = [send_text(api, tok, f"oc_{i}", "x").status_code for i in range(4)]
        assert codes == [200, 200, 200, 429]
        resp = send_text(api, tok, "oc_9", "x")
        assert resp.json() == {"code": 99991400, "msg": "request trigger frequency limit"}
        assert resp.headers["x-ogw-ratelimit-limit"] == "3" and resp.headers["x-ogw-ratelimit-reset"] == "1"
        assert call(api, "GET", "/open-apis/bot/v3/info", token=tok).status_code == 200  # other API, own bucket
        api.advance(1.0)
        assert [send_text(api, tok, "oc_1", "y").status_code for _ in range(3)] == [200, 200, 429]
        per_minute = send_text(api, tok, "oc_1", "z")
        assert per_minute.headers["x-ogw-ratelimit-limit"] == "5"
        assert 50 <= int(per_minute.headers["x-ogw-ratelimit-reset"]) <= 60


def test_patch_card_message_rules(api: FakeFeishuAPI, token: str) -> None:
    shared = {"config": {"update_multi": True}, "elements": [{"tag": "markdown", "content": "step 1"}]}
    body = {"receive_id": "oc_1", "msg_type": "interactive", "content": json.dumps(shared)}
    message_id = call(api, "POST", f"{MESSAGES}?receive_id_type=chat_id", body, token=token).json()["data"][
        "message_id"
    ]

    def patch(card: dict[str, Any], mid: str = message_id) -> Any:
        return call(api, "PATCH", f"{MESSAGES}/{mid}", {"content": json.dumps(card)}, token=token).json()

    shared["elements"][0]["content"] = "step 2"
    assert patch(shared)["code"] == 0 and api.message(message_id).text == "step 2"
    assert patch({"elements": [{"tag": "markdown", "content": "not shared"}]})["code"] == 230099
    for _ in range(4):
        assert patch(shared)["code"] == 0
    assert patch(shared)["code"] == 230020  # 5 QPS per message
    text_id = send_text(api, token, "oc_1", "plain").json()["data"]["message_id"]
    assert patch(shared, text_id)["code"] == 230054
    api.advance(14 * 24 * 3600 + 1)
    token = get_token(api)  # the old one expired long ago
    assert patch(shared)["code"] == 230031


def test_edit_text_message_up_to_20_times(api: FakeFeishuAPI, token: str) -> None:
    message_id = send_text(api, token, "oc_1", "v0").json()["data"]["message_id"]
    for i in range(1, 21):
        body = {"msg_type": "text", "content": json.dumps({"text": f"v{i}"})}
        resp = call(api, "PUT", f"{MESSAGES}/{message_id}", body, token=token).json()
        assert resp["code"] == 0 and resp["data"]["updated"] is True
    assert api.message(message_id).text == "v20" and api.message(message_id).edits == 20
    body = {"msg_type": "text", "content": json.dumps({"text": "v21"})}
    assert call(api, "PUT", f"{MESSAGES}/{message_id}", body, token=token).json()["code"] == 230072
    card_id = create_card(api, token)
    ref = json.dumps({"type": "card", "data": {"card_id": card_id}})
    body = {"receive_id": "oc_1", "msg_type": "interactive", "content": ref}
    card_msg = call(api, "POST", f"{MESSAGES}?receive_id_type=chat_id", body, token=token).json()["data"]["message_id"]
    edit = {"msg_type": "text", "content": json.dumps({"text": "x"})}
    assert call(api, "PUT", f"{MESSAGES}/{card_msg}", edit, token=token).json()["code"] == 230054


# ---- CardKit --------------------------------------------------------------------------------------------------


def test_card_streaming_finalize_and_late_updates(api: FakeFeishuAPI, token: str) -> None:
    card_id = create_card(api, token)
    ref = json.dumps({"type": "card", "data": {"card_id": card_id}})
    body = {"receive_id": USER.open_id, "msg_type": "interactive", "content": ref}
    sent = call(api, "POST", f"{MESSAGES}?receive_id_type=open_id", body, token=token).json()
    assert sent["code"] == 0
    again = call(api, "POST", f"{MESSAGES}?receive_id_type=open_id", body, token=token).json()
    assert again["code"] == 230099  # a card entity is sent once

    assert stream(api, token, card_id, "Hi", 1)["code"] == 0
    assert stream(api, token, card_id, "Hi there", 1)["code"] == 300317
    assert stream(api, token, card_id, "Hi there", 5)["code"] == 0  # gaps are fine, only order matters
    shown = api.visible_messages(api.p2p_chat_id(USER.open_id))
    assert [(m.text, m.finalized) for m in shown] == [("Hi there", False)]
    assert finalize(api, token, card_id, 6)["code"] == 0
    late = stream(api, token, card_id, "Hi there!", 7)
    assert late["code"] == 300309
    assert finalize(api, token, card_id, 8)["code"] == 0  # a second finalize is accepted, and counted
    view = api.card(card_id)
    assert view.finalized and view.finalize_count == 2 and view.text == "Hi there" and view.last_sequence == 8
    assert view.message_id == sent["data"]["message_id"] and view.element_texts == {"md": "Hi there"}
    rejected = [(u.op, u.code) for u in view.updates if not u.accepted]
    assert rejected == [("content", 300317), ("content", 300309)]
    assert api.message(view.message_id).finalized is True


def test_card_validation_errors(api: FakeFeishuAPI, token: str) -> None:
    def create(data: Any, kind: str = "card_json") -> int:
        return int(call(api, "POST", CARDS, {"type": kind, "data": data}, token=token).json()["code"])

    assert create(json.dumps({"config": {}, "elements": []})) == 300303  # JSON 1.0
    assert create(json.dumps({"schema": "2.0", "config": {"update_multi": False}})) == 300302
    dup = {"tag": "markdown", "content": "", "element_id": "md"}
    assert create(streaming_card(dup, dup)) == 300301
    assert create("{not json") == 200220
    assert create("") == 300307
    assert create(streaming_card({"tag": "markdown", "content": "x" * 31_000})) == 200860
    assert create("{}", kind="weird") == 10002

    image = {"tag": "img", "img_key": "img_v3_x", "element_id": "pic"}
    card_id = create_card(api, token, streaming_card({"tag": "markdown", "content": "", "element_id": "md"}, image))
    put = f"{CARDS}/{card_id}/elements"
    assert call(api, "PUT", f"{put}/pic/content", {"content": "x", "sequence": 1}, token=token).json()["code"] == 300310
    assert (
        call(api, "PUT", f"{put}/nope/content", {"content": "x", "sequence": 1}, token=token).json()["code"] == 300313
    )
    assert call(api, "PUT", f"{put}/md/content", {"content": "", "sequence": 1}, token=token).json()["code"] == 10002
    assert call(api, "PUT", f"{put}/md/content", {"content": "x", "sequence": 0}, token=token).json()["code"] == 10002
    assert (
        call(api, "PUT", f"{CARDS}/123/elements/md/content", {"content": "x", "sequence": 1}, token=token).json()[
            "code"
        ]
        == 200740
    )

    assert stream(api, token, card_id, "a", 1, uuid="op-1")["code"] == 0
    replay = stream(api, token, card_id, "a", 1, uuid="op-1")  # a retry of the same operation
    assert replay["code"] == 0 and api.card_updates(card_id)[-1].dedup
    assert stream(api, token, card_id, "b", 2, uuid="op-1")["code"] == 200770
    static = create_card(api, token, streaming_card(streaming=False))
    assert stream(api, token, static, "x", 1)["code"] == 300309


def test_card_entity_allows_10_ops_per_second(api: FakeFeishuAPI, token: str) -> None:
    card_id = create_card(api, token)
    codes = [stream(api, token, card_id, "x" * (i + 1), i + 1)["code"] for i in range(11)]
    assert codes == [0] * 10 + [99991400]
    limited = call(api, "PUT", f"{CARDS}/{card_id}/elements/md/content", {"content": "y", "sequence": 20}, token=token)
    assert limited.status_code == 429 and limited.headers["x-ogw-ratelimit-limit"] == "10"
    api.advance(1.0)
    assert stream(api, token, card_id, "later", 21)["code"] == 0
    assert api.card(card_id).max_updates_in_window(1.0) == 10


def test_streaming_mode_times_out_after_10_minutes(api: FakeFeishuAPI, token: str) -> None:
    card_id = create_card(api, token)
    assert stream(api, token, card_id, "a", 1)["code"] == 0
    api.advance(601)
    assert stream(api, token, card_id, "ab", 2)["code"] == 200850
    view = api.card(card_id)
    assert view.closed_by_timeout and view.finalized and view.finalize_count == 0
    assert [u.op for u in view.updates][-2:] == ["timeout", "content"]
    reopen = {"settings": json.dumps({"config": {"streaming_mode": True}}), "sequence": 3}
    assert call(api, "PATCH", f"{CARDS}/{card_id}/settings", reopen, token=token).json()["code"] == 0
    assert stream(api, token, card_id, "ab", 4)["code"] == 0


def test_full_card_update_replaces_the_card_and_can_finalize(api: FakeFeishuAPI, token: str) -> None:
    card_id = create_card(api, token)
    assert stream(api, token, card_id, "draft", 1)["code"] == 0
    final = {
        "schema": "2.0",
        "config": {"update_multi": True},
        "body": {"elements": [{"tag": "markdown", "content": "final"}]},
    }
    body = {"card": {"type": "card_json", "data": json.dumps(final)}, "sequence": 2}
    assert call(api, "PUT", f"{CARDS}/{card_id}", body, token=token).json()["code"] == 0
    view = api.card(card_id)
    assert view.text == "final" and view.finalized and view.finalize_count == 1
    body["sequence"] = 2
    assert call(api, "PUT", f"{CARDS}/{card_id}", body, token=token).json()["code"] == 300317


# ---- resources, injection, waiting ----------------------------------------------------------------------------


def test_resource_download_headers_and_errors(api: FakeFeishuAPI, token: str) -> None:
    ev = image_event("img_v3_abc")
    api.add_event(ev)
    mid = ev["event"]["message"]["message_id"]
    api.add_resource(mid, "img_v3_abc", b"\x89PNG fake", kind="image", content_type="image/png")
    ok = call(api, "GET", f"{MESSAGES}/{mid}/resources/img_v3_abc?type=image", token=token)
    assert ok.status_code == 200 and ok.content == b"\x89PNG fake" and ok.headers["Content-Type"] == "image/png"
    assert ok.headers["Content-Disposition"].startswith('attachment; filename="img_v3_abc"')
    wrong_type = call(api, "GET", f"{MESSAGES}/{mid}/resources/img_v3_abc?type=file", token=token)
    assert wrong_type.json()["code"] == 234001
    assert call(api, "GET", f"{MESSAGES}/{mid}/resources/img_v3_abc", token=token).json()["code"] == 234001
    other = call(api, "GET", f"{MESSAGES}/om_other/resources/img_v3_abc?type=image", token=token)
    assert other.status_code == 400 and other.json()["code"] == 234003


def test_failure_injection_delay_and_unknown_routes(api: FakeFeishuAPI, token: str) -> None:
    api.fail_next(r"/im/v1/messages$", http_status=503)
    down = send_text(api, token, "oc_1", "a")
    assert down.status_code == 503 and down.headers["Content-Type"].startswith("text/plain")
    assert api.texts() == [] and api.requests[-1].injected
    api.fail_next(r"/im/v1/messages$", code=230002, msg="The bot can not be outside the group.", times=2)
    assert [send_text(api, token, "oc_1", "b").json()["code"] for _ in range(3)] == [230002, 230002, 0]
    api.fail_next(r"/im/v1/messages$", http_status=500, deliver=True)  # sent, but the answer is lost
    assert send_text(api, token, "oc_1", "c", uuid="u-c").status_code == 500
    retry = send_text(api, token, "oc_1", "c", uuid="u-c").json()
    assert retry["code"] == 0 and api.texts("oc_1") == ["b", "c"] and len(api.dedup_hits) == 1
    api.rate_limit_next(r"/cardkit/", reset=7)
    limited = call(api, "POST", CARDS, {"type": "card_json", "data": streaming_card()}, token=token)
    assert limited.status_code == 429 and limited.headers["x-ogw-ratelimit-reset"] == "7"
    api.delay_next(r"/bot/v3/info", 0.3, method="GET")
    started = time.monotonic()
    assert call(api, "GET", "/open-apis/bot/v3/info", token=token).json()["code"] == 0
    assert time.monotonic() - started >= 0.3
    missing = call(api, "GET", "/open-apis/nothing/here", token=token)
    assert missing.status_code == 404 and missing.json()["code"] == 99991201


async def test_async_context_manager_and_wait_helpers() -> None:
    async with FakeFeishuAPI() as api:
        tok = await asyncio.to_thread(get_token, api)

        def later() -> None:
            time.sleep(0.1)
            send_text(api, tok, "oc_1", "eventually")

        threading.Thread(target=later, daemon=True).start()
        shown = await api.async_wait_messages(1, "oc_1", seconds=5)
        assert shown[0].text == "eventually"
        card_id = await asyncio.to_thread(create_card, api, tok)
        await asyncio.to_thread(finalize, api, tok, card_id, 1)
        assert (await api.async_wait_card_finalized(card_id, seconds=2)).finalize_count == 1
        with pytest.raises(TimeoutError):
            api.wait_messages(2, "oc_1", timeout=0.1)


# ---- event builders -------------------------------------------------------------------------------------------


def test_event_builders_parse_with_the_sdk_and_register_chats(api: FakeFeishuAPI, token: str) -> None:
    import lark_oapi as lark
    from lark_oapi.api.im.v1 import P2ImMessageReceiveV1

    bob = Person("ou_bob", "u_bob", "on_bob", "Bob")
    root = "om_root_1"
    events = [
        text_event("hello"),
        post_event("Links", [[text("read "), link("this", "https://example.test/a")]]),
        image_event(),
        file_event(),
        audio_event(duration_ms=1500),
        group_mention_event("summarise", bot_open_id=api.bot_open_id(), also_mention=[bob]),
        message_event(
            "text",
            {"text": "in topic"},
            chat_id="oc_topic_group",
            chat_type="group",
            root_id=root,
            parent_id=root,
            thread_id="omt_1",
        ),
    ]
    parsed = [lark.JSON.unmarshal(json.dumps(ev), P2ImMessageReceiveV1) for ev in events]
    assert all(p.header.event_type == "im.message.receive_v1" and p.schema == "2.0" for p in parsed)
    assert [p.event.message.message_type for p in parsed] == ["text", "post", "image", "file", "audio", "text", "text"]
    post = json.loads(parsed[1].event.message.content)
    assert post["content"][0][1] == {"tag": "a", "text": "this", "href": "https://example.test/a"}
    assert json.loads(parsed[4].event.message.content) == {"file_key": "file_v3_fake_audio_0001", "duration": 1500}
    group = parsed[5].event.message
    assert json.loads(group.content) == {"text": "@_user_1 summarise @_user_2"} and group.chat_type == "group"
    assert [(m.key, m.id.open_id) for m in group.mentions] == [("@_user_1", api.bot_open_id()), ("@_user_2", "ou_bob")]
    assert parsed[6].event.message.thread_id == "omt_1" and parsed[6].event.message.root_id == root
    assert parsed[0].event.sender.sender_id.open_id == USER.open_id
    assert len({p.header.event_id for p in parsed}) == len(parsed)

    for ev in events:
        api.add_event(ev)
    replied = call(
        api,
        "POST",
        f"{MESSAGES}/{events[6]['event']['message']['message_id']}/reply",
        {"msg_type": "text", "content": json.dumps({"text": "answer"})},
        token=token,
    ).json()["data"]
    assert replied["thread_id"] == "omt_1" and replied["root_id"] == root
    p2p_chat = events[0]["event"]["message"]["chat_id"]
    assert api.p2p_chat_id(USER.open_id) == p2p_chat  # sends by open_id land in the user's registered chat
    assert send_text(api, token, USER.open_id, "dm", id_type="open_id").json()["data"]["chat_id"] == p2p_chat
    seen = [m.text for m in api.visible_messages(p2p_chat, include_inbound=True)]
    assert seen == ["hello", "Links\nread this", "[image:img_v3_fake_0001]", "[file:file_v3_fake_0001]", *seen[4:]]
    assert seen[-1] == "dm" and api.texts(p2p_chat) == ["dm"] and api.texts("oc_topic_group") == ["answer"]
    unknown = call(api, "POST", f"{MESSAGES}/om_missing/reply", {"msg_type": "text", "content": "{}"}, token=token)
    assert unknown.json()["code"] == 230001
