"""Guarantee 8 from the outside: a bad config file is refused whole, by the installed command.

Every file in bad_configs/ states what the refusal must say in its leading comments:

    # expect: workers.indexer.cron: invalid cron expression "*/5 * *"   (substring of stderr)
    # secret: Pa55word                         (must appear in neither stdout nor stderr)

Each file also declares a worker that is valid on its own and would leave `started.marker`
in the working directory if it ever ran, so a file accepted in part is caught too.
Both `check` and `run` must exit 2, name every problem by its key path, print no
traceback, and leave the working directory exactly as they found it.
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERVISOR = Path(sys.executable).parent / "supervisor"
CORPUS = Path(__file__).parent / "bad_configs"
CORPUS_FILES = sorted(CORPUS.glob("*.toml"))
MARKER = "started.marker"
SUBPROCESS_TIMEOUT = 30.0
COMMANDS = ["check", "run"]

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def environment(**extra: str) -> dict[str, str]:
    """This environment minus any SUPERVISOR_* the developer's shell may hold."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SUPERVISOR_")}
    env.update({"HOSTNAME": "e2e-node", "CLUSTER_NAME": "e2e-cluster", **extra})
    return env


def supervisor(command: str, config: str, cwd: Path, env: dict[str, str] | None = None) -> Outcome:
    proc = subprocess.run(
        [str(SUPERVISOR), command, "-c", config],
        cwd=cwd,
        env=env if env is not None else environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    return Outcome(
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )


def expectations(path: Path, tag: str) -> list[str]:
    prefix = f"# {tag}: "
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]


def assert_refused(outcome: Outcome, workdir: Path, *, left_alone: set[str]) -> None:
    """Exit 2, an explanation on stderr only, no traceback, and nothing started or created."""
    assert outcome.returncode == 2, outcome
    assert "Traceback" not in outcome.output, outcome.output
    assert outcome.stderr.strip(), "a refusal must say why"
    assert outcome.stdout == "", f"a refused config printed on stdout: {outcome.stdout!r}"
    assert not (workdir / MARKER).exists(), "a worker was started from a refused config"
    assert {p.name for p in workdir.iterdir()} == left_alone, "a refused run left files behind"


# --- the corpus ----------------------------------------------------------------------------


def test_the_corpus_is_there_and_every_file_says_what_to_expect() -> None:
    assert len(CORPUS_FILES) >= 25
    for path in CORPUS_FILES:
        assert expectations(path, "expect"), f"{path.name} has no '# expect:' line"


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_bad_config_is_refused(tmp_path: Path, path: Path, command: str) -> None:
    config = tmp_path / path.name
    config.write_bytes(path.read_bytes())
    outcome = supervisor(command, config.name, tmp_path)
    assert_refused(outcome, tmp_path, left_alone={config.name})
    assert outcome.stderr.startswith(f"error: {config.name}: invalid configuration\n")
    for expected in expectations(path, "expect"):
        assert expected in outcome.stderr, f"{expected!r} not in:\n{outcome.stderr}"
    for secret in expectations(path, "secret"):
        assert secret not in outcome.output


# --- files that are not TOML text, written here as bytes -----------------------------------

