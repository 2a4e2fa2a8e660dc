"""The WeCom AI-bot long-connection client against the protocol-exact fake server (real sockets)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from adapters.base import PublishResult
from adapters.wecom import aibot_wire as wire
from adapters.wecom.aibot import AIBotConnection
from adapters.wecom.aibot_wire import AIBotSettings
from gateway.errors import PermanentSendError, RateLimited, TransientSendError
from gateway.messages import ChatKind, InboundMessage, MarkdownPart, OutboundMessage, Target, reply_target
from tests.fakes.wecom_aibot_server import (
    ERR_STREAM_EXPIRED,
    FakeAIBotServer,
    enter_chat_event,
    eventually,
    group_mention_callback,
    mixed_callback,
    text_callback,
)

BOT_ID, SECRET = "aibot-123", "s3cret-value"
FAST = AIBotSettings(
    ping_interval=0.1,
    ack_timeout=0.3,
    reconnect_base=0.05,
    reconnect_max=0.2,
    replaced_backoff=0.8,
    connect_timeout=2.0,
    close_timeout=0.5,
    stream_idle_timeout=5.0,
)


class Host:
    """The slice of AdapterHost the connection uses; records what it publishes."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.published: list[InboundMessage] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.fail_with: Exception | None = None
        self.commit: asyncio.Event | None = None  # when set: publishes wait for it, like a slow group commit
        self.in_flight = self.most_in_flight = 0

    async def publish(self, msg: InboundMessage, *, refusable: bool = True) -> PublishResult:
        if self.fail_with is not None:
            raise self.fail_with
        if refusable:  # WeCom never redelivers a long-connection callback: refusing one would lose it
            raise AssertionError("an AI-bot message was published as refusable")
        self.published.append(msg)  # the journal order: fixed before the commit is awaited, as in the runtime
        inbound_id = len(self.published)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # a commit always suspends the caller
            if self.commit is not None:
                await self.commit.wait()
        finally:
            self.in_flight -= 1
        return PublishResult(inbound_id=inbound_id, duplicate=False)

    def add_route(self, method: str, path: str, handler: Any) -> None:
        raise AssertionError("the long connection mounts no routes")

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        self.tasks.append(asyncio.create_task(coro, name=name))

    def is_accepting(self) -> bool:
        return True

    async def release_parked(self, target: Target) -> None:
        return None


@pytest.fixture
def server() -> Iterator[FakeAIBotServer]:
    with FakeAIBotServer(bot_id=BOT_ID, secret=SECRET) as fake:
        yield fake


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    async with aiohttp.ClientSession() as http:
        h = Host(http)
        yield h
        for task in h.tasks:
            task.cancel()
        await asyncio.gather(*h.tasks, return_exceptions=True)


Start = Callable[..., Awaitable[AIBotConnection]]


@pytest.fixture
async def start(server: FakeAIBotServer, host: Host) -> AsyncIterator[Start]:
    conns: list[AIBotConnection] = []

    async def go(wait: bool = True, secret: str = SECRET, **overrides: Any) -> AIBotConnection:
        conn = AIBotConnection(BOT_ID, secret, "ops-bot", ws_url=server.url, settings=replace(FAST, **overrides))
        conns.append(conn)
        host.spawn(conn.run(host), name="aibot-run")
        if wait:
            await eventually(lambda: conn.connected, what="subscribe")
        return conn

    yield go
    for conn in conns:
        await conn.close()
    assert all(t.done() for t in host.tasks), "run() must return after close()"


def reply(msg: InboundMessage, text: str, key: str = "sb-key-0") -> OutboundMessage:
    return OutboundMessage(target=reply_target(msg), parts=(MarkdownPart(text=text),), idempotency_key=key)


async def inbound(server: FakeAIBotServer, host: Host, frame: dict[str, Any]) -> InboundMessage:
    count = len(host.published)
    server.push(frame)
    await eventually(lambda: len(host.published) > count, what="publish")
    return host.published[-1]


# ---------------------------------------------------------------- receiving


