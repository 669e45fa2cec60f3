"""The store conformance suite for fleet control: control_set, control_clear, control_state,
control_log, node_sync(control_since=, report=) and tick-level `skipped` records.

Every test runs on SQLite, PostgreSQL, MariaDB (and PgBouncer) and on MemoryStore; time is
pinned with `now=`.
"""

from __future__ import annotations

import pytest

from supervisor.errors import StoreRefused
from supervisor.store import CoordinationStore, Holder, NodeReport, SyncResult

pytestmark = pytest.mark.conformance

NOW = 1_800_000_000.0
TTL = 10.0
ACTOR = {"user": "alice", "host": "ops-1"}


def sync(store: CoordinationStore, holder: Holder, since: int | None, *,
         report: NodeReport | None = None, now: float = NOW) -> SyncResult:
    return store.node_sync(holder, held=[], wanted=[], ttl=TTL, control_since=since,
                           report=report, now=now)


def test_a_pause_stands_with_who_why_and_when(store: CoordinationStore) -> None:
    entry = store.control_set("pause", "billing", "", reason="migration", now=NOW, **ACTOR)
    assert (entry.kind, entry.target, entry.group, entry.reason) == (
        "pause", "billing", "", "migration")
    assert (entry.actor_user, entry.actor_host) == ("alice", "ops-1")
    assert entry.requested_at == pytest.approx(NOW, abs=1e-3)
    assert not entry.stop_running and entry.until is None
    state = store.control_state()
    assert state.entries == (entry,)
    assert state.version > 0


def test_the_same_request_again_replaces_it(store: CoordinationStore) -> None:
    store.control_set("pause", "billing", "eu", reason="one", now=NOW, **ACTOR)
    store.control_set("pause", "billing", "eu", reason="two", stop_running=True,
                      now=NOW + 1, **ACTOR)
    store.control_set("pause", "billing", "", reason="all", now=NOW + 2, **ACTOR)
    entries = store.control_state().entries
    assert [(e.group, e.reason, e.stop_running) for e in entries] == [
        ("", "all", False), ("eu", "two", True)]


def test_names_are_byte_exact(store: CoordinationStore) -> None:
    store.control_set("pause", "Job", "", reason="", now=NOW, **ACTOR)
    store.control_set("pause", "job", "", reason="", now=NOW, **ACTOR)
    store.control_set("pause", "x ", "", reason="", now=NOW, **ACTOR)
    store.control_set("pause", "x", "", reason="", now=NOW, **ACTOR)
    assert sorted(e.target for e in store.control_state().entries) == ["Job", "job", "x",
                                                                       "x "]
    assert store.control_clear("pause", "job", "", reason="", now=NOW, **ACTOR)
    assert sorted(e.target for e in store.control_state().entries) == ["Job", "x", "x "]


def test_clear_lifts_it_and_says_whether_one_stood(store: CoordinationStore) -> None:
    store.control_set("drain", "node-a", "", reason="kernel update", now=NOW, **ACTOR)
    assert store.control_clear("drain", "node-a", "", reason="done", now=NOW + 5, **ACTOR)
    assert store.control_state().entries == ()
    assert not store.control_clear("drain", "node-a", "", reason="again", now=NOW + 6,
                                   **ACTOR)


def test_a_handover_holds_out_until_now_plus_hold_out(store: CoordinationStore) -> None:
    entry = store.control_set("handover", "db-writer", "eu", reason="maintenance",
                              hold_out=20.0, holder_nonce="abc123", now=NOW, **ACTOR)
    assert entry.until == pytest.approx(NOW + 20.0, abs=1e-3)
    assert entry.holder_nonce == "abc123"


