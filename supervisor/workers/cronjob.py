"""Runs one cron worker on this node: a child per claimed run, each run once.

`CronMode` (supervisor.coordination.cron) decides which ticks this node runs; this
module obeys. Each claimed slot starts one child with SUPERVISOR_CRON_TICK,
SUPERVISOR_CRON_SLOT and the claim's token as SUPERVISOR_FENCING_TOKEN. The run ends
as `succeeded` (exit 0), `failed` (non-zero, a signal, or it could not be started),
`timed_out` (it outlived `timeout`: stopped with its stop_signal, SIGKILLed after
stop_timeout) or `stopped` (the supervisor stopped, a later tick replaced it, or the
node lost the run: trust ran out, or the database marked it lost). A run is not
restarted: the next tick is the next attempt (`restart`, `backoff` and
`max_restarts` apply to the long-running modes).

Runs of successive ticks may overlap on this node when `overlap = "allow"`; the
fleet-wide overlap rules are the database's (see supervisor.store.sql_cron).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from supervisor.control.rows import WorkerFacts
from supervisor.coordination.cron import CronMode, RunGrant
from supervisor.model import CronRunEnded, Event, WorkerStarted, WorkerState
from supervisor.runner import unless_stopped
from supervisor.spec import NodeSpec, WorkerSpec
from supervisor.watchdog_client import TrustWatchdog
from supervisor.workers.child import (
    EXITED,
    NOT_STARTED,
    SPAWN_FAILED,
    STOPPED,
    TIMED_OUT,
    ChildEnd,
    ChildWorker,
)

log = logging.getLogger("supervisor")


class CronSupervisor(ChildWorker):
    """The cron counterpart of WorkerSupervisor, with the same face for the Supervisor;
    its runs go through the same child path (supervisor.workers.child)."""

    def __init__(
        self,
        name: str,
        spec: WorkerSpec,
        node: NodeSpec,
        *,
        mode: CronMode,
        publish: Callable[[Event], None],
        watchdog: TrustWatchdog | None,
        base_dir: Path,
        environ: Mapping[str, str],
    ) -> None:
        super().__init__(name, spec, node, publish=self._heard, watchdog=watchdog,
                         base_dir=base_dir, environ=environ)
        self._publish_to = publish
        self.mode = mode
        self._stopped = False
        self._runs: dict[int, RunGrant] = {}  # the runs under way, by token
        # The pid of each run's child, by the task that runs it (the child path publishes
        # WorkerStarted in that task), for the run's record.
        self._pids: dict[asyncio.Task[Any] | None, int] = {}

    def _heard(self, event: Event) -> None:
        if isinstance(event, WorkerStarted):
            self._pids[asyncio.current_task()] = event.pid
        self._publish_to(event)

    def describe(self) -> WorkerFacts:
        """What this worker is doing now, for `supervisor ps`."""
        ticks = tuple(sorted(grant.run.tick for grant in self._runs.values()))
        tokens = sorted(grant.run.token for grant in self._runs.values())
        return WorkerFacts(
            name=self.name, mode=str(self.spec.mode), state=str(self.state),
            granted=bool(self._runs), token=",".join(map(str, tokens)) or None,
            next_tick=self.mode.next_tick, running_ticks=ticks, **self.child_facts())

    @property
    def state(self) -> WorkerState:
        if self._child.procs:
            return WorkerState.RUNNING
        return WorkerState.STOPPED if self._stopped else WorkerState.WAITING

    async def run(self) -> WorkerState:
        async with asyncio.TaskGroup() as runs:
            while not self._stop.is_set():
                grants = await unless_stopped(self._stop, self.mode.next_runs())
                if grants is None:
                    break
                for grant in grants:
                    runs.create_task(self._run(grant), name=f"cron-{self.name}")
            await asyncio.shield(self.mode.abandon())
        self._stopped = True
        return self.state

    async def _run(self, grant: RunGrant) -> None:
        self._runs[grant.run.token] = grant
        try:
            await self._run_granted(grant)
        finally:
            self._runs.pop(grant.run.token, None)

    async def _run_granted(self, grant: RunGrant) -> None:
        if self.spec.overlap == "replace" and not await self._clear(grant):
            await self._record(grant, "stopped", None,
                               grant.reason or "supervisor stopped before the run started",
                               0.0)
            return
        end = await self._child.run(grant, run_limit=self.spec.timeout)
        state, reason = _outcome(end, grant)
        status = end.status
        code = status.returncode if status is not None and status.returncode >= 0 else None
        await self._record(grant, state, code, reason, end.uptime)

    async def _clear(self, grant: RunGrant) -> bool:
        """overlap = replace: wait until the earlier runs are gone fleet-wide."""
        return bool(await unless_stopped(self._stop, self.mode.wait_clear(grant)))

    async def _record(self, grant: RunGrant, state: str, exit_code: int | None,
                      reason: str | None, duration: float) -> None:
        run = grant.run
        pid = self._pids.pop(asyncio.current_task(), None)
        recorded = await asyncio.shield(self.mode.finish(grant, state, exit_code, reason,
                                                         child_pid=pid))
        self._publish(CronRunEnded(self.name, run.tick, run.slot, run.token, state, exit_code,
                                   duration, recorded))


def _outcome(end: ChildEnd, grant: RunGrant) -> tuple[str, str | None]:
    """The run's recorded state and reason, from how its child's watch ended."""
    if end.cause == EXITED:
        ok = end.status is not None and end.status.success
        return ("succeeded", None) if ok else ("failed", end.reason)
    if end.cause == SPAWN_FAILED:
        return "failed", end.reason
    if end.cause == TIMED_OUT:
        return "timed_out", end.reason
    if end.cause == NOT_STARTED:
        return "stopped", end.reason or "supervisor stopped before the run started"
    if end.cause == STOPPED:
        return "stopped", "supervisor stopped"
    return "stopped", end.reason or grant.reason or "the node lost the run"
