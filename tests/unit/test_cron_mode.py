"""CronMode with the real NodeSync and an in-memory store, on a virtual clock.

The event loop's clock never waits: when nothing is ready it jumps to the next timer, so
minutes of schedule pass in milliseconds and every instant is exact. Store calls run on
the loop (no threads), so nothing happens outside that clock. The database clock is the
loop's clock plus an offset each test picks; the node's wall clock is never consulted.

The store is supervisor.store.memory's MemoryStore, which passes the store conformance
suite, wrapped to log every call with the database time it arrived and to fail or hang
calls on cue.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest

from supervisor.coordination.cron import CATCH_UP_LIMIT, CronMode, RunGrant
from supervisor.coordination.node_sync import NodeSync
from supervisor.errors import StoreUnavailable
from supervisor.model import CronClaimed, Event, Mode
from supervisor.spec import CoordinationSpec, WorkerSpec
from supervisor.store import ClaimOutcome, CronRunRecord, Holder, SyncResult, memory
from tests.support.clocks import VirtualClockLoop, run_virtual

ME = Holder("n1", "g", 1, "nonce-1")
OTHER = Holder("n2", "g", 2, "nonce-2")
TIMING = CoordinationSpec()  # the production defaults: virtual time makes them cheap
WORKER = "report"
EPOCH = 1_900_000_000.0  # 2030-03-17T17:46:40Z, a multiple of 10 s
K = EPOCH  # the tick before a node starts, in the tests of downtime


# --- the keeper, its store calls made on the loop -----------------------------------------

class InlineKeeper(NodeSync):
    """The real keeper, except that store calls run on the loop instead of in threads."""

    async def _call(self, fn: Any, *args: Any, within: float, priority: int = 0,
                    **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(within):
                return await self.store.perform(fn, *args, **kwargs)  # type: ignore[attr-defined]
        except TimeoutError:
            raise StoreUnavailable(f"no answer within {within:.2f}s") from None


@dataclass
class Call:
    name: str
    db_time: float  # when the call reached the database
    failed: bool


class MemoryStore:
    """The real MemoryStore (supervisor.store.memory) on the loop's clock + offset, with
    scripted failures and latency; it logs every call with the database time it arrived,
    and what cron mode asked and got."""

    def __init__(self) -> None:
        self.offset = 0.0  # database clock minus the loop's
        self.sync_bias = 0.0  # node_sync reports the clock this much ahead (a skewed path)
        self.latency = 0.0  # of each round trip; the database acts halfway through it
        self.failing: dict[str, int] = {}  # call name -> how many more of its calls fail
        self.hang_at: dict[str, int] = {}  # call name -> the (1-based) call that never answers
        self.hung = asyncio.Event()
        self.calls: list[Call] = []
        self.claims: list[tuple[float, float, str]] = []  # (tick, database time, result)
        self.missed: list[tuple[float, list[float], list[float]]] = []  # (time, asked, recorded)
        self.synced: list[tuple[int, ...]] = []  # the run tokens each sync renewed
        self.memory = memory.MemoryStore(clock=self.now)
        self._changed = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        """The rest of the protocol, unlogged beyond `perform`: the memory store's."""
        return getattr(self.memory, name)

    def now(self) -> float:
        return asyncio.get_running_loop().time() + self.offset

    def set_now(self, db_time: float) -> None:
        self.offset = db_time - asyncio.get_running_loop().time()

    async def until(self, condition: Callable[[], object]) -> None:
        """Wait until `condition()` holds, re-checked after every call the store gets."""
        async with asyncio.timeout(600):  # virtual seconds
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def perform(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        name = fn.__name__
        self._changed.set()
        if self.hang_at.get(name) == 1 + sum(c.name == name for c in self.calls):
            self.calls.append(Call(name, self.now(), failed=True))
            self.hung.set()
            await asyncio.Event().wait()
        await asyncio.sleep(self.latency / 2)
        failed = self.failing.get(name, 0) > 0
        self.calls.append(Call(name, self.now(), failed))
        if failed:
            self.failing[name] -= 1
            raise StoreUnavailable(f"{name}: connection refused")
        result = fn(*args, **kwargs)
        self._changed.set()
        await asyncio.sleep(self.latency / 2)
        return result

    def seed(self, tick: float, state: str = "succeeded", holder: Holder = OTHER,
             expires_at: float | None = None) -> None:
        """A run of `tick` in slot 0 by `holder`, claimed at the tick: ended in `state`,
        or running until `expires_at`."""
        ttl = 1.0 if expires_at is None else expires_at - tick
        outcome = self.memory.cron_claim(WORKER, tick, holder=holder, max_run=1, ttl=ttl,
                                         grace=1.0, now=tick)
        assert outcome.run is not None, outcome
        if state != "running":
            self.memory.cron_finish(outcome.run, state, now=tick)

    @property
    def rows(self) -> list[CronRunRecord]:
        return self.memory.cron_runs(limit=10**6)

    def row(self, token: int) -> CronRunRecord:
        (found,) = [r for r in self.rows if r.token == token]
        return found

    def lose(self) -> None:
        """Maintain marks the running runs lost, as when their node stopped renewing them:
        run at a time pinned past their expiry (nothing else here is judged by it)."""
        self.memory.maintain(10**9, now=self.now() + 10**6)

    def attempts(self, name: str) -> list[float]:
        return [c.db_time for c in self.calls if c.name == name]

    def missed_ticks(self) -> list[float]:
        return sorted(r.tick for r in self.rows if r.state == "missed")

    # --- the calls cron mode makes, logged -------------------------------------------------

    def node_sync(self, holder: Holder, **kwargs: Any) -> SyncResult:
        result = self.memory.node_sync(holder, **kwargs)
        self.synced.append(tuple(sorted(result.runs_kept)))
        return replace(result, db_now=result.db_now + self.sync_bias)

    def cron_claim(self, worker: str, tick: float, **kwargs: Any) -> ClaimOutcome:
        outcome = self.memory.cron_claim(worker, tick, **kwargs)
        self.claims.append((tick, self.now(), outcome.result))
        return outcome

    def cron_record_missed(self, worker: str, ticks: Sequence[float],
                           **kwargs: Any) -> list[float]:
        recorded = self.memory.cron_record_missed(worker, ticks, **kwargs)
        self.missed.append((self.now(), sorted(ticks), recorded))
        return recorded


# --- fixtures ------------------------------------------------------------------------------

def cron_spec(**changes: Any) -> WorkerSpec:
    base = WorkerSpec(module="app.report", mode=Mode.CRON, cron="@every 10s",
                      misfire_grace=25.0)
    return replace(base, **changes)


@dataclass
class Node:
    store: MemoryStore
    keeper: InlineKeeper
    mode: CronMode
    events: list[Event]
    task: asyncio.Task[None]

    async def next_runs(self, within: float = 60.0) -> list[RunGrant]:
        async with asyncio.timeout(within):
            return await self.mode.next_runs()

    async def next_runs_done(self) -> list[RunGrant]:
        """The next runs, each ending at once (so that overlap = forbid lets the next run)."""
        grants = await self.next_runs()
        for grant in grants:
            await self.mode.finish(grant, "succeeded", 0, None)
        return grants

    async def next_sync(self) -> tuple[int, ...]:
        """The run tokens the next node_sync renews."""
        count = len(self.store.synced)
        await self.store.until(lambda: len(self.store.synced) > count)
        return self.store.synced[count]

    def claimed(self) -> list[CronClaimed]:
        return [e for e in self.events if isinstance(e, CronClaimed)]

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


async def node(store: MemoryStore, spec: WorkerSpec, *, db_now: float) -> Node:
    """A node whose database clock reads `db_now` now, its keeper running."""
    store.set_now(db_now)
    events: list[Event] = []
    keeper = InlineKeeper(store, ME, TIMING, events.append)  # type: ignore[arg-type]
    mode = CronMode(keeper, WORKER, spec, events.append, history_keep=7 * 86400.0)
    return Node(store, keeper, mode, events, asyncio.create_task(keeper.run()))


def ticks_of(grants: list[RunGrant]) -> list[float]:
    return [g.run.tick for g in grants if g.run is not None]


def claimed_at(store: MemoryStore, tick: float) -> float:
    """When, by the database's clock, the claim of `tick` that acquired it arrived."""
    return next(db for t, db, result in store.claims if t == tick and result == "acquired")


# --- (a) the next tick, at its instant by the database clock ----------------------------

@pytest.mark.parametrize("latency", [0.0, 0.2])
@pytest.mark.parametrize("skew", [40.375, -39.625])
def test_each_tick_is_claimed_at_its_instant_by_the_database_clock(skew: float,
                                                                   latency: float) -> None:
    # The database's clock is about 40 s off this machine's wall clock; only it counts.
    db_start = math.floor(time.time()) + skew
    first = math.floor(db_start / 10) * 10 + 10

    async def main() -> tuple[MemoryStore, list[list[RunGrant]]]:
        store = MemoryStore()
        store.latency = latency
        n = await node(store, cron_spec(), db_now=db_start)
        got = [await n.next_runs_done() for _ in range(3)]
        await n.stop()
        return store, got

    store, got = run_virtual(main())
    assert [ticks_of(grants) for grants in got] == [[first], [first + 10], [first + 20]]
    for tick in (first, first + 10, first + 20):
        arrived = claimed_at(store, tick)
        # due when it arrives (a claim travels latency / 2), and not a moment later
        assert tick <= arrived <= tick + latency / 2 + 0.02
        assert all(db >= tick - 1e-6 for t, db, _ in store.claims if t == tick)


def test_a_node_that_wakes_a_period_late_looks_back_instead_of_claiming_late() -> None:
    # The loop froze while waiting for the tick at +10 (a paused VM) and resumes at +36:
    # it looks back as after downtime instead of claiming +10 now.
    async def main() -> tuple[MemoryStore, list[float]]:
        store = MemoryStore()
        store.seed(K)
        n = await node(store, cron_spec(), db_now=K + 4)
        waiting = asyncio.create_task(n.mode.next_runs())
        await store.until(lambda: store.attempts("cron_recorded"))
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClockLoop)
        loop.advance(32.0)
        async with asyncio.timeout(60):
            grants = await waiting
        await n.stop()
        return store, ticks_of(grants)

    store, got = run_virtual(main())
    assert got == [K + 40]
    assert [t for t, _, _ in store.claims] == [K + 40]
    # +10 was past its grace (25 s) at +36; +20 and +30 are recorded when theirs ends
    assert store.missed_ticks() == [K + 10]