def test_every_action_is_logged_newest_first(store: CoordinationStore) -> None:
    store.control_set("pause", "billing", "", reason="migration", now=NOW, **ACTOR)
    store.control_clear("pause", "billing", "", reason="migrated", now=NOW + 1,
                        user="bob", host="ops-2")
    store.control_set("drain", "node-a", "", reason="", now=NOW + 2, **ACTOR)
    store.control_clear("drain", "node-a", "", reason="", now=NOW + 3, **ACTOR)
    log = store.control_log()
    assert [(a.action, a.target) for a in log] == [
        ("undrain", "node-a"), ("drain", "node-a"), ("resume", "billing"),
        ("pause", "billing")]
    assert (log[2].actor_user, log[2].actor_host, log[2].reason) == ("bob", "ops-2",
                                                                     "migrated")
    assert log[3].at == pytest.approx(NOW, abs=1e-3)
    assert len(store.control_log(limit=2)) == 2


def test_an_unknown_kind_is_a_value_error(store: CoordinationStore) -> None:
    with pytest.raises(ValueError, match="kill"):
        store.control_set("kill", "x", "", reason="", now=NOW, **ACTOR)


@pytest.mark.sql_only
def test_a_name_too_long_is_refused_and_nothing_written(database_url: str) -> None:
    from supervisor.store.sql import SqlStore

    store = SqlStore(database_url)
    try:
        store.upgrade()
        version = store.control_state().version
        with pytest.raises(StoreRefused):
            store.control_set("pause", "w" * 300, "", reason="", now=NOW, **ACTOR)
        assert store.control_state().version == version
        assert store.control_log() == []
    finally:
        store.close()


def test_the_sync_reads_the_state_only_when_its_version_moved(
        store: CoordinationStore, a: Holder) -> None:
    assert sync(store, a, None).control is None  # not asked
    first = sync(store, a, -1).control
    assert first is not None and first.entries == ()
    assert sync(store, a, first.version).control is None
    store.control_set("pause", "billing", "", reason="", now=NOW, **ACTOR)
    moved = sync(store, a, first.version).control
    assert moved is not None and moved.version > first.version
    assert [e.target for e in moved.entries] == ["billing"]
    assert sync(store, a, moved.version).control is None
    store.control_clear("pause", "billing", "", reason="", now=NOW, **ACTOR)
    cleared = sync(store, a, moved.version).control
    assert cleared is not None and cleared.entries == ()


def test_a_node_report_lands_in_its_membership_row(store: CoordinationStore, a: Holder,
                                                   b: Holder) -> None:
    sync(store, a, None, report=NodeReport("acknowledged", '{"w": "running"}'))
    sync(store, b, None)
    rows = {m.holder.node_id: m for m in store.members(now=NOW)}
    assert (rows["node-a"].drain, rows["node-a"].summary) == ("acknowledged",
                                                              '{"w": "running"}')
    assert (rows["node-b"].drain, rows["node-b"].summary) == ("", None)
    sync(store, a, None, now=NOW + 1)  # no report: left as it was
    assert store.members(now=NOW + 1)[0].drain == "acknowledged"
    sync(store, a, None, report=NodeReport("drained", None), now=NOW + 2)
    sync(store, a, None, report=NodeReport(), now=NOW + 3)
    assert store.members(now=NOW + 3)[0].drain == ""


def test_paused_ticks_are_recorded_skipped_and_never_claimed(store: CoordinationStore,
                                                             a: Holder) -> None:
    recorded = store.cron_record_missed("nightly", [NOW], grace=0.0, reason="paused",
                                        state="skipped", now=NOW)
    assert recorded == [NOW]
    outcome = store.cron_claim("nightly", NOW, holder=a, max_run=1, ttl=TTL, grace=30.0,
                               now=NOW + 1)
    assert outcome.run is None
    (record,) = store.cron_runs(worker="nightly")
    assert (record.state, record.slot, record.reason) == ("skipped", -1, "paused")
    # a second node recording the same tick writes nothing
    assert store.cron_record_missed("nightly", [NOW], grace=0.0, reason="paused",
                                    state="skipped", now=NOW + 1) == []
    with pytest.raises(ValueError, match="lost"):
        store.cron_record_missed("nightly", [NOW], grace=0.0, reason="", state="lost",
                                 now=NOW)
