"""The last lines of each worker's output, kept in memory for `supervisor logs`.

A subscriber of the supervisor's events (like supervisor.logs): every `WorkerOutput`
line goes into its worker's ring buffer, bounded in lines and in bytes (the oldest go
first), with the stream it came on and the wall-clock time it arrived. Followers
(`logs -f`) get each new line through a bounded queue of their own: one that does not
keep up loses lines (counted, and told so), never slows the supervisor down nor makes
it hold more than its queue.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from supervisor.model import Event, WorkerOutput

MAX_LINES = 1000  # per worker
MAX_BYTES = 256 * 1024  # per worker, of line text
FOLLOW_QUEUE = 1000  # lines a follower may be behind before it loses some


@dataclass(frozen=True)
class LogLine:
    at: float  # wall clock
    stream: str
    line: str

    def to_json(self) -> dict[str, object]:
        return {"at": self.at, "stream": self.stream, "line": self.line}


class Follower:
    """One `logs -f`: the lines since it started, each with how many were lost just
    before it (the queue was full: the follower did not keep up)."""

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[tuple[int, LogLine]] = asyncio.Queue(size)
        self.dropped = 0  # lost since the last line that got into the queue

    def offer(self, line: LogLine) -> None:
        try:
            self.queue.put_nowait((self.dropped, line))
        except asyncio.QueueFull:
            self.dropped += 1
        else:
            self.dropped = 0


class WorkerLog:
    """One worker's ring buffer."""

    def __init__(self, max_lines: int, max_bytes: int) -> None:
        self._lines: deque[LogLine] = deque()
        self._bytes = 0
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self.followers: set[Follower] = set()

    def add(self, line: LogLine) -> None:
        self._lines.append(line)
        self._bytes += len(line.line)
        while self._lines and (len(self._lines) > self._max_lines
                               or self._bytes > self._max_bytes):
            self._bytes -= len(self._lines.popleft().line)
        for follower in self.followers:
            follower.offer(line)

    def tail(self, count: int) -> list[LogLine]:
        if count <= 0:
            return []
        return list(self._lines)[-count:]

    @property
    def size(self) -> tuple[int, int]:
        return len(self._lines), self._bytes


class LogBuffers:
    """Every worker's ring buffer; call it with each event."""

    def __init__(self, max_lines: int = MAX_LINES, max_bytes: int = MAX_BYTES,
                 follow_queue: int = FOLLOW_QUEUE,
                 clock: Callable[[], float] = time.time) -> None:
        self._logs: dict[str, WorkerLog] = {}
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._follow_queue = follow_queue
        self._clock = clock

    def __call__(self, event: Event) -> None:
        if isinstance(event, WorkerOutput):
            self._log(event.worker).add(LogLine(self._clock(), event.stream, event.line))

    def _log(self, worker: str) -> WorkerLog:
        log = self._logs.get(worker)
        if log is None:
            log = self._logs[worker] = WorkerLog(self._max_lines, self._max_bytes)
        return log

    def tail(self, worker: str, count: int) -> list[LogLine]:
        log = self._logs.get(worker)
        return [] if log is None else log.tail(count)

    def follow(self, worker: str) -> Follower:
        follower = Follower(self._follow_queue)
        self._log(worker).followers.add(follower)
        return follower

    def unfollow(self, worker: str, follower: Follower) -> None:
        log = self._logs.get(worker)
        if log is not None:
            log.followers.discard(follower)

    def size(self, worker: str) -> tuple[int, int]:
        """(lines, bytes) kept for `worker`."""
        log = self._logs.get(worker)
        return (0, 0) if log is None else log.size
