"""The store conformance suite: every contract of supervisor/store/__init__.py, on every backend.

Each test gets its own empty database (tests/databases.py) and talks to SqlStore through the
protocol only. Time is pinned with `now=` wherever expiry matters, so nothing sleeps; races
run as competing processes (tests/integration/store_race.py) started together behind a
barrier, and must yield exactly one winner. Every test that needs no real database (it asks
only for `store`) runs on MemoryStore too, as backend "memory" (conftest.py).
"""

from __future__ import annotations

import multiprocessing
import queue
import secrets
import socket
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from supervisor.errors import StoreError, StoreUnavailable
from supervisor.store import Holder, Lease, LeaseState
from supervisor.store.sql import SqlStore
from tests.databases import require_backend
from tests.integration import store_race
from tests.integration.stores import approx, make_holder

pytestmark = pytest.mark.conformance  # tests using only `store` run on MemoryStore too

NOW = 1_800_000_000.0  # a pinned database time, epoch seconds
TTL = 10.0
# Contenders are forked from a fork server that has imported the race modules (and with
# them SQLAlchemy and the drivers) once: each starts in milliseconds instead of paying
# the imports again, yet none inherits the test process's threads or connections.
SPAWN = multiprocessing.get_context("forkserver")
SPAWN.set_forkserver_preload(["tests.integration.store_race", "tests.integration.cron_race",
                              "tests.integration.coord_race"])


def must_acquire(store: SqlStore, name: str, holder: Holder, now: float,
                 ttl: float = TTL) -> Lease:
    lease = store.lease_acquire(name, holder, ttl, now=now)
    assert lease is not None, f"{holder.node_id} could not acquire free lease {name!r} at {now}"
    return lease


def state(store: SqlStore, name: str, now: float | None = None) -> LeaseState:
    rows = [row for row in store.leases(now=now) if row.name == name]
    assert len(rows) == 1, f"expected one row for {name!r}, got {rows}"
    return rows[0]


# --- schema --------------------------------------------------------------------------------


def test_upgrade_creates_the_schema_and_a_second_upgrade_changes_nothing(database_url, a):
    store = SqlStore(database_url)
    try:
        with pytest.raises(StoreError):  # no schema yet: a store error, not a driver one
            store.lease_acquire("x", a, TTL, now=NOW)
        store.upgrade()
        first = must_acquire(store, "x", a, NOW)
        store.upgrade()
    finally:
        store.close()
    again = SqlStore(database_url)  # a second process upgrading a database already current
    try:
        again.upgrade()
        assert state(again, "x", NOW + 1).holder == a
        assert state(again, "x", NOW + 1).term == first.term == 1
    finally:
        again.close()


def test_a_missing_schema_is_a_store_error_but_not_unavailable(database_url, a):
    store = SqlStore(database_url)
    try:
        with pytest.raises(StoreError) as caught:
            store.lease_acquire("x", a, TTL, now=NOW)
    finally:
        store.close()
    # the database answered: a missing table is not "unreachable", there is nothing to wait out
    assert not isinstance(caught.value, StoreUnavailable), repr(caught.value)


def run_contenders(target: Callable[..., None], args: list[tuple[object, ...]],
                   expected: int, within: float = 90.0) -> list[tuple[object, ...]]:
    """Start one process per args tuple behind a shared barrier; collect `expected`
    results from them, failing at the first error a contender reports."""
    start = SPAWN.Barrier(len(args))
    results = SPAWN.Queue()
    processes = [SPAWN.Process(target=target, args=(*arg, start, results), daemon=True)
                 for arg in args]
    for process in processes:
        process.start()
    collected: list[tuple[object, ...]] = []
    try:
        deadline = time.monotonic() + within
        while len(collected) < expected:
            try:
                message = results.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"only {len(collected)} of {expected} results within {within}s: {collected}"
                ) from None
            if message[0] == "error":
                raise AssertionError(f"contender {message[1]} failed:\n{message[2]}")
            collected.append(message)
    finally:
        for process in processes:
            process.join(timeout=30)
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
        results.close()
        results.join_thread()
    assert [process.exitcode for process in processes] == [0] * len(processes)
    return collected


