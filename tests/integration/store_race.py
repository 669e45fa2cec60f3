"""Contenders for the store race tests, each run in its own process (multiprocessing:
forked from a fork server that imported this module).

Every contender opens its own SqlStore with its own Holder (distinct pid and nonce), connects
before the start line, then waits on a shared Barrier so that all of them send their statement
at the same moment. Each reports what it saw on a queue as a plain tuple, and an unexpected
exception as its formatted traceback, so the test in the parent can judge every round.

Rounds: all race -> barrier (everyone has tried) -> the winner releases -> barrier -> next round.
The barrier between "tried" and "released" is what makes "exactly one winner per round" a
fair claim: nobody can acquire a lease freed by a winner of the same round.
"""

from __future__ import annotations

import os
import secrets
import traceback
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from supervisor.store import Holder, Lease
from supervisor.store.sql import SqlStore

BARRIER_TIMEOUT = 60.0  # a hung contender breaks the barrier for all instead of hanging them
TTL = 60.0  # longer than any round, so only a release frees the lease between rounds


def _holder(index: int) -> Holder:
    return Holder(node_id=f"node-{index}", group="race", pid=os.getpid(),
                  nonce=secrets.token_hex(8))


def upgrade(url: str, index: int, start: Barrier, results: Queue[tuple[object, ...]]) -> None:
    """Call upgrade() on a fresh database together with the other contenders."""
    try:
        store = SqlStore(url)
        try:
            start.wait(BARRIER_TIMEOUT)
            store.upgrade()
        finally:
            store.close()
    except BaseException:
        results.put(("error", index, traceback.format_exc()))
    else:
        results.put(("ok", index, None))


def acquire(url: str, index: int, rounds: int, lease: str, start: Barrier,
            results: Queue[tuple[object, ...]]) -> None:
    """Race lease_acquire on one lease name, `rounds` times."""
    _contend(url, index, rounds, lease, start, results, via_sync=False)


def sync(url: str, index: int, rounds: int, lease: str, start: Barrier,
         results: Queue[tuple[object, ...]]) -> None:
    """Race node_sync(wanted=[lease]) on one lease name, `rounds` times."""
    _contend(url, index, rounds, lease, start, results, via_sync=True)


def _contend(url: str, index: int, rounds: int, lease: str, start: Barrier,
             results: Queue[tuple[object, ...]], *, via_sync: bool) -> None:
    try:
        holder = _holder(index)
        store = SqlStore(url)
        try:
            store.db_now()  # connect before the start line, so the race is about the lease
            for round_ in range(rounds):
                start.wait(BARRIER_TIMEOUT)
                won = _try(store, holder, lease, via_sync=via_sync)
                results.put(("round", index, round_, won.term if won else None,
                             holder.nonce))
                start.wait(BARRIER_TIMEOUT)  # everyone has tried
                if won is not None and not store.lease_release(won, reason="race round over"):
                    raise AssertionError(f"round {round_}: the winner could not release {won}")
                start.wait(BARRIER_TIMEOUT)  # the lease is free again
        finally:
            store.close()
    except BaseException:
        start.abort()
        results.put(("error", index, traceback.format_exc()))


def _try(store: SqlStore, holder: Holder, lease: str, *, via_sync: bool) -> Lease | None:
    if not via_sync:
        return store.lease_acquire(lease, holder, TTL)
    result = store.node_sync(holder, held=[], wanted=[lease], ttl=TTL)
    return result.acquired.get(lease)
