"""The node's one database lane: one thread, one connection, node syncs first.

Every store call a supervisor makes runs here, one at a time, so a node holds at most
one connection to the database (the store's pool has one slot and nobody else checks it
out). Calls wait in a priority queue: the node sync, which renews everything the node
holds, goes before anything a mode asks (a cron claim, a coordinated publish, history
upkeep), so a burst of mode calls never delays a renewal by more than the one call in
flight. A caller bounds its whole wait, queue included: a call still queued when its
caller gives up is dropped unrun; the call in flight is cut (its socket shut down by
`store.interrupt()`), which frees the thread at once and discards that connection, so
the next call opens a fresh one.

Between calls the thread waits on the connection itself: on PostgreSQL the store LISTENs
on that same session, so a lease release wakes the node without a second connection.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import select
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("supervisor")

SYNC = 0  # the node sync: renewals of everything held
RELEASE = 1  # giving back a lease or a slot (another node is waiting for it)
OTHER = 2  # everything else a mode asks

_IDLE_WAIT = 5.0  # seconds between looks at the connection when nothing else wakes us


class LaneStore(Protocol):
    """What the lane needs of a store: cutting the call in flight. A store may also offer
    `notify_fd()` and `take_notified()` (SqlStore on PostgreSQL) to be heard between calls."""

    def interrupt(self) -> None: ...


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    future: Future[Any] = field(compare=False)
    fn: Callable[[], Any] = field(compare=False)


class DbLane:
    """One database thread with a priority queue; `on_notify` runs (in that thread) when
    the store's connection heard a lease release."""

    def __init__(self, store: LaneStore, on_notify: Callable[[], object] | None = None,
                 name: str = "fs-db") -> None:
        self._store = store
        self._on_notify = on_notify
        self._queue: list[_Job] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._current: _Job | None = None
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pipe_open = True
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any], priority: int = OTHER) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the database lane is closed")
            heapq.heappush(self._queue, _Job(priority, next(self._seq), future, fn))
            self._poke()
        return future

    def abandon(self, future: Future[Any]) -> None:
        """Its caller gave up: drop it if still queued, cut it if it is the call in flight."""
        if future.cancel():
            return
        with self._lock:
            # Under the lock the thread cannot move on to another call, so the cut can
            # only hit this one (or nothing, if it has just finished its transaction).
            if self._current is not None and self._current.future is future:
                self._store.interrupt()

    def close(self) -> None:
        """Drop every queued call; the thread ends after the call in flight (if any)."""
        with self._lock:
            self._closed = True
            queued, self._queue = self._queue, []
            self._poke()
        for job in queued:
            job.future.cancel()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # --- the thread ------------------------------------------------------------------------

    def _poke(self) -> None:
        """Wake the thread (called under the lock, so never after it closed the pipe)."""
        if self._pipe_open:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"x")

    def _next(self) -> _Job | None:
        with self._lock:
            while self._queue:
                job = heapq.heappop(self._queue)
                if job.future.set_running_or_notify_cancel():
                    self._current = job
                    return job
            return None

    def _serve(self) -> None:
        try:
            while True:
                job = self._next()
                if job is None:
                    if self._closed:
                        return
                    self._idle()
                    continue
                try:
                    result = job.fn()
                except BaseException as exc:  # handed to the caller, never lost
                    job.future.set_exception(exc)
                else:
                    job.future.set_result(result)
                finally:
                    with self._lock:
                        self._current = None
                self._heard()
        finally:
            with self._lock:
                self._closed = True
                self._pipe_open = False
                os.close(self._wake_r)
                os.close(self._wake_w)

    def _idle(self) -> None:
        """Wait for a call or for the connection to have something (a notification)."""
        # poll, not select: the supervisor raises its descriptor limit, and select() cannot
        # watch a descriptor numbered 1024 or more.
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        notify_fd = self._notify_fd()
        if notify_fd is not None:
            poller.register(notify_fd, select.POLLIN)
        try:
            readable = [fd for fd, _ in poller.poll(_IDLE_WAIT * 1000)]
        except (OSError, ValueError):  # the connection's fd closed under us: look again
            readable = []
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
        self._heard()

    def _notify_fd(self) -> int | None:
        fn = getattr(self._store, "notify_fd", None)
        return fn() if fn is not None else None

    def _heard(self) -> None:
        fn = getattr(self._store, "take_notified", None)
        if fn is None or self._on_notify is None:
            return
        try:
            heard = fn()
        except Exception:  # a hint only: polling stays correct
            log.debug("database notifications: could not read", exc_info=True)
            return
        if heard:
            self._on_notify()