@pytest.mark.timeout(180)
def test_many_processes_upgrading_a_fresh_database_at_once_all_succeed(database_url, a):
    contenders = 6
    outcomes = run_contenders(store_race.upgrade, [(database_url, i) for i in range(contenders)],
                              expected=contenders)
    assert sorted(outcome[1] for outcome in outcomes) == list(range(contenders))
    store = SqlStore(database_url)
    try:
        store.upgrade()
        assert must_acquire(store, "after-race", a, NOW).term == 1
    finally:
        store.close()


def test_a_mariadb_url_scheme_works_like_mysql(mariadb_url, a):
    store = SqlStore(mariadb_url.replace("mysql+pymysql://", "mariadb+pymysql://", 1))
    try:
        store.upgrade()
        assert must_acquire(store, "x", a, NOW).term == 1
    finally:
        store.close()


# --- acquire, renew, release ---------------------------------------------------------------


def test_acquiring_a_free_lease_gives_term_1_and_expiry_now_plus_ttl(store, a):
    lease = must_acquire(store, "leader", a, NOW)
    assert lease.name == "leader"
    assert lease.holder == a
    assert lease.term == 1
    assert lease.expires_at == approx(NOW + TTL)


def test_nobody_else_acquires_a_held_lease(store, a, b):
    must_acquire(store, "leader", a, NOW)
    assert store.lease_acquire("leader", b, TTL, now=NOW) is None
    assert store.lease_acquire("leader", b, TTL, now=NOW + TTL - 0.5) is None
    row = state(store, "leader", NOW + 1)
    assert (row.holder, row.term) == (a, 1)


def test_a_restarted_process_with_the_same_node_and_pid_is_another_holder(store, a):
    lease = must_acquire(store, "leader", a, NOW)
    reborn = Holder(node_id=a.node_id, group=a.group, pid=a.pid, nonce=secrets.token_hex(8))
    assert store.lease_acquire("leader", reborn, TTL, now=NOW + 1) is None
    impostor = Lease(name="leader", holder=reborn, term=lease.term, expires_at=lease.expires_at)
    assert store.lease_renew(impostor, TTL, now=NOW + 1) is None
    assert store.lease_release(impostor, now=NOW + 1) is False
    assert state(store, "leader", NOW + 1).holder == a


def test_renew_extends_the_expiry_and_keeps_the_term(store, a, b):
    lease = must_acquire(store, "leader", a, NOW)
    renewed = store.lease_renew(lease, TTL, now=NOW + 5)
    assert renewed is not None
    assert (renewed.name, renewed.holder, renewed.term) == ("leader", a, 1)
    assert renewed.expires_at == approx(NOW + 15)
    assert store.lease_acquire("leader", b, TTL, now=NOW + 14.999) is None
    taken = store.lease_acquire("leader", b, TTL, now=NOW + 15)
    assert taken is not None and taken.term == 2


def test_renew_just_before_expiry_succeeds(store, a):
    lease = must_acquire(store, "leader", a, NOW)
    renewed = store.lease_renew(lease, TTL, now=NOW + TTL - 0.001)
    assert renewed is not None
    assert renewed.expires_at == approx(NOW + 2 * TTL - 0.001)


def test_release_frees_the_lease_at_once_for_the_next_holder_with_the_next_term(store, a, b):
    lease = must_acquire(store, "leader", a, NOW)
    assert store.lease_release(lease, now=NOW + 1) is True
    row = state(store, "leader", NOW + 1)
    assert row.holder is None
    assert row.term == 1  # the row stays and keeps its term
    taken = store.lease_acquire("leader", b, TTL, now=NOW + 1)
    assert taken is not None
    assert (taken.holder, taken.term) == (b, 2)


def test_terms_only_grow_across_release_expiry_holders_and_restarts(database_url, store):
    holders = [make_holder(f"node-{i}") for i in range(3)]
    now = NOW
    last = 0
    for round_ in range(20):
        holder = holders[round_ % len(holders)]
        lease = must_acquire(store, "leader", holder, now)
        assert lease.term == last + 1, f"round {round_}: term {lease.term} after {last}"
        last = lease.term
        if round_ % 2:
            assert store.lease_release(lease, now=now + 1)
            now += 1
        else:
            now += TTL  # left to expire
    restarted = SqlStore(database_url)  # a restart of the fleet keeps the fencing token
    try:
        assert must_acquire(restarted, "leader", holders[0], now + TTL).term == last + 1
    finally:
        restarted.close()


