"""Benchmark: what coordination costs the database, per node, with 1, 10 and 50 leader workers.

A benchmark, not a test: it prints a table (and writes JSON to bench/results/) and exits
non-zero only when it could not run. Run it with the project's interpreter:
`.venv/bin/python bench/dbload.py [--window SECONDS] [--workers 1,10,50]`.

For each worker count N: a database of its own on 127.0.0.1:5432 (dropped afterwards),
3 nodes (`supervisor run -c FILE`, default [coordination] timings), each declaring N
`global-leader` workers running `/bin/sleep 100000`, and metrics on 127.0.0.1. Once all N
leases are held and all 3 nodes are live members, the bench waits --settle seconds, then
measures over --window seconds:

- transactions: the delta of xact_commit + xact_rollback in pg_stat_database for the
  bench's database, read from a connection to the `postgres` database (so the reading
  itself is not counted), divided by the window and by the 3 nodes;
- statements: from pg_stat_statements (sum of calls for the bench's database) when the
  server has it loaded (shared_preload_libraries; the bench never reconfigures or restarts
  the server); otherwise derived: every node's own count of database calls by operation
  (its `supervisor_db_operation_duration_seconds_count` metric) times the statements
  each call issues on PostgreSQL, read from supervisor/store/sql_nodes.py and
  sql_leases.py (BEGIN/COMMIT not counted):
    node_sync  = INSERT .. ON CONFLICT .. RETURNING (heartbeat; returns the database clock)
                 + UPDATE .. RETURNING (renew, if the node holds a lease)
                 + UPDATE .. RETURNING (acquire, if the node waits for a lease)
                 + UPDATE + INSERT fs_terms per lease it wins (none in steady state)
    maintain   = UPDATE fs_terms + SELECT, UPDATE fs_cron_runs (lost) + SELECT
                 (+ a DELETE of each when there is history to prune)
    lease_ensure = INSERT .. ON CONFLICT DO NOTHING; lease_release = UPDATE (+2)
  Which node holds leases and which waits is read from fs_leases after the window.
- rows written (tup_inserted + tup_updated + tup_deleted), to show what does grow with N.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from pgfleet import Fleet, config_head, free_port, pg_admin, preflight, query, scratch_database
from procs import results_path, wait_until

NODES = ("a", "b", "c")
METRIC = re.compile(r'^supervisor_db_operation_duration_seconds_count'
                    r'\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$')
LABEL = re.compile(r'(\w+)="([^"]*)"')

# Statements per call on PostgreSQL (see the module docstring), steady state.
FIXED = {"lease_ensure": 1, "lease_release": 1, "node_leave": 1, "maintain": 4, "db_now": 1}


def node_config(dbname: str, node_id: str, port: int, workers: int) -> str:
    lines = [
        *config_head(dbname, node_id),
        'host = "127.0.0.1"',
        f"port = {port}",
    ]
    for i in range(workers):
        lines += [
            "",
            f"[workers.w{i:03d}]",
            'command = ["/bin/sleep", "100000"]',
            'mode = "global-leader"',
        ]
    return "\n".join(lines) + "\n"


def scrape(port: int) -> Counter[str]:
    """The node's database calls so far, by operation (ok and error together)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    calls: Counter[str] = Counter()
    for line in text.splitlines():
        match = METRIC.match(line)
        if match:
            labels = dict(LABEL.findall(match["labels"]))
            calls[labels.get("operation", "?")] += int(float(match["value"]))
    return calls


def pg_counters(dbname: str) -> dict[str, int]:
    with pg_admin() as conn:
        row = conn.execute(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted "
            "FROM pg_stat_database WHERE datname = %s", (dbname,)).fetchone()
    assert row is not None
    keys = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted")
    return {k: int(v) for k, v in zip(keys, row, strict=True)}


def pg_stat_statements_loaded() -> tuple[bool, str]:
    with pg_admin() as conn:
        available = conn.execute("SELECT default_version FROM pg_available_extensions "
                                 "WHERE name = 'pg_stat_statements'").fetchone()
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()
    libraries = str(preload[0] if preload else "")
    if available is None:
        return False, "pg_stat_statements is not installed on the server"
    if "pg_stat_statements" not in [lib.strip() for lib in libraries.split(",")]:
        return False, (f"pg_stat_statements {available[0]} is installed but not in "
                       f"shared_preload_libraries ({libraries or 'empty'}); the server is not "
                       "reconfigured by this bench")
    return True, "pg_stat_statements is loaded"


