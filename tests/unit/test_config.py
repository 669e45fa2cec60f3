"""The config file: TOML text -> validated settings, every problem named by its key path."""

from __future__ import annotations

import os
import signal
import socket
import tomllib
from pathlib import Path

import pytest
import tomli_w
from pydantic import ValidationError

from supervisor.config import MODE_KEYS, Settings, load_config, parse_config
from supervisor.errors import ConfigError, ConfigIssue
from supervisor.model import Mode, RestartPolicy
from supervisor.policy import Backoff

MINIMAL_WORKER = '[workers.indexer]\ncommand = ["true"]\n'


@pytest.fixture(autouse=True)
def _no_supervisor_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Overrides from the developer's shell must not leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("SUPERVISOR_"):
            monkeypatch.delenv(name)


def issues_of(text: str) -> dict[str, str]:
    """path -> the messages (joined) of every issue in the refused `text`."""
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    found: dict[str, str] = {}
    for issue in info.value.issues:
        found[issue.path] = f"{found.get(issue.path, '')}\n{issue.message}".strip()
    return found


def only_issue(text: str) -> ConfigIssue:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert len(info.value.issues) == 1, info.value.issues
    return info.value.issues[0]


# --- good files -----------------------------------------------------------------------------


def test_an_empty_file_is_all_defaults() -> None:
    settings = parse_config("")
    assert settings.database_url == "sqlite:///supervisor.db"
    assert (settings.node_id, settings.group, settings.log_format) == ("", "", "text")
    assert settings.coordination.lease_ttl == 10.0
    assert settings.coordination.renew_interval == 1.0
    assert settings.coordination.renew_deadline == 5.0
    assert (settings.metrics.enabled, settings.metrics.host, settings.metrics.port) == (
        True, "0.0.0.0", 9464,
    )
    assert settings.history.keep == 7 * 86400
    assert settings.workers == {}


def test_worker_defaults() -> None:
    worker = parse_config(MINIMAL_WORKER).workers["indexer"]
    assert worker.command == ["true"]
    assert worker.module is None
    assert worker.mode is Mode.EVERY_NODE
    assert worker.restart is RestartPolicy.ON_FAILURE
    assert worker.backoff.to_policy() == Backoff(1.0, 60.0, 2.0, 0.2, 30.0)
    assert (worker.max_restarts, worker.restart_window, worker.critical) == (0, 300.0, False)
    assert worker.stop_signal is signal.SIGTERM
    assert worker.stop_timeout == 10.0
    assert (worker.env, worker.cwd, worker.pass_database_url) == ({}, ".", False)


def test_a_full_file_with_every_mode() -> None:
    settings = parse_config(
        """
        database_url = "postgresql+psycopg://fleet:pw@db:5432/fleet"
        node_id = "node-1"
        group = "eu-west"
        log_format = "json"
        [coordination]
        lease_ttl = "20s"
        renew_interval = "2s"
        renew_deadline = "8s"
        [metrics]
        port = 9100
        [history]
        keep = "30d"
        [workers.indexer]
        module = "myapp.indexer:main"
        mode = "group-leader"
        scope = "global"
        backoff = { initial = "500ms", max = "1m", factor = 1.5 }
        stop_signal = "INT"
        stop_timeout = "1m30s"
        env = { LOG_LEVEL = "info" }
        [workers.partitioned]
        command = ["/usr/bin/env", "python3", "-m", "part"]
        mode = "coordinated"
        instances = 4
        stable_window = 10
        [workers.nightly-report]
        module = "myapp.report"
        mode = "cron"
        cron = "0 2 * * *"
        timezone = "Europe/Berlin"
        max_run = 2
        timeout = "30m"
        overlap = "replace"
        [workers."solo.leader_1"]
        command = ["x"]
        mode = "global-leader"
        """
    )
    assert settings.log_format == "json"
    assert settings.coordination.leader_stop_grace == 20 - 8 - 2 - 1
    assert settings.history.keep == 30 * 86400
    indexer = settings.workers["indexer"]
    assert (indexer.mode, indexer.scope, indexer.stop_signal) == (
        Mode.GROUP_LEADER, "global", signal.SIGINT,
    )
    assert indexer.backoff.initial == 0.5
    assert indexer.backoff.factor == 1.5
    assert indexer.stop_timeout == 90.0
    assert settings.workers["partitioned"].instances == 4
    report = settings.workers["nightly-report"]
    assert (report.cron, report.timezone, report.max_run, report.timeout) == (
        "0 2 * * *", "Europe/Berlin", 2, 1800.0,
    )
    assert settings.workers["solo.leader_1"].mode is Mode.GLOBAL_LEADER


