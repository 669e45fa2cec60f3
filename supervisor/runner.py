"""One child process: spawn, stream its output, stop it with a grace period. Knows no store.

Invariants:
- Every child leads its own session and process group; stopping signals the whole
  group, so grandchildren go too.
- A child never outlives the supervisor: on Linux the kernel sends it SIGKILL when
  the supervisor dies (PR_SET_PDEATHSIG, set in the child before exec, with a check
  that the parent did not die in between). On every platform a `GroupGuard`, a tiny
  /bin/sh process in a session of its own, holds the list of live process groups and
  SIGKILLs them all when the supervisor's end of its pipe closes, however the
  supervisor died; this also catches grandchildren, which PDEATHSIG does not.
- Children are spawned from the event loop's thread only: PDEATHSIG fires when the
  thread that forked the child ends, not the process.
- Exit statuses come from waiting on each child's own pid. The only reaping of
  other processes is `reap_orphans()`, for a supervisor running as PID 1: it takes
  zombies the kernel handed over and never one of the processes started here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from supervisor.clock import Clock, SystemClock
from supervisor.errors import SpawnError
from supervisor.model import ExitStatus

T = TypeVar("T")

OutputSink = Callable[[str, str], None]  # (stream name, line without newline)

_PR_SET_PDEATHSIG = 1
_MAX_LINE = 64 * 1024  # longer lines are passed on in pieces of this size
_GROUP_POLL = 0.05  # leftover group members cannot be awaited, only polled
_DRAIN_AFTER_EXIT = 1.0  # how long output may keep flowing after the child is gone


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def _child_setup(parent_pid: int) -> Callable[[], None]:
    """Runs in the forked child before exec: die with the parent."""

    def setup() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


class _Children:
    """The processes started here, so the PID-1 reaper never steals their exit statuses."""

    pids: set[int] = set()
    spawning = 0  # forks in flight whose pid is not recorded yet


@contextlib.contextmanager
def _spawning() -> Iterator[Callable[[int], None]]:
    """Count a fork in flight; the caller records the pid it got."""
    _Children.spawning += 1
    try:
        yield _Children.pids.add
    finally:
        _Children.spawning -= 1


def reap_orphans() -> bool:
    """Reap zombie children that this process did not start (it runs as PID 1).

    Returns False, reaping nothing, while a spawn is in flight: a zombie might then be
    a child whose pid is not recorded yet; the caller tries again shortly.
    """
    if _Children.spawning:
        return False
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in _Children.pids:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z" and int(fields[1]) == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry), os.WNOHANG)
    return True


_GUARD_SCRIPT = r"""
trap '' INT TERM HUP QUIT USR1 USR2
groups=" "
while IFS= read -r line; do
  case "$line" in
    +*) groups="$groups${line#+} " ;;
    -*) keep=" "
        for g in $groups; do [ "$g" = "${line#-}" ] || keep="$keep$g "; done
        groups="$keep" ;;
  esac
done
for g in $groups; do kill -s KILL -- "-$g" 2>/dev/null; done
"""


class GroupGuard:
    """Kills every registered process group when the supervisor goes away, however it goes."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with _spawning() as record:
            self._proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", _GUARD_SCRIPT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
            record(self._proc.pid)

    def register(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def unregister(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def _send(self, line: str) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._proc.stdin.write(line.encode())

    async def close(self) -> None:
        """A clean end: every group has been unregistered, so the guard kills nothing."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(ProcessLookupError, TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout=2.0)
        _Children.pids.discard(proc.pid)


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
    """A started child. `wait()` and `stop()` may be awaited from several tasks."""

    def __init__(
        self,
        transport: asyncio.SubprocessTransport,
        protocol: _ChildProtocol,
        spec: ProcessSpec,
        guard: GroupGuard | None,
        clock: Clock,
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self.spec = spec
        self.pid = transport.get_pid()
        self.started_at = clock.monotonic()
        self._clock = clock
        self._guard = guard
        self._stop_requested = False
        self._done: asyncio.Task[ExitStatus] = asyncio.create_task(
            self._finish(), name=f"child-{self.pid}"
        )

    def uptime(self) -> float:
        return self._clock.monotonic() - self.started_at

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
            _Children.pids.discard(self.pid)
            returncode = self._transport.get_returncode()
            status = ExitStatus(-1 if returncode is None else returncode,
                                stop_requested=self._stop_requested)
            await self._clear_group()
            # Output may still be in flight; a grandchild that escaped the group may
            # hold the pipes open for ever, so the wait for the end of output is bounded.
            await asyncio.wait(self._protocol.closed.values(), timeout=_DRAIN_AFTER_EXIT)
            return status
        finally:
            self._transport.close()
            if self._guard is not None:
                self._guard.unregister(self.pid)

    async def _clear_group(self) -> None:
        """Members of the group may outlive the child: give them the stop signal, then SIGKILL."""
        if not _group_alive(self.pid):
            return
        self.signal_group(signal.SIGKILL if self._stop_requested else self.spec.stop_signal)
        deadline = self._clock.monotonic() + self.spec.stop_timeout
        # Not our children: no exit to await, so poll (rare: only leftovers after an exit).
        while _group_alive(self.pid) and self._clock.monotonic() < deadline:  # noqa: ASYNC110
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
    guard: GroupGuard | None = None,
    clock: Clock | None = None,
) -> RunningProcess:
    """Start the program in its own session; raises SpawnError if it cannot be started."""
    loop = asyncio.get_running_loop()
    try:
        with _spawning() as record:
            transport, protocol = await loop.subprocess_exec(
                lambda: _ChildProtocol(sink),
                *spec.argv,
                env=dict(spec.env),
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_child_setup(os.getpid()),
            )
            record(transport.get_pid())
    except OSError as exc:
        what = exc.strerror or str(exc)
        where = f" in {spec.cwd!r}" if exc.filename == spec.cwd else ""
        raise SpawnError(f"cannot start {spec.argv[0]!r}{where}: {what}") from exc
    if guard is not None:
        guard.register(transport.get_pid())
    return RunningProcess(transport, protocol, spec, guard, clock or SystemClock())


async def capture(argv: Sequence[str], env: Mapping[str, str]) -> tuple[int, bytes, bytes]:
    """Run a short helper program to its end; its exit status, stdout and stderr."""
    with _spawning() as record:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=dict(env), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        record(proc.pid)
    try:
        stdout, stderr = await proc.communicate()
    finally:
        _Children.pids.discard(proc.pid)
    return proc.returncode or 0, stdout, stderr


def use_pidfd_child_watcher() -> None:
    """On Python 3.11, wait on children through pidfds instead of a thread per child.

    Python 3.12 does this by itself. Either way each child is waited on by its own
    pid, so exit codes are never stolen.
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return
    asyncio.set_child_watcher(asyncio.PidfdChildWatcher())


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
