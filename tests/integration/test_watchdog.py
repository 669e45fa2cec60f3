"""The trust watchdog as the supervisor runs it: a real program killing real process groups.

Nothing here sleeps to let something happen: deaths are awaited on pidfds, applied
lines on `ping`/`pong`, each with a deadline. Victims are never reaped before the
watchdog has exited, so a pgid it may still kill cannot have been reused meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisor import watchdog as watchdog_module
from supervisor.watchdog import Output, boottime

PROGRAM = Path(watchdog_module.__file__)
BOUND = 0.5  # how late after its deadline a kill may come; a bound, not a benchmark
WITHIN = 10.0  # how long to wait for something that should happen at once

GRANDPARENT = """
import os, time
pid = os.fork()
if pid == 0:
    time.sleep(60)
    os._exit(0)
print(pid, flush=True)
time.sleep(60)
"""

SELF_BINDING = """
import os
os.write({fd}, b"bind {tok} %d\\n" % os.getpgid(0))
os.close({fd})
os.execvp("sleep", ["sleep", "60"])
"""


def readable(fd: int, until: float) -> bool:
    ready, _, _ = select.select([fd], [], [], max(0.0, until - boottime()))
    return bool(ready)


class Watchdog:
    """The program in a session of its own, talked to through non-blocking pipes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(PROGRAM)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.input = self.proc.stdin.fileno()
        self.output = self.proc.stdout.fileno()
        os.set_blocking(self.input, False)  # a watchdog that stops reading fails, not hangs
        self._buffer = b""
        self._pings = 0

    def send(self, *lines: str) -> None:
        data = "".join(f"{line}\n" for line in lines).encode()
        end = time.monotonic() + WITHIN
        while data:
            _, ready, _ = select.select([], [self.input], [], max(0.0, end - time.monotonic()))
            if not ready:
                raise AssertionError("the watchdog stopped reading its input")
            data = data[os.write(self.input, data) :]

    def read_line(self) -> str:
        until = boottime() + WITHIN
        while b"\n" not in self._buffer:
            if not readable(self.output, until):
                raise AssertionError(f"no line from the watchdog within {WITHIN}s")
            chunk = os.read(self.output, 65536)
            if not chunk:
                raise AssertionError("the watchdog closed its output")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("ascii")

    def drain(self) -> list[str]:
        """The lines its output pipe holds right now, read without waiting."""
        while readable(self.output, 0.0) and (chunk := os.read(self.output, 65536)):
            self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line.decode("ascii") for line in lines]

    def sync(self) -> list[str]:
        """Wait until every line sent so far is applied; return the lines it wrote meanwhile."""
        self._pings += 1
        self.send(f"ping {self._pings}")
        seen = []
        while (line := self.read_line()) != f"pong {self._pings}":
            seen.append(line)
        return seen

    def close(self) -> int:
        """End its input, as a dying supervisor does, and return its exit status."""
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(WITHIN)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                self.proc.wait()
            assert self.proc.stdout is not None
            self.proc.stdout.close()


