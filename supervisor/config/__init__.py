"""The config file: TOML text -> validated, frozen settings.

`parse_config(text)` is pure apart from reading `SUPERVISOR_*` environment
overrides (nested with `__`, see env.py); `load_config(path)` adds the file
reading. Validation is whole: every problem is collected and reported at once as
`path.to.key: message` (issues.py), and nothing is started from a refused file.
Every model forbids unknown keys, with a "did you mean" where one is close. The
overrides are merged into the file's data before any check, so they are
validated exactly like the file, and a problem they cause names the variable
(never its value).

The keys themselves are declared once, as the dataclasses of `supervisor.spec`;
the models here are derived from them (schema.py) and add what reading a file
needs (models.py). The running supervisor gets the result as a NodeSpec, through
JSON (`to_plain` here, `supervisor.spec.node_from_plain` there), and never
imports this package.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from supervisor.errors import ConfigError, ConfigIssue

from .env import ENV_DELIMITER, ENV_PREFIX, env_overrides, merged, naming_variables
from .issues import issue_from_pydantic, structural_issues
from .models import (
    DATABASE_SCHEMES,
    MODE_KEYS,
    WORKER_NAME,
    BackoffConfig,
    CoordinationConfig,
    HistoryConfig,
    MetricsConfig,
    Settings,
    WorkerConfig,
)

__all__ = [
    "DATABASE_SCHEMES",
    "ENV_DELIMITER",
    "ENV_PREFIX",
    "MODE_KEYS",
    "WORKER_NAME",
    "BackoffConfig",
    "CoordinationConfig",
    "HistoryConfig",
    "MetricsConfig",
    "Settings",
    "WorkerConfig",
    "load_config",
    "parse_config",
    "to_plain",
]


def load_config(path: str | os.PathLike[str]) -> Settings:
    """Read, parse and validate the file at `path`; raises ConfigError naming every problem."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, [ConfigIssue("", f"config file not found: {source}")]) from None
    except OSError as exc:
        issue = ConfigIssue("", f"cannot read {source}: {exc.strerror}")
        raise ConfigError(source, [issue]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte 0x{data[exc.start]:02x} at offset {exc.start}"
        issue = ConfigIssue("", f"not UTF-8 text ({where})")
        raise ConfigError(source, [issue]) from None
    return parse_config(text, source=source)


def parse_config(
    text: str, *, source: str = "supervisor.toml", environ: Mapping[str, str] | None = None
) -> Settings:
    """Validate TOML text with the `SUPERVISOR_*` overrides of `environ` (default: this
    process's environment) applied; raises ConfigError with every problem found."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [ConfigIssue("", f"TOML syntax error: {exc}")]) from None
    file_workers = raw.get("workers", {})
    if not isinstance(file_workers, dict):
        file_workers = {}
    overrides = env_overrides(os.environ if environ is None else environ, file_workers)
    data = merged(raw, overrides.data)
    issues = overrides.issues + structural_issues(data, file_workers)
    settings: Settings | None = None
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        issues += [issue_from_pydantic(err, overrides.variables) for err in exc.errors()]
    if issues or settings is None:
        issues = [naming_variables(issue, overrides.variables) for issue in issues]
        raise ConfigError(source, sorted(set(issues), key=lambda issue: issue.path))
    return settings


def to_plain(settings: Settings) -> dict[str, Any]:
    """The settings as JSON-ready data (seconds, signal numbers, secrets included) for
    `supervisor.spec.node_from_plain` in the running supervisor. Never for display."""
    plain: dict[str, Any] = settings.model_dump(mode="python")
    return plain