def test_each_lease_has_its_own_term(store, a, b):
    assert must_acquire(store, "one", a, NOW).term == 1
    assert must_acquire(store, "two", b, NOW).term == 1
    assert must_acquire(store, "one", b, NOW + TTL).term == 2
    assert state(store, "two", NOW + 1).term == 1


def test_lease_ensure_creates_free_rows_with_term_0_and_never_resets_a_term(store, a, b):
    store.lease_ensure(["one", "two"])
    store.lease_ensure(["one", "two"])  # idempotent
    rows = {row.name: row for row in store.leases(now=NOW)}
    assert set(rows) == {"one", "two"}
    assert all(row.term == 0 and row.holder is None for row in rows.values())
    lease = must_acquire(store, "one", a, NOW)
    assert lease.term == 1
    store.lease_ensure(["one"])
    row = state(store, "one", NOW + 1)
    assert (row.term, row.holder) == (1, a)
    assert store.lease_acquire("one", b, TTL, now=NOW + 1) is None
    store.lease_ensure([])


# --- expiry by (pinned) database time ------------------------------------------------------


def test_a_lease_is_held_until_just_before_its_expiry_and_free_exactly_at_it(store, a, b):
    must_acquire(store, "leader", a, NOW)
    assert store.lease_acquire("leader", b, TTL, now=NOW + 9.999) is None
    taken = store.lease_acquire("leader", b, TTL, now=NOW + 10)  # expires_at <= now: expired
    assert taken is not None
    assert (taken.holder, taken.term) == (b, 2)
    assert taken.expires_at == approx(NOW + 10 + TTL)


def test_the_holder_cannot_renew_at_its_expiry_even_if_nobody_took_the_lease(store, a):
    lease = must_acquire(store, "leader", a, NOW)
    assert store.lease_renew(lease, TTL, now=NOW + 10) is None


def test_the_holder_cannot_renew_or_release_after_another_took_the_expired_lease(store, a, b):
    old = must_acquire(store, "leader", a, NOW)
    new = must_acquire(store, "leader", b, NOW + 10)
    assert store.lease_renew(old, TTL, now=NOW + 10) is None
    assert store.lease_release(old, now=NOW + 10.5) is False
    row = state(store, "leader", NOW + 11)
    assert (row.holder, row.term) == (b, 2)
    assert store.lease_renew(new, TTL, now=NOW + 11) is not None  # the new term is untouched


def test_a_stale_term_of_the_same_holder_can_neither_renew_nor_release(store, a):
    old = must_acquire(store, "leader", a, NOW)
    assert store.lease_release(old, now=NOW + 1)
    new = must_acquire(store, "leader", a, NOW + 2)
    assert new.term == 2
    assert store.lease_renew(old, TTL, now=NOW + 3) is None  # scoped to the term, not the holder
    assert store.lease_release(old, now=NOW + 3) is False
    row = state(store, "leader", NOW + 3)
    assert (row.holder, row.term) == (a, 2)
    assert row.expires_at == approx(NOW + 2 + TTL)  # a refused renew changes nothing


def test_node_sync_does_not_renew_a_newer_term_for_a_stale_held_lease(store, a):
    old = must_acquire(store, "leader", a, NOW)
    assert store.lease_release(old, now=NOW + 1)
    must_acquire(store, "leader", a, NOW + 2)
    result = store.node_sync(a, held=[old], wanted=[], ttl=TTL, now=NOW + 3)
    assert result.lost == ("leader",)
    assert result.kept == {}
    row = state(store, "leader", NOW + 3)
    assert (row.holder, row.term) == (a, 2)
    assert row.expires_at == approx(NOW + 2 + TTL)


def test_releasing_a_lease_not_held_returns_false(store, a):
    ghost = Lease(name="never-taken", holder=a, term=1, expires_at=NOW + TTL)
    assert store.lease_release(ghost, now=NOW) is False
    lease = must_acquire(store, "leader", a, NOW)
    assert store.lease_release(lease, now=NOW + 1) is True
    assert store.lease_release(lease, now=NOW + 1) is False


def test_releasing_an_expired_lease_returns_false(store, a):
    lease = must_acquire(store, "leader", a, NOW)
    # expires_at <= now: the lease is free, so it is no longer held by anyone to release
    assert store.lease_release(lease, now=NOW + TTL) is False