async def test_subscribe_then_dm_callback_is_published(server: FakeAIBotServer, host: Host, start: Start) -> None:
    await start()
    sub = server.frames("aibot_subscribe")[0]
    assert sub.body == {"bot_id": BOT_ID, "secret": SECRET} and sub.req_id.startswith("aibot_subscribe_")

    msg = await inbound(server, host, text_callback("hello", userid="lisi", msgid="m-1", req_id="cb-1"))

    assert (msg.platform, msg.bot_id, msg.platform_msg_id) == ("wecom", "ops-bot", "m-1")
    assert (msg.chat_id, msg.chat_kind, msg.sender_id) == ("lisi", ChatKind.DIRECT, "lisi")
    assert (msg.text, msg.reply_ref, msg.mentioned) == ("hello", "cb-1", False)
    assert server.errors == []


async def test_group_mention_is_stripped_and_marked(server: FakeAIBotServer, host: Host, start: Start) -> None:
    await start()
    msg = await inbound(server, host, group_mention_callback("what is up?", chatid="grp-9", userid="wangwu"))
    assert (msg.chat_id, msg.chat_kind, msg.sender_id) == ("grp-9", ChatKind.GROUP, "wangwu")
    assert msg.mentioned and msg.text == "what is up?"
    assert wire.strip_mention("@My Bot  hi", "My Bot") == "hi"
    assert wire.strip_mention("@bot", "") == ""


async def test_mixed_message_gives_text_and_image_attachments(
    server: FakeAIBotServer, host: Host, start: Start
) -> None:
    await start()
    items = [("text", "look at"), ("image", "https://img.example/a"), ("text", "this")]
    msg = await inbound(server, host, mixed_callback(items))
    assert msg.text == "look at\nthis"
    assert [a.kind for a in msg.attachments] == ["image"]
    assert msg.attachments[0].ref.startswith("https://img.example/a#aeskey=aes-")


async def test_publish_failure_answers_busy_with_a_finished_stream(
    server: FakeAIBotServer, host: Host, start: Start
) -> None:
    await start()
    host.fail_with = OSError("disk full")  # backpressure cannot refuse it (not refusable): storage can fail
    req_id = server.push(text_callback("hi"))
    await eventually(lambda: len(server.frames("aibot_respond_msg", req_id)) == 1, what="busy reply")
    stream = server.frames(req_id=req_id)[0].stream
    assert stream["finish"] is True and stream["content"] == FAST.busy_text
    assert server.errors == []


async def test_callbacks_queued_behind_a_slow_commit_are_journaled_together_in_order(
    server: FakeAIBotServer, host: Host, start: Start
) -> None:
    await start()
    host.commit = asyncio.Event()
    server.push(text_callback("first", userid="lisi", msgid="m-0"))
    await eventually(lambda: host.in_flight == 1, what="first publish waiting for its commit")
    for i in range(1, 12):  # queue up behind it, two users interleaved
        server.push(text_callback(f"n{i}", userid="lisi" if i % 2 else "wangwu", msgid=f"m-{i}"))
    await asyncio.sleep(0.2)  # the reader has queued them all; one at a time, none would be publishing yet
    host.commit.set()
    await eventually(lambda: len(host.published) == 12, what="all published")

    assert [m.platform_msg_id for m in host.published] == [f"m-{i}" for i in range(12)]
    assert host.most_in_flight == 11, "the queued callbacks should share one commit, not wait for one each"
    assert server.frames("aibot_respond_msg") == []
    assert server.errors == []


async def test_a_full_inbox_answers_busy_instead_of_dropping_silently(
    server: FakeAIBotServer, host: Host, start: Start
) -> None:
    await start(inbox_size=2, publish_batch=1)
    host.commit = asyncio.Event()
    req_ids = [server.push(text_callback(f"n{i}", msgid=f"m-{i}")) for i in range(8)]
    # At most one publishing plus two queued can be accepted while the commit hangs.
    await eventually(lambda: len(server.frames("aibot_respond_msg")) >= 5, what="busy answers")
    host.commit.set()

    def busy() -> set[str]:
        return {f.req_id for f in server.frames("aibot_respond_msg")}

    await eventually(lambda: len(busy()) + len(host.published) == 8, what="every callback handled")
    published = {m.reply_ref for m in host.published}
    assert busy() | published == set(req_ids) and not busy() & published  # each one: journaled, or told
    for frame in server.frames("aibot_respond_msg"):
        assert frame.stream["finish"] is True and frame.stream["content"] == FAST.busy_text
    assert server.errors == []


