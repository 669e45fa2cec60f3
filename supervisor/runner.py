"""One child process: spawn, stream its output, stop it with a grace period. Knows no store.

Invariants:
- Every child leads its own session and process group; stopping signals the whole
  group, so grandchildren go too.
- Every child gets the pre-exec setup of supervisor/processes.py (dies with the
  supervisor, gets the supervisor's original descriptor limit back) and is recorded
  there, so the PID-1 reaper never takes its exit status; with a trust watchdog
  (supervisor/watchdog_client.py) it registers its own group before its program runs.
- Output is read line by line (pieces of at most 64 KiB) and handed to a sink that
  must not block; the child's exit is learnt from the subprocess protocol, not from
  its pipes closing (a grandchild may hold them open).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from supervisor.clock import boottime
from supervisor.errors import SpawnError
from supervisor.model import ExitStatus
from supervisor.processes import Limits, child_setup, forget, spawning

if TYPE_CHECKING:
    from supervisor.watchdog_client import TrustWatchdog

T = TypeVar("T")

OutputSink = Callable[[str, str], None]  # (stream name, line without newline)

_MAX_LINE = 64 * 1024  # longer lines are passed on in pieces of this size
_GROUP_POLL = 0.05  # leftover group members cannot be awaited, only polled
_DRAIN_AFTER_EXIT = 1.0  # how long output may keep flowing after the child is gone


@dataclass(frozen=True)
class ProcessSpec:
    """What to run; the environment is final (the caller composed it)."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 10.0


class _ChildProtocol(asyncio.SubprocessProtocol):
    """Splits the child's output into lines and learns of its exit.

    asyncio's `Process.wait()` returns only once the output pipes are closed too, so a
    grandchild holding them would hide the child's exit; `process_exited` does not wait.
    """

    def __init__(self, sink: OutputSink) -> None:
        loop = asyncio.get_running_loop()
        self._sink = sink
        self._pending = {1: b"", 2: b""}
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed = {1: loop.create_future(), 2: loop.create_future()}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        *lines, pending = (self._pending[fd] + data).split(b"\n")
        for line in lines:
            self._emit(fd, line)
        while len(pending) >= _MAX_LINE:
            self._emit(fd, pending[:_MAX_LINE])
            pending = pending[_MAX_LINE:]
        self._pending[fd] = pending

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if self._pending.get(fd):
            self._emit(fd, self._pending[fd])
            self._pending[fd] = b""
        if fd in self.closed and not self.closed[fd].done():
            self.closed[fd].set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def _emit(self, fd: int, line: bytes) -> None:
        self._sink(_STREAMS[fd], line.rstrip(b"\r").decode("utf-8", errors="replace"))


_STREAMS = {1: "stdout", 2: "stderr"}


