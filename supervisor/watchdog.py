"""The trust watchdog: SIGKILLs child process groups whose kill deadline has passed.

A tiny program the supervisor starts in a session of its own and runs as
`python -I -S supervisor/watchdog.py`, so it imports the standard library only and
starts fast. It is the backstop for the supervisor's own stop logic: it kills a
group on time even while the supervisor is blocked, frozen (SIGSTOP), starved or
dead, and it kills every group left when the supervisor is gone.

Protocol: ASCII lines, newline-terminated. Input on fd 0, written by the supervisor
and by its freshly forked children (each binds itself before exec; a line shorter
than PIPE_BUF is written atomically, so writers never interleave inside a line):

    set <tok> <deadline>   token <tok> must be dead by <deadline> (or `inf`: guard only)
    bind <tok> <pgid>      the process group of <tok>; keeps a deadline already set
    drop <tok>             stopped normally: forget it, kill nothing
    ping <n>               answered `pong <n>` once every earlier line is applied

Output on fd 1: `killed <tok> <pgid> <late>` (seconds after the deadline, 3
decimals), `pong <n>`, `error <what>` for a malformed line (which changes nothing)
and `error dropped <n> lines` once output flows again after lines were lost.

Invariants and why:
- Deadlines are instants on CLOCK_BOOTTIME (`boottime()`, which the supervisor
  imports to compute them), a clock that counts through system suspend: a machine
  thawed after a suspend must not keep trusting a renewal that is now stale.
- poll() timeouts run on CLOCK_MONOTONIC, which stops during suspend, so while any
  deadline is pending the wait is capped at `_MAX_WAIT`: a kill is at most that
  late after a thaw. With nothing pending there is no timeout and no wake-up.
- fd 1 is made non-blocking and a line that would block is dropped and counted: a
  supervisor that does not read must never delay a kill.
- Polite signals are ignored: a Ctrl-C or a signal meant for the supervisor's group
  must not take the backstop away. Only EOF on fd 0 (every writer gone, however the
  supervisor died) ends it, after SIGKILLing every group still bound; SIGKILL alone
  ends it without the sweep, and the supervisor treats that as fatal.
- EOF comes only when every write end of fd 0 is closed: a child may hold one only
  until exec (close-on-exec), or it would keep the watchdog from ever sweeping.
- A killed entry stays until dropped, so the final sweep kills leftovers again.
- A pgid below 2 is refused: killpg(0) would hit the watchdog's own group and
  killpg(1) is kill(-1), every process the watchdog may signal.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import stat
import sys
import time
from collections.abc import Callable

_MAX_WAIT = 0.25  # seconds; bounds the lateness of a kill after a suspend
_MAX_LINE = 1024  # bytes; longer lines are refused, and memory stays bounded
_READ_SIZE = 65536
_IGNORED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")

_CLOCK = getattr(time, "CLOCK_BOOTTIME", None)  # Linux only


def boottime() -> float:
    """Seconds on CLOCK_BOOTTIME, or on the monotonic clock where there is none."""
    if _CLOCK is None:
        return time.monotonic()
    return time.clock_gettime(_CLOCK)


class _Entry:
    __slots__ = ("deadline", "killed", "pgid")

    def __init__(self) -> None:
        self.deadline = math.inf
        self.pgid: int | None = None
        self.killed = False


def _number(text: str, least: int = 0) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < least:
        raise ValueError
    return int(text)


def _deadline(text: str) -> float:
    value = float(text) if text.isascii() else math.nan
    if math.isnan(value) or value == -math.inf:
        raise ValueError
    return value


class Deadlines:
    """The bookkeeping: token -> deadline, process group, killed. No I/O, no clock."""

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}

    def apply(self, line: str) -> list[str]:
        """Apply one input line (without its newline); return the reply lines."""
        if len(line) > _MAX_LINE:
            return [f"error line too long: {line[:32]!a}..."]
        try:
            return self._command(line.split())
        except ValueError:
            return [f"error bad line: {line[:80]!a}"]

    def _command(self, words: list[str]) -> list[str]:
        match words:
            case ["set", tok, deadline]:
                self._entries.setdefault(_number(tok), _Entry()).deadline = _deadline(deadline)
            case ["bind", tok, pgid]:
                self._bind(_number(tok), _number(pgid, least=2))
            case ["drop", tok]:
                self._entries.pop(_number(tok), None)
            case ["ping", n]:
                return [f"pong {_number(n)}"]
            case _:
                raise ValueError
        return []

    def _bind(self, tok: int, pgid: int) -> None:
        entry = self._entries.setdefault(tok, _Entry())
        if entry.pgid != pgid:  # a new group has not been killed yet
            entry.pgid, entry.killed = pgid, False

    def due(self, now: float) -> list[tuple[int, int, float]]:
        """(tok, pgid, seconds late) of every group to kill now; each is reported once."""
        found = []
        for tok, entry in self._entries.items():
            if entry.pgid is not None and not entry.killed and entry.deadline <= now:
                entry.killed = True
                found.append((tok, entry.pgid, now - entry.deadline))
        return found

    def timeout(self, now: float) -> float | None:
        """How long to wait for input before a kill may be due; None: no kill pending."""
        pending = [
            e.deadline
            for e in self._entries.values()
            if e.pgid is not None and not e.killed and e.deadline != math.inf
        ]
        if not pending:
            return None
        return min(_MAX_WAIT, max(0.0, min(pending) - now))

    def groups(self) -> list[int]:
        """Every bound process group, killed or not: what the final sweep kills."""
        return sorted({e.pgid for e in self._entries.values() if e.pgid is not None})


class LineBuffer:
    """Splits a byte stream into lines, keeping a partial line for the next chunk.

    A line longer than `_MAX_LINE` is cut to `_MAX_LINE + 1` characters, which
    `Deadlines.apply` refuses; a partial line at EOF is never returned, since a
    truncated `bind 3 1234` would name the wrong group.
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[str]:
        *lines, rest = (self._pending + chunk).split(b"\n")
        self._pending = rest[: _MAX_LINE + 1]
        return [line[: _MAX_LINE + 1].decode("ascii", "replace") for line in lines]