STATEMENTS_SQL = ("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
                  "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s "
                  "AND s.query NOT ILIKE '%%pg_stat_statements%%'")


def statement_calls(dbname: str) -> int:
    """pg_stat_statements calls for the bench's database (read from the `postgres` one)."""
    with pg_admin() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        row = conn.execute(STATEMENTS_SQL, (dbname,)).fetchone()
    return int(row[0]) if row else 0


def holdings(dbname: str) -> dict[str, int]:
    rows = query(dbname, "SELECT holder_node, count(*) FROM fs_leases "
                 "WHERE holder_nonce IS NOT NULL GROUP BY holder_node")
    return {str(node): int(count) for node, count in rows}


def statements_per_node(calls: Counter[str], held: int, workers: int) -> float:
    sync = 1 + (1 if held > 0 else 0) + (1 if held < workers else 0)
    total = calls.get("node_sync", 0) * sync
    for op, n in calls.items():
        if op != "node_sync":
            total += FIXED.get(op, 1) * n
    return float(total)


def measure(workers: int, args: argparse.Namespace, workdir: Path,
            use_pgss: bool) -> dict[str, Any]:
    print(f"{workers} worker(s) per node: starting 3 nodes ...", flush=True)
    with scratch_database(f"fleet_bench_dbload_{workers}") as dbname:
        fleet = Fleet(workdir / f"n{workers}", marker=f"{workdir.name}-{workers}")
        fleet.workdir.mkdir()
        ports = {node_id: free_port() for node_id in NODES}
        try:
            for node_id in NODES:
                fleet.start(fleet.add(node_id, node_config(dbname, node_id, ports[node_id],
                                                           workers)))

            def settled() -> bool:
                with contextlib.suppress(Exception):
                    live = query(dbname, "SELECT count(DISTINCT node_id) FROM fs_members "
                                 "WHERE expires_at > EXTRACT(EPOCH FROM clock_timestamp())")
                    return int(live[0][0]) == 3 and sum(holdings(dbname).values()) == workers
                return False

            wait_until(f"{workers} leases held and 3 live nodes", settled, timeout=120,
                       poll=0.5)
            time.sleep(args.settle)
            before_calls = {n: scrape(p) for n, p in ports.items()}
            before_pg = pg_counters(dbname)
            before_pgss = statement_calls(dbname) if use_pgss else 0
            started = time.monotonic()
            time.sleep(args.window)
            after_pg = pg_counters(dbname)
            after_pgss = statement_calls(dbname) if use_pgss else 0
            after_calls = {n: scrape(p) for n, p in ports.items()}
            window = time.monotonic() - started
            held = holdings(dbname)
            alive = all(node.alive() for node in fleet.nodes.values())
        finally:
            fleet.stop_all()
            fleet.sweep()
    delta = {k: after_pg[k] - before_pg[k] for k in after_pg}
    xacts = delta["xact_commit"] + delta["xact_rollback"]
    per_node: dict[str, Any] = {}
    for node_id in NODES:
        calls = after_calls[node_id] - before_calls[node_id]
        per_node[node_id] = {
            "held": held.get(node_id, 0),
            "calls": dict(calls),
            "calls_per_s": sum(calls.values()) / window,
            "node_sync_per_s": calls.get("node_sync", 0) / window,
            "statements_per_s": statements_per_node(calls, held.get(node_id, 0), workers)
            / window,
        }
    node_calls = sum(sum(n["calls"].values()) for n in per_node.values())
    derived = sum(n["statements_per_s"] for n in per_node.values()) * window
    result = {
        "workers_per_node": workers,
        "window_s": window,
        "all_nodes_alive": alive,
        "pg_delta": delta,
        "xact_per_s_per_node": xacts / window / len(NODES),
        "node_calls_per_s_per_node": node_calls / window / len(NODES),
        "rows_written_per_s_per_node": (delta["tup_inserted"] + delta["tup_updated"]
                                        + delta["tup_deleted"]) / window / len(NODES),
        "per_node": per_node,
    }
    if use_pgss:
        result["statements_per_s_per_node"] = (after_pgss - before_pgss) / window / len(NODES)
        result["statements_source"] = "pg_stat_statements"
    else:
        # Scale the nodes' own statement mix to the transactions the server counted.
        per_xact = derived / node_calls if node_calls else 0.0
        result["statements_per_xact"] = per_xact
        result["statements_per_s_per_node"] = xacts * per_xact / window / len(NODES)
        result["statements_source"] = "derived"
    print(f"  xact/s per node {result['xact_per_s_per_node']:.3f}, statements/s per node "
          f"{result['statements_per_s_per_node']:.3f}, leases held {held}", flush=True)
    return result


