"""Leader modes on the lease store: one node per lease runs the worker.

`LeaseKeeper` is the node's one coordination loop. Once per renew interval (with
jitter) it makes a single `node_sync` round trip that heartbeats the node,
renews every lease it holds and tries every lease a worker waits for. Workers
never talk to the database; a `LeaderMode` asks the keeper for a grant and the
keeper revokes it (coordination decides, runners obey).

Trust, the invariant everything rests on: a holder trusts a lease only until
`sent_at + renew_deadline` on its monotonic clock, `sent_at` taken before the
renewal that succeeded was sent. When trust runs out the grant is revoked and the
child gets `leader_stop_grace` seconds before SIGKILL, so it is dead before
`sent_at + lease_ttl`, the earliest instant the database can hand the lease to
anyone else (config validation refuses timings where this does not hold). A lease
the database says is lost is revoked with no grace at all, and so is one whose
trust ran out long ago (a process thawed after a freeze). Every database call is
bounded by a timeout no longer than the trust that is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from supervisor.coordination import Grant
from supervisor.errors import StoreError, StoreUnavailable
from supervisor.model import (
    DatabaseCall,
    Event,
    LeadershipGained,
    LeadershipLost,
    LeaseRenewed,
    Mode,
    NodeHeartbeat,
)
from supervisor.spec import CoordinationSpec
from supervisor.store import (
    CoordinationStore,
    CoordSlot,
    CoordView,
    CronRun,
    Holder,
    Lease,
    SyncResult,
)

log = logging.getLogger("supervisor")
T = TypeVar("T")
H = TypeVar("H", CronRun, CoordSlot)

_JITTER = 0.1  # a follower's retry interval varies by +-10 %, so nodes do not march in step
_UPGRADE_BACKOFF = (0.5, 15.0)
_MAINTAIN_EVERY = 30.0  # seconds between history upkeep passes (closing terms and runs,
# pruning), or two lease TTLs if shorter: a dead node's run shows as lost soon after expiry


@dataclass
class _Slot:
    """One lease this node holds or wants, and the grant handed to its worker."""

    name: str
    worker: str
    group: str
    wanted: bool = False
    lease: Lease | None = None
    trust_until: float = 0.0
    grant: Grant | None = None
    waiter: asyncio.Future[Grant] | None = None
    timer: asyncio.TimerHandle | None = None
    ensured: bool = False


@dataclass
class _Held(Generic[H]):
    """A cron run or a coordinated slot this node holds for a child: renewed in each
    sync and trusted like a lease; `grant` is revoked when either ends."""

    item: H
    grant: Grant
    what: str  # "run" or "slot", for the revocation's reason
    trust_until: float = 0.0
    timer: asyncio.TimerHandle | None = None


@dataclass
class KeeperState:
    """What `/readyz` and tests read: is the database answering this node?"""

    last_success: float | None = None  # monotonic
    failures: int = 0


class LeaseKeeper:
    """The node's coordination loop: membership, and every lease it holds or wants."""

    def __init__(
        self,
        store: CoordinationStore,
        holder: Holder,
        timing: CoordinationSpec,
        publish: Callable[[Event], None],
        *,
        upgrade: bool = True,
        history_keep: float = 7 * 86400.0,
    ) -> None:
        self.store = store
        self.holder = holder
        self.timing = timing
        self.state = KeeperState()
        self._publish = publish
        self._upgrade = upgrade
        self._history_keep = history_keep
        self._next_upkeep = 0.0
        self._slots: dict[str, _Slot] = {}
        self._runs: dict[int, _Held[CronRun]] = {}
        # coordinated workers: keys this node is a member of, with who hears their views
        self._coord: dict[str, Callable[[CoordView, float], None]] = {}
        self._held_slots: dict[tuple[str, int], _Held[CoordSlot]] = {}
        self._coord_watch: set[str] = set()  # keys whose whole membership we read
        self._db_offset: float | None = None  # database clock minus the loop's monotonic clock
        self._synced = asyncio.Event()
        self._wake = asyncio.Event()
        self._stopping = False
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fs-db")
        self._listener_stop = threading.Event()

    # --- what modes call ---------------------------------------------------------------------

    async def wait_for(self, name: str, worker: str, group: str) -> Grant:
        """Wait until this node holds `name`; the grant is revoked when it stops holding it."""
        slot = self._slots.setdefault(name, _Slot(name, worker, group))
        slot.wanted = True
        slot.waiter = asyncio.get_running_loop().create_future()
        self._wake.set()
        try:
            return await slot.waiter
        finally:
            slot.waiter = None

    async def give_up(self, name: str, reason: str) -> None:
        """The worker's child has stopped: release the lease at once (or let it expire)."""
        slot = self._slots.get(name)
        if slot is None:
            return
        slot.wanted = False
        lease = self._drop(slot)
        if lease is None:
            return
        try:
            remaining = max(0.2, self.timing.renew_deadline)
            await self._call(self.store.lease_release, lease, reason=reason, within=remaining)
        except StoreError as exc:
            log.warning("%s: could not release lease %s (%s); it expires by itself",
                        slot.worker, name, exc)
        self._publish(LeadershipLost(slot.worker, slot.group, name, lease.term, reason))

    # --- the database clock, and cron runs -------------------------------------------------

    async def clock_ready(self) -> None:
        """Wait until one sync has measured the database clock."""
        await self._synced.wait()

    def db_time(self) -> float:
        """The database's clock now, from the offset measured by the last sync (no call)."""
        if self._db_offset is None:
            raise RuntimeError("the database clock is not measured yet (await clock_ready())")
        return asyncio.get_running_loop().time() + self._db_offset

    def loop_time_of(self, db_time: float) -> float:
        """The loop (monotonic) time at which the database's clock reads `db_time`."""
        if self._db_offset is None:
            raise RuntimeError("the database clock is not measured yet (await clock_ready())")
        return db_time - self._db_offset

    async def call(self, fn: Callable[..., T], *args: Any, within: float | None = None,
                   **kwargs: Any) -> T:
        """A bounded store call in the keeper's database threads (for modes)."""
        bound = self.timing.renew_deadline if within is None else within
        return await self._call(fn, *args, within=bound, **kwargs)

    def track_run(self, run: CronRun, grant: Grant, sent_at: float) -> None:
        """Renew `run` in every sync from now on, trusted until `sent_at + renew_deadline`
        (sent_at: loop time before the claim was sent); `grant` is revoked when the
        run is lost, when trust runs out, or when a later tick asks it to stop."""
        held = self._runs[run.token] = _Held(run, grant, "run")
        self._trust_held(held, sent_at + self.timing.renew_deadline)

    def untrack_run(self, token: int) -> None:
        self._forget(self._runs.pop(token, None))

    # --- coordinated workers ---------------------------------------------------------------

    def coord_join(self, key: str, on_view: Callable[[CoordView, float], None]) -> None:
        """Be a member of `key` from the next sync on; `on_view(view, sent_at)` hears
        what each sync saw of it."""
        self._coord[key] = on_view
        self._wake.set()

    def coord_leave(self, key: str) -> None:
        self._coord.pop(key, None)
        self._coord_watch.discard(key)

    def coord_watch(self, key: str, watch: bool) -> None:
        """Read the key's whole membership in each sync (only its publisher needs it)."""
        if watch:
            self._coord_watch.add(key)
        else:
            self._coord_watch.discard(key)
        self._wake.set()

    def track_slot(self, slot: CoordSlot, grant: Grant, sent_at: float) -> None:
        held = self._held_slots[(slot.worker_key, slot.index)] = _Held(slot, grant, "slot")
        self._trust_held(held, sent_at + self.timing.renew_deadline)

    def untrack_slot(self, slot: CoordSlot) -> None:
        self._forget(self._held_slots.pop((slot.worker_key, slot.index), None))

    def _synced_coord(self, result: SyncResult, sent_at: float) -> None:
        for key, slot in result.slots_kept.items():
            self._renewed(self._held_slots.get(key), slot, sent_at)
        for key in result.slots_lost:
            self._lost(self._held_slots.pop(key, None),
                       "the database no longer shows this node holding its slot")
        for name, view in result.coord.items():
            listener = self._coord.get(name)
            if listener is not None:
                listener(view, sent_at)

    # --- runs and slots: trusted like leases ------------------------------------------------

    def _trust_held(self, held: _Held[H], until: float) -> None:
        held.trust_until = until
        if held.timer is not None:
            held.timer.cancel()
        held.timer = asyncio.get_running_loop().call_at(until, self._held_trust_expired, held)

    def _held_trust_expired(self, held: _Held[H]) -> None:
        held.timer = None
        late = asyncio.get_running_loop().time() - held.trust_until
        grace = max(0.0, self.timing.leader_stop_grace - late)
        self._revoke_grant(held.grant, f"could not renew the {held.what} within "
                                       f"renew_deadline ({self.timing.renew_deadline:g}s)", grace)

    def _renewed(self, held: _Held[H] | None, item: H, sent_at: float) -> None:
        if held is not None:
            held.item = item
            self._trust_held(held, sent_at + self.timing.renew_deadline)

    def _lost(self, held: _Held[H] | None, reason: str) -> None:
        """The database says it is gone: no longer renewed, its child killed at once."""
        if held is not None:
            self._forget(held)
            self._revoke_grant(held.grant, reason, 0.0)

    def _forget(self, held: _Held[H] | None) -> None:
        if held is not None and held.timer is not None:
            held.timer.cancel()
            held.timer = None

    def _revoke_grant(self, grant: Grant, reason: str, grace: float | None) -> None:
        if grant.revoked.is_set():
            if grace is not None and (grant.stop_grace is None or grace < grant.stop_grace):
                grant.stop_grace = grace  # tighter than what it was stopping with
                grant.hurry.set()
            return
        grant.reason = reason
        grant.stop_grace = grace
        grant.revoked.set()

    # --- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: upgrade the schema, then sync once per renew interval."""
        loop = asyncio.get_running_loop()
        if self._upgrade:
            await self._upgrade_with_retries()
        # A daemon thread, not the default executor: asyncio.run() waits for that at exit.
        listener = threading.Thread(target=self._listen, args=(loop,), daemon=True,
                                    name="fs-listen")
        listener.start()
        try:
            while True:
                self._wake.clear()
                await self._sync()
                await self._upkeep()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval()):
                        await self._wake.wait()
        finally:
            self._listener_stop.set()

    def _interval(self) -> float:
        """A renew interval with jitter; while the database fails and nothing is held,
        backing off up to half a lease TTL (a holder keeps trying every interval)."""
        base = self.timing.renew_interval
        failures = self.state.failures
        holding = self._runs or self._held_slots or any(s.lease for s in self._slots.values())
        if failures and not holding:
            base = min(base * 2 ** min(failures, 8), max(base, self.timing.lease_ttl / 2))
        return base * (1 + _JITTER * (2 * random.random() - 1))

    async def _upgrade_with_retries(self) -> None:
        delay = _UPGRADE_BACKOFF[0]
        while True:
            try:
                await self._call(self.store.upgrade, within=60.0)
                return
            except StoreError as exc:
                log.warning("database not ready (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(_UPGRADE_BACKOFF[1], delay * 2)

    async def _sync(self) -> None:
        for slot in self._slots.values():
            if slot.wanted and not slot.ensured:
                await self._ensure_rows()
                break
        held = [s.lease for s in self._slots.values() if s.lease is not None]
        wanted = [s.name for s in self._slots.values()
                  if s.wanted and s.lease is None and s.waiter is not None]
        runs = [r.item for r in self._runs.values()]
        loop = asyncio.get_running_loop()
        sent_at, wall_sent = loop.time(), time.time()
        trusts = [s.trust_until for s in self._slots.values() if s.lease]
        trusts += [r.trust_until for r in self._runs.values()]
        trusts += [h.trust_until for h in self._held_slots.values()]
        trust_left = min(trusts, default=sent_at + self.timing.renew_deadline) - sent_at
        bound = max(0.05, min(self.timing.renew_deadline, trust_left))
        extra: dict[str, Any] = {"runs": runs} if runs else {}
        if self._coord:
            # Only the publisher of a key reads its whole membership: rows read per
            # sync must not grow with the fleet on every node.
            extra.update(coord_members=list(self._coord),
                         coord_slots=[h.item for h in self._held_slots.values()],
                         coord_watch=sorted(self._coord_watch))
        try:
            result = await self._call(self.store.node_sync, self.holder, held=held,
                                      wanted=wanted, ttl=self.timing.lease_ttl, within=bound,
                                      **extra)
        except StoreError as exc:
            self._failed(exc, held)
            return
        received = loop.time()
        self.state.last_success = received
        self.state.failures = 0
        wall_now = time.time()
        self._db_offset = result.db_now - (sent_at + received) / 2
        self._synced.set()
        self._publish(NodeHeartbeat("", wall_now, result.db_now - (wall_sent + wall_now) / 2))
        self._synced_runs(result, sent_at)
        self._synced_coord(result, sent_at)
        for name in result.lost:
            self._revoke(self._slots[name], "the database no longer shows this node holding it",
                         grace=0.0)
        for name, lease in result.kept.items():
            slot = self._slots[name]
            slot.lease = lease
            self._trust(slot, sent_at + self.timing.renew_deadline)
            self._publish(LeaseRenewed(slot.worker, slot.group, True))
        for name, lease in result.acquired.items():
            self._gained(self._slots[name], lease, sent_at)

    def _synced_runs(self, result: SyncResult, sent_at: float) -> None:
        for token, run in result.runs_kept.items():
            self._renewed(self._runs.get(token), run, sent_at)
        for token in result.runs_lost:
            self._lost(self._runs.pop(token, None),
                       "the database no longer shows this run as running")
        for token in result.runs_stop:
            held = self._runs.get(token)
            if held is not None:
                # overlap = replace: a later tick waits for this run; stop it as a leader
                # stops (never slower than trust allows).
                self._revoke_grant(held.grant, "replaced by a later tick",
                                   self.timing.leader_stop_grace)

    async def _upkeep(self) -> None:
        """Now and then: close terms of dead holders, prune old history (small batches)."""
        now = asyncio.get_running_loop().time()
        if now < self._next_upkeep:
            return
        every = min(_MAINTAIN_EVERY, 2 * self.timing.lease_ttl)
        self._next_upkeep = now + every * (1 + random.random())
        with contextlib.suppress(StoreError):
            await self._call(self.store.maintain, self._history_keep,
                             within=self.timing.renew_deadline)

    def _failed(self, exc: StoreError, held: list[Lease]) -> None:
        self.state.failures += 1
        if self.state.failures == 1 or self.state.failures % 30 == 0:
            log.warning("coordination: database call failed (%s), %d in a row",
                        exc, self.state.failures)
        for lease in held:
            slot = self._slots[lease.name]
            self._publish(LeaseRenewed(slot.worker, slot.group, False))

    async def _ensure_rows(self) -> None:
        names = [s.name for s in self._slots.values() if not s.ensured]
        try:
            await self._call(self.store.lease_ensure, names, within=self.timing.renew_deadline)
        except StoreError:
            return
        for name in names:
            self._slots[name].ensured = True

    def _gained(self, slot: _Slot, lease: Lease, sent_at: float) -> None:
        if slot.waiter is None or slot.waiter.done():
            # Nobody waits any more (the worker stopped meanwhile): hand it back.
            asyncio.get_running_loop().create_task(self._release_unwanted(lease))
            return
        slot.lease = lease
        slot.grant = Grant(
            env={"SUPERVISOR_FENCING_TOKEN": str(lease.term)},
            stop_grace=self.timing.leader_stop_grace,
        )
        self._trust(slot, sent_at + self.timing.renew_deadline)
        self._publish(LeadershipGained(slot.worker, slot.group, slot.name, lease.term))
        slot.waiter.set_result(slot.grant)

    async def _release_unwanted(self, lease: Lease) -> None:
        with contextlib.suppress(StoreError):
            await self._call(self.store.lease_release, lease, reason="no longer wanted",
                             within=self.timing.renew_deadline)

    def _trust(self, slot: _Slot, until: float) -> None:
        slot.trust_until = until
        if slot.timer is not None:
            slot.timer.cancel()
        loop = asyncio.get_running_loop()
        slot.timer = loop.call_at(until, self._trust_expired, slot)

    def _trust_expired(self, slot: _Slot) -> None:
        late = asyncio.get_running_loop().time() - slot.trust_until
        grace = max(0.0, self.timing.leader_stop_grace - late)  # thawed late: kill at once
        self._revoke(slot, f"could not renew within renew_deadline "
                           f"({self.timing.renew_deadline:g}s)", grace=grace)

    def _revoke(self, slot: _Slot, reason: str, *, grace: float) -> None:
        lease = self._drop(slot)
        if slot.grant is not None:
            slot.grant.stop_grace = grace
            slot.grant.revoked.set()
            slot.grant = None
        if lease is not None:
            self._publish(LeadershipLost(slot.worker, slot.group, slot.name, lease.term, reason))

    def _drop(self, slot: _Slot) -> Lease | None:
        lease, slot.lease = slot.lease, None
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        return lease

    # --- stopping ----------------------------------------------------------------------------

    def ready(self) -> bool:
        """The database answered this node within the last renew_deadline."""
        last = self.state.last_success
        if last is None:
            return False
        return asyncio.get_running_loop().time() - last < self.timing.renew_deadline

    async def close(self) -> None:
        """Release what is still held and leave the membership, each bounded in time."""
        for slot in list(self._slots.values()):
            if slot.lease is not None:
                await self.give_up(slot.name, "supervisor stopped")
        with contextlib.suppress(StoreError):
            await self._call(self.store.node_leave, self.holder,
                             within=self.timing.renew_deadline)
        self._listener_stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, self.store.close)

    # --- plumbing ------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, within: float, **kwargs: Any) -> T:
        """Run a store call in a database thread, bounded; a late call is interrupted."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        ok = False
        try:
            async with asyncio.timeout(within):
                result = await future
            ok = True
            return result
        except TimeoutError:
            interrupt = getattr(self.store, "interrupt", None)
            if interrupt is not None:
                interrupt()
            raise StoreUnavailable(f"no answer within {within:.2f}s") from None
        finally:
            self._publish(DatabaseCall("", fn.__name__, loop.time() - started, ok))

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """PostgreSQL NOTIFY on release: wake at once (a hint; polling stays correct)."""
        listen = getattr(self.store, "listen_released", None)
        if listen is None:
            return
        while not self._listener_stop.is_set():
            try:
                if not listen(lambda: loop.call_soon_threadsafe(self._wake.set),
                              self._listener_stop):
                    return  # this database has no notifications: polling alone
            except Exception:  # a hint only: never let it take the node down
                self._listener_stop.wait(self.timing.renew_interval * 5)


class LeaderMode:
    """`global-leader` / `group-leader`: the worker runs only while this node holds its lease."""

    def __init__(self, keeper: LeaseKeeper, mode: Mode, lease: str, worker: str,
                 group: str) -> None:
        self.mode = mode
        self._keeper = keeper
        self._lease = lease
        self._worker = worker
        self._group = group

    async def acquire(self) -> Grant:
        return await self._keeper.wait_for(self._lease, self._worker, self._group)

    async def release(self, grant: Grant, reason: str) -> None:
        await self._keeper.give_up(self._lease, reason)


def new_holder(node_id: str, group: str) -> Holder:
    """This process's identity: node, pid and a random nonce, so two on one host differ."""
    return Holder(node_id, group, os.getpid(), secrets.token_hex(8))


def lease_name(worker: str, mode: Mode, scope: str | None, group: str) -> str:
    if mode is Mode.GROUP_LEADER and scope != "global":
        return f"leader/{worker}/{group}"
    return f"leader/{worker}"
