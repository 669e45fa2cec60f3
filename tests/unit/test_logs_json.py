"""The supervisor's own log as JSON lines carries each event's fields, not only a sentence;
`log_level` keeps the records below it out; secrets stay out whatever the format (issue 14).

The real path: `configure_logging` and an `EventLog` sharing one Output over text streams,
fed the events the supervisor publishes.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from supervisor.logs import EventLog, configure_logging
from supervisor.model import (
    CronClaimed,
    CronRunEnded,
    Event,
    ExitReason,
    LeadershipGained,
    LeadershipLost,
    RestartScheduled,
    WorkerExited,
    WorkerGaveUp,
    WorkerOutput,
    WorkerStarted,
    mask_url,
)
from supervisor.output import Output

WAIT = 5.0
TICK = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PASSWORD = "S3cr3t-Pa55"
DATABASE_URL = f"postgresql+psycopg://fleet:{PASSWORD}@db.internal:5432/fleet"
CONTEXT = {"node_id": "node-a", "group": "blue"}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging replaces the handlers of the `supervisor` and root loggers."""
    ours, root = logging.getLogger("supervisor"), logging.getLogger()
    saved = (ours.handlers[:], ours.level, ours.propagate, root.handlers[:])
    yield
    ours.handlers[:], ours.level, ours.propagate, root.handlers[:] = saved


def logged(log_format: str, *events: Event, level: str = "info") -> tuple[list[str], list[str]]:
    """(stdout lines, stderr lines) after publishing `events` to a configured EventLog."""
    stdout, stderr = io.StringIO(), io.StringIO()
    output = Output.of_streams(stdout, stderr)
    configure_logging(log_format, output, level, CONTEXT)
    events_log = EventLog(log_format, output=output, context=CONTEXT)
    for event in events:
        events_log(event)
    assert output.close(WAIT)
    return stdout.getvalue().splitlines(), stderr.getvalue().splitlines()


def one_record(event: Event) -> dict[str, object]:
    _, (line,) = logged("json", event)
    entry: dict[str, object] = json.loads(line)
    return entry


def test_a_started_worker_gives_its_event_worker_pid_and_node():
    entry = one_record(WorkerStarted("indexer", 4242, ("/bin/indexer", "-v")))
    assert entry["message"] == "indexer: started (pid 4242)"
    assert {key: entry[key] for key in ("level", "event", "worker", "pid", "node_id", "group")} \
        == {"level": "info", "event": "WorkerStarted", "worker": "indexer", "pid": 4242,
            "node_id": "node-a", "group": "blue"}


def test_an_exit_gives_its_reason_exit_code_and_uptime_in_seconds():
    entry = one_record(WorkerExited("indexer", 4242, ExitReason.FAILED, "exit status 3", 12.5,
                                    exit_code=3))
    assert entry["level"] == "warning" and entry["event"] == "WorkerExited"
    assert (entry["reason"], entry["exit_code"], entry["signal"], entry["uptime"]) \
        == ("failed", 3, None, 12.5)
    killed = one_record(WorkerExited("indexer", 4242, ExitReason.KILLED, "killed by SIGKILL",
                                     1.0, signal="SIGKILL"))
    assert (killed["reason"], killed["exit_code"], killed["signal"]) == ("killed", None, "SIGKILL")


def test_leadership_gives_the_lease_and_its_fencing_token():
    gained = one_record(LeadershipGained("singleton", "blue", "leader/singleton", 7))
    assert (gained["event"], gained["lease"], gained["term"], gained["token"]) \
        == ("LeadershipGained", "leader/singleton", 7, 7)
    lost = one_record(LeadershipLost("singleton", "blue", "leader/singleton", 7, "trust expired"))
    assert (lost["event"], lost["reason"], lost["token"]) == ("LeadershipLost", "trust expired", 7)


def test_cron_events_give_the_tick_in_utc_the_slot_and_the_token():
    claimed = one_record(CronClaimed("report", TICK, "acquired", slot=0, token=12))
    assert (claimed["event"], claimed["tick"], claimed["slot"], claimed["token"]) \
        == ("CronClaimed", "2026-01-01T00:00:00.000Z", 0, 12)
    ended = one_record(CronRunEnded("report", TICK, 0, 12, "failed", 2, 3.25, True))
    assert (ended["state"], ended["exit_code"], ended["duration"], ended["level"]) \
        == ("failed", 2, 3.25, "warning")


