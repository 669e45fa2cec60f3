"""Shared by bench/failover.py and bench/dbload.py: a throwaway PostgreSQL database and a
fleet of `supervisor run` nodes on it, every process of which is killed on the way out.

Each node is started in a session of its own with a marker in its environment; the
supervisor passes its environment on to its children and helpers, so `Fleet.sweep()` can
find and SIGKILL everything this run started, whatever state it was left in.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SUPERVISOR_BIN = ROOT / ".venv" / "bin" / "supervisor"
MARKER = "FLEET_BENCH_RUN"
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def pg_admin() -> psycopg.Connection[Any]:
    return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new database, dropped (WITH FORCE) on the way out; yields its name."""
    name = f"{prefix}_{os.getpid()}_{int(time.time())}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_url(name: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def query(dbname: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={dbname}",
                         autocommit=True, connect_timeout=5) as conn:
        return list(conn.execute(sql, params).fetchall())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def toml_value(value: Any) -> str:
    return json.dumps(value)  # strings, numbers and lists of strings are the same in TOML


@dataclass
class Node:
    """One `supervisor run` process (a node); restarted as a new process under the same id."""

    node_id: str
    config: Path
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Fleet:
    workdir: Path
    marker: str
    nodes: dict[str, Node] = field(default_factory=dict)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR")}
        env[MARKER] = self.marker
        return env

    def add(self, node_id: str, config_text: str) -> Node:
        config = self.workdir / f"{node_id}.toml"
        config.write_text(config_text)
        node = Node(node_id, config, self.workdir)
        self.nodes[node_id] = node
        return node

    def start(self, node: Node) -> None:
        node.starts += 1
        log = node.log_dir / f"node-{node.node_id}-{node.starts}.log"
        with log.open("wb") as out:
            node.proc = subprocess.Popen(
                [str(SUPERVISOR_BIN), "run", "-c", str(node.config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self.env(), cwd=self.workdir, start_new_session=True,
            )
        self.started.append(node.proc)

    def stop(self, node: Node, timeout: float = 20.0, *, signalled: bool = False) -> int | None:
        """SIGTERM (once: a second one means "kill now") and wait; the exit code, or None
        if it had to be killed."""
        if node.proc is None or node.proc.poll() is not None:
            return None if node.proc is None else node.proc.returncode
        if not signalled:
            node.proc.send_signal(signal.SIGTERM)
        try:
            return node.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait()
            return None

    def stop_all(self) -> dict[str, int | None]:
        for node in self.nodes.values():
            if node.alive():
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        return {node_id: self.stop(node, signalled=True) for node_id, node in self.nodes.items()}

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


def zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and not zombie(pid)


def wait_until(what: str, check: Callable[[], bool], timeout: float, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def raise_on_sigterm() -> None:
    """SIGTERM to the bench unwinds like Ctrl-C, so every finally: block runs."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def results_path(stem: str) -> Path:
    directory = BENCH_DIR / "results"
    directory.mkdir(exist_ok=True)
    return directory / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def python() -> str:
    return sys.executable