# --- (b) the database says "early": retried, then acquired ---------------------------------

def test_early_answers_are_retried_until_the_database_agrees_the_tick_is_due() -> None:
    async def main() -> tuple[MemoryStore, Node, list[RunGrant]]:
        store = MemoryStore()
        store.sync_bias = 0.028  # our estimate of the database clock runs 28 ms ahead
        n = await node(store, cron_spec(), db_now=EPOCH + 4)
        grants = await n.next_runs()
        await n.stop()
        return store, n, grants

    store, n, grants = run_virtual(main())
    tick = EPOCH + 10
    assert ticks_of(grants) == [tick]
    results = [result for t, _, result in store.claims if t == tick]
    assert results == ["early", "early", "early", "acquired"]  # 5, 10, 15 ms later
    assert tick <= claimed_at(store, tick) < tick + 0.01
    # an early answer is a retry, not an outcome: only the acquisition is published
    assert [(e.tick, e.result) for e in n.claimed()] == [(tick, "acquired")]


# --- claims the database did not answer --------------------------------------------------

def test_a_claim_the_database_did_not_answer_is_retried_within_grace() -> None:
    async def main() -> tuple[MemoryStore, list[RunGrant]]:
        store = MemoryStore()
        n = await node(store, cron_spec(), db_now=EPOCH + 4)
        await n.keeper.clock_ready()
        store.failing["cron_claim"] = 2
        grants = await n.next_runs()
        await n.stop()
        return store, grants

    store, grants = run_virtual(main())
    tick = EPOCH + 10
    assert ticks_of(grants) == [tick]
    assert store.attempts("cron_claim") == pytest.approx([tick, tick + 0.25, tick + 0.75])