def print_table(results: list[dict[str, Any]], source_note: str, args: argparse.Namespace,
                elapsed: float) -> None:
    header = (f"{'workers/node':>12} {'xact/s/node':>11} {'stmts/s/node':>12} "
              f"{'stmts/xact':>10} {'calls/s/node':>12} {'rows written/s/node':>19}  "
              "leases held (a/b/c)")
    print()
    print(header)
    print("-" * len(header))
    for r in results:
        held = "/".join(str(r["per_node"][n]["held"]) for n in NODES)
        per_xact = r.get("statements_per_xact")
        print(f"{r['workers_per_node']:>12} {r['xact_per_s_per_node']:>11.3f} "
              f"{r['statements_per_s_per_node']:>12.3f} "
              f"{'n/a' if per_xact is None else f'{per_xact:.2f}':>10} "
              f"{r['node_calls_per_s_per_node']:>12.3f} "
              f"{r['rows_written_per_s_per_node']:>19.2f}  {held}")
    stmts = [r["statements_per_s_per_node"] for r in results]
    print()
    spread = (max(stmts) - min(stmts)) / statistics.mean(stmts) if stmts else 0.0
    notes = [
        f"- statements/s per node from 1 to {results[-1]['workers_per_node']} workers: "
        f"{min(stmts):.3f} .. {max(stmts):.3f} (spread {spread:.0%} of the mean): "
        + ("about flat." if spread <= 0.15 else "NOT flat."),
        "- xact/s/node: delta of pg_stat_database xact_commit + xact_rollback for the bench's "
        f"database over a {args.window:g} s window (after {args.settle:g} s settling), / 3 "
        "nodes; read from the postgres database, so the bench's reading is not counted.",
        f"- stmts/s/node: {source_note}",
        "- calls/s/node: database calls counted by the nodes themselves "
        "(supervisor_db_operation_duration_seconds_count, all operations); per node and operation:",
    ]
    for r in results:
        parts = []
        for node_id in NODES:
            data = r["per_node"][node_id]
            calls = ", ".join(f"{op} {n}" for op, n in sorted(data["calls"].items()))
            parts.append(f"{node_id}: {calls}")
        notes.append(f"  N={r['workers_per_node']}: " + "; ".join(parts))
    notes.append("- rows written/s/node: tup_inserted + tup_updated + tup_deleted; the renewal "
                 "is one statement but updates one row per lease held, so this column grows "
                 "with N while the statement count does not.")
    notes.append(f"- whole run {elapsed:.0f} s.")
    for note in notes:
        print(textwrap.fill(note, width=100, subsequent_indent="    "))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=30.0, help="measuring window, seconds")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds to wait after all leases are held")
    parser.add_argument("--workers", default="1,10,50",
                        help="comma-separated leader workers per node")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not preflight():
        return 1
    use_pgss, why = pg_stat_statements_loaded()
    if use_pgss:
        source_note = "pg_stat_statements, sum of calls for the bench's database, / 3 nodes."
    else:
        source_note = (
            f"derived, since {why}. Each node's own call counts by operation times the "
            "statements each call issues on PostgreSQL (supervisor/store/sql_*.py; BEGIN/COMMIT "
            "not counted): node_sync = INSERT .. ON CONFLICT .. RETURNING (heartbeat, which "
            "also returns the database clock) + UPDATE .. RETURNING (renew, when the node holds "
            "a lease) + UPDATE .. RETURNING (acquire, when it waits for one), so 2, or 3 when a "
            "node both holds and waits; maintain = 4. That mix (stmts/xact) times the "
            "server's transactions.")
    print(f"statements: {why}", flush=True)
    began = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="fleet-dbload-") as tmp:
        for workers in args.workers:
            results.append(measure(workers, args, Path(tmp), use_pgss))
    elapsed = time.monotonic() - began
    print_table(results, source_note, args, elapsed)
    if not args.no_json:
        path = results_path("dbload").with_suffix(".json")
        path.write_text(json.dumps({"args": vars(args), "elapsed_s": elapsed,
                                    "statements": why, "results": results}, indent=2) + "\n")
        print(f"\nwrote {path}")
    return 0 if all(r["all_nodes_alive"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
