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
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

from supervisor.control.rows import WorkerFacts
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
from supervisor.workers.child import (
    EXITED,
    NOT_STARTED,
    RESTARTED,
    REVOKED,
    STOPPED,
    TRUST,
    ChildWorker,
)

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
        self._grant: Grant | None = None  # the grant held now, for describe()
        self._restarted_at: deque[float] = deque()  # loop times of policy restarts
        self._backoff_until: float | None = None  # wall clock

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

    def restart_child(self) -> bool:
        """`supervisor restart`: stop the child (stop_signal, stop_timeout) and start it
        again at once under the same grant, not counted as a failure; a backoff ends now.
        False when no grant is held (nothing runs here to restart)."""
        grant = self._grant
        if grant is None or grant.revoked.is_set() or self._stop.is_set():
            return False
        self._restart.set()
        return True

    def describe(self) -> WorkerFacts:
        """What this worker is doing now, for `supervisor ps`."""
        grant = self._grant
        granted = grant is not None and not grant.revoked.is_set()
        env = grant.env if grant is not None and granted else {}
        view = getattr(self._mode, "assignment", None)  # coordinated: (index, count, gen)
        index = count = generation = None
        if view is not None:
            index, count, generation = view
        if "SUPERVISOR_WORKER_INDEX" in env:
            index = int(env["SUPERVISOR_WORKER_INDEX"])
            count = int(env["SUPERVISOR_WORKER_COUNT"])
            generation = int(env["SUPERVISOR_GENERATION"])
        now = asyncio.get_running_loop().time()
        window = self.spec.restart_window
        state = self.state
        return WorkerFacts(
            name=self.name, mode=str(self.spec.mode), state=str(state), granted=granted,
            restarts=sum(1 for at in self._restarted_at if at > now - window),
            backoff_until=self._backoff_until if state is WorkerState.BACKOFF else None,
            token=env.get("SUPERVISOR_FENCING_TOKEN"), index=index, count=count,
            generation=generation, **self.child_facts())

    async def run(self) -> WorkerState:
        while not self._stop.is_set():
            grant = await unless_stopped(self._stop, self._mode.acquire())
            if grant is None:
                break
            done = False
            self._grant = grant
            self._restart.clear()  # a restart asked of an earlier grant's child is moot
            try:
                done = await self._run_granted(grant)
            finally:
                self._grant = None
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
            if self._restart.is_set() and end.cause in (RESTARTED, EXITED):
                self._restart.clear()  # asked for: not a failure, no backoff
                self._state = WorkerState.WAITING
                continue
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
            self._restarted_at.append(now)
            while self._restarted_at and self._restarted_at[0] <= now - self.spec.restart_window:
                self._restarted_at.popleft()
            self._state = WorkerState.BACKOFF
            self._backoff_until = time.time() + decision.delay
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
                await first_of(self._stop.wait(), grant.revoked.wait(), self._restart.wait())
        except TimeoutError:
            return False
        if self._stop.is_set() or grant.revoked.is_set():
            return True
        self._restart.clear()  # `supervisor restart` during a backoff: start it now
        return False
