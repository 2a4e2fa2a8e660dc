"""Metrics: private registries, names, labels and buckets in the exposition."""

from __future__ import annotations

import re

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY

from gateway.metrics import Metrics


def _sample(body: str, name: str, labels: str = "") -> float:
    """Value of one exposition line ``name{labels} value``; fails the test if absent."""
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)$"
    match = re.search(pattern, body, re.MULTILINE)
    assert match is not None, f"{name}{{{labels}}} not in exposition"
    return float(match.group(1))


def test_two_instances_do_not_clash_and_stay_off_default_registry() -> None:
    a = Metrics()
    b = Metrics()  # would raise "Duplicated timeseries" on a shared registry
    assert a.registry is not b.registry
    assert a.registry is not REGISTRY
    a.inbound_total.labels(platform="feishu").inc(3)
    body_a = a.render()[0].decode()
    body_b = b.render()[0].decode()
    assert _sample(body_a, "switchboard_inbound_total", 'platform="feishu"') == 3.0
    assert 'platform="feishu"' not in body_b
    assert REGISTRY.get_sample_value("switchboard_inbound_total", {"platform": "feishu"}) is None


def test_render_contains_names_labels_and_values() -> None:
    m = Metrics()
    m.inbound_total.labels(platform="wecom").inc()
    m.dedup_hits_total.labels(platform="wecom").inc(2)
    m.rejected_total.labels(platform="dingtalk", reason="bad_signature").inc()
    m.queue_depth.set(7)
    m.turns_running.inc()
    m.turn_errors_total.labels(kind="timeout").inc()
    m.outbox_pending.set(4)
    m.outbox_dead.set(1)
    m.sent_total.labels(platform="wechat").inc(5)
    m.send_errors_total.labels(platform="wechat", code="429").inc()
    m.event_loop_lag_seconds.set(0.25)
    m.adapter_connected.labels(adapter="feishu").set(1)

    body, content_type = m.render()
    assert isinstance(body, bytes)
    assert content_type == CONTENT_TYPE_LATEST
    text = body.decode()
    assert _sample(text, "switchboard_inbound_total", 'platform="wecom"') == 1.0
    assert _sample(text, "switchboard_dedup_hits_total", 'platform="wecom"') == 2.0
    assert _sample(text, "switchboard_rejected_total", 'platform="dingtalk",reason="bad_signature"') == 1.0
    assert _sample(text, "switchboard_queue_depth") == 7.0
    assert _sample(text, "switchboard_turns_running") == 1.0
    assert _sample(text, "switchboard_turn_errors_total", 'kind="timeout"') == 1.0
    assert _sample(text, "switchboard_outbox_pending") == 4.0
    assert _sample(text, "switchboard_outbox_dead") == 1.0
    assert _sample(text, "switchboard_sent_total", 'platform="wechat"') == 5.0
    assert _sample(text, "switchboard_send_errors_total", 'code="429",platform="wechat"') == 1.0
    assert _sample(text, "switchboard_event_loop_lag_seconds") == 0.25
    assert _sample(text, "switchboard_adapter_connected", 'adapter="feishu"') == 1.0


def test_every_metric_is_prefixed() -> None:
    body = Metrics().render()[0].decode()
    names = set(re.findall(r"^# TYPE (\S+) ", body, re.MULTILINE))
    expected = {
        "switchboard_inbound_total",
        "switchboard_dedup_hits_total",
        "switchboard_rejected_total",
        "switchboard_queue_depth",
        "switchboard_turns_running",
        "switchboard_turn_latency_seconds",
        "switchboard_turn_errors_total",
        "switchboard_outbox_pending",
        "switchboard_outbox_dead",
        "switchboard_sent_total",
        "switchboard_send_errors_total",
        "switchboard_event_loop_lag_seconds",
        "switchboard_adapter_connected",
        "switchboard_journal_batch_size",
    }
    assert expected <= names, expected - names
    assert all(n.startswith("switchboard_") for n in names), names


def test_histogram_buckets() -> None:
    m = Metrics()
    m.turn_latency_seconds.observe(0.003)
    m.turn_latency_seconds.observe(90.0)
    m.journal_batch_size.observe(1)
    m.journal_batch_size.observe(300)
    text = m.render()[0].decode()

    assert _sample(text, "switchboard_turn_latency_seconds_bucket", 'le="0.005"') == 1.0
    assert _sample(text, "switchboard_turn_latency_seconds_bucket", 'le="60.0"') == 1.0
    assert _sample(text, "switchboard_turn_latency_seconds_bucket", 'le="120.0"') == 2.0
    assert _sample(text, "switchboard_turn_latency_seconds_bucket", 'le="+Inf"') == 2.0
    assert _sample(text, "switchboard_turn_latency_seconds_count") == 2.0

    assert _sample(text, "switchboard_journal_batch_size_bucket", 'le="1.0"') == 1.0
    assert _sample(text, "switchboard_journal_batch_size_bucket", 'le="256.0"') == 1.0
    assert _sample(text, "switchboard_journal_batch_size_bucket", 'le="512.0"') == 2.0
    assert _sample(text, "switchboard_journal_batch_size_sum") == 301.0
