"""What `supervisor status` and `supervisor history` show: the fleet as the database sees it.

Pure formatting of store records into text or JSON-ready data; the only reads are
through the callable `cron_section` is handed. Times are the database's, shown in
UTC: "now" is always `store.db_now()`, never this host's clock, so the next cron
tick and every "in"/"left" figure agree with what the fleet decides. The database
URL is always shown masked.

History merges leadership terms and cron runs, newest first: a term is placed at
its `acquired_at`, a run (or a tick nobody ran) at its `tick`, the instant it was
scheduled for. Both store queries are ordered by that same key, so the newest
`limit` of the merge are exactly the merge of the newest `limit` of each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from supervisor.config import WorkerConfig
from supervisor.model import Mode, format_utc
from supervisor.schedule import next_tick, parse_schedule, parse_timezone
from supervisor.store import CronRunRecord, LeaseState, Member, TermRecord

TICKS_SHOWN = 5  # per cron worker in `status`

# A tick's runs summed up as the most telling of their states: still going first, then
# the ways a run can go wrong, worst first.
_SEVERITY = ("running", "lost", "timed_out", "failed", "stopped", "succeeded")

RunReader = Callable[[str, int], Sequence[CronRunRecord]]  # (worker, limit) -> newest first


def iso(epoch: float | None) -> str | None:
    return None if epoch is None else format_utc(epoch)


def worker_of(lease: str) -> tuple[str, str | None]:
    """("leader/indexer/blue") -> ("indexer", "blue")."""
    parts = lease.split("/")
    if len(parts) >= 2 and parts[0] == "leader":
        return parts[1], parts[2] if len(parts) > 2 else None
    return lease, None


# --- status ------------------------------------------------------------------------------


def status_data(database: str, db_now: float, members: Sequence[Member],
                leases: Sequence[LeaseState],
                cron: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {
        "database": database,
        "database_time": iso(db_now),
        "nodes": [
            {"node_id": m.holder.node_id, "group": m.holder.group, "pid": m.holder.pid,
             "since": iso(m.started_at), "expires_in": round(m.expires_at - db_now, 3)}
            for m in members
        ],
        "leaders": [_lease_data(lease) for lease in leases if lease.name.startswith("leader/")],
        "cron": list(cron),
    }


def _lease_data(lease: LeaseState) -> dict[str, Any]:
    worker, group = worker_of(lease.name)
    held = lease.holder is not None and lease.seconds_left > 0
    return {
        "worker": worker,
        "group": group,
        "lease": lease.name,
        "term": lease.term,
        "holder": None if not held or lease.holder is None else {
            "node_id": lease.holder.node_id, "pid": lease.holder.pid,
        },
        "time_left": round(lease.seconds_left, 3) if held else 0.0,
    }


def cron_rows_needed(worker: WorkerConfig, ticks: int = TICKS_SHOWN) -> int:
    """Rows of `cron_runs` that hold the newest `ticks` ticks whole.

    A tick has at most max_run runs and one tick-level record (missed, skipped); one
    tick more is read so that a tick cut off by the limit is the one left out.
    """
    return (ticks + 1) * (worker.max_run + 1)


def cron_section(workers: Mapping[str, WorkerConfig], db_now: float,
                 members: Sequence[Member], read_runs: RunReader) -> list[dict[str, Any]]:
    """Every cron worker of the file, by name: its schedule, next tick and latest ticks."""
    live = {m.holder.nonce for m in members}
    section = []
    for name, worker in sorted(workers.items()):
        if worker.mode is not Mode.CRON:
            continue
        limit = cron_rows_needed(worker)
        records = read_runs(name, limit)
        section.append(cron_status(name, worker, db_now, records,
                                   cut=len(records) >= limit, live=live))
    return section


def cron_status(name: str, worker: WorkerConfig, db_now: float,
                records: Sequence[CronRunRecord], *, cut: bool = False,
                live: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """One cron worker: `records` newest tick first (as `cron_runs` returns them); `cut`
    when the read hit its limit, so the oldest tick read may be incomplete; `live` the
    nonces of live supervisors, to tell a running run whose node is gone."""
    if worker.cron is None:  # config validation requires it in mode "cron"
        raise ValueError(f'workers.{name}.cron: required when mode = "cron"')
    tick = next_tick(parse_schedule(worker.cron), parse_timezone(worker.timezone), db_now)
    groups = _by_tick(records)
    if cut and len(groups) > 1:
        groups.pop()
    return {
        "worker": name,
        "schedule": worker.cron,
        "timezone": worker.timezone,
        "max_run": worker.max_run,
        "max_per_node": worker.max_per_node,
        "overlap": worker.overlap,
        "misfire_grace": worker.misfire_grace,
        "timeout": worker.timeout,
        "next_tick": iso(tick),
        "next_in": round(tick - db_now, 3),
        "ticks": [_tick_data(group, live) for group in groups[:TICKS_SHOWN]],
    }


def _by_tick(records: Sequence[CronRunRecord]) -> list[list[CronRunRecord]]:
    groups: list[list[CronRunRecord]] = []
    for record in records:
        if groups and groups[-1][0].tick == record.tick:
            groups[-1].append(record)
        else:
            groups.append([record])
    return groups


def _tick_data(group: Sequence[CronRunRecord], live: set[str] | frozenset[str]) -> dict[str, Any]:
    level = next((r for r in group if r.slot < 0), None)
    runs = sorted((r for r in group if r.slot >= 0), key=lambda r: (r.slot, r.token))
    return {
        "tick": iso(group[0].tick),
        "state": level.state if level is not None else tick_summary([r.state for r in runs]),
        "reason": None if level is None else level.reason,
        "runs": [{**run_data(r), "holder_live": _holder_live(r, live)} for r in runs],
    }


def tick_summary(states: Sequence[str]) -> str:
    """The most telling state of a tick's runs (running, then lost, ... then succeeded)."""
    if not states:
        return "none"
    return min(states, key=lambda s: _SEVERITY.index(s) if s in _SEVERITY else -1)


