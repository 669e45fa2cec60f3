"""Benchmark: cron ticks on PostgreSQL: start lag, runs per tick, and what they cost the database.

A benchmark that also checks guarantee 6: it prints figures (and writes JSON plus the nodes'
logs and the probe log to bench/results/) and exits non-zero when it could not run, or when
an inner tick did not have exactly max_run runs, by the runs' own records or by the
database's history. Run it with the project's interpreter:
`.venv/bin/python bench/cron.py [--nodes N] [--duration SECONDS]`.

Set-up: a database of its own on 127.0.0.1:5432 (dropped at the end), --nodes nodes (default
5; `supervisor run -c FILE`, the DEFAULT [coordination] timings: lease_ttl 10 s,
renew_interval 1 s, renew_deadline 5 s; metrics on 127.0.0.1), each declaring one worker,
`job`: mode "cron", cron "@every 1s", max_run 2, overlap "allow", misfire_grace 1s, running
the tests' cron probe, tests/workers/cronprobe.py, for --run-seconds (0.2 s). The probe
appends `start|end <node> <pid> <token> <tick> <slot> <time>` to a shared log, with <tick> as
given in SUPERVISOR_CRON_TICK and <time> its own time.time() (same host, so the same clock
as PostgreSQL's). Once all nodes are live members the bench waits --settle seconds, then
measures over --duration seconds, from half a period after a tick to half a period after
another, so that no claim is in flight when counters are read. The ticks due inside that
window are the inner ticks (all nodes up, none stopped yet); the nodes run one more second
before they are stopped, so every inner tick's runs have started and ended.

- tick start lag = the probe's own time.time() at start minus the tick, for every run of an
  inner tick (so it includes starting a Python child, about 15 ms); split, for the
  outliers, into tick -> claimed (claimed_at in fs_cron_runs, the database's clock in the
  claim's INSERT) and claimed -> child started;
- runs per tick = `start` lines per inner tick: exactly max_run (or one per node, with
  fewer nodes than that) on every one is the PASS, on distinct slots and nodes, and never
  more than max_run on any tick; and the database agrees: every inner tick has that many
  `succeeded` rows in SqlStore.cron_runs(), the same tokens, nodes and slots as the runs saw;
- statements per node per second: bench/dbload.py's method, over the same window:
  pg_stat_statements when the server has it loaded, otherwise derived from every node's
  own count of database calls by operation
  (supervisor_db_operation_duration_seconds_count) and of claims by result
  (supervisor_cron_claims_total), times the statements each issues on PostgreSQL
  (supervisor/store/sql_nodes.py and sql_cron.py, overlap "allow"; BEGIN/COMMIT not counted),
  scaled to the transactions pg_stat_database counted:
    node_sync     = INSERT .. ON CONFLICT .. RETURNING (heartbeat, returns the database
                    clock) + UPDATE + SELECT (renewing runs, when the node has one going)
    cron_claim    = SELECT now (alone when the claim came early and is retried a few ms
                    later) + SELECT tick record + SELECT slots taken + INSERT .. ON CONFLICT
                    DO NOTHING + SELECT back + SELECT tick record: 6 when it won a slot; 3
                    when it saw every slot taken; +3 (INSERT, SELECT back, SELECT node
                    slot) per slot it tried and lost to a concurrent claim
    cron_finish   = UPDATE + SELECT back;   maintain = UPDATE + SELECT on fs_terms and on
                    fs_cron_runs (+ DELETE when there is history to prune)
  How many claims lost an insert race is not visible from outside, so the derived figure is
  a range: from none lost to every claim losing every slot it could have raced for. How
  many syncs renewed a run is estimated: each node's syncs times the share of the window in
  which it had a run going (claimed_at to ended_at).
- with --count-wire, the nodes reach PostgreSQL through a proxy in this process that counts
  what they send over the same window: Execute messages (extended protocol) plus simple
  Query messages other than BEGIN/COMMIT/ROLLBACK, an exact count that pins where in that
  range the fleet is (at the cost of one more hop on every round trip).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import statistics
import struct
import sys
import textwrap
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dbload import LABEL, pg_counters, pg_stat_statements_loaded, scrape, statement_calls
from pgfleet import (
    Fleet,
    config_head,
    database_url,
    free_port,
    percentile,
    preflight,
    query,
    scratch_database,
    toml_value,
)
from procs import ROOT, bench_workdir, read_fields, wait_until, write_results

from supervisor.store import CronRunRecord
from supervisor.store.sql import SqlStore

CRONPROBE = ROOT / "tests" / "workers" / "cronprobe.py"
WORKER = "job"
PERIOD = 1.0  # "@every 1s"
LAG_TARGET = 0.5  # SPEC.md "How fast": a cron tick starts within half a second
CLAIMS = re.compile(r'^supervisor_cron_claims_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$')

# Statements per call on PostgreSQL (see the module docstring), steady state.
PER_CALL = {"node_sync": 1, "cron_finish": 2, "maintain": 4, "cron_recorded": 2,
            "cron_earlier_running": 1, "db_now": 1, "node_leave": 1}
RENEW_RUNS = 2  # added to a node_sync that renews runs
CLAIM_EARLY = 1
CLAIM_BASE = {"acquired": 6, "full": 3, "missed": 3, "overlap": 3}
LOST_RACE = 3  # per slot a claim tried to insert and lost


@dataclass(frozen=True)
class Start:
    node: str
    pid: int
    token: int
    tick: float
    slot: int
    at: float


class WireCounter:
    """A TCP proxy to PostgreSQL at 127.0.0.1:5432 that counts the statements its clients send
    (--count-wire): Execute messages, and simple Query messages by whether they are BEGIN,
    COMMIT or ROLLBACK. The server has ssl off, so the protocol is readable."""

    TXN = (b"BEGIN", b"COMMIT", b"ROLLBACK")
    NOT_STARTUP = (80877103, 80877104)  # SSLRequest, GSSENCRequest: the startup comes next

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        threading.Thread(target=self._loop.run_forever, daemon=True, name="wire").start()

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _handle(self, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", 5432)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(self._pump(client_r, server_w, self._count),
                             self._pump(server_r, client_w, None), return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    count: Any) -> None:
        state = {"buf": b"", "started": False}
        try:
            while data := await reader.read(65536):
                writer.write(data)
                if count is not None:
                    count(state, data)
                await writer.drain()
        finally:
            writer.close()

    def _count(self, state: dict[str, Any], data: bytes) -> None:
        buf = state["buf"] + data
        while True:
            if not state["started"]:  # untyped: length, then a request code or protocol
                if len(buf) < 8 or len(buf) < struct.unpack("!I", buf[:4])[0]:
                    break
                length, code = struct.unpack("!II", buf[:8])
                state["started"] = code not in self.NOT_STARTUP
                buf = buf[length:]
                continue
            if len(buf) < 5 or len(buf) < 1 + struct.unpack("!I", buf[1:5])[0]:
                break
            kind, length = buf[:1], struct.unpack("!I", buf[1:5])[0]
            body, buf = buf[5:1 + length], buf[1 + length:]
            key = {b"E": "execute", b"Q": "query"}.get(kind)
            if key == "query" and body.rstrip(b"\0").strip().upper() in self.TXN:
                key = "begin/commit"
            if key is not None:
                with self._lock:
                    self.counts[key] += 1
        state["buf"] = buf


def parse_tick(text: str) -> float:
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp(), 3)


def read_starts(path: Path) -> list[Start]:
    return [Start(node, int(pid), int(token), parse_tick(tick), int(slot), float(at))
            for kind, node, pid, token, tick, slot, at in read_fields(path, 7)
            if kind == "start"]


def node_ids(count: int) -> list[str]:
    return [chr(ord("a") + i) for i in range(count)] if count <= 26 else [
        f"n{i:03d}" for i in range(count)]


def node_config(dbname: str, node_id: str, port: int, probe_log: Path,
                args: argparse.Namespace, wire: WireCounter | None) -> str:
    probe = [sys.executable, "-I", "-S", str(CRONPROBE)]
    head = config_head(dbname, node_id)
    if wire is not None:
        head = [line.replace("@127.0.0.1:5432/", f"@127.0.0.1:{wire.port}/") for line in head]
    return "\n".join([
        *head,
        'host = "127.0.0.1"',
        f"port = {port}",
        "",
        f"[workers.{WORKER}]",
        f"command = {toml_value(probe)}",
        'mode = "cron"',
        'cron = "@every 1s"',
        f"max_run = {args.max_run}",
        'overlap = "allow"',
        f"misfire_grace = {toml_value(args.misfire_grace)}",
        f"env = {{ PROBE_LOG = {toml_value(str(probe_log))}, "
        f"CRON_RUN_SECONDS = {toml_value(str(args.run_seconds))} }}",
        "",
    ])


def scrape_claims(port: int) -> Counter[str]:
    """The node's cron claims so far, by result (acquired, full, missed, overlap, error)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    claims: Counter[str] = Counter()
    for line in text.splitlines():
        match = CLAIMS.match(line)
        if match:
            labels = dict(LABEL.findall(match["labels"]))
            claims[labels.get("result", "?")] += int(float(match["value"]))
    return claims


