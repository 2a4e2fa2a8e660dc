"""CardKit card entities for the Feishu API fake: create, stream element text, settings, full update.

Rules (sources in `feishu_api.py`): card JSON 2.0 only (300303); `update_multi: false` refused (300302);
every operation on a card carries a `sequence` that must be strictly greater than the last accepted one
(300317); element-content updates need streaming mode on (300309) and a markdown / plain_text element
(300310); streaming mode closes by itself after `streaming_timeout` (200850); at most
`ops_per_second` operations per card entity (10/s; answered 429 + 99991400, an assumption); the entity
expires after 14 days (200750) and can be sent in one message only. The caller holds the fake's lock.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tests.fakes.feishu_api_model import (
    CARD_JSON_MAX_BYTES,
    CK_ELEMENT_FAILED,
    CK_EMPTY,
    CK_EXPIRED,
    CK_GENERATE_FAILED,
    CK_INVALID_PARAM,
    CK_NO_PERMISSION,
    CK_NOT_FOUND,
    CK_ONLY_TEXT,
    CK_SCHEMA,
    CK_SEQUENCE,
    CK_STREAMING_CLOSED,
    CK_STREAMING_TIMEOUT,
    CK_TOO_LARGE,
    CK_UPDATE_MULTI_FALSE,
    CK_UUID_CONFLICT,
    ELEMENT_CONTENT_MAX_CHARS,
    FOURTEEN_DAYS,
    IM_CARD_FAILED,
    SEQUENCE_MAX,
    ApiError,
    CardUpdate,
    CardView,
    Json,
    SlidingWindows,
    card_elements,
    card_text,
    fail,
    rate_limited,
)

Op = Literal["content", "settings", "update"]


@dataclass
class _Card:
    card_id: str
    app_id: str
    card: Json
    streaming_mode: bool
    streaming_since: float
    created_at: float
    last_sequence: int = 0
    message_id: str | None = None
    finalize_count: int = 0
    closed_by_timeout: bool = False
    uuids: dict[str, str] = field(default_factory=dict)  # uuid -> signature of the operation that used it
    updates: list[CardUpdate] = field(default_factory=list)


def _parse_card_json(data: Any) -> Json:
    """A validated card JSON 2.0 object from the `data` string of create / full update."""
    if not isinstance(data, str) or not data.strip():
        raise fail(CK_EMPTY)
    if len(data.encode()) > CARD_JSON_MAX_BYTES:
        raise fail(CK_TOO_LARGE)
    try:
        card = json.loads(data)
    except ValueError:
        raise fail(CK_GENERATE_FAILED, "card JSON is not valid JSON") from None
    if not isinstance(card, dict) or not card:
        raise fail(CK_EMPTY)
    if card.get("schema") != "2.0":
        raise fail(CK_SCHEMA)
    config = card.get("config")
    if isinstance(config, dict) and config.get("update_multi") is False:
        raise fail(CK_UPDATE_MULTI_FALSE)
    card_elements(card)  # 300301 on duplicate element_id
    return card


def _streaming_flag(card: Json) -> bool:
    config = card.get("config")
    return isinstance(config, dict) and config.get("streaming_mode") is True


class CardStore:
    def __init__(self, windows: SlidingWindows, *, ops_per_second: int | None, streaming_timeout: float | None) -> None:
        self._windows = windows
        self.ops_per_second = ops_per_second
        self.streaming_timeout = streaming_timeout
        self._cards: dict[str, _Card] = {}
        self._counter = 0

    # ---- endpoints ---------------------------------------------------------------------------------------------

    def create(self, app_id: str, body: Any, now: float) -> Json:
        body = body if isinstance(body, dict) else {}
        kind = body.get("type")
        if kind == "card_json":
            card = _parse_card_json(body.get("data"))
        elif kind == "template" and isinstance(body.get("data"), str) and body["data"]:
            card = {"template": body["data"]}
        else:
            raise fail(CK_INVALID_PARAM, "type must be card_json or template")
        self._counter += 1
        card_id = str(7_300_000_000_000_000_000 + self._counter)
        streaming = _streaming_flag(card)
        entity = _Card(card_id, app_id, card, streaming, now, now)
        entity.updates.append(CardUpdate(card_id, "create", now, True, 0, streaming_mode=streaming))
        self._cards[card_id] = entity
        return {"card_id": card_id}

    def content(self, app_id: str, card_id: str, element_id: str, body: Any, now: float) -> Json:
        body = body if isinstance(body, dict) else {}
        content = body.get("content")
        card = self._begin(app_id, card_id, now)

        def apply() -> bool:
            if not isinstance(content, str) or not 1 <= len(content) <= ELEMENT_CONTENT_MAX_CHARS:
                raise fail(CK_INVALID_PARAM, "content must be 1-100000 characters")
            signature = f"content:{element_id}:{content}"
            if self._replayed(card, body, signature):
                return True
            self._check_sequence(card, body.get("sequence"))
            self._check_streaming(card, now)
            element = card_elements(card.card).get(element_id)
            if element is None:
                raise fail(CK_ELEMENT_FAILED, f"element {element_id!r} not found")
            if element.get("tag") not in ("markdown", "plain_text"):
                raise fail(CK_ONLY_TEXT)
            element["content"] = content
            self._accept(card, body, signature)
            return False

        meta = {"element_id": element_id, "content": content if isinstance(content, str) else None}
        return self._run(card, "content", body, now, meta, apply)

    def settings(self, app_id: str, card_id: str, body: Any, now: float) -> Json:
        body = body if isinstance(body, dict) else {}
        card = self._begin(app_id, card_id, now)

        def apply() -> bool:
            try:
                settings = json.loads(body.get("settings") or "")
            except (TypeError, ValueError):
                raise fail(CK_INVALID_PARAM, "settings must be a JSON string") from None
            config = settings.get("config") if isinstance(settings, dict) else None
            if not isinstance(config, dict):
                raise fail(CK_INVALID_PARAM, 'settings needs {"config": {...}}')
            if config.get("update_multi") is False:
                raise fail(CK_UPDATE_MULTI_FALSE)
            signature = f"settings:{json.dumps(settings, sort_keys=True)}"
            if self._replayed(card, body, signature):
                return True
            self._check_sequence(card, body.get("sequence"))
            card.card.setdefault("config", {}).update(config)
            if "card_link" in settings:
                card.card["card_link"] = settings["card_link"]
            if "streaming_mode" in config:
                self._set_streaming(card, config["streaming_mode"] is True, explicit=True, now=now)
            self._accept(card, body, signature)
            return False

        return self._run(card, "settings", body, now, {}, apply)

    def update(self, app_id: str, card_id: str, body: Any, now: float) -> Json:
        body = body if isinstance(body, dict) else {}
        card = self._begin(app_id, card_id, now)

        def apply() -> bool:
            wrapper = body.get("card")
            if not isinstance(wrapper, dict) or wrapper.get("type") != "card_json":
                raise fail(CK_INVALID_PARAM, 'card must be {"type": "card_json", "data": "..."}')
            new_card = _parse_card_json(wrapper.get("data"))
            signature = f"update:{wrapper.get('data')}"
            if self._replayed(card, body, signature):
                return True
            self._check_sequence(card, body.get("sequence"))
            config = new_card.get("config")
            explicit = isinstance(config, dict) and "streaming_mode" in config
            card.card = new_card
            self._set_streaming(card, _streaming_flag(new_card), explicit=explicit, now=now)
            self._accept(card, body, signature)
            return False

        return self._run(card, "update", body, now, {}, apply)

    # ---- used by message sending and observers -----------------------------------------------------------------

    def attach(self, app_id: str, card_id: Any, message_id: str, now: float) -> str:
        """Validate sending card entity `card_id` in a new message and remember the message."""
        card = self._cards.get(card_id) if isinstance(card_id, str) else None
        if card is None:
            raise fail(IM_CARD_FAILED, f"card entity {card_id!r} not found")
        if card.app_id != app_id:
            raise fail(CK_NO_PERMISSION)
        if now - card.created_at >= FOURTEEN_DAYS:
            raise fail(CK_EXPIRED)
        if card.message_id is not None:
            raise fail(IM_CARD_FAILED, "a card entity can only be sent once")
        card.message_id = message_id
        return card.card_id

    def exists(self, card_id: str) -> bool:
        return card_id in self._cards

    def text(self, card_id: str) -> tuple[str, bool]:
        card = self._cards[card_id]
        return card_text(card.card), not card.streaming_mode

    def view(self, card_id: str) -> CardView:
        card = self._cards[card_id]
        texts = {
            eid: str(el.get("content", ""))
            for eid, el in card_elements(card.card).items()
            if el.get("tag") in ("markdown", "plain_text")
        }
        return CardView(
            card_id=card.card_id,
            app_id=card.app_id,
            card=copy.deepcopy(card.card),
            streaming_mode=card.streaming_mode,
            finalized=not card.streaming_mode,
            finalize_count=card.finalize_count,
            closed_by_timeout=card.closed_by_timeout,
            last_sequence=card.last_sequence,
            message_id=card.message_id,
            text=card_text(card.card),
            element_texts=texts,
            updates=tuple(card.updates),
        )

    def ids(self) -> list[str]:
        return list(self._cards)

    def all_updates(self) -> list[CardUpdate]:
        return sorted((u for c in self._cards.values() for u in c.updates), key=lambda u: u.at)

    # ---- helpers -----------------------------------------------------------------------------------------------

    def _begin(self, app_id: str, card_id: str, now: float) -> _Card:
        card = self._cards.get(card_id)
        if card is None:
            raise fail(CK_NOT_FOUND)
        if now - card.created_at >= FOURTEEN_DAYS:
            raise fail(CK_EXPIRED)
        if card.app_id != app_id:
            raise fail(CK_NO_PERMISSION)
        if self.ops_per_second is not None:
            wait = self._windows.blocked(("card", card_id), self.ops_per_second, 1.0, now)
            if wait is not None:
                raise rate_limited(self.ops_per_second, wait)
            self._windows.record(("card", card_id), 1.0, now)
        return card

    @staticmethod
    def _run(card: _Card, op: Op, body: Json, now: float, meta: dict[str, Any], apply: Callable[[], bool]) -> Json:
        """Run `apply` (True: uuid replay, nothing changed) and log the outcome as a CardUpdate."""
        sequence = body.get("sequence")
        uuid = body.get("uuid") if isinstance(body.get("uuid"), str) else None
        common: dict[str, Any] = {
            "sequence": sequence if isinstance(sequence, int) and not isinstance(sequence, bool) else None,
            "uuid": uuid,
            **meta,
        }
        try:
            dedup = apply()
        except ApiError as exc:
            card.updates.append(
                CardUpdate(card.card_id, op, now, False, exc.code, streaming_mode=card.streaming_mode, **common)
            )
            raise
        update = CardUpdate(card.card_id, op, now, True, 0, streaming_mode=card.streaming_mode, dedup=dedup, **common)
        card.updates.append(update)
        return {}

    @staticmethod
    def _replayed(card: _Card, body: Json, signature: str) -> bool:
        """True when this uuid already ran this exact operation (answered 0 again); 200770 for another one."""
        uuid = body.get("uuid")
        previous = card.uuids.get(uuid) if isinstance(uuid, str) and uuid else None
        if previous is None:
            return False
        if previous != signature:
            raise fail(CK_UUID_CONFLICT)
        return True

    @staticmethod
    def _accept(card: _Card, body: Json, signature: str) -> None:
        card.last_sequence = int(body["sequence"])
        uuid = body.get("uuid")
        if isinstance(uuid, str) and uuid:
            card.uuids[uuid] = signature

    @staticmethod
    def _check_sequence(card: _Card, sequence: Any) -> None:
        if isinstance(sequence, bool) or not isinstance(sequence, int) or not 1 <= sequence <= SEQUENCE_MAX:
            raise fail(CK_INVALID_PARAM, "sequence must be a positive int32")
        if sequence <= card.last_sequence:
            raise fail(CK_SEQUENCE, f"(last accepted {card.last_sequence}, got {sequence})")

    def _check_streaming(self, card: _Card, now: float) -> None:
        timeout = self.streaming_timeout
        if card.streaming_mode and timeout is not None and now - card.streaming_since >= timeout:
            card.streaming_mode = False
            card.closed_by_timeout = True
            card.updates.append(CardUpdate(card.card_id, "timeout", now, True, 0, streaming_mode=False))
            raise fail(CK_STREAMING_TIMEOUT)
        if not card.streaming_mode:
            raise fail(CK_STREAMING_TIMEOUT if card.closed_by_timeout else CK_STREAMING_CLOSED)

    @staticmethod
    def _set_streaming(card: _Card, streaming: bool, *, explicit: bool, now: float) -> None:
        was = card.streaming_mode
        if streaming and not was:
            card.streaming_since = now
            card.closed_by_timeout = False
        if not streaming and (was or explicit):
            card.finalize_count += 1
        card.streaming_mode = streaming