@pytest.mark.parametrize("history", [True, False], ids=["with-history", "new-worker"])
def test_a_tick_no_claim_reached_the_database_for_is_recorded_missed(history: bool) -> None:
    # Guarantee 6: a tick nobody could run within misfire_grace is recorded missed.
    async def main() -> tuple[MemoryStore, Node, list[RunGrant]]:
        store = MemoryStore()
        if history:
            store.seed(EPOCH - 100)
        n = await node(store, cron_spec(misfire_grace=2.0), db_now=EPOCH + 4)
        await n.keeper.clock_ready()
        store.failing["cron_claim"] = 4  # at +0, +0.25, +0.75, +1.75: then grace is over
        grants = await n.next_runs()
        await n.stop()
        return store, n, grants

    store, n, grants = run_virtual(main())
    tick = EPOCH + 10
    assert ticks_of(grants) == [tick + 10]
    assert [e.result for e in n.claimed() if e.tick == tick] == ["error", "missed"]
    assert tick in store.missed_ticks()
    (when,) = [db for db, _, recorded in store.missed if tick in recorded]
    assert tick + 2 <= when <= tick + 2.5
    assert not [t for t, _, _ in store.claims if t == tick]  # never claimed late


# --- (c) max_per_node -----------------------------------------------------------------------

