"""Benchmark: how many nodes one PostgreSQL holds, directly and through PgBouncer.

A benchmark, not a test: it prints figures (and writes JSON plus the nodes' logs to
bench/results/), asserts nothing about time, and exits non-zero only when it could not run.

    .venv/bin/python bench/scale.py --nodes 50 [--seconds 120]
    .venv/bin/python bench/scale.py --nodes 90
    .venv/bin/python bench/scale.py --nodes 200 --pgbouncer [--pool-size 20]

Set-up: a database of its own on 127.0.0.1:5432 (dropped at the end); with --pgbouncer, a
PgBouncer this script starts on a free loopback port (transaction pooling, max_client_conn
--max-client-conn, default_pool_size --pool-size; as root it runs as postgres via setpriv,
like tests/databases.py) and the nodes' database_url points at it, with
`database_listen_url = "none"` unless --listen says otherwise. N `supervisor run` processes
(ids n000..), the DEFAULT [coordination] timings (lease_ttl 10 s, renew_interval 1 s,
renew_deadline 5 s), metrics on 127.0.0.1 on a free port each, and three workers each:

- `lead`: global-leader, tests/workers/probe.py (a shared flock; `acquired` lines);
- `tick`: cron `--cron` (default `@every 5s`), max_run --max-run (2), tests/workers/cronprobe.py
  lasting 0.5 s (`start` lines carry the tick);
- `local`: every-node, /bin/sleep.

The nodes run a snapshot of the committed code (`git archive HEAD supervisor`, on their
PYTHONPATH), not the working tree, so an edit in progress elsewhere cannot leak in
(--rev runs another commit, e.g. the one before a change; --source worktree runs the
working tree). Nodes are started in batches of --batch; the next
batch starts once every node of this one is a live member (fs_members) or none joined for
--batch-stall seconds. After the last batch and --settle seconds, a window of --seconds is
measured; then --kills rounds of SIGKILL to the leader's supervisor process (that process
only), each timed to the next `acquired` of the probe; then every node gets SIGTERM and
whatever is left is swept (bench/procs.py).

Measured (all from outside the nodes, except the latency histograms):
- connections, sampled every --sample-every seconds from pg_stat_activity (a connection to
  the `postgres` database held from the start, so the bench still sees a full server), per
  node from the supervisor process's own TCP sockets (/proc/PID/fd against /proc/net/tcp),
  and through PgBouncer from its admin console (SHOW POOLS; SHOW STATS for statements);
- transactions/s: pg_stat_database xact_commit + xact_rollback delta over the window; rows
  from the n_tup_* deltas of pg_stat_user_tables; statements/s only through PgBouncer
  (total_query_count, which counts every statement on the wire, BEGIN/COMMIT and the
  SET LOCAL timeouts included) since pg_stat_statements is not loaded; the nodes' own
  database calls by operation from `supervisor_db_operation_duration_seconds_count`;
- CPU from /proc over the window: the PostgreSQL server (postmaster with its reaped children
  plus every live child: all databases, other users of the server included) and this
  database's backends alone; the supervisors (the `supervisor run` processes only), the
  whole fleet (every marked process, reaped children included), PgBouncer, the machine;
- memory: VmRSS and Pss (smaps_rollup) of each supervisor process, its watchdog apart;
- sync latency: `supervisor_db_operation_duration_seconds` bucket deltas over the
  window, merged over the scraped nodes (--scrape, default all), quantiles interpolated
  inside buckets the way Prometheus's histogram_quantile does (the buckets are 1, 2.5, 5,
  10, 25 ms ...: coarse);
- cron tick lag: claimed_at - tick from fs_cron_runs (database clock), and the probe's own
  start - tick (child running);
- after the run: pg_stat_user_tables (updates, HOT updates, dead and live tuples) and sizes of
  the fs_* tables; and every `unreachable` / `refuses new connections` line in the logs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from failover import read_events
from pgfleet import (
    Fleet,
    Node,
    free_port,
    percentile,
    preflight,
    scratch_database,
    toml_value,
)
from procs import (
    ROOT,
    bench_workdir,
    marked_pids,
    pid_alive,
    read_fields,
    wait_until,
    write_results,
)

if str(ROOT) not in sys.path:  # the tests' PgBouncer (the same set-up as the test suite's)
    sys.path.insert(0, str(ROOT))

from tests.databases import PgBouncer

PROBE = ROOT / "tests" / "workers" / "probe.py"
CRONPROBE = ROOT / "tests" / "workers" / "cronprobe.py"
TICKS = 100.0  # os.sysconf("SC_CLK_TCK") on Linux; read below
HZ = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else TICKS
PG_PORT = 5432
APP = "fleet-supervisor"
BENCH_APP = "fleet-bench-scale"
ERROR_WORDS = ("unreachable", "refuses new connections")
BUCKET = re.compile(r'^supervisor_db_operation_duration_seconds_(?P<kind>bucket|count|sum)'
                    r'\{(?P<labels>[^}]*)\}'
                    r'\s+(?P<value>\S+)$')
LABEL = re.compile(r'(\w+)="([^"]*)"')
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)")
CHURN_TABLES = ("fs_members", "fs_leases", "fs_cron_runs", "fs_terms")


def admin(dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(host="127.0.0.1", port=PG_PORT, user="postgres", dbname=dbname,
                           autocommit=True, connect_timeout=5, application_name=BENCH_APP)


# --- the fleet ---------------------------------------------------------------------------------


@dataclass
class ScaleFleet(Fleet):
    """A Fleet whose nodes import `supervisor` from `source` (a snapshot), when given."""

    source: Path | None = None

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.source is not None:
            env["PYTHONPATH"] = str(self.source)
        return env


def snapshot_source(into: Path, rev: str) -> tuple[Path, str]:
    """`git archive REV supervisor` unpacked under `into`; and `<sha> <subject>` of REV."""
    data = subprocess.run(["git", "archive", rev, "supervisor"], cwd=ROOT, check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    head = subprocess.run(["git", "log", "-1", "--format=%h %s", rev], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()
    return into, head


def node_config(args: argparse.Namespace, url: str, listen: str, node_id: str, port: int,
                logs: Path) -> str:
    probe = [sys.executable, "-I", "-S", str(PROBE)]
    cronprobe = [sys.executable, "-I", "-S", str(CRONPROBE)]
    lines = [
        f"database_url = {toml_value(url)}",
        f"node_id = {toml_value(node_id)}",
        'group = "bench"',
    ]
    if listen != "":
        lines.append(f"database_listen_url = {toml_value(listen)}")
    return "\n".join([
        *lines,
        "",
        "[metrics]",
        'host = "127.0.0.1"',
        f"port = {port}",
        "",
        "[workers.lead]",
        f"command = {toml_value(probe)}",
        'mode = "global-leader"',
        f"env = {{ PROBE_LOG = {toml_value(str(logs / 'lead.log'))}, "
        f"PROBE_LOCK = {toml_value(str(logs / 'lead.lock'))}, PROBE_WAIT = \"0\" }}",
        "",
        "[workers.tick]",
        f"command = {toml_value(cronprobe)}",
        'mode = "cron"',
        f"cron = {toml_value(args.cron)}",
        f"max_run = {args.max_run}",
        f"env = {{ PROBE_LOG = {toml_value(str(logs / 'cron.log'))}, "
        'CRON_RUN_SECONDS = "0.5" }',
        "",
        "[workers.local]",
        'command = ["/bin/sleep", "1000000"]',
        'mode = "every-node"',
        "",
    ])


# --- /proc -------------------------------------------------------------------------------------


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 first); None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def cpu_ticks(pid: int, *, reaped: bool = False) -> int | None:
    """utime + stime (+ cutime + cstime: reaped children) of a process, in clock ticks."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    total = int(fields[11]) + int(fields[12])
    if reaped:
        total += int(fields[13]) + int(fields[14])
    return total


