"""Leader modes hurt on purpose: kill -9, SIGTERM, a cut cable, a database restart, a
wrong wall clock. Judged by what the probe workers record (tests/workers/probe.py):
zero overlaps is the only pass (SPEC.md guarantees 1-4, 7).

The network and clock faults need a database server: SQLite is a file, and a faked
clock would fake SQLite's too, whose clock the SPEC says is the host's, shared.
The database restart runs last in this file and always brings the server back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import WORKERS, pid_alive, wait_until
from tests.databases import ALL_BACKENDS
from tests.support.fleet import (
    FAST,
    HOLD,
    Fleet,
    ProbeLog,
    made_fleets,
    overlaps,
    parse_probe_log,
    terms,
)

pytestmark = pytest.mark.slow

SERVERS = pytest.mark.parametrize("database_backend", ["postgresql", "mariadb"])
# Every backend, and PostgreSQL through PgBouncer in transaction mode (its nodes poll: no LISTEN).
EVERY = pytest.mark.parametrize("database_backend", ALL_BACKENDS)
SLACK = 3.0  # process start-up on a loaded 2-core machine, one poll, one spawn


@pytest.fixture
def fleet(tmp_path: Path, database_url: str) -> Iterator[Fleet]:
    with made_fleets(lambda: Fleet(tmp_path, database_url)) as make:
        yield make()


def token(term_or_event: object) -> int:
    value = term_or_event.token  # type: ignore[attr-defined]
    assert value.isdigit(), f"SUPERVISOR_FENCING_TOKEN missing or not an integer: {value!r}"
    return int(value)


def wait_dead(pid: int, timeout: float, what: str) -> None:
    wait_until(lambda: not pid_alive(pid), timeout, what)


# -- the instrument: the probe and the judge catch an overlap when there is one ---------


def run_probe(probe: ProbeLog, node: str, token: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **probe.env(), "SUPERVISOR_NODE_ID": node,
           "SUPERVISOR_FENCING_TOKEN": token}
    return subprocess.Popen([sys.executable, str(WORKERS / "probe.py")], env=env,
                            stdout=subprocess.DEVNULL)


def test_probe_records_an_overlap_and_the_judge_reports_it(tmp_path: Path) -> None:
    probe = ProbeLog(tmp_path, "probe")
    procs = [run_probe(probe, "a", "1")]
    try:
        probe.wait_for("acquired", timeout=10, where=lambda e: e.node == "a")
        procs.append(run_probe(probe, "b", "2"))
        probe.wait_for("OVERLAP", timeout=10, where=lambda e: e.node == "b")
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(timeout=10) == 0
        probe.wait_for("acquired", timeout=10, where=lambda e: e.node == "b")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    kinds = [(e.kind, e.node) for e in probe.events()]
    assert kinds == [("started", "a"), ("acquired", "a"), ("started", "b"), ("OVERLAP", "b"),
                     ("released", "a"), ("acquired", "b")]
    assert len(overlaps(probe.events())) == 1


def test_judge_finds_intersecting_intervals_and_accepts_a_clean_handover() -> None:
    log = parse_probe_log(
        "started a 10 1 100.0\nacquired a 10 1 100.1\n"
        "started b 20 2 104.0\nacquired b 20 2 104.2\n"
    )
    # a never released and was not seen to die: it still holds when b takes the lock.
    assert overlaps(log)
    assert overlaps(log, deaths={10: 104.5})  # died after b had acquired
    assert not overlaps(log, deaths={10: 103.9})
    released = log + parse_probe_log("released a 10 1 103.0\n")
    assert not overlaps(released)
    assert [t.how for t in terms(released, {20: 200.0})] == ["released", "died"]


# -- a. kill -9 of the leader's supervisor -------------------------------------------------


@EVERY
def test_kill9_of_the_leader_fails_over_without_orphan_or_overlap(fleet: Fleet) -> None:
    probe = fleet.probe()
    fleet.start_nodes("a", "b", "c")
    first = probe.wait_for("acquired", timeout=15)
    probe.quiet(HOLD, since=first)  # exactly one probe runs
    leader, term = fleet.holder()
    assert (leader.name, term.pid) == (first.node, first.pid)

    killed_at = time.time()
    leader.kill9()
    wait_dead(term.pid, 5, "the dead supervisor's child to die with it (no orphan)")
    budget = FAST.failover + SLACK
    second = probe.wait_for("acquired", timeout=budget, since=first)
    assert second.node != leader.name
    assert second.at - killed_at <= budget
    assert token(second) > token(first)
    fleet.assert_no_overlaps()
    assert all(node.alive for node in fleet.nodes.values() if node is not leader)


# -- b. SIGTERM: a clean stop hands over at once ----------------------------------------


@EVERY
def test_sigterm_of_the_leader_hands_over_at_once(fleet: Fleet) -> None:
    probe = fleet.probe()
    fleet.start_nodes("a", "b", "c")
    first = probe.wait_for("acquired", timeout=15)
    probe.quiet(HOLD, since=first)
    leader, term = fleet.holder()

    assert leader.terminate() == 0
    released = probe.wait_for("released", timeout=1, where=lambda e: e.pid == term.pid)
    assert not pid_alive(term.pid)
    second = probe.wait_for("acquired", timeout=FAST.lease_ttl, since=first)
    handover = second.at - released.at
    # The release is immediate: the next node need not wait for expiry, only for its
    # next try (a renew interval with jitter) and a process start.
    assert handover < min(1.5, FAST.lease_ttl / 2), f"handover took {handover:.2f}s"
    assert token(second) > token(first)
    fleet.assert_no_overlaps()


# -- c. the leader's database traffic silently swallowed ---------------------------------


@SERVERS
def test_cut_cable_leader_kills_its_child_before_anyone_starts_one(fleet: Fleet) -> None:
    probe = fleet.probe()
    cut = fleet.node("cut", via_proxy=True)
    first = probe.wait_for("acquired", timeout=15)
    assert first.node == "cut"
    fleet.start_nodes("other")
    probe.quiet(HOLD, since=first)
    assert cut.proxy is not None

    cut_at = time.time()
    cut.proxy.blackhole()
    # The leader cannot renew: it stops its child by renew_deadline + stop grace.
    old = fleet.wait_ended(probe, first.pid, timeout=FAST.step_down + SLACK)
    assert old.ended is not None and old.ended - cut_at <= FAST.step_down + 1.0
    second = probe.wait_for("acquired", timeout=FAST.failover + SLACK, since=first)
    assert second.node == "other"
    assert second.at > old.ended, "another node started the worker before the old one ended"
    assert token(second) > token(first)
    fleet.assert_no_overlaps()

    # Healed, the node comes back as a follower: it starts nothing while `other` leads...
    cut.proxy.heal()
    probe.quiet(FAST.lease_ttl, since=second)
    assert cut.alive
    # ...and it is really back: when `other` stops, it takes over.
    assert fleet.nodes["other"].terminate() == 0
    third = probe.wait_for("acquired", timeout=FAST.failover + SLACK, since=second)
    assert third.node == "cut"
    assert token(third) > token(second)
    fleet.assert_no_overlaps()


# -- e. a node whose wall clock is 40 s ahead ----------------------------------------------


@SERVERS
def test_node_with_clock_40s_ahead_neither_steals_nor_loses_leadership(fleet: Fleet) -> None:
    probe = fleet.probe()
    fleet.node("plain-1").wait_started()
    first = probe.wait_for("acquired", timeout=15)
    fleet.start_nodes("ahead", faketime="+40s")
    fleet.start_nodes("plain-2")
    # A node that trusted its own clock would find plain-1's lease long expired.
    probe.quiet(FAST.lease_ttl + HOLD, since=first)

    fleet.nodes["plain-1"].kill9()
    wait_dead(first.pid, 5, "the dead supervisor's child to die with it")
    second = probe.wait_for("acquired", timeout=FAST.failover + SLACK, since=first)
    fleet.assert_no_overlaps()
    if second.node != "ahead":  # hand it to the skewed node: it must take it...
        assert fleet.nodes[second.node].terminate() == 0
        second = probe.wait_for("acquired", timeout=FAST.lease_ttl, since=second)
        assert second.node == "ahead"
    # ...and hold it, renewing like anyone else, with a follower on a true clock beside it.
    fleet.start_nodes("plain-3")
    probe.quiet(2 * FAST.lease_ttl, since=second)
    leader, term = fleet.holder()
    assert (leader.name, term.pid) == ("ahead", second.pid)
    fleet.assert_no_overlaps()


# -- f. group-leader: one per group ------------------------------------------------------


def test_group_leader_runs_exactly_one_per_group(fleet: Fleet) -> None:
    groups = {"east": ("e1", "e2"), "west": ("w1", "w2")}
    for group, names in groups.items():
        for name in names:
            fleet.node(name, group=group, mode="group-leader", probe=fleet.probe(group))
    for node in fleet.nodes.values():
        node.wait_started()
    firsts = {group: fleet.probe(group).wait_for("acquired", timeout=15) for group in groups}
    for group, first in firsts.items():
        fleet.probe(group).quiet(HOLD, since=first)
        assert first.node in groups[group]

    # A failover in one group leaves the other alone.
    east_leader, east_term = fleet.holder(fleet.probe("east"))
    east_leader.kill9()
    wait_dead(east_term.pid, 5, "the dead supervisor's child to die with it")
    second = fleet.probe("east").wait_for("acquired", timeout=FAST.failover + SLACK,
                                          since=firsts["east"])
    assert second.node in groups["east"] and second.node != east_leader.name
    _, west_term = fleet.holder(fleet.probe("west"))
    assert west_term.pid == firsts["west"].pid
    fleet.assert_no_overlaps()


# -- d. the database server restarted (last: it takes the server away for a while) ------


def server_answers(backend: str) -> bool:
    argv = (["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"] if backend == "postgresql"
            else ["mysqladmin", "-uroot", "-h127.0.0.1", "--connect-timeout=2", "ping"])
    return subprocess.run(argv, capture_output=True, check=False, timeout=10).returncode == 0


def mariadbd_running() -> bool:
    status = ["start-stop-daemon", "--status", "--exec", "/usr/sbin/mariadbd"]
    return subprocess.run(status, check=False).returncode == 0


def pg_cluster(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
                   check=True, capture_output=True, timeout=60)


def stop_server(backend: str) -> None:
    if backend == "postgresql":
        pg_cluster("stop")
        return
    subprocess.run(["mysqladmin", "-uroot", "-h127.0.0.1", "shutdown"], check=True,
                   capture_output=True, timeout=60)
    wait_until(lambda: not mariadbd_running(), 60, "mariadbd to exit")


def start_server(backend: str) -> None:
    """Start the server if it is down, and wait until it answers."""
    if not server_answers(backend):
        if backend == "postgresql":
            pg_cluster("start")
        else:
            wait_until(lambda: not mariadbd_running() or server_answers(backend), 60,
                       "a stopping mariadbd to exit")
            subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background",
                            "--exec", "/usr/sbin/mariadbd"], check=True, timeout=60)
    wait_until(lambda: server_answers(backend), 60, f"{backend} to answer again")


@SERVERS
@pytest.mark.server_restart
def test_database_restart_leaders_step_down_then_leadership_returns(
    fleet: Fleet, database_backend: str
) -> None:
    probe = fleet.probe()
    fleet.start_nodes("a", "b")
    first = probe.wait_for("acquired", timeout=15)
    probe.quiet(HOLD, since=first)
    try:
        down_at = time.time()
        stop_server(database_backend)
        # No node can prove a lease now: the leader steps down, nobody takes over.
        old = fleet.wait_ended(probe, first.pid, timeout=FAST.step_down + SLACK)
        assert old.ended is not None and old.ended - down_at <= FAST.step_down + SLACK
        probe.quiet(FAST.lease_ttl, since=first, kinds=("started", "acquired", "OVERLAP"))
    finally:
        start_server(database_backend)
    # Back, the database lets one node lead again; the supervisors never exited.
    second = probe.wait_for("acquired", timeout=20, since=first)
    assert second.at > old.ended
    assert token(second) > token(first)
    fleet.assert_no_overlaps()
    assert all(node.alive for node in fleet.nodes.values()), "a supervisor exited"
