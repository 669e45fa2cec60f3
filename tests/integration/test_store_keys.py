"""Names and keys compare byte for byte on every database: case, accents and trailing spaces.

Lease names, group and node names, cron worker names and coordinated keys that differ only
in case ('Job', 'job'), in an accent ('é', 'e') or in a trailing space ('x', 'x ') are
different names on every backend, through the store's protocol only. PostgreSQL
(deterministic collations) and SQLite (BINARY) compare bytes by themselves; MariaDB/MySQL
does since migration 0008, which converts every fs_* table to a binary NO PAD collation
and reports names the old collation had merged (tested at the end, on MariaDB). A value
longer than its column is refused, never silently cut to fit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from supervisor.errors import StoreError
from supervisor.model import Mode, coord_key, lease_name
from supervisor.store import Holder, SyncResult
from supervisor.store.sql import SqlStore
from tests.integration.stores import make_holder
from tests.integration.test_store_cron import migrate

NOW = 1_800_000_000.0  # a pinned database time, epoch seconds
TTL = 10.0
GRACE = 30.0
COLLATION = "utf8mb4_nopad_bin"  # MariaDB's binary NO PAD collation
TABLES = ("fs_alembic_version", "fs_schema_info", "fs_leases", "fs_members", "fs_terms",
          "fs_cron_runs", "fs_coord_members", "fs_coord_state", "fs_coord_assignments",
          "fs_coord_slots", "fs_coord_generations")
# ... and the tables later migrations create in that collation themselves (0009, 0010)
AT_HEAD = (*TABLES, "fs_control", "fs_control_version", "fs_control_log", "fs_cron_triggers")

SPELLINGS = [  # two names a case-, accent- or pad-insensitive collation calls one
    pytest.param("Job", "job", id="case"),
    pytest.param("é", "e", id="accent"),
    pytest.param("x", "x ", id="trailing-space"),
]

def sync(store: SqlStore, holder: Holder, **parts: Any) -> SyncResult:
    return store.node_sync(holder, held=[], wanted=[], ttl=TTL, now=NOW, **parts)


def claim(store: SqlStore, worker: str, holder: Holder, *, max_run: int = 1) -> str:
    return store.cron_claim(worker, NOW, holder=holder, max_run=max_run, ttl=TTL,
                            grace=GRACE, now=NOW).result


# --- leases ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), SPELLINGS)
def test_lease_names_that_differ_only_in_case_accent_or_a_trailing_space_are_two_leases(
        store, a, b, first, second):
    first, second = f"leader/{first}", f"leader/{second}"
    mine = store.lease_acquire(first, a, TTL, now=NOW)
    theirs = store.lease_acquire(second, b, TTL, now=NOW)  # at the same instant
    assert mine is not None and (mine.name, mine.holder, mine.term) == (first, a, 1)
    assert theirs is not None and (theirs.name, theirs.holder, theirs.term) == (second, b, 1)
    assert {lease.name: lease.holder for lease in store.leases(now=NOW)} == {first: a,
                                                                             second: b}
    assert [term.holder for term in store.terms(lease=first)] == [a]
    assert [term.holder for term in store.terms(lease=second)] == [b]
    assert store.lease_release(mine, now=NOW + 1)  # the other one stays held
    assert {lease.name: lease.holder for lease in store.leases(now=NOW + 1)} == {first: None,
                                                                                 second: b}
    assert store.lease_renew(theirs, TTL, now=NOW + 2) is not None


def test_node_sync_acquires_and_renews_each_spelling_for_its_own_holder(store, a, b):
    mine = ["leader/Job", "leader/é", "leader/x"]
    theirs = ["leader/job", "leader/e", "leader/x "]
    store.lease_ensure(mine + theirs)
    got_a = store.node_sync(a, held=[], wanted=mine, ttl=TTL, now=NOW)
    got_b = store.node_sync(b, held=[], wanted=theirs, ttl=TTL, now=NOW)
    assert sorted(got_a.acquired) == sorted(mine)
    assert sorted(got_b.acquired) == sorted(theirs)
    again = store.node_sync(b, held=list(got_b.acquired.values()), wanted=[], ttl=TTL,
                            now=NOW + 1)
    assert (sorted(again.kept), again.lost) == (sorted(theirs), ())
    assert len(store.leases(now=NOW + 1)) == 6


# --- groups and nodes ------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [("EU", "eu"), ("Zürich", "Zurich")],
                         ids=["case", "accent"])
def test_groups_that_differ_only_in_case_or_accent_are_two_groups(store, first, second):
    one, other = make_holder("node-a", first), make_holder("node-b", second)
    leases = {holder: lease_name("report", Mode.GROUP_LEADER, "group", holder.group)
              for holder in (one, other)}
    keys = {holder: coord_key("indexer", "group", holder.group) for holder in (one, other)}
    store.lease_ensure(list(leases.values()))
    for holder in (one, other):  # each group's leader, and its own coordinated membership
        result = store.node_sync(holder, held=[], wanted=[leases[holder]], ttl=TTL, now=NOW,
                                 coord_members=[keys[holder]])
        assert list(result.acquired) == [leases[holder]], holder.group
        assert [m.holder for m in result.coord[keys[holder]].members or ()] == [holder]
    assert {(m.holder.node_id, m.holder.group) for m in store.members(now=NOW)} == {
        ("node-a", first), ("node-b", second)}
    assert {lease.name: lease.holder for lease in store.leases(now=NOW)} == {
        leases[one]: one, leases[other]: other}
    for holder in (one, other):
        assert [m.holder for m in store.coord_view(keys[holder], now=NOW).members] == [holder]


def test_node_names_that_differ_only_in_case_are_two_nodes_for_max_per_node(store):
    upper, lower = make_holder("Web-1"), make_holder("web-1")
    assert claim(store, "tick", upper, max_run=3) == "acquired"
    assert claim(store, "tick", lower, max_run=3) == "acquired"  # another node: its own slot
    again = make_holder("Web-1")  # a second supervisor of node Web-1: its one slot is taken
    assert claim(store, "tick", again, max_run=3) == "full"
    assert sorted(r.holder.node_id for r in store.cron_runs(worker="tick")
                  if r.holder is not None) == ["Web-1", "web-1"]


# --- cron workers ----------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), SPELLINGS)
def test_cron_workers_that_differ_only_in_case_accent_or_a_trailing_space_count_apart(
        store, a, b, first, second):
    first, second = f"Tick{first}", f"Tick{second}"
    assert claim(store, first, a) == "acquired"  # max_run 1 each
    assert claim(store, second, b) == "acquired"
    assert claim(store, first, make_holder("node-c")) == "full"
    for worker, holder in ((first, a), (second, b)):
        runs = store.cron_runs(worker=worker)
        assert [(run.worker, run.holder) for run in runs] == [(worker, holder)]
        assert store.cron_recorded(worker, NOW - 1).ticks == frozenset({NOW})


# --- coordinated keys ------------------------------------------------------------------------


def test_coordinated_keys_that_differ_only_in_case_are_two_keys(store, a, b):
    for key, holder in (("Indexer", a), ("indexer", b)):
        view = sync(store, holder, coord_members=[key]).coord[key]
        assert [m.holder for m in view.members or ()] == [holder]
    for key, holder in (("Indexer", a), ("indexer", b)):
        generation = store.coord_publish(key, expected=0, members=[holder], count=1, now=NOW)
        assert generation == 1, key
        slot = store.coord_acquire_slot(key, 0, 1, holder, TTL, now=NOW)
        assert slot is not None and (slot.worker_key, slot.holder) == (key, holder)
        status = store.coord_view(key, now=NOW)
        assert [m.holder for m in status.members] == [holder]
        assert [s.holder for s in status.slots] == [holder]
        assert [g.worker_key for g in store.coord_generations(worker_key=key)] == [key]


def test_a_workers_history_leaves_out_the_other_spellings_of_its_name(store, a, b):
    """(SQLite's LIKE ignores ASCII case: the per-group rows are not found with it.)"""
    store.lease_ensure(["leader/Job/g1", "leader/job/g1"])
    assert store.lease_acquire("leader/Job/g1", a, TTL, now=NOW) is not None
    assert store.lease_acquire("leader/job/g1", b, TTL, now=NOW) is not None
    for key, holder in (("Indexer/g1", a), ("indexer/g1", b)):
        assert store.coord_publish(key, expected=0, members=[holder], count=1, now=NOW) == 1
    assert [t.lease for t in store.terms(lease="leader/Job")] == ["leader/Job/g1"]
    assert [g.worker_key for g in store.coord_generations(worker_key="indexer")] == [
        "indexer/g1"]


# --- values longer than their column ---------------------------------------------------------


def _over_long(store: SqlStore, kind: str, value: str, holder: Holder) -> None:
    if kind == "lease":
        store.lease_acquire(value, holder, TTL, now=NOW)
    elif kind == "node":
        sync(store, make_holder(value))
    else:
        claim(store, value, holder)


def _stored(store: SqlStore, kind: str) -> list[str]:
    if kind == "lease":
        return [lease.name for lease in store.leases(now=NOW)]
    if kind == "node":
        return [member.holder.node_id for member in store.members(now=NOW)]
    return [run.worker for run in store.cron_runs()]


@pytest.mark.parametrize(("kind", "value"), [
    pytest.param("lease", "x" * 256, id="lease-256"),
    pytest.param("lease", "y" * 255 + " ", id="lease-255-and-a-space"),
    pytest.param("node", "n" * 201, id="node-201"),
    pytest.param("cron", "w" * 101, id="cron-worker-101"),
])
def test_a_value_longer_than_its_column_is_refused_never_cut(store, a, kind, value):
    """The databases do not all refuse it themselves (SQLite keeps any length, MariaDB's
    INSERT IGNORE cuts it with a warning, PostgreSQL and MariaDB cut trailing spaces past
    the length): the store does, the same way on each."""
    with pytest.raises(StoreError, match="longer than the column"):
        _over_long(store, kind, value, a)
    assert _stored(store, kind) == []


def test_a_mariadb_store_session_runs_in_strict_mode(mariadb_url):
    store = SqlStore(mariadb_url)
    try:
        with store.engine.connect() as conn:
            mode = str(conn.execute(text("SELECT @@SESSION.sql_mode")).scalar_one())
    finally:
        store.close()
    assert "STRICT_ALL_TABLES" in mode.split(","), mode


# --- migration 0008 on MariaDB ---------------------------------------------------------------


@pytest.fixture
def at_0007(mariadb_url: str) -> Iterator[str]:
    """A MariaDB database whose schema is at revision 0007, in the server's collation."""
    migrate(mariadb_url, command.upgrade, "0007")
    yield mariadb_url


def execute(url: str, *statements: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


def collations(url: str) -> dict[str, set[str]]:
    """Each fs_* table's default collation and its string columns' collations."""
    found: dict[str, set[str]] = {}
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            for table, name in conn.execute(text(
                    "SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES"
                    " WHERE TABLE_SCHEMA = DATABASE()")):
                found.setdefault(table, set()).add(name)
            for table, name in conn.execute(text(
                    "SELECT TABLE_NAME, COLLATION_NAME FROM information_schema.COLUMNS"
                    " WHERE TABLE_SCHEMA = DATABASE() AND COLLATION_NAME IS NOT NULL")):
                found[table].add(name)
    finally:
        engine.dispose()
    return found


def upgraded(url: str) -> SqlStore:
    store = SqlStore(url)
    store.upgrade()
    return store


MERGED_HISTORY = (  # a 0007 fleet's rows, written where its collation merged the names
    # workers Job and job took turns on one lease row; its history has both spellings
    f"INSERT INTO fs_leases (name, term, expires_at) VALUES ('leader/Job', 2, {NOW - 10})",
    "INSERT INTO fs_terms (lease, term, holder_node, holder_group, holder_pid, holder_nonce,"
    f" acquired_at, ended_at, outcome) VALUES ('leader/Job', 1, 'node-a', 'EU', 1, 'nonce-a',"
    f" {NOW - 40}, {NOW - 30}, 'released'), ('leader/job', 2, 'node-b', 'eu', 2, 'nonce-b',"
    f" {NOW - 20}, {NOW - 10}, 'released')",
    "INSERT INTO fs_members (nonce, node_id, group_name, pid, started_at, heartbeat_at,"
    f" expires_at) VALUES ('nonce-a', 'node-a', 'EU', 1, {NOW}, {NOW}, {NOW + 3600}),"
    f" ('nonce-b', 'node-b', 'eu', 2, {NOW}, {NOW}, {NOW + 3600})",
    "INSERT INTO fs_cron_runs (worker, tick, slot, node_slot, holder_node, holder_group,"
    " holder_pid, holder_nonce, state, claimed_at, ended_at) VALUES"
    f" ('Tick', {NOW - 60}, 0, 0, 'node-a', 'EU', 1, 'nonce-a', 'succeeded', {NOW - 60},"
    f" {NOW - 59}), ('tick', {NOW - 60}, 1, 0, 'node-b', 'eu', 2, 'nonce-b', 'succeeded',"
    f" {NOW - 60}, {NOW - 59})",
    "INSERT INTO fs_coord_members (worker_key, nonce, node_id, group_name, pid, joined_at,"
    f" expires_at) VALUES ('Indexer', 'nonce-a', 'node-a', 'EU', 1, {NOW}, {NOW + 3600}),"
    f" ('indexer', 'nonce-b', 'node-b', 'eu', 2, {NOW}, {NOW + 3600})",
)


def test_upgrading_0007_reports_the_names_its_collation_merged_and_separates_them(
        at_0007, caplog, a, b):
    execute(at_0007, *MERGED_HISTORY)
    caplog.set_level(logging.INFO, logger="supervisor")
    store = upgraded(at_0007)
    try:
        warnings = {r.getMessage().split(" holds ")[0].removeprefix("schema upgrade: "):
                    r.getMessage() for r in caplog.records if r.levelno == logging.WARNING}
        assert sorted(warnings) == ["fs_coord_members.worker_key", "fs_cron_runs.worker",
                                    "fs_members.group_name", "fs_terms.lease"]
        lease = warnings["fs_terms.lease"]
        assert "'leader/Job' = 'leader/job'" in lease and "utf8mb4_general_ci" in lease
        assert "one lease" in lease and "from now on each has its own lease" in lease
        assert "'EU' = 'eu'" in warnings["fs_members.group_name"]
        assert "'Tick' = 'tick'" in warnings["fs_cron_runs.worker"]
        assert "'Indexer' = 'indexer'" in warnings["fs_coord_members.worker_key"]
        assert collations(at_0007) == {table: {COLLATION} for table in AT_HEAD}
        mine = store.lease_acquire("leader/Job", a, TTL, now=NOW)
        theirs = store.lease_acquire("leader/job", b, TTL, now=NOW)  # at the same instant
        assert mine is not None and mine.term == 3  # the row the two names shared
        assert theirs is not None and theirs.holder == b  # a lease of its own, from now on
        assert {lease.name: lease.holder for lease in store.leases(now=NOW)} == {
            "leader/Job": a, "leader/job": b}
        assert store.terms(lease="leader/job")[0].holder == b  # newest first
    finally:
        store.close()


def test_a_second_run_converts_and_reports_only_the_tables_left_in_the_old_collation(
        at_0007, caplog):
    execute(at_0007, *MERGED_HISTORY)
    upgraded(at_0007).close()
    # as after a conversion that stopped half way: one table back in the old collation
    execute(at_0007, "ALTER TABLE fs_cron_runs CONVERT TO CHARACTER SET utf8mb4"
                     " COLLATE utf8mb4_general_ci")
    migrate(at_0007, command.downgrade, "0007")  # leaves the tables as they are
    caplog.clear()
    caplog.set_level(logging.INFO, logger="supervisor")
    upgraded(at_0007).close()
    messages = [r.getMessage() for r in caplog.records]
    converted = [m for m in messages if " converted to " in m]
    assert len(converted) == 1, converted
    assert converted[0].startswith(f"schema upgrade: fs_cron_runs converted to {COLLATION} in ")
    warned = [m for m in messages if " holds names " in m]
    assert len(warned) == 1 and "fs_cron_runs.worker" in warned[0], warned
    assert collations(at_0007) == {table: {COLLATION} for table in AT_HEAD}
    upgraded(at_0007).close()  # at head: nothing to do
    assert len(caplog.records) == len(messages)


def test_an_old_servers_latin1_compact_schema_is_converted(at_0007, a, b):
    """Old MariaDB servers defaulted to latin1 and the COMPACT row format, whose keys end
    at 767 bytes: 255 utf8mb4 characters need 1020, so the conversion makes it DYNAMIC."""
    execute(at_0007, *(f"ALTER TABLE {table} CONVERT TO CHARACTER SET latin1,"
                       " ROW_FORMAT=COMPACT" for table in TABLES))
    store = upgraded(at_0007)
    try:
        assert collations(at_0007) == {table: {COLLATION} for table in AT_HEAD}
        long_name = "leader/" + "é" * 248  # 255 characters, 503 bytes
        assert store.lease_acquire(long_name, a, TTL, now=NOW) is not None
        assert store.lease_acquire(long_name[:-1] + "e", b, TTL, now=NOW) is not None
        assert {lease.name for lease in store.leases(now=NOW)} == {long_name,
                                                                   long_name[:-1] + "e"}
    finally:
        store.close()


def test_a_conversion_waits_out_a_long_transaction_on_its_table(at_0007, caplog):
    """The ALTER waits a bounded time for the table's metadata lock (writers queue behind a
    waiting ALTER), lets them through, and tries again until the transaction ends."""
    caplog.set_level(logging.INFO, logger="supervisor")
    waiting = threading.Event()  # the upgrade has said it waits for the blocker

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "fs_cron_runs is held by another transaction" in record.getMessage():
                waiting.set()

    seen = Seen()
    logging.getLogger("supervisor").addHandler(seen)
    engine = create_engine(at_0007)
    ended: list[float] = []

    def end_the_blocker() -> None:  # once the upgrade waits on it, however long that took
        waiting.wait(timeout=60.0)
        ended.append(time.monotonic())
        blocker.close()  # closing rolls back

    try:
        blocker = engine.connect()
        blocker.begin()
        blocker.execute(text("SELECT COUNT(*) FROM fs_cron_runs"))  # holds it until it ends
        ending = threading.Thread(target=end_the_blocker)
        ending.start()
        try:
            upgraded(at_0007).close()
        finally:
            ending.join()
        finished = time.monotonic()
    finally:
        engine.dispose()
        logging.getLogger("supervisor").removeHandler(seen)
    assert waiting.is_set(), [r.getMessage() for r in caplog.records]
    assert ended[0] <= finished < ended[0] + 30.0  # done only after the transaction ended
    assert collations(at_0007) == {table: {COLLATION} for table in AT_HEAD}
