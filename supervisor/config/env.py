"""`SUPERVISOR_*` environment overrides, merged into the file's data before any check.

The overrides are validated exactly like the file, and a problem they cause names
the variable (never its value, which may be a secret).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from supervisor.errors import ConfigIssue

from .issues import suggestion, unwrap
from .models import Settings, WorkerConfig

ENV_PREFIX = "SUPERVISOR_"
ENV_DELIMITER = "__"


@dataclasses.dataclass
class _Overrides:
    """What the SUPERVISOR_* variables set, as data shaped like the file's."""

    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    variables: dict[tuple[str, ...], str] = dataclasses.field(default_factory=dict)  # key -> var
    issues: list[ConfigIssue] = dataclasses.field(default_factory=list)


def env_overrides(environ: Mapping[str, str], file_workers: Mapping[str, Any]) -> _Overrides:
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
            message = f"unknown key{suggestion((top,))} (from the environment variable {variable})"
            issues.append(ConfigIssue(top, message))
        return None
    path = [top]
    annotation: Any = field.annotation
    while rest:
        kind = unwrap(annotation)
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
    kind = unwrap(annotation)
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
        data[last] = merged(data[last], value)
    else:
        data[last] = value


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into `base`, tables key by key: the environment wins over the file.
    Where the file has a non-table and the environment keys inside it, the file's value
    stays, to be refused by the validation."""
    result = dict(base)
    for key, value in over.items():
        old = result.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            result[key] = merged(old, value)
        elif key in result and isinstance(value, dict) and not isinstance(old, dict):
            continue
        else:
            result[key] = value
    return result


def naming_variables(issue: ConfigIssue, variables: Mapping[tuple[str, ...], str]) -> ConfigIssue:
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

