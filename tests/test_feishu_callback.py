"""Feishu HTTP callback checks: AES interop with the SDK, signatures, tokens, url_verification, limits, fuzz.

The fake platform (tests/fakes/feishu_callback.py) is itself checked against lark-oapi here, so the adapter
code and the fake cannot agree on a mistake. The SDK is imported lazily (a 3-5 s import) in sync fixtures,
never inside a running event loop (lark_oapi.ws.client binds the current loop at import).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from adapters.feishu.callback import (
    MAX_UNSIGNED_BYTES,
    EventEnvelope,
    FeishuCallbackRejected,
    UrlVerification,
    decrypt,
    parse_callback,
    signature,
    verify_signature,
)
from adapters.feishu.convert import to_inbound
from tests.fakes.feishu_callback import CallbackRequest, FeishuCallbackDriver, Forgery, encrypt, sign

EK, VT = "my_encrypt_key", "vtoken"
WINDOW, MAX = 300.0, 64 * 1024
T0 = 1_700_000_000
ENC = FeishuCallbackDriver("http://unused", encrypt_key=EK, verification_token=VT)
PLAIN = FeishuCallbackDriver("http://unused", encrypt_key=None, verification_token=VT)


@pytest.fixture(scope="module")
def lark() -> ModuleType:
    return importlib.import_module("lark_oapi")


def parse(request: CallbackRequest, headers: Any, *, key: str | None = EK, now: float | None = None) -> Any:
    return parse_callback(
        request.body,
        headers,
        encrypt_key=key,
        verification_token=VT,
        now=time.time() if now is None else now,
        window=WINDOW,
        max_bytes=MAX,
    )


def rejected(status: int, request: CallbackRequest, headers: Any, **kw: Any) -> str:
    with pytest.raises(FeishuCallbackRejected) as info:
        parse(request, headers, **kw)
    assert info.value.status == status, info.value.reason
    return info.value.reason


# ---- AES ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plaintext", [b"", b"x", b"0123456789abcdef", '你好 {"a":1}'.encode() * 50])
def test_decrypt_interoperates_with_the_sdk_and_pycryptodome(lark: ModuleType, plaintext: bytes) -> None:
    from Crypto.Cipher import AES  # the probe's (and the SDK's) implementation

    aes_cipher = importlib.import_module("lark_oapi.core.utils.decryptor").AESCipher

    ours = encrypt(EK, plaintext)
    assert decrypt(EK, ours) == plaintext
    if plaintext:  # the SDK refuses an empty plaintext outright
        assert aes_cipher(EK).decrypt_str(ours) == plaintext.decode()  # what the SDK calls on `encrypt`
    iv = bytes(range(16))
    pad = 16 - len(plaintext) % 16
    theirs = AES.new(hashlib.sha256(EK.encode()).digest(), AES.MODE_CBC, iv).encrypt(plaintext + bytes([pad]) * pad)
    assert encrypt(EK, plaintext, iv) == base64.b64encode(iv + theirs).decode()
    assert decrypt(EK, base64.b64encode(iv + theirs).decode()) == plaintext


def _ct(plaintext_block: bytes) -> str:
    """A ciphertext whose *decrypted* last block is `plaintext_block` (raw AES-CBC, no padding added)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    iv = bytes(16)
    enc = Cipher(algorithms.AES(hashlib.sha256(EK.encode()).digest()), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + enc.update(plaintext_block) + enc.finalize()).decode()


@pytest.mark.parametrize(
    "encrypted",
    [
        "not base64!!",
        base64.b64encode(b"short").decode(),
        base64.b64encode(bytes(16)).decode(),  # IV only
        base64.b64encode(bytes(40)).decode(),  # not a multiple of the block size
        _ct(b"A" * 15 + b"\x00"),  # pad byte 0
        _ct(b"A" * 15 + b"\x11"),  # pad byte > 16
        _ct(b"A" * 14 + b"\x01\x02"),  # inconsistent padding
        "５５５５",  # non-ASCII
    ],
)
def test_decrypt_rejects_garbage_with_400(encrypted: str) -> None:
    with pytest.raises(FeishuCallbackRejected) as info:
        decrypt(EK, encrypted)
    assert info.value.status == 400


