"""`supervisor status`, `history`, `db upgrade` and the leader metrics, end to end."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from supervisor.store import CoordSlot, CronRun, Holder
from supervisor.store.sql import SqlStore
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
    child = int(run.expect(r"^leader \| ready pid=(\d+)", after_start=True).group(1))
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
    assert re.search(r'supervisor_db_operation_duration_seconds_count'
                     r'\{operation="node_sync",result="ok"\} \d', body)
    assert "supervisor_db_clock_offset_seconds" in body

    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    history = json.loads(cli("history", "leader", "--json", config=cfg).stdout)
    assert [(h["worker"], h["term"], h["outcome"], h["reason"]) for h in history] == [
        ("leader", 1, "released", "supervisor stopped")]
    # the term's child, as the child itself printed it; the supervisor's pid apart
    assert (history[0]["pid"], history[0]["supervisor_pid"]) == (child, run.proc.pid)
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
    assert empty["nodes"] == [] and empty["leaders"] == [] and empty["cron"] == []


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class CronHistory:
    """A cron history written straight into the store at pinned times, ten minutes back.

    job (@every 2s, max_run 2): tick t0 two runs, one succeeded and one failed; t0+2
    missed; t0+4 two runs still running, one by a live supervisor and one whose
    supervisor is gone. A leadership term of `lead` acquired at t0+3, and a run of
    `other` at t0+6.
    """

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.a = Holder("node-a", "blue", os.getpid(), "nonce-a")
        self.b = Holder("node-b", "blue", os.getpid() + 1, "nonce-b")
        self.t0 = math.floor(store.db_now() / 2) * 2 - 600
        t0 = self.t0
        ok = self.claim("job", t0, self.a, at=t0 + 0.1)
        bad = self.claim("job", t0, self.b, at=t0 + 0.2)
        assert store.cron_finish(ok, "succeeded", exit_code=0, now=t0 + 1.6)
        assert store.cron_finish(bad, "failed", exit_code=3, reason="exit status 3",
                                 now=t0 + 0.7)
        missed = store.cron_claim("job", t0 + 2, holder=self.a, max_run=2, ttl=30, grace=10,
                                  now=t0 + 13)
        assert missed.result == "missed"
        assert store.lease_acquire("leader/lead", self.a, 5, now=t0 + 3) is not None
        self.claim("job", t0 + 4, self.a, at=t0 + 4.1)
        self.claim("job", t0 + 4, self.b, at=t0 + 4.2)
        other = self.claim("other", t0 + 6, self.b, at=t0 + 6.1)
        assert store.cron_finish(other, "succeeded", exit_code=0, now=t0 + 6.6)
        store.node_sync(self.a, held=[], wanted=[], ttl=60)  # node-a's supervisor is live

    def claim(self, worker: str, tick: float, holder: Holder, *, at: float) -> CronRun:
        got = self.store.cron_claim(worker, tick, holder=holder, max_run=2, ttl=30, grace=10,
                                    now=at)
        assert got.result == "acquired" and got.run is not None, got
        return got.run


CRON_CONFIG = """
database_url = "{url}"

[workers.job]
command = ["true"]
mode = "cron"
cron = "@every 2s"
max_run = 2
misfire_grace = "10s"

[workers.other]
command = ["true"]
mode = "cron"
cron = "@every 2s"
timezone = "Europe/Berlin"
overlap = "allow"

