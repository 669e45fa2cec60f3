"""A fleet of `supervisor run` processes ("nodes") on one database, and the probe's verdict.

    fleet = Fleet(tmp_path, database_url)
    probe = fleet.probe()                    # a lock file + log shared by one leader worker
    a = fleet.node("a", probe=probe)         # writes a.toml, starts `supervisor run -c a.toml`
    b = fleet.node("b", probe=probe, via_proxy=True)       # its database traffic via a TcpProxy
    c = fleet.node("c", probe=probe, faketime="+40s")      # its wall clock 40 s ahead
    first = probe.wait_for("acquired", timeout=10)
    fleet.nodes[first.node].kill9()          # SIGKILL to the supervisor only
    probe.wait_for("acquired", since=first, timeout=...)
    fleet.assert_no_overlaps()               # zero overlaps is the only pass
    fleet.close()

Each node's leader worker runs tests/workers/probe.py, which records in the probe log
when it started, acquired the shared flock, found it held by a live instance
(OVERLAP) and released it. A `DeathWatch` thread holds a pidfd for every probe that
appears in a log and notes the instant each one dies, so that an instance killed
without a word still has an end. `overlaps()` judges a log: any OVERLAP line, and
any two holding intervals that intersect.

Waiting is on events with deadlines: output lines through tests.conftest.Running,
process exits, and new probe-log lines (a file has no event to wait on, so it is
polled every 20 ms, as wait_until does for a death).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.conftest import PYTHON, SUPERVISOR_BIN, WORKERS, Running, pid_alive
from tests.databases import listen_url
from tests.support.proxy import TcpProxy

POLL = 0.02


# -- timings ----------------------------------------------------------------------


@dataclass(frozen=True)
class Timings:
    """[coordination] for tests: short, and valid under config.py's rule
    renew_deadline + leader stop grace (>= 0.5 s) + renew_interval + 1 s <= lease_ttl."""

    lease_ttl: float = 4.0
    renew_interval: float = 0.3
    renew_deadline: float = 1.5

    @property
    def stop_grace(self) -> float:
        return self.lease_ttl - self.renew_deadline - self.renew_interval - 1.0

    @property
    def failover(self) -> float:
        """The promise for a leader that dies without a word: lease_ttl plus one retry."""
        return self.lease_ttl + self.renew_interval

    @property
    def step_down(self) -> float:
        """A leader that cannot renew has its child dead by this long after its last renewal."""
        return self.renew_deadline + self.stop_grace

    def toml(self) -> str:
        return (
            "[coordination]\n"
            f'lease_ttl = "{round(self.lease_ttl * 1000)}ms"\n'
            f'renew_interval = "{round(self.renew_interval * 1000)}ms"\n'
            f'renew_deadline = "{round(self.renew_deadline * 1000)}ms"\n'
        )


FAST = Timings()
# Long enough for every follower to have tried the lease at least once.
HOLD = 2 * FAST.renew_interval + 1.0


# -- faketime ---------------------------------------------------------------------


def libfaketime() -> str | None:
    """The path of libfaketime (Debian package `faketime`), or None."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    return found[0] if found else None


def require_faketime() -> str:
    """libfaketime's path; skips the test without it, or fails it when CI=true."""
    path = libfaketime()
    if path is not None and Path("/usr/bin/faketime").exists():
        return path
    reason = "faketime is not installed (apt-get install faketime): clock-skew tests need it"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: these tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


# -- the probe log and its verdict -------------------------------------------------


@dataclass(frozen=True)
class ProbeEvent:
    """One line of a probe log: started | acquired | OVERLAP | released."""

    kind: str
    node: str
    pid: int
    token: str
    at: float
    index: int  # its line number, 0-based

    def __str__(self) -> str:
        return f"{self.kind} node={self.node} pid={self.pid} token={self.token} at={self.at:.3f}"


def parse_probe_log(text: str) -> list[ProbeEvent]:
    """The complete lines of a probe log (a line being written is left for the next read)."""
    events = []
    for index, line in enumerate(text.split("\n")[:-1]):
        kind, node, pid, token, at = line.split()
        events.append(ProbeEvent(kind, node, int(pid), token, float(at), index))
    return events


@dataclass(frozen=True)
class Term:
    """The interval one probe instance held the lock: [acquired, ended]; ended None: holds."""

    node: str
    pid: int
    token: str
    acquired: float
    ended: float | None
    how: str  # released | died | holding

    def __str__(self) -> str:
        end = "now" if self.ended is None else f"{self.ended:.3f} ({self.how})"
        return f"node={self.node} pid={self.pid} token={self.token} [{self.acquired:.3f}, {end}]"


