"""Benchmark: how long fleet control takes to act (issue 15), on PostgreSQL.

Run it with the project's interpreter: `.venv/bin/python bench/control.py [--rounds N]
[--fast]`. It prints a table, writes JSON to bench/results/, and exits non-zero (FAIL) when
a round did not complete or two instances of a worker ran at once.

Set-up: a database of its own on 127.0.0.1:5432 (dropped at the end); three nodes a, b, c
(`supervisor run`, metrics disabled), with the DEFAULT [coordination] timings (lease_ttl
10 s, renew_interval 1 s, renew_deadline 5 s; --fast: the e2e tests' 4 s / 300 ms / 1.5 s),
each declaring two workers: `probe`, global-leader, running tests/workers/probe.py (a
flock shared by every instance; it logs acquired/released with its own clock), and
`shard`, coordinated (stable_window 1 s), running tests/workers/coordprobe.py (start/end
lines). Both probes exit at once on SIGTERM, so a stop costs no stop_timeout.

Each round, on a settled fleet (a leader holds `probe`, three `shard` instances of one
generation run), measured from just before the command is started (what an operator
sees; the CLI's own start-up, about 0.3 s, included) and, in brackets, from the control
row's write (its requested_at, the database's clock: same host):

- pause probe: to the leader's child releasing its flock (the child stopped; its lease is
  released right after, once it is dead);
- pause shard: to every node's shard instance ended (every node stopped);
- handover probe: to the new leader's child holding the flock (on another node);
- drain NODE --wait (the leader's node): to the command returning (the node holds
  nothing: leaderships released, memberships left, slots given back).

Each is lifted again (resume, undrain) and the fleet settles before the next. Overlaps are
judged by the probes' own flocks and logs, as the e2e tests judge them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pgfleet import database_url, preflight, scratch_database
from procs import ROOT

sys.path.insert(0, str(ROOT))

from supervisor.store.sql import SqlStore
from tests.support.fleet import FAST, Fleet, ProbeLog, Timings, worker_toml
from tests.support.probelogs import Instance, parse_coord_log

SUPERVISOR = ROOT / ".venv" / "bin" / "supervisor"
DEFAULT = Timings(lease_ttl=10.0, renew_interval=1.0, renew_deadline=5.0)
TIMEOUT = 60.0


class ControlFleet(Fleet):
    """Three nodes, each with a leader probe and a coordinated probe."""

    def __init__(self, directory: Path, url: str, timings: Timings) -> None:
        super().__init__(directory, url, timings)
        self.coord_dir = directory / "coord"
        self.coord_dir.mkdir()
        (self.coord_dir / "log").touch()

    def worker_table(self, *, group: str, mode: str, probe: ProbeLog,
                     worker_env: dict[str, str]) -> str:  # type: ignore[override]
        return (worker_toml("probe", "probe.py", "global-leader", {**probe.env(), **worker_env},
                            {"stop_timeout": "10s"}) + "\n"
                + worker_toml("shard", "coordprobe.py", "coordinated",
                              {"PROBE_DIR": str(self.coord_dir)},
                              {"stable_window": "1s", "stop_timeout": "10s"}))

    def shard(self) -> list[Instance]:
        return parse_coord_log((self.coord_dir / "log").read_text())

    def shard_running(self) -> list[Instance]:
        ended = {i.pid for i in self.shard() if i.kind == "end"}
        return [i for i in self.shard() if i.kind == "start" and i.pid not in ended]


@dataclass
class Figures:
    pause_leader: list[float] = field(default_factory=list)
    pause_leader_row: list[float] = field(default_factory=list)
    pause_all: list[float] = field(default_factory=list)
    pause_all_row: list[float] = field(default_factory=list)
    handover: list[float] = field(default_factory=list)
    handover_row: list[float] = field(default_factory=list)
    drain: list[float] = field(default_factory=list)
    drain_row: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def until(what: str, check: Any, timeout: float = TIMEOUT, poll: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(poll)


class Bench:
    def __init__(self, fleet: ControlFleet, url: str) -> None:
        self.fleet = fleet
        self.url = url
        self.probe = fleet.probe()
        self.config = fleet.nodes["a"].config

    def cli(self, *args: str) -> tuple[float, str]:
        """Run a command; (its start, time.time()) and its output. Fails the round on a
        non-zero exit."""
        started = time.time()
        done = subprocess.run([str(SUPERVISOR), *args, "-c", str(self.config)],
                              capture_output=True, text=True, timeout=TIMEOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{args}: exit {done.returncode}: {done.stderr.strip()}")
        return started, done.stdout

    def requested_at(self) -> float:
        """The newest control action's time (the database's clock)."""
        store = SqlStore(self.url)
        try:
            return store.control_log(limit=1)[0].at
        finally:
            store.close()

    def settled(self) -> tuple[str, int]:
        """A leader holds the probe and one shard instance runs per node: (node, pid)."""
        def ready() -> tuple[str, int] | None:
            holding = [t for t in self.fleet.terms(self.probe) if t.ended is None]
            running = self.fleet.shard_running()
            if (len(holding) == 1 and {i.node for i in running} == {"a", "b", "c"}
                    and len(running) == 3 and len({i.generation for i in running}) == 1):
                return holding[0].node, holding[0].pid
            return None

        found: tuple[str, int] = until("a settled fleet", ready)
        time.sleep(1.0)
        return found

    def pause_leader(self, figures: Figures) -> None:
        _, pid = self.settled()
        started, _ = self.cli("pause", "probe")
        row = self.requested_at()
        term = self.fleet.wait_ended(self.probe, pid, TIMEOUT)
        assert term.ended is not None
        figures.pause_leader.append(term.ended - started)
        figures.pause_leader_row.append(term.ended - row)
        self.cli("resume", "probe")

    def pause_all(self, figures: Figures) -> None:
        self.settled()
        pids = {i.pid for i in self.fleet.shard_running()}
        started, _ = self.cli("pause", "shard")
        row = self.requested_at()
        ends = until("every shard instance ended", lambda: (
            [i.at for i in self.fleet.shard() if i.kind == "end" and i.pid in pids]
            if all(any(i.kind == "end" and i.pid == pid for i in self.fleet.shard())
                   for pid in pids) else None))
        figures.pause_all.append(max(ends) - started)
        figures.pause_all_row.append(max(ends) - row)
        self.cli("resume", "shard")

    def handover(self, figures: Figures) -> None:
        node, pid = self.settled()
        mark = self.probe.mark()
        started, _ = self.cli("handover", "probe")
        row = self.requested_at()
        event = self.probe.wait_for("acquired", TIMEOUT, since=mark,
                                    where=lambda e: e.pid != pid)
        if event.node == node:
            figures.failures.append(f"handover: {node} took the lease back")
        figures.handover.append(event.at - started)
        figures.handover_row.append(event.at - row)

    def drain(self, figures: Figures) -> None:
        node, _ = self.settled()
        started, _ = self.cli("drain", node, "--wait", "--timeout", str(TIMEOUT))
        returned = time.time()
        row = self.requested_at()
        figures.drain.append(returned - started)
        figures.drain_row.append(returned - row)
        self.cli("undrain", node)


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"median {statistics.median(values):6.3f} s  max {max(values):6.3f} s  "
            f"(n={len(values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fast", action="store_true", help="the e2e tests' timings")
    args = parser.parse_args()
    if not preflight():
        return 1
    timings = FAST if args.fast else DEFAULT
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="fs-control-") as tmp, \
            scratch_database("fs_bench_control") as dbname:
        url = database_url(dbname)
        fleet = ControlFleet(Path(tmp), url, timings)
        try:
            fleet.start_nodes("a", "b", "c")
            bench = Bench(fleet, url)
            for index in range(args.rounds):
                for step in (bench.pause_leader, bench.pause_all, bench.handover,
                             bench.drain):
                    try:
                        step(figures)
                    except (RuntimeError, TimeoutError, AssertionError) as exc:
                        figures.failures.append(f"round {index + 1} {step.__name__}: {exc}")
                print(f"round {index + 1}/{args.rounds} done", flush=True)
            overlaps = fleet.overlaps()
            overlaps += [str(i) for i in fleet.shard() if i.kind == "OVERLAP"]
        finally:
            fleet.close()
    figures.failures += [f"overlap: {o}" for o in overlaps]
    print(f"\nfleet control, 3 nodes on PostgreSQL, lease_ttl {timings.lease_ttl:g} s, "
          f"renew_interval {timings.renew_interval:g} s, renew_deadline "
          f"{timings.renew_deadline:g} s; from the command's start [from the row's write]")
    rows = [("pause (leader stopped)", figures.pause_leader, figures.pause_leader_row),
            ("pause (every node stopped)", figures.pause_all, figures.pause_all_row),
            ("handover (new leader running)", figures.handover, figures.handover_row),
            ("drain --wait (holds nothing)", figures.drain, figures.drain_row)]
    for name, command, row in rows:
        print(f"  {name:<31} {summary(command)}   [{summary(row)}]")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"control-{int(time.time())}.json"
    path.write_text(json.dumps({"timings": asdict(timings), **asdict(figures)}, indent=2))
    print(f"written: {path}")
    for failure in figures.failures:
        print(f"FAIL {failure}")
    print("PASS" if not figures.failures else "FAIL")
    return 0 if not figures.failures else 1


if __name__ == "__main__":
    sys.exit(main())
