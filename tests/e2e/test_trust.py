"""Trust that nothing can delay (SPEC.md guarantee 11), with real supervisors and probes.

Each case puts a leader's child in a state where the happy path would keep it alive too
long: a stop already in progress with a 45 s stop_timeout whose child drains slowly (the
probe keeps its lock 60 s after SIGTERM), and then the node loses its trust (its
database traffic silently dropped, or the server gone: connections reset and refused);
or the supervisor process alone stopped with SIGSTOP, so its event loop runs nothing;
or the trust watchdog itself killed. Judged as in test_leader_faults.py by the probes'
own flock: zero overlaps, and the old child dead by its trust deadline (the last
renewal + renew_deadline + the leader stop grace), not by its stop_timeout.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.conftest import pid_alive, wait_until
from tests.support.fleet import FAST, HOLD, Fleet, Node, ProbeLog, made_fleets, worker_toml

pytestmark = pytest.mark.slow

SLACK = 3.0  # process start-up on a loaded 2-core machine, one poll, one spawn
IDLE = '\n[workers.idle]\ncommand = ["sleep", "100000"]\n'


class DrainFleet(Fleet):
    """Leader probes that drain for 60 s on SIGTERM on node `leader` (stop_timeout 45 s);
    each node also runs an every-node `idle` worker, so that a reload may remove the
    probe and leave a valid file."""

    def worker_table(self, *, group: str, mode: str, probe: ProbeLog,
                     worker_env: Mapping[str, str]) -> str:
        env = {**probe.env(), "PROBE_DRAIN": "60", "PROBE_DRAIN_ON": "leader", **worker_env}
        return worker_toml("probe", "probe.py", mode, env, {"stop_timeout": "45s"}) + IDLE


@pytest.fixture
def fleet(tmp_path: Path, database_url: str) -> Iterator[DrainFleet]:
    with made_fleets(lambda: DrainFleet(tmp_path, database_url)) as make:
        yield make()


class InlineTable:
    """A TOML value written as given (worker_toml quotes only strings)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def begin_stop(node: Node, how: str) -> None:
    """Start a stop of the probe's child: SIGTERM to the supervisor, or a SIGHUP after
    the file lost the probe or changed it."""
    if how == "shutdown":
        node.running.signal(signal.SIGTERM)
        return
    text = node.config.read_text()
    if how == "reload-remove":
        start, end = text.index("[workers.probe]"), text.index("[workers.idle]")
        text = text[:start] + text[end:]
    else:  # reload-change: the worker's env differs, so it is stopped and started anew
        text = text.replace("env = { ", 'env = { RELOADED = "1", ', 1)
    node.config.write_text(text)
    node.running.signal(signal.SIGHUP)


def lose_trust(node: Node, how: str) -> None:
    """Cut its database traffic, play its database server gone, or freeze the
    supervisor process alone (SIGSTOP: its lease expires and is taken meanwhile, which
    it learns when thawed)."""
    assert node.proxy is not None
    if how == "cut":
        node.proxy.blackhole()
    elif how == "refused":
        node.proxy.refuse()
    else:
        os.kill(node.pid, signal.SIGSTOP)


CASES = [(stop, loss) for stop in ("shutdown", "reload-remove", "reload-change")
         for loss in ("cut", "refused", "frozen")]


@pytest.mark.parametrize("database_backend", ["postgresql", "mariadb"])
@pytest.mark.parametrize(("stop", "loss"), CASES)
def test_a_stop_in_progress_obeys_a_trust_loss_that_comes_during_it(
        fleet: DrainFleet, stop: str, loss: str) -> None:
    probe = fleet.probe()
    leader = fleet.node("leader", via_proxy=True)
    first = probe.wait_for("acquired", timeout=15)
    assert first.node == "leader"
    fleet.start_nodes("other")
    probe.quiet(HOLD, since=first)
    assert leader.proxy is not None

    begin_stop(leader, stop)
    probe.wait_for("draining", timeout=10, where=lambda e: e.pid == first.pid)
    lost_at = time.time()
    lose_trust(leader, loss)
    try:
        # Its last renewal was sent before lost_at: dead by renew_deadline + stop grace,
        # whatever the 45 s stop_timeout of the stop already under way says.
        old = fleet.wait_ended(probe, first.pid, timeout=FAST.step_down + SLACK)
        assert old.ended is not None and old.ended - lost_at <= FAST.step_down + 1.0, old
        second = probe.wait_for("acquired", timeout=FAST.failover + SLACK, since=first)
    finally:
        os.kill(leader.pid, signal.SIGCONT)  # "frozen": thawed once the lease was taken
    assert second.node == "other"
    assert second.at > old.ended
    fleet.assert_no_overlaps()
    if stop == "shutdown":
        assert leader.running.wait(timeout=20) == 0