def test_settings_are_frozen() -> None:
    settings = parse_config(MINIMAL_WORKER)
    with pytest.raises(ValidationError):
        settings.group = "other"  # type: ignore[misc]


# --- identity -------------------------------------------------------------------------------


def test_identity_from_hostname_and_cluster_name() -> None:
    settings = parse_config("").with_identity({"HOSTNAME": "node-7", "CLUSTER_NAME": "eu"})
    assert (settings.node_id, settings.group) == ("node-7", "eu")


def test_identity_falls_back_to_host_name_and_default_group() -> None:
    settings = parse_config("").with_identity({})
    assert settings.node_id == socket.gethostname()
    assert settings.group == "default"


def test_identity_ignores_empty_environment_values() -> None:
    settings = parse_config("").with_identity({"HOSTNAME": "", "CLUSTER_NAME": ""})
    assert (settings.node_id, settings.group) == (socket.gethostname(), "default")


def test_identity_from_the_file_wins_over_the_environment() -> None:
    settings = parse_config('node_id = "n1"\ngroup = "g1"\n')
    filled = settings.with_identity({"HOSTNAME": "node-7", "CLUSTER_NAME": "eu"})
    assert (filled.node_id, filled.group) == ("n1", "g1")


def test_identity_from_supervisor_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_NODE_ID", "from-env")
    settings = parse_config('node_id = "from-file"\n').with_identity({"HOSTNAME": "host"})
    assert settings.node_id == "from-env"


@pytest.mark.parametrize("key", ["node_id", "group"])
@pytest.mark.parametrize("value", ["has space", "tab\there", "x" * 201])
def test_identity_values_are_checked(key: str, value: str) -> None:
    assert list(issues_of(tomli_w.dumps({key: value}))) == [key]


# --- environment overrides ------------------------------------------------------------------


def test_env_overrides_a_nested_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_METRICS__PORT", "1234")
    settings = parse_config('[metrics]\nport = 9999\nhost = "127.0.0.1"\n')
    assert settings.metrics.port == 1234
    assert settings.metrics.host == "127.0.0.1"  # the rest of the table comes from the file


def test_env_overrides_the_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_DATABASE_URL", "postgresql+psycopg://u:envpw@db/fleet")
    settings = parse_config('database_url = "sqlite:///file.db"\n')
    assert settings.database_url == "postgresql+psycopg://u:envpw@db/fleet"
    assert "envpw" not in str(settings.masked())


def test_env_overrides_a_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_COORDINATION__LEASE_TTL", "30s")
    assert parse_config("").coordination.lease_ttl == 30.0


def test_a_bad_env_override_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_METRICS__PORT", "not-a-port")
    issue = only_issue("")
    assert issue.path == "metrics.port"
    assert "SUPERVISOR_METRICS__PORT" in issue.message


def test_a_bad_env_database_url_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_DATABASE_URL", "redis://u:env-secret@cache/0")
    issue = only_issue("")
    assert issue.path == "database_url"
    assert "SUPERVISOR_DATABASE_URL" in issue.message
    assert "env-secret" not in str(issue)


@pytest.mark.parametrize("name", ["SUPERVISOR_METRICS", "SUPERVISOR_WORKERS"])
def test_an_env_table_that_is_not_json_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "{not json")
    issue = only_issue(MINIMAL_WORKER)
    assert issue.path == name.removeprefix("SUPERVISOR_").lower()
    assert name in issue.message


# --- many problems at once ------------------------------------------------------------------


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    found = issues_of(
        """
        databse_url = "sqlite:///x.db"
        log_format = "xml"
        [metrics]
        port = 70000
        [coordination]
        lease_ttl = "3s"
        [workers.indexer]
        command = ["true"]
        stop_signal = "SIGNOPE"
        stop_timeout = "ten seconds"
        max_restarts = -1
        backoff = { initial = "soon", jitter = 2 }
        env = { "A=B" = "x" }
        [workers.reporter]
        mode = "cron"
        cron = "*/5 * *"
        timezone = "Mars/Olympus_Mons"
        max_runn = 2
        [workers."bad name"]
        module = "ok.module"
        command = ["true"]
        """
    )
    assert set(found) == {
        "databse_url",
        "log_format",
        "metrics.port",
        "coordination",
        "workers.indexer.stop_signal",
        "workers.indexer.stop_timeout",
        "workers.indexer.max_restarts",
        "workers.indexer.backoff.initial",
        "workers.indexer.backoff.jitter",
        "workers.indexer.env",
        "workers.reporter",
        "workers.reporter.cron",
        "workers.reporter.timezone",
        "workers.reporter.max_runn",
        "workers.bad name",
    }
    assert "did you mean 'database_url'" in found["databse_url"]
    assert "lease_ttl is too short" in found["coordination"]
    assert 'invalid cron expression "*/5 * *"' in found["workers.reporter.cron"]
    assert "neither given" in found["workers.reporter"]
    assert "invalid worker name" in found["workers.bad name"]
    assert "both given" in found["workers.bad name"]


