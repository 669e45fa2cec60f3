"""The publisher's stable window (CoordinatedMode._maybe_publish) against a scripted
keeper over a MemoryStore: a membership change must stay unchanged for `stable_window`
before anything is published, however the change reaches the publisher."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from supervisor.coordination.coordinated import CoordinatedMode
from supervisor.store import CoordMember, CoordStatus, CoordView, Holder
from supervisor.store.memory import MemoryStore

A, B, C, D = (Holder(f"node-{n}", "g", n, f"nonce-{n}") for n in "abcd")
WINDOW = 1.0
NOW = 100.0  # the store's clock, pinned
TTL = 1e12  # memberships that outlive every test


def members(*holders: Holder) -> tuple[CoordMember, ...]:
    return tuple(CoordMember(h, float(i), 1e12) for i, h in enumerate(holders))


def view(*holders: Holder) -> CoordView:
    return CoordView("w", 1, 3, 0, 0.0, members(*holders))


class Keeper:
    """What _maybe_publish uses of its NodePort: coord_view and coord_publish, on a
    MemoryStore in which `live` joined key "w" in that order and generation 1 (count 3,
    nobody assigned) stands. During the fresh read (coord_view) it can run `meanwhile`,
    as a node_sync landing then would; it logs what is published."""

    def __init__(self, *live: Holder) -> None:
        self.memory = MemoryStore(clock=lambda: NOW)
        for joined, holder in enumerate(live):
            self.memory.node_sync(holder, held=[], wanted=[], ttl=TTL, coord_members=["w"],
                                  now=float(joined))
        self.memory.coord_publish("w", expected=0, members=[], count=3, now=0.0)
        self.meanwhile: Callable[[], None] | None = None
        self.published: list[dict[str, Any]] = []

    async def coord_view(self, key: str) -> CoordStatus:
        if self.meanwhile is not None:
            self.meanwhile()
        return self.memory.coord_view(key)

    async def coord_publish(self, key: str, **kwargs: Any) -> int | None:
        self.published.append(kwargs)
        return self.memory.coord_publish(key, **kwargs)


async def publisher_with_stable(keeper: Keeper, *holders: Holder) -> CoordinatedMode:
    mode = CoordinatedMode(keeper, "w", "w", "g", instances=None,  # type: ignore[arg-type]
                           stable_window=WINDOW, publish=lambda event: None)
    mode._on_view(view(*holders), 0.0)
    mode._seen_since -= 2 * WINDOW  # unchanged for longer than the window
    return mode


def test_a_change_a_sync_sees_during_the_fresh_read_restarts_the_window() -> None:
    async def main() -> list[dict[str, Any]]:
        keeper = Keeper(A, B, C, D)
        mode = await publisher_with_stable(keeper, A, B, C)
        keeper.meanwhile = lambda: mode._on_view(view(A, B, C, D), 0.0)  # D joins
        await mode._maybe_publish()
        return keeper.published

    assert asyncio.run(main()) == []


def test_a_change_only_the_fresh_read_sees_restarts_the_window() -> None:
    async def main() -> list[dict[str, Any]]:
        keeper = Keeper(A, B, C, D)
        mode = await publisher_with_stable(keeper, A, B, C)
        await mode._maybe_publish()
        return keeper.published

    assert asyncio.run(main()) == []


def test_a_membership_stable_for_the_window_is_published() -> None:
    async def main() -> list[dict[str, Any]]:
        keeper = Keeper(A, B, C, D)
        mode = await publisher_with_stable(keeper, A, B, C, D)
        await mode._maybe_publish()
        return keeper.published

    (published,) = asyncio.run(main())
    assert (published["members"], published["count"]) == ([A, B, C, D], 4)
