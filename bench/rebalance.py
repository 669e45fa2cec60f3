"""Benchmark: coordinated-mode rebalance time (join, clean leave, crash) on PostgreSQL.

A benchmark that also checks guarantee 5: it prints a table (and writes JSON plus the
nodes' logs and the probe log to bench/results/) and exits non-zero (FAIL) when it could
not run, or saw an overlap, an orphan or a round whose new generation never came. Run it
with the project's interpreter: `.venv/bin/python bench/rebalance.py [--rounds N | --quick]`.

Set-up: a database of its own on 127.0.0.1:5432 (dropped at the end), --nodes base nodes
(default 3; `supervisor run -c FILE`, node ids a, b, c, ..., metrics disabled, the DEFAULT
[coordination] timings: lease_ttl 10 s, renew_interval 1 s, renew_deadline 5 s), each
declaring one worker, `shard`: mode "coordinated" (scope global, count = live members), the
default stable_window (5 s) unless --stable-window is given, the default stop_timeout,
running the tests' coordinated probe, tests/workers/coordprobe.py. The probe holds an
exclusive flock per index and a shared flock per generation that every newer instance
checks on start, and appends `start|end <node> <pid> <generation> <index> <count> <time>`
(and `OVERLAP ... <what>`) to PROBE_DIR/log with its own time.time(); it exits at once on
SIGTERM, so the old children's stop costs no stop_timeout.

Before every round the fleet is settled: exactly the expected nodes run one instance each,
of one generation, indexes 0..n-1 of n, the live memberships (fs_coord_members) are exactly
those supervisor processes, the published generation is the running one and a node holds
the coordination lease (coord/shard); then one more second. Rounds, --rounds of each:

- join: a new supervisor (the next node id, d) is started on the settled base nodes. Its
  rebalance time is measured from the moment its process was started (the bench's
  time.time() just before fork/exec: what an operator does, and the same kind of instant as
  the signal of the other two). Also shown: from its first membership row (joined_at in
  fs_coord_members, the database's clock, same host), i.e. without the supervisor's own
  start-up. After the round the joiner is stopped with SIGTERM (not measured) and the base
  settles again.
- leave: SIGTERM to the supervisor of a node that does not hold the coordination lease
  (they take turns); measured from the bench's time.time() just before kill(2). The node
  is started again afterwards (not measured).
- crash: kill -9 to a supervisor (that process only: its child must die by itself),
  alternately a member (odd rounds) and the coordinator, the holder of coord/shard (even
  rounds); measured from just before kill(2). The node is started again afterwards.

- rebalance time = the membership change (as above) to all children of the new generation
  running: the first generation above the settled one in which every expected node (base
  plus joiner, or base minus the one gone) has a `start` line, one each, indexes 0..n-1 of
  n; the figure is the latest of those lines' own times. Split, from the database's history
  (fs_coord_generations.published_at, the database's clock): change -> generation
  published (the change noticed plus stable_window) and published -> all new running (the
  old children stopped, their slots released, the barrier passed, new children started).
- stable_window kept = the membership change itself (join: the joiner's joined_at; leave:
  the SIGTERM, a lower bound of its row's deletion; crash: the victim's row's expires_at,
  read after the kill) to published_at is at least stable_window. A round in which it is
  not is counted and shown (a new generation published before the membership had been
  stable that long), but not judged: it costs time, not safety.
- overlaps = `OVERLAP` lines, plus any two instances of different generations, or of the
  same index, whose intervals [start, end line or observed death] intersect. The crashed
  supervisor's child leaves no end line: its death is observed with a pidfd; still alive
  5 s after the kill, it is an orphan (guarantee 7), and the bench kills it.
PASS is zero overlaps, zero orphans and a new generation in every round.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import statistics
import sys
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pgfleet import (
    Fleet,
    Node,
    config_head,
    percentile,
    preflight,
    query,
    scratch_database,
    toml_value,
)
from procs import ROOT, bench_workdir, pid_alive, wait_until, write_results

from supervisor.config import CoordinationConfig, WorkerConfig

WORKER = "shard"
COORD_LEASE = f"coord/{WORKER}"
COORDPROBE = ROOT / "tests" / "workers" / "coordprobe.py"
TIMINGS = CoordinationConfig()  # the defaults, which the nodes run with
DEFAULT_STABLE_WINDOW = float(WorkerConfig.model_fields["stable_window"].default)
ORPHAN_WAIT = 5.0
DB_NOW = "EXTRACT(EPOCH FROM clock_timestamp())"


@dataclass(frozen=True)
class Line:
    kind: str  # start | end | OVERLAP
    node: str
    pid: int
    generation: int
    index: int
    count: int
    at: float
    what: str


def read_lines(path: Path) -> list[Line]:
    """The probe log's records ([] if there is none yet); a malformed line is skipped."""
    if not path.exists():
        return []
    found = []
    for text in path.read_text().splitlines():
        parts = text.split()
        if len(parts) < 7 or parts[0] not in ("start", "end", "OVERLAP"):
            continue
        kind, node, pid, gen, index, count, at, *what = parts
        with contextlib.suppress(ValueError):
            found.append(Line(kind, node, int(pid), int(gen), int(index), int(count),
                              float(at), " ".join(what)))
    return found


