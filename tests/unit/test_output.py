"""supervisor.output: the drop policy of a bounded output queue, and writers that never
make the caller wait for a stalled reader (SPEC.md guarantee 11).

The policy (LineQueue) is tested with no threads at all. The writers are tested with a
sink the test holds shut (`HeldSink`: every write waits on an Event the test sets), so a
"stalled reader" is a state the test controls, not a race; time is a fake clock. One test
uses an os.pipe, to show that a descriptor is never switched to non-blocking.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from supervisor.logs import EventLog, OutputHandler, TextFormatter
from supervisor.metrics import Metrics
from supervisor.model import WorkerOutput
from supervisor.output import (
    OWN,
    LineQueue,
    Output,
    OutputWriter,
    Stall,
    fd_sink,
    text_sink,
)
from tests.support.clocks import FakeClock

WAIT = 5.0  # a deadline for what should happen at once; reached only when a test fails


class HeldSink:
    """A reader the test holds stalled: each write waits until `release()`; `per_call`
    bytes at most are taken per write, as a pipe with little room left would."""

    def __init__(self, per_call: int | None = None) -> None:
        self.per_call = per_call
        self.data = bytearray()
        self.entered = threading.Event()  # a write is waiting for the reader
        self._open = threading.Event()

    def release(self) -> None:
        self._open.set()

    def __call__(self, view: memoryview) -> int:
        self.entered.set()
        if not self._open.wait(WAIT):
            raise AssertionError("the test never released the sink")
        count = len(view) if self.per_call is None else min(self.per_call, len(view))
        self.data += view[:count]
        return count


class Collect:
    """A reader that keeps up: takes everything at once."""

    def __init__(self) -> None:
        self.data = bytearray()

    def __call__(self, view: memoryview) -> int:
        self.data += view
        return len(view)


def line(n: int, width: int = 10) -> bytes:
    """A line of exactly `width` bytes, newline included."""
    return f"{n}".rjust(width - 1, ".").encode() + b"\n"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def stalls() -> list[tuple[str, Stall]]:
    return []


@pytest.fixture
def held_writer(clock: FakeClock, stalls: list[tuple[str, Stall]]
                ) -> Iterator[tuple[OutputWriter, HeldSink]]:
    """A writer of capacity 100, reserve 30, whose reader is stalled with line 0 in flight."""
    sink = HeldSink()
    writer = OutputWriter("stdout", sink, capacity=100, reserve=30, clock=clock,
                          on_stall=lambda name, stall: stalls.append((name, stall)))
    assert writer.put(line(0), "indexer")
    assert sink.entered.wait(WAIT)
    yield writer, sink
    sink.release()
    assert writer.close(WAIT)


# -- the policy, no threads ---------------------------------------------------------------


def test_a_childs_line_is_dropped_once_it_would_reach_into_the_reserve() -> None:
    queue = LineQueue(capacity=100, reserve=30)
    taken = [queue.put(line(n), "indexer") for n in range(8)]
    assert taken == [True] * 7 + [False]
    assert queue.queued == 70


def test_the_reserve_is_taken_only_by_the_supervisors_own_lines() -> None:
    queue = LineQueue(capacity=100, reserve=30)
    for n in range(7):
        queue.put(line(n), "indexer")
    assert not queue.put(line(7), "indexer")
    assert [queue.put(line(n), OWN) for n in range(3)] == [True, True, True]
    assert not queue.put(line(10), "indexer")


def test_own_lines_are_dropped_last_and_then_counted_too(clock: FakeClock) -> None:
    queue = LineQueue(capacity=100, reserve=30, clock=clock)
    for n in range(8):
        queue.put(line(n), "indexer")
    for n in range(4):
        queue.put(line(n), OWN)
    queue.take()
    stall = queue.written(100)
    assert stall is not None
    assert stall.dropped == {"indexer": 1, OWN: 1}


def test_lines_are_taken_in_the_order_they_were_queued() -> None:
    queue = LineQueue(capacity=100, reserve=30)
    queue.put(line(1), "a")
    queue.put(line(2), OWN)
    queue.put(line(3), "b")
    assert bytes(queue.take()) == line(1) + line(2) + line(3)
    assert queue.waiting == 0 and queue.queued == 30  # in flight until written


def test_a_stall_ends_below_the_low_water_mark_with_its_counts_and_duration(
        clock: FakeClock) -> None:
    queue = LineQueue(capacity=100, reserve=30, clock=clock)  # low water: 35 bytes
    for n in range(7):
        queue.put(line(n), "indexer")
    clock.now += 12.3
    queue.put(line(7), "indexer")
    queue.put(line(8), "billing")
    queue.put(line(9), "indexer")
    queue.take()
    assert queue.written(30) is None  # 40 bytes still queued: still above low water
    stall = queue.written(10)
    assert stall == Stall({"indexer": 2, "billing": 1}, pytest.approx(12.3))
    assert queue.written(30) is None  # reported once


def test_nothing_is_reported_when_nothing_was_dropped() -> None:
    queue = LineQueue(capacity=100, reserve=30)
    queue.put(line(1), "indexer")
    queue.take()
    assert queue.written(10) is None


def test_a_stall_is_described_with_counts_biggest_first_and_the_supervisor_by_name() -> None:
    stall = Stall({OWN: 34, "indexer": 1200}, 12.34)
    assert stall.describe("stdout") == ("1234 lines dropped (indexer: 1200, supervisor: 34) "
                                        "while the reader of stdout stalled for 12.3s")
    assert Stall({"a": 1}, 0.5).describe("stderr").startswith("1 line dropped (a: 1)")


def test_a_reserve_not_smaller_than_the_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="reserve"):
        LineQueue(capacity=100, reserve=100)


# -- writers: a stalled reader never makes the caller wait --------------------------------


def test_put_never_waits_for_a_stalled_reader(
        held_writer: tuple[OutputWriter, HeldSink]) -> None:
    writer, _ = held_writer
    results: list[bool] = []
    putter = threading.Thread(
        target=lambda: results.extend(writer.put(line(n), "indexer") for n in range(10_000)))
    putter.start()
    putter.join(WAIT)
    assert not putter.is_alive(), "put waited for the stalled reader"
    assert results.count(True) == 6  # 70 bytes for children, 10 of them line 0's, in flight


def test_childrens_lines_are_dropped_and_counted_with_the_room_kept_for_own_lines(
        held_writer: tuple[OutputWriter, HeldSink]) -> None:
    writer, _ = held_writer
    drops: list[tuple[str, str]] = []
    writer.on_drop = lambda source, stream: drops.append((source, stream))
    children = [writer.put(line(n), "indexer") for n in range(1, 10)]
    own = [writer.put(line(n), OWN) for n in range(4)]
    assert children == [True] * 6 + [False] * 3
    assert own == [True, True, True, False]
    assert drops == [("indexer", "stdout")] * 3 + [(OWN, "stdout")]


def test_once_the_reader_drains_the_stall_is_reported_once_and_what_fit_is_written_in_order(
        held_writer: tuple[OutputWriter, HeldSink], clock: FakeClock,
        stalls: list[tuple[str, Stall]]) -> None:
    writer, sink = held_writer
    queued = [line(0)]
    for n in range(1, 10):
        if writer.put(line(n), "indexer"):
            queued.append(line(n))
    if writer.put(line(99), OWN):
        queued.append(line(99))
    clock.now += 12.3
    sink.release()
    assert writer.flush(WAIT)
    assert bytes(sink.data) == b"".join(queued)
    assert stalls == [("stdout", Stall({"indexer": 3}, pytest.approx(12.3)))]


def test_a_partial_write_is_continued_where_it_stopped() -> None:
    sink = HeldSink(per_call=7)
    sink.release()
    writer = OutputWriter("stdout", sink)
    lines = [line(n, width=23) for n in range(50)]
    for data in lines:
        writer.put(data, "indexer")
    assert writer.close(WAIT)
    assert bytes(sink.data) == b"".join(lines)


def test_a_stalled_stdout_does_not_hold_back_stderr() -> None:
    held, collect = HeldSink(), Collect()
    output = Output(held, collect)
    output.line("stdout", "indexer | blocked", "indexer")
    assert held.entered.wait(WAIT)
    output.own("leader of leader/indexer")
    assert output.writers["stderr"].flush(WAIT)
    assert bytes(collect.data) == b"leader of leader/indexer\n"
    held.release()
    assert output.close(WAIT)


def test_close_gives_up_on_a_stalled_reader_within_its_timeout(
        held_writer: tuple[OutputWriter, HeldSink]) -> None:
    writer, _ = held_writer
    assert writer.close(0.1) is False  # the thread is a daemon: it does not hold the exit


def test_a_reader_that_is_gone_drops_and_counts_every_later_line() -> None:
    def broken(view: memoryview) -> int:
        raise BrokenPipeError

    drops: list[tuple[str, str]] = []
    writer = OutputWriter("stdout", broken)
    writer.on_drop = lambda source, stream: drops.append((source, stream))
    writer.put(line(1), "indexer")
    assert writer.flush(WAIT)  # nothing will ever be written: flushing does not wait for it
    assert not writer.put(line(2), "indexer")
    assert drops == [("indexer", "stdout")]
    assert writer.close(WAIT)


def test_a_non_blocking_descriptor_is_waited_on_and_never_switched_back() -> None:
    read_end, write_end = os.pipe()
    try:
        os.set_blocking(write_end, False)  # as another user of a shared descriptor might
        size = fcntl.fcntl(write_end, 1032)  # F_GETPIPE_SZ
        writer = OutputWriter("stdout", fd_sink(write_end), capacity=4 * size, reserve=1)
        data = b"x" * (size - 1) + b"\n"
        assert writer.put(data, "indexer") and writer.put(data, "indexer")  # one fills it
        received = bytearray()
        while len(received) < 2 * size:
            received += os.read(read_end, size)
        assert writer.close(WAIT)
        assert bytes(received) == data * 2
        assert os.get_blocking(write_end) is False
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_text_stream_gets_a_character_split_between_two_writes_whole() -> None:
    stream = io.StringIO()
    write = text_sink(stream)
    data = "é\n".encode()
    write(memoryview(data)[:1])
    write(memoryview(data)[1:])
    assert stream.getvalue() == "é\n"


# -- wiring: the warning as a log record, EventLog's formats, the metric -------------------


@dataclass
class Wired:
    output: Output
    stdout: HeldSink
    stderr: io.StringIO


@pytest.fixture
def supervisor_log() -> Iterator[Wired]:
    """The "supervisor" logger writing through an Output, as `run` wires it; stdout stalled."""
    stdout, stderr = HeldSink(), io.StringIO()
    wired = Wired(Output(stdout, text_sink(stderr)), stdout, stderr)
    logger = logging.getLogger("supervisor")
    saved = logger.handlers[:], logger.propagate, logger.level
    handler = OutputHandler(wired.output)
    handler.setFormatter(TextFormatter())
    logger.handlers[:], logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    yield wired
    wired.stdout.release()
    wired.output.close(WAIT)
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


def test_after_the_drain_the_supervisor_warns_on_stderr_with_the_count(
        supervisor_log: Wired) -> None:
    output = supervisor_log.output
    queued = [output.line("stdout", f"{n} ".ljust(2047, "x"), "indexer") for n in range(600)]
    dropped = queued.count(False)
    assert dropped > 0
    supervisor_log.stdout.release()
    assert output.writers["stdout"].flush(WAIT)  # written, and the stall reported
    assert output.writers["stderr"].flush(WAIT)
    warnings = [text for text in supervisor_log.stderr.getvalue().splitlines()
                if "WARNING" in text]
    assert len(warnings) == 1
    assert re.search(rf"WARNING output: {dropped} lines dropped \(indexer: {dropped}\) while "
                     r"the reader of stdout stalled for \d+\.\ds$", warnings[0])


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_event_log_writes_childrens_lines_to_their_stream_in_both_formats(
        log_format: str) -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    events = EventLog(log_format, stdout, stderr)
    events(WorkerOutput("indexer", "stdout", "to stdout"))
    events(WorkerOutput("indexer", "stderr", "to stderr"))
    assert events.output.close(WAIT)
    if log_format == "text":
        assert (stdout.getvalue(), stderr.getvalue()) == ("indexer | to stdout\n",
                                                          "indexer | to stderr\n")
    else:
        entry = json.loads(stdout.getvalue())
        assert {k: entry[k] for k in ("worker", "stream", "message")} == {
            "worker": "indexer", "stream": "stdout", "message": "to stdout"}
        assert json.loads(stderr.getvalue())["stream"] == "stderr"


def test_the_dropped_lines_series_exist_from_the_start_and_count_each_drop() -> None:
    metrics = Metrics(workers=["indexer"])
    body = metrics.exposition().decode()
    for labels in ('stream="stdout",worker="indexer"', 'stream="stderr",worker="indexer"',
                   'stream="stderr",worker=""'):
        assert f"supervisor_output_dropped_lines_total{{{labels}}} 0.0" in body
    metrics.output_dropped_line("indexer", "stdout")
    assert ('supervisor_output_dropped_lines_total{stream="stdout",worker="indexer"} 1.0'
            in metrics.exposition().decode())
