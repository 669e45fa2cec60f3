"""The logs the cron and coordinated probes write (tests/workers/cronprobe.py,
tests/workers/coordprobe.py), parsed once for the e2e tests and bench/chaos.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class RunEvent:
    """One line of a cron probe log."""

    kind: str  # start | OVERLAP | end
    node: str
    pid: int
    token: int
    tick: float
    slot: int
    at: float


def parse_cron_log(text: str) -> list[RunEvent]:
    events = []
    for line in text.split("\n")[:-1]:
        kind, node, pid, token, tick, slot, at = line.split()
        stamp = datetime.fromisoformat(tick.replace("Z", "+00:00")).timestamp()
        events.append(RunEvent(kind, node, int(pid), int(token), stamp, int(slot), float(at)))
    return events


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


def parse_coord_log(text: str) -> list[Instance]:
    found = []
    for line in text.split("\n")[:-1]:
        kind, node, pid, gen, index, count, at, *what = line.split()
        found.append(Instance(kind, node, int(pid), int(gen), int(index), int(count),
                              float(at), " ".join(what)))
    return found