def test_renewing_someone_elses_lease_returns_none(store, a, b):
    lease = must_acquire(store, "leader", a, NOW)
    forged = Lease(name="leader", holder=b, term=lease.term, expires_at=lease.expires_at)
    assert store.lease_renew(forged, TTL, now=NOW + 1) is None
    assert store.lease_release(forged, now=NOW + 1) is False
    row = state(store, "leader", NOW + 1)
    assert (row.holder, row.term) == (a, 1)
    assert row.expires_at == approx(NOW + TTL)
    ghost = Lease(name="no-such-lease", holder=a, term=1, expires_at=NOW + TTL)
    assert store.lease_renew(ghost, TTL, now=NOW + 1) is None


# --- node_sync and membership --------------------------------------------------------------


def test_node_sync_with_nothing_held_or_wanted_heartbeats_membership(store, a, b):
    result = store.node_sync(a, held=[], wanted=[], ttl=TTL, now=NOW)
    assert (result.kept, result.lost, result.acquired) == ({}, (), {})
    store.node_sync(b, held=[], wanted=[], ttl=TTL, now=NOW + 2)
    members = {member.holder: member for member in store.members(now=NOW + 5)}
    assert set(members) == {a, b}
    assert members[a].started_at == approx(NOW)
    assert members[a].expires_at == approx(NOW + TTL)
    assert {m.holder for m in store.members(now=NOW + 9.999)} == {a, b}
    assert {m.holder for m in store.members(now=NOW + 10)} == {b}  # a's expiry: gone
    assert store.members(now=NOW + 12) == []


def test_a_second_heartbeat_extends_membership_and_keeps_the_start_time(store, a):
    store.node_sync(a, held=[], wanted=[], ttl=TTL, now=NOW)
    store.node_sync(a, held=[], wanted=[], ttl=TTL, now=NOW + 5)
    [member] = store.members(now=NOW + 12)
    assert member.holder == a
    assert member.started_at == approx(NOW)
    assert member.expires_at == approx(NOW + 15)


@pytest.mark.sql_only  # counts rows in the members table itself
def test_maintain_deletes_the_rows_of_nodes_that_stopped_heartbeating(store, a, b):
    """Killed nodes never leave: their rows go in upkeep, so the table holds live nodes
    only (which is what lets heartbeats do without an index on expires_at)."""
    from sqlalchemy import func, select

    from supervisor.store.schema import members

    store.node_sync(a, held=[], wanted=[], ttl=TTL, now=NOW)
    store.node_sync(b, held=[], wanted=[], ttl=TTL, now=NOW + 5)
    store.maintain(3600.0, now=NOW + 12)  # a expired at NOW + 10, b lives until NOW + 15
    with store._txn() as conn:
        assert conn.execute(select(func.count()).select_from(members)).scalar_one() == 1
    assert [m.holder for m in store.members(now=NOW + 12)] == [b]
    store.node_sync(a, held=[], wanted=[], ttl=TTL, now=NOW + 13)  # a is back
    assert {m.holder for m in store.members(now=NOW + 14)} == {a, b}


def test_node_leave_removes_the_membership_row_at_once(store, a, b):
    store.node_sync(a, held=[], wanted=[], ttl=TTL, now=NOW)
    store.node_sync(b, held=[], wanted=[], ttl=TTL, now=NOW)
    store.node_leave(a)
    assert [m.holder for m in store.members(now=NOW + 1)] == [b]
    store.node_leave(a)  # leaving twice is harmless


def test_node_sync_renews_held_leases(store, a):
    one = must_acquire(store, "one", a, NOW)
    two = must_acquire(store, "two", a, NOW)
    result = store.node_sync(a, held=[one, two], wanted=[], ttl=TTL, now=NOW + 5)
    assert result.lost == ()
    assert result.acquired == {}
    assert set(result.kept) == {"one", "two"}
    for name in ("one", "two"):
        kept = result.kept[name]
        assert (kept.name, kept.holder, kept.term) == (name, a, 1)
        assert kept.expires_at == approx(NOW + 15)
        assert state(store, name, NOW + 5).expires_at == approx(NOW + 15)


def test_node_sync_reports_leases_taken_by_another_as_lost(store, a, b):
    mine = must_acquire(store, "mine", a, NOW)
    stolen = must_acquire(store, "stolen", a, NOW)
    must_acquire(store, "stolen", b, NOW + 10)
    mine = store.lease_renew(mine, TTL, now=NOW + 9)
    assert mine is not None
    result = store.node_sync(a, held=[mine, stolen], wanted=[], ttl=TTL, now=NOW + 10)
    assert result.lost == ("stolen",)
    assert set(result.kept) == {"mine"}
    row = state(store, "stolen", NOW + 10)
    assert (row.holder, row.term) == (b, 2)  # losing does not disturb the new holder


