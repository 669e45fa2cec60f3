"""The store conformance suite for cron: claims, misfires, overlap, run leases and history.

Guarantees 6 and 9 of SPEC.md, as the store protocol (supervisor/store/__init__.py) states
them: cron_claim (overlap forbid and replace), cron_earlier_running, cron_finish, cron_runs,
cron_recorded, cron_record_missed, node_sync(runs=...) and maintain, and the migration that
added the stop request. Each test gets its own empty database on every backend
(tests/databases.py) and talks to SqlStore through the protocol only, except the
interleaving tests, which pause one store inside its transaction at a named step. Time is
pinned with `now=` wherever timing matters, so nothing sleeps; races run as competing
processes (tests/integration/cron_race.py) started together behind a barrier on the real
database clock.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Callable

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from supervisor.store import ClaimOutcome, CronRecorded, CronRun, CronRunRecord, Holder
from supervisor.store.sql import SqlStore
from tests.integration import cron_race
from tests.integration.stores import EPS, approx, make_holder
from tests.integration.test_store import run_contenders

pytestmark = pytest.mark.conformance  # tests using only `store` run on MemoryStore too

NOW = 1_800_000_000.0  # a pinned database time, epoch seconds
T = NOW  # the tick under test: due exactly at NOW
PERIOD = 60.0  # the schedule's period, for "the next tick"
TTL = 10.0  # a run's lease
GRACE = 30.0  # misfire_grace
W = "nightly-report"
KEEP = 3600.0


def claim(store: SqlStore, holder: Holder, now: float, *, tick: float = T, worker: str = W,
          max_run: int = 3, max_per_node: int = 1, ttl: float = TTL, grace: float = GRACE,
          forbid_overlap: bool = False, replace_earlier: bool = False) -> ClaimOutcome:
    return store.cron_claim(worker, tick, holder=holder, max_run=max_run,
                            max_per_node=max_per_node, ttl=ttl, grace=grace,
                            forbid_overlap=forbid_overlap, replace_earlier=replace_earlier,
                            now=now)


def must_claim(store: SqlStore, holder: Holder, now: float, **kw: object) -> CronRun:
    outcome = claim(store, holder, now, **kw)
    assert outcome.result == "acquired", f"{holder.node_id} at {now}: {outcome}"
    assert outcome.run is not None, outcome
    return outcome.run


def refused(store: SqlStore, holder: Holder, now: float, **kw: object) -> str:
    """Claim, expecting no run; return the result."""
    outcome = claim(store, holder, now, **kw)
    assert outcome.run is None, f"{holder.node_id} at {now} got a run: {outcome}"
    assert outcome.result != "acquired", outcome
    return outcome.result


def records(store: SqlStore, worker: str = W, tick: float | None = None) -> list[CronRunRecord]:
    rows = store.cron_runs(worker=worker, limit=1000)
    if tick is not None:
        rows = [row for row in rows if row.tick == approx(tick)]
    return rows


def record_of(store: SqlStore, run: CronRun) -> CronRunRecord:
    rows = [row for row in store.cron_runs(worker=run.worker, limit=1000)
            if row.token == run.token]
    assert len(rows) == 1, f"expected one record for token {run.token}, got {rows}"
    return rows[0]


# --- claims: due, within grace, slots --------------------------------------------------------


def test_a_claim_before_the_tick_is_early_and_records_nothing(store, a):
    assert claim(store, a, T - 30) == ClaimOutcome("early")
    assert claim(store, a, T - 0.001) == ClaimOutcome("early")
    assert store.cron_runs() == []
    run = must_claim(store, a, T)  # due exactly at the tick; early attempts took nothing
    assert run.slot == 0


def test_claims_take_slots_0_1_2_on_distinct_holders_then_the_tick_is_full(store, a, b, c, d):
    first = must_claim(store, a, T)
    assert (first.worker, first.holder, first.slot) == (W, a, 0)
    assert first.tick == approx(T)
    assert first.expires_at == approx(T + TTL)
    second = must_claim(store, b, T + 1)
    assert (second.holder, second.slot) == (b, 1)
    assert second.expires_at == approx(T + 1 + TTL)
    third = must_claim(store, c, T + GRACE - 0.001)  # the last instant inside the grace
    assert (third.holder, third.slot) == (c, 2)
    assert claim(store, d, T + 2) == ClaimOutcome("full")
    rows = records(store)
    assert sorted((r.slot, r.token, r.holder, r.state) for r in rows) == [
        (0, first.token, a, "running"), (1, second.token, b, "running"),
        (2, third.token, c, "running")]
    for row in rows:
        assert (row.worker, row.ended_at, row.exit_code) == (W, None, None)
        assert row.tick == approx(T)
    assert record_of(store, first).claimed_at == approx(T)
    assert record_of(store, second).claimed_at == approx(T + 1)


def test_a_full_tick_stays_full_for_every_further_node(store, a, b):
    must_claim(store, a, T, max_run=1)
    for i in range(5):
        assert claim(store, make_holder(f"late-{i}"), T + 1 + i, max_run=1).result == "full"
    assert claim(store, b, T + 10, max_run=1) == ClaimOutcome("full")
    assert len(records(store)) == 1


def test_at_the_end_of_the_grace_a_tick_is_missed_and_recorded_once(store, a, b, c):
    assert claim(store, a, T + GRACE) == ClaimOutcome("missed")  # now < tick + grace: exclusive
    assert claim(store, b, T + GRACE + 1) == ClaimOutcome("missed")
    assert claim(store, c, T + GRACE + 3600) == ClaimOutcome("missed")
    assert claim(store, a, T + GRACE + 2) == ClaimOutcome("missed")
    rows = records(store)
    assert len(rows) == 1, f"one 'missed' record for the tick, however many tried: {rows}"
    [missed] = rows
    assert (missed.worker, missed.state, missed.slot) == (W, "missed", -1)
    assert missed.tick == approx(T)
    assert missed.exit_code is None


def test_a_late_claimer_does_not_record_a_tick_that_ran_as_missed(store, a, b):
    run = must_claim(store, a, T)
    refused(store, b, T + GRACE)
    refused(store, b, T + GRACE + 100)
    rows = records(store)
    assert [(r.token, r.state) for r in rows] == [(run.token, "running")], rows


def test_a_node_holding_max_per_node_gets_full_even_with_slots_left(store, a, b):
    run = must_claim(store, a, T)
    assert claim(store, a, T + 1) == ClaimOutcome("full")
    assert claim(store, a, T + 2, max_per_node=1) == ClaimOutcome("full")
    other = must_claim(store, b, T + 3)
    assert other.slot == 1
    assert {r.token for r in records(store)} == {run.token, other.token}


def test_two_supervisors_on_one_node_count_as_one_node(store, a, b):
    must_claim(store, a, T)
    twin = Holder(node_id=a.node_id, group=a.group, pid=a.pid + 1, nonce=secrets.token_hex(8))
    assert claim(store, twin, T + 1) == ClaimOutcome("full")
    assert must_claim(store, b, T + 2).slot == 1


def test_with_max_per_node_2_one_node_takes_two_slots(store, a, b, c):
    first = must_claim(store, a, T, max_per_node=2)
    second = must_claim(store, a, T + 1, max_per_node=2)
    assert {(first.slot, first.holder), (second.slot, second.holder)} == {(0, a), (1, a)}
    assert claim(store, a, T + 2, max_per_node=2) == ClaimOutcome("full")
    third = must_claim(store, b, T + 3, max_per_node=2)
    assert third.slot == 2
    assert claim(store, c, T + 4, max_per_node=2) == ClaimOutcome("full")
    assert sorted(r.slot for r in records(store)) == [0, 1, 2]


def test_max_per_node_counts_per_tick_and_per_worker(store, a):
    must_claim(store, a, T)
    nxt = must_claim(store, a, T + PERIOD, tick=T + PERIOD)  # the first run may still go on
    assert nxt.slot == 0
    other = must_claim(store, a, T + 1, worker="other-job")
    assert (other.worker, other.slot) == ("other-job", 0)


def test_tokens_strictly_increase_across_claims_ticks_workers_and_holders(database_url, store,
                                                                          a, b, c):
    tokens: list[int] = []
    for step in range(4):
        tick = T + step * PERIOD
        for holder in (a, b, c):
            tokens.append(must_claim(store, holder, tick + 1, tick=tick, max_run=3).token)
        refused(store, make_holder("spare"), tick + 2, tick=tick)  # full: no token taken
        tokens.append(must_claim(store, a, tick + 3, tick=tick, worker="other-job").token)
    assert refused(store, a, T + 10 * PERIOD, tick=T + 5 * PERIOD) == "missed"
    assert all(x < y for x, y in itertools.pairwise(tokens)), tokens
    restarted = SqlStore(database_url)  # a restart of the fleet keeps the token growing
    try:
        last = must_claim(restarted, b, T + 20 * PERIOD, tick=T + 20 * PERIOD)
    finally:
        restarted.close()
    assert last.token > tokens[-1]


def test_tokens_keep_growing_after_all_history_is_pruned(store, a, b):
    run = must_claim(store, a, T)
    assert store.cron_finish(run, "succeeded", exit_code=0, now=T + 1)
    store.maintain(KEEP, now=T + 10 * KEEP)
    assert store.cron_runs() == []  # every row is gone: nothing left to count up from
    later = T + 10 * KEEP
    nxt = must_claim(store, b, later, tick=later)
    assert nxt.token > run.token, (
        f"fencing token reused after pruning: {nxt.token} after {run.token}")


# --- overlap -------------------------------------------------------------------------------


def test_forbid_overlap_skips_the_next_tick_while_a_run_goes_on_and_records_it_once(
        store, a, b, c):
    long = 3 * PERIOD  # the run of T is still unexpired at T + PERIOD
    first = must_claim(store, a, T, ttl=long)
    nxt = T + PERIOD
    assert claim(store, b, nxt, tick=nxt, forbid_overlap=True) == ClaimOutcome("overlap")
    assert claim(store, c, nxt + 1, tick=nxt, forbid_overlap=True) == ClaimOutcome("overlap")
    assert refused(store, a, nxt + 2, tick=nxt, forbid_overlap=True) == "overlap"
    skipped = records(store, tick=nxt)
    assert len(skipped) == 1, f"one 'skipped' record for the tick: {skipped}"
    assert (skipped[0].state, skipped[0].slot) == ("skipped", -1)
    assert record_of(store, first).state == "running"


def test_without_forbid_overlap_the_next_tick_runs_alongside(store, a, b):
    must_claim(store, a, T, ttl=3 * PERIOD)
    nxt = T + PERIOD
    run = must_claim(store, b, nxt, tick=nxt)
    assert run.slot == 0
    assert [r.state for r in records(store, tick=nxt)] == ["running"]


def test_after_the_run_finishes_a_forbid_overlap_claim_succeeds(store, a, b):
    first = must_claim(store, a, T, ttl=3 * PERIOD)
    assert store.cron_finish(first, "succeeded", exit_code=0, now=T + PERIOD - 1)
    nxt = T + PERIOD
    run = must_claim(store, b, nxt, tick=nxt, forbid_overlap=True)
    assert [r.state for r in records(store, tick=nxt)] == ["running"]
    assert run.token > first.token


def test_an_expired_run_of_a_dead_node_does_not_block_forbid_overlap(store, a, b):
    must_claim(store, a, T, ttl=TTL)  # never renewed: expired at T + TTL
    nxt = T + PERIOD
    must_claim(store, b, nxt, tick=nxt, forbid_overlap=True)


def test_a_tick_skipped_for_overlap_is_not_run_after_the_earlier_run_ends(store, a, b, c):
    # The fleet's decision on a tick is one: once recorded skipped, a node that comes a moment
    # later (after the earlier run ended, still inside the grace) does not run it after all.
    first = must_claim(store, a, T, ttl=3 * PERIOD)
    nxt = T + PERIOD
    assert claim(store, b, nxt, tick=nxt, forbid_overlap=True) == ClaimOutcome("overlap")
    assert store.cron_finish(first, "succeeded", exit_code=0, now=nxt + 1)
    late = claim(store, c, nxt + 2, tick=nxt, forbid_overlap=True)
    states = sorted(r.state for r in records(store, tick=nxt))
    assert late.result != "acquired" and states == ["skipped"], (
        f"tick recorded skipped, then claimed: {late}; records {states}")


def test_forbid_overlap_is_per_worker_and_not_against_slots_of_the_same_tick(store, a, b):
    must_claim(store, a, T, ttl=3 * PERIOD, max_run=2)
    same_tick = must_claim(store, b, T + 1, ttl=3 * PERIOD, max_run=2, forbid_overlap=True)
    assert same_tick.slot == 1
    must_claim(store, a, T + 2, worker="other-job", forbid_overlap=True)


# --- overlap = replace ---------------------------------------------------------------------


def test_replace_asks_only_earlier_running_unexpired_runs_of_the_worker_to_stop(
        store, a, b, c, d):
    long = 5 * PERIOD  # still unexpired two ticks later
    going = must_claim(store, a, T, ttl=long, max_run=2)
    done = must_claim(store, b, T, ttl=long, max_run=2)
    assert store.cron_finish(done, "succeeded", exit_code=0, now=T + 1)
    expired = must_claim(store, c, T + PERIOD, tick=T + PERIOD, ttl=TTL)  # gone at +TTL
    other_job = must_claim(store, a, T, worker="other-job", ttl=long)
    nxt = T + 2 * PERIOD
    same_tick = must_claim(store, b, nxt, tick=nxt, ttl=long, max_run=2)  # not earlier
    outcome = claim(store, d, nxt + 1, tick=nxt, ttl=long, max_run=2, replace_earlier=True)
    assert outcome.result == "acquired" and outcome.run is not None, outcome
    assert (outcome.run.slot, outcome.replaced) == (1, (going.token,))
    # asked, not ended: the run stays running until its holder stops it (or it expires)
    assert record_of(store, going).state == "running"
    assert [record_of(store, run).state for run in (done, expired, other_job, same_tick)] == [
        "succeeded", "running", "running", "running"]  # expired: running until maintain
    # node_sync tells the holder, and only the holder, and only for that run
    mine = store.node_sync(a, held=[], wanted=[], ttl=long, runs=[going, other_job],
                           now=nxt + 2)
    assert set(mine.runs_kept) == {going.token, other_job.token}
    assert (mine.runs_stop, mine.runs_lost) == ((going.token,), ())
    theirs = store.node_sync(b, held=[], wanted=[], ttl=long, runs=[same_tick], now=nxt + 2)
    assert (set(theirs.runs_kept), theirs.runs_stop) == ({same_tick.token}, ())
    gone = store.node_sync(c, held=[], wanted=[], ttl=TTL, runs=[expired], now=nxt + 2)
    assert (gone.runs_lost, gone.runs_stop) == ((expired.token,), ())
    again = store.node_sync(a, held=[], wanted=[], ttl=long,
                            runs=list(mine.runs_kept.values()), now=nxt + 3)
    assert again.runs_stop == (going.token,)  # the request stands until the run ends
    assert store.cron_finish(going, "stopped", reason="replaced by a later tick", now=nxt + 4)
    ended = store.node_sync(a, held=[], wanted=[], ttl=long, runs=[going, other_job],
                            now=nxt + 5)
    assert (ended.runs_lost, ended.runs_stop) == ((going.token,), ())


def test_node_sync_reports_a_stop_to_no_one_but_the_holder(store, a, b):
    going = must_claim(store, a, T, ttl=3 * PERIOD)
    nxt = T + PERIOD
    assert claim(store, b, nxt, tick=nxt, replace_earlier=True).replaced == (going.token,)
    forged = CronRun(token=going.token, worker=going.worker, tick=going.tick, slot=going.slot,
                     holder=b, expires_at=going.expires_at)
    result = store.node_sync(b, held=[], wanted=[], ttl=TTL, runs=[forged], now=nxt + 1)
    assert (result.runs_kept, result.runs_lost, result.runs_stop) == ({}, (going.token,), ())
    owner = store.node_sync(a, held=[], wanted=[], ttl=TTL, runs=[going], now=nxt + 1)
    assert owner.runs_stop == (going.token,)


def test_a_replacing_claim_with_nothing_earlier_running_replaces_nothing(store, a, b):
    first = must_claim(store, a, T, ttl=3 * PERIOD)
    assert store.cron_finish(first, "succeeded", exit_code=0, now=T + 1)
    nxt = T + PERIOD
    outcome = claim(store, b, nxt, tick=nxt, replace_earlier=True)
    assert (outcome.result, outcome.replaced) == ("acquired", ())
    plain = claim(store, a, nxt + 1, tick=nxt)  # without replace: never reports any
    assert (plain.result, plain.replaced) == ("acquired", ())
    result = store.node_sync(b, held=[], wanted=[], ttl=TTL, runs=[outcome.run], now=nxt + 2)
    assert result.runs_stop == ()


def test_every_replacing_claimer_of_the_tick_asks_the_earlier_runs_to_stop(store, a, b, c):
    going = must_claim(store, a, T, ttl=3 * PERIOD)
    nxt = T + PERIOD
    first = claim(store, b, nxt, tick=nxt, replace_earlier=True)
    second = claim(store, c, nxt + 1, tick=nxt, replace_earlier=True)
    assert (first.replaced, second.replaced) == ((going.token,), (going.token,))
    assert sorted(r.slot for r in records(store, tick=nxt)) == [0, 1]


def test_cron_earlier_running_counts_until_the_replaced_runs_are_stopped(store, a, b, c):
    long = 3 * PERIOD
    stays = must_claim(store, a, T, ttl=long, max_run=2)
    dies = must_claim(store, b, T, ttl=TTL, max_run=2)  # its node never renews it
    nxt = T + PERIOD
    assert store.cron_earlier_running(W, nxt, now=T + 5) == 2
    assert store.cron_earlier_running(W, nxt, now=T + TTL) == 1  # expires_at <= now: gone
    assert store.cron_earlier_running(W, T, now=T + 5) == 0  # the same tick is not earlier
    assert store.cron_earlier_running("other-job", nxt, now=T + 5) == 0
    new = claim(store, c, nxt, tick=nxt, ttl=long, replace_earlier=True)
    assert new.replaced == (stays.token,)
    assert store.cron_earlier_running(W, nxt, now=nxt) == 1  # the new run waits
    assert store.cron_earlier_running(W, nxt + PERIOD, now=nxt) == 2  # and counts, later on
    assert store.cron_finish(stays, "stopped", reason="replaced", now=nxt + 1)
    assert store.cron_earlier_running(W, nxt, now=nxt + 1) == 0  # start the child now
    assert record_of(store, dies).state == "running"  # by its row; by its expiry, gone


def test_cron_earlier_running_drops_to_0_when_a_replaced_run_expires(store, a, b):
    going = must_claim(store, a, T, ttl=PERIOD + TTL)  # its node dies, never renews
    nxt = T + PERIOD
    assert claim(store, b, nxt, tick=nxt, replace_earlier=True).replaced == (going.token,)
    assert store.cron_earlier_running(W, nxt, now=going.expires_at - 0.001) == 1
    assert store.cron_earlier_running(W, nxt, now=going.expires_at) == 0
    store.maintain(KEEP, now=going.expires_at)
    assert record_of(store, going).state == "lost"
    assert store.cron_earlier_running(W, nxt, now=going.expires_at) == 0


def test_forbid_and_replace_at_once_is_a_value_error(store, a):
    with pytest.raises(ValueError):
        claim(store, a, T, forbid_overlap=True, replace_earlier=True)
    assert store.cron_runs() == []


def test_replacing_an_earlier_tick_after_a_later_one_ran_is_superseded(store, a, b, c):
    wide = 3 * PERIOD  # a grace wider than the period: two ticks claimable at once
    nxt = T + PERIOD
    first = must_claim(store, a, T, grace=wide, max_run=2, ttl=3 * PERIOD)
    later = claim(store, b, nxt, tick=nxt, grace=wide, replace_earlier=True)
    assert later.replaced == (first.token,)
    # a late node must not start what a later tick has replaced: the run of nxt would
    # wait for it, and nobody would ask it to stop
    assert refused(store, c, nxt + 1, grace=wide, max_run=2, replace_earlier=True) == "overlap"
    assert [r.token for r in records(store, tick=T)] == [first.token]  # ran: no skip record
    older = T - PERIOD  # nobody ran it: recorded skipped, once, and final
    assert refused(store, c, nxt + 2, tick=older, grace=wide, replace_earlier=True) == "overlap"
    assert refused(store, a, nxt + 3, tick=older, grace=wide) == "overlap"
    assert [(r.state, r.slot) for r in records(store, tick=older)] == [("skipped", -1)]


# --- cron_finish ---------------------------------------------------------------------------


def test_cron_finish_records_state_exit_code_reason_and_end(store, a, b, c):
    ok = must_claim(store, a, T, ttl=PERIOD)
    bad = must_claim(store, b, T, ttl=PERIOD)
    slow = must_claim(store, c, T, ttl=PERIOD)
    assert store.cron_finish(ok, "succeeded", exit_code=0, now=T + 5) is True
    assert store.cron_finish(bad, "failed", exit_code=3, reason="exit code 3", now=T + 6) is True
    assert store.cron_finish(slow, "timed_out", exit_code=-9, reason="timeout 30s",
                             now=T + 7) is True
    got = {token: record_of(store, run) for token, run in
           ((ok.token, ok), (bad.token, bad), (slow.token, slow))}
    assert (got[ok.token].state, got[ok.token].exit_code) == ("succeeded", 0)
    assert got[ok.token].ended_at == approx(T + 5)
    assert (got[bad.token].state, got[bad.token].exit_code, got[bad.token].reason) == (
        "failed", 3, "exit code 3")
    assert got[bad.token].ended_at == approx(T + 6)
    assert (got[slow.token].state, got[slow.token].exit_code, got[slow.token].reason) == (
        "timed_out", -9, "timeout 30s")
    assert got[slow.token].ended_at == approx(T + 7)
    for run in (ok, bad, slow):
        assert got[run.token].holder == run.holder
        assert got[run.token].claimed_at == approx(T)


def test_a_second_finish_returns_false_and_changes_nothing(store, a):
    run = must_claim(store, a, T)
    assert store.cron_finish(run, "failed", exit_code=1, reason="first", now=T + 1) is True
    assert store.cron_finish(run, "succeeded", exit_code=0, reason="second", now=T + 2) is False
    row = record_of(store, run)
    assert (row.state, row.exit_code, row.reason) == ("failed", 1, "first")
    assert row.ended_at == approx(T + 1)


def test_finishing_a_run_that_maintain_marked_lost_returns_false_and_keeps_lost(store, a):
    run = must_claim(store, a, T)
    store.maintain(KEEP, now=T + TTL)
    assert record_of(store, run).state == "lost"
    assert store.cron_finish(run, "succeeded", exit_code=0, now=T + TTL + 1) is False
    row = record_of(store, run)
    assert row.state == "lost"
    assert row.exit_code is None


def test_nobody_but_the_holder_finishes_a_run(store, a, b):
    run = must_claim(store, a, T)
    forged = CronRun(token=run.token, worker=run.worker, tick=run.tick, slot=run.slot,
                     holder=b, expires_at=run.expires_at)
    assert store.cron_finish(forged, "failed", exit_code=1, now=T + 1) is False
    ghost = CronRun(token=run.token + 1000, worker=W, tick=T, slot=0, holder=a,
                    expires_at=T + TTL)
    assert store.cron_finish(ghost, "succeeded", exit_code=0, now=T + 1) is False
    assert record_of(store, run).state == "running"
    assert store.cron_finish(run, "stopped", reason="supervisor stopping", now=T + 2) is True
    assert record_of(store, run).state == "stopped"


# --- node_sync renews runs -----------------------------------------------------------------


def test_node_sync_renews_running_runs(store, a):
    one = must_claim(store, a, T)
    two = must_claim(store, a, T + 1, worker="other-job")
    result = store.node_sync(a, held=[], wanted=[], ttl=TTL, runs=[one, two], now=T + 5)
    assert result.runs_lost == ()
    assert set(result.runs_kept) == {one.token, two.token}
    for run in (one, two):
        kept = result.runs_kept[run.token]
        assert (kept.token, kept.worker, kept.slot, kept.holder) == (
            run.token, run.worker, run.slot, a)
        assert kept.tick == approx(run.tick)
        assert kept.expires_at == approx(T + 5 + TTL)
    # the renewal is in the database: past the old expiry the runs are neither lost...
    store.maintain(KEEP, now=T + TTL + 2)
    assert record_of(store, one).state == "running"
    assert record_of(store, two).state == "running"
    # ...nor refused on the next renewal, just before the new expiry
    again = store.node_sync(a, held=[], wanted=[], ttl=TTL,
                            runs=list(result.runs_kept.values()), now=T + 5 + TTL - 0.001)
    assert set(again.runs_kept) == {one.token, two.token}
    assert again.runs_lost == ()


def test_node_sync_reports_a_run_past_its_expiry_as_lost(store, a):
    kept = must_claim(store, a, T + 5, tick=T + 5)
    late = must_claim(store, a, T)  # expires at T + TTL
    result = store.node_sync(a, held=[], wanted=[], ttl=TTL, runs=[kept, late], now=T + TTL)
    assert result.runs_lost == (late.token,)
    assert set(result.runs_kept) == {kept.token}
    # and it is not resurrected: its next renewal is refused too
    after = store.node_sync(a, held=[], wanted=[], ttl=TTL, runs=[late], now=T + TTL + 1)
    assert (after.runs_kept, after.runs_lost) == ({}, (late.token,))


def test_node_sync_reports_a_finished_run_as_lost(store, a):
    run = must_claim(store, a, T)
    assert store.cron_finish(run, "succeeded", exit_code=0, now=T + 1)
    result = store.node_sync(a, held=[], wanted=[], ttl=TTL, runs=[run], now=T + 2)
    assert (result.runs_kept, result.runs_lost) == ({}, (run.token,))
    assert record_of(store, run).state == "succeeded"


def test_node_sync_does_not_renew_another_holders_run(store, a, b):
    run = must_claim(store, a, T)
    forged = CronRun(token=run.token, worker=run.worker, tick=run.tick, slot=run.slot,
                     holder=b, expires_at=run.expires_at)
    result = store.node_sync(b, held=[], wanted=[], ttl=TTL, runs=[forged], now=T + 5)
    assert (result.runs_kept, result.runs_lost) == ({}, (run.token,))
    store.maintain(KEEP, now=T + TTL)  # a's run was not extended by b's sync
    assert record_of(store, run).state == "lost"


def test_node_sync_renews_runs_and_leases_in_one_call(store, a):
    store.lease_ensure(["leader"])
    run = must_claim(store, a, T)
    result = store.node_sync(a, held=[], wanted=["leader"], ttl=TTL, runs=[run], now=T + 5)
    assert set(result.acquired) == {"leader"}
    assert set(result.runs_kept) == {run.token}
    assert [m.holder for m in store.members(now=T + 6)] == [a]


# --- maintain: lost runs and pruning -------------------------------------------------------


def test_maintain_marks_runs_whose_holder_stopped_renewing_lost(store, a, b):
    dead = must_claim(store, a, T)  # expires at T + TTL
    alive = must_claim(store, b, T)
    store.maintain(KEEP, now=T + TTL - 0.001)
    assert record_of(store, dead).state == "running"
    renewed = store.node_sync(b, held=[], wanted=[], ttl=TTL, runs=[alive], now=T + TTL - 1)
    assert set(renewed.runs_kept) == {alive.token}
    store.maintain(KEEP, now=T + TTL)  # expires_at <= now: expired
    row = record_of(store, dead)
    assert row.state == "lost"
    assert row.ended_at is not None
    assert T <= row.ended_at <= T + TTL + EPS
    assert record_of(store, alive).state == "running"
    store.maintain(KEEP, now=T + 2 * TTL)
    assert record_of(store, alive).state == "lost"  # never left running for ever


def test_maintain_prunes_ended_runs_older_than_keep_but_never_a_running_one(store, a, b, c):
    keep = 100.0
    done = must_claim(store, a, T)
    assert store.cron_finish(done, "succeeded", exit_code=0, now=T + 1)
    running = must_claim(store, b, T, ttl=100 * keep)  # still running long after keep
    assert claim(store, c, T + GRACE, tick=T - PERIOD) == ClaimOutcome("missed")
    store.maintain(keep, now=T + 1 + keep / 2)
    assert done.token in {r.token for r in records(store)}  # ended keep/2 ago: kept
    store.maintain(keep, now=T + 10 * keep)
    assert {r.token for r in records(store, tick=T)} == {running.token}
    assert record_of(store, running).state == "running"
    assert records(store, tick=T - PERIOD) == []  # the old missed record is pruned too
    store.maintain(keep, now=T + 99 * keep)
    assert record_of(store, running).state == "running"


def test_maintain_prunes_lost_runs_after_keep(store, a):
    run = must_claim(store, a, T)
    store.maintain(KEEP, now=T + TTL)
    assert record_of(store, run).state == "lost"
    store.maintain(KEEP, now=T + TTL + KEEP / 2)
    assert record_of(store, run).state == "lost"
    store.maintain(KEEP, now=T + TTL + 2 * KEEP)
    assert records(store) == []


def test_maintain_deletes_ended_runs_in_bounded_batches(store):
    for i in range(5):
        run = must_claim(store, make_holder(f"n{i}"), T + i, tick=T + i)
        assert store.cron_finish(run, "succeeded", exit_code=0, now=T + i + 1)
    store.maintain(KEEP, now=T + 10 * KEEP, batch=2)
    left = len(records(store))
    assert 3 <= left < 5, f"batch=2 deleted {5 - left} of 5 old runs"
    for _ in range(5):
        store.maintain(KEEP, now=T + 10 * KEEP, batch=2)
    assert records(store) == []


# --- history -------------------------------------------------------------------------------


def test_cron_runs_are_newest_tick_first_and_limited(store, a):
    wide = 10 * PERIOD  # a grace wide enough to claim older ticks out of order
    ticks = [T + 2 * PERIOD, T, T + PERIOD]  # claimed in this order, by the same clock
    for tick in ticks:
        must_claim(store, a, T + 2 * PERIOD, tick=tick, grace=wide)
    assert claim(store, a, T + 3 * PERIOD + GRACE, tick=T + 3 * PERIOD) == ClaimOutcome("missed")
    order = [T + 3 * PERIOD, T + 2 * PERIOD, T + PERIOD, T]
    assert [r.tick for r in store.cron_runs(worker=W)] == [approx(t) for t in order]
    assert [r.tick for r in store.cron_runs(worker=W, limit=2)] == [approx(t) for t in order[:2]]
    assert [r.tick for r in store.cron_runs(limit=1)] == [approx(order[0])]


def test_cron_runs_without_a_worker_show_every_worker(store, a):
    must_claim(store, a, T, worker="one")
    must_claim(store, a, T + 1, tick=T + 1, worker="two")
    assert [(r.worker, r.tick) for r in store.cron_runs()] == [
        ("two", approx(T + 1)), ("one", approx(T))]


def test_cron_runs_filter_by_worker_literally(store, a):
    for name in ("axb", "a_b", "a.b", "a-b", "ab", "a_bc"):
        must_claim(store, a, T, worker=name)
    assert [r.worker for r in store.cron_runs(worker="a_b")] == ["a_b"]
    assert [r.worker for r in store.cron_runs(worker="axb")] == ["axb"]
    assert [r.worker for r in store.cron_runs(worker="a.b")] == ["a.b"]
    assert store.cron_runs(worker="a") == []
    assert store.cron_runs(worker="a%") == []
    assert store.cron_runs(worker="nobody") == []


# --- cron_recorded and cron_record_missed --------------------------------------------------


def test_cron_recorded_of_a_worker_without_rows_is_empty(store, a):
    must_claim(store, a, T, worker="other-job")
    assert store.cron_recorded(W, since=0.0) == CronRecorded(first_tick=None,
                                                             ticks=frozenset())


def test_cron_recorded_gives_the_first_tick_and_every_tick_with_a_row_after_since(
        store, a, b):
    wide = 10 * PERIOD
    odd = T + PERIOD + 0.25  # ticks are instants, not whole seconds
    must_claim(store, a, T, grace=wide, max_run=2)
    must_claim(store, b, T, grace=wide, max_run=2)  # two runs, one tick
    must_claim(store, a, odd, tick=odd, grace=wide)
    assert claim(store, a, T + 4 * PERIOD, tick=T + 2 * PERIOD) == ClaimOutcome("missed")
    must_claim(store, a, T + 3 * PERIOD, tick=T + 3 * PERIOD - 1, ttl=1000 * PERIOD,
               grace=wide)
    assert refused(store, b, T + 3 * PERIOD, tick=T + 3 * PERIOD,
                   forbid_overlap=True) == "overlap"  # skipped
    must_claim(store, a, T - PERIOD, tick=T - PERIOD, worker="other-job")
    got = store.cron_recorded(W, since=T)  # tick > since: T itself is not after it
    assert got.first_tick == T
    assert got.ticks == frozenset({odd, T + 2 * PERIOD, T + 3 * PERIOD - 1, T + 3 * PERIOD})
    assert store.cron_recorded(W, since=T - 0.001).ticks == got.ticks | {T}
    assert store.cron_recorded(W, since=T + 4 * PERIOD) == CronRecorded(T, frozenset())
    store.maintain(1.0, now=T + 100 * PERIOD)  # history pruned: the first tick moves on
    assert store.cron_recorded(W, since=0.0).first_tick == T + 3 * PERIOD - 1  # still going


def test_record_missed_records_ticks_past_grace_and_leaves_the_rest_alone(store, a, b):
    now = T + 10 * PERIOD
    ran = now - 5 * PERIOD
    skipped = now - 4 * PERIOD
    untouched = now - 3 * PERIOD
    edge = now - GRACE  # tick + grace <= now: past grace, as cron_claim judges it
    in_grace = now - GRACE + 0.5
    not_due = now + PERIOD
    run = must_claim(store, a, ran, tick=ran, ttl=10 * PERIOD)
    assert refused(store, b, skipped, tick=skipped, forbid_overlap=True) == "overlap"
    asked = [not_due, in_grace, edge, untouched, skipped, ran, untouched]
    got = store.cron_record_missed(W, asked, grace=GRACE, reason="down 10 minutes", now=now)
    assert got == [untouched, edge]
    assert [(r.token, r.state) for r in records(store, tick=ran)] == [(run.token, "running")]
    assert [(r.state, r.slot) for r in records(store, tick=skipped)] == [("skipped", -1)]
    for tick in (untouched, edge):
        [missed] = records(store, tick=tick)
        assert (missed.worker, missed.state, missed.slot, missed.holder) == (
            W, "missed", -1, None)
        assert (missed.reason, missed.exit_code) == ("down 10 minutes", None)
        assert missed.claimed_at == approx(now)
        assert missed.ended_at == approx(now)
    assert records(store, tick=in_grace) == [] and records(store, tick=not_due) == []
    assert must_claim(store, a, now, tick=in_grace).slot == 0  # left alone: still claimable
    assert store.cron_record_missed(W, asked, grace=GRACE, reason="again", now=now + 1) == []
    assert len(records(store, tick=edge)) == 1


def test_a_tick_recorded_missed_is_never_claimed(store, a):
    now = T + GRACE
    assert store.cron_record_missed(W, [T], grace=GRACE, reason="outage", now=now) == [T]
    assert claim(store, a, now + 1) == ClaimOutcome("missed")
    # even by a claimer whose clock still has it inside the grace: the record is final
    assert claim(store, a, T + 1) == ClaimOutcome("missed")
    assert claim(store, a, T + 2, replace_earlier=True) == ClaimOutcome("missed")
    assert [(r.state, r.slot) for r in records(store)] == [("missed", -1)]


def test_a_tick_that_runs_is_never_recorded_skipped(store, a, b, c):
    # With a grace wider than the period, an earlier tick can start after a later one did;
    # a forbid claimer of the later tick then sees it running, but the tick already runs.
    wide, nxt = 3 * PERIOD, T + PERIOD
    run = must_claim(store, a, nxt, tick=nxt, grace=wide, forbid_overlap=True)
    must_claim(store, b, nxt + 1, grace=wide, ttl=wide)  # the earlier tick, late
    assert refused(store, c, nxt + 2, tick=nxt, grace=wide, forbid_overlap=True) == "overlap"
    assert [(r.token, r.state) for r in records(store, tick=nxt)] == [(run.token, "running")]


def test_record_missed_is_per_worker_and_takes_an_empty_list(store, a):
    must_claim(store, a, T, worker="other-job")
    assert store.cron_record_missed(W, [], grace=GRACE, reason="x", now=T + GRACE) == []
    assert store.cron_record_missed(W, [T], grace=GRACE, reason="x", now=T + GRACE) == [T]
    assert [r.state for r in records(store, worker="other-job")] == ["running"]
    assert [r.state for r in records(store)] == ["missed"]


# --- interleavings: a claim and a missed record at the end of the grace ---------------------
#
# A claim decides "inside the grace" by the clock, then inserts its run and commits; a
# recorder decides "past the grace" a moment later. Each test pauses one of them inside its
# transaction (at a named step of a part of SqlStore) and lets the other run into it: the
# second must wait for the first, then see what it committed. Joining with a short timeout
# is how the test checks that it waits; it never decides the outcome.


def paused(store: object, step: str) -> tuple[threading.Event, threading.Event]:
    """Make `store` (a part of a SqlStore) stop inside its transaction right after `step`,
    until released."""
    reached, release = threading.Event(), threading.Event()
    original = getattr(store, step)

    def pause(*args: object, **kwargs: object) -> object:
        result = original(*args, **kwargs)
        reached.set()
        assert release.wait(20), f"{step}: never released"
        return result

    setattr(store, step, pause)
    return reached, release


def in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def target() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the test, which fails on it
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def finished(thread: threading.Thread, outcome: list[object]) -> object:
    thread.join(20)
    assert not thread.is_alive() and len(outcome) == 1, "the call did not finish"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def test_a_recorder_waits_for_a_claim_inserting_its_run_and_then_records_nothing(
        database_url, store, a):
    claimer = SqlStore(database_url)
    try:
        reached, release = paused(claimer._cron, "_insert_run")
        claiming = in_thread(lambda: claim(claimer, a, T + GRACE - 0.001))
        assert reached.wait(20), "the claim never inserted its run"
        recording = in_thread(lambda: store.cron_record_missed(
            W, [T], grace=GRACE, reason="outage", now=T + GRACE + 1))
        recording[0].join(0.5)
        waited = recording[0].is_alive()
        release.set()
        outcome = finished(*claiming)
        recorded = finished(*recording)
    finally:
        claimer.close()
    assert isinstance(outcome, ClaimOutcome) and outcome.result == "acquired", outcome
    assert waited, "the recorder did not wait for the claim's transaction"
    assert recorded == []
    assert [(r.state, r.slot) for r in records(store)] == [("running", 0)]


def test_a_claim_running_into_a_recorder_of_its_tick_does_not_run_it(database_url, store, a):
    recorder = SqlStore(database_url)
    try:
        reached, release = paused(recorder._cron, "_hold_tick")
        recording = in_thread(lambda: recorder.cron_record_missed(
            W, [T], grace=GRACE, reason="outage", now=T + GRACE + 1))
        assert reached.wait(20), "the recorder never held the tick"
        claiming = in_thread(lambda: claim(store, a, T + GRACE - 0.001))
        claiming[0].join(0.5)
        waited = claiming[0].is_alive()
        release.set()
        recorded = finished(*recording)
        outcome = finished(*claiming)
    finally:
        recorder.close()
    assert waited, "the claim did not wait for the recorder's transaction"
    assert recorded == [T]
    assert outcome == ClaimOutcome("missed")
    assert [(r.state, r.slot) for r in records(store)] == [("missed", -1)]


def test_an_earlier_tick_claimed_while_a_later_one_replaces_it_is_never_left_running(
        database_url, store, a, b):
    # Two ticks claimable at once (grace wider than the period): whichever way the
    # database orders the two claims, the earlier tick's run is either undone (and the
    # tick recorded skipped) or asked to stop by the later one, never left running unasked.
    wide, long, nxt = 3 * PERIOD, 3 * PERIOD, T + PERIOD
    claimer = SqlStore(database_url)
    try:
        reached, release = paused(claimer._cron, "_insert_run")
        earlier = in_thread(lambda: claim(claimer, a, nxt + 1, grace=wide, ttl=long,
                                          replace_earlier=True))
        assert reached.wait(20), "the claim of the earlier tick never inserted its run"
        later = in_thread(lambda: claim(store, b, nxt + 1, tick=nxt, grace=wide, ttl=long,
                                        replace_earlier=True))
        later[0].join(0.5)
        release.set()
        first = finished(*earlier)
        second = finished(*later)
    finally:
        claimer.close()
    assert isinstance(first, ClaimOutcome) and isinstance(second, ClaimOutcome)
    assert second.result == "acquired", second
    if first.result == "acquired":  # committed first: the later claim saw it and asked
        assert first.run is not None and second.replaced == (first.run.token,)
    else:  # the later claim committed first: the earlier one undid its run
        assert first == ClaimOutcome("overlap"), first
        assert [(r.state, r.slot) for r in records(store, tick=T)] == [("skipped", -1)]
        assert second.replaced == ()


# --- races between processes ---------------------------------------------------------------


def race(store: SqlStore, url: str, worker: str, plan: list[tuple[float, float, bool]],
         claimers: int, max_run: int, nodes: int | None = None
         ) -> dict[int, list[tuple[object, ...]]]:
    """Run `claimers` processes (on `nodes` node ids, default one each) through `plan`; return
    each round's (index, result, slot, token, nonce) entries, one per claimer."""
    args = [(url, i, worker, plan, max_run, nodes or claimers) for i in range(claimers)]
    messages = run_contenders(cron_race.claim, args, expected=claimers * len(plan), within=150)
    by_round: dict[int, list[tuple[object, ...]]] = {}
    for _, index, round_, result, slot, token, nonce in messages:
        by_round.setdefault(round_, []).append((index, result, slot, token, nonce))
    assert sorted(by_round) == list(range(len(plan)))
    for round_, entries in by_round.items():
        assert sorted(entry[0] for entry in entries) == list(range(claimers)), round_
    return by_round


