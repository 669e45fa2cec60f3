"""A reader of the supervisor's stdout that stops reading does not stop supervision
(SPEC.md guarantee 11: output never blocks supervision).

The leader's supervisor runs with its stdout piped to nobody: the test reads its stderr
all along but leaves stdout unread, while the leader worker (tests/workers/probe.py with
PROBE_CHATTY) writes ~200-byte lines, about 5000 a second. For several lease
TTLs the stalled node must keep renewing and answering, and a second node on the same
database must never start the worker; SIGTERM must be answered with stdout still unread;
reading stdout again must bring the warning that counts what was dropped.

Judged by the probe log (zero overlaps is the only pass) and by the stalled node's own
/healthz, /metrics and stderr.
"""

from __future__ import annotations

import os
import queue
import re
import select
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SUPERVISOR_BIN
from tests.support.fleet import FAST, Fleet, ProbeLog, made_fleets, worker_toml

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("database_backend", ["sqlite"])]

STALL = 3 * FAST.lease_ttl  # stdout unread for several lease TTLs
POLL = 0.25  # how often the stalled node is asked while the absence of a fault is watched
SLACK = 5.0  # process start-up and stop on a loaded 2-core machine
LABELS = re.compile(r'(\w+)="([^"]*)"')


class StalledNode:
    """`supervisor run` whose stdout nobody reads until `drain()`; stderr is read all along."""

    def __init__(self, config: Path, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
        self.proc = subprocess.Popen(
            [str(SUPERVISOR_BIN), "run", "-c", str(config)], env=env, cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._cursor = 0
        self._draining = threading.Event()
        self._closed = threading.Event()
        self.stdout_bytes = 0
        self._threads = [threading.Thread(target=self._read_stderr, daemon=True),
                         threading.Thread(target=self._read_stdout, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._lines.put(raw.decode(errors="replace").rstrip("\n"))
        self._lines.put(None)

    def _read_stdout(self) -> None:
        """Reads only while draining; otherwise the pipe stays full."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while not self._closed.is_set():
            if not self._draining.wait(timeout=0.1):
                continue
            if select.select([fd], [], [], 0.1)[0]:
                data = os.read(fd, 1 << 16)
                if not data:
                    return
                self.stdout_bytes += len(data)

    def drain(self) -> None:
        self._draining.set()

    def stall(self) -> None:
        self._draining.clear()

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first stderr line after the last match that matches `pattern`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            while self._cursor < len(self.stderr):
                line = self.stderr[self._cursor]
                self._cursor += 1
                if match := regex.search(line):
                    return match
            try:
                line_or_end = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line_or_end = None
            if line_or_end is None:
                raise AssertionError(f"no stderr line matching {pattern!r} within {timeout}s;"
                                     f" stderr:\n{self.text()}")
            self.stderr.append(line_or_end)

    def text(self) -> str:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.stderr.append(line)
        return "\n".join(self.stderr)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._closed.set()
        self.drain()
        for thread in self._threads:
            thread.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def stalled_config(name: str, database_url: str, probe: ProbeLog) -> str:
    env = {**probe.env(), "PROBE_CHATTY": "200"}
    return (f'node_id = "{name}"\ngroup = "default"\ndatabase_url = "{database_url}"\n\n'
            f"{FAST.toml()}\n"
            '[metrics]\nhost = "127.0.0.1"\nport = 0\n\n'
            + worker_toml("probe", "probe.py", "global-leader", env, {"stop_timeout": "10s"}))


def get(url: str, timeout: float) -> tuple[int, str]:
    """Status and body; a node whose event loop is blocked does not answer in time."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except OSError as exc:
        raise AssertionError(f"{url} did not answer within {timeout}s: {exc!r}") from exc


def sample(body: str, name: str, **labels: str) -> float | None:
    """The value of the series `name{labels}` in a /metrics body, None when absent."""
    for line in body.splitlines():
        head, _, value = line.rpartition(" ")
        series, _, label_text = head.partition("{")
        if series == name and dict(LABELS.findall(label_text)) == labels:
            return float(value)
    return None


def dropped(base: str) -> float:
    body = get(f"{base}/metrics", timeout=1)[1]
    return sample(body, "supervisor_output_dropped_lines_total",
                  worker="probe", stream="stdout") or 0.0


def wait_for_drops(base: str, above: float, timeout: float) -> float:
    """Until the stalled node counts more dropped lines than `above`: its stdout is full."""
    deadline = time.monotonic() + timeout
    while (count := dropped(base)) <= above:
        if time.monotonic() > deadline:
            raise AssertionError(f"no line dropped within {timeout}s (count {count})")
        time.sleep(POLL)
    return count


def watch_leading(base: str, probe: ProbeLog, seconds: float) -> None:
    """For `seconds`: /healthz answers 200 within a second, the node stays leader and keeps
    renewing, and no instance of the worker starts anywhere (the holder stays alone)."""
    since = probe.mark()
    renewals, renewed_at = -1.0, time.monotonic()
    deadline = time.monotonic() + seconds
    while (now := time.monotonic()) < deadline:
        asked = time.monotonic()
        assert get(f"{base}/healthz", timeout=1)[0] == 200
        assert time.monotonic() - asked < 1.0, "/healthz took a second or more"
        body = get(f"{base}/metrics", timeout=1)[1]
        assert sample(body, "supervisor_leader", worker="probe", group="default") == 1.0
        count = sample(body, "supervisor_lease_renewals_total", worker="probe",
                       group="default") or 0.0
        if count > renewals:
            renewals, renewed_at = count, now
        assert now - renewed_at < FAST.lease_ttl / 2, f"no renewal for {now - renewed_at:.1f}s"
        news = [str(event) for kind in ("started", "acquired", "OVERLAP")
                for event in probe.find(kind, since=since)]
        assert not news, f"an instance started while the stalled node leads: {news}"
        time.sleep(POLL)


@pytest.fixture
def fleet(tmp_path: Path, database_url: str) -> Iterator[Fleet]:
    with made_fleets(lambda: Fleet(tmp_path, database_url)) as make:
        yield make()


def test_a_stalled_stdout_reader_neither_stops_renewal_nor_lets_a_second_leader_in(
        fleet: Fleet, tmp_path: Path, database_url: str) -> None:
    probe = fleet.probe()
    config = tmp_path / "a.toml"
    config.write_text(stalled_config("a", database_url, probe))
    node = StalledNode(config, tmp_path)
    try:
        port = node.expect(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", 20).group(1)
        base = f"http://127.0.0.1:{port}"
        first = probe.wait_for("acquired", timeout=20, where=lambda e: e.node == "a")
        wait_for_drops(base, 0, timeout=10 + SLACK)  # the pipe is full: lines are dropped

        fleet.node("b", probe=probe).wait_started()
        watch_leading(base, probe, STALL)
        assert "no longer leader" not in node.text()
        assert not probe.find("started", where=lambda e: e.node == "b")

        node.drain()
        count = int(node.expect(r"output: (\d+) lines? dropped \(.*probe: \d+.*\) while the"
                                r" reader of stdout stalled for [\d.]+s", 10 + SLACK).group(1))
        assert count > 0
        assert node.stdout_bytes > 0

        node.stall()
        before = dropped(base)
        assert wait_for_drops(base, before, timeout=10 + SLACK) > before  # stalled again
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(timeout=FAST.stop_grace + 2 + SLACK) == 0  # stdout still unread
        probe.wait_for("released", timeout=1, where=lambda e: e.pid == first.pid)
        probe.wait_for("acquired", timeout=FAST.failover + SLACK, where=lambda e: e.node == "b")
        fleet.assert_no_overlaps()
    finally:
        node.close()
        print(f"=== stalled node a, stderr ===\n{node.text()}")