def test_the_error_message_lists_every_issue_by_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('[workers.a]\ncommand = ["x"]\nstop_signal = "NOPE"\n[metrics]\nport = -1\n',
                     source="fleet.toml")
    text = str(info.value)
    assert text.startswith("fleet.toml: invalid configuration\n")
    assert "\n  metrics.port: " in text
    assert '\n  workers.a.stop_signal: unknown signal name "NOPE"' in text
    assert info.value.source == "fleet.toml"


def test_issues_are_sorted_by_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('log_format = 1\n[workers.z]\nmode = "x"\n[workers.a]\nmode = "y"\n')
    paths = [issue.path for issue in info.value.issues]
    assert paths == sorted(paths)
    assert len(paths) >= 4


def test_toml_syntax_error_has_line_and_column() -> None:
    issue = only_issue('database_url = "sqlite:///x.db"\n\n[workers.indexer\ncommand = ["x"]\n')
    assert issue.path == ""
    assert "TOML syntax error" in issue.message
    assert "line 3, column" in issue.message


# --- unknown keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "suggestion"),
    [
        ('databse_url = "x"\n', "databse_url", "database_url"),
        ("[metrics]\nprot = 1\n", "metrics.prot", "port"),
        ('[coordination]\nlease_tll = "10s"\n', "coordination.lease_tll", "lease_ttl"),
        (MINIMAL_WORKER + 'mode = "cron"\ncron = "@daily"\nmax_runn = 2\n',
         "workers.indexer.max_runn", "max_run"),
        (MINIMAL_WORKER + 'stop_timout = "5s"\n', "workers.indexer.stop_timout", "stop_timeout"),
        (MINIMAL_WORKER + 'backoff = { inital = "1s" }\n', "workers.indexer.backoff.inital",
         "initial"),
    ],
)
def test_unknown_key_with_did_you_mean(text: str, path: str, suggestion: str) -> None:
    issue = only_issue(text)
    assert issue.path == path
    assert issue.message == f"unknown key (did you mean '{suggestion}'?)"


def test_unknown_key_without_a_close_match() -> None:
    issue = only_issue(MINIMAL_WORKER + "zzzzzz = 1\n")
    assert (issue.path, issue.message) == ("workers.indexer.zzzzzz", "unknown key")


def test_unknown_top_level_table() -> None:
    issue = only_issue("[metric]\nport = 1\n")
    assert issue.path == "metric"
    assert "did you mean 'metrics'" in issue.message


# --- secrets --------------------------------------------------------------------------------


def test_masked_hides_the_password_and_keeps_the_rest() -> None:
    settings = parse_config(
        'database_url = "postgresql+psycopg://fleet:Pa55-w0rd@db.internal:5432/fleet"\n'
        + MINIMAL_WORKER
    )
    data = settings.masked()
    assert data["database_url"] == "postgresql+psycopg://fleet:***@db.internal:5432/fleet"
    assert "Pa55-w0rd" not in repr(data)
    assert "Pa55-w0rd" not in tomli_w.dumps(data)
    assert settings.database_url.endswith("Pa55-w0rd@db.internal:5432/fleet")  # still usable


def test_masked_drops_keys_of_other_modes_and_durations_read_back() -> None:
    settings = parse_config(
        MINIMAL_WORKER
        + '[workers.nightly]\nmodule = "m"\nmode = "cron"\ncron = "@daily"\ntimeout = "30m"\n'
        + '[workers.part]\ncommand = ["p"]\nmode = "coordinated"\ninstances = 3\n'
    ).with_identity({"HOSTNAME": "h", "CLUSTER_NAME": "c"})
    data = settings.masked()
    every_node = data["workers"]["indexer"]
    assert not set(every_node) & set(MODE_KEYS)
    assert data["workers"]["nightly"]["cron"] == "@daily"
    assert data["workers"]["nightly"]["timeout"] == "30m"
    assert "instances" not in data["workers"]["nightly"]
    assert data["workers"]["part"]["instances"] == 3
    assert "cron" not in data["workers"]["part"]
    # What `supervisor check` prints is itself a valid config with the same meaning.
    assert parse_config(tomli_w.dumps(data)) == settings


