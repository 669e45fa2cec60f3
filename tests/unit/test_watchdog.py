"""The watchdog's bookkeeping on a pinned clock: which groups are due, and when to wake."""

from __future__ import annotations

import pytest

from supervisor.watchdog import Deadlines, LineBuffer


def book(*lines: str) -> Deadlines:
    deadlines = Deadlines()
    for line in lines:
        assert deadlines.apply(line) == []
    return deadlines


@pytest.mark.parametrize("order", [("set 1 10.5", "bind 1 4242"), ("bind 1 4242", "set 1 10.5")])
def test_a_bound_group_is_due_once_its_deadline_passes_whatever_the_order_of_set_and_bind(
    order: tuple[str, str],
) -> None:
    deadlines = book(*order)
    assert deadlines.due(10.4) == []
    assert deadlines.due(10.75) == [(1, 4242, 0.25)]


def test_a_bind_keeps_the_deadline_already_set() -> None:
    deadlines = book("set 1 10", "bind 1 4242", "bind 1 4242")
    assert deadlines.due(10) == [(1, 4242, 0.0)]


def test_extending_the_deadline_defers_the_kill() -> None:
    deadlines = book("bind 1 4242", "set 1 10", "set 1 20")
    assert deadlines.due(19.9) == []
    assert deadlines.due(20) == [(1, 4242, 0.0)]


def test_tightening_the_deadline_brings_the_kill_forward() -> None:
    deadlines = book("bind 1 4242", "set 1 20", "set 1 5")
    assert deadlines.due(5) == [(1, 4242, 0.0)]


def test_a_dropped_token_is_never_killed_nor_swept() -> None:
    deadlines = book("bind 1 4242", "set 1 10", "bind 2 4343", "set 2 10", "drop 1")
    assert deadlines.due(100) == [(2, 4343, 90.0)]
    assert deadlines.groups() == [4343]


def test_dropping_an_unknown_token_changes_nothing() -> None:
    deadlines = book("bind 1 4242", "drop 7")
    assert deadlines.groups() == [4242]


def test_a_bind_after_the_deadline_passed_is_due_at_once() -> None:
    deadlines = book("set 1 10")
    assert deadlines.due(12) == []  # nothing to kill before the group is known
    deadlines.apply("bind 1 4242")
    assert deadlines.due(12) == [(1, 4242, 2.0)]


def test_a_killed_group_is_reported_once_and_still_swept() -> None:
    deadlines = book("bind 1 4242", "set 1 10", "bind 2 4343")
    assert deadlines.due(11) == [(1, 4242, 1.0)]
    assert deadlines.due(12) == []
    deadlines.apply("set 1 11.5")  # a renewal racing the kill does not revive it
    assert deadlines.due(13) == []
    assert deadlines.groups() == [4242, 4343]


def test_binding_a_killed_token_to_a_new_group_makes_that_group_due() -> None:
    deadlines = book("bind 1 4242", "set 1 10")
    assert deadlines.due(11) == [(1, 4242, 1.0)]
    deadlines.apply("bind 1 4343")
    assert deadlines.due(11) == [(1, 4343, 1.0)]


def test_an_infinite_deadline_is_never_due() -> None:
    deadlines = book("bind 1 4242", "set 2 inf", "bind 2 4343")
    assert deadlines.due(1e300) == []
    assert deadlines.groups() == [4242, 4343]


def test_the_wait_is_the_time_to_the_nearest_deadline_capped_at_a_quarter_second() -> None:
    deadlines = book("bind 1 4242", "set 1 10", "bind 2 4343", "set 2 10.1")
    assert deadlines.timeout(0) == 0.25
    assert deadlines.timeout(9.9) == pytest.approx(0.1)
    assert deadlines.timeout(11) == 0.0


@pytest.mark.parametrize(
    "lines",
    [
        (),
        ("bind 1 4242", "set 2 inf", "bind 2 4343"),
        ("set 1 10",),  # no group to kill yet: its bind will wake the watchdog
        ("bind 1 4242", "set 1 10", "drop 1"),
    ],
    ids=["empty", "only-infinite", "unbound", "dropped"],
)
def test_there_is_no_wait_limit_when_no_kill_is_pending(lines: tuple[str, ...]) -> None:
    assert book(*lines).timeout(0) is None


def test_there_is_no_wait_limit_once_every_due_group_is_killed() -> None:
    deadlines = book("bind 1 4242", "set 1 10")
    deadlines.due(10)
    assert deadlines.timeout(10) is None


def test_ping_answers_pong_with_its_number() -> None:
    assert Deadlines().apply("ping 17") == ["pong 17"]


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "set",
        "set 1",
        "set 1 10 11",
        "set x 10",
        "set -1 10",
        "set 1 soon",
        "set 1 nan",
        "set 1 -inf",
        "set \u0661 10",  # an Arabic-Indic digit one, which int() would accept
        "bind 1",
        "bind 1 x",
        "bind 1 0",  # killpg(0): the watchdog's own group
        "bind 1 1",  # killpg(1): kill(-1), every process
        "bind 1 -4343",
        "bind 1 4343.0",
        "drop",
        "drop x",
        "ping",
        "ping x",
        "pong 1",
        "SET 1 10",
        "kill 4343",
        "bind 1 4343 " + " " * 2000,
    ],
)
def test_a_malformed_line_is_answered_with_an_error_and_changes_nothing(line: str) -> None:
    deadlines = book("bind 1 4242", "set 1 10")
    replies = deadlines.apply(line)
    assert len(replies) == 1
    assert replies[0].startswith("error ")
    assert replies[0].isascii()
    assert "\n" not in replies[0]
    assert deadlines.groups() == [4242]
    assert deadlines.due(9.99) == []
    assert deadlines.due(10) == [(1, 4242, 0.0)]


def test_extra_spaces_between_words_are_accepted() -> None:
    deadlines = book("  bind  1   4242 ", "set 1\t10")
    assert deadlines.due(10) == [(1, 4242, 0.0)]


def test_a_line_split_across_reads_is_returned_whole() -> None:
    lines = LineBuffer()
    assert lines.feed(b"ping 1\nbi") == ["ping 1"]
    assert lines.feed(b"nd 1 42") == []
    assert lines.feed(b"42\n\nping 2\n") == ["bind 1 4242", "", "ping 2"]


def test_an_endless_line_is_cut_short_and_refused() -> None:
    lines = LineBuffer()
    for _ in range(100):
        assert lines.feed(b"9" * 1000) == []
    (cut,) = lines.feed(b"\n")
    assert len(cut) < 2000
    assert Deadlines().apply(cut)[0].startswith("error line too long")
    assert lines.feed(b"ping 3\n") == ["ping 3"]


def test_non_ascii_bytes_become_a_refused_line() -> None:
    (line,) = LineBuffer().feed("bind 1 \u0664\u0662\n".encode())
    assert Deadlines().apply(line)[0].startswith("error bad line")


def test_a_deadline_may_be_written_in_any_float_form() -> None:
    deadlines = book("bind 1 4242", "set 1 1e1", "bind 2 4343", "set 2 Infinity")
    assert deadlines.due(10) == [(1, 4242, 0.0)]
    assert deadlines.due(1e300) == []
