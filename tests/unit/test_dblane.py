"""The database lane: one thread, syncs first, a caller's bound covers its queueing, a cut
hits only the call that was given up, and notifications heard between calls wake the node."""

from __future__ import annotations

import os
import threading
from concurrent.futures import CancelledError

import pytest

from supervisor.coordination.dblane import OTHER, RELEASE, SYNC, DbLane

WAIT = 5.0  # generous: these are events that happen at once, not timings


class Store:
    """Stands in for SqlStore: `interrupt` releases whatever call is blocked in `block`."""

    def __init__(self) -> None:
        self.interrupts = 0
        self.cut = threading.Event()
        self.readable_r, self.readable_w = os.pipe()
        self.heard = threading.Event()

    def interrupt(self) -> None:
        self.interrupts += 1
        self.cut.set()

    def block(self, entered: threading.Event) -> str:
        entered.set()
        if not self.cut.wait(WAIT):
            raise AssertionError("never cut")
        self.cut.clear()
        raise ConnectionResetError("cut")

    def notify_fd(self) -> int:
        return self.readable_r

    def take_notified(self) -> bool:
        if self.heard.is_set():
            os.read(self.readable_r, 1)
            self.heard.clear()
            return True
        return False


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def lane(store: Store):
    woken = threading.Event()
    opened = DbLane(store, on_notify=woken.set)
    opened.woken = woken  # type: ignore[attr-defined]
    yield opened
    opened.close()
    opened.join(WAIT)
    assert not opened.alive()


def hold(lane: DbLane) -> tuple[threading.Event, threading.Event]:
    """Occupy the lane's thread until the returned `release` is set."""
    entered, release = threading.Event(), threading.Event()
    lane.submit(lambda: (entered.set(), release.wait(WAIT)))
    assert entered.wait(WAIT)
    return entered, release


def test_calls_run_one_at_a_time_in_one_thread(lane: DbLane) -> None:
    threads: set[int] = set()
    running = 0
    most = 0
    lock = threading.Lock()

    def call() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        threads.add(threading.get_ident())
        with lock:
            running -= 1

    futures = [lane.submit(call) for _ in range(50)]
    for future in futures:
        future.result(WAIT)
    assert most == 1
    assert len(threads) == 1


def test_a_sync_goes_before_every_queued_mode_call(lane: DbLane) -> None:
    _, release = hold(lane)
    order: list[str] = []
    futures = [lane.submit(lambda i=i: order.append(f"mode{i}"), OTHER) for i in range(3)]
    futures.append(lane.submit(lambda: order.append("release"), RELEASE))
    futures.append(lane.submit(lambda: order.append("sync"), SYNC))
    release.set()
    for future in futures:
        future.result(WAIT)
    assert order == ["sync", "release", "mode0", "mode1", "mode2"]


def test_a_call_abandoned_while_queued_never_runs_and_cuts_nothing(lane: DbLane,
                                                                   store: Store) -> None:
    _, release = hold(lane)
    ran = threading.Event()
    queued = lane.submit(ran.set)
    lane.abandon(queued)
    release.set()
    lane.submit(lambda: None).result(WAIT)  # the lane has moved past it
    assert not ran.is_set()
    assert queued.cancelled()
    assert store.interrupts == 0


def test_abandoning_the_call_in_flight_cuts_it_and_frees_the_thread(lane: DbLane,
                                                                    store: Store) -> None:
    entered = threading.Event()
    stuck = lane.submit(lambda: store.block(entered))
    assert entered.wait(WAIT)
    lane.abandon(stuck)
    with pytest.raises(ConnectionResetError):
        stuck.result(WAIT)
    assert store.interrupts == 1
    assert lane.submit(lambda: "next").result(WAIT) == "next"


def test_abandoning_a_finished_call_does_not_cut_the_next(lane: DbLane, store: Store) -> None:
    done = lane.submit(lambda: "done")
    assert done.result(WAIT) == "done"
    _, release = hold(lane)  # another call is in flight now
    lane.abandon(done)
    release.set()
    assert store.interrupts == 0


def test_an_exception_reaches_its_caller_and_the_lane_goes_on(lane: DbLane) -> None:
    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        lane.submit(fail).result(WAIT)
    assert lane.submit(lambda: 2).result(WAIT) == 2


def test_a_notification_heard_while_idle_wakes_the_node(lane: DbLane, store: Store) -> None:
    lane.submit(lambda: None).result(WAIT)  # idle from here on
    assert not lane.woken.is_set()  # type: ignore[attr-defined]
    store.heard.set()
    os.write(store.readable_w, b"n")  # the connection's socket has something to read
    assert lane.woken.wait(WAIT)  # type: ignore[attr-defined]


def test_close_drops_queued_calls_and_refuses_new_ones(store: Store) -> None:
    lane = DbLane(store)
    _, release = hold(lane)
    queued = lane.submit(lambda: None)
    lane.close()
    with pytest.raises(CancelledError):
        queued.result(WAIT)
    with pytest.raises(RuntimeError, match="closed"):
        lane.submit(lambda: None)
    release.set()
    lane.join(WAIT)
    assert not lane.alive()