def history(dbname: str) -> list[CronRunRecord]:
    store = SqlStore(database_url(dbname))
    try:
        return store.cron_runs(worker=WORKER, limit=1_000_000)
    finally:
        store.close()


def sleep_to_phase(phase: float) -> float:
    """Sleep until `phase` of a period after a tick (wall clock); time.time() then."""
    now = time.time()
    target = math.floor(now / PERIOD) * PERIOD + phase * PERIOD
    if target <= now + 0.05:
        target += PERIOD
    time.sleep(target - now)
    return time.time()


@dataclass
class Window:
    t0: float  # time.time() at the start of the window
    t1: float
    seconds: float  # monotonic length
    pg: dict[str, int]  # pg_stat_database deltas
    pgss: int | None  # pg_stat_statements calls, when loaded
    calls: dict[str, Counter[str]]  # per node: database calls by operation
    claims: dict[str, Counter[str]]  # per node: claims by result
    wire: Counter[str] | None  # --count-wire: what the nodes sent, by kind
    load: tuple[float, float]  # 1-minute load average before and after


def run(args: argparse.Namespace, workdir: Path, use_pgss: bool
        ) -> tuple[Window, list[Start], list[CronRunRecord], bool]:
    probe_log = workdir / "cron-probe.log"
    names = node_ids(args.nodes)
    wire = WireCounter() if args.count_wire else None
    with scratch_database("fleet_bench_cron") as dbname:
        fleet = Fleet(workdir, marker=workdir.name)
        ports = {node_id: free_port() for node_id in names}
        try:
            for node_id in names:
                fleet.start(fleet.add(node_id, node_config(dbname, node_id, ports[node_id],
                                                           probe_log, args, wire)))
            print(f"database {dbname}, work dir {workdir}, {args.nodes} nodes starting ...",
                  flush=True)

            def settled() -> bool:
                with contextlib.suppress(Exception):  # the schema may not exist yet
                    live = query(dbname, "SELECT count(DISTINCT node_id) FROM fs_members "
                                 "WHERE expires_at > EXTRACT(EPOCH FROM clock_timestamp())")
                    return bool(int(live[0][0]) == args.nodes)
                return False

            wait_until(f"{args.nodes} live nodes", settled, timeout=120, poll=0.5)
            time.sleep(args.settle)
            load0 = os.getloadavg()[0]
            t0 = sleep_to_phase(0.5)
            began = time.monotonic()
            before_calls = {n: scrape(p) for n, p in ports.items()}
            before_claims = {n: scrape_claims(p) for n, p in ports.items()}
            before_pg = pg_counters(dbname)
            before_wire = wire.snapshot() if wire else Counter()
            before_pgss = statement_calls(dbname) if use_pgss else 0
            print(f"measuring {args.duration:g} s ...", flush=True)
            time.sleep(max(0.0, args.duration - 0.6))
            t1 = sleep_to_phase(0.5)
            after_pg = pg_counters(dbname)
            after_wire = wire.snapshot() if wire else Counter()
            after_pgss = statement_calls(dbname) if use_pgss else 0
            after_calls = {n: scrape(p) for n, p in ports.items()}
            after_claims = {n: scrape_claims(p) for n, p in ports.items()}
            seconds = time.monotonic() - began
            load1 = os.getloadavg()[0]
            time.sleep(PERIOD + args.run_seconds + 0.5)  # the last inner tick's runs end
            alive = all(node.alive() for node in fleet.nodes.values())
        finally:
            fleet.stop_all()
            left = fleet.sweep()
            if left:
                print(f"swept {left} process(es) left behind", flush=True)
            if wire is not None:
                wire.close()
        records = history(dbname)
    window = Window(
        t0, t1, seconds, {k: after_pg[k] - before_pg[k] for k in after_pg},
        after_pgss - before_pgss if use_pgss else None,
        {n: after_calls[n] - before_calls[n] for n in names},
        {n: after_claims[n] - before_claims[n] for n in names},
        after_wire - before_wire if wire else None,
        (load0, load1),
    )
    return window, read_starts(probe_log), records, alive