@dataclass
class Round:
    kind: str  # "join" | "leave" | "crash"
    index: int
    node: str  # the node that joined, left or was killed
    coordinator: str | None  # holder of coord/shard when the round began
    old_generation: int
    changed_at: float  # time.time() just before fork/exec or kill(2)
    expected: list[str]
    new_generation: int | None = None
    generations: int | None = None  # new - old: 1 when the change caused one rebalance
    all_running_at: float | None = None
    latency_s: float | None = None  # change -> all children of the new generation running
    published_at: float | None = None  # database clock
    published_s: float | None = None  # change -> new generation published
    published_to_running_s: float | None = None
    old_gone_s: float | None = None  # published -> last old-generation child ended or died
    membership_at: float | None = None  # join: joined_at; crash: the victim's row expires_at
    membership_s: float | None = None  # change -> membership_at
    from_membership_s: float | None = None  # membership_at -> all running
    # The membership change itself (join: joined_at; leave: the SIGTERM, a lower bound;
    # crash: the victim's row's expiry) to the new generation's publishing: stable_window
    # or more when the window was kept; `early` when it was not.
    change_published_s: float | None = None
    early: bool = False
    supervisor_exit_s: float | None = None  # leave: SIGTERM -> supervisor exited
    exit_code: int | None = None
    child_pid: int | None = None  # crash: the victim's child
    child_gone_s: float | None = None  # crash: kill -9 -> victim's child seen dead
    orphan: bool = False


