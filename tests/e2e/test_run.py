"""`supervisor run` end to end: the installed command, real children, real signals."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import BASE_CONFIG, PYTHON, WORKERS, pid_alive, wait_until, worker_command


def stubborn_workers(count: int, stop_timeout: str, *extra: str) -> str:
    return "".join(
        f"""
[workers.stubborn-{i}]
command = {worker_command("stubborn.py", *extra)}
stop_timeout = "{stop_timeout}"
"""
        for i in range(count)
    )


def ready_pids(run, count: int) -> dict[str, int]:  # type: ignore[no-untyped-def]
    pids = {}
    for _ in range(count):
        match = run.expect(r"^(\S+) \| ready pid=(\d+)")
        pids[match.group(1)] = int(match.group(2))
    return pids


def test_sigterm_stops_stuck_children_in_parallel_and_exits_zero(supervisor_run):
    run = supervisor_run(BASE_CONFIG + stubborn_workers(10, "1s"))
    pids = ready_pids(run, 10)
    started = time.monotonic()
    run.signal(signal.SIGTERM)
    assert run.wait(timeout=30) == 0
    elapsed = time.monotonic() - started
    assert not [pid for pid in pids.values() if pid_alive(pid)]
    # Ten 1 s timeouts one after another would take 10 s; in parallel they take about 1 s.
    assert elapsed < 5, f"stopping took {elapsed:.1f}s: children were not stopped in parallel"
    assert len(re.findall(r"stopped \(killed by SIGKILL\)", run.text())) == 10


def test_second_sigterm_escalates_to_sigkill_at_once(supervisor_run):
    run = supervisor_run(BASE_CONFIG + stubborn_workers(2, "120s"))
    pids = ready_pids(run, 2)
    run.signal(signal.SIGTERM)
    run.expect(r"received SIGTERM: stopping")
    run.signal(signal.SIGTERM)
    assert run.wait(timeout=20) == 0
    assert not [pid for pid in pids.values() if pid_alive(pid)]
    assert "killing every child now" in run.text()


def test_stop_kills_the_whole_process_group(supervisor_run):
    run = supervisor_run(BASE_CONFIG + stubborn_workers(1, "500ms", "--fork"))
    grandchild = int(run.expect(r"grandchild pid=(\d+)", after_start=True).group(1))
    child = int(run.expect(r"ready pid=(\d+)", after_start=True).group(1))
    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    wait_until(lambda: not pid_alive(grandchild), 5, "the grandchild to die")
    assert not pid_alive(child)


def test_sigkill_of_the_supervisor_leaves_no_child_or_grandchild(supervisor_run):
    run = supervisor_run(BASE_CONFIG + stubborn_workers(3, "10s", "--fork"))
    pids = [int(run.expect(r"(?:ready|grandchild) pid=(\d+)").group(1)) for _ in range(6)]
    run.proc.send_signal(signal.SIGKILL)  # only the supervisor itself, not its group
    run.proc.wait(timeout=10)
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), 10,
               "every child and grandchild to die with the supervisor")


def test_crashing_child_restarts_at_once_then_with_growing_gaps(supervisor_run):
    config = BASE_CONFIG + f"""
[workers.crash]
command = {worker_command("crasher.py", "3")}
restart = "on-failure"
backoff = {{ initial = "200ms", max = "800ms", factor = 2.0, jitter = 0.0 }}
"""
    run = supervisor_run(config)
    starts = [float(run.expect(r"crash \| start ([\d.]+)").group(1)) for _ in range(5)]
    delays = [float(d) / (1000 if unit == "ms" else 1)
              for d, unit in re.findall(r"crash: restart \d+ in ([\d.]+)(ms|s)", run.text())]
    assert delays[:4] == [0.0, 0.2, 0.4, 0.8]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Each restart waited at least its scheduled delay, so the gaps grow with them.
    for gap, delay in zip(gaps[1:], delays[1:4], strict=False):
        assert gap >= delay
    assert gaps[3] > gaps[1]


def test_restart_never_and_on_failure_with_success(supervisor_run):
    config = BASE_CONFIG + f"""
[workers.once]
command = {worker_command("crasher.py", "0")}
restart = "on-failure"

[workers.never]
command = {worker_command("crasher.py", "4")}
restart = "never"
"""
    run = supervisor_run(config)
    run.expect(r"once: exited \(exit status 0\)", after_start=True)
    run.expect(r"never: failed \(exit status 4\)", after_start=True)
    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    assert "restart" not in run.text()


def test_critical_worker_that_gives_up_makes_the_supervisor_exit_non_zero(supervisor_run):
    config = BASE_CONFIG + f"""
[workers.doomed]
command = {worker_command("crasher.py", "2")}
max_restarts = 2
restart_window = "1m"
critical = true
backoff = {{ initial = "10ms", max = "20ms" }}