def children_of(parents: set[int]) -> dict[int, int]:
    """Every live process whose parent is in `parents`: pid -> parent."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields is not None and int(fields[1]) in parents and fields[0] != "Z":
                found[int(entry)] = int(fields[1])
    return found


def status_kb(pid: int, key: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def pss_kb(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return None


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        out[key] = int(rest.split()[0])
    return out


def tcp_sockets() -> dict[int, tuple[int, str]]:
    """Socket inode -> (remote port, state hex) for every TCP socket of this namespace."""
    found: dict[int, tuple[int, str]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) > 9:
                    found[int(parts[9])] = (int(parts[2].rsplit(":", 1)[1], 16), parts[3])
    return found


def socket_inodes(pid: int) -> list[int]:
    inodes = []
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.append(int(target[8:-1]))
    return inodes


def postmaster_pid() -> int:
    with admin() as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    return int((Path(str(row[0])) / "postmaster.pid").read_text().split()[0])


# --- sampling ----------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float
    mine: Counter[str]  # this database's server connections by application_name
    server_clients: int  # every client backend of the server
    per_node: dict[str, int]  # node -> established TCP connections to the database port(s)
    pools: dict[str, Any] | None = None  # PgBouncer SHOW POOLS row of this database


class Sampler(threading.Thread):
    """Connections every `every` seconds, from the start of the fleet to its stop."""

    def __init__(self, fleet: Fleet, dbname: str, ports: set[int], bouncer: PgBouncer | None,
                 every: float) -> None:
        super().__init__(daemon=True, name="sampler")
        self.fleet = fleet
        self.dbname = dbname
        self.ports = ports
        self.bouncer = bouncer
        self.every = every
        self.samples: list[Sample] = []
        self.errors: Counter[str] = Counter()
        self.halt = threading.Event()
        self.conn = admin()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.samples.append(self.sample())
            except Exception as exc:
                self.errors[type(exc).__name__] += 1
                with contextlib.suppress(Exception):
                    self.conn.close()
                with contextlib.suppress(Exception):
                    self.conn = admin()
            self.halt.wait(self.every)
        with contextlib.suppress(Exception):
            self.conn.close()

    def sample(self) -> Sample:
        rows = self.conn.execute(
            "SELECT datname = %s, coalesce(application_name, ''), backend_type, count(*) "
            "FROM pg_stat_activity WHERE pid <> pg_backend_pid() GROUP BY 1, 2, 3",
            (self.dbname,)).fetchall()
        mine: Counter[str] = Counter()
        clients = 0
        for is_mine, app, kind, count in rows:
            if kind == "client backend":
                clients += int(count)
                if is_mine:  # newer nodes name themselves "fleet-supervisor <node id>"
                    name = APP if str(app).startswith(APP) else str(app) or "(none)"
                    mine[name] += int(count)
        sockets = tcp_sockets()
        per_node = {}
        for node_id, node in list(self.fleet.nodes.items()):
            if node.alive():
                per_node[node_id] = sum(
                    1 for inode in socket_inodes(node.pid)
                    if (s := sockets.get(inode)) is not None and s[0] in self.ports
                    and s[1] == "01")
        pools = None
        if self.bouncer is not None:
            with contextlib.suppress(psycopg.Error):
                pools = next((p for p in self.bouncer.show("POOLS")
                              if p.get("database") == self.dbname), None)
        return Sample(time.time(), mine, clients, per_node, pools)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]


# --- snapshots at the window's edges -----------------------------------------------------------


@dataclass
class Snapshot:
    at: float
    mono: float
    pg_db: dict[str, int]
    tables: dict[str, dict[str, Any]]
    server_ticks: int  # the whole PostgreSQL server
    backend_ticks: dict[int, int]  # this database's backends
    node_ticks: dict[str, int]  # supervisor processes only
    fleet_ticks: int  # every marked process, plus what the supervisors reaped
    bouncer_ticks: int | None
    machine: tuple[int, int]
    hist: dict[str, dict[tuple[str, str, str], float]]  # node -> (op, result, le|count|sum)
    pgb_stats: dict[str, Any] | None
    scrape_failed: list[str] = field(default_factory=list)


def pg_database(conn: psycopg.Connection[Any], dbname: str) -> dict[str, int]:
    keys = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted",
            "tup_returned", "tup_fetched")
    row = conn.execute(f"SELECT {', '.join(keys)} FROM pg_stat_database WHERE datname = %s",
                       (dbname,)).fetchone()
    assert row is not None
    return {k: int(v) for k, v in zip(keys, row, strict=True)}


def table_stats(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, n_live_tup, "
        "n_dead_tup, autovacuum_count, autoanalyze_count, "
        "pg_relation_size(relid), pg_total_relation_size(relid) "
        "FROM pg_stat_user_tables WHERE relname LIKE 'fs\\_%' ORDER BY relname").fetchall()
    keys = ("n_tup_ins", "n_tup_upd", "n_tup_hot_upd", "n_tup_del", "n_live_tup",
            "n_dead_tup", "autovacuum_count", "autoanalyze_count", "relation_bytes",
            "total_bytes")
    return {str(r[0]): {k: int(v) for k, v in zip(keys, r[1:], strict=True)} for r in rows}


def server_ticks(postmaster: int) -> int:
    total = cpu_ticks(postmaster, reaped=True) or 0
    for pid in children_of({postmaster}):
        total += cpu_ticks(pid) or 0
    return total


def backend_pids(conn: psycopg.Connection[Any], dbname: str) -> list[int]:
    rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND "
                        "backend_type = 'client backend' AND pid <> pg_backend_pid()",
                        (dbname,)).fetchall()
    return [int(r[0]) for r in rows]


def fleet_ticks(fleet: Fleet, marker_pids: list[int]) -> int:
    supervisors = {n.pid for n in fleet.nodes.values() if n.alive()}
    total = 0
    for pid in set(marker_pids) | supervisors:
        total += cpu_ticks(pid, reaped=pid in supervisors) or 0
    return total


def scrape(port: int) -> dict[tuple[str, str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        match = BUCKET.match(line)
        if match:
            labels = dict(LABEL.findall(match["labels"]))
            key = labels["le"] if match["kind"] == "bucket" else match["kind"]
            out[(labels.get("operation", "?"), labels.get("result", "?"), key)] = float(
                match["value"])
    return out


def scrape_all(ports: dict[str, int]) -> tuple[dict[str, dict[tuple[str, str, str], float]],
                                               list[str]]:
    found: dict[str, dict[tuple[str, str, str], float]] = {}
    failed = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        futures = {pool.submit(scrape, port): node for node, port in ports.items()}
        for future in concurrent.futures.as_completed(futures):
            try:
                found[futures[future]] = future.result()
            except Exception:
                failed.append(futures[future])
    return found, failed


class Meter:
    """Takes the snapshots at the edges of the window."""

    def __init__(self, fleet: Fleet, dbname: str, bouncer: PgBouncer | None,
                 scraped: dict[str, int]) -> None:
        self.fleet = fleet
        self.dbname = dbname
        self.bouncer = bouncer
        self.scraped = scraped
        self.postmaster = postmaster_pid()
        self.conn = admin()  # the postgres database: reading does not count as this one's
        self.dbconn = admin(dbname)  # for pg_stat_user_tables (2 transactions per snapshot)

    def take(self) -> Snapshot:
        hist, failed = scrape_all(self.scraped)
        pgb_stats = None
        if self.bouncer is not None:
            with contextlib.suppress(psycopg.Error):
                pgb_stats = next((s for s in self.bouncer.show("STATS")
                                  if s.get("database") == self.dbname), None)
        bouncer_ticks = None
        if self.bouncer is not None and self.bouncer.pid is not None:
            bouncer_ticks = cpu_ticks(self.bouncer.pid)
        return Snapshot(
            at=time.time(), mono=time.monotonic(),
            pg_db=pg_database(self.conn, self.dbname),
            tables=table_stats(self.dbconn),
            server_ticks=server_ticks(self.postmaster),
            backend_ticks={pid: cpu_ticks(pid) or 0
                           for pid in backend_pids(self.conn, self.dbname)},
            node_ticks={n.node_id: cpu_ticks(n.pid) or 0
                        for n in self.fleet.nodes.values() if n.alive()},
            fleet_ticks=fleet_ticks(self.fleet, marked_pids(self.fleet.marker)),
            bouncer_ticks=bouncer_ticks, machine=machine_cpu(), hist=hist,
            pgb_stats=pgb_stats, scrape_failed=failed)

    def close(self) -> None:
        for conn in (self.conn, self.dbconn):
            with contextlib.suppress(Exception):
                conn.close()


def memory(fleet: Fleet) -> dict[str, Any]:
    """RSS and Pss of each supervisor process, and of its watchdog, now."""
    supervisors = {n.pid: n.node_id for n in fleet.nodes.values() if n.alive()}
    kids = children_of(set(supervisors))
    watchdogs = []
    for pid in kids:
        with contextlib.suppress(OSError):
            if b"watchdog" in Path(f"/proc/{pid}/cmdline").read_bytes():
                watchdogs.append(pid)
    rss = [v for pid in supervisors if (v := status_kb(pid, "VmRSS")) is not None]
    pss = [v for pid in supervisors if (v := pss_kb(pid)) is not None]
    wd_rss = [v for pid in watchdogs if (v := status_kb(pid, "VmRSS")) is not None]
    wd_pss = [v for pid in watchdogs if (v := pss_kb(pid)) is not None]
    fleet_pss = sum(v for pid in marked_pids(fleet.marker) if (v := pss_kb(pid)) is not None)
    return {
        "supervisors": len(supervisors),
        "rss_kb_median": statistics.median(rss) if rss else None,
        "rss_kb_max": max(rss) if rss else None,
        "pss_kb_median": statistics.median(pss) if pss else None,
        "watchdogs": len(watchdogs),
        "watchdog_rss_kb_median": statistics.median(wd_rss) if wd_rss else None,
        "watchdog_pss_kb_median": statistics.median(wd_pss) if wd_pss else None,
        "fleet_pss_kb_total": fleet_pss,
        "mem_available_kb": meminfo()["MemAvailable"],
        "mem_total_kb": meminfo()["MemTotal"],
    }


# --- histograms --------------------------------------------------------------------------------


def merged_buckets(before: Snapshot, after: Snapshot, op: str | None,
                   result: str = "ok") -> tuple[list[tuple[float, float]], float, float]:
    """Cumulative (le, count) deltas over the window, summed over the nodes scraped at both
    edges, for one operation (None: all); with the count and sum deltas."""
    buckets: dict[float, float] = defaultdict(float)
    count = total = 0.0
    for node, end in after.hist.items():
        start = before.hist.get(node)
        if start is None:
            continue
        for (o, r, key), value in end.items():
            if (op is not None and o != op) or r != result:
                continue
            delta = value - start.get((o, r, key), 0.0)
            if key == "count":
                count += delta
            elif key == "sum":
                total += delta
            else:
                buckets[float("inf") if key == "+Inf" else float(key)] += delta
    return sorted(buckets.items()), count, total


def hist_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """histogram_quantile: linear inside the bucket the rank falls in; None without data."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower_le
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return None


