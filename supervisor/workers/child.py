"""One child path for every kind of worker: spawn under a grant, watch, stop by the
earliest deadline. Long-running workers (workers.long_running) and cron runs
(cronjob.CronSupervisor) both start, watch and stop their children here, and build
their process specs with `process_spec`.

Invariants:
- The instant by which the child must be dead is the minimum over every reason to stop
  that has arrived: a stop request, the grant's revocation or a run's timeout (each
  `stop_timeout` after it came, or the revocation's own `kill_by` if sooner), and the
  grant's trust (`trust_until + trust_grace`, moved on by each renewal). It is
  re-evaluated whenever a reason arrives or a deadline moves: a stop already in
  progress with a long stop_timeout obeys a trust loss that comes during it.
- The trust watchdog, a separate process, is told that instant each time it changes
  and SIGKILLs the child's group by it on its own, so the deadline holds while this
  event loop is blocked, starved or stopped. The graceful part (the stop signal, the
  wait) stays here; the watchdog is the backstop.
- A child is never started under a revoked grant, nor under one whose trust has run
  out (a backoff that ended after it, a loop that was blocked past it): it waits for a
  renewal or the revocation instead.
- Every instant here is on the boot clock (`supervisor.clock.boottime`), the
  watchdog's clock, which counts through suspend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.clock import boottime
from supervisor.coordination import Grant
from supervisor.errors import SpawnError
from supervisor.model import (
    Event,
    ExitReason,
    ExitStatus,
    TrustDeadlineKilled,
    WorkerExited,
    WorkerOutput,
    WorkerStarted,
    format_duration,
)
from supervisor.runner import ProcessSpec, RunningProcess, first_of, spawn
from supervisor.spec import NodeSpec, WorkerSpec
from supervisor.watchdog_client import TrustWatchdog

log = logging.getLogger("supervisor")

# How the watch of one child ended.
EXITED = "exited"  # on its own (status says how)
STOPPED = "stopped"  # the supervisor stopped it (shutdown, reload)
REVOKED = "revoked"  # the grant was taken away (lost lease, new generation, replaced run)
TIMED_OUT = "timed_out"  # a cron run outlived its timeout
TRUST = "trust"  # its trust deadline passed before a renewal or a revocation was heard
RESTARTED = "restarted"  # stopped by `supervisor restart`, to start again at once
NOT_STARTED = "not_started"  # stopped or revoked before it could start
SPAWN_FAILED = "spawn_failed"


def worker_argv(spec: WorkerSpec) -> tuple[str, ...]:
    """The program to exec: `python -m mod`, a call of `mod:func`, or the command as given."""
    if spec.command is not None:
        return tuple(spec.command)
    module = spec.module or ""
    if ":" in module:
        mod, func = module.split(":", 1)
        code = f"import importlib, sys; sys.exit(importlib.import_module({mod!r}).{func}())"
        return (sys.executable, "-c", code)
    return (sys.executable, "-m", module)


def worker_env(
    base: Mapping[str, str],
    node: NodeSpec,
    name: str,
    spec: WorkerSpec,
    grant_env: Mapping[str, str],
) -> dict[str, str]:
    """The child's environment: the supervisor's own minus its SUPERVISOR_* settings, the worker's
    `env`, then the variables SPEC.md promises (which a worker's `env` cannot mask)."""
    env = {key: value for key, value in base.items() if not key.startswith("SUPERVISOR_")}
    if spec.module is not None:
        env["PYTHONUNBUFFERED"] = "1"  # lines reach the log as they are written
    env.update(spec.env)
    env.update(
        SUPERVISOR_WORKER=name,
        SUPERVISOR_NODE_ID=node.node_id,
        SUPERVISOR_GROUP=node.group,
        SUPERVISOR_MODE=str(spec.mode),
    )
    env.update(grant_env)
    if spec.pass_database_url:
        env["SUPERVISOR_DATABASE_URL"] = node.database_url
    return env


def process_spec(name: str, spec: WorkerSpec, node: NodeSpec, *,
                 environ: Mapping[str, str], base_dir: Path, grant: Grant) -> ProcessSpec:
    """What to run for one grant of a worker: the one spec builder for every mode."""
    return ProcessSpec(
        argv=worker_argv(spec),
        env=worker_env(environ, node, name, spec, grant.env),
        cwd=str(base_dir / spec.cwd),
        stop_signal=spec.stop_signal,
        stop_timeout=spec.stop_timeout,
    )


@dataclass(frozen=True)
class ChildEnd:
    """How one child's watch ended: `cause` (the constants above), the exit status (None
    if nothing ran), a reason for the record, and how long it ran."""

    cause: str
    status: ExitStatus | None = None
    reason: str = ""
    uptime: float = 0.0


class ChildRunner:
    """Spawns, watches and stops the children of one worker, each under its grant."""

    def __init__(
        self,
        name: str,
        spec: WorkerSpec,
        node: NodeSpec,
        *,
        environ: Mapping[str, str],
        base_dir: Path,
        publish: Callable[[Event], None],
        watchdog: TrustWatchdog | None,
        stop: asyncio.Event,
        restart: asyncio.Event | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self._node = node
        self._environ = environ
        self._base_dir = base_dir
        self._publish = publish
        self._watchdog = watchdog
        self._stop = stop
        self._restart = restart
        self.procs: dict[int, RunningProcess] = {}  # live children by pid
        # The last child's end, for `supervisor ps`: (wall time, status, why it ended).
        self.last_exit: tuple[float, str, str] | None = None

    # --- the Supervisor's handles ----------------------------------------------------------

    def kill_now(self) -> None:
        for proc in list(self.procs.values()):
            proc.kill()

    def forward(self, sig: signal.Signals) -> None:
        for proc in list(self.procs.values()):
            proc.signal_group(sig)

    @property
    def pid(self) -> int | None:
        return next(iter(self.procs), None)

    # --- one child ---------------------------------------------------------------------------

    async def run(self, grant: Grant, *, run_limit: float | None = None) -> ChildEnd:
        """Start a child under `grant` (once it may start) and watch it to its end."""
        refused = await self._may_start(grant)
        if refused is not None:
            return refused
        spec = process_spec(self.name, self.spec, self._node, environ=self._environ,
                            base_dir=self._base_dir, grant=grant)
        if self._restart is not None:
            self._restart.clear()  # a restart asked for before this start is this start
        try:
            proc = await spawn(spec, self._sink, watchdog=self._watchdog,
                               kill_at=grant.deadline())
        except SpawnError as exc:
            log.error("%s: %s", self.name, exc)
            self._publish(WorkerExited(self.name, None, ExitReason.SPAWN_FAILED, str(exc), 0.0))
            self.last_exit = (time.time(), "spawn failed", str(exc))
            return ChildEnd(SPAWN_FAILED, reason=str(exc))
        self.procs[proc.pid] = proc
        self._publish(WorkerStarted(self.name, proc.pid, spec.argv))
        try:
            cause, reason, status = await self._watch(proc, grant, run_limit)
        finally:
            self.procs.pop(proc.pid, None)
        uptime = proc.uptime()
        self.last_exit = (time.time(), status.describe(), "" if cause == EXITED else reason)
        killer = status.signal
        self._publish(WorkerExited(
            self.name, proc.pid, status.reason, status.describe(), uptime,
            exit_code=status.returncode if status.returncode >= 0 else None,
            signal=None if killer is None else killer.name))
        return ChildEnd(cause, status, reason, uptime)

    async def _may_start(self, grant: Grant) -> ChildEnd | None:
        """None once a child may start under `grant`; else why not. A trusted grant whose
        trust has run out waits for a renewal (or its revocation) first."""
        while True:
            grant.changed.clear()
            if self._stop.is_set():
                return ChildEnd(NOT_STARTED, reason="supervisor stopped")
            if grant.revoked.is_set():
                return ChildEnd(NOT_STARTED, reason=grant.reason)
            if self._unguarded(grant):
                return ChildEnd(NOT_STARTED, reason="the trust watchdog ended")
            if grant.trust_until is None or boottime() < grant.trust_until:
                return None
            await first_of(self._stop.wait(), grant.changed.wait(), grant.revoked.wait())

    async def _watch(self, proc: RunningProcess, grant: Grant,
                     run_limit: float | None) -> tuple[str, str, ExitStatus]:
        """Wait for the child's end, stopping it for the first reason that comes and
        killing it by the earliest deadline of all that came; (cause, reason, status)."""
        done = asyncio.ensure_future(proc.wait())
        run_ends = math.inf if run_limit is None else boottime() + run_limit
        cause, reason, stop_by = "", "", math.inf
        try:
            while not done.done():
                grant.changed.clear()
                now = boottime()
                if not cause:
                    cause, reason = self._stop_reason(grant, now >= run_ends, run_limit)
                    if cause:
                        proc.begin_stop()
                        stop_by = now + min(proc.spec.stop_timeout, self._grace(cause, grant))
                kill_at = min(stop_by, grant.deadline())
                proc.set_deadline(kill_at)
                if now >= kill_at:
                    proc.kill()
                    await done
                    break
                wake = kill_at if cause else min(kill_at, run_ends)
                waits = [done, grant.changed.wait(), grant.revoked.wait()]
                if not cause:
                    waits.append(self._stop.wait())
                    if self._restart is not None:
                        waits.append(self._restart.wait())
                    if self._watchdog is not None and grant.trusted:
                        waits.append(self._watchdog.lost.wait())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wake - now):
                        await first_of(*waits)
        except asyncio.CancelledError:
            # Cancelled from outside (the loop is going down): never leave the child behind.
            await asyncio.shield(proc.stop())
            raise
        status = done.result()
        if not cause:
            cause, reason = self._exit_cause(proc, grant, status)
        return cause, reason, status

    def _unguarded(self, grant: Grant) -> bool:
        """A trusted grant whose deadline nothing outside this process enforces any more."""
        return grant.trusted and self._watchdog is not None and self._watchdog.lost.is_set()

    def _grace(self, cause: str, grant: Grant) -> float:
        """How long a stop for `cause` may take at most, besides stop_timeout."""
        if cause == TRUST:
            return grant.trust_grace
        if cause == REVOKED and grant.kill_by is None and grant.stop_grace is not None:
            return grant.stop_grace
        return math.inf

    def _stop_reason(self, grant: Grant, timed_out: bool,
                     timeout: float | None) -> tuple[str, str]:
        if grant.revoked.is_set():
            return REVOKED, grant.reason or "the right to run it was taken away"
        if self._unguarded(grant):
            # Nothing outside this process would enforce its deadline: stop it as a
            # leader that lost its lease stops.
            return TRUST, "the trust watchdog ended"
        if self._stop.is_set():
            return STOPPED, "supervisor stopped"
        if self._restart is not None and self._restart.is_set():
            return RESTARTED, "restart requested"
        if timed_out:
            return TIMED_OUT, f"ran longer than timeout ({format_duration(timeout or 0.0)})"
        return "", ""

    def _exit_cause(self, proc: RunningProcess, grant: Grant,
                    status: ExitStatus) -> tuple[str, str]:
        """Why a child ended that nobody here asked to stop: on its own, or killed at its
        trust deadline by the watchdog while this loop could not act."""
        if status.stop_requested:  # killed at once on a second SIGTERM (kill_now)
            return STOPPED, "supervisor stopped"
        if proc.killed_by_watchdog:
            log.warning("%s: killed at its trust deadline by the trust watchdog (pid %d): "
                        "the supervisor could not stop it in time", self.name, proc.pid)
            self._publish(TrustDeadlineKilled(self.name, proc.pid))
            return TRUST, "its trust deadline passed (killed by the trust watchdog)"
        if grant.trusted and boottime() >= grant.trust_deadline():
            # It ended by itself (status.describe() says how), but only once its trust
            # had run out: it is not restarted under that grant.
            log.warning("%s: ended (%s) after its trust deadline had passed (pid %d)",
                        self.name, status.describe(), proc.pid)
            return TRUST, f"its trust deadline passed before it ended ({status.describe()})"
        return EXITED, status.describe()

    def _sink(self, stream: str, line: str) -> None:
        self._publish(WorkerOutput(self.name, stream, line))


class ChildWorker:
    """What the Supervisor asks of every kind of worker, whose children go through one
    `ChildRunner`: stop when asked, SIGKILL now, the child's pid, a signal passed on.
    Each kind adds `run()` (what it does with its grants) and `state`."""

    def __init__(self, name: str, spec: WorkerSpec, node: NodeSpec, *,
                 publish: Callable[[Event], None], watchdog: TrustWatchdog | None,
                 base_dir: Path, environ: Mapping[str, str]) -> None:
        self.name = name
        self.spec = spec
        self._publish = publish
        self._stop = asyncio.Event()
        self._restart = asyncio.Event()  # `supervisor restart`: the child, at once
        self._child = ChildRunner(name, spec, node, environ=environ, base_dir=base_dir,
                                  publish=publish, watchdog=watchdog, stop=self._stop,
                                  restart=self._restart)

    def request_stop(self) -> None:
        self._stop.set()

    def kill_now(self) -> None:
        """Escalation: SIGKILL the running child's group without waiting."""
        self._stop.set()
        self._child.kill_now()

    @property
    def pid(self) -> int | None:
        return self._child.pid

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(self._child.procs)

    def forward(self, sig: signal.Signals) -> None:
        self._child.forward(sig)

    def child_facts(self) -> dict[str, Any]:
        """What the child path knows, for `describe()` (WorkerFacts' fields)."""
        procs = list(self._child.procs.values())
        now = time.time()
        oldest = max((proc.uptime() for proc in procs), default=None)
        last = self._child.last_exit
        return {
            "pids": tuple(proc.pid for proc in procs),
            "started_at": None if oldest is None else now - oldest,
            "last_exit_at": None if last is None else last[0],
            "last_exit": None if last is None else last[1],
            "last_exit_reason": None if last is None else last[2],
        }