@pytest.mark.timeout(240)
def test_20_claimers_on_one_tick_with_max_run_3_get_exactly_3_slots(store, database_url):
    claimers, max_run, rounds = 20, 3, 3
    base = store.db_now()
    plan = [(base - 0.5 - r, 60.0, False) for r in range(rounds)]  # due, well inside grace
    by_round = race(store, database_url, "race", plan, claimers, max_run)
    tokens: list[int] = []
    for round_, entries in sorted(by_round.items()):
        won = [entry for entry in entries if entry[1] == "acquired"]
        others = sorted(str(entry[1]) for entry in entries if entry[1] != "acquired")
        assert len(won) == max_run, f"round {round_}: {len(won)} acquired: {entries}"
        assert others == ["full"] * (claimers - max_run), f"round {round_}: {others}"
        assert sorted(int(entry[2]) for entry in won) == list(range(max_run)), won
        assert len({entry[0] for entry in won}) == max_run, won  # distinct holders
        rows = records(store, "race", tick=plan[round_][0])
        assert sorted((r.slot, r.token, r.holder.nonce if r.holder else None, r.state)
                      for r in rows) == sorted((e[2], e[3], e[4], "running") for e in won)
        tokens.extend(int(entry[3]) for entry in won)
    assert len(set(tokens)) == len(tokens), f"tokens shared between runs: {tokens}"


