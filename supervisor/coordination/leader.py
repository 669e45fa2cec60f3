"""Leader modes on the lease store: one node per lease runs the worker.

`LeaseKeeper` is the node's one coordination loop. Once per renew interval (with
jitter) it makes a single `node_sync` round trip that heartbeats the node,
renews every lease it holds and tries every lease a worker waits for. Workers
never talk to the database; a `LeaderMode` asks the keeper for a grant and the
keeper revokes it (coordination decides, runners obey).

Trust, the invariant everything rests on: a holder trusts a lease only until
`sent_at + renew_deadline` on its monotonic clock, `sent_at` taken before the
renewal that succeeded was sent. When trust runs out the grant is revoked and the
child must be dead `leader_stop_grace` seconds later, before `sent_at + lease_ttl`,
the earliest instant the database can hand the lease to anyone else (config
validation refuses timings where this does not hold). A lease the database says is
lost is revoked with no grace at all, and so is one whose trust ran out long ago (a
process thawed after a freeze). Every database call is bounded by a timeout no
longer than the trust that is left.

Each grant also carries its trust on the boot clock (`sent_boot + renew_deadline`,
read beside `sent_at`): the child path hands `trust_until + leader_stop_grace` to the
trust watchdog, a separate process that SIGKILLs the child then even if this loop
never runs again (blocked, starved, stopped). A renewal moves it on.

One bad row never stops the others: a lease, run or coordinated key whose write the
database refuses (a constraint, a value out of range) is rolled back alone by the
store and reported in the sync's result; here it is told once as an ERROR, its child
is stopped, and it sits out the syncs for a lease TTL at a time (quarantine.py). A
lease row that vanished is created again (restored by the store from its history)
before the lease is tried: when a worker first asks, after this node lost the lease,
and every lease TTL while a worker still waits.
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from supervisor.clock import boottime
from supervisor.coordination import Grant
from supervisor.coordination.dblane import OTHER, RELEASE, SYNC, DbLane
from supervisor.coordination.quarantine import Quarantine
from supervisor.errors import SchemaNewer, StoreError, StoreRefused, StoreUnavailable
from supervisor.model import (
    DatabaseCall,
    Event,
    LeadershipGained,
    LeadershipLost,
    LeaseRenewed,
    Mode,
    NodeHeartbeat,
    parse_coord_key,
)
from supervisor.spec import CoordinationSpec
from supervisor.store import (
    CoordinationStore,
    CoordSlot,
    CoordView,
    CronRun,
    Holder,
    Lease,
    NodeFacts,
    SyncRefusal,
    SyncResult,
)

if TYPE_CHECKING:
    from supervisor.store.compat import SchemaState

log = logging.getLogger("supervisor")
T = TypeVar("T")
H = TypeVar("H", CronRun, CoordSlot)

_JITTER = 0.1  # a follower's retry interval varies by +-10 %, so nodes do not march in step
_UPGRADE_BACKOFF = (0.5, 15.0)
_SCHEMA_RECHECK = 30.0  # seconds between looks at a schema that refuses this release
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
    # Why this node coordinates nothing (the schema needs a later release), else None.
    refused: str | None = None


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
        self._told_newer = False
        self._next_ensure = 0.0  # when rows of leases still waited for are ensured again
        self._quarantine = Quarantine(timing.lease_ttl)  # parts the database refused
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
        # Every store call goes through one lane: one thread, one connection, syncs first.
        self._lane: DbLane | None = None
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
            await self._call(self.store.lease_release, lease, reason=reason, within=remaining,
                             priority=RELEASE)
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
                   release: bool = False, **kwargs: Any) -> T:
        """A bounded store call in the node's database lane (for modes), after any sync
        waiting there; `release` (giving something back) goes before other mode calls."""
        bound = self.timing.renew_deadline if within is None else within
        return await self._call(fn, *args, within=bound,
                                priority=RELEASE if release else OTHER, **kwargs)

    def stamp(self) -> tuple[float, float]:
        """(loop time, boot time) now: take it just before sending a call whose success
        is trusted, and pass it to track_run / track_slot."""
        return asyncio.get_running_loop().time(), boottime()

    def track_run(self, run: CronRun, grant: Grant, sent: tuple[float, float]) -> None:
        """Renew `run` in every sync from now on, trusted until `renew_deadline` after
        `sent` (the stamp taken before the claim was sent); `grant` is revoked when the
        run is lost, when trust runs out, or when a later tick asks it to stop."""
        held = self._runs[run.token] = _Held(run, grant, "run")
        self._trust_held(held, sent)

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

    def track_slot(self, slot: CoordSlot, grant: Grant, sent: tuple[float, float]) -> None:
        held = self._held_slots[(slot.worker_key, slot.index)] = _Held(slot, grant, "slot")
        self._trust_held(held, sent)

    def untrack_slot(self, slot: CoordSlot) -> None:
        self._forget(self._held_slots.pop((slot.worker_key, slot.index), None))

    def _synced_coord(self, result: SyncResult, sent: tuple[float, float]) -> None:
        sent_at = sent[0]
        for key, slot in result.slots_kept.items():
            self._renewed(self._held_slots.get(key), slot, sent)
        for key in result.slots_lost:
            self._lost(self._held_slots.pop(key, None),
                       "the database no longer shows this node holding its slot")
        for name, view in result.coord.items():
            listener = self._coord.get(name)
            if listener is not None:
                listener(view, sent_at)

    # --- runs and slots: trusted like leases ------------------------------------------------

    def _trust_held(self, held: _Held[H], sent: tuple[float, float]) -> None:
        until = sent[0] + self.timing.renew_deadline
        held.trust_until = until
        held.grant.trust_grace = self.timing.leader_stop_grace
        held.grant.renew(sent[1] + self.timing.renew_deadline)
        if held.timer is not None:
            held.timer.cancel()
        held.timer = asyncio.get_running_loop().call_at(until, self._held_trust_expired, held)

    def _held_trust_expired(self, held: _Held[H]) -> None:
        held.timer = None
        held.grant.revoke(f"could not renew the {held.what} within renew_deadline "
                          f"({self.timing.renew_deadline:g}s)",
                          kill_by=held.grant.trust_deadline(), now=boottime())

    def _renewed(self, held: _Held[H] | None, item: H, sent: tuple[float, float]) -> None:
        if held is not None:
            held.item = item
            self._trust_held(held, sent)

    def _lost(self, held: _Held[H] | None, reason: str) -> None:
        """The database says it is gone: no longer renewed, its child killed at once."""
        if held is not None:
            self._forget(held)
            now = boottime()
            held.grant.revoke(reason, kill_by=now, now=now)

    def _forget(self, held: _Held[H] | None) -> None:
        if held is not None and held.timer is not None:
            held.timer.cancel()
            held.timer = None

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
                if self.state.refused is None:
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
                found = await self._call(self.store.upgrade, within=60.0)
            except SchemaNewer as exc:
                # Not for this release to touch: hold nothing, keep asking (an operator
                # may roll the schema back); every-node workers run on meanwhile.
                self._refuse(exc)
                await asyncio.sleep(_SCHEMA_RECHECK)
                continue
            except StoreError as exc:
                log.warning("database not ready (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(_UPGRADE_BACKOFF[1], delay * 2)
                continue
            self._accept(found)
            return

    def _refuse(self, exc: SchemaNewer) -> None:
        if self.state.refused is None:
            log.error("%s. Until then this node coordinates nothing: its leader, cron and"
                      " coordinated workers do not run, its every-node workers run on, and"
                      " /readyz reports not ready", exc)
        self.state.refused = str(exc)

    def _accept(self, found: SchemaState | None) -> None:
        if self.state.refused is not None:
            log.info("the database schema is usable again; coordinating")
            self.state.refused = None
        if found is not None and found.newer and not self._told_newer:
            self._told_newer = True
            log.info("the database schema is newer than this supervisor (%s); this release"
                     " can still use it", found.describe())

    async def _sync(self) -> None:
        await self._ensure_rows()
        loop = asyncio.get_running_loop()
        out = functools.partial(self._quarantine.out, now=loop.time())
        held = [s.lease for s in self._slots.values() if s.lease is not None]
        wanted = [s.name for s in self._slots.values() if s.wanted and s.lease is None
                  and s.waiter is not None and not out("lease", s.name)]
        runs = [r.item for r in self._runs.values()]
        sent = self.stamp()
        sent_at, wall_sent = sent[0], time.time()
        trusts = [s.trust_until for s in self._slots.values() if s.lease]
        trusts += [r.trust_until for r in self._runs.values()]
        trusts += [h.trust_until for h in self._held_slots.values()]
        trust_left = min(trusts, default=sent_at + self.timing.renew_deadline) - sent_at
        bound = max(0.05, min(self.timing.renew_deadline, trust_left))
        extra: dict[str, Any] = {"runs": runs} if runs else {}
        if self._coord:
            # Only the publisher of a key reads its whole membership: rows read per
            # sync must not grow with the fleet on every node.
            extra.update(coord_members=[key for key in self._coord if not out("coord", key)],
                         coord_slots=[h.item for h in self._held_slots.values()],
                         coord_watch=sorted(self._coord_watch))
        try:
            result = await self._call(self.store.node_sync, self.holder, held=held,
                                      wanted=wanted, ttl=self.timing.lease_ttl, within=bound,
                                      priority=SYNC, **extra)
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
        self._synced_refusals(result, received)
        self._synced_runs(result, sent)
        self._synced_coord(result, sent)
        for name in result.lost:
            slot = self._slots[name]
            slot.ensured = False  # its row may be gone: create it again before trying it
            self._revoke(slot, "the database no longer shows this node holding it",
                         kill_by=boottime())
        for name, lease in result.kept.items():
            slot = self._slots[name]
            slot.lease = lease
            self._trust(slot, sent)
            self._publish(LeaseRenewed(slot.worker, slot.group, True))
        for name, lease in result.acquired.items():
            self._quarantine.passed("lease", name, self._slots[name].worker, f"lease {name}")
            self._gained(self._slots[name], lease, sent)

    def _synced_refusals(self, result: SyncResult, now: float) -> None:
        """What the database refused because of a row, the rest of the sync having gone
        through: told, its child stopped at once, and left out of syncs for a while."""
        for refusal in result.refused:
            what = f"{refusal.kind} {refusal.key}"
            reason = f"the database refuses it: {refusal.reason}"
            if refusal.kind == "lease" and refusal.key in self._slots:
                slot = self._slots[refusal.key]
                self._quarantine.refused(refusal, slot.worker, what, now)
                slot.ensured = False
                self._revoke(slot, reason, kill_by=boottime())
            elif refusal.kind == "run" and refusal.key.isdigit():
                held = self._runs.pop(int(refusal.key), None)
                worker = "cron" if held is None else held.item.worker
                self._quarantine.refused(refusal, worker, what, now, keep_out=False)
                self._lost(held, reason)
            elif refusal.kind == "coord":
                # its slots are in slots_lost: _synced_coord stops their children
                worker = parse_coord_key(refusal.key)[0]
                self._quarantine.refused(refusal, worker, f"coordinated {what}", now)
        for key in result.coord:
            self._quarantine.passed("coord", key, parse_coord_key(key)[0], f"coordinated {key}")

    def _synced_runs(self, result: SyncResult, sent: tuple[float, float]) -> None:
        for token, run in result.runs_kept.items():
            self._renewed(self._runs.get(token), run, sent)
        for token in result.runs_lost:
            self._lost(self._runs.pop(token, None),
                       "the database no longer shows this run as running")
        for token in result.runs_stop:
            held = self._runs.get(token)
            if held is not None:
                # overlap = replace: a later tick waits for this run; stop it as a leader
                # stops (never slower than trust allows).
                now = boottime()
                held.grant.revoke("replaced by a later tick",
                                  kill_by=now + self.timing.leader_stop_grace, now=now)

    async def _upkeep(self) -> None:
        """Now and then: close terms of dead holders, prune old history (small batches)."""
        now = asyncio.get_running_loop().time()
        if now < self._next_upkeep:
            return
        every = min(_MAINTAIN_EVERY, 2 * self.timing.lease_ttl)
        self._next_upkeep = now + every * (1 + random.random())
        # A newer release may have migrated the schema under this node (a rolling
        # upgrade): carry on if it admits this release, else stop coordinating.
        try:
            self._accept(await self._call(self.store.schema_state,
                                          within=self.timing.renew_deadline))
        except SchemaNewer as exc:
            self._refuse(exc)
            return
        except StoreError:
            pass
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
        """Create the rows of the leases this node waits for: when a worker first asks,
        after this node lost one (its row may be gone), and every lease_ttl while any
        still waits (a row deleted while another node held it: that node may be gone,
        and nobody else would create it again). A node holding all it wants calls none."""
        now = asyncio.get_running_loop().time()
        waiting = [s for s in self._slots.values() if s.wanted and s.lease is None
                   and not self._quarantine.out("lease", s.name, now)]
        due = waiting if now >= self._next_ensure else [s for s in waiting if not s.ensured]
        if not due:
            return
        try:
            await self._call(self.store.lease_ensure, [s.name for s in due],
                             within=self.timing.renew_deadline)
        except StoreRefused:
            await self._ensure_each(due, now)
            return
        except StoreError:
            return  # the sync that follows says why
        for slot in due:
            slot.ensured = True
        self._next_ensure = now + self.timing.lease_ttl

    async def _ensure_each(self, due: list[_Slot], now: float) -> None:
        """The database refused the rows because of one: each on its own, so that only
        the bad one is left out."""
        for slot in due:
            try:
                await self._call(self.store.lease_ensure, [slot.name],
                                 within=self.timing.renew_deadline)
            except StoreRefused as exc:
                self._quarantine.refused(SyncRefusal("lease", slot.name, str(exc)),
                                         slot.worker, f"lease {slot.name}", now)
                continue
            except StoreError:
                return
            slot.ensured = True

    def _gained(self, slot: _Slot, lease: Lease, sent: tuple[float, float]) -> None:
        if slot.waiter is None or slot.waiter.done():
            # Nobody waits any more (the worker stopped meanwhile): hand it back.
            asyncio.get_running_loop().create_task(self._release_unwanted(lease))
            return
        slot.lease = lease
        slot.grant = Grant(
            env={"SUPERVISOR_FENCING_TOKEN": str(lease.term)},
            stop_grace=self.timing.leader_stop_grace,
            trust_grace=self.timing.leader_stop_grace,
        )
        self._trust(slot, sent)
        self._publish(LeadershipGained(slot.worker, slot.group, slot.name, lease.term))
        slot.waiter.set_result(slot.grant)

    async def _release_unwanted(self, lease: Lease) -> None:
        with contextlib.suppress(StoreError):
            await self._call(self.store.lease_release, lease, reason="no longer wanted",
                             within=self.timing.renew_deadline, priority=RELEASE)

    def _trust(self, slot: _Slot, sent: tuple[float, float]) -> None:
        until = sent[0] + self.timing.renew_deadline
        slot.trust_until = until
        if slot.grant is not None:
            slot.grant.renew(sent[1] + self.timing.renew_deadline)
        if slot.timer is not None:
            slot.timer.cancel()
        loop = asyncio.get_running_loop()
        slot.timer = loop.call_at(until, self._trust_expired, slot)

    def _trust_expired(self, slot: _Slot) -> None:
        # Dead by trust + grace on the boot clock: a loop thawed late kills at once.
        kill_by = boottime() if slot.grant is None else slot.grant.trust_deadline()
        self._revoke(slot, f"could not renew within renew_deadline "
                           f"({self.timing.renew_deadline:g}s)", kill_by=kill_by)

    def _revoke(self, slot: _Slot, reason: str, *, kill_by: float) -> None:
        lease = self._drop(slot)
        if slot.grant is not None:
            slot.grant.revoke(reason, kill_by=kill_by, now=boottime())
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
                             within=self.timing.renew_deadline, priority=RELEASE)
        self._listener_stop.set()
        if self._lane is not None:
            self._lane.close()
        await asyncio.get_running_loop().run_in_executor(None, self.store.close)

    # --- plumbing ------------------------------------------------------------------------------

    def _lane_for(self, loop: asyncio.AbstractEventLoop) -> DbLane:
        if self._lane is None:
            wake = functools.partial(loop.call_soon_threadsafe, self._wake.set)
            self._lane = DbLane(self.store, on_notify=wake)
        return self._lane

    async def _call(self, fn: Callable[..., T], *args: Any, within: float,
                    priority: int = OTHER, **kwargs: Any) -> T:
        """Run a store call in the node's database lane, bounded as a whole (its wait in
        the queue included): a call still queued at the bound never runs, the call in
        flight is cut."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        lane = self._lane_for(loop)
        job = lane.submit(functools.partial(fn, *args, **kwargs), priority)
        ok = False
        try:
            async with asyncio.timeout(within):
                result: T = await asyncio.wrap_future(job)
            ok = True
            return result
        except TimeoutError:
            lane.abandon(job)
            raise StoreUnavailable(f"no answer within {within:.2f}s") from None
        except asyncio.CancelledError:
            lane.abandon(job)
            raise
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
    """This process's identity: node, pid and a random nonce, so two on one host differ;
    with the facts its membership row reports (release, time-zone data)."""
    return Holder(node_id, group, os.getpid(), secrets.token_hex(8),
                  NodeFacts.of_this_process())