def test_check_output_reads_back_for_odd_durations() -> None:
    settings = parse_config(MINIMAL_WORKER + "stop_timeout = 1.23456789\nrestart_window = 1e-05\n")
    again = parse_config(tomli_w.dumps(settings.masked()))
    assert again.workers["indexer"].stop_timeout == 1.23456789
    assert again.workers["indexer"].restart_window == 1e-05


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("redis://admin:R3d1s-Secret@cache:6379/0", "R3d1s-Secret"),
        ("postgresql+psycopg://fleet:Port-Secret@db:99999/fleet", "Port-Secret"),
        ("postgresql+psycopg://fleet:Slash/Secret#1@db/fleet", "Slash/Secret#1"),
        ("mysql+pymysql://root:V6-Secret@[::1/app", "V6-Secret"),
        ("postgres//fleet:NoScheme-Secret@db/fleet", "NoScheme-Secret"),
    ],
)
def test_a_refused_database_url_never_shows_its_password(url: str, password: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(tomli_w.dumps({"database_url": url}))
    assert [issue.path for issue in info.value.issues] == ["database_url"]
    assert password not in str(info.value)
    assert "***" in str(info.value)


@pytest.mark.parametrize(
    "url",
    ["sqlite:///supervisor.db", "sqlite:////var/lib/supervisor/db.sqlite", "sqlite://",
     "postgresql+psycopg://fleet:pw@db:5432/fleet", "postgresql://db/fleet",
     "mysql+pymysql://root:pw@[::1]:3306/app", "mariadb+pymysql://u:p%2Fw@db/app"],
)
def test_supported_database_urls(url: str) -> None:
    assert parse_config(tomli_w.dumps({"database_url": url})).database_url == url


# --- mode-specific keys ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [("cron", '"@daily"'), ("timezone", '"UTC"'), ("max_run", "2"), ("max_per_node", "2"),
     ("timeout", '"1m"'), ("misfire_grace", '"1m"'), ("overlap", '"allow"'),
     ("catch_up", '"latest"'), ("instances", "3"), ("stable_window", '"5s"'),
     ("scope", '"group"')],
)
@pytest.mark.parametrize("mode", list(Mode))
def test_mode_specific_keys(key: str, value: str, mode: Mode) -> None:
    text = f'{MINIMAL_WORKER}mode = "{mode}"\n{key} = {value}\n'
    if mode is Mode.CRON and key != "cron":
        text += 'cron = "@hourly"\n'
    if mode in MODE_KEYS[key]:
        assert getattr(parse_config(text).workers["indexer"], key) is not None
    else:
        issue = only_issue(text)
        assert issue.path == f"workers.indexer.{key}"
        assert issue.message.startswith("only valid with mode = ")
        assert f'not "{mode}"' in issue.message


def test_cron_mode_requires_cron() -> None:
    issue = only_issue(MINIMAL_WORKER + 'mode = "cron"\n')
    assert (issue.path, issue.message) == ("workers.indexer.cron", 'required when mode = "cron"')


@pytest.mark.parametrize(
    ("key", "value"),
    [("mode", '"leader"'), ("restart", '"sometimes"'), ("overlap", '"queue"'),
     ("catch_up", '"some"'), ("scope", '"planet"')],
)
def test_bad_choices(key: str, value: str) -> None:
    mode = {"overlap": "cron", "catch_up": "cron", "scope": "coordinated"}.get(key, "every-node")
    extra = 'cron = "@daily"\n' if mode == "cron" else ""
    text = f"{MINIMAL_WORKER}{extra}" + (f'mode = "{mode}"\n' if key != "mode" else "")
    issue = only_issue(f"{text}{key} = {value}\n")
    assert issue.path == f"workers.indexer.{key}"
    assert issue.message.startswith(f"invalid value {value.replace(chr(34), chr(39))}")


# --- coordination timings -------------------------------------------------------------------


