"""One bad row never stops unrelated workers (SPEC.md guarantees 1, 3, 5, 9).

A row deleted or set back by hand, or one the database refuses to write (a constraint
an operator added, a value out of range), fails only the lease, cron run or
coordinated key it belongs to: the node's sync (one transaction for everything a node
holds) goes through for the rest, and fencing tokens and generation numbers go on
growing from what the history recorded, never granted twice.

The store tests pin time with `now=` relative to the database's own clock (`base`), so
that a row the store restores on its own clock sits where the test expects it. The
keeper tests run a real NodeSync on a real database, without children, and wait
for grants and revocations with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import delete, update

from supervisor.coordination import Grant
from supervisor.coordination.leader import LeaderMode
from supervisor.coordination.node_sync import NodeSync
from supervisor.model import DatabaseCall, Event, Mode
from supervisor.spec import CoordinationSpec
from supervisor.store import CronRun, Holder, Lease, SyncResult
from supervisor.store.schema import coord_slots, coord_state, leases
from supervisor.store.sql import SqlStore
from tests.databases import BACKENDS
from tests.integration.stores import make_holder

NOW = 1_800_000_000.0  # a pinned database time, where the database clock does not matter
TTL = 10.0
REFUSED = "refused by the test"
# Timings valid under config.py's rule (lease_ttl >= renew_deadline + renew_interval + 1.5),
# with a renew deadline a loaded 2-core host running the suite in parallel keeps to.
KEEPER = CoordinationSpec(lease_ttl=4.0, renew_interval=0.2, renew_deadline=2.0)
WAIT = 20.0  # the deadline of every wait on a keeper (a few lease TTLs, on a loaded host)
KEEPER_BACKENDS = pytest.mark.parametrize("database_backend", BACKENDS)


@pytest.fixture
def base(store: SqlStore) -> float:
    """The database's clock now: pinned times are set from it in tests where the store
    reads the clock itself (restoring a row)."""
    return store.db_now()


def sync(store: SqlStore, holder: Holder, now: float, *, held: list[Lease] | None = None,
         wanted: tuple[str, ...] = (), runs: tuple[CronRun, ...] = ()) -> SyncResult:
    return store.node_sync(holder, held=held or [], wanted=list(wanted), ttl=TTL, runs=runs,
                           now=now)


def delete_lease(store: SqlStore, name: str) -> None:
    """What an operator (or a restore from a backup) does behind the fleet's back."""
    with store.engine.begin() as conn:
        conn.execute(delete(leases).where(leases.c.name == name))


def set_term(store: SqlStore, name: str, term: int) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(leases).where(leases.c.name == name).values(term=term))


def recorded_terms(store: SqlStore, name: str) -> list[int]:
    return sorted(record.term for record in store.terms(lease=name) if record.lease == name)


