"""Issue 12: SUPERVISOR_* environment overrides are validated like the file.

A worker's name in a variable matches a worker of the file exactly, else the only one
differing in case, else it adds a worker that must be complete; names in a worker's
`env` keep their case; every check the file gets, the overrides get; a refusal names
the variable, never its value. The end-to-end cases at the bottom run the installed
command (`check` and `run` exit 2, no traceback).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor.config import Settings, parse_config
from supervisor.errors import ConfigError, ConfigIssue
from supervisor.model import Mode, RestartPolicy
from tests.e2e.test_bad_configs import GOOD_CANARY, assert_refused, environment, supervisor

FILE = """\
[workers.Indexer]
command = ["true"]

[workers.web]
module = "myapp.web"
env = { PATH_EXTRA = "/opt" }
"""

# Two workers whose names differ only in case.
TWINS = """\
[workers.web]
command = ["true"]

[workers.Web]
command = ["true"]
"""


@pytest.fixture(autouse=True)
def _no_supervisor_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Overrides from the developer's shell must not leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("SUPERVISOR_"):
            monkeypatch.delenv(name)


def parsed(monkeypatch: pytest.MonkeyPatch, text: str, **variables: str) -> Settings:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return parse_config(text)


def refused(monkeypatch: pytest.MonkeyPatch, text: str, **variables: str) -> list[ConfigIssue]:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    for secret in ("S3cret", "Pa55word"):  # a value may be a secret: never printed
        assert all(secret not in str(issue) for issue in info.value.issues), info.value.issues
    return info.value.issues


def only(issues: list[ConfigIssue]) -> ConfigIssue:
    assert len(issues) == 1, issues
    return issues[0]


# --- a worker's name ------------------------------------------------------------------------


def test_a_worker_name_matches_exactly_and_keeps_its_case(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = parsed(monkeypatch, FILE, SUPERVISOR_WORKERS__Indexer__RESTART="always")
    assert sorted(settings.workers) == ["Indexer", "web"]  # no new worker `indexer`
    assert settings.workers["Indexer"].restart is RestartPolicy.ALWAYS
    assert settings.workers["Indexer"].command == ["true"]


@pytest.mark.parametrize("spelling", ["INDEXER", "indexer", "inDEXer"])
def test_a_worker_name_matches_ignoring_case_when_unique(
    monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    settings = parsed(monkeypatch, FILE, **{f"SUPERVISOR_WORKERS__{spelling}__RESTART": "never"})
    assert sorted(settings.workers) == ["Indexer", "web"]
    assert settings.workers["Indexer"].restart is RestartPolicy.NEVER


def test_an_exact_match_wins_over_a_match_ignoring_case(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = parsed(monkeypatch, TWINS, SUPERVISOR_WORKERS__Web__RESTART="never")
    assert settings.workers["Web"].restart is RestartPolicy.NEVER
    assert settings.workers["web"].restart is RestartPolicy.ON_FAILURE


def test_a_name_matching_several_workers_ignoring_case_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    issue = only(refused(monkeypatch, TWINS, SUPERVISOR_WORKERS__WEB__RESTART="never"))
    assert issue.path == "workers.WEB"
    assert "SUPERVISOR_WORKERS__WEB__RESTART" in issue.message
    assert "'Web', 'web'" in issue.message


def test_a_json_workers_table_matches_names_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = parsed(monkeypatch, FILE, SUPERVISOR_WORKERS='{"INDEXER": {"restart": "always"}}')
    assert sorted(settings.workers) == ["Indexer", "web"]
    assert settings.workers["Indexer"].restart is RestartPolicy.ALWAYS


def test_two_variables_for_one_key_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    issue = only(refused(monkeypatch, FILE, SUPERVISOR_WORKERS__web__RESTART="never",
                         SUPERVISOR_WORKERS__WEB__RESTART="always"))
    assert issue.path == "workers.web.restart"
    assert "SUPERVISOR_WORKERS__WEB__RESTART" in issue.message
    assert "SUPERVISOR_WORKERS__web__RESTART" in issue.message


# --- a worker the file does not have --------------------------------------------------------


def test_an_unknown_worker_without_a_program_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    issue = only(refused(monkeypatch, FILE, SUPERVISOR_WORKERS__Indexr__RESTART="always"))
    assert issue.path == "workers.Indexr"
    assert "no worker 'Indexr' in the file (did you mean 'Indexer'?)" in issue.message
    assert "module or command" in issue.message
    assert "SUPERVISOR_WORKERS__Indexr__RESTART" in issue.message


def test_a_complete_new_worker_is_added_with_its_name_as_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = parsed(monkeypatch, FILE, SUPERVISOR_WORKERS__Extra__COMMAND='["sleep", "9"]',
                      SUPERVISOR_WORKERS__Extra__RESTART="always")
    assert sorted(settings.workers) == ["Extra", "Indexer", "web"]
    assert settings.workers["Extra"].command == ["sleep", "9"]
    assert settings.workers["Extra"].restart is RestartPolicy.ALWAYS


def test_a_new_worker_is_validated_like_one_of_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    issues = refused(monkeypatch, FILE, SUPERVISOR_WORKERS__extra__COMMAND='["true"]',
                     SUPERVISOR_WORKERS__extra__MODULE="myapp.extra",
                     SUPERVISOR_WORKERS__extra__MODE="cron")
    found = {issue.path: issue.message for issue in issues}
    assert set(found) == {"workers.extra", "workers.extra.cron"}, issues
    assert "exactly one of module or command is required (both given)" in found["workers.extra"]
    assert 'required when mode = "cron"' in found["workers.extra.cron"]
    assert "SUPERVISOR_WORKERS__extra__MODE" in found["workers.extra.cron"]


def test_a_new_worker_with_an_invalid_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    issue = only(refused(monkeypatch, FILE, **{"SUPERVISOR_WORKERS__a b__COMMAND": '["true"]'}))
    assert issue.path == "workers.a b"
    assert "invalid worker name" in issue.message


# --- a worker's env table keeps its case ----------------------------------------------------


def test_env_names_keep_their_case(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = parsed(monkeypatch, FILE, SUPERVISOR_WORKERS__web__ENV__LOG_LEVEL="debug",
                      SUPERVISOR_WORKERS__web__ENV__MixedCase="1")
    assert settings.workers["web"].env == {"PATH_EXTRA": "/opt", "LOG_LEVEL": "debug",
                                           "MixedCase": "1"}


def test_an_env_name_may_hold_the_delimiter(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = parsed(monkeypatch, FILE, SUPERVISOR_WORKERS__web__ENV__MY__VAR="x")
    assert settings.workers["web"].env == {"PATH_EXTRA": "/opt", "MY__VAR": "x"}


def test_an_env_override_replaces_the_files_value(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = parsed(monkeypatch, FILE, SUPERVISOR_WORKERS__WEB__ENV__PATH_EXTRA="/srv")
    assert settings.workers["web"].env == {"PATH_EXTRA": "/srv"}


# --- every check of the file ----------------------------------------------------------------


# One variable each, one refusal each: the issue's key path, what it says, and always the
# variable's name as written.
REFUSED = [
    pytest.param("SUPERVISOR_WORKERS__web__INSTANCES", "3", "workers.web.instances",
                 'only valid with mode = "coordinated"', id="a key of another mode"),
    pytest.param("SUPERVISOR_WORKERS__web__MODE", "cron", "workers.web.cron", "",
                 id="a mode without its keys"),
    pytest.param("SUPERVISOR_WORKERS__web__COMMAND", '["true"]', "workers.web", "(both given)",
                 id="a second program"),
    pytest.param("SUPERVISOR_WORKERS__web__RESTART", "sometimes", "workers.web.restart",
                 "(from the environment variable SUPERVISOR_WORKERS__web__RESTART)",
                 id="a bad value"),
    pytest.param("SUPERVISOR_WORKER__web__RESTART", "never", "worker",
                 "unknown key (did you mean 'workers'?)", id="an unknown setting"),
]


@pytest.mark.parametrize(("variable", "value", "path", "says"), REFUSED)
def test_a_variable_the_file_checks_refuse_is_named_in_the_issue(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, path: str, says: str,
) -> None:
    issue = only(refused(monkeypatch, FILE, **{variable: value}))
    assert issue.path == path
    assert says in issue.message
    assert variable in issue.message


def test_a_key_below_a_value_is_refused_without_printing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    issue = only(refused(monkeypatch, FILE,
                         SUPERVISOR_DATABASE_URL="postgresql+psycopg://u:S3cret-pw@db/fleet",
                         SUPERVISOR_DATABASE_URL__PASSWORD="An0ther-S3cret"))
    assert issue.path == "database_url"
    assert "SUPERVISOR_DATABASE_URL__PASSWORD" in issue.message


def test_a_bad_json_value_is_refused_without_printing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    issue = only(refused(monkeypatch, FILE, SUPERVISOR_WORKERS__web__COMMAND='["pw=S3cret"'))
    assert issue.path == "workers.web.command"
    assert "the environment variable SUPERVISOR_WORKERS__web__COMMAND is not valid JSON" in str(
        issue)


# --- what still works -----------------------------------------------------------------------


def test_existing_workers_and_top_level_settings_are_still_overridden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = parsed(monkeypatch, FILE, SUPERVISOR_LOG_FORMAT="json",
                      supervisor_metrics__port="9500",
                      SUPERVISOR_WORKERS__web__MODE="coordinated",
                      SUPERVISOR_WORKERS__web__INSTANCES="2",
                      SUPERVISOR_WORKERS__web__BACKOFF__INITIAL="5s",
                      SUPERVISOR_CONFIG="elsewhere.toml")  # not a setting: ignored
    assert (settings.log_format, settings.metrics.port) == ("json", 9500)
    web = settings.workers["web"]
    assert (web.mode, web.instances, web.backoff.initial) == (Mode.COORDINATED, 2, 5.0)
    assert web.module == "myapp.web"


def test_a_narrower_variable_wins_over_a_json_table(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = parsed(monkeypatch, FILE,
                      SUPERVISOR_WORKERS__web='{"restart": "never", "critical": true}',
                      SUPERVISOR_WORKERS__web__RESTART="always")
    assert settings.workers["web"].restart is RestartPolicy.ALWAYS
    assert settings.workers["web"].critical is True


# --- end to end: the installed command refuses them, exit 2, no traceback -------------------

E2E_CASES = [
    ({"SUPERVISOR_WORKERS__Canary__RESTART": "always",
      "SUPERVISOR_WORKERS__nope__RESTART": "always"},
     "workers.nope: no worker 'nope' in the file"),
    ({"SUPERVISOR_WORKERS__canary__MODE": "cron"},
     "(with the environment variable SUPERVISOR_WORKERS__canary__MODE)"),
    ({"SUPERVISOR_WORKERS__CANARY__COMMAND": '["true"]', "SUPERVISOR_WORKERS__Canary__MODULE": "x"},
     "workers.canary: exactly one of module or command is required (both given)"),
    ({"SUPERVISOR_DATABASE_URL": "postgresql+psycopg://u:Env-Pa55word@db/fleet",
      "SUPERVISOR_WORKERS__extra__ENV__DB": "1"},
     "workers.extra: no worker 'extra' in the file"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize(("variables", "expected"), E2E_CASES)
def test_the_command_refuses_a_bad_override(
    tmp_path: Path, command: str, variables: dict[str, str], expected: str
) -> None:
    config = tmp_path / "supervisor.toml"
    config.write_text(GOOD_CANARY, encoding="utf-8")
    outcome = supervisor(command, config.name, tmp_path, environment(**variables))
    assert_refused(outcome, tmp_path, left_alone={config.name})
    assert expected in outcome.stderr, outcome.stderr
    assert "Env-Pa55word" not in outcome.output
