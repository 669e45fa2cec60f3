"""Claimers for the trigger race test, each in its own process (see cron_race.py): in
each round, some claim a schedule tick of the round's worker and some claim the round's
trigger of that worker, all with overlap = forbid, at the same moment."""

from __future__ import annotations

import os
import secrets
import traceback
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from supervisor.store import Holder
from supervisor.store.sql import SqlStore

BARRIER_TIMEOUT = 60.0
TTL = 300.0  # longer than the test: a run taken stays running


def claim(url: str, index: int, plan: list[tuple[str, float, int]], kind: str,
          start: Barrier, results: Queue[tuple[object, ...]]) -> None:
    """For each (worker, tick, trigger id) of `plan`, one round: claim the tick (`kind`
    "tick") or the trigger ("trigger"), max_run 1, overlap forbid. Reports ("round",
    index, round, kind, result)."""
    try:
        holder = Holder(node_id=f"node-{index}", group="race", pid=os.getpid(),
                        nonce=secrets.token_hex(8))
        store = SqlStore(url)
        try:
            store.db_now()  # connect before the start line
            for round_, (worker, tick, trigger_id) in enumerate(plan):
                start.wait(BARRIER_TIMEOUT)
                if kind == "tick":
                    outcome = store.cron_claim(worker, tick, holder=holder, max_run=1,
                                               ttl=TTL, grace=600.0, forbid_overlap=True)
                else:
                    outcome = store.cron_claim_trigger(trigger_id, holder=holder, max_run=1,
                                                       ttl=TTL, forbid_overlap=True)
                results.put(("round", index, round_, kind, outcome.result))
                start.wait(BARRIER_TIMEOUT)
        finally:
            store.close()
    except BaseException:
        start.abort()
        results.put(("error", index, traceback.format_exc()))
