"""One connection per node: the store's calls, run through the node's database lane, use one
server connection, hear lease releases on that same connection (PostgreSQL), and a call
cut short leaves neither a thread nor a connection behind.

Connections are counted by the server (pg_stat_activity, information_schema.processlist)
for the test's own database, not by what the pool believes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pymysql
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from supervisor.coordination.dblane import DbLane
from supervisor.coordination.leader import LeaderMode
from supervisor.coordination.node_sync import NodeSync
from supervisor.errors import StoreError
from supervisor.model import Mode
from supervisor.spec import CoordinationSpec
from supervisor.store import Holder
from supervisor.store.schema import leases
from supervisor.store.sql import MIGRATE_LOCK, MYSQL_MIGRATE_LOCK, SqlStore
from tests.databases import create_database, drop_database
from tests.support.proxy import TcpProxy

SERVERS = pytest.mark.parametrize("database_backend", ["postgresql", "mariadb"])
WAIT = 10.0


def server_connections(url: str) -> int:
    """How many connections the server has open on this test's database (ours only)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                               (parsed.database,)).fetchone()
            return int(row[0]) if row else 0
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM information_schema.processlist WHERE db = %s",
                        (parsed.database,))
            row = cur.fetchone()
            return int(row[0]) if row else 0
    finally:
        conn.close()


def settle(what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait until the server's view matches (a closed socket takes a moment to be seen)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def via(url: str, port: int) -> str:
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


@pytest.fixture
def lane_of() -> Iterator[Callable[..., DbLane]]:
    opened: list[tuple[DbLane, SqlStore]] = []

    def make(store: SqlStore, on_notify: Callable[[], None] | None = None) -> DbLane:
        lane = DbLane(store, on_notify=on_notify)
        opened.append((lane, store))
        return lane

    yield make
    for lane, store in opened:
        lane.close()
        lane.join(WAIT)
        store.close()


def run(lane: DbLane, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return lane.submit(lambda: fn(*args, **kwargs)).result(WAIT)


@SERVERS
def test_a_busy_node_never_opens_a_second_connection(database_url, a: Holder) -> None:
    """The keeper syncing every 100 ms while holding a lease, and 40 mode calls fired at
    once, again and again: the server never sees a second connection from this node."""
    timing = CoordinationSpec(lease_ttl=2.0, renew_interval=0.1, renew_deadline=1.0)
    store = SqlStore(database_url, timeout=timing.renew_deadline)
    seen: list[int] = []

    async def main() -> None:
        keeper = NodeSync(store, a, timing, lambda event: None)
        task = asyncio.create_task(keeper.run())
        try:
            async with asyncio.timeout(WAIT):
                await LeaderMode(keeper, Mode.GLOBAL_LEADER, "leader/w", "w", "g").acquire()
            for _ in range(10):
                calls = [keeper.call(store.members) for _ in range(20)]
                calls += [keeper.call(store.leases) for _ in range(20)]
                counted = asyncio.to_thread(server_connections, database_url)
                *_, count = await asyncio.gather(*calls, counted)
                seen.append(count)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await keeper.close()

    asyncio.run(main())
    assert seen and max(seen) == 1, seen


@pytest.mark.parametrize("database_backend", ["postgresql"])
def test_the_query_connection_itself_hears_releases_between_calls(database_url, lane_of,
                                                                   a: Holder, b: Holder) -> None:
    woken = threading.Event()
    store = SqlStore(database_url, timeout=2.0)
    lane = lane_of(store, woken.set)
    run(lane, store.upgrade)
    run(lane, store.lease_ensure, ["leader/x"])
    run(lane, store.node_sync, a, held=[], wanted=[], ttl=5.0)  # idle and listening now
    assert store.listen_released(lambda: None, threading.Event()) is False  # no 2nd session
    assert server_connections(database_url) == 1
    woken.clear()
    other = SqlStore(database_url, timeout=2.0)
    try:
        lease = other.node_sync(b, held=[], wanted=["leader/x"], ttl=5.0).acquired["leader/x"]
        other.lease_release(lease, reason="test")
    finally:
        other.close()
    # Heard while idle: well before the lane's own periodic look (5 s) or the next call.
    assert woken.wait(2.0)


@SERVERS
def test_a_call_cut_short_leaves_no_thread_and_no_connection_stuck(database_url, lane_of,
                                                                    a: Holder) -> None:
    target = make_url(database_url)
    with TcpProxy("127.0.0.1", target.port or 0) as proxy:
        store = SqlStore(via(database_url, proxy.port), timeout=30.0)  # only the cut bounds it
        lane = lane_of(store)
        run(lane, store.upgrade)
        run(lane, store.node_sync, a, held=[], wanted=[], ttl=5.0)
        threads = threading.active_count()
        proxy.blackhole()
        stuck = lane.submit(lambda: store.node_sync(a, held=[], wanted=[], ttl=5.0))
        with pytest.raises(TimeoutError):
            stuck.result(0.5)  # the caller's bound
        lane.abandon(stuck)
        with pytest.raises(Exception):  # noqa: B017 - any error: the point is that it ends
            stuck.result(WAIT)
        assert store.engine.pool.checkedout() == 0
        proxy.heal()
        assert run(lane, store.db_now) > 0  # the same thread, a fresh connection
        assert threading.active_count() <= threads + 2  # the proxy's pumps for the new one
        assert lane.alive()
        settle("one server connection", lambda: server_connections(database_url) == 1)


@pytest.mark.parametrize("database_backend", ["postgresql"])
def test_heartbeats_and_renewals_are_hot_updates(database_url: str, a: Holder) -> None:
    """The rows every node rewrites every second cost no index entries (HOT on
    PostgreSQL): nothing indexed changes in a heartbeat or a renewal. Judged by the
    server's own counters, flushed when the store's session ends."""
    store = SqlStore(database_url, timeout=2.0)
    try:
        store.upgrade()
        store.lease_ensure(["leader/x"])
        lease = store.node_sync(a, held=[], wanted=["leader/x"], ttl=10.0)
        held = list(lease.acquired.values())
        for _ in range(50):
            held = list(store.node_sync(a, held=held, wanted=[], ttl=10.0).kept.values())
        assert held
    finally:
        store.close()
    name = make_url(database_url).database

    def counts() -> dict[str, tuple[int, int]]:
        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=name,
                             autocommit=True) as conn:
            return {row[0]: (int(row[1]), int(row[2])) for row in conn.execute(
                "SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                " WHERE relname IN ('fs_members', 'fs_leases')")}

    settle("the session's statistics", lambda: all(
        upd >= 50 for upd, _ in counts().values()) and len(counts()) == 2)
    for table, (updates, hot) in counts().items():
        assert hot >= 0.9 * updates, f"{table}: {hot} of {updates} updates HOT"


@SERVERS
def test_an_upgrade_waiting_for_another_node_s_lock_can_be_cut_too(database_url, lane_of) -> None:
    """A node stopping while its schema upgrade waits (for another node's upgrade, a full
    pool) must get its lane back at once for the calls of its stop, not after the
    upgrade's own 120 s bound."""
    backend = make_url(database_url).get_backend_name()
    name = make_url(database_url).database
    if backend == "postgresql":
        holder: Any = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=name)
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))  # held till rollback
    else:
        holder = pymysql.connect(host="127.0.0.1", port=3306, user="root", database=name)
        holder.cursor().execute(f"SELECT GET_LOCK({MYSQL_MIGRATE_LOCK}, 60)")
    try:
        store = SqlStore(database_url, timeout=2.0)
        lane = lane_of(store)
        waiting = lane.submit(store.upgrade)
        with pytest.raises(TimeoutError):
            waiting.result(1.0)  # still waiting for the lock
        lane.abandon(waiting)
        with pytest.raises(StoreError):
            waiting.result(WAIT)  # cut, not left to run out its 120 s
        assert store.engine.pool.checkedout() == 0
    finally:
        holder.rollback()
        holder.close()
    assert run(lane, store.db_now) > 0  # and the lane goes on