def _holder_live(record: CronRunRecord, live: set[str] | frozenset[str]) -> bool | None:
    """For a running run: is its supervisor still a live member? A run whose node is gone
    stays `running` until maintenance marks it lost."""
    if record.state != "running" or record.holder is None:
        return None
    return record.holder.nonce in live


def run_data(r: CronRunRecord) -> dict[str, Any]:
    holder = r.holder
    return {
        "token": r.token, "slot": r.slot,
        "node_id": None if holder is None else holder.node_id,
        "group": None if holder is None else holder.group,
        "pid": None if holder is None else holder.pid,
        "state": r.state, "exit_code": r.exit_code,
        "claimed": iso(r.claimed_at), "ended": iso(r.ended_at),
        "duration": None if r.ended_at is None else round(r.ended_at - r.claimed_at, 3),
        "reason": r.reason,
    }


def status_text(data: dict[str, Any]) -> str:
    lines = [f"database {data['database']} (its clock: {data['database_time']})", ""]
    lines.append(f"nodes: {len(data['nodes'])} live")
    for node in data["nodes"]:
        lines.append(f"  {node['node_id']:<24} group {node['group']:<12} pid {node['pid']:<8} "
                     f"since {node['since']}  expires in {node['expires_in']:.1f}s")
    lines += ["", f"leaders: {len(data['leaders'])}"]
    for lease in data["leaders"]:
        name = lease["worker"] + (f"@{lease['group']}" if lease["group"] else "")
        if lease["holder"] is None:
            lines.append(f"  {name:<28} none          term {lease['term']}")
        else:
            holder = f"{lease['holder']['node_id']} (pid {lease['holder']['pid']})"
            lines.append(f"  {name:<28} {holder:<24} term {lease['term']:<6} "
                         f"time left {lease['time_left']:.1f}s")
    lines += ["", f"cron: {len(data['cron'])} workers"]
    for cron in data["cron"]:
        lines += _cron_text(cron)
    return "\n".join(lines)