def test_default_timings_are_valid_and_leave_stop_grace() -> None:
    coordination = parse_config("").coordination
    assert coordination.leader_stop_grace == 3.0
    assert (
        coordination.renew_deadline + coordination.leader_stop_grace
        + coordination.renew_interval + 1.0 <= coordination.lease_ttl
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('lease_ttl = "5s"', "lease_ttl is too short"),
        ('lease_ttl = "7499ms"', "at least renew_deadline + renew_interval + 1s margin + 0.5s"),
        ('lease_ttl = "1m"\nrenew_deadline = "1s"', "must be longer than renew_interval"),
        ('lease_ttl = "1m"\nrenew_deadline = "2s"\nrenew_interval = "2s"', "must be longer"),
        ('renew_interval = 0\nrenew_deadline = "5s"', "renew_interval must be positive"),
        ('lease_ttl = "30s"\nrenew_deadline = "25s"\nrenew_interval = "5s"', "too short"),
    ],
)
def test_unsafe_timings_are_refused(table: str, message: str) -> None:
    issue = only_issue(f"[coordination]\n{table}\n")
    assert issue.path.startswith("coordination")
    assert message in issue.message


def test_the_shortest_safe_lease_ttl_is_accepted() -> None:
    coordination = parse_config('[coordination]\nlease_ttl = "7500ms"\n').coordination
    assert coordination.leader_stop_grace == 0.5


# --- workers --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "indexer", "nightly-report", "a.b_c-D9", "x" * 100])
def test_good_worker_names(name: str) -> None:
    settings = parse_config(tomli_w.dumps({"workers": {name: {"command": ["true"]}}}))
    assert list(settings.workers) == [name]


@pytest.mark.parametrize(
    "name", ["", "bad name", "bad!", "a/b", "indexér", "a:b", "x" * 101, "tab\t", 'q"uote']
)
def test_bad_worker_names(name: str) -> None:
    issue = only_issue(tomli_w.dumps({"workers": {name: {"command": ["true"]}}}))
    assert issue.path == f"workers.{name}"
    assert issue.message.startswith(f"invalid worker name {name!r}")


@pytest.mark.parametrize(
    ("body", "what"),
    [('module = "m"\ncommand = ["c"]', "both"), ('mode = "every-node"', "neither"),
     ("", "neither")],
)
def test_exactly_one_of_module_or_command(body: str, what: str) -> None:
    issue = only_issue(f"[workers.indexer]\n{body}\n")
    assert issue.path == "workers.indexer"
    assert issue.message == f"exactly one of module or command is required ({what} given)"


@pytest.mark.parametrize("module", ["myapp", "myapp.indexer", "my_app.sub.mod:main", "_x:_y"])
def test_good_modules(module: str) -> None:
    text = tomli_w.dumps({"workers": {"w": {"module": module}}})
    assert parse_config(text).workers["w"].module == module


@pytest.mark.parametrize("module", ["my-app", "myapp.", ".myapp", "myapp:", "a:b:c", "1abc",
                                    "myapp indexer", ""])
def test_bad_modules(module: str) -> None:
    issue = only_issue(tomli_w.dumps({"workers": {"w": {"module": module}}}))
    assert issue.path == "workers.w.module"
    assert "invalid module" in issue.message


@pytest.mark.parametrize(
    ("command", "message"),
    [("[]", "at least 1 item"), ('[""]', "must not be empty"), ('"touch x"', "valid list"),
     ("[1, 2]", "valid string")],
)
def test_bad_commands(command: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"[workers.w]\ncommand = {command}\n")
    assert all(issue.path.startswith("workers.w.command") for issue in info.value.issues)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("env", "path"), [('{ "A=B" = "x" }', "workers.w.env"), ('{ "" = "x" }', "workers.w.env"),
                      ("{ A = 1 }", "workers.w.env.A")],
)
def test_bad_env(env: str, path: str) -> None:
    assert only_issue(f'[workers.w]\ncommand = ["c"]\nenv = {env}\n').path == path


@pytest.mark.parametrize(
    ("line", "path"),
    [('stop_timeout = "10 parsecs"', "workers.w.stop_timeout"),
     ("stop_timeout = -5", "workers.w.stop_timeout"),
     ("stop_timeout = true", "workers.w.stop_timeout"),
     (f"stop_timeout = {10**400}", "workers.w.stop_timeout"),
     ('stop_signal = "SIGFOO"', "workers.w.stop_signal"),
     ("stop_signal = 0", "workers.w.stop_signal"),
     ("max_restarts = -1", "workers.w.max_restarts"),
     ('restart_window = "-1m"', "workers.w.restart_window"),
     ("backoff = { factor = 0.5 }", "workers.w.backoff.factor"),
     ("backoff = { jitter = 1.5 }", "workers.w.backoff.jitter"),
     ('backoff = "fast"', "workers.w.backoff"),
     ("critical = [1]", "workers.w.critical")],
)
def test_bad_worker_values(line: str, path: str) -> None:
    assert only_issue(f'[workers.w]\ncommand = ["c"]\n{line}\n').path == path