@SERVERS
def test_a_transaction_left_open_does_not_hold_others_rows(database_url, a: Holder,
                                                           b: Holder) -> None:
    """A node cut off (or stopped) in the middle of a transaction: to the server its
    session just sits idle in that transaction, with the row locks it took. The server
    must end it once it has sat idle for the bound the node's own calls had, so another
    node's sync that needs those rows goes through; on its default (60 s, or never)
    every such sync ran out its lock timeout and the fleet's leaders stepped down one
    after another."""
    orphan = SqlStore(database_url, timeout=0.5)  # the bound its own calls had
    other = SqlStore(database_url, timeout=3.0)  # waits up to 3 s for a row lock
    try:
        orphan.upgrade()
        orphan.lease_ensure(["leader/x"])
        conn = orphan.engine.connect()
        conn.begin()
        conn.execute(select(leases.c.name).where(leases.c.name == "leader/x").with_for_update())
        # ...and the client says nothing more: no commit, no rollback, no close.
        got = other.node_sync(b, held=[], wanted=["leader/x"], ttl=5.0)
        assert list(got.acquired) == ["leader/x"]
        with pytest.raises(DBAPIError):  # the server ended the orphan's session
            conn.execute(select(leases.c.name)).all()
        conn.invalidate()
        conn.close()
    finally:
        orphan.close()
        other.close()


@pytest.mark.parametrize("database_backend", ["mariadb"])
def test_an_upgrade_on_one_database_does_not_wait_for_another_database_s(database_url) -> None:
    """MariaDB's lock names are server-wide: the migration lock is named after the
    database, so two fleets on one server never queue behind each other's upgrades."""
    other = create_database("mariadb")
    holder = pymysql.connect(host="127.0.0.1", port=3306, user="root",
                             database=make_url(other).database)
    try:
        holder.cursor().execute(f"SELECT GET_LOCK({MYSQL_MIGRATE_LOCK}, 60)")
        store = SqlStore(database_url, timeout=2.0)
        try:
            done = threading.Thread(target=store.upgrade, daemon=True)
            done.start()
            done.join(WAIT)
            assert not done.is_alive(), "the upgrade waited for another database's lock"
            assert store.schema_state().revision is not None
        finally:
            store.close()
    finally:
        holder.close()
        drop_database("mariadb", other)