[workers.bystander]
command = {worker_command("stubborn.py")}
stop_timeout = "1s"
"""
    run = supervisor_run(config)
    bystander = int(run.expect(r"bystander \| ready pid=(\d+)", after_start=True).group(1))
    assert run.wait(timeout=30) == 1
    assert "doomed: gave up after 2 restarts" in run.text()
    assert not pid_alive(bystander)


def test_output_is_prefixed_and_the_environment_is_as_promised(supervisor_run):
    config = 'node_id = "node-a"\ngroup = "blue"\n' + BASE_CONFIG + f"""
[workers.dump]
command = {worker_command("envdump.py")}
env = {{ EXTRA = "yes", SUPERVISOR_WORKER = "masked-attempt" }}
"""
    run = supervisor_run(
        config,
        env={"SUPERVISOR_DATABASE_URL": "postgresql+psycopg://u:hunter2@db/x",
             "SUPERVISOR_OTHER": "1"},
    )
    env = json.loads(run.expect(r"^dump \| ENV (.*)$", stream="stdout").group(1))
    assert env["SUPERVISOR_WORKER"] == "dump"
    assert env["SUPERVISOR_NODE_ID"] == "node-a"
    assert env["SUPERVISOR_GROUP"] == "blue"
    assert env["SUPERVISOR_MODE"] == "every-node"
    assert env["EXTRA"] == "yes"
    assert "SUPERVISOR_DATABASE_URL" not in env
    assert "SUPERVISOR_OTHER" not in env
    run.expect(r"^dump \| to stderr$", stream="stderr", after_start=True)
    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    assert "hunter2" not in run.text()


def test_database_url_is_passed_only_when_asked(supervisor_run):
    config = 'database_url = "sqlite:///fleet.db"\n' + BASE_CONFIG + f"""
[workers.dump]
command = {worker_command("envdump.py")}
pass_database_url = true
"""
    run = supervisor_run(config)
    env = json.loads(run.expect(r"^dump \| ENV (.*)$").group(1))
    assert env["SUPERVISOR_DATABASE_URL"] == "sqlite:///fleet.db"


def test_cwd_is_relative_to_the_config_file(supervisor_run, tmp_path):
    (tmp_path / "work").mkdir()
    config = BASE_CONFIG + f"""
[workers.dump]
command = {worker_command("envdump.py")}
cwd = "work"
"""
    run = supervisor_run(config)
    assert run.expect(r"^dump \| cwd (.*)$").group(1) == str(tmp_path / "work")


def test_json_log_format_gives_json_lines(supervisor_run):
    config = BASE_CONFIG.replace("[metrics]", 'log_format = "json"\n[metrics]') + f"""
[workers.dump]
command = {worker_command("envdump.py")}
"""
    run = supervisor_run(config)
    line = run.expect(r'^\{.*"to stderr"', stream="stderr").string
    entry = json.loads(line)
    assert entry["worker"] == "dump" and entry["stream"] == "stderr"
    started = json.loads(run.expect(r'"message": "dump: started', after_start=True).string)
    assert started["level"] == "info"


def test_json_records_carry_the_events_fields_and_log_level_leaves_info_out(supervisor_run):
    config = BASE_CONFIG.replace("[metrics]", 'log_format = "json"\n[metrics]') + """
[workers.failing]
command = ["sh", "-c", "exit 3"]
restart = "never"
"""
    run = supervisor_run(config, env={"SUPERVISOR_NODE_ID": "json-node"})
    exited = json.loads(run.expect(r'"event": "WorkerExited"', stream="stderr").string)
    assert {key: exited[key] for key in ("event", "worker", "reason", "exit_code", "node_id")} \
        == {"event": "WorkerExited", "worker": "failing", "reason": "failed", "exit_code": 3,
            "node_id": "json-node"}
    assert isinstance(exited["pid"], int) and exited["level"] == "warning"
    started = json.loads(run.expect(r'"event": "WorkerStarted"', after_start=True).string)
    assert started["pid"] == exited["pid"] and "argv" not in started
    run.signal(signal.SIGTERM)
    assert run.wait() == 0

    quiet = supervisor_run(config, env={"SUPERVISOR_LOG_LEVEL": "warning"})
    quiet.expect(r'"event": "WorkerExited"', stream="stderr")
    quiet.signal(signal.SIGTERM)
    assert quiet.wait() == 0
    assert '"event": "WorkerStarted"' not in quiet.text()


def test_module_and_module_function_forms(supervisor_run):
    config = BASE_CONFIG + """
[workers.script]
module = "tests.workers.pymain"
restart = "never"

