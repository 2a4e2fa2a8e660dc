"""Pure pieces of the Feishu long-connection protocol: frames, fragments, bootstrap and handshake answers.

No I/O here except `load_frame_class`. Every fact is taken from lark-oapi 1.7.5 (`lark_oapi/ws/client.py`,
`const.py`, `model.py`, `enum.py`, `pb/pbbp2_pb2.py`):

* Frames are protobuf `pbbp2.Frame {SeqID, LogID, service, method, headers[key,value], payload_encoding,
  payload_type, payload, LogIDNew}`; method 0 = CONTROL (`type` ping/pong), 1 = DATA (`type` event/card).
* A DATA frame carries `message_id`, `trace_id`, `sum`, `seq`; `sum > 1` means the payload is split and the
  parts are joined by `message_id` in `seq` order (the SDK keeps parts 5 s).
* The ack is the received frame echoed back with a `biz_rt` header (ms) and the payload `{"code": 200}`
  (500 when the handler failed, which makes Feishu redeliver).
* Bootstrap `POST /callback/ws/endpoint` answers `{code, msg, data: {URL, ClientConfig}}`; code 1 = busy and
  1000040343 = internal error are retried by the SDK, every other code is a client error it gives up on.
* A refused WebSocket handshake carries `handshake-status`, `handshake-msg`, `handshake-autherrcode`;
  514 + 1000040350 means the app already has its maximum of connections.

The generated `Frame` class is untyped, so it only ever appears inside `FrameCodec`; the rest of the adapter
sees the frozen `WsFrame`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, urlparse

ENDPOINT_PATH = "/callback/ws/endpoint"
METHOD_CONTROL = 0
METHOD_DATA = 1
TYPE_EVENT, TYPE_CARD, TYPE_PING, TYPE_PONG = "event", "card", "ping", "pong"
H_TYPE, H_MESSAGE_ID, H_TRACE_ID, H_SUM, H_SEQ, H_BIZ_RT = "type", "message_id", "trace_id", "sum", "seq", "biz_rt"
H_STATUS, H_MSG, H_AUTH_ERRCODE = "handshake-status", "handshake-msg", "handshake-autherrcode"

CODE_OK, CODE_SYSTEM_BUSY, CODE_FORBIDDEN, CODE_AUTH_FAILED = 0, 1, 403, 514
CODE_INTERNAL_ERROR, CODE_EXCEED_CONN_LIMIT = 1000040343, 1000040350
_RETRYABLE_CODES = frozenset({CODE_SYSTEM_BUSY, CODE_INTERNAL_ERROR})

_PB_MODULE = "lark_oapi.ws.pb.pbbp2_pb2"


async def load_frame_class() -> type:
    """The SDK's generated protobuf `Frame` class, imported in a worker thread.

    Importing anything under `lark_oapi` runs the whole package (2-5 s) and `lark_oapi/ws/client.py` calls
    `asyncio.get_event_loop()` at import, which must neither block nor see the gateway's running loop.
    `sys.modules` makes later calls instant; callers keep the class on their instance.
    """
    return await asyncio.to_thread(_import_frame_class)


def _import_frame_class() -> type:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # what lark's ws/client.py grabs at import, instead of a running loop
    try:
        module = importlib.import_module(_PB_MODULE)
    finally:
        asyncio.set_event_loop(None)
        # lark keeps the loop as its module-global `loop` when this import ran its ws client module first;
        # that loop must stay usable for the SDK. Otherwise nothing references it.
        if getattr(sys.modules.get("lark_oapi.ws.client"), "loop", None) is not loop:
            loop.close()
    frame_cls = module.Frame
    if not isinstance(frame_cls, type):
        raise TypeError(f"{_PB_MODULE}.Frame is not a class")
    return frame_cls


@dataclass(frozen=True, slots=True)
class WsFrame:
    """One protocol frame, typed; field names follow `pbbp2.Frame`."""

    method: int
    service: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    payload: bytes = b""
    seq_id: int = 0
    log_id: int = 0
    payload_encoding: str = ""
    payload_type: str = ""
    log_id_new: str = ""

    def header(self, key: str, default: str = "") -> str:
        for k, v in self.headers:
            if k == key:
                return v
        return default

    @property
    def type(self) -> str:
        return self.header(H_TYPE)


class FrameCodec:
    """Turns bytes into `WsFrame` and back with the SDK's generated (untyped) protobuf class."""

    def __init__(self, frame_cls: type) -> None:
        self._cls: Any = frame_cls

    def decode(self, data: bytes) -> WsFrame:
        """Parse one binary WebSocket message (raises on malformed protobuf)."""
        pb = self._cls()
        pb.ParseFromString(data)
        return WsFrame(
            method=int(pb.method),
            service=int(pb.service),
            headers=tuple((str(h.key), str(h.value)) for h in pb.headers),
            payload=bytes(pb.payload),
            seq_id=int(pb.SeqID),
            log_id=int(pb.LogID),
            payload_encoding=str(pb.payload_encoding),
            payload_type=str(pb.payload_type),
            log_id_new=str(pb.LogIDNew),
        )

    def encode(self, frame: WsFrame) -> bytes:
        pb = self._cls()
        pb.SeqID, pb.LogID, pb.service, pb.method = frame.seq_id, frame.log_id, frame.service, frame.method
        for key, value in frame.headers:
            header = pb.headers.add()
            header.key, header.value = key, value
        optional = {"payload": frame.payload, "payload_encoding": frame.payload_encoding}
        optional.update(payload_type=frame.payload_type, LogIDNew=frame.log_id_new)
        for name, given in optional.items():
            if given:  # proto2 optional: leave unset rather than send an empty value
                setattr(pb, name, given)
        return bytes(pb.SerializeToString())


