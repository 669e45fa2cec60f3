"""The node sync: a node's one coordination loop, its database clock and its database lane.

Once per renew interval (with jitter) `NodeSync` makes a single `node_sync` round trip
that heartbeats the node, renews every lease, cron run and coordinated slot it holds,
tries every lease a worker waits for, renews its coordinated memberships and reads the
views of them. However many workers a node runs, that is one call per interval. Workers
never talk to the database; the modes ask the node sync, through `port.NodePort`, for
what they need, and the node sync revokes a grant when its hold ends (coordination
decides, runners obey). Each hold is trusted as hold.py says.

Invariants:
- Every store call goes through one lane (dblane.py: one thread, one connection, syncs
  first) and is bounded as a whole; a sync is bounded by the trust left in what the
  node holds, so no call outlives the trust it would renew.
- The database clock: each sync measures `db_now - midpoint(sent, received)` on the
  loop's monotonic clock; `db_time()` and `loop_time_of()` apply that offset, without
  a call. Expiry is judged on the database's clock, never on a node's wall clock.
- One bad row never stops the others: a lease, run or coordinated key whose write the
  database refuses (a constraint, a value out of range) is rolled back alone by the
  store and reported in the sync's result; here it is told once as an ERROR, its child
  is stopped, and it sits out the syncs for a lease TTL at a time (quarantine.py).
- A schema that needs a later release makes the node sync nothing (it holds nothing
  and reports not ready) while it keeps looking; upkeep.py has the schema checks and
  the history upkeep between syncs.
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
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from supervisor.clock import boottime
from supervisor.coordination import Grant
from supervisor.coordination.control import (
    FleetControl,
    control_sync_args,
    stop_paused_runs,
    summarize,
)
from supervisor.coordination.dblane import OTHER, RELEASE, SYNC, DbLane
from supervisor.coordination.hold import HeldTable, Stamp
from supervisor.coordination.leases import Leases
from supervisor.coordination.port import OnTriggers, OnView
from supervisor.coordination.quarantine import Quarantine
from supervisor.coordination.upkeep import SyncState, Upkeep
from supervisor.errors import StoreError, StoreUnavailable
from supervisor.model import DatabaseCall, Event, NodeHeartbeat, parse_coord_key
from supervisor.spec import CoordinationSpec
from supervisor.store import (
    ClaimOutcome,
    CoordinationStore,
    CoordSlot,
    CoordStatus,
    CronRecorded,
    CronRun,
    Holder,
    Lease,
    NodeFacts,
    NodeReport,
    SyncResult,
)

log = logging.getLogger("supervisor")
T = TypeVar("T")

_JITTER = 0.1  # a follower's retry interval varies by +-10 %, so nodes do not march in step


class NodeSync:
    """The node's coordination loop: membership, and everything it holds or wants.
    It is the modes' `NodePort`."""

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
        self.state = SyncState()
        self._publish = publish
        self._upgrade = upgrade
        self._upkeep = Upkeep(store, timing, self.state, self._call, history_keep)
        self._quarantine = Quarantine(timing.lease_ttl)  # parts the database refused
        self._wake = asyncio.Event()
        self._leases = Leases(store, timing, publish, self._call, self._quarantine,
                              self._wake.set)
        self.fleet = FleetControl(holder)  # pauses, drains, handovers (control.py)
        self._leases.blocked = self.fleet.blocked
        self._reported: NodeReport | None = None  # what this node's row last got
        # This node's workers' states by name (the Supervisor sets it), published with
        # the syncs in its membership row, only when they changed.
        self.worker_states: Callable[[], dict[str, str]] = dict
        self._runs: HeldTable[int, CronRun] = HeldTable(timing, "run")
        self._slots: HeldTable[tuple[str, int], CoordSlot] = HeldTable(timing, "slot")
        # coordinated workers: keys this node is a member of, with who hears their views
        self._coord: dict[str, OnView] = {}
        self._coord_watch: set[str] = set()  # keys whose whole membership we read
        self._triggers: dict[str, OnTriggers] = {}  # cron workers hearing their triggers
        self._db_offset: float | None = None  # database clock minus the loop's monotonic clock
        self._synced = asyncio.Event()
        # Every store call goes through one lane: one thread, one connection, syncs first.
        self._lane: DbLane | None = None
        self._listener_stop = threading.Event()

    # --- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: upgrade the schema, then sync once per renew interval."""
        loop = asyncio.get_running_loop()
        if self._upgrade:
            await self._upkeep.upgrade()
        # A daemon thread, not the default executor: asyncio.run() waits for that at exit.
        listener = threading.Thread(target=self._listen, args=(loop,), daemon=True,
                                    name="fs-listen")
        listener.start()
        try:
            while True:
                self._wake.clear()
                if self.state.refused is None:
                    await self._sync()
                await self._upkeep.now_and_then()
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
        holding = self._runs or self._slots or self._leases.holding()
        if failures and not holding:
            base = min(base * 2 ** min(failures, 8), max(base, self.timing.lease_ttl / 2))
        return base * (1 + _JITTER * (2 * random.random() - 1))

    async def _sync(self) -> None:
        loop = asyncio.get_running_loop()
        await self._leases.ensure_rows(loop.time())
        now = loop.time()
        out = functools.partial(self._quarantine.out, now=now)
        held = self._leases.held()
        wanted = self._leases.wanted(now)
        runs = self._runs.items()
        sent = self.stamp()
        sent_at, wall_sent = sent[0], time.time()
        trusts = self._leases.trusts() + self._runs.trusts() + self._slots.trusts()
        trust_left = min(trusts, default=sent_at + self.timing.renew_deadline) - sent_at
        bound = max(0.05, min(self.timing.renew_deadline, trust_left))
        extra: dict[str, Any] = {"runs": runs} if runs else {}
        if self._triggers:
            extra["cron_workers"] = sorted(self._triggers)
        extra.update(control_sync_args(self.fleet, self._reported, self._report()))
        if self._coord:
            # Only the publisher of a key reads its whole membership: rows read per
            # sync must not grow with the fleet on every node.
            extra.update(coord_members=[key for key in self._coord if not out("coord", key)],
                         coord_slots=self._slots.items(),
                         coord_watch=sorted(self._coord_watch))
        try:
            result = await self._call(self.store.node_sync, self.holder, held=held,
                                      wanted=wanted, ttl=self.timing.lease_ttl, within=bound,
                                      priority=SYNC, **extra)
        except StoreError as exc:
            self._failed(exc, held)
            return
        received = self._measured(result, sent_at, wall_sent)
        self._synced_refusals(result, received)
        self._synced_runs(result, sent)
        self._synced_coord(result, sent)
        self._leases.synced(result, sent)
        for worker, hear in list(self._triggers.items()):
            hear([trigger for trigger in result.triggers if trigger.worker == worker])
        self._synced_control(result, extra.get("report"))

    def _measured(self, result: SyncResult, sent_at: float, wall_sent: float) -> float:
        """A sync answered: the database is up, and its clock measured again; returns
        when the answer was received (loop time)."""
        received = asyncio.get_running_loop().time()
        self.state.last_success = received
        self.state.failures = 0
        wall_now = time.time()
        self._db_offset = result.db_now - (sent_at + received) / 2
        self._synced.set()
        self._publish(NodeHeartbeat("", wall_now, result.db_now - (wall_sent + wall_now) / 2))
        return received

    def _synced_refusals(self, result: SyncResult, now: float) -> None:
        """What the database refused because of a row, the rest of the sync having gone
        through: told, its child stopped at once, and left out of syncs for a while."""
        for refusal in result.refused:
            what = f"{refusal.kind} {refusal.key}"
            reason = f"the database refuses it: {refusal.reason}"
            if refusal.kind == "lease":
                self._leases.refused(refusal, reason, now)
            elif refusal.kind == "run" and refusal.key.isdigit():
                held = self._runs.get(int(refusal.key))
                worker = "cron" if held is None else held.item.worker
                self._quarantine.refused(refusal, worker, what, now, keep_out=False)
                self._runs.lost(int(refusal.key), reason)
            elif refusal.kind == "coord":
                # its slots are in slots_lost: _synced_coord stops their children
                worker = parse_coord_key(refusal.key)[0]
                self._quarantine.refused(refusal, worker, f"coordinated {what}", now)
        for key in result.coord:
            self._quarantine.passed("coord", key, parse_coord_key(key)[0], f"coordinated {key}")

    def _synced_runs(self, result: SyncResult, sent: Stamp) -> None:
        for token, run in result.runs_kept.items():
            self._runs.renewed(token, run, sent)
        for token in result.runs_lost:
            self._runs.lost(token, "the database no longer shows this run as running")
        for token in result.runs_stop:
            held = self._runs.get(token)
            if held is not None:
                # overlap = replace: a later tick waits for this run; stop it as a leader
                # stops (never slower than trust allows).
                held.hold.hurry("replaced by a later tick")

    def _synced_coord(self, result: SyncResult, sent: Stamp) -> None:
        for key, slot in result.slots_kept.items():
            self._slots.renewed(key, slot, sent)
        for key in result.slots_lost:
            self._slots.lost(key, "the database no longer shows this node holding its slot")
        for name, view in result.coord.items():
            listener = self._coord.get(name)
            if listener is not None:
                listener(view, sent[0])

    def _synced_control(self, result: SyncResult, report: NodeReport | None) -> None:
        changed = self.fleet.synced(result.control, result.db_now)
        if changed:
            self._publish(self.fleet.seen())
        self._reported = report or self._reported
        self._leases.enforce()  # blocked leases: their children stop
        stop_paused_runs(self.fleet, self._runs)
        if changed or (self._reported
                       and self.fleet.drain_state(self._holding()) != self._reported.drain):
            self._wake.set()  # leases held back until now, or a drain state to report

    def _holding(self) -> bool:
        return bool(self._runs or self._slots or self._coord or self._leases.holding())

    def _report(self) -> NodeReport:
        states = self.worker_states()
        return NodeReport(self.fleet.drain_state(self._holding()),
                          summarize(states, self.fleet) if states else None)

    def _failed(self, exc: StoreError, held: list[Lease]) -> None:
        self._reported = None  # its row may be written anew: report again
        self.state.failures += 1
        if self.state.failures == 1 or self.state.failures % 30 == 0:
            log.warning("coordination: database call failed (%s), %d in a row",
                        exc, self.state.failures)
        self._leases.failed(held)

    # --- NodePort: the clock -------------------------------------------------------------------

    async def clock_ready(self) -> None:
        await self._synced.wait()

    def db_time(self) -> float:
        if self._db_offset is None:
            raise RuntimeError("the database clock is not measured yet (await clock_ready())")
        return asyncio.get_running_loop().time() + self._db_offset

    def loop_time_of(self, db_time: float) -> float:
        if self._db_offset is None:
            raise RuntimeError("the database clock is not measured yet (await clock_ready())")
        return db_time - self._db_offset

    def stamp(self) -> Stamp:
        return asyncio.get_running_loop().time(), boottime()

    # --- NodePort: leases ----------------------------------------------------------------------

    async def wait_for(self, name: str, worker: str, group: str) -> Grant:
        return await self._leases.wait_for(name, worker, group)

    async def give_up(self, name: str, reason: str) -> None:
        await self._leases.give_up(name, reason)

    async def lease_child(self, name: str, pid: int) -> None:
        for lease in self._leases.held():
            if lease.name == name:
                await self.call(self.store.lease_child_pid, lease, pid)

    # --- NodePort: cron runs -------------------------------------------------------------------

    async def claim_run(self, worker: str, tick: float, *, max_run: int, max_per_node: int,
                        grace: float, forbid_overlap: bool, replace_earlier: bool
                        ) -> ClaimOutcome:
        return await self.call(self.store.cron_claim, worker, tick, holder=self.holder,
                               max_run=max_run, max_per_node=max_per_node,
                               ttl=self.timing.lease_ttl, grace=grace,
                               forbid_overlap=forbid_overlap, replace_earlier=replace_earlier)

    def keep_run(self, run: CronRun, grant: Grant, sent: Stamp) -> None:
        self._runs.keep(run.token, run, grant, sent)

    def drop_run(self, token: int) -> None:
        self._runs.drop(token)

    async def finish_run(self, run: CronRun, state: str, *, exit_code: int | None,
                         reason: str | None, child_pid: int | None = None) -> bool:
        return await self.call(self.store.cron_finish, run, state, exit_code=exit_code,
                               reason=reason, child_pid=child_pid)

    def cron_triggers(self, worker: str, on_triggers: OnTriggers | None) -> None:
        if on_triggers is None:
            self._triggers.pop(worker, None)
        else:
            self._triggers[worker] = on_triggers

    async def claim_trigger(self, trigger_id: int, *, max_run: int, max_per_node: int,
                            forbid_overlap: bool, replace_earlier: bool) -> ClaimOutcome:
        return await self.call(self.store.cron_claim_trigger, trigger_id, holder=self.holder,
                               max_run=max_run, max_per_node=max_per_node,
                               ttl=self.timing.lease_ttl, forbid_overlap=forbid_overlap,
                               replace_earlier=replace_earlier)

    async def runs_besides(self, worker: str, trigger_id: int) -> int:
        return await self.call(self.store.cron_trigger_blocking, worker, trigger_id)

    async def runs_before(self, worker: str, tick: float) -> int:
        return await self.call(self.store.cron_earlier_running, worker, tick)

    async def runs_recorded(self, worker: str, since: float) -> CronRecorded:
        return await self.call(self.store.cron_recorded, worker, since)

    async def record_missed(self, worker: str, ticks: Sequence[float], *, grace: float,
                            reason: str, state: str = "missed") -> list[float]:
        return await self.call(self.store.cron_record_missed, worker, ticks, grace=grace,
                               reason=reason, state=state)

    def control(self) -> FleetControl:
        return self.fleet

    # --- NodePort: coordinated workers ---------------------------------------------------------

    def coord_join(self, key: str, on_view: OnView) -> None:
        self._coord[key] = on_view
        self._wake.set()

    def coord_watch(self, key: str, watch: bool) -> None:
        if watch:
            self._coord_watch.add(key)
        else:
            self._coord_watch.discard(key)
        self._wake.set()

    def coord_leave(self, key: str) -> None:
        self._coord.pop(key, None)
        self._coord_watch.discard(key)

    async def coord_remove(self, key: str) -> None:
        await self.call(self.store.coord_leave, key, self.holder, release=True)

    async def coord_view(self, key: str) -> CoordStatus:
        return await self.call(self.store.coord_view, key)

    async def coord_publish(self, key: str, *, expected: int, members: Sequence[Holder],
                            indexes: Sequence[int | None], count: int) -> int | None:
        return await self.call(self.store.coord_publish, key, expected=expected,
                               members=members, indexes=indexes, count=count)

    async def claim_slot(self, key: str, index: int, generation: int) -> CoordSlot | None:
        return await self.call(self.store.coord_acquire_slot, key, index, generation,
                               self.holder, self.timing.lease_ttl)

    def keep_slot(self, slot: CoordSlot, grant: Grant, sent: Stamp) -> None:
        self._slots.keep((slot.worker_key, slot.index), slot, grant, sent)

    def drop_slot(self, slot: CoordSlot) -> None:
        self._slots.drop((slot.worker_key, slot.index))

    async def release_slot(self, slot: CoordSlot) -> None:
        await self.call(self.store.coord_release_slot, slot, release=True)

    # --- stopping ----------------------------------------------------------------------------

    def ready(self) -> bool:
        """The database answered this node within the last renew_deadline."""
        last = self.state.last_success
        if last is None:
            return False
        return asyncio.get_running_loop().time() - last < self.timing.renew_deadline

    async def close(self) -> None:
        """Release what is still held and leave the membership, each bounded in time."""
        await self._leases.give_up_all("supervisor stopped")
        with contextlib.suppress(StoreError):
            await self._call(self.store.node_leave, self.holder,
                             within=self.timing.renew_deadline, priority=RELEASE)
        self._listener_stop.set()
        if self._lane is not None:
            self._lane.close()
        await asyncio.get_running_loop().run_in_executor(None, self.store.close)

    # --- plumbing ------------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, within: float | None = None,
                   release: bool = False, **kwargs: Any) -> T:
        """A bounded store call in the node's database lane, after any sync waiting
        there; `release` (giving something back) goes before other mode calls."""
        bound = self.timing.renew_deadline if within is None else within
        return await self._call(fn, *args, within=bound,
                                priority=RELEASE if release else OTHER, **kwargs)

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


def new_holder(node_id: str, group: str) -> Holder:
    """This process's identity: node, pid and a random nonce, so two on one host differ;
    with the facts its membership row reports (release, time-zone data)."""
    return Holder(node_id, group, os.getpid(), secrets.token_hex(8),
                  NodeFacts.of_this_process())
