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
import signal
from collections.abc import Awaitable, Callable

from supervisor.clock import Clock
from supervisor.coordination.cron import CronMode, RunGrant
from supervisor.errors import SpawnError
from supervisor.model import (
    CronRunEnded,
    Event,
    ExitReason,
    WorkerExited,
    WorkerOutput,
    WorkerStarted,
    WorkerState,
    format_duration,
)
from supervisor.runner import (
    GroupGuard,
    ProcessSpec,
    RunningProcess,
    first_of,
    spawn,
    unless_stopped,
)
from supervisor.spec import WorkerSpec

log = logging.getLogger("supervisor")


class CronSupervisor:
    """The cron counterpart of WorkerSupervisor, with the same face for the Supervisor."""

    def __init__(
        self,
        name: str,
        config: WorkerSpec,
        *,
        mode: CronMode,
        make_spec: Callable[[RunGrant], ProcessSpec],
        publish: Callable[[Event], None],
        guard: GroupGuard | None,
        clock: Clock,
    ) -> None:
        self.name = name
        self.config = config
        self.state = WorkerState.WAITING
        self.mode = mode
        self._make_spec = make_spec
        self._publish = publish
        self._guard = guard
        self._clock = clock
        self._stop = asyncio.Event()
        self._procs: dict[int, RunningProcess] = {}  # by claim token

    def request_stop(self) -> None:
        self._stop.set()

    def kill_now(self) -> None:
        self._stop.set()
        for proc in list(self._procs.values()):
            proc.kill()

    @property
    def pid(self) -> int | None:
        return next(iter(self._procs.values())).pid if self._procs else None

    def forward(self, sig: signal.Signals) -> None:
        for proc in list(self._procs.values()):
            proc.signal_group(sig)

    async def run(self) -> WorkerState:
        async with asyncio.TaskGroup() as runs:
            while not self._stop.is_set():
                grants = await unless_stopped(self._stop, self.mode.next_runs())
                if grants is None:
                    break
                for grant in grants:
                    runs.create_task(self._run(grant), name=f"cron-{self.name}")
            await asyncio.shield(self.mode.abandon())
        self.state = WorkerState.STOPPED
        return self.state

    async def _run(self, grant: RunGrant) -> None:
        run = grant.run
        assert run is not None
        if self.config.overlap == "replace" and not await self._clear(grant):
            await self._record(grant, "stopped", None,
                               grant.reason or "supervisor stopped before the run started",
                               0.0)
            return
        spec = self._make_spec(grant)
        try:
            proc = await spawn(spec, self._sink, guard=self._guard, clock=self._clock)
        except SpawnError as exc:
            log.error("%s: %s", self.name, exc)
            self._publish(WorkerExited(self.name, None, ExitReason.SPAWN_FAILED, str(exc), 0.0))
            await self._record(grant, "failed", None, str(exc), 0.0)
            return
        self._procs[run.token] = proc
        self.state = WorkerState.RUNNING
        self._publish(WorkerStarted(self.name, proc.pid, spec.argv))
        try:
            state, reason = await self._supervise(proc, grant)
        finally:
            del self._procs[run.token]
            if not self._procs:
                self.state = WorkerState.WAITING
        status = await proc.wait()
        uptime = proc.uptime()
        self._publish(WorkerExited(self.name, proc.pid, status.reason, status.describe(), uptime))
        code = status.returncode if status.returncode >= 0 else None
        await self._record(grant, state, code, reason, uptime)

    async def _clear(self, grant: RunGrant) -> bool:
        """overlap = replace: wait until the earlier runs are gone fleet-wide."""
        return bool(await unless_stopped(self._stop, self.mode.wait_clear(grant)))

    async def _supervise(self, proc: RunningProcess, grant: RunGrant) -> tuple[str, str | None]:
        """Wait for the run to end, stopping it when it must; (state, reason)."""
        exited = asyncio.ensure_future(proc.wait())
        timeout = self.config.timeout
        timer: Awaitable[object] = asyncio.sleep(timeout) if timeout else asyncio.Event().wait()
        try:
            await first_of(exited, self._stop.wait(), grant.revoked.wait(), timer)
        except asyncio.CancelledError:
            await asyncio.shield(proc.stop())
            raise
        if exited.done():
            status = exited.result()
            if status.success:
                return "succeeded", None
            return "failed", status.describe()
        if grant.revoked.is_set():
            grace = grant.stop_grace
            if grace is not None:
                grace = min(grace, self.config.stop_timeout)
            await asyncio.shield(self._stop_hurried(proc, grant, grace))
            return "stopped", grant.reason or "the node lost the run"
        if self._stop.is_set():
            await asyncio.shield(proc.stop())
            return "stopped", "supervisor stopped"
        await asyncio.shield(proc.stop())
        return "timed_out", f"ran longer than timeout ({format_duration(timeout or 0.0)})"

    async def _stop_hurried(self, proc: RunningProcess, grant: RunGrant,
                            grace: float | None) -> None:
        """Stop with `grace`; SIGKILL at once if the keeper shortens it meanwhile."""
        stopping = asyncio.ensure_future(proc.stop(grace=grace))
        await first_of(stopping, grant.hurry.wait())
        if not stopping.done():
            proc.kill()
        await stopping

    async def _record(self, grant: RunGrant, state: str, exit_code: int | None,
                      reason: str | None, duration: float) -> None:
        run = grant.run
        assert run is not None
        recorded = await asyncio.shield(self.mode.finish(grant, state, exit_code, reason))
        self._publish(CronRunEnded(self.name, run.tick, run.slot, run.token, state, exit_code,
                                   duration, recorded))

    def _sink(self, stream: str, line: str) -> None:
        self._publish(WorkerOutput(self.name, stream, line))
