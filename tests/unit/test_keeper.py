"""The NodeSync's trust rules, against the in-memory store behind scripted faults (no
database, no children)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from supervisor.clock import boottime
from supervisor.coordination import Grant
from supervisor.coordination.leader import LeaderMode
from supervisor.coordination.node_sync import NodeSync
from supervisor.errors import StoreUnavailable
from supervisor.model import Event, LeadershipGained, LeadershipLost, Mode
from supervisor.spec import CoordinationSpec
from supervisor.store import CronRun, Holder, Lease, SyncResult
from supervisor.store.memory import MemoryStore

TIMING = CoordinationSpec(lease_ttl=2.0, renew_interval=0.05, renew_deadline=0.3)
ME = Holder("n1", "g", 1, "nonce-1")
OTHER = Holder("n2", "g", 2, "nonce-2")


class ScriptedStore:
    """A `MemoryStore` (the store's own contracts: terms, renewals, expiry) behind the
    faults a test scripts: `behaviour` "fine", "hang" (the call blocks until
    interrupted), "down" (unreachable) or "lost" (another node has taken every lease
    this node holds, as after an expiry). Cron runs scripted into `lose_runs` are
    answered lost, into `drop_runs` neither kept nor lost, into `stop_runs` kept and
    asked to stop. The database clock reads `time.monotonic() + clock_skew` halfway
    through a round trip of `2 * delay` seconds.
    """

    def __init__(self) -> None:
        self.memory = MemoryStore(clock=self.db_clock)
        self.behaviour = "fine"
        self.released: list[tuple[str, int, str]] = []
        self.interrupted = threading.Event()
        self.unblock = threading.Event()
        self.clock_skew = 0.0
        self.delay = 0.0
        self.lose_runs: set[int] = set()
        self.drop_runs: set[int] = set()
        self.stop_runs: set[int] = set()
        self.synced_runs: list[tuple[CronRun, ...]] = []  # what each sync was asked to renew
        self.answered_runs: list[dict[int, CronRun]] = []  # what each sync renewed
        self._synced = threading.Condition()

    def db_clock(self) -> float:
        return time.monotonic() + self.clock_skew

    def upgrade(self) -> None:
        self.memory.upgrade()

    def schema_state(self) -> None:
        self.memory.schema_state()

    def lease_ensure(self, names: Sequence[str], *, now: float | None = None) -> None:
        self.memory.lease_ensure(names, now=now)

    def node_sync(self, holder: Holder, *, held: Sequence[Lease], wanted: Sequence[str],
                  ttl: float, runs: Sequence[CronRun] = (), now: float | None = None,
                  **coordinated: Any) -> SyncResult:
        if self.behaviour == "hang":
            self.unblock.wait(10)
            raise StoreUnavailable("cut")
        if self.behaviour == "down":
            raise StoreUnavailable("down")
        if self.behaviour == "lost":
            self._taken_by_another(held, ttl)
        threading.Event().wait(self.delay)  # the request on its way
        result = self.memory.node_sync(holder, held=held, wanted=wanted, ttl=ttl, runs=runs,
                                       now=self.db_clock(), **coordinated)
        threading.Event().wait(self.delay)  # the answer on its way
        result = self._scripted(result, runs)
        with self._synced:
            self.synced_runs.append(tuple(runs))
            self.answered_runs.append(dict(result.runs_kept))
            self._synced.notify_all()
        return result

    def _taken_by_another(self, held: Sequence[Lease], ttl: float) -> None:
        expired = self.db_clock() + ttl + 1.0  # past any renewal this node made by now
        for lease in held:
            self.memory.lease_acquire(lease.name, OTHER, ttl, now=expired)

    def _scripted(self, result: SyncResult, runs: Sequence[CronRun]) -> SyncResult:
        gone = self.lose_runs | self.drop_runs
        kept = {token: run for token, run in result.runs_kept.items() if token not in gone}
        lost = set(result.runs_lost) | {run.token for run in runs if run.token in self.lose_runs}
        stop = set(result.runs_stop) | {token for token in kept if token in self.stop_runs}
        return replace(result, runs_kept=kept, runs_lost=tuple(sorted(lost)),
                       runs_stop=tuple(sorted(stop)))

    def wait_syncs(self, count: int, timeout: float = 5.0
                   ) -> tuple[list[tuple[CronRun, ...]], list[dict[int, CronRun]]]:
        """Block until `count` more syncs have answered; what those syncs were asked, and
        what they answered renewed."""
        with self._synced:
            start = len(self.synced_runs)
            if not self._synced.wait_for(lambda: len(self.synced_runs) >= start + count,
                                         timeout):
                raise TimeoutError(f"fewer than {count} syncs within {timeout}s")
            return (self.synced_runs[start:start + count],
                    self.answered_runs[start:start + count])

    def interrupt(self) -> None:
        self.interrupted.set()
        self.unblock.set()

    def lease_release(self, lease: Lease, *, reason: str = "released",
                      now: float | None = None) -> bool:
        self.released.append((lease.name, lease.term, reason))
        return self.memory.lease_release(lease, reason=reason, now=now)

    def maintain(self, keep: float, *, now: float | None = None, batch: int = 500) -> int:
        return self.memory.maintain(keep, now=now, batch=batch)

    def node_leave(self, holder: Holder) -> None:
        self.memory.node_leave(holder)

    def close(self) -> None:
        self.memory.close()

    def claimed(self, later: float = 0.0, ttl: float = TIMING.lease_ttl) -> CronRun:
        """A run of the cron worker "report" this node has just claimed (`later`: so many
        seconds after the first tick's)."""
        now = self.db_clock()
        outcome = self.memory.cron_claim("report", math.floor(now) - 1.0 + later, holder=ME,
                                         max_run=2, ttl=ttl, grace=60.0, now=now)
        assert outcome.run is not None, outcome
        return outcome.run


async def started(store: ScriptedStore, events: list[Event]) -> tuple[NodeSync, asyncio.Task]:
    keeper = NodeSync(store, ME, TIMING, events.append)  # type: ignore[arg-type]
    return keeper, asyncio.create_task(keeper.run())


async def stopped(keeper: NodeSync, task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await keeper.close()


def test_a_grant_carries_the_term_as_fencing_token():
    events: list[Event] = []

    async def main() -> None:
        store = ScriptedStore()
        keeper, task = await started(store, events)
        mode = LeaderMode(keeper, Mode.GLOBAL_LEADER, "leader/w", "w", "g")
        async with asyncio.timeout(5):
            grant = await mode.acquire()
        assert grant.env == {"SUPERVISOR_FENCING_TOKEN": "1"}
        assert not grant.revoked.is_set()
        await mode.release(grant, "supervisor stopped")
        assert store.released == [("leader/w", 1, "supervisor stopped")]
        await stopped(keeper, task)

    asyncio.run(main())
    assert [type(e) for e in events if isinstance(e, LeadershipGained | LeadershipLost)] == [
        LeadershipGained, LeadershipLost]


def test_trust_runs_out_renew_deadline_after_the_last_renewal_was_sent():
    async def main() -> tuple[float, float]:
        store = ScriptedStore()
        keeper, task = await started(store, [])
        loop = asyncio.get_running_loop()
        grant = await LeaderMode(keeper, Mode.GLOBAL_LEADER, "leader/w", "w", "g").acquire()
        store.behaviour = "hang"  # the database swallows everything from now on
        hung_at = loop.time()
        async with asyncio.timeout(5):
            await grant.revoked.wait()
        elapsed = loop.time() - hung_at
        await stopped(keeper, task)
        return elapsed, grant.stop_grace or 0.0

    elapsed, grace = asyncio.run(main())
    # The last good renewal was sent less than one interval before the hang began, so
    # trust ends at most renew_deadline after it; far inside lease_ttl either way.
    assert elapsed <= TIMING.renew_deadline + 0.15  # + event-loop latency on a busy machine
    assert elapsed >= TIMING.renew_deadline - 2 * TIMING.renew_interval  # and not early
    assert 0 < grace <= TIMING.leader_stop_grace


def test_a_hanging_call_is_interrupted_within_the_trust_left():
    async def main() -> bool:
        store = ScriptedStore()
        keeper, task = await started(store, [])
        await LeaderMode(keeper, Mode.GLOBAL_LEADER, "leader/w", "w", "g").acquire()
        store.behaviour = "hang"
        interrupted = await asyncio.to_thread(store.interrupted.wait, 5)
        await stopped(keeper, task)
        return interrupted

    assert asyncio.run(main())


def test_a_lease_the_database_calls_lost_is_revoked_with_no_grace():
    async def main() -> float | None:
        store = ScriptedStore()
        keeper, task = await started(store, [])
        grant = await LeaderMode(keeper, Mode.GLOBAL_LEADER, "leader/w", "w", "g").acquire()
        store.behaviour = "lost"
        async with asyncio.timeout(5):
            await grant.revoked.wait()
        await stopped(keeper, task)
        return grant.stop_grace

    assert asyncio.run(main()) == 0.0


def test_a_node_thawed_after_its_trust_ran_out_kills_at_once():
    async def main() -> float | None:
        store = ScriptedStore()
        keeper, task = await started(store, [])
        grant = await LeaderMode(keeper, Mode.GLOBAL_LEADER, "leader/w", "w", "g").acquire()
        store.behaviour = "hang"
        # Freeze the whole event loop past trust + grace, as SIGSTOP or a paused VM would.
        frozen = TIMING.renew_deadline + TIMING.leader_stop_grace + 0.2
        loop = asyncio.get_running_loop()
        loop.call_soon(threading.Event().wait, frozen)
        async with asyncio.timeout(frozen + 5):
            await grant.revoked.wait()
        await stopped(keeper, task)
        return grant.stop_grace

    assert asyncio.run(main()) == 0.0


def test_followers_back_off_while_the_database_is_down_and_holders_do_not():
    async def main() -> tuple[float, float]:
        store = ScriptedStore()
        store.behaviour = "down"
        keeper = NodeSync(store, ME, TIMING, lambda e: None)  # type: ignore[arg-type]
        keeper.state.failures = 5
        follower = keeper._interval()
        keeper.state.failures = 0
        healthy = keeper._interval()
        return follower, healthy

    follower, healthy = asyncio.run(main())
    assert follower > 4 * healthy
    assert follower <= TIMING.lease_ttl / 2 * 1.1


# --- cron runs: renewed in the node's one sync, trusted like a lease ----------------------

async def tracked(store: ScriptedStore) -> tuple[NodeSync, asyncio.Task, Grant, CronRun]:
    keeper, task = await started(store, [])
    async with asyncio.timeout(5):
        await keeper.clock_ready()
    grant = Grant(stop_grace=TIMING.leader_stop_grace)
    run = store.claimed()
    keeper.keep_run(run, grant, keeper.stamp())
    return keeper, task, grant, run


async def tightened(grant: Grant) -> None:
    """Until a revoked grant's stop grace has been cut to nothing."""
    while True:
        grant.changed.clear()
        if grant.stop_grace == 0.0:
            return
        await grant.changed.wait()


async def syncs(store: ScriptedStore, count: int) -> list[tuple[CronRun, ...]]:
    return (await asyncio.to_thread(store.wait_syncs, count))[0]


def test_a_tracked_run_is_renewed_in_every_sync_and_trusted_on():
    async def main() -> tuple[list[tuple[CronRun, ...]], list[dict[int, CronRun]], bool,
                              CronRun]:
        store = ScriptedStore()
        keeper, task, grant, run = await tracked(store)
        # Far longer than renew_deadline after the claim: trusted only if renewals count.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.5 * TIMING.renew_deadline):
                await grant.revoked.wait()
        seen, answered = await asyncio.to_thread(store.wait_syncs, 3)
        await stopped(keeper, task)
        return seen, answered, grant.revoked.is_set(), run

    seen, answered, revoked, run = asyncio.run(main())
    assert not revoked
    assert all([r.token for r in runs] == [run.token] for runs in seen)
    # each sync passes on what the previous one renewed, and each renewal moves it on
    expiries = [runs[0].expires_at for runs in seen]
    renewed = [kept[run.token].expires_at for kept in answered]
    assert expiries[1:] == renewed[:-1]
    assert all(after > before for before, after in zip(expiries, renewed, strict=True))
    assert expiries[0] > run.expires_at  # renewed since the claim


def test_a_run_the_database_neither_renews_nor_loses_is_trusted_for_renew_deadline():
    async def main() -> tuple[float, Grant]:
        store = ScriptedStore()
        loop = asyncio.get_running_loop()
        store.drop_runs = {1}  # the first claim's token: the run tracked next
        keeper, task, grant, run = await tracked(store)
        assert run.token == 1
        tracked_at = loop.time()
        async with asyncio.timeout(5):
            await grant.revoked.wait()
        elapsed = loop.time() - tracked_at
        await stopped(keeper, task)
        return elapsed, grant

    elapsed, grant = asyncio.run(main())
    assert TIMING.renew_deadline - 0.01 <= elapsed <= TIMING.renew_deadline + 0.15
    assert grant.stop_grace is not None
    assert 0 < grant.stop_grace <= TIMING.leader_stop_grace
    assert "renew_deadline" in grant.reason


def test_a_run_the_database_calls_lost_is_revoked_with_no_grace_and_no_longer_renewed():
    async def main() -> tuple[Grant, list[tuple[CronRun, ...]]]:
        store = ScriptedStore()
        keeper, task, grant, run = await tracked(store)
        await syncs(store, 1)
        store.lose_runs = {run.token}
        async with asyncio.timeout(5):
            await grant.revoked.wait()
        after = await syncs(store, 2)
        await stopped(keeper, task)
        return grant, after

    grant, after = asyncio.run(main())
    assert grant.stop_grace == 0.0
    assert grant.reason == "the database no longer shows this run as running"
    assert after == [(), ()]  # dropped: the lost run is not renewed again


def test_a_run_replaced_by_a_later_tick_stops_as_a_leader_does_and_is_still_renewed():
    async def main() -> tuple[Grant, list[tuple[CronRun, ...]], list[tuple[CronRun, ...]],
                              tuple[int, int]]:
        store = ScriptedStore()
        keeper, task, grant, run = await tracked(store)
        other = Grant()
        later = store.claimed(later=1.0)
        keeper.keep_run(later, other, keeper.stamp())
        store.stop_runs = {run.token}
        async with asyncio.timeout(5):
            await grant.revoked.wait()
        while_stopping = await syncs(store, 3)
        keeper.drop_run(run.token)  # the child stopped and cron_finish recorded it
        after = (await syncs(store, 3))[1:]  # the first may have been sent before
        assert not other.revoked.is_set()
        await stopped(keeper, task)
        return grant, while_stopping, after, (run.token, later.token)

    grant, while_stopping, after, (first, second) = asyncio.run(main())
    assert grant.reason == "replaced by a later tick"
    # renewed on: nothing shortens its grace
    assert grant.stop_grace == pytest.approx(TIMING.leader_stop_grace)
    assert all(sorted(r.token for r in runs) == [first, second] for runs in while_stopping)
    assert all([r.token for r in runs] == [second] for runs in after)


def test_a_replaced_run_the_database_then_calls_lost_hurries_to_no_grace():
    async def main() -> Grant:
        store = ScriptedStore()
        keeper, task, grant, run = await tracked(store)
        store.stop_runs = {run.token}
        async with asyncio.timeout(5):
            await grant.revoked.wait()
        store.lose_runs = {run.token}
        async with asyncio.timeout(5):
            await tightened(grant)
        await stopped(keeper, task)
        return grant

    grant = asyncio.run(main())
    assert grant.stop_grace == 0.0
    assert grant.reason == "replaced by a later tick"  # the first reason stands


@pytest.mark.parametrize("behaviour", ["hang", "down"])
def test_a_run_whose_renewals_fail_is_revoked_when_its_trust_runs_out(behaviour: str):
    async def main() -> tuple[float, Grant]:
        store = ScriptedStore()
        loop = asyncio.get_running_loop()
        keeper, task, grant, _ = await tracked(store)
        await syncs(store, 1)
        store.behaviour = behaviour
        failing_since = loop.time()
        async with asyncio.timeout(5):
            await grant.revoked.wait()
        elapsed = loop.time() - failing_since
        store.unblock.set()
        await stopped(keeper, task)
        return elapsed, grant

    elapsed, grant = asyncio.run(main())
    # the last renewal that counted was sent at most an interval (+ jitter) before
    assert TIMING.renew_deadline - 2 * TIMING.renew_interval <= elapsed
    assert elapsed <= TIMING.renew_deadline + 0.15
    assert grant.stop_grace is not None
    assert 0 < grant.stop_grace <= TIMING.leader_stop_grace
    assert "renew_deadline" in grant.reason


def test_a_replaced_run_thawed_after_its_deadline_is_past_due_at_once():
    timing = CoordinationSpec(lease_ttl=1.5, renew_interval=0.05, renew_deadline=0.3)

    async def main() -> tuple[float, float, float]:
        store = ScriptedStore()
        keeper = NodeSync(store, ME, timing, lambda e: None)  # type: ignore[arg-type]
        task = asyncio.create_task(keeper.run())
        async with asyncio.timeout(5):
            await keeper.clock_ready()
        loop = asyncio.get_running_loop()
        grant = Grant(stop_grace=timing.leader_stop_grace)
        run = store.claimed(ttl=timing.lease_ttl)
        keeper.keep_run(run, grant, keeper.stamp())
        store.stop_runs = {run.token}
        async with asyncio.timeout(5):
            await grant.revoked.wait()
        revoked_at = boottime()
        store.behaviour = "hang"
        # Freeze the loop past trust + grace (SIGSTOP, a paused VM): deadlines are
        # instants, so the stop that began with a grace is due at once on thaw.
        frozen = loop.create_future()
        loop.call_soon(lambda: (threading.Event().wait(
            timing.renew_deadline + timing.leader_stop_grace + 0.15), frozen.set_result(None)))
        await frozen
        thawed_at = boottime()
        store.unblock.set()
        await stopped(keeper, task)
        return grant.deadline() - revoked_at, grant.deadline(), thawed_at

    grace, deadline, thawed_at = asyncio.run(main())
    assert grace <= timing.leader_stop_grace + 0.01  # never later than the replace grace
    assert deadline < thawed_at


# --- the database clock ---------------------------------------------------------------------

@pytest.mark.parametrize("skew", [1_900_000_000.0 + 40.37, 1_900_000_000.0 - 39.71])
def test_db_time_is_the_database_clock_measured_around_the_call(skew: float):
    async def main() -> tuple[float, float, float]:
        store = ScriptedStore()
        store.clock_skew = skew
        store.delay = 0.08  # a slow round trip: only its midpoint gives the right offset
        keeper = NodeSync(store, ME, TIMING, lambda e: None)  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="not measured yet"):
            keeper.db_time()
        task = asyncio.create_task(keeper.run())
        async with asyncio.timeout(5):
            await keeper.clock_ready()
        loop = asyncio.get_running_loop()
        first = keeper.db_time() - (loop.time() + skew)
        await syncs(store, 2)  # time passes; the estimate moves with it
        later = keeper.db_time() - (loop.time() + skew)
        before = loop.time()
        there_and_back = keeper.loop_time_of(keeper.db_time())
        after = loop.time()
        await stopped(keeper, task)
        return first, later, there_and_back - before, after - there_and_back

    first, later, since_before, until_after = asyncio.run(main())
    # sent_at alone or received alone would be a whole delay (0.08 s) off
    assert abs(first) < 0.03
    assert abs(later) < 0.03
    assert since_before >= -1e-6 and until_after >= -1e-6  # db_time's inverse, to rounding