class RunningProcess:
    """A started child. `wait()` and `stop()` may be awaited from several tasks.

    `kill_at` is the boot-clock instant by which its group must be dead (inf: none);
    `set_deadline` moves it and tells the watchdog, which kills by it on its own.
    `started_at` and `uptime()` are on the event loop's clock, as the restart policy is.
    """

    def __init__(
        self,
        transport: asyncio.SubprocessTransport,
        protocol: _ChildProtocol,
        spec: ProcessSpec,
        watched: tuple[TrustWatchdog, int] | None,
        kill_at: float = math.inf,
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self.spec = spec
        self.pid = transport.get_pid()
        self._loop = asyncio.get_running_loop()
        self.started_at = self._loop.time()
        self._watched = watched
        self.kill_at = kill_at
        self._stop_requested = False
        self._watchdog_killed = False
        self._done: asyncio.Task[ExitStatus] = asyncio.create_task(
            self._finish(), name=f"child-{self.pid}"
        )

    def uptime(self) -> float:
        return self._loop.time() - self.started_at

    def set_deadline(self, kill_at: float) -> None:
        """The group must be dead by `kill_at` (boot clock); the watchdog enforces it."""
        if kill_at != self.kill_at:
            self.kill_at = kill_at
            if self._watched is not None:
                watchdog, token = self._watched
                watchdog.deadline(token, kill_at)

    @property
    def killed_by_watchdog(self) -> bool:
        """The watchdog SIGKILLed this child's group at its deadline: it said so, or the
        child died of a SIGKILL nobody here sent once its deadline had passed (the
        watchdog's report may still be in its pipe)."""
        return self._watchdog_killed

    def begin_stop(self, sig: signal.Signals | None = None) -> None:
        """Send the stop signal (the caller enforces the deadline)."""
        self._stop_requested = True
        self.signal_group(sig or self.spec.stop_signal)

    async def wait(self) -> ExitStatus:
        """The exit status, once the child has exited and its group and output are done."""
        return await asyncio.shield(self._done)

    async def stop(
        self, sig: signal.Signals | None = None, grace: float | None = None
    ) -> ExitStatus:
        """Send `sig` to the group, SIGKILL it after `grace` seconds, and wait for the end."""
        self._stop_requested = True
        self.signal_group(sig or self.spec.stop_signal)
        grace = self.spec.stop_timeout if grace is None else grace
        try:
            async with asyncio.timeout(grace):
                return await self.wait()
        except TimeoutError:
            self.kill()
            return await self.wait()

    def kill(self) -> None:
        """SIGKILL the whole group now (used after a grace period, or on escalation)."""
        self._stop_requested = True
        self.signal_group(signal.SIGKILL)

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def _finish(self) -> ExitStatus:
        try:
            await self._protocol.exited
            forget(self.pid)
            returncode = self._transport.get_returncode()
            status = ExitStatus(-1 if returncode is None else returncode,
                                stop_requested=self._stop_requested)
            if self._watched is not None:
                watchdog, token = self._watched
                self._watchdog_killed = token in watchdog.killed or (
                    status.signal is signal.SIGKILL and not self._stop_requested
                    and boottime() >= self.kill_at)
            await self._clear_group()
            # Output may still be in flight; a grandchild that escaped the group may
            # hold the pipes open for ever, so the wait for the end of output is bounded.
            await asyncio.wait(self._protocol.closed.values(), timeout=_DRAIN_AFTER_EXIT)
            return status
        finally:
            self._transport.close()
            if self._watched is not None:
                watchdog, token = self._watched
                watchdog.drop(token)

    async def _clear_group(self) -> None:
        """Members of the group may outlive the child: give them the stop signal, then
        SIGKILL after stop_timeout or at the child's deadline, whichever comes first."""
        if not _group_alive(self.pid):
            return
        self.signal_group(signal.SIGKILL if self._stop_requested else self.spec.stop_signal)
        deadline = boottime() + self.spec.stop_timeout
        # Not our children: no exit to await, so poll (rare: only leftovers after an exit).
        while _group_alive(self.pid) and boottime() < min(deadline, self.kill_at):  # noqa: ASYNC110
            await asyncio.sleep(_GROUP_POLL)
        self.signal_group(signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def spawn(
    spec: ProcessSpec,
    sink: OutputSink,
    *,
    watchdog: TrustWatchdog | None = None,
    kill_at: float = math.inf,
) -> RunningProcess:
    """Start the program in its own session; raises SpawnError if it cannot be started.

    With a watchdog, the child is known to it, with `kill_at` (boot clock) as its
    deadline, before its program runs."""
    loop = asyncio.get_running_loop()
    bind = None if watchdog is None else watchdog.new_token(kill_at)
    try:
        with spawning() as record:
            transport, protocol = await loop.subprocess_exec(
                lambda: _ChildProtocol(sink),
                *spec.argv,
                env=dict(spec.env),
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=child_setup(os.getpid(), bind, Limits.child_nofile),
            )
            record(transport.get_pid())
    except (OSError, subprocess.SubprocessError) as exc:
        if watchdog is not None and bind is not None:
            watchdog.drop(bind[1])
        what = getattr(exc, "strerror", None) or str(exc)
        where = f" in {spec.cwd!r}" if getattr(exc, "filename", None) == spec.cwd else ""
        raise SpawnError(f"cannot start {spec.argv[0]!r}{where}: {what}") from exc
    watched = None if watchdog is None or bind is None else (watchdog, bind[1])
    return RunningProcess(transport, protocol, spec, watched, kill_at)


async def capture(argv: Sequence[str], env: Mapping[str, str]) -> tuple[int, bytes, bytes]:
    """Run a short helper program to its end; its exit status, stdout and stderr."""
    with spawning() as record:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=dict(env), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        record(proc.pid)
    try:
        stdout, stderr = await proc.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # nobody wants its answer any more (a stop won over a reload)
        raise
    finally:
        forget(proc.pid)
    return proc.returncode or 0, stdout, stderr


async def first_of(*awaitables: Awaitable[object]) -> None:
    """Wait until one finishes. Coroutines passed in are cancelled after; futures and
    tasks passed in belong to the caller and are left running."""
    owned = [asyncio.ensure_future(a) for a in awaitables if not asyncio.isfuture(a)]
    shared = [a for a in awaitables if asyncio.isfuture(a)]
    try:
        await asyncio.wait([*owned, *shared], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in owned:
            task.cancel()


async def unless_stopped(stop: asyncio.Event, waiting: Awaitable[T]) -> T | None:
    """The result of `waiting`, or None (and `waiting` cancelled) if `stop` is set first."""
    task = asyncio.ensure_future(waiting)
    await first_of(task, stop.wait())
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None
