r"""Log output: the supervisor's own records and its children's lines, as text or JSON lines.

Children's lines go to the supervisor's stdout or stderr, as the child wrote them,
prefixed with the worker's name (`indexer | line`); with `log_format = "json"`
each is one JSON object per line. The supervisor's own records go to stderr.

What a child prints, and any name or message that ends up in a line, is text someone
else chose: a `\r`, an ANSI escape sequence or a right-to-left override could forge a
log line or recolour an operator's terminal. So control characters never reach the
output raw (see `escape_controls`); in JSON lines they are `\uXXXX` escapes, which
parse back to the same string.

Nothing here writes: every line is handed to `supervisor.output`, whose writer threads
do the I/O, so that a reader who stops reading never blocks the event loop. A line that
does not fit is dropped and counted there, the supervisor's own records last.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

from supervisor.model import (
    ConfigReloaded,
    CronClaimed,
    CronRunEnded,
    Event,
    LeadershipGained,
    LeadershipLost,
    RestartScheduled,
    WorkerExited,
    WorkerGaveUp,
    WorkerOutput,
    WorkerStarted,
    format_duration,
    format_utc,
)
from supervisor.output import Output

log = logging.getLogger("supervisor")

# C0 controls but the tab, DEL, C1 controls, the Unicode line and paragraph separators,
# and the bidirectional marks, embeddings, overrides and isolates.
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                       "\u202a-\u202e\u2066-\u2069]")
_SHORT = {"\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    r"""`text` with every control character written as an escape, for the text format.

    A carriage return and a newline become `\r` and `\n`; other C0 and C1 controls and
    DEL become `\xNN` (ESC is `\x1b`); the invisible bidi controls (U+202A-U+202E,
    U+2066-U+2069, U+200E, U+200F, U+061C) and the line and paragraph separators
    become `\uNNNN` (`\u202e`). A line stays one line and shows what was sent, and
    cannot move the cursor, recolour the terminal or reorder what follows.

    Tabs are kept: they cannot forge anything (the cursor only moves forward) and
    programs print them in tables and tracebacks. Ordinary non-ASCII text (é, 中,
    emoji) is kept as it is. A backslash is not doubled, so that paths and regular
    expressions read as written: the escaping is for display, not a reversible
    encoding (use `log_format = "json"` for that).
    """
    return _CONTROLS.sub(_escape, text)


def _json_safe(text: str) -> str:
    r"""A JSON text with the same controls written as \uXXXX escapes: json.dumps with
    ensure_ascii=False escapes C0 controls only, and leaves C1, DEL and bidi controls raw."""
    return _CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": format_utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _json_safe(json.dumps(entry, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """One line per record, its message escaped (`escape_controls`); a traceback
    follows on lines of its own, each escaped."""

    def format(self, record: logging.LogRecord) -> str:
        message = escape_controls(record.getMessage())
        line = f"{format_utc(record.created)} {record.levelname:<7} {message}"
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "\n" + "\n".join(escape_controls(part) for part in trace.split("\n"))
        return line


class OutputHandler(logging.Handler):
    """Queues each record for stderr as one of the supervisor's own lines; never blocks."""

    def __init__(self, output: Output) -> None:
        super().__init__()
        self._output = output

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception as exc:  # a bad format string: say so, without writing to stderr
            text = f"logging error: {exc!r} formatting {record.msg!r} with {record.args!r}"
        self._output.own(text)

    def flush(self) -> None:
        """Nothing: Output.close flushes for a bounded time; logging.shutdown must not hang."""


def configure_logging(log_format: str, output: Output) -> None:
    """The supervisor's records, and other libraries' warnings (asyncio's, say), through
    `output`: nothing may write to stderr past the queue."""
    handler = OutputHandler(output)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger("supervisor")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    logging.getLogger().handlers[:] = [handler]


class EventLog:
    """Subscriber: turns events into log records and children's lines into output.

    `run` passes the process's Output, shared with the log handler; tests may pass text
    streams instead. Without either, it makes its own Output on descriptors 1 and 2."""

    def __init__(self, log_format: str, stdout: TextIO | None = None,
                 stderr: TextIO | None = None, *, output: Output | None = None) -> None:
        self.json = log_format == "json"
        if output is None and (stdout or stderr):
            output = Output.of_streams(stdout or sys.stdout, stderr or sys.stderr)
        self.output = output or Output.of_process()

    def __call__(self, event: Event) -> None:
        if isinstance(event, WorkerOutput):
            self._line(event)
        elif isinstance(event, WorkerStarted):
            log.info("%s: started (pid %d)", event.worker, event.pid)
        elif isinstance(event, WorkerExited):
            level = logging.INFO if event.reason in ("exited", "stopped") else logging.WARNING
            log.log(level, "%s: %s (%s) after %s", event.worker, event.reason, event.description,
                    format_duration(round(event.uptime, 3)))
        elif isinstance(event, RestartScheduled):
            log.info("%s: restart %d in %s", event.worker, event.attempt,
                     format_duration(round(event.delay, 3)))
        elif isinstance(event, WorkerGaveUp):
            log.error("%s: gave up after %d restarts within %s%s", event.worker, event.restarts,
                      format_duration(event.window), " (critical)" if event.critical else "")
        elif isinstance(event, LeadershipGained):
            log.info("%s: leader of %s with fencing token %d", event.worker, event.lease,
                     event.term)
        elif isinstance(event, LeadershipLost):
            log.info("%s: no longer leader of %s (term %d): %s", event.worker, event.lease,
                     event.term, event.reason)
        elif isinstance(event, CronClaimed):
            if event.result == "acquired":
                log.info("%s: claimed slot %s of the tick %s (token %s)", event.worker,
                         event.slot, format_utc(event.tick), event.token)
            elif event.result in ("missed", "overlap"):
                log.warning("%s: tick %s %s", event.worker, format_utc(event.tick),
                            "missed" if event.result == "missed"
                            else "skipped: an earlier run is still going (overlap = forbid)")
        elif isinstance(event, CronRunEnded):
            level = logging.INFO if event.state in ("succeeded", "stopped") else logging.WARNING
            log.log(level, "%s: run of %s (slot %d, token %d) %s after %s%s", event.worker,
                    format_utc(event.tick), event.slot, event.token, event.state,
                    format_duration(round(event.duration, 3)),
                    "" if event.recorded else " (not recorded: the database did not take it)")
        elif isinstance(event, ConfigReloaded):
            log.info("reloaded: started %s, stopped %s, restarted %s",
                     list(event.started), list(event.stopped), list(event.restarted))

    def _line(self, event: WorkerOutput) -> None:
        stream = event.stream if event.stream in ("stdout", "stderr") else "stdout"
        if self.json:
            text = _json_safe(json.dumps(
                {"ts": format_utc(time.time()), "worker": event.worker, "stream": event.stream,
                 "message": event.line}, ensure_ascii=False))
        else:
            text = f"{escape_controls(event.worker)} | {escape_controls(event.line)}"
        self.output.line(stream, text, source=event.worker)  # queued or dropped, never waits
