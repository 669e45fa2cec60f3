"""Benchmark: the same jobs under fleet-supervisor ("ours") and supervisord 4.3, side by side.

A benchmark, not a test: it prints a table (and writes JSON to bench/results/) and exits
non-zero only when it could not run. Run it with the project's interpreter, as `make bench`
does: `.venv/bin/python bench/compare.py [--idle SECONDS]`.

supervisord 4.3.0 is installed with pip into a throwaway virtualenv under the temp dir
(`$TMPDIR/fleet-supervisor-bench/`, reused between runs), never into the project's
environment: its distribution is also named `supervisor`.

What is measured, each supervisor in turn, with `every-node` workers and no metrics server
(ours: `[metrics] enabled = false`; supervisord: no [unix_http_server]):

1. Crash to restart. One child records a CLOCK_MONOTONIC timestamp when it starts and just
   before it exits 1; the figure is next start minus previous exit, from the children's own
   records. Two profiles: "default" settings (the child lives 1.5 s, past supervisord's
   startsecs=1; ours backs off after the first restart) and "fastest" settings (ours:
   backoff initial = max = 0; supervisord: startsecs=0), where the child lives 0.2 s.
   Each figure includes the start-up of a small Python child, measured separately.
2. Launch to 10 children started: from just before the supervisor is spawned to the last of
   10 children recording its start (median over --repeat runs).
3. SIGTERM to exit with 10 children that ignore SIGTERM and a 2 s stop timeout (ours:
   stop_timeout = "2s"; supervisord: stopwaitsecs=2), measured by waiting on the supervisor.
4. RSS and CPU time over an idle window (--idle, default 60 s) with 10 `/bin/sleep 100000`
   children: VmRSS of the supervisor process (and of helpers: ours runs the trust
   watchdog, a small Python process), CPU from /proc/PID/task/*/schedstat
   (nanoseconds), summed over threads.
5. Wakeups per minute over the same window: voluntary + nonvoluntary context switches,
   summed over /proc/PID/task/*/status, scaled to one minute.

Every process started is killed on the way out, even on error: each supervisor is started in
a session of its own, and every process that carries this run's marker in its environment
(the supervisors pass their environment on to children and helpers) gets SIGKILL at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procs import Tracked, pid_alive, read_fields, results_path, wait_until

SUPERVISORD_VERSION = "4.3.0"
COUNT = 10  # children per job
STOP_TIMEOUT = 2.0

CHILD_SCRIPT = """\
import os, signal, sys, time
mode, log = sys.argv[1], sys.argv[2]
def record(what):
    line = f"{what} {time.clock_gettime(time.CLOCK_MONOTONIC):.6f} {os.getpid()}\\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, line.encode())
    os.close(fd)
if mode == "crash":
    record("start")
    time.sleep(float(sys.argv[3]))
    record("exit")
    os._exit(1)
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # mode == "stubborn"
record("start")
while True:
    signal.pause()
"""


# --- the two supervisors -----------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """COUNT copies (or `count`) of one program; "{i}" in argv is replaced by the copy's index."""

    argv: tuple[str, ...]
    count: int = COUNT
    fastest_restart: bool = False
    stop_timeout: float = STOP_TIMEOUT


@dataclass(frozen=True)
class Contender:
    name: str
    program: Path  # the executable
    write_config: Callable[[Path, Job], Path]
    run_args: Callable[[Path], list[str]]


def ours_config(workdir: Path, job: Job) -> Path:
    lines = [
        f'database_url = "sqlite:///{workdir}/ours.db"',
        'node_id = "bench"',
        'group = "bench"',
        "[metrics]",
        "enabled = false",
    ]
    for i in range(job.count):
        argv = [arg.replace("{i}", f"{i:02d}") for arg in job.argv]
        lines += [
            f"[workers.w{i:02d}]",
            f"command = {json.dumps(argv)}",
            'restart = "on-failure"',
            f'stop_timeout = "{job.stop_timeout}s"',
        ]
        if job.fastest_restart:
            lines.append('backoff = { initial = "0s", max = "0s" }')
    path = workdir / "ours.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def supervisord_config(workdir: Path, job: Job) -> Path:
    argv = [arg.replace("{i}", "%(process_num)02d") for arg in job.argv]
    text = f"""\
        [supervisord]
        nodaemon = true
        logfile = {workdir}/supervisord.log
        pidfile = {workdir}/supervisord.pid
        childlogdir = {workdir}
        [program:w]
        command = {shlex.join(argv)}
        numprocs = {job.count}
        process_name = w%(process_num)02d
        stopwaitsecs = {job.stop_timeout:g}
        """
    if job.fastest_restart:
        text += "startsecs = 0\n"
    path = workdir / "supervisord.conf"
    path.write_text(textwrap.dedent(text))
    return path