def bucket_of(buckets: list[tuple[float, float]], q: float) -> str:
    """The bucket the q quantile falls in, as `(lo, hi]` in ms."""
    if not buckets or buckets[-1][1] <= 0:
        return "n/a"
    rank = q * buckets[-1][1]
    lower = 0.0
    for le, count in buckets:
        if count >= rank:
            hi = "inf" if le == float("inf") else f"{le * 1000:g}"
            return f"({lower * 1000:g}, {hi}] ms"
        lower = le
    return "n/a"


def calls_by_op(before: Snapshot, after: Snapshot) -> tuple[Counter[str], Counter[str]]:
    ok: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for node, end in after.hist.items():
        start = before.hist.get(node)
        if start is None:
            continue
        for (op, result, key), value in end.items():
            if key == "count":
                target = ok if result == "ok" else errors
                target[op] += int(value - start.get((op, result, key), 0.0))
    return ok, errors


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Kill:
    node: str
    child_pid: int
    token: str
    at: float
    next_at: float | None = None
    next_node: str | None = None
    child_gone_s: float | None = None

    @property
    def latency(self) -> float | None:
        return None if self.next_at is None else self.next_at - self.at


@dataclass
class Outcome:
    """Everything one run gathered, for the report."""

    args: dict[str, Any]
    source: str
    url: str
    listen: str
    max_connections: int
    other_clients_before: int
    busy_before: float = 0.0  # the machine's busy share over 3 s before the first node
    autovacuum: str = "?"
    members_at_end: int = 0  # live members when the window ended
    started_at: float = 0.0
    up_at: float | None = None
    startup_s: float = 0.0
    batches: list[dict[str, Any]] = field(default_factory=list)
    joined: dict[str, float] = field(default_factory=dict)  # node -> seconds spawn -> member
    never_joined: list[str] = field(default_factory=list)
    window: tuple[float, float] = (0.0, 0.0)
    before: Snapshot | None = None
    after: Snapshot | None = None
    mem: dict[str, Any] = field(default_factory=dict)
    kills: list[Kill] = field(default_factory=list)
    cron_rows: list[tuple[Any, ...]] = field(default_factory=list)
    tables_before_stop: dict[str, dict[str, Any]] = field(default_factory=dict)
    tables_after: dict[str, dict[str, Any]] = field(default_factory=dict)
    exited_early: dict[str, int | None] = field(default_factory=dict)
    stop_s: float = 0.0
    stop_codes: Counter[str] = field(default_factory=Counter)
    killed_at_stop: list[str] = field(default_factory=list)  # no exit within 20 s: SIGKILLed
    port_clashes: list[str] = field(default_factory=list)  # restarted on another metrics port
    swept: int = 0
    samples: list[Sample] = field(default_factory=list)
    sampler_errors: dict[str, int] = field(default_factory=dict)
    pgb_log: str = ""


