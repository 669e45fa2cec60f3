"""coordinated mode with real supervisors (SPEC.md guarantee 5), judged by what each
instance sees itself (tests/workers/coordprobe.py: an exclusive flock per index, and a
shared flock per generation that a newer generation's instance checks on start).
Zero overlaps is the only pass.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.conftest import pid_alive, wait_until
from tests.databases import ALL_BACKENDS
from tests.support.fleet import FAST, Fleet, ProbeLog, made_fleets, worker_toml
from tests.support.probelogs import Instance, parse_coord_log

pytestmark = pytest.mark.slow

STABLE = 1.0  # stable_window in these tests
SLACK = 4.0  # process start-up and a few syncs on a loaded 2-core machine
POLL = 0.05


class CoordFleet(Fleet):
    def __init__(self, directory: Path, database_url: str,
                 probe_env: Mapping[str, str] | None = None, **worker: object) -> None:
        super().__init__(directory, database_url)
        self.worker = worker
        self.probe_env = dict(probe_env or {})
        self.probe_dir = directory / "coord"
        self.probe_dir.mkdir()
        (self.probe_dir / "log").touch()

    def worker_table(self, *, group: str, mode: str, probe: ProbeLog,
                     worker_env: Mapping[str, str]) -> str:
        scope = {"PROBE_SCOPE": group} if self.worker.get("scope") == "group" else {}
        env = {"PROBE_DIR": str(self.probe_dir), **scope, **self.probe_env, **worker_env}
        options = {"stable_window": f"{round(STABLE * 1000)}ms", "stop_timeout": "5s",
                   **self.worker}
        return worker_toml("shard", "coordprobe.py", "coordinated", env, options)

    def instances(self) -> list[Instance]:
        return parse_coord_log((self.probe_dir / "log").read_text())

    def running(self) -> list[Instance]:
        """Instances started and neither ended nor dead."""
        ended = {i.pid for i in self.instances() if i.kind == "end"}
        return [i for i in self.instances() if i.kind == "start" and i.pid not in ended
                and pid_alive(i.pid)]

    def settled(self, nodes: set[str], count: int | None = None,
                among: set[str] | None = None) -> tuple[int, list[Instance]]:
        """Wait until exactly `nodes` run one instance each, of one generation, with
        indexes 0..n-1 of count n (or `count`); `among`: looking at these nodes only."""
        expected = count if count is not None else len(nodes)
        deadline = time.monotonic() + 30.0
        while True:
            live = [i for i in self.running() if among is None or i.node in among]
            gens = {i.generation for i in live}
            if ({i.node for i in live} == nodes and len(live) == len(nodes) and len(gens) == 1
                    and sorted(i.index for i in live) == list(range(len(nodes)))
                    and {i.count for i in live} == {expected}):
                return gens.pop(), live
            if time.monotonic() > deadline:
                raise AssertionError(f"not settled on {sorted(nodes)}: {live}\n" + self.report())
            time.sleep(POLL)

    def marks(self) -> dict[str, int]:
        """How much each node has logged so far, for wait_output(after=)."""
        return {name: len(node.output()) for name, node in self.nodes.items()}

    def wait_output(self, pattern: str, after: Mapping[str, int],
                    timeout: float = 30.0) -> str:
        """Until some node's supervisor has logged `pattern` (a regex) since `after`; the
        node's name."""
        deadline = time.monotonic() + timeout
        while True:
            for name, node in self.nodes.items():
                if re.search(pattern, node.output()[after.get(name, 0):]):
                    return name
            if time.monotonic() > deadline:
                raise AssertionError(f"no node logged {pattern!r}\n" + self.report())
            time.sleep(POLL)

    def assert_no_overlaps(self) -> None:
        bad = [i for i in self.instances() if i.kind == "OVERLAP"]
        assert not bad, "instances overlapped:\n" + "\n".join(map(str, bad)) + "\n" + self.report()

    def report(self) -> str:
        return (self.probe_dir / "log").read_text() + "\n" + super().report()


MakeFleet = Callable[..., CoordFleet]


@pytest.fixture
def make_fleet(tmp_path: Path, database_url: str) -> Iterator[MakeFleet]:
    with made_fleets(functools.partial(CoordFleet, tmp_path, database_url)) as make:
        yield make


