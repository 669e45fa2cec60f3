"""Publishers for the coordinated race tests, each run in its own process (multiprocessing:
forked from a fork server that imported this module).

Every publisher opens its own SqlStore with its own Holder (distinct node, pid and nonce),
connects before the start line, then waits on a shared Barrier so that all of them send
their compare-and-set at the same moment, each from the same expected generation and each
with a member list of its own (itself first). Each reports what it got on a queue as a
plain tuple, and an unexpected exception as its formatted traceback, so the test in the
parent can judge every round.

Rounds: all publish from generation `round` -> barrier (everyone has tried) -> next round.
"""

from __future__ import annotations

import os
import secrets
import traceback
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from supervisor.store import Holder
from supervisor.store.sql import SqlStore

BARRIER_TIMEOUT = 60.0  # a hung publisher breaks the barrier for all instead of hanging them


def publish(url: str, index: int, worker_key: str, rounds: int, start: Barrier,
            results: Queue[tuple[object, ...]]) -> None:
    """Race coord_publish(expected=round) on one key, `rounds` times. Reports
    ("round", index, round, the generation published or None, holder nonce)."""
    try:
        holder = Holder(node_id=f"node-{index}", group="race", pid=os.getpid(),
                        nonce=secrets.token_hex(8))
        store = SqlStore(url)
        try:
            store.db_now()  # connect before the start line, so the race is about the row
            for round_ in range(rounds):
                start.wait(BARRIER_TIMEOUT)
                members = [holder, *(Holder(f"peer-{index}-{i}", "race", i, f"{index}-{i}")
                                     for i in range(round_))]
                got = store.coord_publish(worker_key, expected=round_, members=members,
                                          count=1 + round_ % 3)
                results.put(("round", index, round_, got, holder.nonce))
                start.wait(BARRIER_TIMEOUT)  # everyone has tried
        finally:
            store.close()
    except BaseException:
        start.abort()
        results.put(("error", index, traceback.format_exc()))
