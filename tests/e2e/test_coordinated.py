"""coordinated mode with real supervisors (SPEC.md guarantee 5), judged by what each
instance sees itself (tests/workers/coordprobe.py: an exclusive flock per index, and a
shared flock per generation that a newer generation's instance checks on start).
Zero overlaps is the only pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, WORKERS, pid_alive
from tests.support.fleet import FAST, Fleet, ProbeLog, _toml

pytestmark = pytest.mark.slow

STABLE = 1.0  # stable_window in these tests
SLACK = 4.0  # process start-up and a few syncs on a loaded 2-core machine
POLL = 0.05


@dataclass(frozen=True)
class Instance:
    kind: str
    node: str
    pid: int
    generation: int
    index: int
    count: int
    at: float
    what: str


def parse(text: str) -> list[Instance]:
    found = []
    for line in text.split("\n")[:-1]:
        kind, node, pid, gen, index, count, at, *what = line.split()
        found.append(Instance(kind, node, int(pid), int(gen), int(index), int(count),
                              float(at), " ".join(what)))
    return found


class CoordFleet(Fleet):
    def __init__(self, directory: Path, database_url: str, **worker: object) -> None:
        super().__init__(directory, database_url)
        self.worker = worker
        self.probe_dir = directory / "coord"
        self.probe_dir.mkdir()
        (self.probe_dir / "log").touch()

    def config(self, name: str, *, group: str, mode: str, probe: ProbeLog, database_url: str,
               worker_env: Mapping[str, str]) -> str:
        env = {"PROBE_DIR": str(self.probe_dir), **worker_env}
        env_toml = ", ".join(f"{key} = {_toml(value)}" for key, value in env.items())
        command = ", ".join(_toml(item) for item in (PYTHON, str(WORKERS / "coordprobe.py")))
        keys = "".join(f"{key} = {_toml(value) if isinstance(value, str) else value}\n"
                       for key, value in self.worker.items())
        return (
            f"node_id = {_toml(name)}\n"
            f"group = {_toml(group)}\n"
            f"database_url = {_toml(database_url)}\n\n"
            f"{self.timings.toml()}\n"
            "[metrics]\nenabled = false\n\n"
            "[workers.shard]\n"
            f"command = [{command}]\n"
            'mode = "coordinated"\n'
            + ("" if "stable_window" in self.worker
               else f'stable_window = "{round(STABLE * 1000)}ms"\n') +
            'stop_timeout = "5s"\n'
            f"{keys}"
            f"env = {{ {env_toml} }}\n"
        )

    def instances(self) -> list[Instance]:
        return parse((self.probe_dir / "log").read_text())

    def running(self) -> list[Instance]:
        """Instances started and neither ended nor dead."""
        ended = {i.pid for i in self.instances() if i.kind == "end"}
        return [i for i in self.instances() if i.kind == "start" and i.pid not in ended
                and pid_alive(i.pid)]

    def settled(self, nodes: set[str], count: int | None = None) -> tuple[int, list[Instance]]:
        """Wait until exactly `nodes` run one instance each, of one generation, with
        indexes 0..n-1 of count n (or `count`)."""
        expected = count if count is not None else len(nodes)
        deadline = time.monotonic() + 30.0
        while True:
            live = self.running()
            gens = {i.generation for i in live}
            if ({i.node for i in live} == nodes and len(live) == len(nodes) and len(gens) == 1
                    and sorted(i.index for i in live) == list(range(len(nodes)))
                    and {i.count for i in live} == {expected}):
                return gens.pop(), live
            if time.monotonic() > deadline:
                raise AssertionError(f"not settled on {sorted(nodes)}: {live}\n" + self.log())
            time.sleep(POLL)

    def assert_no_overlaps(self) -> None:
        bad = [i for i in self.instances() if i.kind == "OVERLAP"]
        assert not bad, "instances overlapped:\n" + "\n".join(map(str, bad)) + "\n" + self.log()

    def log(self) -> str:
        return (self.probe_dir / "log").read_text() + "\n" + self.report()


MakeFleet = Callable[..., CoordFleet]


@pytest.fixture
def make_fleet(tmp_path: Path, database_url: str) -> Iterator[MakeFleet]:
    made: list[CoordFleet] = []

    def make(**worker: Any) -> CoordFleet:
        fleet = CoordFleet(tmp_path, database_url, **worker)
        made.append(fleet)
        return fleet

    try:
        yield make
    finally:
        for fleet in made:
            fleet.close()
            print(fleet.log())


def start(fleet: CoordFleet, *names: str) -> None:
    for name in names:
        fleet.node(name)
    for name in names:
        fleet.nodes[name].wait_started()


def test_join_crash_and_leave_rebalance_without_overlap(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    start(fleet, "a", "b", "c")
    first, _ = fleet.settled({"a", "b", "c"})
    # a fourth node joins: a new generation of 4, and no instance of the old one alive
    joined = time.time()
    start(fleet, "d")
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


@pytest.mark.parametrize("database_backend", ["postgresql"])
def test_a_burst_of_joins_causes_one_generation(make_fleet: MakeFleet) -> None:
    # Three supervisors started together join within a second or two of each other on
    # this machine: a stable_window longer than that folds them into one rebalance.
    fleet = make_fleet(stable_window="4s")
    start(fleet, "a")
    first, _ = fleet.settled({"a"})
    for name in ("b", "c", "d"):
        fleet.node(name)
    second, _ = fleet.settled({"a", "b", "c", "d"})
    assert second == first + 1, fleet.log()
    fleet.assert_no_overlaps()


@pytest.mark.parametrize("database_backend", ["sqlite", "mariadb"])
def test_fixed_instances_run_exactly_that_many(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(instances=2)
    start(fleet, "a", "b", "c", "d")
    deadline = time.monotonic() + 30
    while True:
        live = fleet.running()
        if len(live) == 2 and sorted(i.index for i in live) == [0, 1]:
            break
        assert time.monotonic() < deadline, fleet.log()
        time.sleep(POLL)
    assert {i.count for i in live} == {2}
    # the two that run are the first two that joined; the others stand by
    started_nodes = {i.node for i in fleet.instances() if i.kind == "start"}
    assert len(started_nodes) == 2, fleet.log()
    fleet.assert_no_overlaps()
