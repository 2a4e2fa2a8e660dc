"""Part 2 of bench/feishu.py: streaming-card update rate against the fake CardKit API.

Split from bench/feishu.py so each file holds one measurement; run it through `bench/feishu.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
for _path in (BENCH.parent, BENCH):  # run as a script: make the repo root and the sibling bench modules importable
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

from aiohttp import web  # noqa: E402
from support import (  # noqa: E402
    self_cpu,
    system_busy,
)

from tests.fakes.fake_llm import FakeLLM, split_chunks  # noqa: E402
from tests.fakes.feishu_api import APP_ID, APP_SECRET, FakeFeishuAPI  # noqa: E402
from tests.fakes.feishu_events import Person, text_event  # noqa: E402
from tests.fakes.feishu_ws import FakeFeishuWs  # noqa: E402

PY = sys.executable
_SCRIPT = Path(PY).parent / "switchboard"
SWITCHBOARD = (
    [str(_SCRIPT)] if _SCRIPT.exists() else [PY, "-c", "import sys; from gateway.cli import main; sys.exit(main())"]
)
SECRET_ENV = "BENCH_FEISHU_APP_SECRET"
USERS = 50
TEXT = "Hello, could you summarise what changed in the deployment pipeline since last week? Thanks!"
ACK_BUDGET = 3.0  # Feishu redelivers an event not acked 200 within this
FEISHU_CARD_LIMIT = 10  # CardKit operations per second per card entity
SEQUENCE_ERROR, RATE_LIMITED = 300317, 99991400


from feishu import Plan, prime, quiet, start_gateway  # noqa: E402

# --------------------------------------------------------------------------- part 2: streaming cards


class SlowStreamLLM(FakeLLM):
    """FakeLLM whose streamed answers are paced: one `chunk_chars` delta every `chunk_delay` seconds.

    Records, per request (keyed by the last user message), when the first and the last delta were written.
    """

    def __init__(self, answer: str, chunk_chars: int, chunk_delay: float) -> None:
        super().__init__(max_recorded=0, default=lambda body: answer, stream_chunk_chars=chunk_chars)
        self.chunk_delay = chunk_delay
        self._times_lock = threading.Lock()
        self.token_times: dict[str, tuple[float, float]] = {}

    async def _stream(
        self, request: web.Request, body: Mapping[str, Any], model: str, reply: Any
    ) -> web.StreamResponse:
        if not isinstance(reply, str):
            return await super()._stream(request, body, model, reply)
        messages = body.get("messages") or []
        key = next((str(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        cid, created = f"chatcmpl-bench{int(time.time() * 1000)}", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
            obj["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
            return f"data: {json.dumps(obj)}\n\n".encode()

        first = 0.0
        for i, piece in enumerate(split_chunks(reply, self.stream_chunk_chars)):
            if i:
                await asyncio.sleep(self.chunk_delay)
            await resp.write(chunk({"role": "assistant", "content": piece} if i == 0 else {"content": piece}, None))
            first = first or time.monotonic()
        last = time.monotonic()
        with self._times_lock:
            self.token_times[key] = (first, last)
        await resp.write(chunk({}, "stop"))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def make_answer(chars: int) -> str:
    """Deterministic text of exactly `chars` characters: lines of seven words, ending in a full stop."""
    text, i = "", 0
    while len(text) < chars:
        text += " ".join(f"token{j:04d}" for j in range(i, i + 7)) + "\n"
        i += 7
    return text[: chars - 1] + "."


def card_figures(
    api: FakeFeishuAPI, card_id: str, answer: str, token_times: tuple[float, float] | None
) -> dict[str, Any]:
    card = api.card(card_id)
    accepted = [u for u in card.updates if u.accepted and u.op != "create"]
    finals = [u for u in accepted if u.op in ("settings", "update") and u.streaming_mode is False]
    final_at = finals[0].at if finals else None
    contents = [u for u in accepted if u.op == "content"]
    streaming = contents[:-1] if finals else contents  # the last content write is finalize's full text
    span = streaming[-1].at - streaming[0].at if len(streaming) > 1 else 0.0
    rejected = [u for u in card.updates if not u.accepted]
    first_token, last_token = token_times or (None, None)
    shown = [m for m in api.visible_messages() if m.card_id == card_id]
    return {
        "card_id": card_id,
        "streaming_updates": len(streaming),
        "streaming_span_s": span,
        "updates_per_s_mean": (len(streaming) - 1) / span if span > 0 else None,
        "max_ops_in_1s": card.max_updates_in_window(1.0),
        "max_content_updates_in_1s": _max_in_window([u.at for u in contents], 1.0),
        "rejected_ops": len(rejected),
        "sequence_errors": sum(1 for u in rejected if u.code == SEQUENCE_ERROR),
        "rate_limited_ops": sum(1 for u in rejected if u.code == RATE_LIMITED),
        "finalize_count": card.finalize_count,
        "finalized": card.finalized,
        "first_token_to_first_update_s": streaming[0].at - first_token if streaming and first_token else None,
        "stream_seconds": last_token - first_token if first_token and last_token else None,
        "last_token_to_finalized_s": final_at - last_token if final_at is not None and last_token else None,
        "final_text_equals_answer": card.text == answer,
        "visible_messages_with_card": len(shown),
    }


def _max_in_window(times: list[float], window: float) -> int:
    times, best, start = sorted(times), 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def card_row(plan: Plan, d: Path, streams: int) -> dict[str, Any]:
    answer = make_answer(plan.answer_chars)
    chunks = len(split_chunks(answer, plan.chunk_chars))
    llm = SlowStreamLLM(answer, plan.chunk_chars, plan.stream_seconds / max(chunks - 1, 1))
    with llm, FakeFeishuAPI() as api, FakeFeishuWs({APP_ID: APP_SECRET}) as ws:
        server = start_gateway(d, llm.base_url, api, ws)
        try:
            llm.enqueue("primed")
            prime(api, ws)
            envelopes = [
                text_event(f"tell me a long story #{i}", sender=Person(f"ou_story_{i}"), chat_id=f"oc_story_{i}")
                for i in range(streams)
            ]
            for envelope in envelopes:
                api.add_event(envelope)
            quiet(plan)
            # The priming answer may itself have become a card (a cold worker answers slowly): not measured.
            primed = {c.card_id for c in api.cards()}

            def measured() -> list[Any]:
                return [c for c in api.cards() if c.card_id not in primed]

            sys0, srv0, own0, t0 = system_busy(), server.cpu_seconds(), self_cpu(), time.monotonic()
            ws.push_many(APP_ID, envelopes)

            def all_final() -> bool:
                cards = measured()
                return len(cards) >= streams and all(c.finalized for c in cards)

            api.wait_for(lambda: all_final() or None, plan.stream_seconds + 60)
            time.sleep(0.5)  # anything late (a second card, a stray update) would show up now
            wall = time.monotonic() - t0
            srv, own = server.cpu_seconds() - srv0, self_cpu() - own0
            by_message = {e["event"]["message"]["message_id"]: e for e in envelopes}
            per_card = []
            for card in measured():
                msg = api.message(card.message_id) if card.message_id else None
                asked = by_message.get(msg.parent_id) if msg is not None else None
                question = json.loads(asked["event"]["message"]["content"])["text"] if asked else ""
                per_card.append(card_figures(api, card.card_id, answer, llm.token_times.get(question)))
            result: dict[str, Any] = {
                "streams": streams,
                "answer_chars": len(answer),
                "chunk_chars": plan.chunk_chars,
                "chunk_delay_ms": 1000 * llm.chunk_delay,
                "cards_created": len(api.cards()),
                "bot_messages": len(api.visible_messages()) - 1,  # minus the priming answer
                "cards": per_card,
                "server_cpu_pct": 100 * srv / wall,
                "bench_process_cpu_pct": 100 * own / wall,
                "other_processes_cpu_pct": 100 * max(0.0, system_busy() - sys0 - srv - own) / wall,
            }
        finally:
            server.stop(kill=True)
    return result
