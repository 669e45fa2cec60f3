"""The control protocol: JSON requests, one per line, and JSON answers, one per line.

A client connects to the node's socket (supervisor.control.paths) and writes a request
as one line of JSON (UTF-8, ending "\\n"); the supervisor answers each request with one
line of JSON, in order, on the same connection, until the client closes it.

Requests (`cmd` and its fields)::

    {"cmd": "ping"}                                     node_id, pid, version
    {"cmd": "ps"}                                       every worker's row
    {"cmd": "stop",    "worker": "web"}                 or "all"
    {"cmd": "start",   "worker": "web"}                 or "all"
    {"cmd": "restart", "worker": "web"}                 or "all"
    {"cmd": "signal",  "worker": "web", "signal": "SIGHUP"}
    {"cmd": "logs",    "worker": "web", "lines": 20, "follow": false}

Answers: `{"ok": true, ...}` with the command's fields (ps: `"workers": [row, ...]`;
stop/start/restart/signal: `"results": [{"worker", "done", "message"}, ...]`; logs:
`"lines": [{"at", "stream", "line"}, ...]`), or
`{"ok": false, "error": CODE, "message": TEXT}`, with `"known": [names]` for an unknown
worker. CODEs: `bad_request` (not JSON, unknown cmd, a missing or mistyped field),
`unknown_worker`, `unknown_signal`, `not_running` (a signal for a worker that runs no
child), `refused` (the peer's uid is neither the supervisor's nor root's: the
connection is closed after it), `stopping` (the supervisor is shutting down), `internal`
(the supervisor failed to answer: a bug, logged).

`logs` with `"follow": true`: after its answer the connection carries the worker's new
lines as they come, one `{"at", "stream", "line"}` object per line, until the client
closes it; a follower too slow to keep up loses lines, and is told so by a
`{"dropped": N}` line where they were.

Everything here is pure: parsing and building lines.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from typing import Any

from supervisor.model import parse_signal

PROTOCOL = 1
MAX_REQUEST = 64 * 1024  # bytes of one request line
MAX_LINES = 10_000  # `lines` of a logs request, at most
ALL = "all"

COMMANDS = ("ping", "ps", "stop", "start", "restart", "signal", "logs")
_TARGETED = ("stop", "start", "restart", "signal", "logs")

BAD_REQUEST = "bad_request"
UNKNOWN_WORKER = "unknown_worker"
UNKNOWN_SIGNAL = "unknown_signal"
NOT_RUNNING = "not_running"
REFUSED = "refused"
STOPPING = "stopping"
INTERNAL = "internal"


class ProtocolError(Exception):
    """A request refused: `code` (above) and a message for the operator."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra

    def answer(self) -> dict[str, Any]:
        return error(self.code, self.message, **self.extra)


@dataclass(frozen=True)
class Request:
    cmd: str
    worker: str = ""  # a worker's name, or "all" (stop, start, restart)
    signal: signal.Signals | None = None
    lines: int = 20
    follow: bool = False

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"cmd": self.cmd}
        if self.cmd in _TARGETED:
            data["worker"] = self.worker
        if self.signal is not None:
            data["signal"] = self.signal.name
        if self.cmd == "logs":
            data.update(lines=self.lines, follow=self.follow)
        return data


def parse_request(line: bytes) -> Request:
    """One request line -> Request; ProtocolError(bad_request / unknown_signal) if not."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(BAD_REQUEST, "a request is one line of JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError(BAD_REQUEST, "a request is a JSON object")
    cmd = data.get("cmd")
    if cmd not in COMMANDS:
        raise ProtocolError(BAD_REQUEST, f"unknown cmd {cmd!r}; known: {', '.join(COMMANDS)}")
    worker = data.get("worker", "")
    if cmd in _TARGETED and (not isinstance(worker, str) or not worker):
        raise ProtocolError(BAD_REQUEST, f"{cmd}: 'worker' must be a worker's name")
    if cmd in ("signal", "logs") and worker == ALL:
        raise ProtocolError(BAD_REQUEST, f"{cmd}: name one worker ('all' is for stop, "
                                         "start and restart)")
    sig = None
    if cmd == "signal":
        raw = data.get("signal")
        if not isinstance(raw, str | int) or isinstance(raw, bool):
            raise ProtocolError(BAD_REQUEST, "signal: 'signal' must be a name or a number")
        try:
            sig = parse_signal(raw)
        except ValueError as exc:
            raise ProtocolError(UNKNOWN_SIGNAL, str(exc)) from None
    lines, follow = data.get("lines", 20), data.get("follow", False)
    if cmd == "logs":
        if isinstance(lines, bool) or not isinstance(lines, int) or not 0 <= lines <= MAX_LINES:
            raise ProtocolError(BAD_REQUEST, f"logs: 'lines' must be 0 to {MAX_LINES}")
        if not isinstance(follow, bool):
            raise ProtocolError(BAD_REQUEST, "logs: 'follow' must be true or false")
    return Request(cmd, worker if cmd in _TARGETED else "", sig,
                   lines if cmd == "logs" else 20, follow if cmd == "logs" else False)


def check_worker(name: str, known: list[str], *, allow_all: bool) -> list[str]:
    """The workers a request names: [name], or every known one for "all"."""
    if allow_all and name == ALL:
        return list(known)
    if name not in known:
        listed = ", ".join(known) if known else "none"
        raise ProtocolError(UNKNOWN_WORKER, f"no worker {name!r} on this node; known: {listed}",
                            known=list(known))
    return [name]


def ok(**fields: Any) -> dict[str, Any]:
    return {"ok": True, **fields}


def error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": code, "message": message, **extra}


def encode(answer: dict[str, Any]) -> bytes:
    """One answer (or followed log line) as one line."""
    return json.dumps(answer, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One line from the supervisor -> its object; ValueError if it is not one."""
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("an answer is a JSON object")
    return data