[workers.func]
module = "tests.workers.pymain:main"
restart = "never"
"""
    repo = Path(__file__).resolve().parents[2]
    run = supervisor_run(config.replace("[workers.script]", f'[workers.script]\ncwd = "{repo}"')
                         .replace("[workers.func]", f'[workers.func]\ncwd = "{repo}"'))
    run.expect(r"^script \| run as a script$", after_start=True)
    run.expect(r"^func \| main called in func$", after_start=True)
    run.expect(r"func: failed \(exit status 5\)", after_start=True)


def test_spawn_failure_is_retried_and_reported(supervisor_run):
    config = BASE_CONFIG + """
[workers.ghost]
command = ["/nonexistent/program"]
backoff = { initial = "50ms", max = "100ms" }
"""
    run = supervisor_run(config)
    run.expect(r"ghost: cannot start '/nonexistent/program'")
    run.expect(r"ghost: restart 2 in")
    run.signal(signal.SIGTERM)
    assert run.wait() == 0


def test_sighup_with_a_broken_file_keeps_the_running_set(supervisor_run, tmp_path):
    run = supervisor_run(BASE_CONFIG + stubborn_workers(2, "1s"))
    pids = ready_pids(run, 2)
    (tmp_path / "supervisor.toml").write_text("[workers.x]\nmax_runn = 3\n")
    run.signal(signal.SIGHUP)
    run.expect(r"reload rejected, keeping the running set: .*workers\.x\.max_runn")
    assert all(pid_alive(pid) for pid in pids.values())
    run.signal(signal.SIGTERM)
    assert run.wait() == 0


def test_sighup_applies_changes_and_leaves_unchanged_workers_alone(supervisor_run, tmp_path):
    keep = f"\n[workers.keep]\ncommand = {worker_command('stubborn.py')}\nstop_timeout = '1s'\n"
    change = f"\n[workers.change]\ncommand = {worker_command('stubborn.py')}\nstop_timeout = '1s'\n"
    remove = f"\n[workers.remove]\ncommand = {worker_command('stubborn.py')}\nstop_timeout = '1s'\n"
    add = f"\n[workers.add]\ncommand = {worker_command('stubborn.py')}\nstop_timeout = '1s'\n"
    run = supervisor_run(BASE_CONFIG + keep + change + remove)
    before = ready_pids(run, 3)
    changed = change.replace("'1s'", "'2s'")
    (tmp_path / "supervisor.toml").write_text(BASE_CONFIG + keep + changed + add)
    run.signal(signal.SIGHUP)
    run.expect(r"reloaded: started \['add'\], stopped \['remove'\], restarted \['change'\]")
    after = dict(before)
    after.update(ready_pids(run, 2))  # the restarted one and the new one
    assert pid_alive(before["keep"]) and after["keep"] == before["keep"]
    assert not pid_alive(before["remove"])
    assert not pid_alive(before["change"])
    assert after["change"] != before["change"] and pid_alive(after["change"])
    assert pid_alive(after["add"])


def test_metrics_and_health_endpoints(supervisor_run):
    config = f"""
[metrics]
host = "127.0.0.1"
port = 0

[workers.crash]
command = {worker_command("crasher.py", "3")}
backoff = {{ initial = "10s", max = "10s" }}

[workers.up]
command = {worker_command("stubborn.py")}
stop_timeout = "1s"
"""
    run = supervisor_run(config)
    port = int(run.expect(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", after_start=True)
               .group(1))
    run.expect(r"crash: restart 2 in", after_start=True)
    run.expect(r"up \| ready pid=", after_start=True)
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    assert 'supervisor_worker_up{worker="up"} 1.0' in body
    assert 'supervisor_worker_up{worker="crash"} 0.0' in body
    assert 'supervisor_worker_restarts_total{worker="crash"} 2.0' in body
    assert 'supervisor_worker_exits_total{reason="failed",worker="crash"} 2.0' in body
    assert re.search(r'supervisor_worker_backoff_seconds\{worker="crash"\} [1-9]', body)
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{base}/nope", timeout=5)
    assert missing.value.code == 404
    missing.value.close()


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="needs root and unshare to run the supervisor as PID 1")
def test_as_pid_1_it_reaps_orphans_and_keeps_exit_codes(supervisor_run):
    config = BASE_CONFIG + f"""
[workers.orphaner]
command = {worker_command("orphaner.py")}
restart = "never"