def ping_frame(service_id: int) -> WsFrame:
    """The SDK's `_new_ping_frame`: CONTROL, `type=ping`, the service id from the connection URL."""
    return WsFrame(method=METHOD_CONTROL, service=service_id, headers=((H_TYPE, TYPE_PING),))


def ack_frame(frame: WsFrame, code: int, biz_rt_ms: int) -> WsFrame:
    """The received frame echoed back with `biz_rt` appended and a `Response` JSON payload."""
    return replace(
        frame,
        headers=(*frame.headers, (H_BIZ_RT, str(max(0, biz_rt_ms)))),
        payload=json.dumps({"code": code}).encode(),
    )


def int_header(frame: WsFrame, key: str, default: int) -> int:
    """A numeric header (`sum`, `seq`): `default` when absent, -1 when malformed (callers reject it)."""
    try:
        return int(frame.header(key, str(default)))
    except ValueError:
        return -1


# ---------------------------------------------------------------------------------------------- configuration
@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Timings the server dictates (bootstrap `data.ClientConfig`, pong payloads); seconds."""

    reconnect_count: int = -1  # < 0: forever
    reconnect_interval: float = 120.0
    reconnect_nonce: float = 30.0
    ping_interval: float = 120.0

    def merged_json(self, payload: bytes) -> ClientConfig:
        """Apply a pong's payload (a ClientConfig JSON object, or nothing)."""
        try:
            raw = json.loads(payload) if payload else None
        except ValueError:
            raw = None
        return self.merged(raw) if isinstance(raw, dict) else self

    def merged(self, raw: Mapping[str, Any]) -> ClientConfig:
        """Apply the server's keys; missing or nonsensical values keep the current setting."""
        return ClientConfig(
            reconnect_count=int(_number(raw.get("ReconnectCount"), self.reconnect_count, minimum=-1)),
            reconnect_interval=_number(raw.get("ReconnectInterval"), self.reconnect_interval, minimum=0.01),
            reconnect_nonce=_number(raw.get("ReconnectNonce"), self.reconnect_nonce, minimum=0.0),
            ping_interval=_number(raw.get("PingInterval"), self.ping_interval, minimum=0.01),
        )


