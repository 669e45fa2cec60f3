"""The metrics subscriber: series from the start, bounded labels, events to samples, and
the exposition format the scraper asks for (issue 14)."""

from __future__ import annotations

import re

from supervisor.metrics import Metrics, cron_period
from supervisor.model import (
    CoordinationSeen,
    CronClaimed,
    CronRunEnded,
    Mode,
    TrustDeadlineKilled,
)
from supervisor.spec import WorkerSpec

WORKERS = {
    "web": WorkerSpec(),
    "gl": WorkerSpec(mode=Mode.GROUP_LEADER),
    "glead": WorkerSpec(mode=Mode.GLOBAL_LEADER),
    "tick": WorkerSpec(mode=Mode.CRON, cron="@every 30s"),
    "coord": WorkerSpec(mode=Mode.COORDINATED),
}


def fresh() -> Metrics:
    return Metrics(WORKERS, node_id="n1", group="east")


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    value = metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def test_a_follower_exports_leader_0_for_every_leader_worker_from_the_start() -> None:
    m = fresh()
    assert sample(m, "supervisor_leader", worker="gl", group="east") == 0
    assert sample(m, "supervisor_leader", worker="glead", group="east") == 0
    assert sample(m, "supervisor_leader", worker="web", group="east") is None
    for counter in ("supervisor_lease_renewal_failures_total", "supervisor_lease_renewals_total"):
        assert sample(m, counter, worker="gl", group="east") == 0


def test_failure_counters_start_at_0_for_every_worker_that_can_fail() -> None:
    m = fresh()
    for worker in WORKERS:
        assert sample(m, "supervisor_worker_restarts_total", worker=worker) == 0
        assert sample(m, "supervisor_worker_exits_total", worker=worker, reason="failed") == 0
        assert sample(m, "supervisor_worker_failed", worker=worker) == 0
    for worker in ("gl", "glead", "tick", "coord"):  # the ones a trust deadline covers
        assert sample(m, "supervisor_trust_deadline_kills_total", worker=worker) == 0
    for outcome in ("succeeded", "failed", "timed_out", "lost", "skipped", "missed"):
        assert sample(m, "supervisor_cron_runs_total", worker="tick", outcome=outcome) == 0


def test_info_series_name_the_release_the_node_and_each_workers_mode() -> None:
    m = fresh()
    body = m.exposition().decode()
    assert re.search(r'^supervisor_build_info\{version="[^"]+"\} 1\.0$', body, re.M)
    assert sample(m, "supervisor_node_info", node_id="n1", group="east") == 1
    assert sample(m, "supervisor_worker_info", worker="tick", mode="cron") == 1
    assert sample(m, "supervisor_cron_period_seconds", worker="tick") == 30
    assert sample(m, "supervisor_coordinated_index", worker="coord") == -1


def test_no_created_series() -> None:
    assert "_created" not in fresh().exposition().decode()


def test_openmetrics_when_the_scraper_asks_for_it_else_the_text_format() -> None:
    m = fresh()
    body, content_type = m.negotiated("application/openmetrics-text;version=1.0.0,"
                                      "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    body, content_type = m.negotiated("")
    assert content_type.startswith("text/plain")
    assert not body.endswith(b"# EOF\n")


def test_cron_outcomes_and_the_last_success() -> None:
    m = fresh()
    m(CronClaimed("tick", 1000.0, "overlap"))
    m(CronClaimed("tick", 1030.0, "missed"))
    m(CronRunEnded("tick", 1060.0, 0, 7, "failed", 1, 0.1, True))
    assert sample(m, "supervisor_cron_last_success_timestamp_seconds", worker="tick") == 0
    m(CronRunEnded("tick", 1090.0, 0, 8, "succeeded", 0, 0.1, True))
    m(CronRunEnded("tick", 1120.0, 0, 9, "succeeded", 0, 0.1, False))
    counts = {o: sample(m, "supervisor_cron_runs_total", worker="tick", outcome=o)
              for o in ("skipped", "missed", "failed", "succeeded", "lost")}
    assert counts == {"skipped": 1, "missed": 1, "failed": 1, "succeeded": 1, "lost": 1}
    assert sample(m, "supervisor_cron_claims_total", worker="tick", result="overlap") == 1
    assert (sample(m, "supervisor_cron_last_success_timestamp_seconds", worker="tick") or 0) > 0
    assert sample(m, "supervisor_cron_last_tick_timestamp_seconds", worker="tick") == 1120


def test_a_trust_deadline_kill_is_counted() -> None:
    m = fresh()
    m(TrustDeadlineKilled("gl", 4242))
    assert sample(m, "supervisor_trust_deadline_kills_total", worker="gl") == 1


def test_members_only_where_current_and_the_time_to_rebalance() -> None:
    m = fresh()
    m(CoordinationSeen("coord", 0, 0, None, 2))
    assert sample(m, "supervisor_coordinated_members", worker="coord") == 2
    assert sample(m, "supervisor_coordinated_rebalance_seconds", worker="coord") is None
    m(CoordinationSeen("coord", 1, 2, 0, 2))
    rebalance = sample(m, "supervisor_coordinated_rebalance_seconds", worker="coord")
    assert rebalance is not None and rebalance >= 0
    assert sample(m, "supervisor_coordinated_instances", worker="coord") == 2
    m(CoordinationSeen("coord", 1, 2, 0, None))  # another node publishes now
    assert sample(m, "supervisor_coordinated_members", worker="coord") is None


def test_the_cron_period_is_the_longest_gap_between_coming_ticks() -> None:
    monday = 1736121600.0  # 2025-01-06T00:00:00Z, a Monday
    assert cron_period("0 9 * * 1-5", "UTC", now=monday) == 3 * 86400  # Friday to Monday
    assert cron_period("@every 90s", "UTC", now=monday) == 90


def test_paused_and_draining_follow_what_the_node_sync_read() -> None:
    from supervisor.model import FleetControlSeen

    metrics = fresh()
    assert sample(metrics, "supervisor_paused", worker="tick") == 0
    assert sample(metrics, "supervisor_paused", worker="web") is None  # every-node
    assert sample(metrics, "supervisor_draining") == 0
    metrics(FleetControlSeen("", frozenset({"tick", "gone"}), True))
    assert sample(metrics, "supervisor_paused", worker="tick") == 1
    assert sample(metrics, "supervisor_paused", worker="coord") == 0
    assert sample(metrics, "supervisor_paused", worker="gone") is None  # not configured
    assert sample(metrics, "supervisor_draining") == 1
    metrics(FleetControlSeen("", frozenset(), False))
    assert sample(metrics, "supervisor_paused", worker="tick") == 0
    assert sample(metrics, "supervisor_draining") == 0


def test_a_tick_skipped_because_paused_counts_as_skipped() -> None:
    metrics = fresh()
    metrics(CronClaimed("tick", 1.0, "paused"))
    assert sample(metrics, "supervisor_cron_runs_total", worker="tick", outcome="skipped") == 1