def test_max_per_node_two_claims_two_slots_of_one_tick() -> None:
    async def main() -> tuple[MemoryStore, list[RunGrant], tuple[int, ...]]:
        store = MemoryStore()
        n = await node(store, cron_spec(max_run=3, max_per_node=2), db_now=EPOCH + 4)
        grants = await n.next_runs()
        renewed = await n.next_sync()
        await n.stop()
        return store, grants, renewed

    store, grants, renewed = run_virtual(main())
    assert ticks_of(grants) == [EPOCH + 10, EPOCH + 10]
    runs = [g.run for g in grants if g.run is not None]
    assert sorted(r.slot for r in runs) == [0, 1]
    assert len({r.token for r in runs}) == 2
    assert sorted(renewed) == sorted(r.token for r in runs)  # both tracked and renewed
    assert [result for _, _, result in store.claims] == ["acquired", "acquired"]


def test_max_per_node_stops_claiming_when_the_tick_is_full() -> None:
    async def main() -> tuple[MemoryStore, list[RunGrant]]:
        store = MemoryStore()
        n = await node(store, cron_spec(max_run=2, max_per_node=2), db_now=EPOCH + 4)
        await n.keeper.clock_ready()
        store.seed(EPOCH + 10, "running", expires_at=EPOCH + 100)
        grants = await n.next_runs()
        await n.stop()
        return store, grants

    store, grants = run_virtual(main())
    assert [g.run.slot for g in grants if g.run is not None] == [1]
    assert [result for _, _, result in store.claims] == ["acquired", "full"]


# --- (d) after downtime ------------------------------------------------------------------------
# The node starts at +4 s past tick K = EPOCH; schedule @every 10s. The worker's history
# begins at K - 200 and has a run at K - 100. With misfire_grace 25 s the ticks K - 20,
# K - 10 and K are still in grace at K + 4; the ones before are past it.

PAST_GRACE = [K - 10 * i for i in range(19, 2, -1) if i != 10]  # K-190 .. K-30, oldest first
IN_GRACE = [K - 20, K - 10, K]


def history() -> MemoryStore:
    store = MemoryStore()
    store.seed(K - 200)
    store.seed(K - 100)
    return store


