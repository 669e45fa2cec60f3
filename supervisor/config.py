"""The config file: TOML text -> validated, frozen settings.

`parse_config(text)` is pure apart from reading `SUPERVISOR_*` environment
overrides (pydantic-settings, nested with `__`); `load_config(path)` adds the
file reading. Validation is whole: every problem is collected and reported at
once as `path.to.key: message`, and nothing is started from a refused file.
Every model forbids unknown keys, with a "did you mean" where one is close.
"""

from __future__ import annotations

import difflib
import os
import re
import signal
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from supervisor.errors import ConfigError, ConfigIssue
from supervisor.model import (
    Mode,
    RestartPolicy,
    format_duration,
    leader_stop_grace,
    mask_url,
    parse_duration,
    parse_signal,
)
from supervisor.policy import Backoff
from supervisor.schedule import parse_schedule, parse_timezone

# Shown to people as "10s" and "SIGTERM"; handed to the runtime as seconds and numbers.
Duration = Annotated[
    float, BeforeValidator(parse_duration), PlainSerializer(format_duration, when_used="json")
]
Signal = Annotated[
    signal.Signals,
    BeforeValidator(parse_signal),
    PlainSerializer(lambda s: s.name, when_used="json"),
]

WORKER_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
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


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackoffConfig(_Section):
    initial: Duration = 1.0
    max: Duration = 60.0
    factor: float = Field(2.0, ge=1.0)
    jitter: float = Field(0.2, ge=0.0, le=1.0)
    reset: Duration = 30.0

    def to_policy(self) -> Backoff:
        return Backoff(self.initial, self.max, self.factor, self.jitter, self.reset)


class CoordinationConfig(_Section):
    lease_ttl: Duration = 10.0
    renew_interval: Duration = 1.0
    renew_deadline: Duration = 5.0

    @property
    def leader_stop_grace(self) -> float:
        return leader_stop_grace(self.lease_ttl, self.renew_interval, self.renew_deadline)

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


class MetricsConfig(_Section):
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(9464, ge=0, le=65535)


class HistoryConfig(_Section):
    keep: Duration = 7 * 86400.0


class WorkerConfig(_Section):
    module: str | None = None
    command: list[str] | None = Field(None, min_length=1)
    mode: Mode = Mode.EVERY_NODE
    scope: Literal["group", "global"] | None = None
    restart: RestartPolicy = RestartPolicy.ON_FAILURE
    backoff: BackoffConfig = BackoffConfig()
    max_restarts: int = Field(0, ge=0)
    restart_window: Duration = 300.0
    critical: bool = False
    stop_signal: Signal = signal.SIGTERM
    stop_timeout: Duration = 10.0
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str = "."
    pass_database_url: bool = False
    # cron
    cron: str | None = None
    timezone: str = "UTC"
    max_run: int = Field(1, ge=1)
    max_per_node: int = Field(1, ge=1)
    timeout: Duration | None = None
    misfire_grace: Duration = 60.0
    overlap: Literal["forbid", "allow", "replace"] = "forbid"
    catch_up: Literal["none", "latest", "all"] = "none"
    # coordinated
    instances: int | None = Field(None, ge=1)
    stable_window: Duration = 5.0

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


