"""WeChat OA adapter end to end over real sockets: platform driver -> our callback -> turn -> reply.

The platform side (signatures, AES, 5 s timeout + 3 identical retries, customer-service API with
its 48 h window and quotas, tokens) is tests/fakes/wechat_*; the LLM is the fake OpenAI server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Runtime
from tests.conftest import ENV, make_settings
from tests.fakes.fake_llm import DelayReply, FakeLLM
from tests.fakes.webhook_peer import CallbackReceiver
from tests.fakes.wechat_driver import CallbackDriver, Forgery
from tests.fakes.wechat_platform import (
    OA_AES_KEY,
    OA_APPID,
    OA_OPENID,
    OA_SECRET,
    OA_TOKEN,
    FakeWeChatAPI,
    oversized_body,
    xml_bomb,
    xxe_payload,
)

WX_ENV = {**ENV, "WX_SECRET": OA_SECRET, "WX_TOKEN": OA_TOKEN, "WX_AES": OA_AES_KEY}
Factory = Callable[..., Any]


def wechat_section(api: FakeWeChatAPI, **bot: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "api_base": api.base_url,
        "bots": {
            "oa": {
                "app_id": OA_APPID,
                "app_secret_env": "WX_SECRET",
                "token_env": "WX_TOKEN",
                "encoding_aes_key_env": "WX_AES",
                "mode": "safe",
                **bot,
            }
        },
    }


@pytest.fixture
def wx_api() -> Any:
    with FakeWeChatAPI() as api:
        yield api


@pytest.fixture
def wechat(tmp_path: Path, fake_llm: FakeLLM, receiver: CallbackReceiver, wx_api: FakeWeChatAPI) -> Factory:
    @asynccontextmanager
    async def start(section: dict[str, Any] | None = None, **bot: Any) -> AsyncIterator[tuple[Runtime, str]]:
        wx = section if section is not None else wechat_section(wx_api, **bot)
        settings = make_settings(tmp_path, fake_llm.base_url, receiver.url, adapters={"wechat": wx})
        runtime = Runtime(settings, WX_ENV)
        await runtime.start()
        await asyncio.wait_for(runtime.llm_ready.wait(), 60)  # the model worker is up: turns take ms
        try:
            yield runtime, f"http://127.0.0.1:{runtime.port}/webhooks/wechat/oa"
        finally:
            await runtime.stop()

    return start


async def _stored(rt: Runtime) -> int:
    return len(await rt.journal.pending()) + (await rt.outbox.stats()).pending


async def test_url_verification_echoes_only_for_a_valid_signature(wechat: Factory, wx_api: FakeWeChatAPI) -> None:
    async with wechat() as (_, url):
        driver = CallbackDriver.oa(url, api=wx_api)
        assert (await driver.verify_url("echo-123")).verified
        forged = await driver.verify_url("echo-123", forge=Forgery(bad_signature=True))
        assert forged.status == 403 and "echo-123" not in forged.body


@pytest.mark.parametrize("mode", ["safe", "compat", "plain"])
async def test_a_fast_answer_is_the_passive_reply_in_every_mode(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM, mode: str
) -> None:
    async with wechat(mode=mode) as (_, url):
        driver = CallbackDriver.oa(url, mode=mode, api=wx_api)  # type: ignore[arg-type]
        result = await driver.send_text(OA_OPENID, "你好")
    assert result.attempt_count == 1 and result.reply is not None
    assert result.reply["Content"] == "echo: 你好" and result.reply["ToUserName"] == OA_OPENID
    assert result.reply_encrypted is (mode != "plain")
    assert wx_api.sends == [] and len(fake_llm.chat_requests()) == 1


async def test_slow_answer_is_pushed_once_by_customer_service_despite_three_platform_retries(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(DelayReply(7.0, "slow but sure"))
    async with wechat() as (_, url):
        driver = CallbackDriver.oa(url, api=wx_api, timeout=8.0)  # slack for a loaded CI machine
        request = driver.build_post(driver.message_fields(OA_OPENID, "text", [("Content", "think hard")]))
        first = await driver.deliver(request)
        assert first.acked and first.attempt_count == 1 and first.last.elapsed > 4.0  # budget, then success
        # The platform did not see that "success" and retries the identical message three times, 5 s apart.
        retries = []
        for _ in range(3):
            retries.append(asyncio.create_task(driver.deliver(request, retries=0)))
            await asyncio.sleep(5.0)
        results = [await r for r in retries]
        await asyncio.sleep(0.5)
    # The answer (ready at ~7 s) rode on the retry that was open then: one turn, one visible answer.
    passive = [r.reply["Content"] for r in results if r.reply is not None]
    pushed = [d.content for d in wx_api.sends]
    assert passive + pushed == ["slow but sure"]
    assert all(r.acked for r in results if r.reply is None)
    assert len(fake_llm.chat_requests()) == 1


async def test_without_push_permission_a_retry_collects_the_finished_answer(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    fake_llm.enqueue(DelayReply(2.5, "worth the wait"))
    section = wechat_section(wx_api, customer_service=False, passive_budget=1.5)
    section["platform_timeout"] = 2.0
    async with wechat(section) as (_, url):
        driver = CallbackDriver.oa(url, timeout=2.0, api=wx_api)  # WeChat's 5 s, scaled down with the budget
        result = await driver.send_text(OA_OPENID, "question")
    # Earlier attempts are left to time out (no "success"), so WeChat retries; a retry open when the
    # answer is ready carries it (the 2nd, or the 3rd on a loaded machine).
    assert result.attempt_count in (2, 3) and all(a.status is None for a in result.attempts[:-1])
    assert result.reply is not None and result.reply["Content"] == "worth the wait"
    assert wx_api.sends == [] and len(fake_llm.chat_requests()) == 1


async def test_without_push_permission_a_late_answer_waits_for_the_next_message_in_order(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(DelayReply(9.0, "answer one"))
    section = wechat_section(wx_api, customer_service=False, passive_budget=1.5)
    section["platform_timeout"] = 2.0
    async with wechat(section) as (rt, url):
        driver = CallbackDriver.oa(url, timeout=2.0, api=wx_api)
        first = await driver.send_text(OA_OPENID, "one")
        assert first.attempt_count == 4 and first.acked  # the last attempt is answered "success"
        for _ in range(100):  # answer one (ready at ~9 s) is parked
            if fake_llm.chat_requests() and (await rt.outbox.stats()).pending == 1:
                break
            await asyncio.sleep(0.1)
        assert (await rt.outbox.stats()).pending == 1
        second = await driver.send_text(OA_OPENID, "two")
        third = await driver.send_text(OA_OPENID, "three")
    assert second.reply is not None and second.reply["Content"] == "answer one"
    assert third.reply is not None and third.reply["Content"] == "echo: two"
    assert wx_api.sends == []


async def test_an_expired_token_is_refreshed_once_mid_conversation(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(DelayReply(1.0, "first push"), DelayReply(1.0, "second push"))
    async with wechat(passive_budget=0.3) as (_, url):
        driver = CallbackDriver.oa(url, api=wx_api)
        await driver.send_text(OA_OPENID, "a")
        await wx_api.async_wait_delivered(1)
        wx_api.expire_all_tokens()
        await driver.send_text(OA_OPENID, "b")
        delivered = await wx_api.async_wait_delivered(2)
    assert [d.content for d in delivered] == ["first push", "second push"]
    assert sum(wx_api.token_fetches.values()) == 2


async def test_out_of_window_push_becomes_a_dead_letter_with_the_reason(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(DelayReply(1.0, "too late"))
    async with wechat(passive_budget=0.3) as (rt, url):
        driver = CallbackDriver.oa(url, api=wx_api)
        await driver.send_text(OA_OPENID, "hello")
        wx_api.close_window(OA_OPENID)
        for _ in range(100):
            if await rt.outbox.dead_letters():
                break
            await asyncio.sleep(0.05)
        [dead] = await rt.outbox.dead_letters()
    assert dead.code == "45015" and "48-hour" in dead.reason


async def test_a_six_thousand_byte_chinese_answer_is_split_and_numbered(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    sentence = "这是一个用于测试分段的中文句子，包含逗号和句号。"
    answer = sentence * (6000 // len(sentence.encode()) + 1)
    fake_llm.enqueue(answer)
    async with wechat() as (_, url):
        driver = CallbackDriver.oa(url, api=wx_api)
        result = await driver.send_text(OA_OPENID, "long please")
        pushed = await wx_api.async_wait_delivered(2)
    assert result.reply is not None
    pieces = [result.reply["Content"], *(d.content or "" for d in pushed)]
    assert len(pieces) == 3 and all(len(p.encode()) <= 2048 for p in pieces)
    assert [p.split(" ", 1)[0] for p in pieces] == ["(1/3)", "(2/3)", "(3/3)"]
    assert "".join(p.split(" ", 1)[1] for p in pieces) == answer
    assert all(p.endswith("。") for p in pieces)


async def test_subscribe_gets_the_welcome_and_events_start_no_turn(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    async with wechat(welcome="欢迎关注") as (_, url):
        driver = CallbackDriver.oa(url, api=wx_api)
        welcome = await driver.send_event(OA_OPENID, "subscribe")
        gone = await driver.send_event(OA_OPENID, "unsubscribe")
        click = await driver.send_event(OA_OPENID, "CLICK", event_key="DAILY_REPORT")
        voice = await driver.send_voice(OA_OPENID, recognition="今天天气怎么样")
    assert welcome.reply is not None and welcome.reply["Content"] == "欢迎关注"
    assert gone.acked
    assert click.reply is not None and click.reply["Content"] == "echo: [菜单] DAILY_REPORT"
    assert voice.reply is not None and voice.reply["Content"] == "echo: 今天天气怎么样"
    assert len(fake_llm.chat_requests()) == 2


async def test_signed_messages_with_unusable_fields_are_a_400_with_nothing_stored(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    async with wechat(passive_budget=0.3) as (rt, url):
        driver = CallbackDriver.oa(url, api=wx_api)
        bad_id = driver.message_fields(OA_OPENID, "text", [("Content", "x")])
        bad_id["MsgId"] = "not-a-number"  # wechatpy converts it only when read
        no_id = driver.message_fields(OA_OPENID, "text", [("Content", "x")])
        del no_id["MsgId"]  # read as 0: every such message would be a duplicate of the first
        bad_time = driver.message_fields(OA_OPENID, "event", [("Event", "CLICK"), ("EventKey", "K")])
        bad_time["CreateTime"] = "yesterday"
        for fields in (bad_id, no_id, bad_time):
            result = await driver.send_fields(fields)
            assert result.status == 400, fields
        assert await _stored(rt) == 0
        ok = await driver.send_text(OA_OPENID, "still serving")
        assert ok.status == 200
        for _ in range(100):
            if fake_llm.chat_requests():
                break
            await asyncio.sleep(0.05)
    [request] = fake_llm.chat_requests()
    assert "still serving" in json.dumps(request.messages[-1], ensure_ascii=False)


async def test_two_menu_items_clicked_in_the_same_second_are_two_turns(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    async with wechat() as (_, url):
        driver = CallbackDriver.oa(url, api=wx_api)
        stamp = int(time.time())
        first = await driver.send_event(OA_OPENID, "CLICK", event_key="DAILY", create_time=stamp)
        second = await driver.send_event(OA_OPENID, "CLICK", event_key="WEEKLY", create_time=stamp)
        again = await driver.send_event(OA_OPENID, "CLICK", event_key="WEEKLY", create_time=stamp)  # a retry
        for _ in range(100):  # answered passively or pushed, whichever came first
            if len(fake_llm.chat_requests()) >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
    assert all(r.status == 200 for r in (first, second, again))
    prompts = [json.dumps(r.messages[-1], ensure_ascii=False) for r in fake_llm.chat_requests()]
    assert len(prompts) == 2 and "[菜单] DAILY" in prompts[0] and "[菜单] WEEKLY" in prompts[1]


async def test_a_message_arriving_while_draining_is_journaled_not_refused(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    # WeChat retries 3 times in ~15 s, less than a drain lasts: a 503 then would lose the message.
    async with wechat(customer_service=True, passive_budget=0.3) as (rt, url):
        driver = CallbackDriver.oa(url, api=wx_api)
        rt._accepting = False  # what stop() does first, while turns drain
        result = await driver.send_text(OA_OPENID, "during the deploy")
        [entry] = await rt.journal.pending()
    assert result.acked and result.attempt_count == 1
    assert entry.message.text == "during the deploy" and fake_llm.chat_requests() == []  # its turn waits for restart


async def test_videos_are_journaled_and_answered_not_acked_and_forgotten(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    async with wechat() as (_, url):
        driver = CallbackDriver.oa(url, api=wx_api)
        video = await driver.send_video(OA_OPENID, media_id="vid-1")
        short = await driver.send_video(OA_OPENID, media_id="vid-2", short=True)
    assert video.reply is not None and short.reply is not None
    assert video.reply["Content"] == "echo: [video attachment: vid-1]"
    assert short.reply["Content"] == "echo: [video attachment: vid-2]"
    assert len(fake_llm.chat_requests()) == 2


@pytest.mark.parametrize(
    ("forge", "status"),
    [
        (Forgery(bad_signature=True), 403),
        (Forgery(bad_msg_signature=True), 403),
        (Forgery(receive_id="wx0000000000000000"), 403),
        (Forgery(encoding_aes_key="B" * 43), 400),  # signed right, but decrypts to garbage
        (Forgery(timestamp="1000000000"), 403),
        (Forgery(raw_plaintext=xml_bomb()), 400),
        (Forgery(raw_plaintext=xxe_payload()), 400),
        (Forgery(raw_body=b"<xml><Encrypt>not base64 at all</Encrypt>"), 400),
    ],
)
async def test_forged_or_malicious_callbacks_are_rejected_and_nothing_is_stored(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM, forge: Forgery, status: int
) -> None:
    async with wechat() as (rt, url):
        driver = CallbackDriver.oa(url, api=wx_api)
        bad = await driver.send_text(OA_OPENID, "evil", forge=forge)
        assert bad.status == status and bad.attempt_count == 1
        assert await _stored(rt) == 0 and fake_llm.chat_requests() == []
        good = await driver.send_text(OA_OPENID, "still there?")
    assert good.reply is not None and good.reply["Content"] == "echo: still there?"


async def test_plaintext_bombs_and_oversized_bodies_are_refused(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    async with wechat(mode="compat") as (rt, url):
        driver = CallbackDriver.oa(url, mode="plain", api=wx_api)
        bomb = await driver.send_text(OA_OPENID, "x", forge=Forgery(raw_body=xml_bomb()))
        big = await driver.send_text(OA_OPENID, "x", forge=Forgery(raw_body=oversized_body(200_000)))
        assert (bomb.status, big.status) == (400, 413)
        assert await _stored(rt) == 0 and fake_llm.chat_requests() == []


async def test_a_safe_mode_account_refuses_plaintext_messages(wechat: Factory, wx_api: FakeWeChatAPI) -> None:
    async with wechat(mode="safe") as (rt, url):
        plain = await CallbackDriver.oa(url, mode="plain", api=wx_api).send_text(OA_OPENID, "unencrypted")
        assert plain.status == 403 and await _stored(rt) == 0


async def test_doctor_checks_each_account_against_the_token_endpoint(
    tmp_path: Path, fake_llm: FakeLLM, receiver: CallbackReceiver, wx_api: FakeWeChatAPI
) -> None:
    from gateway.doctor import check_adapters

    section = wechat_section(wx_api)
    section["bots"]["other"] = {**section["bots"]["oa"], "app_secret_env": "WRONG_SECRET"}
    settings = make_settings(tmp_path, fake_llm.base_url, receiver.url, adapters={"wechat": section})
    checks = await check_adapters(settings, {**WX_ENV, "WRONG_SECRET": "nope"})
    by_name = {c.name: c for c in checks}
    assert by_name["adapter wechat bot oa"].status == "ok"
    bad = by_name["adapter wechat bot other"]
    assert bad.status == "FAIL" and "40125" in bad.detail
    assert sorted(r.path for r in wx_api.requests) == ["/cgi-bin/token"] * 2  # one fetch per credential


async def test_code_answers_with_cdata_terminators_and_control_characters_render_as_valid_xml(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue("if a[b[c]]>0 then \x07ring")
    async with wechat() as (_, url):
        result = await CallbackDriver.oa(url, api=wx_api).send_text(OA_OPENID, "code")
    assert result.reply is not None and result.reply["Content"] == "if a[b[c]]>0 then ring"


async def test_a_passive_reply_whose_request_was_abandoned_is_pushed_instead_of_lost(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(DelayReply(1.0, "made it anyway"))
    async with wechat() as (_, url):
        driver = CallbackDriver.oa(url, api=wx_api, timeout=0.5, retries=0)  # the platform hangs up early
        gone = await driver.send_text(OA_OPENID, "hello")
        assert gone.status is None  # no answer seen by the platform
        [pushed] = await wx_api.async_wait_delivered(1)
    assert pushed.content == "made it anyway" and len(wx_api.sends) == 1


async def test_shutdown_answers_waiting_requests_and_keeps_their_replies(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(DelayReply(2.0, "after the restart"))
    async with wechat() as (rt, url):
        driver = CallbackDriver.oa(url, api=wx_api, retries=0)
        pending = asyncio.create_task(driver.send_text(OA_OPENID, "slow"))
        await asyncio.sleep(0.5)
        await rt.adapters["wechat"].stop()
        result = await pending
    assert result.status == 200 and result.acked


async def test_a_leaked_plain_mode_url_cannot_carry_another_body(
    wechat: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    async with wechat(mode="plain") as (_, url):
        driver = CallbackDriver.oa(url, mode="plain", api=wx_api)
        request = driver.build_post(driver.message_fields(OA_OPENID, "text", [("Content", "real")]))
        assert (await driver.deliver(request)).reply is not None
        assert (await driver.deliver(request, retries=0)).status == 200  # the platform's identical retry
        forged_body = request.body.replace(b"real", b"evil")
        forged = dataclasses.replace(request, body=forged_body)
        assert (await driver.deliver(forged, retries=0)).status == 403
        # The hex signature is checked case-insensitively; an upper-cased copy is the same signed query.
        sig = request.query["signature"]
        upper = dataclasses.replace(forged, url=request.url.replace(sig, sig.upper()))
        assert sig.upper() != sig and sig.upper() in upper.url
        assert (await driver.deliver(upper, retries=0)).status == 403
    assert len(fake_llm.chat_requests()) == 1