def test_workers_must_be_tables() -> None:
    assert only_issue("workers = 5\n").path == "workers"
    assert only_issue("[workers]\nindexer = 5\n").path == "workers.indexer"


# --- load_config ----------------------------------------------------------------------------


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.toml"
    path.write_text(MINIMAL_WORKER, encoding="utf-8")
    assert list(load_config(path).workers) == ["indexer"]


def test_load_config_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[metrics]\nport = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: invalid configuration")


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8 text (byte 0x89 at offset 0)"),
     (b'database_url = "\xff"\n', "not UTF-8 text (byte 0xff at offset 16)"),
     (b"a = 1\x00\n", "TOML syntax error"),
     ("\ufeffa = 1\n".encode(), "TOML syntax error")],
)
def test_load_config_refuses_binary(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "garbage.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)


def test_load_config_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_masked_data_is_toml_serialisable_and_complete() -> None:
    settings = parse_config(MINIMAL_WORKER).with_identity({"HOSTNAME": "h"})
    data = tomllib.loads(tomli_w.dumps(settings.masked()))
    assert data["node_id"] == "h"
    assert data["group"] == "default"
    assert data["coordination"] == {"lease_ttl": "10s", "renew_interval": "1s",
                                    "renew_deadline": "5s"}
    assert data["workers"]["indexer"]["stop_signal"] == "SIGTERM"
    assert isinstance(Settings.model_fields, dict)


def test_database_listen_url_is_empty_none_or_a_postgresql_url_and_is_masked() -> None:
    assert parse_config("").database_listen_url == ""
    assert parse_config('database_listen_url = "none"\n').database_listen_url == "none"
    direct = "postgresql+psycopg://fleet:pw@db:5432/fleet"
    settings = parse_config(f'database_listen_url = "{direct}"\n')
    assert settings.database_listen_url == direct
    assert settings.masked()["database_listen_url"] == "postgresql+psycopg://fleet:***@db:5432/fleet"
    issue = only_issue('database_listen_url = "mysql+pymysql://root:hunter2@db/fleet"\n')
    assert issue.path == "database_listen_url"
    assert "hunter2" not in str(issue)


@pytest.mark.parametrize(
    ("command", "hint"),
    [('"sleep 100"', 'such as ["sleep", "100"]'),
     ("""'run --name "a b"'""", 'such as ["run", "--name", "a b"]'),
     ('"ls | wc -l"', 'this one needs a shell, so: ["sh", "-c", "ls | wc -l"]'),
     ('"echo $HOME"', '["sh", "-c", "echo $HOME"]'),
     ("""'unbalanced "quote'""", """["sh", "-c", "unbalanced \\"quote"]"""),
     ('""', 'such as ["sleep", "100"]')],
)
def test_a_command_written_as_a_string_is_refused_with_the_list_to_write(
        command: str, hint: str) -> None:
    issue = only_issue(f"[workers.w]\ncommand = {command}\n")
    assert issue.path == "workers.w.command"
    assert issue.message.startswith("Input should be a valid list: write the command as a list "
                                    "of arguments")
    assert hint in issue.message


def test_a_string_command_from_the_environment_is_not_quoted_back() -> None:
    """A variable's value may hold a secret: the example is a generic one."""
    with pytest.raises(ConfigError) as info:
        parse_config('[workers.w]\ncommand = ["true"]\n', environ={
            "SUPERVISOR_WORKERS__w__COMMAND": '"psql postgresql://u:Pa55@db/x"'})
    assert "Pa55" not in str(info.value)
    assert 'such as ["sleep", "100"]' in str(info.value)
    assert "SUPERVISOR_WORKERS__w__COMMAND" in str(info.value)


def test_control_socket_is_read_from_the_file_and_from_its_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_config(MINIMAL_WORKER).control_socket == ""
    text = 'control_socket = "run/a.sock"\n' + MINIMAL_WORKER
    assert parse_config(text).to_spec().control_socket == "run/a.sock"
    monkeypatch.setenv("SUPERVISOR_CONTROL_SOCKET", "/run/fleet/b.sock")
    assert parse_config(text).to_spec().control_socket == "/run/fleet/b.sock"
