"""The router's utility prior follows the audit log: failing skills sink, reliable ones win ties."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent_core.router import SkillRouter
from agent_core.router.fusion import outcome_utility
from agent_core.skills.model import SkillCard
from gateway.skill_utility import refresh_skill_utilities
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite_db import SqliteDatabase
from gateway.store.sqlite_traces import SqliteTraceStore


def test_outcome_utility_needs_evidence_and_stays_bounded() -> None:
    assert outcome_utility(0, 0) == 0.0
    one_failure = outcome_utility(0, 1)
    assert -0.05 < one_failure < 0  # one bad run is no verdict
    assert outcome_utility(0, 50) == pytest.approx(-0.5 + 1 / 52)
    assert outcome_utility(50, 50) == pytest.approx(0.5 - 1 / 52)
    assert outcome_utility(5, 10) == 0.0
    assert outcome_utility(0, 10**6) >= -0.5 and outcome_utility(10**6, 10**6) <= 0.5
    assert outcome_utility(99, 3) == outcome_utility(3, 3)  # inconsistent counts are clamped


def _run(skill: str, ok: bool) -> dict[str, Any]:
    return {
        "skill": skill,
        "version": "v1",
        "args": "{}",
        "exit_code": 0 if ok else 1,
        "ok": ok,
        "duration": 0.1,
        "error": "" if ok else "boom",
    }


async def test_skills_that_keep_failing_lose_their_place_to_reliable_ones(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "gw.sqlite3")
    await db.open(MIGRATIONS)
    try:
        traces = SqliteTraceStore(db)
        with SkillRouter(tmp_path / "router.sqlite3", embedder=None) as router:
            others = [
                SkillCard(f"other_{w}", f"Send a {w} message to a chat group.") for w in ("daily", "weekly", "alert")
            ]
            router.upsert(
                [
                    SkillCard("disk_usage_check", "Check disk usage of a host."),
                    SkillCard("disk_report", "Disk usage of a host."),
                    *others,
                ]
            )
            query = "check disk usage of the host"
            assert router.route(query, 2)[0].name == "disk_usage_check"  # the better textual match
            for i in range(20):
                for run in (_run("disk_usage_check", False), _run("disk_report", True)):
                    await traces.record_run(at=1000.0 + i, session_key="k", user_id="u", run=run)
            for _ in range(30):  # outside the window: ignored
                await traces.record_run(at=1.0, session_key="k", user_id="u", run=_run("disk_report", False))

            values = await refresh_skill_utilities(traces.skill_outcomes, router, now=2000.0, window=1500.0)

            assert values["disk_usage_check"] < -0.3 < 0.3 < values["disk_report"]
            assert [h.name for h in router.route(query, 2)] == ["disk_report", "disk_usage_check"]
    finally:
        await db.close()


async def test_skills_without_runs_are_neutral_and_outcomes_are_counted_per_skill(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "gw.sqlite3")
    await db.open(MIGRATIONS)
    try:
        traces = SqliteTraceStore(db)
        for ok in (True, False, True):
            await traces.record_run(at=10.0, session_key="k", user_id="u", run=_run("a", ok))
        assert await traces.skill_outcomes(0.0) == {"a": (2, 3)}
        assert await traces.skill_outcomes(11.0) == {}
        with SkillRouter(tmp_path / "router.sqlite3", embedder=None) as router:
            router.upsert([SkillCard("a", "first skill"), SkillCard("b", "second skill")])
            values = await refresh_skill_utilities(traces.skill_outcomes, router, now=20.0)
        assert values["b"] == 0.0
        assert values["a"] == pytest.approx(outcome_utility(2, 3))
    finally:
        await db.close()