@pytest.mark.parametrize("database_backend", ALL_BACKENDS)  # PgBouncer in transaction mode too
def test_join_crash_and_leave_rebalance_without_overlap(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    fleet.start_nodes("a", "b", "c")
    first, _ = fleet.settled({"a", "b", "c"})
    # a fourth node joins: a new generation of 4, and no instance of the old one alive
    joined = time.time()
    fleet.start_nodes("d")
    second, live = fleet.settled({"a", "b", "c", "d"})
    assert second > first
    # the membership had to stay unchanged for stable_window before it was published
    assert min(i.at for i in live) >= joined + STABLE, (joined, live)
    fleet.assert_no_overlaps()
    # kill -9 of one node: back to 3 within stable_window + lease TTL (+ start-up)
    victim = "b"
    fleet.nodes[victim].kill9()
    killed = time.monotonic()
    third, _ = fleet.settled({"a", "c", "d"})
    assert third > second
    assert time.monotonic() - killed < STABLE + FAST.lease_ttl + SLACK
    fleet.assert_no_overlaps()
    # a clean stop of another: back to 2, faster (its membership goes at once)
    assert fleet.nodes["c"].terminate() == 0
    stopped = time.monotonic()
    fourth, _ = fleet.settled({"a", "d"})
    assert fourth > third
    assert time.monotonic() - stopped < STABLE + SLACK
    fleet.assert_no_overlaps()


def test_a_burst_of_joins_causes_one_generation(make_fleet: MakeFleet) -> None:
    # Three supervisors started together join within a second or two of each other on
    # this machine: a stable_window longer than that folds them into one rebalance.
    fleet = make_fleet(stable_window="4s")
    fleet.start_nodes("a")
    first, _ = fleet.settled({"a"})
    for name in ("b", "c", "d"):
        fleet.node(name)
    second, _ = fleet.settled({"a", "b", "c", "d"})
    assert second == first + 1, fleet.report()
    # two leave at once: one generation too
    for name in ("b", "c"):
        fleet.nodes[name].running.signal(signal.SIGTERM)
    assert [fleet.nodes[name].running.wait(timeout=20) for name in ("b", "c")] == [0, 0]
    third, _ = fleet.settled({"a", "d"})
    assert third == second + 1, fleet.report()
    fleet.assert_no_overlaps()


def test_fixed_instances_run_exactly_that_many_and_standbys_restart_nobody(
        make_fleet: MakeFleet) -> None:
    fleet = make_fleet(instances=2)
    fleet.start_nodes("a", "b", "c", "d")
    deadline = time.monotonic() + 30
    while True:
        live = fleet.running()
        if len(live) == 2 and sorted(i.index for i in live) == [0, 1]:
            break
        assert time.monotonic() < deadline, fleet.report()
        time.sleep(POLL)
    assert {i.count for i in live} == {2} and len({i.generation for i in live}) == 1
    generation = live[0].generation
    # the two that run are the first two that joined; the others stand by
    assert {i.node for i in fleet.instances() if i.kind == "start"} == {
        i.node for i in live}, fleet.report()

    # a child crashes: restarted under the restart policy, with the same index and
    # generation; the other instance runs on untouched
    crashed, other = live
    os.kill(crashed.pid, signal.SIGKILL)
    wait_until(lambda: {i.node for i in fleet.running()} == {crashed.node, other.node}
               and crashed.pid not in {i.pid for i in fleet.running()}, 15,
               "the crashed child restarted")
    live = fleet.running()
    (again,) = [i for i in live if i.node == crashed.node]
    assert (again.index, again.count, again.generation) == (crashed.index, 2, generation)
    assert other in live, fleet.report()
    started = [i for i in fleet.instances() if i.kind == "start"]

    # a standby leaves: no index or count changes, so nothing is published or restarted
    standby = sorted({"a", "b", "c", "d"} - {i.node for i in live})[0]
    before = fleet.marks()
    assert fleet.nodes[standby].terminate() == 0
    fleet.wait_output(rf"shard: 3 live members; generation {generation} stands", before)
    assert fleet.running() == live, fleet.report()
    assert [i for i in fleet.instances() if i.kind == "start"] == started, fleet.report()

    # an active member leaves: the last standby takes its index, the other keeps its own
    gone, kept = sorted(live, key=lambda i: i.node)
    assert fleet.nodes[gone.node].terminate() == 0
    heir = ({"a", "b", "c", "d"} - {standby, gone.node, kept.node}).pop()
    after, now = fleet.settled({kept.node, heir})
    assert after == generation + 1
    assert {i.node: i.index for i in now} == {kept.node: kept.index, heir: gone.index}
    fleet.assert_no_overlaps()


@pytest.mark.parametrize("database_backend", ["postgresql", "mariadb"])
def test_a_member_cut_from_the_database_steps_down_and_the_rest_rebalance(
        make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    cut = fleet.node("cut", via_proxy=True)
    fleet.start_nodes("a", "b")
    first, live = fleet.settled({"cut", "a", "b"})
    (mine,) = [i for i in live if i.node == "cut"]
    assert cut.proxy is not None
    cut_at = time.time()
    cut.proxy.blackhole()
    # its child stops once the slot's renewal is overdue, exactly as a leader's does
    wait_until(lambda: not pid_alive(mine.pid), FAST.step_down + SLACK, "the cut child ends")
    (ended,) = [i for i in fleet.instances() if i.kind == "end" and i.pid == mine.pid]
    assert ended.at - cut_at <= FAST.step_down + 1.0, (cut_at, ended)
    # the others form a generation of two once its membership expires
    second, now = fleet.settled({"a", "b"})
    assert second > first and min(i.at for i in now) > ended.at
    assert cut.alive
    # healed, it joins again: a fresh generation of three
    cut.proxy.heal()
    third, _ = fleet.settled({"cut", "a", "b"})
    assert third > second
    fleet.assert_no_overlaps()


def test_scope_group_coordinates_each_group_on_its_own(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(scope="group")
    blue, red = {"a", "b"}, {"c", "d"}
    for name in ("a", "b", "c"):
        fleet.node(name, group="blue" if name in blue else "red")
    for name in ("a", "b", "c"):
        fleet.nodes[name].wait_started()
    blue_generation, blue_live = fleet.settled(blue, among=blue)
    red_generation, _ = fleet.settled({"c"}, among=red)
    # a node joins red: red rebalances to 0..1 of 2, blue's instances run on untouched
    fleet.node("d", group="red").wait_started()
    later, _ = fleet.settled(red, among=red)
    assert later == red_generation + 1
    assert [i for i in fleet.running() if i.node in blue] == blue_live, fleet.report()
    assert fleet.settled(blue, among=blue)[0] == blue_generation
    fleet.assert_no_overlaps()


@pytest.mark.parametrize("loss", ["cut", "refused", "frozen"])
@pytest.mark.parametrize("database_backend", ["postgresql", "mariadb"])
def test_a_member_draining_for_a_new_generation_obeys_a_later_trust_loss(
        make_fleet: MakeFleet, loss: str) -> None:
    # The cut member's child drains slowly (stop_timeout 45 s, a 60 s drain) when a join
    # publishes a new generation; cut off from the database during that drain, it must
    # still die by its slot's trust deadline: before the slot can expire and the barrier
    # let the new generation start, not 45 s later.
    fleet = make_fleet(probe_env={"PROBE_DRAIN": "60", "PROBE_DRAIN_ON": "cut"},
                       stop_timeout="45s")
    cut = fleet.node("cut", via_proxy=True)
    fleet.start_nodes("a")
    first, live = fleet.settled({"cut", "a"})
    (mine,) = [i for i in live if i.node == "cut"]
    assert cut.proxy is not None
    fleet.start_nodes("c")  # a join: the next generation stops every instance of this one
    wait_until(lambda: any(i.kind == "draining" and i.pid == mine.pid
                           for i in fleet.instances()), 30, "the cut member's child to drain")
    cut_at = time.time()
    if loss == "cut":
        cut.proxy.blackhole()
    elif loss == "refused":
        cut.proxy.refuse()
    else:  # its supervisor alone frozen: only the watchdog acts
        os.kill(cut.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: not pid_alive(mine.pid), FAST.step_down + SLACK,
                   "the draining child to die by its trust deadline")
        assert time.time() - cut_at <= FAST.step_down + SLACK
        second, now = fleet.settled({"a", "c"})
    finally:
        os.kill(cut.pid, signal.SIGCONT)
    assert second > first and min(i.at for i in now) > cut_at
    fleet.assert_no_overlaps()
