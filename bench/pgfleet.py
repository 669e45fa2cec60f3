"""Shared by bench/failover.py and bench/dbload.py: a throwaway PostgreSQL database and a
fleet of `supervisor run` nodes on it, every process of which is killed on the way out
(see bench/procs.py: each node runs in a session of its own, with the run's marker).
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from procs import ROOT, Tracked

SUPERVISOR_BIN = ROOT / ".venv" / "bin" / "supervisor"
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


def config_head(dbname: str, node_id: str) -> list[str]:
    """The first lines of a node's config, up to and including its `[metrics]` header."""
    return [
        f"database_url = {toml_value(database_url(dbname))}",
        f"node_id = {toml_value(node_id)}",
        'group = "bench"',
        "",
        "[metrics]",
    ]


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
class Fleet(Tracked):
    nodes: dict[str, Node] = field(default_factory=dict)

    def add(self, node_id: str, config_text: str) -> Node:
        config = self.workdir / f"{node_id}.toml"
        config.write_text(config_text)
        node = Node(node_id, config, self.workdir)
        self.nodes[node_id] = node
        return node

    def start(self, node: Node) -> None:
        node.starts += 1
        log = node.log_dir / f"node-{node.node_id}-{node.starts}.log"
        node.proc = self.spawn([str(SUPERVISOR_BIN), "run", "-c", str(node.config)], log,
                               self.workdir)

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
            # Hung: SIGABRT first, so that Python's faulthandler (PYTHONFAULTHANDLER, set by
            # Tracked.env) writes every thread's stack to the node's log, then SIGKILL.
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.proc.pid, signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=2.0)
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


def preflight() -> bool:
    """False, having said why, when there is no supervisor to run. Otherwise True, and from
    now on SIGTERM to the bench unwinds like Ctrl-C, so every finally: block runs."""
    if not SUPERVISOR_BIN.exists():
        print(f"error: {SUPERVISOR_BIN} not found (make the .venv first)", file=sys.stderr)
        return False

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    return True


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]
