"""The LeaseKeeper's trust rules, against a scripted store (no database, no children)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from supervisor.coordination.leader import LeaderMode, LeaseKeeper
from supervisor.errors import StoreUnavailable
from supervisor.model import Event, LeadershipGained, LeadershipLost, Mode
from supervisor.spec import CoordinationSpec
from supervisor.store import Holder, Lease, SyncResult

TIMING = CoordinationSpec(lease_ttl=2.0, renew_interval=0.05, renew_deadline=0.3)
ME = Holder("n1", "g", 1, "nonce-1")


class ScriptedStore:
    """Grants every wanted lease; then behaves as the test says: fine, hanging, or 'lost'."""

    def __init__(self) -> None:
        self.term = 0
        self.behaviour = "fine"
        self.released: list[tuple[str, int, str]] = []
        self.interrupted = threading.Event()
        self.unblock = threading.Event()
        self.calls = 0

    def upgrade(self) -> None: ...

    def lease_ensure(self, names: Sequence[str]) -> None: ...

    def node_sync(self, holder: Holder, *, held: Sequence[Lease], wanted: Sequence[str],
                  ttl: float, now: float | None = None) -> SyncResult:
        self.calls += 1
        if self.behaviour == "hang":
            self.unblock.wait(10)
            raise StoreUnavailable("cut")
        if self.behaviour == "down":
            raise StoreUnavailable("down")
        if self.behaviour == "lost":
            return SyncResult(db_now=0.0, lost=tuple(lease.name for lease in held))
        acquired = {}
        for name in wanted:
            self.term += 1
            acquired[name] = Lease(name, holder, self.term, 1e9)
        return SyncResult(db_now=0.0, kept={lease.name: lease for lease in held},
                          acquired=acquired)

    def interrupt(self) -> None:
        self.interrupted.set()
        self.unblock.set()

    def lease_release(self, lease: Lease, *, reason: str = "released",
                      now: float | None = None) -> bool:
        self.released.append((lease.name, lease.term, reason))
        return True

    def maintain(self, keep: float, *, now: float | None = None, batch: int = 500) -> int:
        return 0

    def node_leave(self, holder: Holder) -> None: ...

    def close(self) -> None: ...


async def started(store: ScriptedStore, events: list[Event]) -> tuple[LeaseKeeper, asyncio.Task]:
    keeper = LeaseKeeper(store, ME, TIMING, events.append)  # type: ignore[arg-type]
    return keeper, asyncio.create_task(keeper.run())


async def stopped(keeper: LeaseKeeper, task: asyncio.Task) -> None:
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
        keeper = LeaseKeeper(store, ME, TIMING, lambda e: None)  # type: ignore[arg-type]
        keeper.state.failures = 5
        follower = keeper._interval()
        keeper.state.failures = 0
        healthy = keeper._interval()
        return follower, healthy

    follower, healthy = asyncio.run(main())
    assert follower > 4 * healthy
    assert follower <= TIMING.lease_ttl / 2 * 1.1
