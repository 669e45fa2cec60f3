"""The Supervisor: wires each worker to its mode and a runner, and obeys signals.

One asyncio loop, one root TaskGroup. Each worker has a task (supervisor/workers/:
a `WorkerSupervisor`, or a `CronSupervisor` for cron workers) that asks its mode for
a grant, runs the child while the grant holds, and restarts it under the worker's
policy. Stopping is a request (an Event) first;
cancellation second; cleanup is shielded and bounded. Everything that happens is
published as an event (see `supervisor.model`) for logs and metrics.

Signals: SIGTERM/SIGINT stop every child at once, in parallel; a second one
SIGKILLs them at once. SIGHUP re-reads the file and applies what changed; a file
that does not validate is rejected whole and the running set is kept. SIGUSR1 and
SIGUSR2 are forwarded to the process groups of the workers that list them in
`forward_signals`, and to no other. As PID 1 the supervisor also
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
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from supervisor import __version__
from supervisor.control.logbuffer import LogBuffers
from supervisor.control.paths import SocketPathError, socket_path
from supervisor.control.protocol import (
    NOT_RUNNING,
    PROTOCOL,
    STOPPING,
    ProtocolError,
    Request,
    check_worker,
    ok,
)
from supervisor.control.rows import WorkerFacts, ps_row
from supervisor.control.server import EXIT_INVALID, ControlRefused, ControlServer
from supervisor.coordination import EveryNode, WorkerMode
from supervisor.coordination.coordinated import CoordinatedMode
from supervisor.coordination.cron import CronMode
from supervisor.coordination.leader import LeaderMode
from supervisor.coordination.node_sync import NodeSync, new_holder
from supervisor.errors import ConfigError, ConfigIssue
from supervisor.model import (
    ConfigRejected,
    ConfigReloaded,
    Event,
    Mode,
    WorkerState,
    coord_key,
    lease_name,
)
from supervisor.processes import reap_orphans
from supervisor.runner import capture
from supervisor.spec import NodeSpec, WorkerSpec, node_from_plain
from supervisor.watchdog_client import TrustWatchdog
from supervisor.workers.cronjob import CronSupervisor
from supervisor.workers.long_running import WorkerSupervisor

log = logging.getLogger("supervisor")

Publish = Callable[[Event], None]
SideTask = Callable[[], Coroutine[Any, Any, None]]
Worker = WorkerSupervisor | CronSupervisor

EXIT_OK = 0
EXIT_CRITICAL_FAILED = 1
_REAP_RETRY = 0.05


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


class Supervisor:
    """All workers of one node, and the signals that steer them."""

    def __init__(
        self,
        node: NodeSpec,
        *,
        config_path: Path,
        publish: Publish,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.node = node
        self._config_path = config_path
        self._base_dir = config_path.resolve().parent
        self.logs = LogBuffers()  # each worker's last lines, for `supervisor logs`

        def publish_all(event: Event) -> None:
            self.logs(event)
            publish(event)

        self._publish = publish_all
        self._held: dict[str, Worker] = {}  # stopped by `supervisor stop`, until started
        self._ops = asyncio.Lock()  # control commands and reloads, one at a time
        self._control: ControlServer | None = None
        self._environ = dict(os.environ if environ is None else environ)
        self._stopping = asyncio.Event()
        self._stop_signals = 0
        self._exit_code = EXIT_OK
        self._workers: dict[str, WorkerSupervisor | CronSupervisor] = {}
        self._tasks: dict[str, asyncio.Task[WorkerState]] = {}
        self._watchdog: TrustWatchdog | None = None
        self._group: asyncio.TaskGroup | None = None
        self._reload_wanted = False  # a SIGHUP not yet applied: a burst makes one reload
        self._reloader: asyncio.Task[None] | None = None
        self._node_sync: NodeSync | None = None

    @property
    def workers(self) -> Mapping[str, WorkerSupervisor | CronSupervisor]:
        return self._workers

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self, side_tasks: Sequence[SideTask] = ()) -> int:
        """Run until stopped; returns the process exit code."""
        try:
            control = self._open_control()
        except ControlRefused as exc:
            log.error("%s", exc)
            return exc.code
        try:
            return await self._run(control, side_tasks)
        finally:
            control.close()

    def _open_control(self) -> ControlServer:
        """The control socket, bound before anything starts (ControlRefused if not)."""
        try:
            where = socket_path(self.node.control_socket, self.node.node_id,
                                base_dir=self._base_dir, environ=self._environ,
                                uid=os.getuid())
        except SocketPathError as exc:
            raise ControlRefused(EXIT_INVALID, str(exc)) from None
        control = ControlServer(where, self.control, self.logs, lambda: list(self.node.workers),
                                node_id=self.node.node_id)
        control.open()
        self._control = control
        return control

    async def _run(self, control: ControlServer, side_tasks: Sequence[SideTask]) -> int:
        self._watchdog = TrustWatchdog()
        await self._watchdog.start()
        self._watchdog.on_lost = self._watchdog_lost
        self._install_signals()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                sides = [group.create_task(side(), name="side")
                         for side in (*side_tasks, control.serve)]
                # Said once the control socket is bound: a node refused for it starts nothing.
                log.info("node %s in group %s: starting %d workers", self.node.node_id,
                         self.node.group, len(self.node.workers))
                for name, spec in self.node.workers.items():
                    self._start_worker(name, spec)
                await self._stopping.wait()
                await self._cancel_reload()  # a stop wins over a pending or running reload
                await self._stop_workers(list(self._workers))
                await self._close_node_sync()
                for task in sides:
                    task.cancel()
        finally:
            self._remove_signals()
            await self._watchdog.close()
        return self._exit_code

    def _watchdog_lost(self, why: str) -> None:
        """Nothing enforces trust deadlines any more: stop every child (the trusted ones
        by their deadlines, which this loop still enforces), step down, exit 1."""
        log.error("%s: nothing outside this process can enforce trust deadlines now; "
                  "stopping every worker and stepping down", why)
        self._exit_code = EXIT_CRITICAL_FAILED
        self._stopping.set()

    def _mode_for(self, name: str, spec: WorkerSpec) -> WorkerMode:
        if spec.mode is Mode.EVERY_NODE:
            return EveryNode()
        sync = self._ensure_node_sync()
        if spec.mode is Mode.COORDINATED:
            key = coord_key(name, spec.scope, self.node.group)
            return CoordinatedMode(sync, name, key, self.node.group,
                                   instances=spec.instances,
                                   stable_window=spec.stable_window,
                                   publish=self._publish)
        lease = lease_name(name, spec.mode, spec.scope, self.node.group)
        return LeaderMode(sync, spec.mode, lease, name, self.node.group)

    def _cron_worker(self, name: str, spec: WorkerSpec) -> CronSupervisor:
        mode = CronMode(self._ensure_node_sync(), name, spec, self._publish,
                        history_keep=self.node.history.keep)
        return CronSupervisor(name, spec, self.node, mode=mode, publish=self._publish,
                              watchdog=self._watchdog, base_dir=self._base_dir,
                              environ=self._environ)

    def _ensure_node_sync(self) -> NodeSync:
        """The node's coordination loop, started when the first worker needs the database."""
        if self._node_sync is None:
            if self._group is None:
                raise RuntimeError("the node sync starts only inside Supervisor.run()")
            from supervisor.store.sql import SqlStore  # the database stack, only when needed

            timing = self.node.coordination
            store = SqlStore(self.node.database_url, timeout=timing.renew_deadline,
                             listen_url=self.node.database_listen_url)
            self._node_sync = NodeSync(
                store, new_holder(self.node.node_id, self.node.group),
                timing,
                self._publish, history_keep=self.node.history.keep,
            )
            # What `supervisor ps` shows of each worker, published with the node's sync.
            self._node_sync.worker_states = lambda: {
                row["worker"]: row["role"] for row in self.worker_rows()}
            self._node_sync_task = self._group.create_task(self._node_sync.run(),
                                                           name="node-sync")
        return self._node_sync

    async def _close_node_sync(self) -> None:
        """After every child has stopped: release what is held, leave, stop the loop."""
        if self._node_sync is None:
            return
        self._node_sync_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._node_sync_task
        await asyncio.shield(self._node_sync.close())

    def ready(self) -> bool:
        """For /readyz: true unless this node needs the database and cannot reach it."""
        return self._node_sync is None or self._node_sync.ready()

    def _start_worker(self, name: str, spec: WorkerSpec) -> None:
        if self._group is None:
            raise RuntimeError("workers start only inside Supervisor.run()")
        if self._stopping.is_set():
            return  # a stop won: nothing new starts
        self._held.pop(name, None)
        worker: WorkerSupervisor | CronSupervisor
        if spec.mode is Mode.CRON:
            worker = self._cron_worker(name, spec)
        else:
            worker = WorkerSupervisor(
                name, spec, self.node, mode=self._mode_for(name, spec),
                publish=self._publish, watchdog=self._watchdog, base_dir=self._base_dir,
                environ=self._environ,
            )
        self._workers[name] = worker
        task = self._group.create_task(worker.run(), name=f"worker-{name}")
        task.add_done_callback(functools.partial(self._worker_done, worker))
        self._tasks[name] = task

    def _worker_done(self, worker: WorkerSupervisor | CronSupervisor,
                     task: asyncio.Task[WorkerState]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        if task.result() is WorkerState.FAILED and worker.spec.critical:
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
        """Only to the workers that asked for it (`forward_signals`): a child that does
        not handle SIGUSR1 dies of it."""
        for worker in self._workers.values():
            if sig.name in (worker.spec.forward_signals or ()):
                worker.forward(sig)

    def _on_hangup(self) -> None:
        """Coalesce: SIGHUPs that come while a reload runs make one more reload after it,
        which reads the file as it is then."""
        if self._stopping.is_set() or self._group is None:
            return
        self._reload_wanted = True
        if self._reloader is None or self._reloader.done():
            self._reloader = self._group.create_task(self._reload_pending(), name="reload")

    async def _reload_pending(self) -> None:
        while self._reload_wanted and not self._stopping.is_set():
            self._reload_wanted = False
            await self.reload()

    async def _cancel_reload(self) -> None:
        """The supervisor is stopping: a reload in progress ends where it is (workers it
        was stopping go on stopping, and are waited for with all the others)."""
        self._reload_wanted = False
        task = self._reloader
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _reap_orphans(self) -> None:
        if not reap_orphans():  # a spawn is in flight: look again once it is recorded
            asyncio.get_running_loop().call_later(_REAP_RETRY, self._reap_orphans)

    # --- reload ----------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the file and apply what changed; False (and nothing changed) if invalid.
        A worker stopped by `supervisor stop` stays stopped unless its table changed."""
        async with self._ops:
            return await self._reload()

    async def _reload(self) -> bool:
        try:
            new = await load_spec_async(self._config_path, self._environ)
        except ConfigError as exc:
            issues = tuple(str(issue) for issue in exc.issues)
            log.error("reload rejected, keeping the running set: %s", "; ".join(issues))
            self._publish(ConfigRejected("", issues))
            return False
        if self._stopping.is_set():
            return False
        self._warn_unapplied(new)
        old = {name: w.spec for name, w in (*self._workers.items(), *self._held.items())}
        removed = sorted(old.keys() - new.workers.keys())
        added = sorted(new.workers.keys() - old.keys())
        changed = sorted(n for n in old.keys() & new.workers.keys() if old[n] != new.workers[n])
        for name in removed:
            self._held.pop(name, None)
        await self._stop_workers([n for n in removed + changed if n in self._workers])
        if self._stopping.is_set():
            return False
        self.node = dataclasses.replace(self.node, workers=new.workers)
        for name in added + changed:
            self._start_worker(name, new.workers[name])
        self._publish(ConfigReloaded("", tuple(added), tuple(removed), tuple(changed)))
        return True

    def _warn_unapplied(self, new: NodeSpec) -> None:
        for key in (f.name for f in dataclasses.fields(NodeSpec)):
            if key != "workers" and getattr(new, key) != getattr(self.node, key):
                log.warning("reload: a change of %r takes effect only on restart", key)

    # --- the control socket (supervisor.control) ------------------------------------------

    def is_paused(self, name: str) -> bool:
        """Whether `name` is paused on this node's group by fleet control, as of the
        node's last sync (an every-node worker never is)."""
        sync = self._node_sync
        spec = self.node.workers.get(name)
        if sync is None or spec is None or spec.mode is Mode.EVERY_NODE:
            return False
        return sync.fleet.pause_of(name) is not None

    def worker_rows(self) -> list[dict[str, Any]]:
        """Every worker of this node as `supervisor ps` shows it (plain dicts)."""
        now = time.time()
        rows = []
        for name, spec in self.node.workers.items():
            worker = self._workers.get(name) or self._held.get(name)
            facts = (WorkerFacts(name, str(spec.mode), str(WorkerState.STOPPED))
                     if worker is None else worker.describe())
            rows.append(ps_row(facts, now, stopped=name in self._held,
                               paused=self.is_paused(name)))
        return rows

    async def control(self, request: Request) -> dict[str, Any]:
        """Answer one control request (supervisor.control.protocol)."""
        if request.cmd == "ping":
            return ok(node_id=self.node.node_id, group=self.node.group, pid=os.getpid(),
                      version=__version__, protocol=PROTOCOL)
        if request.cmd == "ps":
            return ok(node_id=self.node.node_id, workers=self.worker_rows())
        names = check_worker(request.worker, list(self.node.workers),
                             allow_all=request.cmd in ("stop", "start", "restart"))
        if request.cmd == "signal" and request.signal is not None:
            return self._signal(names[0], request.signal)
        if self._stopping.is_set():
            raise ProtocolError(STOPPING, "the supervisor is stopping")
        async with self._ops:
            if request.cmd == "stop":
                results = await self._control_stop(names)
            elif request.cmd == "start":
                results = self._control_start(names)
            else:
                results = await self._control_restart(names)
        return ok(results=[{"worker": n, "done": done, "message": message}
                           for n, (done, message) in results.items()])

    def _signal(self, name: str, sig: signal.Signals) -> dict[str, Any]:
        worker = self._workers.get(name)
        pids = () if worker is None else worker.pids
        if worker is None or not pids:
            raise ProtocolError(NOT_RUNNING, f"{name} runs no child on this node: no "
                                f"{sig.name} sent")
        worker.forward(sig)
        listed = ", ".join(map(str, pids))
        return ok(results=[{"worker": name, "done": True,
                            "message": f"sent {sig.name} to the process group of {listed}"}])

    async def _control_stop(self, names: list[str]) -> dict[str, tuple[bool, str]]:
        """Stop them as a reload stops a worker: the child dies first, then what it held
        is given back (a leader's lease, a coordinated membership, cron claims)."""
        live = {name: self._workers[name] for name in names if name in self._workers}
        await self._stop_workers(list(live))
        if self._stopping.is_set():
            return {name: (False, "the supervisor is stopping") for name in names}
        self._held.update(live)
        return {name: (True, "stopped") if name in live else (False, "already stopped")
                for name in names}

    def _control_start(self, names: list[str]) -> dict[str, tuple[bool, str]]:
        results = {}
        for name in names:
            worker = self._workers.get(name)
            if worker is not None and not self._tasks[name].done():
                results[name] = (False, "already running")
                continue
            self._workers.pop(name, None)
            self._start_worker(name, self.node.workers[name])
            results[name] = (True, "started")
        return results

    async def _control_restart(self, names: list[str]) -> dict[str, tuple[bool, str]]:
        """A long-running worker's child is stopped and started again under the grant it
        holds (a leader keeps its lease and token); a cron worker, or one that is stopped,
        exited or given up, is stopped and started again."""
        results: dict[str, tuple[bool, str]] = {}
        children: dict[str, tuple[WorkerSupervisor, set[int]]] = {}
        anew = []
        for name in names:
            worker = self._workers.get(name)
            if worker is None or self._tasks[name].done() or isinstance(worker, CronSupervisor):
                anew.append(name)
            elif worker.restart_child():
                children[name] = (worker, set(worker.pids))
            else:
                results[name] = (False, "holds no grant on this node (it waits for one): "
                                        "nothing to restart")
        await self._stop_workers([n for n in anew if n in self._workers])
        for name in anew:
            self._workers.pop(name, None)
            self._start_worker(name, self.node.workers[name])
            results[name] = (True, "started again")
        for name, (worker, before) in children.items():
            results[name] = await self._restarted(worker, before)
        return {name: results[name] for name in names}

    async def _restarted(self, worker: WorkerSupervisor,
                         before: set[int]) -> tuple[bool, str]:
        """Until its new child runs (or it stopped or lost its grant meanwhile)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + worker.spec.stop_timeout + 5.0
        while loop.time() < give_up and not self._stopping.is_set():
            pids = set(worker.pids)
            if pids and not pids & before:
                return True, f"restarted (pid {', '.join(map(str, sorted(pids)))})"
            if worker.state in (WorkerState.STOPPED, WorkerState.FAILED, WorkerState.EXITED):
                break
            await asyncio.sleep(0.05)  # a child's start has no event of its own to wait on
        return True, f"restart requested; now {worker.state}"