# ---- signatures -----------------------------------------------------------------------------------


def test_signature_formula_and_driver_agree() -> None:
    body = b'{"encrypt":"abc"}'
    expected = hashlib.sha256(b"1700000000" + b"n0nce" + EK.encode() + body).hexdigest()
    assert signature("1700000000", "n0nce", EK, body) == sign("1700000000", "n0nce", EK, body) == expected


@pytest.mark.parametrize(
    "fold",
    [dict, lambda h: {k.lower(): v for k, v in h.items()}, lambda h: {k.upper(): v for k, v in h.items()}, CIMultiDict],
)
def test_signature_passes_with_any_header_casing(fold: Any) -> None:
    request = ENC.build(ENC.text_event("hi"))
    verify_signature(fold(ENC.headers_for(request)), request.body, EK, time.time(), WINDOW)
    assert isinstance(parse(request, fold(ENC.headers_for(request))), EventEnvelope)


@pytest.mark.parametrize(
    ("forge", "now_offset", "reason"),
    [
        (Forgery(bad_signature=True, timestamp=str(T0)), 0, "bad signature"),
        (Forgery(encrypt_key="another key", timestamp=str(T0)), 0, "bad signature"),
        (Forgery(timestamp=str(T0)), WINDOW + 1, "window"),
        (Forgery(timestamp=str(T0)), -WINDOW - 1, "window"),
        (Forgery(timestamp="17e8"), 0, "integer"),
    ],
    ids=["bad", "other-key", "stale", "future", "not-digits"],
)
def test_signature_failures_are_401(forge: Forgery, now_offset: float, reason: str) -> None:
    request = ENC.build(ENC.text_event("hi"), forge)
    headers = ENC.headers_for(request, forge)
    with pytest.raises(FeishuCallbackRejected) as info:
        verify_signature(headers, request.body, EK, T0 + now_offset, WINDOW)
    assert info.value.status == 401 and reason in info.value.reason
    assert reason in rejected(401, request, headers, now=T0 + now_offset)


def test_window_edge_and_missing_or_partial_headers() -> None:
    ts = T0
    request = ENC.build(ENC.text_event("hi"), Forgery(timestamp=str(ts)))
    headers = ENC.headers_for(request, Forgery(timestamp=str(ts)))
    verify_signature(headers, request.body, EK, ts + WINDOW, WINDOW)  # exactly at the edge: accepted
    for name in ("X-Lark-Signature", "X-Lark-Request-Nonce"):
        partial = {k: v for k, v in headers.items() if k != name}
        assert name in rejected(401, request, partial, now=ts)


def test_the_sdk_accepts_what_the_driver_sends_and_rejects_forgeries(lark: ModuleType) -> None:
    got: list[str] = []
    handler = (
        lark.EventDispatcherHandler.builder(EK, VT)
        .register_p2_im_message_receive_v1(lambda data: got.append(data.header.event_id))
        .build()
    )

    def sdk(request: CallbackRequest, forge: Forgery | None = None) -> Any:
        raw = lark.RawRequest()
        raw.uri, raw.body, raw.headers = "/webhooks/feishu/x", request.body, ENC.headers_for(request, forge)
        return handler.do(raw)

    challenge = ENC.build(ENC.challenge_document("c-123"), signed=False)
    assert json.loads(sdk(challenge).content) == {"challenge": "c-123"}
    event = ENC.build(ENC.text_event("hi", event_id="ev-sdk"))
    assert sdk(event).status_code == 200 and got == ["ev-sdk"]
    assert sdk(event, Forgery(bad_signature=True)).status_code == 500
    assert sdk(ENC.build(ENC.text_event("x"), Forgery(token="wrong"))).status_code == 500


# ---- parse_callback -------------------------------------------------------------------------------


