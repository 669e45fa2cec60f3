"""Shared by every bench script: starting processes so that all of them can be found and
killed on the way out, reading /proc, waiting, and where results go.

Each process is started in a session of its own with a marker in its environment; the
supervisors pass their environment on to their children and helpers, so `Tracked.sweep()`
can find and SIGKILL everything one run started, whatever state it was left in.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
MARKER = "FLEET_BENCH_RUN"  # environment variable that tags every process a run starts


@dataclass
class Tracked:
    """One run's scratch directory and marker; knows how to kill whatever the run started."""

    workdir: Path
    marker: str
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR")}
        env[MARKER] = self.marker
        env["PYTHONFAULTHANDLER"] = "1"  # a node killed with SIGABRT logs its threads' stacks
        return env

    def spawn(self, argv: list[str], output: Path, cwd: Path) -> subprocess.Popen[bytes]:
        """`argv` in a session of its own, marked, stdout and stderr to the file `output`."""
        with output.open("wb") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self.env(), cwd=cwd, start_new_session=True,
            )
        self.started.append(proc)
        return proc

    def sweep(self) -> int:
        """SIGKILL every process group this run started, then every marked process left."""
        for proc in self.started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        killed = 0
        for pid in marked_pids(self.marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        return killed


def marked_pids(marker: str) -> list[int]:
    """Live (not zombie) processes other than this one that carry `marker`."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and not zombie(int(entry)):
            found.append(int(entry))
    return found


def proc_state(pid: int) -> str | None:
    """The state letter from /proc/PID/stat (R, S, Z, ...); None when there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def zombie(pid: int) -> bool:
    return proc_state(pid) == "Z"


def pid_alive(pid: int) -> bool:
    state = proc_state(pid)
    return state is not None and state != "Z"


def wait_until(what: str, check: Callable[[], bool], timeout: float, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def read_fields(path: Path, width: int) -> list[list[str]]:
    """The whitespace-separated fields of each line of a record file that has `width` of
    them (others, such as a line cut short by a kill, are skipped); [] if there is no file."""
    if not path.exists():
        return []
    return [parts for line in path.read_text().splitlines()
            if len(parts := line.split()) == width]


def results_path(stem: str) -> Path:
    directory = BENCH_DIR / "results"
    directory.mkdir(exist_ok=True)
    return directory / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


@contextlib.contextmanager
def bench_workdir(stem: str, keep: bool) -> Iterator[tuple[Path, Path | None]]:
    """A temporary directory for one run, and (with `keep`) where its results go:
    bench/results/<stem>-<time>. The directory's files (nodes' logs, probe logs; not
    lock files) are copied to that path's `.logs` on the way out, even after a failure."""
    out = results_path(stem) if keep else None
    with tempfile.TemporaryDirectory(prefix=f"fleet-{stem}-") as tmp:
        try:
            yield Path(tmp), out
        finally:
            if out is not None:
                shutil.copytree(tmp, out.with_suffix(".logs"),
                                ignore=shutil.ignore_patterns("*.lock"))


def write_results(out: Path | None, payload: dict[str, Any]) -> None:
    """The run's figures as `<out>.json`, beside the logs bench_workdir kept."""
    if out is None:
        return
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {out.with_suffix('.json')} (nodes' logs and probe log in "
          f"{out.with_suffix('.logs')})")