def live_members(conn: psycopg.Connection[Any]) -> set[str]:
    try:
        rows = conn.execute("SELECT DISTINCT node_id FROM fs_members "
                            "WHERE expires_at > EXTRACT(EPOCH FROM clock_timestamp())").fetchall()
    except psycopg.errors.UndefinedTable:
        return set()
    return {str(r[0]) for r in rows}


def start_fleet(fleet: ScaleFleet, order: list[str], conn: psycopg.Connection[Any],
                args: argparse.Namespace, out: Outcome) -> None:
    spawned: dict[str, float] = {}
    out.started_at = time.time()
    began = time.monotonic()
    for first in range(0, len(order), args.batch):
        batch = order[first:first + args.batch]
        t0 = time.monotonic()
        for node_id in batch:
            fleet.start(fleet.nodes[node_id])
            spawned[node_id] = time.monotonic()
        last_progress = time.monotonic()
        while True:
            members = live_members(conn)
            now = time.monotonic()
            for node_id in members:
                if node_id in spawned and node_id not in out.joined:
                    out.joined[node_id] = now - spawned[node_id]
                    last_progress = now
            waiting = [n for n in batch if n not in out.joined and fleet.nodes[n].alive()]
            if not waiting or now - last_progress > args.batch_stall:
                break
            time.sleep(0.25)
        for node_id in batch:  # a free port taken before the node bound it: another one
            node = fleet.nodes[node_id]
            log = node.log_dir / f"node-{node_id}-{node.starts}.log"
            if (not node.alive() and node_id not in out.joined and log.exists()
                    and "metrics.port: cannot listen" in log.read_text(errors="replace")):
                text = node.config.read_text()
                node.config.write_text(re.sub(r"(?m)^port = \d+$", f"port = {free_port()}",
                                              text))
                out.port_clashes.append(node_id)
                fleet.start(node)
                spawned[node_id] = time.monotonic()
        joined = sum(1 for n in spawned if n in out.joined)
        out.batches.append({"nodes": len(batch), "seconds": time.monotonic() - t0,
                            "joined_so_far": joined})
        print(f"  batch {len(out.batches):2}: {len(batch)} node(s) in "
              f"{time.monotonic() - t0:5.1f} s, {joined}/{len(spawned)} live members",
              flush=True)
    # the stragglers of the last batches, for a little longer
    deadline = time.monotonic() + args.batch_stall
    while len(out.joined) < len(order) and time.monotonic() < deadline:
        now = time.monotonic()
        for node_id in live_members(conn):
            if node_id in spawned and node_id not in out.joined:
                out.joined[node_id] = now - spawned[node_id]
                deadline = now + args.batch_stall
        time.sleep(0.5)
    out.startup_s = time.monotonic() - began
    if len(out.joined) == len(order):
        out.up_at = time.time()
    out.never_joined = [n for n in order if n not in out.joined]


def leader_now(fleet: Fleet, probe_log: Path) -> tuple[Node, Any] | None:
    """The node whose probe holds the lock now (acquired, not released, alive)."""
    events = read_events(probe_log)
    released = {e.pid for e in events if e.kind == "released"}
    for event in reversed(events):
        if event.kind != "acquired":
            continue
        if event.pid in released or not pid_alive(event.pid):
            return None
        node = fleet.nodes.get(event.node)
        return (node, event) if node is not None and node.alive() else None
    return None


def kill_leader(fleet: ScaleFleet, probe_log: Path, conn: psycopg.Connection[Any],
                args: argparse.Namespace) -> Kill | None:
    found: list[tuple[Node, Any]] = []

    def ready() -> bool:
        current = leader_now(fleet, probe_log)
        found[:] = [] if current is None else [current]
        return current is not None

    try:
        wait_until("a leader", ready, timeout=60, poll=0.2)
    except TimeoutError:
        print("  no leader to kill within 60 s", flush=True)
        return None
    node, acquired = found[0]
    pidfd = os.pidfd_open(acquired.pid)
    try:
        sent = time.time()
        os.kill(node.pid, signal.SIGKILL)  # the supervisor process only
        kill = Kill(node.node_id, acquired.pid, acquired.token, sent)
        assert node.proc is not None
        node.proc.wait()

        def next_acquired() -> bool:
            for event in read_events(probe_log):
                if event.kind == "acquired" and event.at > sent and event.pid != acquired.pid:
                    kill.next_at, kill.next_node = event.at, event.node
                    return True
            return False

        if select.select([pidfd], [], [], args.kill_timeout)[0]:
            kill.child_gone_s = time.time() - sent
        with contextlib.suppress(TimeoutError):
            wait_until("the next leader", next_acquired, timeout=args.kill_timeout, poll=0.05)
    finally:
        os.close(pidfd)
    shown = "none" if kill.latency is None else f"{kill.latency:.2f} s -> {kill.next_node}"
    gone = "n/a" if kill.child_gone_s is None else f"{kill.child_gone_s:.2f} s"
    print(f"  kill -9 of leader {node.node_id}'s supervisor: old child gone after {gone}, "
          f"next leader {shown}", flush=True)
    fleet.start(node)  # back to N nodes
    with contextlib.suppress(TimeoutError):
        wait_until(f"{node.node_id} back", lambda: node.node_id in live_members(conn),
                   timeout=60, poll=0.5)
    return kill