def terms(events: Iterable[ProbeEvent], deaths: Mapping[int, float] | None = None) -> list[Term]:
    """Each instance's holding interval, ended by its `released` line or else by its death."""
    deaths = deaths or {}
    acquired: dict[int, ProbeEvent] = {}
    released: dict[int, float] = {}
    for event in events:
        if event.kind == "acquired":
            acquired[event.pid] = event
        elif event.kind == "released":
            released[event.pid] = event.at
    result = []
    for pid, event in acquired.items():
        if pid in released:
            ended, how = released[pid], "released"
        elif pid in deaths:
            ended, how = deaths[pid], "died"
        else:
            ended, how = None, "holding"
        result.append(Term(event.node, pid, event.token, event.at, ended, how))
    return sorted(result, key=lambda term: term.acquired)


def overlaps(events: Iterable[ProbeEvent], deaths: Mapping[int, float] | None = None) -> list[str]:
    """Every sign of two instances at once: OVERLAP lines, and intersecting intervals."""
    events = list(events)
    found = [f"{event}: the lock was held by another live instance" for event in events
             if event.kind == "OVERLAP"]
    held = terms(events, deaths)
    for i, first in enumerate(held):
        for second in held[i + 1:]:
            if first.ended is None or second.acquired < first.ended:
                found.append(f"intervals intersect: {first} and {second}")
    return found


class ProbeLog:
    """The lock file and log shared by every instance of one leader worker (per group)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        self.lock = directory / f"{name}.lock"
        self.path = directory / f"{name}.log"
        self.lock.touch()
        self.path.touch()

    def env(self) -> dict[str, str]:
        return {"PROBE_LOCK": str(self.lock), "PROBE_LOG": str(self.path)}

    def events(self) -> list[ProbeEvent]:
        return parse_probe_log(self.path.read_text())

    def find(self, kind: str, *, since: ProbeEvent | int | None = None,
             where: Callable[[ProbeEvent], bool] | None = None) -> list[ProbeEvent]:
        """Events of `kind` after `since` (an event, or a count of lines), that pass `where`."""
        start = since.index + 1 if isinstance(since, ProbeEvent) else since or 0
        return [event for event in self.events()[start:]
                if event.kind == kind and (where is None or where(event))]

    def wait_for(self, kind: str, timeout: float, *, since: ProbeEvent | int | None = None,
                 where: Callable[[ProbeEvent], bool] | None = None) -> ProbeEvent:
        """The first event of `kind` after `since` that passes `where`, waiting up to timeout."""
        deadline = time.monotonic() + timeout
        while not (found := self.find(kind, since=since, where=where)):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {kind!r} in probe log {self.name} within {timeout}s; log:\n"
                    + self.path.read_text()
                )
            time.sleep(POLL)
        return found[0]

    def mark(self) -> int:
        """The number of lines so far, for `since=`."""
        return len(self.events())

    def quiet(self, seconds: float, *, since: ProbeEvent | int | None = None,
              kinds: tuple[str, ...] = ("started", "acquired", "OVERLAP")) -> None:
        """Assert that for `seconds` no instance starts or takes the lock (a held term
        stays alone). The absence of an event can only be watched for a while."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            news = [e for kind in kinds for e in self.find(kind, since=since)]
            if news:
                raise AssertionError(
                    f"expected no new {kinds} in probe log {self.name}, got: "
                    + "; ".join(map(str, news))
                )
            time.sleep(POLL)


# -- watching probes die -------------------------------------------------------------


class DeathWatch:
    """Notes when each probe dies, through a pidfd per pid found in the logs.

    A pidfd turns readable the moment its process exits, so the recorded time is the
    death's within a poll period, not the discovery's. A process already gone when it
    is discovered is recorded at discovery (the rare probe that lived under 20 ms)."""

    def __init__(self, logs: Callable[[], Iterable[ProbeLog]]) -> None:
        self._logs = logs
        self.deaths: dict[int, float] = {}
        self._fds: dict[int, int] = {}  # fd -> pid
        self._seen: set[int] = set()
        self._poll = select.poll()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _discover(self) -> None:
        for log in list(self._logs()):
            for event in log.find("started"):
                if event.pid in self._seen:
                    continue
                self._seen.add(event.pid)
                try:
                    fd = os.pidfd_open(event.pid)
                except ProcessLookupError:
                    self.deaths[event.pid] = time.time()
                    continue
                self._fds[fd] = event.pid
                self._poll.register(fd, select.POLLIN)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready = self._poll.poll(POLL * 1000 / 2)
            now = time.time()
            with self._lock:
                for fd, _ in ready:
                    if fd in self._fds:
                        self.deaths[self._fds.pop(fd)] = now
                        self._poll.unregister(fd)
                        os.close(fd)
                self._discover()

    def sync(self) -> None:
        """Catch up with every death so far (call before judging)."""
        if self._stop.is_set():
            return
        with self._lock:
            self._discover()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            with self._lock:
                pending = [pid for pid in self._fds.values() if not pid_alive(pid)]
            if not pending:
                return
            time.sleep(POLL / 4)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()