def test_encrypted_event_envelope() -> None:
    request = ENC.build(ENC.text_event("hi", event_id="ev1"))
    result = parse(request, ENC.headers_for(request))
    assert isinstance(result, EventEnvelope)
    assert (result.event_id, result.event_type, result.schema) == ("ev1", "im.message.receive_v1", "2.0")
    assert (result.app_id, result.tenant_key, result.encrypted) == ("cli_test", "tk_test", True)
    assert result.payload == request.document


def test_plaintext_event_needs_only_the_token() -> None:
    request = PLAIN.build(PLAIN.text_event("hi", event_id="ev2"))
    for key in (None, ""):
        result = parse(request, {}, key=key)
        assert isinstance(result, EventEnvelope) and result.event_id == "ev2" and not result.encrypted


@pytest.mark.parametrize("driver", [PLAIN, ENC], ids=["plain", "encrypted"])
def test_url_verification(driver: FeishuCallbackDriver) -> None:
    key = driver.encrypt_key
    request = driver.build(driver.challenge_document("ch-1"), signed=False)
    result = parse(request, {}, key=key)
    assert isinstance(result, UrlVerification) and result.response() == {"challenge": "ch-1"}
    signed = driver.build(driver.challenge_document("ch-2"), signed=True)
    assert parse(signed, driver.headers_for(signed), key=key) == UrlVerification("ch-2")
    forged = driver.build(driver.challenge_document("ch-3"), Forgery(token="nope"), signed=False)
    rejected(401, forged, {}, key=key)


def test_unsigned_encrypted_requests_are_only_challenges_and_fail_uniformly() -> None:
    reasons = {
        rejected(401, ENC.build(ENC.text_event("hi"), Forgery(unsigned=True)), {}),  # a real event, unsigned
        rejected(401, ENC.build({}, Forgery(raw_plaintext=b"\x00" * 5, unsigned=True)), {}),  # not JSON
        rejected(401, ENC.build(ENC.challenge_document(), Forgery(encrypt_key="other"), signed=False), {}),  # padding
        rejected(401, ENC.build(ENC.challenge_document(), Forgery(token="x"), signed=False), {}),  # token
        rejected(401, ENC.build({"type": "url_verification", "token": VT}, signed=False), {}),  # no challenge
    }
    assert len(reasons) == 1  # no padding / plaintext oracle
    big = ENC.build({**ENC.challenge_document(), "pad": "x" * MAX_UNSIGNED_BYTES}, signed=False)
    assert rejected(401, big, {}) in reasons


def test_body_shape_and_mode_mismatches() -> None:
    assert rejected(413, CallbackRequest(b"{" * (MAX + 1), {}, False, False), {}, key=None)
    for garbage in (
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1,2]",
        b'"s"',
        b"[" * 60_000,  # RecursionError inside json
        b'{"encrypt": 5}',
        b'{"encrypt": ""}',
    ):
        rejected(400, CallbackRequest(garbage, {}, False, False), {}, key=EK)
    rejected(400, ENC.build(ENC.text_event("x")), {}, key=None)  # encrypted, but no key configured
    rejected(401, PLAIN.build(PLAIN.text_event("x")), {}, key=EK)  # plaintext, but a key is configured
    rejected(401, PLAIN.build(PLAIN.text_event("x"), Forgery(token="wrong")), {}, key=None)
    rejected(401, PLAIN.build(PLAIN.text_event("x"), Forgery(token="")), {}, key=None)
    request = ENC.build({}, Forgery(raw_plaintext=b"[not json"))
    rejected(400, request, ENC.headers_for(request))  # signed, so decryption errors may be specific


def test_empty_configured_token_fails_closed() -> None:
    request = PLAIN.build(PLAIN.text_event("x", event_id="e"), Forgery(token=""))
    with pytest.raises(FeishuCallbackRejected) as info:
        parse_callback(request.body, {}, encrypt_key=None, verification_token="", now=0, window=1, max_bytes=MAX)
    assert info.value.status == 401


