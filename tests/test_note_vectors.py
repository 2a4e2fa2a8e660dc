"""Memory recall by meaning: the sqlite-vec index partitioned per user, kept in step with the notes
(add, forget, eviction, reconcile after a crash), and the agent's prompt showing an old but related note."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from agent_core.agent import memory as agent_memory
from agent_core.agent.memory import BEGIN, END, PROMPT_NOTES
from agent_core.agent.ports import TurnContext
from agent_core.agent.react import SkillAgent
from agent_core.llm import LiteLLMClient, LLMProfile
from agent_core.router import WordLlamaEmbedder
from gateway.memory_runtime import VECTORS_FILE, open_memory
from gateway.store.note_vectors import NoteVectors, VectorsUnavailable
from gateway.store.sqlite_db import SqliteDatabase
from gateway.store.sqlite_memory import SqliteMemoryStore
from sessions.memory import MemoryNote
from tests.fakes.fake_llm import FakeLLM
from tests.test_agent import Library, Runner

ALICE, BOB = "wx:bot:alice", "wx:bot:bob"


class WordsEmbedder:
    """Deterministic bag of words: texts sharing words are close, texts sharing none are orthogonal-ish."""

    dim = 64

    def __init__(self, name: str = "words") -> None:
        self.name = name
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.sha1(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        return out


class Spawned:
    """The runtime's spawn, keeping the tasks so a test can wait for them."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def __call__(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.append(task)
        return task


@pytest.fixture
async def vectors(tmp_path: Path) -> AsyncIterator[NoteVectors]:
    index = await NoteVectors.open(tmp_path / VECTORS_FILE, WordsEmbedder())
    await index.warm_up()
    yield index
    await index.close()


async def test_nearest_searches_only_the_users_own_partition(vectors: NoteVectors) -> None:
    await vectors.put(ALICE, [(1, "postgres replica lag alert"), (2, "lunch is at noon"), (3, "deploy on fridays")])
    await vectors.put(BOB, [(4, "postgres replica lag alert"), (5, "postgres replica lag runbook")])
    assert (await vectors.nearest(ALICE, "replica lag on postgres", 2))[0] == 1
    assert set(await vectors.nearest(ALICE, "postgres replica lag", 10)) == {1, 2, 3}  # never 4 or 5
    assert set(await vectors.nearest(BOB, "postgres replica lag", 10)) == {4, 5}
    assert await vectors.nearest("wx:bot:nobody", "postgres", 5) == []
    assert await vectors.nearest(ALICE, "   ", 5) == [] and await vectors.nearest(ALICE, "postgres", 0) == []


async def test_recall_waits_for_the_model_instead_of_making_a_turn_wait(tmp_path: Path) -> None:
    index = await NoteVectors.open(tmp_path / VECTORS_FILE, WordsEmbedder())
    await index.put(ALICE, [(1, "postgres replica lag")])  # writes may load the model: they are off the turn's path
    assert await index.nearest(ALICE, "postgres replica lag", 5) == []
    await index.warm_up()
    assert await index.nearest(ALICE, "postgres replica lag", 5) == [1]
    await index.close()


async def test_put_replaces_an_id_and_drop_forgets(vectors: NoteVectors) -> None:
    await vectors.put(ALICE, [(1, "postgres replica lag"), (2, "kafka consumer offsets")])
    await vectors.put(ALICE, [(1, "kafka broker disk")])  # the same id, new text
    assert (await vectors.nearest(ALICE, "kafka broker disk", 1)) == [1]
    await vectors.drop([1, 999])
    assert await vectors.nearest(ALICE, "kafka broker disk", 5) == [2]


async def test_reconcile_indexes_missing_notes_and_drops_stale_vectors(vectors: NoteVectors) -> None:
    await vectors.put(ALICE, [(1, "old note"), (7, "deleted while the index was down")])
    notes = [(1, ALICE, "old note"), (2, ALICE, "new note"), (3, BOB, "bob note")]

    async def load() -> list[tuple[int, str, str]]:
        return notes

    assert await vectors.reconcile(load) == (2, 1)
    assert set(await vectors.nearest(ALICE, "note", 10)) == {1, 2}
    assert await vectors.nearest(BOB, "note", 10) == [3]
    assert await vectors.reconcile(load) == (0, 0)


async def test_reconcile_keeps_a_note_added_while_it_runs(db: SqliteDatabase, vectors: NoteVectors) -> None:
    store = SqliteMemoryStore(db, vectors=vectors)
    added: list[int] = []

    async def load_then_add() -> list[tuple[int, str, str]]:
        snapshot: list[tuple[int, str, str]] = []  # the notes as read, before a concurrent turn adds one
        note = await store.add(ALICE, "kafka broker disk is full", now=1.0)
        assert note is not None
        added.append(note.id)
        return snapshot

    await vectors.reconcile(load_then_add)
    assert await vectors.nearest(ALICE, "kafka broker disk", 5) == added