@pytest.mark.timeout(240)
def test_20_claimers_sharing_4_nodes_take_at_most_one_slot_per_node(store, database_url):
    claimers, nodes, max_run, rounds = 20, 4, 3, 3
    base = store.db_now()
    plan = [(base - 0.5 - r, 60.0, False) for r in range(rounds)]
    by_round = race(store, database_url, "pernode", plan, claimers, max_run, nodes)
    for round_, entries in sorted(by_round.items()):
        won = [entry for entry in entries if entry[1] == "acquired"]
        won_nodes = sorted(int(entry[0]) % nodes for entry in won)
        assert len(won) == max_run, f"round {round_}: {len(won)} acquired: {entries}"
        assert len(set(won_nodes)) == len(won_nodes), (
            f"round {round_}: a node took more than max_per_node=1 slot: nodes {won_nodes}")
        rows = records(store, "pernode", tick=plan[round_][0])
        per_node = sorted(r.holder.node_id for r in rows if r.holder is not None)
        assert len(rows) == max_run and len(set(per_node)) == max_run, rows


@pytest.mark.timeout(240)
def test_20_claimers_after_the_grace_record_one_missed_and_run_nothing(store, database_url):
    claimers, rounds = 20, 2
    base = store.db_now()
    plan = [(base - 120.0 - r, 60.0, False) for r in range(rounds)]  # past tick + grace
    by_round = race(store, database_url, "late", plan, claimers, 3)
    for round_, entries in sorted(by_round.items()):
        assert sorted(str(entry[1]) for entry in entries) == ["missed"] * claimers, entries
        rows = records(store, "late", tick=plan[round_][0])
        assert [(r.state, r.slot) for r in rows] == [("missed", -1)], rows


