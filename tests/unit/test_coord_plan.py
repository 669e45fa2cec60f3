"""The publisher's choice of the next generation (plan_assignment): which live member gets
which index, and when the standing generation serves and nothing is published (so no
instance is restarted)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from supervisor.coordination.coordinated import plan_assignment
from supervisor.store import CoordAssigned, CoordStatus, Holder

NODES = [Holder(f"node-{n}", "g", 100 + n, f"nonce-{n}") for n in range(8)]
A, B, C, D, E = NODES[:5]


def standing(assignment: Sequence[tuple[Holder, int | None]], count: int,
             generation: int = 1) -> CoordStatus:
    return CoordStatus("w", 0.0, generation, count, 0.0,
                       tuple(CoordAssigned(h, i) for h, i in assignment), (), ())


NOTHING = standing([], 0, generation=0)


def test_first_generation_gives_indexes_in_join_order() -> None:
    assert plan_assignment(NOTHING, [B, A, C], None) == ([0, 1, 2], 3)
    assert plan_assignment(NOTHING, [B, A, C], 2) == ([0, 1, None], 2)
    assert plan_assignment(NOTHING, [A], 3) == ([0], 3)
    assert plan_assignment(NOTHING, [], 2) is None


def test_the_same_live_members_publish_nothing() -> None:
    assert plan_assignment(standing([(A, 0), (B, 1)], 2), [A, B], None) is None
    assert plan_assignment(standing([(A, 0), (B, 1), (C, None)], 2), [A, B, C], 2) is None


def test_standbys_coming_and_going_publish_nothing() -> None:
    now = standing([(A, 0), (B, 1), (C, None)], 2)
    assert plan_assignment(now, [A, B], 2) is None  # the standby left
    assert plan_assignment(now, [A, B, C, D], 2) is None  # another joined
    assert plan_assignment(now, [A, B, D], 2) is None  # both


def test_an_index_left_by_a_member_goes_to_a_standby_and_the_others_keep_theirs() -> None:
    now = standing([(A, 0), (B, 1), (C, None), (D, None)], 2)
    assert plan_assignment(now, [B, C, D], 2) == ([1, 0, None], 2)


def test_an_index_nobody_can_take_stays_vacant_and_publishes_nothing() -> None:
    now = standing([(A, 0), (B, 1)], 2)
    assert plan_assignment(now, [B], 2) is None
    # until somebody joins to take it
    assert plan_assignment(now, [B, E], 2) == ([1, 0], 2)


def test_a_changed_count_publishes_and_keeps_the_indexes_that_still_fit() -> None:
    now = standing([(A, 0), (B, 1), (C, 2)], 3)
    assert plan_assignment(now, [A, C], None) == ([0, 1], 2)  # C's 2 no longer fits
    assert plan_assignment(now, [A, B, C, D], None) == ([0, 1, 2, 3], 4)
    # one left and one joined: the same count, but the newcomer needs the index
    assert plan_assignment(now, [A, C, D], None) == ([0, 2, 1], 3)


members = st.lists(st.sampled_from(NODES), unique=True, max_size=len(NODES))
instances = st.none() | st.integers(1, 5)


@st.composite
def standings(draw: st.DrawFn) -> CoordStatus:
    before = draw(members)
    fixed = draw(instances)
    count = fixed if fixed is not None else len(before)
    indexes = draw(st.permutations([*range(count), *[None] * len(before)]))
    return standing(list(zip(before, indexes[:len(before)], strict=True)), count,
                    generation=1 if before else 0)


@given(standings(), members, instances)
def test_a_plan_is_a_valid_assignment_that_keeps_what_it_can(
        now: CoordStatus, live: list[Holder], fixed: int | None) -> None:
    plan = plan_assignment(now, live, fixed)
    count = fixed if fixed is not None else len(live)
    before = {a.holder.nonce: a.index for a in now.assigned}
    if plan is None:
        # the standing generation gives every live member what a new one would
        assert live == [] or (now.generation > 0 and now.count == count)
        given_now = [before.get(h.nonce) for h in live]
        assert len({i for i in given_now if i is not None}) == len(
            [i for i in given_now if i is not None])
        if live:
            free = set(range(count)) - {i for i in given_now if i is not None}
            assert not free or all(i is not None for i in given_now), (free, given_now)
        return
    indexes, planned_count = plan
    assert planned_count == count
    assert len(indexes) == len(live)
    taken = [i for i in indexes if i is not None]
    assert len(set(taken)) == len(taken) and all(0 <= i < count for i in taken)
    assert len(taken) == min(count, len(live))  # nobody stands by while an index is free
    for h, index in zip(live, indexes, strict=True):
        kept = before.get(h.nonce)
        if kept is not None and kept < count:
            assert index == kept
    # once published, the same live members publish nothing more
    after = standing(list(zip(live, indexes, strict=True)), count, now.generation + 1)
    assert plan_assignment(after, live, fixed) is None
