"""Benchmark: leader failover (kill -9) and clean handover (SIGTERM) on PostgreSQL.

A benchmark, not a test: it prints a table (and writes JSON plus the nodes' logs to
bench/results/) and exits non-zero only when it could not run, or saw an overlap, an
orphan or a round without a new leader. Run it with the project's interpreter:
`.venv/bin/python bench/failover.py [--rounds N | --quick]`.

Set-up: a database of its own on 127.0.0.1:5432 (dropped at the end), 3 nodes
(`supervisor run -c FILE`, node ids a, b, c, metrics disabled, the DEFAULT [coordination]
timings: lease_ttl 10 s, renew_interval 1 s, renew_deadline 5 s), each declaring one
`global-leader` worker running the tests' exclusivity probe, tests/workers/probe.py (with
PROBE_WAIT=0). The probe takes a kernel flock on a shared file and logs `started` /
`acquired` / `released` / `OVERLAP` lines, `<kind> <node> <pid> <token> <time>`, with its
own time.time(); when the lock is held it logs OVERLAP at once and retries every 20 ms.

Rounds: first --rounds of kill -9 to the leader's supervisor process (that process only:
its child must die by itself), then --rounds of SIGTERM to it. After each round the
killed/stopped node is started again and the next round waits until all 3 nodes show in
fs_members, plus a second to settle.

- failover = kill instant (taken just before kill(2)) to the next `acquired` in the probe log
- handover = SIGTERM instant to the next `acquired`
- orphan = the killed leader's child still alive 5 s after the kill (observed with a pidfd)
- overlaps = `OVERLAP` lines (the flock was held by a live instance when a probe started)
  plus any two holding intervals that intersect ([acquired, released or observed death])
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
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
from procs import ROOT, bench_workdir, pid_alive, read_fields, wait_until, write_results

NODES = ("a", "b", "c")
FAILOVER_TARGET = 12.0  # SPEC.md "How fast": lease_ttl plus one retry, at most 12 s
HANDOVER_TARGET = 1.0  # "well under a second"
ORPHAN_WAIT = 5.0
PROBE = ROOT / "tests" / "workers" / "probe.py"


@dataclass(frozen=True)
class Event:
    kind: str
    node: str
    pid: int
    token: str
    at: float


def read_events(path: Path) -> list[Event]:
    return [Event(kind, node, int(pid), token, float(at))
            for kind, node, pid, token, at in read_fields(path, 5)]


@dataclass
class Round:
    kind: str  # "kill" | "term"
    index: int
    node: str
    child_pid: int
    token: str
    signalled_at: float
    next_acquired_at: float | None = None
    next_node: str | None = None
    next_token: str | None = None
    latency_s: float | None = None  # signal -> next acquired
    child_gone_s: float | None = None  # signal -> old child observed dead
    released_s: float | None = None  # signal -> old probe's `released` (SIGTERM rounds)
    gap_s: float | None = None  # old child released/dead -> next acquired
    supervisor_exit_s: float | None = None  # SIGTERM -> supervisor exited
    exit_code: int | None = None
    orphan: bool = False


class Bench:
    def __init__(self, fleet: Fleet, dbname: str, probe_log: Path, args: argparse.Namespace):
        self.fleet = fleet
        self.dbname = dbname
        self.probe_log = probe_log
        self.args = args
        self.deaths: dict[int, float] = {}  # probe pid -> observed death (time.time())

    # --- waiting on the fleet -----------------------------------------------------------------

    def live_member_pids(self) -> set[int]:
        rows = query(self.dbname, "SELECT pid FROM fs_members "
                     "WHERE expires_at > EXTRACT(EPOCH FROM clock_timestamp())")
        return {int(r[0]) for r in rows}

    def all_members(self) -> bool:
        with contextlib.suppress(Exception):  # the schema may not exist yet
            live = self.live_member_pids()
            return all(n.alive() and n.pid in live for n in self.fleet.nodes.values())
        return False

    def holder(self) -> tuple[Node, Event] | None:
        """The node whose probe holds the lock now (acquired, not released, alive)."""
        events = read_events(self.probe_log)
        released = {e.pid for e in events if e.kind == "released"}
        for event in reversed(events):
            if event.kind != "acquired":
                continue
            if event.pid in released or not pid_alive(event.pid):
                return None
            node = self.fleet.nodes.get(event.node)
            return (node, event) if node is not None and node.alive() else None
        return None

    def next_acquired(self, after: float, old_pid: int) -> Event | None:
        for event in read_events(self.probe_log):
            if event.kind == "acquired" and event.at > after and event.pid != old_pid:
                return event
        return None

    def steady(self) -> tuple[Node, Event]:
        found: list[tuple[Node, Event]] = []

        def ready() -> bool:
            found[:] = []
            current = self.holder()
            if current is None or not self.all_members():
                return False
            found.append(current)
            return True

        wait_until("a leader and 3 live members", ready, timeout=60, poll=0.1)
        time.sleep(1.0)  # every follower has synced at least once since joining
        current = self.holder()
        if current is None:
            raise RuntimeError("the leader vanished while the fleet was settling")
        return current

    # --- rounds -------------------------------------------------------------------------------

    def round(self, kind: str, index: int) -> Round:
        node, acquired = self.steady()
        pidfd = os.pidfd_open(acquired.pid)
        try:
            sig = signal.SIGKILL if kind == "kill" else signal.SIGTERM
            sent = time.time()
            os.kill(node.pid, sig)  # the supervisor process only, never its group
            result = Round(kind, index, node.node_id, acquired.pid, acquired.token, sent)
            if kind == "kill":
                self._after_kill(node, pidfd, result)
            else:
                self._after_term(node, pidfd, result)
        finally:
            os.close(pidfd)
        nxt = result.next_acquired_at
        verdict = "no new leader" if nxt is None else f"{nxt - sent:6.3f} s -> {result.next_node}"
        print(f"  {kind:4} round {index + 1:2}: leader {node.node_id} (child {acquired.pid}, "
              f"token {acquired.token}): {verdict}"
              + ("  ORPHAN" if result.orphan else ""), flush=True)
        self.fleet.start(node)  # back to 3 nodes
        return result

    def _wait_next(self, result: Round) -> None:
        found: list[Event] = []

        def check() -> bool:
            event = self.next_acquired(result.signalled_at, result.child_pid)
            if event is not None:
                found.append(event)
            return event is not None

        with contextlib.suppress(TimeoutError):
            wait_until("the next leader", check, timeout=self.args.timeout)
        if found:
            event = found[0]
            result.next_acquired_at = event.at
            result.next_node = event.node
            result.next_token = event.token
            result.latency_s = event.at - result.signalled_at

    def _watch_death(self, pidfd: int, result: Round, timeout: float) -> bool:
        ready, _, _ = select.select([pidfd], [], [], timeout)
        if ready:
            died = time.time()
            self.deaths[result.child_pid] = died
            result.child_gone_s = died - result.signalled_at
            return True
        return not pid_alive(result.child_pid)

    def _after_kill(self, node: Node, pidfd: int, result: Round) -> None:
        assert node.proc is not None
        node.proc.wait()
        if not self._watch_death(pidfd, result, ORPHAN_WAIT):
            result.orphan = True
            print(f"    ORPHAN: child {result.child_pid} of killed node {node.node_id} still "
                  f"alive {ORPHAN_WAIT:g} s after kill -9; the bench kills it", flush=True)
        self._wait_next(result)
        if result.orphan:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(result.child_pid, signal.SIGKILL)
            self._watch_death(pidfd, result, 5.0)
        if result.next_acquired_at is not None and result.child_pid in self.deaths:
            result.gap_s = result.next_acquired_at - self.deaths[result.child_pid]

    def _after_term(self, node: Node, pidfd: int, result: Round) -> None:
        assert node.proc is not None
        self._wait_next(result)
        with contextlib.suppress(Exception):
            result.exit_code = node.proc.wait(timeout=30)
            result.supervisor_exit_s = time.time() - result.signalled_at
        if node.proc.poll() is None:
            result.exit_code = None
            self.fleet.stop(node, timeout=0.1)  # SIGKILL of its group
        if not self._watch_death(pidfd, result, ORPHAN_WAIT):
            result.orphan = True
        for event in read_events(self.probe_log):
            if event.kind == "released" and event.pid == result.child_pid:
                result.released_s = event.at - result.signalled_at
                if result.next_acquired_at is not None:
                    result.gap_s = result.next_acquired_at - event.at

    # --- the verdict --------------------------------------------------------------------------

    def overlaps(self) -> list[str]:
        events = read_events(self.probe_log)
        found = [f"OVERLAP line: node {e.node} pid {e.pid} at {e.at:.3f}"
                 for e in events if e.kind == "OVERLAP"]
        ends = {e.pid: e.at for e in events if e.kind == "released"}
        intervals = []
        for e in events:
            if e.kind == "acquired":
                end = ends.get(e.pid, self.deaths.get(e.pid, float("inf")))
                intervals.append((e.at, end, e))
        intervals.sort(key=lambda item: item[0])
        for (_, end, first), (start, _, second) in itertools.pairwise(intervals):
            if start < end:
                found.append(f"intervals intersect: pid {first.pid} ({first.node}) until "
                             f"{end:.3f}, pid {second.pid} ({second.node}) from {start:.3f}")
        return found

    def token_regressions(self) -> int:
        tokens = [int(e.token) for e in read_events(self.probe_log)
                  if e.kind == "acquired" and e.token.isdigit()]
        return sum(1 for a, b in itertools.pairwise(tokens) if b <= a)


def node_config(dbname: str, node_id: str, probe_log: Path, probe_lock: Path) -> str:
    probe = [sys.executable, "-I", "-S", str(PROBE)]
    return "\n".join([
        *config_head(dbname, node_id),
        "enabled = false",
        "",
        "[workers.probe]",
        f"command = {toml_value(probe)}",
        'mode = "global-leader"',
        f"env = {{ PROBE_LOG = {toml_value(str(probe_log))}, "
        f"PROBE_LOCK = {toml_value(str(probe_lock))}, PROBE_WAIT = \"0\" }}",
        "",
    ])


def stats(values: list[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": statistics.median(values) if values else None,
        "p95": percentile(values, 95),
        "max": max(values) if values else None,
    }


def summarize(rounds: list[Round], overlaps: list[str], regressions: int) -> dict[str, Any]:
    def values(kind: str, attr: str) -> list[float]:
        return [v for r in rounds if r.kind == kind
                for v in [getattr(r, attr)] if v is not None]

    kills = [r for r in rounds if r.kind == "kill"]
    terms = [r for r in rounds if r.kind == "term"]
    return {
        "failover_s": stats(values("kill", "latency_s")),
        "handover_s": stats(values("term", "latency_s")),
        "kill_child_gone_s": stats(values("kill", "child_gone_s")),
        "kill_gap_s": stats(values("kill", "gap_s")),
        "term_released_s": stats(values("term", "released_s")),
        "term_gap_s": stats(values("term", "gap_s")),
        "term_supervisor_exit_s": stats(values("term", "supervisor_exit_s")),
        "kill_rounds": len(kills),
        "term_rounds": len(terms),
        "no_new_leader": sum(1 for r in rounds if r.latency_s is None),
        "orphans": sum(1 for r in rounds if r.orphan),
        "overlaps": len(overlaps),
        "overlap_details": overlaps,
        "token_regressions": regressions,
        "term_exit_codes": [r.exit_code for r in terms],
    }


def _fmt(value: float | int | None, unit: str = "s") -> str:
    if value is None:
        return "n/a"
    return f"{value * 1000:.0f}" if unit == "ms" else f"{value:.3f}"


def print_table(summary: dict[str, Any], rounds: list[Round], elapsed: float) -> None:
    rows = [
        ("failover: kill -9 -> next acquired", "failover_s", "s", f"<= {FAILOVER_TARGET:g} s",
         FAILOVER_TARGET, True),
        ("handover: SIGTERM -> next acquired", "handover_s", "s", f"< {HANDOVER_TARGET:g} s",
         HANDOVER_TARGET, False),
        ("  kill -9 -> old child seen dead", "kill_child_gone_s", "ms", "", None, True),
        ("  old child dead -> next acquired", "kill_gap_s", "s", "", None, True),
        ("  SIGTERM -> old probe released", "term_released_s", "ms", "", None, True),
        ("  released -> next acquired", "term_gap_s", "ms", "", None, True),
        ("  SIGTERM -> supervisor exited", "term_supervisor_exit_s", "ms", "", None, True),
    ]
    header = f"{'figure':38} {'n':>3} {'p50':>8} {'p95':>8} {'max':>8}  {'unit':4} target"
    print()
    print(header)
    print("-" * len(header))
    for label, key, unit, target, limit, inclusive in rows:
        data = summary[key]
        verdict = ""
        if limit is not None and data["max"] is not None:
            met = data["max"] <= limit if inclusive else data["max"] < limit
            verdict = "  met (max)" if met else "  NOT MET (max)"
        print(f"{label:38} {data['n']:>3} {_fmt(data['p50'], unit):>8} "
              f"{_fmt(data['p95'], unit):>8} {_fmt(data['max'], unit):>8}  {unit:4} "
              f"{target}{verdict}")
    for label, key in (("overlaps", "overlaps"), ("orphans", "orphans"),
                       ("rounds without a new leader", "no_new_leader"),
                       ("fencing token regressions", "token_regressions")):
        value = summary[key]
        print(f"{label:38} {value:>3} {'':>8} {'':>8} {'':>8}  {'':4} 0  "
              f"{'met' if value == 0 else 'NOT MET'}")
    print()
    notes = [
        f"- {summary['kill_rounds']} kill -9 rounds and {summary['term_rounds']} SIGTERM "
        f"rounds, 3 nodes, default timings (lease_ttl 10 s, renew_interval 1 s, renew_deadline "
        f"5 s), PostgreSQL on 127.0.0.1; whole run {elapsed:.0f} s.",
        "- Times are from the probes' own time.time() records against the bench's time.time() "
        "taken just before kill(2); p95 is nearest-rank.",
        "- failover per round (s): " + ", ".join(
            "n/a" if r.latency_s is None else f"{r.latency_s:.2f}"
            for r in rounds if r.kind == "kill"),
        "- handover per round (ms): " + ", ".join(
            "n/a" if r.latency_s is None else f"{r.latency_s * 1000:.0f}"
            for r in rounds if r.kind == "term"),
        "- supervisor exit codes after SIGTERM: "
        + ", ".join(str(c) for c in summary["term_exit_codes"]),
    ]
    notes += [f"- {d}" for d in summary["overlap_details"]]
    for note in notes:
        print(textwrap.fill(note, width=100, subsequent_indent="  "))


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[Round], Bench]:
    probe_log, probe_lock = workdir / "probe.log", workdir / "probe.lock"
    rounds: list[Round] = []
    with scratch_database("fleet_bench_failover") as dbname:
        fleet = Fleet(workdir, marker=workdir.name)
        bench = Bench(fleet, dbname, probe_log, args)
        try:
            for node_id in NODES:
                fleet.add(node_id, node_config(dbname, node_id, probe_log, probe_lock))
            for node in fleet.nodes.values():
                fleet.start(node)
            print(f"database {dbname}, work dir {workdir}", flush=True)
            for kind in ("kill", "term"):
                for index in range(args.rounds):
                    rounds.append(bench.round(kind, index))
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
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="most seconds to wait for a new leader in a round")
    parser.add_argument("--no-json", action="store_true",
                        help="do not write bench/results/ (JSON and the nodes' logs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not preflight():
        return 1
    began = time.monotonic()
    with bench_workdir("failover", keep=not args.no_json) as (workdir, out):
        rounds, bench = run(args, workdir)
        overlaps, regressions = bench.overlaps(), bench.token_regressions()
    elapsed = time.monotonic() - began
    summary = summarize(rounds, overlaps, regressions)
    print_table(summary, rounds, elapsed)
    write_results(out, {"args": vars(args), "elapsed_s": elapsed, "summary": summary,
                        "rounds": [asdict(r) for r in rounds]})
    bad = summary["overlaps"] or summary["orphans"] or summary["no_new_leader"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
