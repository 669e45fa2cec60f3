"""Control characters from children and names never reach text logs raw (issue 12).

A child's `\\r`, an ANSI escape sequence or a right-to-left override could otherwise
forge a log line or recolour the operator's terminal. The real formatters, on worker
output lines (EventLog) and on the supervisor's own records that carry names.
"""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from supervisor.logs import EventLog, JsonFormatter, TextFormatter
from supervisor.model import WorkerOutput

WAIT = 5.0

HOSTILE = [
    # (what a child printed, what the text log shows)
    ("done\r2026-01-01T00:00:00Z INFO    forged", "done\\r2026-01-01T00:00:00Z INFO    forged"),
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("\x1b]0;owned\x07title", "\\x1b]0;owned\\x07title"),
    ("abc\u202eevil.exe", "abc\\u202eevil.exe"),
    ("\u2066isolate\u2069 \u200fmark \u061cletter",
     "\\u2066isolate\\u2069 \\u200fmark \\u061cletter"),
    ("c1 \x9b31m csi \x85 nel", "c1 \\x9b31m csi \\x85 nel"),
    ("nul\x00 bs\x08 del\x7f vt\x0b ff\x0c", "nul\\x00 bs\\x08 del\\x7f vt\\x0b ff\\x0c"),
    ("line\u2028sep\nnewline", "line\\u2028sep\\nnewline"),
]
KEPT = [
    "café au lait, 中文, עברית, emoji 🚀",
    "col1\tcol2\tcol3",  # tabs are kept (documented in escape_controls)
    "C:\\path\\to\\file and a regex \\d+",  # backslashes are not doubled
]


def worker_lines(log_format: str, *events: WorkerOutput) -> list[str]:
    stdout = io.StringIO()
    log = EventLog(log_format, stdout, io.StringIO())
    for event in events:
        log(event)
    assert log.output.close(WAIT)
    return stdout.getvalue().split("\n")[:-1]


@pytest.mark.parametrize(("raw", "shown"), HOSTILE)
def test_a_childs_control_characters_are_escaped_in_the_text_format(raw: str, shown: str):
    assert worker_lines("text", WorkerOutput("indexer", "stdout", raw)) == [f"indexer | {shown}"]


@pytest.mark.parametrize("text", KEPT)
def test_ordinary_text_and_tabs_are_kept_as_they_are(text: str):
    assert worker_lines("text", WorkerOutput("indexer", "stdout", text)) == [f"indexer | {text}"]


def test_a_forged_line_stays_on_the_workers_own_line():
    lines = worker_lines("text", WorkerOutput("indexer", "stdout",
                                              "ok\r\x1b[2Kbilling | paid 1000000"))
    assert lines == ["indexer | ok\\r\\x1b[2Kbilling | paid 1000000"]
    assert all(ord(c) >= 0x20 for c in lines[0])


def test_the_workers_name_is_escaped_too():
    assert worker_lines("text", WorkerOutput("a\x1b[8mb", "stdout", "x")) == ["a\\x1b[8mb | x"]


def record(msg: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("supervisor", logging.INFO, __file__, 1, msg, args,
                             exc_info)  # type: ignore[arg-type]


def test_names_in_the_supervisors_own_records_are_escaped():
    line = TextFormatter().format(record("node %s in group %s: starting %d workers",
                                         "host\r\x1b[31m", "grp\u202e1", 2))
    assert line.endswith(" INFO    node host\\r\\x1b[31m in group grp\\u202e1: starting 2 workers")
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line


def test_a_traceback_keeps_its_lines_but_not_its_controls():
    try:
        raise RuntimeError("bad \x1b[31mthing\u202e")
    except RuntimeError:
        line = TextFormatter().format(record("failed: %s", "café\n中", exc_info=sys.exc_info()))
    first, *trace = line.split("\n")
    assert first.endswith("failed: café\\n中")
    assert trace[0] == "Traceback (most recent call last):"
    assert trace[-1] == "RuntimeError: bad \\x1b[31mthing\\u202e"


def test_escape_controls_leaves_clean_text_alone():
    from supervisor.logs import escape_controls  # new in issue 12: the other tests run without

    text = "plain ASCII, é, 中, \t and \\ as they are"
    assert escape_controls(text) == text


@pytest.mark.parametrize(("raw", "_shown"), HOSTILE)
def test_json_lines_escape_every_control_and_parse_back_to_the_same_text(raw: str, _shown: str):
    (line,) = worker_lines("json", WorkerOutput("indexer", "stdout", raw))
    assert not [c for c in line if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F
                or c in "\u202e\u2066\u2069\u200f\u061c\u2028"]
    assert json.loads(line)["message"] == raw
    own = JsonFormatter().format(record("%s", raw))
    assert "\u202e" not in own and "\x9b" not in own
    assert json.loads(own)["message"] == raw


def test_json_lines_keep_ordinary_non_ascii_text():
    (line,) = worker_lines("json", WorkerOutput("indexer", "stdout", "café 中"))
    assert "café 中" in line