@pytest.mark.parametrize(
    "document",
    [
        {"schema": "2.0", "header": "x", "event": {}},
        {"schema": "2.0", "header": {"token": VT, "event_type": "t"}, "event": {}},
        {"schema": "2.0", "header": {"token": VT, "event_id": "e"}, "event": {}},
        {"schema": "2.0", "header": {"token": VT, "event_id": "e", "event_type": "t"}, "event": []},
        {"uuid": "", "token": VT, "event": {"type": "message"}},
        {"uuid": "u", "token": VT, "event": {}},
        {"type": "url_verification", "token": VT},
        {"hello": "world"},
    ],
)
def test_malformed_envelopes_are_400(document: dict[str, Any]) -> None:
    rejected(400, PLAIN.build(document), {}, key=None)


def test_v1_events_map_uuid_to_the_event_id() -> None:
    doc = {"uuid": "u-1", "token": VT, "ts": "1700000000.1", "type": "event_callback", "event": {"type": "message"}}
    result = parse(PLAIN.build(doc), {}, key=None)
    assert isinstance(result, EventEnvelope)
    assert (result.event_id, result.event_type, result.schema, result.create_time) == (
        "u-1",
        "message",
        "1.0",
        "1700000000.1",
    )
    assert to_inbound("fs", result.payload, bot_open_id="ou_bot", received_at=datetime.now(UTC)) is None


# ---- fuzz -----------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
KEYS = ["schema", "header", "event", "event_id", "event_type", "token", "sender", "sender_id", "open_id",
        "sender_type", "message", "message_id", "chat_id", "chat_type", "message_type", "content", "mentions",
        "key", "id", "name", "thread_id", "root_id", "type", "challenge", "uuid", "encrypt"]  # fmt: skip


def _mutate(doc: Any, path: list[int], value: Any, drop: bool) -> Any:
    """Replace (or drop) one node of `doc`, chosen by `path`, with `value`."""
    if not path or not isinstance(doc, dict | list) or not doc:
        return value
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    k = keys[path[0] % len(keys)]
    out: Any = dict(doc) if isinstance(doc, dict) else list(doc)
    if drop and len(path) == 1 and isinstance(out, dict):
        del out[k]
    else:
        out[k] = _mutate(out[k], path[1:], value, drop)
    return out


def _content_variants() -> st.SearchStrategy[str]:
    return st.one_of(JSON.map(json.dumps), st.text(max_size=30), st.just('{"text": "@_user_1 @_user_2 x"}'))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(["text", "post", "image", "file", "media", "sticker"]),
    path=st.lists(st.integers(0, 50), max_size=5),
    value=st.one_of(JSON, _content_variants(), st.dictionaries(st.sampled_from(KEYS), JSON, max_size=4)),
    drop=st.booleans(),
)
def test_fuzzed_envelopes_only_ever_raise_rejections(base: str, path: list[int], value: Any, drop: bool) -> None:
    content: Any = (
        {"text": "@_user_1 hi"} if base == "text" else {"title": "t", "content": [[{"tag": "text", "text": "x"}]]}
    )
    envelope = _mutate(
        PLAIN.message_event(base, content, mentions=[PLAIN.mention(1, "ou_bot", "B")]), path, value, drop
    )
    body = json.dumps(envelope).encode()
    for key in (None, EK):
        result, status = outcome(
            lambda k=key: parse_callback(body, {}, encrypt_key=k, verification_token=VT, now=0, window=1, max_bytes=MAX)
        )
        assert status in (None, 400, 401)
        if isinstance(result, EventEnvelope):
            assert outcome(lambda r=result: inbound(r.payload))[1] in (None, 400)
    assert outcome(lambda: inbound(envelope))[1] in (None, 400)


def outcome(call: Any) -> tuple[Any, int | None]:
    """(result, None) or (None, rejection status); any other exception propagates and fails the test."""
    try:
        return call(), None
    except FeishuCallbackRejected as exc:
        return None, exc.status


