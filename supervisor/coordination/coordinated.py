"""coordinated mode: every live node runs the worker, each told its index and the count.

Membership is a row per supervisor process, renewed in the node's one sync. Whoever
holds the worker's coordination lease (`coord/<key>`, an ordinary lease) publishes
generations: when the live membership has stayed the same for `stable_window` and some
live member's index, or the count, would differ from the published generation's, it
publishes the next one (`plan_assignment`: members keep their indexes where they can,
newcomers take the rest in join order; with `instances = N` the others stand by).

Indexes are leases too (slots): a member starts its child for generation g only once
it holds slot `index` of g, and the database refuses that while any slot of an older
generation is still held and unexpired (the barrier). A member that sees a newer
generation stops its child and releases its slot, so no instance of the new generation
starts while one of an older generation may still run; a member that died holds its
slot until the slot expires (one lease TTL). A child that crashes is restarted under
the restart policy with the same index, as long as the generation stands.

The mode reaches the database only through its node (`port.NodePort`): the node sync
renews the membership and the slot it holds, and revokes the slot's grant when the
slot is lost or its trust runs out (hold.py).

Fleet control (control.py): paused on this node's group, or the node draining, the
member stops its child, gives its slot back and leaves the membership (the publisher
rebalances the rest); it joins again once that is lifted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from supervisor.coordination import Grant
from supervisor.coordination.control import describe
from supervisor.coordination.port import NodePort
from supervisor.errors import StoreError
from supervisor.model import CoordinationSeen, Event, Mode, coord_lease
from supervisor.store import CoordSlot, CoordStatus, CoordView, Holder

log = logging.getLogger("supervisor")


class CoordinatedMode:
    """One coordinated worker on this node: membership, publishing, and its slot."""

    mode = Mode.COORDINATED

    def __init__(self, node: NodePort, worker: str, key: str, group: str, *,
                 instances: int | None, stable_window: float,
                 publish: Callable[[Event], None]) -> None:
        self._node = node
        self._publish = publish
        self._worker = worker
        self._key = key
        self._group = group
        self._instances = instances
        self._stable_window = stable_window
        self._view: CoordView | None = None
        self._changed = asyncio.Event()  # a new view, for acquire()
        self._news = asyncio.Event()  # a new view, for the publisher
        self._grant: Grant | None = None
        self._grant_generation = 0
        self._slot: CoordSlot | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._seen: frozenset[str] = frozenset()  # live members at the last look
        self._seen_since = 0.0  # loop time the live membership last changed
        self._judged: frozenset[str] = frozenset()  # live members at the last decision

    @property
    def assignment(self) -> tuple[int | None, int, int] | None:
        """(index, count, generation) of the latest view this node has seen (index None:
        standing by), or None before the first; for `supervisor ps`."""
        view = self._view
        if view is None:
            return None
        return view.index, view.count, view.generation

    # --- WorkerMode ------------------------------------------------------------------------

    async def acquire(self) -> Grant:
        self._node.control().watch(self._on_control)
        while True:
            self._changed.clear()
            held_back = self._held_back()
            if held_back is not None:
                await self._leave(held_back)
            else:
                self._start()
                view = self._view
                if view is not None and view.generation > 0 and view.index is not None:
                    grant = await self._try_slot(view, view.index)
                    if grant is not None:
                        self._on_control()  # paused while the slot was claimed: stop it
                        return grant
            if not self._changed.is_set():
                await self._changed.wait()

    async def release(self, grant: Grant, reason: str) -> None:
        slot, self._slot = self._slot, None
        self._grant = None
        if slot is None:
            return
        self._node.drop_slot(slot)
        try:
            await self._node.release_slot(slot)
        except StoreError as exc:
            log.warning("%s: could not release slot %d of generation %d (%s); it expires "
                        "by itself", self._worker, slot.index, slot.generation, exc)

    async def close(self) -> None:
        """The worker stops on this node for good: leave the membership."""
        self._node.control().unwatch(self._on_control)
        await self._stop_membership()

    async def _stop_membership(self) -> None:
        self._node.coord_leave(self._key)
        publisher, self._publisher = self._publisher, None
        self._view = None
        if publisher is not None:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
        with contextlib.suppress(StoreError):
            await self._node.coord_remove(self._key)

    # --- fleet control -----------------------------------------------------------------------

    def _held_back(self) -> str | None:
        """Why this node must not be a member now (paused here, draining), or None."""
        control = self._node.control()
        entry = control.draining() or control.pause_of(self._worker)
        return None if entry is None else describe(entry)

    def _on_control(self) -> None:
        """The control rows changed: a member held back stops its child and leaves."""
        self._changed.set()
        reason = self._held_back()
        if reason is not None and self._grant is not None:
            self._grant.revoke(reason)

    async def _leave(self, reason: str) -> None:
        if self._publisher is None:
            return
        log.info("%s: %s: leaving the membership of %s", self._worker, reason, self._key)
        await self._stop_membership()

    # --- membership and views --------------------------------------------------------------

    def _start(self) -> None:
        if self._publisher is None:
            self._node.coord_join(self._key, self._on_view)
            self._publisher = asyncio.get_running_loop().create_task(
                self._publish_while_leader(), name=f"coord-{self._worker}")

    def _on_view(self, view: CoordView, sent_at: float) -> None:
        self._view = view
        self._changed.set()
        self._news.set()
        grant = self._grant
        if grant is not None and view.generation > self._grant_generation:
            # A new generation: stop this child (its stop_timeout, or sooner if its trust
            # runs out meanwhile) and give the slot back.
            grant.revoke(f"generation {view.generation} was published")
        members = None if view.members is None else len(view.members)
        self._publish(CoordinationSeen(self._worker, view.generation, view.count, view.index,
                                       members))
        if view.members is not None:
            live = frozenset(m.holder.nonce for m in view.members)
            if live != self._seen:
                self._seen = live
                self._seen_since = asyncio.get_running_loop().time()

    async def _try_slot(self, view: CoordView, index: int) -> Grant | None:
        """Take slot `index` (this member's in `view`) of the view's generation."""
        sent = self._node.stamp()
        try:
            slot = await self._node.claim_slot(self._key, index, view.generation)
        except StoreError:
            return None
        if slot is None:
            return None  # the barrier: an older generation's slot is still held
        grant = Grant(env={
            "SUPERVISOR_WORKER_INDEX": str(slot.index),
            "SUPERVISOR_WORKER_COUNT": str(view.count),
            "SUPERVISOR_GENERATION": str(slot.generation),
        }, stop_grace=None)
        self._slot, self._grant, self._grant_generation = slot, grant, slot.generation
        self._node.keep_slot(slot, grant, sent)
        return grant

    # --- publishing --------------------------------------------------------------------------

    async def _publish_while_leader(self) -> None:
        lease = coord_lease(self._key)
        while True:
            grant = await self._node.wait_for(lease, self._worker, self._group)
            self._node.coord_watch(self._key, True)
            try:
                while not grant.revoked.is_set():
                    await self._maybe_publish()
                    self._news.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._node.timing.renew_interval):
                            await _either(self._news, grant.revoked)
            finally:
                self._node.coord_watch(self._key, False)
                await asyncio.shield(self._node.give_up(lease, "coordination handed on"))

    async def _maybe_publish(self) -> None:
        view = self._view
        if view is None or view.members is None:
            return
        loop = asyncio.get_running_loop()
        stable, since = self._seen, self._seen_since
        if loop.time() - since < self._stable_window:
            return  # membership is still moving: one rebalance for a burst, not one each
        try:
            status = await self._node.coord_view(self._key)
        except StoreError:
            return
        live = [m.holder for m in status.members]
        seen = frozenset(h.nonce for h in live)
        if seen != stable or self._seen_since != since:
            # It moved since the membership judged stable: in this fresh read, or in a
            # sync that landed during it (which restarted the window itself). Wait for
            # it to settle.
            if seen != self._seen:
                self._seen, self._seen_since = seen, loop.time()
            return
        plan = plan_assignment(status, live, self._instances)
        if plan is None:
            if status.generation > 0 and seen != self._judged:
                log.info("%s: %d live members; generation %d stands (no index or count "
                         "would change)", self._worker, len(live), status.generation)
            self._judged = seen
            return
        self._judged = seen
        indexes, count = plan
        with contextlib.suppress(StoreError):
            published = await self._node.coord_publish(
                self._key, expected=status.generation, members=live, indexes=indexes,
                count=count)
            if published is not None:
                log.info("%s: published generation %d: %d live members, count %d",
                         self._worker, published, len(live), count)


def plan_assignment(status: CoordStatus, live: Sequence[Holder], instances: int | None
                    ) -> tuple[list[int | None], int] | None:
    """The next generation's indexes for `live` (in join order) and its count, or None
    when the standing generation already gives every live member what it would get.

    The count is `instances`, or else the number of live members. A live member keeps
    its index while that is below the count; the indexes left go to the others in join
    order; the rest stand by. So a new generation, which restarts every instance, is
    published only when some live member's index or the count would change: standbys
    coming and going, or an index left vacant with nobody to take it, change nothing."""
    if not live:
        return None
    count = instances if instances is not None else len(live)
    before = {a.holder.nonce: a.index for a in status.assigned}
    kept = {h.nonce: index for h in live
            if (index := before.get(h.nonce)) is not None and index < count}
    free = iter(sorted(set(range(count)) - set(kept.values())))
    indexes = [kept[h.nonce] if h.nonce in kept else next(free, None) for h in live]
    if (status.generation > 0 and count == status.count
            and all(before.get(h.nonce) == index for h, index in zip(live, indexes, strict=True))):
        return None
    return indexes, count


async def _either(first: asyncio.Event, second: asyncio.Event) -> None:
    tasks = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