def test_restart_and_give_up_give_their_numbers():
    restart = one_record(RestartScheduled("indexer", 1.5, 2))
    assert (restart["event"], restart["delay"], restart["attempt"]) == ("RestartScheduled", 1.5, 2)
    gave_up = one_record(WorkerGaveUp("indexer", 5, 300.0, True))
    assert (gave_up["level"], gave_up["restarts"], gave_up["critical"]) == ("error", 5, True)


def test_a_record_not_made_from_an_event_has_the_node_but_no_event_field():
    _, lines = logged("json")
    assert lines == []
    stdout, stderr = io.StringIO(), io.StringIO()
    output = Output.of_streams(stdout, stderr)
    configure_logging("json", output, "info", CONTEXT)
    logging.getLogger("supervisor").info("node %s: starting", "node-a")
    assert output.close(WAIT)
    entry = json.loads(stderr.getvalue())
    assert entry["node_id"] == "node-a" and "event" not in entry


def test_worker_output_lines_carry_the_node_too():
    lines, _ = logged("json", WorkerOutput("indexer", "stdout", "hello"))
    entry = json.loads(lines[0])
    assert (entry["worker"], entry["stream"], entry["message"], entry["node_id"]) \
        == ("indexer", "stdout", "hello", "node-a")


def test_the_text_format_is_unchanged_by_the_structured_fields():
    _, lines = logged("text", WorkerStarted("indexer", 4242),
                      LeadershipGained("singleton", "blue", "leader/singleton", 7))
    assert [line.split(" ", 1)[1] for line in lines] == [
        "INFO    indexer: started (pid 4242)",
        "INFO    singleton: leader of leader/singleton with fencing token 7",
    ]


def test_the_database_password_never_reaches_a_json_line():
    """A child's argv is left out of WorkerStarted's fields (the text line never showed it):
    a command may carry the database URL, password included."""
    events = [
        WorkerStarted("migrate", 99, ("migrate", "--url", DATABASE_URL)),
        WorkerExited("migrate", 99, ExitReason.FAILED, "exit status 1", 0.5, exit_code=1),
        LeadershipLost("singleton", "blue", "leader/singleton", 3,
                       f"database {mask_url(DATABASE_URL)} unreachable"),
    ]
    stdout, stderr = logged("json", *events)
    text = "\n".join(stdout + stderr)
    assert PASSWORD not in text
    assert "argv" not in json.loads(stderr[0])
    assert "fleet:***@db.internal" in text  # the masked URL is what a reason may name


@pytest.mark.parametrize(("level", "shown"), [
    ("debug", ["DEBUG", "INFO", "WARNING", "ERROR"]),
    ("info", ["INFO", "WARNING", "ERROR"]),
    ("warning", ["WARNING", "ERROR"]),
    ("error", ["ERROR"]),
])
def test_log_level_keeps_the_supervisors_records_below_it_out(level: str, shown: list[str]):
    stdout, stderr = io.StringIO(), io.StringIO()
    output = Output.of_streams(stdout, stderr)
    configure_logging("text", output, level)
    log = logging.getLogger("supervisor.test")
    for name in ("debug", "info", "warning", "error"):
        getattr(log, name)("a %s record", name)
    events_log = EventLog("text", output=output)
    events_log(WorkerOutput("indexer", "stdout", "a child's line"))
    assert output.close(WAIT)
    assert [line.split()[1] for line in stderr.getvalue().splitlines()] == shown
    assert stdout.getvalue() == "indexer | a child's line\n"  # children's lines always


def test_log_level_is_read_from_the_file_and_from_supervisor_log_level():
    from supervisor.config import parse_config
    from supervisor.errors import ConfigError

    worker = '[workers.w]\ncommand = ["true"]\n'
    assert parse_config(worker, environ={}).log_level == "info"
    assert parse_config('log_level = "debug"\n' + worker, environ={}).log_level == "debug"
    assert parse_config('log_level = "debug"\n' + worker,
                        environ={"SUPERVISOR_LOG_LEVEL": "warning"}).to_spec().log_level \
        == "warning"
    with pytest.raises(ConfigError) as refused:
        parse_config(worker, environ={"SUPERVISOR_LOG_LEVEL": "loud"})
    assert "log_level: invalid value 'loud'" in str(refused.value)
    assert "SUPERVISOR_LOG_LEVEL" in str(refused.value)