class Bench:
    def __init__(self, fleet: Fleet, dbname: str, probe_log: Path, base: list[str],
                 joiner: str, args: argparse.Namespace):
        self.fleet = fleet
        self.dbname = dbname
        self.probe_log = probe_log
        self.base = base
        self.joiner = joiner
        self.args = args
        self.window = (DEFAULT_STABLE_WINDOW if args.stable_window is None
                       else args.stable_window)
        self.deaths: dict[int, float] = {}  # probe pid -> observed death (time.time())

    # --- what the database and the probe log say ----------------------------------------------

    def live_member_pids(self) -> set[int]:
        rows = query(self.dbname, "SELECT pid FROM fs_coord_members "
                     f"WHERE worker_key = %s AND expires_at > {DB_NOW}", (WORKER,))
        return {int(r[0]) for r in rows}

    def published_generation(self) -> int:
        rows = query(self.dbname, "SELECT generation FROM fs_coord_state WHERE worker_key = %s",
                     (WORKER,))
        return int(rows[0][0]) if rows else 0

    def coordinator(self) -> Node | None:
        rows = query(self.dbname, "SELECT holder_pid FROM fs_leases WHERE name = %s "
                     f"AND holder_nonce IS NOT NULL AND expires_at > {DB_NOW}", (COORD_LEASE,))
        if not rows or rows[0][0] is None:
            return None
        pid = int(rows[0][0])
        return next((n for n in self.fleet.nodes.values() if n.alive() and n.pid == pid), None)

    def membership_row(self, pid: int) -> tuple[float, float] | None:
        """(joined_at, expires_at) of a supervisor process's membership, expired or not."""
        rows = query(self.dbname, "SELECT joined_at, expires_at FROM fs_coord_members "
                     "WHERE worker_key = %s AND pid = %s", (WORKER, pid))
        return (float(rows[0][0]), float(rows[0][1])) if rows else None

    def published(self, generation: int) -> float | None:
        rows = query(self.dbname, "SELECT published_at FROM fs_coord_generations "
                     "WHERE worker_key = %s AND generation = %s", (WORKER, generation))
        return float(rows[0][0]) if rows else None

    def running(self) -> list[Line]:
        """Instances started and neither ended nor dead."""
        lines = read_lines(self.probe_log)
        ended = {x.pid for x in lines if x.kind == "end"}
        return [x for x in lines if x.kind == "start" and x.pid not in ended
                and pid_alive(x.pid)]

    def new_generation(self, after: int, expected: set[str]) -> tuple[int, list[Line]] | None:
        """The first generation above `after` of which every expected node has started its
        one instance, indexes 0..n-1 of n; with those `start` lines."""
        by_gen: dict[int, list[Line]] = {}
        for line in read_lines(self.probe_log):
            if line.kind == "start" and line.generation > after:
                by_gen.setdefault(line.generation, []).append(line)
        n = len(expected)
        for generation in sorted(by_gen):
            starts = by_gen[generation]
            if ({x.node for x in starts} == expected and len(starts) == n
                    and sorted(x.index for x in starts) == list(range(n))
                    and {x.count for x in starts} == {n}):
                return generation, starts
        return None

    # --- settling -----------------------------------------------------------------------------

    def settle(self, names: list[str]) -> tuple[int, Node]:
        """Wait until exactly `names` run the worker in one generation (see the docstring);
        that generation and the coordinator."""
        found: list[tuple[int, Node]] = []
        nodes = [self.fleet.nodes[name] for name in names]

        def ready() -> bool:
            found[:] = []
            live = self.running()
            gens = {x.generation for x in live}
            if ({x.node for x in live} != set(names) or len(live) != len(names)
                    or len(gens) != 1 or sorted(x.index for x in live) != list(range(len(names)))
                    or {x.count for x in live} != {len(names)}):
                return False
            if not all(n.alive() for n in nodes):
                return False
            with contextlib.suppress(Exception):  # the schema may not exist yet
                if self.live_member_pids() != {n.pid for n in nodes}:
                    return False
                generation = gens.pop()
                coordinator = self.coordinator()
                if self.published_generation() != generation or coordinator is None:
                    return False
                found.append((generation, coordinator))
                return True
            return False

        wait_until(f"{', '.join(names)} settled in one generation", ready,
                   timeout=self.args.settle_timeout, poll=0.1)
        time.sleep(1.0)  # every member has synced at least once since
        if not ready():
            raise RuntimeError(f"the fleet moved while settling on {', '.join(names)}")
        return found[0]

    # --- rounds -------------------------------------------------------------------------------

    def join_round(self, index: int) -> Round:
        old, coordinator = self.settle(self.base)
        node = self.fleet.nodes[self.joiner]
        expected = [*self.base, self.joiner]
        started = time.time()
        self.fleet.start(node)
        result = Round("join", index, node.node_id, coordinator.node_id, old, started, expected)
        self._wait_new(result)
        row = self.membership_row(node.pid) if node.alive() else None
        if row is not None:
            result.membership_at = row[0]
        self._finish(result)
        self.fleet.stop(node)  # back to the base nodes
        return result

    def leave_round(self, index: int) -> Round:
        old, coordinator = self.settle(self.base)
        others = [n for n in self.base if n != coordinator.node_id]
        node = self.fleet.nodes[others[index % len(others)]]
        assert node.proc is not None
        expected = [n for n in self.base if n != node.node_id]
        sent = time.time()
        node.proc.send_signal(signal.SIGTERM)
        result = Round("leave", index, node.node_id, coordinator.node_id, old, sent, expected)
        self._wait_new(result, leaving=node)
        if node.proc.poll() is None:
            with contextlib.suppress(Exception):
                result.exit_code = node.proc.wait(timeout=30)
                result.supervisor_exit_s = time.time() - sent
        if node.proc.poll() is None:
            result.exit_code = None
            self.fleet.stop(node, timeout=0.1, signalled=True)  # SIGKILL of its group
        self._finish(result)
        self.fleet.start(node)  # back to the base nodes
        return result

    def crash_round(self, index: int) -> Round:
        old, coordinator = self.settle(self.base)
        if index % 2 == 0:
            node = coordinator
        else:
            others = [n for n in self.base if n != coordinator.node_id]
            node = self.fleet.nodes[others[(index // 2) % len(others)]]
        assert node.proc is not None
        child = next(x for x in self.running() if x.node == node.node_id)
        expected = [n for n in self.base if n != node.node_id]
        pidfd = os.pidfd_open(child.pid)
        try:
            sent = time.time()
            os.kill(node.pid, signal.SIGKILL)  # the supervisor process only, never its group
            result = Round("crash", index, node.node_id, coordinator.node_id, old, sent,
                           expected, child_pid=child.pid)
            node.proc.wait()
            row = self.membership_row(node.pid)  # final: nobody renews it any more
            if row is not None:
                result.membership_at = row[1]
            if not self._watch_death(pidfd, result, ORPHAN_WAIT):
                result.orphan = True
                print(f"    ORPHAN: child {child.pid} of killed node {node.node_id} still "
                      f"alive {ORPHAN_WAIT:g} s after kill -9; the bench kills it", flush=True)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                self._watch_death(pidfd, result, 5.0)
            self._wait_new(result)
        finally:
            os.close(pidfd)
        self._finish(result)
        self.fleet.start(node)  # back to the base nodes
        return result

    def _watch_death(self, pidfd: int, result: Round, timeout: float) -> bool:
        assert result.child_pid is not None
        ready, _, _ = select.select([pidfd], [], [], timeout)
        if ready:
            died = time.time()
            self.deaths.setdefault(result.child_pid, died)
            if result.child_gone_s is None:
                result.child_gone_s = died - result.changed_at
            return True
        return not pid_alive(result.child_pid)

    def _wait_new(self, result: Round, leaving: Node | None = None) -> None:
        found: list[tuple[int, list[Line]]] = []
        expected = set(result.expected)

        def check() -> bool:
            if (leaving is not None and result.supervisor_exit_s is None
                    and leaving.proc is not None and leaving.proc.poll() is not None):
                result.supervisor_exit_s = time.time() - result.changed_at
                result.exit_code = leaving.proc.returncode
            new = self.new_generation(result.old_generation, expected)
            if new is not None:
                found.append(new)
            return new is not None

        with contextlib.suppress(TimeoutError):
            wait_until("the new generation running", check, timeout=self.args.timeout)
        if found:
            generation, starts = found[0]
            result.new_generation = generation
            result.generations = generation - result.old_generation
            result.all_running_at = max(x.at for x in starts)
            result.latency_s = result.all_running_at - result.changed_at

    def _finish(self, result: Round) -> None:
        """The split from the database's history and the probe log, and the round's line."""
        if result.new_generation is not None:
            published = self.published(result.new_generation)
            if published is not None and result.all_running_at is not None:
                result.published_at = published
                result.published_s = published - result.changed_at
                result.published_to_running_s = result.all_running_at - published
                ends = {x.pid: x.at for x in read_lines(self.probe_log) if x.kind == "end"}
                gone = [ends.get(x.pid, self.deaths.get(x.pid))
                        for x in read_lines(self.probe_log)
                        if x.kind == "start" and x.generation == result.old_generation]
                if gone and all(g is not None for g in gone):
                    result.old_gone_s = max(g for g in gone if g is not None) - published
        if result.membership_at is not None:
            result.membership_s = result.membership_at - result.changed_at
            if result.all_running_at is not None:
                result.from_membership_s = result.all_running_at - result.membership_at
        change = result.changed_at if result.kind == "leave" else result.membership_at
        if change is not None and result.published_at is not None:
            result.change_published_s = result.published_at - change
            result.early = result.change_published_s < self.window
        verdict = ("no new generation" if result.latency_s is None else
                   f"{result.latency_s:6.3f} s, generation {result.old_generation} -> "
                   f"{result.new_generation}")
        if result.early and result.change_published_s is not None:
            verdict += (f"  (published {result.change_published_s:.3f} s after the change, "
                        f"within stable_window)")
        role = " (coordinator)" if result.node == result.coordinator else ""
        print(f"  {result.kind:5} round {result.index + 1:2}: {result.node}{role}: {verdict}"
              + ("  ORPHAN" if result.orphan else ""), flush=True)

    # --- the verdict --------------------------------------------------------------------------

    def overlaps(self) -> list[str]:
        lines = read_lines(self.probe_log)
        found = [f"OVERLAP line: node {x.node} pid {x.pid} generation {x.generation} index "
                 f"{x.index} at {x.at:.3f}: {x.what}" for x in lines if x.kind == "OVERLAP"]
        ends = {x.pid: x.at for x in lines if x.kind == "end"}
        spans = sorted(((x.at, ends.get(x.pid, self.deaths.get(x.pid, float("inf"))), x)
                        for x in lines if x.kind == "start"), key=lambda item: item[0])
        for i, (_, end, first) in enumerate(spans):
            for start, _, second in spans[i + 1:]:
                if start >= end:
                    break  # sorted by start: no later instance begins before this one ended
                if first.generation != second.generation:
                    found.append(f"generation {second.generation} started (pid {second.pid}, "
                                 f"{second.node}, at {start:.3f}) while generation "
                                 f"{first.generation} ran (pid {first.pid}, {first.node}, "
                                 f"until {end:.3f})")
                elif first.index == second.index:
                    found.append(f"index {first.index} of generation {first.generation} held "
                                 f"twice: pid {first.pid} ({first.node}) until {end:.3f}, pid "
                                 f"{second.pid} ({second.node}) from {start:.3f}")
        return found


def node_config(dbname: str, node_id: str, probe_dir: Path,
                stable_window: float | None) -> str:
    probe = [sys.executable, "-I", "-S", str(COORDPROBE)]
    return "\n".join([
        *config_head(dbname, node_id),
        "enabled = false",
        "",
        f"[workers.{WORKER}]",
        f"command = {toml_value(probe)}",
        'mode = "coordinated"',
        *([] if stable_window is None else [f"stable_window = {toml_value(stable_window)}"]),
        f"env = {{ PROBE_DIR = {toml_value(str(probe_dir))} }}",
        "",
    ])


def node_ids(count: int) -> list[str]:
    return [chr(ord("a") + i) for i in range(count)]


def stats(values: list[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": statistics.median(values) if values else None,
        "p95": percentile(values, 95),
        "max": max(values) if values else None,
    }


def summarize(rounds: list[Round], overlaps: list[str]) -> dict[str, Any]:
    def values(kind: str, attr: str, pick: Any = None) -> list[float]:
        return [v for r in rounds if r.kind == kind and (pick is None or pick(r))
                for v in [getattr(r, attr)] if v is not None]

    summary: dict[str, Any] = {}
    for kind in ("join", "leave", "crash"):
        for attr in ("latency_s", "published_s", "published_to_running_s", "old_gone_s",
                     "membership_s", "from_membership_s", "supervisor_exit_s", "child_gone_s",
                     "change_published_s"):
            summary[f"{kind}_{attr}"] = stats(values(kind, attr))
        summary[f"{kind}_rounds"] = sum(1 for r in rounds if r.kind == kind)
    summary["crash_coordinator_latency_s"] = stats(
        values("crash", "latency_s", lambda r: r.node == r.coordinator))
    summary["crash_member_latency_s"] = stats(
        values("crash", "latency_s", lambda r: r.node != r.coordinator))
    summary.update({
        "no_new_generation": sum(1 for r in rounds if r.latency_s is None),
        "extra_generations": sum(1 for r in rounds
                                 if r.generations is not None and r.generations > 1),
        "early_rounds": sum(1 for r in rounds if r.early),
        "orphans": sum(1 for r in rounds if r.orphan),
        "overlaps": len(overlaps),
        "overlap_details": overlaps,
        "leave_exit_codes": [r.exit_code for r in rounds if r.kind == "leave"],
    })
    return summary


def _fmt(value: float | int | None, unit: str = "s") -> str:
    if value is None:
        return "n/a"
    return f"{value * 1000:.0f}" if unit == "ms" else f"{value:.3f}"


def print_table(summary: dict[str, Any], rounds: list[Round], args: argparse.Namespace,
                elapsed: float) -> bool:
    window = args.stable_window if args.stable_window is not None else DEFAULT_STABLE_WINDOW
    ttl, renew = TIMINGS.lease_ttl, TIMINGS.renew_interval
    quick = f"~ {window:g} s + a few x {renew:g} s"
    slow = f"~ {ttl:g} s + {window:g} s + a few x {renew:g} s"
    kept = f">= {window:g} s (stable_window)"
    rows = [
        ("join: started -> all new running", "join_latency_s", "s", quick),
        ("  joined_at -> all new running", "join_from_membership_s", "s", ""),
        ("  started -> joined_at (start-up)", "join_membership_s", "ms", ""),
        ("  joined_at -> generation published", "join_change_published_s", "s", kept),
        ("  published -> all new running", "join_published_to_running_s", "ms", ""),
        ("  published -> old children gone", "join_old_gone_s", "ms", ""),
        ("leave: SIGTERM -> all new running", "leave_latency_s", "s", quick),
        ("  SIGTERM -> supervisor exited", "leave_supervisor_exit_s", "ms", ""),
        ("  SIGTERM -> generation published", "leave_change_published_s", "s", kept),
        ("  published -> all new running", "leave_published_to_running_s", "ms", ""),
        ("  published -> old children gone", "leave_old_gone_s", "ms", ""),
        ("crash: kill -9 -> all new running", "crash_latency_s", "s", slow),
        ("  of the coordinator", "crash_coordinator_latency_s", "s", ""),
        ("  of a member", "crash_member_latency_s", "s", ""),
        ("  kill -9 -> old child seen dead", "crash_child_gone_s", "ms", ""),
        ("  kill -9 -> its membership expired", "crash_membership_s", "s", ""),
        ("  expired -> generation published", "crash_change_published_s", "s", kept),
        ("  published -> all new running", "crash_published_to_running_s", "ms", ""),
        ("  published -> old children gone", "crash_old_gone_s", "ms", ""),
    ]
    header = f"{'figure':38} {'n':>3} {'p50':>8} {'p95':>8} {'max':>8}  {'unit':4} expected"
    print()
    print(header)
    print("-" * len(header))
    for label, key, unit, expected in rows:
        data = summary[key]
        print(f"{label:38} {data['n']:>3} {_fmt(data['p50'], unit):>8} "
              f"{_fmt(data['p95'], unit):>8} {_fmt(data['max'], unit):>8}  {unit:4} {expected}")
    checks = (("overlaps", "overlaps"), ("orphans", "orphans"),
              ("rounds without the new generation", "no_new_generation"))
    for label, key in checks:
        value = summary[key]
        print(f"{label:38} {value:>3} {'':>8} {'':>8} {'':>8}  {'':4} 0  "
              f"{'met' if value == 0 else 'NOT MET'}")
    for label, key in (("rounds of more than one generation", "extra_generations"),
                       ("rounds published within stable_window", "early_rounds")):
        value = summary[key]
        print(f"{label:38} {value:>3} {'':>8} {'':>8} {'':>8}  {'':4} 0  "
              f"{'met' if value == 0 else 'NOT MET (not judged)'}")
    passed = not any(summary[key] for _, key in checks)
    print()
    print("PASS" if passed else "FAIL")
    print()
    window_note = (f"stable_window {window:g} s" + ("" if args.stable_window is not None
                                                     else " (the default)"))
    notes = [
        f"- {summary['join_rounds']} join, {summary['leave_rounds']} leave and "
        f"{summary['crash_rounds']} crash rounds, {args.nodes} base nodes, coordinated worker "
        f"with {window_note}, default timings (lease_ttl {ttl:g} s, renew_interval "
        f"{renew:g} s, renew_deadline {TIMINGS.renew_deadline:g} s), PostgreSQL on "
        f"127.0.0.1; whole run {elapsed:.0f} s.",
        "- Times are the probes' own time.time() at start against the bench's time.time() "
        "taken just before fork/exec (join) or kill(2); joined_at, a membership's expiry and "
        "published_at are the database's clock on the same host; p95 is nearest-rank.",
    ]
    for kind in ("join", "leave", "crash"):
        notes.append(f"- {kind} per round (s): " + ", ".join(
            ("n/a" if r.latency_s is None else f"{r.latency_s:.2f}")
            + ("*" if kind == "crash" and r.node == r.coordinator else "")
            + ("" if r.generations in (None, 1) else f" ({r.generations} generations)")
            for r in rounds if r.kind == kind) + (
            " (* the coordinator)" if kind == "crash" else ""))
    notes.append("- supervisor exit codes after SIGTERM: "
                 + ", ".join(str(c) for c in summary["leave_exit_codes"]))
    notes += [f"- {d}" for d in summary["overlap_details"]]
    for note in notes:
        print(textwrap.fill(note, width=100, subsequent_indent="  "))
    return passed


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[Round], Bench]:
    probe_dir = workdir / "coord"
    probe_dir.mkdir()
    (probe_dir / "log").touch()
    names = node_ids(args.nodes + 1)
    base, joiner = names[:-1], names[-1]
    rounds: list[Round] = []
    with scratch_database("fleet_bench_rebalance") as dbname:
        fleet = Fleet(workdir, marker=workdir.name)
        bench = Bench(fleet, dbname, probe_dir / "log", base, joiner, args)
        try:
            for node_id in names:
                fleet.add(node_id, node_config(dbname, node_id, probe_dir, args.stable_window))
            for node_id in base:
                fleet.start(fleet.nodes[node_id])
            print(f"database {dbname}, work dir {workdir}", flush=True)
            for one in (bench.join_round, bench.leave_round, bench.crash_round):
                for index in range(args.rounds):
                    rounds.append(one(index))
            try:  # the last node restarted: all back, so that every instance ends cleanly
                bench.settle(base)
            except (TimeoutError, RuntimeError) as exc:
                print(f"after the rounds: {exc}", flush=True)
        finally:
            fleet.stop_all()
            left = fleet.sweep()
            if left:
                print(f"swept {left} process(es) left behind", flush=True)
    return rounds, bench


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds of each kind")
    parser.add_argument("--quick", action="store_true", help="2 rounds of each kind")
    parser.add_argument("--nodes", type=int, default=3, help="base nodes (supervisors)")
    parser.add_argument("--stable-window", type=float, default=None,
                        help="stable_window of the worker, seconds "
                        f"(default: not set, the product's {DEFAULT_STABLE_WINDOW:g} s)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="most seconds to wait for the new generation in a round")
    parser.add_argument("--settle-timeout", type=float, default=90.0,
                        help="most seconds to wait for the fleet to settle between rounds")
    parser.add_argument("--no-json", action="store_true",
                        help="do not write bench/results/ (JSON and the logs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 2
    if not 2 <= args.nodes <= 25:
        parser.error("--nodes must be from 2 to 25 (a leave needs a node that is not the "
                     "coordinator)")
    if args.stable_window is not None and args.stable_window < 0:
        parser.error("--stable-window must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not preflight():
        return 1
    began = time.monotonic()
    with bench_workdir("rebalance", keep=not args.no_json) as (workdir, out):
        rounds, bench = run(args, workdir)
        overlaps = bench.overlaps()
    elapsed = time.monotonic() - began
    summary = summarize(rounds, overlaps)
    passed = print_table(summary, rounds, args, elapsed)
    write_results(out, {"args": vars(args), "elapsed_s": elapsed, "passed": passed,
                        "timings": {"lease_ttl": TIMINGS.lease_ttl,
                                    "renew_interval": TIMINGS.renew_interval,
                                    "renew_deadline": TIMINGS.renew_deadline,
                                    "stable_window": DEFAULT_STABLE_WINDOW
                                    if args.stable_window is None else args.stable_window},
                        "summary": summary, "rounds": [asdict(r) for r in rounds]})
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