# -- nodes -----------------------------------------------------------------------


class Node:
    """One `supervisor run` process with its config file; can be stopped and started again."""

    def __init__(self, name: str, config: Path, env: dict[str, str], cwd: Path,
                 proxy: TcpProxy | None, release: Path | None = None) -> None:
        self.name = name
        self.config = config
        self.env = env
        self.cwd = cwd
        self.proxy = proxy
        self.runs: list[Running] = []
        self.release = release
        self.run_releases: list[Path | None] = []  # what each of `runs` ran

    def use_release(self, release: Path | None) -> None:
        """From the next start on, run the `supervisor` package found in `release` (an
        unpacked wheel of another release), or this checkout's (None)."""
        self.release = release

    @property
    def running(self) -> Running:
        return self.runs[-1]

    @property
    def pid(self) -> int:
        return self.running.proc.pid

    @property
    def alive(self) -> bool:
        return bool(self.runs) and self.running.proc.poll() is None

    def start(self) -> Node:
        if self.release is None:
            argv, env = [str(SUPERVISOR_BIN)], self.env
        else:  # the other release's package first on the path, this interpreter
            argv = [PYTHON, "-m", "supervisor"]
            env = {**self.env, "PYTHONPATH": str(self.release)}
        self.runs.append(Running([*argv, "run", "-c", str(self.config)], env, self.cwd))
        self.run_releases.append(self.release)
        return self

    def expect(self, pattern: str, timeout: float = 15.0) -> str:
        return self.running.expect(pattern, timeout=timeout, after_start=True).group(0)

    def wait_started(self, timeout: float = 20.0) -> None:
        """Until the supervisor has read its config and starts its workers."""
        self.expect(r"starting \d+ workers", timeout=timeout)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, then the exit code (a clean stop is 0)."""
        self.running.signal(signal.SIGTERM)
        return self.running.wait(timeout=timeout)

    def kill9(self) -> None:
        """SIGKILL to the supervisor process alone: its children must die by themselves."""
        self.running.proc.send_signal(signal.SIGKILL)
        self.running.proc.wait(timeout=10)

    def output(self) -> str:
        return "\n".join(f"--- run {i} ---\n{run.text()}" for i, run in enumerate(self.runs))


def _toml(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is JSON's string syntax for these


F = TypeVar("F", bound="Fleet")


@contextlib.contextmanager
def made_fleets(make: Callable[..., F]) -> Iterator[Callable[..., F]]:
    """For a fixture: `make` wrapped so that every fleet it made is closed on the way
    out, its report() printed (pytest shows it when the test failed)."""
    made: list[F] = []

    def making(**options: Any) -> F:
        fleet = make(**options)
        made.append(fleet)
        return fleet

    try:
        yield making
    finally:
        for fleet in made:
            fleet.close()
            print(fleet.report())


def worker_toml(name: str, script: str, mode: str, env: Mapping[str, str],
                options: Mapping[str, object]) -> str:
    """`[workers.<name>]` running tests/workers/<script> under this interpreter."""
    command = ", ".join(_toml(item) for item in (PYTHON, str(WORKERS / script)))
    keys = "".join(f"{key} = {_toml(value) if isinstance(value, str) else value}\n"
                   for key, value in options.items())
    env_toml = ", ".join(f"{key} = {_toml(value)}" for key, value in env.items())
    return (f"[workers.{name}]\n"
            f"command = [{command}]\n"
            f"mode = {_toml(mode)}\n"
            f"{keys}"
            f"env = {{ {env_toml} }}\n")


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"cannot proxy {url.split('@')[-1]!r}: no host:port (SQLite is a file)")
    return parts.hostname, parts.port


def _with_host_port(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host}:{port}"))


def _is_probe(pid: int) -> bool:
    try:
        return b"probe.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class Fleet:
    """Nodes sharing one database, each running a probe as its leader worker."""

    def __init__(self, directory: Path, database_url: str, timings: Timings = FAST) -> None:
        self.directory = directory
        self.database_url = database_url
        self.timings = timings
        self.nodes: dict[str, Node] = {}
        self.probes: dict[str, ProbeLog] = {}
        self.watch = DeathWatch(lambda: list(self.probes.values()))

    def probe(self, name: str = "probe") -> ProbeLog:
        if name not in self.probes:
            self.probes[name] = ProbeLog(self.directory, name)
        return self.probes[name]

    def config(self, name: str, *, group: str, mode: str, probe: ProbeLog, database_url: str,
               worker_env: Mapping[str, str]) -> str:
        return (
            f"node_id = {_toml(name)}\n"
            f"group = {_toml(group)}\n"
            f"database_url = {_toml(database_url)}\n"
            f"database_listen_url = {_toml(listen_url(self.database_url))}\n\n"
            f"{self.timings.toml()}\n"
            "[metrics]\nenabled = false\n\n"
            + self.worker_table(group=group, mode=mode, probe=probe, worker_env=worker_env)
        )

    def worker_table(self, *, group: str, mode: str, probe: ProbeLog,
                     worker_env: Mapping[str, str]) -> str:
        """The node file's one worker; the harnesses of other modes run other probes."""
        return worker_toml("probe", "probe.py", mode, {**probe.env(), **worker_env},
                           {"stop_timeout": "10s"})

    def node(self, name: str, *, probe: ProbeLog | None = None, group: str = "default",
             mode: str = "global-leader", via_proxy: bool = False, faketime: str | None = None,
             start: bool = True, release: Path | None = None) -> Node:
        """Write <name>.toml and (unless start=False) start the node.

        via_proxy: the node reaches the database through its own TcpProxy (node.proxy).
        faketime: e.g. "+40s": the supervisor runs under libfaketime with that offset; its
        probe gets the real clock back, since the probe log is the test's instrument.
        release: run another release of the supervisor (see Node.use_release).
        """
        probe = probe or self.probe()
        url, proxy, worker_env = self.database_url, None, {}
        if via_proxy:
            proxy = TcpProxy(*_host_port(self.database_url))
            url = _with_host_port(self.database_url, "127.0.0.1", proxy.port)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
        if faketime is not None:
            env.update(LD_PRELOAD=require_faketime(), FAKETIME=faketime)
            worker_env = {"LD_PRELOAD": "", "FAKETIME": ""}
        path = self.directory / f"{name}.toml"
        path.write_text(self.config(name, group=group, mode=mode, probe=probe,
                                    database_url=url, worker_env=worker_env))
        node = Node(name, path, env, self.directory, proxy, release)
        self.nodes[name] = node
        return node.start() if start else node

    def start_nodes(self, *names: str, **options: Any) -> None:
        """Start the nodes together, then wait until each has read its config."""
        nodes = [self.node(name, **options) for name in names]
        for node in nodes:
            node.wait_started()

    # -- the verdict ----------------------------------------------------------------

    def terms(self, probe: ProbeLog) -> list[Term]:
        self.watch.sync()
        return terms(probe.events(), self.watch.deaths)

    def holder(self, probe: ProbeLog | None = None) -> tuple[Node, Term]:
        """The node whose probe holds the lock now; exactly one must."""
        probe = probe or self.probe()
        holding = [term for term in self.terms(probe) if term.ended is None]
        if len(holding) != 1:
            raise AssertionError(f"expected one holder of {probe.name}, got {holding}\n"
                                 + self.report())
        return self.nodes[holding[0].node], holding[0]

    def wait_ended(self, probe: ProbeLog, pid: int, timeout: float) -> Term:
        """The term of instance `pid` once it has ended: released, or seen to die."""
        deadline = time.monotonic() + timeout
        while True:
            ended = [t for t in self.terms(probe) if t.pid == pid and t.ended is not None]
            if ended:
                return ended[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"probe pid {pid} still holds after {timeout}s\n"
                                     + self.report())
            time.sleep(POLL)

    def overlaps(self) -> list[str]:
        self.watch.sync()
        return [f"{name}: {problem}" for name, probe in self.probes.items()
                for problem in overlaps(probe.events(), self.watch.deaths)]

    def assert_no_overlaps(self) -> None:
        found = self.overlaps()
        if found:
            raise AssertionError("two instances ran at once:\n  " + "\n  ".join(found)
                                 + "\n" + self.report())

    def report(self) -> str:
        """Everything a failing test needs: the probe logs, terms, and every node's output."""
        parts = []
        for name, probe in self.probes.items():
            parts.append(f"=== probe log {name} ===\n{probe.path.read_text()}")
            parts.append("terms:\n" + "\n".join(f"  {t}" for t in self.terms(probe)))
        for name, node in self.nodes.items():
            parts.append(f"=== node {name} ===\n{node.output()}")
        return "\n".join(parts)

    # -- teardown -------------------------------------------------------------------

    def close(self) -> None:
        """Stop every node at once (SIGTERM, then SIGKILL to its group), kill any probe
        left behind, close the proxies."""
        live = [node for node in self.nodes.values() if node.alive]
        for node in live:
            with contextlib.suppress(ProcessLookupError):
                node.running.signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for node in live:
            try:
                node.running.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.running.kill_all()
        for node in self.nodes.values():
            for run in node.runs:
                run.close()
            if node.proxy is not None:
                node.proxy.close()
        for probe in self.probes.values():
            for event in probe.find("started"):
                if pid_alive(event.pid) and _is_probe(event.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(event.pid, signal.SIGKILL)
        self.watch.close()
