"""One long-running worker: ask its mode for a grant, run the child while the grant
holds, restart it under the worker's policy, stop when asked.

The child itself is started, watched and stopped by the one child path
(supervisor/workers/child.py), which obeys every reason to stop (a stop request, a
revocation, a trust that runs out) by the earliest deadline; this module adds the
grant loop and the restart policy. The grant is released (shielded) whenever the loop
leaves it, with the reason that ended it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path

from supervisor.coordination import Grant, WorkerMode
from supervisor.model import (
    Event,
    RestartScheduled,
    WorkerGaveUp,
    WorkerStarted,
    WorkerState,
)
from supervisor.policy import RestartTracker
from supervisor.runner import first_of, unless_stopped
from supervisor.spec import NodeSpec, WorkerSpec
from supervisor.watchdog_client import TrustWatchdog
from supervisor.workers.child import NOT_STARTED, REVOKED, STOPPED, TRUST, ChildWorker

Publish = Callable[[Event], None]


class WorkerSupervisor(ChildWorker):
    """Runs one long-running worker: grant, child, restart; stops when asked.

    The child itself is started, watched and stopped by the one child path
    (supervisor.workers.child); this class adds the grant loop and the restart policy."""

    def __init__(
        self,
        name: str,
        spec: WorkerSpec,
        node: NodeSpec,
        *,
        mode: WorkerMode,
        publish: Publish,
        watchdog: TrustWatchdog | None,
        base_dir: Path,
        environ: Mapping[str, str],
    ) -> None:
        super().__init__(name, spec, node, publish=self._heard, watchdog=watchdog,
                         base_dir=base_dir, environ=environ)
        self._publish_to = publish
        self._state = WorkerState.WAITING
        self._mode = mode
        self._recording: set[asyncio.Task[None]] = set()  # child pids being recorded
        self._tracker = RestartTracker(
            spec.restart, spec.backoff, spec.max_restarts, spec.restart_window
        )
        self._trust_lost = False

    def _heard(self, event: Event) -> None:
        """The child path's events, passed on; a leader mode records its child's pid on
        the term (`LeaderMode.child_started`), in a task of its own."""
        self._publish_to(event)
        started = getattr(self._mode, "child_started", None)
        if isinstance(event, WorkerStarted) and started is not None:
            task = asyncio.get_running_loop().create_task(started(event.pid))
            self._recording.add(task)
            task.add_done_callback(self._recording.discard)

    @property
    def state(self) -> WorkerState:
        return WorkerState.RUNNING if self._child.procs else self._state

    async def run(self) -> WorkerState:
        while not self._stop.is_set():
            grant = await unless_stopped(self._stop, self._mode.acquire())
            if grant is None:
                break
            done = False
            try:
                done = await self._run_granted(grant)
            finally:
                await asyncio.shield(self._mode.release(grant, self._release_reason(grant)))
            if done:
                break
        if self._state not in (WorkerState.EXITED, WorkerState.FAILED):
            self._state = WorkerState.STOPPED
        close = getattr(self._mode, "close", None)
        if close is not None:
            await asyncio.shield(close())
        return self._state

    def _release_reason(self, grant: Grant) -> str:
        if self._state is WorkerState.FAILED:
            return "the worker kept failing (max_restarts)"
        if self._state is WorkerState.EXITED:
            return "the worker exited"
        if grant.revoked.is_set():
            return "lost the lease"
        if self._trust_lost:
            return "its trust deadline passed before a renewal was heard"
        return "supervisor stopped" if self._stop.is_set() else "stopped"

    async def _run_granted(self, grant: Grant) -> bool:
        """Run and restart the child while the grant holds; True when the worker is done."""
        self._trust_lost = False
        while True:
            end = await self._child.run(grant)
            if end.cause in (NOT_STARTED, STOPPED, REVOKED, TRUST):
                self._trust_lost = end.cause == TRUST
                return self._stop.is_set()
            success = end.status is not None and end.status.success
            now = asyncio.get_running_loop().time()
            decision = self._tracker.on_exit(success=success, uptime=end.uptime, now=now)
            if decision.give_up:
                self._state = WorkerState.FAILED
                self._publish(WorkerGaveUp(
                    self.name, self.spec.max_restarts, self.spec.restart_window,
                    self.spec.critical,
                ))
                return True
            if not decision.restart:
                self._state = WorkerState.EXITED
                return True
            self._state = WorkerState.BACKOFF
            self._publish(RestartScheduled(self.name, decision.delay, decision.attempt))
            if await self._interrupted(grant, decision.delay):
                return self._stop.is_set()

    async def _interrupted(self, grant: Grant, delay: float) -> bool:
        """Wait out a backoff delay; True if a stop or revocation came first. (A trust
        that runs out meanwhile is checked by the child path before the restart.)"""
        if self._stop.is_set() or grant.revoked.is_set():
            return True
        try:
            async with asyncio.timeout(delay):
                await first_of(self._stop.wait(), grant.revoked.wait())
        except TimeoutError:
            return False
        return True