def run(args: argparse.Namespace, workdir: Path, source: Path | None, head: str) -> Outcome:
    order = [f"n{i:03d}" for i in range(args.nodes)]
    logs = workdir / "probes"
    logs.mkdir()
    probe_log = logs / "lead.log"
    probe_log.touch()
    bouncer = None
    with admin() as conn:
        max_conn = int(conn.execute("SHOW max_connections").fetchone()[0])  # type: ignore[index]
        other = int(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                 "backend_type = 'client backend'").fetchone()[0])  # type: ignore[index]
        autovacuum = str(conn.execute("SHOW autovacuum").fetchone()[0])  # type: ignore[index]
    with scratch_database("fleet_bench_scale") as dbname:
        if args.pgbouncer:
            bouncer = PgBouncer(args.pool_size, args.max_client_conn)
            bouncer.start()
            port = bouncer.port
        else:
            port = PG_PORT
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/{dbname}"
        direct = f"postgresql+psycopg://postgres@127.0.0.1:{PG_PORT}/{dbname}"
        listen = {"auto": "none" if args.pgbouncer else "", "none": "none", "same": "",
                  "direct": direct}[args.listen]
        out = Outcome(vars(args), head, url, listen or "(database_url)", max_conn, other,
                      autovacuum=autovacuum)
        fleet = ScaleFleet(workdir, marker=workdir.name, source=source)
        metric_ports = {node_id: free_port() for node_id in order}
        for node_id in order:
            fleet.add(node_id, node_config(args, url, listen, node_id, metric_ports[node_id],
                                           logs))
        scraped = dict(list(metric_ports.items())[:args.scrape] if args.scrape else
                       metric_ports.items())
        print(f"database {dbname}; nodes reach it at 127.0.0.1:{port}"
              + (f" (PgBouncer, pool {args.pool_size}, max_client_conn "
                 f"{args.max_client_conn})" if bouncer else " (direct)")
              + f"; listen {out.listen}; work dir {workdir}", flush=True)
        conn = admin(dbname)
        m0 = machine_cpu()
        time.sleep(3)
        m1 = machine_cpu()
        out.busy_before = (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
        sampler = Sampler(fleet, dbname, {port, PG_PORT}, bouncer, args.sample_every)
        # every connection of the bench is opened before the first node: a full server
        # refuses new ones, even the superuser's, once the reserved slots are taken too
        meter = Meter(fleet, dbname, bouncer, scraped)
        try:
            sampler.start()
            print(f"starting {args.nodes} nodes in batches of {args.batch} ...", flush=True)
            start_fleet(fleet, order, conn, args, out)
            print(f"start-up: {out.startup_s:.1f} s, {len(out.joined)}/{args.nodes} live "
                  f"members; settling {args.settle:g} s", flush=True)
            time.sleep(args.settle)
            out.before = meter.take()
            print(f"measuring {args.seconds:g} s ...", flush=True)
            time.sleep(args.seconds)
            out.mem = memory(fleet)
            out.after = meter.take()
            out.members_at_end = len(live_members(conn))
            out.window = (out.before.at, out.after.at)
            for _ in range(args.kills):
                kill = kill_leader(fleet, probe_log, conn, args)
                if kill is not None:
                    out.kills.append(kill)
                time.sleep(args.settle)
            out.cron_rows = list(conn.execute(
                "SELECT tick, slot, claimed_at, state, holder_node FROM fs_cron_runs "
                "WHERE worker = 'tick'").fetchall())
            out.tables_before_stop = table_stats(conn)
            out.exited_early = {n.node_id: n.proc.returncode for n in fleet.nodes.values()
                                if n.proc is not None and n.proc.poll() is not None}
        finally:
            began = time.monotonic()
            codes = fleet.stop_all()
            out.stop_s = time.monotonic() - began
            out.stop_codes = Counter(str(c) for c in codes.values())
            out.killed_at_stop = [n for n, c in codes.items() if c is None]
            sampler.halt.set()
            out.swept = fleet.sweep()
            sampler.join(timeout=30)
            out.samples = sampler.samples
            out.sampler_errors = dict(sampler.errors)
            meter.close()
            if bouncer is not None:
                out.pgb_log = bouncer.log_tail()
                bouncer.stop()
                shutil.rmtree(bouncer.directory, ignore_errors=True)
        time.sleep(1.5)  # the stopped backends flush their statistics
        with contextlib.suppress(psycopg.Error):
            out.tables_after = table_stats(conn)
        conn.close()
    return out


# --- reading the logs --------------------------------------------------------------------------


def log_errors(workdir: Path, window: tuple[float, float]) -> dict[str, Any]:
    """`unreachable` / `refuses new connections` lines in the nodes' logs, by node and phase."""
    per_node: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for path in sorted(workdir.glob("node-*.log")):
        node = path.name.split("-")[1]
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                low = line.lower()
                if not any(word in low for word in ERROR_WORDS):
                    continue
                per_node[node] += 1
                match = LOG_TIME.match(line)
                at = (datetime.fromisoformat(match[1].replace("Z", "+00:00")).timestamp()
                      if match else 0.0)
                phase = ("start-up" if at < window[0] else "window" if at <= window[1]
                         else "after the window")
                phases[phase] += 1
                kind = re.sub(r"^\S+\s+\S+\s+", "", line)
                kind = re.sub(r"database \S+ ", "database URL ", kind)
                kind = re.sub(r"\d+(\.\d+)?\s*(ms|s)\b", "N s", kind)
                kinds[kind[:160]] += 1
    return {"nodes": len(per_node), "lines": sum(per_node.values()),
            "per_node": dict(per_node), "phases": dict(phases),
            "kinds": kinds.most_common(6)}


def cron_lag(out: Outcome, probe_dir: Path) -> dict[str, Any]:
    w0, w1 = out.window
    rows = [(float(tick), int(slot), float(claimed), str(state))
            for tick, slot, claimed, state, _node in out.cron_rows]
    runs = [r for r in rows if r[1] >= 0]
    in_window = [r for r in runs if w0 <= r[0] <= w1]
    lag = [r[2] - r[0] for r in in_window]
    after = [r[2] - r[0] for r in runs if r[0] > w1]
    per_tick = Counter(r[0] for r in in_window)
    ticks_window = {r[0] for r in rows if w0 <= r[0] <= w1}
    starts = []
    for kind, _node, _pid, _token, tick, _slot, at in read_fields(probe_dir / "cron.log", 7):
        if kind == "start":
            t = datetime.fromisoformat(tick.replace("Z", "+00:00")).timestamp()
            if w0 <= t <= w1:
                starts.append(float(at) - t)
    states = Counter(r[3] for r in rows if w0 <= r[0] <= w1)
    return {
        "runs_in_window": len(in_window),
        "ticks_in_window": len(ticks_window),
        "runs_per_tick": dict(Counter(per_tick.values())),
        "states_in_window": dict(states),
        "claim_lag_p50": statistics.median(lag) if lag else None,
        "claim_lag_p99": percentile(lag, 99),
        "claim_lag_max": max(lag) if lag else None,
        "start_lag_p50": statistics.median(starts) if starts else None,
        "start_lag_p99": percentile(starts, 99),
        "start_lag_max": max(starts) if starts else None,
        "claim_lag_after_window_max": max(after) if after else None,
    }


# --- the report --------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f} ms"


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _stats(values: list[int] | list[float]) -> str:
    if not values:
        return "n/a"
    return f"median {statistics.median(values):g}, max {max(values):g}"


def report(out: Outcome, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    n = args.nodes
    before, after = out.before, out.after
    result: dict[str, Any] = {"nodes": n, "source": out.source, "url_port": out.url,
                              "listen": out.listen}
    print()
    mode = (f"through PgBouncer (transaction mode, default_pool_size {args.pool_size}, "
            f"max_client_conn {args.max_client_conn})" if args.pgbouncer else "directly")
    print(f"== {n} nodes {mode}, PostgreSQL max_connections {out.max_connections}, "
          f"listen {out.listen}")
    print(f"   code: {out.source}; default timings (lease_ttl 10 s, renew_interval 1 s); "
          f"workers per node: global-leader probe, cron {args.cron} max_run {args.max_run} "
          "(0.5 s runs), every-node sleep")
    print(f"   other client connections on the server before the start: "
          f"{out.other_clients_before}")

    # start-up
    joined = list(out.joined.values())
    print(f"\nstart-up: {len(out.batches)} batches of {args.batch}, {out.startup_s:.1f} s "
          f"from the first spawn to {len(out.joined)}/{n} live members"
          + ("" if out.up_at else " (NOT all)"))
    print(f"   spawn -> member per node: p50 {_s(statistics.median(joined) if joined else None)}"
          f", p99 {_s(percentile(joined, 99))}, max {_s(max(joined) if joined else None)}")
    if out.never_joined:
        print(f"   never a live member: {len(out.never_joined)}: "
              + ", ".join(out.never_joined[:20]) + (" ..." if len(out.never_joined) > 20
                                                    else ""))
    if out.exited_early:
        print(f"   exited before the stop: {out.exited_early}")
    errors = log_errors(workdir, out.window)
    print(f"   nodes that ever logged a database error (unreachable / refuses new "
          f"connections): {errors['nodes']} of {n}, {errors['lines']} lines; by phase "
          f"{errors['phases'] or '{}'}")
    for kind, count in errors["kinds"]:
        print(f"     {count:5} x {kind}")
    result.update(startup_s=out.startup_s, joined=len(out.joined), never_joined=out.never_joined,
                  errors=errors, exited_early=out.exited_early)

    if before is None or after is None:
        print("\nno measuring window (the run stopped early)")
        return result
    w0, w1 = out.window
    secs = after.mono - before.mono
    result["window_s"] = secs
    result["members_at_end"] = out.members_at_end
    if 0 < out.members_at_end < n:
        print(f"\nONLY {out.members_at_end} of {n} nodes were live members at the end of the "
              f"window: every figure per node below is per live member")
        n = out.members_at_end

    # connections
    samples = out.samples
    steady = [s for s in samples if w0 <= s.at <= w1]
    print(f"\nconnections ({len(samples)} samples every {args.sample_every:g} s; steady = "
          f"median over the {len(steady)} in the window; peak = the whole run)")
    mine_total = [sum(s.mine.values()) for s in samples]
    mine_app = [s.mine.get(APP, 0) for s in samples]
    steady_total = [sum(s.mine.values()) for s in steady]
    steady_app = [s.mine.get(APP, 0) for s in steady]
    clients = [s.server_clients for s in samples]
    steady_clients = [s.server_clients for s in steady]

    def med(values: list[int]) -> float | None:
        return statistics.median(values) if values else None

    def row(label: str, peak: list[int], stead: list[int], note: str = "") -> None:
        p = max(peak) if peak else None
        m = med(stead)
        print(f"   {label:52} peak {'n/a' if p is None else p:>5}  steady "
              f"{'n/a' if m is None else f'{m:g}':>6}  {note}")

    row(f"server, this database, application_name {APP}*", mine_app, steady_app)
    row("server, this database, all", mine_total, steady_total)
    row(f"server, every client backend (max_connections {out.max_connections})", clients,
        steady_clients, "includes other users and this bench's 4")
    peak_apps = {app: max(s.mine.get(app, 0) for s in samples)
                 for app in {a for s in samples for a in s.mine}}
    print(f"   this database by application_name, peak: {dict(sorted(peak_apps.items()))}")
    per_node_steady = [c for s in steady for c in s.per_node.values()]
    per_node_last = list(steady[-1].per_node.values()) if steady else []
    per_node_peak: dict[str, int] = defaultdict(int)
    for s in samples:
        for node, c in s.per_node.items():
            per_node_peak[node] = max(per_node_peak[node], c)
    target = "PgBouncer" if args.pgbouncer else "the server"
    print(f"   per node, TCP connections of the supervisor process to {target}"
          + (" and 5432" if args.pgbouncer else "") + ":")
    print(f"     in the window (all samples): {_stats(per_node_steady)}; "
          f"last sample: {_stats(per_node_last)}; peak per node: "
          f"{_stats(list(per_node_peak.values()))}; "
          f"distribution of peaks {dict(sorted(Counter(per_node_peak.values()).items()))}")
    result["connections"] = {
        "server_this_db_peak": max(mine_total) if mine_total else None,
        "server_this_db_steady": med(steady_total),
        "server_all_clients_peak": max(clients) if clients else None,
        "server_all_clients_steady": med(steady_clients),
        "per_node_window_median": med(per_node_steady),
        "per_node_window_max": max(per_node_steady) if per_node_steady else None,
        "per_node_peak_distribution": dict(Counter(per_node_peak.values())),
    }
    if args.pgbouncer:
        pools = [s.pools for s in samples if s.pools]
        spools = [s.pools for s in steady if s.pools]

        def pool_field(rows: list[dict[str, Any]], key: str) -> list[int]:
            return [int(r.get(key) or 0) for r in rows]

        for key in ("cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "maxwait"):
            print(f"   pgbouncer SHOW POOLS {key:10}: peak "
                  f"{max(pool_field(pools, key), default=0):>5}, steady median "
                  f"{med(pool_field(spools, key)) or 0:g}")
        result["pgbouncer_pools_peak"] = {k: max(pool_field(pools, k), default=0)
                                          for k in ("cl_active", "cl_waiting", "sv_active",
                                                    "sv_idle", "maxwait")}
    if out.sampler_errors:
        print(f"   sampler errors: {out.sampler_errors}")

    # load
    d = {k: after.pg_db[k] - before.pg_db[k] for k in after.pg_db}
    xacts = d["xact_commit"] + d["xact_rollback"]
    print(f"\ndatabase load over the {secs:.1f} s window (pg_stat_database, this database)")
    print(f"   transactions/s  {xacts / secs:8.1f} total  {xacts / secs / n:6.2f} per node   "
          f"(rollbacks {d['xact_rollback']})")
    result["xact_per_s"] = xacts / secs
    result["xact_per_s_per_node"] = xacts / secs / n
    if args.pgbouncer and before.pgb_stats and after.pgb_stats:
        q = int(after.pgb_stats["total_query_count"]) - int(before.pgb_stats["total_query_count"])
        x = int(after.pgb_stats["total_xact_count"]) - int(before.pgb_stats["total_xact_count"])
        wait_us = (int(after.pgb_stats["total_wait_time"])
                   - int(before.pgb_stats["total_wait_time"]))
        xtime = (int(after.pgb_stats["total_xact_time"])
                 - int(before.pgb_stats["total_xact_time"]))
        print(f"   statements/s    {q / secs:8.1f} total  {q / secs / n:6.2f} per node   "
              f"(PgBouncer total_query_count: every statement on the wire, BEGIN, SET LOCAL "
              f"and COMMIT included; {q / x if x else 0:.1f} per transaction)")
        print(f"   PgBouncer: {x / secs:.1f} transactions/s, mean transaction time "
              f"{xtime / x / 1000 if x else 0:.2f} ms (server connection held), client wait "
              f"for a server connection {wait_us / 1e6:.2f} s in total over the window")
        result["statements_per_s"] = q / secs
        result["statements_per_s_per_node"] = q / secs / n
        result["pgbouncer_mean_xact_ms"] = xtime / x / 1000 if x else None
        result["pgbouncer_wait_s"] = wait_us / 1e6
        result["pgbouncer_pool_busy"] = xtime / 1e6 / secs / args.pool_size
        print(f"   PgBouncer server pool busy (transaction time / window / pool size): "
              f"{result['pgbouncer_pool_busy']:.1%}")
    else:
        print("   statements/s    not counted directly (pg_stat_statements is not loaded; "
              "through PgBouncer its total_query_count counts them)")
    rows = (f"inserted {d['tup_inserted'] / secs:.1f}/s, updated {d['tup_updated'] / secs:.1f}"
            f"/s, deleted {d['tup_deleted'] / secs:.1f}/s")
    print(f"   rows            {rows}")
    for name in CHURN_TABLES:
        tb, ta = before.tables.get(name), after.tables.get(name)
        if tb and ta:
            upd = ta["n_tup_upd"] - tb["n_tup_upd"]
            hot = ta["n_tup_hot_upd"] - tb["n_tup_hot_upd"]
            ins = ta["n_tup_ins"] - tb["n_tup_ins"]
            print(f"     {name:14} updates/s {upd / secs:7.1f} ({upd / secs / n:.2f} per node, "
                  f"HOT {hot / upd if upd else 0:.0%}), inserts/s {ins / secs:6.2f}")
    ok, errs = calls_by_op(before, after)
    scraped = len([k for k in after.hist if k in before.hist])
    if scraped:
        per = ", ".join(f"{op} {c / secs / scraped:.2f}" for op, c in ok.most_common())
        print(f"   the nodes' own database calls/s per node ({scraped} scraped): {per}")
        if errs:
            print(f"   failed calls in the window (all scraped nodes): {dict(errs)}")
    result["calls_per_s_per_node"] = {op: c / secs / max(scraped, 1) for op, c in ok.items()}
    result["failed_calls"] = dict(errs)

    # latency
    print("\ndatabase call latency in the window "
          f"(supervisor_db_operation_duration_seconds, {scraped} nodes, "
          "bucket deltas; buckets 1, 2.5, 5, 10, 25, 50, 100, 250 ms ...; values "
          "interpolated inside a bucket)")
    lat: dict[str, Any] = {}
    for op in ("node_sync", "cron_claim", None):
        buckets, count, total = merged_buckets(before, after, op)
        label = op or "all operations"
        p50, p99 = hist_quantile(buckets, 0.5), hist_quantile(buckets, 0.99)
        mean = total / count if count else None
        print(f"   {label:15} n {int(count):7}  mean {_ms(mean):>9}  p50 {_ms(p50):>9} "
              f"in {bucket_of(buckets, 0.5):14} p99 {_ms(p99):>9} in {bucket_of(buckets, 0.99)}")
        lat[label] = {"n": count, "mean": mean, "p50": p50, "p99": p99}
    if after.scrape_failed or before.scrape_failed:
        print(f"   scrapes failed: before {len(before.scrape_failed)}, after "
              f"{len(after.scrape_failed)}")
    result["latency"] = lat

    # CPU and memory
    cores = os.cpu_count() or 1
    pg_cpu = (after.server_ticks - before.server_ticks) / HZ / secs
    # backends that came after the first snapshot count from 0; those gone by the second
    # are missing (a pooled connection lives long, so few)
    backend = sum(t - before.backend_ticks.get(pid, 0)
                  for pid, t in after.backend_ticks.items()) / HZ / secs
    common = [k for k in after.node_ticks if k in before.node_ticks]
    node_cpu = [(after.node_ticks[k] - before.node_ticks[k]) / HZ / secs for k in common]
    sup_cpu = sum(node_cpu)
    fleet_cpu = (after.fleet_ticks - before.fleet_ticks) / HZ / secs
    busy = (after.machine[0] - before.machine[0]) / max(1, after.machine[1] - before.machine[1])
    print(f"\nCPU over the window (cores; this machine has {cores})")
    print(f"   PostgreSQL server, all databases  {pg_cpu:6.3f}  ({pg_cpu / n * 100:.2f} per 100 "
          "nodes; other users of the server included)")
    print(f"   this database's backends          {backend:6.3f}")
    print(f"   supervisor processes              {sup_cpu:6.3f}  (per node median "
          f"{statistics.median(node_cpu) * 1000 if node_cpu else 0:.1f} ms/s, max "
          f"{max(node_cpu) * 1000 if node_cpu else 0:.1f} ms/s)")
    print(f"   the whole fleet (+watchdogs, workers, reaped cron runs) {fleet_cpu:6.3f}")
    bouncer_cpu = None
    if after.bouncer_ticks is not None and before.bouncer_ticks is not None:
        bouncer_cpu = (after.bouncer_ticks - before.bouncer_ticks) / HZ / secs
        print(f"   PgBouncer                         {bouncer_cpu:6.3f}")
    print(f"   machine busy                      {busy * cores:6.3f}  ({busy:.0%} of "
          f"{cores} cores; load average now {os.getloadavg()[0]:.2f}; before the fleet "
          f"started: {out.busy_before * cores:.3f})")
    result["cpu"] = {"postgres": pg_cpu, "backends": backend, "supervisors": sup_cpu,
                     "per_node_median": statistics.median(node_cpu) if node_cpu else None,
                     "fleet": fleet_cpu, "pgbouncer": bouncer_cpu, "machine_busy": busy,
                     "machine_busy_before": out.busy_before}
    mem = out.mem
    print(f"\nmemory at the end of the window: supervisor VmRSS median "
          f"{(mem.get('rss_kb_median') or 0) / 1024:.1f} MiB, max "
          f"{(mem.get('rss_kb_max') or 0) / 1024:.1f} MiB, Pss median "
          f"{(mem.get('pss_kb_median') or 0) / 1024:.1f} MiB; watchdog RSS median "
          f"{(mem.get('watchdog_rss_kb_median') or 0) / 1024:.1f} MiB (Pss "
          f"{(mem.get('watchdog_pss_kb_median') or 0) / 1024:.1f}); the whole fleet's Pss "
          f"{mem.get('fleet_pss_kb_total', 0) / 1048576:.2f} GiB; MemAvailable "
          f"{mem.get('mem_available_kb', 0) / 1048576:.1f} of "
          f"{mem.get('mem_total_kb', 0) / 1048576:.1f} GiB")
    result["memory"] = mem

    # failover and cron
    print(f"\nfailover under load (kill -9 of the leader's supervisor -> next `acquired`; "
          f"lease_ttl 10 s): {', '.join(_s(k.latency) for k in out.kills) or 'not run'}"
          + (f"; old child gone after {', '.join(_s(k.child_gone_s) for k in out.kills)}"
             if out.kills else ""))
    result["failover_s"] = [k.latency for k in out.kills]
    lag = cron_lag(out, workdir / "probes")
    print(f"cron {args.cron}, max_run {args.max_run}, ticks in the window: "
          f"{lag['ticks_in_window']}, runs {lag['runs_in_window']}, runs per tick "
          f"{lag['runs_per_tick']}, states {lag['states_in_window']}")
    print(f"   tick -> claim committed (database clock): p50 {_ms(lag['claim_lag_p50'])}, "
          f"p99 {_ms(lag['claim_lag_p99'])}, max {_ms(lag['claim_lag_max'])}; tick -> "
          f"child running (probe): p50 {_ms(lag['start_lag_p50'])}, p99 "
          f"{_ms(lag['start_lag_p99'])}, max {_ms(lag['start_lag_max'])}; during the "
          f"failovers max {_ms(lag['claim_lag_after_window_max'])}")
    result["cron"] = lag

    # bloat
    print("\ntables at the end of the run, before the stop (pg_stat_user_tables, whole run "
          f"incl. start-up; this server has autovacuum = {out.autovacuum})")
    print(f"   {'table':16}{'updates':>9}{'HOT':>7}{'live':>7}{'dead':>7}{'heap':>10}"
          f"{'total':>10}{'autovac':>8}  bytes/live row")
    tables = out.tables_before_stop or after.tables
    for name in CHURN_TABLES:
        t = tables.get(name)
        if not t:
            continue
        hot = t["n_tup_hot_upd"] / t["n_tup_upd"] if t["n_tup_upd"] else 0.0
        per_row = t["total_bytes"] / t["n_live_tup"] if t["n_live_tup"] else 0.0
        print(f"   {name:16}{t['n_tup_upd']:>9}{hot:>7.0%}{t['n_live_tup']:>7}"
              f"{t['n_dead_tup']:>7}{t['relation_bytes'] / 1024:>8.0f}Ki"
              f"{t['total_bytes'] / 1024:>8.0f}Ki{t['autovacuum_count']:>8}  {per_row:,.0f}")
    result["tables"] = tables
    hot_members = tables.get("fs_members", {})
    if hot_members.get("n_tup_upd"):
        share = hot_members["n_tup_hot_upd"] / hot_members["n_tup_upd"]
        print(f"   fs_members heartbeats: {share:.0%} HOT"
              + (" (expires_at is indexed: fs_members_expires, so a heartbeat that moves it "
                 "can never be HOT)" if share < 0.5 else ""))
    print(f"\nstop: SIGTERM to every node, all exited within {out.stop_s:.1f} s; exit codes "
          f"{dict(out.stop_codes)}; swept {out.swept} process(es) left behind"
          + (f"; SIGKILLed after 20 s (or killed earlier by the bench): {out.killed_at_stop}"
             if out.killed_at_stop else ""))
    crashes = [p.name for p in sorted(workdir.glob("node-*.log"))
               if "Event loop is closed" in p.read_text(errors="replace")]
    if crashes:
        print(f"   'Event loop is closed' tracebacks at exit: {len(crashes)}: {crashes[:10]}")
    if out.port_clashes:
        print(f"   metrics port taken by someone else (bench artefact), restarted on another: "
              f"{out.port_clashes}")
    if args.pgbouncer and out.pgb_log:
        print(f"pgbouncer log tail: {out.pgb_log[-300:]}")
    result["limits"] = limits(result, args, out)
    return result


def limits(result: dict[str, Any], args: argparse.Namespace, out: Outcome) -> dict[str, Any]:
    """Which resource runs out first, by linear extrapolation of this run's figures."""
    n = args.nodes  # processes: their CPU and memory
    members = out.members_at_end if 0 < out.members_at_end < n else n  # the database's load
    cores = os.cpu_count() or 1
    conn = result.get("connections", {})
    cpu = result.get("cpu", {})
    mem = result.get("memory", {})
    est: dict[str, float | None] = {}
    per_node_peak = max((int(k) for k in conn.get("per_node_peak_distribution", {})),
                        default=0)
    if args.pgbouncer:
        est["connections (PgBouncer max_client_conn, a setting)"] = (
            args.max_client_conn / per_node_peak if per_node_peak else None)
        if result.get("pgbouncer_pool_busy"):
            est[f"PgBouncer server pool ({args.pool_size} connections all busy)"] = (
                members / result["pgbouncer_pool_busy"])
    else:
        est["connections, a server of its own (max_connections - 3)"] = (
            (out.max_connections - 3) / per_node_peak if per_node_peak else None)
        est["connections on this shared server (- others before)"] = (
            (out.max_connections - 3 - out.other_clients_before) / per_node_peak
            if per_node_peak else None)
    if cpu.get("postgres"):
        est["database CPU (one core for PostgreSQL)"] = members / cpu["postgres"]
    if cpu.get("supervisors"):
        est[f"supervisor CPU (all {cores} cores of this host)"] = n * cores / cpu["supervisors"]
    if mem.get("pss_kb_median"):
        per = mem["pss_kb_median"] + (mem.get("watchdog_pss_kb_median") or 0)
        est["RAM (MemTotal of this host)"] = mem["mem_total_kb"] / per
    print("\nlimits: nodes at which each resource runs out, extrapolated linearly from this run")
    for name, value in est.items():
        print(f"   {name:54} {'n/a' if value is None else f'{value:8.0f}'}")
    refused = result.get("errors", {}).get("kinds", [])
    first = min(((v, k) for k, v in est.items() if v is not None), default=(None, "n/a"))
    print(f"   first: {first[1]}"
          + ("; and nodes were refused connections in this very run"
             if any("refuses new connections" in str(k) for k, _ in refused) else ""))
    return {"estimates": est, "first": first[1]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--pgbouncer", action="store_true",
                        help="the nodes reach PostgreSQL through a PgBouncer this script starts")
    parser.add_argument("--pool-size", type=int, default=20, help="PgBouncer default_pool_size")
    parser.add_argument("--max-client-conn", type=int, default=300)
    parser.add_argument("--listen", choices=("auto", "none", "same", "direct"), default="auto",
                        help="database_listen_url: auto = none through PgBouncer, else "
                        "database_url itself; direct = a direct URL to 5432")
    parser.add_argument("--seconds", type=float, default=120.0, help="measured window")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds after the start-up and after each kill")
    parser.add_argument("--batch", type=int, default=10, help="nodes started at once")
    parser.add_argument("--batch-stall", type=float, default=15.0,
                        help="move on when no node joined for this long")
    parser.add_argument("--kills", type=int, default=2, help="leader kill -9 rounds")
    parser.add_argument("--kill-timeout", type=float, default=40.0)
    parser.add_argument("--cron", default="@every 5s")
    parser.add_argument("--max-run", type=int, default=2)
    parser.add_argument("--scrape", type=int, default=0,
                        help="nodes whose metrics are scraped (0: all)")
    parser.add_argument("--sample-every", type=float, default=3.0)
    parser.add_argument("--source", choices=("head", "worktree"), default="head",
                        help="the nodes run `git archive HEAD` (default) or the working tree")
    parser.add_argument("--rev", default="HEAD",
                        help="the commit whose supervisor/ the nodes run (with --source head)")
    parser.add_argument("--no-json", action="store_true",
                        help="do not write bench/results/ (JSON and the nodes' logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not preflight():
        return 1
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fleet-scale-src-") as src, \
            bench_workdir(f"scale-{args.nodes}{'-pgb' if args.pgbouncer else ''}",
                          keep=not args.no_json) as (workdir, out_path):
        source: Path | None = None
        if args.source == "head":
            source, head = snapshot_source(Path(src), args.rev)
        else:
            head = "working tree: " + subprocess.run(
                ["git", "log", "-1", "--format=%h %s"], cwd=ROOT, capture_output=True,
                text=True).stdout.strip()
        outcome = run(args, workdir, source, head)
        result = report(outcome, workdir, args)
    elapsed = time.monotonic() - began
    print(f"\nwhole run {elapsed:.0f} s")
    write_results(out_path, {"args": vars(args), "elapsed_s": elapsed, "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