def _cron_text(cron: dict[str, Any]) -> list[str]:
    lines = [
        f"  {cron['worker']:<28} {cron['schedule']} ({cron['timezone']})  "
        f"max_run {cron['max_run']}  overlap {cron['overlap']}",
        f"    next tick {cron['next_tick']} (in {cron['next_in']:.1f}s)",
    ]
    if not cron["ticks"]:
        lines.append("    no ticks recorded yet")
    for tick in cron["ticks"]:
        why = f" ({tick['reason']})" if tick["reason"] else ""
        lines.append(f"    {tick['tick']}  {tick['state']}{why}")
        for run in tick["runs"]:
            gone = "" if run["holder_live"] is not False else (
                "  (its node is gone: will be marked lost)")
            lines.append(f"      slot {run['slot']:<3} {_run_outcome(run)}{gone}")
    return lines


def _run_outcome(run: dict[str, Any]) -> str:
    code = "" if run["exit_code"] is None else f" exit {run['exit_code']}"
    took = "" if run["duration"] is None else f" after {run['duration']:.1f}s"
    why = f" ({run['reason']})" if run["reason"] else ""
    return f"{run['node_id']} pid {run['pid']:<8} {run['state']}{code}{took}{why}"


# --- history -----------------------------------------------------------------------------


def history_data(terms: Sequence[TermRecord], runs: Sequence[CronRunRecord] = (),
                 limit: int | None = None) -> list[dict[str, Any]]:
    """Terms and cron runs merged, newest first, each row with its `kind` and `at`: a
    term's acquired_at, a run's tick. On a tie, terms come first; each source keeps its
    own order."""
    keyed = [(r.acquired_at, _term_data(r)) for r in terms]
    keyed += [(r.tick, _history_run(r)) for r in runs]
    keyed.sort(key=lambda pair: pair[0], reverse=True)  # stable, also reversed
    rows = [row for _, row in keyed]
    return rows if limit is None else rows[:limit]


def _term_data(r: TermRecord) -> dict[str, Any]:
    worker, group = worker_of(r.lease)
    return {
        "kind": "term", "at": iso(r.acquired_at), "worker": worker, "group": group,
        "term": r.term, "node_id": r.holder.node_id, "pid": r.holder.pid,
        "started": iso(r.acquired_at), "ended": iso(r.ended_at),
        "duration": None if r.ended_at is None else round(r.ended_at - r.acquired_at, 3),
        "outcome": r.outcome or "holding", "reason": r.reason,
    }


def _history_run(r: CronRunRecord) -> dict[str, Any]:
    return {"kind": "run", "at": iso(r.tick), "worker": r.worker, "tick": iso(r.tick),
            **run_data(r)}


def history_text(rows: Sequence[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        if row["kind"] == "run":
            lines.append(_history_run_text(row))
            continue
        name = row["worker"] + (f"@{row['group']}" if row["group"] else "")
        took = "" if row["duration"] is None else f" after {row['duration']:.1f}s"
        why = f" ({row['reason']})" if row["reason"] else ""
        lines.append(f"{row['at']}  {name:<24} term {row['term']:<6} "
                     f"{row['node_id']} pid {row['pid']:<8} {row['outcome']}{took}{why}")
    return "\n".join(lines) if lines else "no history yet"


def _history_run_text(row: dict[str, Any]) -> str:
    if row["slot"] < 0:  # a tick nobody ran: missed or skipped
        why = f" ({row['reason']})" if row["reason"] else ""
        return f"{row['at']}  {row['worker']:<24} tick {row['state']}{why}"
    return f"{row['at']}  {row['worker']:<24} run  slot {row['slot']:<3} {_run_outcome(row)}"
