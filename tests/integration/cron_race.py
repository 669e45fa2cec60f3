"""Claimers for the cron race tests, each run in its own process (multiprocessing:
forked from a fork server that imported this module).

Every claimer opens its own SqlStore with its own Holder (distinct node, pid and nonce),
connects before the start line, then waits on a shared Barrier so that all of them send
their claim at the same moment, on the real database clock. Each reports what it got on a
queue as a plain tuple, and an unexpected exception as its formatted traceback, so the test
in the parent can judge every round.

Rounds: all claim the round's tick (or record the round's ticks missed) -> barrier
(everyone has tried) -> next round. Runs are left running (ttl longer than the test), so a
slot taken in a round is never freed in it.
"""

from __future__ import annotations

import os
import secrets
import traceback
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from supervisor.store import Holder
from supervisor.store.sql import SqlStore

BARRIER_TIMEOUT = 60.0  # a hung claimer breaks the barrier for all instead of hanging them
TTL = 300.0  # longer than the test: only the race decides who holds a slot


def claim(url: str, index: int, worker: str, plan: list[tuple[float, float, bool]],
          max_run: int, nodes: int, start: Barrier, results: Queue[tuple[object, ...]]) -> None:
    """For each (tick, grace, forbid_overlap) of `plan`, one round: claim a slot of the tick.

    Claimer `index` runs on node `node-{index % nodes}`: with fewer nodes than claimers,
    several supervisors share a node (and its max_per_node of 1).
    Reports ("round", index, round, result, slot, token, holder nonce) per round.
    """
    try:
        holder = Holder(node_id=f"node-{index % nodes}", group="race", pid=os.getpid(),
                        nonce=secrets.token_hex(8))
        store = SqlStore(url)
        try:
            store.db_now()  # connect before the start line, so the race is about the slots
            for round_, (tick, grace, forbid_overlap) in enumerate(plan):
                start.wait(BARRIER_TIMEOUT)
                outcome = store.cron_claim(worker, tick, holder=holder, max_run=max_run,
                                           ttl=TTL, grace=grace,
                                           forbid_overlap=forbid_overlap)
                run = outcome.run
                results.put(("round", index, round_, outcome.result,
                             None if run is None else run.slot,
                             None if run is None else run.token,
                             holder.nonce))
                start.wait(BARRIER_TIMEOUT)  # everyone has tried
        finally:
            store.close()
    except BaseException:
        start.abort()
        results.put(("error", index, traceback.format_exc()))


def record_missed(url: str, index: int, worker: str, plan: list[list[float]], grace: float,
                  start: Barrier, results: Queue[tuple[object, ...]]) -> None:
    """For each list of ticks in `plan`, one round: cron_record_missed of those ticks, all
    at once. Reports ("round", index, round, the ticks this caller recorded)."""
    try:
        store = SqlStore(url)
        try:
            store.db_now()  # connect before the start line, so the race is about the rows
            for round_, ticks in enumerate(plan):
                start.wait(BARRIER_TIMEOUT)
                recorded = store.cron_record_missed(worker, ticks, grace=grace,
                                                    reason=f"caller {index} after an outage")
                results.put(("round", index, round_, tuple(recorded)))
                start.wait(BARRIER_TIMEOUT)  # everyone has tried
        finally:
            store.close()
    except BaseException:
        start.abort()
        results.put(("error", index, traceback.format_exc()))
