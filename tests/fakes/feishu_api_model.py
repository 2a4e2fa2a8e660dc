"""Data types, error catalogue and content rules shared by the Feishu API fake (see `feishu_api.py`)."""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

Json: TypeAlias = dict[str, Any]

TEXT_MAX_BYTES = 150 * 1024  # text message request body [doc im-v1/message/patch, reply: 230025]
CARD_POST_MAX_BYTES = 30 * 1024  # card and post request body [same source]
CARD_JSON_MAX_BYTES = 30 * 1024  # CardKit card entity ("200860 ... keep the card within 30KB")
ELEMENT_CONTENT_MAX_CHARS = 100_000  # cardkit element content "1 ~ 100000 characters"
SEQUENCE_MAX = 2_147_483_647  # cardkit sequence: positive int32
FOURTEEN_DAYS = 14 * 24 * 3600.0
TEXT_TAGS = frozenset({"markdown", "plain_text", "lark_md"})
EPSILON = 1e-6  # float slack for clock arithmetic (the manual clock adds offsets to a monotonic base)
RECEIVE_ID_TYPES = frozenset({"open_id", "user_id", "union_id", "email", "chat_id"})
UPDATABLE_TYPES = frozenset({"text", "post"})


class ApiError(Exception):
    """A Feishu error answer: HTTP status + `{"code","msg"}` (+ headers, e.g. the x-ogw rate-limit pair)."""

    def __init__(self, code: int, msg: str, *, status: int = 400, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.status = status
        self.headers = dict(headers or {})


# ---- error catalogue (code, msg); sources in feishu_api.py's docstring ----------------------------------------
TOKEN_INVALID = (99991663, "Invalid access token for authorization. Please make a request with token attached.")
TOKEN_MISSING = (99991661, "Missing access token for authorization. Please make a request with token attached.")
RATE_LIMITED = (99991400, "request trigger frequency limit")
ROUTE_NOT_FOUND = (99991201, "resource not find")
FIELD_INVALID = (99992402, "field validation failed")
APP_ID_INVALID = (10003, "invalid param")
APP_SECRET_INVALID = (10014, "app secret invalid")
IM_INVALID_PARAM = (230001, "Your request contains an invalid request parameter.")
IM_FREQUENCY = (230020, "This operation triggers the frequency limit.")
IM_TOO_LONG = (230025, "The length of the message content reaches its limit.")
IM_TOO_OLD = (230031, "Message can only be modified within 14 days after sending.")
IM_TYPE_UNSUPPORTED = (230054, "This operation is not supported for this message type.")
IM_NOT_SENDER = (230071, "The operator is not the sender of the message.")
IM_EDIT_LIMIT = (230072, "The message has reached the number of times it can be edited.")
IM_CARD_FAILED = (230099, "Failed to create card content.")
RES_INVALID_PARAM = (234001, "Invalid request param.")
RES_NOT_IN_MESSAGE = (234003, "File not in message.")
CK_INVALID_PARAM = (10002, "Your request contains an invalid request parameter.")
CK_GENERATE_FAILED = (200220, "Failed to generate card content")
CK_NOT_FOUND = (200740, "The card entity does not exist")
CK_EXPIRED = (200750, "The card entity has expired")
CK_UUID_CONFLICT = (200770, "UUID conflict")
CK_STREAMING_TIMEOUT = (200850, "Card streaming timeout")
CK_TOO_LARGE = (200860, "Card content exceeds limit.")
CK_DUPLICATE_ELEMENT = (300301, "Duplicate element_id in card component.")
CK_UPDATE_MULTI_FALSE = (300302, "update_multi property is false")
CK_SCHEMA = (300303, "Only schema 2.0 is supported")
CK_EMPTY = (300307, "The card DSL is empty")
CK_STREAMING_CLOSED = (300309, "Card streaming closed")
CK_ONLY_TEXT = (300310, "Only update text")
CK_NO_PERMISSION = (300311, "The current application does not have permission to update/use this card")
CK_ELEMENT_FAILED = (300313, "Failed to update element properties")
CK_SEQUENCE = (300317, "The sequence number for operating on the card did not increment consecutively")


def fail(error: tuple[int, str], detail: str = "", *, status: int = 400) -> ApiError:
    code, msg = error
    return ApiError(code, f"{msg} {detail}".strip() if detail else msg, status=status)


def rate_limited(limit: int, reset_after: float, *, status: int = 429) -> ApiError:
    """The gateway's frequency-control answer (429 + 99991400 + x-ogw-ratelimit-* headers, values in seconds)."""
    reset = max(1, math.ceil(reset_after - EPSILON))
    headers = {"x-ogw-ratelimit-limit": str(limit), "x-ogw-ratelimit-reset": str(reset)}
    return ApiError(RATE_LIMITED[0], RATE_LIMITED[1], status=status, headers=headers)


# ---- recorded / observable values ------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One HTTP request the fake received, with the answer it gave (status/response filled in when answered)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # parsed JSON or None
    raw: bytes
    at: float  # fake clock
    app_id: str | None = None  # whose token was presented (None: none / invalid)
    status: int | None = None
    response: Json | None = None  # JSON answer (None for binary / non-JSON answers)
    injected: bool = False  # answered by fail_next

    @property
    def code(self) -> int | None:
        return None if self.response is None else self.response.get("code")


@dataclass(frozen=True)
class VisibleMessage:
    """A message as a chat member sees it right now. For card messages `text` is the card's current text."""

    message_id: str
    chat_id: str
    sender: Literal["app", "user"]
    app_id: str | None  # sending app (None for inbound user messages)
    msg_type: str
    content: str  # content JSON string as last set (for card entities: the {"type":"card"} reference)
    text: str
    card_id: str | None
    finalized: bool | None  # card entities: streaming_mode is off; None for non-card messages
    root_id: str
    parent_id: str
    thread_id: str
    created_at: float
    edits: int


@dataclass(frozen=True)
class DedupHit:
    """A create/reply whose uuid was already used by the same app within the window: no new message."""

    app_id: str
    uuid: str
    message_id: str  # the original message, returned again
    path: str
    same_payload: bool
    at: float


@dataclass(frozen=True)
class CardUpdate:
    """One CardKit operation on a card entity, accepted or rejected (code != 0)."""

    card_id: str
    op: Literal["create", "content", "settings", "update", "timeout"]
    at: float
    accepted: bool
    code: int
    sequence: int | None = None
    element_id: str | None = None
    content: str | None = None
    streaming_mode: bool | None = None  # streaming mode after the operation
    uuid: str | None = None
    dedup: bool = False  # replay of an earlier uuid: answered 0, nothing changed


@dataclass(frozen=True)
class CardView:
    """Snapshot of a card entity."""

    card_id: str
    app_id: str
    card: Json
    streaming_mode: bool
    finalized: bool
    finalize_count: int  # explicit streaming_mode -> false transitions requested (settings / full update)
    closed_by_timeout: bool
    last_sequence: int
    message_id: str | None  # the message it was sent in (a card entity can be sent once)
    text: str
    element_texts: dict[str, str]
    updates: tuple[CardUpdate, ...] = field(default=())

    @property
    def accepted_updates(self) -> list[CardUpdate]:
        return [u for u in self.updates if u.accepted and u.op != "create"]

    def max_updates_in_window(self, window: float = 1.0) -> int:
        """Most accepted operations within any `window` seconds (the platform allows 10/s per card)."""
        times = sorted(u.at for u in self.accepted_updates)
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best


# ---- sliding-window rate limiting ------------------------------------------------------------------------------


class SlidingWindows:
    """Per-key request logs; `blocked` asks, `record` counts (so multi-limit checks only count allowed calls)."""

    def __init__(self) -> None:
        self._hits: dict[tuple[Hashable, float], collections.deque[float]] = {}

    def blocked(self, key: Hashable, limit: int, window: float, now: float) -> float | None:
        """Seconds until a slot frees up if `limit` calls already happened within `window`, else None."""
        log = self._hits.setdefault((key, window), collections.deque())
        while log and log[0] <= now - window + EPSILON:
            log.popleft()
        if len(log) < limit:
            return None
        return log[0] + window - now

    def record(self, key: Hashable, window: float, now: float) -> None:
        self._hits.setdefault((key, window), collections.deque()).append(now)


# ---- message content -------------------------------------------------------------------------------------------

_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "image": ("image_key",),
    "file": ("file_key",),
    "audio": ("file_key",),
    "media": ("file_key",),
    "sticker": ("file_key",),
    "share_chat": ("chat_id",),
    "share_user": ("user_id",),
}
MSG_TYPES = frozenset({"text", "post", "interactive", *_REQUIRED_KEYS})


