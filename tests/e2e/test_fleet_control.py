"""Fleet control end to end (issue 15): `supervisor pause|resume|handover|drain|undrain`
against real supervisors on SQLite, PostgreSQL and MariaDB, judged by what the workers
observe (the leader probe's flock, the cron probe's runs, the coordinated probe's
instances) and by the database's history.

Times are bounded by the promise, with slack for a loaded 2-core machine: a control write
reaches every node with its next sync (one renew interval), a leader's child is then
stopped within its stop grace, and the lease released once it is dead.
"""

from __future__ import annotations

import functools
import json
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from supervisor.store import CronRunRecord
from supervisor.store.sql import SqlStore
from tests.conftest import SUPERVISOR_BIN, pid_alive, wait_until
from tests.e2e.test_coordinated import CoordFleet
from tests.e2e.test_cron import CronFleet
from tests.support.fleet import FAST, Fleet, ProbeLog, made_fleets, worker_toml

pytestmark = pytest.mark.slow

SLACK = 3.0  # process start-up and a few syncs on a loaded 2-core machine
REACH = FAST.renew_interval * 1.1  # a control write reaches every node within this
QUIET = 6 * FAST.renew_interval  # how long "nothing starts while paused" is watched


def cli(node_config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SUPERVISOR_BIN), *args, "-c", str(node_config)],
                          capture_output=True, text=True, timeout=timeout, check=False)


