r"""Log output: the supervisor's own records and its children's lines, as text or JSON lines.

A record made from an event carries the event's fields (`event_fields`): in JSON lines
they are keys of their own beside the message, so a log pipeline can filter on `worker`,
`reason` or `token` without parsing sentences; the text format shows the message only.

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

import dataclasses
import json
import logging
import re
import sys
import time
from collections.abc import Mapping
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


# The LogRecord attribute that carries an event's structured fields to JsonFormatter.
_FIELDS = "supervisor_fields"
# Event fields never written: a child's argv may hold a secret (a URL with its password),
# and the text format never shows it either.
_LEFT_OUT = frozenset({"argv"})
# The keys of every JSON record, which no event field may replace.
_RESERVED = frozenset({"ts", "level", "logger", "message", "exception"})


def event_fields(event: Event) -> dict[str, Any]:
    """The structured fields of `event` for a JSON line: `event` (its class name) and each
    of its fields by name. Durations are seconds (to the millisecond), a cron tick is
    ISO 8601 in UTC, and a leader's term is also given as `token`, the name a cron run's
    claim token has."""
    fields: dict[str, Any] = {"event": type(event).__name__}
    for item in dataclasses.fields(event):
        if item.name in _LEFT_OUT:
            continue
        value = getattr(event, item.name)
        if item.name == "tick":
            value = format_utc(value)
        elif isinstance(value, float):
            value = round(value, 3)  # milliseconds, as the text format shows them
        elif isinstance(value, tuple):
            value = list(value)
        fields[item.name] = value
    if "term" in fields:
        fields["token"] = fields["term"]
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record: `ts`, `level`, `logger`, `message`, the node's
    `node_id` and `group`, and, for a record made from an event, that event's fields
    (`event_fields`)."""

    def __init__(self, context: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.context = dict(context or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": format_utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self.context,
        }
        fields = getattr(record, _FIELDS, None)
        if isinstance(fields, dict):
            entry.update({key: value for key, value in fields.items() if key not in _RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _json_safe(json.dumps(entry, ensure_ascii=False, default=str))


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


def configure_logging(log_format: str, output: Output, log_level: str = "info",
                      context: Mapping[str, str] | None = None) -> None:
    """The supervisor's records at `log_level` ("debug", "info", "warning", "error") and
    above, and other libraries' warnings (asyncio's, say), through `output`: nothing may
    write to stderr past the queue. `context` (the node's node_id and group) is added to
    every JSON line."""
    handler = OutputHandler(output)
    handler.setFormatter(JsonFormatter(context) if log_format == "json" else TextFormatter())
    root = logging.getLogger("supervisor")
    root.handlers[:] = [handler]
    root.setLevel(log_level.upper())
    root.propagate = False
    logging.getLogger().handlers[:] = [handler]


class EventLog:
    """Subscriber: turns events into log records and children's lines into output.

    `run` passes the process's Output, shared with the log handler; tests may pass text
    streams instead. Without either, it makes its own Output on descriptors 1 and 2."""

    def __init__(self, log_format: str, stdout: TextIO | None = None,
                 stderr: TextIO | None = None, *, output: Output | None = None,
                 context: Mapping[str, str] | None = None) -> None:
        self.json = log_format == "json"
        self.context = dict(context or {})
        if output is None and (stdout or stderr):
            output = Output.of_streams(stdout or sys.stdout, stderr or sys.stderr)
        self.output = output or Output.of_process()

    def __call__(self, event: Event) -> None:
        if isinstance(event, WorkerOutput):
            self._line(event)
            return
        said = _said(event)
        if said is not None:
            level, message, *args = said
            log.log(level, message, *args, extra={_FIELDS: event_fields(event)})

    def _line(self, event: WorkerOutput) -> None:
        stream = event.stream if event.stream in ("stdout", "stderr") else "stdout"
        if self.json:
            text = _json_safe(json.dumps(
                {"ts": format_utc(time.time()), "worker": event.worker, "stream": event.stream,
                 "message": event.line, **self.context}, ensure_ascii=False))
        else:
            text = f"{escape_controls(event.worker)} | {escape_controls(event.line)}"
        self.output.line(stream, text, source=event.worker)  # queued or dropped, never waits


def _said(event: Event) -> tuple[Any, ...] | None:
    """(level, format, *arguments) of the record an event makes; None: no record."""
    if isinstance(event, WorkerStarted):
        return logging.INFO, "%s: started (pid %d)", event.worker, event.pid
    if isinstance(event, WorkerExited):
        level = logging.INFO if event.reason in ("exited", "stopped") else logging.WARNING
        return (level, "%s: %s (%s) after %s", event.worker, event.reason, event.description,
                format_duration(round(event.uptime, 3)))
    if isinstance(event, RestartScheduled):
        return (logging.INFO, "%s: restart %d in %s", event.worker, event.attempt,
                format_duration(round(event.delay, 3)))
    if isinstance(event, WorkerGaveUp):
        return (logging.ERROR, "%s: gave up after %d restarts within %s%s", event.worker,
                event.restarts, format_duration(event.window),
                " (critical)" if event.critical else "")
    if isinstance(event, LeadershipGained):
        return (logging.INFO, "%s: leader of %s with fencing token %d", event.worker,
                event.lease, event.term)
    if isinstance(event, LeadershipLost):
        return (logging.INFO, "%s: no longer leader of %s (term %d): %s", event.worker,
                event.lease, event.term, event.reason)
    if isinstance(event, CronClaimed):
        return _said_claimed(event)
    if isinstance(event, CronRunEnded):
        level = logging.INFO if event.state in ("succeeded", "stopped") else logging.WARNING
        return (level, "%s: run of %s (slot %d, token %d) %s after %s%s", event.worker,
                format_utc(event.tick), event.slot, event.token, event.state,
                format_duration(round(event.duration, 3)),
                "" if event.recorded else " (not recorded: the database did not take it)")
    if isinstance(event, ConfigReloaded):
        return (logging.INFO, "reloaded: started %s, stopped %s, restarted %s",
                list(event.started), list(event.stopped), list(event.restarted))
    return None


def _said_claimed(event: CronClaimed) -> tuple[Any, ...] | None:
    if event.result == "acquired":
        return (logging.INFO, "%s: claimed slot %s of the tick %s (token %s)", event.worker,
                event.slot, format_utc(event.tick), event.token)
    if event.result in ("missed", "overlap"):
        return (logging.WARNING, "%s: tick %s %s", event.worker, format_utc(event.tick),
                "missed" if event.result == "missed"
                else "skipped: an earlier run is still going (overlap = forbid)")
    return None
