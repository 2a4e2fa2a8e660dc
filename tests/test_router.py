"""Skill router: tokenization, English/Chinese routing on a small ops library, degradation, persistence, learning."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agent_core.router import FusionWeights, SkillRouter, WordLlamaEmbedder
from agent_core.router.tokenize import Analyzer, readable
from agent_core.skills.model import SkillCard

OPS = [
    SkillCard("HttpHealthCheck", "Probe an HTTP endpoint and report whether it answers 200 OK and how fast."),
    SkillCard("service_status", "检查服务状态：查看进程是否在运行、端口是否监听", ("运维",)),
    SkillCard("fetch_url_summarize", "Fetch a web page by URL and summarize its content."),
    SkillCard("disk-usage", "Show disk usage and free space per mounted filesystem."),
    SkillCard("restart_service", "Restart a systemd service and confirm it came back up."),
    SkillCard("tail_logs", "Tail the latest application log lines and highlight errors."),
    SkillCard("cpu_load", "Report CPU load average and the top processes by CPU."),
    SkillCard("memory_usage", "Report RAM and swap usage and the biggest memory consumers."),
    SkillCard("dns_lookup", "Resolve a domain name to its DNS records (A, AAAA, MX, TXT)."),
    SkillCard("ssl_cert_expiry", "Check when a site's TLS/SSL certificate expires."),
    SkillCard("ping_host", "Ping a host and report packet loss and round-trip latency."),
    SkillCard("port_scan", "List which TCP ports are open on a host."),
    SkillCard("backup_database", "Dump the PostgreSQL database to a compressed backup file."),
    SkillCard("cron_jobs", "List scheduled cron jobs and when they last ran."),
    SkillCard("docker_ps", "List running Docker containers with status and uptime."),
    SkillCard("git_recent_commits", "Show the latest commits of a git repository."),
    SkillCard("translate_text", "把文本翻译成英文或中文 (translate text between Chinese and English)."),
    SkillCard("weather_forecast", "查询城市天气预报：温度、降雨和风力。"),
    SkillCard("send_alert", "Send an alert message to the on-call channel."),
    SkillCard("queue_depth", "Report the backlog length of the message queue."),
]


@pytest.fixture(scope="module")
def embedder() -> WordLlamaEmbedder:
    """Loaded once per module (~0.4 s)."""
    emb = WordLlamaEmbedder()
    emb.embed(["warm up"])
    return emb


@pytest.fixture
def router(tmp_path: Path, embedder: WordLlamaEmbedder) -> SkillRouter:
    r = SkillRouter(tmp_path / "router.db", embedder=embedder)
    r.upsert(OPS)
    return r


def top(r: SkillRouter, query: str) -> str:
    return r.route(query, 3)[0].name


def test_identifiers_split_lowercase_stem_and_drop_stopwords() -> None:
    a = Analyzer()
    assert a.terms("HttpHealthCheck") == ["http", "health", "check"]
    assert a.terms("http_health-check") == ["http", "health", "check"]
    assert a.terms("HTTPServer getURL") == ["http", "server", "url"]
    assert a.terms("Can you check the running services?") == ["check", "run", "servic"]
    assert readable("HttpHealthCheck") == "http health check"


def test_chinese_and_mixed_text() -> None:
    a = Analyzer()
    terms = a.terms("检查服务状态")
    assert {"检查", "服务", "状态"} <= set(terms) and "查服" in terms  # jieba words plus char bigrams
    mixed = a.terms("请帮我检查一下nginx服务的HTTP状态")
    assert {"nginx", "http", "检查", "服务", "状态"} <= set(mixed)
    assert "的" not in mixed and "请" not in mixed


@pytest.mark.parametrize(
    ("query", "skill"),
    [
        ("is the http health endpoint ok?", "HttpHealthCheck"),
        ("HttpHealthCheck", "HttpHealthCheck"),
        ("how much free disk space is left", "disk-usage"),
        ("summarize this page https://example.com/post", "fetch_url_summarize"),
        ("which containers are running", "docker_ps"),
        ("when does the certificate for example.com expire", "ssl_cert_expiry"),
        ("restart nginx please", "restart_service"),
    ],
)
def test_english_routing(router: SkillRouter, query: str, skill: str) -> None:
    assert top(router, query) == skill


@pytest.mark.parametrize(
    ("query", "skill"),
    [
        ("检查服务状态", "service_status"),
        ("帮我看看nginx服务是不是还在运行", "service_status"),
        ("北京明天天气怎么样", "weather_forecast"),
        ("把这段话翻译成英文", "translate_text"),
    ],
)
def test_chinese_routing(router: SkillRouter, query: str, skill: str) -> None:
    assert top(router, query) == skill


def test_hits_explain_themselves(router: SkillRouter) -> None:
    hit = router.route("http health", 1)[0]
    assert "http" in hit.why and "semantic" in hit.why
    assert router.route("", 5) == [] and router.route("disk", 0) == []
    assert len(router.route("disk", 50)) == len(OPS)


class BrokenEmbedder:
    """Embeds cards fine, then starts failing (an endpoint going down)."""

    def __init__(self, inner: WordLlamaEmbedder) -> None:
        self.inner, self.fail = inner, False

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if self.fail:
            raise ConnectionError("embedding endpoint down")
        return self.inner.embed(texts)


def test_degrades_to_lexical_when_the_embedder_fails(
    tmp_path: Path, embedder: WordLlamaEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    broken = BrokenEmbedder(embedder)
    r = SkillRouter(tmp_path / "r.db", embedder=broken)
    r.upsert(OPS)
    broken.fail = True
    with caplog.at_level(logging.WARNING):
        hits = r.route("check the http health endpoint", 3)
        r.route("disk usage", 3)
    assert hits[0].name == "HttpHealthCheck" and "semantic" not in hits[0].why
    assert r.stats().degraded
    assert sum("embedder" in rec.message for rec in caplog.records) == 1  # logged once per outage
    broken.fail = False
    assert top(r, "disk usage") == "disk-usage" and not r.stats().degraded


def test_embedder_down_at_upsert_backfills_later(tmp_path: Path, embedder: WordLlamaEmbedder) -> None:
    broken = BrokenEmbedder(embedder)
    broken.fail = True
    r = SkillRouter(tmp_path / "r.db", embedder=broken)
    r.upsert(OPS)
    assert top(r, "检查服务状态") == "service_status"  # lexical only
    broken.fail = False
    r.upsert([SkillCard("new_skill", "something else entirely")])  # next rebuild embeds the missing cards
    assert "semantic" in r.route("how full is the disk", 1)[0].why


def test_lexical_only_router(tmp_path: Path) -> None:
    r = SkillRouter(tmp_path / "r.db", embedder=None)
    r.upsert(OPS)
    assert top(r, "HttpHealthCheck") == "HttpHealthCheck"
    assert top(r, "检查服务状态") == "service_status"
    assert r.stats().embedder is None


def test_upsert_remove_reupsert(router: SkillRouter) -> None:
    assert router.upsert(OPS) == 0  # unchanged cards are skipped
    assert router.remove(["disk-usage", "no-such-skill"]) == 1
    assert "disk-usage" not in [h.name for h in router.route("disk usage free space", 20)]
    assert router.upsert([SkillCard("disk-usage", "Show how full each volume is.")]) == 1
    assert top(router, "how full is each volume") == "disk-usage"
    assert router.upsert([SkillCard("disk-usage", "Rotate the TLS keys.")]) == 1  # updated, not duplicated
    assert router.stats().skills == len(OPS)


def test_persists_across_reopen(tmp_path: Path, embedder: WordLlamaEmbedder) -> None:
    r = SkillRouter(tmp_path / "r.db", embedder=embedder)
    r.upsert(OPS)
    r.learn("queue_depth", "are jobs piling up in the worker")
    r.close()
    calls: list[int] = []

    class Counting(BrokenEmbedder):
        def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            calls.append(len(texts))
            return super().embed(texts)

    with SkillRouter(tmp_path / "r.db", embedder=Counting(embedder)) as again:
        assert again.stats().skills == len(OPS) and again.stats().examples == 1
        assert top(again, "检查服务状态") == "service_status"
        assert calls == [1]  # only the query was embedded: stored vectors were reused


def test_learn_fixes_a_miss(router: SkillRouter) -> None:
    query = "are jobs piling up in the worker"
    assert top(router, query) != "queue_depth"
    for q in ("jobs piling up", "are workers keeping up with jobs", "how many jobs are waiting"):
        assert router.learn("queue_depth", q)
    assert top(router, query) == "queue_depth"
    assert "like past requests" in router.route(query, 1)[0].why
    assert not router.learn("no-such-skill", query)


def test_utility_prior_breaks_ties(router: SkillRouter) -> None:
    router.weights = FusionWeights(utility=1.0)
    before = router.route("report usage", 2)
    router.set_utility(before[1].name, 5.0)
    assert top(router, "report usage") == before[1].name