@pytest.mark.parametrize("database_backend", ["sqlite", "postgresql"])
def test_a_supervisor_stopped_alone_has_its_child_killed_by_the_trust_deadline(
        fleet: DrainFleet) -> None:
    probe = fleet.probe()
    frozen = fleet.node("frozen")
    first = probe.wait_for("acquired", timeout=15)
    assert first.node == "frozen"
    fleet.start_nodes("other")
    probe.quiet(HOLD, since=first)

    stopped_at = time.time()
    os.kill(frozen.pid, signal.SIGSTOP)  # the supervisor alone: its child runs on
    try:
        old = fleet.wait_ended(probe, first.pid, timeout=FAST.step_down + SLACK)
        assert old.ended is not None and old.ended - stopped_at <= FAST.step_down + 1.0, old
        second = probe.wait_for("acquired", timeout=FAST.failover + SLACK, since=first)
        assert second.node == "other" and second.at > old.ended
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    # Thawed, it knows its trust is gone: it starts nothing while `other` leads.
    probe.quiet(FAST.lease_ttl, since=second)
    assert frozen.alive
    fleet.assert_no_overlaps()


def watchdog_of(supervisor_pid: int) -> int:
    """The pid of the supervisor's trust watchdog (a child running watchdog.py)."""
    children = Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children").read_text()
    for pid in map(int, children.split()):
        if b"watchdog.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise AssertionError(f"no watchdog among the children {children!r}")


@pytest.mark.parametrize("database_backend", ["sqlite"])
def test_a_killed_watchdog_stops_the_trusted_children_and_the_supervisor_says_why(
        fleet: DrainFleet) -> None:
    probe = fleet.probe()
    node = fleet.node("leader")
    first = probe.wait_for("acquired", timeout=15)
    os.kill(watchdog_of(node.pid), signal.SIGKILL)
    node.expect(r"trust watchdog \(pid \d+\) ended \(killed by signal 9\).*stepping down")
    # Its child drains for 60 s with a 45 s stop_timeout: with no watchdog, a trusted
    # child is stopped as a leader that lost its lease is, within the stop grace.
    wait_until(lambda: not pid_alive(first.pid), FAST.stop_grace + SLACK,
               "the trusted child to be stopped")
    assert node.running.wait(timeout=30) == 1


@pytest.mark.parametrize("database_backend", ["postgresql"])
def test_a_restart_waiting_out_its_backoff_does_not_start_after_a_trust_loss(
        tmp_path: Path, database_url: str) -> None:
    class CrashFleet(Fleet):
        """Probes that crash as soon as they hold the lock: restarts with a 4 s backoff."""

        def worker_table(self, *, group: str, mode: str, probe: ProbeLog,
                         worker_env: Mapping[str, str]) -> str:
            env = {**probe.env(), "PROBE_EXIT": "3", **worker_env}
            backoff = InlineTable('{ initial = "4s", max = "4s", jitter = 0.0 }')
            return worker_toml("probe", "probe.py", mode, env, {"backoff": backoff})

    with made_fleets(lambda: CrashFleet(tmp_path, database_url)) as make:
        fleet = make()
        probe = fleet.probe()
        leader = fleet.node("leader", via_proxy=True)
        first = probe.wait_for("acquired", timeout=15)
        assert first.node == "leader" and leader.proxy is not None
        leader.expect(r"probe: restart 2 in 4s", timeout=15)  # in its backoff now
        cut_at = time.time()
        leader.proxy.blackhole()
        fleet.start_nodes("other")
        taken = probe.wait_for("acquired", timeout=FAST.failover + 4 + SLACK,
                               where=lambda e: e.node == "other")
        # the backoff ended meanwhile: nothing started on the cut node after the cut
        late = [e for e in probe.find("started") if e.node == "leader" and e.at > cut_at]
        assert not late, late
        assert taken.at > cut_at
        fleet.assert_no_overlaps()
