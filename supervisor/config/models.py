"""The models that read the file: the spec's fields (`fields_of`), plus what reading needs.

Each model's fields are its spec class's (supervisor.spec, policy.Backoff); a
model adds the checks that run code (a module path, a cron expression, a time
zone, a database URL), the checks across keys, and the file's presentation
(`Settings.masked`). A model is the file's view of a value; `to_spec()` gives the
runtime's. Error messages here are the product's: SPEC.md quotes them.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from supervisor.errors import ConfigError, ConfigIssue
from supervisor.model import KEY_LENGTH, Mode, database_keys, format_duration, mask_url
from supervisor.policy import Backoff
from supervisor.schedule import parse_schedule, parse_timezone
from supervisor.spec import CoordinationSpec, HistorySpec, MetricsSpec, NodeSpec, WorkerSpec

from .schema import fields_of

WORKER_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
_IDENTITY = re.compile(r"[^\s\x00-\x1f]{1,200}")  # node_id and group
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb")

# Keys that only mean something in one mode; setting them elsewhere is an error.
MODE_KEYS: dict[str, tuple[Mode, ...]] = {
    "cron": (Mode.CRON,),
    "timezone": (Mode.CRON,),
    "max_run": (Mode.CRON,),
    "max_per_node": (Mode.CRON,),
    "timeout": (Mode.CRON,),
    "misfire_grace": (Mode.CRON,),
    "overlap": (Mode.CRON,),
    "catch_up": (Mode.CRON,),
    "instances": (Mode.COORDINATED,),
    "stable_window": (Mode.COORDINATED,),
    "scope": (Mode.COORDINATED, Mode.GROUP_LEADER),
}

# The fields come from a class made at import time (fields_of), which mypy cannot see
# into: each base is `Any` to it, hence the ignores, and field access is not type-checked
# here. The spec classes, which the rest of the supervisor uses, are fully typed.


class BackoffConfig(fields_of(Backoff)):  # type: ignore[misc]
    """A worker's `backoff` table, read into `supervisor.policy.Backoff`."""

    def to_policy(self) -> Backoff:
        policy: Backoff = self.to_spec()
        return policy


class CoordinationConfig(fields_of(CoordinationSpec)):  # type: ignore[misc]
    """The `[coordination]` table, read into CoordinationSpec."""

    @property
    def leader_stop_grace(self) -> float:
        spec: CoordinationSpec = self.to_spec()
        return spec.leader_stop_grace

    @model_validator(mode="after")
    def _timings_are_safe(self) -> CoordinationConfig:
        if self.renew_interval <= 0:
            raise ValueError("renew_interval must be positive")
        if self.renew_deadline <= self.renew_interval:
            raise ValueError(
                f"renew_deadline ({format_duration(self.renew_deadline)}) must be longer than "
                f"renew_interval ({format_duration(self.renew_interval)})"
            )
        if self.leader_stop_grace < 0.5:
            raise ValueError(
                "lease_ttl is too short: a leader's child must be certainly dead before its "
                "lease can expire, so lease_ttl must be at least renew_deadline + renew_interval "
                f"+ 1s margin + 0.5s stop grace = "
                f"{format_duration(self.renew_deadline + self.renew_interval + 1.5)}"
            )
        return self


class MetricsConfig(fields_of(MetricsSpec)):  # type: ignore[misc]
    """The `[metrics]` table, read into MetricsSpec."""


class HistoryConfig(fields_of(HistorySpec)):  # type: ignore[misc]
    """The `[history]` table, read into HistorySpec."""


