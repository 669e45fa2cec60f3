"""Log output: the supervisor's own records and its children's lines, as text or JSON lines.

Children's lines go to the supervisor's stdout or stderr, as the child wrote them,
prefixed with the worker's name (`indexer | line`); with `log_format = "json"`
each is one JSON object per line. The supervisor's own records go to stderr.
"""

from __future__ import annotations

import json
import logging
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

log = logging.getLogger("supervisor")


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
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{format_utc(record.created)} {record.levelname:<7} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(log_format: str, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger("supervisor")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


class EventLog:
    """Subscriber: turns events into log records and children's lines into output."""

    def __init__(self, log_format: str, stdout: TextIO | None = None,
                 stderr: TextIO | None = None) -> None:
        self.json = log_format == "json"
        self._streams = {"stdout": stdout or sys.stdout, "stderr": stderr or sys.stderr}

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
        stream = self._streams.get(event.stream, self._streams["stdout"])
        if self.json:
            text = json.dumps({"ts": format_utc(time.time()), "worker": event.worker,
                               "stream": event.stream, "message": event.line}, ensure_ascii=False)
        else:
            text = f"{event.worker} | {event.line}"
        try:
            stream.write(text + "\n")
            stream.flush()
        except (BrokenPipeError, ValueError):
            pass  # nobody reads our output any more; the children must not stall for it
