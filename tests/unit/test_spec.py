"""The plain spec the running supervisor uses mirrors the validated config exactly."""

from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path

import pytest

from supervisor.app import parse_validation
from supervisor.config import (
    BackoffConfig,
    CoordinationConfig,
    HistoryConfig,
    MetricsConfig,
    Settings,
    WorkerConfig,
    parse_config,
    to_plain,
)
from supervisor.errors import ConfigError
from supervisor.model import Mode, RestartPolicy
from supervisor.policy import Backoff
from supervisor.spec import (
    CoordinationSpec,
    HistorySpec,
    MetricsSpec,
    NodeSpec,
    WorkerSpec,
    node_from_plain,
)

PAIRS = [
    (Settings, NodeSpec),
    (WorkerConfig, WorkerSpec),
    (BackoffConfig, Backoff),
    (CoordinationConfig, CoordinationSpec),
    (MetricsConfig, MetricsSpec),
    (HistoryConfig, HistorySpec),
]


@pytest.mark.parametrize(("model", "spec"), PAIRS, ids=lambda c: c.__name__)
def test_fields_match_one_for_one(model, spec):
    assert list(model.model_fields) == [f.name for f in dataclasses.fields(spec)]


@pytest.mark.parametrize(("model", "spec"), PAIRS[1:], ids=lambda c: c.__name__)
def test_defaults_match(model, spec):
    program = {"command": ["x"]} if model is WorkerConfig else {}
    plain = model(**program).model_dump(mode="python")
    expected = spec(**{k: tuple(v) for k, v in program.items()})
    assert plain == dataclasses.asdict(expected) | program


def test_round_trip_through_json_keeps_every_value(monkeypatch):
    monkeypatch.delenv("SUPERVISOR_DATABASE_URL", raising=False)
    text = Path(__file__).resolve().parents[2].joinpath("config/supervisor.toml").read_text()
    settings = parse_config(text).with_identity({"HOSTNAME": "h1", "CLUSTER_NAME": "c1"})
    spec = node_from_plain(json.loads(json.dumps(to_plain(settings))))
    assert spec.node_id == "h1" and spec.group == "c1"
    assert spec.database_url == settings.database_url  # unmasked: the runtime needs it
    assert spec.coordination.leader_stop_grace == settings.coordination.leader_stop_grace
    for name, worker in settings.workers.items():
        got = spec.workers[name]
        assert isinstance(got.mode, Mode) and isinstance(got.restart, RestartPolicy)
        assert isinstance(got.stop_signal, signal.Signals)
        assert got.backoff == worker.backoff.to_policy()
        for key in WorkerConfig.model_fields:
            want = getattr(worker, key)
            want = tuple(want) if isinstance(want, list) else want
            want = want.to_policy() if isinstance(want, BackoffConfig) else want
            assert getattr(got, key) == want, key


def test_validator_answers_are_parsed_into_a_spec_or_issues():
    ok = json.dumps({"config": to_plain(parse_config("").with_identity({"HOSTNAME": "h"}))})
    assert parse_validation("f.toml", 0, ok.encode(), b"").node_id == "h"
    bad = json.dumps({"issues": [{"path": "workers.x.cron", "message": "invalid"}]})
    with pytest.raises(ConfigError) as caught:
        parse_validation("f.toml", 2, bad.encode(), b"")
    assert [str(i) for i in caught.value.issues] == ["workers.x.cron: invalid"]
    with pytest.raises(ConfigError) as crashed:
        parse_validation("f.toml", 1, b"", b"Traceback...\nImportError: boom")
    assert "ImportError: boom" in str(crashed.value.issues[0])