[workers.up]
command = {worker_command("stubborn.py")}
stop_timeout = "1s"
"""
    run = supervisor_run(config, prefix=["unshare", "--pid", "--fork", "--mount-proc"])
    run.expect(r"orphaner: failed \(exit status 7\)", after_start=True)
    up = int(run.expect(r"up \| ready pid=(\d+)", after_start=True).group(1))
    orphan = int(run.expect(r"orphan pid=(\d+)", after_start=True).group(1))
    assert up > 1 and orphan > 1
    # The orphan exits after 0.5 s; PID 1 (the supervisor) must reap it: look inside the
    # namespace through the supervisor's own /proc view.
    ns_proc = f"/proc/{_namespace_init(run.proc.pid)}/root/proc"

    def orphan_gone() -> bool:
        return not Path(f"{ns_proc}/{orphan}").exists()

    wait_until(orphan_gone, 10, "the orphan to be reaped by PID 1")
    os.kill(_namespace_init(run.proc.pid), signal.SIGTERM)  # unshare forwards nothing
    assert run.wait() == 0
    assert re.search(r"up: stopped \(killed by SIGKILL\)", run.text())


def _namespace_init(unshare_pid: int) -> int:
    """The pid (outside) of the supervisor running as PID 1 under `unshare --fork`."""
    children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    return int(children[0])


def test_children_die_with_a_supervisor_killed_during_startup(tmp_path):
    # PDEATHSIG alone (no watchdog): a direct child dies with the process that forked it.
    script = tmp_path / "spawner.py"
    script.write_text(
        "import asyncio, sys\n"
        "from supervisor.runner import ProcessSpec, spawn\n"
        "async def main():\n"
        f"    proc = await spawn(ProcessSpec(({PYTHON!r}, {str(WORKERS / 'stubborn.py')!r}),"
        " {}, '.'), lambda s, l: print(l, flush=True))\n"
        "    await proc.wait()\n"
        "asyncio.run(main())\n"
    )
    with subprocess.Popen([PYTHON, str(script)], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        child = int(re.search(r"ready pid=(\d+)", line).group(1))  # type: ignore[union-attr]
        proc.kill()
        proc.wait(timeout=10)
    wait_until(lambda: not pid_alive(child), 5, "the child to die by PDEATHSIG")


def test_the_running_supervisor_does_not_carry_the_validation_stack(supervisor_run):
    # Memory: pydantic is used by the short-lived validator child only.
    run = supervisor_run(BASE_CONFIG + stubborn_workers(1, "1s"))
    ready_pids(run, 1)
    maps = Path(f"/proc/{run.proc.pid}/maps").read_text()
    assert "_pydantic_core" not in maps
    assert "/croniter/" not in maps and "sqlalchemy" not in maps.lower()


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15])
def test_a_stop_right_after_a_reload_wins_and_the_supervisor_exits(supervisor_run, tmp_path,
                                                                   delay):
    # SIGTERM lands while the reload validates the file, or while it stops the worker
    # it changed: nothing is started after the stop, and the process exits.
    run = supervisor_run(BASE_CONFIG + stubborn_workers(1, "1s"))
    (before,) = ready_pids(run, 1).values()
    (tmp_path / "supervisor.toml").write_text(BASE_CONFIG + stubborn_workers(1, "2s"))
    run.signal(signal.SIGHUP)
    time.sleep(delay)  # where in the reload the stop lands: the scenario, not a wait
    run.signal(signal.SIGTERM)
    assert run.wait(timeout=20) == 0
    assert not pid_alive(before)
    assert "ready pid" not in run.text().split("received SIGTERM")[-1]


def test_a_burst_of_sighups_makes_one_reload_more_not_one_each(supervisor_run):
    run = supervisor_run(BASE_CONFIG + stubborn_workers(1, "1s"))
    ready_pids(run, 1)
    for _ in range(100):
        run.signal(signal.SIGHUP)
    run.expect(r"reloaded: ", timeout=30)
    run.signal(signal.SIGTERM)
    assert run.wait(timeout=30) == 0
    reloads = run.text().count("reloaded: ")
    assert 1 <= reloads <= 2, f"{reloads} reloads for one burst of 100 SIGHUPs"


def test_sigusr1_goes_only_to_the_workers_that_ask_for_it(supervisor_run):
    config = BASE_CONFIG + f"""
[workers.asks]
command = {worker_command("signalled.py")}
forward_signals = ["SIGUSR1"]

[workers.other]
command = {worker_command("signalled.py")}

[workers.plain]
command = {worker_command("stubborn.py")}
stop_timeout = "1s"
"""
    run = supervisor_run(config)
    pids = ready_pids(run, 3)
    run.signal(signal.SIGUSR1)
    run.expect(r"^asks \| got SIGUSR1$", after_start=True)
    run.signal(signal.SIGUSR2)  # nobody asked for it
    assert pid_alive(pids["plain"])  # SIGUSR1 would have killed it: it has no handler
    run.signal(signal.SIGTERM)
    assert run.wait(timeout=20) == 0
    got = re.findall(r"(\S+) \| got (SIGUSR\d)$", run.text(), re.MULTILINE)
    assert got == [("asks", "SIGUSR1")], got
