"""PostgreSQL through PgBouncer in transaction mode: what the store sets per transaction, and
where it LISTENs. Every other contract runs through PgBouncer in the conformance suite too
(the "pgbouncer" backend in tests/integration/conftest.py); these tests pin what differs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from supervisor.errors import StoreUnavailable
from supervisor.store import Holder
from supervisor.store.sql import SqlStore

POSTGRES = pytest.mark.parametrize("database_backend", ["postgresql", "pgbouncer"])
SETTINGS = ("SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
            " current_setting('idle_in_transaction_session_timeout')")


def direct(url: str) -> str:
    """The same database, straight to the server rather than through PgBouncer."""
    return make_url(url).set(port=5432).render_as_string(hide_password=False)


def raw(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(
        hide_password=False), autocommit=True)


@pytest.fixture
def bounded(database_url: str) -> Iterator[SqlStore]:
    opened = SqlStore(database_url, timeout=0.5)
    try:
        yield opened
    finally:
        opened.close()


@POSTGRES
def test_every_transaction_sets_its_own_timeouts_and_no_session_keeps_them(database_url, store):
    for _ in range(3):  # more than one pooled connection, and each transaction anew
        with store._txn() as conn:
            assert tuple(conn.execute(text(SETTINGS)).one()) == ("5s", "5s", "5s")
    with raw(database_url) as conn:  # through PgBouncer: likely a server connection just used
        assert conn.execute(SETTINGS).fetchone() == ("0", "0", "0")


@POSTGRES
def test_a_statement_running_past_the_timeout_is_cut_by_the_server(bounded):
    with pytest.raises(StoreUnavailable), bounded._txn() as conn:
        conn.execute(text("SELECT pg_sleep(30)"))
    assert bounded.db_now() > 0  # and the next call works


@POSTGRES
def test_listen_url_none_means_no_listener_and_polling_alone(database_url):
    store = SqlStore(database_url, listen_url="none")
    try:
        assert store.listen_released(lambda: None, threading.Event()) is False
    finally:
        store.close()


@pytest.mark.parametrize("database_backend", ["pgbouncer"])
def test_a_store_behind_pgbouncer_hears_releases_on_its_direct_listen_url(
        database_url: str, a: Holder) -> None:
    store = SqlStore(database_url, listen_url=direct(database_url))
    woken, stop = threading.Event(), threading.Event()
    listener = threading.Thread(target=store.listen_released, args=(woken.set, stop))
    try:
        store.upgrade()
        listener.start()
        name = make_url(database_url).database
        with raw(direct(database_url)) as admin:  # wait until the LISTEN is in place
            while not admin.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE datname = %s"
                    " AND query = 'LISTEN fs_lease_released'", (name,)).fetchone():
                assert listener.is_alive()
        lease = store.lease_acquire("leader", a, 10.0)
        assert lease is not None and store.lease_release(lease)
        assert woken.wait(10), "the release made through PgBouncer was not heard"
    finally:
        stop.set()
        if listener.is_alive():
            listener.join(5)
        store.close()


@pytest.mark.parametrize("database_backend", ["pgbouncer"])
def test_nodes_sharing_a_pooler_cost_the_server_one_transaction_per_call(
        database_url: str, a: Holder, b: Holder) -> None:
    """Through a transaction-mode pooler, nodes take turns on its server connections. Every
    startup parameter a pooler tracks (application_name among them) must be the same for
    every node, or it re-SETs it on the server connection at nearly every turn: one more
    server transaction per call (server transactions doubled at 200 nodes)."""
    first, second = SqlStore(database_url), SqlStore(database_url)
    name = make_url(database_url).database
    calls = 60

    def server_transactions() -> int:
        with raw(direct(database_url)) as admin:
            # Backends report their counters when they end: end the pooler's ones first.
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE datname = %s"
                                " AND pid <> pg_backend_pid()", (name,)).fetchone():
                pass
            admin.execute("SELECT pg_stat_clear_snapshot()")
            row = admin.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database"
                                " WHERE datname = %s", (name,)).fetchone()
            assert row is not None
            return int(row[0])

    try:
        first.upgrade()
        for store, holder in ((first, a), (second, b)):
            store.node_sync(holder, held=[], wanted=[], ttl=10.0)
        before = server_transactions()
        for i in range(calls):  # taking turns, as a fleet's nodes do
            store, holder = (first, a) if i % 2 else (second, b)
            store.node_sync(holder, held=[], wanted=[], ttl=10.0)
        used = server_transactions() - before
    finally:
        first.close()
        second.close()
    # A few more than the calls: the pooler's fresh server connections (their first use
    # sets the client's parameters once, ~7 here); with a name per node it is ~2x (126).
    assert calls <= used <= 1.25 * calls, f"{used} server transactions for {calls} calls"
