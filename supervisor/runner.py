"""One child process: spawn, stream its output, stop it with a grace period. Knows no store.

Invariants:
- Every child leads its own session and process group; stopping signals the whole
  group, so grandchildren go too.
- A child never outlives the supervisor: on Linux the kernel sends it SIGKILL when
  the supervisor dies (PR_SET_PDEATHSIG, set in the child before exec, with a check
  that the parent did not die in between). The `TrustWatchdog`, a small helper
  process in a session of its own (supervisor/watchdog.py), holds every live process
  group with the instant it must be dead by, SIGKILLs a group whose instant passes
  whatever this process is doing (blocked, starved, stopped), and SIGKILLs them all
  when the supervisor's end of its pipe closes, however the supervisor died; this also
  catches grandchildren, which PDEATHSIG does not.
- A child registers its own group with the watchdog from its pre-exec hook, before it
  runs a line of its program: no window in which it runs unknown to the watchdog.
- Children are spawned from the event loop's thread only: PDEATHSIG fires when the
  thread that forked the child ends, not the process.
- The supervisor may hold many more descriptors than a child should: `run` raises its
  soft RLIMIT_NOFILE (`raise_nofile_limit`), and every child started by `spawn` gets
  the soft limit the supervisor itself was started with back, from its pre-exec hook.
- Exit statuses come from waiting on each child's own pid. The only reaping of
  other processes is `reap_orphans()`, for a supervisor running as PID 1: it takes
  zombies the kernel handed over and never one of the processes started here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import math
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from supervisor.clock import boottime
from supervisor.errors import SpawnError
from supervisor.model import ExitStatus

T = TypeVar("T")

OutputSink = Callable[[str, str], None]  # (stream name, line without newline)

_PR_SET_PDEATHSIG = 1
_NOFILE_CEILING = 65536  # the supervisor's own soft RLIMIT_NOFILE, at most
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


class _Limits:
    """The soft RLIMIT_NOFILE this process was started with, once `raise_nofile_limit`
    raised it: children get it back. None: not raised, children inherit ours as is."""

    child_nofile: int | None = None


def raise_nofile_limit(ceiling: int = _NOFILE_CEILING) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (at most `ceiling`), so
    that connections to the metrics port or many children cannot leave the supervisor
    unable to open a pipe; children started by `spawn` get the original soft limit
    back. Returns (the soft limit before, the soft limit now); never raises."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft, soft
    if _Limits.child_nofile is None:  # raised twice: children still get the very first
        _Limits.child_nofile = soft
    return soft, target


def _child_setup(parent_pid: int, bind: tuple[int, int] | None = None,
                 nofile: int | None = None) -> Callable[[], None]:
    """Runs in the forked child before exec: die with the parent, (nofile) lower the
    soft RLIMIT_NOFILE back to what the supervisor started with, and (bind = the
    watchdog's pipe and this child's token) tell the watchdog its process group."""

    def setup() -> None:
        if nofile is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)
        if bind is not None:
            fd, token = bind
            os.write(fd, b"bind %d %d\n" % (token, os.getpid()))  # one write: atomic

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


_WATCHDOG = Path(__file__).with_name("watchdog.py")


class TrustWatchdog:
    """The supervisor's side of the trust watchdog (supervisor/watchdog.py).

    Each child gets a token; `deadline(token, t)` tells the watchdog the boot-clock
    instant by which its group must be dead (inf: only when the supervisor dies), and
    `drop(token)` forgets it once the group is gone. Writes go through the loop's pipe
    transport, which buffers rather than blocks. `lost` is set when the watchdog
    itself ends while the supervisor still runs: nothing enforces deadlines then, and
    the supervisor must stop its trusted children and step down (`on_lost`).
    """

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._tokens = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self.killed: dict[int, float] = {}  # token -> how late the watchdog killed it
        self.lost = asyncio.Event()
        self.on_lost: Callable[[str], None] | None = None

    async def start(self) -> None:
        with _spawning() as record:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", str(_WATCHDOG),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
            record(self._proc.pid)
        self._reader = asyncio.get_running_loop().create_task(self._read(self._proc),
                                                              name="watchdog")

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def new_token(self, deadline: float) -> tuple[int, int] | None:
        """A token for a child about to be spawned, with its first deadline; and the
        pipe's descriptor for the child's own `bind` line. None if no watchdog runs."""
        fd = self._fd()
        if fd is None:
            return None
        token = next(self._tokens)
        self.deadline(token, deadline)
        return fd, token

    def deadline(self, token: int, when: float) -> None:
        self._send(f"set {token} {'inf' if math.isinf(when) else f'{when:.6f}'}\n")

    def drop(self, token: int) -> None:
        self.killed.pop(token, None)
        self._send(f"drop {token}\n")

    def _fd(self) -> int | None:
        if self._proc is None or self._proc.stdin is None or self.lost.is_set():
            return None
        pipe = self._proc.stdin.transport.get_extra_info("pipe")
        return None if pipe is None else int(pipe.fileno())

    def _send(self, line: str) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._proc.stdin.write(line.encode())

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        if proc.stdout is None:  # start() asks for a pipe: only a broken start gets here
            raise RuntimeError("the trust watchdog has no stdout pipe to read")
        async for raw in proc.stdout:
            words = raw.decode(errors="replace").split()
            if len(words) == 4 and words[0] == "killed":
                self.killed[int(words[1])] = float(words[3])
        code = await proc.wait()
        if not self._closing:
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            self.lost.set()
            if self.on_lost is not None:
                self.on_lost(f"the trust watchdog (pid {proc.pid}) ended ({how})")

    async def close(self) -> None:
        """A clean end: every group has been dropped, so the watchdog kills nothing."""
        if self._proc is None:
            return
        self._closing = True
        proc, self._proc = self._proc, None
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout=2.0)
        except TimeoutError:
            # Slow to leave (a starved or stopped machine): it has nothing left to kill, so
            # end it, and reap it before the loop closes (else asyncio's transport is
            # finalised on a closed loop: "Event loop is closed" at exit).
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
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
            _Children.pids.discard(self.pid)
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
                preexec_fn=_child_setup(os.getpid(), bind, _Limits.child_nofile),
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
    with _spawning() as record:
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