[workers.lead]
command = ["true"]
mode = "global-leader"
"""


@pytest.fixture
def cron_store(database_url):
    store = SqlStore(database_url)
    store.upgrade()
    yield store
    store.close()


def test_status_shows_each_cron_workers_next_tick_and_latest_outcomes(
        tmp_path, database_url, database_backend, cron_store):
    seeded = CronHistory(cron_store)
    t0 = seeded.t0
    cfg = tmp_path / "supervisor.toml"
    cfg.write_text(CRON_CONFIG.format(url=with_password(database_url, database_backend)))

    before = cron_store.db_now()
    done = cli("status", "--json", config=cfg)
    after = cron_store.db_now()
    assert done.returncode == 0, done.stderr
    crons = {c["worker"]: c for c in json.loads(done.stdout)["cron"]}
    assert list(crons) == ["job", "other"]  # the leader is not a cron worker
    job = crons["job"]
    assert set(job) == {"worker", "schedule", "timezone", "max_run", "max_per_node", "overlap",
                        "misfire_grace", "timeout", "next_tick", "next_in", "ticks"}
    assert (job["schedule"], job["timezone"], job["max_run"], job["overlap"]) == (
        "@every 2s", "UTC", 2, "forbid")
    assert crons["other"]["timezone"] == "Europe/Berlin"
    # the next tick by the database's clock: the first multiple of 2 s after its time
    for cron in crons.values():
        tick = epoch(cron["next_tick"])
        assert tick % 2 == 0 and before < tick <= after + 2, (before, tick, after)
        assert 0 < cron["next_in"] <= 2

    assert [(epoch(t["tick"]), t["state"]) for t in job["ticks"]] == [
        (t0 + 4, "running"), (t0 + 2, "missed"), (t0, "failed")]
    running, missed, finished = job["ticks"]
    assert [(r["slot"], r["node_id"], r["state"], r["holder_live"])
            for r in running["runs"]] == [
        (0, "node-a", "running", True), (1, "node-b", "running", False)]
    assert missed["runs"] == [] and "misfire_grace" in missed["reason"]
    assert [(r["slot"], r["node_id"], r["pid"], r["state"], r["exit_code"], r["duration"])
            for r in finished["runs"]] == [
        (0, "node-a", os.getpid(), "succeeded", 0, pytest.approx(1.5, abs=1e-3)),
        (1, "node-b", os.getpid() + 1, "failed", 3, pytest.approx(0.5, abs=1e-3))]
    assert [(t["state"], len(t["runs"])) for t in crons["other"]["ticks"]] == [("succeeded", 1)]

    text = cli("status", config=cfg)
    assert text.returncode == 0, text.stderr
    assert "cron: 2 workers" in text.stdout and "next tick " in text.stdout
    for state in ("running", "missed", "failed exit 3", "succeeded exit 0",
                  "its node is gone: will be marked lost"):
        assert state in text.stdout, state
    for output in (done.stdout, done.stderr, text.stdout, text.stderr):
        assert "hunter2" not in output


def test_history_merges_cron_runs_and_terms_newest_first(tmp_path, database_url,
                                                          database_backend, cron_store):
    t0 = CronHistory(cron_store).t0
    cfg = tmp_path / "supervisor.toml"
    cfg.write_text(CRON_CONFIG.format(url=with_password(database_url, database_backend)))

    done = cli("history", "--json", config=cfg)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["kind"], r["worker"], epoch(r["at"]), r.get("slot"), r.get("state"))
            for r in rows] == [
        ("run", "other", t0 + 6, 0, "succeeded"),
        ("run", "job", t0 + 4, 0, "running"),
        ("run", "job", t0 + 4, 1, "running"),
        ("term", "lead", t0 + 3, None, None),
        ("run", "job", t0 + 2, -1, "missed"),
        ("run", "job", t0, 0, "succeeded"),
        ("run", "job", t0, 1, "failed"),
    ]
    failed = rows[-1]
    # `pid` is the child's (none recorded here), `supervisor_pid` its supervisor's
    assert (failed["node_id"], failed["supervisor_pid"], failed["pid"], failed["exit_code"],
            failed["reason"]) == ("node-b", os.getpid() + 1, None, 3, "exit status 3")
    assert failed["duration"] == pytest.approx(0.5, abs=1e-3)
    assert epoch(failed["tick"]) == t0
    assert (rows[3]["term"], rows[3]["node_id"], rows[3]["outcome"]) == (1, "node-a", "holding")

    job = json.loads(cli("history", "job", "--json", config=cfg).stdout)
    assert {r["worker"] for r in job} == {"job"} and len(job) == 5
    lead = json.loads(cli("history", "lead", "--json", config=cfg).stdout)
    assert [(r["kind"], r["worker"]) for r in lead] == [("term", "lead")]
    newest = json.loads(cli("history", "--limit", "4", "--json", config=cfg).stdout)
    assert newest == rows[:4]

    text = cli("history", config=cfg)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 7
    assert "other" in lines[0] and "run  slot 0" in lines[0] and "succeeded" in lines[0]
    assert "lead" in lines[3] and "term 1" in lines[3] and "holding" in lines[3]
    assert "tick missed" in lines[4]
    assert "failed exit 3 after 0.5s (exit status 3)" in lines[6]
    for output in (done.stdout, done.stderr, text.stdout, text.stderr):
        assert "hunter2" not in output


class CoordHistory:
    """Coordinated memberships, generations and slots written straight into the store, at
    pinned times in the last half minute by the database's clock (memberships for five
    minutes, so the CLI sees them live).

    indexer (scope global): generation 1 at t-30 gave node-e index 0 and node-a index 1;
    node-e has since gone (its membership expired) but still holds slot 0 of generation 1,
    so generation 2 at t-10 (node-a 0, node-b 1, node-c standby) waits behind it; node-d
    joined after. shards (scope group): in blue, generation 1 at t-25 gave node-a 0 and
    node-b 1; node-a holds its slot, node-b's expired; node-d is joining. In red, node-c
    is a member and nothing is published. A term of `lead` was acquired at t-20.
    """

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        pid = os.getpid()
        self.a = Holder("node-a", "blue", pid, "nonce-a")
        self.b = Holder("node-b", "blue", pid + 1, "nonce-b")
        self.c = Holder("node-c", "red", pid + 2, "nonce-c")
        self.d = Holder("node-d", "blue", pid + 3, "nonce-d")
        self.e = Holder("node-e", "blue", pid + 4, "nonce-e")
        self.t = t = float(math.floor(store.db_now()))
        self.sync(self.a, ["indexer", "shards/blue"], now=t - 31)
        self.sync(self.e, ["indexer"], now=t - 31, ttl=10)
        self.sync(self.b, ["indexer", "shards/blue"], now=t - 30.5)
        self.sync(self.c, ["indexer", "shards/red"], now=t - 30.5)
        assert store.coord_publish("indexer", expected=0, members=[self.e, self.a], count=2,
                                   now=t - 30) == 1
        self.slot("indexer", 0, 1, self.e, now=t - 29.5)
        old = self.slot("indexer", 1, 1, self.a, now=t - 29.5)
        assert store.coord_publish("shards/blue", expected=0, members=[self.a, self.b],
                                   count=2, now=t - 25) == 1
        self.slot("shards/blue", 0, 1, self.a, now=t - 24)
        self.slot("shards/blue", 1, 1, self.b, now=t - 24, ttl=4)  # lapses at t-20
        assert store.lease_acquire("leader/lead", self.a, 5, now=t - 20) is not None
        assert store.coord_publish("indexer", expected=1, members=[self.a, self.b, self.c],
                                   count=2, now=t - 10) == 2
        assert store.coord_release_slot(old, now=t - 9)
        assert store.coord_acquire_slot("indexer", 0, 2, self.a, 300, now=t - 8) is None
        self.sync(self.d, ["indexer", "shards/blue"], now=t - 5)

    def sync(self, holder: Holder, keys: list[str], *, now: float, ttl: float = 300) -> None:
        self.store.node_sync(holder, held=[], wanted=[], ttl=ttl, coord_members=keys,
                             now=now)

    def slot(self, key: str, index: int, generation: int, holder: Holder, *, now: float,
             ttl: float = 300) -> CoordSlot:
        got = self.store.coord_acquire_slot(key, index, generation, holder, ttl, now=now)
        assert got is not None, (key, index, generation, holder)
        return got


COORD_CONFIG = """
database_url = "{url}"

