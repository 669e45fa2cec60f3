"""cron mode: at each tick of a schedule, at most `max_run` nodes fleet-wide run the worker.

There is no scheduler process. Every node computes the same ticks (supervisor.schedule),
wakes at each one by the database's clock (the offset the node sync measures in every sync,
applied to the node's monotonic clock, so a node whose wall clock is wrong neither
claims early nor misses), and tries to claim a slot of the tick. The database decides
(supervisor.store.sql_cron): at most `max_run` slots per tick, `max_per_node` per node,
only while the tick is due and inside `misfire_grace`. Each claimed run is a leased row
that the node sync renews in its one sync per renew interval and trusts exactly like a
leader's lease (hold.py): if the node cannot renew, its child is killed before the row
expires. The mode reaches the database only through its node (`port.NodePort`).

After downtime (the node starting, or the database unreachable for a while) the node
looks at the recent ticks nobody touched: those past misfire_grace are recorded `missed`
at once; of those still within it, `catch_up` decides what runs (`none`: nothing,
`latest`: the latest due tick, `all`: each, oldest first, at most CATCH_UP_LIMIT); the
rest are recorded `missed` as soon as their grace ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from supervisor.coordination import Grant
from supervisor.coordination.port import NodePort
from supervisor.errors import StoreError
from supervisor.model import CronClaimed, Event, Mode, format_utc
from supervisor.schedule import (
    next_tick,
    parse_schedule,
    parse_timezone,
    previous_tick,
    recent_ticks,
)
from supervisor.spec import WorkerSpec
from supervisor.store import ClaimOutcome, CronRun, CronTrigger

log = logging.getLogger("supervisor")

CATCH_UP_LIMIT = 10  # catch_up = "all" runs at most this many of the latest ticks in grace
SCAN_LIMIT = 1000  # ticks looked at after downtime, to record those nobody ran
_EARLY_TRIES = 20  # the database said "not due yet": retry this often, a few ms apart
_RETRY = (0.25, 2.0)  # a claim the database did not answer: retry, backing off
_MAX_SLEEP = 60.0  # sleep in slices so that a corrected clock offset takes effect
_MISS_MARGIN = 0.25  # record a miss this long after its grace ended, by our estimate of
# the database clock, so that the database agrees the grace is over


@dataclass(kw_only=True)
class RunGrant(Grant):
    """The right to run one claimed slot of one tick, once."""

    run: CronRun


class CronMode:
    """Claims ticks of one cron worker for this node and records how its runs ended."""

    mode = Mode.CRON

    def __init__(self, node: NodePort, worker: str, spec: WorkerSpec,
                 publish: Callable[[Event], None], *, history_keep: float) -> None:
        if spec.cron is None:
            raise ValueError(f"workers.{worker}.cron is required in cron mode")
        self._node = node
        self._worker = worker
        self._spec = spec
        self._publish = publish
        self._keep = history_keep
        self._schedule = parse_schedule(spec.cron)
        self._tz = parse_timezone(spec.timezone)
        self._cursor = 0.0  # the last tick this node has dealt with (database time)
        self._resync = True  # look at what happened while we were away before the next tick
        self._pending_misses: list[float] = []  # in grace, not run (catch_up): record after
        self._acquired: list[RunGrant] = []  # claimed, not yet handed to the supervisor
        # `supervisor trigger`: open triggers the node sync delivered, not yet claimed;
        # those already claimed (or refused) are remembered while they stay open.
        self._triggers: dict[int, CronTrigger] = {}
        self._seen: set[int] = set()
        self._trigger_wake = asyncio.Event()
        self._held_reason: str | None = None  # paused or draining here: why (control.py)

    # --- what the cron supervisor calls --------------------------------------------------------

    async def next_runs(self) -> list[RunGrant]:
        """Wait for the next tick(s) this node claims a slot of; cancellable."""
        self._node.cron_triggers(self._worker, self._heard_triggers)
        await self._node.clock_ready()
        while True:
            if self._triggers:
                await self._claim_triggers()
                if self._acquired:
                    return self._hand_over()
            if self._resync:
                await self._after_downtime()
                if self._acquired:
                    return self._hand_over()
                if self._resync:  # the database did not answer: try again shortly
                    await asyncio.sleep(self._node.timing.renew_interval)
                continue
            tick = next_tick(self._schedule, self._tz, self._cursor)
            grace = self._spec.misfire_grace + _MISS_MARGIN
            deadline = min([tick, *(t + grace for t in self._pending_misses)])
            if not await self._sleep_until(deadline):
                continue  # a trigger came
            if deadline < tick:
                await self._record_pending()
                continue
            latest = previous_tick(self._schedule, self._tz, self._node.db_time())
            if latest is not None and latest > tick:
                self._resync = True  # woke a period or more late (frozen, overloaded)
                continue
            self._cursor = tick
            await self._claim_tick(tick)
            if self._pending_misses:
                await self._record_pending()
            if self._acquired:
                return self._hand_over()

    @property
    def next_tick(self) -> float | None:
        """The next tick this node will try to claim (database time); None until it has
        looked at the schedule once."""
        if self._cursor <= 0 or self._resync:
            return None
        return next_tick(self._schedule, self._tz, self._cursor)

    def _hand_over(self) -> list[RunGrant]:
        grants, self._acquired = self._acquired, []
        return grants

    async def abandon(self) -> None:
        """The supervisor stopped between a claim and its start: record those runs."""
        self._node.cron_triggers(self._worker, None)
        for grant in self._hand_over():
            await self.finish(grant, "stopped", None, "supervisor stopped before the run started")

    async def wait_clear(self, grant: RunGrant) -> bool:
        """overlap = replace: wait until no run of an earlier tick is still going fleet-wide
        (each was asked to stop by the claim); False if this run was revoked meanwhile."""
        run = grant.run
        while not grant.revoked.is_set():
            with contextlib.suppress(StoreError):
                left = (await self._node.runs_before(self._worker, run.tick)
                        if run.trigger is None
                        else await self._node.runs_besides(self._worker, run.trigger))
                if left == 0:
                    return True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._node.timing.renew_interval):
                    await grant.revoked.wait()
        return False

    async def finish(self, grant: RunGrant, state: str, exit_code: int | None,
                     reason: str | None, *, child_pid: int | None = None) -> bool:
        """Record how the run ended (and its child's pid); retried for up to a lease TTL
        while the database is away (meanwhile the run is still renewed). False if it could
        not be recorded, or the run had already been marked lost."""
        run = grant.run
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._node.timing.lease_ttl
        try:
            while True:
                try:
                    return await self._node.finish_run(run, state, exit_code=exit_code,
                                                       reason=reason, child_pid=child_pid)
                except StoreError as exc:
                    if loop.time() >= give_up:
                        log.warning("%s: could not record the run of %s as %s (%s); it will "
                                    "show as lost", self._worker, format_utc(run.tick), state,
                                    exc)
                        return False
                await asyncio.sleep(self._node.timing.renew_interval)
        finally:
            self._node.drop_run(run.token)

    def env(self, run: CronRun) -> dict[str, str]:
        env = {
            "SUPERVISOR_FENCING_TOKEN": str(run.token),
            "SUPERVISOR_CRON_TICK": format_utc(run.tick),
            "SUPERVISOR_CRON_SLOT": str(run.slot),
        }
        if run.trigger is not None:  # a triggered run: TICK is when it was asked for
            env["SUPERVISOR_CRON_TRIGGER"] = str(run.trigger)
        return env

    # --- triggers (`supervisor trigger`) -------------------------------------------------------

    def _heard_triggers(self, triggers: Sequence[CronTrigger]) -> None:
        """A node sync read the worker's open triggers: the new ones are claimed next."""
        open_ids = {trigger.id for trigger in triggers}
        self._seen &= open_ids  # a trigger no longer open is never delivered again
        for trigger in triggers:
            if trigger.id not in self._seen:
                self._seen.add(trigger.id)
                self._triggers[trigger.id] = trigger
                self._trigger_wake.set()

    async def _claim_triggers(self) -> None:
        """Claim slots of each trigger heard (up to max_per_node), as of a tick."""
        spec = self._spec
        pending, self._triggers = self._triggers, {}
        self._trigger_wake.clear()
        if self._node.control().cron_blocked(self._worker) is not None:
            # Paused or draining here: left to the other nodes, or to after a resume
            # within the trigger's grace; the next sync delivers them again.
            self._seen -= pending.keys()
            return
        for trigger in pending.values():
            for _ in range(spec.max_per_node):
                sent = self._node.stamp()
                try:
                    outcome = await self._node.claim_trigger(
                        trigger.id, max_run=spec.max_run, max_per_node=spec.max_per_node,
                        forbid_overlap=spec.overlap == "forbid",
                        replace_earlier=spec.overlap == "replace")
                except StoreError as exc:
                    log.warning("%s: could not claim the run triggered by %s@%s (%s)",
                                self._worker, trigger.actor_user, trigger.actor_host, exc)
                    self._seen.discard(trigger.id)  # tried again when a sync delivers it
                    break
                run = outcome.run
                self._publish(CronClaimed(self._worker, trigger.requested_at, outcome.result,
                                          None if run is None else run.slot,
                                          None if run is None else run.token))
                if run is None:
                    break
                log.info("%s: runs now (slot %d), triggered by %s@%s%s", self._worker,
                         run.slot, trigger.actor_user, trigger.actor_host,
                         f": {trigger.reason}" if trigger.reason else "")
                grant = RunGrant(env=self.env(run),
                                 stop_grace=self._node.timing.leader_stop_grace, run=run)
                self._node.keep_run(run, grant, sent)
                self._acquired.append(grant)

    # --- ticks ---------------------------------------------------------------------------------

    async def _sleep_until(self, db_time: float) -> bool:
        """Sleep until `db_time` (True), or until a trigger comes (False)."""
        loop = asyncio.get_running_loop()
        # A timer, not an event: the instant is on the database's clock, re-read each slice.
        while (delay := self._node.loop_time_of(db_time) - loop.time()) > 0:
            if self._triggers:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(delay, _MAX_SLEEP)):
                    await self._trigger_wake.wait()
            if not self._triggers:
                self._trigger_wake.clear()
        return True

    async def _claim_tick(self, tick: float) -> None:
        if await self._held_back(tick):
            return
        for _ in range(self._spec.max_per_node):
            if not await self._claim(tick):
                break

    async def _held_back(self, tick: float) -> bool:
        """Fleet control: paused or draining here, the tick is not claimed; paused on
        every group, it is recorded skipped ("paused"), so that no node claims it and
        catch_up never replays it."""
        blocked = self._node.control().cron_blocked(self._worker)
        if blocked is None:
            if self._held_reason is not None:
                log.info("%s: claiming ticks again from %s", self._worker, format_utc(tick))
            self._held_reason = None
            return False
        reason, record = blocked
        if reason != self._held_reason:  # once per pause or drain, not once per tick
            log.info("%s: %s: its ticks are not claimed from %s on%s", self._worker, reason,
                     format_utc(tick), " (each recorded skipped)" if record else "")
        self._held_reason = reason
        if record:
            with contextlib.suppress(StoreError):
                if await self._node.record_missed(self._worker, [tick], grace=0.0,
                                                  reason=reason, state="skipped"):
                    self._publish(CronClaimed(self._worker, tick, "paused"))
        return True

    async def _claim(self, tick: float) -> bool:
        """One claim of a slot of `tick`; False when nothing (more) was acquired."""
        spec = self._spec
        delay = _RETRY[0]
        early = 0
        while True:
            sent = self._node.stamp()
            try:
                outcome: ClaimOutcome = await self._node.claim_run(
                    self._worker, tick, max_run=spec.max_run, max_per_node=spec.max_per_node,
                    grace=spec.misfire_grace, forbid_overlap=spec.overlap == "forbid",
                    replace_earlier=spec.overlap == "replace")
            except StoreError as exc:
                if self._node.db_time() + delay >= tick + spec.misfire_grace:
                    log.warning("%s: could not claim the tick of %s (%s)", self._worker,
                                format_utc(tick), exc)
                    self._publish(CronClaimed(self._worker, tick, "error"))
                    # Recorded missed once its grace ends, unless someone ran it: the
                    # look back after downtime skips a worker with no history at all.
                    self._pending_misses.append(tick)
                    self._resync = True
                    return False
                await asyncio.sleep(delay)
                delay = min(_RETRY[1], delay * 2)
                continue
            if outcome.result == "early" and early < _EARLY_TRIES:
                early += 1  # our estimate of the database clock ran a little ahead
                await asyncio.sleep(0.005 * early)
                continue
            run = outcome.run
            self._publish(CronClaimed(self._worker, tick, outcome.result,
                                      None if run is None else run.slot,
                                      None if run is None else run.token))
            if run is None:
                return False
            grant = RunGrant(env=self.env(run), stop_grace=self._node.timing.leader_stop_grace,
                             run=run)
            self._node.keep_run(run, grant, sent)
            self._acquired.append(grant)
            return True

    # --- after downtime --------------------------------------------------------------------

    async def _after_downtime(self) -> None:
        now = self._node.db_time()
        since = now - self._keep
        try:
            recorded = await self._node.runs_recorded(self._worker, since)
        except StoreError as exc:
            log.warning("%s: cannot read cron history (%s)", self._worker, exc)
            return
        self._resync = False
        self._cursor = max(self._cursor, now)
        if recorded.first_tick is None:
            return  # a new worker: its schedule starts now, with no past to make up
        start = max(since, recorded.first_tick)
        ticks = recent_ticks(self._schedule, self._tz, start, now, SCAN_LIMIT)
        grace = self._spec.misfire_grace
        in_grace = [t for t in ticks if t + grace > now]
        if self._spec.catch_up == "all":
            to_run = in_grace[-CATCH_UP_LIMIT:]
        elif self._spec.catch_up == "latest":
            to_run = in_grace[-1:]
        else:
            to_run = []
        untouched = [t for t in ticks if t not in recorded.ticks and t not in to_run]
        self._pending_misses = sorted(set(self._pending_misses) | set(untouched))
        await self._record_pending()
        for tick in to_run:
            await self._claim_tick(tick)

    async def _record_pending(self) -> None:
        """Record as missed the ticks nobody ran whose grace has ended."""
        now = self._node.db_time()
        grace = self._spec.misfire_grace
        due = [t for t in self._pending_misses if t + grace + _MISS_MARGIN <= now]
        if not due:
            return
        try:
            recorded = await self._node.record_missed(
                self._worker, due, grace=self._spec.misfire_grace,
                reason="nobody ran it within misfire_grace (downtime; catch_up = "
                       f"{self._spec.catch_up})")
        except StoreError:
            await asyncio.sleep(self._node.timing.renew_interval)
            return  # kept pending; tried again at the next wake
        self._pending_misses = [t for t in self._pending_misses if t not in due]
        for tick in recorded:
            self._publish(CronClaimed(self._worker, tick, "missed"))
