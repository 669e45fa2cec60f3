"""Every process this supervisor starts: what each child gets before exec, and the record
that keeps the PID-1 reaper off their exit statuses.

Invariants:
- A child never outlives the supervisor by its own means: on Linux the kernel sends it
  SIGKILL when the supervisor dies (PR_SET_PDEATHSIG, set in the child before exec, with
  a check that the parent did not die in between). Grandchildren, which PDEATHSIG
  misses, are the trust watchdog's (supervisor/watchdog_client.py).
- Children are spawned from the event loop's thread only: PDEATHSIG fires when the
  thread that forked the child ends, not the process.
- The supervisor may hold many more descriptors than a child should: `run` raises its
  soft RLIMIT_NOFILE (`raise_nofile_limit`), and every child gets the soft limit the
  supervisor itself was started with back, from its pre-exec hook (`child_setup`).
- Exit statuses come from waiting on each child's own pid. The only reaping of other
  processes is `reap_orphans()`, for a supervisor running as PID 1: it takes zombies
  the kernel handed over and never one of the processes started here (each start is
  wrapped in `spawning()`, which records its pid).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import sys
from collections.abc import Callable, Iterator

_PR_SET_PDEATHSIG = 1
_NOFILE_CEILING = 65536  # the supervisor's own soft RLIMIT_NOFILE, at most


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


class Limits:
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
    if Limits.child_nofile is None:  # raised twice: children still get the very first
        Limits.child_nofile = soft
    return soft, target


def child_setup(parent_pid: int, bind: tuple[int, int] | None = None,
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
def spawning() -> Iterator[Callable[[int], None]]:
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


def forget(pid: int) -> None:
    """A process started here has been waited for: the reaper may take that pid again."""
    _Children.pids.discard(pid)


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
