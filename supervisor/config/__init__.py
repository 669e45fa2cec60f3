"""The config file: TOML text -> validated, frozen settings.

`parse_config(text)` is pure apart from reading `SUPERVISOR_*` environment
overrides (nested with `__`, see `_env_overrides`); `load_config(path)` adds the
file reading. Validation is whole: every problem is collected and reported at
once as `path.to.key: message`, and nothing is started from a refused file.
Every model forbids unknown keys, with a "did you mean" where one is close.
The overrides are merged into the file's data before any check, so they are
validated exactly like the file, and a problem they cause names the variable
(never its value).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
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
)

from supervisor.errors import ConfigError, ConfigIssue
from supervisor.model import (
    KEY_LENGTH,
    Mode,
    RestartPolicy,
    database_keys,
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
    """The whole file, with `SUPERVISOR_<KEY>` environment overrides applied on top
    (by `parse_config`, which merges them into the file's data: see `_env_overrides`)."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    database_url: str = "sqlite:///supervisor.db"
    # Where PostgreSQL LISTENs for lease releases: "" database_url itself, "none" nowhere
    # (polling only), else a direct URL. A key of its own rather than a parameter smuggled
    # into database_url, or guessing PgBouncer from how a query fails: behind a pooler in
    # transaction mode a listener hears nothing and nothing fails, so only the operator knows.
    database_listen_url: str = ""
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
        return self.model_copy(update={"node_id": node_id, "group": group})

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets masked, for `supervisor check`."""
        data = self.model_dump(mode="json", exclude_none=True)
        data["database_url"] = mask_url(self.database_url)
        data["database_listen_url"] = mask_url(self.database_listen_url)
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
    overrides = _env_overrides(os.environ if environ is None else environ, file_workers)
    data = _merged(raw, overrides.data)
    issues = overrides.issues + _structural_issues(data, file_workers)
    settings: Settings | None = None
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        issues += [_issue_from_pydantic(err) for err in exc.errors()]
    if issues or settings is None:
        issues = [_naming_variables(issue, overrides.variables) for issue in issues]
        raise ConfigError(source, sorted(set(issues), key=lambda issue: issue.path))
    return settings


def _structural_issues(raw: dict[str, Any], file_workers: Mapping[str, Any]) -> list[ConfigIssue]:
    """Checks across keys of one worker, made on the raw data so they add to field errors.
    `file_workers` are the file's own: any other worker was added by the environment."""
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
        if not programs and name not in file_workers:
            close = difflib.get_close_matches(name, list(file_workers), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            message = (f"no worker {name!r} in the file{hint}; the environment can add a "
                       "worker only as a complete one, with its module or command")
            issues.append(ConfigIssue(path, message))
        elif len(programs) != 1:
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
    return ConfigIssue(path, msg)


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


# --- environment overrides -------------------------------------------------------------------

ENV_PREFIX = "SUPERVISOR_"
ENV_DELIMITER = "__"


@dataclasses.dataclass
class _Overrides:
    """What the SUPERVISOR_* variables set, as data shaped like the file's."""

    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    variables: dict[tuple[str, ...], str] = dataclasses.field(default_factory=dict)  # key -> var
    issues: list[ConfigIssue] = dataclasses.field(default_factory=list)


def _env_overrides(environ: Mapping[str, str], file_workers: Mapping[str, Any]) -> _Overrides:
    """The overrides in `environ`, as data to merge into the file's before any check.

    `SUPERVISOR_<KEY>__<KEY>…`: the prefix and the keys of settings are matched ignoring
    case (the keys are all lower case). A worker's name matches a worker of the file
    exactly, else the one whose name differs only in case (two such workers: an error);
    a name matching none adds a worker, which must then be complete. In a worker's `env`
    table, case matters: the rest of the variable's name, `__` included, is the name the
    child gets. A variable whose first key is no setting is not an override (SUPERVISOR_CONFIG),
    unless it goes on with `__`: then it is an unknown key, like one in the file. Tables
    and lists are given as JSON. Values are never quoted in an issue: they may be secrets.
    """
    found = _Overrides()
    entries: list[tuple[tuple[str, ...], Any]] = []
    for variable in sorted(environ):
        if not variable.upper().startswith(ENV_PREFIX):
            continue
        located = _env_key(variable, file_workers, found.issues)
        if located is None:
            continue
        path, annotation = located
        dotted = ".".join(path)
        if _is_table_or_list(annotation):
            try:
                value: Any = json.loads(environ[variable])
            except ValueError:
                message = f"the environment variable {variable} is not valid JSON"
                found.issues.append(ConfigIssue(dotted, message))
                continue
            if path == ("workers",) and isinstance(value, dict):
                value = _json_workers(value, variable, file_workers, found.issues)
        else:
            value = environ[variable]
        if path in found.variables:
            message = (f"set by both the environment variables {found.variables[path]} and "
                       f"{variable}; set it once")
            found.issues.append(ConfigIssue(dotted, message))
            continue
        found.variables[path] = variable
        entries.append((path, value))
    # A whole table first, then the variables that set keys inside it: the narrower wins.
    for path, value in sorted(entries, key=lambda entry: len(entry[0])):
        _set_in(found.data, path, value)
    return found


def _env_key(
    variable: str, file_workers: Mapping[str, Any], issues: list[ConfigIssue]
) -> tuple[tuple[str, ...], Any] | None:
    """The key path `variable` sets and the annotation of its value; None if it sets none."""
    segments = variable[len(ENV_PREFIX):].split(ENV_DELIMITER)
    top, rest = segments[0].lower(), segments[1:]
    field = Settings.model_fields.get(top)
    if field is None:
        if rest:  # SUPERVISOR_WORKER__web__MODE: meant as an override, so refused like a typo
            message = f"unknown key{_suggestion((top,))} (from the environment variable {variable})"
            issues.append(ConfigIssue(top, message))
        return None
    path = [top]
    annotation: Any = field.annotation
    while rest:
        kind = _unwrap(annotation)
        if kind is Any:  # below an unknown key: refused by the validation, by its path
            path.append(rest.pop(0).lower())
        elif isinstance(kind, type) and issubclass(kind, BaseModel):
            key = rest.pop(0).lower()
            known = kind.model_fields.get(key)
            annotation = Any if known is None else known.annotation
            path.append(key)
        elif typing.get_origin(kind) is dict and path == ["workers"]:
            name = _worker_name(rest.pop(0), variable, file_workers, issues)
            if name is None:
                return None
            path.append(name)
            annotation = WorkerConfig
        elif typing.get_origin(kind) is dict:
            # A worker's `env`: names are case-sensitive and may themselves hold "__".
            path.append(ENV_DELIMITER.join(rest))
            rest = []
            annotation = typing.get_args(kind)[1]
        else:
            message = (f"not a table, so the environment variable {variable} cannot set a key "
                       "inside it")
            issues.append(ConfigIssue(".".join(path), message))
            return None
    return tuple(path), annotation


def _worker_name(
    given: str, variable: str, file_workers: Mapping[str, Any], issues: list[ConfigIssue]
) -> str | None:
    """The file's worker `given` names: exactly, else the only one differing in case; `given`
    itself if none (a new worker); None, with an issue, if several differ only in case."""
    if given in file_workers:
        return given
    matches = sorted(name for name in file_workers if name.casefold() == given.casefold())
    if len(matches) > 1:
        names = ", ".join(repr(name) for name in matches)
        message = (f"the environment variable {variable} matches the workers {names} of the "
                   "file, which differ only in case: spell the name exactly")
        issues.append(ConfigIssue(f"workers.{given}", message))
        return None
    return matches[0] if matches else given


def _json_workers(
    value: dict[str, Any], variable: str, file_workers: Mapping[str, Any],
    issues: list[ConfigIssue],
) -> dict[str, Any]:
    """SUPERVISOR_WORKERS as a JSON table: its worker names are matched like a variable's."""
    workers: dict[str, Any] = {}
    for given, worker in value.items():
        name = _worker_name(given, variable, file_workers, issues)
        if name is None:
            continue
        if name in workers:
            message = (f"the environment variable {variable} sets the worker {name!r} twice "
                       "(names differing only in case)")
            issues.append(ConfigIssue(f"workers.{name}", message))
            continue
        workers[name] = worker
    return workers


def _is_table_or_list(annotation: Any) -> bool:
    kind = _unwrap(annotation)
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return True
    return typing.get_origin(kind) in (dict, list)


def _set_in(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Set `path` in `data`, creating tables; a key below a non-table is dropped (the
    non-table is refused by the validation anyway)."""
    for key in path[:-1]:
        inner = data.setdefault(key, {})
        if not isinstance(inner, dict):
            return
        data = inner
    last = path[-1]
    if isinstance(data.get(last), dict) and isinstance(value, dict):
        data[last] = _merged(data[last], value)
    else:
        data[last] = value


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into `base`, tables key by key: the environment wins over the file.
    Where the file has a non-table and the environment keys inside it, the file's value
    stays, to be refused by the validation."""
    result = dict(base)
    for key, value in over.items():
        old = result.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            result[key] = _merged(old, value)
        elif key in result and isinstance(value, dict) and not isinstance(old, dict):
            continue
        else:
            result[key] = value
    return result


def _naming_variables(issue: ConfigIssue, variables: Mapping[tuple[str, ...], str]) -> ConfigIssue:
    """The issue, naming the environment variables that set its key or keys inside it."""
    if not issue.path or "environment variable" in issue.message:
        return issue
    setting, inside = [], []
    for path, variable in variables.items():
        dotted = ".".join(path)
        if issue.path == dotted or issue.path.startswith(dotted + "."):
            setting.append(variable)
        elif dotted.startswith(issue.path + ".") or (
            # A worker's mode decides which of its other keys are allowed or required.
            path[0] == "workers" and path[2:] == ("mode",)
            and issue.path.startswith(".".join(path[:2]) + ".")
        ):
            inside.append(variable)
    if setting:
        return ConfigIssue(issue.path,
                           f"{issue.message} (from the environment variable {setting[-1]})")
    if inside:
        plural = "s" if len(inside) > 1 else ""
        return ConfigIssue(issue.path, f"{issue.message} (with the environment "
                                       f"variable{plural} {', '.join(sorted(inside))})")
    return issue


def to_plain(settings: Settings) -> dict[str, Any]:
    """The settings as JSON-ready data (seconds, signal numbers, secrets included) for
    `supervisor.spec.node_from_plain` in the running supervisor. Never for display."""
    return settings.model_dump(mode="python")