[workers.indexer]
command = ["true"]
mode = "coordinated"

[workers.shards]
command = ["true"]
mode = "coordinated"
scope = "group"

[workers.lead]
command = ["true"]
mode = "global-leader"
"""


def test_status_shows_each_coordinated_key_with_indexes_slots_and_joining_members(
        tmp_path, database_url, database_backend, cron_store):
    seeded = CoordHistory(cron_store)
    t = seeded.t
    cfg = tmp_path / "supervisor.toml"
    cfg.write_text(COORD_CONFIG.format(url=with_password(database_url, database_backend)))

    done = cli("status", "--json", config=cfg)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert {n["node_id"] for n in data["nodes"]} == {"node-a", "node-b", "node-c", "node-d"}
    coord = {c["key"]: c for c in data["coordinated"]}
    assert list(coord) == ["indexer", "shards/blue", "shards/red"]
    indexer = coord["indexer"]
    assert set(indexer) == {"worker", "group", "key", "generation", "count", "published",
                            "members", "joining", "draining"}
    assert (indexer["worker"], indexer["group"], indexer["generation"], indexer["count"]) == (
        "indexer", None, 2, 2)
    assert epoch(indexer["published"]) == pytest.approx(t - 10, abs=1e-3)
    pid = os.getpid()
    assert [(m["node_id"], m["pid"], m["index"], m["holding"], m["slot_generation"], m["live"])
            for m in indexer["members"]] == [
        ("node-a", pid, 0, False, None, True),
        ("node-b", pid + 1, 1, False, None, True),
        ("node-c", pid + 2, "standby", False, None, True),
    ]
    assert [(j["node_id"], epoch(j["since"])) for j in indexer["joining"]] == [
        ("node-d", pytest.approx(t - 5, abs=1e-3))]
    [draining] = indexer["draining"]
    assert (draining["node_id"], draining["index"], draining["generation"]) == ("node-e", 0, 1)
    assert 0 < draining["expires_in"] <= 270.5

    blue = coord["shards/blue"]
    assert (blue["worker"], blue["group"], blue["generation"], blue["count"]) == (
        "shards", "blue", 1, 2)
    assert [(m["node_id"], m["index"], m["holding"], m["slot_index"], m["slot_generation"])
            for m in blue["members"]] == [("node-a", 0, True, 0, 1),
                                          ("node-b", 1, False, None, None)]
    assert [j["node_id"] for j in blue["joining"]] == ["node-d"] and blue["draining"] == []
    red = coord["shards/red"]
    assert (red["generation"], red["count"], red["published"], red["members"]) == (
        0, 0, None, [])
    assert [j["node_id"] for j in red["joining"]] == ["node-c"]

    text = cli("status", config=cfg)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert "coordinated: 3" in out
    for line in ("index 0    node-a", "standby    node-c", "joining    node-d",
                 "draining   node-e", "holds slot 0 of generation 1 (expires in ",
                 "waiting for its slot (generation 1 still holds slots)",
                 "index 1    node-b", "standing by", "shards@blue", "shards@red",
                 "no generation published yet"):
        assert line in out, line
    assert re.search(r"indexer +generation 2  count 2  published ", out)
    assert re.search(r"index 0 +node-a pid \d+ +holds slot 0\n", out)  # in shards@blue
    assert re.search(r"index 1 +node-b pid \d+ +waiting for its slot\n", out)  # expired
    for output in (done.stdout, done.stderr, out, text.stderr):
        assert "hunter2" not in output


def test_history_lists_coordinated_generations_among_terms_newest_first(
        tmp_path, database_url, database_backend, cron_store):
    t = CoordHistory(cron_store).t
    cfg = tmp_path / "supervisor.toml"
    cfg.write_text(COORD_CONFIG.format(url=with_password(database_url, database_backend)))

    done = cli("history", "--json", config=cfg)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["kind"], r["worker"], r.get("group"), round(epoch(r["at"]) - t, 3))
            for r in rows] == [
        ("generation", "indexer", None, -10),
        ("term", "lead", None, -20),
        ("generation", "shards", "blue", -25),
        ("generation", "indexer", None, -30),
    ]
    newest, _, blue, first = rows
    assert (newest["key"], newest["generation"], newest["count"], newest["members"],
            newest["standby"], newest["ended"], newest["duration"]) == (
        "indexer", 2, 2, ["node-a", "node-b"], ["node-c"], None, None)
    assert (first["generation"], first["members"], first["standby"]) == (
        1, ["node-e", "node-a"], [])
    assert epoch(first["published"]) == pytest.approx(t - 30, abs=1e-3)
    assert epoch(first["ended"]) == pytest.approx(t - 10, abs=1e-3)
    assert first["duration"] == pytest.approx(20, abs=1e-3)
    assert (blue["key"], blue["members"]) == ("shards/blue", ["node-a", "node-b"])

    shards = json.loads(cli("history", "shards", "--json", config=cfg).stdout)
    assert [(r["key"], r["generation"]) for r in shards] == [("shards/blue", 1)]
    indexer = json.loads(cli("history", "indexer", "--json", config=cfg).stdout)
    assert [(r["kind"], r["generation"]) for r in indexer] == [
        ("generation", 2), ("generation", 1)]
    assert json.loads(cli("history", "--limit", "2", "--json", config=cfg).stdout) == rows[:2]

    text = cli("history", config=cfg)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0].endswith("generation 2 count 2: node-a, node-b (standby: node-c)  current")
    assert "lead" in lines[1] and "term 1" in lines[1]
    assert "shards@blue" in lines[2] and "generation 1 count 2: node-a, node-b" in lines[2]
    assert lines[3].endswith("generation 1 count 2: node-e, node-a  superseded after 20.0s")
    for output in (done.stdout, done.stderr, text.stdout, text.stderr):
        assert "hunter2" not in output


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