def inner_ticks(window: Window) -> list[float]:
    first, last = math.ceil(window.t0 / PERIOD), math.floor(window.t1 / PERIOD)
    return [round(i * PERIOD, 3) for i in range(first, last + 1)]


def check_runs(ticks: list[float], starts: list[Start], records: list[CronRunRecord],
               max_run: int, nodes: int) -> tuple[Counter[int], list[str]]:
    """The runs-per-tick histogram over the inner ticks, and every way they fail the check
    (guarantee 6: exactly max_run where at least max_run nodes are live and healthy)."""
    expected = min(max_run, nodes)
    by_tick: dict[float, list[Start]] = defaultdict(list)
    for start in starts:
        by_tick[start.tick].append(start)
    rows: dict[float, list[CronRunRecord]] = defaultdict(list)
    for record in records:
        rows[round(record.tick, 3)].append(record)
    histogram: Counter[int] = Counter()
    problems = []
    for tick in ticks:
        got = by_tick.get(tick, [])
        histogram[len(got)] += 1
        stamp = time.strftime("%H:%M:%S", time.gmtime(tick))
        if len(got) != expected:
            problems.append(f"tick {stamp}: {len(got)} runs started, not {expected}")
        if len({s.slot for s in got}) != len(got) or len({s.node for s in got}) != len(got):
            problems.append(f"tick {stamp}: a slot or a node ran twice: {got}")
        states = Counter(r.state for r in rows.get(tick, []))
        if states != Counter({"succeeded": expected}):
            problems.append(f"tick {stamp}: history shows {dict(states)}, not "
                            f"{expected} succeeded")
        seen = {(s.token, s.node, s.slot) for s in got}
        recorded = {(r.token, r.holder.node_id if r.holder else None, r.slot)
                    for r in rows.get(tick, []) if r.slot >= 0}
        if seen != recorded:
            problems.append(f"tick {stamp}: runs saw {sorted(seen)}, history has "
                            f"{sorted(recorded, key=str)}")
    for tick, got in by_tick.items():  # every tick, inner or not: never more than max_run
        if len(got) > max_run:
            problems.append(f"tick {tick}: {len(got)} runs > max_run {max_run}")
    return histogram, problems