CANARY_TOML = b'[workers.canary]\ncommand = ["touch", "started.marker"]\n'
GARBAGE = {
    "random_bytes": b"\xff" + random.Random(8).randbytes(4095),
    "png_header": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08",
    "utf16_with_bom": CANARY_TOML.decode().encode("utf-16"),
    "truncated_utf8": b'group = "caf\xc3"\n' + CANARY_TOML,
    "nul_in_text": CANARY_TOML + b'x = "\x00"\n',
    "gzip": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + bytes(range(256)),
}
GARBAGE_EXPECT = {
    "random_bytes": "not UTF-8 text (byte 0xff at offset 0)",
    "png_header": "not UTF-8 text (byte 0x89 at offset 0)",
    "utf16_with_bom": "not UTF-8 text (byte 0xff at offset 0)",
    "truncated_utf8": "not UTF-8 text (byte 0xc3 at offset 12)",
    "nul_in_text": "TOML syntax error: Illegal character '\\x00' (at line 3, column 6)",
    "gzip": "not UTF-8 text (byte 0x8b at offset 1)",
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_binary_garbage_is_refused(tmp_path: Path, name: str, command: str) -> None:
    config = tmp_path / f"{name}.toml"
    config.write_bytes(GARBAGE[name])
    outcome = supervisor(command, config.name, tmp_path)
    assert_refused(outcome, tmp_path, left_alone={config.name})
    assert GARBAGE_EXPECT[name] in outcome.stderr


# --- paths that are not files --------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_file(tmp_path: Path, command: str) -> None:
    outcome = supervisor(command, "does-not-exist.toml", tmp_path)
    assert_refused(outcome, tmp_path, left_alone=set())
    assert "config file not found: does-not-exist.toml" in outcome.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_empty_path(tmp_path: Path, command: str) -> None:
    outcome = supervisor(command, "", tmp_path)
    assert_refused(outcome, tmp_path, left_alone=set())
    assert "error" in outcome.stderr.lower()


@pytest.mark.parametrize("command", COMMANDS)
def test_directory_instead_of_a_file(tmp_path: Path, command: str) -> None:
    (tmp_path / "conf.d").mkdir()
    outcome = supervisor(command, "conf.d", tmp_path)
    assert_refused(outcome, tmp_path, left_alone={"conf.d"})
    assert "conf.d" in outcome.stderr
    assert "is a directory" in outcome.stderr.lower()


# --- bad environment overrides of a good file ----------------------------------------------

GOOD_CANARY = """\
[metrics]
enabled = false

[workers.canary]
command = ["touch", "started.marker"]
restart = "never"
"""


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SUPERVISOR_METRICS", "{not json",
         "metrics: the environment variable SUPERVISOR_METRICS is not valid JSON"),
        ("SUPERVISOR_METRICS__PORT", "port",
         "metrics.port: Input should be a valid integer"),
        ("SUPERVISOR_COORDINATION__LEASE_TTL", "2s", "coordination: lease_ttl is too short"),
        ("SUPERVISOR_DATABASE_URL", "redis://u:Env-Pa55word@cache/0",
         'database_url: unsupported database URL "redis://u:***@cache/0"'),
    ],
)
def test_bad_environment_override_is_refused(
    tmp_path: Path, command: str, variable: str, value: str, expected: str
) -> None:
    config = tmp_path / "supervisor.toml"
    config.write_text(GOOD_CANARY, encoding="utf-8")
    outcome = supervisor(command, config.name, tmp_path, environment(**{variable: value}))
    assert_refused(outcome, tmp_path, left_alone={config.name})
    assert expected in outcome.stderr
    assert "Env-Pa55word" not in outcome.output


# --- a node identity the database cannot hold -------------------------------------------

LONG_WORKER = "w" * 100  # the longest worker name a file may give


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("mode", "cluster", "expected"),
    [
        # leader/<worker>/<group> is 308 characters: past the database's 255, every sync of
        # the node would fail (and with it every other worker's renewal).
        ("group-leader", "g" * 200,
         f"workers.{LONG_WORKER}: its database key 'leader/{LONG_WORKER[:53]}'... is 308 "
         "characters, the database keeps 255"),
        ("coordinated\"\nscope = \"group", "g" * 200,
         f"workers.{LONG_WORKER}: its database key '{LONG_WORKER[:60]}'... is 301 characters"),
        ("every-node", "eu west",
         "group: 'eu west' (from $CLUSTER_NAME) must be 1-200 characters without spaces"),
    ],
)
def test_an_identity_from_the_environment_the_database_cannot_hold_is_refused(
    tmp_path: Path, command: str, mode: str, cluster: str, expected: str
) -> None:
    config = tmp_path / "supervisor.toml"
    config.write_text(
        f'database_url = "sqlite:///fleet.db"\n\n[metrics]\nenabled = false\n\n'
        f'[workers.{LONG_WORKER}]\ncommand = ["touch", "started.marker"]\nmode = "{mode}"\n',
        encoding="utf-8")
    outcome = supervisor(command, config.name, tmp_path, environment(CLUSTER_NAME=cluster))
    assert_refused(outcome, tmp_path, left_alone={config.name})
    assert expected in outcome.stderr


# --- the good case -------------------------------------------------------------------------

GOOD = """\
database_url = "postgresql+psycopg://fleet:G00d-Pa55word@db.internal:5432/fleet"

[coordination]
lease_ttl = "15s"

[metrics]
enabled = false

[workers.indexer]
module = "myapp.indexer"
mode = "group-leader"
stop_timeout = 90

[workers.nightly-report]
command = ["/usr/bin/env", "true"]
mode = "cron"
cron = "0 2 * * *"
timezone = "Europe/Berlin"
max_run = 2
"""