def refuse(store: SqlStore, table: str, column: str, value: str, message: str = REFUSED) -> None:
    """Make the database refuse every insert and update of `table`'s rows whose `column`
    is `value`, as a CHECK constraint or an operator's trigger would."""
    literal = f"'{value}'"
    with store.engine.begin() as conn:
        if store.backend == "postgresql":
            conn.exec_driver_sql(
                "CREATE FUNCTION fs_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                f" RAISE EXCEPTION '{message}' USING ERRCODE = 'check_violation'; END $$")
            conn.exec_driver_sql(
                f"CREATE TRIGGER fs_test_refuse BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW"
                f" WHEN (NEW.{column} = {literal}) EXECUTE FUNCTION fs_test_refuse()")
            return
        for event in ("INSERT", "UPDATE"):
            name = f"fs_test_refuse_{event.lower()}"
            if store.backend == "sqlite":
                conn.exec_driver_sql(
                    f"CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW"
                    f" WHEN NEW.{column} = {literal} BEGIN SELECT RAISE(ABORT, '{message}'); END")
            else:
                conn.exec_driver_sql(
                    f"CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW BEGIN"
                    f" IF NEW.{column} = {literal} THEN SIGNAL SQLSTATE '23000'"
                    f" SET MESSAGE_TEXT = '{message}'; END IF; END")


def refused(result: SyncResult) -> dict[tuple[str, str], str]:
    return {(r.kind, r.key): r.reason for r in result.refused}


# --- fencing tokens when a lease row vanishes -----------------------------------------------


def test_a_node_restarted_after_one_lease_row_was_deleted_takes_every_lease_again(
        store, a, base):
    """The issue: the row came back with term 0, the next acquire made term 1, the history
    refused a second term 1, and the node's one sync transaction failed for every worker."""
    store.lease_ensure(["x", "y"])
    first = sync(store, a, base, wanted=("x", "y")).acquired
    assert {name: lease.term for name, lease in first.items()} == {"x": 1, "y": 1}
    delete_lease(store, "x")

    restarted = make_holder("node-a")  # the same node, a new process: its leases expired
    store.lease_ensure(["x", "y"])
    result = sync(store, restarted, base + 2 * TTL, wanted=("x", "y"))

    assert result.refused == ()
    assert {name: lease.term for name, lease in result.acquired.items()} == {"x": 2, "y": 2}
    assert recorded_terms(store, "x") == [1, 2]  # never granted twice: only grows
    assert [member.holder for member in store.members(now=base + 2 * TTL)] == [restarted]


def test_a_lease_row_deleted_under_its_holder_comes_back_held_until_a_ttl_has_passed(
        store, a, b, base):
    """Whoever restores the row must not overtake a holder that may still run: that
    holder's renewal fails (its row is gone) and it stops its child within its trust."""
    held = store.lease_acquire("x", a, TTL, now=base)
    assert held is not None and held.term == 1
    delete_lease(store, "x")

    assert store.lease_renew(held, TTL, now=base + 0.5) is None  # the holder learns it lost
    assert store.lease_acquire("x", b, TTL, now=base + 1) is None  # restored, still a's
    row = next(row for row in store.leases(now=base + 1) if row.name == "x")
    assert (row.holder, row.term) == (a, 1)

    later = store.lease_acquire("x", b, TTL, now=base + TTL + 5)  # restored long before
    assert later is not None and later.term == 2
    assert recorded_terms(store, "x") == [1, 2]


def test_a_released_lease_whose_row_was_deleted_is_free_at_once_with_the_next_term(
        store, a, b, base):
    held = store.lease_acquire("x", a, TTL, now=base)
    assert held is not None and store.lease_release(held, now=base + 1)
    delete_lease(store, "x")
    again = store.lease_acquire("x", b, TTL, now=base + 2)
    assert again is not None and again.term == 2


def test_a_term_set_back_by_hand_is_never_granted_twice(store, a, b):
    for holder, at in ((a, NOW), (b, NOW + 1)):
        lease = store.lease_acquire("x", holder, TTL, now=at)
        assert lease is not None and store.lease_release(lease, now=at + 0.5)
    set_term(store, "x", 0)
    lease = store.lease_acquire("x", a, TTL, now=NOW + 2)
    assert lease is not None and lease.term == 3
    assert recorded_terms(store, "x") == [1, 2, 3]


def test_pruning_keeps_each_lease_s_newest_term_to_restore_a_deleted_row_from(store, a, base):
    lease = store.lease_acquire("x", a, TTL, now=base)
    assert lease is not None and store.lease_release(lease, now=base + 1)
    second = store.lease_acquire("x", a, TTL, now=base + 2)
    assert second is not None and store.lease_release(second, now=base + 3)
    store.maintain(1.0, now=base + 100)  # both ended long before: only the older goes
    assert recorded_terms(store, "x") == [2]
    delete_lease(store, "x")
    again = store.lease_acquire("x", a, TTL, now=base + 101)
    assert again is not None and again.term == 3


# --- a row the database refuses fails only its own part of the sync ------------------------


@pytest.mark.parametrize("part", ["held", "wanted"])
def test_a_lease_the_database_refuses_fails_only_itself(store, a, part):
    store.lease_ensure(["bad", "good", "other"])
    held = list(sync(store, a, NOW, wanted=("bad", "good")).acquired.values())
    if part == "wanted":
        held = [lease for lease in held if lease.name == "good"]
        delete_lease(store, "bad")
        store.lease_ensure(["bad"])
    refuse(store, "fs_leases", "name", "bad")

    result = sync(store, a, NOW + 1, held=held, wanted=("other", "bad") if part == "wanted"
                  else ("other",))

    assert set(result.kept) == {"good"}
    assert set(result.acquired) == {"other"}
    assert result.lost == (("bad",) if part == "held" else ())
    assert list(refused(result)) == [("lease", "bad")]
    assert REFUSED in refused(result)[("lease", "bad")]
    assert [member.holder for member in store.members(now=NOW + 1)] == [a]  # heartbeat too


def test_a_term_out_of_range_fails_only_its_own_lease(store, a):
    store.lease_ensure(["bad", "good"])
    set_term(store, "bad", 2**63 - 1)  # the fencing token cannot grow any more
    result = sync(store, a, NOW, wanted=("bad", "good"))
    assert set(result.acquired) == {"good"}
    assert list(refused(result)) == [("lease", "bad")]
    row = next(row for row in store.leases(now=NOW) if row.name == "bad")
    assert (row.holder, row.term) == (None, 2**63 - 1)  # rolled back alone


def test_a_cron_run_the_database_refuses_fails_only_itself(store, a):
    runs = []
    for worker in ("bad-job", "good-job"):
        outcome = store.cron_claim(worker, NOW, holder=a, max_run=1, ttl=TTL, grace=60.0,
                                   now=NOW)
        assert outcome.run is not None
        runs.append(outcome.run)
    store.lease_ensure(["leader"])
    refuse(store, "fs_cron_runs", "worker", "bad-job")

    result = sync(store, a, NOW + 1, wanted=("leader",), runs=tuple(runs))

    bad, good = runs
    assert set(result.runs_kept) == {good.token}
    assert result.runs_lost == (bad.token,)
    assert list(refused(result)) == [("run", str(bad.token))]
    assert set(result.acquired) == {"leader"}


@pytest.mark.parametrize("row", ["membership", "slot"])
def test_a_coordinated_key_the_database_refuses_fails_only_itself(store, a, row):
    slots = []
    for key in ("bad", "good"):
        assert store.coord_publish(key, expected=0, members=[a], count=1, now=NOW) == 1
        slot = store.coord_acquire_slot(key, 0, 1, a, TTL, now=NOW)
        assert slot is not None
        slots.append(slot)
    store.lease_ensure(["leader"])
    refuse(store, "fs_coord_members" if row == "membership" else "fs_coord_slots",
           "worker_key", "bad")

    result = store.node_sync(a, held=[], wanted=["leader"], ttl=TTL,
                             coord_members=["bad", "good"], coord_slots=slots, now=NOW + 1)

    assert set(result.coord) == {"good"} and result.coord["good"].index == 0
    assert set(result.slots_kept) == {("good", 0)}
    assert result.slots_lost == (("bad", 0),)
    assert list(refused(result)) == [("coord", "bad")]
    assert set(result.acquired) == {"leader"}


@pytest.mark.parametrize("database_backend", ["postgresql"])
def test_a_refusal_s_reason_never_shows_the_password(database_url, a):
    secret = "s3cr3t-pw"  # trust authentication takes any password
    url = database_url.replace("postgres@", f"postgres:{secret}@")
    store = SqlStore(url)
    try:
        store.upgrade()
        store.lease_ensure(["bad"])
        refuse(store, "fs_leases", "name", "bad", message=f"{REFUSED} {secret}")
        result = sync(store, a, NOW, wanted=("bad",))
    finally:
        store.close()
    reason = refused(result)[("lease", "bad")]
    assert REFUSED in reason
    assert secret not in reason and "***" in reason


# --- coordinated rows deleted by hand ----------------------------------------------------


def test_a_deleted_coordinated_state_row_goes_on_from_its_last_generation(store, a, b):
    assert store.coord_publish("w", expected=0, members=[a, b], count=2, now=NOW) == 1
    assert store.coord_publish("w", expected=1, members=[a], count=1, now=NOW + 1) == 2
    with store.engine.begin() as conn:
        conn.execute(delete(coord_state).where(coord_state.c.worker_key == "w"))

    # The publisher sees no generation and publishes the "first": the key is restored
    # at generation 2 instead, so that compare-and-set loses and it reads again.
    assert store.coord_publish("w", expected=0, members=[a, b], count=2, now=NOW + 2) is None
    status = store.coord_view("w", now=NOW + 2)
    assert (status.generation, status.count) == (2, 1)
    assert store.coord_publish("w", expected=2, members=[a, b], count=2, now=NOW + 3) == 3
    assert [g.generation for g in store.coord_generations(worker_key="w")] == [3, 2, 1]


def test_a_deleted_slot_row_is_taken_again_by_its_assigned_member(store, a):
    assert store.coord_publish("w", expected=0, members=[a], count=1, now=NOW) == 1
    slot = store.coord_acquire_slot("w", 0, 1, a, TTL, now=NOW)
    assert slot is not None
    with store.engine.begin() as conn:
        conn.execute(delete(coord_slots).where(coord_slots.c.worker_key == "w"))
    result = store.node_sync(a, held=[], wanted=[], ttl=TTL, coord_members=["w"],
                             coord_slots=[slot], now=NOW + 1)
    assert result.slots_lost == (("w", 0),)  # its child stops
    again = store.coord_acquire_slot("w", 0, 1, a, TTL, now=NOW + 2)
    assert again is not None and again.generation == 1


# --- the keeper: a real node loop on a real database -------------------------------------


class Node:
    """A NodeSync with leader workers (no children), the events it published."""

    def __init__(self, store: SqlStore, holder: Holder) -> None:
        self.events: list[Event] = []
        self._news = asyncio.Event()
        self.keeper = NodeSync(store, holder, KEEPER, self._heard)
        self.grants: dict[str, Grant] = {}
        self._waits: dict[str, asyncio.Task[Grant]] = {}

    def want(self, lease: str) -> None:
        mode = LeaderMode(self.keeper, Mode.GLOBAL_LEADER, lease, f"{lease}-worker", "g")
        self._waits[lease] = asyncio.create_task(mode.acquire())

    async def granted(self, lease: str) -> Grant:
        try:
            async with asyncio.timeout(WAIT):
                grant = self.grants[lease] = await self._waits[lease]
        except TimeoutError:
            raise AssertionError(f"lease {lease} not granted within {WAIT}s") from None
        return grant

    def syncs(self) -> int:
        return sum(1 for e in self.events if isinstance(e, DatabaseCall)
                   and e.operation == "node_sync" and e.ok)

    def _heard(self, event: Event) -> None:
        self.events.append(event)
        self._news.set()

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait for a condition the keeper makes true, checked after each of its events."""
        try:
            async with asyncio.timeout(WAIT):
                while not predicate():
                    self._news.clear()
                    await self._news.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {WAIT}s waiting for {what}") from None


@contextlib.asynccontextmanager
async def running(database_url: str, holder: Holder) -> AsyncIterator[Node]:
    """A node on a store of its own (one connection, which the keeper's lane owns); the
    test plays the operator and the other nodes on the `store` fixture's."""
    node = Node(SqlStore(database_url, timeout=KEEPER.renew_deadline), holder)
    task = asyncio.create_task(node.keeper.run())
    try:
        yield node
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await node.keeper.close()


def token(grant: Grant) -> int:
    return int(grant.env["SUPERVISOR_FENCING_TOKEN"])


@KEEPER_BACKENDS
def test_a_node_keeps_its_other_leader_and_retakes_a_lease_whose_row_was_deleted(
        database_url, store, a):
    async def main() -> None:
        async with running(database_url, a) as node:
            node.want("x")
            node.want("y")
            x, y = await node.granted("x"), await node.granted("y")
            delete_lease(store, "x")
            async with asyncio.timeout(WAIT):
                await x.revoked.wait()
            node.want("x")  # its worker asks again, as a leader worker does after a stop
            again = await node.granted("x")
            assert token(again) > token(x)
            assert not y.revoked.is_set()

    asyncio.run(main())
    assert recorded_terms(store, "x") == [1, 2]


@KEEPER_BACKENDS
def test_a_node_restarted_after_a_lease_row_was_deleted_is_elected_for_every_lease(
        database_url, store, a):
    store.lease_ensure(["x", "y"])
    before = store.node_sync(a, held=[], wanted=["x", "y"], ttl=KEEPER.lease_ttl).acquired
    assert set(before) == {"x", "y"}
    delete_lease(store, "x")  # then the node dies: its leases expire on their own

    async def main() -> None:
        async with running(database_url, make_holder("node-a")) as node:
            node.want("x")
            node.want("y")
            assert token(await node.granted("y")) == 2
            assert token(await node.granted("x")) == 2

    asyncio.run(main())


@KEEPER_BACKENDS
def test_a_follower_re_creates_a_lease_row_deleted_under_a_dead_holder(database_url, store, a, b):
    taken = store.lease_acquire("x", b, KEEPER.lease_ttl)
    assert taken is not None and taken.term == 1

    async def main() -> None:
        async with running(database_url, a) as node:
            node.want("x")
            await node.until(lambda: node.syncs() >= 3, "the follower syncing")
            delete_lease(store, "x")  # and b is gone: nobody else would create it again
            assert token(await node.granted("x")) == 2

    asyncio.run(main())


@KEEPER_BACKENDS
def test_a_refused_lease_is_told_once_and_the_node_s_other_leader_is_elected(
        database_url, store, a, caplog):
    store.lease_ensure(["bad", "good"])
    refuse(store, "fs_leases", "name", "bad")

    async def main() -> None:
        async with running(database_url, a) as node:
            node.want("bad")
            node.want("good")
            assert token(await node.granted("good")) == 1
            start = node.syncs()
            # Long enough for the refused lease to be tried again twice (every lease_ttl).
            per_ttl = KEEPER.lease_ttl / KEEPER.renew_interval
            await node.until(lambda: node.syncs() >= start + 2.5 * per_ttl, "retries")
            assert not node.grants["good"].revoked.is_set()

    with caplog.at_level(logging.ERROR, logger="supervisor"):
        asyncio.run(main())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "bad-worker" in errors[0] and "lease bad" in errors[0] and REFUSED in errors[0]
    assert "good" not in errors[0]
