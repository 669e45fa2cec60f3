"""Output that never blocks supervision: bounded queues drained by writer threads.

Whoever reads the supervisor's stdout or stderr (a terminal, a log shipper, a pipe into
another program) may stop reading. A write to a full pipe blocks, and a write on the event
loop would block lease renewal, step-down, signals and /healthz with it (SPEC.md guarantee
11). So the loop only ever enqueues: each destination, stdout and stderr, has a queue of
its own drained by a daemon thread of its own, and a stalled reader of one stream holds
back neither the loop nor the other stream.

Invariants:

- `put` never blocks: it takes a lock that the writer thread holds only for bookkeeping,
  never while it writes.
- A queue holds at most `capacity` bytes, counting what is being written. A child's line
  is taken only while the queue stays within `capacity - reserve`; the supervisor's own
  lines may use the whole capacity, so they are the last to be dropped. Every line that
  does not fit is dropped whole and counted, per source.
- What is written is written in the order it was queued; a partial `os.write` is
  continued where it stopped, never repeated.
- Once the queue is back below its low-water mark after lines were dropped, the writer
  reports the stall once (`Stall`: lines dropped per source, seconds stalled).
- The inherited descriptors stay blocking: they are shared with the shell or the container
  runtime, whose other users must not see EAGAIN. The writer uses `os.write` on the
  descriptor, never `sys.stdout`: a daemon thread stuck inside a BufferedWriter holds its
  lock, and the interpreter's shutdown then aborts ("could not acquire lock").
- Closing flushes for a bounded time only; a writer stuck on a stalled reader is a daemon
  thread and does not hold the exit.

Imports only the standard library.
"""

from __future__ import annotations

import codecs
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TextIO

OWN = ""  # the source of the supervisor's own lines; no worker is named "" (1-100 characters)
CAPACITY = 1024 * 1024  # bytes per destination, queued and being written
RESERVE = 128 * 1024  # of CAPACITY, kept for the supervisor's own lines (~800 log records)
_SLICE = 64 * 1024  # bytes per os.write: a pipe's size, so that progress is seen as it happens

log = logging.getLogger("supervisor")

Sink = Callable[[memoryview], int]
"""Writes a prefix of the bytes, blocking until it can, and returns how many it wrote."""
DropHook = Callable[[str, str], None]
"""Called with (source, stream) for every dropped line; the metric counts them."""
StallHook = Callable[[str, "Stall"], None]
"""Called with (stream, stall) once the reader drains again after lines were dropped."""


@dataclass(frozen=True)
class Stall:
    """Lines dropped because a reader stalled, and for how long it did."""

    dropped: Mapping[str, int]  # source (a worker, or OWN) -> lines
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.dropped.values())

    def describe(self, stream: str) -> str:
        parts = ", ".join(f"{source or 'supervisor'}: {count}" for source, count
                          in sorted(self.dropped.items(), key=lambda item: (-item[1], item[0])))
        lines = "line" if self.total == 1 else "lines"
        return (f"{self.total} {lines} dropped ({parts}) while the reader of {stream} "
                f"stalled for {self.seconds:.1f}s")


