"""The store conformance suite for cron triggers (`supervisor trigger`) and the children's
pids in the history: cron_trigger, cron_claim_trigger, cron_trigger_blocking,
node_sync(cron_workers=...), maintain, cron_finish(child_pid=...), lease_child_pid.

Runs on every database and on MemoryStore (through the protocol only). Time is pinned
with `now=` (a trigger is requested at the pinned instant), so nothing sleeps."""

from __future__ import annotations

import pytest

from supervisor.store import ClaimOutcome, CronRun, Holder
from tests.integration.stores import approx, make_holder

pytestmark = pytest.mark.conformance

NOW = 1_800_000_000.0
T = NOW  # a schedule tick due at NOW, the same instant a trigger is requested
TTL = 10.0
GRACE = 30.0
W = "nightly-report"
KEEP = 3600.0


def trigger(store, key: str = "k1", now: float = NOW, worker: str = W, reason: str = "why"):
    return store.cron_trigger(worker, key, actor_user="alice", actor_host="laptop",
                              reason=reason, grace=GRACE, now=now)


def claim_trigger(store, trigger_id: int, holder: Holder, now: float, *, max_run: int = 1,
                  max_per_node: int = 1, forbid: bool = False, replace: bool = False
                  ) -> ClaimOutcome:
    return store.cron_claim_trigger(trigger_id, holder=holder, max_run=max_run,
                                    max_per_node=max_per_node, ttl=TTL,
                                    forbid_overlap=forbid, replace_earlier=replace, now=now)


def must(outcome: ClaimOutcome) -> CronRun:
    assert outcome.result == "acquired" and outcome.run is not None, outcome
    return outcome.run


def claim_tick(store, holder: Holder, now: float, *, tick: float = T, max_run: int = 1,
               forbid: bool = False, replace: bool = False) -> ClaimOutcome:
    return store.cron_claim(W, tick, holder=holder, max_run=max_run, ttl=TTL, grace=GRACE,
                            forbid_overlap=forbid, replace_earlier=replace, now=now)


def pending(store, holder: Holder, now: float, workers=(W,)):
    return store.node_sync(holder, held=[], wanted=[], ttl=TTL, cron_workers=list(workers),
                           now=now).triggers


def test_a_trigger_is_recorded_with_who_asked_and_why_and_a_retried_key_creates_nothing(
        store):
    first = trigger(store, "key-1", reason="backfill after the migration")
    assert first.created
    got = first.trigger
    assert (got.worker, got.key, got.actor_user, got.actor_host, got.reason) == (
        W, "key-1", "alice", "laptop", "backfill after the migration")
    assert got.requested_at == approx(NOW)
    again = trigger(store, "key-1", now=NOW + 1, reason="retried")
    assert not again.created
    assert again.trigger.id == got.id and again.trigger.reason == "backfill after the migration"
    other = trigger(store, "key-2", now=NOW + 2)
    assert other.created and other.trigger.id > got.id
    # Keys are per worker: the same key on another worker is another trigger.
    assert trigger(store, "key-1", worker="other-job").created


def test_a_retried_key_never_runs_twice(store):
    a, b = make_holder("node-a"), make_holder("node-b")
    first = trigger(store, "once").trigger
    must(claim_trigger(store, first.id, a, NOW + 1))
    again = trigger(store, "once", now=NOW + 2)
    assert not again.created and again.trigger.id == first.id
    assert claim_trigger(store, first.id, b, NOW + 3).result == "full"
    runs = [r for r in store.cron_runs(worker=W) if r.slot >= 0]
    assert len(runs) == 1


def test_node_sync_delivers_open_triggers_of_the_workers_passed_only(store, a):
    one = trigger(store, "k1").trigger
    other = trigger(store, "k2", worker="other-job").trigger
    assert [t.id for t in pending(store, a, NOW + 1)] == [one.id]
    assert [t.id for t in pending(store, a, NOW + 1, [W, "other-job"])] == [one.id, other.id]
    assert pending(store, a, NOW + 1, []) == ()
    # past its grace it is no longer delivered
    assert pending(store, a, NOW + GRACE) == ()


def test_max_run_per_trigger_one_slot_per_node_and_then_closed(store, a, b, c):
    t = trigger(store).trigger
    first = must(claim_trigger(store, t.id, a, NOW + 0.5, max_run=2))
    assert first.trigger == t.id and first.tick == approx(NOW) and first.slot == 0
    assert claim_trigger(store, t.id, a, NOW + 0.6, max_run=2).result == "full"  # per node
    assert pending(store, c, NOW + 0.7) != ()  # one slot left: still open
    second = must(claim_trigger(store, t.id, b, NOW + 1, max_run=2))
    assert second.slot == 1 and second.token > first.token
    assert claim_trigger(store, t.id, c, NOW + 2, max_run=2).result == "full"
    assert pending(store, c, NOW + 3) == ()  # all slots taken: closed
    rows = [r for r in store.cron_runs(worker=W)]
    assert sorted((r.slot, r.holder) for r in rows) == [(0, a), (1, b)]
    for row in rows:
        assert row.trigger is not None and row.trigger.id == t.id
        assert row.trigger.actor_user == "alice" and row.trigger.reason == "why"
        assert row.tick == approx(NOW)