def stats(values: list[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": statistics.median(values) if values else None,
        "p95": percentile(values, 95),
        "max": max(values) if values else None,
    }


def statements(window: Window, records: list[CronRunRecord], max_run: int
               ) -> dict[str, Any]:
    """Derived statements per node over the window (see the module docstring), as a range
    over lost insert races; and the nodes' own call and claim counts."""
    in_window = [r for r in records if window.t0 < r.tick <= window.t1 and r.slot >= 0]
    per_node: dict[str, Any] = {}
    for node_id, calls in window.calls.items():
        claims = window.claims[node_id]
        mine = [r for r in in_window if r.holder is not None and r.holder.node_id == node_id]
        busy = sum((r.ended_at or r.claimed_at) - r.claimed_at for r in mine)
        syncs = calls.get("node_sync", 0)
        renewing = syncs * min(1.0, busy / (window.t1 - window.t0))
        decided = sum(n for result, n in claims.items() if result != "error")
        early = max(0, calls.get("cron_claim", 0) - decided)
        low = float(sum(PER_CALL.get(op, 1) * n for op, n in calls.items()
                        if op != "cron_claim"))
        low += RENEW_RUNS * renewing + CLAIM_EARLY * early
        low += sum(CLAIM_BASE.get(result, 1) * n for result, n in claims.items())
        races = sum(r.slot for r in mine) + max_run * claims.get("full", 0)
        per_node[node_id] = {
            "calls": dict(calls), "claims": dict(claims), "early_claims": early,
            "runs": len(mine), "busy_s": busy, "syncs_renewing_runs": renewing,
            "statements_low": low, "statements_high": low + LOST_RACE * races,
        }
    return per_node


def cost(window: Window, per_node: dict[str, Any], nodes: int) -> dict[str, Any]:
    xacts = window.pg["xact_commit"] + window.pg["xact_rollback"]
    node_calls = sum(sum(n["calls"].values()) for n in per_node.values())
    secs = window.seconds
    low = sum(n["statements_low"] for n in per_node.values())
    high = sum(n["statements_high"] for n in per_node.values())
    result: dict[str, Any] = {
        "window_s": secs,
        "pg_delta": window.pg,
        "xact_per_s_per_node": xacts / secs / nodes,
        "node_calls_per_s_per_node": node_calls / secs / nodes,
        "rows_written_per_s_per_node": (window.pg["tup_inserted"] + window.pg["tup_updated"]
                                        + window.pg["tup_deleted"]) / secs / nodes,
    }
    if window.pgss is not None:
        result["statements_per_s_per_node"] = window.pgss / secs / nodes
        result["statements_source"] = "pg_stat_statements"
    else:
        # As bench/dbload.py: scale the nodes' own statement mix to the server's transactions.
        per_xact = (low / node_calls, high / node_calls) if node_calls else (0.0, 0.0)
        result["statements_per_xact"] = per_xact
        result["statements_per_s_per_node"] = tuple(xacts * p / secs / nodes for p in per_xact)
        result["statements_source"] = "derived"
    if window.wire is not None:
        result["wire"] = dict(window.wire)
        result["wire_statements_per_s_per_node"] = (
            window.wire["execute"] + window.wire["query"]) / secs / nodes
    ops: Counter[str] = Counter()
    claims: Counter[str] = Counter()
    for n in per_node.values():
        ops.update(n["calls"])
        claims.update(n["claims"])
    result["calls_per_s_per_node"] = {op: c / secs / nodes for op, c in sorted(ops.items())}
    result["claims_per_s_per_node"] = {r: c / secs / nodes for r, c in sorted(claims.items())}
    result["early_claims_per_s_per_node"] = sum(
        n["early_claims"] for n in per_node.values()) / secs / nodes
    result["syncs_renewing_runs_per_s_per_node"] = sum(
        n["syncs_renewing_runs"] for n in per_node.values()) / secs / nodes
    return result


def _ms(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f}"


def print_report(args: argparse.Namespace, window: Window, ticks: list[float],
                 lags: list[tuple[float, Start, CronRunRecord | None]],
                 histogram: Counter[int], problems: list[str], db: dict[str, Any],
                 source_note: str, elapsed: float) -> None:
    lag = stats([value for value, _, _ in lags])
    print()
    header = f"{'figure':34} {'n':>4} {'p50':>7} {'p95':>7} {'max':>7}  unit target"
    print(header)
    print("-" * len(header))
    met = lag["p95"] is not None and lag["p95"] < LAG_TARGET
    print(f"{'tick start lag: tick -> child start':34} {lag['n']:>4} {_ms(lag['p50']):>7} "
          f"{_ms(lag['p95']):>7} {_ms(lag['max']):>7}  ms   p95 < {LAG_TARGET * 1000:.0f} ms  "
          + ("met" if met else "NOT MET"))
    claimed = [r.claimed_at - s.tick for _, s, r in lags if r is not None]
    spawned = [s.at - r.claimed_at for _, s, r in lags if r is not None]
    for label, values in (("  tick -> claimed (database clock)", claimed),
                          ("  claimed -> child start", spawned)):
        data = stats(values)
        print(f"{label:34} {data['n']:>4} {_ms(data['p50']):>7} {_ms(data['p95']):>7} "
              f"{_ms(data['max']):>7}  ms")
    print()
    print(f"runs per tick over {len(ticks)} inner ticks (max_run {args.max_run}):")
    for runs in sorted(histogram):
        print(f"  {runs} runs: {histogram[runs]:>4} ticks")
    if problems:
        print(f"FAIL: {len(problems)} problem(s):")
        for problem in problems[:20]:
            print(f"  {problem}")
    else:
        expected = min(args.max_run, args.nodes)
        print(f"PASS: every inner tick had exactly {expected} runs, on distinct slots and "
              f"nodes, and the database's history shows {expected} succeeded rows for "
              "each, with the same tokens, nodes and slots")
    print()
    stmts = db["statements_per_s_per_node"]
    if isinstance(stmts, tuple):
        shown = (f"{stmts[0]:.2f} .. {stmts[1]:.2f} (derived: from no claim losing an insert "
                 "race to every claim losing every one it can; the nodes claim together at "
                 "each tick, so expect the high end; --count-wire counts them)")
    else:
        shown = f"{stmts:.2f} (pg_stat_statements)"
    calls = db["calls_per_s_per_node"]
    claims = db["claims_per_s_per_node"]
    print(f"database, per node, {db['window_s']:.1f} s window, {args.nodes} nodes:")
    print(f"  transactions/s      {db['xact_per_s_per_node']:.2f}   (pg_stat_database)")
    print(f"  statements/s        {shown}")
    if "wire" in db:
        print(f"  statements/s        {db['wire_statements_per_s_per_node']:.2f} (counted on the "
              f"wire, --count-wire: {db['wire']})")
    print(f"  rows written/s      {db['rows_written_per_s_per_node']:.2f}")
    print("  calls/s by operation: " + ", ".join(f"{op} {v:.2f}" for op, v in calls.items()))
    print("  claims/s by result:   " + ", ".join(f"{r} {v:.2f}" for r, v in claims.items())
          + f"; early (retried) {db['early_claims_per_s_per_node']:.2f}")
    print(f"  syncs renewing a run/s (estimated) {db['syncs_renewing_runs_per_s_per_node']:.2f}")
    print()
    worst = sorted(lags, key=lambda item: item[0], reverse=True)[:5]
    notes = [
        f"- {args.nodes} nodes, \"@every 1s\", max_run {args.max_run}, overlap allow, "
        f"misfire_grace {args.misfire_grace}, runs of {args.run_seconds:g} s, default "
        f"[coordination] timings, PostgreSQL on 127.0.0.1; window {window.t1 - window.t0:.1f} s "
        f"after {args.settle:g} s settling; 1-minute load average {window.load[0]:.2f} before, "
        f"{window.load[1]:.2f} after; whole run {elapsed:.0f} s.",
        "- Lag is the probe's own time.time() at start minus its SUPERVISOR_CRON_TICK (it "
        "includes starting a Python child); p95 is nearest-rank. Worst: " + "; ".join(
            f"{v * 1000:.0f} ms ({s.node} slot {s.slot} at "
            f"{time.strftime('%H:%M:%S', time.gmtime(s.tick))}"
            + ("" if r is None else f", claimed +{(r.claimed_at - s.tick) * 1000:.0f} ms")
            + ")" for v, s, r in worst) + ".",
        f"- stmts/s: {source_note}",
        "- Per tick the fleet makes one claim per node (plus retries of claims sent a few ms "
        "before the database's clock reached the tick), the max_run winners record how their "
        "runs ended (cron_finish), and every node heartbeats once a second (node_sync); "
        "maintain runs every 30-60 s.",
    ]
    for note in notes:
        print(textwrap.fill(note, width=100, subsequent_indent="    "))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5, help="supervisors (nodes)")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="measuring window, seconds (one tick a second)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds to wait after all nodes are live")
    parser.add_argument("--max-run", type=int, default=2, help="max_run of the cron worker")
    parser.add_argument("--run-seconds", type=float, default=0.2, help="length of each run")
    parser.add_argument("--misfire-grace", default="1s", help="misfire_grace of the worker")
    parser.add_argument("--count-wire", action="store_true",
                        help="also count statements exactly, through a proxy (one more hop)")
    parser.add_argument("--no-json", action="store_true",
                        help="do not write bench/results/ (JSON and the logs)")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.max_run < 1 or args.duration < 2:
        parser.error("--nodes and --max-run must be at least 1, --duration at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not preflight():
        return 1
    use_pgss, why = pg_stat_statements_loaded()
    if use_pgss:
        source_note = "pg_stat_statements, sum of calls for the bench's database, / nodes."
    else:
        source_note = (
            f"derived, since {why}: each node's calls by operation and claims by result, "
            "times the statements each issues on PostgreSQL (BEGIN/COMMIT not counted): "
            "node_sync 1 (+2 when it renews a run going), claim 6 won / 3 saw all slots "
            "taken / 1 came early (+3 per slot lost to a concurrent claim: the low end "
            "assumes none, the high end every one possible), cron_finish 2, maintain 4; that "
            "mix per call (as bench/dbload.py does) times the server's transactions.")
    print(f"statements: {why}", flush=True)
    began = time.monotonic()
    with bench_workdir("cron", keep=not args.no_json) as (workdir, out):
        window, starts, records, alive = run(args, workdir, use_pgss)
    elapsed = time.monotonic() - began
    ticks = inner_ticks(window)
    histogram, problems = check_runs(ticks, starts, records, args.max_run, args.nodes)
    if not alive:
        problems.append("a node exited during the run")
    tokens = {r.token: r for r in records}
    inner = set(ticks)
    lags = [(s.at - s.tick, s, tokens.get(s.token)) for s in starts if s.tick in inner]
    per_node = statements(window, records, args.max_run)
    db = cost(window, per_node, args.nodes)
    print_report(args, window, ticks, lags, histogram, problems, db, source_note, elapsed)
    write_results(out, {
        "args": vars(args), "elapsed_s": elapsed, "statements": why,
        "inner_ticks": len(ticks), "histogram": {str(k): v for k, v in histogram.items()},
        "problems": problems, "lag_s": stats([v for v, _, _ in lags]),
        "lags": [{"lag_s": v, **asdict(s)} for v, s, _ in lags],
        "database": db, "per_node": per_node,
    })
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