class Settings(BaseSettings):
    """The whole file, with `SUPERVISOR_<KEY>` environment overrides applied on top."""

    model_config = SettingsConfigDict(
        env_prefix="SUPERVISOR_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    database_url: str = "sqlite:///supervisor.db"
    node_id: str = ""
    group: str = ""
    log_format: Literal["text", "json"] = "text"
    coordination: CoordinationConfig = CoordinationConfig()
    metrics: MetricsConfig = MetricsConfig()
    history: HistoryConfig = HistoryConfig()
    workers: dict[str, WorkerConfig] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (passed as init values); nothing else is read.
        return (env_settings, init_settings)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme.split("+", 1)[0] not in DATABASE_SCHEMES:
            raise ValueError(
                f'unsupported database URL "{mask_url(value)}": use sqlite:///FILE, '
                "postgresql+psycopg://…, or mysql+pymysql://…"
            )
        # fix: a port out of range or a broken IPv6 host used to pass `check` and fail only
        # when connecting. Never echo the parser's message: it can quote part of the password.
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

    @field_validator("node_id", "group")
    @classmethod
    def _identity(cls, value: str) -> str:
        if value and not re.fullmatch(r"[^\s\x00-\x1f]{1,200}", value):
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

    def with_identity(self, environ: Mapping[str, str]) -> Settings:
        """Fill node_id and group from $HOSTNAME / the host name and $CLUSTER_NAME / "default"."""
        node_id = self.node_id or environ.get("HOSTNAME") or socket.gethostname()
        group = self.group or environ.get("CLUSTER_NAME") or "default"
        return self.model_copy(update={"node_id": node_id, "group": group})

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets masked, for `supervisor check`."""
        data = self.model_dump(mode="json", exclude_none=True)
        data["database_url"] = mask_url(self.database_url)
        for name, worker in self.workers.items():
            for key, modes in MODE_KEYS.items():
                if worker.mode not in modes:
                    data["workers"][name].pop(key, None)
        return data


# --- loading and error reporting -------------------------------------------------------------


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


def parse_config(text: str, *, source: str = "supervisor.toml") -> Settings:
    """Validate TOML text; raises ConfigError with every problem found."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [ConfigIssue("", f"TOML syntax error: {exc}")]) from None
    issues = _structural_issues(raw)
    settings: Settings | None = None
    try:
        settings = Settings(**raw)
    except ValidationError as exc:
        issues += [_issue_from_pydantic(err) for err in exc.errors()]
    except SettingsError as exc:
        # fix: a SUPERVISOR_<TABLE> variable that is not JSON (SUPERVISOR_METRICS=x) raised
        # SettingsError through here, and `supervisor check` died with a traceback and exit 1.
        issues.append(_issue_from_settings_error(exc))
    if issues or settings is None:
        raise ConfigError(source, sorted(set(issues), key=lambda issue: issue.path))
    return settings


def _structural_issues(raw: dict[str, Any]) -> list[ConfigIssue]:
    """Checks across keys of one worker, made on the raw data so they add to field errors."""
    workers = raw.get("workers", {})
    if not isinstance(workers, dict):
        return []
    issues: list[ConfigIssue] = []
    for name, worker in workers.items():
        path = f"workers.{name}"
        if not WORKER_NAME.fullmatch(name):
            issues.append(ConfigIssue(path, f"invalid worker name {name!r}: use 1-100 letters, "
                                            "digits, '-', '_' or '.'"))
        if not isinstance(worker, dict):
            continue
        programs = [key for key in ("module", "command") if key in worker]
        if len(programs) != 1:
            what = "both" if programs else "neither"
            message = f"exactly one of module or command is required ({what} given)"
            issues.append(ConfigIssue(path, message))
        issues += _mode_issues(path, worker)
    return issues


def _mode_issues(path: str, worker: dict[str, Any]) -> list[ConfigIssue]:
    try:
        mode = Mode(worker.get("mode", Mode.EVERY_NODE))
    except ValueError:
        return []  # reported as a field error
    issues = []
    if mode is Mode.CRON and "cron" not in worker:
        issues.append(ConfigIssue(f"{path}.cron", 'required when mode = "cron"'))
    for key, modes in MODE_KEYS.items():
        if key in worker and mode not in modes:
            allowed = " or ".join(f'"{m}"' for m in modes)
            message = f'only valid with mode = {allowed}, not "{mode}"'
            issues.append(ConfigIssue(f"{path}.{key}", message))
    return issues


def _issue_from_pydantic(err: Any) -> ConfigIssue:
    loc = tuple(str(part) for part in err["loc"] if part != "[key]")
    path = ".".join(loc)
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return ConfigIssue(path, "unknown key" + _suggestion(loc))
    if kind == "missing":
        return ConfigIssue(path, "required")
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif kind in ("literal_error", "enum"):
        msg = f"invalid value {err['input']!r}: {msg[0].lower()}{msg[1:]}"
    env_name = "SUPERVISOR_" + "__".join(loc).upper()
    if loc and env_name in os.environ:
        msg += f" (from the environment variable {env_name})"
    return ConfigIssue(path, msg)


def _issue_from_settings_error(exc: SettingsError) -> ConfigIssue:
    found = re.search(r'field "([^"]+)"', str(exc))
    name = found.group(1) if found else ""
    variable = f"SUPERVISOR_{name.upper()}" if name else "a SUPERVISOR_* variable"
    return ConfigIssue(name, f"the environment variable {variable} is not valid JSON")


def _suggestion(loc: tuple[str, ...]) -> str:
    known = _known_keys(loc[:-1])
    close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _known_keys(parent: tuple[str, ...]) -> list[str]:
    """The keys allowed at `parent`, found by walking the model's annotations."""
    annotation: Any = Settings
    for part in parent:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return []
            annotation = field.annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def to_plain(settings: Settings) -> dict[str, Any]:
    """The settings as JSON-ready data (seconds, signal numbers, secrets included) for
    `supervisor.spec.node_from_plain` in the running supervisor. Never for display."""
    return settings.model_dump(mode="python")