async def test_callbacks_still_queued_at_stop_are_journaled_before_it_returns(
    server: FakeAIBotServer, host: Host, start: Start
) -> None:
    conn = await start()
    host.commit = asyncio.Event()
    server.push(text_callback("n0", msgid="m-0"))
    await eventually(lambda: host.in_flight == 1, what="first publish waiting for its commit")
    for i in range(1, 5):
        server.push(text_callback(f"n{i}", msgid=f"m-{i}"))
    await asyncio.sleep(0.1)  # these four wait in the inbox
    closing = asyncio.create_task(conn.close())
    await asyncio.sleep(0.1)
    host.commit.set()  # the journal catches up while the connection is stopping
    await asyncio.wait_for(closing, 5)
    assert [m.platform_msg_id for m in host.published] == [f"m-{i}" for i in range(5)]


async def test_enter_chat_gets_the_configured_welcome(server: FakeAIBotServer, start: Start) -> None:
    await start(welcome_text="Welcome!")
    req_id = server.push(enter_chat_event())
    await eventually(lambda: len(server.frames(req_id=req_id)) == 1, what="welcome")
    frame = server.frames(req_id=req_id)[0]
    assert frame.cmd == "aibot_respond_welcome_msg"
    assert frame.body == {"msgtype": "text", "text": {"content": "Welcome!"}}


# ---------------------------------------------------------------- connection health


async def test_acked_pings_keep_one_connection(server: FakeAIBotServer, start: Start) -> None:
    conn = await start()
    await asyncio.sleep(0.5)
    pings = server.frames("ping")
    assert len(pings) >= 3 and all(p.req_id.startswith("ping_") and p.body == {} for p in pings)
    assert server.connections == 1 and conn.connected


async def test_unacked_pings_mean_half_open_and_reconnect(server: FakeAIBotServer, start: Start) -> None:
    conn = await start()
    server.knobs.ack_pings = False
    await eventually(lambda: server.connections >= 2, what="reconnect after missed pings")
    assert "half-open" in conn.last_error
    server.knobs.ack_pings = True
    await eventually(lambda: conn.connected, what="resubscribe")
    assert [ok for _, ok, _ in server.subscribes] == [True, True]


async def test_abrupt_kill_reconnects_after_a_backoff(server: FakeAIBotServer, start: Start) -> None:
    conn = await start()
    killed = time.monotonic()
    server.kill()
    await eventually(lambda: len(server.subscribes) == 2 and conn.connected, what="reconnect")
    assert server.subscribes[1][2] - killed >= FAST.reconnect_base / 2


async def test_bad_secret_retries_and_reports(server: FakeAIBotServer, start: Start) -> None:
    conn = await start(wait=False, secret="wrong")
    await eventually(lambda: len(server.subscribes) >= 3, what="retries")
    assert not conn.connected and "40001" in conn.last_error
    assert not any(ok for _, ok, _ in server.subscribes)
    server.secret = "wrong"  # the operator fixes the secret on either side
    await eventually(lambda: conn.connected, what="subscribe after the fix")
    assert "40001" in conn.last_error  # kept for doctor: the most recent failure, not the current state


async def test_disconnected_event_backs_off_instead_of_fighting(server: FakeAIBotServer, start: Start) -> None:
    conn = await start()
    server.replace()
    await eventually(lambda: not conn.connected, what="drop after replacement")
    assert "newer connection" in conn.last_error
    await asyncio.sleep(FAST.replaced_backoff / 2)
    assert len(server.subscribes) == 1, "reconnected immediately after being replaced"
    await eventually(lambda: conn.connected, within=3, what="reconnect after the long backoff")


# ---------------------------------------------------------------- replies