class LineQueue:
    """One destination's bounded queue and its drop policy; no threads, no I/O.

    The caller serialises calls (OutputWriter holds a lock around each)."""

    def __init__(self, capacity: int = CAPACITY, reserve: int = RESERVE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 <= reserve < capacity:
            raise ValueError(f"reserve {reserve} must be within capacity {capacity}")
        self.capacity = capacity
        self.reserve = reserve
        # Half of what children may fill: a reader that is slow but reading ends a stall
        # here, where waiting for an empty queue might never come.
        self.low_water = (capacity - reserve) // 2
        self.closed = False
        self._clock = clock
        self._buffer = bytearray()
        self._in_flight = 0
        self._busy_since = clock()  # since when bytes have waited without a write completing
        self._stalled_since: float | None = None
        self._dropped: dict[str, int] = {}

    @property
    def waiting(self) -> int:
        """Bytes queued and not yet taken by the writer."""
        return len(self._buffer)

    @property
    def queued(self) -> int:
        """Bytes queued or being written: what counts against the capacity."""
        return len(self._buffer) + self._in_flight

    def put(self, data: bytes, source: str) -> bool:
        """Queue one line (`data` ends with a newline); False: it was dropped and counted."""
        limit = self.capacity if source == OWN else self.capacity - self.reserve
        if self.closed or self.queued + len(data) > limit:
            self._drop(source)
            return False
        if not self.queued:
            self._busy_since = self._clock()
        self._buffer += data
        return True

    def _drop(self, source: str) -> None:
        if self._stalled_since is None:
            self._stalled_since = self._busy_since if self.queued else self._clock()
        self._dropped[source] = self._dropped.get(source, 0) + 1

    def take(self) -> bytearray:
        """Everything waiting, in order; it counts as in flight until `written`."""
        chunk, self._buffer = self._buffer, bytearray()
        self._in_flight += len(chunk)
        return chunk

    def written(self, count: int) -> Stall | None:
        """`count` bytes in flight were written; the stall that this ends, if it ends one."""
        self._in_flight -= count
        self._busy_since = now = self._clock()
        if self._stalled_since is None or self.queued > self.low_water:
            return None
        stall = Stall(dict(self._dropped), now - self._stalled_since)
        self._stalled_since = None
        self._dropped.clear()
        return stall

    def close(self) -> None:
        """The reader is gone: discard what is queued (not counted: lines are not tracked
        once queued); every later line is dropped and counted."""
        self.closed = True
        self._buffer = bytearray()
        self._in_flight = 0


def fd_sink(fd: int) -> Sink:
    """Writes to a file descriptor, which is left in the mode it was inherited in."""

    def write(data: memoryview) -> int:
        while True:
            try:
                return os.write(fd, data)
            except BlockingIOError:
                # Someone sharing the descriptor made it non-blocking; wait rather than
                # switch it back under them.
                select.select([], [fd], [])

    return write


def text_sink(stream: TextIO) -> Sink:
    """Writes to a text stream (tests pass StringIO). The process's own stdout and stderr
    go through fd_sink: a writer stuck inside their buffer would hold its lock past the
    interpreter's shutdown."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # slices split chars

    def write(data: memoryview) -> int:
        stream.write(decoder.decode(data))
        stream.flush()
        return len(data)

    return write


def _ignore_drop(source: str, stream: str) -> None:
    pass


def _warn(stream: str, stall: Stall) -> None:
    log.warning("output: %s", stall.describe(stream))


class OutputWriter:
    """One destination: a LineQueue drained into a sink by a daemon thread."""

    def __init__(self, name: str, sink: Sink, *, capacity: int = CAPACITY,
                 reserve: int = RESERVE, clock: Callable[[], float] = time.monotonic,
                 on_stall: StallHook = _warn) -> None:
        self.name = name
        self.on_drop: DropHook = _ignore_drop
        self._sink = sink
        self._on_stall = on_stall
        self._queue = LineQueue(capacity, reserve, clock)
        self._changed = threading.Condition()
        self._closing = False
        self._reporting = False
        self._thread = threading.Thread(target=self._run, name=f"output-{name}", daemon=True)
        self._thread.start()

    def put(self, data: bytes, source: str) -> bool:
        """Queue one line, or drop and count it; never waits for the reader."""
        with self._changed:
            queued = self._queue.put(data, source)
            self._changed.notify()
        if not queued:
            self.on_drop(source, self.name)
        return queued

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued is written and a stall it ended is reported (or the
        reader is gone), up to timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: (not self._queue.queued or self._queue.closed) and not self._reporting,
                timeout)

    def stop(self) -> None:
        """Let the thread end once it has written what is queued."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait up to timeout for the thread to end; False: it is still writing."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self, timeout: float) -> bool:
        """Write what is queued, for at most `timeout` seconds; then leave the thread be."""
        self.stop()
        return self.join(timeout)

    def _run(self) -> None:
        while (chunk := self._next()) is not None:
            self._write(chunk)

    def _next(self) -> bytearray | None:
        with self._changed:
            while not self._queue.waiting and not self._closing:
                self._changed.wait()
            return self._queue.take() if self._queue.waiting else None

    def _write(self, chunk: bytearray) -> None:
        view = memoryview(chunk)
        while view:
            try:
                count = self._sink(view[:_SLICE])
            except (OSError, ValueError):  # EPIPE, EIO, a closed stream: nobody reads
                with self._changed:
                    self._queue.close()
                    self._changed.notify_all()
                return
            view = view[count:]
            with self._changed:
                stall = self._queue.written(count)
                self._reporting = stall is not None
                self._changed.notify_all()
            if stall is not None:
                self._report(stall)

    def _report(self, stall: Stall) -> None:
        try:
            self._on_stall(self.name, stall)  # outside the lock: it logs, which queues
        finally:
            with self._changed:
                self._reporting = False  # flush() waits for the report too
                self._changed.notify_all()


class Output:
    """The supervisor's two destinations, each with its own writer and queue: children's
    stdout lines go to stdout; their stderr lines and the supervisor's own to stderr."""

    def __init__(self, stdout: Sink, stderr: Sink, *, capacity: int = CAPACITY,
                 reserve: int = RESERVE, clock: Callable[[], float] = time.monotonic,
                 on_stall: StallHook = _warn) -> None:
        self.writers = {
            name: OutputWriter(name, sink, capacity=capacity, reserve=reserve, clock=clock,
                               on_stall=on_stall)
            for name, sink in (("stdout", stdout), ("stderr", stderr))
        }

    @classmethod
    def of_process(cls) -> Output:
        """File descriptors 1 and 2, as inherited."""
        return cls(fd_sink(1), fd_sink(2))

    @classmethod
    def of_streams(cls, stdout: TextIO, stderr: TextIO) -> Output:
        return cls(text_sink(stdout), text_sink(stderr))

    def count_drops(self, hook: DropHook) -> None:
        """Call `hook(source, stream)` for every line dropped from now on."""
        for writer in self.writers.values():
            writer.on_drop = hook

    def line(self, stream: str, text: str, source: str) -> bool:
        """Queue a line for "stdout" or "stderr" (a newline is added); False: dropped."""
        data = (text + "\n").encode("utf-8", errors="backslashreplace")
        return self.writers[stream].put(data, source)

    def own(self, text: str) -> bool:
        """Queue one of the supervisor's own lines for stderr, from its reserve if need be."""
        return self.line("stderr", text, OWN)

    def flush(self, timeout: float) -> bool:
        """Wait until both streams have written everything queued, up to timeout in all."""
        deadline = time.monotonic() + timeout
        return all([writer.flush(max(0.0, deadline - time.monotonic()))
                    for writer in self.writers.values()])

    def close(self, timeout: float) -> bool:
        """Flush both streams at once, for at most `timeout` seconds in all."""
        for writer in self.writers.values():
            writer.stop()
        deadline = time.monotonic() + timeout
        return all([writer.join(max(0.0, deadline - time.monotonic()))
                    for writer in self.writers.values()])