class Output:
    """Writes whole lines to a non-blocking fd; a line that would block is dropped."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.dropped = 0
        self._reported = 0

    def write(self, line: str) -> None:
        if self.dropped > self._reported:
            if not self._send(f"error dropped {self.dropped} lines"):
                self.dropped += 1
                return
            self._reported = self.dropped
        if not self._send(line):
            self.dropped += 1

    def _send(self, line: str) -> bool:
        # Lines are far shorter than PIPE_BUF: a pipe takes all of one or none of it.
        try:
            return os.write(self._fd, f"{line}\n".encode("ascii")) > 0
        except OSError:  # full (EAGAIN), reader gone (EPIPE), closed (EBADF)
            return False


def kill_group(pgid: int) -> None:
    # Gone already, or the pgid now belongs to a process the watchdog may not signal.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def serve(
    fd: int,
    out: Output,
    clock: Callable[[], float] = boottime,
    kill: Callable[[int], None] = kill_group,
) -> int:
    """Read commands from `fd` and kill on time until EOF; then kill every bound group.

    Returns 0 on EOF and 1 on a read error; the sweep runs whatever ends the loop.
    """
    book = Deadlines()
    try:
        return _loop(fd, book, out, clock, kill)
    finally:
        for pgid in book.groups():
            kill(pgid)


def _loop(
    fd: int, book: Deadlines, out: Output, clock: Callable[[], float], kill: Callable[[int], None]
) -> int:
    def kill_due() -> None:
        for tok, pgid, late in book.due(clock()):
            kill(pgid)
            out.write(f"killed {tok} {pgid} {late:.3f}")

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    lines = LineBuffer()
    while True:
        kill_due()
        wait = book.timeout(clock())
        if not poller.poll(None if wait is None else math.ceil(wait * 1000)):
            continue
        try:
            chunk = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            continue
        except OSError:
            return 1
        if not chunk:
            return 0
        for line in lines.feed(chunk):
            replies = book.apply(line)
            kill_due()  # before a pong, so `ping` also waits for the kills it follows
            for reply in replies:
                out.write(reply)


def _unblock_if_pipe(fd: int) -> None:
    with contextlib.suppress(OSError):  # fd closed: every write is dropped anyway
        if stat.S_ISFIFO(os.fstat(fd).st_mode):  # never make a shared terminal non-blocking
            os.set_blocking(fd, False)


def main() -> int:
    for name in _IGNORED:
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    _unblock_if_pipe(1)
    return serve(0, Output(1))


if __name__ == "__main__":
    sys.exit(main())