async def test_updates_coalesce_and_the_final_finishes_the_stream(
    server: FakeAIBotServer, host: Host, start: Start
) -> None:
    conn = await start()
    msg = await inbound(server, host, text_callback("tell me"))
    server.knobs.respond_delay = 0.15  # acks slower than the model writes
    stream = conn.open_stream(reply_target(msg), "sb-key-0")
    assert stream is not None
    text = ""
    for word in ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"):
        text += word + " "
        await stream.update(text)
        await asyncio.sleep(0.01)
    receipt = await conn.send(reply(msg, text + "done"))

    frames = server.frames(req_id=msg.reply_ref)
    contents = [f.stream["content"] for f in frames]
    assert len(frames) <= 3, contents  # first update, the newest one, the final: never a backlog
    assert [f.stream["finish"] for f in frames] == [False] * (len(frames) - 1) + [True]
    assert contents[0] == "one " and contents[-1] == text + "done"
    assert {f.stream["id"] for f in frames} == {wire.stream_id_for("sb-key-0")} == {receipt.platform_msg_id}
    assert server.errors == []


async def test_final_without_a_stream_is_one_finished_frame(server: FakeAIBotServer, host: Host, start: Start) -> None:
    conn = await start()
    msg = await inbound(server, host, text_callback("hi"))
    await conn.send(reply(msg, "hello!"))
    frames = server.frames(req_id=msg.reply_ref)
    assert [(f.stream["finish"], f.stream["content"]) for f in frames] == [(True, "hello!")]


async def test_expired_stream_falls_back_to_a_proactive_markdown(
    server: FakeAIBotServer, host: Host, start: Start
) -> None:
    conn = await start()
    msg = await inbound(server, host, group_mention_callback("slow one", chatid="grp-1"))
    stream = conn.open_stream(reply_target(msg), "sb-key-0")
    assert stream is not None
    await stream.update("partial")
    await eventually(lambda: len(server.frames(req_id=msg.reply_ref)) == 1, what="first update")
    server.expire(msg.reply_ref, ERR_STREAM_EXPIRED)

    await conn.send(reply(msg, "the full answer"))

    sent = server.frames("aibot_send_msg")
    assert len(sent) == 1 and sent[0].req_id.startswith("aibot_send_msg_")
    assert sent[0].body == {"chatid": "grp-1", "msgtype": "markdown", "markdown": {"content": "the full answer"}}


@pytest.mark.parametrize("errcode", [40058, 999999])
async def test_a_stream_refused_for_any_other_reason_still_delivers_proactively(
    server: FakeAIBotServer, host: Host, start: Start, errcode: int
) -> None:
    conn = await start()
    msg = await inbound(server, host, text_callback("hi", userid="lisi"))
    server.expire(msg.reply_ref, errcode)  # e.g. the stream was already finished by a previous run
    await conn.send(reply(msg, "answer"))
    [sent] = server.frames("aibot_send_msg")
    assert sent.body["markdown"]["content"] == "answer"


async def test_a_rate_limited_stream_is_retried_later_not_sent_twice(
    server: FakeAIBotServer, host: Host, start: Start
) -> None:
    conn = await start()
    msg = await inbound(server, host, text_callback("hi", userid="lisi"))
    server.expire(msg.reply_ref, 45009)
    with pytest.raises(RateLimited):
        await conn.send(reply(msg, "answer"))
    assert server.frames("aibot_send_msg") == []


async def test_no_req_id_sends_proactively_and_maps_errors(server: FakeAIBotServer, host: Host, start: Start) -> None:
    conn = await start()
    msg = await inbound(server, host, text_callback("hi", userid="zhaoliu"))
    later = reply(msg.model_copy(update={"reply_ref": ""}), "after a restart")
    await conn.send(later)
    assert server.frames("aibot_send_msg")[0].body["chatid"] == "zhaoliu"

    server.knobs.send_errcode = 45009
    with pytest.raises(RateLimited):
        await conn.send(later)


async def test_a_final_whose_ack_was_lost_is_not_shown_twice(server: FakeAIBotServer, host: Host, start: Start) -> None:
    conn = await start()
    msg = await inbound(server, host, text_callback("hi"))
    server.knobs.drop_acks.add(msg.reply_ref)  # WeCom applied the finish, but its ack never arrived
    with pytest.raises(TransientSendError, match="timed out"):
        await conn.send(reply(msg, "the answer"))
    server.knobs.drop_acks.discard(msg.reply_ref)
    server.expire(msg.reply_ref, 40058)  # the retry is refused: the stream is already finished
    await conn.send(reply(msg, "the answer"))  # the outbox's retry
    assert server.frames("aibot_send_msg") == []  # no proactive second copy