def make_contenders(ours: Path, supervisord: Path) -> list[Contender]:
    return [
        Contender("ours", ours, ours_config, lambda cfg: ["run", "-c", str(cfg)]),
        Contender("supervisord", supervisord, supervisord_config,
                  lambda cfg: ["-n", "-c", str(cfg)]),
    ]


def install_supervisord(cache: Path) -> Path:
    """supervisord in a virtualenv of its own, created with this interpreter; reused if there."""
    venv = cache / f"supervisord-{SUPERVISORD_VERSION}"
    program = venv / "bin" / "supervisord"
    if program.exists() and _version(program) == SUPERVISORD_VERSION:
        return program
    print(f"installing supervisord {SUPERVISORD_VERSION} into {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", f"supervisor=={SUPERVISORD_VERSION}"],
        check=True, stderr=subprocess.DEVNULL,
    )
    return program


def _version(program: Path) -> str:
    result = subprocess.run([str(program), "--version"], capture_output=True, text=True)
    return result.stdout.strip()


# --- processes: start, find, kill ----------------------------------------------------------


class Session(Tracked):
    """One run's scratch directory and marker (bench/procs.py kills whatever it started)."""


def children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc/PID/task/*/children."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


@contextlib.contextmanager
def running(session: Session, contender: Contender, job: Job) -> Iterator[subprocess.Popen[bytes]]:
    """The contender running `job`, in a session of its own; stopped and swept on the way out."""
    scratch = Path(tempfile.mkdtemp(prefix=f"{contender.name}-", dir=session.workdir))
    config = contender.write_config(scratch, job)
    proc = session.spawn([str(contender.program), *contender.run_args(config)],
                         scratch / "output.log", scratch)
    try:
        yield proc
    finally:
        terminate(proc)
        session.sweep()


def terminate(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes]
) -> None:
    def ready() -> bool:
        if check():
            return True
        if proc.poll() is not None:
            raise RuntimeError(f"the supervisor exited ({proc.returncode}) before {what}")
        return False

    try:
        wait_until(what, ready, timeout)
    except TimeoutError as exc:
        raise RuntimeError(str(exc)) from None


# --- children's records --------------------------------------------------------------------


def read_records(path: Path) -> list[tuple[str, float, int]]:
    return [(what, float(t), int(pid)) for what, t, pid in read_fields(path, 3)]


def starts(logs: Path) -> list[float]:
    return [t for log in logs.glob("*.log") for what, t, _ in read_records(log) if what == "start"]


def restart_latencies(records: list[tuple[str, float, int]]) -> list[float]:
    """Next start minus previous exit, for each exit followed by a start."""
    latencies = []
    for (what, t, _), (next_what, next_t, _) in itertools.pairwise(records):
        if what == "exit" and next_what == "start":
            latencies.append(next_t - t)
    return latencies


def child_argv(session: Session, mode: str, log: Path | str, *extra: str) -> tuple[str, ...]:
    """The Python child that records its start (and, in mode "crash", its exit) to `log`."""
    script = session.workdir / "child.py"
    return (sys.executable, "-I", "-S", str(script), mode, str(log), *extra)


# --- the measurements ----------------------------------------------------------------------


def child_startup(session: Session, runs: int = 7) -> float:
    """Median time from spawning the Python child to its first record (a floor for restarts)."""
    samples = []
    for run in range(runs):
        log = session.workdir / f"baseline-{run}.log"
        before = time.clock_gettime(time.CLOCK_MONOTONIC)
        subprocess.run(child_argv(session, "crash", log, "0"), check=False)
        samples.append(read_records(log)[0][1] - before)
    return statistics.median(samples)


def measure_restarts(
    session: Session, contender: Contender, *, fastest: bool, restarts: int, budget: float
) -> dict[str, Any]:
    uptime = "0.2" if fastest else "1.5"
    label = f"{contender.name}-{'fastest' if fastest else 'default'}"
    log = session.workdir / f"restart-{label}.log"
    job = Job(child_argv(session, "crash", log, uptime), count=1, fastest_restart=fastest)
    with running(session, contender, job) as proc:
        deadline = time.monotonic() + budget
        while len(restart_latencies(read_records(log))) < restarts:
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    latencies = restart_latencies(read_records(log))[:restarts]
    if not latencies:
        raise RuntimeError(f"no restart seen within {budget:g} s")
    return {
        "first_s": latencies[0],
        "median_s": statistics.median(latencies),
        "count": len(latencies),
        "all_s": latencies,
    }


def measure_launch_and_stop(session: Session, contender: Contender, run: int) -> dict[str, Any]:
    records = session.workdir / "stubborn-records" / f"{contender.name}-{run}"
    records.mkdir(parents=True)
    job = Job(child_argv(session, "stubborn", records / "w{i}.log"))
    launched = time.clock_gettime(time.CLOCK_MONOTONIC)
    with running(session, contender, job) as proc:
        wait_for(f"{COUNT} children to start", lambda: len(starts(records)) >= COUNT, 30, proc)
        times = sorted(starts(records))
        time.sleep(1.5)  # let both settle (supervisord counts a child as running after 1 s)
        pids = [pid for log in records.glob("*.log") for _, _, pid in read_records(log)]
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=STOP_TIMEOUT + 20)
        except subprocess.TimeoutExpired:
            code = None
        stopped = time.monotonic() - sent
        alive = [pid for pid in pids if pid_alive(pid)]
    return {
        "first_child_s": times[0] - launched,
        "all_children_s": times[COUNT - 1] - launched,
        "shutdown_s": stopped if code is not None else None,
        "exit_code": code,
        "children_left": len(alive),
    }


@dataclass(frozen=True)
class Sample:
    cpu_ns: int
    switches: int
    threads: int


def sample(pid: int) -> Sample:
    cpu = switches = threads = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            cpu += int((task / "schedstat").read_text().split()[0])
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
            threads += 1
    return Sample(cpu, switches, threads)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure_idle(session: Session, contender: Contender, seconds: float) -> dict[str, Any]:
    job = Job(("/bin/sleep", "100000"))

    def sleepers() -> list[int]:
        return [c for c in children(proc.pid) if cmdline(c)[:1] == ["/bin/sleep"]]

    with running(session, contender, job) as proc:
        wait_for(f"{COUNT} sleep children", lambda: len(sleepers()) >= COUNT, 30, proc)
        time.sleep(2.0)  # start-up work is not idle work
        helpers = [c for c in children(proc.pid) if c not in sleepers()]
        before = sample(proc.pid)
        helpers_before = [sample(h) for h in helpers]
        time.sleep(seconds)
        after = sample(proc.pid)
        helpers_after = [sample(h) for h in helpers]
        rss = rss_kib(proc.pid)
        helper_rss = sum(rss_kib(h) for h in helpers)
        helper_names = [" ".join(cmdline(h)[:2]) for h in helpers]
    helper_cpu = sum(
        a.cpu_ns - b.cpu_ns for a, b in zip(helpers_after, helpers_before, strict=True)
    )
    return {
        "idle_s": seconds,
        "rss_kib": rss,
        "helpers": helper_names,
        "rss_with_helpers_kib": rss + helper_rss,
        "cpu_ms": (after.cpu_ns - before.cpu_ns) / 1e6,
        "helper_cpu_ms": helper_cpu / 1e6,
        "wakeups_per_min": (after.switches - before.switches) * 60.0 / seconds,
        "threads": after.threads,
    }


# --- the run and the table -----------------------------------------------------------------


def run_all(
    session: Session, contenders: list[Contender], args: argparse.Namespace
) -> dict[str, Any]:
    results: dict[str, Any] = {"child_startup_s": child_startup(session)}
    steps: list[tuple[str, Callable[[Contender], Any]]] = [
        ("restart_default", lambda c: measure_restarts(
            session, c, fastest=False, restarts=args.restarts, budget=args.restart_budget)),
        ("restart_fastest", lambda c: measure_restarts(
            session, c, fastest=True, restarts=args.restarts, budget=args.restart_budget)),
        ("launch_stop", lambda c: [
            measure_launch_and_stop(session, c, run) for run in range(args.repeat)]),
        ("idle", lambda c: measure_idle(session, c, args.idle)),
    ]
    for step, measure in steps:
        for contender in contenders:
            print(f"  {step:16} {contender.name} ...", flush=True)
            try:
                results.setdefault(step, {})[contender.name] = measure(contender)
            except Exception as exc:  # one failed figure must not hide the others
                results.setdefault(step, {})[contender.name] = {"error": f"{exc}"}
                print(f"    failed: {exc}", flush=True)
    return results


@dataclass(frozen=True)
class Row:
    figure: str
    ours: float | None
    theirs: float | None
    unit: str
    target: str = ""
    met: bool | None = None


def _get(results: dict[str, Any], step: str, who: str, key: str) -> float | None:
    data = results.get(step, {}).get(who, {})
    if isinstance(data, list):  # repeated runs: the median
        values = [run[key] for run in data if run.get(key) is not None]
        return statistics.median(values) if values else None
    value = data.get(key)
    return float(value) if isinstance(value, int | float) else None


def rows(results: dict[str, Any]) -> list[Row]:
    def get(step: str, key: str, scale: float = 1.0) -> tuple[float | None, float | None]:
        ours, theirs = (_get(results, step, who, key) for who in ("ours", "supervisord"))
        return (
            None if ours is None else ours * scale,
            None if theirs is None else theirs * scale,
        )

    def below(value: float | None, limit: float | None) -> bool | None:
        return None if value is None or limit is None else value <= limit

    out = []
    for profile in ("default", "fastest"):
        step = f"restart_{profile}"
        first = get(step, "first_s", 1000)
        median = get(step, "median_s", 1000)
        out.append(Row(f"first restart, {profile} settings", *first, "ms", "< 100 ms",
                       below(first[0], 100)))
        out.append(Row(f"median restart, {profile} settings", *median, "ms"))
    launch_first = get("launch_stop", "first_child_s", 1000)
    launch_all = get("launch_stop", "all_children_s", 1000)
    shutdown = get("launch_stop", "shutdown_s")
    left = get("launch_stop", "children_left")
    out += [
        Row("launch to first child started", *launch_first, "ms"),
        Row(f"launch to {COUNT} children started", *launch_all, "ms"),
        Row(f"SIGTERM to exit, {COUNT} stubborn children", *shutdown, "s",
            f"<= {STOP_TIMEOUT + 0.3:g} s", below(shutdown[0], STOP_TIMEOUT + 0.3)),
        Row("children left alive after exit", *left, "", "0", below(left[0], 0)),
    ]
    rss = get("idle", "rss_kib", 1 / 1024)
    rss_all = get("idle", "rss_with_helpers_kib", 1 / 1024)
    cpu = get("idle", "cpu_ms")
    wakeups = get("idle", "wakeups_per_min")
    out += [
        Row("RSS, supervisor process", *rss, "MiB", "<= 1.5x",
            below(rss[0], None if rss[1] is None else 1.5 * rss[1])),
        Row("RSS, supervisor + helpers", *rss_all, "MiB", "<= 1.5x",
            below(rss_all[0], None if rss_all[1] is None else 1.5 * rss_all[1])),
        Row("CPU time over the idle window", *cpu, "ms", "<= supervisord", below(*cpu)),
        Row("wakeups per minute, idle", *wakeups, "/min"),
    ]
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}" if value else "0"


def print_table(results: dict[str, Any], args: argparse.Namespace) -> None:
    header = f"{'figure':44} {'ours':>9} {'supervisord':>11} {'ratio':>7}  {'unit':5} target"
    print()
    print(header)
    print("-" * len(header))
    for row in rows(results):
        ratio = (
            f"{row.ours / row.theirs:.2f}x" if row.ours is not None and row.theirs else "n/a"
        )
        verdict = {True: "  met", False: "  NOT MET", None: ""}[row.met] if row.target else ""
        print(f"{row.figure:44} {_fmt(row.ours):>9} {_fmt(row.theirs):>11} {ratio:>7}  "
              f"{row.unit:5} {row.target}{verdict}")
    print()
    for note in notes(results, args):
        print(textwrap.fill(note, width=100, subsequent_indent="  "))


def notes(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    startup = results["child_startup_s"] * 1000
    out = [
        f"- Restart figures include starting a Python child (-I -S), {startup:.0f} ms when "
        "spawned directly by this script.",
        "- default settings: ours restart = \"on-failure\", backoff initial 1s, factor 2 "
        "(first restart immediate, then backoff); supervisord autorestart=unexpected, "
        "startsecs=1. The child lives 1.5 s.",
        "- fastest settings: ours backoff = { initial = \"0s\", max = \"0s\" }; supervisord "
        "startsecs=0. The child lives 0.2 s.",
    ]
    for step, label in (("restart_default", "default"), ("restart_fastest", "fastest")):
        for who, data in results.get(step, {}).items():
            if "all_s" in data:
                series = ", ".join(f"{v * 1000:.0f}" for v in data["all_s"])
                out.append(f"- {who} restarts, {label} settings (ms): {series}")
    for who, data in results.get("idle", {}).items():
        if "rss_kib" in data:
            helpers = ", ".join(data["helpers"]) or "none"
            out.append(f"- {who} idle: {data['threads']} thread(s); helpers: {helpers} "
                       f"(helper CPU {data['helper_cpu_ms']:.1f} ms)")
    out.append(f"- Idle window {args.idle:g} s with {COUNT} /bin/sleep children; launch/stop "
               f"figures are medians of {args.repeat} run(s).")
    for step in ("restart_default", "restart_fastest", "launch_stop", "idle"):
        for who, data in results.get(step, {}).items():
            if isinstance(data, dict) and "error" in data:
                out.append(f"- {step} {who}: FAILED: {data['error']}")
    return out


def write_json(results: dict[str, Any], args: argparse.Namespace) -> Path:
    path = results_path("compare").with_suffix(".json")
    payload = {
        "supervisord_version": SUPERVISORD_VERSION,
        "python": sys.version.split()[0],
        "args": vars(args),
        "results": results,
        "table": [row.__dict__ for row in rows(results)],
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=float, default=60.0, help="idle window, seconds")
    parser.add_argument("--restarts", type=int, default=10, help="restarts to observe")
    parser.add_argument("--restart-budget", type=float, default=20.0,
                        help="most seconds to spend observing restarts, per profile")
    parser.add_argument("--repeat", type=int, default=3, help="launch/stop runs per supervisor")
    parser.add_argument("--ours", type=Path, default=Path(sys.executable).parent / "supervisor",
                        help="our console script")
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "fleet-supervisor-bench",
                        help="where supervisord's virtualenv is kept")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.ours.exists():
        print(f"error: {args.ours} not found: run with the project's .venv/bin/python",
              file=sys.stderr)
        return 1
    try:
        supervisord = install_supervisord(args.cache)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"error: cannot install supervisord {SUPERVISORD_VERSION}: {exc}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        session = Session(Path(tmp), marker=Path(tmp).name)
        (session.workdir / "child.py").write_text(CHILD_SCRIPT)
        try:
            results = run_all(session, make_contenders(args.ours, supervisord), args)
        finally:
            session.sweep()
    print_table(results, args)
    if not args.no_json:
        print(f"\nwrote {write_json(results, args)}")
    failed = any(isinstance(d, dict) and "error" in d
                 for step in results.values() if isinstance(step, dict) for d in step.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
