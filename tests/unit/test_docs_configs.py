"""The documents and shipped configs stay true to the code.

The reference file must parse and name every key the models know, the examples
must parse, the Grafana dashboard may only query metrics the supervisor exports,
and the README keeps its two commands. Text is read and parsed, nothing is run.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from supervisor.config import (
    BackoffConfig,
    CoordinationConfig,
    HistoryConfig,
    MetricsConfig,
    Settings,
    WorkerConfig,
    parse_config,
)
from supervisor.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "config" / "supervisor.toml"
DASHBOARD = ROOT / "grafana" / "dashboard.json"
README = ROOT / "README.md"
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))

# A key written out but commented, as in `# instances = 4`.
COMMENTED_KEY = re.compile(r"^\s*#\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", re.MULTILINE)
METRIC_NAME = re.compile(r"\bsupervisor_[a-z0-9_]+")


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """SUPERVISOR_* variables of whoever runs the tests must not change what is parsed."""
    for name in list(os.environ):
        if name.upper().startswith("SUPERVISOR_"):
            monkeypatch.delenv(name)


# --- (a) the shipped files parse ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path", [REFERENCE, *EXAMPLES], ids=lambda p: str(p.relative_to(ROOT))
)
def test_shipped_config_parses(path: Path) -> None:
    # Paths inside (cwd, module) are relative to the file's folder and are not
    # resolved by parsing, so the text alone is what is checked.
    settings = parse_config(path.read_text(encoding="utf-8"), source=str(path))
    assert settings.workers, f"{path} declares no worker"


def test_there_are_examples() -> None:
    assert EXAMPLES, "examples/*.toml is empty"


# --- (b) the reference names every key --------------------------------------------------------


def _reference() -> tuple[dict[str, Any], str]:
    text = REFERENCE.read_text(encoding="utf-8")
    return tomllib.loads(text), text


def _keys(tables: list[dict[str, Any]]) -> set[str]:
    return {key for table in tables for key in table}


def _sections(data: dict[str, Any]) -> dict[type[BaseModel], set[str]]:
    """The keys the reference sets, by the model that reads them."""
    workers = list(data.get("workers", {}).values())
    backoffs = [w["backoff"] for w in workers if isinstance(w.get("backoff"), dict)]
    return {
        Settings: set(data),
        CoordinationConfig: set(data.get("coordination", {})),
        MetricsConfig: set(data.get("metrics", {})),
        HistoryConfig: set(data.get("history", {})),
        WorkerConfig: _keys(workers),
        BackoffConfig: _keys(backoffs),
    }


@pytest.mark.parametrize(
    "model",
    [Settings, CoordinationConfig, MetricsConfig, HistoryConfig, WorkerConfig, BackoffConfig],
    ids=lambda m: m.__name__,
)
def test_reference_mentions_every_field(model: type[BaseModel]) -> None:
    data, text = _reference()
    present = _sections(data)[model] | set(COMMENTED_KEY.findall(text))
    missing = sorted(set(model.model_fields) - present)
    assert not missing, f"config/supervisor.toml does not document {model.__name__}: {missing}"


def _nested_models(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    for field in model.model_fields.values():
        candidates = [field.annotation, *getattr(field.annotation, "__args__", ())]
        for candidate in candidates:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                yield candidate
                yield from _nested_models(candidate)


def test_every_config_model_is_checked() -> None:
    """A new section model must be added to the reference test above."""
    checked = {CoordinationConfig, MetricsConfig, HistoryConfig, WorkerConfig, BackoffConfig}
    assert set(_nested_models(Settings)) <= checked


# --- (c) the dashboard reads only exported metrics ------------------------------------------


def _exported_names() -> set[str]:
    suffixes = {
        "counter": ("_total",),  # no _created series (disable_created_metrics)
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
        "info": ("_info",),
        "stateset": ("",),
        "enum": ("",),
    }
    names = set()
    for family in Metrics().registry.collect():
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    return names


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def test_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    used = {name for s in _strings(dashboard) for name in METRIC_NAME.findall(s)}
    assert used, "the dashboard queries no supervisor_* metric"
    unknown = sorted(used - _exported_names())
    assert not unknown, f"grafana/dashboard.json queries metrics nobody exports: {unknown}"


RULES = ROOT / "supervisor" / "alerts.yml"


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_alert_rules_use_only_exported_metrics() -> None:
    used = set(METRIC_NAME.findall(RULES.read_text(encoding="utf-8")))
    assert used, "the alert rules read no supervisor_* metric"
    unknown = sorted(used - _exported_names())
    assert not unknown, f"supervisor/alerts.yml reads metrics nobody exports: {unknown}"


def test_every_exported_family_is_on_a_dashboard_panel() -> None:
    shown = {name for expr in _dashboard_exprs() for name in METRIC_NAME.findall(expr)}
    families = {family.name for family in Metrics().registry.collect()}
    missing = sorted(f for f in families
                     if not any(name == f or name.startswith(f + "_") for name in shown))
    assert not missing, f"metric families on no dashboard panel: {missing}"


def test_every_dashboard_query_is_filtered_by_job_and_instance() -> None:
    """The variables apply to every panel: every selector names job and instance (the
    group variable chooses the instances; the worker variable is on every selector of a
    per-worker panel), and no metric is read without a selector."""
    for expr in _dashboard_exprs():
        for selector in re.findall(r"supervisor_[a-z0-9_]+\{([^}]*)\}", expr):
            assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, expr
        for name in re.finditer(r"\bsupervisor_[a-z0-9_]+", expr):
            assert expr[name.end():name.end() + 1] == "{", f"unfiltered {name[0]} in {expr}"


def test_dashboard_has_a_prometheus_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = dashboard["templating"]["list"]
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in variables)


# --- (d) the README's two commands -----------------------------------------------------------


@pytest.mark.parametrize("command", ["make run", "make test"])
def test_readme_names_the_two_commands(command: str) -> None:
    assert command in README.read_text(encoding="utf-8")