def test_max_per_node_lets_one_node_take_several_slots_of_a_trigger(store, a):
    t = trigger(store).trigger
    must(claim_trigger(store, t.id, a, NOW, max_run=2, max_per_node=2))
    must(claim_trigger(store, t.id, a, NOW, max_run=2, max_per_node=2))
    assert claim_trigger(store, t.id, a, NOW, max_run=2, max_per_node=2).result == "full"


def test_a_trigger_is_keyed_apart_from_a_schedule_tick_at_the_same_instant(store, a, b):
    t = trigger(store, now=T).trigger
    tick_run = must(claim_tick(store, a, T))
    trig_run = must(claim_trigger(store, t.id, a, T))  # same node, same instant, max_run 1
    assert tick_run.token != trig_run.token
    assert claim_tick(store, b, T).result == "full"  # the tick's one slot is the tick's
    assert trig_run.tick == approx(T) and tick_run.trigger is None
    recorded = store.cron_recorded(W, T - 100)
    assert recorded.first_tick == approx(T) and recorded.ticks == frozenset({T})
    # finishing one leaves the other running
    assert store.cron_finish(trig_run, "succeeded", exit_code=0, child_pid=4321, now=T + 1)
    rows = {r.token: r for r in store.cron_runs(worker=W)}
    assert rows[tick_run.token].state == "running" and rows[tick_run.token].trigger is None
    assert rows[trig_run.token].state == "succeeded"
    assert rows[trig_run.token].child_pid == 4321


def test_a_worker_with_only_triggered_runs_has_no_schedule_history(store, a):
    t = trigger(store).trigger
    must(claim_trigger(store, t.id, a, NOW))
    recorded = store.cron_recorded(W, NOW - KEEP)
    assert recorded.first_tick is None and recorded.ticks == frozenset()


def test_overlap_forbid_skips_a_trigger_while_a_tick_runs_and_a_tick_while_a_trigger_runs(
        store, a, b):
    must(claim_tick(store, a, T, forbid=True))
    t = trigger(store, now=T + 1).trigger
    assert claim_trigger(store, t.id, b, T + 2, forbid=True) == ClaimOutcome("overlap")
    assert pending(store, b, T + 3) == ()  # decided: skipped, closed
    [skipped] = [r for r in store.cron_runs(worker=W) if r.slot == -1]
    assert skipped.state == "skipped" and skipped.trigger is not None
    assert skipped.trigger.id == t.id
    # a triggered run going: the next schedule tick is skipped under forbid
    store2_trigger = trigger(store, "k2", now=T + 100).trigger
    run = must(claim_trigger(store, store2_trigger.id, a, T + 100, forbid=True))
    assert claim_tick(store, b, T + 105, tick=T + 105, forbid=True) == ClaimOutcome("overlap")
    assert store.cron_finish(run, "succeeded", exit_code=0, now=T + 106)
    assert must(claim_tick(store, b, T + 180, tick=T + 180, forbid=True))


def test_forbid_does_not_stop_the_other_slots_of_the_same_trigger(store, a, b):
    t = trigger(store).trigger
    must(claim_trigger(store, t.id, a, NOW, max_run=2, forbid=True))
    must(claim_trigger(store, t.id, b, NOW + 1, max_run=2, forbid=True))


def test_overlap_replace_stops_the_running_tick_and_a_later_tick_stops_the_trigger(
        store, a, b):
    tick_run = must(claim_tick(store, a, T, replace=True))
    t = trigger(store, now=T + 1).trigger
    outcome = claim_trigger(store, t.id, b, T + 2, replace=True)
    trig_run = must(outcome)
    assert outcome.replaced == (tick_run.token,)
    assert store.cron_trigger_blocking(W, t.id, now=T + 2) == 1
    sync = store.node_sync(a, held=[], wanted=[], ttl=TTL, runs=[tick_run], now=T + 3)
    assert sync.runs_stop == (tick_run.token,)
    assert store.cron_finish(tick_run, "stopped", now=T + 4)
    assert store.cron_trigger_blocking(W, t.id, now=T + 4) == 0
    later = claim_tick(store, a, T + 8, tick=T + 8, replace=True)
    assert must(later) and later.replaced == (trig_run.token,)


def test_overlap_allow_runs_beside_a_tick(store, a, b):
    must(claim_tick(store, a, T))
    t = trigger(store, now=T + 1).trigger
    must(claim_trigger(store, t.id, b, T + 2))


def test_a_trigger_nobody_ran_within_grace_is_recorded_missed_by_a_late_claim(store, a):
    t = trigger(store).trigger
    assert claim_trigger(store, t.id, a, NOW + GRACE) == ClaimOutcome("missed")
    assert claim_trigger(store, t.id, a, NOW + GRACE + 5) == ClaimOutcome("missed")
    rows = store.cron_runs(worker=W)
    assert [(r.state, r.slot) for r in rows] == [("missed", -1)]
    assert rows[0].trigger is not None and rows[0].trigger.id == t.id