def test_after_downtime_ticks_past_grace_are_recorded_missed_at_once() -> None:
    async def main() -> MemoryStore:
        store = history()
        n = await node(store, cron_spec(), db_now=K + 4)
        await n.next_runs()
        await n.stop()
        return store

    store = run_virtual(main())
    db, asked, recorded = store.missed[0]
    assert db == pytest.approx(K + 4)
    assert asked == PAST_GRACE == recorded  # not K - 200 nor K - 100: they have runs


def test_catch_up_none_claims_no_past_tick_and_records_those_in_grace_when_it_ends() -> None:
    async def main() -> tuple[MemoryStore, list[list[RunGrant]]]:
        store = history()
        n = await node(store, cron_spec(catch_up="none"), db_now=K + 4)
        got = [await n.next_runs_done() for _ in range(3)]
        await n.stop()
        return store, got

    store, got = run_virtual(main())
    assert [ticks_of(grants) for grants in got] == [[K + 10], [K + 20], [K + 30]]
    assert [t for t, _, _ in store.claims] == [K + 10, K + 20, K + 30]
    assert store.missed_ticks() == PAST_GRACE + IN_GRACE
    for tick in IN_GRACE:  # each recorded once its grace has ended, and soon after
        (when,) = [db for db, _, recorded in store.missed if tick in recorded]
        assert tick + 25 <= when <= tick + 25.5


def test_catch_up_latest_claims_exactly_the_latest_due_tick() -> None:
    async def main() -> tuple[MemoryStore, list[RunGrant], list[RunGrant]]:
        store = history()
        n = await node(store, cron_spec(catch_up="latest"), db_now=K + 4)
        first = await n.next_runs_done()
        second = await n.next_runs()
        await n.stop()
        return store, first, second

    store, first, second = run_virtual(main())
    assert ticks_of(first) == [K]
    assert claimed_at(store, K) == pytest.approx(K + 4)
    assert ticks_of(second) == [K + 10]
    assert [t for t, _, _ in store.claims] == [K, K + 10]
    assert store.missed_ticks() == [*PAST_GRACE, K - 20]  # K - 10 is still in grace


def test_catch_up_all_claims_each_tick_in_grace_oldest_first_at_most_the_limit() -> None:
    async def main() -> tuple[MemoryStore, list[RunGrant], list[RunGrant]]:
        store = MemoryStore()
        store.seed(K - 300)
        # grace 125 s: K - 120 .. K are in grace at K + 4, more than CATCH_UP_LIMIT
        n = await node(store, cron_spec(catch_up="all", misfire_grace=125.0,
                                        overlap="allow"), db_now=K + 4)
        first = await n.next_runs()
        second = await n.next_runs()
        await n.stop()
        return store, first, second

    store, first, second = run_virtual(main())
    latest = [K - 10 * i for i in range(CATCH_UP_LIMIT - 1, -1, -1)]
    assert ticks_of(first) == latest
    assert [t for t, _, _ in store.claims][:CATCH_UP_LIMIT] == latest
    assert ticks_of(second) == [K + 10]
    in_grace_not_run = [K - 120, K - 110, K - 100]
    assert set(in_grace_not_run).isdisjoint(t for t, _, _ in store.claims)
    db, _, recorded = store.missed[0]
    assert (db, recorded) == (K + 4, [K - 10 * i for i in range(29, 12, -1)])  # past grace


def test_catch_up_all_claims_no_tick_past_its_grace() -> None:
    async def main() -> tuple[MemoryStore, list[RunGrant]]:
        store = history()
        n = await node(store, cron_spec(catch_up="all", overlap="allow"), db_now=K + 4)
        grants = await n.next_runs()
        await n.stop()
        return store, grants

    store, grants = run_virtual(main())
    assert ticks_of(grants) == IN_GRACE
    assert [(t, result) for t, _, result in store.claims] == [(t, "acquired") for t in IN_GRACE]
    assert store.missed_ticks() == PAST_GRACE