def test_node_sync_reports_an_expired_lease_as_lost_even_if_nobody_took_it(store, a):
    lease = must_acquire(store, "leader", a, NOW)
    result = store.node_sync(a, held=[lease], wanted=[], ttl=TTL, now=NOW + TTL)
    assert result.lost == ("leader",)
    assert result.kept == {}


def test_node_sync_acquires_wanted_free_leases_with_the_next_term(store, a, b):
    store.lease_ensure(["ensured"])
    assert store.lease_release(must_acquire(store, "released", b, NOW), now=NOW + 1)
    must_acquire(store, "expired", b, NOW)
    wanted = ["ensured", "released", "expired"]
    result = store.node_sync(a, held=[], wanted=wanted, ttl=TTL, now=NOW + TTL)
    assert {name: lease.term for name, lease in result.acquired.items()} == {
        "ensured": 1, "released": 2, "expired": 2}
    for name, lease in result.acquired.items():
        assert (lease.name, lease.holder) == (name, a)
        assert lease.expires_at == approx(NOW + 2 * TTL)
        assert state(store, name, NOW + TTL).holder == a
    assert (result.kept, result.lost) == ({}, ())


def test_node_sync_wants_rows_made_by_lease_ensure_first(store, a):
    # The contract: node_sync never inserts (a follower's round trip stays one UPDATE per
    # table); the keeper ensures each lease's row once. Without it nothing is acquired...
    assert store.node_sync(a, held=[], wanted=["new"], ttl=TTL, now=NOW).acquired == {}
    # ...and with it the lease is free, and taken with term 1.
    store.lease_ensure(["new"])
    result = store.node_sync(a, held=[], wanted=["new"], ttl=TTL, now=NOW)
    assert set(result.acquired) == {"new"}
    assert result.acquired["new"].term == 1


def test_node_sync_does_not_acquire_leases_held_by_others(store, a, b):
    store.lease_ensure(["free"])
    must_acquire(store, "taken", b, NOW)
    result = store.node_sync(a, held=[], wanted=["taken", "free"], ttl=TTL, now=NOW + 9.999)
    assert set(result.acquired) == {"free"}
    row = state(store, "taken", NOW + 9.999)
    assert (row.holder, row.term) == (b, 1)


def test_node_sync_renews_and_acquires_in_one_call(store, a, b):
    store.lease_ensure(["wanted"])
    held = must_acquire(store, "held", a, NOW)
    result = store.node_sync(a, held=[held], wanted=["wanted"], ttl=TTL, now=NOW + 5)
    assert set(result.kept) == {"held"}
    assert set(result.acquired) == {"wanted"}
    assert [m.holder for m in store.members(now=NOW + 6)] == [a]
    assert store.lease_acquire("wanted", b, TTL, now=NOW + 6) is None


def test_node_sync_db_now_is_the_database_clock(store, a):
    before = store.db_now()
    result = store.node_sync(a, held=[], wanted=[], ttl=TTL)
    after = store.db_now()
    assert isinstance(result.db_now, float)
    assert before - 0.001 <= result.db_now <= after + 0.001
    assert abs(result.db_now - time.time()) < 5  # the servers run on this host


def test_db_now_is_epoch_seconds(store):
    now = store.db_now()
    assert isinstance(now, float)
    assert abs(now - time.time()) < 5  # the servers run on this host: same clock, any zone


def test_unpinned_expiry_is_judged_by_the_database_clock(store, a, b):
    lease = store.lease_acquire("leader", a, 30.0)
    assert lease is not None
    assert store.lease_acquire("leader", b, 30.0) is None
    row = state(store, "leader")
    assert 25.0 < row.seconds_left <= 30.0
    assert row.expires_at == approx(lease.expires_at)
    assert abs(lease.expires_at - 30.0 - store.db_now()) < 5


def test_the_postgresql_clock_is_epoch_seconds_in_any_session_time_zone(pg_url, a):
    name = pg_url.rsplit("/", 1)[-1]
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres",
                         autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} SET timezone TO 'Pacific/Chatham'").format(
            sql.Identifier(name)))
    store = SqlStore(pg_url)
    try:
        store.upgrade()
        assert abs(store.db_now() - time.time()) < 5
        lease = store.lease_acquire("leader", a, 30.0)
        assert lease is not None
        assert 25.0 < state(store, "leader").seconds_left <= 30.0
    finally:
        store.close()


