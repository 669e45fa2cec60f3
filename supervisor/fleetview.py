"""What `supervisor status` and `supervisor history` show: the fleet as the database sees it.

Pure formatting of store records into text or JSON-ready data; times are the
database's, shown in UTC. The database URL is always shown masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from supervisor.model import format_utc
from supervisor.store import LeaseState, Member, TermRecord


def iso(epoch: float | None) -> str | None:
    return None if epoch is None else format_utc(epoch)


def worker_of(lease: str) -> tuple[str, str | None]:
    """("leader/indexer/blue") -> ("indexer", "blue")."""
    parts = lease.split("/")
    if len(parts) >= 2 and parts[0] == "leader":
        return parts[1], parts[2] if len(parts) > 2 else None
    return lease, None


def status_data(database: str, db_now: float, members: Sequence[Member],
                leases: Sequence[LeaseState]) -> dict[str, Any]:
    return {
        "database": database,
        "database_time": iso(db_now),
        "nodes": [
            {"node_id": m.holder.node_id, "group": m.holder.group, "pid": m.holder.pid,
             "since": iso(m.started_at), "expires_in": round(m.expires_at - db_now, 3)}
            for m in members
        ],
        "leaders": [_lease_data(lease) for lease in leases if lease.name.startswith("leader/")],
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
    return "\n".join(lines)


def history_data(records: Sequence[TermRecord]) -> list[dict[str, Any]]:
    out = []
    for r in records:
        worker, group = worker_of(r.lease)
        out.append({
            "kind": "term", "worker": worker, "group": group, "term": r.term,
            "node_id": r.holder.node_id, "pid": r.holder.pid,
            "started": iso(r.acquired_at), "ended": iso(r.ended_at),
            "duration": None if r.ended_at is None else round(r.ended_at - r.acquired_at, 3),
            "outcome": r.outcome or "holding", "reason": r.reason,
        })
    return out


def history_text(rows: Sequence[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        name = row["worker"] + (f"@{row['group']}" if row["group"] else "")
        took = "" if row["duration"] is None else f" after {row['duration']:.1f}s"
        why = f" ({row['reason']})" if row["reason"] else ""
        lines.append(f"{row['started']}  {name:<24} term {row['term']:<6} "
                     f"{row['node_id']} pid {row['pid']:<8} {row['outcome']}{took}{why}")
    return "\n".join(lines) if lines else "no history yet"