class Victim:
    """A process group (leader, and a forked grandchild if asked) watched through pidfds."""

    def __init__(self, argv: list[str], pass_fds: tuple[int, ...] = ()) -> None:
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, start_new_session=True, pass_fds=pass_fds
        )
        self.pid = self.proc.pid  # also the pgid: it leads a session of its own
        self._pidfds = [os.pidfd_open(self.pid)]

    def add_grandchild(self) -> None:
        assert self.proc.stdout is not None
        if not readable(self.proc.stdout.fileno(), boottime() + WITHIN):
            raise AssertionError("the victim did not report its grandchild")
        self._pidfds.append(os.pidfd_open(int(self.proc.stdout.readline())))

    def dead_at(self, until: float) -> float | None:
        """When every process of the group was seen dead, or None if one lives on `until`."""
        for fd in self._pidfds:
            if not readable(fd, until):
                return None
        return boottime()

    def alive(self) -> bool:
        return not any(readable(fd, 0.0) for fd in self._pidfds)

    def end(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # not reaped yet: the pgid is still ours
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        for fd in self._pidfds:
            os.close(fd)


@pytest.fixture
def watchdog() -> Iterator[Watchdog]:
    started = Watchdog()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def victims(watchdog: Watchdog) -> Iterator[Callable[..., Victim]]:
    started: list[Victim] = []

    def start(*argv: str, grandchild: bool = False, pass_fds: tuple[int, ...] = ()) -> Victim:
        if grandchild:
            argv = (sys.executable, "-I", "-S", "-c", GRANDPARENT)
        victim = Victim(list(argv or ("sleep", "60")), pass_fds)
        started.append(victim)
        if grandchild:
            victim.add_grandchild()
        return victim

    try:
        yield start
    finally:
        try:
            watchdog.close()  # first, so its final sweep only meets groups not reaped yet
        finally:
            for victim in started:
                victim.end()


def killed(line: str, tok: int, pgid: int) -> float:
    """The lateness a `killed` line reports, checking its form."""
    match = re.fullmatch(rf"killed {tok} {pgid} (\d+\.\d{{3}})", line)
    assert match, line
    return float(match[1])


def test_a_group_whose_deadline_passes_is_killed_soon_after_and_reported(
    watchdog: Watchdog, victims: Callable[..., Victim]
) -> None:
    victim = victims(grandchild=True)
    deadline = boottime() + 0.3
    watchdog.send(f"bind 1 {victim.pid}", f"set 1 {deadline!r}")
    died = victim.dead_at(deadline + WITHIN)
    assert died is not None, "the group outlived its deadline"
    assert deadline <= died <= deadline + BOUND
    assert 0.0 <= killed(watchdog.read_line(), 1, victim.pid) <= BOUND


def test_a_group_whose_deadline_keeps_being_extended_survives_until_renewals_stop(
    watchdog: Watchdog, victims: Callable[..., Victim]
) -> None:
    victim = victims()
    watchdog.send(f"bind 1 {victim.pid}")
    renewing_until = boottime() + 2.0
    while (now := boottime()) < renewing_until:
        deadline = now + 1.0  # ten renewals per window: a slow test still renews in time
        watchdog.send(f"set 1 {deadline!r}")
        assert victim.dead_at(now + 0.1) is None, "killed although renewed"
    assert watchdog.sync() == []
    assert victim.alive()
    died = victim.dead_at(deadline + WITHIN)
    assert died is not None and deadline <= died <= deadline + BOUND


def test_a_bind_arriving_after_its_deadline_kills_at_once(
    watchdog: Watchdog, victims: Callable[..., Victim]
) -> None:
    victim = victims()
    deadline = boottime() - 1.0
    watchdog.send(f"set 1 {deadline!r}")
    assert watchdog.sync() == []
    assert victim.alive()
    watchdog.send(f"bind 1 {victim.pid}")
    assert victim.dead_at(boottime() + BOUND) is not None
    assert killed(watchdog.read_line(), 1, victim.pid) >= 1.0


def test_a_child_may_bind_itself_on_the_same_input_before_it_execs(
    watchdog: Watchdog, victims: Callable[..., Victim]
) -> None:
    deadline = boottime() + 0.3
    watchdog.send(f"set 7 {deadline!r}")
    fd = watchdog.input
    # What the supervisor's preexec hook does: one atomic line, then the fd is closed.
    script = SELF_BINDING.format(fd=fd, tok=7)
    victim = victims(sys.executable, "-I", "-S", "-c", script, pass_fds=(fd,))
    died = victim.dead_at(deadline + WITHIN)
    assert died is not None and deadline <= died <= deadline + BOUND
    assert killed(watchdog.read_line(), 7, victim.pid) <= BOUND


def test_closing_its_input_kills_every_bound_group_and_it_exits_zero(
    watchdog: Watchdog, victims: Callable[..., Victim]
) -> None:
    guarded, pending, bound_only, killed_before = (victims(grandchild=True) for _ in range(4))
    watchdog.send(
        "set 1 inf",
        f"bind 1 {guarded.pid}",
        f"bind 2 {pending.pid}",
        f"set 2 {boottime() + 3600!r}",
        f"bind 3 {bound_only.pid}",
        f"bind 4 {killed_before.pid}",
        f"set 4 {boottime() - 1!r}",
    )
    (line,) = watchdog.sync()
    killed(line, 4, killed_before.pid)
    assert all(victim.alive() for victim in (guarded, pending, bound_only))
    assert watchdog.close() == 0
    for victim in (guarded, pending, bound_only, killed_before):
        assert victim.dead_at(boottime() + WITHIN) is not None


def test_a_dropped_token_is_not_killed_when_its_input_closes(
    watchdog: Watchdog, victims: Callable[..., Victim]
) -> None:
    stopped, running = victims(), victims()
    deadline = boottime() + 0.3
    watchdog.send(f"bind 1 {stopped.pid}", f"set 1 {deadline!r}", "drop 1")
    watchdog.send(f"bind 2 {running.pid}")
    assert watchdog.sync() == []
    assert stopped.dead_at(deadline + BOUND) is None  # the dropped deadline is gone too
    assert watchdog.close() == 0
    assert running.dead_at(boottime() + WITHIN) is not None
    assert stopped.alive()


def test_polite_signals_do_not_stop_it(
    watchdog: Watchdog, victims: Callable[..., Victim]
) -> None:
    victim = victims()
    watchdog.sync()  # it ignores them from before it reads its first line
    for sig in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"):
        os.kill(watchdog.proc.pid, getattr(signal, sig))
    assert watchdog.sync() == []  # a signal is acted on before the ping it preceded is read
    deadline = boottime() + 0.1
    watchdog.send(f"bind 1 {victim.pid}", f"set 1 {deadline!r}")
    assert victim.dead_at(deadline + BOUND) is not None


def test_a_reader_that_never_reads_does_not_delay_a_kill(
    watchdog: Watchdog, victims: Callable[..., Victim]
) -> None:
    victim = victims()
    watchdog.send(f"bind 1 {victim.pid}")
    capacity = fcntl.fcntl(watchdog.output, fcntl.F_GETPIPE_SZ)
    pings = range(10_000, 10_000 + 2 * capacity // len("pong 10000\n") + 1000)
    watchdog.send(*(f"ping {n}" for n in pings))  # twice what its output pipe holds, unread
    deadline = boottime() + 0.5
    watchdog.send(f"set 1 {deadline!r}")
    died = victim.dead_at(deadline + WITHIN)
    assert died is not None and deadline <= died <= deadline + BOUND
    lines = watchdog.drain() + watchdog.sync()  # the reader catches up at last
    held = [line for line in lines if line.startswith("pong ")]
    assert held == [f"pong {n}" for n in pings[: len(held)]]
    assert len(held) < len(pings)
    notice, *reported = lines[len(held) :]
    # Every line is held or counted. `killed 1` may have been written once the pipe was
    # drained: a test sees a kill before the watchdog has reported it.
    assert len(reported) <= 1 and all(killed(line, 1, victim.pid) <= BOUND for line in reported)
    assert notice == f"error dropped {len(pings) - len(held) + 1 - len(reported)} lines"


def test_output_that_would_block_is_dropped_counted_and_announced_once_it_flows() -> None:
    read_end, write_end = os.pipe()
    try:
        os.set_blocking(write_end, False)
        out = Output(write_end)
        capacity = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
        for n in range(capacity):
            out.write(f"pong {n}")
        assert out.dropped > 0
        dropped = out.dropped
        held = b""
        while readable(read_end, 0.0):
            held += os.read(read_end, 65536)
        assert held.endswith(b"\n")  # whole lines only
        out.write("pong last")
        tail = os.read(read_end, 65536).decode().splitlines()
        assert tail == [f"error dropped {dropped} lines", "pong last"]
    finally:
        os.close(read_end)
        os.close(write_end)
