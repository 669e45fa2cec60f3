"""The Supervisor: wires each worker to its mode and a runner, and obeys signals.

One asyncio loop, one root TaskGroup. Each worker has a `WorkerSupervisor` task
that asks its mode for a grant, runs the child while the grant holds, and
restarts it under the worker's policy. Stopping is a request (an Event) first;
cancellation second; cleanup is shielded and bounded. Everything that happens is
published as an event (see `supervisor.model`) for logs and metrics.

Signals: SIGTERM/SIGINT stop every child at once, in parallel; a second one
SIGKILLs them at once. SIGHUP re-reads the file and applies what changed; a file
that does not validate is rejected whole and the running set is kept. SIGUSR1 and
SIGUSR2 are forwarded to every child's process group. As PID 1 the supervisor also
reaps orphans that the kernel hands to it, never touching its own children's
exit statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from supervisor.clock import Clock, SystemClock
from supervisor.coordination import EveryNode, Grant, WorkerMode
from supervisor.coordination.coordinated import CoordinatedMode, coord_key
from supervisor.coordination.cron import CronMode, RunGrant
from supervisor.coordination.leader import (
    LeaderMode,
    LeaseKeeper,
    lease_name,
    new_holder,
)
from supervisor.cronjob import CronSupervisor
from supervisor.errors import ConfigError, ConfigIssue, SpawnError
from supervisor.model import (
    ConfigRejected,
    ConfigReloaded,
    Event,
    ExitReason,
    ExitStatus,
    Mode,
    RestartScheduled,
    WorkerExited,
    WorkerGaveUp,
    WorkerOutput,
    WorkerStarted,
    WorkerState,
)
from supervisor.policy import RestartTracker
from supervisor.runner import (
    GroupGuard,
    ProcessSpec,
    RunningProcess,
    capture,
    first_of,
    reap_orphans,
    spawn,
    unless_stopped,
)
from supervisor.spec import NodeSpec, WorkerSpec, node_from_plain

log = logging.getLogger("supervisor")

Publish = Callable[[Event], None]
SideTask = Callable[[], Coroutine[Any, Any, None]]

EXIT_OK = 0
EXIT_CRITICAL_FAILED = 1
_REAP_RETRY = 0.05


def worker_argv(config: WorkerSpec) -> tuple[str, ...]:
    """The program to exec: `python -m mod`, a call of `mod:func`, or the command as given."""
    if config.command is not None:
        return tuple(config.command)
    module = config.module or ""
    if ":" in module:
        mod, func = module.split(":", 1)
        code = f"import importlib, sys; sys.exit(importlib.import_module({mod!r}).{func}())"
        return (sys.executable, "-c", code)
    return (sys.executable, "-m", module)


def worker_env(
    base: Mapping[str, str],
    settings: NodeSpec,
    name: str,
    config: WorkerSpec,
    grant_env: Mapping[str, str],
) -> dict[str, str]:
    """The child's environment: the supervisor's own minus its settings, the worker's
    `env`, then the variables SPEC.md promises (which a worker's `env` cannot mask)."""
    env = {key: value for key, value in base.items() if not key.startswith("SUPERVISOR_")}
    if config.module is not None:
        env["PYTHONUNBUFFERED"] = "1"  # lines reach the log as they are written
    env.update(config.env)
    env.update(
        SUPERVISOR_WORKER=name,
        SUPERVISOR_NODE_ID=settings.node_id,
        SUPERVISOR_GROUP=settings.group,
        SUPERVISOR_MODE=str(config.mode),
    )
    env.update(grant_env)
    if config.pass_database_url:
        env["SUPERVISOR_DATABASE_URL"] = settings.database_url
    return env


def validator_argv(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "supervisor", "_validate", "-c", str(config_path)]


def parse_validation(source: str, returncode: int, stdout: bytes, stderr: bytes) -> NodeSpec:
    """The validator child's answer: a NodeSpec, or ConfigError with its issues."""
    try:
        answer = json.loads(stdout)
    except ValueError:
        answer = {}
    if returncode == 0 and "config" in answer:
        return node_from_plain(answer["config"])
    issues = [ConfigIssue(i["path"], i["message"]) for i in answer.get("issues", [])]
    if not issues:
        detail = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no answer"]
        issues = [ConfigIssue("", f"the config validator failed: {detail[0]}")]
    raise ConfigError(source, issues)


def load_spec(config_path: Path) -> NodeSpec:
    """Validate the file in a short-lived child (pydantic stays out of this process)."""
    done = subprocess.run(validator_argv(config_path), capture_output=True, check=False)
    return parse_validation(str(config_path), done.returncode, done.stdout, done.stderr)


async def load_spec_async(config_path: Path, environ: Mapping[str, str]) -> NodeSpec:
    returncode, stdout, stderr = await capture(validator_argv(config_path), environ)
    return parse_validation(str(config_path), returncode, stdout, stderr)


AVAILABLE_MODES = (Mode.EVERY_NODE, Mode.GLOBAL_LEADER, Mode.GROUP_LEADER, Mode.CRON,
                   Mode.COORDINATED)
LEADER_MODES = (Mode.GLOBAL_LEADER, Mode.GROUP_LEADER)


def check_modes(settings: NodeSpec, source: str = "config") -> None:
    """ConfigError naming every worker whose mode this version cannot run."""
    issues = [
        ConfigIssue(f"workers.{name}.mode",
                    f'mode "{config.mode}" is not available in this version')
        for name, config in settings.workers.items() if config.mode not in AVAILABLE_MODES
    ]
    if issues:
        raise ConfigError(source, issues)


class WorkerSupervisor:
    """Runs one worker: grant, spawn, watch, restart; stops when asked."""

    def __init__(
        self,
        name: str,
        config: WorkerSpec,
        settings: NodeSpec,
        *,
        mode: WorkerMode,
        publish: Publish,
        guard: GroupGuard | None,
        base_dir: Path,
        environ: Mapping[str, str],
        clock: Clock,
    ) -> None:
        self.name = name
        self.config = config
        self.state = WorkerState.WAITING
        self._settings = settings
        self._mode = mode
        self._publish = publish
        self._guard = guard
        self._cwd = str(base_dir / config.cwd)
        self._environ = environ
        self._clock = clock
        self._stop = asyncio.Event()
        self._proc: RunningProcess | None = None
        self._tracker = RestartTracker(
            config.restart, config.backoff, config.max_restarts, config.restart_window
        )

    def request_stop(self) -> None:
        self._stop.set()

    def kill_now(self) -> None:
        """Escalation: SIGKILL the running child's group without waiting."""
        self._stop.set()
        if self._proc is not None:
            self._proc.kill()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def forward(self, sig: signal.Signals) -> None:
        if self._proc is not None:
            self._proc.signal_group(sig)

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
        if self.state not in (WorkerState.EXITED, WorkerState.FAILED):
            self.state = WorkerState.STOPPED
        close = getattr(self._mode, "close", None)
        if close is not None:
            await asyncio.shield(close())
        return self.state

    def _release_reason(self, grant: Grant) -> str:
        if self.state is WorkerState.FAILED:
            return "the worker kept failing (max_restarts)"
        if self.state is WorkerState.EXITED:
            return "the worker exited"
        if grant.revoked.is_set():
            return "lost the lease"
        return "supervisor stopped" if self._stop.is_set() else "stopped"

    async def _run_granted(self, grant: Grant) -> bool:
        """Run and restart the child while the grant holds; True when the worker is done."""
        while True:
            status = await self._run_once(grant)
            if status is not None and status.stop_requested:
                return self._stop.is_set()
            success = status is not None and status.success
            uptime = self._last_uptime
            now = self._clock.monotonic()
            decision = self._tracker.on_exit(success=success, uptime=uptime, now=now)
            if decision.give_up:
                self.state = WorkerState.FAILED
                self._publish(WorkerGaveUp(
                    self.name, self.config.max_restarts, self.config.restart_window,
                    self.config.critical,
                ))
                return True
            if not decision.restart:
                self.state = WorkerState.EXITED
                return True
            self.state = WorkerState.BACKOFF
            self._publish(RestartScheduled(self.name, decision.delay, decision.attempt))
            if await self._interrupted(grant, decision.delay):
                return self._stop.is_set()

    async def _run_once(self, grant: Grant) -> ExitStatus | None:
        """Start the child and supervise it to its end; None when it could not start."""
        spec = ProcessSpec(
            argv=worker_argv(self.config),
            env=worker_env(self._environ, self._settings, self.name, self.config, grant.env),
            cwd=self._cwd,
            stop_signal=self.config.stop_signal,
            stop_timeout=self.config.stop_timeout,
        )
        self._last_uptime = 0.0
        try:
            proc = await spawn(spec, self._sink, guard=self._guard, clock=self._clock)
        except SpawnError as exc:
            log.error("%s: %s", self.name, exc)
            self._publish(WorkerExited(self.name, None, ExitReason.SPAWN_FAILED, str(exc), 0.0))
            return None
        self._proc = proc
        self.state = WorkerState.RUNNING
        self._publish(WorkerStarted(self.name, proc.pid, spec.argv))
        try:
            status = await self._supervise(proc, grant)
        finally:
            self._proc = None
        self._last_uptime = proc.uptime()
        self._publish(WorkerExited(self.name, proc.pid, status.reason, status.describe(),
                                   self._last_uptime))
        return status

    async def _supervise(self, proc: RunningProcess, grant: Grant) -> ExitStatus:
        exited = asyncio.ensure_future(proc.wait())
        try:
            await first_of(exited, self._stop.wait(), grant.revoked.wait())
        except asyncio.CancelledError:
            # Cancelled from outside (the loop is going down): never leave the child behind.
            await asyncio.shield(proc.stop())
            raise
        if exited.done():
            return exited.result()
        revoked = grant.revoked.is_set() and grant.stop_grace is not None
        grace = grant.stop_grace if revoked else None
        return await asyncio.shield(proc.stop(grace=grace))

    async def _interrupted(self, grant: Grant, delay: float) -> bool:
        """Wait out a backoff delay; True if a stop or revocation came first."""
        if self._stop.is_set() or grant.revoked.is_set():
            return True
        try:
            async with asyncio.timeout(delay):
                await first_of(self._stop.wait(), grant.revoked.wait())
        except TimeoutError:
            return False
        return True

    def _sink(self, stream: str, line: str) -> None:
        self._publish(WorkerOutput(self.name, stream, line))

    _last_uptime = 0.0


class Supervisor:
    """All workers of one node, and the signals that steer them."""

    def __init__(
        self,
        settings: NodeSpec,
        *,
        config_path: Path,
        publish: Publish,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self._config_path = config_path
        self._base_dir = config_path.resolve().parent
        self._publish = publish
        self._clock = clock or SystemClock()
        self._environ = dict(os.environ if environ is None else environ)
        self._stopping = asyncio.Event()
        self._stop_signals = 0
        self._exit_code = EXIT_OK
        self._workers: dict[str, WorkerSupervisor | CronSupervisor] = {}
        self._tasks: dict[str, asyncio.Task[WorkerState]] = {}
        self._guard: GroupGuard | None = None
        self._group: asyncio.TaskGroup | None = None
        self._reload_lock = asyncio.Lock()
        self._keeper: LeaseKeeper | None = None
        check_modes(settings)

    @property
    def workers(self) -> Mapping[str, WorkerSupervisor | CronSupervisor]:
        return self._workers

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self, side_tasks: Sequence[SideTask] = ()) -> int:
        """Run until stopped; returns the process exit code."""
        self._guard = GroupGuard()
        await self._guard.start()
        self._install_signals()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                sides = [group.create_task(side(), name="side") for side in side_tasks]
                for name, config in self.settings.workers.items():
                    self._start_worker(name, config)
                await self._stopping.wait()
                await self._stop_workers(list(self._workers))
                await self._close_keeper()
                for task in sides:
                    task.cancel()
        finally:
            self._remove_signals()
            await self._guard.close()
        return self._exit_code

    def _mode_for(self, name: str, config: WorkerSpec) -> WorkerMode:
        if config.mode is Mode.EVERY_NODE:
            return EveryNode()
        keeper = self._ensure_keeper()
        if config.mode is Mode.COORDINATED:
            key = coord_key(name, config.scope, self.settings.group)
            return CoordinatedMode(keeper, name, key, self.settings.group,
                                   instances=config.instances,
                                   stable_window=config.stable_window,
                                   publish=self._publish)
        lease = lease_name(name, config.mode, config.scope, self.settings.group)
        return LeaderMode(keeper, config.mode, lease, name, self.settings.group)

    def _cron_worker(self, name: str, config: WorkerSpec) -> CronSupervisor:
        mode = CronMode(self._ensure_keeper(), name, config, self._publish,
                        history_keep=self.settings.history.keep)

        def make_spec(grant: RunGrant) -> ProcessSpec:
            return ProcessSpec(
                argv=worker_argv(config),
                env=worker_env(self._environ, self.settings, name, config, grant.env),
                cwd=str(self._base_dir / config.cwd),
                stop_signal=config.stop_signal,
                stop_timeout=config.stop_timeout,
            )

        return CronSupervisor(name, config, mode=mode, make_spec=make_spec,
                              publish=self._publish, guard=self._guard, clock=self._clock)

    def _ensure_keeper(self) -> LeaseKeeper:
        """The node's coordination loop, started when the first worker needs the database."""
        if self._keeper is None:
            if self._group is None:
                raise RuntimeError("the keeper starts only inside Supervisor.run()")
            from supervisor.store.sql import SqlStore  # the database stack, only when needed

            timing = self.settings.coordination
            store = SqlStore(self.settings.database_url, timeout=timing.renew_deadline)
            self._keeper = LeaseKeeper(
                store, new_holder(self.settings.node_id, self.settings.group),
                timing,
                self._publish, history_keep=self.settings.history.keep,
            )
            self._keeper_task = self._group.create_task(self._keeper.run(), name="keeper")
        return self._keeper

    async def _close_keeper(self) -> None:
        """After every child has stopped: release what is held, leave, stop the loop."""
        if self._keeper is None:
            return
        self._keeper_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._keeper_task
        await asyncio.shield(self._keeper.close())

    def ready(self) -> bool:
        """For /readyz: true unless this node needs the database and cannot reach it."""
        return self._keeper is None or self._keeper.ready()

    def _start_worker(self, name: str, config: WorkerSpec) -> None:
        if self._group is None:
            raise RuntimeError("workers start only inside Supervisor.run()")
        worker: WorkerSupervisor | CronSupervisor
        if config.mode is Mode.CRON:
            worker = self._cron_worker(name, config)
        else:
            worker = WorkerSupervisor(
                name, config, self.settings, mode=self._mode_for(name, config),
                publish=self._publish, guard=self._guard, base_dir=self._base_dir,
                environ=self._environ, clock=self._clock,
            )
        self._workers[name] = worker
        task = self._group.create_task(worker.run(), name=f"worker-{name}")
        task.add_done_callback(functools.partial(self._worker_done, worker))
        self._tasks[name] = task

    def _worker_done(self, worker: WorkerSupervisor | CronSupervisor,
                     task: asyncio.Task[WorkerState]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        if task.result() is WorkerState.FAILED and worker.config.critical:
            log.error("critical worker %s failed: stopping the supervisor", worker.name)
            self._exit_code = EXIT_CRITICAL_FAILED
            self._stopping.set()

    async def _stop_workers(self, names: Sequence[str]) -> None:
        """Stop the given workers at once, in parallel, and wait for all of them."""
        for name in names:
            self._workers[name].request_stop()
        tasks = [self._tasks[name] for name in names]
        if tasks:
            await asyncio.wait(tasks)
        for name in names:
            self._workers.pop(name, None)
            self._tasks.pop(name, None)

    # --- signals ---------------------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            loop.add_signal_handler(sig, self._forward, sig)
        if os.getpid() == 1:
            loop.add_signal_handler(signal.SIGCHLD, self._reap_orphans)

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                    signal.SIGUSR2, signal.SIGCHLD):
            loop.remove_signal_handler(sig)

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        self._stop_signals += 1
        if self._stop_signals == 1:
            log.info("received %s: stopping %d workers", sig.name, len(self._workers))
            self._stopping.set()
            return
        log.warning("received %s again: killing every child now", sig.name)
        for worker in self._workers.values():
            worker.kill_now()

    def _forward(self, sig: signal.Signals) -> None:
        for worker in self._workers.values():
            worker.forward(sig)

    def _on_hangup(self) -> None:
        if not self._stopping.is_set() and self._group is not None:
            self._group.create_task(self.reload(), name="reload")

    def _reap_orphans(self) -> None:
        if not reap_orphans():  # a spawn is in flight: look again once it is recorded
            asyncio.get_running_loop().call_later(_REAP_RETRY, self._reap_orphans)

    # --- reload ----------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the file and apply what changed; False (and nothing changed) if invalid."""
        async with self._reload_lock:
            try:
                new = await load_spec_async(self._config_path, self._environ)
                check_modes(new)
            except ConfigError as exc:
                issues = tuple(str(issue) for issue in exc.issues)
                log.error("reload rejected, keeping the running set: %s", "; ".join(issues))
                self._publish(ConfigRejected("", issues))
                return False
            self._warn_unapplied(new)
            old = {name: w.config for name, w in self._workers.items()}
            removed = sorted(old.keys() - new.workers.keys())
            added = sorted(new.workers.keys() - old.keys())
            changed = sorted(n for n in old.keys() & new.workers.keys() if old[n] != new.workers[n])
            await self._stop_workers(removed + changed)
            self.settings = dataclasses.replace(self.settings, workers=new.workers)
            for name in added + changed:
                self._start_worker(name, new.workers[name])
            self._publish(ConfigReloaded("", tuple(added), tuple(removed), tuple(changed)))
            return True

    def _warn_unapplied(self, new: NodeSpec) -> None:
        for key in (f.name for f in dataclasses.fields(NodeSpec)):
            if key != "workers" and getattr(new, key) != getattr(self.settings, key):
                log.warning("reload: a change of %r takes effect only on restart", key)
