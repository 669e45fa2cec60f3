"""`supervisor ps`: one row per worker, from what the worker says of itself.

Each kind of worker (supervisor.workers) describes itself as `WorkerFacts`, plain
read-only facts; `ps_row` turns them into the row `ps --json` prints (and
`Supervisor.worker_rows()` returns), `ps_text` into supervisorctl-like text. Pure.

Roles: running (every-node), leader / follower (the leader modes), index i of n /
standby / waiting for a slot (coordinated), running / waiting for tick (cron),
backoff until <time>, given up (max_restarts), exited (not restarted under its
policy), stopped (by `supervisor stop`), paused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from supervisor.model import Mode, WorkerState, format_utc

LEADER_MODES = (str(Mode.GLOBAL_LEADER), str(Mode.GROUP_LEADER))


@dataclass(frozen=True)
class WorkerFacts:
    """What one worker on this node is doing now. Times are wall-clock epochs."""

    name: str
    mode: str
    state: str  # a WorkerState value
    granted: bool = False  # holds its mode's grant (a lease, a slot) right now
    pids: tuple[int, ...] = ()
    started_at: float | None = None  # its oldest running child's start
    restarts: int = 0  # restarts in restart_window
    backoff_until: float | None = None
    last_exit: str | None = None  # "exit status 1", "killed by SIGKILL"
    last_exit_reason: str | None = None  # why it ended: "supervisor stopped", ...
    last_exit_at: float | None = None
    token: str | None = None  # the fencing token of the grant it holds
    index: int | None = None  # coordinated: this node's index in the generation it sees
    count: int | None = None
    generation: int | None = None
    next_tick: float | None = None  # cron: the next tick it will try to claim
    running_ticks: tuple[float, ...] = ()


def role(facts: WorkerFacts, *, stopped: bool = False, paused: bool = False) -> str:
    """What the worker is doing, in a few words (see the module's list)."""
    state = facts.state
    if paused:
        return "paused"
    if stopped or state == WorkerState.STOPPED:
        return "stopped"
    if state == WorkerState.FAILED:
        return "given up"
    if state == WorkerState.EXITED:
        return "exited"
    if state == WorkerState.BACKOFF and facts.backoff_until is not None:
        return f"backoff until {format_utc(facts.backoff_until)}"
    if facts.mode == Mode.CRON:
        return "running" if facts.pids else "waiting for tick"
    if facts.mode in LEADER_MODES:
        return "leader" if facts.granted else "follower"
    if facts.mode == Mode.COORDINATED:
        if facts.granted and facts.index is not None:
            return f"index {facts.index} of {facts.count}"
        if facts.generation and facts.index is None:
            return "standby"
        return "waiting for a slot"
    return "running" if facts.pids else "starting"


def ps_row(facts: WorkerFacts, now: float, *, stopped: bool = False,
           paused: bool = False) -> dict[str, Any]:
    """The row of one worker, JSON-ready."""
    uptime = None if facts.started_at is None else max(0.0, now - facts.started_at)
    last_exit = None
    if facts.last_exit is not None:
        last_exit = {"status": facts.last_exit, "reason": facts.last_exit_reason,
                     "at": None if facts.last_exit_at is None
                     else format_utc(facts.last_exit_at)}
    return {
        "worker": facts.name,
        "mode": facts.mode,
        "role": role(facts, stopped=stopped, paused=paused),
        "state": "stopped" if stopped else facts.state,
        "stopped": stopped,
        "paused": paused,
        "pids": list(facts.pids),
        "uptime": None if uptime is None else round(uptime, 3),
        "restarts": facts.restarts,
        "last_exit": last_exit,
        "token": facts.token,
        "index": facts.index if facts.granted else None,
        "count": facts.count if facts.granted else None,
        "generation": facts.generation,
        "next_tick": None if facts.next_tick is None or stopped or paused
        else format_utc(facts.next_tick),
        "running_ticks": [format_utc(t) for t in facts.running_ticks],
    }


def format_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


_COLUMNS = ("WORKER", "MODE", "ROLE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "NEXT TICK")


def ps_text(rows: Sequence[dict[str, Any]]) -> str:
    """An aligned table, one worker a line (like `supervisorctl status`)."""
    table = [_COLUMNS]
    for row in rows:
        last = row["last_exit"]
        exit_text = "-" if last is None else (
            f"{last['status']} ({last['reason']})" if last["reason"] else last["status"])
        table.append((
            row["worker"], row["mode"], row["role"],
            ",".join(str(pid) for pid in row["pids"]) or "-",
            format_uptime(row["uptime"]), str(row["restarts"]), exit_text,
            row["next_tick"] or "-",
        ))
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table) + "\n"