async def test_an_index_of_another_model_is_rebuilt(tmp_path: Path, db: SqliteDatabase) -> None:
    path = tmp_path / VECTORS_FILE
    first = await NoteVectors.open(path, WordsEmbedder("model-a"))
    store = SqliteMemoryStore(db, vectors=first)
    note = await store.add(ALICE, "postgres replica lag", now=1.0)
    assert note is not None
    await first.close()
    second = await NoteVectors.open(path, WordsEmbedder("model-b"))  # vectors of model-a are meaningless now
    await second.warm_up()
    assert await second.nearest(ALICE, "postgres replica lag", 5) == []
    assert await SqliteMemoryStore(db, vectors=second).reconcile_vectors() == (1, 0)
    assert await second.nearest(ALICE, "postgres replica lag", 5) == [note.id]
    await second.close()


async def test_store_keeps_the_index_in_step_with_notes(db: SqliteDatabase, vectors: NoteVectors) -> None:
    store = SqliteMemoryStore(db, vectors=vectors, max_notes=3)
    first = await store.add(ALICE, "postgres replica lag alert threshold is 30s", now=1.0)
    assert first is not None
    for i in range(2):
        await store.add(ALICE, f"unrelated fact number {i}", now=2.0 + i)
    [hit] = await store.relevant(ALICE, "what is the replica lag threshold", 1)
    assert hit.id == first.id and hit.text.startswith("postgres")
    assert await store.relevant(BOB, "what is the replica lag threshold", 5) == []

    await store.add(ALICE, "one more unrelated fact", now=9.0)  # the cap evicts the oldest note...
    assert first.id not in {n.id for n in await store.recent(ALICE, 10)}
    assert first.id not in await vectors.nearest(ALICE, "postgres replica lag alert threshold", 10)  # ...and its vector

    second = await store.add(ALICE, "redis eviction policy is allkeys-lru", now=10.0)
    assert second is not None
    assert await store.forget(ALICE, second.id)
    assert second.id not in await vectors.nearest(ALICE, "redis eviction policy", 10)


async def test_a_vector_whose_note_is_gone_is_dropped_on_sight(db: SqliteDatabase, vectors: NoteVectors) -> None:
    store = SqliteMemoryStore(db, vectors=vectors)
    await vectors.put(ALICE, [(4242, "postgres replica lag")])  # its note was forgotten during a rebuild
    assert await store.relevant(ALICE, "postgres replica lag", 5) == []
    assert await vectors.nearest(ALICE, "postgres replica lag", 5) == []


async def test_stale_vectors_never_surface_another_users_note(db: SqliteDatabase, vectors: NoteVectors) -> None:
    store = SqliteMemoryStore(db, vectors=vectors)
    bobs = await store.add(BOB, "bob's vpn password hint is his cat", now=1.0)
    assert bobs is not None
    await vectors.put(ALICE, [(bobs.id, "vpn password hint")])  # a corrupted index: bob's note filed under alice
    assert await store.relevant(ALICE, "vpn password hint", 5) == []  # filtered, and the misfiled vector dropped
    assert await store.relevant(BOB, "vpn password hint", 5) == []  # bob's recall lost it until...
    assert await store.reconcile_vectors() == (1, 0)  # ...the next start files it under bob again
    assert await store.relevant(ALICE, "vpn password hint", 5) == []
    assert [n.id for n in await store.relevant(BOB, "vpn password hint", 5)] == [bobs.id]


async def test_without_an_index_recall_is_by_recency_and_notes_still_work(db: SqliteDatabase) -> None:
    store = SqliteMemoryStore(db)
    note = await store.add(ALICE, "postgres replica lag alert", now=1.0)
    assert note is not None
    assert await store.relevant(ALICE, "postgres", 5) == []
    assert await store.reconcile_vectors() == (0, 0)
    assert [n.id for n in await store.recent(ALICE, 5)] == [note.id]


async def test_open_memory_falls_back_when_sqlite_vec_cannot_load(
    db: SqliteDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "sqlite_vec", None)  # as on a Python where it is not installed
    with pytest.raises(VectorsUnavailable):
        await NoteVectors.open(tmp_path / "x.sqlite3", WordsEmbedder())
    with caplog.at_level(logging.WARNING):
        memory = await open_memory(db, tmp_path, WordsEmbedder(), Spawned())
    assert memory.vectors is None and "recalled by recency only" in caplog.text
    assert await memory.store.add(ALICE, "still remembered", now=1.0) is not None
    await memory.close()


async def test_an_unreadable_index_file_is_set_aside_and_rebuilt(db: SqliteDatabase, tmp_path: Path) -> None:
    note = await SqliteMemoryStore(db).add(ALICE, "the billing cluster runs postgres 16", now=1.0)
    assert note is not None
    (tmp_path / VECTORS_FILE).write_bytes(b"this is not a database" * 100)
    spawned = Spawned()
    memory = await open_memory(db, tmp_path, WordsEmbedder(), spawned)
    await asyncio.gather(*spawned.tasks)
    assert memory.vectors is not None
    assert [n.id for n in await memory.store.relevant(ALICE, "postgres billing", 1)] == [note.id]
    assert any(name.startswith(f"{VECTORS_FILE}.unreadable-") for name in os.listdir(tmp_path))
    await memory.close()


