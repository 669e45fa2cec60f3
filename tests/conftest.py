"""Shared test support: run the installed `supervisor` command and wait on what it prints.

Waiting is always on an event (a line the supervisor or a worker printed, a process
ending) with a deadline; never a sleep standing in for synchronisation.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.databases"]  # database_url fixtures: SQLite, PostgreSQL, MariaDB

# The properties are about values, not speed, and the machines running them are shared: no
# per-example deadline (200 ms by default) and no too-slow health check, which a loaded CI
# runner fails at random. Speed is measured in bench/, never asserted in a test.
settings.register_profile("fleet", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fleet")

SUPERVISOR_BIN = Path(sys.executable).parent / "supervisor"
WORKERS = Path(__file__).parent / "workers"
PYTHON = sys.executable


def worker_command(script: str, *args: str) -> str:
    """A TOML array running one of tests/workers/ with this interpreter."""
    items = [PYTHON, str(WORKERS / script), *args]
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in (b"Z", b"X")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition that has no event to wait on (another process's death)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Running:
    """A `supervisor run` subprocess whose output lines are collected as they arrive."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.lines: list[tuple[str, str]] = []
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._cursor = 0
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, stream: object) -> None:
        assert stream is not None
        for raw in stream:  # type: ignore[attr-defined]
            self._queue.put((name, raw.decode(errors="replace").rstrip("\n")))
        self._queue.put(None)

    def _drain(self, timeout: float) -> bool:
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return False
        if item is not None:
            self.lines.append(item)
        return True

    def expect(self, pattern: str, timeout: float = 15.0, stream: str | None = None,
               after_start: bool = False) -> re.Match[str]:
        """Wait for a new line matching `pattern` (searched, not anchored) and return the match.

        Lines are consumed in order: each call looks only at lines after the last match,
        unless `after_start` asks to search everything seen so far.
        """
        regex = re.compile(pattern)
        start = 0 if after_start else self._cursor
        deadline = time.monotonic() + timeout
        index = start
        while True:
            while index < len(self.lines):
                name, line = self.lines[index]
                index += 1
                if (stream is None or name == stream) and (match := regex.search(line)):
                    self._cursor = index
                    return match
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (not self._drain(remaining) and self.proc.poll() is not None):
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout}s; output:\n" + self.text()
                )

    def text(self) -> str:
        while self._drain(0):
            pass
        return "\n".join(f"[{name}] {line}" for name, line in self.lines)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        self.text()
        return code

    def close(self) -> None:
        """Release the pipes once the process is gone."""
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def kill_all(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def control_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A runtime directory of the test's own ($XDG_RUNTIME_DIR) for the control sockets of
    the supervisors it starts (supervisor.control.paths): tests running at once often
    give their nodes the same node_id, and one host refuses two supervisors with one
    node_id. Short, under the temp dir: a socket's path holds 107 bytes at most."""
    directory = Path(tempfile.mkdtemp(prefix="fs-xdg-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(directory))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def supervisor_run(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start `supervisor run -c <tmp>/supervisor.toml` with the given TOML text."""
    started: list[Running] = []

    def start(config: str, *, env: dict[str, str] | None = None,
              name: str = "supervisor.toml", prefix: list[str] | None = None) -> Running:
        path = tmp_path / name
        path.write_text(config)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
        # Tests run in parallel: a config that leaves metrics on must not take the fixed
        # default port (9464) another worker's supervisor holds. Port 0 is ephemeral; the
        # supervisor prints the port it got. A test's own env can still set one.
        full_env["SUPERVISOR_METRICS__PORT"] = "0"
        full_env.update(env or {})
        argv = [*(prefix or []), str(SUPERVISOR_BIN), "run", "-c", str(path)]
        running = Running(argv, full_env, tmp_path)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.proc.poll() is None:
            running.signal(signal.SIGTERM)
            try:
                running.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                running.kill_all()
        running.close()


SERIAL_ONLY = (
    "server_restart: this test stops the PostgreSQL/MariaDB server that every other test "
    "worker is using; run it on its own after the parallel run, as `make test` does: "
    "pytest -m server_restart"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that restart a shared database server run after every other test.

    That order protects the others only in a serial run; `make test` runs the rest in
    parallel (pytest-xdist) with `-m "not server_restart"`, then these in a serial run.
    """
    items.sort(key=lambda item: item.get_closest_marker("server_restart") is not None)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Refuse a server restart inside an xdist worker: other workers' tests would lose
    their database mid-test and fail for no fault of their own."""
    parallel = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1
    if parallel and item.get_closest_marker("server_restart"):
        pytest.fail(SERIAL_ONLY, pytrace=False)


BASE_CONFIG = """
[metrics]
enabled = false
"""