def parse_content(msg_type: Any, content: Any) -> Json:
    """The parsed `content` JSON string of a message, or 230001 when it does not match `msg_type`."""
    if not isinstance(msg_type, str) or msg_type not in MSG_TYPES:
        raise fail(IM_INVALID_PARAM, f"invalid msg_type: {msg_type!r}")
    if not isinstance(content, str):
        raise fail(IM_INVALID_PARAM, "content must be a JSON string")
    try:
        parsed = json.loads(content)
    except ValueError:
        raise fail(IM_INVALID_PARAM, "content is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise fail(IM_INVALID_PARAM, "content must be a JSON object")
    if msg_type == "text" and not isinstance(parsed.get("text"), str):
        raise fail(IM_INVALID_PARAM, 'text content needs {"text": "..."}')
    if msg_type == "post" and not _post_body(parsed):
        raise fail(IM_INVALID_PARAM, 'post content needs {"zh_cn": {"title": ..., "content": [[...]]}}')
    for key in _REQUIRED_KEYS.get(msg_type, ()):
        if not isinstance(parsed.get(key), str) or not parsed[key]:
            raise fail(IM_INVALID_PARAM, f"{msg_type} content needs {key!r}")
    return parsed


def size_limit(msg_type: str) -> int:
    return TEXT_MAX_BYTES if msg_type == "text" else CARD_POST_MAX_BYTES


def is_card_reference(parsed: Json) -> bool:
    return parsed.get("type") == "card"


def is_card_json(parsed: Json) -> bool:
    return any(k in parsed for k in ("elements", "body", "header", "i18n_elements", "schema"))


def _post_body(parsed: Json) -> Json | None:
    """The first locale's {"title","content"} of a send-side post (`{"zh_cn": {...}}`, optionally under "post")."""
    root = parsed.get("post", parsed)
    if not isinstance(root, dict):
        return None
    if isinstance(root.get("content"), list):  # receive-side shape (no locale)
        return root
    for value in root.values():
        if isinstance(value, dict) and isinstance(value.get("content"), list):
            return value
    return None


def _post_element_text(el: Any) -> str:
    if not isinstance(el, dict):
        return ""
    tag = el.get("tag")
    if tag in ("text", "a", "md"):
        return str(el.get("text", ""))
    if tag == "at":
        return "@" + str(el.get("user_name") or el.get("user_id") or "")
    if tag == "img":
        return "[image]"
    if tag == "emotion":
        return f"[{el.get('emoji_type', '')}]"
    return ""


def post_text(parsed: Json) -> str:
    body = _post_body(parsed) or {}
    lines = [str(body["title"])] if body.get("title") else []
    for paragraph in body.get("content") or []:
        if isinstance(paragraph, list):
            lines.append("".join(_post_element_text(el) for el in paragraph))
    return "\n".join(lines)


def iter_card_nodes(node: Any) -> Iterator[Json]:
    """Every dict in a card JSON in document order, skipping the header (its title is not body text)."""
    if isinstance(node, dict):
        yield node
        for key, value in node.items():
            if key != "header":
                yield from iter_card_nodes(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_card_nodes(item)


def card_text(card: Json) -> str:
    """The text a reader sees in a card: every markdown / plain_text / lark_md content, one per line."""
    texts = [str(n.get("content", "")) for n in iter_card_nodes(card) if n.get("tag") in TEXT_TAGS]
    return "\n".join(t for t in texts if t)


def card_elements(card: Json) -> dict[str, Json]:
    """element_id -> element; 300301 on duplicates."""
    found: dict[str, Json] = {}
    for node in iter_card_nodes(card):
        element_id = node.get("element_id")
        if isinstance(element_id, str) and "tag" in node:
            if element_id in found:
                raise fail(CK_DUPLICATE_ELEMENT, element_id)
            found[element_id] = node
    return found


def message_text(msg_type: str, parsed: Json) -> str:
    """What a reader sees for a non-card-entity message."""
    if msg_type == "text":
        return str(parsed.get("text", ""))
    if msg_type == "post":
        return post_text(parsed)
    if msg_type == "interactive":
        return card_text(parsed)
    key = next(iter(_REQUIRED_KEYS.get(msg_type, ())), "")
    return f"[{msg_type}:{parsed.get(key, '')}]"
