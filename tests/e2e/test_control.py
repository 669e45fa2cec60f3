"""The local control socket with real supervisors (issue 15): `supervisor ps`, `stop`,
`start`, `restart`, `signal` and `logs` against `supervisor run`, and the socket's rules
(its path, its modes, who may connect, a stale or a foreign socket).

Leader stop/restart are judged by the probe's flock (tests/workers/probe.py): zero
overlaps is the only pass; a restart keeps the lease (same SUPERVISOR_FENCING_TOKEN, new
pid); a stop hands the lease to the other node only once the child is dead.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SUPERVISOR_BIN, Running, pid_alive, wait_until
from tests.e2e.test_coordinated import CoordFleet
from tests.e2e.test_cron import CronFleet
from tests.support.fleet import FAST, HOLD, Fleet, made_fleets, worker_toml

pytestmark = pytest.mark.slow

SLACK = 4.0  # process start-up and a few syncs on a loaded 2-core machine
NOBODY = 65534


def ctl(config: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`supervisor <args> -c config`, in this test's environment (its XDG_RUNTIME_DIR)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
    return subprocess.run([str(SUPERVISOR_BIN), *args, "-c", str(config)], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def ok(config: Path, *args: str) -> str:
    done = ctl(config, *args)
    assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
    return done.stdout


def rows(config: Path) -> dict[str, dict[str, Any]]:
    return {row["worker"]: row for row in json.loads(ok(config, "ps", "--json"))["workers"]}


def wait_role(config: Path, worker: str, role: str, timeout: float = 15.0) -> dict[str, Any]:
    """Until `ps` shows `worker` in `role` (a command's answer is an event; its effect on
    a worker that waits for its mode is not)."""
    found: dict[str, Any] = {}

    def shown() -> bool:
        found.update(rows(config)[worker])
        return bool(found["role"] == role)

    wait_until(shown, timeout, f"{worker} to be {role} (last: {found})")
    return found


# -- one node, every mode ---------------------------------------------------------------------

WEB = "trap 'echo got HUP' HUP; i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done"
SHARD = "echo shard $SUPERVISOR_WORKER_INDEX of $SUPERVISOR_WORKER_COUNT; exec sleep 1000"

def every_mode(tmp_path: Path) -> str:
    return textwrap.dedent(f"""\
        node_id = "ctl-1"
        database_url = "sqlite:///{tmp_path}/fleet.db"
        {textwrap.indent(FAST.toml(), "        ").strip()}

        [metrics]
        enabled = false

        [workers.web]
        command = ["sh", "-c", {json.dumps(WEB)}]

        [workers.lead]
        command = ["sh", "-c", "echo lead up token=$SUPERVISOR_FENCING_TOKEN; exec sleep 1000"]
        mode = "global-leader"

        [workers.shard]
        command = ["sh", "-c", {json.dumps(SHARD)}]
        mode = "coordinated"
        stable_window = "300ms"

        [workers.job]
        command = ["sh", "-c", "echo tick $SUPERVISOR_CRON_TICK"]
        mode = "cron"
        cron = "@every 1s"
        """)


@pytest.fixture
def node(tmp_path: Path, supervisor_run: Callable[..., Running]) -> tuple[Running, Path]:
    run = supervisor_run(every_mode(tmp_path))
    run.expect(r"lead \| lead up token=\d+", timeout=20)
    run.expect(r"shard \| shard 0 of 1", timeout=20, after_start=True)
    run.expect(r"job \| tick ", timeout=20, after_start=True)
    return run, tmp_path / "supervisor.toml"


def test_ps_shows_every_mode_in_text_and_json_and_the_socket_is_the_users_alone(
        node: tuple[Running, Path], control_dir: Path) -> None:
    run, config = node
    found = rows(config)
    assert list(found) == ["web", "lead", "shard", "job"]
    assert found["web"]["role"] == "running" and len(found["web"]["pids"]) == 1
    assert found["lead"]["role"] == "leader" and found["lead"]["token"] == "1"
    assert found["shard"]["role"] == "index 0 of 1"
    assert found["job"]["role"] in ("waiting for tick", "running")
    assert found["job"]["next_tick"] is not None
    assert found["job"]["last_exit"]["status"] == "exit status 0"
    for row in found.values():
        assert row["restarts"] == 0 and row["stopped"] is False
    for name in ("web", "lead", "shard"):
        assert pid_alive(found[name]["pids"][0])
        assert found[name]["uptime"] >= 0
    text = ok(config, "ps").splitlines()
    assert text[0].split()[:4] == ["WORKER", "MODE", "ROLE", "PID"]
    assert [line.split()[0] for line in text[1:]] == ["web", "lead", "shard", "job"]
    assert "index 0 of 1" in text[3]
    sock = control_dir / "fleet-supervisor" / "ctl-1.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    assert not sock.exists()  # removed on a clean exit
    gone = ctl(config, "ps")
    assert gone.returncode == 1
    assert f"no supervisor is running for node ctl-1 (socket {sock})" in gone.stderr


def test_unknown_workers_and_signals_are_refused_with_exit_2(node: tuple[Running, Path]) -> None:
    _, config = node
    for args in (("stop", "nope"), ("logs", "nope"), ("signal", "nope", "HUP"),
                 ("restart", "nope")):
        done = ctl(config, *args)
        assert done.returncode == 2, (args, done)
        assert "no worker 'nope' on this node; known: web, lead, shard, job" in done.stderr
    bad = ctl(config, "signal", "web", "SIGBOGUS")
    assert bad.returncode == 2 and 'unknown signal name "SIGBOGUS"' in bad.stderr
    assert "Traceback" not in bad.stderr


def test_signal_reaches_the_childs_group_and_logs_shows_its_last_lines(
        node: tuple[Running, Path]) -> None:
    run, config = node
    assert "sent SIGHUP to the process group of" in ok(config, "signal", "web", "HUP")
    run.expect(r"web \| got HUP", timeout=10)
    last = ok(config, "logs", "web", "-n", "3").splitlines()
    assert len(last) == 3
    numbers = [int(line.rsplit(" ", 1)[1]) for line in last if " line " in line]
    assert len(numbers) >= 2 and numbers == sorted(numbers)
    assert all(" stdout " in line for line in last)
    assert ok(config, "logs", "web", "-n", "0") == ""
    ok(config, "stop", "job")
    idle = ctl(config, "signal", "job", "TERM")
    assert idle.returncode == 1 and "job runs no child on this node" in idle.stderr


def test_logs_follow_prints_new_lines_until_interrupted(node: tuple[Running, Path]) -> None:
    _, config = node
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
    follower = subprocess.Popen([str(SUPERVISOR_BIN), "logs", "web", "-f", "-n", "0", "-c",
                                 str(config)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        seen = [follower.stdout.readline() for _ in range(3)]
        numbers = [int(line.split()[-1]) for line in seen]
        assert numbers == list(range(numbers[0], numbers[0] + 3)), seen
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=10) == 0
    finally:
        follower.kill()
        follower.wait()
        if follower.stdout is not None:
            follower.stdout.close()


def test_a_stopped_worker_stays_stopped_across_a_reload_until_started(
        node: tuple[Running, Path]) -> None:
    run, config = node
    pid = rows(config)["web"]["pids"][0]
    assert ok(config, "stop", "web") == "web: stopped\n"
    assert not pid_alive(pid)  # the answer comes once the child is dead
    stopped = rows(config)["web"]
    assert (stopped["role"], stopped["pids"], stopped["state"]) == ("stopped", [], "stopped")
    assert ok(config, "stop", "web") == "web: already stopped\n"
    run.signal(signal.SIGHUP)
    run.expect(r"reloaded: started \[\], stopped \[\], restarted \[\]", timeout=15)
    assert rows(config)["web"]["role"] == "stopped"
    assert ok(config, "start", "web") == "web: started\n"
    assert ok(config, "start", "web") == "web: already running\n"
    wait_role(config, "web", "running")
    # restart all: each long-running child anew under the grant it holds; cron anew
    before = rows(config)
    answer = ok(config, "restart", "all")
    for name in ("web", "lead", "shard"):
        assert f"{name}: restarted (pid " in answer
    after = rows(config)
    assert after["lead"]["token"] == before["lead"]["token"]  # the lease was kept
    for name in ("web", "lead", "shard"):
        assert set(after[name]["pids"]).isdisjoint(before[name]["pids"])
        assert after[name]["restarts"] == 0  # asked for: not counted as a failure
    assert "job: started again" in answer


def test_a_changed_table_starts_a_stopped_worker_on_reload(
        tmp_path: Path, supervisor_run: Callable[..., Running]) -> None:
    text = '[workers.web]\ncommand = ["sh", "-c", "echo web up $X; exec sleep 1000"]\n'
    run = supervisor_run('node_id = "ctl-r"\n[metrics]\nenabled = false\n' + text)
    config = tmp_path / "supervisor.toml"
    run.expect(r"web \| web up")
    ok(config, "stop", "web")
    config.write_text(config.read_text() + 'env = { X = "again" }\n')
    run.signal(signal.SIGHUP)
    run.expect(r"web \| web up again", timeout=15)
    assert rows(config)["web"]["role"] == "running"


# -- the socket's rules ------------------------------------------------------------------------

def test_a_socket_directory_of_another_uid_refuses_to_start(
        tmp_path: Path, supervisor_run: Callable[..., Running], control_dir: Path) -> None:
    own = control_dir / "fleet-supervisor"
    own.mkdir(mode=0o700)
    os.chown(own, NOBODY, NOBODY)
    marker = tmp_path / "started"
    run = supervisor_run(f'node_id = "ctl-x"\n[metrics]\nenabled = false\n'
                         f'[workers.web]\ncommand = ["touch", "{marker}"]\n')
    assert run.wait() == 2
    assert f"control socket directory {own} belongs to uid {NOBODY}" in run.text()
    assert "refusing to start" in run.text()
    assert "starting 1 workers" not in run.text()  # never said, since nothing starts
    assert not marker.exists()  # nothing started


def test_a_socket_directory_that_cannot_be_made_refuses_to_start(
        supervisor_run: Callable[..., Running], control_dir: Path) -> None:
    missing = control_dir / "gone"  # short: tmp_path may be too long for a socket's path
    run = supervisor_run('node_id = "ctl-m"\n[metrics]\nenabled = false\n'
                         '[workers.web]\ncommand = ["true"]\n',
                         env={"XDG_RUNTIME_DIR": str(missing)})
    assert run.wait() == 2
    assert f"control socket directory {missing}/fleet-supervisor: No such file or " \
           "directory (set control_socket to a writable place)" in run.text()
    assert "Traceback" not in run.text()


def test_a_stale_socket_is_replaced_and_a_live_one_refuses_a_second_supervisor(
        tmp_path: Path, supervisor_run: Callable[..., Running], control_dir: Path) -> None:
    config = 'node_id = "ctl-s"\n[metrics]\nenabled = false\n' \
             '[workers.web]\ncommand = ["sh", "-c", "echo web up; exec sleep 1000"]\n'
    first = supervisor_run(config)
    first.expect(r"web \| web up")
    sock = control_dir / "fleet-supervisor" / "ctl-s.sock"
    second = supervisor_run(config, name="other.toml")  # the same node_id on this host
    assert second.wait() == 1
    assert "starting 1 workers" not in second.text()
    assert f"a supervisor is already running for node ctl-s on this host (it answers on " \
           f"{sock})" in second.text()
    first.kill_all()  # SIGKILL to the supervisor and its children: the socket stays
    assert sock.exists()
    third = supervisor_run(config)
    third.expect(r"replacing the stale control socket", timeout=15)
    third.expect(r"web \| web up", timeout=15)
    assert rows(tmp_path / "supervisor.toml")["web"]["role"] == "running"


def test_two_supervisors_with_different_node_ids_on_one_host_both_answer(
        tmp_path: Path, supervisor_run: Callable[..., Running]) -> None:
    runs = {}
    for name in ("ctl-a", "ctl-b"):
        runs[name] = supervisor_run(
            f'node_id = "{name}"\n[metrics]\nenabled = false\n[workers.web]\n'
            f'command = ["sh", "-c", "echo up $SUPERVISOR_NODE_ID; exec sleep 1000"]\n',
            name=f"{name}.toml")
    for name, run in runs.items():
        run.expect(rf"web \| up {name}")
    for name in runs:
        done = json.loads(ok(tmp_path / f"{name}.toml", "ps", "--json"))
        assert done["node_id"] == name


def test_the_socket_named_by_supervisor_control_socket_is_found_by_the_commands_too(
        tmp_path: Path, supervisor_run: Callable[..., Running]) -> None:
    sock = tmp_path / "ctl.sock"
    run = supervisor_run('node_id = "ctl-e"\n[metrics]\nenabled = false\n[workers.web]\n'
                         'command = ["sh", "-c", "echo up; exec sleep 1000"]\n',
                         env={"SUPERVISOR_CONTROL_SOCKET": str(sock)})
    run.expect(r"web \| up")
    assert sock.is_socket()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
    found = subprocess.run([str(SUPERVISOR_BIN), "ps", "-c", str(tmp_path / "supervisor.toml")],
                           env={**env, "SUPERVISOR_CONTROL_SOCKET": str(sock)},
                           capture_output=True, text=True, timeout=30, check=False)
    assert found.returncode == 0 and "running" in found.stdout, found
    elsewhere = ctl(tmp_path / "supervisor.toml", "ps")  # the default path: nobody there
    assert elsewhere.returncode == 1 and "no supervisor is running for node ctl-e" \
        in elsewhere.stderr


_PEER = """
import json, os, socket, sys
os.setgid({uid}); os.setuid({uid})
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
s.sendall(b'{{"cmd": "ps"}}\\n')
print(s.makefile("rb").readline().decode().strip())
"""


def test_a_peer_of_another_uid_is_refused(tmp_path: Path,
                                          supervisor_run: Callable[..., Running]) -> None:
    shared = Path(tempfile.mkdtemp(prefix="fs-peer-"))
    try:
        shared.chmod(0o755)  # others may reach the socket's directory, not the socket
        sock = shared / "n.sock"
        run = supervisor_run(f'node_id = "ctl-p"\ncontrol_socket = "{sock}"\n'
                             '[metrics]\nenabled = false\n'
                             '[workers.web]\ncommand = ["sh", "-c", "echo up; exec sleep 1000"]\n')
        run.expect(r"web \| up")
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert rows(tmp_path / "supervisor.toml")["web"]["role"] == "running"

        def as_nobody() -> str:
            done = subprocess.run([sys.executable, "-c", _PEER.format(uid=NOBODY), str(sock)],
                                  capture_output=True, text=True, timeout=30, check=False)
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        assert as_nobody() == "EACCES"  # mode 0600: the kernel refuses first
        sock.chmod(0o666)  # past the file's mode, the supervisor checks the peer itself
        answer = json.loads(as_nobody())
        assert answer["ok"] is False and answer["error"] == "refused"
        assert f"uid {NOBODY} may not control this supervisor" in answer["message"]
        run.expect(rf"control socket: refused a connection from uid {NOBODY}")
    finally:
        subprocess.run(["rm", "-rf", str(shared)], check=False)


def test_ps_without_a_supervisor_exits_1(tmp_path: Path, control_dir: Path) -> None:
    config = tmp_path / "supervisor.toml"
    config.write_text('node_id = "nobody-here"\n')
    done = ctl(config, "ps")
    assert done.returncode == 1
    sock = control_dir / "fleet-supervisor" / "nobody-here.sock"
    assert done.stderr == f"error: no supervisor is running for node nobody-here (socket {sock})\n"


# -- several nodes: a leader, a coordinated and a cron worker stopped on one of them -----------



@pytest.fixture
def fleet(tmp_path: Path, database_url: str) -> Iterator[Fleet]:
    with made_fleets(lambda: Fleet(tmp_path, database_url)) as make:
        yield make()


def test_restart_keeps_the_lease_stop_hands_it_over_and_start_follows(fleet: Fleet) -> None:
    probe = fleet.probe()
    fleet.start_nodes("a")
    first = probe.wait_for("acquired", timeout=15)
    fleet.start_nodes("b")
    a, b = fleet.nodes["a"].config, fleet.nodes["b"].config
    wait_role(b, "probe", "follower")
    refused = ok(b, "restart", "probe")
    assert refused == "probe: holds no grant on this node (it waits for one): nothing to " \
                      "restart\n"

    # restart: a new child under the same lease and token, never two at once
    assert "probe: restarted (pid " in ok(a, "restart", "probe")
    again = probe.wait_for("acquired", timeout=5, since=first)
    assert (again.node, again.token) == ("a", first.token) and again.pid != first.pid
    row = rows(a)["probe"]
    assert (row["role"], row["token"], row["pids"], row["restarts"]) == \
        ("leader", first.token, [again.pid], 0)
    assert row["last_exit"]["reason"] == "restart requested"

    # stop: the lease goes to b once a's child is dead, not before
    assert ok(a, "stop", "probe") == "probe: stopped\n"
    assert not pid_alive(again.pid)
    third = probe.wait_for("acquired", timeout=HOLD + SLACK, since=again)
    assert third.node == "b" and int(third.token) > int(first.token)
    assert rows(a)["probe"]["role"] == "stopped"
    assert wait_role(b, "probe", "leader")["token"] == third.token

    # start: a is back, as a follower; b keeps leading
    assert ok(a, "start", "probe") == "probe: started\n"
    wait_role(a, "probe", "follower")
    probe.quiet(HOLD, since=third)
    # stopping and starting a follower leaves the leader alone
    assert ok(a, "stop", "probe") == "probe: stopped\n"
    assert ok(a, "start", "probe") == "probe: started\n"
    probe.quiet(HOLD, since=third)
    assert rows(b)["probe"]["pids"] == [third.pid]
    fleet.assert_no_overlaps()


def test_stopping_a_coordinated_worker_leaves_the_membership_and_the_rest_rebalance(
        tmp_path: Path, database_url: str) -> None:
    with made_fleets(functools.partial(CoordFleet, tmp_path, database_url)) as make:
        fleet = make()
        fleet.start_nodes("a", "b")
        fleet.settled({"a", "b"})
        a = fleet.nodes["a"].config
        assert rows(a)["shard"]["role"] in ("index 0 of 2", "index 1 of 2")
        assert ok(a, "stop", "shard") == "shard: stopped\n"
        fleet.settled({"b"}, count=1)
        assert rows(a)["shard"]["role"] == "stopped"
        assert ok(a, "start", "shard") == "shard: started\n"
        fleet.settled({"a", "b"})
        fleet.assert_no_overlaps()


def test_stopping_a_cron_worker_stops_its_claims_on_that_node(tmp_path: Path,
                                                              database_url: str) -> None:
    with made_fleets(functools.partial(CronFleet, tmp_path, database_url)) as make:
        fleet = make(run_seconds=0.2, cron="@every 1s", max_run=2)
        fleet.start_nodes("a", "b")
        wait_until(lambda: {e.node for e in fleet.runs() if e.kind == "end"} == {"a", "b"},
                   15 + SLACK, "runs on both nodes")
        a = fleet.nodes["a"].config
        assert rows(a)["job"]["next_tick"] is not None
        assert ok(a, "stop", "job") == "job: stopped\n"
        stopped_at = time.time()
        seen = len(fleet.runs())
        wait_until(lambda: len([e for e in fleet.runs()[seen:]
                                if e.kind == "start" and e.node == "b"]) >= 3,
                   5 + SLACK, "three more runs on b")
        late = [e for e in fleet.runs() if e.node == "a" and e.kind == "start"
                and e.at > stopped_at]
        assert not late, f"a claimed ticks after its stop: {late}\n{fleet.report()}"
        row = rows(a)["job"]
        assert (row["role"], row["next_tick"]) == ("stopped", None)
        assert ok(a, "start", "job") == "job: started\n"
        restarted = time.time()
        wait_until(lambda: any(e.node == "a" and e.at > restarted for e in fleet.runs()),
                   5 + SLACK, "a run on a again")


def test_a_follower_that_does_not_read_loses_lines_and_is_told_while_ps_still_answers(
        tmp_path: Path, supervisor_run: Callable[..., Running], control_dir: Path) -> None:
    chatty = worker_toml("chatty", "probe.py", "every-node",
                         {"PROBE_LOCK": str(tmp_path / "c.lock"),
                          "PROBE_LOG": str(tmp_path / "c.log"), "PROBE_CHATTY": "1000"}, {})
    run = supervisor_run('node_id = "ctl-f"\n[metrics]\nenabled = false\n' + chatty)
    run.expect(r"chatty \| probe running")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(control_dir / "fleet-supervisor" / "ctl-f.sock"))
    try:
        sock.sendall(b'{"cmd": "logs", "worker": "chatty", "lines": 0, "follow": true}\n')
        reader = sock.makefile("rb")
        assert json.loads(reader.readline())["ok"] is True
        # This reader stops reading; about 5000 lines a second keep coming. The
        # supervisor neither waits for it nor keeps more than its queue for it.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            assert rows(tmp_path / "supervisor.toml")["chatty"]["role"] == "running"
        dropped = 0
        for _ in range(50_000):
            item = json.loads(reader.readline())
            if "dropped" in item:
                dropped = item["dropped"]
                break
            assert item["stream"] == "stdout"
        assert dropped > 0
        reader.close()
    finally:
        sock.close()


def test_without_node_id_in_the_file_ps_finds_the_node_by_hostname_as_run_does(
        tmp_path: Path, supervisor_run: Callable[..., Running],
        monkeypatch: pytest.MonkeyPatch, control_dir: Path) -> None:
    monkeypatch.setenv("HOSTNAME", "ctl-host/1")
    run = supervisor_run('[metrics]\nenabled = false\n[workers.web]\n'
                         'command = ["sh", "-c", "echo up; exec sleep 1000"]\n')
    run.expect(r"web \| up")
    assert (control_dir / "fleet-supervisor" / "ctl-host%2F1.sock").is_socket()
    assert json.loads(ok(tmp_path / "supervisor.toml", "ps", "--json"))["node_id"] \
        == "ctl-host/1"
    monkeypatch.setenv("HOSTNAME", "another-host")
    other = ctl(tmp_path / "supervisor.toml", "ps")
    assert other.returncode == 1 and "no supervisor is running for node another-host" \
        in other.stderr


def test_backoff_and_given_up_show_in_ps_and_restart_ends_either_at_once(
        tmp_path: Path, supervisor_run: Callable[..., Running]) -> None:
    crash = '["sh", "-c", "echo up; sleep 0.5; exit 1"]'
    # flaky fails twice, then (its start that `restart` asks for) stays up, so that the
    # restart count read after it cannot have moved on by another failure meanwhile
    starts = tmp_path / "flaky-starts"
    twice = ('["sh", "-c", "echo up; echo x >> ' + str(starts) + '; '
             '[ $(wc -l < ' + str(starts) + ') -gt 2 ] && exec sleep 1000; sleep 0.5; exit 1"]')
    run = supervisor_run(
        'node_id = "ctl-b"\n[metrics]\nenabled = false\n'
        f'[workers.flaky]\ncommand = {twice}\nbackoff = {{ initial = "1h", max = "1h" }}\n'
        f'[workers.doomed]\ncommand = {crash}\nmax_restarts = 1\n')
    config = tmp_path / "supervisor.toml"
    run.expect(r"flaky \| up")
    doomed = wait_role(config, "doomed", "given up", timeout=20)
    assert doomed["last_exit"]["status"] == "exit status 1"
    wait_until(lambda: rows(config)["flaky"]["role"].startswith("backoff until "), 20,
               "flaky in backoff")
    flaky = rows(config)["flaky"]
    assert flaky["restarts"] == 2 and flaky["pids"] == []
    answer = ok(config, "restart", "all")
    assert "flaky: restarted (pid " in answer  # the hour's backoff ends now
    assert "doomed: started again" in answer
    assert rows(config)["flaky"]["restarts"] == 2  # the asked-for start is not counted


def test_a_supervisor_that_does_not_answer_makes_ps_exit_1_after_its_timeout(
        tmp_path: Path, supervisor_run: Callable[..., Running]) -> None:
    run = supervisor_run('node_id = "ctl-t"\n[metrics]\nenabled = false\n[workers.web]\n'
                         'command = ["sh", "-c", "echo up; exec sleep 1000"]\n')
    run.expect(r"web \| up")
    config = tmp_path / "supervisor.toml"
    run.signal(signal.SIGSTOP)  # a hung supervisor: its socket still accepts connections
    try:
        started = time.monotonic()
        hung = ctl(config, "ps", "--timeout", "1")
        assert hung.returncode == 1
        assert "error: the supervisor did not answer: timed out" in hung.stderr
        assert time.monotonic() - started < 10
    finally:
        run.signal(signal.SIGCONT)
    assert rows(config)["web"]["role"] == "running"
