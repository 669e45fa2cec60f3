"""A seeded fault campaign: K nodes running every mode at once, faults drawn from a seed.

    .venv/bin/python bench/chaos.py --minutes N --seed S [--nodes K] [--db-restart]
                                    [--private-server]

Set-up: a fresh PostgreSQL database `fs_chaos_<hex>` (dropped at the end) on the shared
server 127.0.0.1:5432, or with --private-server on a PostgreSQL 15 server of its own
(initdb in a temporary directory, a free port, stopped and removed at the end); K
`supervisor run` nodes (default 5, ids n1..nK, groups g1/g2 alternating), each reaching
the database through its own TcpProxy, with the short test timings (FAST: lease_ttl 4 s,
renew_interval 300 ms, renew_deadline 1.5 s). Every node runs:

- `leader`: global-leader, tests/workers/probe.py (a shared flock; log `global`),
  stop_timeout 20 s, draining 8 s on SIGTERM on n1;
- `regional`: group-leader, probe.py with a log per group (`group-g1`, `group-g2`),
  stop_timeout 20 s, draining 8 s on n1;
- `shard`: coordinated, tests/workers/coordprobe.py (OVERLAP lines), stable_window 1 s,
  stop_timeout 20 s, draining 3 s on n1;
- `tick`: cron `@every 2s`, max_run 2, misfire_grace 3 s, overlap forbid,
  tests/workers/cronprobe.py (each run lasts 0.5 s);
- `chatter`: every-node, tests/workers/chatter.py: two lines a second, 1000 lines of 200
  bytes a second while its node's stdout reader is stalled (the `stall` fault).

n1's slow drains (8 s leader and regional, 3 s shard, under 20 s stop timeouts) are cut
short by the trust deadline when n1 loses a lease it cannot renew, and run to the end on
a clean stop (term, clock) or a reload; the summary counts both ends of each drain.

Faults, one every 2-5 s from random.Random(seed), each undone after its duration, never
on a node already under a fault, and never leaving fewer than 2 nodes up. The first
faults are every kind once, in a seeded order (so that even a short campaign has each),
then kinds are drawn by weight. Every parameter is drawn when the fault is injected.

- kill9:     SIGKILL to the supervisor alone; restarted 2-5 s after it died
- term:      SIGTERM to the supervisor (a clean stop: n1 drains); restarted 2-5 s after
             it exited
- stop:      SIGSTOP to the supervisor alone, SIGCONT after 2, 6 or 12 s
- freeze:    SIGSTOP to the supervisor and every descendant, SIGCONT after 1-2.5 s (kept
             under lease_ttl: a node frozen whole past its lease is the one case SPEC.md
             guarantee 1 says no lease covers)
- blackhole: the node's database traffic dropped for 5, 12 or 30 s, then heal()
- refuse:    the node's database connections reset for 2-6 s, then heal()
- delay:     the node's database traffic delayed 0.3-3 s each way (every chunk held that
             long, TcpProxy.delay) for 5-20 s, then heal()
- clock:     the node's supervisor stopped cleanly and started again under libfaketime
             with its wall clock 40 s ahead or behind (its children get the real clock:
             the probe logs are the instrument), for 10-30 s, then stopped and started
             again with the right clock
- stall:     the reader of the node's supervisor stdout stops reading for 8-20 s while
             its `chatter` worker is loud (it stays loud 2 s after reading resumes)
- sighup:    one worker's env var changed in the node's file, then SIGHUP
- dbrestart: only with --db-restart: the whole PostgreSQL server stopped (pg_ctlcluster
             15 main stop, or pg_ctl for --private-server; mode fast or immediate), down
             2-6 s, then started. With the shared server this hits everything using it:
             give the flag only when nothing else runs (make test's serial phase does).

Not covered (it needs other machinery): a node frozen whole past its lease.

At the end every fault is undone, every node is running again for a settle period, then
every node gets SIGTERM and the verdict is printed. Exit status 1 when any of these is
not 0: leader overlaps (probe logs, fleet.overlaps()), coordinated OVERLAP lines, cron
ticks with more than max_run runs (or a slot or node twice), cron runs still `running` in
fs_cron_runs, workers alive after every node stopped, nodes that did not stop within
40 s of a SIGTERM (during the campaign or at the end). Also printed: failover gaps per
leader probe, coordinated rebalance times, cron ticks that got fewer than max_run runs
while at least max_run nodes were healthy (no fault on them, nor in the 5 s before, nor
on the database), the slow drains and how they ended, the stdout stalls the nodes
reported. The work directory (probe logs, node logs node-<name>.log, faults.txt,
summary.txt) is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from supervisor.model import format_utc  # noqa: E402
from tests.conftest import SUPERVISOR_BIN, Running, pid_alive  # noqa: E402
from tests.support.fleet import (  # noqa: E402
    FAST,
    Fleet,
    Node,
    ProbeEvent,
    ProbeLog,
    Term,
    libfaketime,
    worker_toml,
)
from tests.support.probelogs import (  # noqa: E402
    Instance,
    RunEvent,
    parse_coord_log,
    parse_cron_log,
)

GROUPS = ("g1", "g2")
DRAIN_NODE = "n1"
MAX_RUN = 2
TICK_EVERY = 2.0
MISFIRE_GRACE = 3.0
MIN_UP = 2
SETTLE = 10.0  # after the last fault: longer than lease_ttl plus a few syncs
STOP_WAIT = 40.0  # a clean stop: the 8 s drain and slack on a loaded machine
RECOVER = 5.0  # after a fault ends, a node is not counted healthy for this long
SKEW = ("+40s", "-40s")
CHATTER = "chatter pid="  # the start of a chatter line (after the supervisor's prefix)
STALLED = re.compile(r"output: (\d+) lines? dropped .* while the reader of stdout stalled")


# -- the database server ----------------------------------------------------------------


def _run_quiet(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Server:
    """The PostgreSQL server the campaign uses, which dbrestart stops and starts."""

    host = "127.0.0.1"
    port = 5432

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user=postgres dbname={dbname}"

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{dbname}"

    def answers(self) -> bool:
        argv = ["pg_isready", "-q", "-h", self.host, "-p", str(self.port)]
        return subprocess.run(argv, capture_output=True, check=False, timeout=10).returncode == 0

    def stop(self, mode: str) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def start(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        """Leave the server running (the shared one), or remove it (a private one)."""


class SharedCluster(Server):
    """The machine's cluster on 127.0.0.1:5432, through pg_ctlcluster (needs root or the
    postgres user)."""

    def __init__(self) -> None:
        versions = sorted(os.listdir("/etc/postgresql")) if Path("/etc/postgresql").is_dir() \
            else []
        self.version = versions[0] if versions else "15"

    def _ctl(self, *args: str) -> subprocess.Popen[bytes]:
        return _run_quiet(["pg_ctlcluster", "--skip-systemctl-redirect", self.version, "main",
                           *args])

    def stop(self, mode: str) -> subprocess.Popen[bytes]:
        return self._ctl("stop", "-m", mode)

    def start(self) -> subprocess.Popen[bytes]:
        return self._ctl("start")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateServer(Server):
    """A PostgreSQL server of the campaign's own: initdb in a temporary directory (as the
    postgres user when run as root), trust for local TCP, a free port."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            raise SystemExit("--private-server needs PostgreSQL's initdb (/usr/lib/postgresql)")
        self.bin = found[-1].parent
        self.directory = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*self.as_user, str(self.bin / "initdb"), "-D", str(self.data),
                        "-U", "postgres", "--auth=trust", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.directory}'\n"
                       "fsync = off\nmax_connections = 200\n")
        if self.start().wait(timeout=120) != 0:
            raise SystemExit(f"the private server did not start; see {self.log}")

    def _ctl(self, *args: str) -> subprocess.Popen[bytes]:
        return _run_quiet([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data),
                           "-l", str(self.log), "-w", *args])

    def stop(self, mode: str) -> subprocess.Popen[bytes]:
        return self._ctl("stop", "-m", mode)

    def start(self) -> subprocess.Popen[bytes]:
        return self._ctl("start")

    def close(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.stop("fast").wait(timeout=60)
        shutil.rmtree(self.directory, ignore_errors=True)


# -- the nodes --------------------------------------------------------------------------


class StallableRunning(Running):
    """Running whose stdout reader can be stopped (`reading.clear()`), leaving the pipe to
    fill as a stalled log shipper would. Chatter lines are counted, not kept."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.reading = threading.Event()
        self.reading.set()
        self.chatter_lines = 0
        super().__init__(argv, env, cwd)

    def _read(self, name: str, stream: object) -> None:
        reader: IO[bytes] = stream  # type: ignore[assignment]
        while True:
            if name == "stdout":
                self.reading.wait()
            raw = reader.readline()
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip("\n")
            if CHATTER in line:
                self.chatter_lines += 1
                continue
            self._queue.put((name, line))
        self._queue.put(None)


class ChaosNode(Node):
    """A node whose supervisor may run under libfaketime (`clock`) and whose stdout reader
    may stall."""

    clock: str | None = None

    @property
    def running(self) -> StallableRunning:
        run = self.runs[-1]
        assert isinstance(run, StallableRunning)
        return run

    def start(self) -> ChaosNode:
        env = dict(self.env)
        if self.clock is not None:
            preload = libfaketime()
            assert preload is not None
            env.update(LD_PRELOAD=preload, FAKETIME=self.clock)
        argv = [str(SUPERVISOR_BIN), "run", "-c", str(self.config)]
        self.runs.append(StallableRunning(argv, env, self.cwd))
        return self


class ChaosFleet(Fleet):
    """Nodes that each run a global-leader, a group-leader, a coordinated, a cron probe
    and a chatter."""

    def __init__(self, directory: Path, database_url: str) -> None:
        super().__init__(directory, database_url, FAST)
        self.global_probe = self.probe("global")
        self.group_probes = {group: self.probe(f"group-{group}") for group in GROUPS}
        self.coord_dir = directory / "coord"
        self.coord_dir.mkdir()
        (self.coord_dir / "log").touch()
        self.cron_log = directory / "cron.log"
        self.cron_log.touch()

    def loud(self, node: str) -> Path:
        return self.directory / f"loud-{node}"

    def worker_table(self, *, group: str, mode: str, probe: ProbeLog,
                     worker_env: Mapping[str, str]) -> str:
        # The children of a supervisor under libfaketime get the real clock back.
        real_clock = {"LD_PRELOAD": "", "FAKETIME": ""}
        drain = {"PROBE_DRAIN_ON": DRAIN_NODE, "CHAOS_EPOCH": "0", **real_clock, **worker_env}
        long_stop = {"stop_timeout": "20s"}
        return "\n".join((
            worker_toml("leader", "probe.py", "global-leader",
                        {**self.global_probe.env(), "PROBE_DRAIN": "8", **drain}, long_stop),
            worker_toml("regional", "probe.py", "group-leader",
                        {**self.group_probes[group].env(), "PROBE_DRAIN": "8", **drain},
                        long_stop),
            worker_toml("shard", "coordprobe.py", "coordinated",
                        {"PROBE_DIR": str(self.coord_dir), "PROBE_DRAIN": "3", **drain},
                        {"stable_window": "1000ms", **long_stop}),
            worker_toml("tick", "cronprobe.py", "cron",
                        {"PROBE_LOG": str(self.cron_log), "CRON_RUN_SECONDS": "0.5",
                         "CHAOS_EPOCH": "0", **real_clock, **worker_env},
                        {"cron": f"@every {TICK_EVERY:g}s", "max_run": MAX_RUN,
                         "misfire_grace": f"{MISFIRE_GRACE:g}s", "overlap": "forbid",
                         "stop_timeout": "5s"}),
            worker_toml("chatter", "chatter.py", "every-node",
                        {"CHATTER_LOUD": str(self.directory / "loud-{node}"),
                         "CHATTER_RATE": "1000", "CHAOS_EPOCH": "0", **real_clock,
                         **worker_env},
                        {"restart": "always"}),
        ))

    def add_node(self, name: str, group: str) -> ChaosNode:
        plain = self.node(name, probe=self.global_probe, group=group, via_proxy=True,
                          start=False)
        node = ChaosNode(plain.name, plain.config, plain.env, plain.cwd, plain.proxy)
        self.nodes[name] = node
        return node.start()


def bump_epoch(path: Path, worker: str) -> int:
    """Change CHAOS_EPOCH in [workers.<worker>]'s env; the new value."""
    text = path.read_text()
    start = text.index(f"[workers.{worker}]")
    match = re.compile(r'CHAOS_EPOCH = "(\d+)"').search(text, start)
    assert match is not None
    value = int(match.group(1)) + 1
    path.write_text(text[:match.start()] + f'CHAOS_EPOCH = "{value}"' + text[match.end():])
    return value


def descendants(pid: int) -> list[int]:
    """Every descendant of pid, through /proc/<pid>/task/<tid>/children."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                text = Path(f"/proc/{parent}/task/{tid}/children").read_text()
            except OSError:
                continue
            for child in map(int, text.split()):
                if child not in found:
                    found.append(child)
                    todo.append(child)
    return found


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


# -- faults ---------------------------------------------------------------------------

DB = "db"  # the `node` of a fault on the database server itself


@dataclass
class Fault:
    """A fault is a script: each step does something and yields how long to wait before
    the next step; the first step injects, the last one undoes."""

    kind: str
    node: str
    at: float  # time.time() when injected
    duration: float
    detail: str = ""
    ended: float | None = None  # time.time() when undone
    next_at: float = 0.0  # monotonic
    script: Iterator[float] = field(default_factory=lambda: iter(()))

    def __str__(self) -> str:
        extra = f" {self.detail}" if self.detail else ""
        end = f" (until {self.ended:.3f})" if self.ended is not None else ""
        return f"{self.at:.3f} {self.kind:<9} {self.node} {self.duration:.1f}s{extra}{end}"


KINDS = {"kill9": 2.0, "term": 2.0, "stop": 1.5, "freeze": 1.0, "blackhole": 2.0,
         "refuse": 1.5, "delay": 1.5, "clock": 1.0, "stall": 1.0, "sighup": 1.5,
         "dbrestart": 0.5}
KEEPS_NODE_UP = ("sighup", "dbrestart")  # the others take a node out for a while


class Campaign:
    def __init__(self, fleet: ChaosFleet, rng: random.Random, server: Server,
                 kinds: Mapping[str, float]) -> None:
        self.fleet = fleet
        self.rng = rng
        self.server = server
        self.kinds = dict(kinds)
        self.first_round = rng.sample(list(self.kinds), len(self.kinds))
        self.active: dict[str, Fault] = {}
        self.done: list[Fault] = []
        self.stop_codes: list[tuple[str, int | None]] = []
        self.hung: list[str] = []
        self.notes: list[str] = []

    def _possible(self, kind: str, free: list[str], up: int) -> bool:
        if kind == "dbrestart":
            return DB not in self.active
        return bool(free) and (kind in KEEPS_NODE_UP or up - 1 >= MIN_UP)

    def inject(self) -> Fault | None:
        free = sorted(name for name in self.fleet.nodes if name not in self.active)
        up = len(self.fleet.nodes) - sum(
            1 for name, fault in self.active.items()
            if name != DB and fault.kind not in KEEPS_NODE_UP)
        kind = next((k for k in self.first_round if self._possible(k, free, up)), None)
        if kind is not None:
            self.first_round.remove(kind)
        else:
            kind = self.rng.choices(list(self.kinds), weights=list(self.kinds.values()))[0]
            if not self._possible(kind, free, up):
                return None
        if kind == "dbrestart":
            fault = self._dbrestart()
        else:
            node = self.fleet.nodes[self.rng.choice(free)]
            assert isinstance(node, ChaosNode)
            fault = getattr(self, f"_{kind}")(node)
        fault.next_at = time.monotonic() + next(fault.script)  # the injection
        self.active[fault.node] = fault
        self.done.append(fault)
        print(f"  fault {fault}", flush=True)
        return fault

    def tick(self) -> None:
        """Run every fault's next step whose time has come."""
        now = time.monotonic()
        for name, fault in list(self.active.items()):
            if fault.next_at <= now:
                try:
                    fault.next_at = time.monotonic() + next(fault.script)
                except StopIteration:
                    fault.ended = time.time()
                    del self.active[name]

    def undo_all(self) -> None:
        while self.active:
            for fault in self.active.values():
                fault.next_at = 0.0
            self.tick()
            if self.active:
                time.sleep(0.1)

    def _fault(self, kind: str, node: str, duration: float, script: Iterator[float],
               detail: str = "") -> Fault:
        return Fault(kind, node, time.time(), duration, detail, script=script)

    def _exited(self, node: ChaosNode, why: str) -> Iterator[float]:
        """Until the node's supervisor has exited; a node that does not exit within
        STOP_WAIT of its SIGTERM hangs: noted, then killed."""
        deadline = time.monotonic() + STOP_WAIT
        while node.alive:
            if time.monotonic() > deadline:
                self.hung.append(f"{node.name} ({why}, pid {node.pid}, at {time.time():.3f})")
                print(f"  HUNG: {node.name} did not exit within {STOP_WAIT:g}s ({why})",
                      flush=True)
                node.running.kill_all()
                break
            yield 0.1
        self.stop_codes.append((node.name, node.running.proc.returncode))

    def _kill9(self, node: ChaosNode) -> Fault:
        down = self.rng.uniform(2, 5)

        def script() -> Iterator[float]:
            node.kill9()
            yield down
            node.start()
        return self._fault("kill9", node.name, down, script())

    def _term(self, node: ChaosNode) -> Fault:
        down = self.rng.uniform(2, 5)

        def script() -> Iterator[float]:
            node.running.signal(signal.SIGTERM)
            yield 0.1
            yield from self._exited(node, "term")
            yield down
            node.start()
        return self._fault("term", node.name, down, script())

    def _stop(self, node: ChaosNode) -> Fault:
        pause = self.rng.choice((2.0, 6.0, 12.0))

        def script() -> Iterator[float]:
            pid = node.pid
            os.kill(pid, signal.SIGSTOP)
            yield pause
            signal_all([pid], signal.SIGCONT)
        return self._fault("stop", node.name, pause, script())

    def _freeze(self, node: ChaosNode) -> Fault:
        pause = self.rng.uniform(1.0, 2.5)
        fault = self._fault("freeze", node.name, pause, iter(()))

        def script() -> Iterator[float]:
            pid = node.pid
            os.kill(pid, signal.SIGSTOP)
            pids = [pid, *descendants(pid)]
            signal_all(pids[1:], signal.SIGSTOP)
            fault.detail = f"pids={len(pids)}"
            yield pause
            signal_all(pids[::-1], signal.SIGCONT)
        fault.script = script()
        return fault

    def _blackhole(self, node: ChaosNode) -> Fault:
        assert node.proxy is not None
        proxy = node.proxy
        cut = self.rng.choice((5.0, 12.0, 30.0))

        def script() -> Iterator[float]:
            proxy.blackhole()
            yield cut
            proxy.heal()
        return self._fault("blackhole", node.name, cut, script())

    def _refuse(self, node: ChaosNode) -> Fault:
        assert node.proxy is not None
        proxy = node.proxy
        gone = self.rng.uniform(2, 6)

        def script() -> Iterator[float]:
            proxy.refuse()
            yield gone
            proxy.heal()
        return self._fault("refuse", node.name, gone, script())

    def _delay(self, node: ChaosNode) -> Fault:
        assert node.proxy is not None
        proxy = node.proxy
        seconds = self.rng.uniform(0.3, 3.0)
        slow = self.rng.uniform(5, 20)

        def script() -> Iterator[float]:
            proxy.delay(seconds)
            yield slow
            proxy.heal()
        return self._fault("delay", node.name, slow, script(), f"each way {seconds:.2f}s")

    def _clock(self, node: ChaosNode) -> Fault:
        skew = self.rng.choice(SKEW)
        skewed = self.rng.uniform(10, 30)

        def script() -> Iterator[float]:
            node.running.signal(signal.SIGTERM)
            yield 0.1
            yield from self._exited(node, "clock: stop before the skew")
            node.clock = skew
            node.start()
            yield skewed
            node.running.signal(signal.SIGTERM)
            yield 0.1
            yield from self._exited(node, "clock: stop after the skew")
            node.clock = None
            node.start()
        return self._fault("clock", node.name, skewed, script(), f"FAKETIME={skew}")

    def _stall(self, node: ChaosNode) -> Fault:
        unread = self.rng.uniform(8, 20)
        loud = self.fleet.loud(node.name)

        def script() -> Iterator[float]:
            running = node.running
            loud.touch()
            running.reading.clear()
            yield unread
            running.reading.set()
            yield 2.0
            loud.unlink()
        return self._fault("stall", node.name, unread, script())

    def _sighup(self, node: ChaosNode) -> Fault:
        worker = self.rng.choice(("leader", "regional", "shard", "tick", "chatter"))

        def script() -> Iterator[float]:
            node.running.signal(signal.SIGHUP)
            yield 3.0
        epoch = bump_epoch(node.config, worker)
        return self._fault("sighup", node.name, 3.0, script(), f"{worker} CHAOS_EPOCH={epoch}")

    def _dbrestart(self) -> Fault:
        mode = self.rng.choice(("fast", "immediate"))
        down = self.rng.uniform(2, 6)
        server = self.server

        def script() -> Iterator[float]:
            stopping = server.stop(mode)
            while stopping.poll() is None:
                yield 0.1
            if stopping.returncode != 0:
                self.notes.append(f"dbrestart: stop exited {stopping.returncode}: "
                                  f"{stopping.stderr.read().decode() if stopping.stderr else ''}")
            yield down
            for attempt in range(5):
                starting = server.start()
                while starting.poll() is None:
                    yield 0.2
                if starting.returncode == 0 or server.answers():
                    break
                self.notes.append(f"dbrestart: start attempt {attempt + 1} exited "
                                  f"{starting.returncode}")
                yield 2.0
            while not server.answers():
                yield 0.2
        return self._fault("dbrestart", DB, down, script(), f"mode={mode}")


# -- the verdict ------------------------------------------------------------------------


def cron_starts(path: Path) -> list[RunEvent]:
    return [event for event in parse_cron_log(path.read_text()) if event.kind == "start"]


def cron_breaches(starts: list[RunEvent]) -> list[str]:
    by_tick: dict[float, list[RunEvent]] = defaultdict(list)
    for start in starts:
        by_tick[start.tick].append(start)
    found = []
    for tick, runs in sorted(by_tick.items()):
        if (len(runs) > MAX_RUN or len({r.slot for r in runs}) != len(runs)
                or len({r.node for r in runs}) != len(runs)):
            seen = ", ".join(f"{r.node}/slot {r.slot}/pid {r.pid}" for r in runs)
            found.append(f"tick {format_utc(tick)}: {seen}")
    return found


def unhealthy(faults: list[Fault], node: str, start: float, end: float) -> bool:
    """Whether a fault on the node (or on the database) touched [start, end], counting
    RECOVER seconds after each fault's end; stalls and reloads do not count: the SPEC
    says neither may hold supervision back."""
    for fault in faults:
        if fault.node not in (node, DB) or fault.kind in ("stall", "sighup"):
            continue
        ended = (fault.ended if fault.ended is not None else end) + RECOVER
        if fault.at <= end and ended >= start:
            return True
    return False


@dataclass(frozen=True)
class RunRow:
    """One fs_cron_runs row of the tick worker."""

    tick: float
    slot: int
    node: str | None
    state: str


def short_ticks(starts: list[RunEvent], rows: list[RunRow], faults: list[Fault],
                nodes: list[str], begin: float, end: float) -> tuple[int, dict[str, list[str]]]:
    """Ticks in [begin, end] while at least MAX_RUN nodes were healthy around them (from
    the previous tick to the end of the grace), and those of them with fewer than MAX_RUN
    runs, by what the database says of them: a slot claimed by a faulted node, the tick
    skipped (overlap = forbid: an earlier run was not yet known to have ended), recorded
    missed, or nothing that explains it."""
    runs = Counter(start.tick for start in starts)
    by_tick: dict[float, list[RunRow]] = defaultdict(list)
    for row in rows:
        by_tick[row.tick].append(row)
    tick = (begin // TICK_EVERY + 1) * TICK_EVERY
    judged = 0
    short: dict[str, list[str]] = defaultdict(list)
    while tick <= end:
        window = (tick - TICK_EVERY, tick + MISFIRE_GRACE)
        healthy = [n for n in nodes if not unhealthy(faults, n, *window)]
        if len(healthy) >= MAX_RUN:
            judged += 1
            if runs[tick] < MAX_RUN:
                found = by_tick[tick]
                seen = ", ".join(f"{r.node}/slot {r.slot} {r.state}" for r in found) or "no rows"
                line = (f"tick {format_utc(tick)}: {runs[tick]} runs; healthy "
                        f"{','.join(healthy)}; rows: {seen}")
                if any(r.slot >= 0 and r.node not in healthy for r in found):
                    short["a slot went to a faulted node"].append(line)
                elif any(r.state == "skipped" for r in found):
                    short["skipped (overlap = forbid)"].append(line)
                elif any(r.state == "missed" for r in found):
                    short["recorded missed"].append(line)
                else:
                    short["unexplained"].append(line)
        tick += TICK_EVERY
    return judged, short


def failovers(held: list[Term]) -> list[tuple[float, Term, Term]]:
    """(gap, ended, next): from a term's end to the next term's acquiring."""
    gaps = []
    for before, after in itertools.pairwise(held):
        if before.ended is not None:
            gaps.append((after.acquired - before.ended, before, after))
    return gaps


def rebalances(instances: list[Instance]) -> tuple[list[float], int]:
    """For each coordinated generation that ran whole (every index of its count started):
    from the first stop line (draining or end) of an older generation's instance after
    the previous whole generation was whole, to this one's last index starting. Also the
    number of generations superseded before they were whole."""
    by_gen: dict[int, list[Instance]] = defaultdict(list)
    for inst in instances:
        by_gen[inst.generation].append(inst)
    whole: dict[int, float] = {}
    for gen, group in by_gen.items():
        starts = sorted((i for i in group if i.kind == "start"), key=lambda i: i.at)
        seen: set[int] = set()
        for inst in starts:
            seen.add(inst.index)
            if starts and len(seen) == inst.count:
                whole[gen] = inst.at
                break
    times = []
    previous: float | None = None
    for gen in sorted(whole):
        if previous is not None:
            stops = [i.at for g, group in by_gen.items() if g < gen for i in group
                     if i.kind in ("draining", "end") and previous <= i.at <= whole[gen]]
            if stops:
                times.append(whole[gen] - min(stops))
        previous = whole[gen]
    started = {g for g, group in by_gen.items() if any(i.kind == "start" for i in group)}
    return times, len(started - set(whole))


def spread(values: list[float]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    return (f"min {ordered[0]:.2f}s median {statistics.median(ordered):.2f}s "
            f"max {ordered[-1]:.2f}s")


def drains(events: list[ProbeEvent], deaths: Mapping[int, float]) -> tuple[int, int, int]:
    """(drains, run to their release, cut short by a kill) in a leader probe log."""
    draining = {e.pid: e.at for e in events if e.kind == "draining"}
    released = {e.pid for e in events if e.kind == "released"}
    done = sum(1 for pid in draining if pid in released)
    cut = sum(1 for pid in draining if pid not in released and pid in deaths)
    return len(draining), done, cut


def all_worker_pids(fleet: ChaosFleet) -> set[int]:
    pids = {e.pid for probe in fleet.probes.values() for e in probe.find("started")}
    pids.update(i.pid for i in parse_coord_log((fleet.coord_dir / "log").read_text()))
    pids.update(start.pid for start in cron_starts(fleet.cron_log))
    return pids


def chatter_pids() -> set[int]:
    """Chatter workers still alive (they log nothing: found by their command line)."""
    found = set()
    script = str(ROOT / "tests" / "workers" / "chatter.py").encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if script in (entry / "cmdline").read_bytes() and pid_alive(int(entry.name)):
                    found.add(int(entry.name))
    return found


def query(server: Server, dbname: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(server.dsn(dbname), autocommit=True, connect_timeout=5) as conn:
        return list(conn.execute(sql).fetchall())


def stop_all(fleet: ChaosFleet) -> list[str]:
    """SIGTERM to every node at once; the names of those that did not stop in time."""
    live = [node for node in fleet.nodes.values() if node.alive]
    for node in live:
        node.running.signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT
    hung = []
    for node in live:
        try:
            code = node.running.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if code != 0:
                print(f"  note: {node.name} exited {code} on the final SIGTERM")
        except subprocess.TimeoutExpired:
            hung.append(f"{node.name} (final SIGTERM)")
            node.running.kill_all()
    return hung


@dataclass
class Window:
    begin: float  # time.time() when the faults began
    end: float  # when the last fault was undone


def judge(fleet: ChaosFleet, campaign: Campaign, server: Server, dbname: str, seed: int,
          minutes: float, window: Window, hung: list[str]) -> int:
    time.sleep(1.0)  # children of a clean stop are gone by now; let DeathWatch see them
    fleet.watch.sync()
    orphans = sorted(pid for pid in all_worker_pids(fleet) | chatter_pids() if pid_alive(pid))
    leader_overlaps = fleet.overlaps()
    instances = parse_coord_log((fleet.coord_dir / "log").read_text())
    coord_overlaps = [i for i in instances if i.kind == "OVERLAP"]
    starts = cron_starts(fleet.cron_log)
    breaches = cron_breaches(starts)
    running = query(server, dbname, "SELECT token, worker, tick, slot, holder_node "
                                    "FROM fs_cron_runs WHERE state = 'running'")
    states = Counter(dict(query(server, dbname, "SELECT state, count(*) FROM fs_cron_runs "
                                                "GROUP BY state")))
    db_over = query(server, dbname, f"SELECT tick, count(*) FROM fs_cron_runs WHERE slot >= 0 "
                                    f"GROUP BY tick HAVING count(*) > {MAX_RUN}")
    kinds = Counter(fault.kind for fault in campaign.done)
    hung = campaign.hung + hung
    rows = [RunRow(float(tick), int(slot), node, str(state)) for tick, slot, node, state
            in query(server, dbname, "SELECT tick, slot, holder_node, state FROM fs_cron_runs")]
    judged, short = short_ticks(starts, rows, campaign.done, sorted(fleet.nodes),
                                window.begin + SETTLE, window.end)
    shown = [*short["unexplained"], *short["recorded missed"]]
    rebalance, superseded = rebalances(instances)
    outputs = {name: node.output() for name, node in fleet.nodes.items()}
    reported = [int(m.group(1)) for text in outputs.values() for m in STALLED.finditer(text)]
    uncovered = ["a node frozen whole past its lease"]
    if "dbrestart" not in campaign.kinds:
        uncovered.insert(0, "database restart (no --db-restart)")
    if "clock" not in campaign.kinds:
        uncovered.insert(0, "clock skew (libfaketime not installed)")

    lines = [
        "",
        "=== chaos summary ===",
        f"seed {seed}, {minutes:g} min, {len(fleet.nodes)} nodes, work dir {fleet.directory}",
        f"faults injected: {len(campaign.done)} "
        + ", ".join(f"{kind} {kinds[kind]}" for kind in campaign.kinds),
        "not covered: " + ", ".join(uncovered),
        f"leader overlaps (must be 0): {len(leader_overlaps)}",
        *(f"    {problem}" for problem in leader_overlaps),
        f"coordinated OVERLAP lines (must be 0): {len(coord_overlaps)}",
        *(f"    {line}" for line in coord_overlaps),
        f"cron ticks beyond max_run {MAX_RUN} (must be 0): {len(breaches)} "
        f"(of {len({s.tick for s in starts})} ticks, {len(starts)} runs)",
        *(f"    {breach}" for breach in breaches),
        f"cron runs left running in fs_cron_runs (must be 0): {len(running)}",
        *(f"    {row}" for row in running),
        f"cron run states: {dict(sorted(states.items()))}; "
        f"ticks with more than {MAX_RUN} run rows in the database: {len(db_over)}",
        f"workers alive after every node stopped (must be 0): {len(orphans)} {orphans}",
        f"nodes that did not stop within {STOP_WAIT:g}s of SIGTERM (must be 0): "
        f"{len(hung)} {hung}",
        "exit codes of stops during the campaign: "
        + str(dict(Counter(code for _, code in campaign.stop_codes))),
        f"cron ticks missed while >= {MAX_RUN} nodes were healthy (fewer than {MAX_RUN} "
        f"runs): {sum(map(len, short.values()))} of {judged} such ticks"
        + "".join(f"; {why} {len(short[why])}" for why in sorted(short)),
        *(f"    {line}" for line in shown[:20]),
        *([f"    ... and {len(shown) - 20} more"] if len(shown) > 20 else []),
    ]
    for name, probe in fleet.probes.items():
        held = fleet.terms(probe)
        gaps = failovers(held)
        if not gaps:
            lines.append(f"failover {name}: {len(held)} terms, no handover seen")
            continue
        worst = max(gaps, key=lambda item: item[0])
        lines.append(
            f"failover {name}: {len(held)} terms, {len(gaps)} handovers, gap "
            f"{spread([gap for gap, _, _ in gaps])} "
            f"(after {worst[1].node} {worst[1].how} at {worst[1].ended:.3f})"
        )
    lines.append(f"rebalance shard (older generation's first stop to the new one whole): "
                 f"{len(rebalance)} generations, {spread(rebalance)}; "
                 f"{superseded} superseded before they were whole")
    drain_parts = []
    for name, probe in fleet.probes.items():
        count, done, cut = drains(probe.events(), fleet.watch.deaths)
        drain_parts.append(f"{name} {count} ({done} to the end, {cut} cut short)")
    coord_drains = {i.pid for i in instances if i.kind == "draining"}
    coord_ended = {i.pid for i in instances if i.kind == "end"}
    drain_parts.append(f"shard {len(coord_drains)} ({len(coord_drains & coord_ended)} to the "
                       f"end, {len(coord_drains - coord_ended)} cut short)")
    lines.append(f"slow drains on {DRAIN_NODE}: " + "; ".join(drain_parts))
    lines.append(f"stdout stalls: {kinds['stall']}; reported by the nodes: {len(reported)}, "
                 f"{sum(reported)} lines dropped")
    lines.extend(f"note: {note}" for note in campaign.notes)
    failed = (leader_overlaps or coord_overlaps or breaches or running or orphans or hung)
    lines.append(f"verdict: {'FAIL' if failed else 'clean'}")
    summary = "\n".join(lines)
    print(summary, flush=True)
    (fleet.directory / "summary.txt").write_text(summary + "\n")
    return 1 if failed else 0


# -- main -----------------------------------------------------------------------------


def run(minutes: float, seed: int, count: int, server: Server, dbname: str, directory: Path,
        kinds: Mapping[str, float]) -> int:
    fleet = ChaosFleet(directory, server.url(dbname))
    rng = random.Random(seed)
    campaign = Campaign(fleet, rng, server, kinds)
    hung: list[str] = []
    try:
        names = [f"n{i + 1}" for i in range(count)]
        for i, name in enumerate(names):
            fleet.add_node(name, GROUPS[i % len(GROUPS)])
        for name in names:
            fleet.nodes[name].wait_started(timeout=60)
        fleet.global_probe.wait_for("acquired", timeout=30)
        print(f"{count} nodes up in {directory}; faults for {minutes:g} min", flush=True)
        window = Window(time.time(), 0.0)
        end = time.monotonic() + minutes * 60
        next_fault = time.monotonic() + rng.uniform(2, 5)
        while time.monotonic() < end:
            campaign.tick()
            if time.monotonic() >= next_fault:
                campaign.inject()
                next_fault = time.monotonic() + rng.uniform(2, 5)
            time.sleep(0.05)
        print("undoing every fault, then settling", flush=True)
        campaign.undo_all()
        window.end = time.time()
        time.sleep(SETTLE)
        hung = stop_all(fleet)
        return judge(fleet, campaign, server, dbname, seed, minutes, window, hung)
    finally:
        with contextlib.suppress(Exception):
            campaign.undo_all()
        (directory / "faults.txt").write_text("".join(f"{f}\n" for f in campaign.done))
        for name, node in fleet.nodes.items():
            with contextlib.suppress(Exception):
                (directory / f"node-{name}.log").write_text(node.output() + "\n")
        with contextlib.suppress(Exception):
            (directory / "report.txt").write_text(fleet.report())
        for node in fleet.nodes.values():  # every fault undone, whatever happened
            if isinstance(node, ChaosNode) and node.runs:
                node.running.reading.set()
            with contextlib.suppress(ProcessLookupError):
                signal_all([node.pid, *descendants(node.pid)], signal.SIGCONT)
            if node.proxy is not None:
                node.proxy.heal()
        fleet.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--db-restart", action="store_true",
                        help="also restart the whole PostgreSQL server (hits every user of it)")
    parser.add_argument("--private-server", action="store_true",
                        help="run a PostgreSQL server of its own instead of 127.0.0.1:5432")
    args = parser.parse_args()
    if args.nodes < MIN_UP + 1:
        parser.error(f"--nodes must be at least {MIN_UP + 1}")
    kinds = dict(KINDS)
    if not args.db_restart:
        del kinds["dbrestart"]
    if libfaketime() is None or not Path("/usr/bin/faketime").exists():
        print("faketime is not installed: no clock faults", flush=True)
        del kinds["clock"]
    os.chdir(ROOT)
    server: Server = PrivateServer() if args.private_server else SharedCluster()
    try:
        dbname = f"fs_chaos_{secrets.token_hex(4)}"
        directory = Path(tempfile.mkdtemp(prefix=f"chaos-{args.seed}-"))
        with psycopg.connect(server.dsn(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        try:
            return run(args.minutes, args.seed, args.nodes, server, dbname, directory, kinds)
        finally:
            deadline = time.monotonic() + 60
            while not server.answers() and time.monotonic() < deadline:
                with contextlib.suppress(subprocess.SubprocessError):
                    server.start().wait(timeout=60)
            with psycopg.connect(server.dsn(), autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    finally:
        server.close()


if __name__ == "__main__":
    raise SystemExit(main())