@pytest.mark.timeout(240)
def test_20_claimers_on_a_forbidden_overlap_record_one_skipped_and_run_nothing(
        store, database_url):
    claimers, max_run = 20, 3
    base = store.db_now()
    # round 0 takes the slots of one tick (runs left going); round 1 races the next tick
    plan = [(base - 2.5, 60.0, False), (base - 1.5, 60.0, True)]
    by_round = race(store, database_url, "solo", plan, claimers, max_run)
    assert sorted(str(entry[1]) for entry in by_round[0]).count("acquired") == max_run
    assert sorted(str(entry[1]) for entry in by_round[1]) == ["overlap"] * claimers, by_round[1]
    rows = records(store, "solo", tick=plan[1][0])
    assert [(r.state, r.slot) for r in rows] == [("skipped", -1)], rows


@pytest.mark.timeout(240)
def test_12_recorders_of_the_same_ticks_at_once_record_each_missed_once(store, database_url, a):
    callers, grace, worker = 12, 60.0, "outage"
    base = store.db_now()
    ran = base - 1000.0
    must_claim(store, a, ran + 1, tick=ran, worker=worker, ttl=10_000.0)
    in_grace = base - 1.0  # due, inside its grace for the whole test: never recorded
    first = [base - 300.0 - 10 * i for i in range(6)]
    second = first[3:] + [base - 200.0 - 10 * i for i in range(4)]  # half of it done
    plan = [[*first, ran, in_grace], [in_grace, *second, ran]]
    args = [(database_url, i, worker, [list(reversed(ticks)) if i % 2 else ticks
                                       for ticks in plan], grace)
            for i in range(callers)]
    messages = run_contenders(cron_race.record_missed, args, expected=callers * len(plan),
                              within=150)
    by_round: dict[int, list[float]] = {}
    for _, _index, round_, recorded in messages:
        assert list(recorded) == sorted(recorded), recorded
        by_round.setdefault(round_, []).extend(recorded)
    new = [first, second[3:]]
    for round_, ticks in enumerate(new):
        got = by_round.get(round_, [])
        assert sorted(got) == sorted(ticks), f"round {round_}: recorded {sorted(got)}"
    for tick in first + second:
        rows = records(store, worker, tick=tick)
        assert [(r.state, r.slot) for r in rows] == [("missed", -1)], (tick, rows)
    assert [r.state for r in records(store, worker, tick=ran)] == ["running"]
    assert records(store, worker, tick=in_grace) == []