def test_catch_up_all_over_the_limit_records_the_rest_when_their_grace_ends() -> None:
    async def main() -> MemoryStore:
        store = MemoryStore()
        store.seed(K - 300)
        n = await node(store, cron_spec(catch_up="all", misfire_grace=125.0,
                                        overlap="allow"), db_now=K + 4)
        for _ in range(4):  # up to K + 40: the grace of K - 100 ended at K + 25
            await n.next_runs()
        await n.stop()
        return store

    store = run_virtual(main())
    for tick in (K - 120, K - 110, K - 100):
        (when,) = [db for db, _, recorded in store.missed if tick in recorded]
        assert tick + 125 <= when <= tick + 125.5
    assert not {K - 90, K - 80}.intersection(store.missed_ticks())  # they ran


@pytest.mark.parametrize("catch_up", ["none", "latest", "all"])
def test_a_new_worker_claims_nothing_from_the_past(catch_up: str) -> None:
    async def main() -> tuple[MemoryStore, list[RunGrant]]:
        store = MemoryStore()  # no row at all: the worker was just added
        n = await node(store, cron_spec(catch_up=catch_up, overlap="allow"), db_now=K + 4)
        grants = await n.next_runs()
        await n.stop()
        return store, grants

    store, grants = run_virtual(main())
    assert ticks_of(grants) == [K + 10]
    assert [t for t, _, _ in store.claims] == [K + 10]
    assert store.missed == []


# --- (e) what a run's child is told -----------------------------------------------------------

def test_a_grant_carries_tick_slot_and_token() -> None:
    async def main() -> list[RunGrant]:
        store = MemoryStore()
        n = await node(store, cron_spec(cron="@every 250ms", misfire_grace=1.0,
                                        max_run=2, max_per_node=2), db_now=EPOCH + 0.1)
        grants = await n.next_runs()
        await n.stop()
        return grants

    grants = run_virtual(main())
    tokens = [g.run.token for g in grants if g.run is not None]
    assert len(set(tokens)) == 2
    assert [dict(g.env) for g in grants] == [
        {"SUPERVISOR_CRON_TICK": "2030-03-17T17:46:40.250Z", "SUPERVISOR_CRON_SLOT": "0",
         "SUPERVISOR_FENCING_TOKEN": str(tokens[0])},
        {"SUPERVISOR_CRON_TICK": "2030-03-17T17:46:40.250Z", "SUPERVISOR_CRON_SLOT": "1",
         "SUPERVISOR_FENCING_TOKEN": str(tokens[1])},
    ]
    assert grants[0].stop_grace == TIMING.leader_stop_grace


def test_the_tick_a_child_is_told_is_the_scheduled_millisecond() -> None:
    async def main() -> list[RunGrant]:
        store = MemoryStore()
        n = await node(store, cron_spec(cron="@every 300ms", misfire_grace=1.0),
                       db_now=EPOCH + 0.6)
        grants = await n.next_runs()
        await n.stop()
        return grants

    grants = run_virtual(main())
    assert ticks_of(grants) == [pytest.approx(EPOCH + 0.8)]
    assert grants[0].env["SUPERVISOR_CRON_TICK"] == "2030-03-17T17:46:40.800Z"


# --- (f) finishing a run ------------------------------------------------------------------------

def test_finish_is_retried_while_the_database_is_away_then_recorded() -> None:
    async def main() -> tuple[MemoryStore, bool, list[tuple[int, ...]], list[tuple[int, ...]]]:
        store = MemoryStore()
        n = await node(store, cron_spec(), db_now=EPOCH + 4)
        (grant,) = await n.next_runs()
        assert grant.run is not None
        store.failing["cron_finish"] = 2
        synced = len(store.synced)
        ok = await n.mode.finish(grant, "succeeded", 0, None)
        while_finishing = store.synced[synced:]
        after = [await n.next_sync(), await n.next_sync()]
        await n.stop()
        return store, ok, while_finishing, after

    store, ok, while_finishing, after = run_virtual(main())
    assert ok
    (row,) = [r for r in store.rows if r.slot >= 0]
    assert (row.state, row.exit_code) == ("succeeded", 0)
    tries = store.attempts("cron_finish")
    assert tries == pytest.approx([EPOCH + 10, EPOCH + 11, EPOCH + 12])  # renew_interval apart
    assert while_finishing and all(tokens == (row.token,) for tokens in while_finishing)
    assert after == [(), ()]  # untracked once recorded