# --- races between processes and threads ---------------------------------------------------


def judge_rounds(messages: list[tuple[object, ...]], contenders: int, rounds: int) -> None:
    """Exactly one winner per round, and the winners' terms 1, 2, 3, ... round after round."""
    by_round: dict[int, list[tuple[object, ...]]] = {}
    for _, index, round_, term, nonce in messages:
        by_round.setdefault(round_, []).append((index, term, nonce))
    assert sorted(by_round) == list(range(rounds))
    for round_, entries in sorted(by_round.items()):
        assert len(entries) == contenders, f"round {round_}: {entries}"
        winners = [entry for entry in entries if entry[1] is not None]
        assert len(winners) == 1, f"round {round_}: {len(winners)} winners: {winners}"
        assert winners[0][1] == round_ + 1, f"round {round_}: term {winners[0][1]}"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("contender", [store_race.acquire, store_race.sync],
                         ids=["lease_acquire", "node_sync"])
def test_competing_processes_yield_exactly_one_winner_per_round(store, database_url,
                                                                contender):
    contenders, rounds = 8, 5
    store.lease_ensure(["leader"])  # a row to fight over from the first round on
    args = [(database_url, i, rounds, "leader") for i in range(contenders)]
    messages = run_contenders(contender, args, expected=contenders * rounds)
    judge_rounds(messages, contenders, rounds)
    history = store.terms(lease="leader")
    assert [record.term for record in history] == list(range(rounds, 0, -1))
    assert all(record.outcome == "released" for record in history)


@pytest.mark.timeout(60)
def test_threads_sharing_one_store_yield_exactly_one_winner(store):
    contenders = 8
    start = threading.Barrier(contenders)
    won: list[Lease | None] = [None] * contenders
    errors: list[str] = []

    def contend(index: int) -> None:
        try:
            start.wait(30)
            won[index] = store.lease_acquire("leader", make_holder(f"t{index}"), TTL)
        except BaseException:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(45)
    assert not errors, errors[0]
    winners = [lease for lease in won if lease is not None]
    assert len(winners) == 1, winners
    assert winners[0].term == 1


# --- history and status --------------------------------------------------------------------


def test_terms_record_every_acquire_and_how_each_ended_newest_first(store, a, b):
    first = must_acquire(store, "leader", a, NOW)
    assert store.lease_release(first, reason="handover", now=NOW + 1)
    must_acquire(store, "leader", b, NOW + 2)  # expires at NOW + 12
    third = store.node_sync(a, held=[], wanted=["leader"], ttl=TTL, now=NOW + 12)
    assert third.acquired["leader"].term == 3
    history = store.terms(lease="leader")
    assert [record.term for record in history] == [3, 2, 1]
    assert all(record.lease == "leader" for record in history)
    newest, expired, released = history
    assert (newest.holder, newest.acquired_at) == (a, approx(NOW + 12))
    assert (newest.ended_at, newest.outcome, newest.reason) == (None, None, None)
    assert (expired.holder, expired.acquired_at) == (b, approx(NOW + 2))
    assert expired.outcome == "expired"
    assert expired.ended_at == approx(NOW + 12)
    assert (released.holder, released.acquired_at) == (a, approx(NOW))
    assert (released.outcome, released.reason) == ("released", "handover")
    assert released.ended_at == approx(NOW + 1)


def test_terms_filter_by_lease_and_limit(store, a, b):
    for step in range(3):
        lease = must_acquire(store, "one", a, NOW + step)
        assert store.lease_release(lease, now=NOW + step + 0.5)
    must_acquire(store, "two", b, NOW + 5)
    assert [(r.lease, r.term) for r in store.terms()] == [("two", 1), ("one", 3), ("one", 2),
                                                          ("one", 1)]
    assert [r.term for r in store.terms(lease="one", limit=2)] == [3, 2]
    assert [(r.lease, r.term) for r in store.terms(lease="two")] == [("two", 1)]
    assert store.terms(lease="none") == []
    assert all(r.outcome == "released" and r.reason == "released"
               for r in store.terms(lease="one"))