def test_maintain_records_a_trigger_nobody_claimed_as_missed_once(store, a):
    t = trigger(store).trigger
    store.maintain(KEEP, now=NOW + GRACE - 1)
    assert store.cron_runs(worker=W) == []  # still inside its grace
    store.maintain(KEEP, now=NOW + GRACE + 1)
    store.maintain(KEEP, now=NOW + GRACE + 2)
    rows = store.cron_runs(worker=W)
    assert [(r.state, r.trigger.id if r.trigger else None) for r in rows] == [("missed", t.id)]
    assert store.cron_recorded(W, NOW - KEEP).first_tick is None


def test_maintain_does_not_record_a_trigger_that_ran_as_missed(store, a):
    t = trigger(store).trigger
    run = must(claim_trigger(store, t.id, a, NOW + 1, max_run=2))
    store.maintain(KEEP, now=NOW + GRACE + 1)
    rows = store.cron_runs(worker=W)
    assert [r.token for r in rows] == [run.token]


def test_a_triggered_run_is_renewed_and_finished_like_a_tick_run(store, a):
    t = trigger(store).trigger
    run = must(claim_trigger(store, t.id, a, NOW))
    sync = store.node_sync(a, held=[], wanted=[], ttl=TTL, runs=[run], now=NOW + 5)
    assert sync.runs_kept[run.token].expires_at == approx(NOW + 5 + TTL)
    assert sync.runs_kept[run.token].trigger == t.id
    assert store.cron_finish(run, "failed", exit_code=3, child_pid=99, now=NOW + 6)
    [row] = store.cron_runs(worker=W)
    assert (row.state, row.exit_code, row.child_pid) == ("failed", 3, 99)


def test_history_orders_a_triggered_run_by_its_request_time(store, a):
    must(claim_tick(store, a, T))
    t = trigger(store, now=T + 10).trigger
    must(claim_trigger(store, t.id, a, T + 10))
    t0 = trigger(store, "early", now=T - 100).trigger
    must(claim_trigger(store, t0.id, a, T - 100))
    rows = store.cron_runs(worker=W)
    assert [(r.trigger.id if r.trigger else None) for r in rows] == [t.id, None, t0.id]


def test_a_run_records_its_childs_pid_and_a_term_its_latest_childs(store, a, b):
    tick_run = must(claim_tick(store, a, T))
    assert store.cron_finish(tick_run, "succeeded", exit_code=0, child_pid=1234, now=T + 1)
    [row] = store.cron_runs(worker=W)
    assert row.child_pid == 1234 and row.holder is not None and row.holder.pid == a.pid
    store.lease_ensure(["leader-job"], now=T)
    lease = store.lease_acquire("leader-job", a, TTL, now=T)
    assert lease is not None
    [term] = store.terms(lease="leader-job")
    assert term.child_pid is None
    store.lease_child_pid(lease, 555)
    store.lease_child_pid(lease, 556)  # restarted: the latest
    stranger = type(lease)(lease.name, b, lease.term, lease.expires_at)
    store.lease_child_pid(stranger, 777)  # not its term: nothing
    [term] = store.terms(lease="leader-job")
    assert term.child_pid == 556 and term.holder.pid == a.pid


def test_old_triggers_are_pruned_after_keep(store, a):
    t = trigger(store).trigger
    must(claim_trigger(store, t.id, a, NOW))
    assert pending(store, a, NOW + 1) == ()
    store.maintain(KEEP, now=NOW + KEEP + GRACE + 10)
    # the key can be used again once the trigger is gone from the history
    assert trigger(store, now=NOW + KEEP + GRACE + 20).created


@pytest.mark.sql_only
@pytest.mark.parametrize("database_backend", ["sqlite", "postgresql", "mariadb"])
def test_a_trigger_and_a_tick_claimed_at_once_under_forbid_never_both_run(database_url):
    """Processes claim a tick and a trigger of one worker at the same instant, behind a
    barrier, on the real database clock: under overlap = forbid one of them runs, never
    both (the claims serialise on the worker's overlap key)."""
    from supervisor.store.sql import SqlStore
    from tests.integration import trigger_race
    from tests.integration.test_store import run_contenders

    rounds, per_kind = 12, 2
    store = SqlStore(database_url)
    try:
        store.upgrade()
        tick = float(int(store.db_now())) - 1.0  # due, well inside its grace
        plan = []
        for round_ in range(rounds):
            worker = f"race-{round_}"
            made = store.cron_trigger(worker, "k", actor_user="u", actor_host="h",
                                      reason=None, grace=600.0)
            plan.append((worker, tick, made.trigger.id))
    finally:
        store.close()
    args = [(database_url, i, plan, "tick" if i % 2 == 0 else "trigger")
            for i in range(2 * per_kind)]
    messages = run_contenders(trigger_race.claim, args, expected=len(args) * rounds,
                              within=150)
    for round_ in range(rounds):
        got = [(m[3], m[4]) for m in messages if m[2] == round_]
        acquired = [kind for kind, result in got if result == "acquired"]
        assert len(acquired) == 1, (round_, got)