async def test_a_late_ack_of_a_timed_out_update_is_not_taken_for_the_finish(
    server: FakeAIBotServer, host: Host, start: Start
) -> None:
    conn = await start()  # acks are awaited 0.3 s
    msg = await inbound(server, host, text_callback("tell me"))
    server.knobs.respond_delay = 0.2  # every ack takes a while...
    server.knobs.late_acks[msg.reply_ref] = 0.5  # ...and the update's "ok" comes after we gave up on it
    stream = conn.open_stream(reply_target(msg), "sb-key-0")
    assert stream is not None
    await stream.update("thinking...")
    await eventually(lambda: len(server.frames(req_id=msg.reply_ref)) == 1, what="the update")
    server.expire(msg.reply_ref, ERR_STREAM_EXPIRED)  # from now on the stream is refused: the final too
    await asyncio.sleep(0.35)  # the update has timed out; its "ok" is still on the way

    await conn.send(reply(msg, "the answer"))

    finals = [f for f in server.frames(req_id=msg.reply_ref) if f.stream["finish"]]
    assert len(finals) == 1  # refused, so the answer must go out another way:
    [proactive] = server.frames("aibot_send_msg")
    assert proactive.body["markdown"]["content"] == "the answer"
    assert server.errors == []


async def test_send_errors_are_typed(server: FakeAIBotServer, host: Host, start: Start) -> None:
    conn = await start()
    msg = await inbound(server, host, text_callback("hi"))
    server.knobs.drop_acks.add(msg.reply_ref)
    with pytest.raises(TransientSendError, match="timed out"):
        await conn.send(reply(msg, "lost ack"))
    await conn.close()
    with pytest.raises(TransientSendError, match="not connected"):
        await conn.send(reply(msg, "offline"))

    assert isinstance(wire.map_error(45033, "busy"), RateLimited)
    assert isinstance(wire.map_error(40001, "invalid credential"), PermanentSendError)
    unknown = wire.map_error(-1, "system busy")
    assert type(unknown) is TransientSendError and unknown.code == "-1"


async def test_close_finishes_open_streams(server: FakeAIBotServer, host: Host, start: Start) -> None:
    conn = await start()
    msg = await inbound(server, host, text_callback("hi"))
    stream = conn.open_stream(reply_target(msg), "sb-key-0")
    assert stream is not None
    await stream.update("half an answer")
    await eventually(lambda: len(server.frames(req_id=msg.reply_ref)) == 1, what="update")

    await conn.close()

    last = server.frames(req_id=msg.reply_ref)[-1].stream
    assert last["finish"] is True and last["content"] == "half an answer" + FAST.interrupted_note
    assert conn.open_stream(reply_target(msg), "sb-key-1") is None
    assert server.errors == []


async def test_idle_stream_is_finished_and_the_final_goes_proactive(
    server: FakeAIBotServer, host: Host, start: Start
) -> None:
    conn = await start(stream_idle_timeout=0.3)
    msg = await inbound(server, host, text_callback("hi"))
    stream = conn.open_stream(reply_target(msg), "sb-key-0")
    assert stream is not None
    await stream.update("thinking")
    await eventually(lambda: any(f.stream.get("finish") for f in server.frames(req_id=msg.reply_ref)), what="idle end")
    assert server.frames(req_id=msg.reply_ref)[-1].stream["content"] == "thinking" + FAST.interrupted_note

    await stream.update("too late")  # ignored: the stream is finished
    await conn.send(reply(msg, "the answer"))
    assert server.frames("aibot_send_msg")[0].body["markdown"]["content"] == "the answer"
    assert server.errors == []


async def test_content_over_the_limit_is_cut_at_a_character_boundary(
    server: FakeAIBotServer, host: Host, start: Start
) -> None:
    conn = await start()
    msg = await inbound(server, host, text_callback("long"))
    long_text = "字" * 8000  # 24000 bytes
    await conn.send(reply(msg, long_text))
    content = server.frames(req_id=msg.reply_ref)[0].stream["content"]
    assert len(content.encode("utf-8")) <= wire.MAX_CONTENT_BYTES and long_text.startswith(content)
    assert len(content) == wire.MAX_CONTENT_BYTES // 3
    assert wire.cut_utf8("a\udc80b") == "a?b"
    assert server.errors == []
