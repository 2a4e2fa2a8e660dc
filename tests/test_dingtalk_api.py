"""DingTalkApi against the DingTalk fake over real sockets: tokens, sends, errors, downloads, AI cards."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from adapters.dingtalk.api import DingTalkApi
from adapters.dingtalk.convert import markdown_message, parse_reply_ref, to_inbound
from adapters.dingtalk.errors import SessionWebhookGone, classify
from adapters.dingtalk.wire import parse_bot_message
from gateway.errors import AuthExpired, PermanentSendError, RateLimited, SendError, TransientSendError
from tests.fakes.dingtalk_api import APP_KEY, APP_SECRET, FakeDingTalkAPI

GROUP_SEND = r"/v1.0/robot/groupMessages/send$"
BATCH_SEND = r"/v1.0/robot/oToMessages/batchSend$"
TOKEN = r"/v1.0/oauth2/accessToken$"
TEXT = ("sampleText", {"content": "hi"})


@pytest.fixture
def fake() -> Iterator[FakeDingTalkAPI]:
    with FakeDingTalkAPI() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def api(fake: FakeDingTalkAPI, http: aiohttp.ClientSession, clock: Clock) -> DingTalkApi:
    return DingTalkApi(lambda: http, fake.base_url, APP_KEY, APP_SECRET, timeout=2.0, clock=clock)


async def group_send(api: DingTalkApi, cid: str = "cidG==") -> str:
    return await api.group_send(APP_KEY, cid, *TEXT)


# ---- tokens ------------------------------------------------------------------------------------------------


async def test_token_is_cached_and_sent_in_the_dingtalk_header(fake: FakeDingTalkAPI, api: DingTalkApi) -> None:
    await group_send(api)
    await group_send(api)
    assert fake.token_issues == 1
    token_body = fake.requests_to(TOKEN)[0].body
    assert token_body == {"appKey": APP_KEY, "appSecret": APP_SECRET}
    sends = fake.requests_to(GROUP_SEND)
    assert len(sends) == 2 and all(r.headers["x-acs-dingtalk-access-token"].startswith("dt-") for r in sends)
    assert all(r.status == 200 for r in sends)


async def test_token_is_refreshed_before_it_expires(fake: FakeDingTalkAPI, api: DingTalkApi, clock: Clock) -> None:
    await group_send(api)
    clock.t += 7200 - 301  # still outside the 300 s refresh margin
    await group_send(api)
    assert fake.token_issues == 1
    clock.t += 2
    await group_send(api)
    assert fake.token_issues == 2


async def test_twenty_concurrent_calls_fetch_one_token(fake: FakeDingTalkAPI, api: DingTalkApi) -> None:
    fake.delay_next(TOKEN, 0.2)
    await asyncio.gather(*(group_send(api, f"cid{i}") for i in range(20)))
    assert fake.token_issues == 1
    assert len(fake.robot_messages) == 20


async def test_rejected_token_is_refreshed_once_for_all_callers(fake: FakeDingTalkAPI, api: DingTalkApi) -> None:
    await group_send(api)
    fake.expire_tokens()
    await asyncio.gather(*(group_send(api, f"cid{i}") for i in range(20)))
    assert fake.token_issues == 2
    assert len(fake.robot_messages) == 21
    rejected = [r for r in fake.requests_to(GROUP_SEND) if r.status == 400]
    assert 1 <= len(rejected) <= 20 and all(
        r.response and r.response["code"] == "InvalidAuthentication" for r in rejected
    )


@pytest.mark.parametrize("status", [400, 401])
async def test_a_token_rejected_twice_is_retried_only_once(
    fake: FakeDingTalkAPI, api: DingTalkApi, status: int
) -> None:
    fake.error_next(GROUP_SEND, status=status, code="InvalidAuthentication", message="不合法的access_token", times=5)
    with pytest.raises(AuthExpired):
        await group_send(api)
    assert len(fake.requests_to(GROUP_SEND)) == 2
    assert fake.token_issues == 2


async def test_wrong_secret_is_permanent_and_probe_reports_it(
    fake: FakeDingTalkAPI, http: aiohttp.ClientSession
) -> None:
    bad = DingTalkApi(lambda: http, fake.base_url, APP_KEY, "wrong", timeout=2.0)
    with pytest.raises(PermanentSendError, match="invalidClientSecret"):
        await bad.probe()
    with pytest.raises(PermanentSendError):
        await bad.group_send(APP_KEY, "cid", *TEXT)
    assert fake.token_issues == 0 and fake.robot_messages == []


async def test_probe_fetches_a_token(fake: FakeDingTalkAPI, api: DingTalkApi) -> None:
    await api.probe()
    assert fake.token_issues == 1


async def test_missing_token_header_is_refused_by_the_fake(fake: FakeDingTalkAPI, http: aiohttp.ClientSession) -> None:
    async with http.post(fake.base_url + "/v1.0/robot/groupMessages/send", json={}) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "InvalidAuthentication"


# ---- robot sends -------------------------------------------------------------------------------------------


async def test_batch_send_splits_at_20_and_reports_failed_users(fake: FakeDingTalkAPI, api: DingTalkApi) -> None:
    users = [f"u{i}" for i in range(45)]
    fake.state.invalid_users.add("u3")
    fake.flow_control("u30")
    result = await api.batch_send(APP_KEY, [*users, "u1", ""], "sampleMarkdown", {"title": "t", "text": "**x**"})
    calls = fake.requests_to(BATCH_SEND)
    assert [len(r.body["userIds"]) for r in calls] == [20, 20, 5]
    assert all(r.body["msgParam"] == '{"title": "t", "text": "**x**"}' for r in calls)
    assert result.invalid == ("u3",) and result.flow_controlled == ("u30",) and result.unsent == ()
    assert set(result.failed) == {"u3", "u30"} and len(result.process_query_keys) == 3
    delivered = [u for m in fake.robot_messages for u in m.users]
    assert sorted(delivered) == sorted(set(users) - {"u3", "u30"})


async def test_batch_send_reports_unsent_chunks_after_a_partial_failure(
    fake: FakeDingTalkAPI, api: DingTalkApi
) -> None:
    fake.error_next(BATCH_SEND, status=503, code="ServiceUnavailable", after=1)
    result = await api.batch_send(APP_KEY, [f"u{i}" for i in range(25)], *TEXT)
    assert result.unsent == tuple(f"u{i}" for i in range(20, 25))
    assert isinstance(result.error, TransientSendError)
    fake.error_next(BATCH_SEND, status=503, code="ServiceUnavailable")
    with pytest.raises(TransientSendError):  # nothing delivered: a plain failure
        await api.batch_send(APP_KEY, ["u1"], *TEXT)


async def test_group_send_and_its_validation(fake: FakeDingTalkAPI, api: DingTalkApi) -> None:
    key = await api.group_send(APP_KEY, "cidG==", "sampleMarkdown", {"title": "周报", "text": "## 周报"})
    (message,) = fake.robot_messages
    assert message.process_query_key == key and message.conversation_id == "cidG=="
    assert message.msg_param == {"title": "周报", "text": "## 周报"}
    with pytest.raises(PermanentSendError) as info:
        await api.group_send("not-our-robot", "cidG==", *TEXT)
    assert info.value.code == "invalidParameter.robotCode"
    with pytest.raises(PermanentSendError, match="sampleMarkdown needs"):
        await api.group_send(APP_KEY, "cidG==", "sampleMarkdown", {"text": "no title"})


@pytest.mark.parametrize(
    ("inject", "kind", "retry_after"),
    [
        ({"status": 500, "code": "InternalError"}, TransientSendError, None),
        ({"status": 429, "code": "Throttling.User", "headers": {"Retry-After": "3"}}, RateLimited, 3.0),
        ({"status": 403, "code": "Forbidden.AccessDenied.QpsLimitForApi"}, RateLimited, 1.0),
        ({"status": 400, "code": "invalidParameter.userIds"}, PermanentSendError, None),
    ],
)
async def test_openapi_errors_are_classified(
    fake: FakeDingTalkAPI, api: DingTalkApi, inject: dict[str, Any], kind: type[SendError], retry_after: float | None
) -> None:
    fake.error_next(GROUP_SEND, **inject)
    with pytest.raises(SendError) as info:
        await group_send(api)
    assert type(info.value) is kind
    assert getattr(info.value, "retry_after", None) == retry_after
    assert info.value.retryable is (kind is not PermanentSendError)


async def test_bare_5xx_and_timeouts_are_transient(fake: FakeDingTalkAPI, api: DingTalkApi, http: Any) -> None:
    fake.fail_next(GROUP_SEND, http_status=502)
    with pytest.raises(TransientSendError) as info:
        await group_send(api)
    assert info.value.code == "502"
    fake.delay_next(GROUP_SEND, 1.0)
    quick = DingTalkApi(lambda: http, fake.base_url, APP_KEY, APP_SECRET, timeout=0.3)
    with pytest.raises(TransientSendError) as info:
        await quick.group_send(APP_KEY, "cid", *TEXT)
    assert info.value.code == "timeout"


# ---- sessionWebhook ----------------------------------------------------------------------------------------


async def test_session_webhook_delivers_then_expires(fake: FakeDingTalkAPI, api: DingTalkApi) -> None:
    url, _ = fake.session_webhook("cidG==", ttl=60)
    await api.post_session_webhook(url, markdown_message("## 结果\n一切正常", at_staff_id="staff001"))
    (message,) = fake.webhook_messages
    assert (message.conversation_id, message.msgtype, message.title) == ("cidG==", "markdown", "结果")
    assert message.text == "## 结果\n一切正常" and message.at_user_ids == ("staff001",)
    assert "x-acs-dingtalk-access-token" not in fake.requests_to("sendBySession")[0].headers
    fake.advance(61)
    with pytest.raises(SessionWebhookGone) as info:
        await api.post_session_webhook(url, markdown_message("late"))
    assert info.value.code == "300001" and not info.value.retryable


async def test_session_webhook_throttle_and_foreign_hosts(fake: FakeDingTalkAPI, api: DingTalkApi) -> None:
    url, _ = fake.session_webhook("cid")
    fake.webhook_error_next(130101, "send too fast")
    with pytest.raises(RateLimited) as info:
        await api.post_session_webhook(url, markdown_message("x"))
    assert info.value.retry_after == 600
    fake.webhook_error_next(40035, "缺少参数 json")
    with pytest.raises(PermanentSendError):
        await api.post_session_webhook(url, markdown_message("x"))
    before = len(fake.requests)
    with pytest.raises(SessionWebhookGone):
        await api.post_session_webhook("https://attacker.example/robot/sendBySession?session=1", markdown_message("x"))
    assert len(fake.requests) == before
    assert fake.webhook_messages == []


async def test_session_webhook_rate_limit_of_the_fake(fake: FakeDingTalkAPI, api: DingTalkApi) -> None:
    url, _ = fake.session_webhook("cid")
    for i in range(20):
        await api.post_session_webhook(url, markdown_message(f"m{i}"))
    with pytest.raises(RateLimited):
        await api.post_session_webhook(url, markdown_message("one too many"))
    fake.advance(60)
    await api.post_session_webhook(url, markdown_message("next minute"))
    assert len(fake.webhook_messages) == 21


async def test_the_fakes_bot_message_parses_and_its_webhook_answers(fake: FakeDingTalkAPI, api: DingTalkApi) -> None:
    msg = parse_bot_message(json.dumps(fake.bot_message("总结一下", group=True)))
    inbound = to_inbound("b", msg, datetime.now(UTC), robot_code="unused")
    ref = parse_reply_ref(inbound.reply_ref)
    assert ref is not None and ref.webhook_alive() and ref.is_group and ref.robot_code == APP_KEY
    assert inbound.text == "总结一下" and inbound.mentioned and inbound.sender_id == "staff001"
    await api.post_session_webhook(ref.session_webhook, markdown_message("好的", at_staff_id=ref.staff_id))
    assert [m.conversation_id for m in fake.webhook_messages] == [msg.conversation_id]


# ---- files -------------------------------------------------------------------------------------------------


async def test_download_with_size_cap_and_no_token_leak(fake: FakeDingTalkAPI, api: DingTalkApi) -> None:
    fake.add_file("dl-1", b"\x89PNG" + b"x" * 996, "image/png")
    url = await api.download_url(APP_KEY, "dl-1")
    assert url.startswith(fake.base_url + "/files/")
    got = await api.download(url, 1000)
    assert (got.data[:4], len(got.data), got.content_type, got.too_large) == (b"\x89PNG", 1000, "image/png", False)
    capped = await api.download(url, 999)
    assert capped.too_large and capped.data == b""
    assert all("x-acs-dingtalk-access-token" not in r.headers for r in fake.requests_to("^/files/"))
    with pytest.raises(PermanentSendError):
        await api.download_url(APP_KEY, "unknown-code")
    with pytest.raises(PermanentSendError):
        await api.download(fake.base_url + "/files/nope", 1000)


# ---- AI cards ----------------------------------------------------------------------------------------------


async def test_card_sequence_create_deliver_stream_finalize(fake: FakeDingTalkAPI, api: DingTalkApi) -> None:
    await api.create_card("tpl.schema", "track-1", {"content": "", "flowStatus": "1"})
    await api.deliver_card("track-1", APP_KEY, open_conversation_id="cidG==")
    for text in ("Hel", "Hello, wo", "Hello, world"):
        await api.stream_card("track-1", "content", text)
    await api.stream_card("track-1", "content", "Hello, world!", is_finalize=True)
    await api.update_card("track-1", {"flowStatus": "3"})
    card = fake.cards["track-1"]
    assert card.template_id == "tpl.schema" and card.spaces == ["dtv1.card//IM_GROUP.cidG=="]
    assert card.text() == "Hello, world!" and card.finished and card.finalized == {"content"}
    assert len(card.streams) == 4 and len({s["guid"] for s in card.streams}) == 4
    assert fake.violations == []
    create = fake.requests_to(r"/v1.0/card/instances$", "POST")[0].body
    assert create["callbackType"] == "STREAM" and create["imRobotOpenSpaceModel"] == {"supportForward": True}
    await api.stream_card("track-1", "content", "late")  # the fake records protocol slips
    assert fake.violations == ["track-1: streamed after the card finished", "track-1: streamed after finalize"]


async def test_card_in_a_direct_chat_and_validation(fake: FakeDingTalkAPI, api: DingTalkApi) -> None:
    await api.create_card("tpl.schema", "track-2", {"flowStatus": "1"})
    await api.deliver_card("track-2", APP_KEY, staff_id="staff001")
    deliver = fake.requests_to(r"/deliver$")[0].body
    assert deliver["openSpaceId"] == "dtv1.card//IM_ROBOT.staff001"
    assert deliver["imRobotOpenDeliverModel"] == {"spaceType": "IM_ROBOT"} and deliver["userIdType"] == 1
    with pytest.raises(PermanentSendError):
        await api.deliver_card("track-2", APP_KEY)
    with pytest.raises(PermanentSendError):
        await api.create_card("tpl.schema", "track-2", {})  # outTrackId already used
    with pytest.raises(PermanentSendError):
        await api.stream_card("no-such-card", "content", "x")
    await api.stream_card("track-2", "content", "a", is_full=False)
    await api.stream_card("track-2", "content", "b", is_full=False, is_finalize=True)
    await api.stream_card("track-2", "content", "c", is_full=False, is_finalize=True)
    assert fake.cards["track-2"].text() == "abc"
    assert fake.violations == ["track-2: finalized twice"]


# ---- classify ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "kind", "code"),
    [
        (
            400,
            {"code": "InvalidAuthentication", "message": "不合法的access_token"},
            AuthExpired,
            "InvalidAuthentication",
        ),
        (401, {}, AuthExpired, "401"),
        (403, {"code": "Forbidden.AccessDenied.QpsLimitForApi"}, RateLimited, "Forbidden.AccessDenied.QpsLimitForApi"),
        (403, {"code": "Forbidden.AccessDenied.AccessTokenPermissionDenied"}, PermanentSendError, None),
        (429, {}, RateLimited, "429"),
        (400, {"code": "system.err"}, TransientSendError, "system.err"),
        (502, {}, TransientSendError, "502"),
        (
            400,
            {"code": "invalidParameter.robotCode", "message": "bad"},
            PermanentSendError,
            "invalidParameter.robotCode",
        ),
        (200, {"errcode": 300001, "errmsg": "session 不存在"}, SessionWebhookGone, "300001"),
        (200, {"errcode": 310000, "errmsg": "sign not match"}, SessionWebhookGone, "310000"),
        (200, {"errcode": 130101, "errmsg": "send too fast"}, RateLimited, "130101"),
        (200, {"errcode": -1, "errmsg": "系统繁忙"}, TransientSendError, "-1"),
        (200, {"errcode": 40035, "errmsg": "缺少参数"}, PermanentSendError, "40035"),
        (200, {"errcode": "x"}, TransientSendError, "200"),
        (503, {"errcode": 0}, TransientSendError, "503"),
    ],
)
def test_classify(status: int, body: dict[str, Any], kind: type[SendError], code: str | None) -> None:
    error = classify(status, body)
    assert type(error) is kind
    if code is not None:
        assert error.code == code