def inbound(envelope: Any) -> Any:
    return to_inbound("fs", envelope, bot_open_id="ou_bot", received_at=datetime.now(UTC))


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=300),
    headers=st.dictionaries(
        st.sampled_from(["X-Lark-Signature", "x-lark-request-timestamp", "X-Lark-Request-Nonce"]), st.text(max_size=20)
    ),
)
def test_fuzzed_bodies_and_headers_only_ever_raise_rejections(body: bytes, headers: dict[str, str]) -> None:
    for key in (None, EK):
        call = lambda k=key: parse_callback(  # noqa: E731
            body, headers, encrypt_key=k, verification_token=VT, now=0, window=1, max_bytes=200
        )
        assert outcome(call)[1] in (None, 400, 401, 413)


@settings(max_examples=200, deadline=None)
@given(plaintext=st.binary(max_size=100), iv=st.binary(min_size=16, max_size=16))
def test_decrypt_roundtrips_any_plaintext(plaintext: bytes, iv: bytes) -> None:
    assert decrypt(EK, encrypt(EK, plaintext, iv)) == plaintext


# ---- the driver against a real HTTP server --------------------------------------------------------


class TinyServer:
    """A minimal request-URL endpoint built on the pure functions; the first `fail_first` events get 500."""

    def __init__(self, encrypt_key: str | None, fail_first: int = 0, slow_first: int = 0) -> None:
        self.encrypt_key, self.fail_first, self.slow_first = encrypt_key, fail_first, slow_first
        self.seen: list[str] = []  # event ids, every delivery
        self.accepted: set[str] = set()  # dedup keys (message ids)
        self.rejections: list[tuple[int, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            result = parse_callback(
                body, request.headers, encrypt_key=self.encrypt_key, verification_token=VT,
                now=time.time(), window=WINDOW, max_bytes=MAX,
            )  # fmt: skip
        except FeishuCallbackRejected as exc:
            self.rejections.append((exc.status, exc.reason))
            return web.json_response({"msg": exc.reason}, status=exc.status)
        if isinstance(result, UrlVerification):
            return web.json_response(result.response())
        self.seen.append(result.event_id)
        if len(self.seen) <= self.slow_first:
            await asyncio.sleep(1.0)
        if len(self.seen) <= self.fail_first:
            return web.json_response({"msg": "busy"}, status=500)
        msg = to_inbound("fs", result.payload, bot_open_id="ou_bot", received_at=datetime.now(UTC))
        if msg is not None:
            self.accepted.add(msg.platform_msg_id)
        return web.json_response({"msg": "success"})


@pytest.fixture
async def server() -> AsyncIterator[tuple[TinyServer, str]]:
    tiny = TinyServer(EK, fail_first=2, slow_first=1)
    app = web.Application()
    app.router.add_post("/webhooks/feishu/fs", tiny.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield tiny, f"http://127.0.0.1:{port}/webhooks/feishu/fs"
    await runner.cleanup()


async def test_driver_against_a_tiny_server_with_redelivery(server: tuple[TinyServer, str]) -> None:
    tiny, url = server
    driver = FeishuCallbackDriver(url, encrypt_key=EK, verification_token=VT, timeout=0.5, retry_schedule=(0.05,) * 4)
    assert (await driver.verify_url("hello")).verified  # unsigned + encrypted, like the real platform
    result = await driver.send(driver.text_event("hi", event_id="ev-http", message_id="om_http"))
    # attempt 1: no answer within the timeout; attempt 2: 500; attempt 3: 200 - always the same event_id
    assert [a.status for a in result.attempts] == [None, 500, 200]
    assert result.acked and tiny.seen == ["ev-http"] * 3 and tiny.accepted == {"om_http"}
    assert len({a.headers["X-Lark-Request-Nonce"] for a in result.attempts}) == 3  # re-signed every time
    lower = await driver.send(
        driver.text_event("case", event_id="ev-lower", message_id="om_lower"), forge=Forgery(lowercase_headers=True)
    )
    assert lower.acked and "om_lower" in tiny.accepted
    forged = await driver.send(driver.text_event("x"), forge=Forgery(bad_signature=True), retry_schedule=(0.01,))
    assert [a.status for a in forged.attempts] == [401, 401] and tiny.rejections[-1] == (401, "bad signature")