def test_terms_filter_takes_the_lease_name_literally(store, a):
    for name in ("axb", "axb:g1", "axb/g1", "axb.g1", "a%"):
        must_acquire(store, name, a, NOW)
    assert store.terms(lease="a_b") == []  # `_` and `%` are legal in names, not wildcards
    assert [r.lease for r in store.terms(lease="a%")] == ["a%"]


def test_leases_show_holder_term_and_time_left(store, a):
    lease = must_acquire(store, "leader", a, NOW)
    row = state(store, "leader", NOW + 4)
    assert (row.name, row.holder, row.term) == ("leader", a, 1)
    assert row.expires_at == approx(NOW + TTL)
    assert row.seconds_left == approx(6.0)
    assert state(store, "leader", NOW + TTL).seconds_left <= 0
    assert state(store, "leader", NOW + TTL + 5).seconds_left <= 0
    renewed = store.lease_renew(lease, TTL, now=NOW + 5)
    assert renewed is not None
    assert store.lease_release(renewed, now=NOW + 6)
    row = state(store, "leader", NOW + 6)
    assert (row.holder, row.term) == (None, 1)


# --- failures ------------------------------------------------------------------------------


def assert_fails_fast_without_secret(url: str, timeout: float, error: type[Exception]) -> None:
    """Every kind of call raises `error` within timeout + 3 s; no trace of it shows the secret."""
    calls: dict[str, Callable[[SqlStore], object]] = {
        "db_now": lambda s: s.db_now(),
        "upgrade": lambda s: s.upgrade(),
        "lease_acquire": lambda s: s.lease_acquire("x", make_holder(), TTL),
        "node_sync": lambda s: s.node_sync(make_holder(), held=[], wanted=["x"], ttl=TTL),
    }
    for name, call in calls.items():
        store: SqlStore | None = None
        started = time.monotonic()
        with pytest.raises(error) as caught:
            store = SqlStore(url, timeout=timeout)
            call(store)
        elapsed = time.monotonic() - started
        if store is not None:
            store.close()
        assert elapsed < timeout + 3, f"{name}: took {elapsed:.1f}s with timeout={timeout}"
        text = "".join(traceback.format_exception(caught.value))
        assert "hunter2" not in text, f"{name}: the password leaked:\n{text}"
        assert "hunter2" not in repr(caught.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("url", [
    "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/x",
    "mysql+pymysql://root:hunter2@127.0.0.1:1/x",
], ids=["postgresql", "mariadb"])
def test_an_unreachable_server_raises_store_unavailable_quickly_without_the_password(url):
    assert_fails_fast_without_secret(url, 2.0, StoreUnavailable)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend, url", [
    ("postgresql", "postgresql+psycopg://postgres:hunter2@127.0.0.1:5432/fs_t_does_not_exist"),
    ("mariadb", "mysql+pymysql://root:hunter2@127.0.0.1:3306/fs_t_does_not_exist"),
], ids=["postgresql", "mariadb"])
def test_a_refused_connection_to_a_live_server_never_shows_the_password(backend, url):
    require_backend(backend)
    assert_fails_fast_without_secret(url, 2.0, StoreError)


@pytest.mark.timeout(60)
def test_a_sqlite_write_lock_held_elsewhere_fails_the_call_within_the_timeout(tmp_path, a):
    url = f"sqlite:///{tmp_path}/fleet.db"
    store = SqlStore(url, timeout=1.0)
    try:
        store.upgrade()
        blocker = sqlite3.connect(tmp_path / "fleet.db", isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # a stuck writer on the same host
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                store.lease_acquire("leader", a, TTL)
            assert time.monotonic() - started < 4
        finally:
            blocker.close()
        assert must_acquire(store, "leader", a, NOW).term == 1  # and it recovers
    finally:
        store.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel does) and never says a word."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "mysql+pymysql"],
                         ids=["postgresql", "mariadb"])
def test_a_server_that_never_answers_raises_store_unavailable_within_the_timeout(
        silent_server, scheme):
    url = f"{scheme}://user:hunter2@127.0.0.1:{silent_server}/x"
    assert_fails_fast_without_secret(url, 1.0, StoreUnavailable)


def test_an_unopenable_sqlite_file_raises_a_store_error(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/missing-directory/fleet.db"
    store: SqlStore | None = None
    with pytest.raises(StoreError):
        store = SqlStore(url)
        store.upgrade()
    if store is not None:
        store.close()