def test_finish_gives_up_after_a_lease_ttl_and_untracks_the_run() -> None:
    async def main() -> tuple[bool, float, tuple[int, ...], tuple[int, ...]]:
        store = MemoryStore()
        n = await node(store, cron_spec(), db_now=EPOCH + 4)
        (grant,) = await n.next_runs()
        assert grant.run is not None
        store.failing["cron_finish"] = 10**6
        loop = asyncio.get_running_loop()
        began = loop.time()
        ok = await n.mode.finish(grant, "failed", 1, None)
        took = loop.time() - began
        before = store.synced[-1]  # renewed while finish kept trying
        after = await n.next_sync()
        await n.stop()
        return ok, took, before, after

    ok, took, before, after = run_virtual(main())
    assert not ok
    assert TIMING.lease_ttl <= took <= TIMING.lease_ttl + TIMING.renew_interval + 0.01
    assert len(before) == 1
    assert after == ()


def test_finish_of_a_run_marked_lost_says_so_and_untracks_it() -> None:
    async def main() -> tuple[bool, tuple[int, ...], tuple[str, ...]]:
        store = MemoryStore()
        n = await node(store, cron_spec(), db_now=EPOCH + 4)
        (grant,) = await n.next_runs()
        (row,) = [r for r in store.rows if r.slot >= 0]
        store.lose()  # maintain marked it lost meanwhile
        ok = await n.mode.finish(grant, "succeeded", 0, None)
        after = await n.next_sync()
        await n.stop()
        return ok, after, (store.row(row.token).state,)

    ok, after, state = run_virtual(main())
    assert not ok
    assert after == ()
    assert state == ("lost",)


# --- (g) abandon: claimed, never handed over ---------------------------------------------------

def test_abandon_finishes_claimed_runs_that_were_never_handed_over_as_stopped() -> None:
    async def main() -> tuple[MemoryStore, tuple[int, ...], list[Call]]:
        store = MemoryStore()
        n = await node(store, cron_spec(max_run=2, max_per_node=2), db_now=EPOCH + 4)
        store.hang_at["cron_claim"] = 2  # the second slot's claim never comes back
        waiting = asyncio.create_task(n.mode.next_runs())
        async with asyncio.timeout(30):
            await store.hung.wait()
        waiting.cancel()  # the supervisor stops now, one run claimed, not yet started
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await n.mode.abandon()
        finishes = [c for c in store.calls if c.name == "cron_finish"]
        await n.mode.abandon()  # nothing left: nothing recorded twice
        assert [c for c in store.calls if c.name == "cron_finish"] == finishes
        after = await n.next_sync()
        await n.stop()
        return store, after, finishes

    store, after, finishes = run_virtual(main())
    (row,) = [r for r in store.rows if r.slot >= 0]
    assert (row.state, row.reason) == ("stopped", "supervisor stopped before the run started")
    assert len(finishes) == 1
    assert after == ()  # untracked


def test_abandon_with_nothing_claimed_records_nothing() -> None:
    async def main() -> MemoryStore:
        store = MemoryStore()
        n = await node(store, cron_spec(), db_now=EPOCH + 4)
        waiting = asyncio.create_task(n.mode.next_runs())
        await store.until(lambda: store.attempts("cron_recorded"))  # then asleep until +10
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await n.mode.abandon()
        await n.stop()
        return store

    store = run_virtual(main())
    assert store.attempts("cron_finish") == []
    assert store.claims == []