class WorkerConfig(fields_of(WorkerSpec, BackoffConfig)):  # type: ignore[misc]
    """A `[workers.NAME]` table, read into WorkerSpec. The checks across its keys (one of
    module or command, keys of another mode) are made on the raw data (`issues.py`), so
    that they add to the field errors rather than wait for them."""

    @field_validator("module")
    @classmethod
    def _module_path(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(
            r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*(:[A-Za-z_][\w]*)?", value
        ):
            raise ValueError(
                f'invalid module "{value}": expected "package.module" or "package.module:function"'
            )
        return value

    @field_validator("command")
    @classmethod
    def _command_program(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value[0]:
            raise ValueError("the program (first element) must not be empty")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not name or "=" in name or "\0" in name]
        if bad:
            raise ValueError(f"invalid environment variable name {bad[0]!r}")
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            parse_schedule(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        parse_timezone(value)
        return value


_NODE_FIELDS = fields_of(
    NodeSpec, CoordinationConfig, MetricsConfig, HistoryConfig, WorkerConfig, base=BaseSettings
)


class Settings(_NODE_FIELDS):  # type: ignore[misc,valid-type]
    """The whole file, read into NodeSpec, with `SUPERVISOR_<KEY>` environment overrides
    applied on top (by `parse_config`, which merges them into the file's data: see env.py)."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only the values passed in: parse_config has already merged the environment into
        # them (pydantic-settings' own env source lowercased every key, worker names and
        # the names in a worker's `env` included, and skipped the file's cross-key checks).
        return (init_settings,)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme.split("+", 1)[0] not in DATABASE_SCHEMES:
            raise ValueError(
                f'unsupported database URL "{mask_url(value)}": use sqlite:///FILE, '
                "postgresql+psycopg://…, or mysql+pymysql://…"
            )
        # A port out of range or a broken IPv6 host is refused here, by `check`, not when
        # connecting. Never echo the parser's message: it can quote part of the password.
        if scheme != "sqlite":
            try:
                parts = urlsplit(value)
                _ = parts.hostname, parts.port
            except ValueError:
                raise ValueError(
                    f'invalid database URL "{mask_url(value)}": cannot read its host and port '
                    "(write @ : / ? # in a user name or password percent-encoded, e.g. %40 for @)"
                ) from None
        return value

    @field_validator("database_listen_url")
    @classmethod
    def _database_listen_url(cls, value: str) -> str:
        if value in ("", "none"):
            return value
        if value.split("://", 1)[0] not in ("postgresql", "postgresql+psycopg"):
            raise ValueError(
                f'unsupported listen URL "{mask_url(value)}": use "" (database_url itself), '
                '"none" (no LISTEN, polling only) or a direct postgresql+psycopg://… URL'
            )
        return cls._database_url(value)

    @field_validator("node_id", "group")
    @classmethod
    def _identity(cls, value: str) -> str:
        if value and not _IDENTITY.fullmatch(value):
            raise ValueError(
                f"{value!r} must be 1-200 characters without spaces or control characters"
            )
        return value

    @model_validator(mode="after")
    def _history_outlives_the_claimable_window(self) -> Settings:
        # A cron tick's history must not be pruned while the tick can still be claimed,
        # or a pruned tick could run again.
        for name, worker in self.workers.items():
            if worker.mode is Mode.CRON and worker.misfire_grace >= self.history.keep:
                raise ValueError(
                    f"workers.{name}.misfire_grace ({format_duration(worker.misfire_grace)}) "
                    f"must be shorter than history.keep ({format_duration(self.history.keep)})"
                )
        return self

    def with_identity(self, environ: Mapping[str, str], source: str = "config") -> Settings:
        """Fill node_id and group from $HOSTNAME / the host name and $CLUSTER_NAME / "default".

        ConfigError when a value from the environment is not a valid identity (the file's own
        are checked by `_identity`), or when a worker's database key (a lease name, a
        coordinated key, which carry the group) is longer than the database keeps: such a
        row would fail every sync of this node, and with it every other worker's renewal."""
        node_id = self.node_id or environ.get("HOSTNAME") or socket.gethostname()
        group = self.group or environ.get("CLUSTER_NAME") or "default"
        issues = [
            ConfigIssue(key, f"{value!r} (from {origin}) must be 1-200 characters without "
                             "spaces or control characters")
            for key, value, origin in (("node_id", node_id, "$HOSTNAME or the host name"),
                                       ("group", group, "$CLUSTER_NAME"))
            if not getattr(self, key) and not _IDENTITY.fullmatch(value)
        ]
        for name, worker in self.workers.items():
            for key in database_keys(name, worker.mode, worker.scope, group):
                if len(key) > KEY_LENGTH:
                    issues.append(ConfigIssue(
                        f"workers.{name}",
                        f"its database key {key[:60]!r}... is {len(key)} characters, the "
                        f"database keeps {KEY_LENGTH}: shorten the worker's name or the group "
                        f"({len(group)} characters)"))
        if issues:
            raise ConfigError(source, issues)
        filled: Settings = self.model_copy(update={"node_id": node_id, "group": group})
        return filled

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets masked, for `supervisor check`."""
        data: dict[str, Any] = self.model_dump(mode="json", exclude_none=True)
        data["database_url"] = mask_url(self.database_url)
        data["database_listen_url"] = mask_url(self.database_listen_url)
        for name, worker in self.workers.items():
            for key, modes in MODE_KEYS.items():
                if worker.mode not in modes:
                    data["workers"][name].pop(key, None)
        return data
