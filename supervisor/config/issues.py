"""How a refused file is reported: every problem as `path.to.key: message`.

The checks across one worker's keys are made on the raw data, so that they add to
the field errors pydantic reports rather than wait for them; pydantic's errors are
turned into the same `ConfigIssue`s, an unknown key with a "did you mean".
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel

from supervisor.errors import ConfigIssue
from supervisor.model import Mode

from .models import MODE_KEYS, WORKER_NAME, Settings


def structural_issues(raw: dict[str, Any], file_workers: Mapping[str, Any]) -> list[ConfigIssue]:
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


def issue_from_pydantic(
    err: Any, from_environment: Collection[tuple[str, ...]] = ()
) -> ConfigIssue:
    """The issue for one pydantic error. `from_environment`: the key paths the environment
    set, whose values an example must not quote (a variable's value may be a secret)."""
    loc = tuple(str(part) for part in err["loc"] if part != "[key]")
    path = ".".join(loc)
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return ConfigIssue(path, "unknown key" + suggestion(loc))
    if kind == "missing":
        return ConfigIssue(path, "required")
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif kind in ("literal_error", "enum"):
        msg = f"invalid value {err['input']!r}: {msg[0].lower()}{msg[1:]}"
    elif kind == "list_type" and loc[-1:] == ("command",) and isinstance(err["input"], str):
        quoted = not any(loc[:len(key)] == key for key in from_environment)
        msg = f"{msg}: {command_as_list(err['input'] if quoted else '')}"
    return ConfigIssue(path, msg)


_SHELL = re.compile(r"[|&;<>()$`*?~{}\\[\]\n]")


def command_as_list(text: str) -> str:
    """What to write instead of `command = "TEXT"`. A string is refused rather than split:
    no rule for splitting it would be obvious (quotes? globs? pipes?), and running it
    through a shell would be a different program. The example is the user's own
    command: split as a POSIX shell would, or, where it needs a shell, under `sh -c`;
    a generic one for "" (or a value not to quote)."""
    try:
        words = shlex.split(text)
    except ValueError:
        words = []
    if not text.strip():
        words = ["sleep", "100"]
    elif not words or _SHELL.search(text):
        words = ["sh", "-c", text]
        return ("write the command as a list of arguments; this one needs a shell, "
                f"so: {json.dumps(words, ensure_ascii=False)}")
    return ("write the command as a list of arguments, such as "
            f"{json.dumps(words, ensure_ascii=False)}")


def suggestion(loc: tuple[str, ...]) -> str:
    known = _known_keys(loc[:-1])
    close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _known_keys(parent: tuple[str, ...]) -> list[str]:
    """The keys allowed at `parent`, found by walking the model's annotations."""
    annotation: Any = Settings
    for part in parent:
        annotation = unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return []
            annotation = field.annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return []
    annotation = unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def unwrap(annotation: Any) -> Any:
    """`X | None` -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation

