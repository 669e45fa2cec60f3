"""`supervisor trigger` with real supervisors on every database: a cron worker run once now.

Judged by what the runs themselves record (tests/workers/cronprobe.py: each run logs its
start and end with its pid and token, and with a lock file holds a flock for its whole
life) and by `supervisor history`:
- a triggered run starts on exactly max_run nodes within about a renew interval, and is
  recorded with who asked and why; history shows the pid the child itself printed;
- a retried command (the same --key) is reported as already requested and never runs again;
- overlap = forbid: triggered runs and schedule ticks never run at once (the flock);
- a worker that is not in the file or not a cron worker: exit 2, naming it.
"""

from __future__ import annotations

import getpass
import itertools
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SUPERVISOR_BIN, wait_until
from tests.e2e.test_cron import CronFleet
from tests.support.fleet import FAST, made_fleets
from tests.support.probelogs import RunEvent

pytestmark = pytest.mark.slow

SLACK = 3.0  # process start-up and a loaded 2-core machine
YEARLY = "0 0 1 1 *"  # no schedule tick during a test: what runs is the trigger


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def supervisor(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SUPERVISOR_BIN), *args, "-c", str(config)], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
def fleet(tmp_path: Path, database_url: str) -> Iterator[object]:
    import functools

    with made_fleets(functools.partial(CronFleet, tmp_path, database_url)) as make:
        yield make


def starts(fleet: CronFleet, since: int = 0) -> list[RunEvent]:
    return [e for e in fleet.runs()[since:] if e.kind == "start"]


def trigger(fleet: CronFleet, *args: str) -> subprocess.CompletedProcess[str]:
    done = supervisor("trigger", "job", *args, config=fleet.directory / "a.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def quiet(fleet: CronFleet, seconds: float, count: int) -> None:
    """No further run starts for `seconds` (an absence can only be watched for a while)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert len(starts(fleet)) == count, fleet.report()
        time.sleep(0.02)


def test_a_trigger_runs_on_exactly_max_run_nodes_once_with_who_and_why(fleet) -> None:
    max_run = 2
    f: CronFleet = fleet(cron=YEARLY, max_run=max_run, misfire_grace="30s", overlap="allow",
                         run_seconds=0.3)
    f.start_nodes("a", "b", "c")
    upgraded = supervisor("db", "upgrade", config=f.directory / "a.toml")
    assert upgraded.returncode == 0, upgraded.stderr
    # a first trigger: every node is syncing once its runs are done
    trigger(f, "--reason", "warm-up")
    wait_until(lambda: len(starts(f)) >= max_run, 20 + SLACK, "the warm-up runs")
    quiet(f, 3 * FAST.renew_interval, max_run)
    seen = len(f.runs())

    done = trigger(f, "--reason", "e2e: backfill", "--key", "deploy-42", "--json")
    made = json.loads(done.stdout)
    assert (made["created"], made["key"], made["reason"]) == (True, "deploy-42", "e2e: backfill")
    asked_at = epoch(made["requested"])  # the database's clock (the host's, here)
    wait_until(lambda: len(starts(f, seen)) >= max_run, FAST.renew_interval + SLACK,
               f"{max_run} triggered runs")
    runs = starts(f, seen)
    # claimed in the nodes' next sync; the child then takes a Python start-up to print
    assert max(r.at for r in runs) - asked_at <= FAST.renew_interval + SLACK / 2, f.report()
    assert len({r.node for r in runs}) == max_run and {r.slot for r in runs} == {0, 1}

    again = trigger(f, "--reason", "retried", "--key", "deploy-42")
    assert "already requested" in again.stdout and "nothing new runs" in again.stdout
    quiet(f, 5 * FAST.renew_interval, 2 * max_run)  # neither the third node nor a retry
    wait_until(lambda: len([e for e in f.runs() if e.kind == "end"]) >= 2 * max_run, 10,
               "the runs' ends")

    def history() -> list[dict[str, object]]:
        shown = supervisor("history", "job", "--json", config=f.directory / "b.toml")
        assert shown.returncode == 0, shown.stderr
        return [r for r in json.loads(shown.stdout) if r["kind"] == "run"]

    wait_until(lambda: all(r["state"] != "running" for r in history()), 10,
               "the runs recorded as ended")
    rows: list[dict[str, Any]] = history()
    ours = [r for r in rows if r["trigger"] and r["trigger"]["key"] == "deploy-42"]
    assert len(ours) == max_run, rows
    for row in ours:  # each node claimed it in its next sync after the request
        assert epoch(row["claimed"]) - asked_at <= FAST.renew_interval * 1.2 + 0.3, rows
    printed = {r.token: r.pid for r in runs}
    for row in ours:
        assert row["trigger"]["user"] == getpass.getuser()
        assert row["trigger"]["host"] == socket.gethostname()
        assert row["trigger"]["reason"] == "e2e: backfill"
        assert row["pid"] == printed[row["token"]], (row, printed)
        assert row["supervisor_pid"] == f.nodes[row["node_id"]].pid
    text = supervisor("history", "job", config=f.directory / "a.toml").stdout
    assert f"[triggered by {getpass.getuser()}@{socket.gethostname()}: e2e: backfill]" in text


def test_triggered_runs_never_overlap_schedule_ticks_under_forbid(fleet) -> None:
    f: CronFleet = fleet(cron="@every 3s", max_run=1, misfire_grace="2s", overlap="forbid",
                         run_seconds=1.0, lock=True)
    f.start_nodes("a", "b")
    wait_until(lambda: len(starts(f)) >= 1, 20, "a first schedule run")
    triggered = 0
    deadline = time.monotonic() + 40
    while triggered < 3 and time.monotonic() < deadline:
        count = len(starts(f))
        # Asked for between runs (a request that lands while a run goes on is skipped,
        # rightly, under forbid): whether it then meets the next tick is the test.
        wait_until(lambda: len([e for e in f.runs() if e.kind == "end"]) >= count,  # noqa: B023
                   10, "the runs so far ended")
        trigger(f, "--reason", "overlap check")
        wait_until(lambda: len(starts(f)) > count, 10, "a run after the trigger")  # noqa: B023
        triggered = sum(1 for r in f.history() if r.slot >= 0 and r.trigger is not None)
    f.close()
    report = f.report()
    events = f.runs()
    assert not [e for e in events if e.kind == "OVERLAP"], report
    spans: dict[int, list[float]] = {}
    for e in events:
        spans.setdefault(e.pid, []).append(e.at)
    intervals = sorted((min(t), max(t)) for t in spans.values())
    for (_, end), (start, _) in itertools.pairwise(intervals):
        assert end <= start, report
    assert triggered >= 1, report


CONFIG = """
database_url = "{url}"
node_id = "ops"

[workers.job]
command = ["true"]
mode = "cron"
cron = "@every 2s"

[workers.lead]
command = ["true"]
mode = "global-leader"
"""


@pytest.mark.parametrize("database_backend", ["sqlite"])
@pytest.mark.parametrize(("args", "says"), [
    (("nope",), "no worker 'nope'"),
    (("lead",), "worker 'lead' is a global-leader worker, not a cron worker"),
    (("job", "--key", "k" * 65), "--key must be 1 to 64 characters"),
])
def test_a_worker_that_cannot_be_triggered_is_refused_with_exit_2(tmp_path, database_url,
                                                                  args, says) -> None:
    cfg = tmp_path / "supervisor.toml"
    cfg.write_text(CONFIG.format(url=database_url))
    done = supervisor("trigger", *args, config=cfg)
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("database_backend", ["postgresql"])
def test_an_unreachable_database_is_exit_1_without_the_password(tmp_path,
                                                                 database_backend) -> None:
    cfg = tmp_path / "supervisor.toml"
    cfg.write_text(CONFIG.format(url="postgresql+psycopg://ops:hunter2@127.0.0.1:1/fleet"))
    done = supervisor("trigger", "job", config=cfg)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "error:" in done.stderr and "Traceback" not in done.stderr
    assert "hunter2" not in done.stdout + done.stderr


@pytest.mark.parametrize("database_backend", ["sqlite"])
def test_a_trigger_without_a_running_fleet_is_recorded_missed_after_its_grace(
        tmp_path, database_url) -> None:
    """Nobody runs the worker: the request stays open, and upkeep records it missed."""
    from supervisor.store.sql import SqlStore

    cfg = tmp_path / "supervisor.toml"
    cfg.write_text(CONFIG.format(url=database_url).replace(
        'cron = "@every 2s"', 'cron = "@every 2s"\nmisfire_grace = "1s"'))
    assert supervisor("db", "upgrade", config=cfg).returncode == 0
    done = supervisor("trigger", "job", "--reason", "nobody home", "--json", config=cfg)
    assert done.returncode == 0, done.stderr
    store = SqlStore(database_url)
    try:
        made = json.loads(done.stdout)
        store.maintain(3600.0, now=epoch(made["requested"]) + 1.5)
        [row] = store.cron_runs(worker="job")
        assert (row.state, row.trigger and row.trigger.reason) == ("missed", "nobody home")
    finally:
        store.close()
    shown = supervisor("history", "job", config=cfg).stdout
    assert "triggered missed" in shown and "nobody home" in shown


@pytest.mark.parametrize("database_backend", ["sqlite", "mariadb"])
def test_a_worker_paused_on_every_group_is_not_triggered(tmp_path, database_url) -> None:
    """No node would run it: refused (exit 1, saying who paused it), nothing recorded;
    once resumed, the same request goes through."""
    from supervisor.store.sql import SqlStore

    cfg = tmp_path / "supervisor.toml"
    cfg.write_text(CONFIG.format(url=database_url))
    assert supervisor("db", "upgrade", config=cfg).returncode == 0
    assert supervisor("pause", "job", "--reason", "migration", config=cfg).returncode == 0
    done = supervisor("trigger", "job", "--key", "after-migration", config=cfg)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "job is paused" in done.stderr and "migration" in done.stderr
    assert "Traceback" not in done.stderr
    store = SqlStore(database_url)
    try:
        assert store.cron_runs(worker="job") == []
    finally:
        store.close()
    assert supervisor("resume", "job", config=cfg).returncode == 0
    done = supervisor("trigger", "job", "--key", "after-migration", config=cfg)
    assert done.returncode == 0 and "triggered job" in done.stdout, done.stderr