def _number(value: object, current: float, *, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        return current
    return float(value)


class LinkError(Exception):
    """Bootstrap or handshake refused; `slow` marks auth/limit trouble that a quick retry cannot fix."""

    def __init__(self, message: str, *, slow: bool = False) -> None:
        super().__init__(message)
        self.slow = slow


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to connect, as the bootstrap answered."""

    url: str
    device_id: str
    service_id: int
    client_config: Mapping[str, Any] = field(default_factory=dict)


def parse_endpoint(status: int, body: bytes) -> Endpoint:
    """Read the bootstrap answer like the SDK's `_get_conn_url`, raising `LinkError` with a clear reason."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise LinkError(f"bootstrap HTTP {status}: answer is not a JSON object")
    msg = str(doc.get("msg") or "")
    if status != 200:
        raise LinkError(f"bootstrap HTTP {status}: {msg or 'system busy'}")
    code = doc.get("code")
    if code != CODE_OK:
        if code in _RETRYABLE_CODES:
            raise LinkError(f"bootstrap code {code}: {msg or 'system busy'}")
        hint = " (check app_id / app_secret and that the app uses long-connection event delivery)"
        raise LinkError(f"bootstrap refused: code {code} {msg}{hint}", slow=True)
    data = doc.get("data")
    url = data.get("URL") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(url, str):
        raise LinkError("bootstrap answer without data.URL")
    query = parse_qs(urlparse(url).query)
    device, service = query.get("device_id", [""])[0], query.get("service_id", [""])[0]
    if not device or not service.isdigit():
        raise LinkError("bootstrap URL lacks device_id or a numeric service_id")
    config = data.get("ClientConfig")
    return Endpoint(url, device, int(service), config if isinstance(config, dict) else {})


def handshake_error(status: int, headers: Mapping[str, str]) -> LinkError:
    """Classify a refused WebSocket upgrade by its `handshake-*` headers (SDK `_parse_ws_conn_exception`)."""
    code, msg = headers.get(H_STATUS, ""), headers.get(H_MSG, "")
    if not code.lstrip("-").isdigit():
        return LinkError(f"handshake refused: HTTP {status}")
    auth_code = headers.get(H_AUTH_ERRCODE, "")
    if int(code) == CODE_AUTH_FAILED and auth_code == str(CODE_EXCEED_CONN_LIMIT):
        return LinkError(
            f"connection limit reached: handshake {code}/{auth_code} {msg} (Feishu allows 50 connections per app)",
            slow=True,
        )
    if int(code) == CODE_FORBIDDEN:
        return LinkError(f"handshake forbidden: {code} {msg}", slow=True)
    return LinkError(f"handshake refused: {code} {msg} {auth_code}".strip())


# ---------------------------------------------------------------------------------------------- fragments
class Reassembler:
    """Joins split payloads by `message_id`; parts older than `ttl` are dropped, memory stays bounded."""

    def __init__(
        self, *, ttl: float, max_parts: int, max_bytes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl, self._max_parts, self._max_bytes, self._clock = ttl, max_parts, max_bytes, clock
        self._partial: dict[str, tuple[float, list[bytes | None]]] = {}  # oldest first
        self._bytes = 0
        self.dropped = 0  # incomplete or refused payloads, for metrics

    def add(self, message_id: str, total: int, seq: int, chunk: bytes) -> bytes | None:
        """Store one part; the whole payload once its last part arrived, else None."""
        now = self._clock()
        while self._partial and now - next(iter(self._partial.values()))[0] > self._ttl:
            self._drop_oldest()
        if not message_id or not 1 <= total <= self._max_parts or not 0 <= seq < total:
            self.dropped += 1
            return None
        if len(self._partial.get(message_id, (0.0, []))[1]) != total:  # new, or restarted with another sum
            self._forget(message_id)
            self._partial[message_id] = (now, [None] * total)
        chunks = self._partial[message_id][1]
        self._bytes += len(chunk) - len(chunks[seq] or b"")
        chunks[seq] = chunk
        if all(c is not None for c in chunks):
            self._forget(message_id)
            return b"".join(c for c in chunks if c is not None)
        while self._bytes > self._max_bytes:
            self._drop_oldest()
        return None

    def clear(self) -> None:
        """Forget every partial payload (the connection they arrived on is gone)."""
        self.dropped += len(self._partial)
        self._partial.clear()
        self._bytes = 0

    def _drop_oldest(self) -> None:
        self._forget(next(iter(self._partial)))
        self.dropped += 1

    def _forget(self, message_id: str) -> None:
        _, chunks = self._partial.pop(message_id, (0.0, []))
        self._bytes -= sum(len(c) for c in chunks if c is not None)
