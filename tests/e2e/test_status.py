"""`supervisor status`, `history`, `db upgrade` and the leader metrics, end to end."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import SUPERVISOR_BIN, worker_command

TIMINGS = """
[coordination]
lease_ttl = "4s"
renew_interval = "300ms"
renew_deadline = "1500ms"
"""


def with_password(url: str, backend: str) -> str:
    """PostgreSQL here trusts every local login, so a password can be shown to be hidden."""
    if backend == "postgresql":
        return url.replace("postgres@", "postgres:hunter2@")
    return url


def cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SUPERVISOR_BIN), *args, "-c", str(config)], capture_output=True,
                          text=True, timeout=60, check=False)


def test_status_history_and_metrics_of_a_leader(supervisor_run, tmp_path, database_url,
                                                database_backend):
    url = with_password(database_url, database_backend)
    config = f"""
database_url = "{url}"
node_id = "node-a"
group = "blue"
{TIMINGS}
[metrics]
host = "127.0.0.1"
port = 0

[workers.leader]
command = {worker_command("stubborn.py")}
mode = "global-leader"
stop_timeout = "1s"

[workers.local]
command = {worker_command("stubborn.py")}
mode = "group-leader"
stop_timeout = "1s"
"""
    run = supervisor_run(config)
    port = int(run.expect(r"metrics on http://127\.0\.0\.1:(\d+)", after_start=True).group(1))
    run.expect(r"leader: leader of leader/leader with fencing token 1", after_start=True)
    run.expect(r"local: leader of leader/local/blue with fencing token 1", after_start=True)
    cfg = tmp_path / "supervisor.toml"

    status = cli("status", "--json", config=cfg)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert [n["node_id"] for n in data["nodes"]] == ["node-a"]
    leaders = {(lease["worker"], lease["group"]): lease for lease in data["leaders"]}
    assert leaders[("leader", None)]["holder"]["node_id"] == "node-a"
    assert leaders[("local", "blue")]["term"] == 1
    assert 0 < leaders[("leader", None)]["time_left"] <= 4
    text = cli("status", config=cfg)
    assert "node-a" in text.stdout and "local@blue" in text.stdout

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
        assert resp.status == 200
    assert 'supervisor_leader{group="blue",worker="leader"} 1.0' in body
    assert 'supervisor_leader_term{group="blue",worker="local"} 1.0' in body
    renewals = re.search(r'supervisor_lease_renewals_total\{group="blue",worker="leader"\} (\S+)',
                         body)
    assert renewals and float(renewals.group(1)) >= 1
    assert re.search(r"supervisor_heartbeat_timestamp_seconds 1\.\d+e\+09", body)
    assert re.search(r'supervisor_db_seconds_count\{operation="node_sync",result="ok"\} \d', body)
    assert "supervisor_db_clock_offset_seconds" in body

    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    history = json.loads(cli("history", "leader", "--json", config=cfg).stdout)
    assert [(h["worker"], h["term"], h["outcome"], h["reason"]) for h in history] == [
        ("leader", 1, "released", "supervisor stopped")]
    everything = cli("history", config=cfg).stdout
    assert "local@blue" in everything and "released" in everything
    for output in (status.stdout, status.stderr, text.stdout, run.text(), body, everything):
        assert "hunter2" not in output


def test_db_upgrade_and_an_unreachable_database(tmp_path, database_url):
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(f'database_url = "{database_url}"\n')
    first = cli("db", "upgrade", config=cfg)
    assert first.returncode == 0, first.stderr
    assert cli("db", "upgrade", config=cfg).returncode == 0
    empty = json.loads(cli("status", "--json", config=cfg).stdout)
    assert empty["nodes"] == [] and empty["leaders"] == []


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://u:hunter2@127.0.0.1:1/x",
    "mysql+pymysql://u:hunter2@127.0.0.1:1/x",
])
def test_status_exits_1_when_the_database_cannot_be_reached(tmp_path, url):
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(f'database_url = "{url}"\n[coordination]\nrenew_deadline = "2s"\n')
    done = cli("status", config=cfg)
    assert done.returncode == 1
    assert "unreachable" in done.stderr and "u:***@" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_a_leader_whose_child_keeps_failing_hands_the_lease_on(supervisor_run, tmp_path,
                                                               database_url):
    def config(node: str, worker: str) -> str:
        return f"""
database_url = "{database_url}"
node_id = "{node}"
{TIMINGS}
[metrics]
enabled = false

[workers.w]
command = {worker}
mode = "global-leader"
stop_timeout = "1s"
max_restarts = 1
backoff = {{ initial = "50ms", max = "50ms" }}
"""

    steady = supervisor_run(config("node-b", worker_command("stubborn.py")), name="b.toml")
    first = steady.expect(r"w: leader of leader/w with fencing token (\d+)", after_start=True)
    steady.signal(signal.SIGTERM)  # let the failing node take it first
    assert steady.wait() == 0
    failing = supervisor_run(config("node-a", worker_command("crasher.py", "3")), name="a.toml")
    failing.expect(r"w: leader of leader/w", after_start=True)
    failing.expect(r"w: gave up after 1 restarts", after_start=True)
    failing.expect(r"no longer leader of leader/w .*the worker kept failing", after_start=True)
    standby = supervisor_run(config("node-c", worker_command("stubborn.py")), name="c.toml")
    took = standby.expect(r"w: leader of leader/w with fencing token (\d+)", after_start=True)
    assert int(took.group(1)) > int(first.group(1)) + 1
    history = json.loads(cli("history", "w", "--json", config=tmp_path / "c.toml").stdout)
    reasons = [(h["node_id"], h["outcome"], h["reason"]) for h in history]
    assert ("node-a", "released", "the worker kept failing (max_restarts)") in reasons


@pytest.mark.parametrize("database_backend", ["postgresql", "mariadb"])
def test_an_outage_stops_leaders_but_not_every_node_workers(supervisor_run, database_url):
    from tests.support.fleet import _host_port, _with_host_port
    from tests.support.proxy import TcpProxy

    with TcpProxy(*_host_port(database_url)) as proxy:
        url = _with_host_port(database_url, "127.0.0.1", proxy.port)
        run = supervisor_run(f"""
database_url = "{url}"
{TIMINGS}
[metrics]
enabled = false

[workers.local]
command = {worker_command("stubborn.py")}
stop_timeout = "1s"

[workers.leader]
command = {worker_command("stubborn.py")}
mode = "global-leader"
stop_timeout = "1s"
""")
        local = int(run.expect(r"^local \| ready pid=(\d+)", after_start=True).group(1))
        run.expect(r"leader: leader of leader/leader with fencing token 1", after_start=True)
        proxy.blackhole()  # the database stops answering, as a cut cable
        run.expect(r"leader: no longer leader of leader/leader \(term 1\): could not renew",
                   timeout=10)
        run.expect(r"leader: stopped \(killed by SIGKILL\)", after_start=True)
        proxy.heal()
        run.expect(r"leader: leader of leader/leader with fencing token 2", timeout=20)
        assert run.proc.poll() is None  # the supervisor never exits for the database
        assert f"local | ready pid={local}" in run.text()
        assert "local: started" in run.text() and run.text().count("local: started") == 1
        assert "local: stopped" not in run.text()
        run.signal(signal.SIGTERM)
        assert run.wait() == 0