# --- the migration that added the stop request ---------------------------------------------


def migrate(url: str, step: Callable[[Config, str], None], revision: str) -> None:
    """Run an Alembic step on `url` as SqlStore.upgrade() does, to any revision."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", "supervisor.store:migrations")
            cfg.attributes["connection"] = conn
            step(cfg, revision)
            conn.commit()
    finally:
        engine.dispose()


def test_upgrading_from_0002_keeps_cron_history_and_adds_the_stop_request(database_url, a, b):
    migrate(database_url, command.upgrade, "0002")
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:  # rows as a 0002 fleet wrote them
            for slot, state, holder, ended in ((0, "running", a, None),
                                               (1, "succeeded", b, T + 5),
                                               (-1, "missed", None, T + GRACE)):
                conn.execute(text(
                    "INSERT INTO fs_cron_runs (worker, tick, slot, node_slot, holder_node,"
                    " holder_group, holder_pid, holder_nonce, state, claimed_at, expires_at,"
                    " ended_at) VALUES (:w, :tick, :slot, :ns, :node, :grp, :pid, :nonce,"
                    " :state, :at, :exp, :ended)"),
                    {"w": W, "tick": T if slot >= 0 else T - PERIOD, "slot": slot,
                     "ns": 0 if holder else None, "node": holder and holder.node_id,
                     "grp": holder and holder.group, "pid": holder and holder.pid,
                     "nonce": holder and holder.nonce, "state": state, "at": T,
                     "exp": T + 3 * PERIOD if holder else None, "ended": ended})
    finally:
        engine.dispose()
    store = SqlStore(database_url)
    try:
        before = {(r.token, r.tick, r.slot, r.state, r.holder) for r in records(store)}
        assert len(before) == 3
        store.upgrade()
        assert {(r.token, r.tick, r.slot, r.state, r.holder) for r in records(store)} == before
        [old] = [r for r in records(store) if r.state == "running"]
        going = CronRun(old.token, W, old.tick, old.slot, a, T + 3 * PERIOD)
        synced = store.node_sync(a, held=[], wanted=[], ttl=3 * PERIOD, runs=[going],
                                 now=T + 1)
        assert (set(synced.runs_kept), synced.runs_stop) == ({old.token}, ())  # default 0
        nxt = T + PERIOD
        new = claim(store, b, nxt, tick=nxt, replace_earlier=True)
        assert new.replaced == (old.token,)
        assert new.run is not None and new.run.token > max(token for token, *_ in before)
        asked = store.node_sync(a, held=[], wanted=[], ttl=3 * PERIOD, runs=[going],
                                now=nxt + 1)
        assert asked.runs_stop == (old.token,)
    finally:
        store.close()
    migrate(database_url, command.downgrade, "0002")  # and back: rows kept either way
    migrate(database_url, command.upgrade, "head")
    again = SqlStore(database_url)
    try:
        assert len(records(again)) == 4
        assert record_of(again, going).state == "running"
    finally:
        again.close()