async def test_open_memory_reconciles_notes_written_before_the_index(db: SqliteDatabase, tmp_path: Path) -> None:
    plain = SqliteMemoryStore(db)  # notes from before recall existed (or from a run whose index was deleted)
    old = await plain.add(ALICE, "the billing cluster runs postgres 16", now=1.0)
    assert old is not None
    spawned = Spawned()
    memory = await open_memory(db, tmp_path, WordsEmbedder(), spawned)
    await asyncio.gather(*spawned.tasks)
    assert [n.id for n in await memory.store.relevant(ALICE, "which postgres does billing run", 1)] == [old.id]
    await memory.close()


# ---- the agent: an old note related to the message is shown beside the newest ones ---------------------------


@pytest.fixture
def llm(fake_llm: FakeLLM) -> LiteLLMClient:
    profile = LLMProfile(model="openai/fake", api_base=fake_llm.base_url, api_key_env="TEST_LLM_KEY", retries=0)
    return LiteLLMClient({"main": profile}, "main", {"TEST_LLM_KEY": "sk-test"})


async def test_newest_notes_do_not_use_up_the_related_slots(
    db: SqliteDatabase, vectors: NoteVectors, fake_llm: FakeLLM, llm: LiteLLMClient
) -> None:
    store = SqliteMemoryStore(db, vectors=vectors)
    old = await store.add(ALICE, "replica lag threshold is 30s for db-main", now=1.0)
    assert old is not None
    for i in range(PROMPT_NOTES):  # every newest note matches the question better than the old one
        await store.add(ALICE, f"replica lag threshold question asked {i}", now=2.0 + i)
    agent = SkillAgent(llm, Library(), None, Runner(), memory=store)
    fake_llm.enqueue("30s")
    await agent.answer([], ["replica lag threshold question"], TurnContext(user_key=ALICE))
    assert f"[{old.id}] replica lag threshold is 30s" in fake_llm.chat_requests()[-1].body["messages"][0]["content"]


class SlowRecallStore(SqliteMemoryStore):
    async def relevant(self, user_key: str, query: str, limit: int) -> list[MemoryNote]:
        await asyncio.sleep(3600)
        return []


async def test_a_hanging_recall_costs_only_the_related_notes(
    db: SqliteDatabase, fake_llm: FakeLLM, llm: LiteLLMClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_memory, "RECALL_SECONDS", 0.05)
    store = SlowRecallStore(db)
    note = await store.add(ALICE, "prefers short answers", now=1.0)
    assert note is not None
    fake_llm.enqueue("ok")
    agent = SkillAgent(llm, Library(), None, Runner(), memory=store)
    _, trace = await asyncio.wait_for(agent.answer([], ["hi"], TurnContext(user_key=ALICE)), 30)
    assert f"[{note.id}] prefers short answers" in fake_llm.chat_requests()[-1].body["messages"][0]["content"]
    assert trace.errors == ["memory recall: TimeoutError"]


async def test_the_prompt_shows_an_old_note_related_to_the_question(
    db: SqliteDatabase, tmp_path: Path, fake_llm: FakeLLM, llm: LiteLLMClient
) -> None:
    real = await NoteVectors.open(tmp_path / "real.sqlite3", WordLlamaEmbedder())  # the offline default model
    await real.warm_up()
    store = SqliteMemoryStore(db, vectors=real)
    old = await store.add(ALICE, "Our PostgreSQL primary is db-main-01 and replicas alert above 30 s lag", now=1.0)
    assert old is not None
    await store.add(BOB, "PostgreSQL replicas of the data team alert above 5 minutes of lag", now=1.0)
    chatter = ["likes green tea", "team standup is at 10:00", "prefers short answers", "office is in Hangzhou"]
    for i in range(PROMPT_NOTES + 5):
        await store.add(ALICE, f"{chatter[i % len(chatter)]} (note {i})", now=2.0 + i)
    assert old.id not in {n.id for n in await store.recent(ALICE, PROMPT_NOTES)}

    agent = SkillAgent(llm, Library(), None, Runner(), memory=store)
    fake_llm.enqueue("db-main-01, 30 s")
    await agent.answer([], ["what is the database replication delay threshold?"], TurnContext(user_key=ALICE))
    prompt = fake_llm.chat_requests()[-1].body["messages"][0]["content"]
    section = prompt[prompt.index(BEGIN) : prompt.index(END)]
    assert f"[{old.id}] Our PostgreSQL primary is db-main-01" in section
    assert "5 minutes" not in prompt  # bob's similar note stays bob's
    for note in await store.recent(ALICE, PROMPT_NOTES):  # the newest notes are all still there
        assert f"[{note.id}] " in section
    await real.close()