def ok(node_config: Path, *args: str) -> str:
    done = cli(node_config, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


@pytest.fixture
def fleet(tmp_path: Path, database_url: str) -> Iterator[Fleet]:
    with made_fleets(functools.partial(Fleet, tmp_path, database_url)) as make:
        yield make()


@pytest.fixture
def make_cron(tmp_path: Path, database_url: str) -> Iterator[Callable[..., CronFleet]]:
    with made_fleets(functools.partial(CronFleet, tmp_path, database_url)) as make:
        yield make


@pytest.fixture
def make_coord(tmp_path: Path, database_url: str) -> Iterator[Callable[..., CoordFleet]]:
    with made_fleets(functools.partial(CoordFleet, tmp_path, database_url)) as make:
        yield make


def control_log(database_url: str) -> list[tuple[str, str, str]]:
    store = SqlStore(database_url)
    try:
        return [(a.action, a.target, a.reason) for a in store.control_log()]
    finally:
        store.close()


# --- leader ----------------------------------------------------------------------------------


def test_a_paused_leader_stops_everywhere_and_resumes_within_a_renew_interval(
        fleet: Fleet) -> None:
    probe = fleet.probe()
    fleet.start_nodes("a", "b")
    first = probe.wait_for("acquired", timeout=20)
    config = fleet.nodes["a"].config
    asked = time.time()
    out = ok(config, "pause", "probe", "--reason", "schema migration")
    assert "paused probe on every node" in out
    term = fleet.wait_ended(probe, first.pid, timeout=REACH + FAST.stop_grace + SLACK)
    assert term.how == "released", term
    stopped = term.ended
    assert stopped is not None and stopped - asked < REACH + FAST.stop_grace + SLACK
    mark = probe.mark()
    probe.quiet(QUIET, since=mark)  # neither node starts it while paused
    resumed = time.time()
    ok(config, "resume", "probe", "--reason", "migrated")
    back = probe.wait_for("acquired", since=mark, timeout=REACH + SLACK)
    assert back.at - resumed < 2 * REACH + SLACK
    fleet.assert_no_overlaps()
    assert control_log(fleet.database_url)[:2] == [
        ("resume", "probe", "migrated"), ("pause", "probe", "schema migration")]
    history = json.loads(ok(config, "history", "--json"))
    actions = [row for row in history if row.get("kind") == "control"]
    assert [(r["action"], r["reason"]) for r in actions[:2]] == [
        ("resume", "migrated"), ("pause", "schema migration")]
    assert all("@" in r["by"] for r in actions)


def test_a_pause_survives_a_restart_of_the_whole_fleet(fleet: Fleet) -> None:
    probe = fleet.probe()
    fleet.start_nodes("a", "b")
    first = probe.wait_for("acquired", timeout=20)
    config = fleet.nodes["a"].config
    ok(config, "pause", "probe")
    fleet.wait_ended(probe, first.pid, timeout=REACH + FAST.stop_grace + SLACK)
    for node in fleet.nodes.values():
        assert node.terminate() == 0
    mark = probe.mark()
    for node in fleet.nodes.values():
        node.start()
    for node in fleet.nodes.values():
        node.wait_started()
    probe.quiet(QUIET, since=mark)
    ok(config, "resume", "probe")
    probe.wait_for("acquired", since=mark, timeout=REACH + SLACK)
    fleet.assert_no_overlaps()


def test_status_shows_the_pause(fleet: Fleet) -> None:
    fleet.start_nodes("a")
    fleet.probe().wait_for("acquired", timeout=20)  # the schema is there
    config = fleet.nodes["a"].config
    ok(config, "pause", "probe", "--reason", "why not")
    data = json.loads(ok(config, "status", "--json"))
    (paused,) = data["paused"]
    assert (paused["worker"], paused["group"], paused["reason"]) == ("probe", "", "why not")
    assert "@" in paused["by"]
    assert "why not" in ok(config, "status")

    def role() -> str:  # as this node's supervisor shows it, through its control socket
        rows = json.loads(ok(config, "ps", "--json"))
        return str(next(r["role"] for r in rows["workers"] if r["worker"] == "probe"))

    wait_until(lambda: role() == "paused", REACH + SLACK, "ps showing the probe paused")
    ok(config, "resume", "probe")
    wait_until(lambda: role() == "leader", REACH + SLACK, "ps showing the probe leading")


# --- handover --------------------------------------------------------------------------------


def test_a_handover_moves_the_leader_and_a_lone_node_takes_it_back(fleet: Fleet) -> None:
    probe = fleet.probe()
    fleet.start_nodes("a", "b")
    first = probe.wait_for("acquired", timeout=20)
    config = fleet.nodes["a"].config
    asked = time.time()
    out = ok(config, "handover", "probe", "--reason", "kernel update")
    assert f"node {first.node}" in out
    second = probe.wait_for("acquired", since=first, timeout=2 * REACH + FAST.stop_grace + SLACK)
    assert second.node != first.node
    assert second.at - asked < 2 * REACH + FAST.stop_grace + SLACK
    fleet.assert_no_overlaps()
    # alone now: handed over again, it takes it back once the hold-out ends
    assert fleet.nodes[first.node].terminate() == 0
    ok(config, "handover", "probe")
    third = probe.wait_for("acquired", since=second,
                           timeout=2 * FAST.lease_ttl + 2 * REACH + FAST.stop_grace + SLACK)
    assert third.node == second.node and third.pid != second.pid
    fleet.assert_no_overlaps()


def test_handing_over_what_nobody_leads_or_an_unknown_worker_says_so(fleet: Fleet) -> None:
    fleet.node("a", start=False)
    config = fleet.nodes["a"].config
    ok(config, "db", "upgrade")
    nobody = cli(config, "handover", "probe")
    assert nobody.returncode == 1 and "nobody leads probe" in nobody.stderr, nobody
    unknown = cli(config, "handover", "nope")
    assert unknown.returncode == 2 and "unknown worker 'nope'" in unknown.stderr, unknown
    assert "Traceback" not in unknown.stderr + nobody.stderr


# --- drain -----------------------------------------------------------------------------------


def test_drain_wait_returns_once_the_node_holds_nothing_and_another_takes_over(
        fleet: Fleet) -> None:
    probe = fleet.probe()
    fleet.start_nodes("a", "b")
    first = probe.wait_for("acquired", timeout=20)
    config = fleet.nodes["a"].config
    asked = time.monotonic()
    out = ok(config, "drain", first.node, "--wait", "--timeout", "30", "--reason", "reboot")
    took = time.monotonic() - asked
    assert f"{first.node} holds nothing" in out
    assert took < REACH + FAST.stop_grace + 2 * REACH + SLACK
    term = fleet.wait_ended(probe, first.pid, timeout=1)
    assert term.how == "released"
    second = probe.wait_for("acquired", since=first, timeout=REACH + SLACK)
    assert second.node != first.node
    data = json.loads(ok(config, "status", "--json"))
    (draining,) = data["draining"]
    assert (draining["node"], draining["state"]) == (first.node, "drained")
    ok(config, "undrain", first.node)
    data = json.loads(ok(config, "status", "--json"))
    assert data["draining"] == []
    fleet.assert_no_overlaps()


def test_drain_wait_times_out_with_exit_1(fleet: Fleet) -> None:
    # a probe that ignores SIGTERM for longer than the timeout keeps its lease held
    probe = fleet.probe()
    fleet.start_nodes("a")
    first = probe.wait_for("acquired", timeout=20)
    config = fleet.nodes["a"].config
    done = cli(config, "drain", "a", "--wait", "--timeout", "0")
    assert done.returncode == 1 and "still holds" in done.stderr, done
    fleet.wait_ended(probe, first.pid, timeout=REACH + FAST.stop_grace + SLACK)


# --- cron ------------------------------------------------------------------------------------


def test_a_paused_cron_worker_runs_nothing_records_skipped_and_resumes(
        make_cron: Callable[..., CronFleet]) -> None:
    fleet = make_cron(cron="@every 1s", max_run=1, misfire_grace="900ms", overlap="allow",
                      run_seconds=0.2, catch_up="latest")
    fleet.start_nodes("a", "b")
    wait_until(lambda: len(fleet.runs()) >= 2, 30.0, "cron runs")
    config = fleet.nodes["a"].config
    ok(config, "pause", "job", "--reason", "backup window")
    paused = time.time()
    wait_until(lambda: sum(r.state == "skipped" for r in fleet.history()) >= 3, 20.0,
               "three ticks recorded skipped")
    # none started after the pause reached the nodes (a run already going finishes)
    late = [e for e in fleet.runs() if e.kind == "start" and e.at > paused + REACH + 0.1]
    assert not late, fleet.report()
    skipped = [r for r in fleet.history() if r.state == "skipped"]
    assert all(r.reason == skipped[0].reason for r in skipped)
    assert "paused by" in (skipped[0].reason or "") and "backup window" in (
        skipped[0].reason or "")
    ok(config, "resume", "job")
    resumed = time.time()
    wait_until(lambda: any(e.kind == "start" and e.at > resumed for e in fleet.runs()),
               REACH + 1.0 + SLACK, "a run after resume")
    # no skipped tick was replayed, and nothing ran for them in their stead
    ran = {e.tick for e in fleet.runs() if e.kind == "start"}
    assert not ran & {r.tick for r in skipped}
    assert not [r for r in fleet.history() if r.trigger is not None]


def test_resume_catch_up_runs_a_skipped_cron_worker_once_now(
        make_cron: Callable[..., CronFleet]) -> None:
    fleet = make_cron(cron="@every 2s", max_run=1, misfire_grace="1s", overlap="forbid",
                      run_seconds=0.2, lock=True)
    fleet.start_nodes("a", "b")
    wait_until(lambda: len(fleet.runs()) >= 1, 30.0, "cron runs")
    config = fleet.nodes["a"].config
    ok(config, "pause", "job")
    wait_until(lambda: any(r.state == "skipped" for r in fleet.history()), 20.0,
               "a tick recorded skipped")
    out = ok(config, "resume", "job", "--catch-up", "--reason", "after the backup")
    assert "catching up: job runs once now" in out, out

    def caught_up() -> list[Any]:
        return [r for r in fleet.history() if r.trigger is not None]

    wait_until(lambda: any(r.state == "succeeded" for r in caught_up()), REACH + SLACK + 2,
               "the catch-up run")
    (run,) = caught_up()  # max_run 1: one node ran it
    assert run.trigger.reason == "catch up after the pause: after the backup"
    assert not [e for e in fleet.runs() if e.kind == "OVERLAP"], fleet.report()
    # a resume with nothing skipped catches nothing up (no node runs to skip a tick)
    for node in fleet.nodes.values():
        assert node.terminate() == 0
    ok(config, "pause", "job")
    out = ok(config, "resume", "job", "--catch-up")
    assert "nothing to catch up" in out, out
    assert len(caught_up()) == 1


def test_pause_stop_running_stops_the_run_in_progress(
        make_cron: Callable[..., CronFleet]) -> None:
    fleet = make_cron(cron="@every 2s", max_run=1, misfire_grace="1500ms", overlap="allow",
                      run_seconds=30)
    fleet.start_nodes("a")
    wait_until(lambda: any(e.kind == "start" for e in fleet.runs()), 30.0, "a run")
    ok(fleet.nodes["a"].config, "pause", "job", "--stop-running")

    def runs() -> list[CronRunRecord]:  # a 30 s run ends only if it is stopped
        return [r for r in fleet.history() if r.slot >= 0]

    # Every run going when the pause arrived is stopped (on a loaded machine the next
    # tick's run may start before the command's row is written: overlap = allow).
    wait_until(lambda: bool(runs()) and all(r.state != "running" for r in runs()),
               REACH + FAST.stop_grace + 5 + SLACK, "the runs stopped")
    assert all(r.state == "stopped" and "paused by" in (r.reason or "") for r in runs()), \
        runs()


# --- coordinated -----------------------------------------------------------------------------


def test_a_paused_coordinated_worker_stops_everywhere_and_resumes(
        make_coord: Callable[..., CoordFleet]) -> None:
    fleet = make_coord()
    fleet.start_nodes("a", "b")
    fleet.settled({"a", "b"})
    config = fleet.nodes["a"].config
    ok(config, "pause", "shard")
    wait_until(lambda: not fleet.running(), REACH + 5 + SLACK, "every instance stopped")
    count = len(fleet.instances())
    deadline = time.monotonic() + QUIET
    while time.monotonic() < deadline:
        assert len(fleet.instances()) == count, fleet.report()
        time.sleep(0.05)
    ok(config, "resume", "shard")
    fleet.settled({"a", "b"})
    fleet.assert_no_overlaps()


def test_draining_a_node_rebalances_coordinated_work_to_the_others(
        make_coord: Callable[..., CoordFleet]) -> None:
    fleet = make_coord()
    fleet.start_nodes("a", "b", "c")
    fleet.settled({"a", "b", "c"})
    config = fleet.nodes["a"].config
    ok(config, "drain", "c", "--wait", "--timeout", "30")
    fleet.settled({"a", "b"})
    ok(config, "undrain", "c")
    fleet.settled({"a", "b", "c"})
    fleet.assert_no_overlaps()


# --- bad input -------------------------------------------------------------------------------


def test_bad_input_exits_2_with_a_message(fleet: Fleet) -> None:
    fleet.node("a", start=False)
    config = fleet.nodes["a"].config
    unknown = cli(config, "pause", "nope")
    assert unknown.returncode == 2 and "unknown worker 'nope'" in unknown.stderr
    option = cli(config, "pause", "probe", "--stop-running")
    assert option.returncode == 2 and "--stop-running applies to cron" in option.stderr
    timeout = cli(config, "drain", "a", "--timeout", "3")
    assert timeout.returncode == 2 and "--timeout applies with --wait" in timeout.stderr
    catch_up = cli(config, "resume", "probe", "--catch-up")
    assert catch_up.returncode == 2 and "--catch-up is for cron workers" in catch_up.stderr


# --- every worker on every node --------------------------------------------------------------


class TwoWorkers(Fleet):
    """Each node: the leader probe, and an every-node worker."""

    def worker_table(self, *, group: str, mode: str, probe: ProbeLog,
                     worker_env: Mapping[str, str]) -> str:
        return (super().worker_table(group=group, mode=mode, probe=probe,
                                     worker_env=worker_env) + "\n"
                + worker_toml("local", "stubborn.py", "every-node", {}, {"stop_timeout": "1s"}))


def test_status_shows_every_worker_on_every_node(tmp_path: Path, database_url: str) -> None:
    with made_fleets(functools.partial(TwoWorkers, tmp_path, database_url)) as make:
        fleet = make()
        fleet.start_nodes("a", "b")
        fleet.probe().wait_for("acquired", timeout=20)
        config = fleet.nodes["a"].config

        def workers() -> dict[str, dict[str, str] | None]:
            data = json.loads(ok(config, "status", "--json"))
            return {n["node_id"]: n["workers"] for n in data["nodes"]}

        wait_until(lambda: sorted(
            (w or {}).get("probe", "") for w in workers().values()) == ["follower", "leader"]
            and all((w or {}).get("local") == "running" for w in workers().values()),
            20, "both nodes' workers in status")
        ok(config, "pause", "probe")
        wait_until(lambda: all((w or {}).get("probe") == "paused" for w in workers().values()),
                   20, "the probe shown paused on both nodes")
        assert "local running" in ok(config, "status")


def test_draining_a_node_during_a_cron_schedule_leaves_the_ticks_to_the_others(
        make_cron: Callable[..., CronFleet]) -> None:
    fleet = make_cron(cron="@every 1s", max_run=1, misfire_grace="900ms", overlap="forbid",
                      run_seconds=0.3, lock=True)
    fleet.start_nodes("a", "b")
    wait_until(lambda: {e.node for e in fleet.runs() if e.kind == "start"} == {"a", "b"},
               40.0, "both nodes running ticks")
    config = fleet.nodes["b"].config
    ok(config, "drain", "a", "--wait", "--timeout", "30")
    drained = time.time()
    wait_until(lambda: len([e for e in fleet.runs() if e.kind == "start"
                            and e.at > drained]) >= 4, 20.0, "four runs after the drain")
    late = [e for e in fleet.runs() if e.kind == "start" and e.at > drained]
    assert {e.node for e in late} == {"b"}, fleet.report()
    assert not [e for e in fleet.runs() if e.kind == "OVERLAP"], fleet.report()
    # nothing recorded skipped or missed for the drain: b ran each tick
    ticks = {e.tick for e in late}
    assert not [r for r in fleet.history() if r.tick in ticks and r.slot < 0]
    ok(config, "undrain", "a")
    undrained = time.time()
    wait_until(lambda: any(e.kind == "start" and e.node == "a" and e.at > undrained
                           for e in fleet.runs()), 30.0, "a running ticks again")


def test_a_drained_node_keeps_its_every_node_workers(tmp_path: Path, database_url: str) -> None:
    with made_fleets(functools.partial(TwoWorkers, tmp_path, database_url)) as make:
        fleet = make()
        fleet.start_nodes("a")
        node = fleet.nodes["a"]
        local = int(node.running.expect(r"local \| ready pid=(\d+)", after_start=True)
                    .group(1))
        first = fleet.probe().wait_for("acquired", timeout=20)
        ok(node.config, "drain", "a", "--wait", "--timeout", "30")
        fleet.wait_ended(fleet.probe(), first.pid, timeout=1)
        assert pid_alive(local)
        data = json.loads(ok(node.config, "status", "--json"))
        (row,) = data["nodes"]
        wait_until(lambda: json.loads(ok(node.config, "status", "--json"))["nodes"][0][
            "workers"] == {"local": "running", "probe": "follower"}, 10, "status")
        assert row["drain"] == "drained"
        assert node.running.text().count("local | ready") == 1  # never restarted


def test_on_a_schema_before_fleet_control_the_commands_say_to_upgrade(fleet: Fleet) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    cfg = Config()
    cfg.set_main_option("script_location", "supervisor.store:migrations")
    engine = create_engine(fleet.database_url)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0008")
    finally:
        engine.dispose()
    fleet.node("a", start=False)
    config = fleet.nodes["a"].config
    for args in (("pause", "probe"), ("drain", "a"), ("status",)):
        done = cli(config, *args)
        assert done.returncode == 1, (args, done)
        assert "predates fleet control: run `supervisor db upgrade`" in done.stderr, done
    assert cli(config, "history").returncode == 0
    ok(config, "db", "upgrade")
    ok(config, "pause", "probe")
