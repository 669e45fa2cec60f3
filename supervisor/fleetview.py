"""What `supervisor status` and `supervisor history` show: the fleet as the database sees it.

Pure formatting of store records into JSON-ready data (`--json` prints it as is,
supervisor/fleettext.py renders it as text); the only reads are through the callables
the sections are handed. Times are the database's, shown in
UTC: "now" is always `store.db_now()`, never this host's clock, so the next cron
tick and every "in"/"left" figure agree with what the fleet decides. The database
URL is always shown masked.

Each live node is shown with its release and time-zone data (where zoneinfo loads zones
from, and which version; "unknown" for nodes of older releases), and one warning line
when live nodes report different versions: their cron ticks in a zone whose rules
differ between those versions fall on different instants (guarantee 12).

Coordinated workers (guarantee 5) are shown per worker key (`worker`, or
`worker/group` for scope group): the published generation and count, each assigned
member with its index (or standby) and whether it holds a slot, live members not yet
in a generation ("joining"), and slots still held by processes outside the current
assignment ("draining": instances of an older generation that have not stopped yet).
A slot counts as held while it has a holder and is unexpired by the database's clock.

History merges leadership terms, cron runs and coordinated generations, newest first:
a term is placed at its `acquired_at`, a run (or a tick nobody ran) at its `tick`,
the instant it was scheduled for, a generation at its `published_at`. Each store query
is ordered by that same key, so the newest `limit` of the merge are exactly the merge
of the newest `limit` of each.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from supervisor.model import (
    Mode,
    coord_key,
    format_utc,
    parse_coord_key,
    parse_leader_lease,
    per_group_prefix,
)
from supervisor.schedule import next_tick, parse_schedule, parse_timezone
from supervisor.spec import WorkerSpec
from supervisor.store import (
    ControlAction,
    ControlEntry,
    ControlState,
    CoordAssigned,
    CoordGeneration,
    CoordSlot,
    CoordStatus,
    CronRunRecord,
    CronTrigger,
    Holder,
    LeaseState,
    NodeMember,
    TermRecord,
)
from supervisor.tzinfo_source import UNKNOWN, NodeZoneData, by_version, differ_warning

TICKS_SHOWN = 5  # per cron worker in `status`

# A tick's runs summed up as the most telling of their states: still going first, then
# the ways a run can go wrong, worst first.
_SEVERITY = ("running", "lost", "timed_out", "failed", "stopped", "succeeded")

RunReader = Callable[[str, int], Sequence[CronRunRecord]]  # (worker, limit) -> newest first
ViewReader = Callable[[str], CoordStatus]  # worker key -> its state now
KeyLister = Callable[[str], Iterable[str]]  # worker -> keys with a published generation


def iso(epoch: float | None) -> str | None:
    return None if epoch is None else format_utc(epoch)


def worker_of(lease: str) -> tuple[str, str | None]:
    """("leader/indexer/blue") -> ("indexer", "blue"); any other lease is shown whole."""
    return parse_leader_lease(lease) or (lease, None)


def shown_name(worker: str, group: str | None) -> str:
    return worker + (f"@{group}" if group else "")


# --- status ------------------------------------------------------------------------------


def status_data(database: str, db_now: float, members: Sequence[NodeMember],
                leases: Sequence[LeaseState],
                cron: Sequence[dict[str, Any]] = (),
                coordinated: Sequence[dict[str, Any]] = (),
                control: ControlState | None = None) -> dict[str, Any]:
    return {
        **control_section(control, members, db_now),
        "database": database,
        "database_time": iso(db_now),
        "nodes": [
            {"node_id": m.holder.node_id, "group": m.holder.group, "pid": m.holder.pid,
             "since": iso(m.started_at), "expires_in": round(m.expires_at - db_now, 3),
             "release": m.release, "tz_source": m.tz_source, "tz_version": m.tz_version,
             "drain": m.drain or None, "workers": worker_states(m.summary)}
            for m in members
        ],
        "zone_data": zone_data_section(members),
        "leaders": [_lease_data(lease) for lease in leases
                    if parse_leader_lease(lease.name) is not None],
        "coordinated": list(coordinated),
        "cron": list(cron),
    }


def zone_data_section(members: Sequence[NodeMember]) -> dict[str, Any]:
    """The live nodes' time-zone data compared: node labels by reported version, those
    that report none (older releases) or an unknown one, and the warning line when the
    versions differ (None when they agree)."""
    ids = [m.holder.node_id for m in members]
    nodes = [NodeZoneData(m.holder.node_id if ids.count(m.holder.node_id) == 1
                          else f"{m.holder.node_id} (pid {m.holder.pid})",
                          m.tz_source, m.tz_version) for m in members]
    versions = by_version(nodes)
    return {
        "differ": len(versions) > 1,
        "versions": {v: [n.label for n in group] for v, group in sorted(versions.items())},
        "unknown": [n.label for n in nodes if n.version in (None, UNKNOWN)],
        "warning": differ_warning(nodes),
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


def coord_section(workers: Mapping[str, WorkerSpec], members: Sequence[NodeMember],
                  read_view: ViewReader, known_keys: KeyLister) -> list[dict[str, Any]]:
    """Every coordinated worker of the file, by worker key.

    Scope global: the one key, the worker's name. Scope group: a key per group with a
    live node (shown even with nothing published yet), and any other key of the worker
    with a published generation that still has a live member or a held slot (a group
    whose last nodes went away while their instances may still run).
    """
    groups = sorted({m.holder.group for m in members})
    section = []
    for name, worker in sorted(workers.items()):
        if worker.mode is not Mode.COORDINATED:
            continue
        if worker.scope != "group":
            section.append(coord_status(read_view(coord_key(name, worker.scope, "")),
                                        worker.instances))
            continue
        keys = {coord_key(name, "group", group) for group in groups}
        views = [read_view(key) for key in sorted(keys)]
        prefix = per_group_prefix(name)
        for key in sorted({k for k in known_keys(name) if k.startswith(prefix)} - keys):
            view = read_view(key)
            if view.members or _held(view):
                views.append(view)
        section += [coord_status(view, worker.instances)
                    for view in sorted(views, key=lambda v: v.worker_key)]
    return section


def _held(view: CoordStatus) -> list[CoordSlot]:
    """The key's slots with a holder and unexpired by the database's clock, by index."""
    return [s for s in view.slots if s.expires_at > view.db_now]


def coord_status(view: CoordStatus, instances: int | None = None) -> dict[str, Any]:
    """One coordinated worker key as `coord_view` read it.

    With `instances` fixed and every index taken by a live member, a live member not
    in the generation stands by (no generation is published for standbys coming and
    going); otherwise it is joining, and the next generation will include it."""
    worker, group = parse_coord_key(view.worker_key)
    held: dict[str, CoordSlot] = {}
    for slot in sorted(_held(view), key=lambda s: s.generation):  # newest wins
        held[slot.holder.nonce] = slot
    live = {m.holder.nonce for m in view.members}
    full = instances is not None and view.count == instances and len(
        {a.index for a in view.assigned if a.index is not None and a.holder.nonce in live}
    ) == view.count
    assigned = {a.holder.nonce for a in view.assigned}
    if full:
        view = dataclasses.replace(view, assigned=view.assigned + tuple(
            CoordAssigned(m.holder, None) for m in view.members
            if m.holder.nonce not in assigned))
        assigned = {a.holder.nonce for a in view.assigned}
    return {
        "worker": worker,
        "group": group,
        "key": view.worker_key,
        "generation": view.generation,
        "count": view.count,
        "published": iso(view.published_at),
        "members": [
            {**_holder_data(a.holder),
             "index": "standby" if a.index is None else a.index,
             **_slot_data(held.get(a.holder.nonce)),
             "live": a.holder.nonce in live}
            for a in view.assigned
        ],
        "joining": [{**_holder_data(m.holder), "since": iso(m.joined_at)}
                    for m in view.members if m.holder.nonce not in assigned],
        "draining": [{**_holder_data(s.holder), "index": s.index, "generation": s.generation,
                      "expires_in": round(s.expires_at - view.db_now, 3)}
                     for s in _held(view) if s.holder.nonce not in assigned],
    }


def _holder_data(holder: Holder) -> dict[str, Any]:
    return {"node_id": holder.node_id, "group": holder.group, "pid": holder.pid}


def _slot_data(slot: CoordSlot | None) -> dict[str, Any]:
    return {"holding": slot is not None,
            "slot_index": None if slot is None else slot.index,
            "slot_generation": None if slot is None else slot.generation}


def cron_rows_needed(worker: WorkerSpec, ticks: int = TICKS_SHOWN) -> int:
    """Rows of `cron_runs` that hold the newest `ticks` ticks whole.

    A tick has at most max_run runs and one tick-level record (missed, skipped); one
    tick more is read so that a tick cut off by the limit is the one left out.
    """
    return (ticks + 1) * (worker.max_run + 1)


def cron_section(workers: Mapping[str, WorkerSpec], db_now: float,
                 members: Sequence[NodeMember], read_runs: RunReader) -> list[dict[str, Any]]:
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


def cron_status(name: str, worker: WorkerSpec, db_now: float,
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
    trigger = group[0].trigger  # a run asked for by `supervisor trigger`: who and why
    return {
        "tick": iso(group[0].tick),
        "trigger": None if trigger is None else _trigger_data(trigger),
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


# --- history -----------------------------------------------------------------------------


def history_data(terms: Sequence[TermRecord], runs: Sequence[CronRunRecord] = (),
                 limit: int | None = None,
                 generations: Sequence[CoordGeneration] = (),
                 actions: Sequence[ControlAction] = ()) -> list[dict[str, Any]]:
    """Terms, cron runs, coordinated generations and control actions merged, newest first,
    each row with its `kind` and `at`: a term's acquired_at, a run's tick, a generation's
    published_at, an action's time.
    On a tie, terms come first, then runs; each source keeps its own order."""
    keyed = [(r.acquired_at, _term_data(r)) for r in terms]
    keyed += [(r.tick, _history_run(r)) for r in runs]
    keyed += [(g.published_at, _generation_data(g)) for g in generations]
    keyed += [(a.at, control_action_data(a)) for a in actions]
    keyed.sort(key=lambda pair: pair[0], reverse=True)  # stable, also reversed
    rows = [row for _, row in keyed]
    return rows if limit is None else rows[:limit]


def _term_data(r: TermRecord) -> dict[str, Any]:
    worker, group = worker_of(r.lease)
    return {
        "kind": "term", "at": iso(r.acquired_at), "worker": worker, "group": group,
        # `pid`: the term's (latest) child; the supervisor's own is `supervisor_pid`
        "term": r.term, "node_id": r.holder.node_id, "pid": r.child_pid,
        "supervisor_pid": r.holder.pid,
        "started": iso(r.acquired_at), "ended": iso(r.ended_at),
        "duration": None if r.ended_at is None else round(r.ended_at - r.acquired_at, 3),
        "outcome": r.outcome or "holding", "reason": r.reason,
    }


def _history_run(r: CronRunRecord) -> dict[str, Any]:
    """A run in the history: `pid` is its child's, `supervisor_pid` its supervisor's; a
    triggered run (`supervisor trigger`) is placed at its request, with who asked and why."""
    trigger = r.trigger
    return {"kind": "run", "at": iso(r.tick), "worker": r.worker, "tick": iso(r.tick),
            **run_data(r), "pid": r.child_pid,
            "supervisor_pid": None if r.holder is None else r.holder.pid,
            "trigger": None if trigger is None else _trigger_data(trigger)}


def _trigger_data(trigger: CronTrigger) -> dict[str, Any]:
    return {"id": trigger.id, "key": trigger.key, "user": trigger.actor_user,
            "host": trigger.actor_host, "reason": trigger.reason,
            "requested": iso(trigger.requested_at)}


def _generation_data(g: CoordGeneration) -> dict[str, Any]:
    worker, group = parse_coord_key(g.worker_key)
    by_index = {g.index_of(pos): h.node_id for pos, h in enumerate(g.members)}
    return {
        "kind": "generation", "at": iso(g.published_at), "worker": worker, "group": group,
        "key": g.worker_key, "generation": g.generation, "count": g.count,
        # by index: members[i] had index i (None: vacant, nobody live to take it)
        "members": [by_index.get(i) for i in range(g.count)],
        "standby": [h.node_id for pos, h in enumerate(g.members) if g.index_of(pos) is None],
        "published": iso(g.published_at), "ended": iso(g.ended_at),
        "duration": None if g.ended_at is None else round(g.ended_at - g.published_at, 3),
    }


# --- fleet control ---------------------------------------------------------------------------

def control_section(state: ControlState | None, members: Sequence[NodeMember],
                    db_now: float) -> dict[str, Any]:
    """Paused workers (who, why, since), draining nodes (requested, and each live
    process's acknowledgement: acknowledged or drained) and handovers still holding out."""
    entries = () if state is None else state.entries
    return {
        "paused": [{"worker": e.target, "group": e.group, "by": _by(e), "reason": e.reason,
                    "since": iso(e.requested_at), "stop_running": e.stop_running}
                   for e in entries if e.kind == "pause"],
        "draining": [_drain_data(e, members) for e in entries if e.kind == "drain"],
        "handovers": [{"worker": e.target, "group": e.group, "by": _by(e), "reason": e.reason,
                       "since": iso(e.requested_at), "until": iso(e.until)}
                      for e in entries if e.kind == "handover"
                      and e.until is not None and e.until > db_now],
    }


def _drain_data(entry: ControlEntry, members: Sequence[NodeMember]) -> dict[str, Any]:
    acks = [m.drain for m in members if m.holder.node_id == entry.target]
    if not acks:
        state = "not live"
    elif all(ack == "drained" for ack in acks):
        state = "drained"
    elif all(acks):
        state = "acknowledged"
    else:
        state = "requested"
    return {"node": entry.target, "by": _by(entry), "reason": entry.reason,
            "since": iso(entry.requested_at), "state": state}


def _by(entry: ControlEntry | ControlAction) -> str:
    return f"{entry.actor_user}@{entry.actor_host}"


def control_action_data(a: ControlAction) -> dict[str, Any]:
    return {"kind": "control", "at": iso(a.at), "action": a.action, "target": a.target,
            "group": a.group or None, "by": _by(a), "reason": a.reason}


def worker_states(summary: str | None) -> dict[str, Any] | None:
    """A node's published workers' states (name -> state); None when it reports none (an
    older release) or what it wrote cannot be read."""
    if summary is None:
        return None
    try:
        states = json.loads(summary)
    except ValueError:
        return None
    return states if isinstance(states, dict) else None
