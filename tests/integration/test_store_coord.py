"""The store conformance suite for coordinated workers: memberships, generations, slots.

Guarantee 5 of SPEC.md, as the store protocol (supervisor/store/__init__.py) states it:
node_sync(coord_members=, coord_slots=, coord_watch=), coord_publish, coord_acquire_slot,
coord_release_slot, coord_leave, coord_view, coord_generations, maintain, and the
migration that added them. Each test gets its own empty database on every backend
(tests/databases.py) and talks to SqlStore through the protocol only, except the
interleaving tests, which pause one store inside its transaction at a named step, and the
one that counts statements. Time is pinned with `now=` wherever timing matters, so nothing
sleeps; races run as competing processes (tests/integration/coord_race.py) started
together behind a barrier.

The property everything here serves: a slot acquired in generation g blocks every slot of
g + 1 until it is released or expires, so no child of a new generation starts while an
instance of an older one may still run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from alembic import command
from sqlalchemy import create_engine, event, text

from supervisor.errors import StoreError
from supervisor.store import (
    CoordAssigned,
    CoordSlot,
    CoordView,
    Holder,
    SyncResult,
)
from supervisor.store.schema import members as members_table
from supervisor.store.sql import SqlStore
from tests.integration import coord_race
from tests.integration.stores import approx, make_holder
from tests.integration.test_store import run_contenders
from tests.integration.test_store_cron import finished, in_thread, migrate, paused

pytestmark = pytest.mark.conformance  # tests using only `store` run on MemoryStore too

NOW = 1_800_000_000.0  # a pinned database time, epoch seconds
TTL = 10.0
W = "indexer"
KEEP = 3600.0


def sync(store: SqlStore, holder: Holder, now: float, *, keys: Sequence[str] = (W,),
         slots: Sequence[CoordSlot] = (), watch: Sequence[str] | None = None,
         ttl: float = TTL) -> SyncResult:
    return store.node_sync(holder, held=[], wanted=[], ttl=ttl, coord_members=keys,
                           coord_slots=slots, coord_watch=watch, now=now)


def view(store: SqlStore, holder: Holder, now: float, key: str = W) -> CoordView:
    return sync(store, holder, now, keys=[key]).coord[key]


def live(store: SqlStore, now: float, key: str = W) -> list[Holder]:
    """The live members, as status sees them (read only: renews nobody)."""
    return [member.holder for member in store.coord_view(key, now=now).members]


def must_publish(store: SqlStore, expected: int, members: Sequence[Holder],
                 count: int | None = None, now: float = NOW, key: str = W) -> int:
    got = store.coord_publish(key, expected=expected, members=members,
                              count=len(members) if count is None else count, now=now)
    assert got == expected + 1, f"publish from {expected} at {now}: {got}"
    return got


def must_acquire(store: SqlStore, holder: Holder, index: int, generation: int, now: float,
                 key: str = W, ttl: float = TTL) -> CoordSlot:
    slot = store.coord_acquire_slot(key, index, generation, holder, ttl, now=now)
    assert slot is not None, (
        f"{holder.node_id} could not acquire slot {index} of generation {generation} at {now}")
    return slot


def refused(store: SqlStore, holder: Holder, index: int, generation: int, now: float,
            key: str = W) -> None:
    slot = store.coord_acquire_slot(key, index, generation, holder, TTL, now=now)
    assert slot is None, f"{holder.node_id} got {slot}"


def held(store: SqlStore, now: float, key: str = W) -> list[tuple[int, int, Holder]]:
    """(index, generation, holder) of the slots with a holder, as status sees them."""
    return [(s.index, s.generation, s.holder) for s in store.coord_view(key, now=now).slots]


# --- membership ----------------------------------------------------------------------------


def test_node_sync_without_coordinated_keys_reports_no_coordination(store, a):
    result = store.node_sync(a, held=[], wanted=[], ttl=TTL, now=NOW)
    assert (result.coord, result.slots_kept, result.slots_lost) == ({}, {}, ())
    assert store.coord_view(W, now=NOW).members == ()


def test_node_sync_makes_the_holder_a_member_of_each_key(store, a, b):
    result = sync(store, a, NOW, keys=[W, "other/g1"])
    assert set(result.coord) == {W, "other/g1"}
    [me] = result.coord[W].members or ()
    assert me.holder == a
    assert me.joined_at == approx(NOW)
    assert me.expires_at == approx(NOW + TTL)
    sync(store, b, NOW + 1, keys=["other/g1"])
    assert live(store, NOW + 2) == [a]
    assert live(store, NOW + 2, "other/g1") == [a, b]
    assert [m.holder for m in store.members(now=NOW + 2)] == [a, b]  # the node rows too


def test_a_renewal_extends_membership_and_keeps_joined_at(store, a):
    sync(store, a, NOW)
    result = sync(store, a, NOW + 5)
    [me] = result.coord[W].members or ()
    assert me.joined_at == approx(NOW)
    assert me.expires_at == approx(NOW + 5 + TTL)
    [member] = store.coord_view(W, now=NOW + 12).members
    assert (member.holder, member.joined_at) == (a, approx(NOW))


def test_a_member_is_live_until_just_before_its_expiry(store, a, b):
    sync(store, a, NOW)
    sync(store, b, NOW + 2)
    assert live(store, NOW + TTL - 0.001) == [a, b]
    assert live(store, NOW + TTL) == [b]  # expires_at <= now: gone
    assert live(store, NOW + 2 + TTL) == []


def test_a_member_whose_row_expired_rejoins_with_a_new_joined_at(store, a, b):
    sync(store, a, NOW)
    sync(store, b, NOW + 1)
    sync(store, b, NOW + 8)
    result = sync(store, a, NOW + TTL + 1)  # a's row expired at NOW + TTL: a rejoin
    members = result.coord[W].members or ()
    assert [m.holder for m in members] == [b, a]
    assert members[1].joined_at == approx(NOW + TTL + 1)
    assert members[0].joined_at == approx(NOW + 1)


def test_live_members_are_ordered_by_joined_at_then_nonce(store):
    holders = [make_holder(f"n{i}") for i in range(5)]
    for holder in holders:
        sync(store, holder, NOW)  # one instant: the nonce decides
    sync(store, make_holder("late"), NOW + 1)
    late_first = make_holder("aaa")  # a node name that sorts first changes nothing
    sync(store, late_first, NOW + 2)
    expected = sorted(holders, key=lambda h: h.nonce)
    got = live(store, NOW + 3)
    assert got[:5] == expected
    assert [h.node_id for h in got[5:]] == ["late", "aaa"]
    assert [m.holder for m in sync(store, holders[0], NOW + 3).coord[W].members or ()] == got


def test_coord_watch_chooses_the_keys_whose_members_are_listed(store, a, b):
    sync(store, b, NOW, keys=[W, "x", "y"])
    every = sync(store, a, NOW + 1, keys=[W, "x", "y"])
    assert all(v.members is not None and len(v.members) == 2 for v in every.coord.values())
    narrow = sync(store, a, NOW + 2, keys=[W, "x", "y"], watch=["x", "not-a-member-key"])
    assert set(narrow.coord) == {W, "x", "y"}  # every key still reports its generation
    assert [m.holder for m in narrow.coord["x"].members or ()] == [b, a]
    assert narrow.coord[W].members is None and narrow.coord["y"].members is None
    none = sync(store, a, NOW + 3, keys=[W], watch=[])
    assert none.coord[W].members is None
    assert live(store, NOW + 4) == [b, a]  # unwatched keys are renewed all the same


def test_node_leave_ends_every_membership_and_coord_leave_one(store, a, b):
    sync(store, a, NOW, keys=[W, "x"])
    sync(store, b, NOW + 0.5, keys=[W, "x"])
    store.coord_leave(W, a)
    assert live(store, NOW + 1) == [b] and live(store, NOW + 1, "x") == [a, b]
    store.node_leave(b)
    assert live(store, NOW + 1) == [] and live(store, NOW + 1, "x") == [a]
    assert [m.holder for m in store.members(now=NOW + 1)] == [a]
    store.coord_leave(W, a)  # leaving twice is harmless
    store.node_leave(b)


def test_a_listed_key_twice_is_one_membership(store, a):
    result = sync(store, a, NOW, keys=[W, W])
    assert list(result.coord) == [W]
    assert live(store, NOW + 1) == [a]


# --- publishing generations ----------------------------------------------------------------


def test_before_any_publish_a_key_is_at_generation_0(store, a):
    got = view(store, a, NOW)
    assert (got.worker_key, got.generation, got.count, got.index, got.published_at) == (
        W, 0, 0, None, None)
    status = store.coord_view(W, now=NOW)
    assert (status.generation, status.count, status.assigned, status.slots) == (0, 0, (), ())
    assert status.db_now == approx(NOW)


def test_publish_from_0_gives_generation_1_and_node_sync_tells_each_member_its_index(
        store, a, b, c):
    for holder in (a, b, c):
        sync(store, holder, NOW)
    assert store.coord_publish(W, expected=0, members=[b, a, c], count=3, now=NOW + 1) == 1
    for holder, index in ((b, 0), (a, 1), (c, 2)):
        got = view(store, holder, NOW + 2)
        assert (got.generation, got.count, got.index) == (1, 3, index)
        assert got.published_at == approx(NOW + 1)
    status = store.coord_view(W, now=NOW + 2)
    assert (status.generation, status.count) == (1, 3)
    assert status.published_at == approx(NOW + 1)
    assert status.assigned == (CoordAssigned(b, 0), CoordAssigned(a, 1), CoordAssigned(c, 2))


def test_two_publishers_from_the_same_generation_one_wins(store, a, b):
    assert store.coord_publish(W, expected=0, members=[a], count=1, now=NOW) == 1
    assert store.coord_publish(W, expected=0, members=[b], count=1, now=NOW) is None
    assert store.coord_publish(W, expected=1, members=[b, a], count=2, now=NOW + 1) == 2
    assert store.coord_publish(W, expected=1, members=[a], count=1, now=NOW + 1) is None
    status = store.coord_view(W, now=NOW + 2)  # the losers changed nothing
    assert (status.generation, status.count) == (2, 2)
    assert status.assigned == (CoordAssigned(b, 0), CoordAssigned(a, 1))
    assert [g.generation for g in store.coord_generations(worker_key=W)] == [2, 1]


def test_generations_only_grow_and_a_stale_or_future_expected_changes_nothing(store, a, b):
    generation = 0
    for step in range(6):
        members = [a, b] if step % 2 else [b]
        generation = must_publish(store, generation, members, now=NOW + step)
    assert generation == 6
    for stale in (0, 3, 5, 7, 100):
        assert store.coord_publish(W, expected=stale, members=[a], count=1,
                                   now=NOW + 10) is None
    status = store.coord_view(W, now=NOW + 11)
    assert (status.generation, status.count) == (6, 2)
    assert status.published_at == approx(NOW + 5)
    assert must_publish(store, 6, [a], now=NOW + 12) == 7


def test_members_beyond_count_stand_by_with_no_index(store, a, b, c, d):
    must_publish(store, 0, [c, a, d, b], count=2)
    got = {h.node_id: view(store, h, NOW + 1) for h in (a, b, c, d)}
    assert {name: v.index for name, v in got.items()} == {
        "node-c": 0, "node-a": 1, "node-d": None, "node-b": None}
    assert all((v.generation, v.count) == (1, 2) for v in got.values())
    assert store.coord_view(W, now=NOW + 1).assigned == (
        CoordAssigned(c, 0), CoordAssigned(a, 1), CoordAssigned(d, None),
        CoordAssigned(b, None))
    refused(store, d, 2, 1, NOW + 1)  # a stand-by takes no slot, not even one past count
    refused(store, d, 0, 1, NOW + 1)


def test_a_holder_outside_the_generation_has_no_index(store, a, b):
    must_publish(store, 0, [a])
    got = view(store, b, NOW + 1)
    assert (got.generation, got.count, got.index) == (1, 1, None)


def test_a_count_above_the_members_leaves_the_rest_of_the_indexes_to_nobody(store, a, b):
    must_publish(store, 0, [a, b], count=4)
    assert [view(store, h, NOW + 1).index for h in (a, b)] == [0, 1]
    assert view(store, a, NOW + 1).count == 4
    for index in (2, 3):
        refused(store, a, index, 1, NOW + 1)


def test_count_0_publishes_a_generation_with_no_index(store, a):
    assert must_publish(store, 0, [a], count=0) == 1
    assert view(store, a, NOW + 1).index is None
    refused(store, a, 0, 1, NOW + 1)


def test_a_new_generation_replaces_the_assignment(store, a, b, c):
    must_publish(store, 0, [a, b])
    must_publish(store, 1, [c, b], now=NOW + 1)
    assert [view(store, h, NOW + 2).index for h in (a, b, c)] == [None, 1, 0]
    assert store.coord_view(W, now=NOW + 2).assigned == (CoordAssigned(c, 0),
                                                         CoordAssigned(b, 1))


def test_explicit_indexes_are_given_as_published_and_recorded(store, a, b, c, d):
    # a member keeps index 1 while a newcomer fills index 0 and another stands by
    assert store.coord_publish(W, expected=0, members=[a, b, c, d], indexes=[1, None, 0, None],
                               count=3, now=NOW) == 1
    assert [view(store, h, NOW + 1).index for h in (a, b, c, d)] == [1, None, 0, None]
    assert store.coord_view(W, now=NOW + 1).assigned == (
        CoordAssigned(a, 1), CoordAssigned(b, None), CoordAssigned(c, 0),
        CoordAssigned(d, None))
    must_acquire(store, c, 0, 1, NOW + 1)
    refused(store, b, 2, 1, NOW + 1)  # index 2 is vacant: nobody takes it
    (recorded,) = store.coord_generations(worker_key=W)
    assert (recorded.members, recorded.indexes) == ((a, b, c, d), (1, None, 0, None))


def test_publish_refuses_bad_arguments_and_writes_nothing(store, a):
    for kwargs in ({"expected": -1, "members": [a], "count": 1},
                   {"expected": 0, "members": [a], "count": -1},
                   {"expected": 0, "members": [a, a], "count": 2},
                   {"expected": 0, "members": [a], "count": 2, "indexes": []},
                   {"expected": 0, "members": [a, a], "count": 2, "indexes": [0, 1]},
                   {"expected": 0, "members": [a], "count": 2, "indexes": [2]},
                   {"expected": 0, "members": [a], "count": 2, "indexes": [-1]}):
        with pytest.raises(ValueError):
            store.coord_publish(W, now=NOW, **kwargs)
    assert store.coord_view(W, now=NOW).generation == 0
    assert store.coord_generations() == []


def test_generations_are_per_key(store, a, b):
    must_publish(store, 0, [a], key="one")
    must_publish(store, 1, [a, b], key="one", now=NOW + 1)
    assert must_publish(store, 0, [b], key="two", now=NOW + 2) == 1
    assert store.coord_publish("two", expected=2, members=[a], count=1, now=NOW + 3) is None
    assert store.coord_view("one", now=NOW + 4).generation == 2
    assert store.coord_view("two", now=NOW + 4).generation == 1


# --- history -------------------------------------------------------------------------------


def test_each_generation_is_recorded_with_its_members_count_and_span(store, a, b, c):
    must_publish(store, 0, [a], now=NOW)
    must_publish(store, 1, [b, a, c], count=2, now=NOW + 5)
    assert store.coord_publish(W, expected=1, members=[c], count=1, now=NOW + 6) is None
    newest, first = store.coord_generations(worker_key=W)
    assert (newest.worker_key, newest.generation, newest.count, newest.members) == (
        W, 2, 2, (b, a, c))
    assert (newest.published_at, newest.ended_at) == (approx(NOW + 5), None)
    assert (first.generation, first.count, first.members) == (1, 1, (a,))
    assert (first.published_at, first.ended_at) == (approx(NOW), approx(NOW + 5))


def test_generation_history_is_newest_first_filtered_and_limited(store, a):
    for step, key in enumerate(["w", "w/g1", "w/g2", "w_x", "wx/g1", "w"]):
        expected = store.coord_view(key, now=NOW).generation
        must_publish(store, expected, [a], key=key, now=NOW + step)
    assert [(g.worker_key, g.generation) for g in store.coord_generations()] == [
        ("w", 2), ("wx/g1", 1), ("w_x", 1), ("w/g2", 1), ("w/g1", 1), ("w", 1)]
    assert [(g.worker_key, g.generation) for g in store.coord_generations(worker_key="w")] == [
        ("w", 2), ("w/g2", 1), ("w/g1", 1), ("w", 1)]  # its groups, never "w_x" or "wx/.."
    assert [g.worker_key for g in store.coord_generations(worker_key="w/g1")] == ["w/g1"]
    assert [g.generation for g in store.coord_generations(worker_key="w", limit=1)] == [2]
    assert store.coord_generations(worker_key="w%") == []


def test_history_keeps_a_large_membership(store):
    members = [make_holder(f"node-{i:04d}", group="a-rather-long-group-name")
               for i in range(1000)]
    must_publish(store, 0, members, count=3)
    [record] = store.coord_generations(worker_key=W)
    assert record.members == tuple(members)


# --- slots and the barrier -----------------------------------------------------------------


def test_an_assigned_member_acquires_its_slot_of_the_current_generation(store, a, b):
    must_publish(store, 0, [a, b])
    slot = must_acquire(store, b, 1, 1, NOW + 1)
    assert (slot.worker_key, slot.index, slot.generation, slot.holder) == (W, 1, 1, b)
    assert slot.expires_at == approx(NOW + 1 + TTL)
    assert held(store, NOW + 2) == [(1, 1, b)]
    other = must_acquire(store, a, 0, 1, NOW + 2)
    assert held(store, NOW + 3) == [(0, 1, a), (1, 1, b)]
    assert other.expires_at == approx(NOW + 2 + TTL)


def test_acquire_refuses_a_generation_that_is_not_the_current_one(store, a):
    refused(store, a, 0, 1, NOW)  # nothing published: no key state at all
    must_publish(store, 0, [a])
    refused(store, a, 0, 0, NOW + 1)
    refused(store, a, 0, 2, NOW + 1)  # a future one
    must_publish(store, 1, [a], now=NOW + 2)
    refused(store, a, 0, 1, NOW + 3)  # superseded
    must_acquire(store, a, 0, 2, NOW + 3)


def test_acquire_refuses_an_index_the_generation_gives_someone_else(store, a, b, c):
    must_publish(store, 0, [a, b])
    refused(store, a, 1, 1, NOW + 1)  # b's
    refused(store, c, 0, 1, NOW + 1)  # not a member of the generation
    refused(store, a, 2, 1, NOW + 1)  # past count
    must_acquire(store, b, 1, 1, NOW + 1)
    refused(store, a, 1, 1, NOW + 2)  # b's, now held
    refused(store, a, 0, 1, NOW + 2, key="other")  # another key's
    assert held(store, NOW + 3) == [(1, 1, b)]


def test_acquire_refuses_a_slot_someone_else_holds_unexpired(database_url, store, a, b):
    must_publish(store, 0, [a])
    # A row held by another holder in this very generation cannot come about through the
    # protocol; the guard on the slot row refuses it all the same, until it expires.
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "UPDATE fs_coord_slots SET generation = 1, holder_node = :node,"
                " holder_group = :grp, holder_pid = :pid, holder_nonce = :nonce,"
                " expires_at = :exp WHERE worker_key = :key AND slot_index = 0"),
                {"node": b.node_id, "grp": b.group, "pid": b.pid, "nonce": b.nonce,
                 "exp": NOW + TTL, "key": W})
    finally:
        engine.dispose()
    refused(store, a, 0, 1, NOW + TTL - 0.001)
    assert held(store, NOW + 1) == [(0, 1, b)]
    assert must_acquire(store, a, 0, 1, NOW + TTL).holder == a  # expires_at <= now: free


def test_acquiring_again_in_the_same_generation_extends_the_slot(store, a):
    must_publish(store, 0, [a])
    must_acquire(store, a, 0, 1, NOW)
    again = must_acquire(store, a, 0, 1, NOW + 5)
    assert again.expires_at == approx(NOW + 5 + TTL)
    assert held(store, NOW + 6) == [(0, 1, a)]


def test_an_older_generations_slot_blocks_every_slot_of_the_new_one_until_it_expires(
        store, a, b, c):
    must_publish(store, 0, [a, b])
    old = must_acquire(store, a, 0, 1, NOW)  # expires at NOW + TTL
    must_publish(store, 1, [b, c, a], now=NOW + 1)
    for holder, index in ((b, 0), (c, 1), (a, 2)):
        refused(store, holder, index, 2, NOW + 2)  # not only index 0: every index
        refused(store, holder, index, 2, old.expires_at - 0.001)
    assert held(store, NOW + 3) == [(0, 1, a)]
    at_expiry = old.expires_at  # expires_at <= now: the old instance may no longer run
    assert must_acquire(store, c, 1, 2, at_expiry).generation == 2
    assert must_acquire(store, b, 0, 2, at_expiry).holder == b
    assert must_acquire(store, a, 2, 2, at_expiry).holder == a


def test_an_older_generations_slot_blocks_the_new_one_until_it_is_released(store, a, b):
    must_publish(store, 0, [a, b])
    old = must_acquire(store, a, 0, 1, NOW)
    other_old = must_acquire(store, b, 1, 1, NOW)
    must_publish(store, 1, [b, a], now=NOW + 1)
    refused(store, a, 1, 2, NOW + 2)  # its own older slot blocks it too
    assert store.coord_release_slot(old, now=NOW + 2) is True
    refused(store, a, 1, 2, NOW + 3)  # b's older slot still runs
    assert store.coord_release_slot(other_old, now=NOW + 3) is True
    assert must_acquire(store, a, 1, 2, NOW + 3).index == 1  # at once, well before expiry
    assert must_acquire(store, b, 0, 2, NOW + 3).index == 0
    assert held(store, NOW + 4) == [(0, 2, b), (1, 2, a)]


def test_the_barrier_spans_several_generations_and_only_its_own_key(store, a, b):
    must_publish(store, 0, [a])
    old = must_acquire(store, a, 0, 1, NOW, ttl=100.0)
    must_publish(store, 1, [a, b], now=NOW + 1)
    must_publish(store, 2, [b, a], now=NOW + 2)
    refused(store, b, 0, 3, NOW + 3)  # generation 1 still runs under generation 3
    must_publish(store, 0, [b], key="other", now=NOW + 4)
    assert must_acquire(store, b, 0, 1, NOW + 5, key="other").generation == 1
    assert store.coord_release_slot(old, now=NOW + 6)
    must_acquire(store, b, 0, 3, NOW + 6)


def test_a_slot_of_the_same_generation_does_not_block_its_peers(store, a, b, c):
    must_publish(store, 0, [a, b, c])
    for index, holder in enumerate((a, b, c)):
        must_acquire(store, holder, index, 1, NOW + index)
    assert [index for index, *_ in held(store, NOW + 5)] == [0, 1, 2]


def test_release_frees_a_slot_once_and_only_for_its_holder_and_generation(store, a, b):
    must_publish(store, 0, [a])
    slot = must_acquire(store, a, 0, 1, NOW)
    forged = CoordSlot(W, 0, 1, b, slot.expires_at)
    assert store.coord_release_slot(forged, now=NOW + 1) is False
    stale = CoordSlot(W, 0, 0, a, slot.expires_at)
    assert store.coord_release_slot(stale, now=NOW + 1) is False
    assert held(store, NOW + 1) == [(0, 1, a)]
    assert store.coord_release_slot(slot, now=NOW + 2) is True
    assert held(store, NOW + 2) == []
    assert store.coord_release_slot(slot, now=NOW + 3) is False
    ghost = CoordSlot("nobody", 0, 1, a, NOW + TTL)
    assert store.coord_release_slot(ghost, now=NOW + 3) is False


def test_an_expired_slot_cannot_be_released_it_was_lost(store, a):
    must_publish(store, 0, [a])
    slot = must_acquire(store, a, 0, 1, NOW)
    assert store.coord_release_slot(slot, now=slot.expires_at) is False


# --- node_sync renews slots ----------------------------------------------------------------


def test_node_sync_renews_held_slots_even_after_a_newer_generation(store, a, b):
    must_publish(store, 0, [a, b])
    mine = must_acquire(store, a, 0, 1, NOW)
    must_publish(store, 0, [a], key="other")
    also = must_acquire(store, a, 0, 1, NOW, key="other")
    must_publish(store, 1, [b, a], now=NOW + 1)
    result = sync(store, a, NOW + 5, slots=[mine, also])
    assert result.slots_lost == ()
    assert set(result.slots_kept) == {(W, 0), ("other", 0)}
    kept = result.slots_kept[(W, 0)]
    assert (kept.worker_key, kept.index, kept.generation, kept.holder) == (W, 0, 1, a)
    assert kept.expires_at == approx(NOW + 5 + TTL)
    # renewed in the database: past the old expiry it still blocks generation 2...
    refused(store, b, 0, 2, mine.expires_at + 1)
    # ...and renews again just before the new one
    again = sync(store, a, NOW + 5 + TTL - 0.001, slots=list(result.slots_kept.values()))
    assert set(again.slots_kept) == {(W, 0), ("other", 0)}


def test_node_sync_loses_expired_released_and_foreign_slots_for_good(store, a, b):
    must_publish(store, 0, [a, b])
    expired = must_acquire(store, a, 0, 1, NOW)
    released = must_acquire(store, b, 1, 1, NOW)
    assert store.coord_release_slot(released, now=NOW + 1)
    at_expiry = sync(store, a, expired.expires_at, slots=[expired])
    assert (at_expiry.slots_kept, at_expiry.slots_lost) == ({}, ((W, 0),))
    assert sync(store, a, expired.expires_at + 1, slots=[expired]).slots_lost == ((W, 0),)
    assert sync(store, b, NOW + 2, slots=[released]).slots_lost == ((W, 1),)
    taken = must_acquire(store, a, 0, 1, NOW + TTL + 1)  # the holder took it again
    forged = CoordSlot(W, 0, 1, b, taken.expires_at)
    assert sync(store, b, NOW + TTL + 2, slots=[forged]).slots_lost == ((W, 0),)
    wrong_generation = CoordSlot(W, 0, 2, a, taken.expires_at)
    assert sync(store, a, NOW + TTL + 2, slots=[wrong_generation]).slots_lost == ((W, 0),)
    assert store.coord_view(W, now=NOW + TTL + 3).slots[0].expires_at == approx(
        taken.expires_at)  # none of those renewals touched it


def test_a_lost_slot_no_longer_blocks_the_next_generation(store, a, b):
    must_publish(store, 0, [a])
    old = must_acquire(store, a, 0, 1, NOW)
    must_publish(store, 1, [b], now=NOW + 1)
    assert sync(store, a, old.expires_at, slots=[old]).slots_lost == ((W, 0),)
    must_acquire(store, b, 0, 2, old.expires_at)


def test_one_node_sync_renews_leases_runs_memberships_and_slots(store, a):
    store.lease_ensure(["leader"])
    run = store.cron_claim("job", NOW, holder=a, max_run=1, ttl=TTL, grace=30.0,
                           now=NOW).run
    assert run is not None
    must_publish(store, 0, [a])
    slot = must_acquire(store, a, 0, 1, NOW)
    result = store.node_sync(a, held=[], wanted=["leader"], ttl=TTL, runs=[run],
                             coord_members=[W], coord_slots=[slot], now=NOW + 5)
    assert set(result.acquired) == {"leader"}
    assert set(result.runs_kept) == {run.token}
    assert set(result.slots_kept) == {(W, 0)}
    assert (result.coord[W].generation, result.coord[W].index) == (1, 0)
    assert [m.holder for m in store.members(now=NOW + 6)] == [a]


@pytest.fixture
def statements(store: SqlStore) -> Iterator[list[str]]:
    """Every statement the store sends, in order, while the test runs."""
    sent: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        sent.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        yield sent
    finally:
        event.remove(store.engine, "before_cursor_execute", count)


@pytest.mark.sql_only  # counts the SQL statements SqlStore's engine sends
def test_node_sync_costs_the_same_few_statements_for_one_key_or_twelve(store, statements):
    holders = [make_holder(f"node-{i}") for i in range(3)]
    keys = [f"worker-{i}" for i in range(12)]
    for key in keys:
        must_publish(store, 0, holders, key=key)
    me = holders[0]
    one = [must_acquire(store, me, 0, 1, NOW, key=keys[0])]
    many = one + [must_acquire(store, me, 0, 1, NOW, key=key) for key in keys[1:]]
    counts = []
    for members, slots in (([], []), (keys[:1], one), (keys, many)):
        statements.clear()
        sync(store, me, NOW + 1, keys=members, slots=slots)
        counts.append(len(statements))
    bare, with_one, with_twelve = counts
    assert with_one == with_twelve, f"statements per sync grow with the keys: {counts}"
    assert with_one - bare <= 5, f"coordination costs {with_one - bare} statements: {counts}"


# --- maintain ------------------------------------------------------------------------------


def test_maintain_prunes_generations_superseded_more_than_keep_ago(store, a):
    keep = 100.0
    for step in range(4):  # generations 1..4 published at NOW + 0, 10, 20, 30
        must_publish(store, step, [a], now=NOW + 10 * step)
    must_publish(store, 0, [a], key="quiet", now=NOW)  # never superseded: kept for ever
    store.maintain(keep, now=NOW + 10 + keep)  # generation 1 ended at NOW + 10: not yet
    assert [g.generation for g in store.coord_generations(worker_key=W)] == [4, 3, 2, 1]
    store.maintain(keep, now=NOW + 10 + keep + 0.001)
    assert [g.generation for g in store.coord_generations(worker_key=W)] == [4, 3, 2]
    store.maintain(keep, now=NOW + 1000 * keep)
    assert [g.generation for g in store.coord_generations(worker_key=W)] == [4]
    assert [g.generation for g in store.coord_generations(worker_key="quiet")] == [1]
    assert store.coord_view(W, now=NOW + 1000 * keep).generation == 4
    assert must_publish(store, 4, [a], now=NOW + 1000 * keep) == 5  # numbers go on


def test_maintain_prunes_generations_in_bounded_batches(store, a):
    for step in range(6):
        must_publish(store, step, [a], now=NOW + step)
    store.maintain(KEEP, now=NOW + 10 * KEEP, batch=2)
    left = len(store.coord_generations(worker_key=W))
    assert 4 <= left < 6, f"batch=2 deleted {6 - left} of 5 old generations"
    for _ in range(5):
        store.maintain(KEEP, now=NOW + 10 * KEEP, batch=2)
    assert [g.generation for g in store.coord_generations(worker_key=W)] == [6]


def test_maintain_drops_expired_memberships_and_a_member_can_rejoin(store, a, b):
    sync(store, a, NOW)
    sync(store, b, NOW + 5)
    store.maintain(KEEP, now=NOW + TTL)
    assert live(store, NOW + TTL) == [b]
    assert [m.holder for m in store.coord_view(W, now=NOW).members] == [b]  # row gone
    result = sync(store, a, NOW + TTL + 1)
    assert [m.holder for m in result.coord[W].members or ()] == [b, a]


# --- interleavings: a renewal or an acquire in flight ---------------------------------------
#
# Each test pauses one store inside its transaction at a named step and lets another call
# run into it: the second must wait for the first, then see what it committed. Joining with
# a short timeout is how the test checks that it waits; it never decides the outcome.


def test_an_acquire_waits_for_an_older_slots_renewal_in_flight_and_is_refused(
        database_url, store, a, b):
    must_publish(store, 0, [a])
    old = must_acquire(store, a, 0, 1, NOW)
    must_publish(store, 1, [a, b], now=NOW + 1)  # b's index 1: only the barrier stands between
    renewer = SqlStore(database_url)
    try:
        reached, release = paused(renewer._slots, "renew")
        renewing = in_thread(lambda: sync(renewer, a, old.expires_at - 0.001, slots=[old]))
        assert reached.wait(20), "the renewal never ran"
        # by its snapshot the old slot is expired at this instant; by the renewal, not
        acquiring = in_thread(lambda: store.coord_acquire_slot(
            W, 1, 2, b, TTL, now=old.expires_at + 1))
        acquiring[0].join(0.5)
        waited = acquiring[0].is_alive()
        release.set()
        renewed = finished(*renewing)
        acquired = finished(*acquiring)
    finally:
        renewer.close()
    assert isinstance(renewed, SyncResult) and set(renewed.slots_kept) == {(W, 0)}, renewed
    assert waited, "the acquire did not wait for the renewal's transaction"
    assert acquired is None, f"generation 2 started beside a renewed slot of 1: {acquired}"
    assert held(store, old.expires_at + 1) == [(0, 1, a)]


def test_a_publish_waits_for_an_acquire_in_flight_whose_slot_then_blocks_the_next(
        database_url, store, a, b):
    must_publish(store, 0, [a])
    acquirer = SqlStore(database_url)
    try:
        reached, release = paused(acquirer._slots, "_older_slot_live")
        acquiring = in_thread(lambda: acquirer.coord_acquire_slot(W, 0, 1, a, TTL,
                                                                  now=NOW + 1))
        assert reached.wait(20), "the acquire never checked the barrier"
        publishing = in_thread(lambda: store.coord_publish(W, expected=1, members=[b],
                                                           count=1, now=NOW + 2))
        publishing[0].join(0.5)
        waited = publishing[0].is_alive()
        release.set()
        acquired = finished(*acquiring)
        published = finished(*publishing)
    finally:
        acquirer.close()
    assert waited, "the publish did not wait for the acquire's transaction"
    assert isinstance(acquired, CoordSlot) and acquired.generation == 1, acquired
    assert published == 2
    refused(store, b, 0, 2, NOW + 3)  # the slot of generation 1 holds generation 2 back
    assert store.coord_release_slot(acquired, now=NOW + 4)
    must_acquire(store, b, 0, 2, NOW + 4)


# --- races between processes ---------------------------------------------------------------


@pytest.mark.timeout(180)
def test_8_processes_publishing_from_the_same_generation_yield_one_per_round(
        store, database_url):
    contenders, rounds, key = 8, 5, "race"
    args = [(database_url, i, key, rounds) for i in range(contenders)]
    messages = run_contenders(coord_race.publish, args, expected=contenders * rounds)
    winners: dict[object, list[tuple[object, ...]]] = {}
    for _, index, round_, got, nonce in messages:
        if got is not None:
            assert got == round_ + 1, f"round {round_}: published {got}"
            winners.setdefault(round_, []).append((index, nonce))
    assert sorted(winners) == list(range(rounds))
    assert all(len(won) == 1 for won in winners.values()), winners
    history = store.coord_generations(worker_key=key)
    assert [g.generation for g in history] == list(range(rounds, 0, -1))
    for record in history:
        [(_, nonce)] = winners[record.generation - 1]
        assert record.members[0].nonce == nonce  # the history is the winner's
        assert record.count == 1 + (record.generation - 1) % 3
    assert store.coord_view(key).generation == rounds


# --- the migration that added coordinated workers ------------------------------------------


def test_upgrading_from_0003_keeps_every_row_and_adds_coordination(database_url, a, b):
    migrate(database_url, command.upgrade, "0003")
    old = SqlStore(database_url)  # a 0003 fleet at work: leases, terms, members, cron runs
    try:
        lease = old.lease_acquire("leader/x", a, TTL, now=NOW)
        assert lease is not None and old.lease_release(lease, now=NOW + 1)
        assert old.lease_acquire("leader/x", b, 1000.0, now=NOW + 2) is not None
        with old._txn() as conn:  # a membership row as 0003's nodes wrote it (this
            # release's heartbeat writes columns 0007 added)
            conn.execute(members_table.insert().values(
                nonce=a.nonce, node_id=a.node_id, group_name=a.group, pid=a.pid,
                started_at=NOW + 3, heartbeat_at=NOW + 3, expires_at=NOW + 1003))
        run = old.cron_claim("job", NOW, holder=b, max_run=1, ttl=1000.0, grace=30.0,
                             now=NOW + 4).run
        assert run is not None

        def snapshot(store: SqlStore) -> tuple[object, ...]:
            return (store.leases(now=NOW + 5), store.terms(), store.cron_runs())

        before = snapshot(old)
    finally:
        old.close()
    store = SqlStore(database_url)
    try:
        store.upgrade()
        assert snapshot(store) == before
        found = [(m.holder.nonce, m.release) for m in store.members(now=NOW + 5)]
        assert found == [(a.nonce, None)]
        result = sync(store, a, NOW + 6)
        assert result.coord[W].generation == 0
        must_publish(store, 0, [a], now=NOW + 7)
        slot = must_acquire(store, a, 0, 1, NOW + 8)
        assert sync(store, a, NOW + 9, slots=[slot]).slots_kept[(W, 0)].generation == 1
        nxt = store.lease_acquire("leader/x", a, TTL, now=NOW + 2000)
        assert nxt is not None and nxt.term == 3  # the fencing token goes on
    finally:
        store.close()
    migrate(database_url, command.downgrade, "0003")  # and back: the old rows stay
    again = SqlStore(database_url)
    try:
        assert [t.term for t in again.terms(lease="leader/x")] == [3, 2, 1]
        assert len(again.cron_runs()) == 1
        with pytest.raises(StoreError):
            again.coord_view(W, now=NOW)
        again.upgrade()
        assert again.coord_view(W, now=NOW).generation == 0  # the new tables start empty
    finally:
        again.close()