def test_check_prints_the_effective_config_with_the_password_masked(tmp_path: Path) -> None:
    config = tmp_path / "supervisor.toml"
    config.write_text(GOOD, encoding="utf-8")
    outcome = supervisor("check", config.name, tmp_path)
    assert outcome.returncode == 0, outcome
    assert "Traceback" not in outcome.output
    assert "G00d-Pa55word" not in outcome.output
    effective = tomllib.loads(outcome.stdout)
    assert effective["database_url"] == "postgresql+psycopg://fleet:***@db.internal:5432/fleet"
    assert (effective["node_id"], effective["group"]) == ("e2e-node", "e2e-cluster")
    assert effective["coordination"] == {
        "lease_ttl": "15s", "renew_interval": "1s", "renew_deadline": "5s",
    }
    indexer = effective["workers"]["indexer"]
    assert indexer["module"] == "myapp.indexer"
    assert indexer["stop_timeout"] == "90s"
    assert indexer["restart"] == "on-failure"
    assert "cron" not in indexer
    report = effective["workers"]["nightly-report"]
    assert (report["cron"], report["timezone"], report["max_run"]) == (
        "0 2 * * *", "Europe/Berlin", 2,
    )
    assert {p.name for p in tmp_path.iterdir()} == {config.name}

    # The printed config is itself valid and means the same: checking it prints it again.
    again = tmp_path / "effective.toml"
    again.write_text(outcome.stdout, encoding="utf-8")
    second = supervisor("check", again.name, tmp_path)
    assert second.returncode == 0, second
    assert second.stdout == outcome.stdout


@pytest.mark.timeout(40)
def test_the_marker_would_catch_a_start(tmp_path: Path) -> None:
    """The control for the corpus: the same canary, in a good file, does leave its marker."""
    config = tmp_path / "supervisor.toml"
    config.write_text(
        GOOD_CANARY.replace(
            '["touch", "started.marker"]', '["sh", "-c", "touch started.marker && echo ran-ok"]'
        ),
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [str(SUPERVISOR), "run", "-c", config.name],
        cwd=tmp_path, env=environment(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        output = read_until(proc, b"ran-ok", timeout=SUBPROCESS_TIMEOUT)
        assert b"ran-ok" in output, output.decode(errors="replace")
        assert (tmp_path / MARKER).exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=SUBPROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=SUBPROCESS_TIMEOUT)
        assert proc.stdout is not None
        proc.stdout.close()


def read_until(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> bytes:
    """What the process printed, up to `needle` or end of output; waits on the pipe, no polling."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    output = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while needle not in output:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            output += chunk
    return output


# --- a database driver that is not installed -----------------------------------------------

# The supervisor command with one driver's import blocked, as if its extra were not installed.
WITHOUT_DRIVER = ("import sys; sys.modules[{module!r}] = None; sys.argv[0] = 'supervisor'; "
                  "from supervisor.cli import main; main()")


@pytest.mark.parametrize("command", [*COMMANDS, "status"])
@pytest.mark.parametrize(("scheme", "module", "extra"), [
    ("postgresql+psycopg", "psycopg", "postgres"), ("mysql+pymysql", "pymysql", "mysql")])
def test_a_url_whose_driver_is_not_installed_is_refused_naming_the_extra(
        tmp_path: Path, command: str, scheme: str, module: str, extra: str) -> None:
    config = tmp_path / "supervisor.toml"
    config.write_text(f'database_url = "{scheme}://fleet:Dr1ver-Pa55@127.0.0.1:9/fleet"\n'
                      + GOOD_CANARY + '[workers.leader]\ncommand = ["true"]\n'
                      'mode = "global-leader"\n', encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_DRIVER.format(module=module), command, "-c", config.name],
        cwd=tmp_path, env=environment(), stdin=subprocess.DEVNULL, capture_output=True,
        timeout=SUBPROCESS_TIMEOUT, check=False)
    outcome = Outcome(proc.returncode, proc.stdout.decode(errors="replace"),
                      proc.stderr.decode(errors="replace"))
    assert_refused(outcome, tmp_path, left_alone={config.name})
    assert outcome.stderr == (f"error: database_url: {scheme}:// needs the driver {module}, "
                              f"which is not installed: pip install 'fleet-supervisor[{extra}]'\n")
